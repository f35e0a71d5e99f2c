//! Wanda (Sun, Liu, Bair, Kolter: "A Simple and Effective Pruning Approach for Large Language
//! Models", ICLR 2024), following locuslab/wanda `prune_wanda`.
//!
//! Score (eq. 1): `S_ij = |W_ij| * ||X_j||_2`, with `||X_j||_2` the norm of input feature `j`
//! over all calibration tokens. Weights are compared per output (each row of `W` is one
//! comparison group, Section 3), the lowest `round(p * d_in)` of each row are pruned; with N:M,
//! the `M - N` lowest of every `M` consecutive weights of a row. No weight update.
use crate::sparsity::{select_mask, Sparsity};

/// Pruned positions of a `[d_out, d_in]` weight by Wanda's score; `col_sq[j] = sum_t x_tj^2`.
pub fn wanda_mask(w: &[f32], d_out: usize, d_in: usize, col_sq: &[f64], s: Sparsity) -> Vec<bool> {
    assert_eq!(col_sq.len(), d_in);
    let norms: Vec<f32> = col_sq.iter().map(|v| v.max(0.0).sqrt() as f32).collect();
    let scores: Vec<f32> = w
        .chunks(d_in.max(1))
        .flat_map(|row| row.iter().zip(&norms).map(|(v, n)| v.abs() * n))
        .collect();
    select_mask(&scores, d_out, d_in, s, true)
}
