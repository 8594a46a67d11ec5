#!/usr/bin/env bash
# A bounded fuzzing run of both targets (default 60 s each): `bash fuzz/run.sh [seconds]`.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Crashes land in
# fuzz/artifacts/<target>/; turn each into a regression test in tests/hardening_fuzz.rs.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
[ -d corpus/validate_instance ] || bash seed.sh
for target in validate_instance assemble_series; do
    cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576
done
