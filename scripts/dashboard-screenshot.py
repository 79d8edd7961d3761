#!/usr/bin/env python3
"""Takes docs/img/dashboard.png: starts a release ringcast, runs a fanout
load against it (ringcast-bench) while the dashboard is open in headless
Chromium for --seconds, then saves a screenshot.

    cargo build --release --workspace
    python3 scripts/dashboard-screenshot.py [--seconds 60] [--out docs/img/dashboard.png]

The dashboard test (tests/dashboard_browser.rs) checks the page; this only
makes the picture for the docs, with a minute of history in the charts.
"""
import argparse, asyncio, base64, json, re, subprocess, sys, tempfile
from pathlib import Path

import websockets  # PyPI; scripts/test.sh installs it

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "peers"))
from compare import free_port, stop, wait_port  # noqa: E402  (one copy of the helpers)
TOKEN = "screenshot-admin-token-0123456789"


async def shoot(endpoint, url, seconds, out):
    async with websockets.connect(endpoint, max_size=64 << 20) as cdp:
        ids = iter(range(1, 1 << 30))

        async def call(method, params=None, session=None):
            i = next(ids)
            msg = {"id": i, "method": method, "params": params or {}}
            if session:
                msg["sessionId"] = session
            await cdp.send(json.dumps(msg))
            while True:
                m = json.loads(await cdp.recv())
                if m.get("id") == i:
                    if "error" in m:
                        raise SystemExit(f"{method}: {m['error']}")
                    return m["result"]

        target = await call("Target.createTarget", {"url": "about:blank"})
        session = (await call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}))["sessionId"]
        await call("Emulation.setDeviceMetricsOverride",
                   {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False}, session)
        await call("Page.enable", {}, session)
        await call("Page.navigate", {"url": url}, session)
        await asyncio.sleep(seconds)
        shot = await call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
        Path(out).write_bytes(base64.b64decode(shot["data"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--out", default=str(ROOT / "docs/img/dashboard.png"))
    args = ap.parse_args()
    ws, api, rpc = free_port(), free_port(), free_port()
    procs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "c.toml"
            config.write_text(f'[server]\nadmin_token = "{TOKEN}"\n[[vhost]]\npath = "/ws"\ndialect = "roadrunner"\n')
            gw = subprocess.Popen([str(ROOT / "target/release/ringcast"), "--config", str(config), "--shards", "2",
                                   "--listen", f"127.0.0.1:{ws}", "--api-listen", f"127.0.0.1:{api}",
                                   "--rpc-listen", f"127.0.0.1:{rpc}"], stderr=subprocess.DEVNULL)
            procs.append(gw)
            wait_port(api, gw)
            chromium = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                         "--remote-debugging-port=0", f"--user-data-dir={tmp}/chromium", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(chromium)
            endpoint = None
            for line in chromium.stderr:
                m = re.search(r"(ws://\S+)", line)
                if m:
                    endpoint = m.group(1)
                    break
            # Load: 2,000 subscribers on 4 topics, publications over RPC.
            load = subprocess.Popen([str(ROOT / "target/release/ringcast-bench"), "fanout",
                                     "--target", f"127.0.0.1:{ws}", "--publish-via", "rpc",
                                     "--publish-addr", f"127.0.0.1:{rpc}", "--subscribers", "2000",
                                     "--topics", "4", "--rate", "50",
                                     "--duration-secs", str(int(args.seconds) + 30)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(load)
            url = f"http://ops:{TOKEN}@127.0.0.1:{api}/dashboard"
            asyncio.run(shoot(endpoint, url, args.seconds, args.out))
            print(f"wrote {args.out}")
    finally:
        for p in reversed(procs):
            stop(p)


if __name__ == "__main__":
    main()
