#!/usr/bin/env python3
"""Markdown table of results/layer-merge (tools/experiments/layer_merge.sh), beside the angular and
last drops of results/layer-drop (tools/experiments/layer_drop.sh, same evaluation)."""
import json, os, sys

res = sys.argv[1] if len(sys.argv) > 1 else "results/layer-merge"
drop = sys.argv[2] if len(sys.argv) > 2 else "results/layer-drop"


def load(d, name, kind):
    p = f"{d}/{name}.{kind}.json"
    return json.load(open(p)) if os.path.exists(p) else None


def ppl(d, name):
    e = load(d, name, "eval")
    return e["perplexity"] if e else None


def f(x):
    return "—" if x is None else (f"{x:.3g}" if x >= 1e5 else f"{x:.2f}")


def merged(name):
    r = load(res, name, "report")
    if not r:
        return ""
    lm = r["layer_merge"]
    s = lm["search"]
    kept = [st for st in s["steps"] if st["accepted"]]
    sims = ", ".join(f"{st['similarity']:.3f}" for st in kept)
    return f"{lm['merges']} (s = {sims}; {s['passes']} sweep{'s' if s['passes'] > 1 else ''}, {len(s['steps'])} candidates)"


def dropped(name):
    r = load(drop, name, "report")
    return r["layer_drop"]["dropped"] if r else ""


dense = load(drop, "dense", "eval")
print("# Layer merging (LaCo) on SmolLM2-135M-Instruct (30 layers), no healing\n")
if dense:
    print(f"Perplexity on data/eval.txt: {dense['predicted_tokens']} predicted tokens "
          f"({dense['windows']} windows of {dense['seqlen']}), GPTQ protocol (the protocol of "
          f"results/layer-drop). Dense reference: the Q4_1 GGUF dequantized by shrink, "
          f"**{dense['perplexity']:.2f}**.\n")
print("| N removed | merge (LaCo, C = 7) | merge (C = 2) | drop: angular | drop: last |")
print("|---|---|---|---|---|")
for n in (2, 4, 6):
    print(f"| {n} | {f(ppl(res, f'merge{n}'))} | {f(ppl(res, f'merge{n}-c2'))} | "
          f"{f(ppl(drop, f'drop{n}-angular'))} | {f(ppl(drop, f'drop{n}-last'))} |")
print("\nLayers (original numbering, 0-based): each merge lists the layers collapsed into its "
      "first, by their first original layer; s is the similarity each kept merge measured.\n")
print("| N | merge (C = 7) | merge (C = 2) | drop: angular | drop: last |")
print("|---|---|---|---|---|")
for n in (2, 4, 6):
    print(f"| {n} | {merged(f'merge{n}')} | {merged(f'merge{n}-c2')} | {dropped(f'drop{n}-angular')} | "
          f"{dropped(f'drop{n}-last')} |")
a = ppl(res, "rtn8-merge4")
if a is not None:
    print(f"\nCombined: `--method rtn --bits 8 --merge-layers 4`: {f(a)} (merges "
          f"{load(res, 'rtn8-merge4', 'report')['layer_merge']['merges']}); the merge alone: "
          f"{f(ppl(res, 'merge4'))}.")
notes = f"{res}/notes.md"
if os.path.exists(notes):
    print("\n" + open(notes).read().rstrip())
