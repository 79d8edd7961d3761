#!/usr/bin/env bash
# Every test: unit and integration tests (real binary, real sockets, a 2-minute
# soak), every fuzz target for 30 s, then the Autobahn conformance cases. Installs what it needs (nginx + nchan,
# nats-server, redis-server, chromium, prometheus and php-cli from apt; kosoku, websockets and pyjwt from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
# The benchmark's peer adapters are tested against real Nchan and NATS.
if ! { [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] && command -v nginx && command -v nats-server; } >/dev/null; then
  echo "installing nginx-light, libnginx-mod-nchan, nats-server (apt) for bench/tests/peers.rs" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan nats-server >/dev/null
fi
# Cluster tests run real Redis and NATS servers (tests/cluster.rs).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "installing redis-server (apt) for tests/cluster.rs" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# The WebRocket example and the dashboard are driven in headless Chromium.
if ! command -v chromium >/dev/null; then
  echo "installing chromium (apt) for tests/webrocket_browser.rs and tests/dashboard_browser.rs" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# The Grafana dashboard's queries run against a real Prometheus (tests/grafana.rs).
if ! command -v prometheus >/dev/null; then
  echo "installing prometheus (apt) for tests/grafana.rs" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# docs/security.md's token minting snippets run as written (tests/auth.rs).
if ! command -v php >/dev/null; then
  echo "installing php-cli (apt) for tests/auth.rs" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq php-cli >/dev/null
fi
if ! python3 -c 'import websockets' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check websockets
fi
if ! python3 -c 'import jwt' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check pyjwt
fi
cargo test --workspace
# Every fuzz target for 30 s from its committed inputs (fuzz/README.md); a crash fails the run.
bash scripts/fuzz.sh 30
cargo build --quiet --release --bin ringcast
RINGCAST_BIN=target/release/ringcast bash scripts/autobahn.sh
RINGCAST_BIN=target/release/ringcast AUTOBAHN_TLS=1 bash scripts/autobahn.sh
