//! shrink-methods: post-training compression methods for linear weights behind one trait.
//!
//! - [`quant`]: the uniform integer grid (GPTQ reference `Quantizer`) and [`QuantizedWeight`],
//!   the form the export formats pack.
//! - [`rtn`]: round to nearest.
//! - [`hessian`]: the running input statistics `H = (2/n) X^T X` of a linear layer.
//! - [`gptq`]: GPTQ (Frantar et al., ICLR 2023).
//!
//! The pipeline drives every method through [`Method`]: it accumulates the [`Hessian`] of each
//! group of linears sharing an input when [`Method::needs_hessian`] says so, then calls
//! [`Method::compress`] per linear.
pub mod gptq;
pub mod hessian;
pub mod quant;
pub mod rtn;

pub use gptq::{gptq, ActOrder, GptqConfig, GptqResult};
pub use hessian::{all_finite, Hessian};
pub use quant::{dequantize_value, find_params, quantize_value, QuantConfig, QuantizedWeight};
pub use rtn::rtn;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shrink_model::Tensor;

/// The input statistics shared by a group of linears (e.g. q/k/v see the same input).
pub struct InputStats<'a> {
    pub hessian: &'a Hessian,
}

/// A compressed linear weight.
pub struct Compressed {
    /// The new f32 weight, `[d_out, d_in]` (dequantized when quantized).
    pub weight: Vec<f32>,
    /// The codes, scales and zeros when the method quantizes.
    pub quant: Option<QuantizedWeight>,
    /// Per-linear details for the JSON report.
    pub info: serde_json::Value,
}

/// A compression method applied linear by linear.
pub trait Method: Send + Sync {
    /// A short label, e.g. `gptq w4 g64 asym`.
    fn name(&self) -> String;
    /// Whether [`Method::compress`] needs [`InputStats`] (if not, the pipeline skips the Hessian work).
    fn needs_hessian(&self) -> bool;
    /// Compresses the weight of the linear named `linear` (`[d_out, d_in]`).
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: Option<&InputStats>,
    ) -> Result<Compressed>;
}

/// `[d_out, d_in]` of a linear weight, or an error naming the linear.
fn weight_dims(linear: &str, weight: &Tensor) -> Result<(usize, usize)> {
    match weight.shape.as_slice() {
        [o, i] if o * i == weight.data.len() => Ok((*o, *i)),
        s => bail!(
            "{linear}: expected a 2-D weight [d_out, d_in] with matching data, got shape {s:?} and {} values",
            weight.data.len()
        ),
    }
}

/// Round to nearest on the grid of the config.
pub struct Rtn(pub QuantConfig);

impl Method for Rtn {
    fn name(&self) -> String {
        format!("rtn {}", self.0.label())
    }
    fn needs_hessian(&self) -> bool {
        false
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        _stats: Option<&InputStats>,
    ) -> Result<Compressed> {
        self.0.validate()?;
        let (d_out, d_in) = weight_dims(linear, weight)?;
        if !all_finite(&weight.data) {
            bail!("{linear}: the weight holds NaN or infinite values");
        }
        let q = rtn(&weight.data, d_out, d_in, &self.0);
        Ok(Compressed {
            weight: q.dequantize(),
            quant: Some(q),
            info: json!({}),
        })
    }
}

/// GPTQ with the given settings.
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
    fn needs_hessian(&self) -> bool {
        true
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: Option<&InputStats>,
    ) -> Result<Compressed> {
        let (d_out, d_in) = weight_dims(linear, weight)?;
        let Some(stats) = stats else {
            bail!("{linear}: GPTQ needs the input Hessian, none was given");
        };
        let r = gptq(&weight.data, d_out, d_in, stats.hessian, &self.0)
            .with_context(|| format!("GPTQ on {linear} ([{d_out}, {d_in}])"))?;
        Ok(Compressed {
            weight: r.weight,
            info: json!({
                "damp": r.damp_used,
                "damp_retries": r.damp_retries,
                "dead_columns": r.dead_columns,
                "gptq_loss": r.loss,
                "nsamples": stats.hessian.nsamples(),
                "g_idx_trivial": r.q.g_idx_is_trivial(),
            }),
            quant: Some(r.q),
        })
    }
}
