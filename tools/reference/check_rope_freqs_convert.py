"""transformers loads a `shrink convert` directory made from a GGUF with a `rope_freqs` tensor.

The tiny Llama fixture's GGUF (tests/fixtures/tiny/llama/model.f32.gguf, written by llama.cpp's
converter from a Llama with llama3 rope scaling, so it holds `rope_freqs.weight`) is converted
with `shrink convert`; config.json then states the factors as transformers' `longrope` with
short_factor == long_factor and attention_factor 1. This script loads that directory with
transformers and compares its logits with the fixture's reference logits (transformers on the
original llama3-scaled directory).

Run (`cargo build --release` first):
    .venv-ref/bin/python tools/reference/check_rope_freqs_convert.py
"""

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main():
    torch = C.setup_torch()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    fx = os.path.join(C.FIXTURES_TINY, "llama")
    out = os.path.join(tempfile.mkdtemp(dir=os.path.join(C.REPO_ROOT, "out")), "conv")
    subprocess.run([os.path.join(C.REPO_ROOT, "target/release/shrink"), "convert", "-q",
                    os.path.join(fx, "model.f32.gguf"), "--out", out], check=True)
    ref = load_file(os.path.join(fx, "reference.safetensors"))
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        lt = m(ref["input_ids"]).logits
    d = (lt - ref["logits"]).abs().max().item()
    top = (lt.argmax(-1) == ref["logits"].argmax(-1)).float().mean().item()
    res = {"rope_scaling": json.load(open(os.path.join(out, "config.json")))["rope_scaling"],
           "max_abs_logit_diff": d, "top1_agreement": top, "ok": d < 1e-4 and top == 1.0}
    print(json.dumps(res, indent=1))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
