#!/usr/bin/env python3
"""Side-by-side: each scenario against ringcast and every peer, each server
pinned to core 0 with one worker, the load generator pinned to core 1.
Prints one comparison table with ratios against ringcast (or --base) and writes it
(Markdown + JSON) to --out. A peer that cannot run is listed with the reason.

    python3 bench/peers/compare.py                 # everything (~25 min)
    python3 bench/peers/compare.py --servers ringcast,uws --scenarios hold
    python3 bench/peers/compare.py --servers ringcast,uws --scenarios fixed,cpu --rounds 5
                                                   # medians of 5 interleaved rounds (use an odd count)
    python3 bench/peers/compare.py --servers ringcast-tls,uws-tls,ringcast --base ringcast-tls \
        --p99-bound-ms 500                         # TLS: ringcast [server.tls] against uWS.js SSLApp

Installs what it needs: npm packages in bench/peers (uwebsockets 3.0.6, ws),
Debian nginx-light + libnginx-mod-nchan and nats-server.
"""

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / "peers"
BENCH = ROOT / "target" / "release" / "ringcast-bench"
RINGCAST = ROOT / "target" / "release" / "ringcast"
SERVER_CORE, LOAD_CORE = "0", "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {seconds} s")


def stop(proc):
    """Ends a process: SIGTERM, SIGKILL after 10 s."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raise_fd_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Server:
    """One server under test: how to install, start and measure it."""

    name = ""
    label = ""
    protocol = "roadrunner"

    def missing(self):
        """Why this server cannot run here, or None."""
        return None

    def start(self, workdir):
        """Starts pinned to SERVER_CORE; returns fanout/hold flags."""
        raise NotImplementedError

    def server_pid(self):
        """The process that holds the connections (memory and CPU are read from it)."""
        return self.proc.pid

    def stop(self):
        stop(self.proc)

    def spawn(self, cmd, workdir, env=None):
        log = open(Path(workdir) / f"{self.name}.log", "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE] + cmd, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, cwd=workdir)


class Ringcast(Server):
    name, label = "ringcast", "ringcast"
    binary = RINGCAST

    def start(self, workdir):
        ws, api, rpc = free_port(), free_port(), free_port()
        self.spawn([str(self.binary), "--shards", "1", "--listen", f"127.0.0.1:{ws}",
                    "--api-listen", f"127.0.0.1:{api}", "--rpc-listen", f"127.0.0.1:{rpc}"],
                   workdir, {"RUST_LOG": "warn"})
        wait_port(ws, self.proc)
        wait_port(api, self.proc)
        # Its fastest idiomatic path: goridge PublishAsync, a batch per ms.
        return ["--target", f"127.0.0.1:{ws}", "--publish-via", "rpc", "--publish-addr", f"127.0.0.1:{rpc}"]


def make_cert(workdir):
    """A self-signed certificate for localhost (and 127.0.0.1) in workdir;
    the load generator trusts exactly it (--tls-ca)."""
    cert, key = Path(workdir) / "cert.pem", Path(workdir) / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:FALSE",  # rustls refuses a CA as the server
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


class RingcastTls(Ringcast):
    """ringcast with [server.tls]: the same certificate kind as uws-tls."""

    name, label = "ringcast-tls", "ringcast, wss (TLS)"

    def start(self, workdir):
        cert, key = make_cert(workdir)
        config = Path(workdir) / "tls.toml"
        config.write_text(f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\n')
        ws, api, rpc = free_port(), free_port(), free_port()
        self.spawn([str(self.binary), "--config", str(config), "--shards", "1", "--listen", f"127.0.0.1:{ws}",
                    "--api-listen", f"127.0.0.1:{api}", "--rpc-listen", f"127.0.0.1:{rpc}"],
                   workdir, {"RUST_LOG": "warn"})
        wait_port(ws, self.proc)
        wait_port(api, self.proc)
        # Subscribers over TLS; the backend publishes over goridge RPC as in
        # the plain run (a backend's port is not the public one).
        return ["--tls-ca", str(cert), "--target", f"127.0.0.1:{ws}", "--publish-via", "rpc",
                "--publish-addr", f"127.0.0.1:{rpc}"]


class RingcastBefore(Ringcast):
    """Another ringcast build (RINGCAST_BEFORE=/path/to/ringcast), driven the
    same way: a change's before and after against the same peers, one run."""

    name, label = "ringcast-before", "ringcast before"

    @property
    def binary(self):
        return os.environ.get("RINGCAST_BEFORE", "")

    def missing(self):
        if not self.binary or not Path(self.binary).is_file():
            return "set RINGCAST_BEFORE to a ringcast binary"
        return None


class RingcastWebRocket(Server):
    """ringcast's WebRocket dialect: subscribers authenticate as `bench` and
    subscribe; the publisher is a client broadcasting (`ringcast ctl` makes
    the user). Same server, same pinning: the dialect's cost against roadrunner."""

    name, label, protocol = "ringcast-webrocket", "ringcast, webrocket dialect", "webrocket"
    TOKEN = "compare-admin-token-0123456789"

    def start(self, workdir):
        ws, api, rpc = free_port(), free_port(), free_port()
        config = Path(workdir) / "webrocket.toml"
        config.write_text(f'[server]\nadmin_token = "{self.TOKEN}"\n'
                          '[[vhost]]\npath = "/world"\ndialect = "webrocket"\n')
        self.spawn([str(RINGCAST), "--config", str(config), "--shards", "1", "--listen", f"127.0.0.1:{ws}",
                    "--api-listen", f"127.0.0.1:{api}", "--rpc-listen", f"127.0.0.1:{rpc}",
                    "--data-dir", str(Path(workdir) / "data")], workdir, {"RUST_LOG": "warn"})
        wait_port(ws, self.proc)
        wait_port(api, self.proc)
        subprocess.run([str(RINGCAST), "ctl", "--api", f"http://127.0.0.1:{api}", "--token", self.TOKEN,
                        "user", "add", "/world", "bench", "--permissions", "READ,WRITE"], check=True)
        return ["--target", f"127.0.0.1:{ws}", "--protocol", "webrocket", "--publish-via", "ws"]


class NodePeer(Server):
    protocol = "roadrunner"

    def __init__(self, name, label, script, module):
        self.name, self.label, self.script, self.module = name, label, script, module

    def missing(self):
        if not shutil.which("node"):
            return "node is not installed"
        if not (PEERS / "node_modules" / self.module).exists():
            r = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=PEERS,
                               capture_output=True, text=True)
            if r.returncode != 0:
                return f"npm install failed: {r.stderr.strip()[-300:]}"
        return None

    def start(self, workdir):
        port = free_port()
        self.spawn(["node", str(PEERS / self.script), str(port)], workdir)
        wait_port(port, self.proc)
        # Their fastest idiomatic path: pipelined WebSocket publishes on /pub
        # (a serial HTTP request per publication made uWS.js write each
        # publication to every socket on its own: 0.24× in the first table).
        return ["--target", f"127.0.0.1:{port}", "--publish-via", "ws"]


class UwsTls(NodePeer):
    """uWebSockets.js SSLApp: subscribers and the publisher over TLS (it has
    no other port), with a certificate made like ringcast-tls's."""

    def __init__(self):
        super().__init__("uws-tls", "uWebSockets.js 3.0.6 SSLApp (TLS)", "uws.js", "uwebsockets")

    def start(self, workdir):
        cert, key = make_cert(workdir)
        port = free_port()
        self.spawn(["node", str(PEERS / self.script), str(port), str(cert), str(key)], workdir)
        wait_port(port, self.proc)
        return ["--tls-ca", str(cert), "--target", f"127.0.0.1:{port}", "--publish-via", "ws"]


def apt_install(*packages):
    r = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                       + " ".join(packages), shell=True, capture_output=True, text=True)
    return None if r.returncode == 0 else f"apt-get install {' '.join(packages)} failed: {r.stderr.strip()[-300:]}"


def fill(template, out, values):
    text = (PEERS / template).read_text()
    for k, v in values.items():
        text = text.replace(k, str(v))
    Path(out).write_text(text)


class Nchan(Server):
    name, label, protocol = "nchan", "Nchan (nginx 1 worker)", "nchan"

    def missing(self):
        if not (shutil.which("nginx") and Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists()):
            return apt_install("nginx-light", "libnginx-mod-nchan")
        return None

    def start(self, workdir):
        port = free_port()
        conf = Path(workdir) / "nchan.conf"
        fill("nchan.conf", conf, {"@DIR@": workdir, "@PORT@": port})
        self.spawn(["nginx", "-c", str(conf), "-p", workdir], workdir)
        wait_port(port, self.proc)
        # Pipelined WebSocket publishing (/pub/<topic>), each acknowledged,
        # instead of one HTTP request at a time.
        return ["--protocol", "nchan", "--target", f"127.0.0.1:{port}", "--publish-via", "ws"]

    def server_pid(self):
        # The worker holds the connections; the master only watches it.
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        # taskset execs nginx in place, so proc.pid is the master.
        return int(out.split()[0])


class Nats(Server):
    name, label, protocol = "nats", "NATS (GOMAXPROCS=1)", "nats"

    def missing(self):
        if not shutil.which("nats-server"):
            return apt_install("nats-server")
        return None

    def start(self, workdir):
        port, ws = free_port(), free_port()
        conf = Path(workdir) / "nats.conf"
        fill("nats.conf", conf, {"@WS_PORT@": ws, "@PORT@": port})
        self.spawn(["nats-server", "-c", str(conf)], workdir, {"GOMAXPROCS": "1"})
        wait_port(port, self.proc)
        wait_port(ws, self.proc)
        return ["--protocol", "nats", "--target", f"127.0.0.1:{ws}", "--publish-via", "nats",
                "--publish-addr", f"127.0.0.1:{port}"]


SERVERS = [
    Ringcast(),
    RingcastBefore(),
    RingcastWebRocket(),
    RingcastTls(),
    NodePeer("uws", "uWebSockets.js 3.0.6", "uws.js", "uwebsockets"),
    UwsTls(),
    NodePeer("ws", "Node ws", "ws.js", "ws"),
    Nchan(),
    Nats(),
]


def bench(args, log):
    cmd = ["taskset", "-c", LOAD_CORE, str(BENCH)] + args
    print("  $", " ".join(cmd[3:]), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    log.write(f"$ {' '.join(cmd)}\n{r.stdout}\n{r.stderr}\n")
    log.flush()
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip() or r.stdout.strip()).splitlines()[-1])
    return r.stdout


def run_hold(server, flags, out, log, opts):
    path = out / f"{server.name}-hold.json"
    target = flags[flags.index("--target") + 1]
    proto = ["--protocol", server.protocol]
    tls = flags[flags.index("--tls-ca"):flags.index("--tls-ca") + 2] if "--tls-ca" in flags else []
    bench([*tls, "hold", "--target", target, *proto, "--connections", str(opts.connections),
           "--server-pid", str(server.server_pid()), "--json", str(path)], log)
    h = json.loads(path.read_text())
    return {"bytes_per_connection": h["rss_anon_bytes_per_connection"],
            "rss_bytes_per_connection": h["rss_bytes_per_connection"]}


def run_fanout(server, flags, out, log, extra):
    d = out / f"{server.name}-{extra[0]}"
    tls = flags[flags.index("--tls-ca"):flags.index("--tls-ca") + 2] if "--tls-ca" in flags else []
    rest = [f for i, f in enumerate(flags) if f != "--tls-ca" and (i == 0 or flags[i - 1] != "--tls-ca")]
    stdout = bench([*tls, "fanout", *rest, "--size", "128", "--topics", "1", "--server-pid", str(server.server_pid()),
                    "--out", str(d), *extra[1:]], log)
    summary = json.loads((d / "fanout.json").read_text())
    cpu = [l for l in stdout.splitlines() if l.startswith("load generator CPU")]
    return summary, (cpu[0] if cpu else "")


def run_saturation(server, flags, out, log, opts):
    s, cpu = run_fanout(server, flags, out, log, [
        "saturate", "--subscribers", str(opts.subscribers), "--saturate", "--rate", str(opts.start_rate),
        "--step-factor", "1.25", "--max-steps", str(opts.max_steps), "--duration-secs", str(opts.step_secs),
        "--p99-bound-ms", str(opts.p99_bound_ms)])
    best = s["saturation_publications_per_second"]
    step = next((x for x in s["steps"] if x["rate_offered"] == best), None)
    # The first failed step, which may lie below the best passing one.
    failed = next((x for x in s["steps"] if not x["passed"]), None)
    return {"deliveries_per_second": step["deliveries_per_second"] if step else 0,
            "publications_per_second": best or 0,
            "p99_ms": step["latency_ms"]["p99"] if step else None,
            "server_cpu": step and step.get("server_cpu"), "generator_cpu": step and step.get("generator_cpu"),
            "publisher_cpu": step and step.get("publisher_cpu"),
            "steps_exhausted": s["steps"][-1]["passed"],
            "failed_below_best": bool(failed and best and failed["rate_offered"] < best),
            "first_failed": failed and {k: failed.get(k) for k in ("rate_offered", "lost", "extra", "out_of_order", "publisher_error")}
            | {"p99_ms": failed["latency_ms"]["p99"], "publications": failed["publications"]},
            "generator": cpu}


def fixed_rate(server, flags, out, log, name, subscribers, deliveries, secs):
    """One fanout step at `deliveries`/s to `subscribers`: (step, publications/s, generator CPU line)."""
    rate = deliveries // subscribers
    s, cpu = run_fanout(server, flags, out, log, [
        name, "--subscribers", str(subscribers), "--rate", str(rate), "--duration-secs", str(secs),
        "--p99-bound-ms", "100000"])
    return s["steps"][0], rate, cpu


def cpus(step):
    return {k: step.get(k) for k in ("server_cpu", "generator_cpu", "publisher_cpu")}


def run_fixed(server, flags, out, log, opts):
    step, rate, cpu = fixed_rate(server, flags, out, log, "fixed", opts.fixed_subscribers,
                                 opts.fixed_deliveries, opts.fixed_secs)
    lat = step["latency_ms"]
    return {"deliveries_per_second": step["deliveries_per_second"], "lost": step["lost"],
            "kept_up": step["publications"] >= 0.99 * rate * opts.fixed_secs,
            "p50_ms": lat["p50"], "p99_ms": lat["p99"], "p99.9_ms": lat["p99.9"], "max_ms": lat["max"],
            **cpus(step), "generator": cpu}


def run_cpu(server, flags, out, log, opts):
    """Server CPU per delivery at a fixed rate the server keeps up with."""
    step, _, cpu = fixed_rate(server, flags, out, log, "cpu", opts.subscribers, opts.cpu_deliveries,
                              opts.fixed_secs)
    per = step["server_cpu"] / step["deliveries_per_second"] * 1e6 if step.get("server_cpu") and \
        step["deliveries_per_second"] else None
    return {"deliveries_per_second": step["deliveries_per_second"], "lost": step["lost"], **cpus(step),
            "server_cpu_us_per_delivery": per, "p99_ms": step["latency_ms"]["p99"], "generator": cpu}


SCENARIOS = {"hold": run_hold, "saturate": run_saturation, "fixed": run_fixed, "cpu": run_cpu}

# The figure each scenario is judged by.
KEY = {"hold": "bytes_per_connection", "saturate": "deliveries_per_second", "fixed": "p99_ms",
       "cpu": "server_cpu_us_per_delivery"}


def median_round(scenario, runs):
    """The round with the median key figure (the lower middle one for an
    even count), with every round's figure in `spread`; a failed round
    counts as failed only if every round failed."""
    ok = [r for r in runs if isinstance(r, dict) and r.get(KEY[scenario]) is not None]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r[KEY[scenario]])
    chosen = dict(ok[(len(ok) - 1) // 2])
    if len(runs) > 1:
        chosen["spread"] = [r[KEY[scenario]] if isinstance(r, dict) else r for r in runs]
    return chosen


def spread(r, fmt):
    """ " [min–max of n]" for a median over several rounds."""
    values = [v for v in r.get("spread", []) if isinstance(v, (int, float))]
    if len(r.get("spread", [])) < 2:
        return ""
    return f" [{fmt(min(values))}–{fmt(max(values))} of {len(r['spread'])}]"


def ratio(value, base):
    if value is None or not base:
        return ""
    return f" ({value / base:.2f}×)"


def table(results, opts):
    rows = []
    head = ["server",
            f"fanout at saturation, deliveries/s ({opts.subscribers:,} subs, 1 topic, 128 B, p99 ≤ {opts.p99_bound_ms:g} ms)",
            f"p50 / p99 / p99.9 ms at {opts.fixed_deliveries:,} deliveries/s ({opts.fixed_subscribers:,} subs)",
            f"memory per idle subscribed connection ({opts.connections:,}, RssAnon)",
            "CPU at the saturation step, cores: server / generator (of which publisher)",
            f"server CPU µs per delivery at {opts.cpu_deliveries:,} deliveries/s ({opts.subscribers:,} subs)"]
    base = results.get(opts.base, {})
    for s in SERVERS:
        r = results.get(s.name)
        if r is None:
            continue
        if "missing" in r:
            rows.append([s.label, f"cannot run: {r['missing']}", "", "", "", ""])
            continue
        cells = [s.label]
        sat = r.get("saturate")
        if isinstance(sat, dict):
            cell = (("≥ " if sat.get("steps_exhausted") else "") + f"{sat['deliveries_per_second']:,.0f}"
                    + ratio(sat["deliveries_per_second"], base.get("saturate", {}).get("deliveries_per_second")
                            if isinstance(base.get("saturate"), dict) else None))
            cell += spread(sat, lambda v: f"{v / 1e6:.2f} M")
            if sat.get("failed_below_best"):
                f = sat["first_failed"]
                cell += f"; failed at {f['rate_offered'] * opts.subscribers:,}/s (p99 {f['p99_ms']:.0f} ms)"
            cells.append(cell)
        else:
            cells.append(sat or "")
        fx = r.get("fixed")
        if isinstance(fx, dict):
            b = base.get("fixed") if isinstance(base.get("fixed"), dict) else {}
            cell = f"{fx['p50_ms']:.2f} / {fx['p99_ms']:.2f}{ratio(fx['p99_ms'], b.get('p99_ms'))} / {fx['p99.9_ms']:.2f}"
            cell += spread(fx, lambda v: f"p99 {v:.0f}")
            if fx["lost"] or not fx["kept_up"]:
                cell += f" — {fx['lost']:,} lost" + ("" if fx["kept_up"] else ", publisher held back")
            cells.append(cell)
        else:
            cells.append(fx or "")
        hd = r.get("hold")
        if isinstance(hd, dict):
            b = base.get("hold") if isinstance(base.get("hold"), dict) else {}
            cells.append(f"{hd['bytes_per_connection']:,.0f} B{ratio(hd['bytes_per_connection'], b.get('bytes_per_connection'))}"
                         f"{spread(hd, lambda v: f'{v:.0f}')}")
        else:
            cells.append(hd or "")
        cpu = lambda v: "-" if v is None else f"{v:.2f}"
        if isinstance(sat, dict):
            cells.append(f"{cpu(sat.get('server_cpu'))} / {cpu(sat.get('generator_cpu'))} ({cpu(sat.get('publisher_cpu'))})")
        else:
            cells.append("")
        cp = r.get("cpu")
        if isinstance(cp, dict) and cp.get("server_cpu_us_per_delivery"):
            b = base.get("cpu") if isinstance(base.get("cpu"), dict) else {}
            cells.append(f"{cp['server_cpu_us_per_delivery']:.3f}"
                         f"{ratio(cp['server_cpu_us_per_delivery'], b.get('server_cpu_us_per_delivery'))}"
                         f"{spread(cp, lambda v: f'{v:.2f}')}"
                         f" (generator {cpu(cp.get('generator_cpu'))}, publisher {cpu(cp.get('publisher_cpu'))} cores)")
        else:
            cells.append(cp if isinstance(cp, str) else "")
        rows.append(cells)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=",".join(s.name for s in SERVERS))
    ap.add_argument("--scenarios", default="hold,saturate,fixed,cpu")
    ap.add_argument("--out", default=str(ROOT / "target" / "bench" / "compare"))
    ap.add_argument("--connections", type=int, default=15000, help="hold: idle subscribed connections")
    ap.add_argument("--subscribers", type=int, default=10000, help="saturate: subscribers on one topic")
    ap.add_argument("--start-rate", type=int, default=4, help="saturate: first step, publications/s")
    ap.add_argument("--step-secs", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=25, help="saturate: ×1.25 each; 25 steps from 4 reach ~850/s")
    ap.add_argument("--p99-bound-ms", type=float, default=250.0)
    ap.add_argument("--fixed-deliveries", type=int, default=200000, help="fixed: deliveries/s")
    ap.add_argument("--fixed-subscribers", type=int, default=1000)
    ap.add_argument("--fixed-secs", type=int, default=10)
    ap.add_argument("--cpu-deliveries", type=int, default=100000, help="cpu: deliveries/s (--subscribers subs)")
    ap.add_argument("--base", default="ringcast", help="the server the ratios are against (e.g. ringcast-tls)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every server and scenario this many times, interleaved; the table shows the median "
                         "round and the spread")
    opts = ap.parse_args()
    wanted = opts.servers.split(",")
    scenarios = opts.scenarios.split(",")
    unknown = [w for w in wanted if w not in {s.name for s in SERVERS}] + \
        [x for x in scenarios if x not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown server or scenario: {', '.join(unknown)}")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores: the server on core 0, the load generator on core 1")
    limit = raise_fd_limit()
    if limit < opts.connections + 1000:
        sys.exit(f"ulimit -n is {limit}: --connections {opts.connections} needs about {opts.connections + 1000}")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--workspace", "--bins"],
                   cwd=ROOT, check=True)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "compare.log", "w")
    results, rounds = {}, {}
    servers = [s for s in SERVERS if s.name in wanted]
    for server in servers:
        why = server.missing()
        if why:
            print(f"== {server.label}\n  cannot run: {why}")
            results[server.name] = {"missing": why}
    runnable = [s for s in servers if s.name not in results]
    for r in range(opts.rounds):
        # Interleaved, the first server turning each round: this VM's drift
        # between minutes hits every server alike.
        order = runnable[r % len(runnable):] + runnable[:r % len(runnable)] if runnable else []
        for server in order:
            print(f"== {server.label}" + (f" (round {r + 1} of {opts.rounds})" if opts.rounds > 1 else ""), flush=True)
            for sc in scenarios:
                # A fresh server per scenario: memory and caches do not carry over.
                with tempfile.TemporaryDirectory() as work:
                    server.proc = None
                    try:
                        flags = server.start(work)
                        got = SCENARIOS[sc](server, flags, out, log, opts)
                    except Exception as e:  # a peer that fails says why in the table
                        got = f"failed: {e}"
                    finally:
                        server.stop()
                    rounds.setdefault(server.name, {}).setdefault(sc, []).append(got)
                    print(f"  {sc}: {json.dumps(got)}", flush=True)
    for name, by_scenario in rounds.items():
        results[name] = {sc: median_round(sc, runs) for sc, runs in by_scenario.items()}
    text = table(results, opts)
    (out / "compare.md").write_text(text + "\n")
    (out / "compare.json").write_text(json.dumps({"options": vars(opts), "results": results}, indent=2))
    print()
    print(text)
    print(f"\nwrote {out / 'compare.md'}, {out / 'compare.json'}, per-run outputs and compare.log in {out}")


if __name__ == "__main__":
    main()
