//! Calibration text the model writes itself (`generated:self`): the data-free source.
//!
//! The model samples `nsamples` sequences from its start token, seeded: the idea of LLM-QAT's
//! data-free distillation (Liu et al. 2023, arXiv 2305.17888, §2.1), which builds its training
//! text by next-token sampling from the pretrained model itself rather than from any dataset.
//! shrink samples every token from the full softmax at temperature 1 by default. LLM-QAT's hybrid
//! (its first few tokens top-1, the rest sampled) is not done: from one start token it would
//! make every sequence begin the same way. End-of-text tokens are kept and sampling goes on after
//! them, so each window is exactly `seqlen` tokens and may hold several short documents, as
//! windows of joined real text do.
//!
//! Windows look like [`CalibSet::sample`]'s: BOS and `seqlen - 1` generated tokens for a model
//! whose tokenizer adds BOS, else `seqlen` generated tokens (after the start token, which the
//! window leaves out). Sequences are decoded 16 at a time ([`sample_batch`]); sequence `i` of
//! seed `s` draws from its own SplitMix64 stream, so a seed gives the same set on every machine.
use crate::CalibSet;
use anyhow::{bail, Result};
use shrink_model::generate::{mix_seed, sample_batch, Sampling};
use shrink_model::Model;

/// The name of the self-generated source (`--calib generated:self`, `file = "generated:self"`).
pub const GENERATED_SELF: &str = "generated:self";

/// Sequences decoded together.
pub const GENERATE_BATCH: usize = 16;

/// How a generated set is drawn.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub nsamples: usize,
    pub seqlen: usize,
    pub seed: u64,
    /// Softmax temperature (1: the model's own distribution).
    pub temperature: f64,
    /// Nucleus mass kept (1: all).
    pub top_p: f64,
    /// The token generation starts from: BOS where the model has one, else its end-of-text token.
    pub start: u32,
    /// The tokenizer adds BOS: `start` is BOS and stays first in each window.
    pub keep_start: bool,
}

impl CalibSet {
    /// `nsamples` windows sampled from `model` (module docs). `progress(done, total)` counts
    /// generated tokens.
    pub fn generate(
        model: &mut Model,
        o: &GenerateOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<CalibSet> {
        if o.nsamples == 0 || o.seqlen < 1 + o.keep_start as usize {
            bail!(
                "generated calibration needs at least one sample of at least {} tokens (got {} x {})",
                1 + o.keep_start as usize,
                o.nsamples,
                o.seqlen
            );
        }
        let new = o.seqlen - o.keep_start as usize;
        if o.seqlen + 1 > model.config.max_position_embeddings {
            bail!(
                "generated calibration: {} tokens exceed the model's {} positions (lower seqlen)",
                o.seqlen + 1,
                model.config.max_position_embeddings
            );
        }
        let total = o.nsamples * new;
        let mut ids = Vec::with_capacity(o.nsamples * o.seqlen);
        let mut done = 0;
        for (chunk, first) in (0..o.nsamples).step_by(GENERATE_BATCH).enumerate() {
            let b = GENERATE_BATCH.min(o.nsamples - first);
            let sampling = Sampling {
                temperature: o.temperature,
                top_k: 0,
                top_p: o.top_p,
                seed: mix_seed(o.seed, chunk as u64),
            };
            let seqs = sample_batch(model, &[o.start], b, new, &sampling, &mut |t| {
                progress(done + t * b, total)
            })?;
            done += b * new;
            for s in seqs {
                if o.keep_start {
                    ids.push(o.start);
                }
                ids.extend(s);
            }
        }
        Ok(CalibSet {
            nsamples: o.nsamples,
            seqlen: o.seqlen,
            seed: o.seed,
            source: format!(
                "{GENERATED_SELF} (sampled from token {} at temperature {}{})",
                o.start,
                o.temperature,
                if o.top_p < 1.0 {
                    format!(", top-p {}", o.top_p)
                } else {
                    String::new()
                }
            ),
            text_tokens: 0,
            ids,
            starts: vec![],
            bos: o.keep_start.then_some(o.start),
        })
    }
}
