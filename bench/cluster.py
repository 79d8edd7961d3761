#!/usr/bin/env python3
"""Cluster fanout: one node with the memory broker (server on core 0, load
generator on core 1) beside two nodes over Redis and over NATS (subscribers
split across the nodes, the publisher on the first), all in one run. Prints
deliveries/s at saturation (p99 bound), p50/p99 at that step, and the CPU each
process used over its run (nodes, broker, generator), as cores.

    python3 bench/cluster.py                       # ~10 min
    python3 bench/cluster.py --setups memory,redis --subscribers 5000

On a machine with fewer than 4 cores the two nodes, the broker and the
generator share cores: the figures then say what the cluster costs, not how
it scales (docs/benchmarks.md).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "peers"))
from compare import free_port, stop, wait_port  # noqa: E402  (one copy of the helpers)
BENCH = ROOT / "target" / "release" / "ringcast-bench"
RINGCAST = ROOT / "target" / "release" / "ringcast"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def spawn(cmd, cores, log):
    return subprocess.Popen(["taskset", "-c", cores] + cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(api, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", api), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"node with API port {api} never became healthy")


def run(setup, opts, work, log):
    procs, names = [], []
    try:
        broker_cfg = ""
        if setup == "redis":
            port = free_port()
            procs.append(spawn(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], "0,1", log))
            names.append("broker (redis-server)")
            wait_port(port, procs[-1])
            broker_cfg = f'broker = "redis"\n[redis]\nurl = "redis://127.0.0.1:{port}"\n'
        elif setup == "nats":
            port = free_port()
            procs.append(spawn(["nats-server", "-a", "127.0.0.1", "-p", str(port)], "0,1", log))
            names.append("broker (nats-server)")
            wait_port(port, procs[-1])
            broker_cfg = f'broker = "nats"\n[nats]\nurl = "nats://127.0.0.1:{port}"\n'
        if broker_cfg:
            # Nodes sign their envelopes (docs/cluster.md); one random secret per run.
            broker_cfg += f'[cluster]\nsecret = "{os.urandom(32).hex()}"\n'
        config = Path(work) / f"{setup}.toml"
        config.write_text(broker_cfg + '[[vhost]]\npath = "/ws"\ndialect = "roadrunner"\n')
        nodes = []
        for i, core in enumerate(["0"] if setup == "memory" else ["0", "1"]):
            ws, api, rpc = free_port(), free_port(), free_port()
            p = spawn([str(RINGCAST), "--config", str(config), "--shards", "1", "--listen", f"127.0.0.1:{ws}",
                       "--api-listen", f"127.0.0.1:{api}", "--rpc-listen", f"127.0.0.1:{rpc}",
                       "--data-dir", str(Path(work) / f"data{i}")], core, log)
            procs.append(p)
            names.append(f"node {i + 1} (core {core})")
            wait_port(ws, p)
            wait_healthy(api)
            nodes.append((ws, rpc, p))
        load_cores = "1" if setup == "memory" else "0,1"
        out = Path(opts.out) / setup
        targets = ",".join(f"127.0.0.1:{ws}" for ws, _, _ in nodes)
        cmd = ["taskset", "-c", load_cores, str(BENCH), "fanout", "--target", targets, "--publish-via", "rpc",
               "--publish-addr", f"127.0.0.1:{nodes[0][1]}", "--size", "128", "--topics", "1",
               "--subscribers", str(opts.subscribers), "--threads", "1" if setup == "memory" else "2",
               "--saturate", "--rate", str(opts.start_rate), "--step-factor", "1.25", "--max-steps", str(opts.max_steps),
               "--duration-secs", str(opts.step_secs), "--p99-bound-ms", str(opts.p99_bound_ms),
               "--server-pid", str(nodes[0][2].pid), "--out", str(out)]
        print("  $", " ".join(cmd[3:]), flush=True)
        before = [cpu_seconds(p.pid) for p in procs]
        started = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - started
        cores = {n: (cpu_seconds(p.pid) - b) / wall for n, p, b in zip(names, procs, before)}
        log.write(f"$ {' '.join(cmd)}\n{r.stdout}\n{r.stderr}\n")
        if r.returncode != 0:
            raise RuntimeError((r.stderr.strip() or r.stdout.strip()).splitlines()[-1])
        gen = [l for l in r.stdout.splitlines() if l.startswith("load generator CPU")]
        s = json.loads((out / "fanout.json").read_text())
        best = s["saturation_publications_per_second"]
        step = next((x for x in s["steps"] if x["rate_offered"] == best), None)
        lost = sum(x["lost"] for x in s["steps"])
        return {"deliveries_per_second": step["deliveries_per_second"] if step else 0,
                "p50_ms": step["latency_ms"]["p50"] if step else None,
                "p99_ms": step["latency_ms"]["p99"] if step else None,
                "lost_in_all_steps": lost,
                "cores": cores, "generator": gen[0] if gen else ""}
    finally:
        for p in reversed(procs):
            stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setups", default="memory,redis,nats")
    ap.add_argument("--subscribers", type=int, default=10000)
    ap.add_argument("--start-rate", type=int, default=4)
    ap.add_argument("--step-secs", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=25)
    ap.add_argument("--p99-bound-ms", type=float, default=250.0)
    ap.add_argument("--out", default=str(ROOT / "target" / "bench" / "cluster"))
    opts = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--workspace", "--bins"], cwd=ROOT, check=True)
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    log = open(Path(opts.out) / "cluster.log", "w")
    results = {}
    for setup in opts.setups.split(","):
        print(f"== {setup}", flush=True)
        with tempfile.TemporaryDirectory() as work:
            try:
                results[setup] = run(setup, opts, work, log)
            except Exception as e:
                results[setup] = {"failed": str(e)}
        print(f"  {json.dumps(results[setup])}", flush=True)
    base = results.get("memory", {}).get("deliveries_per_second")
    lines = ["| setup | deliveries/s at saturation (p99 ≤ %g ms) | p50 / p99 ms at that step | CPU over the run, cores |" % opts.p99_bound_ms,
             "|---|---|---|---|"]
    for setup, r in results.items():
        if "failed" in r:
            lines.append(f"| {setup} | failed: {r['failed']} | | |")
            continue
        ratio = f" ({r['deliveries_per_second'] / base:.2f}×)" if base else ""
        cpu = ", ".join(f"{n} {c:.2f}" for n, c in r["cores"].items())
        lat = f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}" if r["p99_ms"] is not None else "-"
        lines.append(f"| {setup} | {r['deliveries_per_second']:,.0f}{ratio} | {lat} | {cpu}; {r['generator']} |")
    text = "\n".join(lines)
    (Path(opts.out) / "cluster.md").write_text(text + "\n")
    (Path(opts.out) / "cluster.json").write_text(json.dumps({"options": vars(opts), "results": results}, indent=2))
    print()
    print(text)


if __name__ == "__main__":
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores")
    main()
