#!/usr/bin/env bash
# A venv with optimum + gptqmodel (CPU, no CUDA extension) on top of .venv-ref's torch and
# transformers (made visible through a .pth file, .venv-ref itself is not modified), so that
# transformers can load GPTQ checkpoints on CPU:  tools/reference/setup_gptq_venv.sh [DIR]
set -euo pipefail
D=${1:-out/export/venv-gptq}
python3 -m venv "$D"
REF=$(cd .venv-ref && pwd -P)/lib/python3.11/site-packages
echo "$REF" > "$D/lib/python3.11/site-packages/zz_ref.pth"
BUILD_CUDA_EXT=0 CUDA_VISIBLE_DEVICES= "$D/bin/pip" install optimum gptqmodel
