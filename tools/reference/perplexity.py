"""Perplexity of a causal LM with transformers, by the GPTQ protocol (reference for shrink's `eval`).

Protocol: read the text file, tokenize the whole text once with the tokenizer's default call
(`tokenizer(text)`: for the SmolLM2 GGUF this adds no BOS, since tokenizer.ggml.add_bos_token is
false; whether a BOS was prepended is recorded in the output), optionally keep only the first
`--max-tokens` tokens, cut into non-overlapping windows of `--seqlen` tokens (the final partial
window is dropped), and for each window score tokens 1..seqlen-1 given the previous ones
(shifted cross-entropy, no context carried across windows). Then

    ppl = exp(total NLL / total predicted tokens)

which equals GPTQ's exp(mean over windows of the per-window mean NLL), since all windows have the
same length. `tokens` in the output is windows*seqlen (tokens fed, window starts included);
`predicted_tokens` is windows*(seqlen-1).

Run (CPU, float32, 2 threads; the full data/eval.txt takes several minutes):

    .venv-ref/bin/python tools/reference/perplexity.py                       # default GGUF
    .venv-ref/bin/python tools/reference/perplexity.py --gguf models/X.gguf --seqlen 512
    .venv-ref/bin/python tools/reference/perplexity.py --hf-dir out/smollm-hf --max-tokens 8192
    .venv-ref/bin/python tools/reference/perplexity.py --out tests/fixtures/reference/ppl_eval.json

Prints one JSON object {perplexity, tokens, windows, seqlen, seconds, ...} on stdout and writes it
to `--out` if given.
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def tokenize_text(tok, text):
    """Default tokenizer call on the whole text. Returns (ids, bos_prepended)."""
    ids = tok(text)["input_ids"]
    bos = tok.bos_token_id
    bos_prepended = bool(ids) and bos is not None and ids[0] == bos and not text.startswith(tok.bos_token or "\0")
    return ids, bos_prepended


def compute_perplexity(model, ids, seqlen=512, batch=4, max_tokens=None, progress=True):
    """GPTQ-protocol perplexity of `model` on the token list `ids`."""
    import torch
    import torch.nn.functional as F

    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = len(ids) // seqlen
    if windows == 0:
        raise ValueError(f"only {len(ids)} tokens, fewer than seqlen={seqlen}")
    data = torch.tensor(ids[: windows * seqlen], dtype=torch.long).view(windows, seqlen)
    total_nll = 0.0  # float64 accumulation in Python
    window_nll = []
    t0 = time.time()
    with torch.inference_mode():
        for start in range(0, windows, batch):
            x = data[start : start + batch]
            logits = model(input_ids=x, use_cache=False).logits.float()  # [b, seqlen, V]
            shift = logits[:, :-1, :]
            target = x[:, 1:]
            nll = F.cross_entropy(
                shift.reshape(-1, shift.shape[-1]), target.reshape(-1), reduction="none"
            ).view(x.shape[0], seqlen - 1)
            per_window = nll.double().sum(dim=1)
            for v in per_window.tolist():
                window_nll.append(v / (seqlen - 1))
                total_nll += v
            if progress:
                done = start + x.shape[0]
                C.log(
                    f"  window {done}/{windows}  running ppl {math.exp(total_nll / (done * (seqlen - 1))):.4f}"
                    f"  {time.time() - t0:.1f}s"
                )
    predicted = windows * (seqlen - 1)
    return {
        "perplexity": math.exp(total_nll / predicted),
        "tokens": windows * seqlen,
        "predicted_tokens": predicted,
        "windows": windows,
        "seqlen": seqlen,
        "mean_nll": total_nll / predicted,
        "window_mean_nll": window_nll,
        "seconds": time.time() - t0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", help=f"GGUF file loaded with transformers (default {C.rel(C.DEFAULT_GGUF)})")
    src.add_argument("--hf-dir", help="Hugging Face model directory (config.json, safetensors, tokenizer)")
    ap.add_argument("--text", default=C.DEFAULT_EVAL, help="text file (default data/eval.txt)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=None, help="use only the first N tokens")
    ap.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-window-nll", action="store_true", help="omit the per-window mean NLL list")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    torch = C.setup_torch(args.threads, seed=0)
    t_start = time.time()
    if args.hf_dir:
        model, tok = C.load_hf_dir(args.hf_dir)
        source = {"hf_dir": C.rel(C.repo_path(args.hf_dir))}
    else:
        gguf = args.gguf or C.DEFAULT_GGUF
        model = C.load_gguf_model(gguf)
        tok = C.load_gguf_tokenizer(gguf)
        source = {"gguf": C.rel(C.repo_path(gguf)), "gguf_file": C.file_digest(C.repo_path(gguf))}
    text_path = C.repo_path(args.text)
    text = C.read_text(text_path)
    ids, bos_prepended = tokenize_text(tok, text)
    C.log(f"{len(ids)} tokens from {len(text)} chars; bos_prepended={bos_prepended}")
    res = compute_perplexity(model, ids, args.seqlen, args.batch, args.max_tokens)
    digest = C.file_digest(text_path)
    out = {
        "perplexity": res["perplexity"],
        "tokens": res["tokens"],
        "windows": res["windows"],
        "seqlen": args.seqlen,
        "seconds": res["seconds"],
        "predicted_tokens": res["predicted_tokens"],
        "mean_nll": res["mean_nll"],
        "protocol": "gptq: whole text tokenized once with tokenizer(text) (default call), non-overlapping "
        "windows of seqlen, final partial window dropped, NLL of tokens 1..seqlen-1 per window, "
        "ppl = exp(sum NLL / (windows*(seqlen-1)))",
        "text": {
            "path": C.rel(text_path),
            "sha256": digest["sha256"],
            "bytes": digest["bytes"],
            "chars": len(text),
            "total_text_tokens": len(ids),
        },
        "max_tokens": args.max_tokens,
        "add_special_tokens": True,
        "bos_prepended": bos_prepended,
        "first_ids": ids[:16],
        "dtype": "float32",
        "batch": args.batch,
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "total_seconds": time.time() - t_start,
        **source,
    }
    if not args.no_window_nll:
        out["window_mean_nll"] = res["window_mean_nll"]
    s = json.dumps(out, indent=1)
    print(s)
    if args.out:
        with open(C.repo_path(args.out), "w") as f:
            f.write(s + "\n")


if __name__ == "__main__":
    main()
