"""Compare two GGUF files tensor by tensor: same type, same raw bytes (e.g. shrink's quantizers
against llama-quantize on the same F32 input). For tensors that differ: the fraction of blocks
that differ and the largest difference of the dequantized values (gguf-py).

Run:
    .venv-ref/bin/python tools/reference/compare_gguf_bytes.py A.gguf B.gguf [--out JSON]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--out", default=None)
    ap.add_argument("--label", default=None)
    args = ap.parse_args()
    import gguf
    from gguf.quants import dequantize

    A = {t.name: t for t in gguf.GGUFReader(C.repo_path(args.a)).tensors}
    B = {t.name: t for t in gguf.GGUFReader(C.repo_path(args.b)).tensors}
    per_type = {}
    missing = sorted(set(A) ^ set(B))
    type_mismatch = []
    for name in sorted(set(A) & set(B)):
        ta, tb = A[name], B[name]
        ty = ta.tensor_type.name
        e = per_type.setdefault(ty, {"tensors": 0, "byte_identical": 0, "blocks": 0, "blocks_differing": 0, "max_abs_diff": 0.0})
        if ta.tensor_type != tb.tensor_type:
            type_mismatch.append([name, ty, tb.tensor_type.name])
            continue
        e["tensors"] += 1
        da, db = np.asarray(ta.data).view(np.uint8).ravel(), np.asarray(tb.data).view(np.uint8).ravel()
        bs, ts = gguf.GGML_QUANT_SIZES[ta.tensor_type]
        nb = da.size // ts
        e["blocks"] += nb
        if np.array_equal(da, db):
            e["byte_identical"] += 1
            continue
        diff_blocks = (da.reshape(nb, ts) != db.reshape(nb, ts)).any(axis=1).sum()
        e["blocks_differing"] += int(diff_blocks)
        wa = dequantize(ta.data, ta.tensor_type).astype(np.float32)
        wb = dequantize(tb.data, tb.tensor_type).astype(np.float32)
        e["max_abs_diff"] = max(e["max_abs_diff"], float(np.abs(wa - wb).max()))
    res = {
        "label": args.label,
        "a": C.rel(C.repo_path(args.a)),
        "b": C.rel(C.repo_path(args.b)),
        "per_type": per_type,
        "names_only_in_one": missing,
        "type_mismatch": type_mismatch,
        "all_byte_identical": not missing and not type_mismatch and all(v["tensors"] == v["byte_identical"] for v in per_type.values()),
    }
    C.write_result(res, args.out)


if __name__ == "__main__":
    main()
