#!/usr/bin/env bash
# Layer pruning on the default model (SmolLM2-135M, 30 layers): drop N = 2, 4, 6 layers chosen by
# angular distance (Gromov et al.), block influence (ShortGPT), the N before the final layer
# ("last") and uniformly at random (seeds 0, 1, 2), no healing; then the combined run
# --method rtn --bits 8 --drop-layers 4. Scores from one dense pass over shrink's calibration
# windows (NSAMPLES x 512 tokens of data/calib.txt, seed 0). Each run: shrink compress (report.json
# lists the dropped layers and every layer's scores), then shrink eval --json (GPTQ protocol,
# seqlen 512) on data/eval.txt: its first MAX_TOKENS tokens (0 = the whole file). The dense
# reference is the GGUF itself (dequantized by shrink). Writes results/layer-drop/*.json and
# prints the markdown table (tools/experiments/layer_drop_table.py).
# Usage: MAX_TOKENS=8192 NSAMPLES=16 tools/experiments/layer_drop.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT:-out/layer-drop}
RES=${RES:-results/layer-drop}
MAX_TOKENS=${MAX_TOKENS:-8192}
NSAMPLES=${NSAMPLES:-16}
KEEP=${KEEP:-drop4-angular rtn8-drop4-angular}   # output dirs kept (the rest removed after eval)
mkdir -p "$OUT" "$RES"
EV=(--text data/eval.txt --json)
[ "$MAX_TOKENS" = 0 ] || EV+=(--max-tokens "$MAX_TOKENS")
CAL=(--calib data/calib.txt --nsamples "$NSAMPLES" --seqlen 512 --seed 0)

ev() { # MODEL NAME
  if [ ! -f "$RES/$2.eval.json" ]; then
    "$BIN" eval -q --model "$1" "${EV[@]}" > "$RES/$2.eval.json.part"
    mv "$RES/$2.eval.json.part" "$RES/$2.eval.json"
  fi
}
run() { # NAME compress-flags...
  local name=$1; shift
  if [ ! -f "$RES/$name.eval.json" ]; then
    rm -rf "${OUT:?}/$name"
    "$BIN" compress -q --model "$MODEL" "${CAL[@]}" "$@" --out "$OUT/$name"
    cp "$OUT/$name/report.json" "$RES/$name.report.json"
    cp "$OUT/$name/recipe.toml" "$RES/$name.recipe.toml"
    ev "$OUT/$name" "$name"
    case " $KEEP " in *" $name "*) ;; *) rm -rf "${OUT:?}/$name" ;; esac
  fi
  echo "$name: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['perplexity'])" "$RES/$name.eval.json")" >&2
}

ev "$MODEL" dense
for n in 2 4 6; do
  for score in angular last bi; do
    run "drop$n-$score" --drop-layers "$n" --layer-score "$score"
  done
  for seed in 0 1 2; do
    run "drop$n-random$seed" --drop-layers "$n" --layer-score random --layer-seed "$seed"
  done
done
# combined: the remaining layers quantized on the pruned model, and the same without the drop
run rtn8-drop4-angular --method rtn --bits 8 --drop-layers 4 --layer-score angular
run rtn8 --method rtn --bits 8
python3 tools/experiments/layer_drop_table.py "$RES" > "$RES/README.md"
cat "$RES/README.md"
