#!/usr/bin/env python3
"""Registration cost as the registry fills: is it flat in the registry's size?

Starts a release `meshwork controller` (SQLite store, DNS on, as by default) on
127.0.0.1, registers INSTANCES instances over SERVICES services from CONNECTIONS
keep-alive HTTPS connections at once (each registration committed before its answer;
`--connections 1`: one after another), and prints the rate of every STEP registrations.
Issue 21's target: flat, >= 1,000/s at 10,000.

    swift build -c release --product meshwork && python3 bench/registration.py
"""
import argparse, concurrent.futures, http.client, json, os, shutil, socket, ssl, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "meshwork"))
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--step", type=int, default=1_000)
    parser.add_argument("--dns", default="on", choices=["on", "off"])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ttl", type=int, default=0, help="instance TTL in seconds (0: none; no heartbeats are sent)")
    args = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="mw-reg-bench-")
    api, dns = free_port(), free_port()
    controller = subprocess.Popen(
        [args.binary, "controller", "--data-dir", os.path.join(directory, "d"), "--listen", f"127.0.0.1:{api}",
         "--dns", f"127.0.0.1:{dns}" if args.dns == "on" else "off", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "log"), "w"))
    try:
        ca = os.path.join(directory, "d", "ca.pem")
        deadline = time.monotonic() + 30
        while not os.path.exists(ca) and time.monotonic() < deadline:
            time.sleep(0.05)
        token_file = os.path.join(directory, "d", "token")
        while not os.path.exists(token_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        token = open(token_file).read().strip()
        headers = {"authorization": "Bearer " + token, "content-type": "application/json"}
        # Until the API answers (the CA file is written before the listener is bound).
        while True:
            connection = http.client.HTTPSConnection("127.0.0.1", api, timeout=30,
                                                     context=ssl.create_default_context(cafile=ca))
            try:
                connection.request("GET", "/v1/services", headers=headers)
                connection.getresponse().read()
                break
            except OSError:
                connection.close()
                if time.monotonic() > deadline:
                    sys.exit("the controller did not answer: " + open(os.path.join(directory, "log")).read())
                time.sleep(0.05)
        connection.close()
        local = threading.local()

        def register(i):
            if not hasattr(local, "connection"):
                local.connection = http.client.HTTPSConnection(
                    "127.0.0.1", api, timeout=30, context=ssl.create_default_context(cafile=ca))
            body = json.dumps({"service": f"svc-{i % args.services}",
                               "address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                               "port": 8080, "ttlSeconds": args.ttl})
            local.connection.request("PUT", f"/v1/instances/i-{i}", body, headers)
            answer = local.connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"registration {i}: {answer.status}")

        rates = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.connections) as pool:
            for start in range(0, args.instances, args.step):
                mark = time.monotonic()
                list(pool.map(register, range(start, min(args.instances, start + args.step))))
                rates.append(args.step / (time.monotonic() - mark))
                print(f"{start + args.step:>7} instances: the last {args.step} at {rates[-1]:.0f}/s", flush=True)
        print(f"first step {rates[0]:.0f}/s, last {rates[-1]:.0f}/s (x{rates[-1] / rates[0]:.2f}), "
              f"DNS {args.dns}, {args.connections} connection(s), ttl {args.ttl}")
    finally:
        controller.terminate()
        try:
            controller.wait(timeout=10)
        except subprocess.TimeoutExpired:
            controller.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
