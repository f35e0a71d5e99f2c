"""Peer run: llm-compressor's pruning modifiers on CPU, on shrink's model and calibration tokens.

    --method sparsegpt   SparseGPTModifier (llmcompressor.modifiers.pruning.sparsegpt; the old
                         llmcompressor.modifiers.obcq import still works as a deprecated shim)
    --method wanda       WandaPruningModifier
    --sparsity 0.5       fraction of weights zeroed in every targeted layer
    --mask-structure     "0:0" = unstructured (llm-compressor's default), "2:4" = semi-structured

Targets: every Linear layer (llm-compressor's default targets=["Linear"]); ignore=["re:.*lm_head"]
(lm_head is tied to the embedding in SmolLM2; llm-compressor no longer auto-ignores it and warns
if it would be pruned). SparseGPT knobs: --dampening 0.01 and --block-size 128 (its defaults).

Calibration, pipeline, outputs (dense/, compressed/, peer_report.json, llmcompressor.log) and the
JSON line are as in llmcompressor_gptq.py. The report also gives the measured fraction of zeros
in the pruned weights of the dense copy and, for N:M masks, whether every group of M obeys it.

    .venv-llmc/bin/python tools/peer/llmcompressor_prune.py --method sparsegpt --sparsity 0.5 \
        --model out/smollm2-hf --calib-ids out/calib_test_64x512.safetensors \
        --out out/peer/llmc-sparsegpt-50
    .venv-llmc/bin/python tools/peer/llmcompressor_prune.py --method sparsegpt --mask-structure 2:4 ...
    .venv-llmc/bin/python tools/peer/llmcompressor_prune.py --method wanda ...
    .venv-llmc/bin/python tools/peer/llmcompressor_prune.py --method sparsegpt --sparsity 0.6 \
        --sparsity-profile owl --owl-m 5 --owl-lmbda 0.08 ...   (OWL)
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peer_common as P  # noqa: E402  (sets HF_HUB_OFFLINE etc. before any HF import)

IGNORE = ["re:.*lm_head"]


def build_modifier(args):
    common = dict(sparsity=args.sparsity, mask_structure=args.mask_structure, targets=["Linear"], ignore=IGNORE)
    if args.sparsity_profile:
        # OWL (llm-compressor's sparsity_profile="owl", owl_m, owl_lmbda)
        common.update(sparsity_profile=args.sparsity_profile, owl_m=args.owl_m, owl_lmbda=args.owl_lmbda)
    if args.method == "sparsegpt":
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        return SparseGPTModifier(**common, dampening_frac=args.dampening, block_size=args.block_size), \
            "SparseGPTModifier"
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    return WandaPruningModifier(**common), "WandaPruningModifier"


def measure_sparsity(dense_dir, mask_structure):
    """Zeros in the 2-D Linear weights of the decoder layers (what the modifiers target)."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(os.path.join(dense_dir, "model.safetensors"))
    n, m = (int(x) for x in mask_structure.split(":"))
    zeros = total = 0
    nm_violations = 0
    per_kind = {}
    for k, w in sd.items():
        if w.ndim != 2 or ".layers." not in k or not k.endswith("proj.weight"):
            continue
        z = int((w == 0).sum())
        zeros += z
        total += w.numel()
        kind = k.split(".")[-2]
        a = per_kind.setdefault(kind, [0, 0])
        a[0] += z
        a[1] += w.numel()
        if m > 0 and w.shape[1] % m == 0:
            groups = (w.reshape(w.shape[0], -1, m) == 0).sum(-1)
            nm_violations += int((groups < (m - n)).sum())
    out = {"pruned_fraction": zeros / total if total else None, "weights": total,
           "per_proj": {k: round(v[0] / v[1], 4) for k, v in sorted(per_kind.items())}}
    if m > 0:
        out["nm_groups_violating"] = nm_violations
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    P.add_common_args(ap)
    ap.add_argument("--method", choices=["sparsegpt", "wanda"], default="sparsegpt")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--mask-structure", default="0:0", help='"0:0" unstructured (default) or "N:M", e.g. "2:4"')
    ap.add_argument("--dampening", type=float, default=0.01, help="SparseGPT dampening_frac")
    ap.add_argument("--block-size", type=int, default=128, help="SparseGPT block_size")
    ap.add_argument("--sparsity-profile", choices=["owl"], default=None,
                    help="layerwise sparsity profile (OWL), with --owl-m and --owl-lmbda")
    ap.add_argument("--owl-m", type=float, default=5.0)
    ap.add_argument("--owl-lmbda", type=float, default=0.08)
    args = ap.parse_args()

    torch = P.setup_torch(args.threads, args.omp_wait_policy)  # noqa: F841
    os.makedirs(args.out, exist_ok=True)
    from llmcompressor import oneshot  # noqa: F401  (configures loguru, removing handlers: attach the file after)

    log_path = P.attach_log_file(args.out)

    ds, n, seqlen, calib_meta = P.load_calib(args.calib_ids, args.nsamples)
    t_load = time.time()
    model, tok = P.load_model(args.model)
    load_s = time.time() - t_load
    try:
        modifier, mod_name = build_modifier(args)
    except ImportError as e:
        report = {"tool": "llmcompressor", "method": args.method, "versions": P.versions(),
                  "error": f"modifier not available in this release: {e}"}
        P.write_report(args.out, report)
        raise SystemExit(2)
    pipeline = P.pipeline_choice(modifier)
    P.log(f"{mod_name} sparsity={args.sparsity} mask={args.mask_structure}; {n} x {seqlen} calibration tokens; "
          f"pipeline {pipeline}")
    settings = {"sparsity": args.sparsity, "mask_structure": args.mask_structure, "targets": ["Linear"],
                "ignore": IGNORE, "batch_size": 1, "shuffle_calibration_samples": True}
    if args.sparsity_profile:
        settings.update(sparsity_profile=args.sparsity_profile, owl_m=args.owl_m, owl_lmbda=args.owl_lmbda)
    if args.method == "sparsegpt":
        settings.update(dampening_frac=args.dampening, block_size=args.block_size)
    report = {
        "tool": "llmcompressor", "modifier": mod_name,
        "model": args.model, "calib_ids": args.calib_ids, "calib_meta": calib_meta,
        "nsamples": n, "seqlen": seqlen, "calib_tokens": n * seqlen,
        "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "device": "cpu", "dtype": "float32",
        "settings": settings, "pipeline": pipeline, "versions": P.versions(), "log": log_path,
        "model_load_seconds": round(load_s, 2),
    }
    P.run_oneshot_and_save(
        args, model, tok, ds, n, seqlen, modifier, report,
        after_dense=lambda r, d: r.update(measured_sparsity=measure_sparsity(d, args.mask_structure)))

if __name__ == "__main__":
    main()
