#!/usr/bin/env python3
"""Markdown tables of results/rotation/README.md from spectrum_hadamard.json and the compress
reports (usage: tables.py spectrum_hadamard.json [REPORT_DIR|REPORT.json ...])."""
import json, statistics as st, sys
from collections import defaultdict

d = json.load(open(sys.argv[1]))
g = defaultdict(list)
for b, r in zip(d["original"], d["rotated"]):
    assert (b["layer"], b["group"]) == (r["layer"], r["group"])
    g[b["group"]].append((b["spectrum"], r["spectrum"]))
print("| group | top eig, original (median / max) | top eig, rotated (median / max) | rotated / original top eig (median / max) | top eig / mean eig, original → rotated (median) | condition, original → rotated (median) | damped condition ratio (median / max) | max diag / mean, original → rotated (median) |")
print("|---|---|---|---|---|---|---|---|")
med = st.median
for k in ["q_proj/k_proj/v_proj", "o_proj", "gate_proj/up_proj", "down_proj"]:
    v = g[k]
    ro = [r["top"] / o["top"] for o, r in v]
    cd = [r["condition_damped"] / o["condition_damped"] for o, r in v]
    cond = lambda s: s["condition"] if s["condition"] is not None else float("inf")
    print(f"| {k} | {med([o['top'] for o, _ in v]):.3g} / {max(o['top'] for o, _ in v):.3g} "
          f"| {med([r['top'] for _, r in v]):.3g} / {max(r['top'] for _, r in v):.3g} "
          f"| {med(ro):.3g} / {max(ro):.3g} "
          f"| {med([o['top'] / o['mean'] for o, _ in v]):.3g} → {med([r['top'] / r['mean'] for _, r in v]):.3g} "
          f"| {med([cond(o) for o, _ in v]):.3g} → {med([cond(r) for _, r in v]):.3g} "
          f"| {med(cd):.3g} / {max(cd):.3g} "
          f"| {med([o['max_diag'] / o['mean'] for o, _ in v]):.3g} → {med([r['max_diag'] / r['mean'] for _, r in v]):.3g} |")
if len(sys.argv) > 2:
    print()
    print("| run | rotation | perplexity | vs original | KL divergence | top-1 | mean rel. output error | pipeline s |")
    print("|---|---|---|---|---|---|---|---|")
    for p in sys.argv[2:]:
        r = json.load(open(p if p.endswith(".json") else p + "/report.json"))
        e = r["eval"]; a = e["agreement"]
        o, c = e["original"]["perplexity"], e["compressed"]["perplexity"]
        rot = r.get("rotation")
        print(f"| {p.rstrip('/').split('/')[-1].removesuffix('.report.json')} | {rot['kind'] + ' R1+R2' if rot else 'none'} | {c:.3f} | {100 * (c / o - 1):+.1f}% "
              f"| {a['kld_mean']:.4f} | {100 * a['top1_agreement']:.2f}% | {r['totals']['mean_rel_error']:.4f} | {r['totals']['pipeline_seconds']:.0f} |")
