#!/usr/bin/env bash
# Mixed precision and sparsity under a global budget (--allocate search) against uniform, on the
# default model, same calibration windows (shrink's sampler: 64 x 512 tokens of data/calib.txt,
# seed 0), same evaluator (the whole eval split, seqlen 512). Each run: shrink compress
# (report.json: allocation, budget reached, timings) then shrink eval --json. A run whose
# eval.json exists is skipped. Prints the tables at the end (tools/experiments/mixed_bpw_table.py).
# Usage: tools/experiments/mixed_bpw.sh [CASE ...]
#   CASE: uniform:BITS:GROUP | bpw:TARGET:GROUP | bpwg:TARGET:GROUPS (bits and group sizes
#   searched together, GROUPS like 32,64,128) | sparse:METHOD:SPARSITY
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-out/mixed}
RES=${RES:-results/allocation/mixed_bpw}
mkdir -p "$OUT" "$RES"
CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(uniform:3:32 uniform:4:64 bpw:3.5:128 bpw:4.25:128
  bpwg:3.5:32,64 sparse:sparsegpt:0.5 sparse:wanda:0.5 sparse:sparsegpt:0.6 sparse:wanda:0.6)
CAL=(--calib data/calib.txt --nsamples 64 --seqlen 512 --seed 0)
for c in "${CASES[@]}"; do
  IFS=: read -r kind a b <<< "$c"
  case $kind in
    uniform) name=gptq-w$a-g$b-uniform; args=(--method gptq --bits "$a" --group-size "$b") ;;
    bpw) name=gptq-bpw$a-g$b-search; args=(--method gptq --target-bpw "$a" --group-size "$b" --allocate search) ;;
    bpwg) name=gptq-bpw$a-g${b//,/+}-search; args=(--method gptq --target-bpw "$a" --search-group-sizes "$b" --allocate search) ;;
    sparse) name=$a-$b-search; args=(--method "$a" --sparsity "$b" --allocate search) ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
  if [ ! -f "$RES/$name.eval.json" ]; then
    rm -rf "${OUT:?}/$name"
    /usr/bin/time -v "$BIN" compress -q --model "$MODEL" "${args[@]}" "${CAL[@]}" \
      --out "$OUT/$name" 2> "$RES/$name.time.txt"
    cp "$OUT/$name/report.json" "$RES/$name.report.json"
    cp "$OUT/$name/recipe.toml" "$RES/$name.recipe.toml"
    "$BIN" eval -q --model "$OUT/$name" --text data/eval.txt --json > "$RES/$name.eval.json"
  fi
done
python3 tools/experiments/mixed_bpw_table.py "$RES"
