#!/usr/bin/env bash
# shrink's GGUF quantizers against llama-quantize, byte for byte, for every type shrink writes,
# without and with an importance matrix (the same one, written by `shrink export --imatrix-out`).
#   tools/reference/compare_llama_quantize.sh [IMATRIX.gguf]
# Needs tools/reference/build_llamacpp.sh to have run, and target/release/shrink.
set -euo pipefail
S=${SHRINK:-target/release/shrink}
B=${LLAMACPP_BIN:-out/export/llamacpp/build/bin}
M=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
IM=${1:-}
D=out/export/lq
mkdir -p "$D" results/export
[ -f $D/orig-f32.gguf ] || $S export --model "$M" --format gguf --type F32 --out $D/orig-f32.gguf -q
res=results/export/llama_quantize_bytes.jsonl
: > $res
for T in Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS MXFP4; do
  for mode in plain imatrix; do
    if [ $mode = imatrix ]; then
      [ -n "$IM" ] || continue
      lqa=(--imatrix "$IM"); sha=(--imatrix "$IM")
    else
      lqa=(); sha=()
    fi
    # llama-quantize names MXFP4's file type MXFP4_MOE (with --pure: MXFP4 everywhere)
    nice "$B/llama-quantize" --pure --token-embedding-type q8_0 "${lqa[@]}" $D/orig-f32.gguf $D/lq-$T-$mode.gguf ${T/MXFP4/MXFP4_MOE} 2 > $D/lq-$T-$mode.log 2>&1
    nice "$S" export --model "$M" --format gguf --type $T --token-embedding-type Q8_0 "${sha[@]}" --out $D/sh-$T-$mode.gguf --force -q
    .venv-ref/bin/python tools/reference/compare_gguf_bytes.py $D/sh-$T-$mode.gguf $D/lq-$T-$mode.gguf --label "$T $mode" \
      | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >> $res
    tail -1 $res | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["label"], "all_byte_identical =", r["all_byte_identical"], {k:(v["byte_identical"],v["tensors"],v["blocks_differing"]) for k,v in r["per_type"].items()})'
  done
done
