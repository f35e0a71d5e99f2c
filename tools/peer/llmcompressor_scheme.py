"""Peer run: an llm-compressor preset scheme (W8A8, FP8_DYNAMIC, NVFP4A16, MXFP4A16, ...) by
QuantizationModifier on CPU, optionally after SmoothQuantModifier, on shrink's model and
calibration tokens (the peer of `shrink compress --method rtn --scheme S [--smooth A]`).

Recipe:
    [SmoothQuantModifier(smoothing_strength=A),    # only with --smooth A; its default mappings
     QuantizationModifier(targets=["Linear"], scheme=S, ignore=["lm_head"])]
The scheme's weights are rounded to nearest (minmax observer); its activations (W8A8: dynamic
per-token int8; FP8_DYNAMIC: dynamic per-token E4M3) are quantized by the serving kernel, so
evaluate the dense copy with `shrink eval --act-quant int8|fp8`, as shrink evaluates its own
W8A8 output by default.

Outputs under --out as for llmcompressor_gptq.py: dense/ (f32), compressed/
(compressed-tensors), peer_report.json, llmcompressor.log.

    .venv-llmc/bin/python tools/peer/llmcompressor_scheme.py --scheme W8A8 --smooth 0.8 \\
        --model out/smollm2-hf --calib-ids out/calib_smollm2_64x512.safetensors \\
        --out out/peer/llmc-w8a8-sq08 --omp-wait-policy passive
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as P  # noqa: E402  (sets HF_HUB_OFFLINE etc. before any HF import)


def build_recipe(args):
    from llmcompressor.modifiers.quantization import QuantizationModifier

    recipe = []
    if args.smooth is not None:
        from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

        recipe.append(SmoothQuantModifier(smoothing_strength=args.smooth))
    recipe.append(QuantizationModifier(targets=["Linear"], scheme=args.scheme, ignore=["lm_head"]))
    return recipe


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    P.add_common_args(ap)
    ap.add_argument("--scheme", required=True, help="llm-compressor preset name, e.g. W8A8, FP8_DYNAMIC")
    ap.add_argument("--smooth", type=float, default=None, help="SmoothQuantModifier smoothing_strength")
    args = ap.parse_args()

    P.setup_torch(args.threads, args.omp_wait_policy)
    os.makedirs(args.out, exist_ok=True)
    from llmcompressor import oneshot  # noqa: F401  (configures loguru: attach the file after)

    log_path = P.attach_log_file(args.out)
    ds, n, seqlen, calib_meta = P.load_calib(args.calib_ids, args.nsamples)
    t_load = time.time()
    model, tok = P.load_model(args.model)
    load_s = time.time() - t_load
    recipe = build_recipe(args)
    pipeline = P.pipeline_choice(recipe[0])
    P.log(f"scheme {args.scheme} smooth={args.smooth}; {n} x {seqlen} calibration tokens; pipeline {pipeline}")
    report = {
        "tool": "llmcompressor",
        "modifier": ("SmoothQuantModifier+" if args.smooth is not None else "") + "QuantizationModifier",
        "model": args.model, "calib_ids": args.calib_ids, "calib_meta": calib_meta,
        "nsamples": n, "seqlen": seqlen, "calib_tokens": n * seqlen,
        "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "device": "cpu", "dtype": "float32",
        "settings": {"scheme": args.scheme, "smoothing_strength": args.smooth, "targets": ["Linear"],
                     "ignore": ["lm_head"], "batch_size": 1, "shuffle_calibration_samples": True},
        "pipeline": pipeline, "versions": P.versions(), "log": log_path,
        "model_load_seconds": round(load_s, 2),
    }
    P.run_oneshot_and_save(args, model, tok, ds, n, seqlen, recipe, report, qdq=True)


if __name__ == "__main__":
    main()
