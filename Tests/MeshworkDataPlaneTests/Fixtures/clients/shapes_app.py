#!/usr/bin/env python3
"""An app that answers in every response shape, byte for byte as it is told, over HTTP/1.1
(raw sockets: no library normalises the framing) and h2c (Python's h2), for the response
matrix through the mesh (shapes_matrix.py is its caller).

The path says the shape: /shape/STATUS/BODY where STATUS is a final status (200, 204, ...),
or 100 (answer `100 Continue` to `Expect: 100-continue` before reading the body, then 200)
or 103 (send `103 Early Hints` first, then 200); BODY is one of
  none           no framing at all (HTTP/1.1: the body ends with the connection; h2: HEADERS
                 with END_STREAM)
  cl0            content-length: 0
  length         content-length: 11 and "hello world"
  chunked        no length: "hello " and "world" in two chunks (h2: two DATA frames)
  trailers       chunked, then the trailer x-checksum: 5eb63bbb
  late-trailers  chunked, then the trailers 50 ms after the last data
HEAD, 204 and 304 never get body bytes (RFC 9110 6.4.1, 9.3.2, 15.3.5, 15.4.5); they get
the framing headers their shape implies (a HEAD the length a GET would have), except that
204 never carries content-length or transfer-encoding (15.3.5).
Every answer carries x-request: METHOD BYTES, the request body size the app read.

usage: shapes_app.py   (prints {"http1": PORT, "h2c": PORT} and serves until stdin closes)
"""
import json, socket, sys, threading, time
import h2.config, h2.connection, h2.events, h2.exceptions

BODY = b"hello world"
TRAILER = ("x-checksum", "5eb63bbb")
BODIES = ("none", "cl0", "length", "chunked", "trailers", "late-trailers")


def parse_path(path):
    parts = path.split("?")[0].split("/")
    if len(parts) != 4 or parts[1] != "shape" or parts[3] not in BODIES:
        return None
    try:
        status = int(parts[2])
    except ValueError:
        return None
    return status, parts[3]


def final_status(status):
    return 200 if status in (100, 103) else status


def bodiless(method, status):
    return method == "HEAD" or status in (204, 304)


# MARK: HTTP/1.1

REASONS = {100: "Continue", 103: "Early Hints", 200: "OK", 204: "No Content", 206: "Partial Content",
           301: "Moved Permanently", 304: "Not Modified", 400: "Bad Request", 404: "Not Found",
           500: "Internal Server Error", 503: "Service Unavailable"}


def read_head(conn, buffer):
    while b"\r\n\r\n" not in buffer:
        data = conn.recv(65536)
        if not data:
            return None, buffer
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return (method, target, headers), rest


def read_body(conn, buffer, headers):
    """The request body (length or chunked), returning (size, rest of the buffer)."""
    def fill(count):
        nonlocal buffer
        while len(buffer) < count:
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("closed in a request body")
            buffer += data
    if "content-length" in headers:
        n = int(headers["content-length"])
        fill(n)
        return n, buffer[n:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        size = 0
        while True:
            while b"\r\n" not in buffer:
                fill(len(buffer) + 1)
            line, _, buffer = buffer.partition(b"\r\n")
            n = int(line.split(b";")[0], 16)
            if n == 0:
                while b"\r\n\r\n" not in b"\r\n" + buffer:
                    fill(len(buffer) + 1)
                _, _, buffer = (b"\r\n" + buffer).partition(b"\r\n\r\n")
                return size, buffer
            fill(n + 2)
            size += n
            buffer = buffer[n + 2:]
    return 0, buffer


def serve_http1(conn):
    buffer = b""
    try:
        while True:
            head, buffer = read_head(conn, buffer)
            if head is None:
                return
            method, target, headers = head
            shape = parse_path(target)
            if shape is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                continue
            status, body = shape
            if status == 100 and headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            size, buffer = read_body(conn, buffer, headers)
            if status == 103:
                conn.sendall(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
            code = final_status(status)
            out = [f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}", f"x-request: {method} {size}"]
            close = False
            no_body = bodiless(method, code)
            if body == "none":
                if not no_body:
                    out.append("connection: close")
                    close = True
            elif body == "cl0":
                if code != 204:
                    out.append("content-length: 0")
            elif body == "length":
                if code != 204:
                    out.append(f"content-length: {len(BODY)}")
            else:
                if code != 204:
                    out.append("transfer-encoding: chunked")
                if body != "chunked" and not no_body:
                    out.append(f"trailer: {TRAILER[0]}")
            wire = ("\r\n".join(out) + "\r\n\r\n").encode()
            if not no_body:
                if body == "length":
                    wire += BODY
                elif body in ("chunked", "trailers", "late-trailers"):
                    wire += b"6\r\nhello \r\n5\r\nworld\r\n"
                    if body == "late-trailers":
                        conn.sendall(wire)
                        time.sleep(0.05)
                        wire = b""
                    wire += b"0\r\n"
                    if body != "chunked":
                        wire += f"{TRAILER[0]}: {TRAILER[1]}\r\n".encode()
                    wire += b"\r\n"
            conn.sendall(wire)
            if close:
                conn.shutdown(socket.SHUT_WR)
                return
    except (ConnectionError, OSError, ValueError):
        return
    finally:
        conn.close()


# MARK: h2c

def serve_h2c(sock):
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    lock = threading.Lock()
    requests = {}

    def flush():
        data = conn.data_to_send()
        if data:
            sock.sendall(data)

    def respond(stream, headers, size):
        method, path = headers.get(":method"), headers.get(":path", "")
        shape = parse_path(path)
        with lock:
            if shape is None:
                conn.send_headers(stream, [(":status", "404"), ("content-length", "0")], end_stream=True)
                flush()
                return
            status, body = shape
            if status == 103:
                conn.send_headers(stream, [(":status", "103"), ("link", "</style.css>; rel=preload")])
            code = final_status(status)
            out = [(":status", str(code)), ("x-request", f"{method} {size}")]
            no_body = bodiless(method, code)
            if body == "cl0" and code != 204:
                out.append(("content-length", "0"))
            elif body == "length" and code != 204:
                out.append(("content-length", str(len(BODY))))
            if no_body or body in ("none", "cl0"):
                conn.send_headers(stream, out, end_stream=True)
                flush()
                return
            conn.send_headers(stream, out)
            if body == "length":
                conn.send_data(stream, BODY, end_stream=True)
                flush()
                return
            conn.send_data(stream, b"hello ")
            conn.send_data(stream, b"world", end_stream=(body == "chunked"))
            flush()
        if body == "chunked":
            return
        if body == "late-trailers":
            time.sleep(0.05)
        with lock:
            try:
                conn.send_headers(stream, [TRAILER], end_stream=True)
            except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
                print(f"shapes_app: {method} {path}: stream {stream} was reset before its trailers", file=sys.stderr)
            flush()

    with lock:
        flush()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            with lock:
                events = conn.receive_data(data)
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers)
                    requests[event.stream_id] = [headers, 0]
                    shape = parse_path(headers.get(":path", ""))
                    if shape and shape[0] == 100 and headers.get("expect") == "100-continue":
                        with lock:
                            conn.send_headers(event.stream_id, [(":status", "100")])
                    if event.stream_ended is not None:
                        requests.pop(event.stream_id)
                        threading.Thread(target=respond, args=(event.stream_id, headers, 0), daemon=True).start()
                elif isinstance(event, h2.events.DataReceived):
                    with lock:
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if event.stream_id in requests:
                        requests[event.stream_id][1] += len(event.data)
                    if event.stream_ended is not None and event.stream_id in requests:
                        headers, size = requests.pop(event.stream_id)
                        threading.Thread(target=respond, args=(event.stream_id, headers, size), daemon=True).start()
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                    # Request trailers, or an END_STREAM on its own.
                    headers, size = requests.pop(event.stream_id)
                    if headers.get(":method") is not None:
                        threading.Thread(target=respond, args=(event.stream_id, headers, size), daemon=True).start()
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            with lock:
                flush()
    except (ConnectionError, OSError, h2.exceptions.ProtocolError):
        return
    finally:
        sock.close()


def accept_loop(listener, serve):
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def listen():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    return listener


http1, h2c = listen(), listen()
threading.Thread(target=accept_loop, args=(http1, serve_http1), daemon=True).start()
threading.Thread(target=accept_loop, args=(h2c, serve_h2c), daemon=True).start()
print(json.dumps({"http1": http1.getsockname()[1], "h2c": h2c.getsockname()[1]}), flush=True)
sys.stdin.read()
