//! Text generation: a KV-cached forward pass over a resident [`Model`] and the samplers of
//! Hugging Face's `generate` (greedy, and seeded sampling with temperature, top-k and top-p).
//!
//! The prompt is run once through every layer ([`DecoderLayer::forward_cached`] appends each
//! layer's keys and values to its [`LayerCache`]); each new token then runs alone against the
//! cache. Logits are those of [`Model::hidden_states`] and [`Model::logits`] for the same tokens,
//! up to float summation order (checked in the tests against the uncached pass).
use crate::layer::{LayerCache, Rope};
use crate::model::{final_norm, head_logits, Model};
use anyhow::{bail, Result};

/// A model with one KV cache per layer, fed tokens of one sequence.
pub struct Generator<'a> {
    model: &'a mut Model,
    rope: Rope,
    caches: Vec<LayerCache>,
    max_len: usize,
}

impl<'a> Generator<'a> {
    /// A generator for sequences of at most `max_len` tokens (prompt and generated).
    pub fn new(model: &'a mut Model, max_len: usize) -> Self {
        let rope = Rope::new(&model.config, max_len);
        let caches = vec![LayerCache::default(); model.layers.len()];
        Generator {
            model,
            rope,
            caches,
            max_len,
        }
    }

    /// Tokens fed so far.
    pub fn len(&self) -> usize {
        self.caches.first().map_or(0, |c| c.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `ids` (the next tokens of the sequence) and returns the logits `[vocab]` of the last.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            bail!("no tokens to feed");
        }
        if self.len() + ids.len() > self.max_len {
            bail!(
                "{} tokens exceed the generator's {} (prompt and new tokens)",
                self.len() + ids.len(),
                self.max_len
            );
        }
        let cfg = self.model.config.clone();
        let mut x = self.model.embed(ids)?;
        for (layer, cache) in self.model.layers.iter_mut().zip(&mut self.caches) {
            layer.forward_cached(&cfg, &self.rope, &mut x, ids.len(), cache)?;
        }
        let h = cfg.hidden_size;
        let last = &x[(ids.len() - 1) * h..];
        let normed = final_norm(&cfg, &self.model.norm, last)?;
        Ok(head_logits(&cfg, self.model.head(), &normed, 1))
    }
}

/// [`Generator`] for a batch of sequences of one length: each step feeds one token (or the same
/// number of prompt tokens) per sequence, and the linears run on all of them in one product.
pub struct BatchGenerator<'a> {
    model: &'a mut Model,
    rope: Rope,
    /// `caches[layer][sequence]`
    caches: Vec<Vec<LayerCache>>,
    batch: usize,
    max_len: usize,
}

impl<'a> BatchGenerator<'a> {
    pub fn new(model: &'a mut Model, batch: usize, max_len: usize) -> Self {
        let rope = Rope::new(&model.config, max_len);
        let caches = vec![vec![LayerCache::default(); batch]; model.layers.len()];
        BatchGenerator {
            model,
            rope,
            caches,
            batch,
            max_len,
        }
    }

    /// Tokens fed so far to each sequence.
    pub fn len(&self) -> usize {
        self.caches
            .first()
            .and_then(|c| c.first())
            .map_or(0, |c| c.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds `n` tokens to every sequence (`ids` is `[batch, n]`) and returns each sequence's
    /// logits of its last token, `[batch, vocab]`.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() || ids.len() % self.batch != 0 {
            bail!(
                "{} tokens do not split over a batch of {}",
                ids.len(),
                self.batch
            );
        }
        let n = ids.len() / self.batch;
        if self.len() + n > self.max_len {
            bail!(
                "{} tokens exceed the generator's {} (prompt and new tokens)",
                self.len() + n,
                self.max_len
            );
        }
        let cfg = self.model.config.clone();
        let mut x = self.model.embed(ids)?;
        for (layer, caches) in self.model.layers.iter_mut().zip(&mut self.caches) {
            layer.forward_cached_batch(&cfg, &self.rope, &mut x, n, caches)?;
        }
        let h = cfg.hidden_size;
        let last: Vec<f32> = (0..self.batch)
            .flat_map(|b| x[((b + 1) * n - 1) * h..(b + 1) * n * h].iter().copied())
            .collect();
        let normed = final_norm(&cfg, &self.model.norm, &last)?;
        Ok(head_logits(&cfg, self.model.head(), &normed, self.batch))
    }
}

/// `batch` sequences sampled from the model after `prompt` (e.g. BOS alone), `new_tokens`
/// tokens each; sequence `b` draws with its own sampler, seeded `sampling.seed` mixed with `b`
/// (SplitMix64), so a seed gives the same sequences on every machine.
/// End-of-sequence tokens are kept and sampling goes on past them (fixed-length windows, as
/// calibration wants). `progress(tokens_done)` is called after each step.
pub fn sample_batch(
    model: &mut Model,
    prompt: &[u32],
    batch: usize,
    new_tokens: usize,
    sampling: &Sampling,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<u32>>> {
    let prompts: Vec<u32> = (0..batch).flat_map(|_| prompt.iter().copied()).collect();
    Ok(continue_batch(model, &prompts, batch, new_tokens, sampling, progress)?.0)
}

/// [`sample_batch`] after a prompt of its own for each sequence (`prompts` is `[batch, P]`, all
/// of one length P). Also returns each sequence's mean negative log-likelihood of its sampled
/// tokens under the model's untempered distribution (how likely the model finds what it wrote).
pub fn continue_batch(
    model: &mut Model,
    prompts: &[u32],
    batch: usize,
    new_tokens: usize,
    sampling: &Sampling,
    progress: &mut dyn FnMut(usize),
) -> Result<(Vec<Vec<u32>>, Vec<f64>)> {
    if batch == 0 || new_tokens == 0 || prompts.is_empty() || prompts.len() % batch != 0 {
        bail!("continue_batch: empty batch, prompt or length, or prompts of unequal length");
    }
    sampling.check()?;
    let plen = prompts.len() / batch;
    let mut gen = BatchGenerator::new(model, batch, plen + new_tokens);
    let mut samplers: Vec<Sampler> = (0..batch as u64)
        .map(|b| {
            Sampler::new(Sampling {
                seed: mix_seed(sampling.seed, b),
                ..sampling.clone()
            })
        })
        .collect();
    let mut logits = gen.feed(prompts)?;
    let vocab = logits.len() / batch;
    let mut out = vec![Vec::with_capacity(new_tokens); batch];
    let mut nll = vec![0f64; batch];
    for step in 0..new_tokens {
        let next: Vec<u32> = samplers
            .iter_mut()
            .zip(logits.chunks_exact(vocab))
            .zip(nll.iter_mut())
            .map(|((s, l), nll)| {
                let t = s.next(l);
                let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
                *nll += lse - l[t as usize] as f64;
                t
            })
            .collect();
        for (o, t) in out.iter_mut().zip(&next) {
            o.push(*t);
        }
        progress(step + 1);
        if step + 1 < new_tokens {
            logits = gen.feed(&next)?;
        }
    }
    nll.iter_mut().for_each(|x| *x /= new_tokens as f64);
    Ok((out, nll))
}

/// A seed for stream `b` of seed `seed` (one SplitMix64 step of their mix).
pub fn mix_seed(seed: u64, b: u64) -> u64 {
    let mut z = seed ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How the next token is chosen from the logits, in Hugging Face's order: temperature, then
/// top-k, then top-p (nucleus), then a draw; `temperature == 0` is greedy (the first maximum).
#[derive(Clone, Debug)]
pub struct Sampling {
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!(
                "--temperature must be >= 0 (0: greedy), got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

/// A seeded sampler (SplitMix64: a fixed, documented stream, so a seed gives the same text on
/// every machine).
pub struct Sampler {
    pub sampling: Sampling,
    state: u64,
}

/// The index of the first maximum.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Self {
        let state = sampling.seed;
        Sampler { sampling, state }
    }

    /// A uniform draw in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token from `logits`.
    pub fn next(&mut self, logits: &[f32]) -> u32 {
        let s = self.sampling.clone();
        if s.temperature == 0.0 {
            return argmax(logits);
        }
        let t = s.temperature;
        let n = logits.len();
        // candidates by descending logit (ties to the lower id); only as many as can be kept are
        // sorted (a selection first): sorting all 49k-152k ids per token cost about as much
        // as the forward pass of a small model
        let order = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
        let top = |k: usize| -> Vec<usize> {
            let mut idx: Vec<usize> = (0..n).collect();
            if k < n {
                idx.select_nth_unstable_by(k - 1, order);
                idx.truncate(k);
            }
            idx.sort_unstable_by(order);
            idx
        };
        if s.top_k > 0 {
            // exactly the k best, normalised among themselves, then top-p among them
            let idx = top(s.top_k.min(n));
            let m = logits[idx[0]] as f64 / t;
            let mut p: Vec<f64> = idx
                .iter()
                .map(|&i| (logits[i] as f64 / t - m).exp())
                .collect();
            normalise(&mut p);
            cut_top_p(&mut p, s.top_p);
            let u = self.uniform();
            return pick(&idx, &p, u);
        }
        // no top-k: the mass of every token, then the most likely ones sorted until the prefix
        // that top-p (or the draw) needs is covered
        let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64 / t;
        let z: f64 = logits.iter().map(|&l| (l as f64 / t - m).exp()).sum();
        let u = self.uniform();
        let mut k = 256.min(n);
        loop {
            let idx = top(k);
            let mut p: Vec<f64> = idx
                .iter()
                .map(|&i| (logits[i] as f64 / t - m).exp() / z)
                .collect();
            let mass: f64 = p.iter().sum();
            let covered = if s.top_p < 1.0 {
                mass >= s.top_p
            } else {
                mass > u
            };
            if k == n || covered {
                cut_top_p(&mut p, s.top_p);
                return pick(&idx, &p, u);
            }
            k = (k * 8).min(n);
        }
    }
}

fn normalise(p: &mut [f64]) {
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= z);
}

/// Top-p on a distribution `p` in descending order: the smallest prefix whose mass reaches
/// `top_p` (at least one token), renormalised; unchanged for `top_p = 1`.
fn cut_top_p(p: &mut Vec<f64>, top_p: f64) {
    if top_p >= 1.0 {
        return;
    }
    let mut acc = 0.0;
    let mut keep = p.len();
    for (j, x) in p.iter().enumerate() {
        acc += x;
        if acc >= top_p {
            keep = j + 1;
            break;
        }
    }
    p.truncate(keep);
    normalise(p);
}

/// The candidate where the cumulative mass `p` first exceeds `u` (the last one if rounding
/// leaves `u` above the total).
fn pick(idx: &[usize], p: &[f64], u: f64) -> u32 {
    let mut acc = 0.0;
    for (j, x) in p.iter().enumerate() {
        acc += x;
        if u < acc {
            return idx[j] as u32;
        }
    }
    idx[p.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler as it was: every id sorted on every call.
    fn full_sort_next(s: &Sampling, u: f64, logits: &[f32]) -> u32 {
        let t = s.temperature;
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if s.top_k > 0 {
            idx.truncate(s.top_k);
        }
        let m = logits[idx[0]] as f64 / t;
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| (logits[i] as f64 / t - m).exp())
            .collect();
        normalise(&mut p);
        cut_top_p(&mut p, s.top_p);
        pick(&idx, &p, u)
    }

    /// Selecting before sorting draws the same tokens as sorting the whole vocabulary, with and
    /// without top-k and top-p, hot and cold, on a 49k vocabulary.
    #[test]
    fn partial_sort_draws_what_the_full_sort_draws() {
        let n = 49_152;
        let mut state = 12345u64;
        let logits: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 24.0
            })
            .collect();
        let mut checked = 0;
        for (temperature, top_k, top_p) in [
            (1.0, 0, 1.0),
            (0.7, 0, 0.9),
            (1.5, 0, 0.5),
            (3.0, 0, 1.0),
            (1.0, 40, 1.0),
            (0.8, 50, 0.95),
        ] {
            let sampling = Sampling {
                temperature,
                top_k,
                top_p,
                seed: 9,
            };
            let mut fast = Sampler::new(sampling.clone());
            let mut draws = Sampler::new(sampling.clone());
            for _ in 0..40 {
                let u = draws.uniform();
                assert_eq!(
                    fast.next(&logits),
                    full_sort_next(&sampling, u, &logits),
                    "T {temperature} top-k {top_k} top-p {top_p}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 240);
    }

    #[test]
    fn greedy_and_filters() {
        let logits = [0.0f32, 3.0, 1.0, 3.0, -1.0];
        assert_eq!(argmax(&logits), 1, "the first maximum");
        let mut g = Sampler::new(Sampling::greedy());
        assert_eq!(g.next(&logits), 1);
        // top-k 1 is greedy whatever the temperature
        let mut k1 = Sampler::new(Sampling {
            temperature: 5.0,
            top_k: 1,
            top_p: 1.0,
            seed: 3,
        });
        for _ in 0..20 {
            assert_eq!(k1.next(&logits), 1);
        }
        // top-k 2 draws only the two maxima (ids 1 and 3), about evenly
        let mut k2 = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 7,
        });
        let draws: Vec<u32> = (0..2000).map(|_| k2.next(&logits)).collect();
        assert!(draws.iter().all(|&d| d == 1 || d == 3));
        let ones = draws.iter().filter(|&&d| d == 1).count();
        assert!((900..1100).contains(&ones), "{ones}");
        // top-p: mass of {1, 3} is 2e^3/(2e^3+e^1+1+e^-1) = 0.88; p = 0.8 keeps only them
        let mut tp = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            seed: 1,
        });
        assert!((0..500).all(|_| matches!(tp.next(&logits), 1 | 3)));
        // the same seed gives the same draws; the full distribution reaches every token
        let s = Sampling {
            temperature: 2.0,
            top_k: 0,
            top_p: 1.0,
            seed: 11,
        };
        let a: Vec<u32> = {
            let mut x = Sampler::new(s.clone());
            (0..300).map(|_| x.next(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut x = Sampler::new(s.clone());
            (0..300).map(|_| x.next(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!((0..5).all(|t| a.contains(&t)), "{a:?}");
    }
}
