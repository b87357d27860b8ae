#!/usr/bin/env python3
"""Watch fan-out benchmark: how long until every watcher has a registry change.

Starts a release `meshwork controller` on 127.0.0.1 (port 0, temp data dir), registers
INSTANCES instances over SERVICES services, opens WATCHERS watch streams (each on
--per-watcher random services, as a sidecar watches the services it calls), then makes
CHANGES instance changes at RATE per second (health flips, each committed to SQLite) and
records, for every watcher that should see a change, when its line arrived. Reports p50/p99
of the delay from sending the change to a watcher having it, p50/p99 of the delay until
*every* interested watcher has it, and the controller's peak RSS.

    swift build -c release --product meshwork && python3 bench/watch.py
"""
import argparse, asyncio, json, os, random, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round((len(values) - 1) * p)))] if values else float("nan")


async def request(host, port, method, path, body=b"", token=None):
    reader, writer = await asyncio.open_connection(host, port)
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n"
    if token:
        head += f"authorization: Bearer {token}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    if status != 200:
        raise RuntimeError(f"{method} {path}: {data[:300]!r}")
    return data


class Watcher:
    def __init__(self, services):
        self.services = services
        self.seen = {}  # revision -> arrival time
        self.ready = asyncio.Event()

    async def run(self, host, port):
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        path = "/v1/watch?services=" + ",".join(self.services)
        writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
        await writer.drain()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # response head
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                return
            chunk = await reader.readexactly(size + 2)
            now = time.monotonic()
            for line in chunk[:-2].split(b"\n"):
                if not line:
                    continue
                if line.startswith(b'{"instances"') or b'"type":"snapshot"' in line:
                    self.ready.set()
                    continue
                m = re.search(rb'"revision":(\d+)', line)
                if m and b'"type":"event"' in line:
                    self.seen.setdefault(int(m.group(1)), now)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "meshwork"))
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=1_000)
    parser.add_argument("--per-watcher", type=int, default=3)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    random.seed(args.seed)

    data_dir = tempfile.mkdtemp(prefix="mw-watch-bench-")
    log = open(os.path.join(data_dir, "log"), "w+")
    controller = subprocess.Popen(
        [args.binary, "controller", "--data-dir", os.path.join(data_dir, "d"), "--listen", "127.0.0.1:0", "--dns", "off",
         "--log-level", "warning"], stderr=log)
    try:
        # Quiet logging (warning): the port comes from /proc (its only listening socket).
        port = None
        for _ in range(200):
            port = listening_port(controller.pid)
            if port:
                break
            time.sleep(0.05)
        if not port:
            sys.exit("controller did not start")
        token = open(os.path.join(data_dir, "d", "token")).read().strip()
        host = "127.0.0.1"
        names = [f"svc-{i}" for i in range(args.services)]

        started = time.monotonic()
        sem = asyncio.Semaphore(64)

        async def register(i):
            service = names[i % args.services]
            body = json.dumps({"service": service, "address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                               "port": 8080, "ttlSeconds": 0}).encode()
            async with sem:
                await request(host, port, "PUT", f"/v1/instances/i-{i}", body, token)

        await asyncio.gather(*(register(i) for i in range(args.instances)))
        registration = time.monotonic() - started
        print(f"registered {args.instances} instances over {args.services} services in {registration:.1f} s "
              f"({args.instances / registration:.0f}/s, each committed)")

        watchers = [Watcher(random.sample(names, args.per_watcher)) for _ in range(args.watchers)]
        tasks = [asyncio.create_task(w.run(host, port)) for w in watchers]
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watchers)), timeout=120)
        print(f"{args.watchers} watchers connected, each on {args.per_watcher} services (snapshots received)")

        sent = {}  # revision -> (send time, service)
        healthy = {}  # instance -> current health (every change flips it, so each makes an event)
        interval = 1.0 / args.rate
        for n in range(args.changes):
            i = random.randrange(args.instances)
            service = names[i % args.services]
            health = "healthy" if healthy.get(i, True) is False else "unhealthy"
            healthy[i] = health == "healthy"
            t0 = time.monotonic()
            reply = await request(host, port, "POST", f"/v1/instances/i-{i}/heartbeat",
                                  json.dumps({"health": health}).encode(), token)
            revision = int(re.search(rb'"revision" : (\d+)', reply).group(1))
            sent[revision] = (t0, service)
            await asyncio.sleep(max(0, interval - (time.monotonic() - t0)))
        await asyncio.sleep(2)

        each, every, missing = [], [], 0
        for revision, (t0, service) in sent.items():
            interested = [w for w in watchers if service in w.services]
            delays = []
            for w in interested:
                if revision in w.seen:
                    delays.append((w.seen[revision] - t0) * 1000)
                else:
                    missing += 1
            each += delays
            if delays and len(delays) == len(interested):
                every.append(max(delays))
        rss = peak_rss_mib(controller.pid)
        print(f"changes: {len(sent)} at {args.rate:.0f}/s; deliveries: {len(each)}; missing: {missing}")
        print(f"change -> a watcher has it:      p50 {pct(each, .5):.2f} ms, p99 {pct(each, .99):.2f} ms")
        print(f"change -> every watcher has it:  p50 {pct(every, .5):.2f} ms, p99 {pct(every, .99):.2f} ms")
        print(f"controller peak RSS: {rss:.1f} MiB")
        for t in tasks:
            t.cancel()
        result = {"instances": args.instances, "services": args.services, "watchers": args.watchers,
                  "per_watcher": args.per_watcher, "changes": len(sent), "rate": args.rate,
                  "registration_per_s": args.instances / registration,
                  "each_p50_ms": pct(each, .5), "each_p99_ms": pct(each, .99),
                  "every_p50_ms": pct(every, .5), "every_p99_ms": pct(every, .99),
                  "missing": missing, "peak_rss_mib": rss}
        os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "out", "watch.json"), "w") as f:
            json.dump(result, f, indent=2)
    finally:
        controller.terminate()
        try:
            controller.wait(timeout=10)
        except subprocess.TimeoutExpired:
            controller.kill()


def listening_port(pid):
    """The port of the process's listening TCP socket, from /proc."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for line in open("/proc/net/tcp").read().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:
                return int(parts[1].split(":")[1], 16)
    except OSError:
        return None
    return None


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    asyncio.run(main())
