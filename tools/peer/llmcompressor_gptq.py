"""Peer run: llm-compressor's GPTQModifier on CPU, on shrink's model and calibration tokens.

Default scheme (built explicitly, not from a preset name):
    config_groups = {"group_0": QuantizationScheme(targets=["Linear"],
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group",
                                 group_size=64))}
    ignore = ["lm_head"]
i.e. W4 asymmetric, group 64, every Linear layer except lm_head (tied to the embedding in
SmolLM2; embeddings are never quantized by GPTQModifier). GPTQ knobs: --dampening 0.01
(llm-compressor's dampening_frac default), --block-size 128 (its default), --actorder
(llm-compressor's default is "static", an alias of "weight": columns are visited in order of
decreasing Hessian diagonal, group membership stays contiguous; "group" is the deprecated
g_idx ordering; "none" = plain column order).

Calibration: the rows of --calib-ids (safetensors, one I64 tensor `input_ids` [N, L]) become a
datasets.Dataset with attention_mask of ones; oneshot(num_calibration_samples=N,
max_seq_length=L), batch_size=1, everything else at oneshot's defaults (pipeline="independent",
which runs the "sequential" pipeline for GPTQModifier; shuffle_calibration_samples=True, which only
reorders the same N rows).

Outputs under --out:
    dense/        plain f32 safetensors with the input's tensor names, the input's config.json
                  (no quantization_config) and tokenizer: for transformers and `shrink eval`
    compressed/   llm-compressor's save_pretrained(save_compressed=True) (compressed-tensors,
                  pack-quantized for int4)
    peer_report.json, llmcompressor.log
and one JSON line on stdout (wall seconds of oneshot alone and of the whole script, peak RSS,
versions, settings, calibration size).

    .venv-llmc/bin/python tools/peer/llmcompressor_gptq.py --model out/smollm2-hf \
        --calib-ids out/calib_test_64x512.safetensors --out out/peer/llmc-gptq-w4g64
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as P  # noqa: E402  (sets HF_HUB_OFFLINE etc. before any HF import)


def build_modifier(args):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier

    strategy = "channel" if args.group_size in (None, -1, 0) else "group"
    wargs = dict(num_bits=args.bits, type="int", symmetric=args.sym, strategy=strategy)
    if strategy == "group":
        wargs["group_size"] = args.group_size
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**wargs),
                                input_activations=None, output_activations=None)
    kw = dict(config_groups={"group_0": scheme}, ignore=["lm_head"],
              dampening_frac=args.dampening, block_size=args.block_size)
    if args.actorder != "default":
        kw["actorder"] = None if args.actorder == "none" else args.actorder
    return GPTQModifier(**kw), wargs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    P.add_common_args(ap)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64, help="-1 = per-channel (strategy channel)")
    ap.add_argument("--sym", action="store_true", help="symmetric (default asymmetric, with zero-points)")
    ap.add_argument("--actorder", choices=["default", "static", "weight", "group", "none"], default="default",
                    help="default = leave llm-compressor's default (static)")
    ap.add_argument("--dampening", type=float, default=0.01, help="GPTQModifier.dampening_frac")
    ap.add_argument("--block-size", type=int, default=128)
    args = ap.parse_args()

    torch = P.setup_torch(args.threads, args.omp_wait_policy)
    os.makedirs(args.out, exist_ok=True)
    from llmcompressor import oneshot  # noqa: F401  (configures loguru, removing handlers: attach the file after)

    log_path = P.attach_log_file(args.out)

    ds, n, seqlen, calib_meta = P.load_calib(args.calib_ids, args.nsamples)
    t_load = time.time()
    model, tok = P.load_model(args.model)
    load_s = time.time() - t_load
    modifier, wargs = build_modifier(args)
    pipeline = P.pipeline_choice(modifier)
    P.log(f"GPTQ {wargs} actorder={args.actorder} damp={args.dampening} block={args.block_size}; "
          f"{n} x {seqlen} calibration tokens; pipeline {pipeline}")

    report = {
        "tool": "llmcompressor", "modifier": "GPTQModifier",
        "model": args.model, "calib_ids": args.calib_ids, "calib_meta": calib_meta,
        "nsamples": n, "seqlen": seqlen, "calib_tokens": n * seqlen,
        "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "device": "cpu", "dtype": "float32",
        "settings": {"weights": wargs, "targets": ["Linear"], "ignore": ["lm_head"],
                     "actorder_arg": args.actorder, "dampening_frac": args.dampening,
                     "block_size": args.block_size, "batch_size": 1,
                     "shuffle_calibration_samples": True},
        "pipeline": pipeline, "versions": P.versions(), "log": log_path,
        "model_load_seconds": round(load_s, 2),
    }
    def resolved(report):
        # what the modifier actually resolved (actorder default, RTN fallbacks)
        try:
            scheme = next(iter(modifier.resolve_quantization_config().config_groups.values()))
            report["resolved_actorder"] = str(getattr(scheme.weights.actorder, "value", scheme.weights.actorder))
        except Exception as e:
            report["resolved_actorder"] = f"? ({e!r})"[:200]
        report["rtn_fallback_modules"] = list(getattr(modifier, "_rtn_fallback_module_names", []))

    P.run_oneshot_and_save(args, model, tok, ds, n, seqlen, modifier, report, after=resolved)

if __name__ == "__main__":
    main()
