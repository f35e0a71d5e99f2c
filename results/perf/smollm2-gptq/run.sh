#!/usr/bin/env bash
# Issue 18's default-model figure: GPTQ W4 g64 (asymmetric, static act-order, damp 0.01) on
# SmolLM2-135M-Instruct with 64 x 512 calibration tokens, shrink then llm-compressor 0.14 on CPU, one
# after the other on the same f32 convert directory and the same calibration ids; then the
# perplexity and KL divergence of both outputs against the f32 original (the dequantized Q4_1 GGUF:
# no package ships an unquantized SmolLM2) on the first 8192 eval tokens.
#   BIN=target/release/shrink bash results/perf/smollm2-gptq/run.sh
# Needs .venv-llmc (tools/peer/setup.sh). Logs and /usr/bin/time files go to $LOGS.
set -euxo pipefail
cd "$(dirname "$0")/../../.."
N=${N:-64}
BIN=${BIN:-target/release/shrink}
LOGS=${LOGS:-results/perf/smollm2-gptq}
mkdir -p "$LOGS" out/peer
[ -f out/smollm2-hf/model.safetensors ] || $BIN convert models/SmolLM2-135M-Instruct.Q4_1.gguf --out out/smollm2-hf
IDS=out/calib_smollm2_${N}x512.safetensors
.venv-llmc/bin/python tools/peer/make_calib_ids.py --tokenizer out/smollm2-hf --text data/calib.txt --nsamples $N --seqlen 512 --seed 0 --out $IDS
rm -rf out/perf-gptq-w4g64 out/.perf-gptq-w4g64.partial out/peer/llmc-perf-gptq-w4g64
/usr/bin/time -v $BIN compress -q --model out/smollm2-hf --method gptq --bits 4 --group-size 64 --calib-ids $IDS --out out/perf-gptq-w4g64 > $LOGS/shrink.time.txt 2>&1
cp out/perf-gptq-w4g64/report.json $LOGS/shrink.report.json
/usr/bin/time -v .venv-llmc/bin/python tools/peer/llmcompressor_gptq.py --model out/smollm2-hf --group-size 64 --calib-ids $IDS --out out/peer/llmc-perf-gptq-w4g64 --omp-wait-policy passive > $LOGS/llmc.time.txt 2>&1
cp out/peer/llmc-perf-gptq-w4g64/peer_report.json $LOGS/llmc.report.json
$BIN eval -q --json --model out/perf-gptq-w4g64 --reference out/smollm2-hf --text data/eval.txt --max-tokens 8192 > $LOGS/shrink.eval.json
$BIN eval -q --json --model out/peer/llmc-perf-gptq-w4g64/dense --reference out/smollm2-hf --text data/eval.txt --max-tokens 8192 > $LOGS/llmc.eval.json
