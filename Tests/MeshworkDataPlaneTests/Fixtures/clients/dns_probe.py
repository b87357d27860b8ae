"""A DNS client for the end-to-end tests (dnspython): asks the controller's DNS server
over UDP and TCP and prints what came back as JSON, one object per question.

usage: dns_probe.py PORT NAME TYPE [udp|tcp|edns=SIZE]...
       dns_probe.py PORT --garbage COUNT   (sends COUNT malformed packets, then one good query)
"""
import json
import os
import random
import socket
import sys

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def describe(response):
    def rrsets(section):
        out = []
        for rrset in section:
            for item in rrset:
                out.append({"name": rrset.name.to_text(), "type": dns.rdatatype.to_text(rrset.rdtype),
                            "ttl": rrset.ttl, "data": item.to_text()})
        return out
    return {
        "rcode": dns.rcode.to_text(response.rcode()),
        "tc": bool(response.flags & dns.flags.TC),
        "aa": bool(response.flags & dns.flags.AA),
        "answer": rrsets(response.answer),
        "authority": rrsets(response.authority),
        "additional": rrsets(response.additional),
        "edns": response.edns,
        "payload": response.payload if response.edns >= 0 else None,
    }


def ask(port, name, rdtype, how):
    if how.startswith("edns="):
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=int(how[5:]))
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=3, ignore_trailing=False)
    elif how == "tcp":
        query = dns.message.make_query(name, rdtype)
        response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=3)
    else:
        query = dns.message.make_query(name, rdtype, use_edns=False)
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=3, raise_on_truncation=False)
    return describe(response)


def garbage(port, count):
    """Malformed datagrams of every kind; the server must keep answering good queries."""
    rng = random.Random(5)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.05)
    formerr = 0
    good = dns.message.make_query("orders.service.mesh", "A", use_edns=False).to_wire()
    for i in range(count):
        kind = i % 4
        if kind == 0:
            packet = os.urandom(rng.randint(0, 64))
        elif kind == 1:
            packet = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
            packet = bytes(packet)
        elif kind == 2:
            packet = good[:rng.randint(12, len(good) - 1)]  # cut short after the header
            packet = packet[:2] + b"\x01\x00" + packet[4:]
        else:
            packet = good[:12] + b"\xc0\x0c\x00\x01\x00\x01"  # a name pointing at itself
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            data, _ = sock.recvfrom(4096)
            if len(data) >= 4 and data[3] & 0x0F == 1:
                formerr += 1
        except socket.timeout:
            pass
    # A TCP connection that sends half a message and stalls must not block anyone else.
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(b"\x00\x40\x12")
    response = dns.query.udp(dns.message.make_query("orders.service.mesh", "A"), "127.0.0.1", port=port, timeout=3)
    tcp_response = dns.query.tcp(dns.message.make_query("orders.service.mesh", "A"), "127.0.0.1", port=port,
                                 timeout=3)
    stalled.close()
    return {"formerr": formerr, "after": describe(response), "after_tcp": describe(tcp_response)}


def main():
    port = int(sys.argv[1])
    if sys.argv[2] == "--garbage":
        print(json.dumps(garbage(port, int(sys.argv[3]))))
        return
    name, rdtype = sys.argv[2], sys.argv[3]
    results = [ask(port, name, rdtype, how) for how in (sys.argv[4:] or ["udp"])]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
