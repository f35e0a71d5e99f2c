//! Magnitude pruning (Han et al., "Learning both Weights and Connections for Efficient Neural
//! Networks", 2015): prune the weights with the lowest `|W_ij|`, compared over the whole layer
//! (the classic baseline of the SparseGPT and Wanda papers) or within each output row; with N:M,
//! within each group of `M` consecutive weights of a row. Needs no calibration data.
use crate::sparsity::{select_mask, Sparsity};

/// Pruned positions of a `[d_out, d_in]` weight by magnitude.
pub fn magnitude_mask(
    w: &[f32],
    d_out: usize,
    d_in: usize,
    s: Sparsity,
    per_row: bool,
) -> Vec<bool> {
    let scores: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    select_mask(&scores, d_out, d_in, s, per_row)
}
