//! Sensitivity profiles (`shrink profile`): per linear, the relative output error of each
//! candidate setting when that linear alone is compressed; per layer, OWL's outlier ratio, the
//! agents paper's score statistic and the block's importance. One dense calibration pass.
//!
//! - **Errors**: for each linear and candidate, `||X W^T - X W'^T||^2 / ||X W^T||^2` over the
//!   layer's dense calibration inputs (computed as `tr(D H D^T) / tr(W H W^T)`, `D = W - W'`).
//!   The weight itself is left as it is, so every later layer sees the dense model's
//!   activations: each number is the error of that linear compressed alone.
//! - **Scores** (from the same pass's input norms, no extra cost): OWL's `D_l` (see
//!   [`crate::alloc`]) and the 10th percentile of `|W_ij| * ||X_j||` over each layer's linears,
//!   z-scored across layers ("LLMs can Compress LLMs: Adaptive Pruning by Agents", arXiv
//!   2601.09694, the statistic its agent is shown per layer).
//! - **Importance** of block `l`: `1 - cos(x_l, x_{l+1})` between its input and output hidden
//!   states, averaged over calibration tokens (ShortGPT's Block Influence).
use crate::alloc::{LayerOutliers, OwlProbe};
use anyhow::Result;
use serde::Serialize;
use shrink_methods::{Compressed, InputStats, Method, Needs};
use shrink_model::Tensor;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// One candidate setting.
pub struct Candidate {
    pub label: String,
    pub method: Box<dyn Method>,
    /// The llama.cpp type the candidate rounds onto, if any: two such candidates whose types
    /// fall back to the same type on a linear's rows (Q4_K and Q5_0 on 576 columns) give the
    /// same result there, which is then solved once.
    pub ggml: Option<shrink_model::gguf::GgmlType>,
}

/// The measured errors of one linear.
#[derive(Clone, Debug, Serialize)]
pub struct LinearProfile {
    pub name: String,
    pub d_out: usize,
    pub d_in: usize,
    /// Candidate label -> relative output error.
    pub rel_error: BTreeMap<String, f64>,
}

/// A method that leaves every weight as it is and measures each candidate on it.
pub struct Profiler {
    pub candidates: Vec<Candidate>,
    pub probe: OwlProbe,
    linears: Mutex<Vec<LinearProfile>>,
    /// Solve seconds per candidate.
    seconds: Mutex<BTreeMap<String, f64>>,
}

impl Profiler {
    pub fn new(candidates: Vec<Candidate>, owl_m: f64) -> Result<Profiler> {
        Ok(Profiler {
            candidates,
            probe: OwlProbe::new(owl_m)?,
            linears: Mutex::new(Vec::new()),
            seconds: Mutex::new(BTreeMap::new()),
        })
    }
    pub fn linears(&self) -> Vec<LinearProfile> {
        self.linears.lock().unwrap().clone()
    }
    pub fn solve_seconds(&self) -> BTreeMap<String, f64> {
        self.seconds.lock().unwrap().clone()
    }
}

impl Method for Profiler {
    fn name(&self) -> String {
        format!("profile ({} candidates)", self.candidates.len())
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
        self.probe.compress(linear, weight, stats, mask)?;
        let (d_out, d_in) = weight.dims2();
        let h32: Option<Vec<f32>> = stats
            .hessian
            .map(|h| h.matrix().iter().map(|&v| v as f32).collect());
        let mut errs = BTreeMap::new();
        let mut by_type: BTreeMap<&'static str, f64> = BTreeMap::new();
        for c in &self.candidates {
            let resolved = c
                .ggml
                .map(|t| shrink_model::ggml_quant::fallback_type(t, d_in).name());
            if let Some(e) = resolved.and_then(|r| by_type.get(r)) {
                errs.insert(c.label.clone(), *e);
                continue;
            }
            let t = Instant::now();
            let out = c.method.compress(linear, weight, stats, None)?;
            let (e, _) = shrink_pipeline::rel_output_error(
                &weight.data,
                &out.weight,
                d_out,
                d_in,
                h32.as_deref(),
                &[],
                stats.rows,
            );
            *self
                .seconds
                .lock()
                .unwrap()
                .entry(c.label.clone())
                .or_default() += t.elapsed().as_secs_f64();
            errs.insert(c.label.clone(), e);
            if let Some(r) = resolved {
                by_type.insert(r, e);
            }
        }
        self.linears.lock().unwrap().push(LinearProfile {
            name: linear.trim_end_matches(".weight").to_string(),
            d_out,
            d_in,
            rel_error: errs,
        });
        Ok(Compressed {
            weight: weight.data.clone(),
            quant: None,
            mask: None,
            info: serde_json::json!({}),
        })
    }
}

/// Mean over tokens of `f(cos(a_t, b_t))` for `[tokens, d]` hidden states; tokens where either
/// vector is zero are skipped.
pub fn mean_over_tokens(a: &[f32], b: &[f32], d: usize, f: impl Fn(f64) -> f64) -> f64 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (x, y) in a.chunks(d.max(1)).zip(b.chunks(d.max(1))) {
        let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
        for (p, q) in x.iter().zip(y) {
            let (p, q) = (*p as f64, *q as f64);
            xy += p * q;
            xx += p * p;
            yy += q * q;
        }
        let den = (xx * yy).sqrt();
        if den > 0.0 {
            sum += f(xy / den);
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

/// Mean over tokens of `1 - cos(a_t, b_t)` for `[tokens, d]` hidden states.
pub fn block_influence(a: &[f32], b: &[f32], d: usize) -> f64 {
    mean_over_tokens(a, b, d, |c| 1.0 - c)
}

/// `(v - mean) / std` across layers (population std; 0 when all are equal).
pub fn z_scores(v: &[f64]) -> Vec<f64> {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    v.iter()
        .map(|x| if sd > 0.0 { (x - mean) / sd } else { 0.0 })
        .collect()
}

/// The per-layer part of a profile.
#[derive(Clone, Debug, Serialize)]
pub struct LayerProfile {
    pub layer: usize,
    #[serde(flatten)]
    pub scores: LayerOutliers,
    pub score_p10_z: f64,
    /// `1 - cos(input, output)` of the block.
    pub importance: f64,
}

pub fn layer_profiles(scores: &[LayerOutliers], importance: &[f64]) -> Vec<LayerProfile> {
    let z = z_scores(&scores.iter().map(|s| s.score_p10).collect::<Vec<_>>());
    scores
        .iter()
        .zip(z)
        .map(|(s, z)| LayerProfile {
            layer: s.layer,
            scores: s.clone(),
            score_p10_z: z,
            importance: importance.get(s.layer).copied().unwrap_or(f64::NAN),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn influence_and_z() {
        let a = [1.0, 0.0, 0.0, 1.0];
        assert!(block_influence(&a, &a, 2).abs() < 1e-12);
        let b = [0.0, 1.0, 0.0, -1.0]; // orthogonal, then opposite
        assert!((block_influence(&a, &b, 2) - 1.5).abs() < 1e-12);
        let z = z_scores(&[1.0, 2.0, 3.0]);
        assert!((z[0] + z[2]).abs() < 1e-12 && z[1].abs() < 1e-12);
        assert!((z[2] - 1.224744871391589).abs() < 1e-9);
        assert_eq!(z_scores(&[2.0, 2.0]), vec![0.0, 0.0]);
    }
}
