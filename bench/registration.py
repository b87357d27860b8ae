#!/usr/bin/env python3
"""Registration cost as the registry fills: is it flat in the registry's size?

Starts a release `meshwork controller` (SQLite store, DNS on, as by default) on
127.0.0.1, registers INSTANCES instances over SERVICES services, sequentially on one
keep-alive HTTPS connection (each registration committed before the answer), and prints
the rate of every STEP registrations. Issue 21's target: flat, >= 1,000/s at 10,000.

    swift build -c release --product meshwork && python3 bench/registration.py
"""
import argparse, http.client, json, os, shutil, socket, ssl, subprocess, sys, tempfile, time

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
        rates = []
        mark = time.monotonic()
        for i in range(args.instances):
            body = json.dumps({"service": f"svc-{i % args.services}",
                               "address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                               "port": 8080, "ttlSeconds": 0})
            connection.request("PUT", f"/v1/instances/i-{i}", body, headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                sys.exit(f"registration {i}: {answer.status}")
            if (i + 1) % args.step == 0:
                now = time.monotonic()
                rates.append(args.step / (now - mark))
                print(f"{i + 1:>7} instances: the last {args.step} at {rates[-1]:.0f}/s", flush=True)
                mark = now
        print(f"first step {rates[0]:.0f}/s, last {rates[-1]:.0f}/s (x{rates[-1] / rates[0]:.2f}), DNS {args.dns}")
    finally:
        controller.terminate()
        try:
            controller.wait(timeout=10)
        except subprocess.TimeoutExpired:
            controller.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
