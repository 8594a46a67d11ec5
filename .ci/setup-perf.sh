#!/usr/bin/env bash
# onnxruntime for the `ort` engine's tests and benchmark: the shared library from the `onnxruntime`
# PyPI wheel, in a venv cached under /var/cache/noduled-ci/. Meant to be sourced (it exports
# ORT_DYLIB_PATH); idempotent: installs only when the library is missing.
ORT_VERSION=1.32.0
ORT_VENV=/var/cache/noduled-ci/ort-venv-$ORT_VERSION
ort_lib() { ls "$ORT_VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1; }
if [ -z "$(ort_lib)" ]; then
    mkdir -p /var/cache/noduled-ci
    python3 -m venv "$ORT_VENV"
    # Only the library is used: skip the Python dependencies (numpy, protobuf, ...).
    "$ORT_VENV/bin/pip" install --quiet --no-deps "onnxruntime==$ORT_VERSION"
fi
ORT_DYLIB_PATH="$(ort_lib)"
if [ -z "$ORT_DYLIB_PATH" ]; then
    echo "setup-perf: no libonnxruntime.so in $ORT_VENV" >&2
    return 1 2>/dev/null || exit 1
fi
export ORT_DYLIB_PATH
