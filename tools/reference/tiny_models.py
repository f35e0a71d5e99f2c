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

First cases (all: vocab 128, hidden 64, intermediate 160, 2 layers, 4 heads, 2 kv heads, head_dim 16,
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

Family cases (added later; same files plus more references, see below). All vocab 128, hidden 64,
max_position_embeddings 64, float32, eager attention, each config from the real transformers class:

    qwen3               Qwen3Config: 2 layers, 4 heads, 2 kv heads, head_dim 32 (explicit, != 64/4 =
                        16, so q is 128 wide), q_norm/k_norm (RMSNorm over head_dim, before rope),
                        tied embeddings, rope_theta 1e6, rms_norm_eps 1e-6, intermediate 40.
    gemma3              Gemma3TextConfig (model_type gemma3_text, Gemma3ForCausalLM), shaped like
                        gemma-3-270m: 4 layers, layer_types sliding, sliding, full, sliding,
                        sliding_window 8 (< 24 tokens), 4 heads, 1 kv head, head_dim 16,
                        query_pre_attn_scalar 24 (scores scaled by 24**-0.5, not 16**-0.5), rope_theta
                        1e6 + linear rope scaling factor 8 on the full layers, rope_local_base_freq 1e4
                        (no scaling) on the sliding layers, gelu_pytorch_tanh, intermediate 24, tied,
                        eps 1e-6, no soft-capping. Gemma's RMSNorm computes x*(1+w), so for this family
                        the norm weights are initialised 0.2*N(0,1) (not 1 + 0.2N). config.json
                        rewritten in the style of the published Gemma 3 files (rope_theta,
                        rope_local_base_freq, rope_scaling {"rope_type": "linear", "factor": 8.0},
                        torch_dtype; no rope_parameters).
    gemma3_softcap      the same (other seed) with final_logit_softcapping 3.0 (the pre-cap logits
                        reach |2.9|, far outside tanh's linear range) and attn_logit_softcapping 1.0.
                        transformers 5's Gemma3 IGNORES attn_logit_softcapping (Gemma3Attention passes
                        no softcap to the attention function; Gemma 3 replaced Gemma 2's soft-capping
                        by q/k norms), so the reference has the final cap only; the metadata says so.
                        config.json as transformers 5 writes it (rope_parameters per layer type).
    phi3                Phi3Config: 2 layers, 4 heads, 2 kv heads, fused self_attn.qkv_proj (rows q, k,
                        v) and mlp.gate_up_proj (rows gate, up), untied, partial_rotary_factor 1.0,
                        no rope scaling, rope_theta 1e4, original_max_position_embeddings 64,
                        intermediate 64, eps 1e-5.
    phi3_partial        the same with partial_rotary_factor 0.5: rope on the first 8 of the 16 dims of
                        each head (rotate_half within those 8), the other 8 pass through.
    qwen3_moe           Qwen3MoeConfig: 3 layers, mlp_only_layers [1] (layer 1 a dense MLP with
                        intermediate 48, layers 0 and 2 MoE), 4 experts, top-2, moe_intermediate 32,
                        norm_topk_prob true, 4 heads, 1 kv head, head_dim 16 (explicit), q/k norm,
                        tied, rope_theta 1e6, eps 1e-6.
    mixtral             MixtralConfig: 2 layers, 4 experts (block_sparse_moe, w1/w3/w2), top-2
                        (always renormalised), expert intermediate 32, 4 heads, 2 kv heads, untied,
                        rope_theta 1e6, sliding_window null, eps 1e-5.
    qwen3_moe_sparse    Qwen3MoeConfig with every layer MoE: 2 layers, head_dim 24 (q 96 wide), else
                        as qwen3_moe. Exists because llama.cpp's converter refuses qwen3_moe's dense
                        layer (tiny_gguf.py); this one has a GGUF.
    olmoe               OlmoeConfig: 2 layers, 4 experts top-2, norm_topk_prob false, expert
                        intermediate 32, 4 heads / 2 kv heads, q_norm (64 wide) and k_norm (32
                        wide) over the whole projection, untied, rope_theta 1e4, eps 1e-5.
    phi3_longrope       Phi-3 long-context rope (Phi-3-mini-128k / Phi-3.5-mini's `longrope`): as phi3
                        with partial_rotary_factor 0.75 (rope on 12 of 16 dims, 6 frequencies),
                        max_position_embeddings 128, original_max_position_embeddings 32, seeded random
                        short_factor (in [1, 2.5)) and long_factor (in [1, 16)), no attention_factor
                        (transformers derives sqrt(1 + ln(128/32) / ln(32)) = 1.1832). config.json
                        rewritten in the style of the published Phi-3 files (top-level
                        original_max_position_embeddings, rope_theta and partial_rotary_factor,
                        `"rope_scaling": {"type": "longrope", "short_factor", "long_factor"}`,
                        torch_dtype; no rope_parameters). Besides the usual 24-token reference
                        (shorter than 32 tokens: short factors) reference.safetensors has
                        input_ids_long i64 [2, 48] (whose first 24 tokens are input_ids) and
                        logits_long f32 [2, 48, 128] (48 > 32 tokens: long factors); the metadata's
                        switch_max_abs_diff is max |logits_long[:, :24] - logits|, what the switch
                        changes on the same tokens.

For the family cases reference.safetensors also holds

        hidden_states          f32   [L+1, 24, H]  sequence 0: [0] embeddings as layer 0 sees them
                                                   (Gemma: times sqrt(64) = 8), [i] output of layer
                                                   i-1 for i < L, [L] model.norm(output of the last
                                                   layer), i.e. final-normed (transformers 5 replaces
                                                   the last captured layer output by last_hidden_state;
                                                   checked)
        hidden_last_layer_raw  f32   [24, H]       output of the last decoder layer before the norm
    and for the MoE cases, per MoE layer N (hooked at model.layers[N].mlp.gate, the router):
        router_topk_layerN     int64 [48, 2]       expert ids per token (row b*24 + t), in torch.topk
                                                   order (descending probability)
        router_weights_layerN  f32   [48, 2]       their weights (top-k probabilities renormalised)
        router_counts_layerN   int64 [4]           (token, slot) assignments per expert
    The MoE seed is searched (seed, seed+1, ...) until every top-k decision of both sequences in
    every MoE layer has p[k-1] - p[k] > 1e-3 (p = sorted softmax of the router logits, f32); the
    minimum and the search are in the metadata (router_min_gap, seed_search) and the printed JSON.

The config.json rewrites are checked: the reference is computed from the directory as reloaded by
transformers, and it must match the in-memory model (bit-exact for float32, and with bf16-rounded
weights for the bf16 case), so every variant is one transformers itself reads the same way.

Run:
    .venv-ref/bin/python tools/reference/tiny_models.py            # all cases
    .venv-ref/bin/python tools/reference/tiny_models.py --only qwen2 --out-dir /tmp/tiny
    .venv-ref/bin/python tools/reference/tiny_models.py --only qwen3 gemma3 gemma3_softcap phi3 \
        phi3_partial qwen3_moe mixtral qwen3_moe_sparse          # the family cases only
    .venv-ref/bin/python tools/reference/tiny_models.py --only phi3_longrope
Then tools/reference/tiny_gguf.py makes the llama.cpp GGUF copies (model.f32.gguf).

Note: rerunning the first four cases on another machine can change their reference logits in the
last bits (~1e-6, CPU kernels); their committed files are the originals.
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


def make_config(name, seed=None):
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
    return make_family_config(name, seed)


# The cases of the first fixture set: their files are committed and must not change (their seeds are
# args.seed + 100 * index, so new cases are only ever appended to CASES).
LEGACY_CASES = ["llama", "qwen2", "mistral", "llama_bf16_sharded"]
FAMILY_CASES = ["qwen3", "gemma3", "gemma3_softcap", "phi3", "phi3_partial", "qwen3_moe", "mixtral", "qwen3_moe_sparse",
                "olmoe", "phi3_longrope"]
CASES = LEGACY_CASES + FAMILY_CASES
GEMMA_CASES = ("gemma3", "gemma3_softcap")
MOE_CASES = ("qwen3_moe", "mixtral", "qwen3_moe_sparse", "olmoe")
# Gemma 3 layer pattern: sliding window 8 < the 24-token sequences, so the window mask matters.
GEMMA_LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
GEMMA_FINAL_SOFTCAP = 3.0  # pre-cap logits reach ~|4|, so tanh(x/3)*3 is far from linear there
GEMMA_ATTN_SOFTCAP = 1.0  # ignored by transformers' Gemma3 (see the docstring); recorded all the same
MIN_ROUTER_GAP = 1e-3  # MoE cases: the seed is searched until every top-k decision has this margin
# phi3_longrope: the long reference sequence (> LONGROPE_ORIGINAL tokens, so the long factors apply)
LONGROPE_ORIGINAL, LONGROPE_MAX, SEQ_LONG = 32, 128, 48


def longrope_factors(seed, n):
    """Seeded short and long factors (n each), rounded to 6 digits so config.json reads exactly."""
    import torch

    g = torch.Generator().manual_seed(seed + 7)
    short = (1.0 + 1.5 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    long = (1.0 + 15.0 * torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    return [round(x, 6) for x in short], [round(x, 6) for x in long]


def make_family_config(name, seed=None):
    from transformers import MixtralConfig, Phi3Config, Qwen3Config, Qwen3MoeConfig
    from transformers.models.gemma3 import Gemma3TextConfig

    common = dict(vocab_size=128, hidden_size=64, max_position_embeddings=64)
    if name == "phi3_longrope":
        rotary = int(16 * 0.75)
        short, long = longrope_factors(seed, rotary // 2)
        return Phi3Config(
            **{**common, "max_position_embeddings": LONGROPE_MAX},
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            original_max_position_embeddings=LONGROPE_ORIGINAL,
            partial_rotary_factor=0.75,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.75,
                "short_factor": short,
                "long_factor": long,
                "original_max_position_embeddings": LONGROPE_ORIGINAL,
            },
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            sliding_window=None,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
        )
    if name == "qwen3":
        return Qwen3Config(
            **common,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            tie_word_embeddings=True,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            use_sliding_window=False,
            bos_token_id=1,
            eos_token_id=2,
        )
    if name in GEMMA_CASES:
        softcap = name == "gemma3_softcap"
        return Gemma3TextConfig(
            **common,
            intermediate_size=24,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=24,
            layer_types=list(GEMMA_LAYER_TYPES),
            sliding_window=8,
            rope_theta=1e6,
            rope_local_base_freq=1e4,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            attn_logit_softcapping=GEMMA_ATTN_SOFTCAP if softcap else None,
            final_logit_softcapping=GEMMA_FINAL_SOFTCAP if softcap else None,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )
    if name in ("phi3", "phi3_partial"):
        return Phi3Config(
            **common,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            original_max_position_embeddings=64,
            rope_theta=10000.0,
            partial_rotary_factor=0.5 if name == "phi3_partial" else 1.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            sliding_window=None,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
        )
    if name in ("qwen3_moe", "qwen3_moe_sparse"):
        dense_mix = name == "qwen3_moe"
        return Qwen3MoeConfig(
            **common,
            intermediate_size=48,
            moe_intermediate_size=32,
            num_hidden_layers=3 if dense_mix else 2,
            mlp_only_layers=[1] if dense_mix else [],
            decoder_sparse_step=1,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16 if dense_mix else 24,
            tie_word_embeddings=True,
            rope_theta=1e6,
            rms_norm_eps=1e-6,
            use_sliding_window=False,
            bos_token_id=1,
            eos_token_id=2,
        )
    if name == "olmoe":
        from transformers import OlmoeConfig

        # q_norm/k_norm over the whole projection (not per head), softmax top-k without
        # renormalisation (norm_topk_prob false, as OLMoE-1B-7B), GQA to tell the k_norm width apart
        return OlmoeConfig(
            **common,
            intermediate_size=32,
            num_hidden_layers=2,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_theta=1e4,
            rms_norm_eps=1e-5,
            clip_qkv=None,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    if name == "mixtral":
        return MixtralConfig(
            **common,
            intermediate_size=32,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_theta=1e6,
            rms_norm_eps=1e-5,
            sliding_window=None,
            bos_token_id=1,
            eos_token_id=2,
        )
    raise ValueError(name)


def init_weights(model, seed, norm_offset=1.0):
    """Deterministic, deliberately non-trivial weights (so wrong kernels show up in the logits).

    Norm weights are norm_offset + 0.2*N(0,1): 1 + 0.2N for x*w norms, 0.2N (norm_offset 0) for
    Gemma's x*(1+w) norms, so both compute with a scale of about 1.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if pname.endswith("norm.weight"):
                p.copy_(norm_offset + 0.2 * torch.randn(p.shape, generator=g))
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
    elif name == "gemma3":
        # The style of the published Gemma 3 config.json files (google/gemma-3-270m, -4b): rope_theta
        # (full layers), rope_local_base_freq (sliding layers), rope_scaling for the full layers,
        # torch_dtype; no rope_parameters.
        cfg.pop("rope_parameters", None)
        cfg["rope_theta"] = rp["full_attention"]["rope_theta"]
        cfg["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": rp["full_attention"]["factor"]}
        cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    elif name == "phi3_longrope":
        # The style of the published Phi-3 long-context files (microsoft/Phi-3-mini-128k-instruct,
        # Phi-3.5-mini-instruct): top-level rope_theta, partial_rotary_factor and
        # original_max_position_embeddings, rope_scaling with "type" and the two factor lists.
        cfg.pop("rope_parameters", None)
        cfg["rope_theta"] = rp["rope_theta"]
        cfg["partial_rotary_factor"] = rp["partial_rotary_factor"]
        cfg["original_max_position_embeddings"] = LONGROPE_ORIGINAL
        cfg["rope_scaling"] = {"type": "longrope", "short_factor": rp["short_factor"], "long_factor": rp["long_factor"]}
        cfg["torch_dtype"] = cfg.pop("dtype", "float32")
    elif name in FAMILY_CASES:
        pass  # as transformers 5 writes it
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


def run_reference(model, input_ids):
    import torch

    with torch.inference_mode():
        out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    return out.logits.float().contiguous(), out.hidden_states[1][0].float().contiguous()


def run_family_reference(model, input_ids, moe):
    """Logits, all hidden states of sequence 0, and (MoE) what every router decided.

    The router is hooked at `model.model.layers[i].mlp.gate` (transformers 5: Qwen3MoeTopKRouter /
    MixtralTopKRouter, returning (router_logits, top_k_weights, top_k_index)); the margin of each
    decision is p[k-1] - p[k] of the sorted softmax(router_logits) in float32, as the model computes it.
    """
    import torch

    layers = model.model.layers
    routers, hooks, last_raw = {}, [], {}
    if moe:
        for i, layer in enumerate(layers):
            gate = getattr(layer.mlp, "gate", None)
            if gate is None or not hasattr(gate, "top_k"):
                continue  # dense layer (Qwen3-MoE mlp_only_layers)

            def hook(mod, args, out, i=i):
                logits, weights, index = out
                routers[i] = (logits.detach().float(), weights.detach().float(), index.detach())

            hooks.append(gate.register_forward_hook(hook))
    hooks.append(layers[-1].register_forward_hook(lambda mod, a, out: last_raw.setdefault("h", out)))
    try:
        with torch.inference_mode():
            out = model(input_ids=input_ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    raw = last_raw["h"][0] if isinstance(last_raw["h"], tuple) else last_raw["h"]
    res = {
        "logits": out.logits.float().contiguous(),
        "hidden_layer1": out.hidden_states[1][0].float().contiguous(),
        "hidden_states": torch.stack([h[0].float() for h in out.hidden_states]).contiguous(),
        "hidden_last_layer_raw": raw[0].float().contiguous(),
        # The last entry of hidden_states is the final-normed last_hidden_state (transformers 5
        # replaces the captured last layer output by it); check that instead of assuming it.
        "last_is_normed": bool(torch.equal(out.hidden_states[-1][0], model.model.norm(raw)[0])),
        "routers": {},
    }
    k = getattr(model.config, "num_experts_per_tok", None)
    for i, (logits, weights, index) in sorted(routers.items()):
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        srt = probs.sort(dim=-1, descending=True).values
        gap = srt[:, k - 1] - srt[:, k]
        assert torch.equal(probs.topk(k, dim=-1).indices, index), "router top-k differs from the hook's"
        n_exp = probs.shape[-1]
        res["routers"][i] = {
            "index": index.to(torch.int64).contiguous(),
            "weights": weights.contiguous(),
            "counts": torch.bincount(index.reshape(-1), minlength=n_exp).to(torch.int64),
            "min_gap": float(gap.min()),
        }
    return res


def attn_score_absmax(model, input_ids):
    """Largest |q.k * scaling| (pre-softcap attention logit) over all layers/heads, via the eager path."""
    import torch
    from transformers.models.gemma3 import modeling_gemma3 as MG

    orig, seen = MG.eager_attention_forward, []

    def wrapped(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kw):
        k = MG.repeat_kv(key, module.num_key_value_groups)
        seen.append(float((torch.matmul(query, k.transpose(2, 3)) * scaling).abs().max()))
        return orig(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, softcap=softcap, **kw)

    MG.eager_attention_forward = wrapped
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False)
    finally:
        MG.eager_attention_forward = orig
    return max(seen)


def build_family_case(name, out_root, base_seed, max_tries=50):
    """The family cases (FAMILY_CASES); MoE cases search seeds base_seed, base_seed+1, ..."""
    import torch
    from transformers import AutoModelForCausalLM

    moe = name in MOE_CASES
    gemma = name in GEMMA_CASES
    longrope = name == "phi3_longrope"
    tried = []
    for attempt in range(max_tries if moe else 1):
        seed = base_seed + attempt
        cfg = make_config(name, seed)
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
        init_weights(model, seed, norm_offset=0.0 if gemma else 1.0)
        model.eval()
        g = torch.Generator().manual_seed(seed + 1)
        if longrope:
            ids_long = torch.randint(0, cfg.vocab_size, (BATCH, SEQ_LONG), generator=g, dtype=torch.long)
            input_ids = ids_long[:, :SEQ].contiguous()
        else:
            input_ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=g, dtype=torch.long)
        mem = run_family_reference(model, input_ids, moe)
        if not moe:
            break
        gap = min(r["min_gap"] for r in mem["routers"].values())
        tried.append({"seed": seed, "min_gap": gap})
        if gap > MIN_ROUTER_GAP:
            break
    else:
        raise SystemExit(f"{name}: no seed in {tried} gives a router margin > {MIN_ROUTER_GAP}")

    d = os.path.join(out_root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    model.save_pretrained(d)
    cfg_json = rewrite_config(name, os.path.join(d, "config.json"))

    loaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    loaded.eval()
    for pn, p in loaded.named_parameters():
        assert p.dtype == torch.float32, pn
    ref = run_family_reference(loaded, input_ids, moe)
    for key in ("logits", "hidden_states", "hidden_last_layer_raw"):
        diff = float((ref[key] - mem[key]).abs().max())
        if diff > 1e-5:
            raise SystemExit(f"{name}: reloaded model disagrees with the in-memory one on {key} ({diff})")
    max_reload_diff = float((ref["logits"] - mem["logits"]).abs().max())
    for i, r in ref["routers"].items():
        assert torch.equal(r["index"], mem["routers"][i]["index"]), f"{name}: routing changed on reload"
    assert ref["last_is_normed"], f"{name}: hidden_states[-1] is not norm(last layer output)"
    # hidden_states[1] of the family stack is the same tensor as hidden_layer1.
    assert torch.equal(ref["hidden_states"][1], ref["hidden_layer1"])

    tensors = {
        "input_ids": input_ids.contiguous(),
        "logits": ref["logits"],
        "hidden_layer1": ref["hidden_layer1"],
        "hidden_states": ref["hidden_states"],
        "hidden_last_layer_raw": ref["hidden_last_layer_raw"],
    }
    longrope_info = {}
    if longrope:
        # The long sequence: transformers' longrope_frequency_update picks the long factors since
        # max(position_ids) + 1 = 48 > 32 (and the short ones for the 24-token run above).
        with torch.inference_mode():
            logits_long = loaded(input_ids=ids_long, use_cache=False).logits.float().contiguous()
            mem_long = model(input_ids=ids_long, use_cache=False).logits.float()
        diff = float((logits_long - mem_long).abs().max())
        if diff > 1e-5:
            raise SystemExit(f"{name}: reloaded model disagrees with the in-memory one on the long run ({diff})")
        rot = loaded.model.rotary_emb
        assert torch.equal(rot.inv_freq, rot.long_inv_freq), "the long run did not switch to the long factors"
        switch = float((logits_long[:, :SEQ] - ref["logits"]).abs().max())
        tensors["input_ids_long"] = ids_long.contiguous()
        tensors["logits_long"] = logits_long
        rp = loaded.config.rope_parameters
        longrope_info = {
            "original_max_position_embeddings": rp["original_max_position_embeddings"],
            "attention_scaling": rot.attention_scaling,
            "short_factor": rp["short_factor"],
            "long_factor": rp["long_factor"],
            "switch_max_abs_diff": switch,
        }
    n_layers = cfg.num_hidden_layers
    meta = {
        "producer": "tools/reference/tiny_models.py",
        "case": name,
        "seed": str(seed),
        "dtype": "float32",
        "weights_dtype": "float32",
        "attn_implementation": "eager",
        "hidden_layer1": "hidden_states[1][0]: output of decoder layer 0, sequence 0",
        "hidden_states": (
            f"[{n_layers + 1}, {SEQ}, {cfg.hidden_size}], sequence 0: entry 0 = token embeddings as the "
            "first layer sees them (Gemma: already times sqrt(hidden_size)), entry i (1..L-1) = output of "
            f"decoder layer i-1, entry L = model.norm(output of the last decoder layer), i.e. final-normed"
        ),
        "hidden_last_layer_raw": "output of the last decoder layer before the final norm, sequence 0",
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
    }
    info = {"case": name, "seed": seed}
    if longrope:
        meta.update(
            {
                "input_ids_long": f"int64 [{BATCH}, {SEQ_LONG}]: its first {SEQ} tokens are input_ids",
                "logits_long": f"f32 [{BATCH}, {SEQ_LONG}, {cfg.vocab_size}]: {SEQ_LONG} > "
                f"original_max_position_embeddings {LONGROPE_ORIGINAL}, so the long factors (the {SEQ}-token "
                "run uses the short ones); cos and sin times attention_scaling in both",
                "attention_scaling": repr(longrope_info["attention_scaling"]),
                "switch_max_abs_diff": repr(longrope_info["switch_max_abs_diff"]),
                "switch_max_abs_diff_def": f"max |logits_long[:, :{SEQ}] - logits|: the same tokens, long vs short factors",
            }
        )
        info.update(longrope_info)
    if moe:
        k = cfg.num_experts_per_tok
        for i, r in sorted(ref["routers"].items()):
            tensors[f"router_topk_layer{i}"] = r["index"]
            tensors[f"router_weights_layer{i}"] = r["weights"]
            tensors[f"router_counts_layer{i}"] = r["counts"]
        gap = min(r["min_gap"] for r in ref["routers"].values())
        meta.update(
            {
                "moe_layers": ",".join(str(i) for i in sorted(ref["routers"])),
                "router_topk_layerN": f"int64 [{BATCH * SEQ}, {k}]: experts chosen per token (row b*{SEQ}+t), "
                "in descending probability order as torch.topk returns them",
                "router_weights_layerN": f"f32 [{BATCH * SEQ}, {k}]: the weights applied to those experts"
                + (" (top-k renormalised)" if getattr(cfg, "norm_topk_prob", True) else ""),
                "router_counts_layerN": "int64 [num_experts]: (token, slot) assignments per expert, both sequences",
                "router_min_gap": repr(gap),
                "router_min_gap_def": "min over tokens and MoE layers of p[k-1]-p[k], p = sorted softmax(router logits), f32",
                "seed_search": json.dumps(tried),
            }
        )
        info.update(
            {
                "router_min_gap": gap,
                "router_min_gap_per_layer": {i: r["min_gap"] for i, r in sorted(ref["routers"].items())},
                "router_counts": {i: r["counts"].tolist() for i, r in sorted(ref["routers"].items())},
                "seed_search": tried,
            }
        )
    if gemma:
        hn = ref["hidden_states"][-1]
        with torch.inference_mode():
            pre = hn @ loaded.lm_head.weight.float().T  # logits before the final soft-cap (sequence 0)
        info["pre_softcap_logits_absmax_seq0"] = float(pre.abs().max())
        info["attn_score_absmax"] = attn_score_absmax(loaded, input_ids)
        meta["attn_logit_softcapping"] = repr(cfg.attn_logit_softcapping)
        meta["final_logit_softcapping"] = repr(cfg.final_logit_softcapping)
        if cfg.attn_logit_softcapping is not None:
            meta["attn_logit_softcapping_note"] = (
                f"IGNORED by transformers {__import__('transformers').__version__} Gemma3Attention (it passes no "
                "softcap to the attention function): the reference has no attention soft-capping"
            )
        if cfg.final_logit_softcapping is not None:
            c = cfg.final_logit_softcapping
            meta["final_logit_softcapping_note"] = (
                f"applied: logits = {c} * tanh(lm_head(h) / {c}); max |pre-cap logit| (seq 0) = "
                f"{info['pre_softcap_logits_absmax_seq0']:.3f}"
            )
    C.save_safetensors_sorted(tensors, os.path.join(d, "reference.safetensors"), metadata=meta)
    files = sorted(os.listdir(d))
    from safetensors import safe_open

    keys = []
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as sf:
        keys = sorted(sf.keys())
    info.update(
        {
            "files": files,
            "bytes": sum(os.path.getsize(os.path.join(d, f)) for f in files),
            "logits_std": float(ref["logits"].std()),
            "logits_absmax": float(ref["logits"].abs().max()),
            "hidden_layer1_std": float(ref["hidden_layer1"].std()),
            "reload_max_abs_diff": max_reload_diff,
            "tie_word_embeddings": cfg_json.get("tie_word_embeddings"),
            "params": sum(p.numel() for p in loaded.parameters()),
            "state_dict_keys_saved": len(keys),
            "has_lm_head": "lm_head.weight" in keys,
            "layer0_keys": [k for k in keys if k.startswith("model.layers.0.")],
        }
    )
    if name == "qwen3_moe":
        info["layer1_keys"] = [k for k in keys if k.startswith("model.layers.1.")]
    return info


def build_case(name, out_root, seed):
    import torch

    if name in FAMILY_CASES:
        return build_family_case(name, out_root, seed)
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
