"""Markdown tables of the pruning runs in results/pruning (tools/experiments/pruning_table.sh)
and the llm-compressor peer runs in results/peer (tools/experiments/pruning_peer.sh)."""
import glob
import json
import os

R = "results/pruning"


def load(name):
    try:
        e = json.load(open(f"{R}/{name}.eval.json"))
        r = json.load(open(f"{R}/{name}.report.json"))
    except (OSError, ValueError):
        return None
    t = open(f"{R}/{name}.time.txt").read().strip() if os.path.exists(f"{R}/{name}.time.txt") else ""
    return e, r, t


rows = ["magnitude", "wanda", "sparsegpt"]
cols = [("50", "50%"), ("60", "60%"), ("2of4", "2:4"), ("4of8", "4:8")]
print("| method | " + " | ".join(c for _, c in cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for m in rows:
    cells = []
    for k, _ in cols:
        x = load(f"{m}-{k}")
        cells.append(f"{x[0]['perplexity']:.2f}" if x else "not run")
    print(f"| {m} | " + " | ".join(cells) + " |")
print()
print("| run | method (report) | perplexity | sparsity | wall / CPU time | peak RSS |")
print("|---|---|---|---|---|---|")
for f in sorted(glob.glob(f"{R}/*.eval.json")):
    name = os.path.basename(f)[: -len(".eval.json")]
    x = load(name)
    if not x:
        continue
    e, r, t = x
    print(f"| {name} | {r['method']} | {e['perplexity']:.4f} | {r['totals'].get('sparsity')} | {t} | "
          f"{r['totals'].get('peak_rss_mb', 0):.0f} MB |")
print()
print("| peer run | perplexity (shrink eval) | time |")
print("|---|---|---|")
for f in sorted(glob.glob("results/peer/llmc-*.shrink-eval.json")) + ["results/peer/llmc-sparsegpt-50.ppl.json"]:
    if not os.path.exists(f):
        continue
    name = os.path.basename(f).split(".")[0]
    t = f"results/peer/{name}.time.txt"
    try:
        json.load(open(f))
    except ValueError:
        continue
    print(f"| {name} | {json.load(open(f))['perplexity']:.4f} | {open(t).read().strip() if os.path.exists(t) else ''} |")

print()
print("SparseGPT 2:4 layer-wise under changes that leave the method the same (dampening, calibration draw):")
runs = ["", "-damp0.009", "-damp0.011", "-seed1", "-seed2"]
vals = [x[0]["perplexity"] for r in runs if (x := load(f"sparsegpt-2of4-layerseq{r}"))]
if len(vals) > 1:
    import statistics
    m, sd = statistics.mean(vals), statistics.stdev(vals)
    print(f"  {', '.join(f'{v:.2f}' for v in sorted(vals))}: mean {m:.2f}, sd {sd:.2f} ({100 * sd / m:.1f}%)")
