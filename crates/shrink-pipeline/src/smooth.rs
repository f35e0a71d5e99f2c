//! SmoothQuant in the sequential pipeline (Xiao et al., "SmoothQuant: Accurate and Efficient
//! Post-Training Quantization for Large Language Models", ICML 2023; reference
//! mit-han-lab/smoothquant `smooth.py`).
//!
//! Activation outliers are migrated into the weights, per input channel `j` of a group of
//! linears that share an input (paper Eq. 4):
//!
//! ```text
//! s_j = max|X_j|^α / max|W_j|^(1-α)
//! ```
//!
//! with `max|X_j|` over the calibration tokens and `max|W_j|` over column `j` of every linear of
//! the group, clamped below at 1e-5 as the reference does; the input becomes `X diag(s)^-1` and
//! the weights `diag(s) W`, folded exactly into the norm before the group
//! (`DecoderLayer::fold_input_scale`). As in the reference and llm-compressor's
//! `SmoothQuantModifier` mappings, only the groups that a norm feeds are smoothed: q/k/v
//! (`input_layernorm`) and gate/up (`post_attention_layernorm`, Gemma's pre-feed-forward norm).
//! A channel that is zero in the calibration activations or in the weights keeps `s_j = 1`.
//!
//! Like AWQ ([`crate::awq`]), each layer first runs unquantized to gather the maxima; the
//! scales are folded after that pass, and the layer is then compressed as usual.
use anyhow::Result;
use serde::Serialize;
use shrink_model::layer::LayerHook;
use shrink_model::{DecoderLayer, InputProducer};

/// What smoothing did to one group.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SmoothGroupReport {
    pub group: String,
    /// The largest `max|X_j|` over the channels before smoothing and after (`max|X_j| / s_j`).
    pub act_max_before: f64,
    pub act_max_after: f64,
}

pub struct SmoothHook {
    pub alpha: f64,
    pending: Vec<(usize, Vec<f32>)>,
    pub reports: Vec<SmoothGroupReport>,
}

impl SmoothHook {
    pub fn new(alpha: f64) -> Self {
        SmoothHook {
            alpha,
            pending: vec![],
            reports: vec![],
        }
    }

    /// Folds the scales found in the pass.
    pub fn apply(&mut self, layer: &mut DecoderLayer) -> Result<()> {
        for (g, s) in self.pending.drain(..) {
            layer.fold_input_scale(g, &s)?;
        }
        Ok(())
    }
}

/// `s_j = max|X_j|^α / max|W_j|^(1-α)`, clamped below at 1e-5; 1 where either maximum is 0.
pub fn smooth_scales(x_max: &[f32], w_max: &[f32], alpha: f64) -> Vec<f32> {
    x_max
        .iter()
        .zip(w_max)
        .map(|(&x, &w)| {
            if x > 0.0 && w > 0.0 {
                ((x as f64).powf(alpha) / (w as f64).powf(1.0 - alpha)).max(1e-5) as f32
            } else {
                1.0
            }
        })
        .collect()
}

impl LayerHook for SmoothHook {
    fn before_group(
        &mut self,
        layer: &mut DecoderLayer,
        g: usize,
        input: &[f32],
        rows: usize,
    ) -> Result<()> {
        if !matches!(layer.layout.input_producer(g), Some(InputProducer::Norm(_))) || rows == 0 {
            return Ok(());
        }
        let d_in = layer.layout.linears[layer.layout.groups[g].linears[0]].shape[1];
        let mut x_max = vec![0f32; d_in];
        for row in input.chunks_exact(d_in).take(rows) {
            for (m, v) in x_max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let mut w_max = vec![0f32; d_in];
        for &k in &layer.layout.groups[g].linears {
            for row in layer.linears[k].weight.data.chunks_exact(d_in) {
                for (m, v) in w_max.iter_mut().zip(row) {
                    *m = m.max(v.abs());
                }
            }
        }
        let s = smooth_scales(&x_max, &w_max, self.alpha);
        let before = x_max.iter().fold(0f32, |a, &v| a.max(v)) as f64;
        let after = x_max.iter().zip(&s).fold(0f32, |a, (&v, &f)| a.max(v / f)) as f64;
        self.reports.push(SmoothGroupReport {
            group: layer.layout.group_label(g),
            act_max_before: before,
            act_max_after: after,
        });
        self.pending.push((g, s));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_follow_equation_4() {
        let s = smooth_scales(&[4.0, 0.0, 1.0, 9.0], &[1.0, 2.0, 0.0, 4.0], 0.5);
        assert_eq!(s[0], 2.0); // sqrt(4) / sqrt(1)
        assert_eq!(s[1], 1.0); // a zero activation channel
        assert_eq!(s[2], 1.0); // a zero weight column
        assert!((s[3] - 1.5).abs() < 1e-6); // 3 / 2
                                            // alpha = 1 moves all the difficulty to the weights: the activations' maxima become 1
        let s = smooth_scales(&[4.0, 9.0], &[1.0, 3.0], 1.0);
        assert_eq!(s, vec![4.0, 9.0]);
    }
}
