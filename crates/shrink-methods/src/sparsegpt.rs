//! SparseGPT (Frantar & Alistarh: "SparseGPT: Massive Language Models Can Be Accurately Pruned
//! in One-Shot", ICML 2023), following `fasterprune` of IST-DASLab/sparsegpt.
//!
//! Algorithm 1 of the paper: columns are visited in blocks of `B = 128`; at each block start the
//! mask of the block is chosen adaptively by the OBS saliency `w^2 / [H^-1]_cc^2` (Section 3.3;
//! N:M: per group of `M` at its first column, Section 3.4), and each column's pruning error is
//! propagated to the later columns with the row-shared inverse Hessian (eq. 3 and the Cholesky
//! form of GPTQ). With a quantization grid, kept weights are quantized in the same sweep (the
//! joint mode, Section 3.5: "fixed(w) = 0 if pruned else quant(w)"). The sweep itself is
//! [`crate::sweep::sweep`], shared with GPTQ.
use crate::hessian::Hessian;
use crate::quant::QuantConfig;
use crate::sparsity::Sparsity;
use crate::sweep::{sweep, Prune, SweepConfig, SweepResult};
use crate::ActOrder;
use anyhow::Result;

/// SparseGPT settings.
#[derive(Clone, Debug)]
pub struct SparseGptConfig {
    pub sparsity: Sparsity,
    /// Quantize the kept weights in the same sweep.
    pub quant: Option<QuantConfig>,
    /// Columns per block (reference: 128).
    pub block_size: usize,
    /// Relative damping (reference `percdamp`: 0.01).
    pub damp: f64,
    /// Column order; the reference uses the natural order ([`ActOrder::None`]). N:M requires it.
    pub act_order: ActOrder,
}

impl SparseGptConfig {
    pub fn new(sparsity: Sparsity) -> Self {
        SparseGptConfig {
            sparsity,
            quant: None,
            block_size: 128,
            damp: 0.01,
            act_order: ActOrder::None,
        }
    }
}

/// Prunes (and with a grid, quantizes) a `[d_out, d_in]` weight with SparseGPT.
pub fn sparsegpt(
    w: &[f32],
    d_out: usize,
    d_in: usize,
    h: &Hessian,
    cfg: &SparseGptConfig,
) -> Result<SweepResult> {
    sweep(
        w,
        d_out,
        d_in,
        h,
        &SweepConfig {
            quant: cfg.quant.clone(),
            prune: Prune::Select(cfg.sparsity),
            block_size: cfg.block_size,
            damp: cfg.damp,
            act_order: cfg.act_order,
            static_groups: false,
        },
    )
    .map_err(|e| anyhow::anyhow!("SparseGPT: {e}"))
}
