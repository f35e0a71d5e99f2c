//! Layer merging: LaCo's layer collapse (Yang, Cao and Zhao 2024, "LaCo: Large Language Model
//! Pruning via Layer Collapse", arXiv 2402.11187; reference code github.com/yangyifei729/LaCo).
//!
//! **RDSC merge** (Reserving-Differences-while-Seeking-Common, the paper's layer-merge
//! equation): layers `l+1..=l+m` collapse into layer `l`,
//! `θ*_l = θ_l + Σ_{k=1..m} (θ_{l+k} − θ_l) = (1 − m) θ_l + Σ_{k=1..m} θ_{l+k}`,
//! for every parameter of the block (each linear's weight and bias, each norm), and layers
//! `l+1..=l+m` are removed. A merged layer is kept as coefficients over the original layers
//! ([`Composition`]); a later merge that takes in an already merged layer multiplies them out.
//! [`shrink_model::ModelSource::merge_layers`] serves the result (its config takes the per-layer
//! settings of layer `l`).
//!
//! **Which layers** (the paper's Algorithm 1, as the reference notebooks run it): with `C`
//! layers per merge (the base and `C − 1` after it), the range `[L, H]`, the interval `I` and
//! the threshold `T`, start at `l = H − C` and go down while `l ≥ L`: merge layers `l..l+C−1`
//! of the current model (fewer where the model ends first) into a candidate; `s` = the mean
//! over a few calibration samples of the cosine similarity between the candidate's and the original model's last hidden states (after
//! the final norm, each sample's `[tokens × hidden]` flattened to one vector, as the reference
//! code computes it); if `s > T` the candidate becomes the current model and `l −= I`, else
//! `l −= 1`. Defaults: the reference code's Llama2-13B settings, `C = 7`, `I = 1`, `T = 0.45`,
//! `[L, H] = [0, last layer]`, and 5 samples.
//!
//! **A fixed count** (`--merge-layers N`): the paper removes however many layers its threshold
//! lets through; here the loop stops as soon as `N` layers are gone, and a merge takes at most
//! the layers still to remove (`m = min(C − 1, N − removed)`), so exactly `N` go. When a sweep
//! ends (`l < L`) short of `N`, `T` is lowered to the highest similarity that sweep rejected and
//! the sweep restarts at `l = H' − C` (`H'` the layer `H` after the merges so far) on the merged
//! model: the least relaxation of the threshold under which the paper's loop makes progress (a
//! sweep that merged nothing is followed by one on the same model that accepts at least its best
//! candidate). Relaxed sweeps accept `s ≥ T`.
//!
//! Deviation from the reference code: its merge adds `θ_{l+k} − θ*` to the copy being updated
//! in place, so after the loop the linears equal `θ_{l+m}` (and it merges only the seven
//! linears, not the norms); this module computes the paper's equation on every tensor.
use anyhow::{bail, Result};
use serde::Serialize;
use shrink_calib::CalibSet;
use shrink_model::source::MergedView;
use shrink_model::{DecoderLayer, ModelSource, NoHook, Rope, TensorSource};

/// Each layer of a (merged) model as coefficients over the original layers, ascending by
/// original layer; the first entry names the layer (its per-layer settings, its number in a
/// recipe) even where its coefficient is 0.
pub type Composition = Vec<Vec<(usize, f64)>>;

/// The unmerged model of `layers` layers.
pub fn identity(layers: usize) -> Composition {
    (0..layers).map(|i| vec![(i, 1.0)]).collect()
}

/// RDSC: layers `base+1..=base+m` of `comp` collapse into layer `base`,
/// `θ* = (1 − m) θ_base + Σ_k θ_{base+k}`; the result has `m` layers fewer.
pub fn rdsc(comp: &Composition, base: usize, m: usize) -> Result<Composition> {
    if m == 0 || base + m >= comp.len() {
        bail!(
            "cannot merge layers {base}..={} of a model of {} layers",
            base + m,
            comp.len()
        );
    }
    let mut acc: std::collections::BTreeMap<usize, f64> = std::collections::BTreeMap::new();
    for &(j, c) in &comp[base] {
        *acc.entry(j).or_default() += (1.0 - m as f64) * c;
    }
    for layer in &comp[base + 1..=base + m] {
        for &(j, c) in layer {
            *acc.entry(j).or_default() += c;
        }
    }
    let mut out = comp[..base].to_vec();
    out.push(acc.into_iter().collect());
    out.extend_from_slice(&comp[base + m + 1..]);
    Ok(out)
}

/// The first original layer of each layer of `comp` (how a merged layer is named).
pub fn heads(comp: &Composition) -> Vec<usize> {
    comp.iter().map(|p| p[0].0).collect()
}

/// Replays a recipe's `merge_layers` (each merge a list of layers named by their first original
/// layer, consecutive in the model as it stands after the merges before it) on a model of
/// `layers` layers. `what` names the flag or file in messages.
pub fn replay(merges: &[Vec<usize>], layers: usize, what: &str) -> Result<Composition> {
    let mut comp = identity(layers);
    for (k, step) in merges.iter().enumerate() {
        if step.len() < 2 {
            bail!(
                "{what}: merge {} lists {:?}: a merge needs at least 2 layers",
                k + 1,
                step
            );
        }
        let h = heads(&comp);
        let Some(base) = h.iter().position(|&x| x == step[0]) else {
            bail!(
                "{what}: merge {} starts at layer {}, which is not a layer of the model at that \
                 point (layers: {h:?})",
                k + 1,
                step[0]
            );
        };
        if h.get(base..base + step.len()) != Some(&step[..]) {
            bail!(
                "{what}: merge {} lists {:?}: not consecutive layers of the model at that point \
                 (layers: {h:?})",
                k + 1,
                step
            );
        }
        comp = rdsc(&comp, base, step.len() - 1)?;
    }
    Ok(comp)
}

/// Refuses a composition whose merged layers differ in their tensors (a dense and a MoE MLP).
pub fn check_structure(cfg: &shrink_model::ModelConfig, comp: &Composition) -> Result<()> {
    for p in comp {
        for &(j, _) in p {
            shrink_model::arch::check_mergeable(cfg, p[0].0, j)?;
        }
    }
    Ok(())
}

/// Refuses merging `n` of `layers` layers when nothing sensible remains (before any work).
pub fn check_count(n: usize, layers: usize, what: &str) -> Result<()> {
    if n == 0 {
        bail!("{what}: merge at least 1 layer away (0 removes nothing)");
    }
    if n >= layers {
        bail!(
            "{what}: cannot remove {n} layers by merging: the model has {layers}, and at least \
             one must remain (at most {})",
            layers.saturating_sub(1)
        );
    }
    Ok(())
}

/// LaCo's hyper-parameters and the target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MergeSettings {
    /// Layers to remove.
    pub n: usize,
    /// `C`: layers per merge, the base included (`C − 1` collapse into it).
    pub size: usize,
    /// `L`: the lowest base layer.
    pub lowest: usize,
    /// `H`: the highest layer (original numbering; the first base is `H − C`); `None`: the last.
    pub highest: Option<usize>,
    /// `I`: how far the base moves down after a merge.
    pub interval: usize,
    /// `T`: a merge is kept when the similarity exceeds it.
    pub threshold: f64,
    /// Calibration samples (the first windows) the similarity is measured on.
    pub samples: usize,
}

impl MergeSettings {
    /// Checks the settings against a model of `layers` layers (before any work).
    pub fn check(&self, layers: usize) -> Result<()> {
        check_count(self.n, layers, &format!("--merge-layers {}", self.n))?;
        if self.size < 2 {
            bail!(
                "--merge-size {}: a merge takes at least 2 layers (the base and one more)",
                self.size
            );
        }
        if self.interval == 0 {
            bail!("--merge-interval must be at least 1");
        }
        if self.samples == 0 {
            bail!("--merge-samples must be at least 1");
        }
        if !(self.threshold.is_finite() && (-1.0..=1.0).contains(&self.threshold)) {
            bail!(
                "--merge-threshold {} is a cosine similarity: give a value in [-1, 1]",
                self.threshold
            );
        }
        let h = self.highest.unwrap_or(layers - 1);
        if h >= layers {
            bail!(
                "--merge-highest {h}: the model has {layers} layers (0..{})",
                layers - 1
            );
        }
        if h < self.lowest + self.size {
            bail!(
                "--merge-lowest {} and --merge-highest {h} leave no block of --merge-size {} \
                 (the first base is H - C = {}, below L)",
                self.lowest,
                self.size,
                h as isize - self.size as isize
            );
        }
        Ok(())
    }
}

/// One candidate the loop measured.
#[derive(Clone, Debug, Serialize)]
pub struct MergeStep {
    /// The sweep (1 = the paper's loop with `T`; later ones with `T` relaxed).
    pub pass: usize,
    /// The base in the current model's numbering.
    pub base: usize,
    /// The layers merged, by their first original layer.
    pub layers: Vec<usize>,
    pub similarity: f64,
    pub threshold: f64,
    pub accepted: bool,
}

/// What the search found.
#[derive(Clone, Debug, Serialize)]
pub struct MergeResult {
    /// Every candidate, in order.
    pub steps: Vec<MergeStep>,
    /// The accepted merges, by first original layer (a recipe's `merge_layers`).
    pub merges: Vec<Vec<usize>>,
    #[serde(skip)]
    pub composition: Composition,
    pub passes: usize,
    /// The threshold of the last sweep.
    pub final_threshold: f64,
    /// Tokens per sample and samples the similarity was measured on.
    pub seqlen: usize,
    pub samples: usize,
}

/// Mean over samples of the cosine similarity of two `[samples, seq, hidden]` states, each
/// sample flattened to one vector (the reference code's `cal_last_hidden_sim`).
pub fn similarity(a: &[f32], b: &[f32], samples: usize) -> f64 {
    let per = a.len() / samples.max(1);
    crate::profile::mean_over_tokens(a, b, per, |c| c)
}

/// Runs layers `from..` of the model `comp` over `x` (`[samples * seq, hidden]`) and returns the
/// final-normed last hidden states.
fn run_top(
    src: &ModelSource,
    comp: &Composition,
    from: usize,
    mut x: Vec<f32>,
    batch: usize,
    seq: usize,
    norm: &shrink_model::Tensor,
) -> Result<Vec<f32>> {
    let cfg = src.config.with_layers(&heads(comp));
    let view = MergedView {
        inner: src.tensors.as_ref() as &dyn TensorSource,
        layers: comp.clone(),
    };
    let rope = Rope::new(&cfg, seq);
    for i in from..comp.len() {
        let mut layer = DecoderLayer::load(&view, &cfg, i)?;
        layer.forward(&cfg, &rope, &mut x, batch, seq, &mut NoHook)?;
    }
    shrink_model::model::final_norm(&cfg, norm, &x)
}

/// The boundary states of the model `comp`: `states[i]` enters layer `i`; extended on demand.
struct States {
    states: Vec<Vec<f32>>,
}

impl States {
    fn upto(
        &mut self,
        src: &ModelSource,
        comp: &Composition,
        i: usize,
        batch: usize,
        seq: usize,
    ) -> Result<&[f32]> {
        if self.states.len() <= i {
            let cfg = src.config.with_layers(&heads(comp));
            let view = MergedView {
                inner: src.tensors.as_ref() as &dyn TensorSource,
                layers: comp.clone(),
            };
            let rope = Rope::new(&cfg, seq);
            while self.states.len() <= i {
                let k = self.states.len() - 1;
                let mut x = self.states[k].clone();
                DecoderLayer::load(&view, &cfg, k)?.forward(
                    &cfg,
                    &rope,
                    &mut x,
                    batch,
                    seq,
                    &mut NoHook,
                )?;
                self.states.push(x);
            }
        }
        Ok(&self.states[i])
    }
}

/// LaCo's search for `s.n` layers to merge away (see the module comment), on the first
/// `s.samples` windows of `calib`. `progress` sees every measured candidate.
pub fn search(
    src: &ModelSource,
    calib: &CalibSet,
    s: &MergeSettings,
    progress: &mut dyn FnMut(&MergeStep),
) -> Result<MergeResult> {
    let total = src.config.num_layers;
    s.check(total)?;
    let batch = s.samples.min(calib.nsamples);
    let seq = calib.seqlen;
    let ids = &calib.ids[..batch * seq];
    let embed = src.load_embedding()?;
    let x0 = shrink_model::model::embed_input(&src.config, &embed, ids)?;
    drop(embed);
    let (norm, _) = src.load_head()?;
    let mut comp = identity(total);
    let mut states = States { states: vec![x0] };
    // the original model's last hidden states (and its boundary states, which the first sweep
    // starts from)
    let x_last = states.upto(src, &comp, total, batch, seq)?.to_vec();
    let reference = shrink_model::model::final_norm(&src.config, &norm, &x_last)?;
    let mut h = s.highest.unwrap_or(total - 1);
    let (c, lowest) = (s.size, s.lowest);
    let mut t = s.threshold;
    let mut removed = 0;
    let mut steps = vec![];
    let mut merges = vec![];
    let mut pass = 0;
    while removed < s.n {
        pass += 1;
        let mut best_rejected: Option<f64> = None;
        let mut l = h as isize - c as isize;
        while l >= lowest as isize && removed < s.n {
            let base = l as usize;
            let m = (c - 1).min(s.n - removed).min(comp.len() - base - 1);
            let cand = rdsc(&comp, base, m)?;
            let hs = heads(&comp);
            let mergeable = (base + 1..=base + m)
                .all(|j| shrink_model::arch::check_mergeable(&src.config, hs[base], hs[j]).is_ok());
            if !mergeable {
                l -= 1;
                continue;
            }
            let x = states.upto(src, &comp, base, batch, seq)?.to_vec();
            let out = run_top(src, &cand, base, x, batch, seq, &norm)?;
            let sim = similarity(&out, &reference, batch);
            let accepted = if pass == 1 { sim > t } else { sim >= t };
            let step = MergeStep {
                pass,
                base,
                layers: hs[base..=base + m].to_vec(),
                similarity: sim,
                threshold: t,
                accepted,
            };
            progress(&step);
            if accepted {
                merges.push(step.layers.clone());
                comp = cand;
                states.states.truncate(base + 1); // the layers below the base are unchanged
                removed += m;
                h -= m;
                l -= s.interval as isize;
                if l >= comp.len() as isize {
                    l = comp.len() as isize - 1 - c as isize;
                }
            } else {
                best_rejected = Some(best_rejected.map_or(sim, |b: f64| b.max(sim)));
                l -= 1;
            }
            steps.push(step);
        }
        if removed >= s.n {
            break;
        }
        match best_rejected {
            Some(b) => t = b,
            None if h < lowest + c => bail!(
                "merged {removed} of {} layers, and the range [L, H] = [{lowest}, {h}] (after the \
                 merges) holds no block of --merge-size {c} any more: lower --merge-size or \
                 --merge-lowest",
                s.n
            ),
            None => bail!(
                "merged {removed} of {} layers; no candidate is left to measure in [{lowest}, {h}] \
                 (the layers there cannot be merged: different tensors)",
                s.n
            ),
        }
    }
    Ok(MergeResult {
        steps,
        merges,
        composition: comp,
        passes: pass,
        final_threshold: t,
        seqlen: seq,
        samples: batch,
    })
}

/// The composition as report.json gives it: per layer of the merged model, the original layers
/// and their coefficients.
pub fn describe(comp: &Composition) -> serde_json::Value {
    serde_json::Value::Array(
        comp.iter()
            .enumerate()
            .map(|(i, p)| {
                serde_json::json!({
                    "layer": i,
                    "from": p.iter().map(|x| x.0).collect::<Vec<_>>(),
                    "coefficients": p.iter().map(|x| x.1).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdsc_coefficients() {
        let c = identity(6);
        // layers 2, 3, 4 into 2: -θ2 + θ3 + θ4
        let m = rdsc(&c, 2, 2).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[2], vec![(2, -1.0), (3, 1.0), (4, 1.0)]);
        assert_eq!(m[3], vec![(5, 1.0)]);
        // two layers: θ* = θ_{l+1} (the base keeps coefficient 0 and its name)
        let two = rdsc(&c, 0, 1).unwrap();
        assert_eq!(two[0], vec![(0, 0.0), (1, 1.0)]);
        // merging into a merged layer multiplies out: (1 - 1)(−θ2 + θ3 + θ4) + θ1 ... base 1
        let again = rdsc(&m, 1, 1).unwrap();
        assert_eq!(again[1], vec![(1, 0.0), (2, -1.0), (3, 1.0), (4, 1.0)]);
        // (1 - 2) θ1 + (−θ2 + θ3 + θ4) + θ5 ... base 1, m = 2
        let three = rdsc(&m, 1, 2).unwrap();
        assert_eq!(
            three[1],
            vec![(1, -1.0), (2, -1.0), (3, 1.0), (4, 1.0), (5, 1.0)]
        );
        assert!(rdsc(&c, 4, 2).is_err());
        assert!(rdsc(&c, 1, 0).is_err());
        assert_eq!(heads(&three), vec![0, 1]);
    }

    #[test]
    fn replay_checks_the_list() {
        let c = replay(&[vec![2, 3, 4], vec![1, 2]], 6, "x").unwrap();
        assert_eq!(c, rdsc(&rdsc(&identity(6), 2, 2).unwrap(), 1, 1).unwrap());
        assert!(replay(&[vec![2]], 6, "x").is_err());
        assert!(replay(&[vec![2, 4]], 6, "x").is_err());
        assert!(replay(&[vec![2, 3], vec![3, 4]], 6, "x").is_err()); // 3 is gone
        assert!(replay(&[vec![5, 6]], 6, "x").is_err());
        assert!(check_count(6, 6, "x").is_err() && check_count(0, 6, "x").is_err());
    }

    #[test]
    fn settings_are_checked() {
        let s = MergeSettings {
            n: 2,
            size: 7,
            lowest: 0,
            highest: None,
            interval: 1,
            threshold: 0.45,
            samples: 5,
        };
        assert!(s.check(30).is_ok());
        assert!(s.check(6).is_err()); // H − C = −2
        assert!(MergeSettings { n: 30, ..s }.check(30).is_err());
        assert!(MergeSettings { size: 1, ..s }.check(30).is_err());
        assert!(MergeSettings {
            threshold: 2.0,
            ..s
        }
        .check(30)
        .is_err());
        assert!(MergeSettings {
            highest: Some(30),
            ..s
        }
        .check(30)
        .is_err());
    }

    #[test]
    fn similarity_is_per_sample_cosine() {
        // two samples of 2 values: identical, then opposite
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [2.0f32, 4.0, -3.0, -4.0];
        assert!(similarity(&a, &b, 2).abs() < 1e-12);
        assert!((similarity(&a, &a, 2) - 1.0).abs() < 1e-12);
    }
}
