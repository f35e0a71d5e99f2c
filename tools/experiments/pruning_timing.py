"""Summary of tools/experiments/pruning_timing.sh: wall, CPU and peak RSS of shrink and
llm-compressor per job, and the ratios peer / shrink, with both perplexities (full eval split)."""
import json
import re
import sys

T = sys.argv[1] if len(sys.argv) > 1 else "results/timing"


def timing(path):
    s = open(path).read()
    w, u, sy, kb = (float(x) for x in re.findall(r"([\d.]+) s wall, ([\d.]+) s user, ([\d.]+) s sys, (\d+) KB", s)[0])
    return w, u + sy, kb / 1024 / 1024


print("| job | shrink wall / CPU / peak | llm-compressor wall / CPU / peak | wall ratio | CPU ratio | memory ratio"
      " | perplexity shrink / llmc |")
print("|---|---|---|---|---|---|---|")
for job in ["sparsegpt-50", "wanda-50", "sparsegpt-2of4"]:
    try:
        a = timing(f"{T}/{job}.time.txt")
        b = timing(f"{T}/llmc-{job}.time.txt")
        pa = json.load(open(f"{T}/{job}.eval.json"))["perplexity"]
        pb = json.load(open(f"{T}/llmc-{job}.shrink-eval.json"))["perplexity"]
    except (OSError, IndexError, ValueError):
        print(f"| {job} | not run | | | | | |")
        continue
    print(f"| {job} | {a[0]:.0f} s / {a[1]:.0f} s / {a[2]:.2f} GiB | {b[0]:.0f} s / {b[1]:.0f} s / {b[2]:.2f} GiB"
          f" | {b[0] / a[0]:.2f}x | {b[1] / a[1]:.2f}x | {b[2] / a[2]:.2f}x | {pa:.4f} / {pb:.4f} |")
