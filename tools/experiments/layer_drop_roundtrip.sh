#!/usr/bin/env bash
# Round trip of a pruned model (issue 13): compress --method rtn --bits 8 --drop-layers 4, export to
# compressed-tensors, gptq and gguf, read each back with shrink, check compressed-tensors and GPTQ
# with the reference scripts (transformers), run llama.cpp's llama-perplexity on the GGUF and
# shrink eval --protocol llama.cpp on the same file; and an independent check of the drop itself:
# transformers running the dense model with layers 27 and 28 deleted against shrink's
# --drop-layers 2 --layer-score last. Writes results/layer-drop/roundtrip/.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA=${LLAMA:-/work/llamacpp/build/bin}
PY=${PY:-.venv-llmc/bin/python}
R=${OUT:-out/layer-drop-rt}
RES=results/layer-drop/roundtrip
mkdir -p "$R" "$RES"
rm -rf "$R"/rtn8-drop4*
"$BIN" compress -q --model "$MODEL" --calib data/calib.txt --nsamples 16 --seqlen 512 --seed 0 \
  --method rtn --bits 8 --drop-layers 4 --layer-score angular --out "$R/rtn8-drop4"
cp "$R/rtn8-drop4/report.json" "$RES/rtn8-drop4.report.json"
for f in compressed-tensors gptq; do
  "$BIN" export -q --model "$R/rtn8-drop4" --format $f --out "$R/rtn8-drop4-$f"
done
"$BIN" export -q --model "$R/rtn8-drop4" --format gguf --out "$R/rtn8-drop4.gguf"
: > "$RES/readback.txt"
for m in "$R/rtn8-drop4" "$R/rtn8-drop4-compressed-tensors" "$R/rtn8-drop4-gptq" "$R/rtn8-drop4.gguf"; do
  echo "$m $("$BIN" eval -q --model "$m" --text data/eval.txt --max-tokens 1024 --json)" >> "$RES/readback.txt"
done
"$PY" tools/reference/check_export_ct.py "$R/rtn8-drop4-compressed-tensors" --ref "$R/rtn8-drop4" --load --out "$RES/check_ct.json"
"$PY" tools/reference/check_export_gptq.py "$R/rtn8-drop4-gptq" --ref "$R/rtn8-drop4" --load --out "$RES/check_gptq.json"
"$LLAMA/llama-perplexity" -m "$R/rtn8-drop4.gguf" -f data/eval.txt -c 512 --chunks 20 -t 2 2>&1 \
  | grep -E "Final estimate|^\[1\]" > "$RES/llama-perplexity.txt"
"$BIN" eval -q --model "$R/rtn8-drop4.gguf" --text data/eval.txt --protocol llama.cpp --max-tokens 10240 --json \
  > "$RES/shrink-llamacpp-protocol.json"
[ -d "$R/dense-hf" ] || "$BIN" convert -q "$MODEL" --out "$R/dense-hf"
rm -rf "$R/drop2-last"
"$BIN" compress -q --model "$MODEL" --drop-layers 2 --layer-score last --out "$R/drop2-last"
"$PY" tools/reference/layer_drop_ref.py "$R/dense-hf" --drop 27,28 --max-tokens 2048 --out "$RES/ref-drop2-last.json"
"$BIN" eval -q --model "$R/drop2-last" --text data/eval.txt --max-tokens 2048 --json > "$RES/shrink-drop2-last-2048.json"
