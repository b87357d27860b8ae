"""Slow and many DNS-over-TCP clients against a DNS server on 127.0.0.1.

usage: dns_slow.py PORT PER_SOURCE TOTAL DRIP_SECONDS

Prints one JSON object:
  source_refused: the connection past PER_SOURCE from 127.0.0.1 was closed at once
  full_refused: with TOTAL open (PER_SOURCE each from 127.0.0.2, .3, ...), the next, from
    another address, was closed at once
  earlier_open: a connection opened before them was still open then
  after_release: once the others were closed, a new connection gets an answer
  drip_closed_after: seconds until the server closed a client that sends one byte of a
    query every 0.5 s (null if it was still open after DRIP_SECONDS)
  drip_bytes: how many bytes the dripping client had sent by then
"""
import json
import socket
import struct
import sys
import time

import dns.message

port, per_source, total, drip_seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
query = dns.message.make_query("nothing.service.mesh", "A").to_wire()
framed = struct.pack("!H", len(query)) + query


def connect(source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def closed_by_server(s, wait):
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def answered(s):
    s.settimeout(5)
    s.sendall(framed)
    head = s.recv(2)
    return len(head) == 2


result = {}
held = [connect() for _ in range(per_source)]
# The server takes the connections in as it accepts them: ask on the last one so all are
# counted before the one past the limit comes.
result["earlier_open"] = answered(held[-1])
extra = connect()
result["source_refused"] = closed_by_server(extra, 2)
extra.close()
for s in held[1:]:
    s.close()
time.sleep(0.5)
held = held[:1]
sources = ["127.0.0.%d" % (2 + i // per_source) for i in range(total - 1)]
held += [connect(source) for source in sources]
result["earlier_open"] = result["earlier_open"] and answered(held[-1])
extra = connect("127.0.0.250")
result["full_refused"] = closed_by_server(extra, 2)
result["earlier_open"] = result["earlier_open"] and answered(held[0])
extra.close()
for s in held:
    s.close()
time.sleep(0.5)  # the server sees the closes
fresh = connect()
result["after_release"] = answered(fresh)
fresh.close()

drip = connect()
start = time.monotonic()
sent = 0
closed_after = None
payload = framed * 1000  # more bytes than the drip can send
while time.monotonic() - start < drip_seconds:
    try:
        drip.send(payload[sent:sent + 1])
        sent += 1
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - start
        break
    if closed_by_server(drip, 0.5):
        closed_after = time.monotonic() - start
        break
result["drip_closed_after"] = closed_after
result["drip_bytes"] = sent
print(json.dumps(result))
