//! GPTQ (Frantar, Ashkboos, Hoefler, Alistarh: "GPTQ: Accurate Post-Training Quantization for
//! Generative Pre-trained Transformers", ICLR 2023), following `fasterquant` of the reference code
//! (IST-DASLab/gptq, `gptq.py`).
//!
//! The layer-wise objective is `argmin_Q ||W X - Q X||^2`, whose Hessian for a row `w` is
//! `H = 2 X X^T` (here the running average of [`Hessian`]). Quantizing the weight `w_q` of a row
//! and updating the not yet quantized weights `F` optimally (OBS, eq. 2 of the paper) gives
//!
//! * `delta_F = -(w_q - quant(w_q)) / [H_F^-1]_qq * (H_F^-1)_{:,q}` and an error increase of
//!   `(w_q - quant(w_q))^2 / (2 [H_F^-1]_qq)`,
//!
//! applied in a fixed column order for all rows at once (Step 1, "arbitrary order"). The rows of
//! `H_F^-1` that are needed are the rows of the upper Cholesky factor `U` of `H^-1`
//! (`H^-1 = U^T U`, Step 3, "Cholesky reformulation"): `[H_F^-1]_qq = U_qq^2` and the update of
//! the later columns is `err * U[q, q+1:]` with `err = (w_q - quant(w_q)) / U_qq`. Updates are
//! applied lazily (Step 2, "lazy batch updates"): inside a block of `B = 128` columns they go to
//! the block only, and after the block the block's errors `E` reach all later columns in one
//! matrix product `W[:, end:] -= E U[block, end:]` (Algorithm 1).
use crate::hessian::{all_finite, Hessian};
use crate::quant::{dequantize_value, find_params, quantize_value, QuantConfig, QuantizedWeight};
use anyhow::{bail, ensure, Result};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Column processing order ("act-order" / "desc_act").
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ActOrder {
    /// Natural column order.
    None,
    /// Reference GPTQ `act_order`: columns are processed in `diag(H)`-descending order and
    /// groups are formed in that permuted order (group `k` = processing positions
    /// `[k g, (k+1) g)`), so `g_idx` is a non-trivial permutation of groups.
    Dynamic,
    /// llm-compressor 0.14 `actorder="static"` (= `"weight"`): the parameters of the natural
    /// contiguous groups are computed up front from the original weights, columns are processed
    /// in `diag(H)`-descending order, each quantized with its natural group's parameters;
    /// `g_idx` stays `i / g`. Same as [`ActOrder::Dynamic`] with `static_groups`.
    Static,
}

/// GPTQ settings (reference defaults via [`GptqConfig::new`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GptqConfig {
    pub quant: QuantConfig,
    /// Columns per lazy-update block (reference: 128).
    pub block_size: usize,
    /// Relative damping: `H += damp * mean(diag H) * I` (reference `percdamp`: 0.01).
    pub damp: f64,
    pub act_order: ActOrder,
    /// Parameters of all (natural) groups computed up front from the original `W`
    /// (reference `static_groups`); otherwise each group's parameters are computed when the
    /// group starts, from the weights as updated so far.
    pub static_groups: bool,
}

impl GptqConfig {
    /// Reference defaults: block 128, damp 0.01, no act-order, dynamic groups.
    pub fn new(quant: QuantConfig) -> Self {
        GptqConfig {
            quant,
            block_size: 128,
            damp: 0.01,
            act_order: ActOrder::None,
            static_groups: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.quant.validate()?;
        ensure!(
            self.block_size >= 1,
            "GPTQ block_size must be at least 1, got 0"
        );
        ensure!(
            self.damp.is_finite() && self.damp >= 0.0,
            "GPTQ damp must be a finite value >= 0, got {}",
            self.damp
        );
        Ok(())
    }
}

/// The outcome of [`gptq`] on one linear weight.
#[derive(Clone, Debug)]
pub struct GptqResult {
    pub q: QuantizedWeight,
    /// Dequantized weight, `[d_out, d_in]` like the input; equal bit for bit to `q.dequantize()`.
    pub weight: Vec<f32>,
    /// Relative damping that made the Cholesky factorization succeed.
    pub damp_used: f64,
    /// How many times the damping had to be raised (x10) before it succeeded.
    pub damp_retries: u32,
    /// Input columns with `H_jj == 0` (their weights were set to 0).
    pub dead_columns: usize,
    /// The reference `sum(Losses)`: `sum over rows and columns of (w - q)^2 / U_qq^2 / 2`, which
    /// equals `1/2 tr((W - Q) H_damped (W - Q)^T)` in exact arithmetic.
    pub loss: f64,
}

/// Upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), row-major f32, computed in f64.
///
/// Instead of the reference's `cholesky -> cholesky_inverse -> cholesky(upper)`, uses the
/// identity: with `J` the reversal permutation and `J H J = L L^T`, `H = R R^T` for the upper
/// triangular `R = J L J`, so `H^-1 = R^-T R^-1` and `U = R^-1 = J L^-1 J` (same unique factor,
/// half the work). Returns `None` when the factorization fails or gives non-finite values.
fn upper_chol_of_inverse(h: &[f64], n: usize) -> Option<Vec<f32>> {
    let par = Par::rayon(0);
    let mut a = Mat::<f64>::from_fn(n, n, |i, j| {
        if i >= j {
            h[(n - 1 - i) * n + (n - 1 - j)]
        } else {
            0.0
        }
    });
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    let stack = MemStack::new(&mut mem);
    cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par,
        stack,
        Default::default(),
    )
    .ok()?;
    for j in 0..n {
        for i in 0..j {
            a[(i, j)] = 0.0;
        }
    }
    let mut linv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(linv.as_mut(), a.as_ref(), par);
    let mut u = vec![0.0f32; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = linv[(n - 1 - i, n - 1 - j)] as f32;
        }
    }
    let ok = (0..n).all(|i| {
        let d = u[i * n + i];
        d.is_finite() && d > 0.0
    }) && u.iter().all(|v| v.is_finite());
    ok.then_some(u)
}

/// Quantizes a `[d_out, d_in]` row-major weight with GPTQ (Algorithm 1 of the paper) given the
/// input Hessian `h` of dimension `d_in`.
///
/// Steps, as in the reference `fasterquant`:
/// 1. Dead inputs (`H_jj == 0`): `H_jj = 1`, `W[:, j] = 0`.
/// 2. Static group parameters (per-channel, `static_groups`, [`ActOrder::Static`]) from this `W`.
/// 3. Act-order: permute the columns of `W` and `H` by `diag(H)` descending (stable).
/// 4. Damping `H += damp * mean(diag H) * I`; `U = chol(H^-1)` upper. If the factorization fails,
///    `damp` is multiplied by 10 (at most 1.0) and it is retried; past 1.0 it is an error.
/// 5. For each block of `block_size` columns and each column `q` in it: at a group start
///    (dynamic groups) the group's parameters come from `W[:, q:q+g]` as updated by the previous
///    blocks (the reference reads the block-start `W`, not the in-block updates);
///    `err = (w_q - quant(w_q)) / U_qq`, `W[:, q+1:block_end] -= err U[q, q+1:block_end]`;
///    after the block `W[:, block_end:] -= Err U[block, block_end:]`.
/// 6. Undo the permutation; with [`ActOrder::Dynamic`], `g_idx[perm[p]] = p / g`.
///
/// Per-channel parameters are computed after dead columns are zeroed (the reference computes
/// them before; dead inputs never contribute to the output, so this only avoids wasting range).
pub fn gptq(
    w: &[f32],
    d_out: usize,
    d_in: usize,
    h: &Hessian,
    cfg: &GptqConfig,
) -> Result<GptqResult> {
    cfg.validate()?;
    ensure!(
        w.len() == d_out * d_in,
        "GPTQ: weight has {} values, expected {d_out} x {d_in}",
        w.len()
    );
    ensure!(
        h.dim() == d_in,
        "GPTQ: Hessian dimension {} does not match the weight's input dimension {d_in}",
        h.dim()
    );
    h.check_finite()?;
    ensure!(
        all_finite(w),
        "GPTQ: the weight holds NaN or infinite values"
    );
    let qc = &cfg.quant;
    let maxq = qc.maxq();
    let g = qc.group_len(d_in);
    let ng = qc.n_groups(d_in);
    let n = d_in;
    if n == 0 {
        return Ok(GptqResult {
            q: crate::rtn::rtn(w, d_out, 0, qc),
            weight: Vec::new(),
            damp_used: cfg.damp,
            damp_retries: 0,
            dead_columns: 0,
            loss: 0.0,
        });
    }

    // 1. Dead inputs.
    let mut hm = h.matrix().to_vec();
    let mut w = w.to_vec();
    let mut dead_columns = 0;
    for j in 0..n {
        if hm[j * n + j] == 0.0 {
            hm[j * n + j] = 1.0;
            dead_columns += 1;
            for r in 0..d_out {
                w[r * n + j] = 0.0;
            }
        }
    }

    // 2. Which columns share parameters, and the up-front parameters.
    let static_params =
        qc.group_size.is_none() || cfg.static_groups || cfg.act_order == ActOrder::Static;
    let mut scales = vec![0.0f32; d_out * ng];
    let mut zeros = vec![0u32; d_out * ng];
    if static_params && n > 0 {
        scales
            .par_chunks_mut(ng)
            .zip(zeros.par_chunks_mut(ng))
            .zip(w.par_chunks(n))
            .for_each(|((s, z), row)| {
                for k in 0..ng {
                    let (a, b) = (k * g, ((k + 1) * g).min(n));
                    (s[k], z[k]) = find_params(&row[a..b], qc);
                }
            });
    }

    // 3. Act-order permutation: perm[p] = original column processed at position p.
    let mut perm: Vec<usize> = (0..n).collect();
    if cfg.act_order != ActOrder::None {
        perm.sort_by(|&a, &b| hm[b * n + b].total_cmp(&hm[a * n + a]));
    }
    let identity = perm.iter().enumerate().all(|(p, &j)| p == j);
    // Group (index into scales/zeros) used by the column at each processing position.
    let group_of_pos: Vec<usize> = (0..n)
        .map(|p| if static_params { perm[p] / g } else { p / g })
        .collect();
    let mut wp = if identity {
        w
    } else {
        let mut wp = vec![0.0f32; d_out * n];
        for r in 0..d_out {
            for p in 0..n {
                wp[r * n + p] = w[r * n + perm[p]];
            }
        }
        wp
    };

    // 4. Damping and U = chol(H^-1) upper, raising the damping on failure.
    let mean_diag = (0..n).map(|j| hm[j * n + j]).sum::<f64>() / n.max(1) as f64;
    let mut hp = vec![0.0f64; n * n];
    let mut damp = cfg.damp;
    let mut damp_retries = 0u32;
    let u = loop {
        for a in 0..n {
            for b in 0..n {
                hp[a * n + b] = hm[perm[a] * n + perm[b]];
            }
            hp[a * n + a] += damp * mean_diag;
        }
        if let Some(u) = upper_chol_of_inverse(&hp, n) {
            break u;
        }
        if damp >= 1.0 {
            bail!(
                "GPTQ: the Hessian ({n} x {n}, {} samples, mean diagonal {mean_diag:.3e}) is not \
                 positive definite even with damping {damp} x mean(diag H) (started at {}, {} \
                 retries): Cholesky factorization failed",
                h.nsamples(),
                cfg.damp,
                damp_retries
            );
        }
        damp = if damp > 0.0 {
            (damp * 10.0).min(1.0)
        } else {
            0.01
        };
        damp_retries += 1;
    };
    drop(hp);

    // 5. Block loop. Codes are kept in processing order until the end.
    let mut codes_p = vec![0u8; d_out * n];
    let mut loss = 0.0f64;
    let bs = cfg.block_size;
    let rows_per_task = (4096 / n.max(1)).clamp(1, 64);
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + bs).min(n);
        let count = i2 - i1;
        let mut err = vec![0.0f32; d_out * count];
        let u = &u;
        let group_of_pos = &group_of_pos;
        let block_loss: f64 = wp
            .par_chunks_mut(n * rows_per_task)
            .zip(codes_p.par_chunks_mut(n * rows_per_task))
            .zip(scales.par_chunks_mut(ng * rows_per_task))
            .zip(zeros.par_chunks_mut(ng * rows_per_task))
            .zip(err.par_chunks_mut(count * rows_per_task))
            .map(|((((wrows, crows), srows), zrows), erows)| {
                let mut buf = vec![0.0f32; count];
                let mut gbuf: Vec<f32> = Vec::with_capacity(g.min(n));
                let mut l = 0.0f64;
                let nr = wrows.len() / n;
                for r in 0..nr {
                    let wrow = &mut wrows[r * n..(r + 1) * n];
                    let crow = &mut crows[r * n..(r + 1) * n];
                    let srow = &mut srows[r * ng..(r + 1) * ng];
                    let zrow = &mut zrows[r * ng..(r + 1) * ng];
                    let erow = &mut erows[r * count..(r + 1) * count];
                    buf.copy_from_slice(&wrow[i1..i2]);
                    for i in 0..count {
                        let p = i1 + i;
                        let k = group_of_pos[p];
                        if !static_params && p % g == 0 {
                            // Dynamic group: parameters from the weights as updated so far
                            // (in-block updates included; columns past the block carry every
                            // earlier block's update). The reference reads the block-start W
                            // here, which lets in-block updates push the second group of a
                            // block off its grid; see the note on `gptq`.
                            let end = (p + g).min(n);
                            gbuf.clear();
                            gbuf.extend_from_slice(&buf[i..(end.min(i2) - i1)]);
                            if end > i2 {
                                gbuf.extend_from_slice(&wrow[i2..end]);
                            }
                            (srow[k], zrow[k]) = find_params(&gbuf, qc);
                        }
                        let (s, z) = (srow[k], zrow[k]);
                        let x = buf[i];
                        let code = quantize_value(x, s, z, maxq);
                        let qv = dequantize_value(code, s, z);
                        let d = u[p * n + p];
                        let e = (x - qv) / d;
                        l += ((x - qv) as f64 / d as f64).powi(2) / 2.0;
                        let urow = &u[p * n + p + 1..p * n + i2];
                        for (bv, &uv) in buf[i + 1..].iter_mut().zip(urow) {
                            *bv -= e * uv;
                        }
                        erow[i] = e;
                        crow[p] = code as u8;
                        wrow[p] = qv;
                    }
                }
                l
            })
            .sum();
        loss += block_loss;
        if i2 < n {
            // Lazy batch update: W[:, i2:] -= Err U[i1:i2, i2:].
            let dst = MatMut::from_row_major_slice_mut(&mut wp, d_out, n).submatrix_mut(
                0,
                i2,
                d_out,
                n - i2,
            );
            let lhs = MatRef::from_row_major_slice(&err, d_out, count);
            let rhs = MatRef::from_row_major_slice(u, n, n).submatrix(i1, i2, count, n - i2);
            let par = if d_out * count * (n - i2) < 1 << 18 {
                Par::Seq
            } else {
                Par::rayon(0)
            };
            matmul(dst, Accum::Add, lhs, rhs, -1.0f32, par);
        }
        i1 = i2;
    }

    // 6. Undo the permutation.
    let (weight, codes) = if identity {
        (wp, codes_p)
    } else {
        let mut weight = vec![0.0f32; d_out * n];
        let mut codes = vec![0u8; d_out * n];
        for r in 0..d_out {
            for p in 0..n {
                weight[r * n + perm[p]] = wp[r * n + p];
                codes[r * n + perm[p]] = codes_p[r * n + p];
            }
        }
        (weight, codes)
    };
    let mut g_idx = vec![0u32; n];
    for p in 0..n {
        g_idx[perm[p]] = group_of_pos[p] as u32;
    }
    Ok(GptqResult {
        q: QuantizedWeight {
            d_out,
            d_in,
            config: qc.clone(),
            codes,
            scales,
            zeros,
            g_idx,
        },
        weight,
        damp_used: damp,
        damp_retries,
        dead_columns,
        loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `U^T U` is the inverse of `H` and `U` is upper triangular with a positive diagonal.
    #[test]
    fn upper_factor_of_inverse() {
        let n = 7;
        let mut s = 12345u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let a: Vec<f64> = (0..n * n).map(|_| next()).collect();
        let mut h = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        let u = upper_chol_of_inverse(&h, n).unwrap();
        for i in 0..n {
            assert!(u[i * n + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        // (U^T U) H = I
        for i in 0..n {
            for j in 0..n {
                let mut v = 0.0f64;
                for k in 0..n {
                    let utu: f64 = (0..n)
                        .map(|m| u[m * n + i] as f64 * u[m * n + k] as f64)
                        .sum();
                    v += utu * h[k * n + j];
                }
                let e = if i == j { 1.0 } else { 0.0 };
                assert!((v - e).abs() < 1e-4, "({i},{j}): {v}");
            }
        }
        // Not positive definite.
        let bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(upper_chol_of_inverse(&bad, 2).is_none());
    }
}
