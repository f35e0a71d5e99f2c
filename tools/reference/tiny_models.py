"""Tiny random-weight transformers models plus reference outputs, for shrink's model-loader tests.

For each case this builds a small model with transformers, fills its weights from a fixed seed
(normal std 0.1 for embeddings and linear weights, RMSNorm weights 1 + 0.2*N(0,1), biases
0.1*N(0,1)), writes it with `save_pretrained` (safetensors) to tests/fixtures/tiny/<name>/, reloads
the written directory with `AutoModelForCausalLM.from_pretrained(dir, dtype=float32)` and computes,
in float32 with eager attention and no padding:

    tests/fixtures/tiny/<name>/reference.safetensors
        input_ids      int64 [2, 24]     seeded, values < vocab_size
        logits         f32   [2, 24, V]
        hidden_layer1  f32   [24, H]     hidden_states[1] (output of decoder layer 0) of sequence 0

Cases (all: vocab 128, hidden 64, intermediate 160, 2 layers, 4 heads, 2 kv heads, head_dim 16,
max_position_embeddings 64):

    llama               LlamaConfig, tied embeddings (no lm_head.weight in the file), rope_theta 1e4,
                        llama3 rope scaling (factor 8, low 1, high 4, original_max_position_embeddings
                        16), rms_norm_eps 1e-5, float32. config.json has both the transformers-5
                        `rope_parameters` and the older `rope_theta` + `rope_scaling`.
    qwen2               Qwen2Config, q/k/v biases (no o_proj bias), untied, rope_theta 1e6,
                        rms_norm_eps 1e-6, float32. config.json exactly as transformers 5 writes it
                        (`rope_parameters` only, `dtype`).
    mistral             MistralConfig, untied, sliding_window null, rope_theta 1e4, float32.
                        config.json rewritten in the older style: `rope_theta` at the top level, no
                        `rope_parameters`, `torch_dtype` instead of `dtype`.
    llama_bf16_sharded  LlamaConfig, untied, linear rope scaling factor 2 (older style
                        `"rope_scaling": {"type": "linear", "factor": 2.0}` + `rope_theta`), saved in
                        bfloat16 in several shards with model.safetensors.index.json; the reference
                        is computed from those bf16 weights upcast to float32.

The config.json rewrites are checked: the reference is computed from the directory as reloaded by
transformers, and it must match the in-memory model (bit-exact for float32, and with bf16-rounded
weights for the bf16 case), so every variant is one transformers itself reads the same way.

Run:
    .venv-ref/bin/python tools/reference/tiny_models.py            # all cases
    .venv-ref/bin/python tools/reference/tiny_models.py --only qwen2 --out-dir /tmp/tiny
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
BATCH, SEQ = 2, 24


def make_config(name):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    if name == "llama":
        return LlamaConfig(
            **SIZES,
            tie_word_embeddings=True,
            rope_theta=10000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
        )
    if name == "qwen2":
        return Qwen2Config(
            **SIZES,
            tie_word_embeddings=False,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            use_sliding_window=False,
            bos_token_id=1,
            eos_token_id=2,
        )
    if name == "mistral":
        return MistralConfig(
            **SIZES,
            tie_word_embeddings=False,
            sliding_window=None,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
        )
    if name == "llama_bf16_sharded":
        return LlamaConfig(
            **SIZES,
            tie_word_embeddings=False,
            rope_theta=10000.0,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
        )
    raise ValueError(name)


CASES = ["llama", "qwen2", "mistral", "llama_bf16_sharded"]


def init_weights(model, seed):
    """Deterministic, deliberately non-trivial weights (so wrong kernels show up in the logits)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def rewrite_config(name, path):
    """Adjust config.json to the style this case is meant to exercise (see the module docstring)."""
    with open(path) as f:
        cfg = json.load(f)
    rp = dict(cfg.get("rope_parameters") or {})
    if name == "llama":
        # Both the transformers-5 and the older keys.
        cfg["rope_theta"] = rp["rope_theta"]
        cfg["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        cfg["torch_dtype"] = cfg.get("dtype", "float32")
    elif name == "qwen2":
        pass  # as transformers 5 writes it
    elif name == "mistral":
        cfg.pop("rope_parameters", None)
        cfg["rope_theta"] = rp["rope_theta"]
        cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    elif name == "llama_bf16_sharded":
        cfg.pop("rope_parameters", None)
        cfg["rope_theta"] = rp["rope_theta"]
        cfg["rope_scaling"] = {"type": "linear", "factor": rp["factor"]}
        cfg["torch_dtype"] = cfg.pop("dtype", "bfloat16")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


def run_reference(model, input_ids):
    import torch

    with torch.inference_mode():
        out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    return out.logits.float().contiguous(), out.hidden_states[1][0].float().contiguous()


def build_case(name, out_root, seed):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = make_config(name)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    init_weights(model, seed)
    model.eval()

    d = os.path.join(out_root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    bf16 = name == "llama_bf16_sharded"
    if bf16:
        # Round the float32 parameters to bf16 values in place (the in-memory model then holds exactly
        # the saved weights, upcast), and save a bf16 copy. Not model.to(bf16).to(f32): that would also
        # round the non-persistent rope inv_freq buffer.
        import copy

        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(d, max_shard_size="100KB")
    else:
        model.save_pretrained(d)
    cfg_json = rewrite_config(name, os.path.join(d, "config.json"))

    g = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=g, dtype=torch.long)

    # Reference from the directory exactly as written (bf16 weights upcast to float32).
    loaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    loaded.eval()
    logits, hidden1 = run_reference(loaded, input_ids)
    mem_logits, mem_hidden1 = run_reference(model, input_ids)
    max_reload_diff = float((logits - mem_logits).abs().max())
    if max_reload_diff > 1e-5:
        raise SystemExit(f"{name}: reloaded model disagrees with the in-memory one ({max_reload_diff})")
    for pn, p in loaded.named_parameters():
        assert p.dtype == torch.float32, pn

    C.save_safetensors_sorted(
        {"input_ids": input_ids.contiguous(), "logits": logits, "hidden_layer1": hidden1},
        os.path.join(d, "reference.safetensors"),
        metadata={
            "producer": "tools/reference/tiny_models.py",
            "case": name,
            "seed": str(seed),
            "dtype": "float32",
            "weights_dtype": "bfloat16" if bf16 else "float32",
            "hidden_layer1": "hidden_states[1][0]: output of decoder layer 0, sequence 0",
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
        },
    )
    files = sorted(os.listdir(d))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in files)
    info = {
        "case": name,
        "files": files,
        "bytes": size,
        "logits_std": float(logits.std()),
        "logits_absmax": float(logits.abs().max()),
        "hidden_layer1_std": float(hidden1.std()),
        "reload_max_abs_diff": max_reload_diff,
        "tie_word_embeddings": cfg_json.get("tie_word_embeddings"),
        "params": sum(p.numel() for p in loaded.parameters()),
        "state_dict_keys_saved": None,
    }
    from safetensors import safe_open

    keys = []
    for f in files:
        if f.endswith(".safetensors") and f != "reference.safetensors":
            with safe_open(os.path.join(d, f), "pt") as sf:
                keys += list(sf.keys())
    info["state_dict_keys_saved"] = len(keys)
    info["has_lm_head"] = "lm_head.weight" in keys
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=C.FIXTURES_TINY)
    ap.add_argument("--only", nargs="*", choices=CASES)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    C.setup_torch(2, seed=args.seed)
    out_root = C.repo_path(args.out_dir)
    os.makedirs(out_root, exist_ok=True)
    results = []
    for i, name in enumerate(args.only or CASES):
        results.append(build_case(name, out_root, args.seed + 100 * CASES.index(name)))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
