"""Reference logits of the default GGUF model, as transformers computes them (float32, CPU).

Loads models/SmolLM2-135M-Instruct.Q4_1.gguf with transformers' GGUF loader
(`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32)`, which dequantizes every
tensor to float32) and its tokenizer (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`),
tokenizes tests/fixtures/reference/prompt.txt (the file's exact content, no trailing newline) with
the default call `tokenizer(text)`, runs one forward pass over the whole prompt and writes
tests/fixtures/reference/logits.safetensors:

    input_ids    int64 [T]
    cols         int64 [K]     K = 1024 fixed vocab columns: 0, 48, 96, ..., 49104
    logits_cols  f32   [T, K]  logits at those columns
    top1         int64 [T]     argmax over the full vocab
    top1_logit   f32   [T]
    logsumexp    f32   [T]     over the full vocab
(metadata: prompt text, whether BOS was added, gguf sha256, versions).

With `--compare FILE.safetensors` (written by shrink: `logits` f32 [T, V] for the same prompt,
optionally `input_ids`), it instead runs the model and prints JSON with the max abs difference over
all positions and the whole vocab, and the top-1 agreement.

Run:
    .venv-ref/bin/python tools/reference/logits.py
    .venv-ref/bin/python tools/reference/logits.py --compare out/shrink_logits.safetensors
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

K_COLS = 1024
COL_STRIDE = 48


def prompt_ids(tok, prompt_path=C.PROMPT_FILE):
    text = C.read_text(prompt_path)
    ids = tok(text)["input_ids"]
    bos_added = ids[:1] == [tok.bos_token_id] and tok(text, add_special_tokens=False)["input_ids"][:1] != [
        tok.bos_token_id
    ]
    return text, ids, bool(bos_added)


def forward_logits(model, ids):
    import torch

    with torch.inference_mode():
        x = torch.tensor([ids], dtype=torch.long)
        return model(input_ids=x, use_cache=False).logits[0].float()  # [T, V]


def compare_logits(ref, other):
    """ref, other: f32 [T, V] torch tensors. Returns a JSON-able dict."""
    diff = (ref - other).abs()
    t1_ref = ref.argmax(-1)
    t1_oth = other.argmax(-1)
    agree = (t1_ref == t1_oth)
    per_pos = diff.max(dim=-1).values
    # Relative scale: the logits' own spread.
    return {
        "positions": int(ref.shape[0]),
        "vocab": int(ref.shape[1]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff_position": int(per_pos.argmax()),
        "ref_logit_std": float(ref.std()),
        "top1_agreement": float(agree.float().mean()),
        "top1_agree_count": int(agree.sum()),
        "top1_disagree_positions": [int(i) for i in (~agree).nonzero().flatten().tolist()],
        "max_abs_logsumexp_diff": float((ref.logsumexp(-1) - other.logsumexp(-1)).abs().max()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=C.DEFAULT_GGUF)
    ap.add_argument("--prompt", default=C.PROMPT_FILE)
    ap.add_argument("--out", default=os.path.join(C.FIXTURES_REF, "logits.safetensors"))
    ap.add_argument("--compare", help="safetensors file from shrink with `logits` f32 [T, V]")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch = C.setup_torch(args.threads, seed=0)
    from safetensors.torch import load_file

    tok = C.load_gguf_tokenizer(args.gguf)
    text, ids, bos_added = prompt_ids(tok, C.repo_path(args.prompt))
    C.log(f"prompt: {len(text)} chars -> T={len(ids)} tokens; tokenizer added BOS: {bos_added}")
    print(f"tokenizer added BOS: {bos_added}", file=sys.stderr if args.compare else sys.stdout)
    model = C.load_gguf_model(args.gguf)
    logits = forward_logits(model, ids)

    if args.compare:
        other = load_file(C.repo_path(args.compare))
        o = other["logits"].float()
        if o.dim() == 3:
            o = o[0]
        res = {"compare": C.rel(C.repo_path(args.compare))}
        if "input_ids" in other:
            oi = other["input_ids"].flatten().tolist()
            res["input_ids_match"] = oi == ids
            if oi != ids:
                first = next((i for i, (a, b) in enumerate(zip(oi, ids)) if a != b), min(len(oi), len(ids)))
                res["input_ids_first_mismatch"] = first
        if tuple(o.shape) != tuple(logits.shape):
            res["error"] = f"shape mismatch: shrink {list(o.shape)} vs transformers {list(logits.shape)}"
            print(json.dumps(res, indent=1))
            sys.exit(1)
        res.update(compare_logits(logits, o))
        print(json.dumps(res, indent=1))
        return

    cols = torch.arange(0, K_COLS * COL_STRIDE, COL_STRIDE, dtype=torch.long)
    assert cols[-1] < logits.shape[1]
    top = logits.max(dim=-1)
    tensors = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "cols": cols,
        "logits_cols": logits[:, cols].contiguous(),
        "top1": top.indices.to(torch.long).contiguous(),
        "top1_logit": top.values.contiguous(),
        "logsumexp": logits.logsumexp(-1).contiguous(),
    }
    meta = {
        "prompt": text,
        "bos_added": str(bos_added).lower(),
        "gguf": C.rel(C.repo_path(args.gguf)),
        "gguf_sha256": C.file_digest(C.repo_path(args.gguf))["sha256"],
        "vocab_size": str(logits.shape[1]),
        "dtype": "float32",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "producer": "tools/reference/logits.py",
    }
    C.save_safetensors_sorted(tensors, C.repo_path(args.out), metadata=meta)
    t1 = tensors["top1"].tolist()
    C.log(f"wrote {C.rel(C.repo_path(args.out))}")
    print(json.dumps({
        "T": len(ids),
        "bos_added": bos_added,
        "first_ids": ids[:12],
        "top1_first": t1[:12],
        "top1_first_tokens": tok.convert_ids_to_tokens(t1[:12]),
        "top1_logit_first": [round(v, 4) for v in tensors["top1_logit"][:6].tolist()],
        "logsumexp_first": [round(v, 4) for v in tensors["logsumexp"][:6].tolist()],
        "greedy_next_token_after_prompt": tok.decode([t1[-1]]),
    }, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
