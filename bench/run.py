#!/usr/bin/env python3
"""Side-by-side proxy benchmark on 127.0.0.1 (see docs/benchmarks.md).

Every proxy under test is pinned to core 1; the load generators and the upstream (nginx
returning a fixed 200) share core 0. For each scenario and each round it measures:

- throughput: wrk, 1 thread, C connections, D seconds (requests/s);
- proxy CPU per request: (utime + stime of the proxy processes during the wrk run) / requests;
- latency at a fixed moderate rate: h2load --h1 with --rps, per-request log -> p50/p99/p99.9;
- peak RSS: VmHWM of the proxy processes (summed for pairs) at the end of the scenario.

The gRPC scenarios use bench/grpc_load.py (grpcio) for load and upstream instead: calls (or
stream messages) answered per second, and the latency of those calls (closed loop).

Scenarios run round-robin (all scenarios in round 1, then round 2, ...) so slow drifts of a
shared machine hit every scenario alike; the table reports medians over rounds.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "bench", "config")
CERTS = os.path.join(ROOT, "Tests", "MeshworkDataPlaneTests", "Fixtures", "certs")
CLK_TCK = os.sysconf("SC_CLK_TCK")

UPSTREAM, PORT, PEER, ADMIN, ADMIN2, GRPC = 18800, 18801, 18802, 18803, 18804, 18805
GRPC_LOAD = os.path.join(ROOT, "bench", "grpc_load.py")
# Calls (unary) or streams in flight at once, and the message size, of the gRPC scenarios.
GRPC_CONCURRENCY, GRPC_MESSAGE = 32, 64


def render(template, out, **values):
    text = open(os.path.join(CONFIG, template)).read()
    for key, value in values.items():
        text = text.replace("@" + key + "@", str(value))
    path = os.path.join(out, template)
    with open(path, "w") as f:
        f.write(text)
    return path


def with_extra(path, suffix, extra):
    """The same config with `extra` YAML appended (a telemetry feature on or off)."""
    variant = path.replace(".yaml", "-" + suffix + ".yaml")
    with open(path) as src, open(variant, "w") as dst:
        dst.write(src.read() + "\n" + extra)
    return variant


def without_edge_telemetry(path):
    """The same config with per-edge telemetry off: what telemetry costs is the difference."""
    return with_extra(path, "no-telemetry", "edgeTelemetry: false\n")


# Tracing exports to a port nobody listens on: spans are recorded, encoded and sent; the
# export fails and is counted (the data path's cost is the same as with a collector).
TRACING = "tracing:\n  endpoint: http://127.0.0.1:9/v1/traces\n  sampleRate: %s\n"


def wait_port(port, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def group_members(pgids):
    """Every process in the given process groups (nginx's workers are its master's children)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in pgids:
                members.append(int(entry))
    return members


def cpu_seconds(pids):
    total = 0
    for pid in group_members(set(pids)):
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / CLK_TCK


def status_kib(pids, field):
    """A /proc/PID/status memory field summed over the processes: VmHWM (peak RSS), or
    RssAnon (private memory now: what one more proxy costs on a host, since the code
    pages of one binary are shared by all its processes)."""
    total = 0
    for pid in group_members(set(pids)):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def start(cmd, core, out, name):
    log = open(os.path.join(out, name + ".log"), "w")
    return subprocess.Popen(["taskset", "-c", str(core)] + cmd, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(procs):
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait()


def scenarios(args, out):
    mw = args.meshwork
    envoy = args.envoy
    base = args.baseline
    return {
        "direct": lambda: ([], UPSTREAM),
        "nginx": lambda: ([start(["nginx", "-c", render("nginx-proxy.conf", out, OUT=out, PORT=PORT, UPSTREAM=UPSTREAM)], 1, out, "nginx-proxy")], PORT),
        "envoy": lambda: ([start([envoy, "--concurrency", "1", "--log-level", "error", "--disable-hot-restart",
                                  "-c", render("envoy-proxy.yaml", out, PORT=PORT, UPSTREAM=UPSTREAM, ADMIN=ADMIN)], 1, out, "envoy")], PORT),
        "meshwork": lambda: ([start([mw, "sidecar", "--log-level", "error",
                                     "--config", render("meshwork-proxy.yaml", out, PORT=PORT, UPSTREAM=UPSTREAM, ADMIN=ADMIN)], 1, out, "meshwork")], PORT),
        "meshwork (no edge telemetry)": lambda: ([start([mw, "sidecar", "--log-level", "error",
                                     "--config", without_edge_telemetry(render("meshwork-proxy.yaml", out, PORT=PORT, UPSTREAM=UPSTREAM, ADMIN=ADMIN))], 1, out, "meshwork")], PORT),
        "meshwork (tracing 1%)": lambda: ([start([mw, "sidecar", "--log-level", "error",
                                     "--config", with_extra(render("meshwork-proxy.yaml", out, PORT=PORT, UPSTREAM=UPSTREAM, ADMIN=ADMIN), "tracing-1", TRACING % "0.01")], 1, out, "meshwork")], PORT),
        "meshwork (tracing 100%)": lambda: ([start([mw, "sidecar", "--log-level", "error",
                                     "--config", with_extra(render("meshwork-proxy.yaml", out, PORT=PORT, UPSTREAM=UPSTREAM, ADMIN=ADMIN), "tracing-100", TRACING % "1")], 1, out, "meshwork")], PORT),
        "meshwork (access log)": lambda: ([start([mw, "sidecar", "--log-level", "error",
                                     "--config", with_extra(render("meshwork-proxy.yaml", out, PORT=PORT, UPSTREAM=UPSTREAM, ADMIN=ADMIN), "access-log", "accessLog: /dev/null\n")], 1, out, "meshwork")], PORT),
        "meshwork pair (mTLS+h2; no edge telemetry)": lambda: ([
            start([mw, "sidecar", "--log-level", "error",
                   "--config", without_edge_telemetry(render("meshwork-pair-server.yaml", out, PORT=PEER, UPSTREAM=UPSTREAM, ADMIN=ADMIN2, CERTS=CERTS))], 1, out, "mw-server"),
            start([mw, "sidecar", "--log-level", "error",
                   "--config", without_edge_telemetry(render("meshwork-pair-client.yaml", out, PORT=PORT, PEER=PEER, ADMIN=ADMIN, CERTS=CERTS))], 1, out, "mw-client"),
        ], PORT),
        "envoy pair (mTLS+h2)": lambda: ([
            start([envoy, "--concurrency", "1", "--log-level", "error", "--disable-hot-restart", "--base-id", "2",
                   "-c", render("envoy-pair-server.yaml", out, PORT=PEER, UPSTREAM=UPSTREAM, ADMIN=ADMIN2, CERTS=CERTS)], 1, out, "envoy-server"),
            start([envoy, "--concurrency", "1", "--log-level", "error", "--disable-hot-restart", "--base-id", "3",
                   "-c", render("envoy-pair-client.yaml", out, PORT=PORT, PEER=PEER, ADMIN=ADMIN, CERTS=CERTS)], 1, out, "envoy-client"),
        ], PORT),
        "meshwork pair (h2c)": lambda: ([
            start([mw, "sidecar", "--log-level", "error",
                   "--config", render("meshwork-pair-server-h2c.yaml", out, PORT=PEER, UPSTREAM=UPSTREAM, ADMIN=ADMIN2)], 1, out, "mw-server"),
            start([mw, "sidecar", "--log-level", "error",
                   "--config", render("meshwork-pair-client-h2c.yaml", out, PORT=PORT, PEER=PEER, ADMIN=ADMIN)], 1, out, "mw-client"),
        ], PORT),
        "meshwork pair (mTLS+h2)": lambda: ([
            start([mw, "sidecar", "--log-level", "error",
                   "--config", render("meshwork-pair-server.yaml", out, PORT=PEER, UPSTREAM=UPSTREAM, ADMIN=ADMIN2, CERTS=CERTS)], 1, out, "mw-server"),
            start([mw, "sidecar", "--log-level", "error",
                   "--config", render("meshwork-pair-client.yaml", out, PORT=PORT, PEER=PEER, ADMIN=ADMIN, CERTS=CERTS)], 1, out, "mw-client"),
        ], PORT),
        # HTTP/2 from the caller (what every gRPC client sends): h2c with prior knowledge,
        # the same proxies (Envoy's codec_type AUTO and Meshwork's sniffer take it); load
        # from h2load -c16 -m10 instead of wrk.
        "envoy (h2 in)": lambda: scenarios(args, out)["envoy"](),
        "meshwork (h2 in)": lambda: scenarios(args, out)["meshwork"](),
        "envoy pair (mTLS+h2; h2 in)": lambda: scenarios(args, out)["envoy pair (mTLS+h2)"](),
        "meshwork pair (mTLS+h2; h2 in)": lambda: scenarios(args, out)["meshwork pair (mTLS+h2)"](),
        # gRPC through the pair (grpcio's asyncio client and server, bench/grpc_load.py, both
        # on core 0): unary calls, and messages on long-lived bidirectional streams. The
        # server sides speak h2c to the app, a gRPC server; the client sides are unchanged.
        "direct (gRPC unary)": lambda: ([], GRPC),
        "envoy pair (gRPC unary)": lambda: ([
            start([envoy, "--concurrency", "1", "--log-level", "error", "--disable-hot-restart", "--base-id", "2",
                   "-c", render("envoy-pair-server-grpc.yaml", out, PORT=PEER, UPSTREAM=GRPC, ADMIN=ADMIN2, CERTS=CERTS)], 1, out, "envoy-server"),
            start([envoy, "--concurrency", "1", "--log-level", "error", "--disable-hot-restart", "--base-id", "3",
                   "-c", render("envoy-pair-client.yaml", out, PORT=PORT, PEER=PEER, ADMIN=ADMIN, CERTS=CERTS)], 1, out, "envoy-client"),
        ], PORT),
        "meshwork pair (gRPC unary)": lambda: ([
            start([mw, "sidecar", "--log-level", "error",
                   "--config", render("meshwork-pair-server-grpc.yaml", out, PORT=PEER, UPSTREAM=GRPC, ADMIN=ADMIN2, CERTS=CERTS)], 1, out, "mw-server"),
            start([mw, "sidecar", "--log-level", "error",
                   "--config", render("meshwork-pair-client.yaml", out, PORT=PORT, PEER=PEER, ADMIN=ADMIN, CERTS=CERTS)], 1, out, "mw-client"),
        ], PORT),
        "direct (gRPC streaming)": lambda: ([], GRPC),
        "envoy pair (gRPC streaming)": lambda: scenarios(args, out)["envoy pair (gRPC unary)"](),
        "meshwork pair (gRPC streaming)": lambda: scenarios(args, out)["meshwork pair (gRPC unary)"](),
        # The same single proxy and pair from another build (--baseline BIN), to compare a
        # change against what it replaces in the same run.
        "meshwork (baseline)": lambda: ([start([base, "sidecar", "--log-level", "error",
                                     "--config", render("meshwork-proxy.yaml", out, PORT=PORT, UPSTREAM=UPSTREAM, ADMIN=ADMIN)], 1, out, "meshwork")], PORT),
        "meshwork pair (mTLS+h2; baseline)": lambda: ([
            start([base, "sidecar", "--log-level", "error",
                   "--config", render("meshwork-pair-server.yaml", out, PORT=PEER, UPSTREAM=UPSTREAM, ADMIN=ADMIN2, CERTS=CERTS)], 1, out, "mw-server"),
            start([base, "sidecar", "--log-level", "error",
                   "--config", render("meshwork-pair-client.yaml", out, PORT=PORT, PEER=PEER, ADMIN=ADMIN, CERTS=CERTS)], 1, out, "mw-client"),
        ], PORT),
    }


def run_wrk(port, args):
    text = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
                           f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: (.*)", text)
    return requests, (int(errors.group(1)) if errors else 0), (socket_errors.group(1) if socket_errors else "")


def run_h2load(port, args):
    """Throughput with HTTP/2 in: h2load, 16 connections, 10 streams each."""
    text = subprocess.run(["taskset", "-c", "0", "h2load", "-c16", "-m10", "-D", str(args.duration),
                           f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
    status = re.search(r"status codes: (\d+) 2xx", text)
    succeeded = int(done.group(4)) if done else 0
    return succeeded, (succeeded - int(status.group(1))) if status else 0, (done.group(5) + " failed") if done else text[-200:]


def run_grpc(port, args, mode, seconds=None):
    """gRPC load (bench/grpc_load.py) from core 0: calls or stream messages answered, errors,
    and their latency percentiles (closed loop: GRPC_CONCURRENCY in flight)."""
    text = subprocess.run(["taskset", "-c", "0", sys.executable, GRPC_LOAD, mode, str(port), str(seconds or args.duration),
                           str(GRPC_CONCURRENCY), str(GRPC_MESSAGE)], capture_output=True, text=True, check=True).stdout
    return json.loads(text)


def run_latency(port, args, out, h2=False):
    log = os.path.join(out, "h2load.log")
    if os.path.exists(log):
        os.remove(log)
    clients = 8
    subprocess.run(["taskset", "-c", "0", "h2load"] + ([] if h2 else ["--h1"]) + ["-c", str(clients), "--rps", str(max(1, args.rate // clients)),
                    "-D", str(args.duration), "--log-file", log, f"http://127.0.0.1:{port}/"],
                   capture_output=True, text=True, check=True)
    latencies = sorted(int(line.split("\t")[2]) for line in open(log) if line.strip())
    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] / 1000.0
    return {"p50_ms": pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9), "latency_samples": len(latencies)}


def measure(name, factory, args, out):
    procs, port = factory()
    try:
        wait_port(port)
        if " pair " in name:
            wait_port(PEER)
        time.sleep(0.3)
        pids = [p.pid for p in procs]
        grpc_mode = "unary" if "(gRPC unary)" in name else "stream" if "(gRPC streaming)" in name else None
        # Warm-up: connections, pools, JIT-free but caches and allocators settle.
        if grpc_mode:
            run_grpc(port, args, grpc_mode, seconds=1)
        else:
            subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c8", "-d1s", f"http://127.0.0.1:{port}/"],
                           capture_output=True, check=True)
        cpu_before = cpu_seconds(pids) if pids else 0
        each_before = [cpu_seconds([pid]) for pid in pids]
        # --profile: a cpu-clock profile of Meshwork's processes during the throughput run
        # (perf's own cost lands on core 0's side only through the sampling interrupts).
        profiler = None
        if args.profile and name.startswith("meshwork") and pids:
            os.makedirs(args.profile, exist_ok=True)
            data = os.path.join(args.profile, re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".data")
            profiler = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", data,
                                         "-p", ",".join(str(p) for p in group_members(set(pids)))],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        h2 = name.endswith("h2 in)")
        grpc_result = run_grpc(port, args, grpc_mode) if grpc_mode else None
        if grpc_result:
            requests, non2xx, socket_errors = grpc_result["ok"], sum(grpc_result["errors"].values()), ""
        else:
            requests, non2xx, socket_errors = run_h2load(port, args) if h2 else run_wrk(port, args)
        if profiler:
            profiler.send_signal(signal.SIGINT)
            profiler.wait()
            report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--percent-limit", "0.7",
                                     "--sort", "symbol", "-g", "none"], capture_output=True, text=True).stdout
            with open(data.replace(".data", ".txt"), "w") as f:
                f.write(report)
        cpu_after = cpu_seconds(pids) if pids else 0
        each_after = [cpu_seconds([pid]) for pid in pids]
        # (gRPC: the latency of the throughput run's calls or messages, closed loop.)
        latency = ({key: grpc_result[key] for key in ("p50_ms", "p99_ms", "p999_ms")} if grpc_result
                   else run_latency(port, args, out, h2=h2))
        result = {
            "rps": requests / args.duration,
            "cpu_us_per_req": ((cpu_after - cpu_before) / requests * 1e6) if pids and requests else None,
            # Per process (a pair: server side first, then client side).
            "cpu_us_per_req_each": [(a - b) / requests * 1e6 for a, b in zip(each_after, each_before)] if requests else [],
            "peak_rss_mib": (status_kib(pids, "VmHWM") / 1024.0) if pids else None,
            "anon_rss_mib": (status_kib(pids, "RssAnon") / 1024.0) if pids else None,
            "non_2xx": non2xx,
            "socket_errors": socket_errors,
        }
        result.update(latency)
        return result
    finally:
        stop(procs)


def handshake_rate(name, factory, args, out, resumed=False):
    """Full mutual-TLS handshakes per second against the server-side proxy of a pair: openssl
    s_time (on core 0) opens a new connection per handshake, presenting the client
    certificate; the proxy (core 1) verifies it against the mesh CA. `resumed`: every
    connection after the first resumes the first one's TLS 1.2 session (s_time -reuse; its
    TLS 1.3 client closes before a session ticket arrives), what the server side costs when
    the client offers a session."""
    procs, _ = factory()
    try:
        wait_port(PEER)
        time.sleep(0.3)
        pids = [p.pid for p in procs]
        cpu_before = cpu_seconds(pids)
        mode = ["-tls1_2", "-reuse"] if resumed else ["-new"]
        text = subprocess.run(["taskset", "-c", "0", "openssl", "s_time", "-connect", f"127.0.0.1:{PEER}"] + mode + [
                               "-cert", f"{CERTS}/web.pem", "-key", f"{CERTS}/web.key", "-CAfile", f"{CERTS}/mesh-ca.pem",
                               "-time", str(args.duration)], capture_output=True, text=True).stdout
        cpu = cpu_seconds(pids) - cpu_before
        match = re.search(r"(\d+) connections in (\d+) real seconds", text)
        if not match or int(match.group(1)) == 0:
            return None, None
        count = int(match.group(1))
        return count / max(1, int(match.group(2))), cpu / count * 1e6
    finally:
        stop(procs)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshwork", default=os.path.join(ROOT, ".build", "release", "meshwork"))
    parser.add_argument("--envoy", default=shutil.which("envoy") or "envoy")
    parser.add_argument("--baseline", help="another meshwork binary (an older build) for the '(baseline)' scenarios")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for throughput")
    parser.add_argument("--rate", type=int, default=2000, help="requests/s for the latency run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--handshakes", action="store_true",
                        help="also measure mTLS handshakes per second on the server side of each mTLS pair")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "out", "results.json"))
    parser.add_argument("--profile", metavar="DIR",
                        help="record a perf (cpu-clock) profile of each Meshwork scenario's throughput run into DIR "
                             "(DIR/<scenario>.data, and a flat report DIR/<scenario>.txt; the last round's)")
    args = parser.parse_args()

    out = tempfile.mkdtemp(prefix="meshwork-bench-")
    all_scenarios = scenarios(args, out)
    names = [n.strip() for n in args.only.split(",")] if args.only else [
        n for n in all_scenarios if args.baseline or "baseline" not in n]
    if any("baseline" in n for n in names) and not args.baseline:
        parser.error("the (baseline) scenarios need --baseline BIN")
    upstream = start(["nginx", "-c", render("nginx-upstream.conf", out, OUT=out, UPSTREAM=UPSTREAM)], 0, out, "nginx-upstream")
    upstreams = [upstream]
    if any("gRPC" in n for n in names):
        upstreams.append(start([sys.executable, GRPC_LOAD, "server", str(GRPC)], 0, out, "grpc-upstream"))
    rounds = {name: [] for name in names}
    try:
        wait_port(UPSTREAM)
        if len(upstreams) > 1:
            wait_port(GRPC)
        for r in range(args.rounds):
            for name in names:
                result = measure(name, all_scenarios[name], args, out)
                rounds[name].append(result)
                print(f"round {r + 1} {name}: {json.dumps(result)}", file=sys.stderr, flush=True)
        handshakes = {}
        if args.handshakes:
            for name in [n for n in names if n.endswith("(mTLS+h2)")]:
                runs = [handshake_rate(name, all_scenarios[name], args, out) for _ in range(args.rounds)]
                resumed = [handshake_rate(name, all_scenarios[name], args, out, resumed=True) for _ in range(args.rounds)]
                handshakes[name] = {"per_s": median([r[0] for r in runs]), "proxy_cpu_us": median([r[1] for r in runs]),
                                    "resumed_per_s": median([r[0] for r in resumed]),
                                    "resumed_proxy_cpu_us": median([r[1] for r in resumed])}
                print(f"{name}: {handshakes[name]}", file=sys.stderr, flush=True)
    finally:
        stop(upstreams)

    summary = {}
    for name in names:
        summary[name] = {key: median([run[key] for run in rounds[name]])
                         for key in ("rps", "cpu_us_per_req", "p50_ms", "p99_ms", "p999_ms", "peak_rss_mib", "anon_rss_mib",
                                     "non_2xx")}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "rounds": rounds, "median": summary, "handshakes_per_s": handshakes}, f, indent=2)

    def fmt(value, digits=1):
        return "-" if value is None else f"{value:,.{digits}f}"
    print(f"\nMedians of {args.rounds} rounds; throughput with {args.connections} connections for {args.duration}s, "
          f"latency at {args.rate} req/s. Proxies on core 1, load and upstream on core 0.\n")
    print("| scenario | req/s | proxy CPU µs/req | p50 ms | p99 ms | p99.9 ms | peak RSS MiB | anon RSS MiB | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        s = summary[name]
        print(f"| {name} | {fmt(s['rps'], 0)} | {fmt(s['cpu_us_per_req'])} | {fmt(s['p50_ms'], 3)} | {fmt(s['p99_ms'], 3)} "
              f"| {fmt(s['p999_ms'], 3)} | {fmt(s['peak_rss_mib'])} | {fmt(s['anon_rss_mib'])} | {fmt(s['non_2xx'], 0)} |")
    if handshakes:
        print("\n| server side of | full mTLS handshakes/s (openssl s_time -new) | proxy CPU µs/handshake "
              "| resumed (TLS 1.2, -reuse)/s | proxy CPU µs/resumption | resumed / full CPU |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, h in handshakes.items():
            ratio = (h["resumed_proxy_cpu_us"] / h["proxy_cpu_us"]) if h["proxy_cpu_us"] and h["resumed_proxy_cpu_us"] else None
            print(f"| {name} | {fmt(h['per_s'], 0)} | {fmt(h['proxy_cpu_us'])} | {fmt(h['resumed_per_s'], 0)} "
                  f"| {fmt(h['resumed_proxy_cpu_us'])} | x{fmt(ratio, 2)} |")
    mtls, plain = summary.get("meshwork pair (mTLS+h2)"), summary.get("meshwork pair (h2c)")
    if mtls and plain and plain["cpu_us_per_req"]:
        print(f"\nmeshwork pair, mTLS / h2c: CPU per request x{mtls['cpu_us_per_req'] / plain['cpu_us_per_req']:.2f}, "
              f"throughput x{mtls['rps'] / plain['rps']:.2f}, p99 x{mtls['p99_ms'] / plain['p99_ms']:.2f}")
    for on, off in (("meshwork", "meshwork (no edge telemetry)"),
                    ("meshwork pair (mTLS+h2)", "meshwork pair (mTLS+h2; no edge telemetry)")):
        if on in summary and off in summary and summary[off]["cpu_us_per_req"]:
            print(f"\n{on}, edge telemetry on / off: CPU per request "
                  f"x{summary[on]['cpu_us_per_req'] / summary[off]['cpu_us_per_req']:.3f}, "
                  f"p99 x{summary[on]['p99_ms'] / summary[off]['p99_ms']:.2f}, "
                  f"throughput x{summary[on]['rps'] / summary[off]['rps']:.3f}")
    base = summary.get("meshwork (no edge telemetry)")
    for variant in ("meshwork", "meshwork (tracing 1%)", "meshwork (tracing 100%)", "meshwork (access log)"):
        if base and variant in summary and base["cpu_us_per_req"]:
            print(f"\n{variant} / meshwork (no edge telemetry): CPU per request "
                  f"x{summary[variant]['cpu_us_per_req'] / base['cpu_us_per_req']:.3f}, "
                  f"p99 x{summary[variant]['p99_ms'] / base['p99_ms']:.2f}, "
                  f"throughput x{summary[variant]['rps'] / base['rps']:.3f}")
    for a, b in (("meshwork", "envoy"), ("meshwork pair (mTLS+h2)", "envoy pair (mTLS+h2)"),
                 ("meshwork (h2 in)", "envoy (h2 in)"), ("meshwork pair (mTLS+h2; h2 in)", "envoy pair (mTLS+h2; h2 in)"),
                 ("meshwork pair (gRPC unary)", "envoy pair (gRPC unary)"),
                 ("meshwork pair (gRPC streaming)", "envoy pair (gRPC streaming)"),
                 ("meshwork", "meshwork (baseline)"), ("meshwork pair (mTLS+h2)", "meshwork pair (mTLS+h2; baseline)")):
        if a in summary and b in summary and summary[b]["cpu_us_per_req"]:
            sa, sb = summary[a], summary[b]
            print(f"\n{a} / {b}: CPU per request x{sa['cpu_us_per_req'] / sb['cpu_us_per_req']:.2f}, "
                  f"p99 x{sa['p99_ms'] / sb['p99_ms']:.2f}, peak RSS x{sa['peak_rss_mib'] / sb['peak_rss_mib']:.2f}, "
                  f"anon RSS x{sa['anon_rss_mib'] / sb['anon_rss_mib']:.2f}, "
                  f"throughput x{sa['rps'] / sb['rps']:.2f}")
            # The machine drifts between rounds: the ratio within each round (the two ran
            # seconds apart) is steadier than the ratio of medians.
            within = [ra["cpu_us_per_req"] / rb["cpu_us_per_req"] for ra, rb in zip(rounds[a], rounds[b])
                      if ra["cpu_us_per_req"] and rb["cpu_us_per_req"]]
            p99s = [ra["p99_ms"] / rb["p99_ms"] for ra, rb in zip(rounds[a], rounds[b]) if rb["p99_ms"]]
            if within:
                print(f"  per round: CPU per request x{median(within):.2f} (median of {len(within)}: "
                      f"{', '.join(f'{r:.2f}' for r in within)}), p99 x{median(p99s):.2f}")


if __name__ == "__main__":
    main()
