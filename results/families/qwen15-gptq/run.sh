#!/usr/bin/env bash
# Qwen2.5-Coder-1.5B GPTQ W4 g128: shrink against llm-compressor 0.14 on CPU, one after the other on
# the same f32 convert directory and the same calibration ids, then the perplexity and KL divergence
# of both outputs against the f32 original (the dequantized Q4_K_M GGUF) on the first 8192 eval tokens.
#   N=64 BIN=target/release/shrink bash results/families/qwen15-gptq/run.sh
# Needs .venv-llmc (tools/peer/setup.sh) and models/ from scripts/fetch --all. Logs go to $LOGS.
set -euxo pipefail
cd "$(dirname "$0")/../../.."
N=${N:-64}
BIN=${BIN:-target/release/shrink}
LOGS=${LOGS:-/tmp/q15}
mkdir -p "$LOGS" out/peer
[ -f out/qwen15-hf/model.safetensors ] || $BIN convert models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --out out/qwen15-hf
IDS=out/calib_qwen15_${N}x512.safetensors
.venv-llmc/bin/python tools/peer/make_calib_ids.py --tokenizer out/qwen15-hf --text data/calib.txt --nsamples $N --seqlen 512 --seed 0 --out $IDS
rm -rf out/q15-gptq-w4g128 out/.q15-gptq-w4g128.partial out/peer/llmc-q15-gptq-w4g128
/usr/bin/time -v $BIN compress -q --model out/qwen15-hf --method gptq --bits 4 --group-size 128 --calib-ids $IDS --out out/q15-gptq-w4g128 > $LOGS/shrink_gptq.log 2>&1
/usr/bin/time -v .venv-llmc/bin/python tools/peer/llmcompressor_gptq.py --model out/qwen15-hf --group-size 128 --calib-ids $IDS --out out/peer/llmc-q15-gptq-w4g128 --omp-wait-policy passive > $LOGS/llmc_gptq.log 2>&1
for m in out/q15-gptq-w4g128 out/peer/llmc-q15-gptq-w4g128/dense; do
  /usr/bin/time -v $BIN eval -q --model $m --reference out/qwen15-hf --text data/eval.txt --max-tokens 8192 > $LOGS/eval_$(basename $(dirname $m))_$(basename $m).log 2>&1
done
