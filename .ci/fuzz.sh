#!/usr/bin/env bash
# CI's bounded fuzzing run (issue 8): both cargo-fuzz targets, seeded from phantom slices, with a
# fixed libFuzzer seed and a fixed number of runs (30000 instances, 3000 series), so a run is
# reproducible: `bash .ci/fuzz.sh` here tries the same inputs in the same order as CI did (about a
# minute each here; FUZZ_SECONDS, default 180, only caps a slow machine). A crash, panic or out-of-memory fails CI; the
# input lands in fuzz/artifacts/<target>/ — turn it into a regression test before fixing.
#
# The instrumented build is cached outside the clone (/var/cache/noduled-ci/fuzz-target: ~25 min on a
# fresh 2-core machine, a few minutes after), cargo-fuzz is installed once into the cache.
# Needs: the nightly toolchain (rustup), DCMTK's dcmconv (seeds), the noduled binary in $NODULED.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${NODULED_CI_CACHE:-/var/cache/noduled-ci}
seconds=${FUZZ_SECONDS:-180}
NODULED=${NODULED:?set NODULED to the noduled binary (for the seed corpus)}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: skipped: no nightly toolchain on this machine (cargo-fuzz needs one)" >&2
    exit 0
fi
if [ ! -x "$cache/cargo-fuzz/bin/cargo-fuzz" ]; then
    cargo install --quiet --locked cargo-fuzz --version 0.13.2 --root "$cache/cargo-fuzz"
fi
export PATH="$cache/cargo-fuzz/bin:$PATH"
export CARGO_TARGET_DIR="$cache/fuzz-target"

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
# seed.sh writes fuzz/corpus/; keep the clone clean by pointing it at a temp copy of fuzz/.
cp -r fuzz "$corpus/fuzz"
(cd "$corpus/fuzz" && NODULED="$NODULED" bash seed.sh)
for entry in validate_instance:30000 assemble_series:3000; do
    target=${entry%%:*} runs=${entry##*:}
    echo "fuzz: $target, $runs runs (at most ${seconds} s)" >&2
    cargo +nightly fuzz run -O --fuzz-dir fuzz "$target" "$corpus/fuzz/corpus/$target" -- \
        -seed=1 -runs="$runs" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1
done
