#!/usr/bin/env bash
# Creates .venv-ref (git-ignored) with the Python reference stack used by tools/reference/*.py.
# Run by hand; CI never needs it (the outputs are committed as fixtures under tests/fixtures/).
# torch from PyPI is large (~3 GB with its CUDA libraries); the CPU is all that is used.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m venv .venv-ref
.venv-ref/bin/pip install --quiet --disable-pip-version-check --upgrade pip
.venv-ref/bin/pip install --quiet --disable-pip-version-check \
  torch transformers gguf numpy safetensors sentencepiece tokenizers protobuf accelerate
.venv-ref/bin/python -c "import importlib.metadata, torch, transformers, gguf; print('torch', torch.__version__, 'transformers', transformers.__version__, 'gguf', importlib.metadata.version('gguf'))"
