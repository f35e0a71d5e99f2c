"""Summarises tools/experiments/method_table.sh's reports (OUT/*.report.json) as a markdown
table, with the rankings by perplexity and by mean task accuracy. Usage: method_table.py OUT"""
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
tasks = [("arc_easy", "acc_per_char"), ("hellaswag", "acc_per_char"), ("piqa", "acc_per_char"),
         ("lambada:bpb_0shot", "acc")]
rows, orig = [], None
for p in sorted(out.glob("*.report.json")):
    ev = json.loads(p.read_text())["eval"]
    t = ev["tasks"]
    if orig is None:
        orig = {"name": "original", "ppl": ev["original"]["perplexity"], "kld": 0.0, "top1": 1.0,
                "tasks": t["original"]["tasks"]}
    a = ev["agreement"]
    rows.append({"name": p.name[: -len(".report.json")], "ppl": ev["compressed"]["perplexity"],
                 "kld": a["kld_mean"], "top1": a["top1_agreement"], "tasks": t["compressed"]["tasks"]})
if orig is None:
    sys.exit("no reports")
docs = {k: orig["tasks"][k]["docs"] for k, _ in tasks}
head = "| model | PPL | KLD | same top | " + " | ".join(f"{k.split(':')[0]} {m} ({docs[k]})" for k, m in tasks) + " | task mean |"
print(head)
print("|" + "---|" * (5 + len(tasks)))
def mean(r):
    return sum(r["tasks"][k][m] for k, m in tasks) / len(tasks)
for r in [orig] + rows:
    cells = " | ".join(f"{r['tasks'][k][m]:.3f}" for k, m in tasks)
    print(f"| {r['name']} | {r['ppl']:.3f} | {r['kld']:.4f} | {100*r['top1']:.2f}% | {cells} | {mean(r):.4f} |")
by_ppl = [r["name"] for r in sorted(rows, key=lambda r: r["ppl"])]
by_task = [r["name"] for r in sorted(rows, key=lambda r: -mean(r))]
print()
print("ranking by perplexity:  ", " < ".join(by_ppl))
print("ranking by task mean:   ", " > ".join(by_task))
print("rankings differ at:", [i for i, (a, b) in enumerate(zip(by_ppl, by_task)) if a != b] or "nowhere")
se = {k: orig["tasks"][k].get(f"{m}_stderr") for k, m in tasks}
print("original's standard errors:", {k: round(v, 4) for k, v in se.items() if v is not None})
