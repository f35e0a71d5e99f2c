"""Check a compressed-tensors directory written by `shrink export --format compressed-tensors`.

1. decompress: every quantized linear is decompressed by the `compressed-tensors` package itself
   (`PackedQuantizationCompressor.decompress`, the code vLLM's and transformers' loaders build on)
   from the scheme in config.json, and compared with shrink's dequantized weights (the
   model.safetensors of the `shrink compress` directory REF, f32): max |difference| and the number
   of tensors that are bit-identical.
2. transformers (with --load): `AutoModelForCausalLM.from_pretrained(CT_DIR)` on CPU; its
   effective linear weights (after decompression) are compared with REF too.
3. perplexity (with --ppl): perplexity.py's GPTQ protocol (seqlen 512, non-overlapping windows) of
   the transformers-loaded model on --text.

Prints JSON; exit status 0 when every check that ran passed (exact weights; perplexity within
--ppl-rtol of --shrink-ppl when given).

Run (compressed-tensors and transformers live in .venv-llmc):
    .venv-llmc/bin/python tools/reference/check_export_ct.py out/export/ct-w4g64 \
        --ref out/gptq-w4g64-static-llmcids --load --ppl --shrink-ppl 17.1044
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ct_dir")
    ap.add_argument("--ref", required=True, help="the shrink compress directory exported")
    ap.add_argument("--load", action="store_true", help="load with transformers")
    ap.add_argument("--ppl", action="store_true")
    ap.add_argument("--text", default=C.DEFAULT_EVAL)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--shrink-ppl", type=float, default=None)
    ap.add_argument("--ppl-rtol", type=float, default=1e-4)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    torch = C.setup_torch()
    import compressed_tensors
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    ct_dir, ref_dir = C.repo_path(a.ct_dir), C.repo_path(a.ref)
    cfg = json.load(open(os.path.join(ct_dir, "config.json")))
    qc = cfg["quantization_config"]
    groups = qc["config_groups"]
    # One group targeting "Linear", or (per-module recipes) one group per setting naming its
    # modules: each linear is decompressed with the scheme of the group that names it.
    by_module = {}
    for g in groups.values():
        for t in g["targets"]:
            if t != "Linear":
                assert t not in by_module, f"{t} is targeted by two config groups"
                by_module[t] = g
    default = next((g for g in groups.values() if "Linear" in g["targets"]), None)
    group = default or next(iter(groups.values()))

    def scheme_of(base):
        g = by_module.get(base, default)
        assert g is not None, f"{base}: no config group targets it"
        return QuantizationScheme(**g)
    sd = load_file(os.path.join(ct_dir, "model.safetensors"))
    ref = load_file(os.path.join(ref_dir, "model.safetensors"))
    bases = sorted(k[: -len(".weight_packed")] for k in sd if k.endswith(".weight_packed"))
    worst, exact = 0.0, 0
    for b in bases:
        local = {k[len(b) + 1 :]: v for k, v in sd.items() if k.startswith(b + ".")}
        out = PackedQuantizationCompressor.decompress(local, scheme_of(b))
        w = out["weight"].float()
        r = ref[b + ".weight"]
        d = (w - r).abs().max().item()
        worst = max(worst, d)
        exact += int(torch.equal(w, r))
    others = [k for k in sd if not any(k.startswith(b + ".") for b in bases)]
    other_exact = sum(int(torch.equal(sd[k], ref[k])) for k in others if k in ref)
    res = {
        "ct_dir": C.rel(ct_dir),
        "ref": C.rel(ref_dir),
        "compressed_tensors_version": compressed_tensors.__version__,
        "scheme": group,
        "config_groups": {k: {"targets": len(g["targets"]), "num_bits": g["weights"]["num_bits"]} for k, g in groups.items()},
        "decompress": {
            "linears": len(bases),
            "bit_identical": exact,
            "max_abs_diff": worst,
            "other_tensors": len(others),
            "other_bit_identical": other_exact,
        },
    }
    ok = exact == len(bases) and other_exact == len(others) and len(bases) > 0
    if a.load or a.ppl:
        import transformers
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(ct_dir, dtype=torch.float32)
            model.eval()
            loaded = {"ok": True, "transformers_version": transformers.__version__}
            # transformers 5.17 decompresses the packed weights on the first forward pass (the
            # modules hold weight_packed until then); run one, then read the effective weights.
            with torch.inference_mode():
                model(input_ids=torch.tensor([[1, 2, 3]]))
            diffs, same, n = 0.0, 0, 0
            mods = dict(model.named_modules())
            for b in bases:
                m = mods.get(b)
                if m is None:
                    continue
                w = None
                if hasattr(m, "compressor") and hasattr(m, "quantization_scheme"):
                    try:
                        from compressed_tensors.linear.compressed_linear import CompressedLinear  # noqa
                        w = m.compressor.decompress_module(m).float()
                    except Exception:
                        w = None
                if w is None and getattr(m, "weight", None) is not None and m.weight.dtype.is_floating_point:
                    w = m.weight.detach().float()
                if w is None:
                    continue
                n += 1
                r = ref[b + ".weight"]
                diffs = max(diffs, (w - r).abs().max().item())
                same += int(torch.equal(w, r))
            loaded["weights_compared"] = n
            loaded["weights_bit_identical"] = same
            loaded["weights_max_abs_diff"] = diffs
            loaded["linear_class"] = type(mods[bases[0]]).__name__
            res["transformers"] = loaded
            if a.ppl:
                r = C.model_perplexity(model, ct_dir, a.text, a.max_tokens)
                res["perplexity"] = r
                if a.shrink_ppl is not None:
                    rel = abs(r["perplexity"] / a.shrink_ppl - 1)
                    res["perplexity"]["shrink"] = a.shrink_ppl
                    res["perplexity"]["rel_diff"] = rel
                    ok = ok and rel <= a.ppl_rtol
        except Exception as e:  # report what transformers said
            res["transformers"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            ok = False
    res["ok"] = ok
    C.write_result(res, a.out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
