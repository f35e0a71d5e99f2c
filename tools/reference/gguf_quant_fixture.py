"""Write tests/fixtures/gguf_quant/llama_quantize_rows.safetensors: rows of a real weight and the
bytes llama-quantize (llama.cpp, vendored in llama-cpp-python 0.3.36) made of them, per type, without
and with an importance matrix, so that CI (no llama.cpp there) checks shrink's quantizers byte for
byte. Inputs come from tools/reference/compare_llama_quantize.sh's files in out/export/lq.

    .venv-ref/bin/python tools/reference/gguf_quant_fixture.py [--rows 8] [--tensor blk.0.ffn_down.weight]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tensor", default="blk.0.ffn_down.weight")
    ap.add_argument("--lq", default="out/export/lq")
    ap.add_argument("--imatrix", default="out/export/imatrix-calib64x512.gguf")
    a = ap.parse_args()
    import gguf
    from safetensors.numpy import save_file

    lq = C.repo_path(a.lq)

    def tensor(path, name):
        for t in gguf.GGUFReader(path).tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    x = np.asarray(tensor(os.path.join(lq, "orig-f32.gguf"), a.tensor).data, dtype=np.float32)[: a.rows]
    im_r = gguf.GGUFReader(C.repo_path(a.imatrix))
    sums = counts = None
    for t in im_r.tensors:
        if t.name == a.tensor + ".in_sum2":
            sums = np.asarray(t.data, dtype=np.float32).ravel()
        if t.name == a.tensor + ".counts":
            counts = np.asarray(t.data, dtype=np.float32).ravel()
    out = {"input": np.ascontiguousarray(x), "imatrix": (sums / counts[0]).astype(np.float32)}
    for ty in TYPES:
        for mode in ["plain", "imatrix"]:
            t = tensor(os.path.join(lq, f"lq-{ty}-{mode}.gguf"), a.tensor)
            assert t.tensor_type.name == ty, (ty, t.tensor_type.name)
            b = np.asarray(t.data).view(np.uint8).reshape(t.data.shape[0], -1)[: a.rows]
            out[f"{ty}.{mode}"] = np.ascontiguousarray(b)
    dst = os.path.join(C.REPO_ROOT, "tests", "fixtures", "gguf_quant")
    os.makedirs(dst, exist_ok=True)
    save_file(out, os.path.join(dst, "llama_quantize_rows.safetensors"),
              metadata={"source": f"{a.tensor} of models/SmolLM2-135M-Instruct.Q4_1.gguf (dequantized), first {a.rows} rows",
                        "quantizer": "llama-quantize --pure (llama-cpp-python 0.3.36 vendored llama.cpp)",
                        "imatrix": "shrink export --imatrix-calib data/calib.txt --imatrix-nsamples 64 (mean squared input per column)"})
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
