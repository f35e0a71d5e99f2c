#!/usr/bin/env bash
# llm-compressor's pruning modifiers on the same model and calibration tokens as
# tools/experiments/pruning_table.sh, then shrink eval of each dense output (full eval split).
# Needs tools/peer/setup.sh (.venv-llmc) and out/smollm2-hf (shrink convert of the GGUF).
set -euo pipefail
cd "$(dirname "$0")/../.."
IDS=${IDS:-out/calib_test_64x512.safetensors}
RES=results/peer
mkdir -p "$RES"
run() { # name method mask sparsity
  local name=$1 method=$2 mask=$3 sp=$4
  [ -f "$RES/$name.shrink-eval.json" ] && { echo "skip $name"; return; }
  echo "== $name"
  /usr/bin/time -f '%e s wall, %U s user, %S s sys, %M KB peak' -o "$RES/$name.time.txt" \
    .venv-llmc/bin/python tools/peer/llmcompressor_prune.py --method "$method" --sparsity "$sp" \
      --mask-structure "$mask" --model out/smollm2-hf --calib-ids "$IDS" --out "out/peer/$name" \
      --omp-wait-policy passive
  cp "out/peer/$name/peer_report.json" "$RES/$name.report.json"
  target/release/shrink eval -q --model "out/peer/$name/dense" --text data/eval.txt --json > "$RES/$name.shrink-eval.json"
  python3 -c "import json;print('$name', json.load(open('$RES/$name.shrink-eval.json'))['perplexity'], open('$RES/$name.time.txt').read().strip())"
}
for x in "$@"; do
  case $x in
    llmc-wanda-50) run llmc-wanda-50 wanda 0:0 0.5 ;;
    llmc-wanda-2of4) run llmc-wanda-2of4 wanda 2:4 0.5 ;;
    llmc-sparsegpt-2of4) run llmc-sparsegpt-2of4 sparsegpt 2:4 0.5 ;;
    llmc-sparsegpt-50) run llmc-sparsegpt-50 sparsegpt 0:0 0.5 ;;
    *) echo "unknown $x"; exit 2 ;;
  esac
done
