#!/usr/bin/env bash
# The agents paper's loop (--allocate agent, built-in proposer, defaults) against uniform and OWL
# layerwise sparsity on the default model: same calibration windows (64 x 512 tokens of
# data/calib.txt, seed 0), same evaluator (the whole eval split, seqlen 512).
# The loop's allocation does not depend on the final method (its candidates are Wanda masks on
# the dense model's input norms), so one loop per target is run with wanda and its recipe.toml
# is reused with --method sparsegpt. Uniform and OWL figures come from owl_table.sh.
# Usage: tools/experiments/agent_table.sh [TARGET ...]   (default 0.5 0.6)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/shrink}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=${OUT:-out/agent}
RES=${RES:-results/allocation}
mkdir -p "$OUT" "$RES"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(0.5 0.6)
for s in "${TARGETS[@]}"; do
  name=wanda-$s-agent
  if [ ! -f "$RES/$name.eval.json" ]; then
    rm -rf "$OUT/$name" "$OUT/.$name.partial"
    /usr/bin/time -v "$BIN" compress --model "$MODEL" --method wanda --sparsity "$s" \
      --allocate agent --calib data/calib.txt --nsamples 64 --seqlen 512 --seed 0 \
      --out "$OUT/$name" > "$RES/$name.log" 2> "$RES/$name.time.txt"
    cp "$OUT/$name/report.json" "$RES/$name.report.json"
    cp "$OUT/$name/recipe.toml" "$RES/$name.recipe.toml"
    "$BIN" eval -q --model "$OUT/$name" --text data/eval.txt --json > "$RES/$name.eval.json"
  fi
  sname=sparsegpt-$s-agent
  if [ ! -f "$RES/$sname.eval.json" ]; then
    rm -rf "$OUT/$sname" "$OUT/.$sname.partial"
    /usr/bin/time -v "$BIN" compress -q --model "$MODEL" --recipe "$RES/$name.recipe.toml" \
      --method sparsegpt --out "$OUT/$sname" 2> "$RES/$sname.time.txt"
    cp "$OUT/$sname/report.json" "$RES/$sname.report.json"
    cp "$OUT/$sname/recipe.toml" "$RES/$sname.recipe.toml"
    "$BIN" eval -q --model "$OUT/$sname" --text data/eval.txt --json > "$RES/$sname.eval.json"
  fi
done
python3 - "$RES" "${TARGETS[@]}" <<'PY'
import json, sys, os
res, targets = sys.argv[1], sys.argv[2:]
def get(n, *k):
    p = f"{res}/{n}.{k[0]}.json"
    if not os.path.exists(p):
        return None
    v = json.load(open(p))
    for x in k[1:]:
        v = v.get(x) if isinstance(v, dict) else None
    return v
print("| method | target | uniform ppl | OWL ppl | agent ppl | agent vs uniform | zeros uniform | zeros agent | agent layer range | steps (rolled back) | loop s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for s in targets:
    for m in ("wanda", "sparsegpt"):
        u, o, a = (get(f"{m}-{s}-{x}", "eval", "perplexity") for x in ("uniform", "owl", "agent"))
        zu = get(f"{m}-{s}-uniform", "report", "totals", "sparsity")
        za = get(f"{m}-{s}-agent", "report", "totals", "sparsity")
        al = get(f"wanda-{s}-agent", "report", "allocation") or {}
        sp = [x[1] for x in al.get("sparsities", [])]
        rng = f"{min(sp):.3f}..{max(sp):.3f}" if sp else "-"
        f = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"
        ch = "-" if (u is None or a is None) else f"{100*(a/u-1):+.1f}%"
        print(f"| {m} | {s} | {f(u)} | {f(o)} | {f(a)} | {ch} | {f(zu,5)} | {f(za,5)} | {rng} | "
              f"{len(al.get('steps', []))} ({al.get('rollbacks', '-')}) | {f(al.get('seconds'), 0)} |")
PY
