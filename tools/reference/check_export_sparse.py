"""Check a sparse model written by `shrink export --format compressed-tensors` (dense, zeros stored,
as llm-compressor 0.14 saves pruned models; the measured sparsity under `shrink_sparsity` in
config.json): transformers loads the directory and every weight equals the source directory's
(zeros included); reports the measured sparsity and whether every group of 4 has 2 zeros.

With --make-24 SRC OUT it instead writes a 2:4 magnitude-pruned copy of the HF directory SRC (the
two smallest |w| of every 4 consecutive input weights of every decoder linear set to 0), to export.

Run (.venv-llmc has compressed-tensors and transformers):
    .venv-llmc/bin/python tools/reference/check_export_sparse.py out/export/ct-sparse50 --ref out/peer/llmc-sparsegpt-50/compressed
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

LIN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_24(src, out):
    import torch
    from safetensors.torch import load_file, save_file

    os.makedirs(out, exist_ok=True)
    sd = load_file(os.path.join(src, "model.safetensors"))
    for k, w in sd.items():
        if k.startswith("model.layers.") and any(l in k for l in LIN) and k.endswith(".weight"):
            g = w.reshape(-1, 4)
            idx = g.abs().argsort(dim=1)[:, :2]
            g = g.clone()
            g.scatter_(1, idx, 0.0)
            sd[k] = g.reshape(w.shape).contiguous()
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    for f in os.listdir(src):
        if f.endswith(".json") and f != "model.safetensors.index.json":
            shutil.copy(os.path.join(src, f), os.path.join(out, f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--ref", default=None)
    ap.add_argument("--make-24", default=None, metavar="OUT")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.make_24:
        make_24(C.repo_path(a.dir), C.repo_path(a.make_24))
        return
    torch = C.setup_torch()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    d = C.repo_path(a.dir)
    cfg = json.load(open(os.path.join(d, "config.json")))
    res = {"dir": C.rel(d), "shrink_sparsity": cfg.get("shrink_sparsity"), "quantization_config": cfg.get("quantization_config")}
    import compressed_tensors
    import transformers

    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    res["transformers"] = transformers.__version__
    res["compressed_tensors"] = compressed_tensors.__version__
    res["transformers_class"] = type(m).__name__
    q = getattr(m, "hf_quantizer", None)
    res["hf_quantizer"] = type(q).__name__ if q is not None else None
    sd = m.state_dict()
    ref = load_file(os.path.join(C.repo_path(a.ref), "model.safetensors")) if a.ref else None
    zeros = total = 0
    two_four = True
    same = n = 0
    for k, w in sd.items():
        if k.startswith("model.layers.") and any(l in k for l in LIN) and k.endswith(".weight"):
            zeros += int((w == 0).sum())
            total += w.numel()
            two_four = two_four and bool(((w.reshape(-1, 4) == 0).sum(1) >= 2).all())
            if ref is not None:
                n += 1
                same += int(torch.equal(w, ref[k]))
    res["linear_sparsity"] = zeros / total
    res["two_four"] = two_four
    if ref is not None:
        res["weights_bit_identical_to_ref"] = f"{same}/{n}"
    res["ok"] = ref is None or same == n
    C.write_result(res, a.out)


if __name__ == "__main__":
    main()
