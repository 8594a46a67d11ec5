#!/usr/bin/env bash
# Writes the fuzz corpora's seeds from phantom slices: fuzz/corpus/<target>/ (regenerable, not
# committed). Needs the noduled binary (cargo build) and DCMTK's dcmconv to strip file meta.
set -euo pipefail
cd "$(dirname "$0")"
NODULED=${NODULED:-../target/debug/noduled}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$NODULED" phantom --out "$tmp/phantom" --count 1 --slices 8 --rows 32 --columns 32 >/dev/null
mkdir -p corpus/validate_instance corpus/assemble_series
series=()
for f in $(find "$tmp/phantom" -name '*.dcm' | sort); do
    name=$(basename "$f" .dcm)
    dcmconv +te -F "$f" "$tmp/$name.raw"            # explicit VR LE data set, no meta header
    dcmconv +ti -F "$f" "$tmp/$name.implicit.raw"   # implicit VR LE
    { printf '\x00'; cat "$tmp/$name.raw"; } > "corpus/validate_instance/$name-explicit"
    { printf '\x01'; cat "$tmp/$name.implicit.raw"; } > "corpus/validate_instance/$name-implicit"
    series+=("$tmp/$name.raw")
done
for f in "${series[@]}"; do cat "$f"; printf '\xffSL\xff'; done > corpus/assemble_series/phantom-series
echo "seeded $(ls corpus/validate_instance | wc -l) instances and 1 series"
