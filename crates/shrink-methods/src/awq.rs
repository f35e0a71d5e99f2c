//! AWQ: activation-aware weight quantization (Lin et al., "AWQ: Activation-aware Weight
//! Quantization for LLM Compression and Acceleration", MLSys 2024; reference implementation
//! mit-han-lab/llm-awq, `awq/quantize/auto_scale.py` and `auto_clip.py`). This file holds the two
//! searches; the pipeline (`shrink_pipeline::awq`) gathers their statistics from a layer's
//! unquantized forward pass and folds the result into the model
//! (`DecoderLayer::fold_input_scale`).
//!
//! **Scale search** (paper §3.2, Eq. 4–5). For the linears `W` of a group that share the input
//! `X` (q/k/v, gate/up, o, down), a per-input-channel scale `s` is chosen as
//!
//! ```text
//! s* = argmin_s L(s),   L(s) = || Q(W diag(s)) (diag(s)^-1 X) - W X ||²,   s = s_X^α,
//! α ∈ {0, 1/N, ..., (N-1)/N}   (N = n_grid = 20, as llm-awq's `n_grid`)
//! ```
//!
//! with `s_X` the mean `|x|` of each input channel over the calibration tokens, and `Q` the
//! round-to-nearest of the grid the linear is later quantized on. As in llm-awq, `s` is
//! clamped below at 1e-4 and normalised by `sqrt(max(s) min(s))`; `α = 0` gives `s = 1`
//! (plain RTN), so the search never loses to RTN on its own objective.
//! `duo_scaling` (llm-compressor 0.14's `AWQModifier` default) searches llm-compressor's grid
//! instead: `s = 1`, then `s = s_X^α / (s_W^(1-α) + 1e-4)` for `α = 0, 1/(N-2), ..., 1`, `s_W`
//! being the mean over the group's rows of `|W|` normalised by each quantization group's
//! maximum (`_compute_layer_means`).
//!
//! The loss is computed through the Hessian: with `Δ = W - Q(W diag(s)) diag(s)^-1`,
//! `L = || X Δᵀ ||² = tr(Δ (XᵀX) Δᵀ)`, the same value as llm-awq's output MSE up to a constant,
//! at `d_out d_in²` operations per candidate instead of `tokens d_in d_out`. llm-awq measures
//! the output of the whole attention or MLP block for q/k/v and gate/up; here, as the issue
//! specifies, it is the output of the group's linears.
//!
//! **Clipping search** (llm-awq `auto_clip_layer`). For each output row `r` and quantization
//! group `g` of the scaled weight, the range is clipped to `±m (1 - i/N)`, `m = max |W_rg|`,
//! `i = 0 .. max_shrink N - 1` (N = 20, max_shrink = 0.5, llm-awq's values), choosing the
//! `i` with the lowest `|| X_g (W_rg - Q(clamp(W_rg)))ᵀ ||²` = `δ H_gg δᵀ`. llm-awq samples 512
//! tokens for this; here the diagonal block `H_gg` of the full `XᵀX` (all tokens) is used. As
//! in llm-awq, q and k are not clipped (the pipeline leaves them out), and clipping applies to
//! integer grids only.
use crate::grid;
use crate::quant::QuantConfig;
use anyhow::{bail, ensure, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use serde::Serialize;

/// The settings of the two searches.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct AwqConfig {
    /// Candidates of the scale exponent α: `0, 1/n_grid, ..., (n_grid-1)/n_grid` (llm-awq: 20).
    pub n_grid: usize,
    /// llm-compressor's `duo_scaling`: weigh the activation scale against the weights'.
    pub duo_scaling: bool,
    /// Search a clipping range per output row and quantization group.
    pub clip: bool,
    /// Steps of the clipping search (llm-awq: 20).
    pub clip_grid: usize,
    /// Largest relative shrink of the range tried (llm-awq: 0.5).
    pub max_shrink: f64,
}

impl Default for AwqConfig {
    fn default() -> Self {
        AwqConfig {
            n_grid: 20,
            duo_scaling: false,
            clip: true,
            clip_grid: 20,
            max_shrink: 0.5,
        }
    }
}

impl AwqConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.n_grid >= 1, "AWQ n_grid must be at least 1");
        ensure!(self.clip_grid >= 1, "AWQ clip_grid must be at least 1");
        ensure!(
            self.max_shrink > 0.0 && self.max_shrink < 1.0,
            "AWQ max_shrink must be in (0, 1), got {}",
            self.max_shrink
        );
        Ok(())
    }
}

/// One linear of a group: its `[d_out, d_in]` weight and the grid it is later quantized on
/// (`None`: it stays unquantized and is only rescaled, exactly, so it adds nothing to the loss).
pub struct AwqLinear<'a> {
    pub weight: &'a [f32],
    pub d_out: usize,
    pub grid: Option<&'a QuantConfig>,
}

/// The chosen scale of a group.
#[derive(Clone, Debug)]
pub struct ScaleChoice {
    /// `s`, one per input channel: the weights become `W diag(s)`, the input `diag(s)^-1 X`.
    pub scales: Vec<f32>,
    pub alpha: f64,
    /// `L(s)` of the chosen scale and of `s = 1` (round to nearest), in units of `tr(Δ H Δᵀ)`.
    pub loss: f64,
    pub loss_rtn: f64,
}

/// Round to nearest of `w` (`[d_out, d_in]`) on `cfg`'s grid, dequantized.
pub fn fake_quant(cfg: &QuantConfig, w: &[f32], d_out: usize, d_in: usize) -> Result<Vec<f32>> {
    let g = grid::grid_for_weight(cfg, w, d_out, d_in)?;
    Ok(grid::rtn_on(&*g, w, d_out, d_in).dequantize())
}

/// `tr(Δ H Δᵀ)` for `Δ` `[m, d]` and `H` `[d, d]` (row-major, symmetric).
fn quad_loss(delta: &[f32], h: MatRef<'_, f32>, m: usize, d: usize) -> f64 {
    let mut p = vec![0f32; m * d];
    matmul(
        MatMut::from_row_major_slice_mut(&mut p, m, d),
        Accum::Replace,
        MatRef::from_row_major_slice(delta, m, d),
        h,
        1.0f32,
        Par::rayon(0),
    );
    p.iter()
        .zip(delta)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

/// `L(s)` of one candidate: every quantized linear of the group rounded in the scaled space.
fn group_loss(lins: &[AwqLinear], s: &[f32], h: MatRef<'_, f32>, d_in: usize) -> Result<f64> {
    let mut loss = 0.0;
    for l in lins {
        let Some(cfg) = l.grid else { continue };
        let mut scaled = l.weight.to_vec();
        for row in scaled.chunks_exact_mut(d_in) {
            row.iter_mut().zip(s).for_each(|(w, f)| *w *= f);
        }
        let q = fake_quant(cfg, &scaled, l.d_out, d_in)?;
        let delta: Vec<f32> = l
            .weight
            .iter()
            .zip(&q)
            .enumerate()
            .map(|(i, (w, q))| w - q / s[i % d_in])
            .collect();
        loss += quad_loss(&delta, h, l.d_out, d_in);
    }
    Ok(loss)
}

/// llm-compressor's `_compute_layer_means`: the group's rows stacked, `|W|` divided by the
/// maximum of its quantization group (+1e-6), averaged over the rows, per input channel.
fn weight_means(lins: &[AwqLinear], d_in: usize) -> Vec<f64> {
    let mut sum = vec![0f64; d_in];
    let mut rows = 0usize;
    for l in lins {
        let g = l.grid.map_or(d_in, |c| c.group_len(d_in)).max(1);
        for row in l.weight.chunks_exact(d_in) {
            for (c0, chunk) in row.chunks(g).enumerate() {
                let m = chunk.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 + 1e-6;
                for (j, v) in chunk.iter().enumerate() {
                    sum[c0 * g + j] += v.abs() as f64 / m;
                }
            }
            rows += 1;
        }
    }
    sum.iter().map(|v| v / rows.max(1) as f64).collect()
}

/// The scale search (paper Eq. 4–5; llm-awq `_search_module_scale`). `x_abs_mean[j]` is the
/// mean `|x_j|` over the calibration tokens, `h` the `[d_in, d_in]` `XᵀX` (any positive
/// multiple of it) in f32.
pub fn search_scales(
    cfg: &AwqConfig,
    lins: &[AwqLinear],
    d_in: usize,
    x_abs_mean: &[f64],
    h: &[f32],
) -> Result<ScaleChoice> {
    cfg.validate()?;
    ensure!(
        x_abs_mean.len() == d_in && h.len() == d_in * d_in,
        "AWQ: statistics of the wrong size ({} means, {} Hessian values for {d_in} channels)",
        x_abs_mean.len(),
        h.len()
    );
    for l in lins {
        ensure!(
            l.weight.len() == l.d_out * d_in,
            "AWQ: a weight of {} values is not {} x {d_in}",
            l.weight.len(),
            l.d_out
        );
    }
    let hm = MatRef::from_row_major_slice(h, d_in, d_in);
    let w_mean = cfg.duo_scaling.then(|| weight_means(lins, d_in));
    let ones = vec![1f32; d_in];
    let loss_rtn = group_loss(lins, &ones, hm, d_in)?;
    let mut best = Some(ScaleChoice {
        scales: ones,
        alpha: 0.0,
        loss: loss_rtn,
        loss_rtn,
    })
    .filter(|b| b.loss.is_finite());
    // llm-awq: α = i/N, i < N (α = 0 is s = 1, computed above); llm-compressor's duo grid:
    // α = i/(N-2), i <= N-2
    let alphas: Vec<f64> = match &w_mean {
        None => (1..cfg.n_grid)
            .map(|i| i as f64 / cfg.n_grid as f64)
            .collect(),
        Some(_) if cfg.n_grid >= 3 => (0..=cfg.n_grid - 2)
            .map(|i| i as f64 / (cfg.n_grid - 2) as f64)
            .collect(),
        Some(_) => vec![0.0, 1.0],
    };
    for alpha in alphas {
        let mut s: Vec<f64> = (0..d_in)
            .map(|j| {
                let x = x_abs_mean[j].powf(alpha);
                let v = match &w_mean {
                    Some(w) => x / (w[j].powf(1.0 - alpha) + 1e-4),
                    None => x,
                };
                v.max(1e-4)
            })
            .collect();
        let (mx, mn) = s
            .iter()
            .fold((f64::MIN, f64::MAX), |(a, b), &v| (a.max(v), b.min(v)));
        let c = (mx * mn).sqrt();
        s.iter_mut().for_each(|v| *v /= c);
        let s32: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        if s32.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            continue;
        }
        let loss = group_loss(lins, &s32, hm, d_in)?;
        if loss.is_finite() && best.as_ref().map_or(true, |b| loss < b.loss) {
            best = Some(ScaleChoice {
                scales: s32,
                alpha,
                loss,
                loss_rtn,
            });
        }
    }
    match best {
        Some(b) => Ok(b),
        None => bail!("AWQ: no candidate scale gave a finite loss"),
    }
}

/// The chosen clipping of one linear.
#[derive(Clone, Debug)]
pub struct ClipChoice {
    /// `[d_out, n_groups]`: the weights of row `r`, group `g` are clamped to `±bounds[r, g]`.
    pub bounds: Vec<f32>,
    pub group_len: usize,
    /// Mean of the chosen `max_val / max |W_rg|` over the (row, group) pairs.
    pub mean_ratio: f64,
    /// Fraction of (row, group) pairs whose range was shrunk.
    pub clipped_fraction: f64,
    /// `Σ δ H_gg δᵀ` with the chosen clipping and without it.
    pub loss: f64,
    pub loss_unclipped: f64,
}

/// Whether the clipping search applies to this grid (integer groups; llm-awq's setting).
pub fn clips(cfg: &QuantConfig) -> bool {
    cfg.ggml.is_none() && cfg.format.is_int()
}

/// The clipping search (llm-awq `auto_clip_layer`) on a weight `w` `[d_out, d_in]` (already
/// scaled) that is later quantized on `cfg`, with `h` the `XᵀX` of the (scaled) input.
/// `None` for grids it does not apply to ([`clips`]).
pub fn search_clip(
    cfg: &AwqConfig,
    grid_cfg: &QuantConfig,
    w: &[f32],
    d_out: usize,
    d_in: usize,
    h: &[f32],
) -> Result<Option<ClipChoice>> {
    cfg.validate()?;
    if !clips(grid_cfg) {
        return Ok(None);
    }
    ensure!(
        w.len() == d_out * d_in && h.len() == d_in * d_in,
        "AWQ clip: a weight of {} values or a Hessian of {} values does not fit {d_out} x {d_in}",
        w.len(),
        h.len()
    );
    let g = grid_cfg.group_len(d_in).max(1);
    let ng = d_in.div_ceil(g);
    let absmax: Vec<f32> = (0..d_out * ng)
        .map(|i| {
            let (r, k) = (i / ng, i % ng);
            let row = &w[r * d_in..(r + 1) * d_in];
            row[k * g..((k + 1) * g).min(d_in)]
                .iter()
                .fold(0f32, |a, v| a.max(v.abs()))
        })
        .collect();
    // the diagonal blocks H_gg, row-major
    let blocks: Vec<Vec<f32>> = (0..ng)
        .map(|k| {
            let (c0, c1) = (k * g, ((k + 1) * g).min(d_in));
            let n = c1 - c0;
            let mut b = vec![0f32; n * n];
            for i in 0..n {
                b[i * n..(i + 1) * n]
                    .copy_from_slice(&h[(c0 + i) * d_in + c0..(c0 + i) * d_in + c1]);
            }
            b
        })
        .collect();
    let steps = ((cfg.max_shrink * cfg.clip_grid as f64) as usize).max(1);
    let mut best_err = vec![f64::INFINITY; d_out * ng];
    let mut best_ratio = vec![1f32; d_out * ng];
    let mut unclipped = 0.0;
    let mut clamped = vec![0f32; d_out * d_in];
    for i in 0..steps {
        let ratio = 1.0 - i as f32 / cfg.clip_grid as f32;
        for r in 0..d_out {
            for k in 0..ng {
                let m = absmax[r * ng + k] * ratio;
                let (c0, c1) = (r * d_in + k * g, r * d_in + ((k + 1) * g).min(d_in));
                for c in c0..c1 {
                    clamped[c] = w[c].clamp(-m, m);
                }
            }
        }
        let q = fake_quant(grid_cfg, &clamped, d_out, d_in)?;
        for (k, b) in blocks.iter().enumerate() {
            let (c0, c1) = (k * g, ((k + 1) * g).min(d_in));
            let n = c1 - c0;
            let mut delta = vec![0f32; d_out * n];
            for r in 0..d_out {
                for c in 0..n {
                    let at = r * d_in + c0 + c;
                    delta[r * n + c] = w[at] - q[at];
                }
            }
            let mut p = vec![0f32; d_out * n];
            matmul(
                MatMut::from_row_major_slice_mut(&mut p, d_out, n),
                Accum::Replace,
                MatRef::from_row_major_slice(&delta, d_out, n),
                MatRef::from_row_major_slice(b, n, n),
                1.0f32,
                Par::rayon(0),
            );
            for r in 0..d_out {
                let e: f64 = (0..n)
                    .map(|c| p[r * n + c] as f64 * delta[r * n + c] as f64)
                    .sum();
                if i == 0 {
                    unclipped += e;
                }
                if e < best_err[r * ng + k] {
                    best_err[r * ng + k] = e;
                    best_ratio[r * ng + k] = ratio;
                }
            }
        }
    }
    let n = (d_out * ng).max(1) as f64;
    Ok(Some(ClipChoice {
        bounds: absmax.iter().zip(&best_ratio).map(|(m, r)| m * r).collect(),
        group_len: g,
        mean_ratio: best_ratio.iter().map(|&r| r as f64).sum::<f64>() / n,
        clipped_fraction: best_ratio.iter().filter(|&&r| r < 1.0).count() as f64 / n,
        loss: best_err.iter().filter(|e| e.is_finite()).sum(),
        loss_unclipped: unclipped,
    }))
}

/// Clamps `w` (`[d_out, d_in]`) to the bounds of a [`ClipChoice`].
pub fn apply_clip(w: &mut [f32], d_in: usize, c: &ClipChoice) {
    let g = c.group_len.max(1);
    let ng = d_in.div_ceil(g);
    for (r, row) in w.chunks_exact_mut(d_in).enumerate() {
        for (k, chunk) in row.chunks_mut(g).enumerate() {
            let m = c.bounds[r * ng + k];
            chunk.iter_mut().for_each(|v| *v = v.clamp(-m, m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    /// `X` with a few outlier channels, its `XᵀX`, and a weight.
    fn problem(rows: usize, d_in: usize, d_out: usize) -> (Vec<f32>, Vec<f32>, Vec<f64>, Vec<f32>) {
        let mut s = 11u64;
        let x: Vec<f32> = (0..rows * d_in)
            .map(|i| {
                let j = i % d_in;
                lcg(&mut s) * if j % 13 == 0 { 20.0 } else { 1.0 }
            })
            .collect();
        let mut h = vec![0f32; d_in * d_in];
        for r in 0..rows {
            let xr = &x[r * d_in..(r + 1) * d_in];
            for i in 0..d_in {
                for j in 0..d_in {
                    h[i * d_in + j] += xr[i] * xr[j];
                }
            }
        }
        let mean: Vec<f64> = (0..d_in)
            .map(|j| (0..rows).map(|r| x[r * d_in + j].abs() as f64).sum::<f64>() / rows as f64)
            .collect();
        let w: Vec<f32> = (0..d_out * d_in).map(|_| lcg(&mut s)).collect();
        (x, h, mean, w)
    }

    fn out_err(x: &[f32], w: &[f32], q: &[f32], rows: usize, d_in: usize, d_out: usize) -> f64 {
        let mut e = 0.0;
        for r in 0..rows {
            for o in 0..d_out {
                let d: f64 = (0..d_in)
                    .map(|j| x[r * d_in + j] as f64 * (w[o * d_in + j] - q[o * d_in + j]) as f64)
                    .sum();
                e += d * d;
            }
        }
        e
    }

    fn w3g16() -> QuantConfig {
        QuantConfig {
            bits: 3,
            group_size: Some(16),
            sym: false,
            mse: false,
            ggml: None,
            format: Default::default(),
        }
    }

    #[test]
    fn the_hessian_loss_is_the_output_error_and_scaling_beats_rtn_on_outliers() {
        let (rows, d_in, d_out) = (200, 64, 24);
        let (x, h, mean, w) = problem(rows, d_in, d_out);
        let q = w3g16();
        let lins = [AwqLinear {
            weight: &w,
            d_out,
            grid: Some(&q),
        }];
        let c = search_scales(&AwqConfig::default(), &lins, d_in, &mean, &h).unwrap();
        // L(1) through XᵀX equals the output error of RTN computed on X directly
        let rtn = fake_quant(&q, &w, d_out, d_in).unwrap();
        let direct = out_err(&x, &w, &rtn, rows, d_in, d_out);
        assert!(
            (c.loss_rtn - direct).abs() < 1e-3 * direct,
            "{} vs {direct}",
            c.loss_rtn
        );
        // the chosen scale's loss is the error of Q(W s)/s on X
        let mut ws = w.clone();
        for row in ws.chunks_exact_mut(d_in) {
            row.iter_mut().zip(&c.scales).for_each(|(v, f)| *v *= f);
        }
        let qs = fake_quant(&q, &ws, d_out, d_in).unwrap();
        let back: Vec<f32> = qs
            .iter()
            .enumerate()
            .map(|(i, v)| v / c.scales[i % d_in])
            .collect();
        let direct_s = out_err(&x, &w, &back, rows, d_in, d_out);
        assert!((c.loss - direct_s).abs() < 1e-3 * direct_s);
        assert!(c.alpha > 0.0, "outlier channels must pull alpha above 0");
        assert!(c.loss < 0.9 * c.loss_rtn, "{} vs {}", c.loss, c.loss_rtn);
        // duo scaling also finds a better scale than RTN here
        let d = search_scales(
            &AwqConfig {
                duo_scaling: true,
                ..AwqConfig::default()
            },
            &lins,
            d_in,
            &mean,
            &h,
        )
        .unwrap();
        assert!(d.loss < c.loss_rtn);
    }

    #[test]
    fn clipping_never_raises_the_per_group_error_and_keeps_the_shape() {
        let (rows, d_in, d_out) = (150, 48, 10);
        let (x, h, _, mut w) = problem(rows, d_in, d_out);
        // a few large weights, which clipping should cut
        for r in 0..d_out {
            w[r * d_in + (r * 7) % d_in] = 6.0;
        }
        let q = w3g16();
        let c = search_clip(&AwqConfig::default(), &q, &w, d_out, d_in, &h)
            .unwrap()
            .unwrap();
        assert_eq!(c.bounds.len(), d_out * 3);
        assert!(c.loss <= c.loss_unclipped + 1e-9);
        assert!(c.clipped_fraction > 0.0);
        let before = out_err(
            &x,
            &w,
            &fake_quant(&q, &w, d_out, d_in).unwrap(),
            rows,
            d_in,
            d_out,
        );
        let mut wc = w.clone();
        apply_clip(&mut wc, d_in, &c);
        let after = out_err(
            &x,
            &w,
            &fake_quant(&q, &wc, d_out, d_in).unwrap(),
            rows,
            d_in,
            d_out,
        );
        // the per-group objective ignores cross-group terms of XᵀX, so allow a little slack
        assert!(after < 1.05 * before, "{after} vs {before}");
        // K-quant and float grids are not clipped
        let k = QuantConfig {
            ggml: Some(shrink_model::gguf::GgmlType::Q4K),
            ..q.clone()
        };
        assert!(search_clip(&AwqConfig::default(), &k, &w, d_out, d_in, &h)
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_settings_are_refused() {
        let (_, h, mean, w) = problem(20, 16, 2);
        let q = w3g16();
        let lins = [AwqLinear {
            weight: &w,
            d_out: 2,
            grid: Some(&q),
        }];
        let bad = AwqConfig {
            max_shrink: 1.5,
            ..AwqConfig::default()
        };
        assert!(search_scales(&bad, &lins, 16, &mean, &h).is_err());
        assert!(search_scales(&AwqConfig::default(), &lins, 16, &mean[..3], &h).is_err());
    }
}
