#!/usr/bin/env bash
# Perplexity of every pruning setting on the default model (issue 4 table).
# Calibration: the 64 x 512 token ids shared with the llm-compressor peer runs
# (out/calib_test_64x512.safetensors); evaluation: the full eval split, seqlen 512.
# Each run: shrink compress (report.json with sparsity and times) then shrink eval --json.
# Usage: tools/experiments/pruning_table.sh [NAME ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
IDS=${IDS:-out/calib_test_64x512.safetensors}
OUT=${OUT:-out/pruning}
RES=${RES:-results/pruning}
mkdir -p "$OUT" "$RES"
declare -A CFG=(
  [magnitude-50]="--method magnitude --sparsity 0.5"
  [magnitude-60]="--method magnitude --sparsity 0.6"
  [magnitude-2of4]="--method magnitude --pattern 2:4"
  [magnitude-4of8]="--method magnitude --pattern 4:8"
  [wanda-50]="--method wanda --sparsity 0.5"
  [wanda-60]="--method wanda --sparsity 0.6"
  [wanda-2of4]="--method wanda --pattern 2:4"
  [wanda-4of8]="--method wanda --pattern 4:8"
  [sparsegpt-50]="--method sparsegpt --sparsity 0.5"
  [sparsegpt-60]="--method sparsegpt --sparsity 0.6"
  [sparsegpt-2of4]="--method sparsegpt --pattern 2:4"
  [sparsegpt-4of8]="--method sparsegpt --pattern 4:8"
  [sparsegpt-50-w4g64]="--method sparsegpt --sparsity 0.5 --bits 4 --group-size 64 --act-order none"
  [sparsegpt-2of4-w4g64]="--method sparsegpt --pattern 2:4 --bits 4 --group-size 64"
  [wanda-50-gptq-w4g64]="--method wanda --sparsity 0.5 --bits 4 --group-size 64"
  [wanda-2of4-gptq-w4g64]="--method wanda --pattern 2:4 --bits 4 --group-size 64"
  [magnitude-50-row]="--method magnitude --sparsity 0.5 --scope row"
  [sparsegpt-50-w4g64-static]="--method sparsegpt --sparsity 0.5 --bits 4 --group-size 64 --act-order static"
  # llm-compressor's pipeline (every group of a layer calibrated on the uncompressed layer)
  [sparsegpt-50-layerseq]="--method sparsegpt --sparsity 0.5 --sequential layer"
  [sparsegpt-2of4-layerseq]="--method sparsegpt --pattern 2:4 --sequential layer"
  [wanda-60-layerseq]="--method wanda --sparsity 0.6 --sequential layer"
  [wanda-2of4-layerseq]="--method wanda --pattern 2:4 --sequential layer"
  # sensitivity of SparseGPT 2:4 to small changes that leave the method the same: dampening 0.01
  # -> 0.009 / 0.011, and other calibration windows (64 x 512 drawn from data/calib.txt by seed)
  [sparsegpt-2of4-layerseq-damp0.009]="--method sparsegpt --pattern 2:4 --sequential layer --damp 0.009"
  [sparsegpt-2of4-layerseq-damp0.011]="--method sparsegpt --pattern 2:4 --sequential layer --damp 0.011"
  [sparsegpt-2of4-layerseq-seed1]="--method sparsegpt --pattern 2:4 --sequential layer --calib data/calib.txt --nsamples 64 --seqlen 512 --seed 1"
  [sparsegpt-2of4-layerseq-seed2]="--method sparsegpt --pattern 2:4 --sequential layer --calib data/calib.txt --nsamples 64 --seqlen 512 --seed 2"
)
ORDER=(wanda-50 sparsegpt-50 magnitude-50 wanda-2of4 sparsegpt-2of4 magnitude-2of4
       sparsegpt-50-w4g64 sparsegpt-2of4-w4g64 wanda-50-gptq-w4g64 wanda-2of4-gptq-w4g64
       wanda-60 sparsegpt-60 magnitude-60 wanda-4of8 sparsegpt-4of8 magnitude-4of8
       magnitude-50-row sparsegpt-50-w4g64-static)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  [ -f "$RES/$name.eval.json" ] && { echo "skip $name (done)"; continue; }
  echo "== $name: ${CFG[$name]}"
  calib="--calib-ids $IDS"
  case " ${CFG[$name]} " in *" --calib "*) calib="" ;; esac
  if [ ! -f "$RES/$name.report.json" ]; then
    /usr/bin/time -f '%e s wall, %U s user, %S s sys, %M KB peak' -o "$RES/$name.time.txt" \
      $BIN compress -q --model "$MODEL" ${CFG[$name]} $calib --out "$OUT/$name" --force
    cp "$OUT/$name/report.json" "$RES/$name.report.json"
  fi
  $BIN eval -q --model "$OUT/$name" --text data/eval.txt --json > "$RES/$name.eval.json.tmp"
  mv "$RES/$name.eval.json.tmp" "$RES/$name.eval.json"
  python3 - "$RES/$name" <<'PY'
import json, sys
b = sys.argv[1]
r = json.load(open(b + ".report.json")); e = json.load(open(b + ".eval.json"))
print(f"{r['method']}: ppl {e['perplexity']:.4f}, sparsity {r['totals']['sparsity']}, "
      f"pipeline {r['totals']['pipeline_seconds']:.1f} s, " + open(b + ".time.txt").read().strip())
PY
done
