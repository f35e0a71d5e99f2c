#!/usr/bin/env bash
# W8A8 / FP8 / FP4 with activation fake-quantization on the default model (SmolLM2-135M-Instruct;
# the reference is its Q4_1 GGUF dequantized to f32), first 8192 tokens of data/eval.txt:
# the original with and without quantized activations, INT8 W8A8 with and without SmoothQuant,
# FP8 dynamic, and NVFP4 / MXFP4 weight-only and W4A4 against RTN W4 g16 / g32.
#   BIN=target/release/shrink bash results/smoothquant/run.sh > results/smoothquant/results.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
O=${OUT:-out/smoothquant}
mkdir -p "$O"
C=(--calib data/calib.txt --nsamples 64 --seqlen 512)
ev() { # name model [act]
  local act=()
  [ -n "${3:-}" ] && act=(--act-quant "$3")
  $BIN eval -q --model "$2" --text data/eval.txt --max-tokens 8192 --json "${act[@]}" \
    | tail -1 | python3 -c "import json,sys; v=json.load(sys.stdin); print(json.dumps({'name': '$1', 'act_quant': v.get('act_quant'), 'perplexity': v['perplexity']}))"
}
mk() { # dir args...
  local d=$1; shift
  [ -f "$O/$d/report.json" ] || $BIN compress -q --model $M --out "$O/$d" --force "$@" >&2
}
mk w8a8 --method rtn --scheme W8A8 "${C[@]}"
mk w8a8-sq05 --method rtn --scheme W8A8 --smooth 0.5 "${C[@]}"
mk w8a8-sq08 --method rtn --scheme W8A8 --smooth 0.8 "${C[@]}"
mk fp8 --method rtn --scheme FP8_DYNAMIC
mk nvfp4 --method rtn --scheme NVFP4
mk mxfp4 --method rtn --scheme MXFP4
mk rtn-w4g16 --method rtn --bits 4 --group-size 16
mk rtn-w4g32 --method rtn --bits 4 --group-size 32
ev original $M
for a in int8 fp8 nvfp4 mxfp4; do ev original $M $a; done
ev w8a8 $O/w8a8; ev w8a8 $O/w8a8 int8
ev w8a8-sq0.5 $O/w8a8-sq05 int8
ev w8a8-sq0.8 $O/w8a8-sq08 int8
ev fp8-dynamic $O/fp8 fp8
ev nvfp4a16 $O/nvfp4; ev nvfp4 $O/nvfp4 nvfp4
ev mxfp4a16 $O/mxfp4; ev mxfp4 $O/mxfp4 mxfp4
ev rtn-w4g16 $O/rtn-w4g16; ev rtn-w4g32 $O/rtn-w4g32
