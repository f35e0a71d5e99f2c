"""Reference token ids for the SentencePiece (llama.cpp SPM) tokenizer, from llama.cpp itself.

Runs llama.cpp's `llama-tokenize` (built by tools/reference/build_llamacpp.sh) on the Gemma 3
GGUF (models/gemma-3-270m-q4_k_m.gguf from `scripts/fetch --all`) over several texts and writes

    tests/fixtures/reference/gemma3_tokens.json

which crates/shrink-model/tests/spm_reference.rs compares shrink's ids against, exactly.

Samples (each tokenized the way llama-perplexity tokenizes text: BOS added as the model asks,
special tokens spelled in the text NOT parsed, i.e. `--no-parse-special`, and `--no-escape` so the
bytes are taken verbatim):

  eval_head   data/eval.txt up to the first blank line ("\\n\\n") at or after code point 20,000
              (Python `t[:t.find("\\n\\n", 20000)]`): whole articles, 20,163 code points
  calib_head  data/calib.txt likewise from code point 10,000
  odd         a fixed string (stored in the fixture): accents, CJK, RTL, emoji with ZWJ and skin
              tones, characters Gemma has no token for (byte fallback), digits, tabs, CR LF,
              runs of spaces, leading and trailing spaces, control characters, raw "<bos>" text
  chat        a chat turn with Gemma's control tokens, once with --no-parse-special and once with
              the tool's default (parse special tokens; shrink's SpmTokenizer::encode(.., true))

For the data samples the fixture stores the cut rule, the length in code points and bytes and the
sha256 of the UTF-8 text, not the text; the test rebuilds it from data/ and checks the sha256.

Run (no Python packages needed):
    tools/reference/build_llamacpp.sh /work/llamacpp      # or the default out/export/llamacpp
    python3 tools/reference/spm_tokenize_ref.py --llama-tokenize /work/llamacpp/build/bin/llama-tokenize
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ODD = (
    "  Leading spaces, then caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m "
    "Stra\u00dfe \u0130stanbul \u0131 \u01c4 e\u0301 (combining acute)\n"
    "\u6771\u4eac\u90fd \u6f22\u5b57 \u304b\u306a \u30ab\u30ca \ud55c\uad6d\uc5b4 "
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u05e2\u05d1\u05e8\u05d9\u05ea "
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u0e44\u0e17\u0e22\n"
    "Emoji: \U0001f600 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 "
    "\U0001f1fa\U0001f1f3 \u2764\ufe0f \U0001f9ec\n"
    "Byte fallback: \U00013000 \U0001d11e \ue000 \U0010fffd \u2fff\n"
    "Digits 0123456789 3.14159 1,000,000 \u0661\u0662\u0663 \u00bd \u2460\n"
    "Tabs\tand\t\ttabs, CR LF\r\nline\n\n\nthree newlines,    four spaces,\u00a0nbsp,"
    "\u2003em space, \u3000ideographic\n"
    "Control \u0001\u007f chars; code: fn main() { println!(\"{}\", x[0]); } // <tag> &amp;\n"
    "Raw special text: <bos> <start_of_turn> <0x41> \u2581already\u2581escaped\n"
    "Trailing spaces   "
)

CHAT = "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\nIt is 4.<end_of_turn>\n"


def head(path, at):
    text = open(path, encoding="utf-8").read()
    cut = text.find("\n\n", at)
    if cut < 0:
        sys.exit(f"{path}: no blank line after code point {at}")
    return text[:cut]


def describe(text):
    b = text.encode("utf-8")
    return {"chars": len(text), "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}


def tokenize(tool, model, text, parse_special):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        cmd = [tool, "-m", model, "-f", path, "--ids", "--no-escape", "--log-disable"]
        if not parse_special:  # parsing special tokens is llama-tokenize's default
            cmd.append("--no-parse-special")
        out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode()
    finally:
        os.unlink(path)
    line = [l for l in out.splitlines() if l.startswith("[")]
    if len(line) != 1:
        sys.exit(f"unexpected llama-tokenize output: {out[:500]!r}")
    return json.loads(line[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-tokenize", default=os.path.join(ROOT, "out/export/llamacpp/build/bin/llama-tokenize"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/fixtures/reference/gemma3_tokens.json"))
    a = ap.parse_args()
    for p in (a.llama_tokenize, a.model):
        if not os.path.exists(p):
            sys.exit(f"{p}: missing (build_llamacpp.sh / scripts/fetch --all)")
    version = subprocess.run([a.llama_tokenize, "--version"], capture_output=True, text=True)
    version = " ".join((version.stdout + version.stderr).split())
    model_sha = hashlib.sha256(open(a.model, "rb").read()).hexdigest()

    samples = []
    for name, src, at in (("eval_head", "data/eval.txt", 20000), ("calib_head", "data/calib.txt", 10000)):
        text = head(os.path.join(ROOT, src), at)
        s = {"name": name, "source": src, "cut_at_blank_line_after_char": at, **describe(text)}
        s.update(parse_special=False, ids=tokenize(a.llama_tokenize, a.model, text, False))
        samples.append(s)
    for name, text, ps in (("odd", ODD, False), ("chat", CHAT, False), ("chat_parse_special", CHAT, True)):
        s = {"name": name, "text": text, **describe(text), "parse_special": ps}
        s["ids"] = tokenize(a.llama_tokenize, a.model, text, ps)
        samples.append(s)

    fx = {
        "model": os.path.basename(a.model),
        "model_sha256": model_sha,
        "tool": "llama-tokenize -f TEXT --ids --no-escape [--no-parse-special] (BOS as the model asks)",
        "llama_cpp": version + " (vendored in llama-cpp-python 0.3.36)",
        "samples": samples,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    tmp = a.out + ".part"
    with open(tmp, "w") as f:
        json.dump(fx, f, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, a.out)
    for s in samples:
        print(f"{s['name']}: {s['chars']} chars, {len(s['ids'])} ids")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
