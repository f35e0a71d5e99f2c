"""File sizes and bits per weight of exported models (the table in results/export/README.md).

For each artifact: bytes of its weights file(s), the number of weights they stand for (packed
compressed-tensors / GPTQ tensors count the weights they encode; their scales, zero points, shapes
and group indices count as overhead), bits per weight over all tensors and over the decoder
linears only (the part a quantizer compresses).

    .venv-ref/bin/python tools/reference/export_sizes.py --out results/export/sizes.json
"""

import argparse
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

LIN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
       "attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_gate.", "ffn_up.", "ffn_down.")
AUX = (".weight_scale", ".weight_zero_point", ".weight_shape", ".weight_g_idx", ".qzeros", ".scales", ".g_idx")
DT = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "I8": 1}


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def safetensors_stats(d):
    path = os.path.join(d, "model.safetensors")
    h = st_header(path)
    with open(path, "rb") as f:
        f.seek(8 + struct.unpack("<Q", open(path, "rb").read(8))[0])
        data_start = f.tell()
    tot_b = tot_n = lin_b = lin_n = 0
    for k, v in h.items():
        n = 1
        for s in v["shape"]:
            n *= s
        b = v["data_offsets"][1] - v["data_offsets"][0]
        if k.endswith(".weight_packed"):
            base = k[: -len(".weight_packed")]
            sh = h[base + ".weight_shape"]
            with open(path, "rb") as f:
                f.seek(data_start + sh["data_offsets"][0])
                raw = f.read(sh["data_offsets"][1] - sh["data_offsets"][0])
            dims = struct.unpack("<2q", raw) if len(raw) == 16 else struct.unpack("<2i", raw)
            n = dims[0] * dims[1]
        elif k.endswith(".qweight"):
            base = k[: -len(".qweight")]
            n = h[base + ".g_idx"]["shape"][0] * v["shape"][1]
        elif k.endswith(AUX):
            n = 0
        tot_b += b
        tot_n += n
        if any(l in k for l in LIN):
            lin_b += b
            lin_n += n
    return os.path.getsize(path), tot_b, tot_n, lin_b, lin_n


def gguf_stats(path):
    import gguf

    r = gguf.GGUFReader(path)
    tot_b = tot_n = lin_b = lin_n = 0
    types = {}
    for t in r.tensors:
        b, n = int(t.n_bytes), int(t.n_elements)
        tot_b += b
        tot_n += n
        if any(l in t.name for l in LIN):
            lin_b += b
            lin_n += n
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return os.path.getsize(path), tot_b, tot_n, lin_b, lin_n, types


ARTIFACTS = [
    ("original GGUF (Q4_1, Q8_0 embedding)", "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("dense f32 (shrink convert)", "out/smollm2-hf"),
    ("compressed-tensors W4 g64 (shrink export)", "out/export/ct-w4g64"),
    ("compressed-tensors W4 g64 (llm-compressor, for reference)", "out/peer/llmc-gptq-w4g64/compressed"),
    ("GPTQ W4 g64, f16 scales (shrink export)", "out/export/gptq-w4g64"),
    ("GGUF Q4_1, GPTQ W4 g32 codes carried over", "out/export/gptq-w4g32-q41.gguf"),
    ("GGUF Q8_0", "out/export/lq/sh-Q8_0-plain.gguf"),
    ("GGUF Q6_K (rows of 576 fall back to Q8_0)", "out/export/lq/sh-Q6_K-plain.gguf"),
    ("GGUF Q5_K (rows of 576 fall back to Q5_1)", "out/export/lq/sh-Q5_K-plain.gguf"),
    ("GGUF Q5_1", "out/export/lq/sh-Q5_1-plain.gguf"),
    ("GGUF Q5_0", "out/export/lq/sh-Q5_0-plain.gguf"),
    ("GGUF Q4_K (rows of 576 fall back to Q5_0)", "out/export/orig-q4k.gguf"),
    ("GGUF Q4_K + imatrix", "out/export/orig-q4k-imat.gguf"),
    ("GGUF Q4_1", "out/export/lq/sh-Q4_1-plain.gguf"),
    ("GGUF Q4_0", "out/export/lq/sh-Q4_0-plain.gguf"),
    ("50% sparse, dense f32 (compressed-tensors dir)", "out/export/ct-sparse50"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = []
    for label, p in ARTIFACTS:
        path = C.repo_path(p)
        if not os.path.exists(path):
            continue
        if path.endswith(".gguf"):
            size, tb, tn, lb, ln, types = gguf_stats(path)
        else:
            size, tb, tn, lb, ln = safetensors_stats(path)
            types = None
        rows.append({"artifact": label, "path": p, "file_bytes": size, "tensor_bytes": tb, "weights": tn,
                     "bits_per_weight": 8 * tb / tn, "linear_bytes": lb, "linear_weights": ln,
                     "linear_bits_per_weight": 8 * lb / ln, "linear_types": types})
    base = next((r for r in rows if r["path"] == "out/smollm2-hf"), None)
    print(f"| artifact | file MB | bits/weight (all) | bits/weight (decoder linears) | size vs f32 |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        rel = f"{r['file_bytes'] / base['file_bytes']:.3f}" if base else "-"
        print(f"| {r['artifact']} | {r['file_bytes'] / 1e6:.1f} | {r['bits_per_weight']:.3f} | {r['linear_bits_per_weight']:.3f} | {rel} |")
    if a.out:
        open(C.repo_path(a.out), "w").write(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
