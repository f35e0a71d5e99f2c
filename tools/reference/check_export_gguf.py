"""Check a GGUF file written by `shrink export --format gguf` with the `gguf` package (gguf-py,
llama.cpp's own Python reader).

Reads every tensor with `gguf.GGUFReader`, dequantizes it with `gguf.quants.dequantize` and compares
it with shrink's reading of the same file: the f32 safetensors written by
`shrink convert FILE.gguf --out HF_DIR` (Hugging Face names and layout; the attn_q / attn_k rows
are un-permuted here the way convert does). Also checks the metadata llama.cpp needs.

With --ref (a `shrink compress` directory whose codes were carried over) it also reports how far the
GGUF values are from shrink's f32 dequantized weights (the f16 rounding of d and m in the block).

Run:
    shrink convert out/export/x.gguf --out out/export/x-hf
    .venv-ref/bin/python tools/reference/check_export_gguf.py out/export/x.gguf --shrink-hf out/export/x-hf
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

LIN = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(g):
    if g == "token_embd.weight":
        return "model.embed_tokens.weight"
    if g == "output_norm.weight":
        return "model.norm.weight"
    if g == "output.weight":
        return "lm_head.weight"
    _, i, kind, suf = g.split(".")
    if kind == "attn_norm":
        return f"model.layers.{i}.input_layernorm.weight"
    if kind == "ffn_norm":
        return f"model.layers.{i}.post_attention_layernorm.weight"
    return f"model.layers.{i}.{LIN[kind]}.{suf}"


def unpermute(w, n_head):
    rows, cols = w.shape
    d = rows // n_head // 2
    # GGUF row h*2d + 2i + j  ->  HF row h*2d + j*d + i
    return w.reshape(n_head, d, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--shrink-hf", required=True, help="`shrink convert` of the same GGUF")
    ap.add_argument("--ref", default=None, help="shrink compress directory (carried codes)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import gguf
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    r = gguf.GGUFReader(C.repo_path(a.gguf))
    kv = {f.name: f for f in r.fields.values()}

    def val(k):
        f = kv[k]
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]

    arch = val("general.architecture")
    nh, nkv = int(val(f"{arch}.attention.head_count")), int(val(f"{arch}.attention.head_count_kv"))
    shr = load_file(os.path.join(C.repo_path(a.shrink_hf), "model.safetensors"))
    dense = load_file(os.path.join(C.repo_path(a.ref), "model.safetensors")) if a.ref else None
    types, exact, worst, n = {}, 0, 0.0, 0
    ref_worst, ref_rel = 0.0, 0.0
    for t in r.tensors:
        name = t.name
        ty = t.tensor_type.name
        types[ty] = types.get(ty, 0) + 1
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        shape = [int(x) for x in reversed(t.shape.tolist())]
        w = w.reshape(shape)
        if w.ndim == 2 and arch == "llama":
            if ".attn_q." in name:
                w = unpermute(w, nh)
            elif ".attn_k." in name:
                w = unpermute(w, nkv)
        hn = hf_name(name)
        s = shr[hn]
        n += 1
        d = float(np.abs(w - s).max())
        worst = max(worst, d)
        exact += int(np.array_equal(w, s))
        if dense is not None and hn in dense and w.ndim == 2 and ".layers." in hn:
            dd = float(np.abs(w - dense[hn]).max())
            ref_worst = max(ref_worst, dd)
            ref_rel = max(ref_rel, dd / max(float(np.abs(dense[hn]).max()), 1e-30))
    keys = ["general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre", "general.file_type",
            "general.quantization_version", "tokenizer.chat_template"]
    res = {
        "gguf": C.rel(C.repo_path(a.gguf)),
        "gguf_py_tensors": n,
        "types": types,
        "vs_shrink": {"bit_identical": exact, "max_abs_diff": worst},
        "metadata": {k: (str(val(k))[:60] if k in kv else None) for k in keys},
        "tokens": len(kv["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in kv else 0,
    }
    if dense is not None:
        res["vs_compress_f32"] = {"max_abs_diff": ref_worst, "max_rel_to_tensor_amax": ref_rel}
    ok = exact == n and n > 0
    res["ok"] = ok
    C.write_result(res, a.out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
