//! The exact greedy OBC/OBS solver (Frantar & Alistarh, "Optimal Brain Compression", NeurIPS
//! 2022), row by row with explicit inverse-Hessian updates.
//!
//! For one row `w` with inverse Hessian `Hi = H^-1` over the weights still free, fixing weight
//! `p` to the value `t` (0 when pruned, `quant(w_p)` when quantized) with the optimal update of
//! the others costs (OBS, OBC eq. 2–3)
//!
//! * `delta L = (w_p - t)^2 / (2 [Hi]_pp)`, `delta w = -(w_p - t) / [Hi]_pp * Hi_{:,p}`,
//!
//! and removing `p` from the free set updates the inverse by one Gaussian-elimination step
//! (OBC eq. 4): `Hi <- Hi - Hi_{:,p} Hi_{p,:} / [Hi]_pp`. The greedy solver always fixes the
//! free weight with the lowest `delta L`:
//!
//! * pruning (OBS): candidates are the free weights (with N:M, only those whose group of `M` has
//!   fewer than `M - N` pruned); for unstructured sparsity every row's full trajectory is
//!   computed and the `round(p * rows * d_in)` lowest increments of the layer are taken
//!   (OBC Section 4, global mask selection), then each row is replayed to its count;
//! * quantization (OBQ): the grid (per row or per group) is fitted to the row after pruning, and
//!   the free weights are quantized one at a time, lowest `(w_p - quant(w_p))^2 / [Hi]_pp` first.
//!
//! **Cost:** `O(d_in^2)` per fixed weight, so `O(d_out * d_in^3)` per layer (twice that for
//! unstructured pruning), plus `d_in^2` f64 of memory per thread. On 2 cores a 576 x 576 layer
//! takes seconds to minutes; the method refuses `d_in` above [`Obc::max_d_in`] (default 1024).
//! It is the test oracle for SparseGPT/GPTQ and usable as a method on small layers.
use crate::hessian::{all_finite, Hessian};
use crate::quant::{dequantize_value, find_params, quantize_value, QuantConfig, QuantizedWeight};
use crate::sparsity::{prune_count, Sparsity};
use anyhow::{bail, ensure, Result};
use faer::linalg::solvers::DenseSolveCore;
use faer::Mat;
use rayon::prelude::*;

/// Settings of the exact solver.
#[derive(Clone, Debug)]
pub struct ObcConfig {
    pub sparsity: Option<Sparsity>,
    pub quant: Option<QuantConfig>,
    /// Relative damping `H += damp * mean(diag H) * I`.
    pub damp: f64,
}

/// The outcome of [`obc`].
#[derive(Clone, Debug)]
pub struct ObcResult {
    pub weight: Vec<f32>,
    pub quant: Option<QuantizedWeight>,
    pub mask: Option<Vec<bool>>,
    /// Sum over rows of the greedy increments (`1/2 tr(D H D^T)` in exact arithmetic).
    pub loss: f64,
}

/// Inverse of the dampened Hessian (dead inputs get `H_jj = 1` and their weights are zeroed).
fn damped_inverse(h: &Hessian, damp: f64) -> Result<(Vec<f64>, Vec<bool>)> {
    let n = h.dim();
    let mut hm = h.matrix().to_vec();
    let dead: Vec<bool> = (0..n).map(|j| hm[j * n + j] == 0.0).collect();
    for j in 0..n {
        if dead[j] {
            hm[j * n + j] = 1.0;
        }
    }
    let mean = (0..n).map(|j| hm[j * n + j]).sum::<f64>() / n.max(1) as f64;
    let m = Mat::<f64>::from_fn(n, n, |i, j| {
        hm[i * n + j] + if i == j { damp * mean } else { 0.0 }
    });
    let llt = match m.llt(faer::Side::Lower) {
        Ok(l) => l,
        Err(_) => bail!("OBC: the dampened Hessian ({n} x {n}) is not positive definite"),
    };
    let inv = llt.inverse();
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = inv[(i, j)];
        }
    }
    ensure!(
        out.iter().all(|v| v.is_finite()),
        "OBC: the inverse Hessian has non-finite values"
    );
    Ok((out, dead))
}

/// One row's greedy state: its weights, the inverse Hessian over the free weights, the free set.
struct RowState {
    w: Vec<f64>,
    hi: Vec<f64>,
    free: Vec<bool>,
    n: usize,
}

impl RowState {
    fn new(row: &[f32], hinv: &[f64], dead: &[bool]) -> Self {
        let n = row.len();
        let w = row
            .iter()
            .zip(dead)
            .map(|(v, d)| if *d { 0.0 } else { *v as f64 })
            .collect();
        RowState {
            w,
            hi: hinv.to_vec(),
            free: vec![true; n],
            n,
        }
    }

    /// `delta L` of fixing free weight `p` to `t`.
    fn cost(&self, p: usize, t: f64) -> f64 {
        let d = self.w[p] - t;
        d * d / (2.0 * self.hi[p * self.n + p])
    }

    /// Fixes `p` to `t`, updating the other free weights and the inverse; returns `delta L`.
    fn fix(&mut self, p: usize, t: f64) -> f64 {
        let n = self.n;
        let d = self.hi[p * n + p];
        let e = (self.w[p] - t) / d;
        let col: Vec<f64> = (0..n).map(|j| self.hi[j * n + p]).collect();
        for ((wj, cj), free) in self.w.iter_mut().zip(&col).zip(&self.free) {
            if *free {
                *wj -= e * cj;
            }
        }
        let cost = e * e * d / 2.0;
        self.w[p] = t;
        self.free[p] = false;
        for i in 0..n {
            if !self.free[i] || col[i] == 0.0 {
                continue;
            }
            let f = col[i] / d;
            let row = &mut self.hi[i * n..(i + 1) * n];
            for j in 0..n {
                if self.free[j] {
                    row[j] -= f * col[j];
                }
            }
        }
        cost
    }

    /// Greedily prunes `k` free weights (N:M: `m - keep` per group of `m`); returns the increments.
    fn prune(&mut self, k: usize, nm: Option<(usize, usize)>) -> Vec<f64> {
        let n = self.n;
        let mut pruned_in_group = vec![0usize; nm.map_or(0, |(_, m)| n / m)];
        let mut incs = Vec::with_capacity(k);
        for _ in 0..k {
            let mut best: Option<(f64, usize)> = None;
            for p in 0..n {
                if !self.free[p] {
                    continue;
                }
                if let Some((keep, m)) = nm {
                    if pruned_in_group[p / m] >= m - keep {
                        continue;
                    }
                }
                let c = self.cost(p, 0.0);
                if best.map_or(true, |(b, _)| c < b) {
                    best = Some((c, p));
                }
            }
            let Some((_, p)) = best else { break };
            if let Some((_, m)) = nm {
                pruned_in_group[p / m] += 1;
            }
            incs.push(self.fix(p, 0.0));
        }
        incs
    }

    /// Greedily quantizes every free weight on the given per-column grid (`grid(p, x)` gives
    /// the grid value of `x` and the grid step at `p`). Outlier rule of the OBQ reference
    /// (`TrueOBS.quantize`): when a free weight has been pushed off its grid's range (rounding
    /// error above half a step), the one with the largest error is quantized next.
    fn quantize(&mut self, grid: &dyn Fn(usize, f64) -> (f64, f64)) -> f64 {
        let mut total = 0.0;
        loop {
            let mut best: Option<(f64, usize, f64)> = None;
            let mut worst: Option<(f64, usize, f64)> = None;
            for p in 0..self.n {
                if !self.free[p] {
                    continue;
                }
                let (t, step) = grid(p, self.w[p]);
                let err = (self.w[p] - t).powi(2);
                let c = self.cost(p, t);
                if best.map_or(true, |(b, _, _)| c < b) {
                    best = Some((c, p, t));
                }
                if err > 0.25 * step * step
                    && self.w[p] != 0.0
                    && worst.map_or(true, |(e, _, _)| err > e)
                {
                    worst = Some((err, p, t));
                }
            }
            let Some((_, p, t)) = worst.or(best) else {
                break;
            };
            total += self.fix(p, t);
        }
        total
    }
}

/// One row's result: weights, mask, codes, scales, zeros, loss.
type RowOut = (Vec<f32>, Vec<bool>, Vec<u8>, Vec<f32>, Vec<u32>, f64);

/// Compresses a `[d_out, d_in]` weight with the exact greedy solver.
pub fn obc(
    w: &[f32],
    d_out: usize,
    d_in: usize,
    h: &Hessian,
    cfg: &ObcConfig,
) -> Result<ObcResult> {
    ensure!(
        w.len() == d_out * d_in,
        "OBC: weight has {} values, expected {d_out} x {d_in}",
        w.len()
    );
    ensure!(
        h.dim() == d_in,
        "OBC: Hessian dimension {} does not match d_in {d_in}",
        h.dim()
    );
    ensure!(
        all_finite(w),
        "OBC: the weight holds NaN or infinite values"
    );
    h.check_finite()?;
    if let Some(s) = &cfg.sparsity {
        s.validate()?;
        s.check_dims("OBC weight", d_in)?;
    }
    if let Some(q) = &cfg.quant {
        q.validate()?;
        ensure!(
            q.ggml.is_none(),
            "OBC rounds onto integer groups; for a llama.cpp grid use GPTQ or RTN"
        );
    }
    let n = d_in;
    let (hinv, dead) = damped_inverse(h, cfg.damp)?;
    let nm = match cfg.sparsity {
        Some(Sparsity::NM { n: keep, m }) => Some((keep, m)),
        _ => None,
    };
    // Per-row pruning counts.
    let counts: Vec<usize> = match cfg.sparsity {
        None => vec![0; d_out],
        Some(Sparsity::NM { n: keep, m }) => vec![(m - keep) * (n / m); d_out],
        Some(Sparsity::Unstructured(f)) => {
            // Full trajectories, then the globally lowest increments.
            let trajs: Vec<Vec<f64>> = (0..d_out)
                .into_par_iter()
                .map(|r| RowState::new(&w[r * n..(r + 1) * n], &hinv, &dead).prune(n, None))
                .collect();
            let k = prune_count(d_out * n, f);
            let mut all: Vec<(f64, usize)> = trajs
                .iter()
                .enumerate()
                .flat_map(|(r, t)| t.iter().map(move |c| (*c, r)))
                .collect();
            let mut counts = vec![0usize; d_out];
            if k > 0 {
                all.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                for &(_, r) in &all[..k] {
                    counts[r] += 1;
                }
            }
            counts
        }
    };
    let qc = cfg.quant.clone();
    let rows: Vec<RowOut> = (0..d_out)
        .into_par_iter()
        .map(|r| {
            let mut st = RowState::new(&w[r * n..(r + 1) * n], &hinv, &dead);
            let mut loss: f64 = st.prune(counts[r], nm).iter().sum();
            let mask: Vec<bool> = st.free.iter().map(|f| !f).collect();
            let (mut codes, mut scales, mut zeros) = (vec![], vec![], vec![]);
            if let Some(qc) = &qc {
                let g = qc.group_len(n);
                let ng = qc.n_groups(n);
                let row32: Vec<f32> = st.w.iter().map(|v| *v as f32).collect();
                for k in 0..ng {
                    let (s, z) = find_params(&row32[k * g..((k + 1) * g).min(n)], qc);
                    scales.push(s);
                    zeros.push(z);
                }
                let maxq = qc.maxq();
                let (sc, ze) = (&scales, &zeros);
                let grid = move |p: usize, x: f64| {
                    let (s, z) = (sc[p / g], ze[p / g]);
                    let t = dequantize_value(quantize_value(x as f32, s, z, maxq), s, z);
                    (t as f64, s as f64)
                };
                loss += st.quantize(&grid);
                codes = (0..n)
                    .map(|p| {
                        let (s, z) = (scales[p / g], zeros[p / g]);
                        if mask[p] {
                            z as u8
                        } else {
                            quantize_value(st.w[p] as f32, s, z, maxq) as u8
                        }
                    })
                    .collect();
            }
            let row: Vec<f32> = st.w.iter().map(|v| *v as f32).collect();
            (row, mask, codes, scales, zeros, loss)
        })
        .collect();
    let mut weight = Vec::with_capacity(d_out * n);
    let mut mask = Vec::with_capacity(d_out * n);
    let (mut codes, mut scales, mut zeros) = (vec![], vec![], vec![]);
    let mut loss = 0.0;
    for (rw, rm, rc, rs, rz, l) in rows {
        weight.extend(rw);
        mask.extend(rm);
        codes.extend(rc);
        scales.extend(rs);
        zeros.extend(rz);
        loss += l;
    }
    let quant = qc.map(|qc| {
        let g = qc.group_len(n);
        let q = QuantizedWeight {
            d_out,
            d_in,
            config: qc,
            codes,
            scales,
            zeros,
            g_idx: (0..n).map(|c| (c / g) as u32).collect(),
            ggml: None,
        };
        weight = q.dequantize();
        q
    });
    Ok(ObcResult {
        weight,
        quant,
        mask: cfg.sparsity.map(|_| mask),
        loss,
    })
}
