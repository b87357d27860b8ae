#!/usr/bin/env python3
"""gRPC across the mesh with the real gRPC library (grpcio): a server with grpc's interop
TestService (doc/interop-test-descriptions.md), the health service and a probe service,
and a client that runs the interop cases and more against it through whatever port it is
given. The messages are the interop protos' fields, encoded here by hand (a few varints and
byte strings), so that no generated code is needed.

usage:
  grpc_interop.py server [NAME]     prints {"grpc": PORT}; serves until stdin closes
                                    (Probe/Who answers NAME)
  grpc_interop.py client PORT       runs every case; prints {"case": "ok" | "why it failed", ...}
  grpc_interop.py call PORT METHOD TIMEOUT_S [SLEEP_MS]
                                    one unary call (Probe/Sleep, or any METHOD path); prints
                                    {"code", "details", "trailing", "seconds"}
  grpc_interop.py who PORT COUNT [KEY=VALUE ...]
                                    COUNT Probe/Who calls with that metadata; prints how
                                    many each server (or error code) answered
"""
import json, queue, sys, threading, time
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

MiB = 1 << 20
OPTIONS = [("grpc.max_receive_message_length", 16 * MiB), ("grpc.max_send_message_length", 16 * MiB),
           ("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0)]
CODES = {code.value[0]: code for code in grpc.StatusCode}
SPECIAL = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


# MARK: the few protobuf fields the interop messages use

def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def vfield(number, value):
    return varint(number << 3) + varint(value)


def bfield(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def parse(data):
    fields, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, i = read_varint(data, i)
        elif kind == 2:
            size, i = read_varint(data, i)
            value, i = data[i:i + size], i + size
        else:
            raise ValueError(f"wire type {kind}")
        fields.setdefault(number, []).append(value)
    return fields


def read_varint(data, i):
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def payload(size):
    return bfield(3, bfield(2, bytes(size)))


def payload_size(message, number):
    body = parse(parse(message).get(number, [b""])[0]).get(2, [b""])[0]
    return len(body)


def status_field(code, message):
    return bfield(7, vfield(1, code) + bfield(2, message.encode()))


def streaming_request(sizes, request_size=0, status=None):
    out = b"".join(bfield(2, vfield(1, size)) for size in sizes)
    if request_size:
        out += payload(request_size)
    if status:
        out += status_field(*status)
    return out


# MARK: server

class Server:
    def __init__(self, name=""):
        self.name = name.encode()
        self.cancelled = 0
        self.lock = threading.Lock()

    @staticmethod
    def echo_metadata(context):
        metadata = dict(context.invocation_metadata())
        if "x-grpc-test-echo-initial" in metadata:
            context.send_initial_metadata([("x-grpc-test-echo-initial", metadata["x-grpc-test-echo-initial"])])
        if "x-grpc-test-echo-trailing-bin" in metadata:
            context.set_trailing_metadata(
                [("x-grpc-test-echo-trailing-bin", metadata["x-grpc-test-echo-trailing-bin"])])

    @staticmethod
    def respond_status(fields, context):
        if 7 in fields:
            status = parse(fields[7][0])
            code = status.get(1, [0])[0]
            if code:
                context.abort(CODES[code], status.get(2, [b""])[0].decode())

    def empty_call(self, request, context):
        return b""

    def unary_call(self, request, context):
        self.echo_metadata(context)
        fields = parse(request)
        self.respond_status(fields, context)
        return bfield(1, bfield(2, bytes(fields.get(2, [0])[0])))

    @staticmethod
    def responses_for(fields):
        """The responses a StreamingOutputCallRequest asks for: a size and a pause each."""
        for parameters in fields.get(2, []):
            parameter = parse(parameters)
            time.sleep(parameter.get(2, [0])[0] / 1e6)
            yield bfield(1, bfield(2, bytes(parameter.get(1, [0])[0])))

    def streaming_output_call(self, request, context):
        fields = parse(request)
        yield from self.responses_for(fields)
        self.respond_status(fields, context)

    def streaming_input_call(self, requests, context):
        total = sum(payload_size(request, 1) for request in requests)
        return vfield(1, total)

    def full_duplex_call(self, requests, context):
        self.echo_metadata(context)
        for request in requests:
            fields = parse(request)
            yield from self.responses_for(fields)
            self.respond_status(fields, context)

    def probe_status(self, request, context):
        """The status asked for, after `after` messages and `delay_ms`, with trailing metadata."""
        ask = json.loads(request)
        for i in range(ask.get("after", 0)):
            yield b"message %d" % i
        time.sleep(ask.get("delay_ms", 0) / 1000)
        context.set_trailing_metadata([(k, v.encode("latin-1") if k.endswith("-bin") else v)
                                       for k, v in ask.get("trailing", {}).items()])
        if ask["code"]:
            context.abort(CODES[ask["code"]], ask.get("message", ""))

    def probe_sleep(self, request, context):
        """Sleeps the milliseconds asked for, unless the call is cancelled first (counted)."""
        deadline = time.monotonic() + int(request or b"0") / 1000
        while time.monotonic() < deadline:
            if not context.is_active():
                with self.lock:
                    self.cancelled += 1
                break
            time.sleep(0.01)
        return b"slept"

    def probe_cancellations(self, request, context):
        with self.lock:
            return str(self.cancelled).encode()

    def probe_who(self, request, context):
        return self.name


def serve(name=""):
    app = Server(name)
    identity = {"request_deserializer": None, "response_serializer": None}
    test_service = grpc.method_handlers_generic_handler("grpc.testing.TestService", {
        "EmptyCall": grpc.unary_unary_rpc_method_handler(app.empty_call, **identity),
        "UnaryCall": grpc.unary_unary_rpc_method_handler(app.unary_call, **identity),
        "StreamingOutputCall": grpc.unary_stream_rpc_method_handler(app.streaming_output_call, **identity),
        "StreamingInputCall": grpc.stream_unary_rpc_method_handler(app.streaming_input_call, **identity),
        "FullDuplexCall": grpc.stream_stream_rpc_method_handler(app.full_duplex_call, **identity),
    })
    probe = grpc.method_handlers_generic_handler("meshwork.test.Probe", {
        "Status": grpc.unary_stream_rpc_method_handler(app.probe_status, **identity),
        "Sleep": grpc.unary_unary_rpc_method_handler(app.probe_sleep, **identity),
        "Cancellations": grpc.unary_unary_rpc_method_handler(app.probe_cancellations, **identity),
        "Who": grpc.unary_unary_rpc_method_handler(app.probe_who, **identity),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=OPTIONS)
    server.add_generic_rpc_handlers((test_service, probe))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("grpc.testing.TestService", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"grpc": port}), flush=True)
    sys.stdin.read()
    server.stop(0)


# MARK: client

class Client:
    def __init__(self, port):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)

    def unary(self, path):
        return self.channel.unary_unary(path)

    def stream_out(self, path):
        return self.channel.unary_stream(path)

    def stream_in(self, path):
        return self.channel.stream_unary(path)

    def duplex(self, path):
        return self.channel.stream_stream(path)


def expect(condition, why):
    if not condition:
        raise AssertionError(why)


def expect_error(call, code, details=None):
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            list(result)
    except grpc.RpcError as error:
        expect(error.code() == code, f"code {error.code()} ({error.details()!r}), expected {code}")
        if details is not None:
            expect(error.details() == details, f"details {error.details()!r}, expected {details!r}")
        return error
    raise AssertionError(f"no error, expected {code}")


T = "/grpc.testing.TestService/"


def empty_unary(c):
    expect(c.unary(T + "EmptyCall")(b"", timeout=10) == b"", "non-empty answer")


def large_unary(c):
    answer = c.unary(T + "UnaryCall")(vfield(2, 314159) + payload(271828), timeout=10)
    expect(payload_size(answer, 1) == 314159, f"payload {payload_size(answer, 1)}")


def client_streaming(c):
    requests = iter([bfield(1, bfield(2, bytes(n))) for n in (27182, 8, 1828, 45904)])
    answer = c.stream_in(T + "StreamingInputCall")(requests, timeout=10)
    expect(parse(answer).get(1, [0])[0] == 74922, f"aggregated {parse(answer)}")


def server_streaming(c):
    sizes = [payload_size(m, 1) for m in c.stream_out(T + "StreamingOutputCall")(
        streaming_request([31415, 9, 2653, 58979]), timeout=10)]
    expect(sizes == [31415, 9, 2653, 58979], f"sizes {sizes}")


class Feed:
    """A request stream the test writes to as it goes."""
    def __init__(self):
        self.queue = queue.Queue()

    def send(self, message):
        self.queue.put(message)

    def close(self):
        self.queue.put(None)

    def __iter__(self):
        return self

    def __next__(self):
        message = self.queue.get()
        if message is None:
            raise StopIteration
        return message


def ping_pong(c):
    feed = Feed()
    responses = c.duplex(T + "FullDuplexCall")(feed, timeout=10)
    for request_size, response_size in ((27182, 31415), (8, 9), (1828, 2653), (45904, 58979)):
        feed.send(streaming_request([response_size], request_size))
        got = payload_size(next(responses), 1)
        expect(got == response_size, f"response of {got}, expected {response_size}")
    feed.close()
    expect(list(responses) == [], "responses after the last")
    expect(responses.code() == grpc.StatusCode.OK, f"status {responses.code()}")


def empty_stream(c):
    responses = c.duplex(T + "FullDuplexCall")(iter([]), timeout=10)
    expect(list(responses) == [], "responses to no request")
    expect(responses.code() == grpc.StatusCode.OK, f"status {responses.code()}")


def timeout_on_sleeping_server(c):
    feed = Feed()
    feed.send(streaming_request([], 27182))
    responses = c.duplex(T + "FullDuplexCall")(feed, timeout=0.001)
    expect_error(lambda: list(responses), grpc.StatusCode.DEADLINE_EXCEEDED)
    feed.close()


def cancel_after_begin(c):
    feed = Feed()
    call = c.stream_in(T + "StreamingInputCall").future(feed, timeout=10)
    expect(call.cancel(), "the call could not be cancelled")
    expect(call.code() == grpc.StatusCode.CANCELLED, f"code {call.code()}")
    feed.close()


def cancellations(c):
    return int(c.unary("/meshwork.test.Probe/Cancellations")(b"", timeout=10))


def cancel_after_first_response(c):
    feed = Feed()
    responses = c.duplex(T + "FullDuplexCall")(feed, timeout=10)
    feed.send(streaming_request([31415], 27182))
    expect(payload_size(next(responses), 1) == 31415, "first response")
    responses.cancel()
    expect_error(lambda: list(responses), grpc.StatusCode.CANCELLED)
    feed.close()


def cancellation_reaches_the_server(c):
    """A call cancelled while the server works on it: the server sees it end (its RST_STREAM
    crossed every hop), rather than working on for nobody."""
    before = cancellations(c)
    call = c.unary("/meshwork.test.Probe/Sleep").future(b"5000", timeout=10)
    time.sleep(0.3)
    expect(call.cancel(), "the call could not be cancelled")
    deadline = time.monotonic() + 3
    while cancellations(c) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    expect(cancellations(c) > before, "the server never saw the cancellation")


def status_code_and_message(c):
    message = "test status message"
    expect_error(lambda: c.unary(T + "UnaryCall")(status_field(2, message), timeout=10),
                 grpc.StatusCode.UNKNOWN, message)
    expect_error(lambda: list(c.duplex(T + "FullDuplexCall")(iter([streaming_request([], 0, (2, message))]),
                                                             timeout=10)),
                 grpc.StatusCode.UNKNOWN, message)


def special_status_message(c):
    expect_error(lambda: c.unary(T + "UnaryCall")(status_field(2, SPECIAL), timeout=10),
                 grpc.StatusCode.UNKNOWN, SPECIAL)


def custom_metadata(c):
    metadata = [("x-grpc-test-echo-initial", "test_initial_metadata_value"),
                ("x-grpc-test-echo-trailing-bin", b"\xab\xab\xab")]
    _, call = c.unary(T + "UnaryCall").with_call(vfield(2, 314159) + payload(271828), metadata=metadata, timeout=10)
    expect(dict(call.initial_metadata()).get("x-grpc-test-echo-initial") == "test_initial_metadata_value",
           f"initial metadata {call.initial_metadata()}")
    expect(dict(call.trailing_metadata()).get("x-grpc-test-echo-trailing-bin") == b"\xab\xab\xab",
           f"trailing metadata {call.trailing_metadata()}")
    responses = c.duplex(T + "FullDuplexCall")(iter([streaming_request([314159], 271828)]), metadata=metadata,
                                               timeout=10)
    expect([payload_size(m, 1) for m in responses] == [314159], "duplex response")
    expect(dict(responses.initial_metadata()).get("x-grpc-test-echo-initial") == "test_initial_metadata_value",
           f"duplex initial metadata {responses.initial_metadata()}")
    expect(dict(responses.trailing_metadata()).get("x-grpc-test-echo-trailing-bin") == b"\xab\xab\xab",
           f"duplex trailing metadata {responses.trailing_metadata()}")


def unimplemented_method(c):
    expect_error(lambda: c.unary(T + "UnimplementedCall")(b"", timeout=10), grpc.StatusCode.UNIMPLEMENTED)


def unimplemented_service(c):
    expect_error(lambda: c.unary("/grpc.testing.UnimplementedService/UnimplementedCall")(b"", timeout=10),
                 grpc.StatusCode.UNIMPLEMENTED)


def probe_status(c, code, after, delay_ms=0):
    message = f"\u00e9tat {code} \u263a \U0001f608 %%20 done"
    trailing = {"x-detail": f"value-{code}", "x-raw-bin": "\x00\xff\x01"}
    ask = json.dumps({"code": code, "after": after, "delay_ms": delay_ms, "message": message,
                      "trailing": trailing}).encode()
    responses = c.stream_out("/meshwork.test.Probe/Status")(ask, timeout=10)
    got = []
    try:
        for message_bytes in responses:
            got.append(message_bytes)
        expect(code == 0, f"status OK, expected {CODES[code]}")
    except grpc.RpcError as error:
        expect(error.code() == CODES[code], f"code {error.code()}, expected {CODES[code]}")
        expect(error.details() == message, f"details {error.details()!r}, expected {message!r}")
    expect(len(got) == after, f"{len(got)} messages before the status, expected {after}")
    trailers = dict(responses.trailing_metadata() or ())
    expect(trailers.get("x-detail") == f"value-{code}" and trailers.get("x-raw-bin") == b"\x00\xff\x01",
           f"trailing metadata {trailers}")


def every_status_trailers_only(c):
    for code in range(1, 17):
        probe_status(c, code, after=0)


def every_status_after_messages(c):
    for code in range(0, 17):
        probe_status(c, code, after=2)


def status_delayed_after_last_message(c):
    probe_status(c, 0, after=3, delay_ms=150)
    probe_status(c, 5, after=3, delay_ms=150)


def messages_of_4_mib(c):
    size = 4 * MiB
    answer = c.unary(T + "UnaryCall")(vfield(2, size) + payload(size), timeout=20)
    expect(payload_size(answer, 1) == size, f"payload {payload_size(answer, 1)}")
    requests = [streaming_request([size], size) for _ in range(3)]
    sizes = [payload_size(m, 1) for m in c.duplex(T + "FullDuplexCall")(iter(requests), timeout=20)]
    expect(sizes == [size] * 3, f"duplex sizes {sizes}")


def caller_deadline_wins(c):
    start = time.monotonic()
    expect_error(lambda: c.unary("/meshwork.test.Probe/Sleep")(b"3000", timeout=0.3),
                 grpc.StatusCode.DEADLINE_EXCEEDED)
    elapsed = time.monotonic() - start
    expect(elapsed < 1.5, f"DEADLINE_EXCEEDED after {elapsed:.2f} s for a 0.3 s deadline")


def health_service(c):
    stub = health_pb2_grpc.HealthStub(c.channel)
    for service in ("", "grpc.testing.TestService"):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        expect(answer.status == health_pb2.HealthCheckResponse.SERVING, f"{service!r}: {answer.status}")
    expect_error(lambda: stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10),
                 grpc.StatusCode.NOT_FOUND)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="grpc.testing.TestService"), timeout=10)
    expect(next(watch).status == health_pb2.HealthCheckResponse.SERVING, "watch")
    watch.cancel()


CASES = [empty_unary, large_unary, client_streaming, server_streaming, ping_pong, empty_stream,
         timeout_on_sleeping_server, cancel_after_begin, cancel_after_first_response, cancellation_reaches_the_server,
         status_code_and_message,
         special_status_message, custom_metadata, unimplemented_method, unimplemented_service,
         every_status_trailers_only, every_status_after_messages, status_delayed_after_last_message,
         messages_of_4_mib, caller_deadline_wins, health_service]


def run_client(port):
    client = Client(int(port))
    results = {}
    for case in CASES:
        try:
            case(client)
            results[case.__name__] = "ok"
        except Exception as error:  # noqa: BLE001 - every failure is reported by name
            results[case.__name__] = f"{type(error).__name__}: {error}"
    print(json.dumps(results), flush=True)


def call(port, method, timeout, sleep_ms="2000"):
    client = Client(int(port))
    path = "/meshwork.test.Probe/Sleep" if method == "Sleep" else method
    start = time.monotonic()
    try:
        _, result = client.unary(path).with_call(sleep_ms.encode(), timeout=float(timeout))
        code, details, trailing = "OK", result.details(), result.trailing_metadata()
    except grpc.RpcError as error:
        code, details, trailing = error.code().name, error.details(), error.trailing_metadata()
    print(json.dumps({"code": code, "details": details, "seconds": round(time.monotonic() - start, 3),
                      "trailing": {k: v if isinstance(v, str) else v.hex() for k, v in (trailing or ())}}),
          flush=True)


def calls(port, count):
    """`count` quick unary calls, one after another on one channel: how many ended with each code."""
    client = Client(int(port))
    codes = {}
    for _ in range(int(count)):
        try:
            client.unary("/meshwork.test.Probe/Sleep").with_call(b"0", timeout=5)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        codes[code] = codes.get(code, 0) + 1
    print(json.dumps(codes), flush=True)


def who(port, count, *metadata):
    """`count` Probe/Who calls on one channel: how many each server name (or error code) answered."""
    client = Client(int(port))
    pairs = [tuple(item.split("=", 1)) for item in metadata]
    answers = {}
    for _ in range(int(count)):
        try:
            answer = client.unary("/meshwork.test.Probe/Who")(b"", timeout=5, metadata=pairs).decode()
        except grpc.RpcError as error:
            answer = error.code().name
        answers[answer] = answers.get(answer, 0) + 1
    print(json.dumps(answers), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        serve(*sys.argv[2:3])
    elif mode == "who":
        who(*sys.argv[2:])
    elif mode == "client":
        run_client(sys.argv[2])
    elif mode == "calls":
        calls(*sys.argv[2:])
    else:
        call(*sys.argv[2:])
