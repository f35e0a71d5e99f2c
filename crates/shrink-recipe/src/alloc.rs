//! Allocating a global budget over layers, written back into the recipe as per-layer
//! `[[override]]`s (so that the output's recipe.toml reproduces the allocation).
//!
//! **OWL** (Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for
//! Pruning LLMs to High Sparsity", ICML 2024), Section 3:
//! - the score of a weight is Wanda's `A_ij = |W_ij| * ||X_j||_2` (the input norm over all
//!   calibration tokens), on the *dense* model's activations;
//! - the layerwise outlier distribution `D_l` is the fraction of the layer's scores (all its
//!   linears together) above `M` times their mean (`M = 5` in the paper);
//! - layer `l` keeps a density that grows with `D_l`: the ratios are rescaled linearly to
//!   `[0, 2λ]` and shifted so that their mean is the target density, `S_l = 1 - (D'_l -
//!   mean(D') + 1 - S)`, so every layer's sparsity lies in `[S - λ, S + λ]` (`λ = 0.08`).
//!
//! This is the rule of the paper's code and of llm-compressor's `sparsity_profile="owl"`, except
//! that the mean is weighted by each layer's number of compressible weights, so that the total
//! number of pruned weights equals the global target also when layers differ in size (for layers
//! of equal size, as in dense Llama-family models, the two are the same).
use crate::recipe::{Override, Recipe, Stage};
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use shrink_methods::{Compressed, InputStats, Method, Needs};
use shrink_model::Tensor;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// A method that leaves every weight as it is and records OWL's outlier ratio per layer: run
/// through the pipeline it gives one dense calibration pass.
pub struct OwlProbe {
    m: f64,
    state: Mutex<ProbeState>,
}

#[derive(Default)]
struct ProbeState {
    /// Scores of the layer being measured.
    current: Option<(usize, Vec<f32>)>,
    done: BTreeMap<usize, LayerOutliers>,
}

/// One layer's OWL statistics.
#[derive(Clone, Debug, Serialize)]
pub struct LayerOutliers {
    pub layer: usize,
    /// Compressible weights of the layer.
    pub weights: usize,
    /// Percentage of scores above `M * mean` (OWL's `D_l`).
    pub outlier_pct: f64,
    /// The 10th percentile of the layer's scores |W|*||X|| (the statistic "LLMs can Compress
    /// LLMs: Adaptive Pruning by Agents" profiles each layer with, before z-scoring across
    /// layers).
    pub score_p10: f64,
}

fn finish(layer: usize, scores: &mut [f32], m: f64) -> LayerOutliers {
    let mean = scores.iter().map(|&v| v as f64).sum::<f64>() / scores.len().max(1) as f64;
    let thr = mean * m;
    let above = scores.iter().filter(|&&v| v as f64 > thr).count();
    let score_p10 = if scores.is_empty() {
        0.0
    } else {
        let k = ((scores.len() - 1) as f64 * 0.1).round() as usize;
        let (_, v, _) = scores.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
        *v as f64
    };
    LayerOutliers {
        layer,
        weights: scores.len(),
        outlier_pct: 100.0 * above as f64 / scores.len().max(1) as f64,
        score_p10,
    }
}

/// The layer index in `model.layers.N....`.
pub(crate) fn layer_of(linear: &str) -> Result<usize> {
    linear
        .split('.')
        .skip_while(|p| *p != "layers")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{linear}: no layer index in the name"))
}

impl OwlProbe {
    pub fn new(m: f64) -> Result<OwlProbe> {
        ensure!(
            m.is_finite() && m > 0.0,
            "--owl-m must be positive, got {m}"
        );
        Ok(OwlProbe {
            m,
            state: Mutex::new(ProbeState::default()),
        })
    }

    /// The statistics of every layer measured, in layer order.
    pub fn layers(&self) -> Vec<LayerOutliers> {
        let mut st = self.state.lock().unwrap();
        if let Some((l, mut s)) = st.current.take() {
            let r = finish(l, &mut s, self.m);
            st.done.insert(l, r);
        }
        st.done.values().cloned().collect()
    }
}

impl Method for OwlProbe {
    fn name(&self) -> String {
        format!("owl probe (M = {})", self.m)
    }
    fn needs(&self) -> Needs {
        Needs::ColumnNorms
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: &InputStats,
        _mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        let (_, d_in) = weight.dims2();
        ensure!(
            stats.col_sq.len() == d_in,
            "{linear}: {} input norms for {d_in} columns",
            stats.col_sq.len()
        );
        let layer = layer_of(linear)?;
        let norms: Vec<f32> = stats
            .col_sq
            .iter()
            .map(|v| v.max(0.0).sqrt() as f32)
            .collect();
        let mut st = self.state.lock().unwrap();
        match &st.current {
            Some((l, _)) if *l == layer => {}
            _ => {
                if let Some((l, mut s)) = st.current.take() {
                    let r = finish(l, &mut s, self.m);
                    st.done.insert(l, r);
                }
                st.current = Some((layer, Vec::new()));
            }
        }
        let cur = &mut st.current.as_mut().unwrap().1;
        for row in weight.data.chunks(d_in.max(1)) {
            cur.extend(row.iter().zip(&norms).map(|(w, n)| w.abs() * n));
        }
        Ok(Compressed {
            weight: weight.data.clone(),
            quant: None,
            mask: None,
            info: serde_json::json!({}),
        })
    }
}

/// OWL's per-layer sparsities for a global `target` (see the module doc).
pub fn owl_sparsities(layers: &[LayerOutliers], target: f64, lambda: f64) -> Result<Vec<f64>> {
    ensure!(
        (0.0..=0.5).contains(&lambda),
        "--owl-lambda must be in [0, 0.5], got {lambda}"
    );
    ensure!(!layers.is_empty(), "OWL: no layer was measured");
    let (lo, hi) = layers.iter().fold((f64::MAX, f64::MIN), |(a, b), l| {
        (a.min(l.outlier_pct), b.max(l.outlier_pct))
    });
    let scaled: Vec<f64> = layers
        .iter()
        .map(|l| {
            if hi > lo {
                (l.outlier_pct - lo) / (hi - lo) * 2.0 * lambda
            } else {
                lambda
            }
        })
        .collect();
    let total: f64 = layers.iter().map(|l| l.weights as f64).sum();
    let mean: f64 = scaled
        .iter()
        .zip(layers)
        .map(|(s, l)| s * l.weights as f64)
        .sum::<f64>()
        / total;
    let out: Vec<f64> = scaled
        .iter()
        .map(|s| 1.0 - (s - mean + 1.0 - target))
        .collect();
    if let Some((l, s)) = layers
        .iter()
        .zip(&out)
        .find(|(_, s)| !(0.0..1.0).contains(*s))
    {
        bail!(
            "OWL gives layer {} a sparsity of {s:.4}, outside [0, 1): lower --owl-lambda or the target",
            l.layer
        );
    }
    Ok(out)
}

/// The stage a sparsity allocation changes: the only one with an unstructured `sparsity`.
pub fn pruning_stage(recipe: &Recipe) -> Result<(usize, f64)> {
    let found: Vec<(usize, f64)> = recipe
        .stage
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.sparsity.map(|p| (i, p)))
        .collect();
    match found.as_slice() {
        [(i, p)] => Ok((*i, *p)),
        [] => bail!(
            "--allocate owl, search and agent distribute a global --sparsity FRACTION over the layers or linears; the recipe \
             has no stage with an unstructured sparsity (N:M patterns are per group, not allocated)"
        ),
        _ => bail!("--allocate: more than one stage prunes; give one pruning stage"),
    }
}

/// The recipe with one override per layer setting its sparsity.
pub fn with_layer_sparsities(recipe: &Recipe, stage: usize, per_layer: &[(usize, f64)]) -> Recipe {
    let mut r = recipe.clone();
    for &(layer, s) in per_layer {
        r.overrides.push(Override {
            pattern: format!("^model\\.layers\\.{layer}\\."),
            stage: (r.stage.len() > 1).then_some(stage + 1),
            // Rounded so the recipe reads well and reproduces exactly.
            set: Stage {
                sparsity: Some((s * 1e6).round() / 1e6),
                ..Stage::default()
            },
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(layer: usize, weights: usize, pct: f64) -> LayerOutliers {
        LayerOutliers {
            layer,
            weights,
            outlier_pct: pct,
            score_p10: 0.0,
        }
    }

    #[test]
    fn probe_statistics_of_a_layer() {
        // scores 1..=100 plus one outlier of 10,000: mean 108.9, threshold 5 x mean
        let mut s: Vec<f32> = (1..=100).map(|v| v as f32).collect();
        s.push(10_000.0);
        let r = finish(3, &mut s, 5.0);
        assert_eq!(r.weights, 101);
        assert!((r.outlier_pct - 100.0 / 101.0).abs() < 1e-9);
        assert_eq!(r.score_p10, 11.0); // index round(100 * 0.1) = 10 of the sorted scores
    }

    #[test]
    fn owl_rule_spans_two_lambda_and_keeps_the_mean() {
        let layers = [
            l(0, 100, 1.0),
            l(1, 100, 3.0),
            l(2, 100, 2.0),
            l(3, 100, 1.5),
        ];
        let s = owl_sparsities(&layers, 0.6, 0.08).unwrap();
        // more outliers, lower sparsity; the extremes 2 lambda apart; the mean is the target
        assert!(s[1] < s[2] && s[2] < s[3] && s[3] < s[0], "{s:?}");
        assert!((s[0] - s[1] - 0.16).abs() < 1e-12);
        assert!((s.iter().sum::<f64>() / 4.0 - 0.6).abs() < 1e-12);
        // llm-compressor's formula for equal layers
        let r: Vec<f64> = [1.0, 3.0, 2.0, 1.5]
            .iter()
            .map(|v| (v - 1.0) / 2.0 * 0.16)
            .collect();
        let m = r.iter().sum::<f64>() / 4.0;
        for (a, b) in s.iter().zip(&r) {
            assert!((a - (1.0 - (b - m + 0.4))).abs() < 1e-12);
        }
    }

    #[test]
    fn owl_weights_the_mean_by_layer_size() {
        let layers = [l(0, 300, 1.0), l(1, 100, 3.0)];
        let s = owl_sparsities(&layers, 0.5, 0.1).unwrap();
        let pruned = s[0] * 300.0 + s[1] * 100.0;
        assert!((pruned / 400.0 - 0.5).abs() < 1e-12, "{s:?}");
        assert!(owl_sparsities(&layers, 0.95, 0.1).is_err());
        assert!(owl_sparsities(&layers, 0.5, 0.7).is_err());
    }

    #[test]
    fn layer_index_from_name() {
        assert_eq!(layer_of("model.layers.12.mlp.down_proj").unwrap(), 12);
        assert!(layer_of("lm_head").is_err());
    }
}
