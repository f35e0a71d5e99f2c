#!/usr/bin/env python3
"""Tables of tools/experiments/mixed_bpw.sh from the reports in RES (default
results/allocation/mixed_bpw). Bits per weight are recomputed here from each report's linears with
the formula of crates/shrink-recipe/src/budget.rs (checked against the report's totals.bpw when
the report has it)."""
import collections, json, math, os, re, sys

res = sys.argv[1] if len(sys.argv) > 1 else "results/allocation/mixed_bpw"
owl = "results/allocation"  # uniform sparsity figures of owl_vs_uniform.md


def load(n):
    try:
        e = json.load(open(n + ".eval.json"))
        r = json.load(open(n + ".report.json"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    t = open(n + ".time.txt").read() if os.path.exists(n + ".time.txt") else ""
    m = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", t)
    wall = None
    if m:
        p = m.group(1).split(":")
        wall = float(p[-1]) + 60 * float(p[-2]) + (3600 * float(p[-3]) if len(p) > 2 else 0)
    return e, r, wall


def linear_bits(d_out, d_in, bits, g, sym, g_idx, scale_bits=16):
    groups = math.ceil(d_in / g) if g else 1
    b = 32 * d_out * math.ceil(d_in * bits / 32) + scale_bits * d_out * groups
    if not sym:
        b += 32 * groups * math.ceil(d_out * bits / 32)
    if g_idx:
        b += 32 * d_in
    return b


def report_bpw(r):
    tot_b = tot_w = 0
    for l in r["layers"]:
        for x in l["linears"]:
            m = re.match(r"gptq w(\d+) (?:g(\d+)|pc)? ?(sym|asym) actorder=(\w+)", x["method"])
            if not m:
                continue
            bits, g, sym, ao = int(m[1]), int(m[2]) if m[2] else None, m[3] == "sym", m[4]
            tot_b += linear_bits(x["d_out"], x["d_in"], bits, g, sym, ao == "dynamic")
            tot_w += x["d_out"] * x["d_in"]
    bpw = tot_b / tot_w
    rb = (r["totals"].get("bpw") or {}).get("bpw")
    assert rb is None or abs(rb - bpw) < 1e-9, (rb, bpw)
    return bpw


print("### Mixed precision (GPTQ) under --target-bpw vs uniform GPTQ\n")
print("| run | bpw (accountant) | perplexity | settings (linears) | weights at 2/3/4/8 bits | profile s | compress pipeline s | profile / compress | wall s |")
print("|---|---|---|---|---|---|---|---|---|")
rows = []
for f in sorted(os.listdir(res)):
    if f.endswith(".report.json") and f.startswith("gptq-"):
        n = os.path.join(res, f[: -len(".report.json")])
        d = load(n)
        if d is None:
            continue
        e, r, wall = d
        bpw = report_bpw(r)
        al = r.get("allocation") or {}
        hist, wts = collections.Counter(), collections.Counter()
        for l in r["layers"]:
            for x in l["linears"]:
                mm = re.match(r"gptq w(\d+) (g\d+|pc)?", x["method"])
                b = int(mm[1])
                hist[f"w{b}{mm[2] or ''}"] += 1
                wts[b] += x["d_out"] * x["d_in"]
        W = sum(wts.values())
        ps = al.get("profile_seconds")
        cs = r["totals"]["pipeline_seconds"]
        rows.append((bpw, f"| {os.path.basename(n)} | {bpw:.4f} | {e['perplexity']:.4f} | "
                     + ", ".join(f"{b}: {hist[b]}" for b in sorted(hist)) + " | "
                     + " / ".join(f"{100 * wts[b] / W:.1f}%" for b in (2, 3, 4, 8)) + " | "
                     + (f"{ps:.1f} | {cs:.1f} | {ps / cs:.2f}" if ps else f"- | {cs:.1f} | -")
                     + f" | {wall:.0f} |" if wall else " |"))
for _, row in sorted(rows):
    print(row)

print("\n### Global sparsity: --allocate search vs uniform (uniform and OWL from owl_vs_uniform.md)\n")
print("| method | target | uniform ppl | search ppl | change | zeros uniform | zeros search | linear sparsity range | profile s | compress pipeline s | profile / compress |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for f in sorted(os.listdir(res)):
    m = re.match(r"(sparsegpt|wanda)-([\d.]+)-search\.report\.json$", f)
    if not m:
        continue
    d = load(os.path.join(res, f[: -len(".report.json")]))
    u = load(os.path.join(owl, f"{m[1]}-{m[2]}-uniform"))
    if d is None or u is None:
        continue
    (e, r, _), (ue, ur, _) = d, u
    al = r["allocation"]
    sp = [x["sparsity"] for x in al["linears"]]
    ps, cs = al["profile_seconds"], r["totals"]["pipeline_seconds"]
    print(f"| {m[1]} | {m[2]} | {ue['perplexity']:.4f} | {e['perplexity']:.4f} | "
          f"{100 * (e['perplexity'] / ue['perplexity'] - 1):+.1f}% | {ur['totals']['sparsity']:.5f} | "
          f"{r['totals']['sparsity']:.5f} | {min(sp):.3f}..{max(sp):.3f} | {ps:.1f} | {cs:.1f} | {ps / cs:.2f} |")
