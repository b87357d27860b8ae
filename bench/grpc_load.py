#!/usr/bin/env python3
"""gRPC load for bench/run.py, with the real gRPC library (grpcio, asyncio API): an echo
server and a closed-loop load client. Methods are registered generically (raw bytes in,
the same bytes out), so no generated code is needed; the proxies see real gRPC framing,
`te: trailers`, and `grpc-status` trailers.

usage:
  grpc_load.py server PORT
      serves /bench.Echo/Unary (answers the request's bytes) and /bench.Echo/Stream (a
      bidirectional stream answering each message with the same bytes) until killed
  grpc_load.py unary PORT SECONDS CONCURRENCY SIZE
      CONCURRENCY calls in flight on one channel for SECONDS, each a SIZE-byte message
  grpc_load.py stream PORT SECONDS STREAMS SIZE
      STREAMS bidirectional streams on one channel, each sending a message and waiting for
      its echo before the next, for SECONDS
prints {"ok": messages answered, "errors": {code: count}, "p50_ms", "p99_ms", "p999_ms"}
(per call for unary, per message round trip for streams)
"""
import asyncio, json, sys, time
import grpc

OPTIONS = [("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0), ("grpc.so_reuseport", 0)]


def identity(data):
    return data


async def serve(port):
    async def unary(request, context):
        return request

    async def stream(requests, context):
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, request_deserializer=identity, response_serializer=identity),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, request_deserializer=identity,
                                                        response_serializer=identity),
    })
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def percentile(latencies, p):
    if not latencies:
        return None
    latencies.sort()
    return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000.0


async def load(mode, port, seconds, concurrency, size):
    errors, latencies = {}, []
    message = bytes(size)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        deadline = time.monotonic() + seconds

        async def unary_worker():
            call = channel.unary_unary("/bench.Echo/Unary", request_serializer=identity,
                                       response_deserializer=identity)
            while time.monotonic() < deadline:
                start = time.monotonic()
                try:
                    await call(message, timeout=10)
                    latencies.append(time.monotonic() - start)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1

        async def stream_worker():
            call = channel.stream_stream("/bench.Echo/Stream", request_serializer=identity,
                                         response_deserializer=identity)(timeout=seconds + 10)
            try:
                while time.monotonic() < deadline:
                    start = time.monotonic()
                    await call.write(message)
                    await call.read()
                    latencies.append(time.monotonic() - start)
                await call.done_writing()
                code = await call.code()
                if code != grpc.StatusCode.OK:
                    errors[code.name] = errors.get(code.name, 0) + 1
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1

        worker = unary_worker if mode == "unary" else stream_worker
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"ok": len(latencies), "errors": errors, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "p999_ms": percentile(latencies, 99.9)}


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "server":
        asyncio.run(serve(port))
        return
    seconds, concurrency, size = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    print(json.dumps(asyncio.run(load(mode, port, seconds, concurrency, size))))


if __name__ == "__main__":
    main()
