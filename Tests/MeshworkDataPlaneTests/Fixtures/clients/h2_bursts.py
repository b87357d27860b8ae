#!/usr/bin/env python3
"""Bursts of concurrent HTTP/2 requests on one connection (Python's h2): every request of a
burst is sent at once, and the next burst starts once all of the previous one ended.

usage: h2_bursts.py PORT PATH BURSTS SIZE
prints {"statuses": {status: count}} over every burst
"""
import json, socket, sys
import h2.config, h2.connection, h2.events

port, path, bursts, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
statuses = {}
for _ in range(bursts):
    pending = set()
    for _ in range(size):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                   (":authority", "orders")], end_stream=True)
        pending.add(stream)
    sock.sendall(conn.data_to_send())
    while pending:
        data = sock.recv(65536)
        if not data:
            sys.exit("the server closed the connection")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"].decode()
                statuses[status] = statuses.get(status, 0) + 1
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                pending.discard(event.stream_id)
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
print(json.dumps({"statuses": statuses}))
