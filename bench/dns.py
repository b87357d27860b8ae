"""Queries per second of the controller's DNS server on one core, side by side with NSD
(an authoritative server written for speed) serving the same names, measured by dnsperf.

Each server is pinned to core 0 and dnsperf to core 1; the rounds alternate the servers
so both see the same machine, and the report gives medians and the ratio.
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

INSTANCES = [("orders-%d" % i, "127.0.0.%d" % (i + 1), 7000 + i, "z%d" % (i % 2)) for i in range(1, 6)]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


def query_file(path):
    """The mix a client population asks: service A, SRV (with glue), one instance, and
    names that do not exist."""
    lines = ["orders.service.mesh A"] * 4 + ["_http._tcp.orders.service.mesh SRV"] * 3
    lines += ["orders-1.instance.mesh A", "nope.service.mesh A", "orders.service.mesh AAAA"]
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


def start_meshwork(binary, work, port):
    data = os.path.join(work, "controller")
    log = open(os.path.join(work, "controller.log"), "w")
    process = subprocess.Popen(
        ["taskset", "-c", "0", binary, "controller", "--data-dir", data, "--listen", "127.0.0.1:0",
         "--dns", "127.0.0.1:%d" % port, "--log-level", "info"], stderr=log)
    api = None
    for _ in range(200):
        match = re.search(r":(\d+) listener=api", open(log.name).read())
        if match:
            api = match.group(1)
            break
        time.sleep(0.05)
    if api is None:
        raise SystemExit("controller did not start: " + open(log.name).read())
    try:
        token = open(os.path.join(data, "token")).read().strip()
        # The operator API is HTTPS, signed by the controller's own CA.
        for name, address, inst_port, zone in INSTANCES:
            body = '{"service":"orders","address":"%s","port":%d,"zone":"%s","ttlSeconds":0}' % (address, inst_port, zone)
            subprocess.run(["curl", "-sSf", "--cacert", os.path.join(data, "ca.pem"), "-X", "PUT",
                            "-H", "Authorization: Bearer " + token, "-H", "content-type: application/json",
                            "--data-binary", body, "https://127.0.0.1:%s/v1/instances/%s" % (api, name)],
                           check=True, stdout=subprocess.DEVNULL)
    except BaseException:
        # Not yet in the caller's list of servers to stop: stop it here (left running, it
        # kept the output pipe open and the benchmark hung without a word).
        process.kill()
        process.wait()
        raise
    return process


def start_nsd(work, port):
    nsd = shutil.which("nsd") or "/usr/sbin/nsd"
    zone = ["$ORIGIN mesh.", "$TTL 5",
            "@ SOA ns.mesh. hostmaster.mesh. 1 3600 600 86400 5", "@ NS ns.mesh.", "ns A 127.0.0.1"]
    for name, address, inst_port, _ in INSTANCES:
        zone.append("orders.service A %s" % address)
        zone.append("_http._tcp.orders.service SRV 0 1 %d %s.instance" % (inst_port, name))
        zone.append("%s.instance A %s" % (name, address))
    with open(os.path.join(work, "mesh.zone"), "w") as out:
        out.write("\n".join(zone) + "\n")
    config = os.path.join(work, "nsd.conf")
    with open(config, "w") as out:
        out.write(f"""server:
  ip-address: 127.0.0.1@{port}
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{work}"
  database: ""
  pidfile: "{work}/nsd.pid"
  zonelistfile: "{work}/zone.list"
  xfrdfile: "{work}/xfrd.state"
  xfrdir: "{work}"
  logfile: "{work}/nsd.log"
  verbosity: 0
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: mesh
  zonefile: mesh.zone
""")
    process = subprocess.Popen(["taskset", "-c", "0", nsd, "-d", "-c", config],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process


def wait_answering(port):
    for _ in range(100):
        result = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=1", "+tries=1",
                                 "orders.service.mesh"], capture_output=True, text=True)
        if result.stdout.strip():
            return
        time.sleep(0.1)
    raise SystemExit("server on port %d does not answer" % port)


def dnsperf(port, queries, seconds, clients):
    result = subprocess.run(
        ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries,
         "-l", str(seconds), "-c", str(clients), "-q", "200", "-T", "1"],
        capture_output=True, text=True)
    text = result.stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", text).group(1))
    latency = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", text).group(1)) * 1e6
    lost = int(re.search(r"Queries lost:\s+(\d+)", text).group(1))
    return qps, latency, lost


def cpu_seconds(pid):
    """CPU time of a process and its children (NSD answers in a forked server process)."""
    total = 0
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    family = {pid}
    changed = True
    while changed:
        changed = False
        for child, (parent, _) in parents.items():
            if parent in family and child not in family:
                family.add(child)
                changed = True
    total = sum(parents[p][1] for p in family if p in parents)
    return total / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=".build/release/meshwork")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mw-dns-bench-")
    queries = os.path.join(work, "queries.txt")
    query_file(queries)
    servers = {}
    try:
        mesh_port, nsd_port = free_port(), free_port()
        servers["meshwork"] = (start_meshwork(args.binary, work, mesh_port), mesh_port)
        servers["nsd"] = (start_nsd(work, nsd_port), nsd_port)
        for _, port in servers.values():
            wait_answering(port)
        results = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (process, port) in servers.items():
                before = cpu_seconds(process.pid)
                qps, latency, lost = dnsperf(port, queries, args.duration, args.clients)
                cpu = cpu_seconds(process.pid) - before
                answered = qps * args.duration
                results[name].append((qps, latency, lost, cpu * 1e6 / max(1, answered)))
        print("dnsperf, %d clients, %d s x %d rounds, server on core 0, dnsperf on core 1 (medians)"
              % (args.clients, args.duration, args.rounds))
        print("| server | queries/s | avg latency | CPU per query | lost |")
        print("|---|---:|---:|---:|---:|")
        medians = {}
        for name, rows in results.items():
            medians[name] = [statistics.median(row[i] for row in rows) for i in range(4)]
            qps, latency, lost, cpu = medians[name]
            print("| %s | %.0f | %.0f µs | %.1f µs | %d |" % (name, qps, latency, cpu, lost))
        mesh, nsd = medians["meshwork"], medians["nsd"]
        print("meshwork/nsd: queries/s x%.2f, latency x%.2f, CPU per query x%.2f"
              % (mesh[0] / nsd[0], mesh[1] / nsd[1], mesh[3] / nsd[3]))
    finally:
        for process, _ in servers.values():
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
