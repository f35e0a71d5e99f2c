"""Every quantized tensor of a GGUF file shrink wrote against llama.cpp's ggml_quantize_chunk on the
same f32 weights (a `shrink export --type F32` file of the same model), byte for byte; for types
llama-quantize cannot be asked for without an imatrix (IQ2_S) or at all on this machine.

    L=/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp B=/work/llamacpp/build/bin
    gcc -O2 -o out/ggml_quantize_rows tools/reference/ggml_quantize_rows.c -I$L/ggml/include -L$B -lggml-base -Wl,-rpath,$B
    S=target/release/shrink M=models/SmolLM2-135M-Instruct.Q4_1.gguf
    $S export --model $M --format gguf --type F32 --out out/e2e/f32.gguf
    $S export --model $M --format gguf --type IQ3_S --out out/e2e/IQ3_S.gguf [--imatrix IM.gguf]
    .venv-ref/bin/python tools/reference/compare_ggml_quantize_gguf.py out/e2e/f32.gguf out/e2e/IQ3_S.gguf [--imatrix IM.gguf]

The imatrix is the GGUF file `shrink export --imatrix-out` writes (`<tensor>.in_sum2`, `.counts`).
Prints one JSON line: tensors and bytes compared per type, and the tensors that differ.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("f32")
    ap.add_argument("quantized")
    ap.add_argument("--imatrix")
    ap.add_argument("--bin", default="out/ggml_quantize_rows")
    a = ap.parse_args()
    import gguf

    ref = {t.name: t for t in gguf.GGUFReader(C.repo_path(a.f32)).tensors}
    im = {}
    if a.imatrix:
        for t in gguf.GGUFReader(C.repo_path(a.imatrix)).tensors:
            im[t.name] = np.asarray(t.data, dtype=np.float32).ravel()
    per_type, differ = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for t in gguf.GGUFReader(C.repo_path(a.quantized)).tensors:
            ty = t.tensor_type.name
            if ty in ("F32", "F16", "BF16"):
                continue
            x = np.asarray(ref[t.name].data, dtype=np.float32)
            cols = x.shape[-1]
            x = x.reshape(-1, cols)
            xp, op = os.path.join(tmp, "x.f32"), os.path.join(tmp, "out.bin")
            x.astype("<f4").tofile(xp)
            imp = "-"
            if t.name + ".in_sum2" in im and ty != "Q8_0":
                w = im[t.name + ".in_sum2"] / im[t.name + ".counts"][0]
                imp = os.path.join(tmp, "im.f32")
                w.astype("<f4").tofile(imp)
            subprocess.run([C.repo_path(a.bin), ty, str(x.shape[0]), str(cols), xp, imp, op],
                           check=True, stderr=subprocess.DEVNULL)
            want = np.fromfile(op, dtype=np.uint8)
            got = np.asarray(t.data).view(np.uint8).ravel()
            s = per_type.setdefault(ty, {"tensors": 0, "bytes": 0, "differing": 0})
            s["tensors"] += 1
            s["bytes"] += int(got.size)
            if got.size != want.size or not np.array_equal(got, want):
                s["differing"] += 1
                differ.append(t.name)
    print(json.dumps({"file": a.quantized, "imatrix": a.imatrix, "per_type": per_type,
                      "all_byte_identical": not differ, "differing": differ[:20]}))


if __name__ == "__main__":
    main()
