#!/usr/bin/env python3
"""The caller of the response matrix: every status x body shape x method of shapes_app.py,
sent through each target (a listener of the mesh) by an HTTP/1.1 client (raw sockets, a
keep-alive connection, its own strict response parser) or an HTTP/2 client (Python's h2,
prior knowledge, one connection), each case bounded by a deadline. A case passes when the
whole answer arrived before its deadline with the final status asked for, the interim
answers it implies (100 Continue for an expectation, 103 Early Hints), exactly the body its
shape and the HTTP rules imply (none for HEAD, 204 and 304), its trailers, and the app's
account of the request body (x-request).

usage: shapes_matrix.py TARGETS_JSON [SECONDS [CONNECTIONS]]
  TARGETS_JSON: [{"name": ..., "port": ..., "caller": "h1" | "h2", "authority": ...}, ...]
prints {"cases": N, "failures": [{"target", "case", "reason", "seconds"}, ...], "slowest": S}
"""
import json, os, socket, sys, threading, time
import h2.config, h2.connection, h2.events, h2.exceptions

STATUSES = (100, 103, 200, 204, 206, 301, 304, 404, 500, 503)
BODIES = ("none", "cl0", "length", "chunked", "trailers", "late-trailers")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")
REQUEST_BODY = b"ping!"
TRAILER = ("x-checksum", "5eb63bbb")


class Failure(Exception):
    pass


def receive(sock, deadline):
    """One recv, bounded by the case's deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise Failure("deadline passed")
    sock.settimeout(left)
    try:
        return sock.recv(65536)
    except socket.timeout:
        raise Failure("deadline passed")


def expectation(method, status, body):
    final = 200 if status in (100, 103) else status
    has_body = method in ("POST", "PUT")
    interim = []
    if status == 100 and has_body:
        interim = [100]
    elif status == 103:
        interim = [103]
    bodiless = method == "HEAD" or final in (204, 304)
    content = b"" if bodiless or body in ("none", "cl0") else b"hello world"
    trailers = body in ("trailers", "late-trailers") and not bodiless
    return {
        "final": final,
        "interim": interim,
        "body": content,
        "trailers": trailers,
        "request": f"{method} {len(REQUEST_BODY) if has_body else 0}",
        "expect": status == 100 and has_body,
        "has_body": has_body,
    }


def check(expected, interim, status, headers, body, trailers):
    if interim != expected["interim"]:
        raise Failure(f"interim answers {interim}, expected {expected['interim']}")
    if status != expected["final"]:
        raise Failure(f"status {status}, expected {expected['final']} ({headers.get('x-meshwork-error', '')})")
    if body != expected["body"]:
        raise Failure(f"body {body[:40]!r}, expected {expected['body']!r}")
    if headers.get("x-request") != expected["request"]:
        raise Failure(f"x-request {headers.get('x-request')!r}, expected {expected['request']!r}")
    if expected["trailers"] and trailers.get(TRAILER[0]) != TRAILER[1]:
        raise Failure(f"trailers {trailers}, expected {TRAILER[0]}: {TRAILER[1]}")
    if not expected["trailers"] and TRAILER[0] in trailers:
        raise Failure(f"unexpected trailers {trailers}")


# MARK: HTTP/1.1

class HTTP1Caller:
    def __init__(self, port, authority):
        self.port, self.authority = port, authority
        self.sock, self.buffer = None, b""

    def close(self):
        if self.sock:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def recv(self, deadline):
        return receive(self.sock, deadline)

    def fill(self, marker_or_count, deadline):
        while (marker_or_count not in self.buffer) if isinstance(marker_or_count, bytes) \
                else (len(self.buffer) < marker_or_count):
            data = self.recv(deadline)
            if not data:
                raise Failure("connection closed mid-answer")
            self.buffer += data

    def head(self, deadline):
        self.fill(b"\r\n\r\n", deadline)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, code, *_ = lines[0].split(" ", 2)
        if version != "HTTP/1.1":
            raise Failure(f"status line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name in headers:
                raise Failure(f"repeated header {name}")
            headers[name] = value.strip()
        return int(code), headers

    def call(self, method, path, expected, deadline):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = f"{method} {path} HTTP/1.1\r\nhost: {self.authority}\r\n"
        if expected["has_body"]:
            request += f"content-length: {len(REQUEST_BODY)}\r\n"
        if expected["expect"]:
            request += "expect: 100-continue\r\n"
        self.sock.sendall((request + "\r\n").encode())
        interim = []
        body_sent = not expected["has_body"]
        if expected["has_body"] and not expected["expect"]:
            self.sock.sendall(REQUEST_BODY)
            body_sent = True
        while True:
            status, headers = self.head(deadline)
            if status >= 200:
                break
            interim.append(status)
            if status == 100 and not body_sent:
                self.sock.sendall(REQUEST_BODY)
                body_sent = True
        if not body_sent:
            raise Failure(f"final answer {status} before 100 Continue")
        body, trailers = b"", {}
        close = headers.get("connection", "").lower() == "close"
        if method == "HEAD" or status in (204, 304):
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            if "content-length" in headers:
                raise Failure("both content-length and chunked")
            while True:
                self.fill(b"\r\n", deadline)
                line, _, self.buffer = self.buffer.partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    break
                self.fill(size + 2, deadline)
                body += self.buffer[:size]
                self.buffer = self.buffer[size + 2:]
            self.fill(b"\r\n", deadline)
            while not self.buffer.startswith(b"\r\n"):
                self.fill(b"\r\n", deadline)
                line, _, self.buffer = self.buffer.partition(b"\r\n")
                name, _, value = line.decode().partition(":")
                trailers[name.strip().lower()] = value.strip()
                self.fill(b"\r\n", deadline)
            self.buffer = self.buffer[2:]
        elif "content-length" in headers:
            size = int(headers["content-length"])
            self.fill(size, deadline)
            body, self.buffer = self.buffer[:size], self.buffer[size:]
        else:
            # Close-delimited (RFC 9112 6.3, last rule).
            close = True
            while True:
                data = self.recv(deadline)
                if not data:
                    break
                self.buffer += data
            body, self.buffer = self.buffer, b""
        if close:
            self.close()
        return interim, status, headers, body, trailers


# MARK: HTTP/2

class HTTP2Caller:
    def __init__(self, port, authority):
        self.port, self.authority = port, authority
        self.sock, self.conn = None, None

    def close(self):
        if self.sock:
            self.sock.close()
        self.sock, self.conn = None, None

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def call(self, method, path, expected, deadline):
        if self.conn is None:
            self.connect()
        conn = self.conn
        stream = conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", self.authority)]
        if expected["has_body"]:
            headers.append(("content-length", str(len(REQUEST_BODY))))
        if expected["expect"]:
            headers.append(("expect", "100-continue"))
        conn.send_headers(stream, headers, end_stream=not expected["has_body"])
        body_sent = not expected["has_body"]
        if expected["has_body"] and not expected["expect"]:
            conn.send_data(stream, REQUEST_BODY, end_stream=True)
            body_sent = True
        self.sock.sendall(conn.data_to_send())
        interim, status, response, body, trailers = [], None, {}, b"", {}
        try:
            while True:
                data = receive(self.sock, deadline)
                if not data:
                    raise Failure("connection closed mid-answer")
                ended = False
                for event in conn.receive_data(data):
                    if getattr(event, "stream_id", stream) != stream:
                        continue
                    if isinstance(event, h2.events.InformationalResponseReceived):
                        code = int(dict(event.headers)[":status"])
                        interim.append(code)
                        if code == 100 and not body_sent:
                            conn.send_data(stream, REQUEST_BODY, end_stream=True)
                            body_sent = True
                    elif isinstance(event, h2.events.ResponseReceived):
                        response = dict(event.headers)
                        status = int(response.pop(":status"))
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = dict(event.headers)
                    elif isinstance(event, h2.events.StreamReset):
                        raise Failure(f"stream reset ({event.error_code!r}) after status {status}")
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        raise Failure(f"GOAWAY ({event.error_code!r})")
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                self.sock.sendall(conn.data_to_send())
                if ended:
                    break
        except h2.exceptions.ProtocolError as error:
            raise Failure(f"protocol error: {error!r}")
        if not body_sent:
            raise Failure(f"final answer {status} before 100 Continue")
        return interim, status, response, body, trailers


def run_worker(target, seconds, cases, results):
    """Takes cases from the shared list until none is left, on one connection (a new one after
    a case that failed: its stream or connection may still be busy)."""
    Caller = HTTP1Caller if target["caller"] == "h1" else HTTP2Caller
    caller = Caller(target["port"], target.get("authority", "orders"))
    failures, slowest, count = [], 0.0, 0
    while True:
        try:
            method, status, body = cases.pop()
        except IndexError:
            break
        count += 1
        expected = expectation(method, status, body)
        start = time.monotonic()
        name = f"{method} /shape/{status}/{body}"
        try:
            check(expected, *caller.call(method, f"/shape/{status}/{body}", expected, start + seconds))
        except (Failure, OSError, ValueError) as error:
            failures.append({"target": target["name"], "case": name, "reason": str(error) or repr(error),
                             "seconds": round(time.monotonic() - start, 3)})
            caller.close()
        slowest = max(slowest, time.monotonic() - start)
    caller.close()
    results.append((count, failures, slowest))


def main():
    targets = json.loads(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    results, threads = [], []
    for target in targets:
        # Each target's cases are shared by a few connections, so that a run where many cases
        # wait for their deadline still ends in bounded time.
        cases = [(m, st, b) for st in STATUSES for b in BODIES for m in METHODS][::-1]
        for _ in range(workers):
            threads.append(threading.Thread(target=run_worker, args=(target, seconds, cases, results), daemon=True))
    for thread in threads:
        thread.start()
    # Every case is bounded, so the whole run is: a caller still running after that is stuck
    # in this client, and is reported rather than waited for.
    bound = time.monotonic() + len(STATUSES) * len(BODIES) * len(METHODS) * (seconds + 0.1) / workers + 10
    for thread in threads:
        thread.join(max(0, bound - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        results = list(results) + [(0, [{"target": "*", "case": "*", "reason": "a caller got stuck", "seconds": 0}], 0)]
    print(json.dumps({
        "cases": sum(r[0] for r in results),
        "failures": [f for r in results for f in r[1]],
        "slowest": round(max((r[2] for r in results), default=0), 3),
    }), flush=True)
    os._exit(0)


main()
