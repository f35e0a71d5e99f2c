"""Shared helpers for the reference scripts in tools/reference/ (not a script itself).

Paths are resolved relative to the repository root so that the scripts can be run
from anywhere, e.g. `.venv-ref/bin/python tools/reference/logits.py`.
"""

import hashlib
import json
import os
import sys

# No network access to the Hugging Face hub: everything is loaded from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_GGUF = os.path.join(REPO_ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_EVAL = os.path.join(REPO_ROOT, "data", "eval.txt")
FIXTURES_REF = os.path.join(REPO_ROOT, "tests", "fixtures", "reference")
FIXTURES_TINY = os.path.join(REPO_ROOT, "tests", "fixtures", "tiny")
PROMPT_FILE = os.path.join(FIXTURES_REF, "prompt.txt")


def repo_path(p):
    """Absolute path; relative paths are taken relative to the repository root."""
    return p if os.path.isabs(p) else os.path.join(REPO_ROOT, p)


def rel(p):
    """Path relative to the repository root (for printing / JSON)."""
    p = os.path.abspath(p)
    if p == REPO_ROOT or p.startswith(REPO_ROOT + os.sep):
        return os.path.relpath(p, REPO_ROOT)
    return p


def setup_torch(threads=2, seed=0):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch


def load_gguf_tokenizer(gguf_path):
    from transformers import AutoTokenizer

    gguf_path = repo_path(gguf_path)
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))


def load_gguf_model(gguf_path):
    """transformers' own GGUF loader: dequantizes every tensor to float32."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf_path = repo_path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32
    )
    model.eval()
    return model


def load_hf_dir(hf_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(repo_path(hf_dir), dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(repo_path(hf_dir))
    return model, tok


def file_digest(path):
    with open(path, "rb") as f:
        data = f.read()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def read_text(path):
    # newline="" keeps the file's exact characters (no \r\n translation).
    with open(repo_path(path), encoding="utf-8", newline="") as f:
        return f.read()


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def write_result(res, out=None):
    """Prints a check's JSON result and, when `out` is given, writes it there too."""
    s = json.dumps(res, indent=1)
    print(s)
    if out:
        path = repo_path(out)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(s + "\n")


def model_perplexity(model, tokenizer_dir, text_path, max_tokens):
    """GPTQ-protocol perplexity of a loaded transformers model on a text file (perplexity.py)."""
    import perplexity as P
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = open(repo_path(text_path), encoding="utf-8").read()
    ids, _ = P.tokenize_text(tok, text)
    r = P.compute_perplexity(model, ids, max_tokens=max_tokens, progress=False)
    r.pop("window_mean_nll", None)
    r["text"] = rel(repo_path(text_path))
    r["max_tokens"] = max_tokens
    return r


def save_safetensors_sorted(tensors, path, metadata=None):
    """Write a safetensors file byte-for-byte reproducibly.

    safetensors' own writer emits the __metadata__ entries in hash order, so two runs give different
    bytes for the same content. Here the header is canonical JSON (keys sorted, tensors laid out in
    name order, header padded with spaces to a multiple of 8 bytes), which any safetensors reader
    accepts.
    """
    import json
    import struct

    import torch

    dtypes = {
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.uint8: "U8",
    }
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
