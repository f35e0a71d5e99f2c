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
use crate::hessian::Hessian;
use crate::quant::{QuantConfig, QuantizedWeight};
use crate::sweep::{sweep, Prune, SweepConfig};
use anyhow::{ensure, Result};
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
    gptq_masked(w, d_out, d_in, h, cfg, None)
}

/// [`gptq`] on the kept weights of an already pruned weight: the positions of `mask` (`true` =
/// pruned, `[d_out, d_in]`) are fixed at 0 (their codes are the zero point), and the other
/// weights absorb their removal and each other's rounding error (SparseGPT's joint mode with a
/// given mask; "Wanda mask, then GPTQ on the kept weights").
pub fn gptq_masked(
    w: &[f32],
    d_out: usize,
    d_in: usize,
    h: &Hessian,
    cfg: &GptqConfig,
    mask: Option<&[bool]>,
) -> Result<GptqResult> {
    cfg.validate()?;
    let r = sweep(
        w,
        d_out,
        d_in,
        h,
        &SweepConfig {
            quant: Some(cfg.quant.clone()),
            prune: match mask {
                Some(m) => Prune::Fixed(m.to_vec()),
                None => Prune::None,
            },
            block_size: cfg.block_size,
            damp: cfg.damp,
            act_order: cfg.act_order,
            static_groups: cfg.static_groups,
        },
    )
    .map_err(|e| anyhow::anyhow!("GPTQ: {e}"))?;
    let weight = r.weight;
    Ok(GptqResult {
        q: r.quant.expect("the sweep quantized"),
        weight,
        damp_used: r.damp_used,
        damp_retries: r.damp_retries,
        dead_columns: r.dead_columns,
        loss: r.loss,
    })
}

#[cfg(test)]
mod tests {
    use crate::sweep::upper_chol_of_inverse;

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
