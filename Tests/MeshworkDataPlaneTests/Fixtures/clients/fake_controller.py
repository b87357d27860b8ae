#!/usr/bin/env python3
"""A controller impostor for the join-token bootstrap test: HTTPS on 127.0.0.1 with a
certificate of its own CA, serving a trust bundle (the real mesh root beside its own, say)
at /v1/trust-bundle, and answering anything else 503. It records every handshake failure and
every request, and whether a request carried a join token or a CSR, one JSON line each.

usage: fake_controller.py CERT KEY BUNDLE RECORD   (prints {"api": PORT}; serves until stdin closes)
"""
import json, socketserver, ssl, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

cert, key, bundle_file, record_file = sys.argv[1:5]
bundle = open(bundle_file, "rb").read()
lock = threading.Lock()


def record(event):
    with lock, open(record_file, "a") as out:
        out.write(json.dumps(event) + "\n")


class Handler(BaseHTTPRequestHandler):
    def handle_one(self, method):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        text = body.decode("latin-1") + str(self.headers)
        record({"event": "request", "method": method, "path": self.path,
                "token": '"token"' in text or "authorization" in str(self.headers).lower(),
                "csr": "CERTIFICATE REQUEST" in text})
        if method == "GET" and self.path == "/v1/trust-bundle":
            self.send_response(200)
            self.send_header("content-type", "application/x-pem-file")
            self.send_header("content-length", str(len(bundle)))
            self.end_headers()
            self.wfile.write(bundle)
        else:
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

    def do_GET(self):
        self.handle_one("GET")

    def do_POST(self):
        self.handle_one("POST")

    def do_PUT(self):
        self.handle_one("PUT")

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)

    def finish_request(self, request, client_address):
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            record({"event": "handshake-failed", "error": str(error)})
            return
        try:
            super().finish_request(tls, client_address)
        except (ssl.SSLError, OSError) as error:
            record({"event": "connection-failed", "error": str(error)})


server = Server()
threading.Thread(target=server.serve_forever, daemon=True).start()
print(json.dumps({"api": server.server_address[1]}), flush=True)
sys.stdin.read()
