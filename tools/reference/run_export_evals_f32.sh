#!/usr/bin/env bash
# Where do shrink's and llama.cpp's perplexities of the same GGUF differ? The same model stored as
# F32 (no activation quantization in ggml's dot products), with an f32 KV cache, on the same chunks.
set -uo pipefail
S=${SHRINK:-target/release/shrink}
B=${LLAMACPP_BIN:-out/export/llamacpp/build/bin}
R=results/export
CHUNKS=${CHUNKS:-32}
F=out/export/lq/orig-f32.gguf
nice $S eval --model $F --text data/eval.txt --protocol llama.cpp --max-tokens $((CHUNKS*512)) --json > $R/orig-f32.shrink-llamacpp-protocol.json 2>&1
nice $B/llama-perplexity -m $F -f data/eval.txt -c 512 --chunks $CHUNKS -t 2 -ctk f32 -ctv f32 > $R/orig-f32.llama-perplexity.log 2>&1
grep -o "Final estimate: PPL = [0-9.]* +/- [0-9.]*" $R/orig-f32.llama-perplexity.log
