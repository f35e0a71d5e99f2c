"""Check a Hugging Face directory written by `shrink convert` against the GGUF it came from.

Loads HF_DIR with transformers (`AutoModelForCausalLM` in float32 + `AutoTokenizer`) and the
reference model/tokenizer from the GGUF with transformers' own GGUF loader (default
models/SmolLM2-135M-Instruct.Q4_1.gguf), then reports as JSON:

  config     the fields that define the network (sizes, heads, rope, eps, tie_word_embeddings,
             vocab) side by side, and which differ.
  weights    per-parameter max abs difference between the two state dicts (the GGUF side is
             transformers' dequantization, with attn_q/attn_k rows un-permuted), worst tensors
             first; missing / unexpected names; tied lm_head handled.
  logits     forward pass on tests/fixtures/reference/prompt.txt: max / mean abs difference over
             all positions and the whole vocab, top-1 agreement.
  tokenizer  ids of the first 25,000 characters of data/eval.txt from both tokenizers (default
             call `tokenizer(text)`, as in tokenizer_ids.py), first mismatch, BOS/EOS/PAD tokens,
             a few probe strings (digits, runs of spaces, special tokens, non-ASCII), and a check
             against tests/fixtures/reference/tokenizer_ids.json when present.
  perplexity (with --ppl) perplexity.py's GPTQ protocol on --text (default data/eval.txt) for the
             HF directory, next to tests/fixtures/reference/ppl_eval.json when it matches the
             same text, seqlen and token count.

`ok` is true when every check passes its tolerance (--logits-atol, --weights-atol, exact tokenizer
ids, --ppl-rtol); the exit status is 0 then and 1 otherwise.

Run:
    .venv-ref/bin/python tools/reference/check_convert.py out/smollm-hf
    .venv-ref/bin/python tools/reference/check_convert.py out/smollm-hf --ppl --max-tokens 8192
    .venv-ref/bin/python tools/reference/check_convert.py out/smollm-hf --gguf models/X.gguf --no-weights
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import logits as L  # noqa: E402
import perplexity as P  # noqa: E402

CONFIG_KEYS = [
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "rope_parameters",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "bos_token_id",
    "eos_token_id",
]

PROBES = [
    "Hello world",
    " leading space and  two spaces",
    "In 2024, 12,345 people paid $3.50.",
    "x  1 y\n\n\tz   ",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "caf\u00e9 na\u00efve \u00fcber \u6771\u4eac \U0001f600",
]


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def _close(a, b, rtol=1e-6):
    """Equality with a relative tolerance on floats (1e-5 written as f64 vs its f32 value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return abs(a - b) <= rtol * max(abs(a), abs(b))
    return a == b


def compare_config(hf, ref):
    out, diff = {}, []
    for k in CONFIG_KEYS:
        a, b = _jsonable(getattr(hf.config, k, None)), _jsonable(getattr(ref.config, k, None))
        out[k] = {"hf_dir": a, "gguf": b}
        if not _close(a, b):
            diff.append(k)
    # Differences that do not change the network.
    harmless = {"architectures", "bos_token_id", "eos_token_id"}
    return {"fields": out, "differ": diff, "ok": not [k for k in diff if k not in harmless]}


def compare_weights(hf, ref, atol, show=8):
    sd_h = hf.state_dict()
    sd_r = ref.state_dict()
    missing = sorted(set(sd_r) - set(sd_h))
    unexpected = sorted(set(sd_h) - set(sd_r))
    rows = []
    shape_mismatch = []
    for k in sorted(set(sd_h) & set(sd_r)):
        a, b = sd_h[k].float(), sd_r[k].float()
        if a.shape != b.shape:
            shape_mismatch.append({"name": k, "hf_dir": list(a.shape), "gguf": list(b.shape)})
            continue
        d = (a - b).abs()
        rows.append((float(d.max()), k, float(d.mean()), float(b.abs().max())))
    rows.sort(reverse=True)
    worst = rows[0][0] if rows else float("nan")
    return {
        "compared": len(rows),
        "missing_in_hf_dir": missing,
        "unexpected_in_hf_dir": unexpected,
        "shape_mismatch": shape_mismatch,
        "max_abs_diff": worst,
        "worst": [
            {"name": k, "max_abs_diff": m, "mean_abs_diff": mean, "ref_absmax": ref_max}
            for m, k, mean, ref_max in rows[:show]
        ],
        "atol": atol,
        "ok": bool(rows) and not missing and not shape_mismatch and worst <= atol,
    }


def compare_tokenizers(tok_h, tok_r, text):
    ids_h = tok_h(text)["input_ids"]
    ids_r = tok_r(text)["input_ids"]
    res = {
        "chars": len(text),
        "tokens_hf_dir": len(ids_h),
        "tokens_gguf": len(ids_r),
        "ids_equal": ids_h == ids_r,
    }
    if ids_h != ids_r:
        i = next((j for j, (a, b) in enumerate(zip(ids_h, ids_r)) if a != b), min(len(ids_h), len(ids_r)))
        res["first_mismatch"] = {
            "index": i,
            "hf_dir": tok_h.convert_ids_to_tokens(ids_h[max(0, i - 3) : i + 4]),
            "gguf": tok_r.convert_ids_to_tokens(ids_r[max(0, i - 3) : i + 4]),
        }
    fixture = os.path.join(C.FIXTURES_REF, "tokenizer_ids.json")
    if os.path.exists(fixture):
        with open(fixture, encoding="utf-8") as f:
            fx = json.load(f)
        if fx.get("text") == text:
            res["matches_fixture_tokenizer_ids_json"] = fx["ids"] == ids_h
    res["special_tokens"] = {
        name: {"hf_dir": [getattr(tok_h, name), getattr(tok_h, name + "_id")],
               "gguf": [getattr(tok_r, name), getattr(tok_r, name + "_id")]}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    probes = []
    for p in PROBES:
        a, b = tok_h(p)["input_ids"], tok_r(p)["input_ids"]
        row = {"text": p, "equal": a == b}
        if a != b:
            row["hf_dir"] = tok_h.convert_ids_to_tokens(a)
            row["gguf"] = tok_r.convert_ids_to_tokens(b)
        probes.append(row)
    res["probes"] = probes
    res["decode_roundtrip_hf_dir"] = tok_h.decode(ids_h) == text
    res["ok"] = ids_h == ids_r and all(p["equal"] for p in probes)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", help="directory written by `shrink convert`")
    ap.add_argument("--gguf", default=C.DEFAULT_GGUF, help="the GGUF it was converted from")
    ap.add_argument("--prompt", default=C.PROMPT_FILE)
    ap.add_argument("--text", default=C.DEFAULT_EVAL, help="text for the tokenizer check and --ppl")
    ap.add_argument("--chars", type=int, default=25000, help="characters of --text for the tokenizer check")
    ap.add_argument("--ppl", action="store_true", help="also run the perplexity protocol on --text")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--no-weights", action="store_true", help="skip the state-dict comparison")
    ap.add_argument("--logits-atol", type=float, default=1e-3)
    ap.add_argument("--weights-atol", type=float, default=1e-6)
    ap.add_argument("--ppl-rtol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    C.setup_torch(args.threads, seed=0)
    t0 = time.time()
    hf_model, hf_tok = C.load_hf_dir(args.hf_dir)
    ref_model = C.load_gguf_model(args.gguf)
    ref_tok = C.load_gguf_tokenizer(args.gguf)
    summary = {"hf_dir": C.rel(C.repo_path(args.hf_dir)), "gguf": C.rel(C.repo_path(args.gguf))}
    oks = []

    summary["config"] = compare_config(hf_model, ref_model)
    oks.append(summary["config"]["ok"])

    if not args.no_weights:
        summary["weights"] = compare_weights(hf_model, ref_model, args.weights_atol)
        oks.append(summary["weights"]["ok"])

    # Logits on the prompt, with each side's own tokenizer; ids must agree for a fair comparison.
    text, ids_r, bos_r = L.prompt_ids(ref_tok, C.repo_path(args.prompt))
    _, ids_h, bos_h = L.prompt_ids(hf_tok, C.repo_path(args.prompt))
    lg = {"T": len(ids_r), "prompt_ids_equal": ids_h == ids_r, "bos_added": {"hf_dir": bos_h, "gguf": bos_r}}
    ref_logits = L.forward_logits(ref_model, ids_r)
    hf_logits = L.forward_logits(hf_model, ids_r)  # same ids on both sides
    if hf_logits.shape != ref_logits.shape:
        lg["error"] = f"shape mismatch {list(hf_logits.shape)} vs {list(ref_logits.shape)}"
        lg["ok"] = False
    else:
        lg.update(L.compare_logits(ref_logits, hf_logits))
        lg["atol"] = args.logits_atol
        lg["ok"] = lg["max_abs_diff"] <= args.logits_atol and lg["top1_agreement"] == 1.0 and ids_h == ids_r
    summary["logits"] = lg
    oks.append(lg["ok"])
    del ref_logits, hf_logits

    full_text = C.read_text(args.text)
    summary["tokenizer"] = compare_tokenizers(hf_tok, ref_tok, full_text[: args.chars])
    oks.append(summary["tokenizer"]["ok"])

    if args.ppl:
        del ref_model
        ids, bos = P.tokenize_text(hf_tok, full_text)
        res = P.compute_perplexity(hf_model, ids, args.seqlen, args.batch, args.max_tokens)
        res.pop("window_mean_nll")
        res["bos_prepended"] = bos
        digest = C.file_digest(C.repo_path(args.text))
        ref_path = os.path.join(C.FIXTURES_REF, "ppl_eval.json")
        if os.path.exists(ref_path):
            with open(ref_path) as f:
                ref = json.load(f)
            same = (
                ref.get("text", {}).get("sha256") == digest["sha256"]
                and ref.get("seqlen") == args.seqlen
                and ref.get("tokens") == res["tokens"]
            )
            if same:
                res["reference_perplexity"] = ref["perplexity"]
                res["relative_diff"] = abs(res["perplexity"] - ref["perplexity"]) / ref["perplexity"]
                res["rtol"] = args.ppl_rtol
                res["ok"] = res["relative_diff"] <= args.ppl_rtol
                oks.append(res["ok"])
            else:
                res["reference_perplexity"] = None
                res["note"] = "ppl_eval.json is for a different text/seqlen/token count (use the full text)"
        summary["perplexity"] = res

    summary["ok"] = all(oks)
    summary["seconds"] = time.time() - t0
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
