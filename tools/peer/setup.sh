#!/usr/bin/env bash
# Creates .venv-llmc (a separate venv, git-ignored by the caller) with llm-compressor (PyPI
# `llmcompressor`) and the dependencies it pins (compressed-tensors, torch, transformers, datasets,
# accelerate, ...), for the peer comparison scripts in tools/peer/.
#
#   bash tools/peer/setup.sh                 # latest llmcompressor release
#   LLMC_VERSION=0.13.0 bash tools/peer/setup.sh
#
# Only the CPU is used. torch comes from PyPI (the default wheel, ~3 GB with its CUDA libraries;
# the CPU-only index is not reachable here). If the requested release cannot be installed, the
# script says so and tries the previous release (LLMC_FALLBACK, default 0.13.0).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv-llmc}
LLMC_VERSION=${LLMC_VERSION:-}
LLMC_FALLBACK=${LLMC_FALLBACK:-0.13.0}
PIP="$VENV/bin/pip --disable-pip-version-check"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
$PIP install --quiet --upgrade pip

spec=llmcompressor${LLMC_VERSION:+==$LLMC_VERSION}
if ! $PIP install "$spec" compressed-tensors; then
  echo "setup.sh: installing $spec failed (see pip's error above); trying llmcompressor==$LLMC_FALLBACK" >&2
  $PIP install "llmcompressor==$LLMC_FALLBACK" compressed-tensors
fi
# pip check reports any pin the resolver could not meet (it should print nothing wrong).
$PIP check || true
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
for p in ("llmcompressor", "compressed-tensors", "torch", "transformers", "datasets", "accelerate", "safetensors"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "missing")
PY
