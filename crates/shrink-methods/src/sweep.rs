//! The column sweep shared by GPTQ and SparseGPT: walk the columns of `W` once, fix each column
//! (quantize it, prune it, or both), and spread its error over the columns not yet fixed with
//! the optimal OBS update (GPTQ eq. 2 / SparseGPT eq. 3):
//!
//! * `delta_F = -(w_q - fixed(w_q)) / [H_F^-1]_qq * (H_F^-1)_{:,q}`, with error increase
//!   `(w_q - fixed(w_q))^2 / (2 [H_F^-1]_qq)`,
//!
//! where `fixed(w)` is `0` for a pruned weight and `quant(w)` (or `w` itself without quantization)
//! otherwise. The rows of `H_F^-1` that are needed are the rows of the upper Cholesky factor `U`
//! of `H^-1` (GPTQ Step 3), so `[H_F^-1]_qq = U_qq^2` and `err = (w_q - fixed(w_q)) / U_qq`.
//! Updates are applied lazily per block of columns (GPTQ Step 2, SparseGPT Algorithm 1).
//!
//! Mask selection (SparseGPT Section 3.3, "adaptive mask selection"):
//! * unstructured: at the start of each block of `B` columns, the `round(p * rows * B)` weights
//!   of the block with the lowest OBS saliency `w^2 / [H^-1]_qq^2` (`= w^2 / U_qq^2`, the
//!   reference's `W1**2 / diag(Hinv1)**2`) over all rows are pruned — the weights already carry
//!   every earlier block's update;
//! * N:M: at the first column of each group of `M`, the `M - N` lowest `w^2 / U_qq^2` of that
//!   group (per row, on the updated weights) are pruned;
//! * fixed: a mask given up front (e.g. Wanda's, for "prune then GPTQ on the kept weights").
use crate::grid::{grid_for_weight, Affine, Grid};
use crate::hessian::{all_finite, Hessian};
use crate::quant::{QuantConfig, QuantizedWeight};
use crate::sparsity::{nm_select_into, prune_count, Sparsity};
use crate::ActOrder;
use anyhow::{bail, ensure, Result};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Which weights the sweep prunes.
#[derive(Clone, Debug, PartialEq)]
pub enum Prune {
    None,
    /// Choose the mask during the sweep (SparseGPT).
    Select(Sparsity),
    /// Prune exactly these positions (`[d_out, d_in]`, `true` = pruned).
    Fixed(Vec<bool>),
}

/// Settings of one sweep.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    pub quant: Option<QuantConfig>,
    pub prune: Prune,
    pub block_size: usize,
    pub damp: f64,
    pub act_order: ActOrder,
    pub static_groups: bool,
}

/// The outcome of a sweep on one weight.
#[derive(Clone, Debug)]
pub struct SweepResult {
    /// New weight `[d_out, d_in]` (dequantized when quantized; exactly 0 where pruned).
    pub weight: Vec<f32>,
    pub quant: Option<QuantizedWeight>,
    /// Pruned positions, when the sweep pruned.
    pub mask: Option<Vec<bool>>,
    pub damp_used: f64,
    pub damp_retries: u32,
    pub dead_columns: usize,
    /// `sum (w - fixed(w))^2 / U_qq^2 / 2` (the references' `sum(Losses)`).
    pub loss: f64,
}

/// Upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), row-major f32, computed in f64.
///
/// Instead of the reference's `cholesky -> cholesky_inverse -> cholesky(upper)`, uses the
/// identity: with `J` the reversal permutation and `J H J = L L^T`, `H = R R^T` for the upper
/// triangular `R = J L J`, so `H^-1 = R^-T R^-1` and `U = R^-1 = J L^-1 J` (same unique factor,
/// half the work). Returns `None` when the factorization fails or gives non-finite values.
pub(crate) fn upper_chol_of_inverse(h: &[f64], n: usize) -> Option<Vec<f32>> {
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

/// Dampened `H` permuted by `perm`, factored as `U = chol(H^-1)` upper; the damping is raised
/// x10 (up to 1.0) while the factorization fails. Returns `(U, damp used, retries)`.
pub(crate) fn factor_with_damping(
    hm: &[f64],
    n: usize,
    perm: &[usize],
    damp0: f64,
    nsamples: usize,
) -> Result<(Vec<f32>, f64, u32)> {
    let mean_diag = (0..n).map(|j| hm[j * n + j]).sum::<f64>() / n.max(1) as f64;
    let mut hp = vec![0.0f64; n * n];
    let mut damp = damp0;
    let mut retries = 0u32;
    loop {
        for a in 0..n {
            for b in 0..n {
                hp[a * n + b] = hm[perm[a] * n + perm[b]];
            }
            hp[a * n + a] += damp * mean_diag;
        }
        if let Some(u) = upper_chol_of_inverse(&hp, n) {
            return Ok((u, damp, retries));
        }
        if damp >= 1.0 {
            bail!(
                "the Hessian ({n} x {n}, {nsamples} samples, mean diagonal {mean_diag:.3e}) is not \
                 positive definite even with damping {damp} x mean(diag H) (started at {damp0}, \
                 {retries} retries): Cholesky factorization failed"
            );
        }
        damp = if damp > 0.0 {
            (damp * 10.0).min(1.0)
        } else {
            0.01
        };
        retries += 1;
    }
}

/// Runs the sweep on a `[d_out, d_in]` row-major weight with input Hessian `h` (`d_in`).
///
/// Steps (GPTQ `fasterquant` / SparseGPT `fasterprune`):
/// 1. Dead inputs (`H_jj == 0`): `H_jj = 1`, `W[:, j] = 0`. A fixed mask zeroes its weights.
/// 2. Static quantization parameters (per-channel, `static_groups`, [`ActOrder::Static`]) from
///    this `W` (pruned weights already 0 for a fixed mask).
/// 3. Act-order: columns of `W` and `H` permuted by `diag(H)` descending (stable).
/// 4. Damping and `U = chol(H^-1)` upper, raising the damping while it fails.
/// 5. Per block: unstructured mask selection; then per row and column `q`: N:M selection at
///    group starts; dynamic quantization parameters at quantization-group starts, fitted to the
///    weights as updated so far with the already chosen pruned weights counted as 0 (with N:M
///    and dynamic groups the N:M masks of the whole quantization group are chosen first, so the
///    grid is fitted to the weights that are kept); `fixed = 0` if pruned, else `quant(w)` or
///    `w`; `err = (w - fixed) / U_qq`; in-block update; after the block the lazy update of the
///    later columns.
/// 6. Undo the permutation; with [`ActOrder::Dynamic`], `g_idx[perm[p]] = p / g`.
pub fn sweep(
    w: &[f32],
    d_out: usize,
    d_in: usize,
    h: &Hessian,
    cfg: &SweepConfig,
) -> Result<SweepResult> {
    ensure!(cfg.block_size >= 1, "block_size must be at least 1, got 0");
    ensure!(
        cfg.damp.is_finite() && cfg.damp >= 0.0,
        "damp must be a finite value >= 0, got {}",
        cfg.damp
    );
    if let Some(q) = &cfg.quant {
        q.validate()?;
    }
    ensure!(
        w.len() == d_out * d_in,
        "weight has {} values, expected {d_out} x {d_in}",
        w.len()
    );
    ensure!(
        h.dim() == d_in,
        "Hessian dimension {} does not match the weight's input dimension {d_in}",
        h.dim()
    );
    h.check_finite()?;
    ensure!(all_finite(w), "the weight holds NaN or infinite values");
    let nm = match &cfg.prune {
        Prune::Select(s) => {
            s.validate()?;
            s.check_dims("weight", d_in)?;
            match *s {
                Sparsity::NM { n, m } => Some((n, m)),
                _ => None,
            }
        }
        Prune::Fixed(mask) => {
            ensure!(
                mask.len() == w.len(),
                "the pruning mask has {} entries, the weight {}",
                mask.len(),
                w.len()
            );
            None
        }
        Prune::None => None,
    };
    ensure!(
        nm.is_none() || cfg.act_order == ActOrder::None,
        "an N:M pattern needs the natural column order (act-order none): its groups are \
         consecutive input columns"
    );
    let n = d_in;
    let pruning = cfg.prune != Prune::None;
    if n == 0 || d_out == 0 {
        return Ok(SweepResult {
            weight: w.to_vec(),
            quant: cfg
                .quant
                .as_ref()
                .map(|qc| crate::rtn::rtn(w, d_out, d_in, qc)),
            mask: pruning.then(|| vec![false; w.len()]),
            damp_used: cfg.damp,
            damp_retries: 0,
            dead_columns: 0,
            loss: 0.0,
        });
    }
    let qc = cfg.quant.clone();
    let grid: Option<Box<dyn Grid>> = qc
        .as_ref()
        .map(|q| grid_for_weight(q, w, d_out, n))
        .transpose()?;
    if let Some(gr) = grid
        .as_ref()
        .filter(|_| qc.as_ref().is_some_and(|q| q.ggml.is_some()))
    {
        ensure!(
            !pruning,
            "pruning and rounding onto the {} grid cannot be joined: 0 is not on every block's \
             grid (use integer groups with pruning)",
            gr.label()
        );
        ensure!(
            cfg.act_order != ActOrder::Dynamic || cfg.static_groups,
            "dynamic act-order forms groups in processing order, but {} blocks are consecutive \
             columns: use act-order static or none",
            gr.label()
        );
    }
    // Columns whose codes are chosen at once (a lattice's 8; 1 for the per-weight grids).
    let unit = grid.as_ref().map_or(1, |g| g.unit_len());
    // Columns fitted together, columns per affine, largest code, stored bytes per block.
    let (bl, sub, maxq, sb) = match &grid {
        Some(gr) => (
            gr.block_len(),
            gr.sub_len(),
            gr.max_code(),
            gr.stored_bytes(),
        ),
        None => (n, n, 0, 0),
    };
    let n_blocks = n.div_ceil(bl);
    let n_sub = n.div_ceil(sub);
    let sstride = (n_blocks * sb).max(1);

    // 1. Dead inputs; a fixed mask's weights are 0 from the start.
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
    if let Prune::Fixed(mask) = &cfg.prune {
        for (v, m) in w.iter_mut().zip(mask) {
            if *m {
                *v = 0.0;
            }
        }
    }

    // 2. Up-front quantization parameters. A grid that weights its fit by the importance of the
    // columns gets the Hessian diagonal (llama.cpp's imatrix is the mean x^2, the same up to a
    // factor); `sigma2` is each row's mean square, as llama.cpp's 32-blocks weight with it.
    let static_params = qc.as_ref().is_some_and(|qc| {
        qc.group_size.is_none() || cfg.static_groups || cfg.act_order == ActOrder::Static
    });
    let importance: Option<Vec<f32>> = grid
        .as_ref()
        .filter(|gr| gr.uses_importance())
        .map(|_| (0..n).map(|j| hm[j * n + j] as f32).collect());
    let sigma2: Vec<f32> = w
        .chunks(n)
        .map(shrink_model::ggml_quant::row_mean_square)
        .collect();
    let mut affines = vec![Affine::default(); d_out * n_sub];
    let mut stored = vec![0u8; d_out * sstride];
    // The fitter's own codes (natural column order), kept where a sub-block's scale is 0.
    let fstride = if grid.is_some() { n } else { 1 };
    let mut fit_codes = vec![0u8; d_out * fstride];
    if let (true, Some(gr)) = (static_params, &grid) {
        affines
            .par_chunks_mut(n_sub)
            .zip(stored.par_chunks_mut(sstride))
            .zip(fit_codes.par_chunks_mut(n))
            .zip(w.par_chunks(n).zip(&sigma2).collect::<Vec<_>>())
            .enumerate()
            .for_each(|(r, (((a, st), fc), (row, &s2)))| {
                for k in 0..n_blocks {
                    let (lo, hi) = (k * bl, ((k + 1) * bl).min(n));
                    let imp = importance.as_ref().map(|i| &i[lo..hi]);
                    let st = if sb > 0 {
                        &mut st[k * sb..(k + 1) * sb]
                    } else {
                        &mut st[..0]
                    };
                    gr.fit_row(
                        r,
                        &row[lo..hi],
                        imp,
                        s2,
                        &mut a[lo / sub..hi.div_ceil(sub)],
                        &mut fc[lo..hi],
                        st,
                    );
                }
            });
    }

    // 3. Act-order permutation: perm[p] = original column processed at position p.
    let mut perm: Vec<usize> = (0..n).collect();
    if cfg.act_order != ActOrder::None && unit > 1 {
        // A lattice's units stay whole and in order: the units by their summed diag(H).
        let score = |k: usize| {
            (k * unit..(k + 1) * unit)
                .map(|j| hm[j * n + j])
                .sum::<f64>()
        };
        let mut units: Vec<usize> = (0..n / unit).collect();
        units.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        perm = units
            .iter()
            .flat_map(|&k| k * unit..(k + 1) * unit)
            .collect();
    } else if cfg.act_order != ActOrder::None {
        perm.sort_by(|&a, &b| hm[b * n + b].total_cmp(&hm[a * n + a]));
    }
    let identity = perm.iter().enumerate().all(|(p, &j)| p == j);
    // The sub-block (affine) of each processing position.
    let sub_of_pos: Vec<usize> = (0..n)
        .map(|p| {
            if static_params {
                perm[p] / sub
            } else {
                p / sub
            }
        })
        .collect();
    let permute = |v: Vec<f32>| -> Vec<f32> {
        if identity {
            return v;
        }
        let mut out = vec![0.0f32; d_out * n];
        for r in 0..d_out {
            for p in 0..n {
                out[r * n + p] = v[r * n + perm[p]];
            }
        }
        out
    };
    let mut wp = permute(w);
    // Pruned flags in processing order.
    let mut maskp: Vec<bool> = match &cfg.prune {
        Prune::Fixed(mask) => {
            let mut m = vec![false; d_out * n];
            for r in 0..d_out {
                for p in 0..n {
                    m[r * n + p] = mask[r * n + perm[p]];
                }
            }
            m
        }
        _ => vec![false; d_out * n],
    };

    // 4. Damping and U.
    let (u, damp_used, damp_retries) = factor_with_damping(&hm, n, &perm, cfg.damp, h.nsamples())?;
    drop(hm);
    // A lattice unit's weights: each column's 1 / [H_F^-1]_qq = 1 / U_qq^2.
    let unit_w: Vec<f32> = if unit > 1 {
        (0..n)
            .map(|p| 1.0 / (u[p * n + p] * u[p * n + p]))
            .collect()
    } else {
        Vec::new()
    };

    // 5. Block loop. N:M groups must not straddle blocks.
    // A lattice's units must not straddle them either.
    let bs = match nm {
        Some((_, m)) => cfg.block_size.div_ceil(m) * m,
        None => cfg.block_size.div_ceil(unit) * unit,
    };
    // Codes in processing order (unused without quantization).
    let mut codes_p = vec![0u8; d_out * n];
    let mut loss = 0.0f64;
    let rows_per_task = (4096 / n).clamp(1, 64);
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + bs).min(n);
        let count = i2 - i1;
        if let Prune::Select(Sparsity::Unstructured(f)) = cfg.prune {
            select_block_unstructured(&wp, &u, &mut maskp, d_out, n, i1, i2, f);
        }
        let mut err = vec![0.0f32; d_out * count];
        let u = &u;
        let sub_of_pos = &sub_of_pos;
        let grid = &grid;
        let importance = &importance;
        let perm = &perm;
        let unit_w = &unit_w;
        let block_loss: f64 = wp
            .par_chunks_mut(n * rows_per_task)
            .zip(maskp.par_chunks_mut(n * rows_per_task))
            .zip(codes_p.par_chunks_mut(n * rows_per_task))
            .zip(affines.par_chunks_mut(n_sub * rows_per_task))
            .zip(stored.par_chunks_mut(sstride * rows_per_task))
            .zip(fit_codes.par_chunks_mut(fstride * rows_per_task))
            .zip(err.par_chunks_mut(count * rows_per_task))
            .zip(sigma2.par_chunks(rows_per_task))
            .map(
                |(((((((wrows, mrows), crows), arows), strows), fcrows), erows), s2rows)| {
                    let mut buf = vec![0.0f32; count];
                    let mut gbuf: Vec<f32> = Vec::with_capacity(bl.min(n));
                    let mut ibuf: Vec<f32> = Vec::with_capacity(bl.min(n));
                    let mut sc: Vec<f32> = Vec::new();
                    let mut uvals = vec![0.0f32; unit];
                    let mut l = 0.0f64;
                    let nr = wrows.len() / n;
                    for r in 0..nr {
                        let wrow = &mut wrows[r * n..(r + 1) * n];
                        let mrow = &mut mrows[r * n..(r + 1) * n];
                        let erow = &mut erows[r * count..(r + 1) * count];
                        buf.copy_from_slice(&wrow[i1..i2]);
                        let mut nm_done = i1; // N:M masks chosen for positions < nm_done
                        for i in 0..count {
                            let p = i1 + i;
                            let new_qgroup = grid.is_some() && !static_params && p % bl == 0;
                            if let Some((keep, m)) = nm {
                                // Choose the N:M masks up to the end of this M group, or of this
                                // quantization group when its grid is fitted now.
                                let upto = if new_qgroup {
                                    (p + bl).div_ceil(m) * m
                                } else {
                                    p + 1
                                }
                                .min(i2);
                                while nm_done < upto {
                                    let a = nm_done;
                                    sc.clear();
                                    sc.extend((a..a + m).map(|c| {
                                        let d = u[c * n + c];
                                        let v = buf[c - i1];
                                        v * v / (d * d)
                                    }));
                                    nm_select_into(&sc, keep, &mut mrow[a..a + m]);
                                    nm_done += m;
                                }
                            }
                            if let (true, Some(gr)) = (new_qgroup, grid) {
                                // Dynamic group: parameters from the weights as updated so far
                                // (columns past the block carry every earlier block's update), with
                                // chosen pruned weights counted as 0. The GPTQ reference reads the
                                // block-start W here, which lets in-block updates push the second
                                // group of a block off its grid.
                                let end = (p + bl).min(n);
                                gbuf.clear();
                                for c in p..end {
                                    let v = if c < i2 { buf[c - i1] } else { wrow[c] };
                                    gbuf.push(if mrow[c] { 0.0 } else { v });
                                }
                                let imp = importance.as_ref().map(|imp| {
                                    ibuf.clear();
                                    ibuf.extend((p..end).map(|c| imp[perm[c]]));
                                    &ibuf[..]
                                });
                                let k = p / bl;
                                let st = &mut strows[r * sstride..(r + 1) * sstride];
                                let st = if sb > 0 {
                                    &mut st[k * sb..(k + 1) * sb]
                                } else {
                                    &mut st[..0]
                                };
                                // Fitted codes go to the natural columns: the order is natural here
                                // unless the grid is integer, whose scales are never 0, so its fitted
                                // codes are never read.
                                let fc = &mut fcrows[r * n + p..r * n + end];
                                let a = &mut arows[r * n_sub..(r + 1) * n_sub];
                                gr.fit(
                                    &gbuf,
                                    imp,
                                    s2rows[r],
                                    &mut a[p / sub..end.div_ceil(sub)],
                                    fc,
                                    st,
                                );
                            }
                            if let (true, Some(gr)) = (unit > 1 && p % unit == 0, grid) {
                                // A lattice unit: its point chosen for the values as they
                                // stand, weighted by each column's 1 / [H_F^-1]_qq; its columns
                                // are then fixed in turn to those values below.
                                let c0 = perm[p];
                                let (kb, ku) = (c0 / bl, (c0 % bl) / unit);
                                let st =
                                    &mut strows[r * sstride + kb * sb..r * sstride + (kb + 1) * sb];
                                let w = &unit_w[p..p + unit];
                                gr.choose_unit(st, ku, &buf[i..i + unit], w, &mut uvals);
                            }
                            let x = buf[i];
                            let pruned = mrow[p];
                            let fixed = match grid {
                                Some(_) if unit > 1 => uvals[p % unit],
                                Some(_) => {
                                    let aff = arows[r * n_sub + sub_of_pos[p]];
                                    let code = if pruned {
                                        aff.zero as u32
                                    } else {
                                        aff.code(x, maxq)
                                            .unwrap_or_else(|| fcrows[r * n + perm[p]] as u32)
                                    };
                                    crows[r * n + p] = code as u8;
                                    aff.value(code)
                                }
                                None if pruned => 0.0,
                                None => x,
                            };
                            let d = u[p * n + p];
                            let e = (x - fixed) / d;
                            l += (e as f64).powi(2) / 2.0;
                            if e != 0.0 {
                                let urow = &u[p * n + p + 1..p * n + i2];
                                for (bv, &uv) in buf[i + 1..].iter_mut().zip(urow) {
                                    *bv -= e * uv;
                                }
                            }
                            erow[i] = e;
                            wrow[p] = fixed;
                        }
                    }
                    l
                },
            )
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
    let weight = unpermute(wp, &perm, d_out, n);
    let mask = pruning.then(|| unpermute(maskp, &perm, d_out, n));
    let quant = grid.map(|gr| {
        let mut g_idx = vec![0u32; n];
        for p in 0..n {
            g_idx[perm[p]] = sub_of_pos[p] as u32;
        }
        if sb == 0 {
            stored.clear();
        }
        gr.assemble(
            d_out,
            d_in,
            unpermute(codes_p, &perm, d_out, n),
            affines,
            stored,
            g_idx,
        )
    });
    Ok(SweepResult {
        weight,
        quant,
        mask,
        damp_used,
        damp_retries,
        dead_columns,
        loss,
    })
}

/// Row-major `[d_out, n]` values in processing order back to the original column order.
fn unpermute<T: Copy + Default>(v: Vec<T>, perm: &[usize], d_out: usize, n: usize) -> Vec<T> {
    if perm.iter().enumerate().all(|(p, &j)| p == j) {
        return v;
    }
    let mut out = vec![T::default(); d_out * n];
    for r in 0..d_out {
        for p in 0..n {
            out[r * n + perm[p]] = v[r * n + p];
        }
    }
    out
}

/// SparseGPT's adaptive unstructured mask for the block `[i1, i2)`: the `round(f * rows * B)`
/// weights of the block with the lowest `w^2 / U_qq^2` over all rows (ties: lower position).
#[allow(clippy::too_many_arguments)]
fn select_block_unstructured(
    wp: &[f32],
    u: &[f32],
    maskp: &mut [bool],
    d_out: usize,
    n: usize,
    i1: usize,
    i2: usize,
    f: f64,
) {
    let count = i2 - i1;
    let mut scores = Vec::with_capacity(d_out * count);
    for r in 0..d_out {
        for p in i1..i2 {
            let d = u[p * n + p];
            let v = wp[r * n + p];
            scores.push(v * v / (d * d));
        }
    }
    let k = prune_count(scores.len(), f);
    if k == 0 {
        return;
    }
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        scores[*a as usize]
            .total_cmp(&scores[*b as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    for &i in &idx[..k] {
        let (r, c) = (i as usize / count, i as usize % count);
        maskp[r * n + i1 + c] = true;
    }
}
