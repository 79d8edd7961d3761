#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60). Needs cargo-fuzz;
# RUSTC_BOOTSTRAP lets the stable toolchain accept the sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in $(cargo fuzz list); do
    echo "== $target (${seconds}s)"
    cargo fuzz run -O "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
