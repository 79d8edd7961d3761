#!/usr/bin/env bash
# Every test: unit and integration tests (real binary, real sockets), then the
# Autobahn conformance cases. Installs what it needs (kosoku from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
cargo build --quiet --release --bin ringcast
RINGCAST_BIN=target/release/ringcast bash scripts/autobahn.sh
