#!/usr/bin/env python3
"""Watch fan-out benchmark: how long until every watcher has a registry change.

Two scenarios, side by side in one run (`--store both`, the default):

- sqlite: one release `meshwork controller` on 127.0.0.1 (port 0, temp data dir, SQLite).
- etcd: a 3-member etcd cluster (scripts/etcd-cluster) and --controllers (3) controllers
  on it, one prefix: the registrations are spread over the controllers, the watchers too,
  and every change is made on controller 0, so the deliveries to watchers on controller 0
  and on the others (the change propagated through etcd) are measured separately.

Each scenario registers INSTANCES instances over SERVICES services, opens WATCHERS watch
streams (each on --per-watcher random services, as a sidecar watches the services it
calls), then makes CHANGES instance changes at RATE per second (health flips, each
committed to the store) and records, for every watcher that should see a change, when its
line arrived (matched by revision: the store's, the same on every controller). Reports
p50/p99 of the delay from sending the change to a watcher having it, p50/p99 of the delay
until *every* interested watcher has it, missing deliveries and each controller's peak RSS,
then the ratios etcd/sqlite. Both scenarios use the same seed: the same watcher services
and the same changes. Results: bench/out/watch.json.

    scripts/build-release && python3 bench/watch.py [--store sqlite|etcd|both] [--seed S]
"""
import argparse, asyncio, json, os, random, re, shutil, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
REQUEST_TIMEOUT = 30  # s, any one API request
START_TIMEOUT = 30  # s, a controller to listen
CONNECT_TIMEOUT = 120  # s, every watcher to have its snapshot


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round((len(values) - 1) * p)))] if values else float("nan")


async def request(port, method, path, body=b"", token=None):
    """One request on its own connection; the reply's headers (lower-case) and body."""
    async def exchange():
        reader, writer = await asyncio.open_connection(HOST, port)
        head = f"{method} {path} HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n"
        if token:
            head += f"authorization: Bearer {token}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    data = await asyncio.wait_for(exchange(), timeout=REQUEST_TIMEOUT)
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"200":
        raise RuntimeError(f"{method} {path} on :{port}: {data[:300]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    return headers, payload


class Watcher:
    def __init__(self, services, controller):
        self.services = services
        self.controller = controller  # index of the controller it watches on
        self.seen = {}  # revision -> arrival time
        self.snapshot_revision = None
        self.ready = asyncio.Event()

    async def run(self, port):
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 24)
        path = "/v1/watch?services=" + ",".join(self.services)
        writer.write(f"GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode())
        await writer.drain()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # response head
        while True:  # until the stream ends or the task is cancelled
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
                    m = re.search(rb'"revision":(\d+)', line)
                    self.snapshot_revision = int(m.group(1)) if m else None
                    self.ready.set()
                    continue
                m = re.search(rb'"revision":(\d+)', line)
                if m and b'"type":"event"' in line:
                    self.seen.setdefault(int(m.group(1)), now)


class Processes:
    """Everything a run starts, stopped and removed in `close` (also after an error or Ctrl-C)."""

    def __init__(self, binary):
        self.binary = binary
        self.work = tempfile.mkdtemp(prefix="mw-watch-bench-")
        self.controllers = []  # (Popen, port, log path)
        self.etcd_dir = None

    def start_controller(self, name, extra):
        data_dir = os.path.join(self.work, name)
        log_path = os.path.join(self.work, name + ".log")
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [self.binary, "controller", "--data-dir", data_dir, "--listen", f"{HOST}:0", "--no-tls",
                 "--dns", "off", "--log-level", "warning"] + extra,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.controllers.append((process, None, log_path))
        # Quiet logging (warning): the port comes from /proc (its only listening socket).
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"controller {name} exited ({process.returncode}): {tail(log_path)}")
            port = listening_port(process.pid)
            if port:
                self.controllers[-1] = (process, port, log_path)
                return port, data_dir
            time.sleep(0.05)
        raise RuntimeError(f"controller {name} did not listen within {START_TIMEOUT} s: {tail(log_path)}")

    def start_etcd(self):
        self.etcd_dir = os.path.join(self.work, "etcd")
        out = os.path.join(self.work, "etcd-cluster.out")
        # To a file, not a pipe: the members must not hold our end open.
        with open(out, "w") as f:
            result = subprocess.run([os.path.join(ROOT, "scripts", "etcd-cluster"), "start", self.etcd_dir],
                                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, timeout=120)
        lines = open(out).read().split()
        if result.returncode != 0 or not lines or not lines[-1].startswith("http://"):
            raise RuntimeError(f"scripts/etcd-cluster start failed ({result.returncode}): {tail(out)}")
        return lines[-1].replace("http://", "")

    def etcd_pids(self):
        pids = []
        for n in range(1, 10):
            try:
                pids.append(int(open(os.path.join(self.etcd_dir, f"m{n}.pid")).read()))
            except (OSError, ValueError, TypeError):
                break
        return pids

    def close(self, failed=False):
        for process, _, log_path in self.controllers:
            if process.poll() is None:
                process.terminate()
        for process, _, log_path in self.controllers:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            if failed:
                print(f"--- {os.path.basename(log_path)}: {tail(log_path)}", file=sys.stderr)
        self.controllers = []
        if self.etcd_dir:
            try:
                subprocess.run([os.path.join(ROOT, "scripts", "etcd-cluster"), "stop", self.etcd_dir],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=60)
            except subprocess.TimeoutExpired:
                for pid in self.etcd_pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            self.etcd_dir = None
        shutil.rmtree(self.work, ignore_errors=True)


def summary(values):
    return {"p50_ms": pct(values, .5), "p99_ms": pct(values, .99), "n": len(values)}


async def scenario(store, args, ports, token, rss_pids):
    """Register, watch, change on controller 0, measure. `ports`: one per controller."""
    rng = random.Random(args.seed)
    n = len(ports)
    names = [f"svc-{i}" for i in range(args.services)]

    started = time.monotonic()
    sem = asyncio.Semaphore(64)
    registration_revision = 0

    async def register(i):
        nonlocal registration_revision
        service = names[i % args.services]
        body = json.dumps({"service": service, "address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                           "port": 8080, "ttlSeconds": 0}).encode()
        async with sem:
            headers, _ = await request(ports[i % n], "PUT", f"/v1/instances/i-{i}", body, token)
        registration_revision = max(registration_revision, int(headers.get("x-meshwork-revision", 0)))

    await asyncio.gather(*(register(i) for i in range(args.instances)))
    registration = time.monotonic() - started
    print(f"registered {args.instances} instances over {args.services} services in {registration:.1f} s "
          f"({args.instances / registration:.0f}/s, each committed" + (f", spread over {n} controllers)" if n > 1 else ")"))

    watchers = [Watcher(rng.sample(names, args.per_watcher), k % n) for k in range(args.watchers)]
    tasks = [asyncio.create_task(w.run(ports[w.controller])) for w in watchers]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watchers)), timeout=CONNECT_TIMEOUT)
        per = "/".join(str(sum(1 for w in watchers if w.controller == c)) for c in range(n))
        print(f"{args.watchers} watchers connected, each on {args.per_watcher} services (snapshots received)"
              + (f"; {per} on controllers {'/'.join(map(str, range(n)))}" if n > 1 else ""))
        snapshots = sorted({w.snapshot_revision for w in watchers if w.snapshot_revision is not None})
        print(f"snapshot revisions {snapshots[0]}..{snapshots[-1]}; last registration revision {registration_revision}"
              if snapshots else "no snapshot revisions found")

        sent = {}  # revision -> (send time, service)
        healthy = {}  # instance -> current health (every change flips it, so each makes an event)
        interval = 1.0 / args.rate
        for _ in range(args.changes):
            i = rng.randrange(args.instances)
            service = names[i % args.services]
            health = "healthy" if healthy.get(i, True) is False else "unhealthy"
            healthy[i] = health == "healthy"
            t0 = time.monotonic()
            headers, body = await request(ports[0], "POST", f"/v1/instances/i-{i}/heartbeat",
                                          json.dumps({"health": health}).encode(), token)
            revision = json.loads(body)["revision"]
            if headers.get("x-meshwork-revision") not in (None, str(revision)):
                raise RuntimeError(f"heartbeat revision {revision} but x-meshwork-revision {headers['x-meshwork-revision']}")
            if revision in sent:
                raise RuntimeError(f"two changes answered with revision {revision}")
            sent[revision] = (t0, service)
            await asyncio.sleep(max(0, interval - (time.monotonic() - t0)))

        # Until every interested watcher has every change, at most --settle seconds.
        pending = [(rev, w) for rev, (_, service) in sent.items() for w in watchers if service in w.services]
        deadline = time.monotonic() + args.settle
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            pending = [(rev, w) for rev, w in pending if rev not in w.seen]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    groups = {"all": lambda w: True}
    if n > 1:
        groups["controller 0"] = lambda w: w.controller == 0
        groups["the others"] = lambda w: w.controller != 0
    result = {"store": store, "controllers": n, "registration_s": registration,
              "registration_per_s": args.instances / registration, "changes": len(sent),
              "last_registration_revision": registration_revision,
              "snapshot_revisions": [snapshots[0], snapshots[-1]] if snapshots else None, "groups": {}}
    for group, member in groups.items():
        each, every, missing = [], [], 0
        for revision, (t0, service) in sent.items():
            interested = [w for w in watchers if member(w) and service in w.services]
            delays = [(w.seen[revision] - t0) * 1000 for w in interested if revision in w.seen]
            missing += len(interested) - len(delays)
            each += delays
            if delays and len(delays) == len(interested):
                every.append(max(delays))
        # Events after the registrations that no change of ours answered: a revision mismatch.
        unexpected = sum(1 for w in watchers if member(w) for rev in w.seen
                         if rev > registration_revision and rev not in sent)
        result["groups"][group] = {"watchers": sum(1 for w in watchers if member(w)), "deliveries": len(each),
                                   "missing": missing, "unexpected_revisions": unexpected,
                                   "each": summary(each), "every": summary(every)}
    result["peak_rss_mib"] = [peak_rss_mib(pid) for pid in rss_pids]
    result["rss_mib"] = [peak_rss_mib(pid, "VmRSS") for pid in rss_pids]

    print(f"changes: {len(sent)} at {args.rate:.0f}/s" + (" on controller 0" if n > 1 else ""))
    width = max([len("watchers on")] + [len(g) for g in groups])
    print(f"  {'watchers on':<{width}}  {'deliveries':>10} {'missing':>7} {'unexpected':>10}  "
          f"{'a watcher has it p50/p99 ms':>28}  {'every watcher p50/p99 ms':>25}")
    for group, g in result["groups"].items():
        print(f"  {group:<{width}}  {g['deliveries']:>10} {g['missing']:>7} {g['unexpected_revisions']:>10}  "
              f"{g['each']['p50_ms']:>13.2f} / {g['each']['p99_ms']:<12.2f}  "
              f"{g['every']['p50_ms']:>10.2f} / {g['every']['p99_ms']:<12.2f}")
    print("controller peak RSS: " + ", ".join(f"{r:.1f}" for r in result["peak_rss_mib"]) + " MiB"
          + "; RSS with every watcher connected, after the changes: "
          + ", ".join(f"{r:.1f}" for r in result["rss_mib"]) + " MiB")
    return result


async def run_sqlite(args):
    procs = Processes(args.binary)
    try:
        port, data_dir = procs.start_controller("sqlite", [])
        token = open(os.path.join(data_dir, "token")).read().strip()
        print("== sqlite: 1 controller")
        result = await scenario("sqlite", args, [port], token, [procs.controllers[0][0].pid])
    except BaseException as error:  # the logs, unless interrupted
        procs.close(failed=not isinstance(error, (KeyboardInterrupt, asyncio.CancelledError)))
        raise
    procs.close()
    return result


async def run_etcd(args):
    procs = Processes(args.binary)
    try:
        endpoints = procs.start_etcd()
        store = ["--store", "etcd://" + endpoints, "--etcd-prefix", "/meshwork-watch-bench", "--election-ttl", "5s"]
        # Every controller creates its own <data-dir>/token when it has no --token-file, and
        # accepts only that one: controller 0 creates it, the others are given its file.
        port0, data0 = procs.start_controller("c0", store + ["--name", "c0"])
        token_file = os.path.join(data0, "token")
        ports = [port0]
        for c in range(1, args.controllers):
            port, _ = procs.start_controller(f"c{c}", store + ["--name", f"c{c}", "--token-file", token_file])
            ports.append(port)
        token = open(token_file).read().strip()
        print(f"== etcd: {args.controllers} controllers on a {len(procs.etcd_pids())}-member etcd ({endpoints})")
        result = await scenario("etcd", args, ports, token, [p.pid for p, _, _ in procs.controllers])
        result["etcd_peak_rss_mib"] = [peak_rss_mib(pid) for pid in procs.etcd_pids()]
        print("etcd members peak RSS: " + ", ".join(f"{r:.1f}" for r in result["etcd_peak_rss_mib"]) + " MiB")
    except BaseException as error:  # the logs, unless interrupted
        procs.close(failed=not isinstance(error, (KeyboardInterrupt, asyncio.CancelledError)))
        raise
    procs.close()
    return result


def ratio(a, b):
    return a / b if b else float("nan")


def ratios(etcd, sqlite):
    e, s = etcd["groups"], sqlite["groups"]["all"]
    out = {"registration_per_s": ratio(etcd["registration_per_s"], sqlite["registration_per_s"]),
           "peak_rss_per_controller": ratio(sum(etcd["peak_rss_mib"]) / len(etcd["peak_rss_mib"]),
                                            sqlite["peak_rss_mib"][0])}
    for group, g in e.items():
        for measure in ("each", "every"):
            for p in ("p50_ms", "p99_ms"):
                out[f"{group}: {measure} {p[:3]}"] = ratio(g[measure][p], s[measure][p])
    return out


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "meshwork"))
    parser.add_argument("--store", choices=["sqlite", "etcd", "both"], default="both")
    parser.add_argument("--controllers", type=int, default=3, help="controllers on etcd")
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--watchers", type=int, default=1_000)
    parser.add_argument("--per-watcher", type=int, default=3)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="after the last change, wait at most this long for missing deliveries (s)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.controllers < 1:
        parser.error("--controllers must be at least 1")

    # SIGTERM like Ctrl-C: cancel, so every `finally` stops what it started.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    started = time.monotonic()
    results = {"instances": args.instances, "services": args.services, "watchers": args.watchers,
               "per_watcher": args.per_watcher, "changes": args.changes, "rate": args.rate, "seed": args.seed}
    if args.store in ("sqlite", "both"):
        results["sqlite"] = await run_sqlite(args)
    if args.store in ("etcd", "both"):
        results["etcd"] = await run_etcd(args)
    if "sqlite" in results and "etcd" in results:
        results["etcd_over_sqlite"] = r = ratios(results["etcd"], results["sqlite"])
        print("== etcd / sqlite")
        print(f"registration/s x{r['registration_per_s']:.2f}; peak RSS per controller x{r['peak_rss_per_controller']:.2f}")
        for group in results["etcd"]["groups"]:
            print(f"  watchers on {group}: a watcher has it p50 x{r[group + ': each p50']:.2f}, "
                  f"p99 x{r[group + ': each p99']:.2f}; every watcher p50 x{r[group + ': every p50']:.2f}, "
                  f"p99 x{r[group + ': every p99']:.2f}")
    print(f"total {time.monotonic() - started:.0f} s")
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "out", "watch.json"), "w") as f:
        json.dump(results, f, indent=2)


def tail(path, lines=15):
    try:
        return "\n".join(open(path, errors="replace").read().splitlines()[-lines:])
    except OSError:
        return "(no log)"


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


def peak_rss_mib(pid, field="VmHWM"):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("interrupted; everything it started is stopped")
