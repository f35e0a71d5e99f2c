#!/usr/bin/env bash
# Gemma-3-270m (scripts/fetch --all) against llama.cpp, the reference for GGUF files:
# shrink eval --protocol llama.cpp on the Q4_K_M file vs llama-perplexity on an F32 copy of it
# (llama-quantize --allow-requantize ... F32, so that llama.cpp computes in f32, f32 KV cache),
# on the same CHUNKS chunks of 512 tokens of data/eval.txt.
# Usage: LLAMACPP_BIN=DIR/build/bin tools/reference/gemma3_llamacpp_ppl.sh
set -euo pipefail
S=${SHRINK:-target/release/shrink}
B=${LLAMACPP_BIN:-out/export/llamacpp/build/bin}
M=${MODEL:-models/gemma-3-270m-q4_k_m.gguf}
CHUNKS=${CHUNKS:-16}
R=results/families
mkdir -p $R out/families
F=out/families/gemma-3-270m-f32.gguf
[ -s $F ] || nice $B/llama-quantize --allow-requantize $M $F F32 > out/families/quantize-f32.log 2>&1
nice $S eval -q --model $M --text data/eval.txt --protocol llama.cpp --max-tokens $((CHUNKS*512)) --json > $R/gemma3-270m.shrink-llamacpp-protocol.json
nice $B/llama-perplexity -m $F -f data/eval.txt -c 512 --chunks $CHUNKS -t 2 -ctk f32 -ctv f32 > $R/gemma3-270m-f32.llama-perplexity.log 2>&1
grep -o "Final estimate: PPL = [0-9.]* +/- [0-9.]*" $R/gemma3-270m-f32.llama-perplexity.log
python3 -c "import json;print('shrink', json.load(open('$R/gemma3-270m.shrink-llamacpp-protocol.json'))['perplexity'])"
