//! One decoder layer of any family in [`crate::arch::FAMILIES`], runnable on its own on a batch
//! of hidden states.
//!
//! The layer's [`Layout`] (from the family table) says which linears and norms it holds; the
//! forward pass is built from shared blocks (norm, attention with q/k norms, sliding windows and
//! soft-capping, a gated MLP, a routed mixture of experts) and finds its weights by role.
//! `DecoderLayer::forward` calls a [`LayerHook`] with the input of every group of linears just
//! before they are applied, with mutable access to the layer's weights: calibration observes
//! inputs there, and a compressor can replace a group's weights so that later groups see the
//! outputs of already-compressed ones ("true sequential"). Groups are visited in
//! [`Layout::groups`] order: attention input, attention output, then the MLP's input and output
//! or, in a MoE layer, the router's input and each expert's gate/up and down.
use crate::arch::{self, Activation, Layout, NormSlot, NormStyle, Role, Routing, TensorKind};
use crate::config::{ModelConfig, RopeScaling};
use crate::source::TensorSource;
use crate::tensor::{linear, rms_norm, swiglu, Tensor};
use anyhow::{bail, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Observes (and may modify) a layer's weights before each group of linears is applied.
pub trait LayerHook {
    /// `input` is `[rows, d_in]` row-major: the common input of the linears of
    /// `layer.layout.groups[group]`. For an expert's group, `rows` are the tokens routed to it
    /// (possibly none), or every token when [`LayerHook::experts_see_all`] says so.
    fn before_group(
        &mut self,
        layer: &mut DecoderLayer,
        group: usize,
        input: &[f32],
        rows: usize,
    ) -> Result<()>;
    /// MoE: hand every token (not only the routed ones) to the experts' groups, for statistics;
    /// the routed tokens alone still make the layer's output.
    fn experts_see_all(&self) -> bool {
        false
    }
    /// MoE: called before expert `expert`'s groups with the number of tokens routed to it.
    fn routed(&mut self, _layer: usize, _expert: usize, _tokens: usize) {}
}

/// A hook that does nothing (plain inference).
pub struct NoHook;
impl LayerHook for NoHook {
    fn before_group(&mut self, _: &mut DecoderLayer, _: usize, _: &[f32], _: usize) -> Result<()> {
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
    pub layout: Layout,
    /// Parallel to `layout.linears`.
    pub linears: Vec<LinearWeights>,
    /// Parallel to `layout.norms`: the effective multipliers (`1 + w` already added for
    /// [`NormStyle::OnePlus`] families).
    pub norms: Vec<Tensor>,
    style: NormStyle,
    /// Fake-quantize the input of every linear (the MoE router excepted) with this scheme before
    /// its matmul (`eval --act-quant`, or the scheme a compressed model records); `None` after
    /// loading.
    pub act_quant: Option<crate::actquant::ActQuant>,
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
        let lay = arch::layer_layout(cfg, i);
        let name = arch::hf_layer_tensor(i, &lay.linears[0].path, "weight");
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
    let mut layers = vec![0];
    if let Some(m) = &cfg.moe {
        // the first MoE layer and the first dense one, so experts and dense MLPs are both checked
        layers.extend((0..cfg.num_layers).find(|&i| m.is_moe_layer(i) != m.is_moe_layer(0)));
    }
    for i in layers {
        for e in arch::layer_tensors(cfg, i, &arch::layer_layout(cfg, i)) {
            if matches!(e.kind, TensorKind::LinearWeight(_)) {
                expected.push((e.hf, e.shape));
            }
        }
    }
    for (name, want) in expected {
        if let Some(got) = src.shape(&name) {
            check_shape(src, &name, &got, &want)?;
        }
    }
    Ok(())
}

/// Rows of a fused weight's output that belong to each part (q/k/v, or gate/up).
fn split_cols(y: &[f32], rows: usize, widths: &[usize]) -> Vec<Vec<f32>> {
    let total: usize = widths.iter().sum();
    let mut parts: Vec<Vec<f32>> = widths
        .iter()
        .map(|w| Vec::with_capacity(rows * w))
        .collect();
    for row in y.chunks_exact(total) {
        let mut at = 0;
        for (p, &w) in parts.iter_mut().zip(widths) {
            p.extend_from_slice(&row[at..at + w]);
            at += w;
        }
    }
    parts
}

impl DecoderLayer {
    /// Loads layer `index` from `src`, checking every shape against `cfg`.
    pub fn load(src: &dyn TensorSource, cfg: &ModelConfig, index: usize) -> Result<Self> {
        let layout = arch::layer_layout(cfg, index);
        let mut linears = Vec::with_capacity(layout.linears.len());
        for l in &layout.linears {
            let weight = load_checked(
                src,
                &arch::hf_layer_tensor(index, &l.path, "weight"),
                &l.shape,
            )?;
            let bias = if l.bias {
                Some(load_checked(
                    src,
                    &arch::hf_layer_tensor(index, &l.path, "bias"),
                    &l.shape[..1],
                )?)
            } else {
                None
            };
            linears.push(LinearWeights { weight, bias });
        }
        let style = cfg.arch.norm_style;
        let mut norms = Vec::with_capacity(layout.norms.len());
        for n in &layout.norms {
            let mut t = load_checked(
                src,
                &arch::hf_layer_tensor(index, &n.path, "weight"),
                &[n.len],
            )?;
            if style == NormStyle::OnePlus {
                t.data.iter_mut().for_each(|w| *w += 1.0);
            }
            norms.push(t);
        }
        Ok(DecoderLayer {
            index,
            layout,
            linears,
            norms,
            style,
            act_quant: None,
        })
    }

    /// The layer's tensors in Hugging Face naming and layout (norms as stored: `w`, not `1 + w`).
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        let i = self.index;
        let mut v = Vec::new();
        for (spec, t) in self.layout.norms.iter().zip(&self.norms) {
            let mut t = t.clone();
            if self.style == NormStyle::OnePlus {
                t.data.iter_mut().for_each(|w| *w -= 1.0);
            }
            v.push((arch::hf_layer_tensor(i, &spec.path, "weight"), t));
        }
        for (spec, lw) in self.layout.linears.iter().zip(&self.linears) {
            v.push((
                arch::hf_layer_tensor(i, &spec.path, "weight"),
                lw.weight.clone(),
            ));
            if let Some(b) = &lw.bias {
                v.push((arch::hf_layer_tensor(i, &spec.path, "bias"), b.clone()));
            }
        }
        v
    }

    /// Folds a per-channel scale `s` of group `g`'s input into the layer, exactly: column `j`
    /// of every linear of the group is multiplied by `s_j`, and output channel `j` of the
    /// group's input producer ([`Layout::input_producer`]: a norm's multiplier, or rows of
    /// v_proj / up_proj with their bias) is divided by it. The layer computes the same function
    /// (up to float rounding); the group's weights are now `W diag(s)`, the form AWQ quantizes.
    /// An error where the group has no such producer or `s` is not positive and finite.
    pub fn fold_input_scale(&mut self, g: usize, s: &[f32]) -> Result<()> {
        let label = || self.layout.group_label(g);
        let Some(producer) = self.layout.input_producer(g) else {
            bail!(
                "layer {}: the input of {} cannot be rescaled exactly (grouped-query attention, \
                 or a MoE expert's shared input)",
                self.index,
                label()
            );
        };
        let d_in = self.layout.linears[self.layout.groups[g].linears[0]].shape[1];
        if s.len() != d_in || s.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            bail!(
                "layer {}: scales for {} must be {d_in} positive finite values",
                self.index,
                label()
            );
        }
        for &k in &self.layout.groups[g].linears {
            for row in self.linears[k].weight.data.chunks_exact_mut(d_in) {
                row.iter_mut().zip(s).for_each(|(w, f)| *w *= f);
            }
        }
        match producer {
            arch::InputProducer::Norm(i) => {
                self.norms[i]
                    .data
                    .iter_mut()
                    .zip(s)
                    .for_each(|(w, f)| *w /= f);
            }
            arch::InputProducer::Rows { linear, rows } => {
                let lw = &mut self.linears[linear];
                let cols = lw.weight.shape[1];
                for (j, r) in rows.enumerate() {
                    lw.weight.data[r * cols..(r + 1) * cols]
                        .iter_mut()
                        .for_each(|w| *w /= s[j]);
                    if let Some(b) = &mut lw.bias {
                        b.data[r] /= s[j];
                    }
                }
            }
        }
        Ok(())
    }

    /// Hugging Face name of linear `k`'s weight (`model.layers.3.self_attn.q_proj.weight`).
    pub fn linear_name(&self, k: usize) -> String {
        arch::hf_layer_tensor(self.index, &self.layout.linears[k].path, "weight")
    }

    /// The (non-expert) linear with `role`; panics when the layout has none (a table bug).
    pub fn linear(&self, role: Role) -> &LinearWeights {
        &self.linears[self.role_index(role)]
    }
    pub fn linear_mut(&mut self, role: Role) -> &mut LinearWeights {
        let k = self.role_index(role);
        &mut self.linears[k]
    }
    fn role_index(&self, role: Role) -> usize {
        self.layout
            .find(role)
            .unwrap_or_else(|| panic!("layer {} has no {role:?} linear", self.index))
    }
    /// The group that linear `k` belongs to.
    fn group_of(&self, k: usize) -> usize {
        self.layout
            .groups
            .iter()
            .position(|g| g.linears.contains(&k))
            .expect("every linear of a layout is in a group")
    }

    fn apply_k(&self, k: usize, x: &[f32], rows: usize) -> Vec<f32> {
        let lw = &self.linears[k];
        let mut y = vec![0f32; rows * lw.weight.shape[0]];
        match self.act_quant {
            // activation fake-quantization (`eval --act-quant`); the router stays exact
            Some(a) if self.layout.linears[k].role != Role::Router => {
                let xq = crate::actquant::fake_quant(a, x, lw.weight.shape[1]);
                linear(&xq, rows, &lw.weight, lw.bias.as_ref(), &mut y);
            }
            _ => linear(x, rows, &lw.weight, lw.bias.as_ref(), &mut y),
        }
        y
    }

    fn norm(&self, slot: NormSlot) -> Option<&[f32]> {
        self.layout
            .norm(slot)
            .map(|i| self.norms[i].data.as_slice())
    }

    /// Calls the hook for the group of linear `k` (found by role).
    fn hook_at(
        &mut self,
        k: usize,
        input: &[f32],
        rows: usize,
        hook: &mut dyn LayerHook,
    ) -> Result<()> {
        let g = self.group_of(k);
        hook.before_group(self, g, input, rows)
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
        self.forward_impl(cfg, rope, x, batch, seq, hook, None)
    }

    /// Incremental decoding: runs the layer on `n` new tokens `x` = `[n, hidden]` of one sequence
    /// whose earlier tokens' keys and values are in `cache` (positions `cache.len..cache.len + n`),
    /// and appends the new tokens' keys and values to it. The same blocks as
    /// [`forward`](Self::forward); only the attention reads the cached keys
    /// ([`attention_cached`]).
    pub fn forward_cached(
        &mut self,
        cfg: &ModelConfig,
        rope: &Rope,
        x: &mut [f32],
        n: usize,
        cache: &mut LayerCache,
    ) -> Result<()> {
        self.forward_impl(
            cfg,
            rope,
            x,
            1,
            n,
            &mut NoHook,
            Some(std::slice::from_mut(cache)),
        )
    }

    /// [`forward_cached`](Self::forward_cached) for `caches.len()` sequences at once, all of
    /// the same length so far: `x` is `[batch, n, hidden]`, sequence `b`'s rows attend to
    /// `caches[b]` alone. The linears see all `batch * n` rows in one product, so decoding a
    /// batch reads each weight once per step instead of once per sequence.
    pub fn forward_cached_batch(
        &mut self,
        cfg: &ModelConfig,
        rope: &Rope,
        x: &mut [f32],
        n: usize,
        caches: &mut [LayerCache],
    ) -> Result<()> {
        let batch = caches.len();
        self.forward_impl(cfg, rope, x, batch, n, &mut NoHook, Some(caches))
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_impl(
        &mut self,
        cfg: &ModelConfig,
        rope: &Rope,
        x: &mut [f32],
        batch: usize,
        seq: usize,
        hook: &mut dyn LayerHook,
        cache: Option<&mut [LayerCache]>,
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
        let lay = &self.layout;

        let mut normed = vec![0f32; rows * h];
        rms_norm(
            x,
            self.norm(NormSlot::AttnIn)
                .expect("every family has an input norm"),
            eps,
            &mut normed,
        );
        let (mut q, mut k, v) = match lay.find(Role::Qkv) {
            Some(f) => {
                self.hook_at(f, &normed, rows, hook)?;
                let y = self.apply_k(f, &normed, rows);
                let mut p = split_cols(&y, rows, &[nh * hd, nkv * hd, nkv * hd]).into_iter();
                (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
            }
            None => {
                let (iq, ik, iv) = (
                    self.role_index(Role::Q),
                    self.role_index(Role::K),
                    self.role_index(Role::V),
                );
                self.hook_at(iq, &normed, rows, hook)?;
                (
                    self.apply_k(iq, &normed, rows),
                    self.apply_k(ik, &normed, rows),
                    self.apply_k(iv, &normed, rows),
                )
            }
        };
        for (slot, t) in [(NormSlot::Q, &mut q), (NormSlot::K, &mut k)] {
            if let Some(w) = self.norm(slot) {
                // per head (rows of `hd` values), or over the whole projection (OLMoE): the
                // norm weight's length is the row
                let src = t.clone();
                rms_norm(&src, w, eps, t);
            }
        }
        let sliding = cfg.is_sliding(self.index);
        let heads = Heads {
            batch,
            seq,
            nh,
            nkv,
            hd,
        };
        let opts = AttnOpts {
            scale: cfg.attn_scale(),
            window: if sliding { cfg.sliding_window } else { None },
            softcap: cfg.attn_softcap.map(|c| c as f32),
        };
        let attn = match cache {
            None => {
                let table = rope.table(sliding, seq);
                table.apply(&mut q, seq, nh, hd);
                table.apply(&mut k, seq, nkv, hd);
                attention(&q, &k, &v, heads, opts)
            }
            Some(caches) => {
                assert_eq!(batch, caches.len(), "one KV cache per sequence");
                let pos0 = caches[0].len;
                assert!(
                    caches.iter().all(|c| c.len == pos0),
                    "the sequences of a batch must be of one length"
                );
                // the table of the sequence so far, as transformers picks LongRoPE's factors
                // from the largest position of a forward (the cached keys keep theirs)
                let table = rope.table(sliding, pos0 + seq);
                let (qw, kw) = (seq * nh * hd, seq * nkv * hd);
                // positions pos0.. in each sequence of the batch
                for b in 0..batch {
                    table.apply_from(&mut q[b * qw..(b + 1) * qw], pos0, nh, hd);
                    table.apply_from(&mut k[b * kw..(b + 1) * kw], pos0, nkv, hd);
                }
                let one = Heads { batch: 1, ..heads };
                let mut out = Vec::with_capacity(batch * qw);
                for (b, c) in caches.iter_mut().enumerate() {
                    c.k.extend_from_slice(&k[b * kw..(b + 1) * kw]);
                    c.v.extend_from_slice(&v[b * kw..(b + 1) * kw]);
                    c.len += seq;
                    out.extend(attention_cached(
                        &q[b * qw..(b + 1) * qw],
                        &c.k,
                        &c.v,
                        pos0,
                        one,
                        opts,
                    ));
                }
                out
            }
        };
        drop((q, k, v));

        let io = self.role_index(Role::O);
        self.hook_at(io, &attn, rows, hook)?;
        let mut o = self.apply_k(io, &attn, rows);
        drop(attn);
        if let Some(w) = self.norm(NormSlot::AttnOut) {
            let src = o.clone();
            rms_norm(&src, w, eps, &mut o);
        }
        for (a, b) in x.iter_mut().zip(&o) {
            *a += b;
        }
        drop(o);

        rms_norm(
            x,
            self.norm(NormSlot::FfnIn)
                .expect("every family has an MLP norm"),
            eps,
            &mut normed,
        );
        let mut out = if self.layout.find(Role::Router).is_some() {
            self.moe(cfg, &normed, rows, hook)?
        } else {
            self.dense_mlp(cfg, &normed, rows, hook)?
        };
        if let Some(w) = self.norm(NormSlot::FfnOut) {
            let src = out.clone();
            rms_norm(&src, w, eps, &mut out);
        }
        for (a, b) in x.iter_mut().zip(&out) {
            *a += b;
        }
        Ok(())
    }

    /// `down(act(gate(x)) * up(x))` with the (non-expert) MLP's linears.
    fn dense_mlp(
        &mut self,
        cfg: &ModelConfig,
        x: &[f32],
        rows: usize,
        hook: &mut dyn LayerHook,
    ) -> Result<Vec<f32>> {
        let fused = self.layout.find(Role::GateUp);
        let (first, up_k) = match fused {
            Some(f) => (f, None),
            None => (self.role_index(Role::Gate), Some(self.role_index(Role::Up))),
        };
        self.hook_at(first, x, rows, hook)?;
        let inter = match fused {
            Some(f) => self.linears[f].weight.shape[0] / 2,
            None => self.linears[first].weight.shape[0],
        };
        // gate and up are computed a slice of rows at a time, straight into the down projection's
        // input: only that [rows, inter] buffer is whole (the down group's hook needs it), not
        // gate and up as well, which at 64 x 512 tokens of a 1.5B model are 1.17 GB each. The
        // activation fake-quantization, if any, is applied to the whole input once (NVFP4's
        // global scale is per tensor), so the values are the same as unchunked.
        let xq = match self.act_quant {
            Some(a) => {
                std::borrow::Cow::Owned(crate::actquant::fake_quant(a, x, x.len() / rows.max(1)))
            }
            None => std::borrow::Cow::Borrowed(x),
        };
        let d_in = x.len() / rows.max(1);
        let step = (MLP_CHUNK.with(|c| c.get()) / inter.max(1)).max(1);
        let mut hmid = Vec::with_capacity(rows * inter);
        for r0 in (0..rows).step_by(step) {
            let n = step.min(rows - r0);
            let xc = &xq[r0 * d_in..(r0 + n) * d_in];
            let lin = |k: usize| {
                let lw = &self.linears[k];
                let mut y = vec![0f32; n * lw.weight.shape[0]];
                linear(xc, n, &lw.weight, lw.bias.as_ref(), &mut y);
                y
            };
            let (gate, up) = match up_k {
                None => {
                    let mut p = split_cols(&lin(first), n, &[inter, inter]).into_iter();
                    (p.next().unwrap(), p.next().unwrap())
                }
                Some(iu) => (lin(first), lin(iu)),
            };
            hmid.extend_from_slice(&gated(cfg.act, gate, &up));
        }
        drop(xq);
        let id = self.role_index(Role::Down);
        self.hook_at(id, &hmid, rows, hook)?;
        Ok(self.apply_k(id, &hmid, rows))
    }

    /// A routed mixture of experts: router logits, softmax, the top-k experts of each token
    /// (renormalised where the family or config says), and the weighted sum of those experts'
    /// gated MLPs. Each expert's groups see the tokens routed to it (or all tokens, for
    /// statistics, when the hook asks), and are called even when no token is routed to it.
    fn moe(
        &mut self,
        cfg: &ModelConfig,
        x: &[f32],
        rows: usize,
        hook: &mut dyn LayerHook,
    ) -> Result<Vec<f32>> {
        let m = cfg
            .moe
            .as_ref()
            .expect("a layer with a router has a MoE config");
        let routing = cfg.arch.moe.expect("a MoE family").1;
        let h = cfg.hidden_size;
        let ir = self.role_index(Role::Router);
        self.hook_at(ir, x, rows, hook)?;
        let logits = self.apply_k(ir, x, rows);
        let ne = m.num_experts;
        let renorm = match routing {
            Routing::SoftmaxTopKNorm => true,
            Routing::SoftmaxTopK => m.norm_topk_prob,
        };
        // per expert: (token, weight), tokens ascending
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
        for (t, row) in logits.chunks_exact(ne).enumerate() {
            let mut p = row.to_vec();
            crate::fastmath::softmax_in_place(&mut p);
            let top = top_k(&p, m.top_k);
            let sum: f32 = top.iter().map(|&e| p[e]).sum();
            for e in top {
                let w = if renorm { p[e] / sum } else { p[e] };
                routed[e].push((t, w));
            }
        }
        let all = hook.experts_see_all();
        let mut out = vec![0f32; rows * h];
        for (e, toks) in routed.iter().enumerate() {
            hook.routed(self.index, e, toks.len());
            let (ig, iu, id) = (
                self.layout.find_expert(e, Role::Gate).expect("expert gate"),
                self.layout.find_expert(e, Role::Up).expect("expert up"),
                self.layout.find_expert(e, Role::Down).expect("expert down"),
            );
            let gathered: Vec<f32>;
            let (xin, n) = if all {
                (x, rows)
            } else {
                gathered = toks
                    .iter()
                    .flat_map(|&(t, _)| x[t * h..(t + 1) * h].iter().copied())
                    .collect();
                (gathered.as_slice(), toks.len())
            };
            self.hook_at(ig, xin, n, hook)?;
            let gate = self.apply_k(ig, xin, n);
            let up = self.apply_k(iu, xin, n);
            let hmid = gated(cfg.act, gate, &up);
            self.hook_at(id, &hmid, n, hook)?;
            let fi = self.linears[id].weight.shape[1];
            let hmid_routed: Vec<f32> = if all {
                toks.iter()
                    .flat_map(|&(t, _)| hmid[t * fi..(t + 1) * fi].iter().copied())
                    .collect()
            } else {
                hmid
            };
            let y = self.apply_k(id, &hmid_routed, toks.len());
            for (r, &(t, w)) in toks.iter().enumerate() {
                for (o, v) in out[t * h..(t + 1) * h]
                    .iter_mut()
                    .zip(&y[r * h..(r + 1) * h])
                {
                    *o += v * w;
                }
            }
        }
        Ok(out)
    }
}

/// Indices of the `k` largest values, largest first (ties to the lower index, as `torch.topk`
/// on CPU returns them).
fn top_k(p: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Elements of one slice of gate (and of up) in the chunked dense MLP: 8 Mi f32, 32 MB.
pub const MLP_CHUNK_ELEMS: usize = 1 << 23;

thread_local! {
    static MLP_CHUNK: std::cell::Cell<usize> = const { std::cell::Cell::new(MLP_CHUNK_ELEMS) };
}

/// Runs `f` with the dense MLP's gate/up slices limited to `elems` values (at least one row), on
/// this thread only. For tests that compare the chunked MLP with the whole one.
pub fn with_mlp_chunk_elems<T>(elems: usize, f: impl FnOnce() -> T) -> T {
    let old = MLP_CHUNK.with(|c| c.replace(elems));
    let out = f();
    MLP_CHUNK.with(|c| c.set(old));
    out
}

/// `act(gate) * up`, in `gate`'s buffer.
fn gated(act: Activation, mut gate: Vec<f32>, up: &[f32]) -> Vec<f32> {
    match act {
        Activation::Silu => swiglu(&mut gate, up),
        Activation::GeluTanh => crate::tensor::geglu_tanh(&mut gate, up),
    }
    gate
}

/// Shapes of an attention call.
#[derive(Clone, Copy)]
struct Heads {
    batch: usize,
    seq: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
}

/// Per-layer attention options.
#[derive(Clone, Copy)]
struct AttnOpts {
    scale: f32,
    /// A query at i sees keys j with i - window < j <= i.
    window: Option<usize>,
    /// `cap * tanh(s / cap)` on the scaled scores.
    softcap: Option<f32>,
}

/// Query rows per block in [`attention`]: each block's scores are computed only against the keys
/// it can see (causal mask, and the sliding window where there is one), so about half of the
/// `seq x seq` products are skipped.
const ATTN_BLOCK: usize = 64;

/// Causal grouped-query attention: `q` `[rows, nh*hd]`, `k`/`v` `[rows, nkv*hd]` -> `[rows, nh*hd]`.
///
/// One task per (sequence, head), run in parallel; within it, query rows go in blocks of
/// [`ATTN_BLOCK`]: `S = scale * Q_blk K[k0..end]^T` (soft-capped where the model caps scores),
/// a row-wise softmax over the keys each row sees (the others set to 0), then
/// `O_blk = S V[k0..end]`. The score buffer is reused across the tasks of a thread.
fn attention(q: &[f32], k: &[f32], v: &[f32], sh: Heads, opt: AttnOpts) -> Vec<f32> {
    let Heads {
        batch,
        seq,
        nh,
        nkv,
        hd,
    } = sh;
    let group = nh / nkv;
    let qw = nh * hd;
    let kw = nkv * hd;
    let blk = ATTN_BLOCK.min(seq.max(1));
    // first key row `last` sees
    let first = |last: usize| match opt.window {
        Some(w) => (last + 1).saturating_sub(w),
        None => 0,
    };
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
                    let (nr, k0, end) = (r1 - r0, first(r0), r1);
                    let nk = end - k0;
                    let sb = &mut s[..nr * nk];
                    matmul(
                        MatMut::from_row_major_slice_mut(sb, nr, nk),
                        Accum::Replace,
                        qm.subrows(r0, nr),
                        km.subrows(k0, nk).transpose(),
                        opt.scale,
                        Par::Seq,
                    );
                    for (i, row) in sb.chunks_exact_mut(nk).enumerate() {
                        let last = r0 + i;
                        let (a, z) = (first(last) - k0, last - k0);
                        if let Some(c) = opt.softcap {
                            for x in &mut row[a..=z] {
                                *x = c * (*x / c).tanh();
                            }
                        }
                        crate::fastmath::softmax_in_place(&mut row[a..=z]);
                        row[..a].fill(0.0);
                        row[z + 1..].fill(0.0);
                    }
                    matmul(
                        MatMut::from_row_major_slice_mut(&mut out[r0 * hd..r1 * hd], nr, hd),
                        Accum::Replace,
                        MatRef::from_row_major_slice(sb, nr, nk),
                        vm.subrows(k0, nk),
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

/// The keys and values (after rope, before any head expansion) of the tokens one layer has seen
/// of one sequence: `[len, num_kv_heads * head_dim]` each.
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub len: usize,
}

/// Causal grouped-query attention of `n` new queries at positions `pos0..pos0 + n` (`q`
/// `[n, nh*hd]`) over the cached keys and values of positions `0..pos0 + n` (`k`/`v`
/// `[pos0 + n, nkv*hd]`): query `i` sees the keys `j <= pos0 + i` (within the sliding window
/// where there is one). The same scores, soft-cap and softmax as [`attention`], as dot products
/// (decoding feeds one token at a time). One task per head.
fn attention_cached(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    sh: Heads,
    opt: AttnOpts,
) -> Vec<f32> {
    let Heads {
        seq: n,
        nh,
        nkv,
        hd,
        ..
    } = sh;
    let group = nh / nkv;
    let (qw, kw) = (nh * hd, nkv * hd);
    let heads: Vec<Vec<f32>> = (0..nh)
        .into_par_iter()
        .map(|hq| {
            let hk = hq / group;
            let mut out = vec![0f32; n * hd];
            let mut s = Vec::with_capacity(pos0 + n);
            for i in 0..n {
                let last = pos0 + i;
                let first = match opt.window {
                    Some(w) => (last + 1).saturating_sub(w),
                    None => 0,
                };
                let qi = &q[i * qw + hq * hd..i * qw + (hq + 1) * hd];
                s.clear();
                for j in first..=last {
                    let kj = &k[j * kw + hk * hd..j * kw + (hk + 1) * hd];
                    let d: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                    let mut x = opt.scale * d;
                    if let Some(c) = opt.softcap {
                        x = c * (x / c).tanh();
                    }
                    s.push(x);
                }
                crate::fastmath::softmax_in_place(&mut s);
                let o = &mut out[i * hd..(i + 1) * hd];
                for (p, j) in s.iter().zip(first..=last) {
                    let vj = &v[j * kw + hk * hd..j * kw + (hk + 1) * hd];
                    for (a, b) in o.iter_mut().zip(vj) {
                        *a += p * b;
                    }
                }
            }
            out
        })
        .collect();
    let mut y = vec![0f32; n * qw];
    for (hq, out) in heads.iter().enumerate() {
        for i in 0..n {
            y[i * qw + hq * hd..i * qw + (hq + 1) * hd].copy_from_slice(&out[i * hd..(i + 1) * hd]);
        }
    }
    y
}

/// Rotary position embeddings as Hugging Face applies them (`rotate_half`: the first and second
/// halves of each head form the pairs), with the config's frequency scaling; a second table with
/// the local base for the sliding-window layers of families that have one (Gemma 3).
///
/// With LongRoPE ([`RopeScaling::LongRope`]) the global table is the short factors' and a
/// second one holds the long factors'; a forward of `seq` tokens uses the long one when `seq`
/// exceeds `original_max_position_embeddings` (transformers' rule, see there).
pub struct Rope {
    global: RopeTable,
    long: Option<(usize, RopeTable)>,
    local: Option<RopeTable>,
}

/// One rotary table: `[max_seq, half]` cosines and sines.
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    max_seq: usize,
}

/// llama.cpp's `rope_freqs` tensor for this model, the divisor of each rotary frequency, where
/// the scaling is one llama.cpp stores that way: the given factors, or Llama 3.1 scaling
/// computed as llama.cpp's converter does (`LlamaModel.generate_extra_tensors` in
/// convert_hf_to_gguf.py: 1 above the high-frequency wavelength, `factor` below the low one,
/// `1 / ((1 - smooth) / factor + smooth)` between; f32 arithmetic).
pub fn rope_freq_factors(cfg: &ModelConfig) -> Option<Vec<f32>> {
    match &cfg.rope_scaling {
        Some(RopeScaling::Factors { factors }) => Some(factors.iter().map(|&f| f as f32).collect()),
        Some(l @ RopeScaling::Llama3 { .. }) => Some(
            inv_freq_of(cfg.rotary_dim, cfg.rope_theta, None)
                .iter()
                .map(|&f| match llama3_band(l, f) {
                    Llama3Band::High => 1.0,
                    Llama3Band::Low(factor) => factor,
                    Llama3Band::Medium(factor, smooth) => 1.0 / ((1.0 - smooth) / factor + smooth),
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Inverse frequencies `1 / theta^(2i/d)` of the global layers, scaled as in transformers'
/// `ROPE_INIT_FUNCTIONS` (LongRoPE: with the short factors).
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    inv_freq_of(cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling.as_ref())
}

fn inv_freq_of(d: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let base: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f32).collect(),
        Some(RopeScaling::Factors { factors }) => base
            .iter()
            .zip(factors)
            .map(|(f, k)| f / *k as f32)
            .collect(),
        Some(RopeScaling::LongRope { short_factor, .. }) => {
            longrope_inv_freq(d, theta, short_factor)
        }
        Some(l @ RopeScaling::Llama3 { .. }) => base
            .iter()
            .map(|&f| match llama3_band(l, f) {
                Llama3Band::High => f,
                Llama3Band::Low(factor) => f / factor,
                Llama3Band::Medium(factor, smooth) => (1.0 - smooth) * f / factor + smooth * f,
            })
            .collect(),
    }
}

/// LongRoPE's inverse frequencies for one set of factors, in transformers' f32 arithmetic:
/// `1 / (ext_factors * base^(arange(0, d, 2) / d))`.
fn longrope_inv_freq(d: usize, theta: f64, factors: &[f64]) -> Vec<f32> {
    (0..d / 2)
        .zip(factors)
        .map(|(i, &k)| 1.0 / (k as f32 * (theta as f32).powf((2 * i) as f32 / d as f32)))
        .collect()
}

/// Where a rotary frequency falls under Llama 3.1 scaling (transformers'
/// `_compute_llama3_parameters`, llama.cpp's converter): wavelength below
/// `original_max_position_embeddings / high_freq_factor` (kept), above `... / low_freq_factor`
/// (divided by `factor`), or between, with the interpolation weight `smooth`.
enum Llama3Band {
    High,
    Low(f32),
    Medium(f32, f32),
}

fn llama3_band(scaling: &RopeScaling, f: f32) -> Llama3Band {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = scaling
    else {
        unreachable!("llama3_band of {scaling:?}")
    };
    let (factor, lo, hi, old) = (
        *factor as f32,
        *low_freq_factor as f32,
        *high_freq_factor as f32,
        *original_max_position_embeddings as f32,
    );
    let wl = 2.0 * std::f32::consts::PI / f;
    if wl < old / hi {
        Llama3Band::High
    } else if wl > old / lo {
        Llama3Band::Low(factor)
    } else {
        Llama3Band::Medium(factor, (old / wl - lo) / (hi - lo))
    }
}

impl Rope {
    /// Tables for forwards of up to `max_seq` tokens.
    pub fn new(cfg: &ModelConfig, max_seq: usize) -> Self {
        let (scale, long) = match &cfg.rope_scaling {
            Some(RopeScaling::LongRope {
                long_factor,
                original_max_position_embeddings: orig,
                attention_factor,
                ..
            }) => {
                let scale = *attention_factor as f32;
                let long = (max_seq > *orig).then(|| {
                    let inv = longrope_inv_freq(cfg.rotary_dim, cfg.rope_theta, long_factor);
                    (*orig, RopeTable::new(&inv, max_seq, scale))
                });
                (scale, long)
            }
            _ => (1.0, None),
        };
        Rope {
            global: RopeTable::new(&inv_freq(cfg), max_seq, scale),
            long,
            local: cfg
                .rope_local_theta
                .map(|t| RopeTable::new(&inv_freq_of(cfg.rotary_dim, t, None), max_seq, 1.0)),
        }
    }

    /// The table a layer uses in a forward of `seq` tokens: the local one for a sliding-window
    /// layer where there is one, LongRoPE's long-factor one when `seq` exceeds the original
    /// length, else the global one.
    pub fn table(&self, sliding: bool, seq: usize) -> &RopeTable {
        match (&self.local, sliding, &self.long) {
            (Some(l), true, _) => l,
            (_, _, Some((orig, long))) if seq > *orig => long,
            _ => &self.global,
        }
    }

    /// Rotates with the global table (the long one where `seq` calls for it; see
    /// [`RopeTable::apply`]).
    pub fn apply(&self, x: &mut [f32], seq: usize, heads: usize, hd: usize) {
        self.table(false, seq).apply(x, seq, heads, hd)
    }
}

impl RopeTable {
    /// cos and sin of `p * inv[i]` for positions `p < max_seq`, each times `scale` (LongRoPE's
    /// attention factor, in f32 as transformers multiplies; 1 for the others, exactly).
    fn new(inv: &[f32], max_seq: usize, scale: f32) -> Self {
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_seq * half);
        let mut sin = Vec::with_capacity(max_seq * half);
        for p in 0..max_seq {
            for &f in inv {
                let a = p as f32 * f;
                cos.push(a.cos() * scale);
                sin.push(a.sin() * scale);
            }
        }
        RopeTable {
            half,
            cos,
            sin,
            max_seq,
        }
    }

    /// Rotates `x` = `[n, heads * hd]`, one sequence's tokens at positions `pos0..pos0 + n`, in
    /// place (as [`apply`](Self::apply) does for positions from 0).
    pub fn apply_from(&self, x: &mut [f32], pos0: usize, heads: usize, hd: usize) {
        let n = x.len() / (heads * hd).max(1);
        assert!(
            pos0 + n <= self.max_seq,
            "position {} exceeds the rotary table ({})",
            pos0 + n,
            self.max_seq
        );
        assert!(2 * self.half <= hd);
        x.par_chunks_exact_mut(heads * hd)
            .enumerate()
            .for_each(|(r, row)| self.rotate_row(row, pos0 + r, hd));
    }

    fn rotate_row(&self, row: &mut [f32], p: usize, hd: usize) {
        let (c, s) = (
            &self.cos[p * self.half..(p + 1) * self.half],
            &self.sin[p * self.half..(p + 1) * self.half],
        );
        for head in row.chunks_exact_mut(hd) {
            let (a, b) = head[..2 * self.half].split_at_mut(self.half);
            for i in 0..self.half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    }

    /// Rotates `x` = `[batch * seq, heads * hd]` in place (position = index within its
    /// sequence): the first `2 * half` values of each head, the rest unchanged (partial rotary).
    pub fn apply(&self, x: &mut [f32], seq: usize, heads: usize, hd: usize) {
        assert!(
            seq <= self.max_seq,
            "sequence of {seq} tokens exceeds the rotary table ({})",
            self.max_seq
        );
        assert!(2 * self.half <= hd);
        x.par_chunks_exact_mut(heads * hd)
            .enumerate()
            .for_each(|(r, row)| self.rotate_row(row, r % seq, hd));
    }
}
