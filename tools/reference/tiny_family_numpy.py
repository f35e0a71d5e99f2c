"""Independent float64 numpy forward pass of the tiny family fixtures, checked against their references.

Written from the semantics documented in tiny_models.py (not from transformers' code paths), so that
the fixtures double as a specification: Gemma 3's x*(1+w) norms, sqrt(hidden) embedding scale,
q/k norms before rope, query_pre_attn_scalar**-0.5 scaling, per-layer-type rope (sliding: theta
rope_local_base_freq, no scaling; full: rope_theta, inv_freq / linear factor), the sliding mask
(key j visible from query i iff j <= i and i - j < sliding_window), sandwich norms and the final
logit soft-cap (attention soft-cap NOT applied, as transformers does); Phi-3's fused qkv [q;k;v] and
gate_up [gate;up] and partial rope (rotate_half over the first head_dim*factor dims); MoE routing
(softmax in the router, top-k, renormalised when norm_topk_prob / always for Mixtral).

Run: .venv-ref/bin/python tools/reference/tiny_family_numpy.py [case ...]   (default: all family cases)
Prints the max |logit| and |hidden_states| differences (~1e-6 expected) and whether routing agrees.
"""

import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

R = C.FIXTURES_TINY + os.sep
FAMILY = ["qwen3", "gemma3", "gemma3_softcap", "phi3", "phi3_partial", "qwen3_moe", "mixtral", "qwen3_moe_sparse"]

def rms(x, w, eps, gemma):
    x = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * ((1.0 + w) if gemma else w)

def rope(x, inv_freq, rot):  # x [T, H, D], rotate_half on first `rot` dims
    T = x.shape[0]
    ang = np.arange(T)[:, None] * inv_freq[None, :]  # [T, rot/2]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    xr, xp = x[..., :rot], x[..., rot:]
    h = rot // 2
    rh = np.concatenate([-xr[..., h:], xr[..., :h]], -1)
    return np.concatenate([xr * cos + rh * sin, xp], -1)

def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

def silu(x):
    return x / (1 + np.exp(-x))

def softmax(x):
    x = x - x.max(-1, keepdims=True); e = np.exp(x); return e / e.sum(-1, keepdims=True)

def run(case):
    c = json.load(open(R + case + '/config.json'))
    W = {k: v.astype(np.float64) for k, v in load_file(R + case + '/model.safetensors').items()}
    ref = safe_open(R + case + '/reference.safetensors', 'np')
    ids = ref.get_tensor('input_ids')
    mt = c['model_type']
    gemma = mt == 'gemma3_text'
    H, nh, nkv = c['hidden_size'], c['num_attention_heads'], c['num_key_value_heads']
    hd = c.get('head_dim') or H // nh
    eps = c['rms_norm_eps']
    L = c['num_hidden_layers']
    out_logits, routes = [], {}
    for b in range(ids.shape[0]):
        T = ids.shape[1]
        x = W['model.embed_tokens.weight'][ids[b]]
        if gemma: x = x * np.float64(np.float32(H ** 0.5))
        hs = [x]
        for i in range(L):
            p = f'model.layers.{i}.'
            h = rms(x, W[p + 'input_layernorm.weight'], eps, gemma)
            if mt == 'phi3':
                qkv = h @ W[p + 'self_attn.qkv_proj.weight'].T
                q, k, v = qkv[:, :nh * hd], qkv[:, nh * hd:(nh + nkv) * hd], qkv[:, (nh + nkv) * hd:]
            else:
                q, k, v = (h @ W[p + f'self_attn.{n}_proj.weight'].T for n in 'qkv')
            q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
            if p + 'self_attn.q_norm.weight' in W:
                q = rms(q, W[p + 'self_attn.q_norm.weight'], eps, gemma)
                k = rms(k, W[p + 'self_attn.k_norm.weight'], eps, gemma)
            window = None
            if gemma:
                lt = c['layer_types'][i]
                if lt == 'sliding_attention':
                    theta = c.get('rope_local_base_freq') or c['rope_parameters']['sliding_attention']['rope_theta']; factor = 1.0
                    window = c['sliding_window']
                else:
                    theta = c.get('rope_theta') or c['rope_parameters']['full_attention']['rope_theta']
                    factor = (c.get('rope_scaling') or c['rope_parameters']['full_attention'])['factor']
                scale = c['query_pre_attn_scalar'] ** -0.5
                rot = hd
            else:
                rp = c.get('rope_parameters') or {}
                theta = rp.get('rope_theta', c.get('rope_theta')); factor = 1.0
                prf = rp.get('partial_rotary_factor', 1.0)
                rot = int(hd * prf)
                scale = hd ** -0.5
            inv = 1.0 / (theta ** (np.arange(0, rot, 2, dtype=np.float32).astype(np.float64) / rot)) / factor
            q, k = rope(q, inv, rot), rope(k, inv, rot)
            g = nh // nkv
            k = np.repeat(k, g, axis=1); v = np.repeat(v, g, axis=1)
            s = np.einsum('thd,shd->hts', q, k) * scale
            ti, si = np.arange(T)[:, None], np.arange(T)[None, :]
            allowed = si <= ti
            if window: allowed &= (ti - si) < window
            s = np.where(allowed[None], s, -np.inf)
            a = np.einsum('hts,shd->thd', softmax(s), v).reshape(T, nh * hd)
            o = a @ W[p + 'self_attn.o_proj.weight'].T
            if gemma:
                o = rms(o, W[p + 'post_attention_layernorm.weight'], eps, True)
                x = x + o
                h = rms(x, W[p + 'pre_feedforward_layernorm.weight'], eps, True)
                m = (gelu_tanh(h @ W[p + 'mlp.gate_proj.weight'].T) * (h @ W[p + 'mlp.up_proj.weight'].T)) @ W[p + 'mlp.down_proj.weight'].T
                m = rms(m, W[p + 'post_feedforward_layernorm.weight'], eps, True)
                x = x + m
            else:
                x = x + o
                h = rms(x, W[p + 'post_attention_layernorm.weight'], eps, False)
                if mt == 'phi3':
                    gu = h @ W[p + 'mlp.gate_up_proj.weight'].T
                    I = gu.shape[1] // 2
                    m = (silu(gu[:, :I]) * gu[:, I:]) @ W[p + 'mlp.down_proj.weight'].T
                elif p + 'mlp.gate.weight' in W or p + 'block_sparse_moe.gate.weight' in W:
                    pre = 'mlp' if p + 'mlp.gate.weight' in W else 'block_sparse_moe'
                    names = ('gate_proj', 'up_proj', 'down_proj') if pre == 'mlp' else ('w1', 'w3', 'w2')
                    pr = softmax(h @ W[p + pre + '.gate.weight'].T)
                    kk = c['num_experts_per_tok']
                    top = np.argsort(-pr, axis=-1, kind='stable')[:, :kk]
                    wts = np.take_along_axis(pr, top, -1)
                    if c.get('norm_topk_prob', True): wts = wts / wts.sum(-1, keepdims=True)
                    routes.setdefault(i, []).append(top)
                    m = np.zeros_like(h)
                    for t in range(T):
                        for j in range(kk):
                            e = top[t, j]; q_ = f'{p}{pre}.experts.{e}.'
                            y = (silu(h[t] @ W[q_ + names[0] + '.weight'].T) * (h[t] @ W[q_ + names[1] + '.weight'].T)) @ W[q_ + names[2] + '.weight'].T
                            m[t] += wts[t, j] * y
                else:
                    m = (silu(h @ W[p + 'mlp.gate_proj.weight'].T) * (h @ W[p + 'mlp.up_proj.weight'].T)) @ W[p + 'mlp.down_proj.weight'].T
                x = x + m
            hs.append(x)
        xn = rms(x, W['model.norm.weight'], eps, gemma)
        hs[-1] = xn
        lm = W.get('lm_head.weight', W['model.embed_tokens.weight'])
        lg = xn @ lm.T
        if c.get('final_logit_softcapping'):
            cap = c['final_logit_softcapping']; lg = cap * np.tanh(lg / cap)
        out_logits.append(lg)
        if b == 0: hs0 = np.stack(hs)
    d = np.abs(np.stack(out_logits) - ref.get_tensor('logits')).max()
    dh = np.abs(hs0 - ref.get_tensor('hidden_states')).max()
    rr = ''
    for i, tops in routes.items():
        same = np.array_equal(np.concatenate(tops), ref.get_tensor(f'router_topk_layer{i}'))
        rr += f' routing layer{i} {"equal" if same else "DIFFERENT"}'
    print(f'{case}: max|logit diff| {d:.2e}  max|hidden_states diff| {dh:.2e}{rr}')
    assert d < 1e-4 and dh < 1e-4 and 'DIFFERENT' not in rr, case

if __name__ == "__main__":
    for case in sys.argv[1:] or FAMILY:
        run(case)
