#!/usr/bin/env python3
"""What routes cost a caller (issue 18): the caller's sidecar with 1 route vs N routes.

A real mesh on 127.0.0.1: a controller (embedded SQLite), the `orders` sidecar in front of
nginx, and the caller's sidecar (`web`, an upstream port for orders), joined with join
tokens, so the hop is mTLS + HTTP/2 as in production. The routes come from the
controller (`ctl apply -f`), as in production:

- "1 route": `bench-main`, one rule (every request to orders, a response header set);
- "N routes": the same, plus N-1 other routes on orders, a mix of PathPrefix, Exact,
  header (on its own prefix) and RegularExpression matches, none of which the load
  matches, and a probe route (`/probe` aborted with 418) that shows the table is applied.

wrk (HTTP/1.1, keep-alive) sends GET /api/items/7 to the caller's sidecar; the number is
the caller's sidecar's CPU per request (utime + stime over the wrk run), which is where a
route is matched. Sidecars are pinned to core 1; wrk, nginx and the controller to core 0.
Variants run round-robin, the table shows medians and the ratio.
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, render, start, stop, wait_port, cpu_seconds, status_kib  # noqa: E402

UPSTREAM, PORT, CONTROLLER, INBOUND, ADMIN, ADMIN2 = 18820, 18821, 18822, 18823, 18824, 18825
PATH = "/api/items/7"


def routes_yaml(count):
    """`bench-main`, and for count > 1, count - 2 decoys and then the probe."""
    docs = ["""kind: HTTPRoute
name: bench-main
parentRefs: [{name: orders}]
rules:
  - name: main
    backendRefs: [{name: orders}]
    filters:
      - type: ResponseHeaderModifier
        responseHeaderModifier: {set: [{name: x-bench-route, value: main}]}
"""]
    for i in range(max(0, count - 2)):
        kind = i % 4
        if kind == 0:
            match = "{path: {type: PathPrefix, value: /p%d}}" % i
        elif kind == 1:
            match = "{path: {type: Exact, value: /e%d/x}}" % i
        elif kind == 2:
            match = "{path: {type: PathPrefix, value: /h%d}, headers: [{name: x-bench-%d, value: \"1\"}]}" % (i, i)
        else:
            match = "{path: {type: RegularExpression, value: '/r%d/[a-z0-9]+'}}" % i
        docs.append(f"kind: HTTPRoute\nname: bench-{i}\nparentRefs: [{{name: orders}}]\n"
                    f"rules:\n  - matches: [{match}]\n    backendRefs: [{{name: orders}}]\n")
    if count > 1:
        # Last: once the caller answers /probe with 418, every route before it is applied.
        docs.append("""kind: HTTPRoute
name: bench-probe
parentRefs: [{name: orders}]
rules:
  - matches: [{path: {type: Exact, value: /probe}}]
    filters: [{type: Fault, fault: {abort: {httpStatus: 418, percent: 100}}}]
""")
    return "---\n".join(docs)


def curl(path, headers=()):
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return answer.status, answer.headers
    except urllib.error.HTTPError as error:
        return error.code, error.headers
    except OSError:
        return None, {}


def until(condition, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def ctl(mw, data, *arguments):
    return subprocess.run([mw, "ctl", *arguments, "--controller", f"http://127.0.0.1:{CONTROLLER}",
                           "--token-file", os.path.join(data, "token")], capture_output=True, text=True, check=True).stdout


def measure(args, count, out, index):
    mw = args.meshwork
    data = os.path.join(out, f"controller-{index}")
    procs, helpers = [], []
    try:
        helpers.append(start([mw, "controller", "--data-dir", data, "--listen", f"127.0.0.1:{CONTROLLER}", "--no-tls",
                              "--dns", "127.0.0.1:0", "--log-level", "error"], 0, out, f"controller-{index}"))
        wait_port(CONTROLLER)
        until(lambda: os.path.exists(os.path.join(data, "token")), 10)
        tokens = {}
        for service in ("orders", "web"):
            path = os.path.join(out, f"{service}-{index}.token")
            with open(path, "w") as f:
                f.write(ctl(mw, data, "token", "create", "--service", service).strip() + "\n")
            tokens[service] = path
        controller = f"http://127.0.0.1:{CONTROLLER}"
        procs.append(start([mw, "sidecar", "--log-level", "error", "--threads", "1", "--service", "orders",
                            "--app-port", str(UPSTREAM), "--inbound", f"127.0.0.1:{INBOUND}", "--admin",
                            f"127.0.0.1:{ADMIN2}", "--controller", controller, "--join-token-file", tokens["orders"]],
                           1, out, f"orders-{index}"))
        procs.append(start([mw, "sidecar", "--log-level", "error", "--threads", "1", "--service", "web",
                            "--upstream", f"orders=127.0.0.1:{PORT}", "--admin", f"127.0.0.1:{ADMIN}",
                            "--controller", controller, "--join-token-file", tokens["web"]], 1, out, f"web-{index}"))
        routes = os.path.join(out, f"routes-{count}.yaml")
        with open(routes, "w") as f:
            f.write(routes_yaml(count))
        applied = time.time()
        ctl(mw, data, "apply", "-f", routes)
        wait_port(PORT)
        ok = until(lambda: curl(PATH)[1].get("x-bench-route") == "main")
        if count > 1:
            ok = ok and until(lambda: curl("/probe")[0] == 418)
        if not ok:
            raise RuntimeError(f"the {count} routes never reached the caller; logs in {out}")
        applied = time.time() - applied
        # Warm-up, then the measured run.
        subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c8", "-d1s", f"http://127.0.0.1:{PORT}{PATH}"],
                       capture_output=True, check=True)
        client, server = procs[1].pid, procs[0].pid
        before = (cpu_seconds([client]), cpu_seconds([server]))
        profile = None
        if args.profile:
            profile = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-p", str(client), "-o",
                                        os.path.join(args.profile, f"caller-{count}-routes.data")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
                               f"http://127.0.0.1:{PORT}{PATH}"], capture_output=True, text=True, check=True).stdout
        after = (cpu_seconds([client]), cpu_seconds([server]))
        if profile:
            profile.send_signal(2)
            profile.wait()
        requests = int(re.search(r"(\d+) requests in", text).group(1))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        return {
            "routes": count,
            "rps": requests / args.duration,
            "caller_cpu_us_per_req": (after[0] - before[0]) / requests * 1e6,
            "server_cpu_us_per_req": (after[1] - before[1]) / requests * 1e6,
            "caller_peak_rss_mib": status_kib([client], "VmHWM") / 1024.0,
            "non_2xx": int(errors.group(1)) if errors else 0,
            "applied_s": applied,
        }
    finally:
        stop(procs + helpers)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshwork", default=os.path.join(ROOT, ".build", "release", "meshwork"))
    parser.add_argument("--routes", type=int, default=1000, help="routes in the large variant")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", help="a directory: perf record (cpu-clock) of the caller during each run")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "out", "routes.json"))
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="meshwork-routes-")
    upstream = start(["nginx", "-c", render("nginx-upstream.conf", out, OUT=out, UPSTREAM=UPSTREAM)], 0, out,
                     "nginx-upstream")
    rounds = {1: [], args.routes: []}
    try:
        wait_port(UPSTREAM)
        for r in range(args.rounds):
            for count in rounds:
                result = measure(args, count, out, f"{r}-{count}")
                rounds[count].append(result)
                print(f"round {r + 1}, {count} routes: {json.dumps(result)}", file=sys.stderr, flush=True)
    finally:
        stop([upstream])
    median = {count: {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "routes"}
              for count, runs in rounds.items()}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "rounds": rounds, "median": median}, f, indent=2)
    print(f"\nMedians of {args.rounds} rounds; wrk -c{args.connections} for {args.duration}s on GET {PATH}; "
          "sidecars on core 1, wrk, nginx and the controller on core 0.\n")
    print("| routes on orders | req/s | caller CPU µs/req | server CPU µs/req | caller peak RSS MiB | "
          "non-2xx | applied in s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for count, m in median.items():
        print(f"| {count:,} | {m['rps']:,.0f} | {m['caller_cpu_us_per_req']:.2f} | {m['server_cpu_us_per_req']:.2f} | "
              f"{m['caller_peak_rss_mib']:.1f} | {m['non_2xx']:.0f} | {m['applied_s']:.2f} |")
    ratios = [b["caller_cpu_us_per_req"] / a["caller_cpu_us_per_req"]
              for a, b in zip(rounds[1], rounds[args.routes])]
    print(f"\ncaller CPU per request, {args.routes:,} routes / 1 route: x{statistics.median(ratios):.3f} "
          f"(per round: {', '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()
