//! Input statistics of one linear layer: the GPTQ/SparseGPT Hessian proxy
//! `H = (2/n) * sum_t x_t x_t^T` over the `n` calibration rows (tokens) `x_t` seen so far, kept as a
//! running average so batches can be added one by one (GPTQ reference `add_batch`), plus the
//! per-column sums of squares `sum_t x_tj^2` (Wanda's `||X_j||^2`, the diagonal of `X^T X`).
//!
//! Note: the reference counts `n` in sequences, not tokens; that only rescales `H` by a constant,
//! which GPTQ is invariant to (the damping is relative to `mean(diag H)`), but it rescales the
//! reported loss. Here `n` counts rows.
//!
//! Each batch's `X^T X` is computed chunk by chunk ([`CHUNK_ROWS`] rows at a time) as an f32
//! symmetric rank-k update (lower triangle only, faer, all threads); every chunk's product is added
//! into an f64 accumulator, so rounding does not grow with the number of tokens.
use anyhow::{bail, Result};
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

/// Rows per f32 product before it is added into the f64 accumulator. Adding batches whose
/// sizes are multiples of this gives the same sums as one big batch (up to f64 rounding).
pub const CHUNK_ROWS: usize = 2048;

/// Running average `(2/n) X^T X` of a linear layer's inputs, in f64.
#[derive(Clone, Debug)]
pub struct Hessian {
    d: usize,
    n: usize,
    /// `[d, d]` symmetric, row-major.
    h: Vec<f64>,
    /// `[d]`: sum over rows of `x_j^2`.
    col_sq: Vec<f64>,
}

/// Whether every value is finite (a batch with NaN/Inf must be rejected by the caller).
pub fn all_finite(x: &[f32]) -> bool {
    x.iter().all(|v| v.is_finite())
}

impl Hessian {
    /// An empty accumulator for inputs of dimension `d`.
    pub fn new(d: usize) -> Self {
        Hessian {
            d,
            n: 0,
            h: vec![0.0; d * d],
            col_sq: vec![0.0; d],
        }
    }

    /// A Hessian given directly: `h` is the `[d, d]` average `(2/n) X^T X` (row-major) over `n`
    /// rows. For tests and for statistics computed elsewhere; the column sums of squares are
    /// derived from the diagonal (`n/2 * H_jj`). The matrix is used as given (it need not be
    /// positive semi-definite).
    pub fn from_matrix(d: usize, h: Vec<f64>, n: usize) -> Self {
        assert_eq!(
            h.len(),
            d * d,
            "Hessian::from_matrix: expected {d} x {d} values"
        );
        let col_sq = (0..d).map(|j| h[j * d + j] * n as f64 / 2.0).collect();
        Hessian { d, n, h, col_sq }
    }

    /// Adds `rows` input rows `x` (`[rows, d]` row-major): `H <- (n H + 2 X^T X) / (n + rows)`.
    ///
    /// Panics when `x.len() != rows * d`. NaN/Inf are not checked here (see [`all_finite`]).
    pub fn add_batch(&mut self, x: &[f32], rows: usize) {
        let d = self.d;
        assert_eq!(
            x.len(),
            rows * d,
            "Hessian::add_batch: got {} values, expected {rows} x {d}",
            x.len()
        );
        if rows == 0 || d == 0 {
            self.n += rows;
            return;
        }
        // Batch sum of x x^T, lower triangle, column-major: s[j * d + i] for i >= j.
        let mut s = vec![0.0f64; d * d];
        let mut tmp = Mat::<f32>::zeros(d, d);
        for chunk in x.chunks(CHUNK_ROWS * d) {
            let c = chunk.len() / d;
            let xr = MatRef::from_row_major_slice(chunk, c, d);
            let par = if c * d * d < 1 << 20 {
                Par::Seq
            } else {
                Par::rayon(0)
            };
            tri_matmul(
                tmp.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Replace,
                xr.transpose(),
                BlockStructure::Rectangular,
                xr,
                BlockStructure::Rectangular,
                1.0f32,
                par,
            );
            let tmp = &tmp;
            s.par_chunks_mut(d).enumerate().for_each(|(j, scol)| {
                let col = tmp.col(j);
                for i in j..d {
                    scol[i] += col[i] as f64;
                }
            });
        }
        // The column sums of squares are the diagonal of the batch's X^T X.
        for j in 0..d {
            self.col_sq[j] += s[j * d + j];
        }
        let n2 = self.n + rows;
        let a = self.n as f64 / n2 as f64;
        let b = 2.0 / n2 as f64;
        for j in 0..d {
            for i in j..d {
                let v = a * self.h[i * d + j] + b * s[j * d + i];
                self.h[i * d + j] = v;
                self.h[j * d + i] = v;
            }
        }
        self.n = n2;
    }

    /// Input dimension `d`.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Number of rows (tokens) added so far.
    pub fn nsamples(&self) -> usize {
        self.n
    }

    /// The current average `(2/n) X^T X`, `[d, d]` row-major (symmetric).
    pub fn matrix(&self) -> &[f64] {
        &self.h
    }

    /// Per-column sum over all rows of `x_j^2` (Wanda's squared input norms).
    pub fn col_sq_norms(&self) -> Vec<f64> {
        self.col_sq.clone()
    }

    /// Errors when the matrix holds NaN or infinite values.
    pub fn check_finite(&self) -> Result<()> {
        if let Some(k) = self.h.iter().position(|v| !v.is_finite()) {
            bail!(
                "Hessian ({} x {}) has a non-finite value {} at ({}, {}) after {} rows",
                self.d,
                self.d,
                self.h[k],
                k / self.d,
                k % self.d,
                self.n
            );
        }
        Ok(())
    }
}

/// The extreme eigenvalues of a Hessian `H = 2 XᵀX / n` (see [`Hessian::spectrum`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spectrum {
    /// The largest eigenvalue `λ_max`.
    pub top: f64,
    /// The smallest eigenvalue `λ_min` (0 up to rounding when `H` is singular).
    pub min: f64,
    /// `λ_max / λ_min`; `None` when `λ_min <= 1e-12 λ_max` (singular to f64 precision).
    pub condition: Option<f64>,
    /// `(λ_max + δ) / (λ_min + δ)` with GPTQ's damping `δ = 0.01 · mean(diag H)`: the
    /// conditioning of the matrix GPTQ factorizes.
    pub condition_damped: f64,
    /// `mean(diag H) = tr(H) / d`, the mean eigenvalue.
    pub mean: f64,
    /// The largest diagonal entry `max_j H_jj`: the curvature of the worst input channel, the
    /// one quantity here an orthogonal rotation changes (`diag(Qᵀ H Q)`).
    pub max_diag: f64,
}

impl Hessian {
    /// The eigenvalues of `H` (faer's self-adjoint eigendecomposition, f64): top, smallest,
    /// condition numbers. `O(d³)`: about a second for `d = 1536` on two cores.
    pub fn spectrum(&self) -> Result<Spectrum> {
        self.check_finite()?;
        spectrum_of(self.d, &self.h)
    }
}

/// [`Spectrum`] of a symmetric `[d, d]` row-major matrix.
pub fn spectrum_of(d: usize, h: &[f64]) -> Result<Spectrum> {
    if d == 0 {
        bail!("the spectrum of an empty Hessian is undefined");
    }
    let m = Mat::from_fn(d, d, |i, j| h[i * d + j]);
    let ev = m
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| anyhow::anyhow!("eigenvalues of a {d} x {d} Hessian: {e:?}"))?;
    let (min, top) = (ev[0], ev[d - 1]);
    let mean = (0..d).map(|i| h[i * d + i]).sum::<f64>() / d as f64;
    let damp = 0.01 * mean;
    Ok(Spectrum {
        top,
        min,
        condition: (min > 1e-12 * top.abs()).then(|| top / min),
        condition_damped: (top + damp) / (min + damp),
        mean,
        max_diag: (0..d).map(|i| h[i * d + i]).fold(f64::MIN, f64::max),
    })
}
