"""STAND-IN calibration token file for the peer scripts (tools/peer/llmcompressor_*.py).

shrink itself will write the real calibration tokens (a safetensors file with one tensor
`input_ids`, dtype I64, shape [nsamples, seqlen]); until that command exists, this helper makes a
file with the same layout so the peer scripts can be tested. It is NOT shrink's sampling rule; the
peer comparison must be re-run on shrink's own file once it exists.

What it does: tokenize the whole calibration text once with the model's tokenizer
(`tokenizer(text)`, the default call; no BOS for SmolLM2), then take `--nsamples` windows of
`--seqlen` consecutive tokens at random start offsets drawn with numpy.random.default_rng(seed)
(starts uniform in [0, len - seqlen], the GPTQ reference's "random windows of the calibration
text" scheme, except that GPTQ samples per document).

    .venv-llmc/bin/python tools/peer/make_calib_ids.py \
        --tokenizer out/smollm2-hf --text data/calib.txt \
        --nsamples 64 --seqlen 512 --seed 0 --out out/calib_test_64x512.safetensors

Runs with either .venv-llmc or .venv-ref (needs transformers, numpy, safetensors).
"""

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="HF directory with tokenizer.json/tokenizer_config.json")
    ap.add_argument("--text", required=True, help="calibration text file (data/calib.txt)")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output .safetensors")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safetensors.numpy import save_file
    from transformers import AutoTokenizer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    with open(args.text, encoding="utf-8", newline="") as f:
        text = f.read()
    ids = np.asarray(tok(text)["input_ids"], dtype=np.int64)
    n = len(ids)
    if n < args.seqlen + 1:
        sys.exit(f"only {n} tokens, need more than seqlen={args.seqlen}")
    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, n - args.seqlen + 1, size=args.nsamples)
    windows = np.stack([ids[s : s + args.seqlen] for s in starts]).astype(np.int64)
    meta = {
        "stand_in": "tools/peer/make_calib_ids.py (not shrink's sampler)",
        "text": args.text,
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "text_tokens": str(n),
        "seed": str(args.seed),
        "rule": "tokenizer(text) once; starts = numpy default_rng(seed).integers(0, n-seqlen+1, nsamples)",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file({"input_ids": windows}, args.out, metadata=meta)
    print(json.dumps({"out": args.out, "shape": list(windows.shape), "dtype": "int64", "text_tokens": n,
                      "first_starts": starts[:8].tolist(), "seconds": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main()
