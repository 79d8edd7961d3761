#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from its
# committed inputs (fuzz/inputs/<target>) and what earlier runs here found
# (fuzz/corpus/<target>, not committed). Exits non-zero if any target
# crashes; the input is then in fuzz/artifacts/<target>/ and the target's
# log in fuzz/logs/<target>.log. Installs cargo-fuzz if missing;
# RUSTC_BOOTSTRAP lets the stable toolchain accept the sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/logs
failed=()
for target in $(cargo fuzz list); do
    mkdir -p "fuzz/corpus/$target"
    dirs=("fuzz/corpus/$target")
    [ -d "fuzz/inputs/$target" ] && dirs+=("fuzz/inputs/$target")
    log="fuzz/logs/$target.log"
    if cargo fuzz run -O "$target" "${dirs[@]}" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        echo "fuzz $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
    else
        echo "fuzz $target: FAILED (log: $log)"
        tail -n 40 "$log"
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets that crashed: ${failed[*]}" >&2
    exit 1
fi
