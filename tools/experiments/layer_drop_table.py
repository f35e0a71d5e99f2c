#!/usr/bin/env python3
"""Markdown table of results/layer-drop (written by tools/experiments/layer_drop.sh)."""
import json, os, sys

res = sys.argv[1] if len(sys.argv) > 1 else "results/layer-drop"


def load(name, kind):
    p = f"{res}/{name}.{kind}.json"
    return json.load(open(p)) if os.path.exists(p) else None


def ppl(name):
    e = load(name, "eval")
    return e["perplexity"] if e else None


def dropped(name):
    r = load(name, "report")
    return r["layer_drop"]["dropped"] if r else None


def f(x):
    return "—" if x is None else f"{x:.2f}"


dense = load("dense", "eval")
print("# Layer pruning on SmolLM2-135M-Instruct (30 layers), no healing\n")
if dense:
    print(f"Perplexity on data/eval.txt: {dense['predicted_tokens']} predicted tokens "
          f"({dense['windows']} windows of {dense['seqlen']}), GPTQ protocol. Dense reference: "
          f"the Q4_1 GGUF dequantized by shrink, **{dense['perplexity']:.2f}**.\n")
print("| N dropped | angular | bi | last | random (mean of 3) | random seeds 0 / 1 / 2 |")
print("|---|---|---|---|---|---|")
for n in (2, 4, 6):
    r = [ppl(f"drop{n}-random{s}") for s in range(3)]
    mean = sum(r) / 3 if all(x is not None for x in r) else None
    cells = [f"{f(ppl(f'drop{n}-{s}'))} {dropped(f'drop{n}-{s}')}" for s in ("angular", "bi", "last")]
    rs = " / ".join(f"{f(x)} {dropped(f'drop{n}-random{s}')}" for s, x in enumerate(r))
    print(f"| {n} | " + " | ".join(cells) + f" | {f(mean)} | {rs} |")
print("\nEach cell: perplexity, then the dropped layers (original numbering, 0-based).\n")
a, b = ppl("rtn8-drop4-angular"), ppl("rtn8")
if a is not None:
    print(f"Combined: `--method rtn --bits 8 --drop-layers 4` (angular): {f(a)} "
          f"(dropped {dropped('rtn8-drop4-angular')}); `--method rtn --bits 8` alone: {f(b)}; "
          f"angular drop of 4 alone: {f(ppl('drop4-angular'))}.\n")
full = [(n[: -len(".full-text.eval.json")], json.load(open(f"{res}/{n}")))
        for n in sorted(os.listdir(res)) if n.endswith(".full-text.eval.json")]
for name, e in full:
    print(f"Whole data/eval.txt ({e['predicted_tokens']} predicted tokens): {name} {e['perplexity']:.2f} "
          f"(`{name}.full-text.eval.json`).\n")
r = load("drop4-angular", "report")
if r:
    s = r["layer_drop"]["scores"]
    print("Scores of the N = 4 angular run (every calibration token): angular distance d(x_l, x_l+4) "
          "per start layer l, and block influence per layer:\n")
    print("| l | " + " | ".join(str(i) for i in range(len(s["bi"]))) + " |")
    print("|---|" + "---|" * len(s["bi"]))
    print("| d(x_l, x_l+4) | " + " | ".join(f"{v:.3f}" for v in s["angular"]) + " |" + " |" * (len(s["bi"]) - len(s["angular"])))
    print("| BI_l | " + " | ".join(f"{v:.3f}" for v in s["bi"]) + " |")

notes = f"{res}/notes.md"
if os.path.exists(notes):
    print("\n" + open(notes).read().rstrip())
