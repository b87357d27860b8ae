#!/usr/bin/env python3
"""An HTTP/2 client (Python's h2) that goes quiet in one of four ways, to see how long the
server keeps its connection.

usage: h2_quiet.py PORT MODE SECONDS
  no-headers  preface and SETTINGS, answers PINGs, never opens a stream
  idle        one GET, reads the whole response, then answers PINGs and nothing else
  silent      a GET to /delay/30000 (30 s, in flight), then sends nothing more, not even PING ACKs
  answering   a GET to /delay/30000 (30 s, in flight), answering PINGs
prints {"closed_after": seconds or null (still open after SECONDS), "goaway": bool,
        "last_stream_id": int or null, "pings": n}; the clock starts when the client goes
quiet (after the response in "idle", after the HEADERS otherwise)
"""
import json, socket, sys, time
import h2.config, h2.connection, h2.events

port, mode, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
state = {"goaway": False, "last_stream_id": None, "pings": 0, "ended": False}
answering = mode != "silent"


def receive(timeout):
    """False once the server closed the connection."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return True
    except OSError:
        return False
    if not data:
        return False
    if not answering and state["ended"]:
        return True  # bytes arrive (PINGs); this client stays deaf
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ConnectionTerminated):
            state["goaway"] = True
            state["last_stream_id"] = event.last_stream_id
        elif isinstance(event, h2.events.PingReceived):
            state["pings"] += 1
        elif isinstance(event, h2.events.StreamEnded):
            state["response_done"] = True
    out = conn.data_to_send()
    if out and answering:
        sock.sendall(out)
    return True


# The server's SETTINGS, acknowledged.
receive(1)
if mode != "no-headers":
    path = "/" if mode == "idle" else "/delay/30000"
    conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "orders")],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    if mode == "idle":
        deadline = time.monotonic() + 5
        while not state.get("response_done") and time.monotonic() < deadline:
            if not receive(0.5):
                break
state["ended"] = True
start = time.monotonic()
closed_after = None
while time.monotonic() - start < seconds:
    if not receive(0.2):
        closed_after = round(time.monotonic() - start, 2)
        break
print(json.dumps({"closed_after": closed_after, "goaway": state["goaway"],
                  "last_stream_id": state["last_stream_id"], "pings": state["pings"]}))
