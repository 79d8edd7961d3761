#!/usr/bin/env bash
# Autobahn TestSuite conformance (cases run by the PyPI package kosoku, no
# Docker) against an echo vhost started from config/echo.toml.
# Usage: scripts/autobahn.sh [extra kosoku args]   (RINGCAST_BIN to pick a binary)
# AUTOBAHN_TLS=1: the same cases over wss. The server gets [server.tls] with
# a certificate made here; kosoku speaks plain ws only, so
# scripts/tls_relay.py carries each of its connections over TLS.
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
tls=${AUTOBAHN_TLS:-}
out=target/autobahn${tls:+-wss}
rm -rf "$out"
mkdir -p "$out"
config=config/echo.toml
if [ -n "$tls" ]; then
    command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
    config=$out/echo-tls.toml
    { cat config/echo.toml; printf '\n[server.tls]\ncert = "%s"\nkey = "%s"\n' "$out/cert.pem" "$out/key.pem"; } >"$config"
fi

"$bin" --config "$config" --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --rpc-listen 127.0.0.1:0 --shards 2 2>"$out/server.log" &
pid=$!
relay=
trap 'kill "$pid" $relay 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "ringcast listening:" "$out/server.log" && break
    sleep 0.1
done
addr=$(grep -o 'websocket=[0-9.:]*' "$out/server.log" | head -n 1 | cut -d= -f2)
[ -n "$addr" ] || { echo "autobahn: ringcast did not start:"; cat "$out/server.log"; exit 1; }
if [ -n "$tls" ]; then
    python3 scripts/tls_relay.py "$addr" "$out/cert.pem" >"$out/relay.port" 2>"$out/relay.log" &
    relay=$!
    for _ in $(seq 100); do
        [ -s "$out/relay.port" ] && break
        sleep 0.1
    done
    addr=127.0.0.1:$(cat "$out/relay.port")
    echo "autobahn over wss: kosoku -> $addr (relay) -> TLS -> ringcast"
fi

# Groups 12 and 13 need permessage-deflate, which ringcast does not offer.
"$kosoku" -m fuzzingclient "$addr" -x '12.*' -x '13.*' -p 4 -o "$out/reports" "$@" >"$out/kosoku.log" 2>&1 ||
    { echo "autobahn: kosoku failed:"; tail -n 20 "$out/kosoku.log"; exit 1; }
python3 scripts/autobahn_summary.py "$out/reports/index.json"
