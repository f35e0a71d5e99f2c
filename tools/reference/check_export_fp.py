"""Check shrink's compressed-tensors exports of the float schemes and W8A8 against the
compressed-tensors package itself (float-quantized, nvfp4-pack-quantized, mxfp4-pack-quantized,
int-quantized).

For each pair CT_DIR:REF_DIR (REF_DIR the `shrink compress` directory that was exported; its
model.safetensors holds shrink's dequantized f32 weights):

1. config: every config group's `weights` / `input_activations` equal
   `preset_name_to_scheme(scheme).model_dump(mode="json")` of compressed-tensors for the scheme
   named in REF_DIR's recipe, and its `format` equals `infer_module_format` for that scheme.
2. decompress: every quantized linear goes through the registered compressor's `decompress`
   (the code transformers' and vLLM's loaders build on), and is compared with REF bit for bit
   (the FP4 compressors return bfloat16: compared with REF rounded to bfloat16); the FP4 linears
   are also dequantized in f32 with compressed-tensors' `unpack_fp4_from_uint8` + `dequantize`
   and compared with REF's f32 bits.
3. transformers (with --load): `AutoModelForCausalLM.from_pretrained(CT_DIR)` on CPU; records
   whether it loads and, if so, compares one decompressed linear with REF.

Prints JSON (and writes --out); exit 1 when a check fails.

    .venv-ref/bin/python tools/reference/check_export_fp.py --load \
        --out tests/fixtures/reference/export_fp.json NVFP4A16=ct-NVFP4A16:df-NVFP4A16 MXFP4A16=ct-MXFP4A16:df-MXFP4A16 ...
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file


def local_state(tensors, base):
    p = base + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs", nargs="+", help="SCHEME=CT_DIR:REF_DIR")
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()

    import compressed_tensors as ctp
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import QuantizationScheme, preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    out = {"compressed_tensors": ctp.__version__, "torch": torch.__version__, "schemes": {}}
    ok = True
    for pair in a.pairs:
        name, dirs = pair.split("=", 1)
        ct_dir, ref_dir = dirs.split(":", 1)
        qc = json.load(open(os.path.join(ct_dir, "config.json")))["quantization_config"]
        tensors = load_file(os.path.join(ct_dir, "model.safetensors"))
        ref = load_file(os.path.join(ref_dir, "model.safetensors"))
        preset = preset_name_to_scheme(name, ["Linear"])
        want = preset.model_dump(mode="json")
        r = {"format": qc["format"], "groups": len(qc["config_groups"])}
        grp = next(iter(qc["config_groups"].values()))
        r["config_weights_equal"] = grp["weights"] == want["weights"]
        r["config_input_activations_equal"] = grp["input_activations"] == want["input_activations"]
        r["config_format_equal"] = grp["format"] == infer_module_format(torch.nn.Linear, preset).value
        scheme = QuantizationScheme.model_validate(grp)
        comp = BaseCompressor.get_value_from_registry(grp["format"])
        bases = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith(
            (".weight_packed", ".weight_scale"))})
        n_exact = n_exact_f32 = 0
        max_diff = 0.0
        for b in bases:
            st = local_state(tensors, b)
            d = comp.decompress(dict(st), scheme)["weight"]
            w = ref[b + ".weight"]
            rw = w.to(d.dtype)
            if d.shape == rw.shape and torch.equal(d.view(torch.int16 if d.element_size() == 2
                                                          else torch.int32),
                                                   rw.view(torch.int16 if d.element_size() == 2
                                                           else torch.int32)):
                n_exact += 1
            else:
                max_diff = max(max_diff, (d.float() - rw.float()).abs().max().item())
            if "weight_packed" in st:
                m, n2 = st["weight_packed"].shape
                xq = unpack_fp4_from_uint8(st["weight_packed"], m, n2 * 2, dtype=torch.float32)
                s = st["weight_scale"]
                if s.dtype == torch.uint8:  # E8M0 exponents
                    s = torch.exp2(s.to(torch.float32) - 127)
                else:
                    s = s.to(torch.float32)
                f = dequantize(x_q=xq, scale=s, global_scale=st.get("weight_global_scale"),
                               args=scheme.weights, dtype=torch.float32)
            else:
                f = d.float()
            if torch.equal(f.view(torch.int32), w.float().view(torch.int32)):
                n_exact_f32 += 1
        r.update(linears=len(bases), decompress_bit_exact=n_exact, f32_bit_exact=n_exact_f32,
                 max_abs_diff=max_diff)
        good = (r["config_weights_equal"] and r["config_input_activations_equal"]
                and r["config_format_equal"] and n_exact == len(bases) == n_exact_f32
                and len(bases) > 0)
        if a.load:
            try:
                from transformers import AutoModelForCausalLM
                model = AutoModelForCausalLM.from_pretrained(ct_dir, torch_dtype=torch.float32)
                lin = model.model.layers[0].self_attn.q_proj
                wt = getattr(lin, "weight", None)
                r["transformers_load"] = "ok"
                if wt is not None and wt.dtype in (torch.float32, torch.bfloat16, torch.float16):
                    r["transformers_q_proj_equal"] = bool(torch.equal(
                        wt.float(), ref["model.layers.0.self_attn.q_proj.weight"].to(wt.dtype).float()))
                else:
                    r["transformers_q_proj_equal"] = f"weight kept compressed ({wt.dtype if wt is not None else None})"
            except Exception as e:  # noqa: BLE001
                r["transformers_load"] = f"{type(e).__name__}: {str(e)[:300]}"
        r["pass"] = bool(good)
        ok &= good
        out["schemes"][name] = r
    text = json.dumps(out, indent=2, sort_keys=True)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        open(a.out, "w").write(text + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
