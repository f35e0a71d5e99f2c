#!/usr/bin/env bash
# Round trip of a merged model (issue 13, LaCo): compress --method rtn --bits 8 --merge-layers 4,
# export to compressed-tensors, gptq and gguf, read each back with shrink, check compressed-tensors
# and GPTQ with the reference scripts (transformers), run llama.cpp's llama-perplexity on the GGUF
# and shrink eval --protocol llama.cpp on the same file; and an independent check of the merge
# itself: transformers running the dense model with the same RDSC merges done in torch
# (tools/reference/layer_merge_ref.py) against shrink's --merge-layers 2. Writes
# results/layer-merge/roundtrip/.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA=${LLAMA:-/work/llamacpp/build/bin}
PY=${PY:-.venv-ref/bin/python}
SEQLEN=${SEQLEN:-128}
R=${OUT:-out/layer-merge-rt}
RES=results/layer-merge/roundtrip
mkdir -p "$R" "$RES"
CAL=(--calib data/calib.txt --nsamples 5 --seqlen "$SEQLEN" --seed 0)
rm -rf "$R"/rtn8-merge4*
"$BIN" compress -q --model "$MODEL" "${CAL[@]}" --method rtn --bits 8 --merge-layers 4 --out "$R/rtn8-merge4"
cp "$R/rtn8-merge4/report.json" "$RES/rtn8-merge4.report.json"
for f in compressed-tensors gptq; do
  "$BIN" export -q --model "$R/rtn8-merge4" --format $f --out "$R/rtn8-merge4-$f"
done
"$BIN" export -q --model "$R/rtn8-merge4" --format gguf --out "$R/rtn8-merge4.gguf"
: > "$RES/readback.txt"
for m in "$R/rtn8-merge4" "$R/rtn8-merge4-compressed-tensors" "$R/rtn8-merge4-gptq" "$R/rtn8-merge4.gguf"; do
  echo "$m $("$BIN" eval -q --model "$m" --text data/eval.txt --max-tokens 1024 --json)" >> "$RES/readback.txt"
done
"$PY" tools/reference/check_export_ct.py "$R/rtn8-merge4-compressed-tensors" --ref "$R/rtn8-merge4" --load --out "$RES/check_ct.json" || echo "check_export_ct failed" >&2
"$PY" tools/reference/check_export_gptq.py "$R/rtn8-merge4-gptq" --ref "$R/rtn8-merge4" --out "$RES/check_gptq.json" || echo "check_export_gptq failed" >&2
"$LLAMA/llama-perplexity" -m "$R/rtn8-merge4.gguf" -f data/eval.txt -c 512 --chunks 20 -t 2 2>&1 \
  | grep -E "Final estimate|^\[1\]|llama_model_loader: - kv.*block_count|n_layer" > "$RES/llama-perplexity.txt"
"$BIN" eval -q --model "$R/rtn8-merge4.gguf" --text data/eval.txt --protocol llama.cpp --max-tokens 10240 --json \
  > "$RES/shrink-llamacpp-protocol.json"
[ -d "$R/dense-hf" ] || "$BIN" convert -q "$MODEL" --out "$R/dense-hf"
rm -rf "$R/merge2"
"$BIN" compress -q --model "$MODEL" "${CAL[@]}" --merge-layers 2 --out "$R/merge2"
MERGES=$(python3 -c "import json,sys; print(';'.join(','.join(map(str,m)) for m in json.load(open(sys.argv[1]))['layer_merge']['merges']))" "$R/merge2/report.json")
"$PY" tools/reference/layer_merge_ref.py "$R/dense-hf" --merges "$MERGES" --max-tokens 2048 --out "$RES/ref-merge2.json"
"$BIN" eval -q --model "$R/merge2" --text data/eval.txt --max-tokens 2048 --json > "$RES/shrink-merge2-2048.json"
# llama.cpp on a merged model that still works: --merge-layers 2 --merge-size 2 (RDSC of pairs),
# exported to GGUF Q8_0
rm -rf "$R/merge2-c2" "$R/merge2-c2.gguf"
"$BIN" compress -q --model "$MODEL" "${CAL[@]}" --merge-layers 2 --merge-size 2 --out "$R/merge2-c2"
"$BIN" export -q --model "$R/merge2-c2" --format gguf --type Q8_0 --out "$R/merge2-c2.gguf"
"$LLAMA/llama-perplexity" -m "$R/merge2-c2.gguf" -f data/eval.txt -c 512 --chunks 20 -t 2 2>&1 \
  | grep -E "Final estimate|^\[1\]" > "$RES/llama-perplexity-merge2-c2.txt"
"$BIN" eval -q --model "$R/merge2-c2.gguf" --text data/eval.txt --protocol llama.cpp --max-tokens 10240 --json \
  > "$RES/shrink-llamacpp-protocol-merge2-c2.json"
