"""Reference outputs of llm-compressor's own pruning kernels on one random layer (issue 4).

Runs llmcompressor.modifiers.pruning.{sparsegpt.sgpt_sparsify, wanda.wanda_sparsify} (0.14) on a
fixed random weight W [48, 128] and correlated inputs X [512, 128], with llm-compressor's own
Hessian / row-norm accumulation, for 50% unstructured and 2:4; writes W, X and every result to
tests/fixtures/reference/prune_layer.safetensors. The Rust test crates/shrink-methods/tests/
reference_prune.rs runs shrink's SparseGPT and Wanda on the same W and X and compares.

    .venv-llmc/bin/python tools/reference/prune_layer.py
"""
import os

import torch
from safetensors.torch import save_file
from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify as sg
from llmcompressor.modifiers.pruning.wanda import wanda_sparsify as wd

torch.manual_seed(0)
d_out, d_in, rows = 48, 128, 512
W = (torch.randn(d_out, d_in) * 0.05).float()
A = torch.eye(d_in) + 0.5 * torch.randn(d_in, d_in) / d_in**0.5
X = (torch.randn(rows, d_in) @ A * torch.exp(torch.rand(d_in) * 2.0)).float()

lin = torch.nn.Linear(d_in, d_out, bias=False)
lin.weight.data = W.clone()

# llm-compressor feeds the inputs one calibration sample ([1, seq, d_in]) at a time.
H = sg.make_empty_hessian(lin)
S = wd.make_empty_row_scalars(lin)
n_h = n_s = 0
for chunk in X.reshape(8, 64, d_in):
    H, n_h = sg.accumulate_hessian(chunk.unsqueeze(0), lin, H, n_h)
    S, n_s = wd.accumulate_row_scalars(chunk.unsqueeze(0), lin, S, n_s)

out = {"W": W.contiguous(), "X": X.contiguous(), "H": H.clone().contiguous(), "S": S.clone().contiguous()}
for name, (n, m) in {"50": (0, 0), "2of4": (2, 4)}.items():
    _loss, w = sg.sparsify_weight(
        lin, {lin: H.clone()}, sparsity=0.5, prune_n=n, prune_m=m, block_size=128,
        dampening_frac=0.01, preserve_sparsity_mask=False)
    out[f"sparsegpt_{name}"] = w.contiguous()
    out[f"wanda_{name}"] = wd.sparsify_weight(
        lin, {lin: S.clone()}, sparsity=0.5, prune_n=n, prune_m=m).contiguous()
path = os.path.join(os.path.dirname(__file__), "../../tests/fixtures/reference/prune_layer.safetensors")
save_file(out, path, metadata={"tool": "llmcompressor 0.14 sgpt_sparsify/wanda_sparsify", "seed": "0"})
for k, v in out.items():
    print(k, tuple(v.shape), f"zeros {float((v == 0).float().mean()):.4f}")
