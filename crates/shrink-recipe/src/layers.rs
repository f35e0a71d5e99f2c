//! Layer pruning: which decoder layers to drop.
//!
//! One dense pass over the calibration data ([`measure`]) records, at every layer boundary, the
//! statistics the scores need; [`choose`] then picks the layers. `x_l` below is the hidden state
//! entering layer `l` (`x_0` the embeddings, `x_L` the last layer's output, before the final
//! norm), per token.
//!
//! - **angular** (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers",
//!   arXiv 2403.17887, Sec. 3.2): for a block of `n` layers starting at `l`,
//!   `d(x_l, x_{l+n}) = (1/π) · arccos( x_l·x_{l+n} / (‖x_l‖ ‖x_{l+n}‖) )`;
//!   the block `l* = argmin_l d` is dropped (layers `l*..l*+n-1`, contiguous). The paper
//!   evaluates `d` on the last token of each sequence; here it is **averaged over every token**
//!   of every calibration sample (the last token alone is 1 value per sample: 32 numbers for
//!   `--nsamples 32`).
//! - **bi** (Men et al. 2024, ShortGPT, arXiv 2403.03853, Block Influence):
//!   `BI_l = 1 − E_t[ x_{l,t}·x_{l+1,t} / (‖x_{l,t}‖ ‖x_{l+1,t}‖) ]`, the expectation over all
//!   tokens; the `n` layers of lowest BI are dropped (not necessarily contiguous).
//! - **last**: layers `L−1−n .. L−2`, the `n` layers just before the final one (the baseline of
//!   both papers; the final layer is kept).
//! - **random**: `n` distinct layers drawn uniformly from all `L` with a seed (a baseline).
use anyhow::{bail, Result};
use serde::Serialize;
use shrink_calib::CalibSet;
use shrink_methods::QuantizedWeight;
use shrink_model::{DecoderLayer, ModelSource};
use shrink_pipeline::{Assign, Choice, LayerReport, LayerSink};
use std::collections::VecDeque;

/// How the layers to drop are chosen (`--layer-score`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerScore {
    Angular,
    Bi,
    Last,
    Random,
}

impl LayerScore {
    pub const NAMES: &'static str = "angular, bi, last or random";

    pub fn parse(s: &str) -> Result<LayerScore> {
        Ok(match s {
            "angular" => LayerScore::Angular,
            "bi" => LayerScore::Bi,
            "last" => LayerScore::Last,
            "random" => LayerScore::Random,
            o => bail!("unknown --layer-score '{o}' (use {})", Self::NAMES),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            LayerScore::Angular => "angular",
            LayerScore::Bi => "bi",
            LayerScore::Last => "last",
            LayerScore::Random => "random",
        }
    }

    /// True when the score needs the calibration pass.
    pub fn needs_data(self) -> bool {
        matches!(self, LayerScore::Angular | LayerScore::Bi)
    }
}

/// Refuses dropping `n` of `layers` layers when nothing sensible remains; `what` names the flag
/// or file in the message. Called before any work.
pub fn check_count(n: usize, layers: usize, what: &str) -> Result<()> {
    if n == 0 {
        bail!("{what}: drop at least 1 layer (0 drops nothing)");
    }
    if n >= layers {
        bail!(
            "{what}: cannot drop {n} layers: the model has {layers}, and at least one must remain \
             (drop at most {})",
            layers.saturating_sub(1)
        );
    }
    Ok(())
}

/// Checks an explicit list of layers to drop (a recipe's `drop_layers`) against a model of
/// `layers` layers and returns it sorted.
pub fn check_list(list: &[usize], layers: usize, what: &str) -> Result<Vec<usize>> {
    let mut v = list.to_vec();
    v.sort_unstable();
    if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
        bail!("{what}: layer {} is listed twice", w[0]);
    }
    if let Some(&i) = v.iter().find(|&&i| i >= layers) {
        bail!(
            "{what}: layer {i} does not exist (the model has {layers} layers: 0..{})",
            layers - 1
        );
    }
    check_count(v.len(), layers, what)?;
    Ok(v)
}

/// Mean over tokens of `arccos(cos(a_t, b_t)) / π` for `[tokens, d]` hidden states (Gromov et
/// al.'s angular distance, averaged over all tokens); tokens where either vector is zero are
/// skipped.
pub fn angular_distance(a: &[f32], b: &[f32], d: usize) -> f64 {
    crate::profile::mean_over_tokens(a, b, d, |c| {
        c.clamp(-1.0, 1.0).acos() / std::f64::consts::PI
    })
}

/// What the measuring pass found.
#[derive(Clone, Debug, Serialize)]
pub struct LayerScores {
    /// The block size of `angular`.
    pub n: usize,
    /// `angular[l] = d(x_l, x_{l+n})`, for `l` in `0..=L-n`.
    pub angular: Vec<f64>,
    /// `bi[l] = BI_l`, for every layer.
    pub bi: Vec<f64>,
}

/// A [`LayerSink`] that keeps the last `n + 1` boundary states and scores as they come.
pub struct BoundaryStats {
    n: usize,
    d: usize,
    /// The most recent boundary states, oldest first; the newest is `x_{seen}`.
    ring: VecDeque<Vec<f32>>,
    seen: usize,
    pub scores: LayerScores,
}

impl BoundaryStats {
    /// Starts from `x_0` (the embedded calibration tokens, `[tokens, d]`).
    pub fn new(x0: Vec<f32>, d: usize, n: usize) -> BoundaryStats {
        BoundaryStats {
            n,
            d,
            ring: VecDeque::from([x0]),
            seen: 0,
            scores: LayerScores {
                n,
                angular: vec![],
                bi: vec![],
            },
        }
    }

    /// Takes `x_{seen+1}`.
    pub fn push(&mut self, x: &[f32]) {
        let prev = self.ring.back().expect("the ring holds x_0 at least");
        self.scores
            .bi
            .push(crate::profile::block_influence(prev, x, self.d));
        self.seen += 1;
        if self.seen >= self.n {
            let far = &self.ring[self.ring.len() - self.n];
            self.scores.angular.push(angular_distance(far, x, self.d));
        }
        // keep x_{seen-n+1} .. x_{seen}: the next state pairs with x_{seen+1-n}
        let mut buf = if self.ring.len() > self.n {
            self.ring.pop_front().unwrap()
        } else {
            Vec::with_capacity(x.len())
        };
        buf.clear();
        buf.extend_from_slice(x);
        self.ring.push_back(buf);
    }
}

impl LayerSink for BoundaryStats {
    fn layer_done(
        &mut self,
        _: &DecoderLayer,
        _: &[(usize, QuantizedWeight)],
        _: &LayerReport,
        hidden: &[f32],
    ) -> Result<()> {
        self.push(hidden);
        Ok(())
    }
}

/// Leaves every linear as it is: the pipeline then only runs the dense forward pass.
pub struct KeepAll;
impl Assign for KeepAll {
    fn name(&self) -> String {
        "dense".into()
    }
    fn choose(&self, _: &str) -> Result<Choice<'_>> {
        Ok(Choice::Keep("dense measuring pass".into()))
    }
}

/// One dense pass of `src` over `calib`: the angular distance for blocks of `n` layers and the
/// block influence of every layer. `progress(done, total)` after each layer.
pub fn measure(
    src: &ModelSource,
    calib: &CalibSet,
    n: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LayerScores> {
    let cfg = &src.config;
    check_count(n, cfg.num_layers, "--drop-layers")?;
    let x0 = src.embed_ids(&calib.ids)?;
    let mut sink = BoundaryStats::new(x0, cfg.hidden_size, n);
    shrink_pipeline::run_from(
        src,
        calib,
        &KeepAll,
        0..cfg.num_layers,
        None,
        &shrink_pipeline::Options::default(),
        &mut sink,
        progress,
    )?;
    Ok(sink.scores)
}

/// SplitMix64 (Steele et al.), for the random baseline: small, seedable, the same everywhere.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The layers to drop (ascending) from a model of `layers` layers: `n` of them by `score`.
/// `scores` is required for angular and bi (from [`measure`] with the same `n`); `seed` drives
/// random.
pub fn choose(
    score: LayerScore,
    n: usize,
    layers: usize,
    scores: Option<&LayerScores>,
    seed: u64,
) -> Result<Vec<usize>> {
    check_count(n, layers, "--drop-layers")?;
    let need = || -> Result<&LayerScores> {
        match scores {
            Some(s) => Ok(s),
            None => bail!("--layer-score {} needs the measuring pass", score.name()),
        }
    };
    let mut out: Vec<usize> = match score {
        LayerScore::Angular => {
            let s = need()?;
            if s.n != n || s.angular.len() != layers - n + 1 {
                bail!(
                    "angular distances were measured for blocks of {} ({} values); {n} of \
                     {layers} layers need {}",
                    s.n,
                    s.angular.len(),
                    layers - n + 1
                );
            }
            // the first minimum (the shallowest block on a tie)
            let mut best = 0;
            for (l, v) in s.angular.iter().enumerate() {
                if *v < s.angular[best] {
                    best = l;
                }
            }
            (best..best + n).collect()
        }
        LayerScore::Bi => {
            let s = need()?;
            if s.bi.len() != layers {
                bail!(
                    "block influence was measured for {} layers; the model has {layers}",
                    s.bi.len()
                );
            }
            let mut ix: Vec<usize> = (0..layers).collect();
            ix.sort_by(|&a, &b| s.bi[a].total_cmp(&s.bi[b]).then(a.cmp(&b)));
            ix.truncate(n);
            ix
        }
        LayerScore::Last => (layers - 1 - n..layers - 1).collect(),
        LayerScore::Random => {
            // partial Fisher-Yates over 0..layers
            let mut st = seed;
            let mut ix: Vec<usize> = (0..layers).collect();
            for i in 0..n {
                let j = i + (splitmix64(&mut st) % (layers - i) as u64) as usize;
                ix.swap(i, j);
            }
            ix.truncate(n);
            ix
        }
    };
    out.sort_unstable();
    Ok(out)
}

/// The layers kept when `dropped` (ascending) are removed from `layers`: original index of each
/// new layer.
pub fn kept(layers: usize, dropped: &[usize]) -> Vec<usize> {
    (0..layers).filter(|i| !dropped.contains(i)).collect()
}

/// The name of a module or tensor `name` (`model.layers.{i}.…`) with its layer number mapped by
/// `f`; `None` when `f` has no image for it; other names unchanged.
pub fn map_layer_name(name: &str, f: impl Fn(usize) -> Option<usize>) -> Option<String> {
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return Some(name.to_string());
    };
    let (num, tail) = rest.split_once('.')?;
    let i: usize = num.parse().ok()?;
    Some(format!("model.layers.{}.{tail}", f(i)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Boundary states of 1 token in 2 dimensions, at the given angles (radians).
    fn states(angles: &[f64]) -> Vec<Vec<f32>> {
        angles
            .iter()
            .map(|a| vec![a.cos() as f32, a.sin() as f32])
            .collect()
    }

    fn scores_of(angles: &[f64], n: usize) -> LayerScores {
        let xs = states(angles);
        let mut b = BoundaryStats::new(xs[0].clone(), 2, n);
        for x in &xs[1..] {
            b.push(x);
        }
        b.scores
    }

    #[test]
    fn angular_distance_is_angle_over_pi() {
        let a = [1.0f32, 0.0, 0.0, 2.0];
        let b = [0.0f32, 3.0, 0.0, -1.0]; // 90 degrees, then 180
        assert!((angular_distance(&a, &b, 2) - 0.75).abs() < 1e-12);
        assert!(angular_distance(&a, &a, 2).abs() < 1e-6);
    }

    #[test]
    fn angular_picks_the_block_that_turns_least() {
        // 6 layers; boundary angles x_0..x_6. Blocks of 2: the turn from x_l to x_{l+2}.
        // Layers 3 and 4 turn by 0.01 each, every other layer by 0.3.
        let angles = [0.0, 0.3, 0.6, 0.9, 0.91, 0.92, 1.22];
        let s = scores_of(&angles, 2);
        assert_eq!(s.angular.len(), 5);
        for (l, v) in s.angular.iter().enumerate() {
            let want = (angles[l + 2] - angles[l]) / std::f64::consts::PI;
            assert!((v - want).abs() < 1e-6, "l={l}: {v} vs {want}");
        }
        assert_eq!(
            choose(LayerScore::Angular, 2, 6, Some(&s), 0).unwrap(),
            vec![3, 4]
        );
        // bi: 1 - cos of each layer's turn: the two smallest are layers 3 and 4 as well...
        assert_eq!(
            choose(LayerScore::Bi, 2, 6, Some(&s), 0).unwrap(),
            vec![3, 4]
        );
    }

    #[test]
    fn bi_and_angular_differ_when_small_turns_are_apart() {
        // layers 1 and 4 barely turn, but not next to each other: BI drops 1 and 4; the best
        // contiguous block of 2 is the one with the smallest total turn.
        let angles = [0.0, 0.5, 0.51, 1.0, 1.6, 1.61, 2.0];
        let s = scores_of(&angles, 2);
        assert_eq!(
            choose(LayerScore::Bi, 2, 6, Some(&s), 0).unwrap(),
            vec![1, 4]
        );
        // turns of blocks: l=0: .51, l=1: .5, l=2: 1.09, l=3: .61, l=4: .4
        assert_eq!(
            choose(LayerScore::Angular, 2, 6, Some(&s), 0).unwrap(),
            vec![4, 5]
        );
        // BI values are 1 - cos(turn)
        assert!((s.bi[0] - (1.0 - 0.5f64.cos())).abs() < 1e-6);
    }

    #[test]
    fn last_random_and_counts() {
        assert_eq!(
            choose(LayerScore::Last, 3, 10, None, 0).unwrap(),
            vec![6, 7, 8]
        );
        let r = choose(LayerScore::Random, 4, 30, None, 7).unwrap();
        assert_eq!(r.len(), 4);
        assert!(r.windows(2).all(|w| w[0] < w[1]) && r[3] < 30);
        assert_eq!(r, choose(LayerScore::Random, 4, 30, None, 7).unwrap());
        assert_ne!(r, choose(LayerScore::Random, 4, 30, None, 8).unwrap());
        assert!(choose(LayerScore::Angular, 2, 6, None, 0).is_err());
        assert!(choose(LayerScore::Last, 6, 6, None, 0).is_err());
        assert!(check_count(0, 6, "x").is_err());
        assert!(check_list(&[1, 1], 6, "x").is_err());
        assert!(check_list(&[6], 6, "x").is_err());
        assert_eq!(check_list(&[4, 2], 6, "x").unwrap(), vec![2, 4]);
        assert!(LayerScore::parse("cosine").is_err());
    }

    #[test]
    fn renaming() {
        let keep = kept(5, &[1, 3]);
        assert_eq!(keep, vec![0, 2, 4]);
        let to_new = |i: usize| keep.iter().position(|&k| k == i);
        assert_eq!(
            map_layer_name("model.layers.4.mlp.down_proj", to_new).unwrap(),
            "model.layers.2.mlp.down_proj"
        );
        assert_eq!(map_layer_name("model.layers.3.mlp.down_proj", to_new), None);
        assert_eq!(map_layer_name("lm_head", to_new).unwrap(), "lm_head");
    }
}
