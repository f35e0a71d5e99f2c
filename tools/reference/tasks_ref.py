"""Independent reference for `shrink eval-tasks` (issue 16): lm-evaluation-harness's
log-likelihood protocol on OLMES's requests (data/oe_eval_tasks from `scripts/fetch --tasks`),
written from lm-eval's code (`HFLM._encode_pair`, `_loglikelihood_tokens`, the `acc` / `acc_norm`
metrics) and not from shrink's. Every request runs alone, unpadded, one forward each.

Two backends:
  transformers  transformers' own GGUF loader (dequantizes to float32) and the tokenizer it builds
                from the GGUF metadata (needs torch + transformers).
  numpy         a float64 numpy Llama forward on the GGUF tensors as llama.cpp stores them (q/k
                rows in llama.cpp's order, so rope rotates adjacent pairs as llama.cpp's "norm"
                rope does), dequantized by the `gguf` package; tokenized by the fast tokenizer
                transformers built from the same GGUF
                (tests/fixtures/reference/gguf_tokenizer_transformers.json, `tokenizers` package).
                Llama-family GGUFs only (the default SmolLM2).
`--backend auto` (default) takes transformers when torch imports, else numpy.

Writes a small fixture (no request text, only keys and scores):
    tests/fixtures/reference/tasks_smollm2.json
        {"model", "backend", "tasks": {name: {"task", "variant", "limit"}},
         "requests": [{"task", "variant", "doc_id", "idx", "logprob", "tokens"}, ...],
         "metrics": {name: {"acc", "acc_per_char", "docs"}}}
which crates/shrink-cli/tests/tasks.rs compares with `shrink eval-tasks --cache` when the model
and the task data are present.

Run (numpy needs numpy, gguf, tokenizers; e.g. a venv with `pip install numpy gguf tokenizers`):
    python tools/reference/tasks_ref.py --limit 8   (arc_easy, hellaswag, piqa, arc_easy:rc_5shot, arc_easy:mc_5shot)
    .venv-ref/bin/python tools/reference/tasks_ref.py --backend transformers --limit 8
"""

import argparse
import gzip
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

UNCOND = 1_000_000  # OLMES's uncond_docid_offset


def load_requests(path, limit):
    """Multiple-choice requests of the first `limit` documents, unconditional copies skipped."""
    out, docs = [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r["request_type"] != "loglikelihood" or r["doc_id"] >= UNCOND:
                continue
            if r["doc_id"] not in docs:
                if limit is not None and len(docs) >= limit:
                    continue
                docs.append(r["doc_id"])
            out.append(r)
    return out


def encode_pair(tok_encode, context, continuation):
    """lm-eval's HFLM._encode_pair."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole_enc = tok_encode(context + continuation)
    context_enc = tok_encode(context)
    context_enc_len = len(context_enc)
    continuation_enc = whole_enc[context_enc_len:]
    return context_enc, continuation_enc


def log_softmax_rows(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ---------------------------------------------------------------- numpy backend


class NumpyLlama:
    def __init__(self, gguf_path):
        import numpy as np
        from gguf import GGUFReader
        from gguf.quants import dequantize

        r = GGUFReader(gguf_path)

        def field(k, default=None):
            f = r.fields.get(k)
            if f is None:
                return default
            v = f.parts[f.data[0]]
            return v.tobytes().decode() if v.dtype == np.uint8 else v[0].item()

        arch = field("general.architecture")
        if arch != "llama":
            sys.exit(f"{gguf_path}: the numpy backend runs llama GGUFs only, this is {arch}")
        p = arch + "."
        self.n_layer = field(p + "block_count")
        self.n_head = field(p + "attention.head_count")
        self.n_kv = field(p + "attention.head_count_kv", self.n_head)
        self.hidden = field(p + "embedding_length")
        self.eps = field(p + "attention.layer_norm_rms_epsilon")
        self.theta = field(p + "rope.freq_base", 10000.0)
        self.ctx = field(p + "context_length")
        self.add_bos = bool(field("tokenizer.ggml.add_bos_token", False))
        self.bos = field("tokenizer.ggml.bos_token_id")
        self.hd = self.hidden // self.n_head
        W = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type)
            W[t.name] = np.asarray(a, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
        self.W = W
        self.out = W.get("output.weight", W["token_embd.weight"])
        half = self.hd // 2
        self.inv = self.theta ** (-np.arange(half, dtype=np.float64) * 2.0 / self.hd)

    def rope(self, x):  # x [T, H, D]; llama.cpp "norm" rope: pairs (2i, 2i+1)
        import numpy as np

        T = x.shape[0]
        ang = np.arange(T, dtype=np.float64)[:, None] * self.inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = a * cos - b * sin
        y[..., 1::2] = a * sin + b * cos
        return y

    def rms(self, x, w):
        import numpy as np

        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def logits(self, ids):
        import numpy as np

        W, hd, nh, nkv = self.W, self.hd, self.n_head, self.n_kv
        x = W["token_embd.weight"][ids]
        T = len(ids)
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for i in range(self.n_layer):
            b = f"blk.{i}."
            h = self.rms(x, W[b + "attn_norm.weight"])
            q = self.rope((h @ W[b + "attn_q.weight"].T).reshape(T, nh, hd))
            k = self.rope((h @ W[b + "attn_k.weight"].T).reshape(T, nkv, hd))
            v = (h @ W[b + "attn_v.weight"].T).reshape(T, nkv, hd)
            rep = nh // nkv
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
            x = x + o @ W[b + "attn_output.weight"].T
            h = self.rms(x, W[b + "ffn_norm.weight"])
            g = h @ W[b + "ffn_gate.weight"].T
            u = h @ W[b + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ W[b + "ffn_down.weight"].T
        return self.rms(x, W["output_norm.weight"]) @ self.out.T


def numpy_backend(gguf_path, tokenizer_json):
    from tokenizers import Tokenizer

    m = NumpyLlama(gguf_path)
    tok = Tokenizer.from_file(tokenizer_json)
    bos = [m.bos] if m.add_bos else []

    def tok_encode(s):  # lm-eval: add_special_tokens=False unless the model adds BOS
        return bos + tok.encode(s, add_special_tokens=False).ids

    return tok_encode, m.logits, m.ctx


def transformers_backend(gguf_path):
    torch = C.setup_torch()
    model = C.load_gguf_model(gguf_path)
    tok = C.load_gguf_tokenizer(gguf_path)
    add_bos = bool(getattr(tok, "add_bos_token", False))

    def tok_encode(s):
        return tok.encode(s, add_special_tokens=add_bos)

    def logits(ids):
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].double().numpy()

    return tok_encode, logits, getattr(model.config, "max_position_embeddings", 2048)


# ---------------------------------------------------------------- protocol


def score(tok_encode, logits_of, max_length, ctx, cont):
    """lm-eval's _loglikelihood_tokens for one request, alone: (sum logprob, token count)."""
    context_enc, continuation_enc = encode_pair(tok_encode, ctx, cont)
    inp = (context_enc + continuation_enc)[-(max_length + 1):][:-1]
    lp = log_softmax_rows(logits_of(inp))[len(inp) - len(continuation_enc):]
    return float(sum(lp[i, t] for i, t in enumerate(continuation_enc))), len(continuation_enc)


def metrics(reqs, lps):
    docs = {}
    for r, lp in zip(reqs, lps):
        docs.setdefault(r["doc_id"], []).append((r["idx"], lp, len(r["request"]["continuation"]), r["label"]))
    acc = acc_pc = 0
    for choices in docs.values():
        choices.sort()
        sums = [c[1] for c in choices]
        pcs = [c[1] / c[2] for c in choices]
        gold = choices[0][3]
        acc += int(max(range(len(sums)), key=lambda i: (sums[i], -i)) == gold)
        acc_pc += int(max(range(len(pcs)), key=lambda i: (pcs[i], -i)) == gold)
    n = len(docs)
    return {"acc": acc / n, "acc_per_char": acc_pc / n, "docs": n}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=C.DEFAULT_GGUF)
    ap.add_argument("--tasks", default="arc_easy,hellaswag,piqa,arc_easy:rc_5shot,arc_easy:mc_5shot")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--data", default="data/oe_eval_tasks")
    ap.add_argument("--backend", choices=["auto", "transformers", "numpy"], default="auto")
    ap.add_argument("--tokenizer-json", default=os.path.join(C.FIXTURES_REF, "gguf_tokenizer_transformers.json"))
    ap.add_argument("--out", default=os.path.join(C.FIXTURES_REF, "tasks_smollm2.json"))
    a = ap.parse_args()
    backend = a.backend
    if backend == "auto":
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401

            backend = "transformers"
        except ImportError:
            backend = "numpy"
    gguf_path = C.repo_path(a.model)
    if backend == "transformers":
        tok_encode, logits_of, max_length = transformers_backend(gguf_path)
    else:
        tok_encode, logits_of, max_length = numpy_backend(gguf_path, C.repo_path(a.tokenizer_json))
    res = {"model": C.rel(gguf_path), "backend": backend, "tasks": {}, "requests": [], "metrics": {}}
    t0 = time.time()
    for name in a.tasks.split(","):
        task, _, variant = name.partition(":")
        variant = variant or "rc_0shot"
        path = os.path.join(C.repo_path(a.data), task, variant, "requests.jsonl.gz")
        if not os.path.isfile(path):
            sys.exit(f"{path}: missing (run scripts/fetch --tasks)")
        reqs = load_requests(path, a.limit)
        lps = []
        for k, r in enumerate(reqs):
            lp, n = score(tok_encode, logits_of, max_length, r["request"]["context"], r["request"]["continuation"])
            lps.append(lp)
            res["requests"].append(
                {"task": task, "variant": variant, "doc_id": r["doc_id"], "idx": r["idx"], "logprob": lp, "tokens": n}
            )
            C.log(f"{name} {k + 1}/{len(reqs)} doc {r['doc_id']} choice {r['idx']}: {lp:.6f} ({n} tokens)")
        res["tasks"][name] = {"task": task, "variant": variant, "limit": a.limit}
        res["metrics"][name] = metrics(reqs, lps)
    res["seconds"] = time.time() - t0
    C.write_result(res, a.out)


if __name__ == "__main__":
    main()
