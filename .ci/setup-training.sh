#!/usr/bin/env bash
# Builds (once) the Python venv that training/ needs, in a cache folder outside the clone, keyed by the
# hash of training/requirements.txt, and prints its python path on stdout (everything else goes to
# stderr). Idempotent: a complete venv (marked by .complete) is reused; an interrupted one is rebuilt.
# Usage: NODULED_TRAINING_PYTHON=$(bash .ci/setup-training.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

req=training/requirements.txt
key=$(sha256sum "$req" | cut -c1-16)
cache=${NODULED_CI_CACHE:-/var/cache/noduled-ci}
venv="$cache/venv-training-$key"

if [ ! -e "$venv/.complete" ]; then
    echo "setup-training: building $venv (torch is ~5 GB, once per requirements hash)" >&2
    mkdir -p "$cache"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --no-input -r "$req" >&2
    touch "$venv/.complete"
fi
echo "$venv/bin/python"
