#!/usr/bin/env bash
# llm-compressor's pruning modifiers on the same model and calibration tokens as
# tools/experiments/pruning_table.sh, then shrink eval of each dense output (full eval split).
# RES, POUT (llm-compressor outputs) and BIN (shrink) can be overridden.
# Needs tools/peer/setup.sh (.venv-llmc) and out/smollm2-hf (shrink convert of the GGUF).
set -euo pipefail
cd "$(dirname "$0")/../.."
IDS=${IDS:-out/calib_test_64x512.safetensors}
RES=${RES:-results/peer}
POUT=${POUT:-out/peer}
BIN=${BIN:-target/release/shrink}
mkdir -p "$RES"
run() { # name method mask sparsity
  local name=$1 method=$2 mask=$3 sp=$4
  [ -f "$RES/$name.shrink-eval.json" ] && { echo "skip $name"; return; }
  echo "== $name"
  /usr/bin/time -f '%e s wall, %U s user, %S s sys, %M KB peak' -o "$RES/$name.time.txt" \
    .venv-llmc/bin/python tools/peer/llmcompressor_prune.py --method "$method" --sparsity "$sp" \
      --mask-structure "$mask" --model out/smollm2-hf --calib-ids "$IDS" --out "$POUT/$name" \
      --omp-wait-policy passive
  cp "$POUT/$name/peer_report.json" "$RES/$name.report.json"
  $BIN eval -q --model "$POUT/$name/dense" --text data/eval.txt --json > "$RES/$name.shrink-eval.json.tmp"
  mv "$RES/$name.shrink-eval.json.tmp" "$RES/$name.shrink-eval.json"
  python3 -c "import json;print('$name', json.load(open('$RES/$name.shrink-eval.json'))['perplexity'], open('$RES/$name.time.txt').read().strip())"
}
for x in "$@"; do
  case $x in
    llmc-wanda-50) run llmc-wanda-50 wanda 0:0 0.5 ;;
    llmc-wanda-2of4) run llmc-wanda-2of4 wanda 2:4 0.5 ;;
    llmc-sparsegpt-2of4) run llmc-sparsegpt-2of4 sparsegpt 2:4 0.5 ;;
    llmc-sparsegpt-50) run llmc-sparsegpt-50 sparsegpt 0:0 0.5 ;;
    llmc-sparsegpt-60) run llmc-sparsegpt-60 sparsegpt 0:0 0.6 ;;
    llmc-wanda-60) run llmc-wanda-60 wanda 0:0 0.6 ;;
    llmc-sparsegpt-4of8) run llmc-sparsegpt-4of8 sparsegpt 4:8 0.5 ;;
    llmc-wanda-4of8) run llmc-wanda-4of8 wanda 4:8 0.5 ;;
    *) echo "unknown $x"; exit 2 ;;
  esac
done
