"""Independent check of `shrink compress --drop-layers` (issue 13): transformers runs the dense
model with the given decoder layers deleted from `model.model.layers`, and reports the
GPTQ-protocol perplexity (perplexity.py) on the first --max-tokens tokens of a text; compare with
`shrink eval --max-tokens N` of the shrink output that drops the same layers.

    .venv-llmc/bin/python tools/reference/layer_drop_ref.py DENSE_HF_DIR --drop 27,28 \
        --text data/eval.txt --max-tokens 2048
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir", help="the dense model (e.g. `shrink convert` of the GGUF)")
    ap.add_argument("--drop", required=True, help="comma-separated layers (0-based)")
    ap.add_argument("--text", default="data/eval.txt")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--out")
    a = ap.parse_args()
    C.setup_torch()
    import torch

    model, _ = C.load_hf_dir(a.hf_dir)
    drop = sorted({int(x) for x in a.drop.split(",") if x})
    layers = model.model.layers
    kept = [l for i, l in enumerate(layers) if i not in drop]
    model.model.layers = torch.nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    for i, l in enumerate(kept):
        if hasattr(l.self_attn, "layer_idx"):
            l.self_attn.layer_idx = i
    r = C.model_perplexity(model, C.repo_path(a.hf_dir), a.text, a.max_tokens)
    r["dropped"] = drop
    r["layers"] = len(kept)
    C.write_result(r, a.out)


if __name__ == "__main__":
    main()
