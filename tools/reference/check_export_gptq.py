"""Check a GPTQ checkpoint written by `shrink export --format gptq` with the reference packing rules.

Unpacks every `qweight` / `qzeros` / `scales` / `g_idx` the way AutoGPTQ's dequantization does
(`auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py` and GPTQModel's torch kernel):

    weight = (qweight[c // (32/b), r] >> (b * (c % (32/b)))) & (2^b - 1)
    zero   = ((qzeros[g, r // (32/b)] >> (b * (r % (32/b)))) & (2^b - 1)) + 1     # "gptq" (v1)
    W[r, c] = scales[g, r] * (weight - zero),   g = g_idx[c]

in float32 (scales widened from their stored dtype), and compares with shrink's dequantized weights:

  vs_codes   scale * (code - zero) from REF/quantized.safetensors with the scale rounded to the
             checkpoint's scale dtype (f16 by default): must be bit-identical;
  vs_dense   REF/model.safetensors (shrink's f32 dequantized weights): bit-identical with
             --scale-dtype f32 exports; with f16 scales the difference is the f16 rounding.

With --load it also loads the directory with transformers' `AutoModelForCausalLM.from_pretrained`
(GPTQ needs optimum and gptqmodel: run it with a Python that has them, e.g. the venv made by
tools/reference/setup_gptq_venv.sh) and compares the kernel's own `dequantize_weight()` with
shrink's values rounded to the kernel's dtype; with --ppl it computes perplexity.py's GPTQ-protocol
perplexity of the loaded model.

Run:
    .venv-ref/bin/python tools/reference/check_export_gptq.py out/export/gptq-w4g64 \
        --ref out/gptq-w4g64-static-llmcids --load
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def unpack(qweight, qzeros, scales, g_idx, bits, v1=True):
    per = 32 // bits
    maxq = (1 << bits) - 1
    qw = qweight.view(np.uint32)
    qz = qzeros.view(np.uint32)
    d_in = qw.shape[0] * per
    d_out = qw.shape[1]
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    w = ((qw[:, None, :] >> shifts[None, :, None]) & maxq).reshape(d_in, d_out)  # [d_in, d_out]
    z = ((qz[:, :, None] >> shifts[None, None, :]) & maxq).reshape(qz.shape[0], d_out)  # [ng, d_out]
    if v1:
        z = z + 1
    s = scales.astype(np.float32)
    g = g_idx.astype(np.int64)
    W = s[g, :] * (w.astype(np.float32) - z[g, :].astype(np.float32))  # [d_in, d_out]
    return W.T.copy(), w.T.copy(), z


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gptq_dir")
    ap.add_argument("--ref", required=True)
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--ppl", action="store_true")
    ap.add_argument("--text", default=C.DEFAULT_EVAL)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from safetensors.numpy import load_file

    gd, rd = C.repo_path(a.gptq_dir), C.repo_path(a.ref)
    qc = json.load(open(os.path.join(gd, "config.json")))["quantization_config"]
    bits, v1 = qc["bits"], qc.get("checkpoint_format", "gptq") == "gptq"
    sd = load_file(os.path.join(gd, "model.safetensors"))
    dense = load_file(os.path.join(rd, "model.safetensors"))
    quant = load_file(os.path.join(rd, "quantized.safetensors"))
    bases = sorted(k[: -len(".qweight")] for k in sd if k.endswith(".qweight"))
    codes_exact = dense_exact = 0
    worst_codes = worst_dense = 0.0
    for b in bases:
        W, _, _ = unpack(sd[b + ".qweight"], sd[b + ".qzeros"], sd[b + ".scales"], sd[b + ".g_idx"], bits, v1)
        sdt = sd[b + ".scales"].dtype
        codes = quant[b + ".qcodes"].astype(np.float32)
        scl = quant[b + ".scales"].astype(sdt).astype(np.float32)
        zer = quant[b + ".zeros"].astype(np.float32)
        g = quant[b + ".g_idx"].astype(np.int64)
        ref_codes = scl[:, g] * (codes - zer[:, g])
        ref_dense = dense[b + ".weight"]
        worst_codes = max(worst_codes, float(np.abs(W - ref_codes).max()))
        worst_dense = max(worst_dense, float(np.abs(W - ref_dense).max()))
        codes_exact += int(np.array_equal(W, ref_codes))
        dense_exact += int(np.array_equal(W, ref_dense))
    res = {
        "gptq_dir": C.rel(gd),
        "ref": C.rel(rd),
        "quantization_config": qc,
        "linears": len(bases),
        "scale_dtype": str(sd[bases[0] + ".scales"].dtype),
        "vs_codes": {"bit_identical": codes_exact, "max_abs_diff": worst_codes},
        "vs_dense": {"bit_identical": dense_exact, "max_abs_diff": worst_dense},
    }
    ok = codes_exact == len(bases) and len(bases) > 0
    if a.load or a.ppl:
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM

            C.setup_torch()
            m = AutoModelForCausalLM.from_pretrained(gd, dtype=torch.float32, device_map="cpu")
            m.eval()
            t = {"ok": True, "transformers": transformers.__version__}
            try:
                import gptqmodel
                import optimum

                t["gptqmodel"] = gptqmodel.__version__
                t["optimum"] = optimum.__version__
            except Exception:
                pass
            mods = dict(m.named_modules())
            t["linear_class"] = type(mods[bases[0]]).__name__
            # the kernel's own dequantization, against shrink's values rounded to its dtype
            worst, same, n = 0.0, 0, 0
            for b in bases:
                mod = mods[b]
                if not hasattr(mod, "dequantize_weight"):
                    break
                w = mod.dequantize_weight()
                # GPTQModel returns [in_features, out_features]
                d_in, d_out = sd[b + ".g_idx"].shape[0], sd[b + ".qweight"].shape[1]
                assert tuple(w.shape) == (d_in, d_out), (b, tuple(w.shape))
                w = w.T
                codes = quant[b + ".qcodes"].astype(np.float32)
                scl = quant[b + ".scales"].astype(np.float16).astype(np.float32)
                zer = quant[b + ".zeros"].astype(np.float32)
                g = quant[b + ".g_idx"].astype(np.int64)
                ref = torch.from_numpy(scl[:, g] * (codes - zer[:, g])).to(w.dtype)
                worst = max(worst, (w.float() - ref.float()).abs().max().item())
                same += int(torch.equal(w, ref))
                n += 1
            t["kernel_dequant_dtype"] = str(w.dtype) if n else None
            t["kernel_weights_equal_shrink_rounded_to_kernel_dtype"] = f"{same}/{n}"
            t["kernel_weights_max_abs_diff"] = worst
            res["transformers"] = t
            if a.ppl:
                res["perplexity"] = C.model_perplexity(m, gd, a.text, a.max_tokens)
        except Exception as e:
            res["transformers"] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
    res["ok"] = ok
    C.write_result(res, a.out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
