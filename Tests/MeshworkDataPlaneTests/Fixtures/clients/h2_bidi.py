#!/usr/bin/env python3
"""A gRPC-style bidirectional stream over h2c with Python's h2: send a message, wait for
its echo, send the next. A proxy that buffered the request body until its end would never
deliver the first echo, so this only succeeds if both directions stream.

usage: h2_bidi.py PORT PATH MESSAGES   (prints 'ok N' or fails with a message, exit 1)
"""
import socket, sys, time
import h2.config, h2.connection, h2.events

port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
stream = conn.get_next_available_stream_id()
conn.send_headers(stream, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "orders"),
                           ("content-type", "application/grpc"), ("te", "trailers")])
sock.sendall(conn.data_to_send())

received = b""
status = None
deadline = time.time() + 10
for i in range(count):
    message = b"message-%04d;" % i
    conn.send_data(stream, message)
    sock.sendall(conn.data_to_send())
    expected = len(received) + len(message)
    while len(received) < expected:
        if time.time() > deadline:
            sys.exit(f"timed out waiting for the echo of message {i} (got {received[-40:]!r}): the body was buffered")
        data = sock.recv(65536)
        if not data:
            sys.exit(f"connection closed after {len(received)} bytes")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status")
            elif isinstance(event, h2.events.DataReceived):
                received += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamReset):
                sys.exit(f"stream reset: {event.error_code}")
        sock.sendall(conn.data_to_send())
    if not received.endswith(message):
        sys.exit(f"echo mismatch: {received[-40:]!r}")
conn.end_stream(stream)
sock.sendall(conn.data_to_send())
ended = False
while not ended and time.time() < deadline:
    data = sock.recv(65536)
    if not data:
        break
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.StreamEnded):
            ended = True
    sock.sendall(conn.data_to_send())
if status != b"200" or not ended:
    sys.exit(f"status {status!r}, ended {ended}")
print(f"ok {count}")
