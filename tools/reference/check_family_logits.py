"""Logits of a `shrink convert` directory in transformers, fed llama.cpp's token ids, against shrink's.

The check the architecture issue asks for on a real GGUF of a new family (Gemma 3, Qwen2.5):
transformers' tokenizer built from such a GGUF is not a reference (for Gemma 3 it splits "former"
into "f", "orm", "er"), so the token ids come from llama.cpp's own `llama-tokenize`.

1. text: the first paragraphs of --text, cut at a blank line after --chars code points.
2. ids: `llama-tokenize -m GGUF -f text --ids` (BOS first when the GGUF adds one, as llama.cpp does).
3. shrink: `shrink eval --model GGUF --text text --seqlen BIG --logits-out F --json` writes the logits
   of the whole text [T, V] and prints its input ids; they must equal llama.cpp's.
4. transformers: `AutoModelForCausalLM.from_pretrained(HF_DIR, dtype=float32)` (HF_DIR written by
   `shrink convert GGUF --out HF_DIR`), eager attention, one forward pass over the same ids.

Prints JSON: the class transformers loaded, the per-layer attention types it built (sliding window or
full) and rope bases, the ids check, max / mean |logit difference| over all positions and the whole
vocabulary (also relative to the logits' RMS), top-1 agreement, and the same after position 512
(past Gemma 3's sliding window). `ok` when ids are identical, top-1 agreement is 1 and the max
difference is below --atol.

Run (after `scripts/fetch --all`, `tools/reference/build_llamacpp.sh /work/llamacpp`, cargo build):
    target/release/shrink convert models/gemma-3-270m-q4_k_m.gguf --out out/gemma3-hf
    .venv-ref/bin/python tools/reference/check_family_logits.py --gguf models/gemma-3-270m-q4_k_m.gguf \
        --hf-dir out/gemma3-hf --out results/families/gemma3-270m.logits-vs-transformers.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
from spm_tokenize_ref import tokenize as llama_tokenize  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--text", default=C.DEFAULT_EVAL)
    ap.add_argument("--chars", type=int, default=3000, help="cut the text at the first blank line after this")
    ap.add_argument("--shrink", default=os.path.join(C.REPO_ROOT, "target/release/shrink"))
    ap.add_argument("--llama-tokenize", default="/work/llamacpp/build/bin/llama-tokenize")
    ap.add_argument("--atol", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()

    torch = C.setup_torch(a.threads)
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    text = open(C.repo_path(a.text), encoding="utf-8").read()
    cut = text.find("\n\n", a.chars)
    text = text[:cut] if cut > 0 else text
    gguf = C.repo_path(a.gguf)
    ids_cpp = llama_tokenize(a.llama_tokenize, gguf, text, parse_special=False)

    work = tempfile.mkdtemp(prefix="family_logits_", dir=os.path.join(C.REPO_ROOT, "out"))
    tpath = os.path.join(work, "text.txt")
    with open(tpath, "w", encoding="utf-8") as f:
        f.write(text)
    lpath = os.path.join(work, "logits.safetensors")
    t0 = time.time()
    r = subprocess.run(
        [a.shrink, "eval", "--model", gguf, "--text", tpath, "--seqlen", str(len(ids_cpp) + 16),
         "--logits-out", lpath, "--json"],
        check=True, capture_output=True, text=True,
    )
    shrink_seconds = time.time() - t0
    sj = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
    ids_shrink = sj["input_ids"]
    ls = load_file(lpath)["logits"]
    os.unlink(lpath)
    os.unlink(tpath)
    os.rmdir(work)

    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(C.repo_path(a.hf_dir), dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    cfg = model.config
    with torch.no_grad():
        lt = model(torch.tensor([ids_cpp])).logits[0].float().numpy()
    hf_seconds = time.time() - t0

    same_ids = ids_shrink == ids_cpp
    n = min(len(ls), len(lt))
    d = np.abs(ls[:n].astype(np.float64) - lt[:n].astype(np.float64))
    rms = float(np.sqrt(np.mean(lt[:n].astype(np.float64) ** 2)))
    top_s, top_t = ls[:n].argmax(1), lt[:n].argmax(1)

    def part(lo):
        if n <= lo:
            return None
        return {"positions": n - lo, "max_abs": float(d[lo:].max()), "mean_abs": float(d[lo:].mean()),
                "top1_agreement": float((top_s[lo:] == top_t[lo:]).mean())}

    rope = getattr(cfg, "rope_parameters", None)
    out = {
        "gguf": C.rel(gguf), "hf_dir": C.rel(C.repo_path(a.hf_dir)),
        "transformers_class": type(model).__name__,
        "layer_types": getattr(cfg, "layer_types", None),
        "sliding_window": getattr(cfg, "sliding_window", None),
        "rope_parameters": rope if isinstance(rope, (dict, type(None))) else str(rope),
        "text_chars": len(text), "tokens": len(ids_cpp),
        "ids_llama_cpp_equal_shrink": same_ids,
        "first_id_mismatch": None if same_ids else next(
            (i for i, (x, y) in enumerate(zip(ids_shrink, ids_cpp)) if x != y), min(len(ids_shrink), len(ids_cpp))),
        "vocab": int(ls.shape[1]),
        "logits_rms": rms,
        "all": part(0),
        "after_512": part(512),
        "max_abs_over_rms": float(d.max()) / rms,
        "shrink_seconds": shrink_seconds, "transformers_seconds": hf_seconds,
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
    }
    out["ok"] = bool(same_ids and out["all"]["top1_agreement"] == 1.0 and out["all"]["max_abs"] < a.atol)
    C.write_result(out, a.out)
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
