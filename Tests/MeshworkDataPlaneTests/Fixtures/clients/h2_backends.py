#!/usr/bin/env python3
"""Many h2c backends in one process, for subsetting tests: N listeners that answer every
HTTP/2 (prior knowledge) request with 200 and count, per listener, the connections and
requests they got. A control listener answers GET /counts over HTTP/1.1 with
{"PORT": {"connections": C, "requests": R}, ...}.

usage: h2_backends.py N   (prints {"control": PORT, "b0": PORT, ..., "bN-1": PORT} and serves
until stdin closes)
"""
import json, socket, sys, threading
import h2.config, h2.connection, h2.events, h2.exceptions

lock = threading.Lock()
counts = {}


def serve_h2(conn, port):
    with lock:
        counts[port]["connections"] += 1
    h2conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    h2conn.initiate_connection()
    conn.sendall(h2conn.data_to_send())
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    with lock:
                        counts[port]["requests"] += 1
                    body = b"backend %d\n" % port
                    h2conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                    h2conn.send_data(event.stream_id, body, end_stream=True)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            out = h2conn.data_to_send()
            if out:
                conn.sendall(out)
    except (OSError, h2.exceptions.ProtocolError):
        return
    finally:
        conn.close()


def accept_loop(listener, handler, *args):
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handler, args=(conn, *args), daemon=True).start()


def serve_control(conn):
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        with lock:
            body = json.dumps({str(port): value for port, value in counts.items()}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (len(body), body))
    finally:
        conn.close()


def listen():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(256)
    return s


def main():
    n = int(sys.argv[1])
    backends = [listen() for _ in range(n)]
    control = listen()
    for s in backends:
        port = s.getsockname()[1]
        counts[port] = {"connections": 0, "requests": 0}
        threading.Thread(target=accept_loop, args=(s, serve_h2, port), daemon=True).start()
    threading.Thread(target=accept_loop, args=(control, serve_control), daemon=True).start()
    ports = {"control": control.getsockname()[1]}
    for index, s in enumerate(backends):
        ports["b%d" % index] = s.getsockname()[1]
    print(json.dumps(ports), flush=True)
    sys.stdin.read()


main()
