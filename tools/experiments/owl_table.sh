#!/usr/bin/env bash
# Uniform against OWL layerwise sparsity on the default model, same calibration windows
# (shrink's sampler: 64 x 512 tokens of data/calib.txt, seed 0), same evaluator (the whole eval
# split, seqlen 512). Each run: shrink compress (report.json: per-layer sparsities, zeros) then
# shrink eval --json. Prints a table at the end.
# Usage: tools/experiments/owl_table.sh [METHOD:SPARSITY ...]   (default wanda/sparsegpt x 0.5/0.6)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-out/owl}
RES=${RES:-results/allocation}
mkdir -p "$OUT" "$RES"
CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(wanda:0.5 wanda:0.6 sparsegpt:0.5 sparsegpt:0.6)
for c in "${CASES[@]}"; do
  m=${c%%:*}; s=${c##*:}
  for alloc in uniform owl; do
    name=$m-$s-$alloc
    if [ ! -f "$RES/$name.eval.json" ]; then
      rm -rf "$OUT/$name"
      /usr/bin/time -v "$BIN" compress -q --model "$MODEL" --method "$m" --sparsity "$s" \
        --allocate "$alloc" --calib data/calib.txt --nsamples 64 --seqlen 512 --seed 0 \
        --out "$OUT/$name" 2> "$RES/$name.time.txt"
      cp "$OUT/$name/report.json" "$RES/$name.report.json"
      cp "$OUT/$name/recipe.toml" "$RES/$name.recipe.toml"
      "$BIN" eval -q --model "$OUT/$name" --text data/eval.txt --json > "$RES/$name.eval.json"
    fi
  done
done
python3 - "$RES" "${CASES[@]}" <<'PY'
import json, sys, re
res, cases = sys.argv[1], sys.argv[2:]
print("| method | target | uniform ppl | OWL ppl | change | zeros uniform | zeros OWL | OWL layer range | OWL pass s | compress s uniform | compress s OWL |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for c in cases:
    m, s = c.split(":")
    row = {}
    for a in ("uniform", "owl"):
        n = f"{res}/{m}-{s}-{a}"
        e = json.load(open(n + ".eval.json"))
        r = json.load(open(n + ".report.json"))
        t = open(n + ".time.txt").read()
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", t).group(1)
        p = wall.split(":"); wall_s = float(p[-1]) + 60 * float(p[-2]) + (3600 * float(p[-3]) if len(p) > 2 else 0)
        row[a] = (e["perplexity"], r["totals"]["sparsity"], r.get("allocation"), wall_s)
    al = row["owl"][2]
    sp = [l["sparsity"] for l in al["layers"]]
    print(f"| {m} | {s} | {row['uniform'][0]:.4f} | {row['owl'][0]:.4f} | {100*(row['owl'][0]/row['uniform'][0]-1):+.1f}% | "
          f"{row['uniform'][1]:.5f} | {row['owl'][1]:.5f} | {min(sp):.3f}..{max(sp):.3f} | {al['seconds']:.1f} | {row['uniform'][3]:.0f} | {row['owl'][3]:.0f} |")
PY
