//! Orthogonal rotations of the residual stream, fused offline (QuaRot, Ashkboos et al. 2024,
//! arXiv 2404.00456; SpinQuant, Liu et al. 2024, arXiv 2405.16406).
//!
//! A rotated model computes the same function with weights whose outliers are spread over many
//! channels, so that they quantize better. Only the rotations that can be merged into the weights
//! are done here (QuaRot §3 / SpinQuant §3.1: R1 and R2); R3 and R4 need online Hadamards at run
//! time and would not leave a standard model.
//!
//! **R1** (QuaRot §4.1, "computational invariance" of RMSNorm, their Eq. 1-2). Every row vector
//! `x` of the residual stream becomes `x Q` for an orthogonal `Q` (`[h, h]`). This is exact
//! because RMSNorm without a weight commutes with `Q`: `‖x Q‖ = ‖x‖`, so
//! `x Q / rms(x Q) = (x / rms(x)) Q`. So first every norm that feeds the stream into linears gets
//! its weight absorbed into the columns of those linears (`W diag(w)`, `w` the effective
//! multiplier: `1 + w` for [`NormStyle::OnePlus`]), leaving unit-weight norms; then
//! - the embedding `E → E Q` (rows are stream vectors);
//! - every reader of the stream (q/k/v or the fused qkv, gate/up or the fused gate_up, the MoE
//!   router and every expert's gate/up) `W → W Q` (columns), since `(x Q)(W Q)ᵀ = x Wᵀ`;
//! - every writer (o_proj, down_proj, each expert's down_proj) `W → Qᵀ W` (rows) and its bias
//!   `b → Qᵀ b`, since `x (Qᵀ W)ᵀ = (x Wᵀ) Q`;
//! - the head `W_head → W_head diag(w_final) Q`. A tied head becomes untied: the embedding is
//!   `E Q`, the head `E diag(w_final) Q`, which differ unless `w_final` is all ones. The rotated
//!   config says `tie_word_embeddings = false` and serves `lm_head.weight`, so every writer
//!   writes a separate head.
//!
//! The router reads the normed stream like q/k/v do, so it is just another reader: the routing
//! is unchanged, and MoE families are handled.
//!
//! **R2** (SpinQuant Fig. 1, `R2`): per attention head, an orthogonal `R` (`[head_dim,
//! head_dim]`) between v_proj and o_proj: each kv head's rows of v_proj (and its bias) `W_v,g →
//! Rᵀ W_v,g`, and each query head's columns of o_proj `W_o[:, h] → W_o[:, h] R`. Attention
//! mixes value vectors over positions only (`o_h = Σ_t a_t v_{g(h),t}`), so `o_h R` follows from
//! `v R`; with grouped-query attention the one `R` shared by every head keeps the query heads of
//! a group consistent with their kv head.
//!
//! **Per-head q/k norms (Qwen3, OLMoE)** survive R1: they act on `q = x W_qᵀ` and
//! `k = x W_kᵀ`, which R1 leaves unchanged (`(x Q)(W_q Q)ᵀ = x W_qᵀ`), so they are passed through.
//! They would break a rotation of the q/k head space (SpinQuant's R3, online anyway), not R1.
//!
//! **Refused**: families with a weighted norm on a writer's output before the residual add
//! (Gemma 3's sandwich norms `post_attention_layernorm` / `post_feedforward_layernorm`): the
//! block adds `rms_norm(y) ⊙ w` to the stream; rotated, it must add `(rms_norm(y) ⊙ w) Q`, but
//! the writer can only produce `y Q`, and `rms_norm(y Q) ⊙ w = (rms_norm(y) Q) ⊙ w ≠
//! (rms_norm(y) ⊙ w) Q` unless `w` is constant; `w` cannot move into the writer either, since
//! the norm divides by the RMS of its own input. Not exact, so [`RotatedView::new`] says so.
//!
//! **Matrices.** `hadamard`: a randomized Hadamard matrix `H diag(s) / √n` with seeded signs `s`
//! (QuaRot §3), `H` built by [`hadamard`] (Sylvester, Paley I and II, Kronecker products).
//! `random-orthogonal`: the Q factor of the QR decomposition of a seeded Gaussian matrix, its
//! columns' signs fixed by `diag(R)` so that it is Haar-distributed (SpinQuant's random
//! initialisation; it exists for every size).
use crate::arch::{self, NormSlot, NormStyle, Role, TensorKind};
use crate::config::ModelConfig;
use crate::source::TensorSource;
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// Which orthogonal matrix rotates the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationKind {
    /// Randomized Hadamard `H diag(±1) / √n` (QuaRot).
    Hadamard,
    /// Q of the QR decomposition of a seeded Gaussian matrix.
    RandomOrthogonal,
}

impl RotationKind {
    /// `hadamard` or `random-orthogonal`.
    pub fn parse(s: &str) -> Result<RotationKind> {
        match s {
            "hadamard" => Ok(RotationKind::Hadamard),
            "random-orthogonal" => Ok(RotationKind::RandomOrthogonal),
            _ => bail!("unknown rotation '{s}': expected hadamard or random-orthogonal"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            RotationKind::Hadamard => "hadamard",
            RotationKind::RandomOrthogonal => "random-orthogonal",
        }
    }
}

/// A rotation of a model: R1 on the residual stream and, when `r2`, R2 per attention head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub kind: RotationKind,
    /// Seeds the random signs (Hadamard) or the Gaussian matrix (random-orthogonal).
    pub seed: u64,
    /// Also rotate each head between v_proj and o_proj (SpinQuant's R2).
    pub r2: bool,
}

impl Rotation {
    /// R1 and R2 of `kind`, seed 0.
    pub fn new(kind: RotationKind) -> Rotation {
        Rotation {
            kind,
            seed: 0,
            r2: true,
        }
    }
}

/// splitmix64: a small seeded generator, enough for signs and Gaussian entries.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn is_prime(q: usize) -> bool {
    q >= 2 && (2..).take_while(|d| d * d <= q).all(|d| q % d != 0)
}

/// A Paley block: its order, the prime `q` and whether it is Paley I.
type PaleyBlock = (usize, usize, bool);

/// The Paley base order `m` (not a power of two) that a prime gives, with the construction:
/// `q ≡ 3 (mod 4)` → Paley I of order `q + 1`; `q ≡ 1 (mod 4)` → Paley II of order `2 (q + 1)`.
/// Only primes `q` (not prime powers: that needs GF(p^k) arithmetic) are used.
fn paley_orders(limit: usize) -> Vec<PaleyBlock> {
    let mut v: Vec<PaleyBlock> = (3..=limit)
        .filter(|&q| is_prime(q))
        .filter_map(|q| {
            let (m, one) = if q % 4 == 3 {
                (q + 1, true)
            } else {
                (2 * (q + 1), false)
            };
            (m <= limit && !m.is_power_of_two()).then_some((m, q, one))
        })
        .collect();
    v.sort();
    v.dedup_by_key(|e| e.0);
    v
}

/// How `n` is built: Paley blocks `(order, prime, paley_one)` and a Sylvester power of two, all
/// Kronecker-multiplied; `None` when no such product gives `n`.
fn plan(n: usize) -> Option<(Vec<PaleyBlock>, usize)> {
    if n == 0 {
        return None;
    }
    if n.is_power_of_two() {
        return Some((vec![], n));
    }
    for p in paley_orders(n) {
        if n % p.0 == 0 {
            if let Some((mut blocks, pow)) = plan(n / p.0) {
                blocks.insert(0, p);
                return Some((blocks, pow));
            }
        }
    }
    None
}

/// Whether [`hadamard`] can build order `n`.
pub fn hadamard_exists(n: usize) -> bool {
    plan(n).is_some()
}

/// Legendre symbol `χ(a)` mod prime `q`: 0, 1 (a nonzero square) or -1.
fn chi(a: usize, q: usize) -> i8 {
    let a = a % q;
    if a == 0 {
        return 0;
    }
    // Euler's criterion a^((q-1)/2) mod q
    let (mut r, mut b, mut e) = (1u64, a as u64, (q as u64 - 1) / 2);
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % q as u64;
        }
        b = b * b % q as u64;
        e >>= 1;
    }
    if r == 1 {
        1
    } else {
        -1
    }
}

/// Paley's matrix `S` of order `q + 1`: `[[0, 1ᵀ], [±1, J]]` with the Jacobsthal matrix
/// `J_ij = χ(j − i)`; `-1` in the first column (skew) for Paley I, `+1` (symmetric) for Paley II.
fn paley_core(q: usize, skew: bool) -> Vec<i8> {
    let m = q + 1;
    let mut s = vec![0i8; m * m];
    for j in 1..m {
        s[j] = 1;
        s[j * m] = if skew { -1 } else { 1 };
    }
    for i in 0..q {
        for j in 0..q {
            s[(i + 1) * m + j + 1] = chi(j + q - i, q);
        }
    }
    s
}

/// Paley I (`q ≡ 3 mod 4`): `H = I + S`, order `q + 1`. Paley II (`q ≡ 1 mod 4`):
/// `H = S ⊗ [[1, -1], [-1, -1]] + I ⊗ [[1, 1], [1, -1]]`, order `2 (q + 1)`.
fn paley(q: usize, one: bool) -> (usize, Vec<i8>) {
    let m = q + 1;
    let s = paley_core(q, one);
    if one {
        let mut h = s;
        for i in 0..m {
            h[i * m + i] = 1;
        }
        (m, h)
    } else {
        let n = 2 * m;
        let mut h = vec![0i8; n * n];
        for i in 0..m {
            for j in 0..m {
                let (a, b) = if i == j {
                    ([1, 1], [1, -1])
                } else {
                    let v = s[i * m + j];
                    ([v, -v], [-v, -v])
                };
                h[2 * i * n + 2 * j] = a[0];
                h[2 * i * n + 2 * j + 1] = a[1];
                h[(2 * i + 1) * n + 2 * j] = b[0];
                h[(2 * i + 1) * n + 2 * j + 1] = b[1];
            }
        }
        (n, h)
    }
}

fn kron(a: &[i8], na: usize, b: &[i8], nb: usize) -> Vec<i8> {
    let n = na * nb;
    let mut h = vec![0i8; n * n];
    for i in 0..na {
        for j in 0..na {
            let v = a[i * na + j];
            for k in 0..nb {
                for l in 0..nb {
                    h[(i * nb + k) * n + j * nb + l] = v * b[k * nb + l];
                }
            }
        }
    }
    h
}

/// The sizes near `n` that [`hadamard`] builds, and its base orders, for messages.
pub fn hadamard_sizes_hint(n: usize) -> String {
    let below = (1..n).rev().find(|&m| hadamard_exists(m));
    let above = (n + 1..).find(|&m| hadamard_exists(m)).unwrap();
    let bases: Vec<String> = paley_orders(200).iter().map(|p| p.0.to_string()).collect();
    format!(
        "shrink builds Hadamard matrices of order 2^k times products of Paley orders ({}, ...: \
         Paley I for a prime q ≡ 3 mod 4 gives q+1, Paley II for a prime q ≡ 1 mod 4 gives \
         2(q+1)); the nearest sizes that work are {}{above}",
        bases.join(", "),
        below.map_or(String::new(), |b| format!("{b} and "))
    )
}

/// A Hadamard matrix of order `n` (entries ±1, `H Hᵀ = n I`), row-major: Sylvester for powers of
/// two, Paley I / II for the orders prime numbers give, and Kronecker products of those.
/// Errors for a size with no such construction, naming the sizes that work.
pub fn hadamard(n: usize) -> Result<Vec<i8>> {
    let Some((blocks, pow)) = plan(n) else {
        bail!(
            "no Hadamard matrix of order {n}: {}; or use --rotate random-orthogonal, which works \
             for every size",
            hadamard_sizes_hint(n)
        );
    };
    let mut h = vec![1i8];
    let mut m = 1;
    while m < pow {
        h = kron(&[1, 1, 1, -1], 2, &h, m);
        m *= 2;
    }
    for (_, q, one) in blocks {
        let (pm, p) = paley(q, one);
        h = kron(&p, pm, &h, m);
        m *= pm;
    }
    debug_assert_eq!(m, n);
    Ok(h)
}

/// An `n × n` orthogonal matrix of `kind` from `seed`, row-major f64. Errors (see [`hadamard`])
/// for a Hadamard size with no construction.
pub fn orthogonal(kind: RotationKind, n: usize, seed: u64) -> Result<Mat<f64>> {
    let mut rng = SplitMix(seed ^ 0x5348_5249_4E4B_u64.wrapping_mul(n as u64 + 1));
    match kind {
        RotationKind::Hadamard => {
            let h = hadamard(n)?;
            let signs: Vec<f64> = (0..n)
                .map(|_| if rng.next() >> 63 == 1 { -1.0 } else { 1.0 })
                .collect();
            let s = 1.0 / (n as f64).sqrt();
            Ok(Mat::from_fn(n, n, |i, j| {
                h[i * n + j] as f64 * signs[j] * s
            }))
        }
        RotationKind::RandomOrthogonal => {
            let g = Mat::from_fn(n, n, |_, _| rng.normal());
            let qr = g.qr();
            let mut q = qr.compute_Q();
            let r = qr.R();
            for j in 0..n {
                if r[(j, j)] < 0.0 {
                    for i in 0..n {
                        q[(i, j)] = -q[(i, j)];
                    }
                }
            }
            Ok(q)
        }
    }
}

/// Refuses a model the rotation is not exact for (see the module comment); `Ok` otherwise.
pub fn check_rotatable(cfg: &ModelConfig) -> Result<()> {
    let f = cfg.arch.family();
    if let Some((_, path, _)) = f
        .norms
        .iter()
        .find(|n| matches!(n.0, NormSlot::AttnOut | NormSlot::FfnOut))
    {
        bail!(
            "cannot rotate a {} model: its '{path}' is a weighted RMSNorm on a block's output \
             before the residual add (a sandwich norm), and a rotation of the residual stream \
             does not commute with a per-channel weight there, so the rotated model would not \
             compute the same function",
            f.name
        );
    }
    Ok(())
}

/// `a · b` for row-major f32 `a` `[m, k]` and f64 `b` `[k, n]`, in f64, rounded to f32 once.
fn mul_right(a: &[f32], m: usize, k: usize, b: MatRef<'_, f64>) -> Vec<f32> {
    let a64 = Mat::from_fn(m, k, |i, j| a[i * k + j] as f64);
    let mut c = Mat::<f64>::zeros(m, b.ncols());
    matmul(
        c.as_mut(),
        Accum::Replace,
        a64.as_ref(),
        b,
        1.0,
        if m * k * b.ncols() < 1 << 18 {
            Par::Seq
        } else {
            Par::rayon(0)
        },
    );
    let n = b.ncols();
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = c[(i, j)] as f32;
        }
    }
    out
}

/// A model's tensors with R1 (and R2) fused in (see the module comment), computed when a tensor
/// is loaded: a layer's linears are rotated when that layer is read, so the rotated model streams
/// one layer at a time like the original. Tensors outside the table (rope factors) pass through.
pub struct RotatedView {
    inner: Box<dyn TensorSource>,
    /// The original model's config (norm styles, shapes, whether the head was tied).
    cfg: ModelConfig,
    rotation: Rotation,
    q: Mat<f64>,
    r2: Option<Mat<f64>>,
}

impl RotatedView {
    /// The rotated view of `inner` (a model with config `cfg`); refuses the families the rotation
    /// is not exact for and Hadamard sizes with no construction (hidden size for R1, head_dim
    /// for R2).
    pub fn new(
        inner: Box<dyn TensorSource>,
        cfg: &ModelConfig,
        rotation: Rotation,
    ) -> Result<Self> {
        check_rotatable(cfg)?;
        let h = cfg.hidden_size;
        let q = orthogonal(rotation.kind, h, rotation.seed)
            .map_err(|e| anyhow::anyhow!("R1 on the residual stream (hidden size {h}): {e}"))?;
        let r2 = if rotation.r2 {
            let d = cfg.head_dim;
            Some(
                orthogonal(rotation.kind, d, rotation.seed.wrapping_add(1))
                    .map_err(|e| anyhow::anyhow!("R2 per attention head (head_dim {d}): {e}"))?,
            )
        } else {
            None
        };
        Ok(RotatedView {
            inner,
            cfg: cfg.clone(),
            rotation,
            q,
            r2,
        })
    }

    /// The rotation applied.
    pub fn rotation(&self) -> Rotation {
        self.rotation
    }

    /// The R1 matrix `Q` (`[hidden, hidden]`).
    pub fn r1(&self) -> MatRef<'_, f64> {
        self.q.as_ref()
    }

    /// The config of the rotated model: the original's with an untied head.
    pub fn config(&self) -> ModelConfig {
        let mut c = self.cfg.clone();
        c.tie_word_embeddings = false;
        c
    }

    /// The effective multiplier of norm `name` (`1 + w` under [`NormStyle::OnePlus`]).
    fn norm_weight(&self, name: &str) -> Result<Vec<f32>> {
        let mut t = self.inner.load(name)?;
        if self.cfg.arch.norm_style == NormStyle::OnePlus {
            t.data.iter_mut().for_each(|w| *w += 1.0);
        }
        if t.data.len() != self.cfg.hidden_size {
            bail!(
                "{}: norm {} has {} values, expected the hidden size {}",
                self.inner.describe(),
                self.inner.label(name),
                t.data.len(),
                self.cfg.hidden_size
            );
        }
        Ok(t.data)
    }

    /// A unit-weight norm of `len` values in the family's storage (`w = 1`, or `0` for `1 + w`).
    fn unit_norm(&self, len: usize) -> Tensor {
        let v = match self.cfg.arch.norm_style {
            NormStyle::Plain => 1.0,
            NormStyle::OnePlus => 0.0,
        };
        Tensor::new(vec![len], vec![v; len])
    }

    /// `W diag(w) Q` for a reader `W` `[rows, hidden]` of the output of norm `norm`.
    fn reader(&self, mut w: Tensor, norm: Option<&str>) -> Result<Tensor> {
        let (rows, h) = w.dims2();
        if let Some(n) = norm {
            let s = self.norm_weight(n)?;
            for row in w.data.chunks_exact_mut(h) {
                row.iter_mut().zip(&s).for_each(|(v, s)| *v *= s);
            }
        }
        Ok(Tensor::new(
            w.shape.clone(),
            mul_right(&w.data, rows, h, self.q.as_ref()),
        ))
    }

    /// `Qᵀ W` for a writer `W` `[hidden, cols]` (a bias is `[hidden]`, one column).
    fn writer(&self, w: Tensor) -> Tensor {
        let h = self.cfg.hidden_size;
        let cols = w.numel() / h;
        // (Qᵀ W) = (Wᵀ Q)ᵀ: transpose, multiply on the right, transpose back
        let mut wt = vec![0f32; w.numel()];
        for i in 0..h {
            for j in 0..cols {
                wt[j * h + i] = w.data[i * cols + j];
            }
        }
        let p = mul_right(&wt, cols, h, self.q.as_ref());
        let mut out = vec![0f32; w.numel()];
        for j in 0..cols {
            for i in 0..h {
                out[i * cols + j] = p[j * h + i];
            }
        }
        Tensor::new(w.shape, out)
    }

    /// R2 on value rows `[first_row + g·d .. first_row + (g+1)·d)` of each kv head `g`:
    /// `Rᵀ W_g` (`cols` values per row; a bias has one).
    fn r2_rows(&self, data: &mut [f32], cols: usize, first_row: usize) {
        let Some(r) = &self.r2 else { return };
        let d = self.cfg.head_dim;
        for g in 0..self.cfg.num_kv_heads {
            let s = (first_row + g * d) * cols;
            let blk = &mut data[s..s + d * cols];
            // Rᵀ W_g = (W_gᵀ R)ᵀ
            let mut t = vec![0f32; d * cols];
            for i in 0..d {
                for j in 0..cols {
                    t[j * d + i] = blk[i * cols + j];
                }
            }
            let p = mul_right(&t, cols, d, r.as_ref());
            for i in 0..d {
                for j in 0..cols {
                    blk[i * cols + j] = p[j * d + i];
                }
            }
        }
    }

    /// R2 on o_proj's columns of each query head: `W_o[:, h] R`.
    fn r2_cols(&self, w: &mut Tensor) {
        let Some(r) = &self.r2 else { return };
        let d = self.cfg.head_dim;
        let (rows, cols) = w.dims2();
        for hd in 0..self.cfg.num_heads {
            let mut blk = vec![0f32; rows * d];
            for i in 0..rows {
                blk[i * d..(i + 1) * d]
                    .copy_from_slice(&w.data[i * cols + hd * d..i * cols + (hd + 1) * d]);
            }
            let p = mul_right(&blk, rows, d, r.as_ref());
            for i in 0..rows {
                w.data[i * cols + hd * d..i * cols + (hd + 1) * d]
                    .copy_from_slice(&p[i * d..(i + 1) * d]);
            }
        }
    }

    /// The head `W_head diag(w_final) Q` (the embedding's rows when the original was tied).
    fn head(&self) -> Result<Tensor> {
        let base = if self.cfg.tie_word_embeddings {
            self.inner.load(arch::HF_EMBED)?
        } else {
            self.inner.load(arch::HF_LM_HEAD)?
        };
        self.reader(base, Some(arch::HF_NORM))
    }

    fn rotate(&self, name: &str, e: &arch::TensorEntry) -> Result<Tensor> {
        let layer_norm = |slot: NormSlot, i: usize, lay: &arch::Layout| -> Option<String> {
            lay.norm(slot)
                .map(|k| arch::hf_layer_tensor(i, &lay.norms[k].path, "weight"))
        };
        match e.kind {
            TensorKind::Embedding => {
                let t = self.inner.load(name)?;
                self.reader(t, None)
            }
            TensorKind::Head => self.head(),
            TensorKind::FinalNorm => Ok(self.unit_norm(self.cfg.hidden_size)),
            TensorKind::Norm(NormSlot::AttnIn | NormSlot::FfnIn) => {
                Ok(self.unit_norm(self.cfg.hidden_size))
            }
            TensorKind::Norm(_) => self.inner.load(name),
            TensorKind::LinearWeight(k) | TensorKind::LinearBias(k) => {
                let i = e.layer.expect("a linear belongs to a layer");
                let lay = arch::layer_layout(&self.cfg, i);
                let spec = &lay.linears[k];
                let bias = matches!(e.kind, TensorKind::LinearBias(_));
                let mut t = self.inner.load(name)?;
                let (q, kv) = (
                    self.cfg.num_heads * self.cfg.head_dim,
                    self.cfg.num_kv_heads * self.cfg.head_dim,
                );
                match spec.role {
                    Role::O | Role::Down => {
                        t = self.writer(t);
                        if spec.role == Role::O && !bias {
                            self.r2_cols(&mut t);
                        }
                    }
                    Role::Q | Role::K | Role::V | Role::Qkv => {
                        if !bias {
                            t = self.reader(t, layer_norm(NormSlot::AttnIn, i, &lay).as_deref())?;
                        }
                        let cols = if bias { 1 } else { self.cfg.hidden_size };
                        match spec.role {
                            Role::V => self.r2_rows(&mut t.data, cols, 0),
                            Role::Qkv => self.r2_rows(&mut t.data, cols, q + kv),
                            _ => {}
                        }
                    }
                    Role::Gate | Role::Up | Role::GateUp | Role::Router => {
                        if !bias {
                            t = self.reader(t, layer_norm(NormSlot::FfnIn, i, &lay).as_deref())?;
                        }
                    }
                }
                Ok(t)
            }
        }
    }
}

impl TensorSource for RotatedView {
    fn load(&self, name: &str) -> Result<Tensor> {
        if name == arch::HF_LM_HEAD {
            return self.head();
        }
        match arch::tensor_entry(&self.cfg, name) {
            Some(e) => self.rotate(name, &e),
            None => self.inner.load(name),
        }
    }
    fn load_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        if name == arch::HF_EMBED {
            let h = self.cfg.hidden_size;
            let x = self.inner.load_rows(name, rows)?;
            if x.len() != rows.len() * h {
                bail!(
                    "{}: the embedding's rows have {} values, not the hidden size {h}",
                    self.describe(),
                    x.len() / rows.len().max(1)
                );
            }
            return Ok(mul_right(&x, rows.len(), h, self.q.as_ref()));
        }
        crate::source::gather_rows(&self.load(name)?, rows, &self.label(name))
    }
    fn contains(&self, name: &str) -> bool {
        name == arch::HF_LM_HEAD || self.inner.contains(name)
    }
    fn describe(&self) -> String {
        format!(
            "{} (rotated: {})",
            self.inner.describe(),
            self.rotation.kind.name()
        )
    }
    fn label(&self, name: &str) -> String {
        if name == arch::HF_LM_HEAD && self.cfg.tie_word_embeddings {
            format!(
                "'{name}' (the rotated {} of the tied original)",
                self.inner.label(arch::HF_EMBED)
            )
        } else {
            self.inner.label(name)
        }
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if name == arch::HF_LM_HEAD {
            return Some(vec![self.cfg.vocab_size, self.cfg.hidden_size]);
        }
        self.inner.shape(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_hadamard(h: &[i8], n: usize, what: &str) {
        assert_eq!(h.len(), n * n);
        for i in 0..n {
            for j in 0..n {
                let d: i32 = (0..n)
                    .map(|k| h[i * n + k] as i32 * h[j * n + k] as i32)
                    .sum();
                assert_eq!(
                    d,
                    if i == j { n as i32 } else { 0 },
                    "{what}: (H Hᵀ)[{i},{j}]"
                );
            }
        }
    }

    /// Paley I and II directly, for every prime below 120 (both residues mod 4).
    #[test]
    fn paley_constructions_are_hadamard() {
        for q in (3..120).filter(|&q| is_prime(q)) {
            let one = q % 4 == 3;
            let (n, h) = paley(q, one);
            assert_eq!(n, if one { q + 1 } else { 2 * (q + 1) });
            check_hadamard(
                &h,
                n,
                &format!("Paley {} q={q}", if one { "I" } else { "II" }),
            );
        }
    }
}
