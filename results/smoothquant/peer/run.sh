#!/usr/bin/env bash
# W8A8 (with and without SmoothQuant 0.8) and FP8_DYNAMIC on SmolLM2-135M: shrink against
# llm-compressor 0.14 on the same f32 convert directory and the same 64 x 512 calibration ids;
# then perplexity and KL divergence of each output, its activations fake-quantized as the scheme
# deploys them (int8 / fp8 per token, dynamic), against the f32 original (the dequantized Q4_1
# GGUF) on the first 8192 eval tokens. Quality only: timings here are not quiet.
#   BIN=target/release/shrink bash results/smoothquant/peer/run.sh
set -euxo pipefail
cd "$(dirname "$0")/../../.."
BIN=${BIN:-target/release/shrink}
R=results/smoothquant/peer
IDS=out/calib_smollm2_64x512.safetensors
[ -f out/smollm2-hf/model.safetensors ] || $BIN convert models/SmolLM2-135M-Instruct.Q4_1.gguf --out out/smollm2-hf
[ -f $IDS ] || .venv-llmc/bin/python tools/peer/make_calib_ids.py --tokenizer out/smollm2-hf --text data/calib.txt --nsamples 64 --seqlen 512 --seed 0 --out $IDS
ev() { # name model act
  $BIN eval -q --json --model "$2" --act-quant "$3" --reference out/smollm2-hf --text data/eval.txt --max-tokens 8192 > $R/$1.eval.json
}
for cell in "w8a8 W8A8 int8" "w8a8-sq08 W8A8 int8 0.8" "fp8-dynamic FP8_DYNAMIC fp8"; do
  set -- $cell
  name=$1 scheme=$2 act=$3 smooth=${4:-}
  sm=(); [ -n "$smooth" ] && sm=(--smooth "$smooth")
  calib=(--calib-ids $IDS); [ "$scheme" = FP8_DYNAMIC ] && calib=()
  $BIN compress -q --model out/smollm2-hf --method rtn --scheme $scheme "${sm[@]}" "${calib[@]}" --out out/sqpeer/shrink-$name --force
  ev shrink-$name out/sqpeer/shrink-$name $act
  psm=(); [ -n "$smooth" ] && psm=(--smooth "$smooth")
  .venv-llmc/bin/python tools/peer/llmcompressor_scheme.py --scheme $scheme "${psm[@]}" --model out/smollm2-hf --calib-ids $IDS --out out/sqpeer/llmc-$name --omp-wait-policy passive --no-compressed > $R/llmc-$name.log 2>&1
  cp out/sqpeer/llmc-$name/peer_report.json $R/llmc-$name.report.json
  ev llmc-$name out/sqpeer/llmc-$name/dense $act
done
