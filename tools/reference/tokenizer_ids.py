"""Reference token ids from the tokenizer transformers builds out of the GGUF metadata.

Loads `AutoTokenizer.from_pretrained(dir, gguf_file=name)` for the default GGUF
(models/SmolLM2-135M-Instruct.Q4_1.gguf), takes the first `--chars` (default 25,000) Unicode code
points of data/eval.txt (Python `text[:n]`, i.e. Rust `text.chars().take(n)`), encodes them with the
default call `tokenizer(text)` and writes

    tests/fixtures/reference/tokenizer_ids.json
        {"chars", "text", "ids", "add_special_tokens", "bos_prepended", "eos_appended", ...}

It also dumps the whole fast tokenizer definition transformers built
(`tok.backend_tokenizer.to_str()`) to tests/fixtures/reference/gguf_tokenizer_transformers.json
(or to /tmp/gguf_tokenizer_transformers.json if it is over `--max-dump-bytes`), and prints a
summary of its structure plus two diagnostics on stderr: a decode round trip, and how many ids
change if a `Digits(individual_digits=True)` pre-tokenizer (what llama.cpp's "smollm" pre-type and
the original SmolLM2 tokenizer.json use) is put in front of transformers' ByteLevel one.

Run:
    .venv-ref/bin/python tools/reference/tokenizer_ids.py
    .venv-ref/bin/python tools/reference/tokenizer_ids.py --gguf models/X.gguf --chars 25000
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def structure_summary(d):
    """Compact description of a tokenizers JSON (everything but the vocab/merges)."""
    model = {k: v for k, v in d["model"].items() if k not in ("vocab", "merges")}
    model["vocab_size"] = len(d["model"].get("vocab", {}))
    model["merges_count"] = len(d["model"].get("merges", []))
    return {
        "model": model,
        "normalizer": d.get("normalizer"),
        "pre_tokenizer": d.get("pre_tokenizer"),
        "post_processor": d.get("post_processor"),
        "decoder": d.get("decoder"),
        "added_tokens": d.get("added_tokens"),
        "truncation": d.get("truncation"),
        "padding": d.get("padding"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=C.DEFAULT_GGUF)
    ap.add_argument("--text", default=C.DEFAULT_EVAL)
    ap.add_argument("--chars", type=int, default=25000)
    ap.add_argument("--out", default=os.path.join(C.FIXTURES_REF, "tokenizer_ids.json"))
    ap.add_argument("--dump", default=os.path.join(C.FIXTURES_REF, "gguf_tokenizer_transformers.json"))
    ap.add_argument("--max-dump-bytes", type=int, default=3_000_000)
    args = ap.parse_args()

    tok = C.load_gguf_tokenizer(args.gguf)
    full = C.read_text(args.text)
    text = full[: args.chars]
    enc = tok(text)  # default call: add_special_tokens=True
    ids = enc["input_ids"]
    no_special = tok(text, add_special_tokens=False)["input_ids"]
    bos_prepended = ids[:1] == [tok.bos_token_id] and no_special[:1] != [tok.bos_token_id]
    eos_appended = len(ids) > len(no_special) and ids[-1] == tok.eos_token_id
    out = {
        "chars": args.chars,
        "text": text,
        "ids": ids,
        "add_special_tokens": True,
        "call": "tokenizer(text)",
        "bos_prepended": bool(bos_prepended),
        "eos_appended": bool(eos_appended),
        "special_tokens_change_ids": ids != no_special,
        "source_text": {"path": C.rel(C.repo_path(args.text)), **C.file_digest(C.repo_path(args.text))},
        "gguf": C.rel(C.repo_path(args.gguf)),
        "tokenizer_class": type(tok).__name__,
        "bos_token": [tok.bos_token, tok.bos_token_id],
        "eos_token": [tok.eos_token, tok.eos_token_id],
        "unk_token": [tok.unk_token, tok.unk_token_id],
        "pad_token": [tok.pad_token, tok.pad_token_id],
        "transformers": __import__("transformers").__version__,
        "tokenizers": __import__("tokenizers").__version__,
    }
    with open(C.repo_path(args.out), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    C.log(f"wrote {C.rel(C.repo_path(args.out))}: {len(ids)} ids for {len(text)} chars; "
          f"bos_prepended={bos_prepended} eos_appended={eos_appended}")

    s = tok.backend_tokenizer.to_str()
    dump = C.repo_path(args.dump)
    if len(s.encode("utf-8")) > args.max_dump_bytes:
        dump = os.path.join("/tmp", os.path.basename(dump))
    with open(dump, "w", encoding="utf-8") as f:
        f.write(s)
    C.log(f"wrote {dump} ({len(s.encode('utf-8'))} bytes)")

    d = json.loads(s)
    summary = structure_summary(d)
    summary["added_tokens"] = [
        {k: v for k, v in t.items()} for t in summary["added_tokens"]
    ]
    print(json.dumps(summary, indent=1, ensure_ascii=False))

    # Diagnostics.
    dec = tok.decode(ids, skip_special_tokens=False)
    C.log(f"decode round trip exact: {dec == text}")
    from tokenizers import Tokenizer, pre_tokenizers

    alt = Tokenizer.from_str(s)
    alt.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), alt.pre_tokenizer]
    )
    alt_ids = alt.encode(text).ids
    if alt_ids == ids:
        C.log("with a Digits(individual_digits=True) pre-tokenizer in front: identical ids on this text")
    else:
        first = next(i for i, (a, b) in enumerate(zip(alt_ids, ids)) if a != b)
        C.log(f"with a Digits pre-tokenizer in front: ids differ (len {len(alt_ids)} vs {len(ids)}, first at {first})")
    probe = ["In 2024, 12345 people", "x  1 y", "a   22b", "3.14159", "  7"]
    for p in probe:
        a, b = tok(p)["input_ids"], alt.encode(p).ids
        C.log(f"  {p!r}: transformers {tok.convert_ids_to_tokens(a)}  with Digits {alt.id_to_token(0) and [alt.id_to_token(i) for i in b]}")


if __name__ == "__main__":
    main()
