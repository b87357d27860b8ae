"""An OTLP/HTTP trace receiver for the end-to-end tests: accepts POST /v1/traces
(application/x-protobuf), decodes each body with opentelemetry-proto's own
ExportTraceServiceRequest (a body that does not decode is answered 400 and reported),
and prints every span as one JSON line on stdout.

usage: otlp_receiver.py   (prints "listening PORT" first; binds 127.0.0.1 port 0)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        request = ExportTraceServiceRequest()
        try:
            if self.path != "/v1/traces":
                raise ValueError("unexpected path " + self.path)
            if self.headers.get("content-type") != "application/x-protobuf":
                raise ValueError("unexpected content-type %s" % self.headers.get("content-type"))
            request.ParseFromString(body)
        except Exception as error:  # reported to the test, which fails on it
            print(json.dumps({"error": str(error)}), flush=True)
            self.send_response(400)
            self.end_headers()
            return
        for resource_spans in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    print(json.dumps({
                        "service": resource.get("service.name"),
                        "scope": scope_spans.scope.name,
                        "traceId": span.trace_id.hex(),
                        "spanId": span.span_id.hex(),
                        "parentSpanId": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "status": span.status.code,
                        "attributes": {kv.key: value(kv.value) for kv in span.attributes},
                    }), flush=True)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Receiver)
print("listening %d" % server.server_address[1], flush=True)
server.serve_forever()
