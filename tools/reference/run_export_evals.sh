#!/usr/bin/env bash
# The perplexity measurements of the export issue, one after another (2 cores: nothing in parallel).
# Writes results/export/*.json. Needs the outputs named below (see results/export/README.md for
# the export commands) and tools/reference/build_llamacpp.sh.
set -uo pipefail
S=${SHRINK:-target/release/shrink}
B=${LLAMACPP_BIN:-out/export/llamacpp/build/bin}
R=results/export
E=out/export
mkdir -p $R
CHUNKS=${CHUNKS:-32}
# GPTQ-protocol evals on the first MAXTOK tokens (the machine is shared; the full 54,886-token
# eval takes ~4x longer). MAXTOK= (empty) for the whole text.
MAXTOK=${MAXTOK-16384}
MT=(); [ -n "$MAXTOK" ] && MT=(--max-tokens $MAXTOK)
lcpp() {  # name file
  nice $S eval --model $2 --text data/eval.txt --protocol llama.cpp --max-tokens $((CHUNKS*512)) --json > $R/$1.shrink-llamacpp-protocol.json 2> $R/$1.shrink-llamacpp-protocol.err
  nice $B/llama-perplexity -m $2 -f data/eval.txt -c 512 --chunks $CHUNKS -t 2 > $R/$1.llama-perplexity.log 2>&1
  grep -o "Final estimate: PPL = [0-9.]* +/- [0-9.]*" $R/$1.llama-perplexity.log
}
full() {  # name model
  nice $S eval --model $2 --text data/eval.txt "${MT[@]}" --json > $R/$1.shrink-eval.json 2> $R/$1.shrink-eval.err
  cat $R/$1.shrink-eval.json
}
case "${1:-all}" in
  imatrix|all)
    [ -s $R/orig-q4k-imat.llama-perplexity.log ] && grep -q "Final estimate" $R/orig-q4k-imat.llama-perplexity.log || lcpp orig-q4k-imat $E/orig-q4k-imat.gguf
    lcpp orig-q4k $E/orig-q4k.gguf ;;&
  ct|all)
    nice .venv-llmc/bin/python tools/reference/check_export_ct.py $E/ct-w4g64 --ref out/gptq-w4g64-static-llmcids \
      --load --ppl "${MT[@]}" --out $R/ct-w4g64.check.json > /dev/null 2> $R/ct-w4g64.check.err
    full ct-w4g64 $E/ct-w4g64
    full gptq-w4g64-static-src out/gptq-w4g64-static-llmcids ;;&
  carry|carrylcpp|all)
    lcpp gptq-w4g32-q41 $E/gptq-w4g32-q41.gguf ;;&
  carry|carryfull|all)
    full gptq-w4g32-q41 $E/gptq-w4g32-q41.gguf
    full gptq-w4g32-src $E/gptq-w4g32 ;;&
  gptq|all)
    full gptq-w4g64 $E/gptq-w4g64
    ${GPTQ_PY:-out/export/venv-gptq/bin/python} tools/reference/check_export_gptq.py $E/gptq-w4g64 --ref out/gptq-w4g64-static-llmcids \
      --load --ppl "${MT[@]}" --out $R/gptq-w4g64.check.json > /dev/null 2> $R/gptq-w4g64.check.err ;;&
  origlcpp)
    lcpp orig-q4_1 models/SmolLM2-135M-Instruct.Q4_1.gguf ;;
  fullq4k)
    full orig-q4k-imat $E/orig-q4k-imat.gguf
    full orig-q4k $E/orig-q4k.gguf ;;
esac
