#!/usr/bin/env python3
"""A ringcast WebRocket backend worker (docs/protocols.md §7): answers the
`shout` trigger with the text in capitals to the session that asked, and
tells the channel about it.

    python3 -m pip install websockets
    python3 worker.py --api ws://127.0.0.1:8081 --vhost /world --token "$(ringcast ctl vhost token /world)"
"""

import argparse
import asyncio
import json

import websockets


def compact(value):
    return json.dumps(value, separators=(",", ":"))


async def work(url, token, channel):
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        print(f"worker connected to {url}", flush=True)
        async for message in ws:
            msg = json.loads(message)
            if "err" in msg:
                print(f"gateway error: {msg['err']} {msg.get('additional_info', '')}", flush=True)
                continue
            trigger = msg.get("trigger")
            if not trigger:
                continue
            if trigger["event"] != "shout":
                continue
            text = str((trigger.get("data") or {}).get("text", "")).upper()
            # To the session that triggered: {"answer": {...}}
            await ws.send(compact({"reply": {"sid": trigger["sid"], "event": "answer", "data": {"text": text}}}))
            # And to everyone in the channel.
            who = trigger.get("user") or "someone"
            await ws.send(compact({"broadcast": {"channel": channel, "event": "message",
                                                    "data": {"from": "worker", "text": f"{who} shouted {text}"}}}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", default="ws://127.0.0.1:8081", help="ringcast's API listener as ws://host:port")
    ap.add_argument("--vhost", default="/world")
    ap.add_argument("--token", required=True, help="the vhost's access token (ringcast ctl vhost token PATH)")
    ap.add_argument("--channel", default="chat")
    args = ap.parse_args()
    asyncio.run(work(f"{args.api.rstrip('/')}/workers{args.vhost}", args.token, args.channel))


if __name__ == "__main__":
    main()
