#!/usr/bin/env python3
"""Ping round trip of one extra client while ringcast fans out: does input
wait for a long flush pass? Server on core 0 (one shard), `ringcast-bench
fanout` on core 1 (10,000 subscribers, RATE publications/s), the pinging
client on core 1 too (masked empty pings every 20 ms for 8 s once every
subscriber is connected). Builds given are alternated ROUNDS times.

    ulimit -n 20000
    python3 bench/ping_during_fanout.py target/release/ringcast,/tmp/other-ringcast 200 2
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from compare import BENCH, free_port, raise_fd_limit, stop, wait_port  # noqa: E402

SUBSCRIBERS = 10000
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def connections(api):
    text = urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5).read().decode()
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith("ringcast_connections{"))


def run(binary, rate):
    ws, api, rpc = free_port(), free_port(), free_port()
    server = subprocess.Popen(["taskset", "-c", "0", binary, "--shards", "1", "--listen", f"127.0.0.1:{ws}",
                               "--api-listen", f"127.0.0.1:{api}", "--rpc-listen", f"127.0.0.1:{rpc}",
                               "--data-dir", f"/tmp/ringcast-ping-{os.getpid()}"], stderr=subprocess.DEVNULL)
    try:
        wait_port(ws, server)
        wait_port(api, server)
        gen = subprocess.Popen(["taskset", "-c", "1", str(BENCH), "fanout", "--target", f"127.0.0.1:{ws}",
                                "--publish-via", "rpc", "--publish-addr", f"127.0.0.1:{rpc}",
                                "--subscribers", str(SUBSCRIBERS), "--rate", str(rate), "--duration-secs", "15",
                                "--p99-bound-ms", "1000000", "--out", f"/tmp/ringcast-ping-out-{os.getpid()}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while connections(api) < SUBSCRIBERS:
            if time.time() > deadline or gen.poll() is not None:
                raise SystemExit("the generator did not connect its subscribers")
            time.sleep(0.1)
        time.sleep(1)  # publishing starts after the last subscriber joined
        client = socket.create_connection(("127.0.0.1", ws))
        client.sendall(UPGRADE)
        client.recv(129)
        rtts = []
        end = time.time() + 8
        while time.time() < end:
            started = time.perf_counter()
            client.sendall(bytes([0x89, 0x80, 1, 2, 3, 4]))  # masked empty ping
            pong = b""
            while len(pong) < 2:
                pong += client.recv(2 - len(pong))
            rtts.append((time.perf_counter() - started) * 1000)
            time.sleep(0.02)
        client.close()
        gen.wait()
    finally:
        stop(server)
    rtts.sort()
    at = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))]
    print(f"{binary} at {rate} pub/s: {len(rtts)} pings, p50 {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms, "
          f"max {rtts[-1]:.1f} ms", flush=True)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    raise_fd_limit()
    for _ in range(int(sys.argv[3])):
        for binary in sys.argv[1].split(","):
            run(binary, int(sys.argv[2]))


if __name__ == "__main__":
    main()
