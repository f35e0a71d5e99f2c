//! shrink-methods: post-training compression methods for linear weights behind one trait.
//!
//! - [`quant`]: the uniform integer grid (GPTQ reference `Quantizer`) and [`QuantizedWeight`],
//!   the form the export formats pack.
//! - [`grid`]: the grids RTN and the sweep round onto ([`grid::Grid`]): integer groups, and
//!   llama.cpp's block types (legacy and K-quants) fitted as llama.cpp fits them.
//! - [`rtn`]: round to nearest.
//! - [`hessian`]: the running input statistics `H = (2/n) X^T X` of a linear layer.
//! - [`sweep`]: the OBS column sweep shared by [`gptq`] (GPTQ, Frantar et al., ICLR 2023) and
//!   [`sparsegpt`] (SparseGPT, Frantar & Alistarh, ICML 2023), including their joint mode.
//! - [`sparsity`]: sparsity targets (fraction or N:M) and exact mask selection; [`magnitude`]
//!   and [`wanda`] (Sun et al., ICLR 2024) masks.
//! - [`obc`]: the exact greedy OBC/OBS/OBQ solver (Frantar & Alistarh, NeurIPS 2022).
//!
//! The pipeline drives every method through [`Method`]: it accumulates what
//! [`Method::needs`] asks for from the input of each group of linears sharing an input (column
//! norms always; the Hessian when needed), then calls [`Method::compress`] per linear. Several
//! stages ([`Chain`]) run on each linear in turn, a pruning stage's mask fixed for the next.
pub mod awq;
pub mod gptq;
pub mod grid;
pub mod grid_fp;
pub mod hessian;
pub mod magnitude;
pub mod obc;
pub mod quant;
pub mod rtn;
pub mod sparsegpt;
pub mod sparsity;
pub mod sweep;
pub mod wanda;

pub use gptq::{gptq, gptq_masked, ActOrder, GptqConfig, GptqResult};
pub use hessian::{all_finite, Hessian};
pub use magnitude::magnitude_mask;
pub use obc::{obc, ObcConfig, ObcResult};
pub use quant::{
    dequantize_value, find_params, quantize_value, NumberFormat, QuantConfig, QuantizedWeight,
};
pub use rtn::rtn;
pub use sparsegpt::{sparsegpt, SparseGptConfig};
pub use sparsity::{count_zeros, mask_respected, nm_violations, select_mask, Sparsity};
pub use sweep::{sweep, Prune, SweepConfig, SweepResult};
pub use wanda::wanda_mask;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use shrink_model::Tensor;

/// What a method needs from the inputs of a linear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Nothing (RTN, magnitude).
    Nothing,
    /// Per-column sums of squares `sum_t x_tj^2` (Wanda).
    ColumnNorms,
    /// The Hessian `(2/n) X^T X` (GPTQ, SparseGPT, OBC).
    Hessian,
}

/// The input statistics shared by a group of linears (e.g. q/k/v see the same input).
pub struct InputStats<'a> {
    /// Present when a method of the run needs it.
    pub hessian: Option<&'a Hessian>,
    /// `sum_t x_tj^2` per input column over all calibration tokens.
    pub col_sq: &'a [f64],
    /// Calibration tokens (rows of X).
    pub rows: usize,
}

impl InputStats<'_> {
    fn hessian(&self, linear: &str, method: &str) -> Result<&Hessian> {
        self.hessian
            .with_context(|| format!("{linear}: {method} needs the input Hessian, none was given"))
    }
}

/// A compressed linear weight.
pub struct Compressed {
    /// The new f32 weight, `[d_out, d_in]` (dequantized when quantized; 0 where pruned).
    pub weight: Vec<f32>,
    /// The codes, scales and zeros when the method quantizes.
    pub quant: Option<QuantizedWeight>,
    /// Pruned positions (`true` = pruned) when the method prunes or kept an earlier mask.
    pub mask: Option<Vec<bool>>,
    /// Per-linear details for the JSON report.
    pub info: serde_json::Value,
}

/// A compression method applied linear by linear.
pub trait Method: Send + Sync {
    /// A short label, e.g. `gptq w4 g64 asym`.
    fn name(&self) -> String;
    /// What [`Method::compress`] needs in [`InputStats`] (the pipeline skips the rest).
    fn needs(&self) -> Needs;
    /// The sparsity this method produces, if it prunes (the pipeline verifies it).
    fn sparsity(&self) -> Option<Sparsity> {
        None
    }
    /// The grid this method finally rounds onto, if it quantizes (AWQ searches its scales for
    /// that grid).
    fn quant_grid(&self) -> Option<&QuantConfig> {
        None
    }
    /// Compresses the weight of the linear named `linear` (`[d_out, d_in]`). `mask` holds the
    /// positions an earlier stage pruned: they must stay exactly 0.
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed>;
}

/// `[d_out, d_in]` of a linear weight, or an error naming the linear.
fn weight_dims(linear: &str, weight: &Tensor) -> Result<(usize, usize)> {
    let dims = match weight.shape.as_slice() {
        [o, i] if o * i == weight.data.len() => (*o, *i),
        s => bail!(
            "{linear}: expected a 2-D weight [d_out, d_in] with matching data, got shape {s:?} and {} values",
            weight.data.len()
        ),
    };
    ensure!(
        all_finite(&weight.data),
        "{linear}: the weight holds NaN or infinite values"
    );
    Ok(dims)
}

fn pruned_info(mask: &[bool]) -> serde_json::Value {
    let k = mask.iter().filter(|m| **m).count();
    json!({"pruned": k, "pruned_fraction": k as f64 / mask.len().max(1) as f64})
}

/// Refuses a second pruning stage: masks do not compose.
fn no_prior_mask(linear: &str, method: &str, mask: Option<&[bool]>) -> Result<()> {
    ensure!(
        mask.is_none(),
        "{linear}: {method} prunes, but an earlier stage already pruned this weight (use one \
         pruning stage, optionally followed by quantization)"
    );
    Ok(())
}

/// Round to nearest on the grid of the config. Zeros stay zeros (0 is on every grid).
pub struct Rtn(pub QuantConfig);

impl Method for Rtn {
    fn name(&self) -> String {
        format!("rtn {}", self.0.label())
    }
    fn quant_grid(&self) -> Option<&QuantConfig> {
        Some(&self.0)
    }
    fn needs(&self) -> Needs {
        Needs::Nothing
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        _stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        self.0.validate()?;
        let (d_out, d_in) = weight_dims(linear, weight)?;
        ensure!(
            mask.is_none() || self.0.ggml.is_none(),
            "{linear}: a pruned weight cannot be rounded onto a llama.cpp grid (0 is not on every \
             block's grid); use integer groups"
        );
        let grid = grid::grid_for_weight(&self.0, &weight.data, d_out, d_in)
            .with_context(|| linear.to_string())?;
        let mut q = grid::rtn_on(&*grid, &weight.data, d_out, d_in);
        if let Some(m) = mask {
            // 0 quantizes to the zero point exactly; make it explicit.
            for (r, row) in m.chunks(d_in.max(1)).enumerate() {
                for (c, pruned) in row.iter().enumerate() {
                    if *pruned {
                        let k = q.g_idx[c] as usize;
                        q.codes[r * d_in + c] = if q.config.format.is_int() {
                            q.zeros[r * q.n_groups() + k] as u8
                        } else {
                            0 // +0 in every float format
                        };
                    }
                }
            }
        }
        Ok(Compressed {
            weight: q.dequantize(),
            quant: Some(q),
            mask: mask.map(|m| m.to_vec()),
            info: json!({}),
        })
    }
}

/// GPTQ with the given settings; after a pruning stage, GPTQ on the kept weights.
pub struct Gptq(pub GptqConfig);

impl Method for Gptq {
    fn name(&self) -> String {
        let mut s = format!("gptq {}", self.0.quant.label());
        match self.0.act_order {
            ActOrder::None => {}
            ActOrder::Dynamic => s.push_str(" actorder"),
            ActOrder::Static => s.push_str(" actorder=static"),
        }
        if self.0.static_groups && self.0.act_order != ActOrder::Static {
            s.push_str(" static-groups");
        }
        s
    }
    fn quant_grid(&self) -> Option<&QuantConfig> {
        Some(&self.0.quant)
    }
    fn needs(&self) -> Needs {
        Needs::Hessian
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        let (d_out, d_in) = weight_dims(linear, weight)?;
        let h = stats.hessian(linear, "GPTQ")?;
        let r = gptq_masked(&weight.data, d_out, d_in, h, &self.0, mask)
            .with_context(|| format!("GPTQ on {linear} ([{d_out}, {d_in}])"))?;
        Ok(Compressed {
            weight: r.weight,
            info: json!({
                "damp": r.damp_used,
                "damp_retries": r.damp_retries,
                "dead_columns": r.dead_columns,
                "gptq_loss": r.loss,
                "nsamples": h.nsamples(),
                "g_idx_trivial": r.q.g_idx_is_trivial(),
            }),
            quant: Some(r.q),
            mask: mask.map(|m| m.to_vec()),
        })
    }
}

/// Magnitude pruning, layer-wise (`per_row = false`) or per output row.
pub struct Magnitude {
    pub sparsity: Sparsity,
    pub per_row: bool,
}

impl Method for Magnitude {
    fn name(&self) -> String {
        let scope = if self.per_row { " per-row" } else { "" };
        format!("magnitude {}{scope}", self.sparsity.label())
    }
    fn needs(&self) -> Needs {
        Needs::Nothing
    }
    fn sparsity(&self) -> Option<Sparsity> {
        Some(self.sparsity)
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        _stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        no_prior_mask(linear, "magnitude", mask)?;
        let (d_out, d_in) = weight_dims(linear, weight)?;
        self.sparsity.check_dims(linear, d_in)?;
        let m = magnitude_mask(&weight.data, d_out, d_in, self.sparsity, self.per_row);
        Ok(apply_mask(&weight.data, m))
    }
}

fn apply_mask(w: &[f32], mask: Vec<bool>) -> Compressed {
    let weight = w
        .iter()
        .zip(&mask)
        .map(|(v, m)| if *m { 0.0 } else { *v })
        .collect();
    Compressed {
        weight,
        quant: None,
        info: pruned_info(&mask),
        mask: Some(mask),
    }
}

/// Wanda pruning (per-output comparison groups).
pub struct Wanda(pub Sparsity);

impl Method for Wanda {
    fn name(&self) -> String {
        format!("wanda {}", self.0.label())
    }
    fn needs(&self) -> Needs {
        Needs::ColumnNorms
    }
    fn sparsity(&self) -> Option<Sparsity> {
        Some(self.0)
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        no_prior_mask(linear, "Wanda", mask)?;
        let (d_out, d_in) = weight_dims(linear, weight)?;
        self.0.check_dims(linear, d_in)?;
        ensure!(
            stats.col_sq.len() == d_in,
            "{linear}: {} input norms for {d_in} input columns",
            stats.col_sq.len()
        );
        let m = wanda_mask(&weight.data, d_out, d_in, stats.col_sq, self.0);
        Ok(apply_mask(&weight.data, m))
    }
}

/// SparseGPT, optionally with joint quantization.
pub struct SparseGpt(pub SparseGptConfig);

impl Method for SparseGpt {
    fn name(&self) -> String {
        let mut s = format!("sparsegpt {}", self.0.sparsity.label());
        if let Some(q) = &self.0.quant {
            s.push_str(&format!(" + {}", q.label()));
        }
        if self.0.act_order != ActOrder::None {
            s.push_str(" actorder");
        }
        s
    }
    fn quant_grid(&self) -> Option<&QuantConfig> {
        self.0.quant.as_ref()
    }
    fn needs(&self) -> Needs {
        Needs::Hessian
    }
    fn sparsity(&self) -> Option<Sparsity> {
        Some(self.0.sparsity)
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        no_prior_mask(linear, "SparseGPT", mask)?;
        let (d_out, d_in) = weight_dims(linear, weight)?;
        self.0.sparsity.check_dims(linear, d_in)?;
        let h = stats.hessian(linear, "SparseGPT")?;
        let r = sparsegpt(&weight.data, d_out, d_in, h, &self.0)
            .with_context(|| format!("{linear} ([{d_out}, {d_in}])"))?;
        let mask = r.mask.expect("SparseGPT prunes");
        let mut info = pruned_info(&mask);
        info["damp"] = json!(r.damp_used);
        info["damp_retries"] = json!(r.damp_retries);
        info["dead_columns"] = json!(r.dead_columns);
        info["sweep_loss"] = json!(r.loss);
        Ok(Compressed {
            weight: r.weight,
            quant: r.quant,
            mask: Some(mask),
            info,
        })
    }
}

/// The exact greedy OBC solver (small layers only; see [`obc`] for its cost).
pub struct Obc {
    pub config: ObcConfig,
    /// Largest input size accepted (the cost grows as `d_in^3` per row).
    pub max_d_in: usize,
}

impl Method for Obc {
    fn name(&self) -> String {
        let mut parts = vec!["obc".to_string()];
        if let Some(s) = &self.config.sparsity {
            parts.push(s.label());
        }
        if let Some(q) = &self.config.quant {
            parts.push(q.label());
        }
        parts.join(" ")
    }
    fn quant_grid(&self) -> Option<&QuantConfig> {
        self.config.quant.as_ref()
    }
    fn needs(&self) -> Needs {
        Needs::Hessian
    }
    fn sparsity(&self) -> Option<Sparsity> {
        self.config.sparsity
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        no_prior_mask(linear, "OBC", mask)?;
        let (d_out, d_in) = weight_dims(linear, weight)?;
        ensure!(
            d_in <= self.max_d_in,
            "{linear}: OBC is exact but costs O(d_out * d_in^3) = {d_out} x {d_in}^3 here; it \
             accepts d_in <= {} (use sparsegpt or gptq for larger layers)",
            self.max_d_in
        );
        let h = stats.hessian(linear, "OBC")?;
        let r = obc(&weight.data, d_out, d_in, h, &self.config)
            .with_context(|| format!("{linear} ([{d_out}, {d_in}])"))?;
        let mut info = r.mask.as_deref().map(pruned_info).unwrap_or(json!({}));
        info["obc_loss"] = json!(r.loss);
        Ok(Compressed {
            weight: r.weight,
            quant: r.quant,
            mask: r.mask,
            info,
        })
    }
}

/// Stages applied to each linear in turn: each sees the previous stage's weight, and the mask
/// of a pruning stage is kept by the later ones. The quantized form is the last stage's.
pub struct Chain(pub Vec<Box<dyn Method>>);

impl Method for Chain {
    fn name(&self) -> String {
        self.0
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(" -> ")
    }
    fn quant_grid(&self) -> Option<&QuantConfig> {
        self.0.iter().rev().find_map(|m| m.quant_grid())
    }
    fn needs(&self) -> Needs {
        self.0
            .iter()
            .map(|m| m.needs())
            .max()
            .unwrap_or(Needs::Nothing)
    }
    fn sparsity(&self) -> Option<Sparsity> {
        self.0.iter().find_map(|m| m.sparsity())
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        let mut cur = Tensor {
            shape: weight.shape.clone(),
            data: weight.data.clone(),
        };
        let mut mask = mask.map(|m| m.to_vec());
        let mut quant = None;
        let mut infos = vec![];
        for m in &self.0 {
            let c = m.compress(linear, &cur, stats, mask.as_deref())?;
            cur.data = c.weight;
            if c.mask.is_some() {
                mask = c.mask;
            }
            if c.quant.is_some() {
                quant = c.quant;
            }
            infos.push(c.info);
        }
        let mut info = mask.as_deref().map(pruned_info).unwrap_or(json!({}));
        info["stages"] = json!(infos);
        Ok(Compressed {
            weight: cur.data,
            quant,
            mask,
            info,
        })
    }
}
