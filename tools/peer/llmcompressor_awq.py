"""Peer run: llm-compressor's AWQModifier + QuantizationModifier on CPU, on shrink's model and
calibration tokens (the peer of `shrink compress --method awq`).

Recipe (built explicitly):
    [AWQModifier(duo_scaling=D, n_grid=20),             # llm-compressor's default mappings
     QuantizationModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"],
         weights=QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group",
                                  group_size=64))},
         ignore=["lm_head"])]
AWQModifier is a transform: it searches and folds the scales; QuantizationModifier then rounds
to nearest (minmax observer). llm-compressor's AWQ has no clipping search: compare it with
`shrink compress --method awq --awq-no-clip` (and `--awq-duo-scaling` for D = true, its
default).

On a machine without an NVIDIA driver, AWQModifier stops at `Tensor.pin_memory` ("Found no
NVIDIA driver"). Pinning only speeds up host-to-GPU copies, so this script makes it a no-op
(`torch.Tensor.pin_memory = identity`) and says so in peer_report.json.

Outputs under --out as for llmcompressor_gptq.py: dense/ (f32, for transformers and
`shrink eval`), compressed/ (compressed-tensors), peer_report.json, llmcompressor.log.

    .venv-llmc/bin/python tools/peer/llmcompressor_awq.py --model out/smollm2-hf \\
        --calib-ids out/calib_test_64x512.safetensors --out out/peer/llmc-awq-w4g64 \\
        --omp-wait-policy passive
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as P  # noqa: E402  (sets HF_HUB_OFFLINE etc. before any HF import)


def build_recipe(args):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    strategy = "channel" if args.group_size in (None, -1, 0) else "group"
    wargs = dict(num_bits=args.bits, type="int", symmetric=args.sym, strategy=strategy)
    if strategy == "group":
        wargs["group_size"] = args.group_size
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**wargs),
                                input_activations=None, output_activations=None)
    duo = {"true": True, "false": False, "both": "both"}[args.duo_scaling]
    awq = AWQModifier(duo_scaling=duo, n_grid=args.n_grid)
    quant = QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])
    return [awq, quant], wargs, duo


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    P.add_common_args(ap)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64, help="-1 = per-channel (strategy channel)")
    ap.add_argument("--sym", action="store_true", help="symmetric (default asymmetric, with zero-points)")
    ap.add_argument("--duo-scaling", choices=["true", "false", "both"], default="true",
                    help="AWQModifier.duo_scaling (llm-compressor's default: true)")
    ap.add_argument("--n-grid", type=int, default=20, help="AWQModifier.n_grid")
    args = ap.parse_args()

    torch = P.setup_torch(args.threads, args.omp_wait_policy)
    pinned_noop = not torch.cuda.is_available()
    if pinned_noop:
        torch.Tensor.pin_memory = lambda self, *a, **k: self
    os.makedirs(args.out, exist_ok=True)
    from llmcompressor import oneshot  # noqa: F401  (configures loguru, removing handlers: attach the file after)

    log_path = P.attach_log_file(args.out)

    ds, n, seqlen, calib_meta = P.load_calib(args.calib_ids, args.nsamples)
    t_load = time.time()
    model, tok = P.load_model(args.model)
    load_s = time.time() - t_load
    recipe, wargs, duo = build_recipe(args)
    pipeline = P.pipeline_choice(recipe[0])
    P.log(f"AWQ duo_scaling={duo} n_grid={args.n_grid} then RTN {wargs}; "
          f"{n} x {seqlen} calibration tokens; pipeline {pipeline}")

    report = {
        "tool": "llmcompressor", "modifier": "AWQModifier+QuantizationModifier",
        "model": args.model, "calib_ids": args.calib_ids, "calib_meta": calib_meta,
        "nsamples": n, "seqlen": seqlen, "calib_tokens": n * seqlen,
        "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "device": "cpu", "dtype": "float32",
        "settings": {"weights": wargs, "targets": ["Linear"], "ignore": ["lm_head"],
                     "duo_scaling": duo, "n_grid": args.n_grid, "batch_size": 1,
                     "shuffle_calibration_samples": True},
        "pin_memory_made_noop": pinned_noop,
        "pipeline": pipeline, "versions": P.versions(), "log": log_path,
        "model_load_seconds": round(load_s, 2),
    }
    P.run_oneshot_and_save(
        args, model, tok, ds, n, seqlen, recipe, report,
        after=lambda r: r.update(awq_error_metrics=list(getattr(recipe[0], "_error_metrics", []))[:1000]))

if __name__ == "__main__":
    main()
