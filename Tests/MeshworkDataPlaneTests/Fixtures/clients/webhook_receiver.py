"""A rollout webhook receiver for the tests: POST /accept answers 200, POST /refuse 503,
POST /slow 200 after 2 s (longer than the hook's timeout in the tests);
every POST is kept, and GET /log answers them as JSON. Prints {"http": PORT} and serves
until its stdin closes."""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = []


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = min(int(self.headers.get("content-length", "0")), 1 << 16)
        body = self.rfile.read(length)
        try:
            received.append({"path": self.path, "body": json.loads(body or b"{}")})
        except ValueError:
            received.append({"path": self.path, "body": None})
        if self.path == "/slow":
            time.sleep(2)
        self.send_response(200 if self.path in ("/accept", "/slow") else 503)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        data = json.dumps(received).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(json.dumps({"http": server.server_address[1]}), flush=True)
sys.stdin.read()
server.shutdown()
