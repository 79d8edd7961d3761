#!/usr/bin/env python3
"""What the live measurements cost (docs/metrics.md): ringcast with
`[stats] enabled = true` (the default; nobody looking), `false`, and `true`
with a client reading /stats/stream throughout (the dashboard's feed: topic
ranking and snapshots run too). Server on core 0 with one shard, generator
on core 1; the variants are interleaved, --rounds times each, so drift on
this shared machine hits them alike. Two figures per variant:

- overload: publications offered faster than one core delivers (10,000
  subscribers, 128 B); deliveries/s is then the server's throughput.
- fixed: a load below saturation; server CPU seconds per million deliveries.

    python3 bench/stats_cost.py                 # ~15 min
    python3 bench/stats_cost.py --rounds 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "peers"))
from compare import LOAD_CORE, SERVER_CORE, free_port, stop, wait_port  # noqa: E402
BENCH = ROOT / "target" / "release" / "ringcast-bench"
RINGCAST = ROOT / "target" / "release" / "ringcast"

VARIANTS = [("on", True, False), ("off", False, False), ("on, watched", True, True)]


def run(variant, args, workdir, rate, secs, tag):
    name, enabled, watched = variant
    ws, api, rpc = free_port(), free_port(), free_port()
    config = Path(workdir) / "c.toml"
    config.write_text(f"[stats]\nenabled = {'true' if enabled else 'false'}\n"
                      '[[vhost]]\npath = "/ws"\ndialect = "roadrunner"\n')
    server = subprocess.Popen(["taskset", "-c", SERVER_CORE, str(RINGCAST), "--config", str(config), "--shards", "1",
                               "--listen", f"127.0.0.1:{ws}", "--api-listen", f"127.0.0.1:{api}",
                               "--rpc-listen", f"127.0.0.1:{rpc}"], stderr=subprocess.DEVNULL,
                              env={**os.environ, "RUST_LOG": "warn"})
    watcher = None
    try:
        wait_port(ws, server)
        wait_port(api, server)
        if watched:
            watcher = subprocess.Popen(["taskset", "-c", LOAD_CORE, "curl", "-sN",
                                        f"http://127.0.0.1:{api}/stats/stream"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = Path(workdir) / f"{tag}-{name.replace(', ', '-')}"
        cmd = ["taskset", "-c", LOAD_CORE, str(BENCH), "fanout", "--target", f"127.0.0.1:{ws}",
               "--publish-via", "rpc", "--publish-addr", f"127.0.0.1:{rpc}", "--size", "128", "--topics", "1",
               "--subscribers", str(args.subscribers), "--rate", str(rate), "--duration-secs", str(secs),
               "--p99-bound-ms", "1000000", "--server-pid", str(server.pid), "--out", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{name}: {r.stderr.strip() or r.stdout.strip()}")
        step = json.loads((out / "fanout.json").read_text())["steps"][0]
        return step
    finally:
        if watcher:
            watcher.kill()
            watcher.wait()
        stop(server)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--subscribers", type=int, default=10000)
    ap.add_argument("--overload-rate", type=int, default=1000, help="publications/s offered (overload)")
    ap.add_argument("--fixed-rate", type=int, default=20, help="publications/s (fixed, below saturation)")
    ap.add_argument("--secs", type=int, default=8)
    args = ap.parse_args()
    results = {v[0]: {"overload": [], "cpu_per_million": [], "fixed_p99": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            # The order turns each round: no variant always runs first.
            for v in VARIANTS[round_ % 3:] + VARIANTS[:round_ % 3]:
                o = run(v, args, workdir, args.overload_rate, args.secs, f"o{round_}")
                f = run(v, args, workdir, args.fixed_rate, args.secs, f"f{round_}")
                cpu = f["server_cpu"] / (f["deliveries_per_second"] / 1e6)
                results[v[0]]["overload"].append(o["deliveries_per_second"])
                results[v[0]]["cpu_per_million"].append(cpu)
                results[v[0]]["fixed_p99"].append(f["latency_ms"]["p99"])
                print(f"round {round_ + 1} {v[0]:<12} overload {o['deliveries_per_second']:>12,.0f} deliveries/s "
                      f"(server {o.get('server_cpu', 0):.2f} cores); fixed {f['deliveries_per_second']:>10,.0f}/s: "
                      f"{cpu:.3f} CPU s per million deliveries, p99 {f['latency_ms']['p99']:.1f} ms", flush=True)
    base = {k: statistics.median(results["on"][k]) for k in results["on"]}
    print(f"\n| stats | overload deliveries/s (median of {args.rounds}) | server CPU s per million deliveries at "
          f"{args.fixed_rate * args.subscribers:,}/s | p99 ms there |\n|---|---|---|---|")
    for name, r in results.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        print(f"| {name} | {med['overload']:,.0f} ({med['overload'] / base['overload']:.3f}×) | "
              f"{med['cpu_per_million']:.3f} ({med['cpu_per_million'] / base['cpu_per_million']:.3f}×) | "
              f"{med['fixed_p99']:.1f} |")


if __name__ == "__main__":
    main()
