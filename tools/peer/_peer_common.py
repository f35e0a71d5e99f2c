"""Shared pieces of the llm-compressor peer scripts (tools/peer/llmcompressor_*.py).

Runs inside .venv-llmc (tools/peer/setup.sh). Everything here is CPU, float32, offline.
"""

import json
import os
import platform
import resource
import shutil
import sys
import time

# Offline: the model and the data are local files; never reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep llm-compressor/datasets caches out of the user's home.
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join("/tmp", "llmc-peer-datasets-cache"))

T_SCRIPT_START = time.time()

# Files of the input HF directory copied verbatim into the dense output (config.json is the
# original one: no quantization_config, so transformers and `shrink eval` load plain weights).
HF_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def add_common_args(ap):
    ap.add_argument("--model", required=True, help="HF directory (f32 safetensors, config.json, tokenizer.json)")
    ap.add_argument("--calib-ids", required=True,
                    help="safetensors file with one I64 tensor `input_ids` [nsamples, seqlen] (shrink's calibration tokens)")
    ap.add_argument("--out", required=True, help="output directory: compressed/, dense/, peer_report.json, llmcompressor.log")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--nsamples", type=int, default=None, help="use only the first N rows of --calib-ids (default all)")
    ap.add_argument("--omp-wait-policy", choices=["default", "passive", "active"], default="default",
                    help="set OMP_WAIT_POLICY before torch loads. torch's OpenMP threads spin by default; on a "
                    "2-core machine shared with other busy processes that made GPTQ's per-column loop ~100x "
                    "slower at --threads 2 (see README). 'default' leaves the environment as it is")
    ap.add_argument("--no-compressed", action="store_true", help="skip the compressed save")
    ap.add_argument("--verify-compressed", action="store_true",
                    help="reload out/compressed with transformers (decompressing) and compare its weights to out/dense")


def setup_torch(threads, omp_wait_policy="default"):
    if omp_wait_policy != "default":
        if "torch" in sys.modules:
            raise RuntimeError("OMP_WAIT_POLICY must be set before torch is imported")
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def attach_log_file(out_dir):
    from loguru import logger

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "llmcompressor.log")
    if os.path.exists(path):
        os.remove(path)
    logger.add(path, level="DEBUG")
    return path


def load_calib(path, nsamples=None):
    """input_ids [N, L] int64 from shrink's calibration file -> (datasets.Dataset, N, L)."""
    from datasets import Dataset
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        if "input_ids" not in keys:
            raise SystemExit(f"{path}: no tensor `input_ids` (has {keys})")
        ids = f.get_tensor("input_ids")
        meta = f.metadata() or {}
    import torch

    if ids.dtype != torch.int64 or ids.ndim != 2:
        raise SystemExit(f"{path}: input_ids must be I64 [nsamples, seqlen], got {ids.dtype} {tuple(ids.shape)}")
    if nsamples is not None:
        ids = ids[:nsamples]
    n, seqlen = ids.shape
    rows = ids.tolist()
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seqlen for _ in range(n)]})
    return ds, n, seqlen, meta


def load_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    return model, tok


def original_keys(model_dir):
    """Tensor names and shapes of the input checkpoint (all *.safetensors files in model_dir)."""
    from safetensors import safe_open

    keys = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model_dir, name), framework="pt") as f:
                for k in f.keys():
                    keys[k] = tuple(f.get_slice(k).get_shape())
    return keys


def qdq_weights(model):
    """Rounds every quantized module's weight onto its grid in place (compressed-tensors'
    `fake_quantize` with the module's weight_scale / weight_zero_point / weight_global_scale).
    QuantizationModifier alone (a preset scheme without GPTQ) only attaches the scales: the
    weights stay the original values until compression. Returns how many were rounded."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    n = 0
    with torch.no_grad():
        for _, m in model.named_modules():
            scheme = getattr(m, "quantization_scheme", None)
            if scheme is None or scheme.weights is None or not hasattr(m, "weight_scale"):
                continue
            zp = getattr(m, "weight_zero_point", None)
            gs = getattr(m, "weight_global_scale", None)
            m.weight.data = fake_quantize(m.weight.data, m.weight_scale, zp, scheme.weights, global_scale=gs)
            n += 1
    return n


def save_dense_copy(model, model_dir, out_dir, qdq=False):
    """Plain f32 copy: exactly the input checkpoint's tensor names (quantization buffers such as
    weight_scale / weight_zero_point / weight_g_idx dropped), the input's own config.json (no
    quantization_config) and tokenizer. GPTQ and the pruners leave the dequantized / pruned
    values in the weights; with `qdq` (QuantizationModifier alone) they are rounded first."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    rounded = qdq_weights(model) if qdq else 0
    keys = original_keys(model_dir)
    sd = model.state_dict()
    tensors = {}
    missing = []
    for k, shape in keys.items():
        if k not in sd:
            missing.append(k)
            continue
        t = sd[k].detach().to("cpu", torch.float32).contiguous().clone()
        if tuple(t.shape) != shape:
            raise RuntimeError(f"{k}: shape {tuple(t.shape)} != input {shape}")
        tensors[k] = t
    quantized = sum(1 for k in sd if k.endswith(".weight_scale"))
    if missing:
        raise RuntimeError(f"tensors of the input missing from the compressed model: {missing[:8]}")
    extra = sorted(k for k in sd if k not in keys)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt", "producer": "tools/peer (llm-compressor dense copy)"})
    for name in HF_SIDE_FILES:
        src = os.path.join(model_dir, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out_dir, name))
    return {"tensors": len(tensors), "modules_with_weight_scale": quantized, "weights_rounded_here": rounded,
            "dropped_state_dict_keys": len(extra), "dropped_examples": extra[:6]}


def save_compressed(model, tok, out_dir):
    """llm-compressor's own save (compressed-tensors). NOTE: compress_model() works in place, so
    this must come after save_dense_copy."""
    t0 = time.time()
    model.save_pretrained(out_dir, save_compressed=True)
    tok.save_pretrained(out_dir)
    info = {"seconds": round(time.time() - t0, 2)}
    try:
        with open(os.path.join(out_dir, "config.json")) as f:
            qc = json.load(f).get("quantization_config")
        if qc:
            info["quant_method"] = qc.get("quant_method")
            info["format"] = qc.get("format")
            sc = qc.get("sparsity_config")
            if sc:
                info["sparsity_format"] = sc.get("format")
                info["sparsity_structure"] = sc.get("sparsity_structure")
                info["global_sparsity"] = sc.get("global_sparsity")
        info["bytes"] = sum(
            os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir) if n.endswith(".safetensors")
        )
    except Exception as e:  # report, don't fail the run
        info["config_error"] = repr(e)
    return info


def verify_compressed(compressed_dir, dense_dir):
    """Reload the compressed checkpoint with transformers (compressed-tensors decompresses it) and
    compare every weight of the dense copy. Returns a small dict (max abs diff)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    t0 = time.time()
    try:
        # run_compressed=False: decompress into plain Linear weights (the compressed-module path
        # keeps weight_packed and has no `.weight` to compare).
        with open(os.path.join(compressed_dir, "config.json")) as f:
            has_qc = "quantization_config" in json.load(f)
        # A pruned-only model is written without quantization_config (compressed-tensors 0.19 no
        # longer writes sparse formats), and then the plain loader is the right one.
        kw = {"quantization_config": CompressedTensorsConfig(run_compressed=False)} if has_qc else {}
        m = AutoModelForCausalLM.from_pretrained(compressed_dir, dtype=torch.float32, **kw)
    except Exception as e:
        return {"ok": False, "error": repr(e)[:500]}
    sd = m.state_dict()
    dense = load_file(os.path.join(dense_dir, "model.safetensors"))
    worst, worst_key, compared, absent = 0.0, None, 0, []
    for k, v in dense.items():
        if k not in sd:
            absent.append(k)
            continue
        d = (sd[k].float() - v).abs().max().item()
        compared += 1
        if d > worst:
            worst, worst_key = d, k
    return {"ok": not absent, "compared": compared, "absent": absent[:6], "max_abs_diff": worst,
            "worst_key": worst_key, "seconds": round(time.time() - t0, 2)}


def peak_rss():
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self_mib": round(self_kb / 1024, 1), "children_mib": round(child_kb / 1024, 1),
            "sum_mib": round((self_kb + child_kb) / 1024, 1)}


def versions():
    import importlib.metadata as md

    out = {}
    for p in ("llmcompressor", "compressed-tensors", "torch", "transformers", "datasets", "accelerate"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    out["python"] = platform.python_version()
    return out


def pipeline_choice(modifier, oneshot_default="independent"):
    """Which calibration pipeline llm-compressor runs for this modifier with oneshot's defaults
    (`pipeline="independent"` wraps each modifier and infers its own pipeline)."""
    from llmcompressor.pipelines.registry import CalibrationPipeline

    inferred = CalibrationPipeline._infer_pipeline([modifier])
    return {"oneshot_pipeline_arg": oneshot_default, "inferred_per_modifier": inferred,
            "class": type(CalibrationPipeline.load_from_registry(inferred)).__name__}


def cpu_state():
    """CPU seconds so far (self + children) and the 1-minute load average: timings on a shared
    2-core machine are only comparable when nothing else was running."""
    ru, rc = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"user_s": round(ru.ru_utime + rc.ru_utime, 2), "sys_s": round(ru.ru_stime + rc.ru_stime, 2),
            "loadavg_1m": os.getloadavg()[0], "nproc": os.cpu_count()}


def write_report(out_dir, report):
    report["wall_seconds_script"] = round(time.time() - T_SCRIPT_START, 2)
    report["peak_rss"] = peak_rss()
    report["cpu_end"] = cpu_state()
    report["env"] = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    s = json.dumps(report, sort_keys=False)
    print(s, flush=True)
    with open(os.path.join(out_dir, "peer_report.json"), "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")


def run_oneshot_and_save(args, model, tok, ds, n, seqlen, recipe, report, after=None, qdq=False,
                         after_dense=None):
    """The tail every peer script shares: `oneshot` timed (an error goes into the report before it
    is raised), `after(report)` for modifier-specific fields, then the dense f32 copy, the
    compressed-tensors save (and its check with --verify-compressed) and peer_report.json.
    `after_dense(report, dense_dir)` runs once the dense copy is written."""
    from llmcompressor import oneshot

    report["cpu_before_oneshot"] = cpu_state()
    t0 = time.time()
    try:
        oneshot(model=model, tokenizer=tok, dataset=ds, recipe=recipe,
                num_calibration_samples=n, max_seq_length=seqlen)
    except Exception as e:
        report["error"] = f"oneshot failed: {type(e).__name__}: {e}"[:2000]
        report["wall_seconds_oneshot_until_error"] = round(time.time() - t0, 2)
        write_report(args.out, report)
        raise
    report["wall_seconds_oneshot"] = round(time.time() - t0, 2)
    report["cpu_after_oneshot"] = cpu_state()
    if after is not None:
        after(report)
    t1 = time.time()
    report["dense"] = save_dense_copy(model, args.model, os.path.join(args.out, "dense"), qdq=qdq)
    report["dense"]["seconds"] = round(time.time() - t1, 2)
    if after_dense is not None:
        after_dense(report, os.path.join(args.out, "dense"))
    if not args.no_compressed:
        try:
            report["compressed"] = save_compressed(model, tok, os.path.join(args.out, "compressed"))
        except Exception as e:
            report["compressed"] = {"error": f"{type(e).__name__}: {e}"[:1000]}
        if args.verify_compressed and "error" not in report["compressed"]:
            report["compressed"]["verify"] = verify_compressed(
                os.path.join(args.out, "compressed"), os.path.join(args.out, "dense"))
    write_report(args.out, report)
