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

/// The prefix for FAQ's source: `generated:family=MODEL`.
pub const GENERATED_FAMILY: &str = "generated:family=";

/// How a family model regenerates a calibration set (FAQ).
#[derive(Clone, Debug)]
pub struct FamilyOptions {
    /// Tokens of each original window given to the family model as its prompt (kept as they
    /// are); the rest of the window is regenerated.
    pub prompt_tokens: usize,
    /// Candidates per original window (the group that competes).
    pub candidates: usize,
    pub temperature: f64,
    pub seed: u64,
}

/// What the regeneration chose.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FamilyChoice {
    /// Per original window, each candidate's mean negative log-likelihood under the family
    /// model (its expert score; lower is better).
    pub nll: Vec<Vec<f64>>,
    /// Per original window, the candidate kept.
    pub kept: Vec<usize>,
}

impl CalibSet {
    /// FAQ (Family-Aware Quantization, arXiv 2601.11200), as far as its abstract defines it: the
    /// original calibration samples go to a larger model of the same family, which regenerates
    /// them; the candidates compete in groups under the guidance of an expert and the best are
    /// kept. The paper's full text is not available here, so its rules are made concrete as
    /// follows, and said so wherever results are reported:
    /// - regeneration: each original window's first `prompt_tokens` tokens are the prompt, and
    ///   the family model samples the remaining `seqlen - prompt_tokens` tokens (temperature
    ///   `temperature`, seeded), `candidates` times;
    /// - group competition: a group is the candidates of one original window; the expert is the
    ///   family model itself, and a candidate's score is the mean negative log-likelihood of its
    ///   regenerated tokens under the family model's untempered distribution; the lowest wins;
    /// - re-normalisation: not defined by the abstract; the only normalisation done is the
    ///   per-token mean in the score (so candidates are compared per token) and windows of the
    ///   original length and layout (BOS kept where the original had it).
    ///
    /// The chain-of-thought prompting the abstract mentions is not done (it needs a chat
    /// prompt; these are plain continuations). `originals` must come from a tokenizer equal to
    /// the family model's (checked by the caller).
    pub fn regenerate(
        family: &mut Model,
        originals: &CalibSet,
        o: &FamilyOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(CalibSet, FamilyChoice)> {
        let (n, l, p) = (originals.nsamples, originals.seqlen, o.prompt_tokens);
        if p == 0 || p >= l {
            bail!("FAQ: prompt_tokens must be in 1..{l} (the window's length), got {p}");
        }
        if o.candidates == 0 {
            bail!("FAQ: candidates must be at least 1");
        }
        if l + 1 > family.config.max_position_embeddings {
            bail!(
                "FAQ: windows of {l} tokens exceed the family model's {} positions",
                family.config.max_position_embeddings
            );
        }
        let new = l - p;
        let jobs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..o.candidates).map(move |c| (i, c)))
            .collect();
        let total = jobs.len() * new;
        let mut conts = vec![vec![Vec::new(); o.candidates]; n];
        let mut nll = vec![vec![0f64; o.candidates]; n];
        let mut done = 0;
        for (chunk, part) in jobs.chunks(GENERATE_BATCH).enumerate() {
            let prompts: Vec<u32> = part
                .iter()
                .flat_map(|&(i, _)| originals.ids[i * l..i * l + p].iter().copied())
                .collect();
            let sampling = Sampling {
                temperature: o.temperature,
                top_k: 0,
                top_p: 1.0,
                seed: mix_seed(o.seed, chunk as u64),
            };
            let b = part.len();
            let (seqs, scores) = shrink_model::generate::continue_batch(
                family,
                &prompts,
                b,
                new,
                &sampling,
                &mut |t| progress(done + t * b, total),
            )?;
            done += b * new;
            for ((&(i, c), s), x) in part.iter().zip(seqs).zip(scores) {
                conts[i][c] = s;
                nll[i][c] = x;
            }
        }
        let kept: Vec<usize> = nll
            .iter()
            .map(|v| {
                (0..v.len())
                    .min_by(|&a, &b| v[a].total_cmp(&v[b]))
                    .unwrap_or(0)
            })
            .collect();
        let mut ids = Vec::with_capacity(n * l);
        for i in 0..n {
            ids.extend_from_slice(&originals.ids[i * l..i * l + p]);
            ids.extend_from_slice(&conts[i][kept[i]]);
        }
        Ok((
            CalibSet {
                nsamples: n,
                seqlen: l,
                seed: o.seed,
                source: format!(
                    "FAQ: {} regenerated by the family model ({p} prompt tokens kept, best of {} \
                     by the family model's mean NLL)",
                    originals.source, o.candidates
                ),
                text_tokens: originals.text_tokens,
                ids,
                starts: originals.starts.clone(),
                bos: originals.bos,
            },
            FamilyChoice { nll, kept },
        ))
    }
}
