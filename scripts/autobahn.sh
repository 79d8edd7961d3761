#!/usr/bin/env bash
# Autobahn TestSuite conformance (cases run by the PyPI package kosoku, no
# Docker) against an echo vhost started from config/echo.toml.
# Usage: scripts/autobahn.sh [extra kosoku args]   (RINGCAST_BIN to pick a binary)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if ! python3 -c 'import kosoku' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check kosoku
fi
kosoku=$(command -v kosoku || echo "$scripts_dir/kosoku")

bin=${RINGCAST_BIN:-target/release/ringcast}
if [ -z "${RINGCAST_BIN:-}" ]; then
    cargo build --quiet --release --bin ringcast
fi
out=target/autobahn
rm -rf "$out"
mkdir -p "$out"

"$bin" --config config/echo.toml --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --shards 2 2>"$out/server.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "ringcast listening:" "$out/server.log" && break
    sleep 0.1
done
addr=$(grep -o 'websocket=[0-9.:]*' "$out/server.log" | head -n 1 | cut -d= -f2)
[ -n "$addr" ] || { echo "autobahn: ringcast did not start:"; cat "$out/server.log"; exit 1; }

# Groups 12 and 13 need permessage-deflate, which ringcast does not offer.
"$kosoku" -m fuzzingclient "$addr" -x '12.*' -x '13.*' -p 4 -o "$out/reports" "$@" >"$out/kosoku.log" 2>&1 ||
    { echo "autobahn: kosoku failed:"; tail -n 20 "$out/kosoku.log"; exit 1; }
python3 scripts/autobahn_summary.py "$out/reports/index.json"
