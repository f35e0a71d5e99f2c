"""Write tests/fixtures/gguf_quant/ggml_quantize_iq_rows.safetensors: the bytes llama.cpp's
`ggml_quantize_chunk` (llama-cpp-python 0.3.36's vendored tree, libggml-base.so) makes of the rows
in llama_quantize_rows.safetensors (`input`, with and without its `imatrix`) for the i-quants that
need a lattice search (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M) and the ternary
TQ1_0/TQ2_0, and of a few synthetic rows with edge cases
(`edge`, `edge_imatrix`: zero sub-blocks, tiny values, all-zero rows, zero importances), so that
CI (no llama.cpp there) checks shrink's writers byte for byte.

    L=/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp B=/work/llamacpp/build/bin
    gcc -O2 -o out/ggml_quantize_rows tools/reference/ggml_quantize_rows.c -I$L/ggml/include -L$B -lggml-base -Wl,-rpath,$B
    .venv-ref/bin/python tools/reference/ggml_quantize_fixture.py [--bin out/ggml_quantize_rows]

It first re-quantizes `input` to the types llama_quantize_rows.safetensors already holds (made by
llama-quantize, another build) and checks the bytes agree, so both fixtures come from the same
quantizers. IQ2_XXS, IQ2_XS and IQ1_S need an importance matrix in llama.cpp
(`ggml_quantize_requires_imatrix`), so they have no `.plain` tensors.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TYPES = ["IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0"]
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS", "IQ1_S"}
CHECK = ["Q4_0", "Q2_K", "Q3_K", "Q4_K", "Q6_K", "IQ4_XS"]


def edge_rows():
    rng = np.random.default_rng(14)
    cols = 512
    r = [rng.normal(0, 0.02, cols)]
    a = rng.normal(0, 0.02, cols)
    a[64:96] = 0  # a zero 32-block (IQ3_S then packs the later blocks' qs/signs one block early)
    a[400:416] = 0  # a zero 16-block (IQ2)
    r.append(a)
    r.append(np.zeros(cols))
    b = rng.laplace(0, 0.01, cols)
    b[32:64] = rng.normal(0, 1e-10, 32)  # below GROUP_MAX_EPS_IQ3_XXS, not zero
    b[300] = 0.5  # an outlier
    r.append(b)
    r.append(np.abs(rng.normal(0, 0.05, cols)))  # all positive
    c = rng.normal(0, 1.0, cols)
    c[256:] *= 1e-3
    r.append(c)
    x = np.asarray(r, dtype=np.float32)
    im = rng.gamma(0.5, 1.0, cols).astype(np.float32)
    im[100:140] = 0  # zero importance
    return x, im


def run(binary, tmp, ty, x, im):
    rows, cols = x.shape
    xp = os.path.join(tmp, "x.f32")
    x.astype("<f4").tofile(xp)
    if im is None:
        imp = "-"
    else:
        imp = os.path.join(tmp, "im.f32")
        im.astype("<f4").tofile(imp)
    out = os.path.join(tmp, "out.bin")
    subprocess.run([binary, ty, str(rows), str(cols), xp, imp, out], check=True)
    return np.fromfile(out, dtype=np.uint8).reshape(rows, -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="out/ggml_quantize_rows")
    a = ap.parse_args()
    from safetensors.numpy import load_file, save_file

    binary = C.repo_path(a.bin)
    dst = os.path.join(C.REPO_ROOT, "tests", "fixtures", "gguf_quant")
    ref = load_file(os.path.join(dst, "llama_quantize_rows.safetensors"))
    x, im = ref["input"], ref["imatrix"]
    ex, eim = edge_rows()
    out = {"edge": ex, "edge_imatrix": eim}
    with tempfile.TemporaryDirectory() as tmp:
        for ty in CHECK:
            for mode, w in [("plain", None), ("imatrix", im)]:
                got = run(binary, tmp, ty, x, w)
                assert np.array_equal(got, ref[f"{ty}.{mode}"]), f"{ty} {mode}: ggml_quantize_chunk != llama-quantize"
        for ty in TYPES:
            for mode, w, ew in [("plain", None, None), ("imatrix", im, eim)]:
                if w is None and ty in NEEDS_IMATRIX:
                    continue
                out[f"{ty}.{mode}"] = np.ascontiguousarray(run(binary, tmp, ty, x, w))
                out[f"{ty}.edge.{mode}"] = np.ascontiguousarray(run(binary, tmp, ty, ex, ew))
    save_file(out, os.path.join(dst, "ggml_quantize_iq_rows.safetensors"),
              metadata={"source": "input/imatrix of llama_quantize_rows.safetensors; edge rows from "
                                  "tools/reference/ggml_quantize_fixture.py (numpy seed 14)",
                        "quantizer": "ggml_quantize_chunk of libggml-base (llama-cpp-python 0.3.36 vendored llama.cpp)"})
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
