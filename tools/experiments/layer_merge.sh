#!/usr/bin/env bash
# Layer merging (LaCo, Yang et al. 2024) on the default model (SmolLM2-135M, 30 layers): remove
# N = 2, 4, 6 layers with shrink compress --merge-layers N (RDSC merges chosen by the paper's
# similarity loop, default knobs C = 7, I = 1, T = 0.45, [L, H] = [0, 29], the similarity on the
# first 5 calibration windows of SEQLEN tokens of data/calib.txt, seed 0), and with C = 2, no
# healing; then the combined run --method rtn --bits 8 --merge-layers 4. Each run: shrink compress (report.json
# lists every candidate measured and what each merged layer is made of), then shrink eval --json
# (GPTQ protocol, seqlen 512) on the first MAX_TOKENS tokens of data/eval.txt, the protocol of
# results/layer-drop (whose angular and last runs, from tools/experiments/layer_drop.sh, are the
# comparison: made here too if missing). Writes results/layer-merge/*.json and prints the table
# (tools/experiments/layer_merge_table.py).
# Usage: MAX_TOKENS=8192 SEQLEN=128 tools/experiments/layer_merge.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT:-out/layer-merge}
RES=${RES:-results/layer-merge}
DROP=${DROP:-results/layer-drop}
MAX_TOKENS=${MAX_TOKENS:-8192}
SEQLEN=${SEQLEN:-128}
KEEP=${KEEP:-merge4 rtn8-merge4}   # output dirs kept (the rest removed after eval)
mkdir -p "$OUT" "$RES" "$DROP"
EV=(--text data/eval.txt --json)
[ "$MAX_TOKENS" = 0 ] || EV+=(--max-tokens "$MAX_TOKENS")

ev() { # MODEL RESDIR NAME
  if [ ! -f "$2/$3.eval.json" ]; then
    "$BIN" eval -q --model "$1" "${EV[@]}" > "$2/$3.eval.json.part"
    mv "$2/$3.eval.json.part" "$2/$3.eval.json"
  fi
}
run() { # RESDIR NAME compress-flags...
  local res=$1 name=$2; shift 2
  if [ ! -f "$res/$name.eval.json" ]; then
    rm -rf "${OUT:?}/$name"
    "$BIN" compress -q --model "$MODEL" "$@" --out "$OUT/$name"
    cp "$OUT/$name/report.json" "$res/$name.report.json"
    cp "$OUT/$name/recipe.toml" "$res/$name.recipe.toml"
    ev "$OUT/$name" "$res" "$name"
    case " $KEEP " in *" $name "*) ;; *) rm -rf "${OUT:?}/$name" ;; esac
  fi
  echo "$name: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['perplexity'])" "$res/$name.eval.json")" >&2
}

ev "$MODEL" "$DROP" dense
for n in 2 4 6; do
  run "$RES" "merge$n" --calib data/calib.txt --nsamples 5 --seqlen "$SEQLEN" --seed 0 --merge-layers "$n"
  for score in angular last; do
    run "$DROP" "drop$n-$score" --calib data/calib.txt --nsamples 16 --seqlen 512 --seed 0 \
      --drop-layers "$n" --layer-score "$score"
  done
done
# C = 2: RDSC of two layers is θ*_l = θ_{l+1}, i.e. layer l dropped: LaCo's loop choosing single
# layers to drop by the similarity of the last hidden states
for n in 2 4 6; do
  run "$RES" "merge$n-c2" --calib data/calib.txt --nsamples 5 --seqlen "$SEQLEN" --seed 0 \
    --merge-layers "$n" --merge-size 2
done
# combined: the remaining layers quantized (RTN, data-free) on the merged model, the same
# calibration windows as merge4 (so the same merges)
run "$RES" rtn8-merge4 --calib data/calib.txt --nsamples 5 --seqlen "$SEQLEN" --seed 0 \
  --method rtn --bits 8 --merge-layers 4
python3 tools/experiments/layer_merge_table.py "$RES" "$DROP" > "$RES/README.md"
cat "$RES/README.md"
