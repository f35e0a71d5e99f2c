//! One decoder layer of the Llama family, runnable on its own on a batch of hidden states.
//!
//! `DecoderLayer::forward` calls a [`LayerHook`] with the input of every group of linears
//! (`{q,k,v}`, `{o}`, `{gate,up}`, `{down}`) just before they are applied, with mutable access to
//! the layer's weights: calibration observes inputs there, and a compressor can replace a group's
//! weights so that later groups see the outputs of already-compressed ones ("true sequential").
use crate::arch::{self, Group, Linear};
use crate::config::{ModelConfig, RopeScaling};
use crate::source::TensorSource;
use crate::tensor::{linear, rms_norm, swiglu, Tensor};
use anyhow::{bail, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Observes (and may modify) a layer's weights before each group of linears is applied.
pub trait LayerHook {
    /// `input` is `[rows, d_in]` row-major: the common input of `group`'s linears.
    fn before_group(
        &mut self,
        layer: &mut DecoderLayer,
        group: Group,
        input: &[f32],
        rows: usize,
    ) -> Result<()>;
}

/// A hook that does nothing (plain inference).
pub struct NoHook;
impl LayerHook for NoHook {
    fn before_group(&mut self, _: &mut DecoderLayer, _: Group, _: &[f32], _: usize) -> Result<()> {
        Ok(())
    }
}

/// A linear layer: weight `[d_out, d_in]` and optional bias `[d_out]`.
#[derive(Clone, Debug)]
pub struct LinearWeights {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// The weights of one decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub index: usize,
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    /// Indexed by `Linear as usize` (q, k, v, o, gate, up, down).
    pub linears: Vec<LinearWeights>,
}

/// Loads a tensor and checks its shape against what the config implies.
pub fn load_checked(src: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<Tensor> {
    let t = src.load(name)?;
    check_shape(src, name, &t.shape, shape)?;
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: tensor {} has a non-finite value ({}) at element {i}",
            src.describe(),
            src.label(name),
            t.data[i]
        );
    }
    Ok(t)
}

/// Errors, naming the file and tensor, when shape `got` of tensor `name` is not `want`.
pub fn check_shape(
    src: &dyn TensorSource,
    name: &str,
    got: &[usize],
    want: &[usize],
) -> Result<()> {
    if got != want {
        bail!(
            "{}: tensor {} has shape {:?}, but the model config implies {:?}",
            src.describe(),
            src.label(name),
            got,
            want
        );
    }
    Ok(())
}

/// Checks, before any tensor data is read, that `src` holds every layer `cfg` declares (so a
/// declared layer count cannot drive work or memory beyond what the file holds: the loop stops at
/// the first layer missing) and that the embedding and the first layer have the shapes `cfg`
/// implies (so no buffer sized from the config is allocated before the config is checked against
/// the file).
pub fn check_layout(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<()> {
    for i in 0..cfg.num_layers {
        let name = arch::hf_linear(i, Linear::Q, "weight");
        if !src.contains(&name) {
            bail!(
                "{}: the config declares {} layers, but tensor {} of layer {i} is missing",
                src.describe(),
                cfg.num_layers,
                src.label(&name)
            );
        }
    }
    let mut expected = vec![(
        arch::HF_EMBED.to_string(),
        vec![cfg.vocab_size, cfg.hidden_size],
    )];
    for l in Linear::ALL {
        expected.push((
            arch::hf_linear(0, l, "weight"),
            linear_shape(cfg, l).to_vec(),
        ));
    }
    for (name, want) in expected {
        if let Some(got) = src.shape(&name) {
            check_shape(src, &name, &got, &want)?;
        }
    }
    Ok(())
}

/// `[d_out, d_in]` of a linear under `cfg`.
pub fn linear_shape(cfg: &ModelConfig, l: Linear) -> [usize; 2] {
    let (h, q, kv, i) = (
        cfg.hidden_size,
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
        cfg.intermediate_size,
    );
    match l {
        Linear::Q => [q, h],
        Linear::K | Linear::V => [kv, h],
        Linear::O => [h, q],
        Linear::Gate | Linear::Up => [i, h],
        Linear::Down => [h, i],
    }
}

fn has_bias(cfg: &ModelConfig, l: Linear) -> bool {
    match l.group() {
        Group::AttnIn => cfg.qkv_bias,
        Group::AttnOut => cfg.o_bias,
        _ => cfg.mlp_bias,
    }
}

impl DecoderLayer {
    /// Loads layer `index` from `src`, checking every shape against `cfg`.
    pub fn load(src: &dyn TensorSource, cfg: &ModelConfig, index: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        let mut linears = Vec::with_capacity(7);
        for l in Linear::ALL {
            let shape = linear_shape(cfg, l);
            let weight = load_checked(src, &arch::hf_linear(index, l, "weight"), &shape)?;
            let bias = if has_bias(cfg, l) {
                Some(load_checked(
                    src,
                    &arch::hf_linear(index, l, "bias"),
                    &shape[..1],
                )?)
            } else {
                None
            };
            linears.push(LinearWeights { weight, bias });
        }
        Ok(DecoderLayer {
            index,
            input_norm: load_checked(src, &arch::hf_input_norm(index), &[h])?,
            post_norm: load_checked(src, &arch::hf_post_norm(index), &[h])?,
            linears,
        })
    }

    pub fn linear(&self, l: Linear) -> &LinearWeights {
        &self.linears[l as usize]
    }
    pub fn linear_mut(&mut self, l: Linear) -> &mut LinearWeights {
        &mut self.linears[l as usize]
    }

    fn apply(&self, l: Linear, x: &[f32], rows: usize) -> Vec<f32> {
        let lw = self.linear(l);
        let mut y = vec![0f32; rows * lw.weight.shape[0]];
        linear(x, rows, &lw.weight, lw.bias.as_ref(), &mut y);
        y
    }

    /// Runs the layer in place on `x` = `[batch * seq, hidden]` (`batch` sequences of `seq` tokens,
    /// positions 0..seq, causal attention), calling `hook` before each group of linears.
    pub fn forward(
        &mut self,
        cfg: &ModelConfig,
        rope: &Rope,
        x: &mut [f32],
        batch: usize,
        seq: usize,
        hook: &mut dyn LayerHook,
    ) -> Result<()> {
        let (hd, nh, nkv, h) = (
            cfg.head_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.hidden_size,
        );
        let rows = batch * seq;
        assert_eq!(x.len(), rows * h);
        let eps = cfg.rms_norm_eps as f32;

        let mut normed = vec![0f32; rows * h];
        rms_norm(x, &self.input_norm.data, eps, &mut normed);
        hook.before_group(self, Group::AttnIn, &normed, rows)?;
        let mut q = self.apply(Linear::Q, &normed, rows);
        let mut k = self.apply(Linear::K, &normed, rows);
        let v = self.apply(Linear::V, &normed, rows);
        rope.apply(&mut q, seq, nh, hd);
        rope.apply(&mut k, seq, nkv, hd);
        let attn = attention(&q, &k, &v, batch, seq, nh, nkv, hd);
        drop((q, k, v));

        hook.before_group(self, Group::AttnOut, &attn, rows)?;
        let o = self.apply(Linear::O, &attn, rows);
        for (a, b) in x.iter_mut().zip(&o) {
            *a += b;
        }
        drop((attn, o));

        rms_norm(x, &self.post_norm.data, eps, &mut normed);
        hook.before_group(self, Group::MlpIn, &normed, rows)?;
        let mut gate = self.apply(Linear::Gate, &normed, rows);
        let up = self.apply(Linear::Up, &normed, rows);
        swiglu(&mut gate, &up);
        drop(up);
        hook.before_group(self, Group::MlpOut, &gate, rows)?;
        let down = self.apply(Linear::Down, &gate, rows);
        for (a, b) in x.iter_mut().zip(&down) {
            *a += b;
        }
        Ok(())
    }
}

/// Query rows per block in [`attention`]: each block's scores are computed only against the keys
/// up to its last row, so about half of the `seq x seq` products are skipped (causal mask).
const ATTN_BLOCK: usize = 64;

/// Causal grouped-query attention: `q` `[rows, nh*hd]`, `k`/`v` `[rows, nkv*hd]` -> `[rows, nh*hd]`.
///
/// One task per (sequence, head), run in parallel; within it, query rows go in blocks of
/// [`ATTN_BLOCK`]: `S = scale * Q_blk K[..end]^T`, a row-wise softmax over each row's causal prefix
/// (positions after the row are set to 0), then `O_blk = S V[..end]`. The score buffer is
/// reused across the tasks of a thread.
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: usize,
    seq: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> Vec<f32> {
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let qw = nh * hd;
    let kw = nkv * hd;
    let blk = ATTN_BLOCK.min(seq.max(1));
    let heads: Vec<(usize, usize, Vec<f32>)> = (0..batch * nh)
        .into_par_iter()
        .map_init(
            || vec![0f32; blk * seq],
            |s, bh| {
                let (b, hq) = (bh / nh, bh % nh);
                let hk = hq / group;
                let qm =
                    MatRef::from_row_major_slice(&q[b * seq * qw..(b + 1) * seq * qw], seq, qw)
                        .subcols(hq * hd, hd);
                let km =
                    MatRef::from_row_major_slice(&k[b * seq * kw..(b + 1) * seq * kw], seq, kw)
                        .subcols(hk * hd, hd);
                let vm =
                    MatRef::from_row_major_slice(&v[b * seq * kw..(b + 1) * seq * kw], seq, kw)
                        .subcols(hk * hd, hd);
                let mut out = vec![0f32; seq * hd];
                for r0 in (0..seq).step_by(blk) {
                    let r1 = (r0 + blk).min(seq);
                    let (nr, end) = (r1 - r0, r1);
                    let sb = &mut s[..nr * end];
                    matmul(
                        MatMut::from_row_major_slice_mut(sb, nr, end),
                        Accum::Replace,
                        qm.subrows(r0, nr),
                        km.subrows(0, end).transpose(),
                        scale,
                        Par::Seq,
                    );
                    for (i, row) in sb.chunks_exact_mut(end).enumerate() {
                        let last = r0 + i;
                        crate::fastmath::softmax_in_place(&mut row[..=last]);
                        row[last + 1..].fill(0.0);
                    }
                    matmul(
                        MatMut::from_row_major_slice_mut(&mut out[r0 * hd..r1 * hd], nr, hd),
                        Accum::Replace,
                        MatRef::from_row_major_slice(sb, nr, end),
                        vm.subrows(0, end),
                        1.0f32,
                        Par::Seq,
                    );
                }
                (b, hq, out)
            },
        )
        .collect();
    let mut y = vec![0f32; batch * seq * qw];
    for (b, hq, out) in heads {
        for t in 0..seq {
            let dst = (b * seq + t) * qw + hq * hd;
            y[dst..dst + hd].copy_from_slice(&out[t * hd..(t + 1) * hd]);
        }
    }
    y
}

/// Rotary position embeddings as Hugging Face applies them (`rotate_half`: the first and second
/// halves of each head form the pairs), with the config's frequency scaling.
pub struct Rope {
    half: usize,
    /// `[max_seq, half]` tables.
    cos: Vec<f32>,
    sin: Vec<f32>,
    max_seq: usize,
}

/// Inverse frequencies `1 / theta^(2i/d)`, scaled as in transformers' `ROPE_INIT_FUNCTIONS`.
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let (factor, lo, hi, old) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *original_max_position_embeddings as f32,
            );
            let low_wl = old / lo;
            let high_wl = old / hi;
            base.iter()
                .map(|&f| {
                    let wl = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wl > low_wl { f / factor } else { f };
                    let smooth = (old / wl - lo) / (hi - lo);
                    let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                    let medium = wl >= high_wl && wl <= low_wl;
                    if medium {
                        smoothed
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

impl Rope {
    pub fn new(cfg: &ModelConfig, max_seq: usize) -> Self {
        let inv = inv_freq(cfg);
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_seq * half);
        let mut sin = Vec::with_capacity(max_seq * half);
        for p in 0..max_seq {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Rope {
            half,
            cos,
            sin,
            max_seq,
        }
    }

    /// Rotates `x` = `[batch * seq, heads * 2 * half]` in place (position = index within its sequence).
    pub fn apply(&self, x: &mut [f32], seq: usize, heads: usize, hd: usize) {
        assert!(
            seq <= self.max_seq,
            "sequence of {seq} tokens exceeds the rotary table ({})",
            self.max_seq
        );
        assert_eq!(hd, 2 * self.half);
        let w = heads * hd;
        x.par_chunks_exact_mut(w).enumerate().for_each(|(r, row)| {
            let p = r % seq;
            let (c, s) = (
                &self.cos[p * self.half..(p + 1) * self.half],
                &self.sin[p * self.half..(p + 1) * self.half],
            );
            for head in row.chunks_exact_mut(hd) {
                let (a, b) = head.split_at_mut(self.half);
                for i in 0..self.half {
                    let (x1, x2) = (a[i], b[i]);
                    a[i] = x1 * c[i] - x2 * s[i];
                    b[i] = x2 * c[i] + x1 * s[i];
                }
            }
        });
    }
}
