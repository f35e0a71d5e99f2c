"""Independent check of `shrink compress --merge-layers` (LaCo, issue 13): transformers runs the
dense model with RDSC merges applied in torch, theta*_l = theta_l + sum_k (theta_l+k - theta_l) on
every parameter of the block (linears and norms), layers l+1..l+m deleted from
`model.model.layers`, and reports the GPTQ-protocol perplexity (perplexity.py) on the first
--max-tokens tokens of a text; compare with `shrink eval --max-tokens N` of the shrink output.
`--merges` takes the report's layer_merge.merges: merges separated by ';', each a comma-separated
list of layers named by their first original layer, consecutive in the model as it stands after
the merges before it (recipe.toml's merge_layers).

    .venv-ref/bin/python tools/reference/layer_merge_ref.py DENSE_HF_DIR --merges 5,6,7 \
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
    ap.add_argument("--merges", required=True, help="e.g. '22,23,24;21,22,25'")
    ap.add_argument("--text", default="data/eval.txt")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--out")
    a = ap.parse_args()
    C.setup_torch()
    import torch

    model, _ = C.load_hf_dir(a.hf_dir)
    merges = [[int(x) for x in m.split(",")] for m in a.merges.split(";") if m]
    layers = list(model.model.layers)
    heads = list(range(len(layers)))  # first original layer of each current layer
    with torch.no_grad():
        for m in merges:
            base = heads.index(m[0])
            assert heads[base:base + len(m)] == m, (m, heads)
            group = layers[base:base + len(m)]
            params = [dict(l.named_parameters()) for l in group]
            for name, p in params[0].items():
                theta_l = p.detach().double().clone()
                merged = theta_l.clone()
                for q in params[1:]:
                    merged += q[name].detach().double() - theta_l
                p.copy_(merged.to(p.dtype))
            del layers[base + 1:base + len(m)]
            del heads[base + 1:base + len(m)]
    model.model.layers = torch.nn.ModuleList(layers)
    model.config.num_hidden_layers = len(layers)
    for i, l in enumerate(layers):
        if hasattr(l.self_attn, "layer_idx"):
            l.self_attn.layer_idx = i
    r = C.model_perplexity(model, C.repo_path(a.hf_dir), a.text, a.max_tokens)
    r["merges"] = merges
    r["layers"] = len(layers)
    C.write_result(r, a.out)


if __name__ == "__main__":
    main()
