//! Evaluation: perplexity by the GPTQ protocol, and process measurements (peak memory).
pub mod kld;
pub mod logits_file;
pub mod task_run;
pub mod tasks;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use shrink_model::stream::{windows_per_pass, Streamed};
use shrink_model::tensor::log_sum_exp;
use shrink_model::tokenizer::Tokenizer;
use shrink_model::Model;
use std::time::Instant;

/// Perplexity settings.
#[derive(Clone, Debug)]
pub struct PplOptions {
    /// Window length in tokens (non-overlapping windows).
    pub seqlen: usize,
    /// Use only the first N tokens of the text (before cutting windows).
    pub max_tokens: Option<usize>,
    /// Windows run together through the model.
    pub batch: usize,
    /// For models whose tokenizer adds BOS ([`Tokenizer::adds_bos`]): each window is this BOS and
    /// `seqlen - 1` text tokens (`ids` then hold the text without BOS; see [`eval_tokens`]).
    pub bos: Option<u32>,
}

impl Default for PplOptions {
    fn default() -> Self {
        PplOptions {
            seqlen: 512,
            max_tokens: None,
            batch: 4,
            bos: None,
        }
    }
}

/// Tokens of an evaluation text and the BOS its windows start with, by the rule for the GPTQ
/// protocol: a model whose tokenizer adds BOS (Gemma, Llama 2, ...; GGUF
/// `tokenizer.ggml.add_bos_token`, or a Hugging Face post-processor that adds it) was trained to
/// always see BOS first, so the text is tokenized without it and every window gets it
/// (`PplOptions::bos`); other models tokenize the text with their default special tokens, as
/// before (for them that adds nothing).
pub fn eval_tokens(tok: &Tokenizer, text: &str) -> Result<(Vec<u32>, Option<u32>)> {
    Ok(match tok.adds_bos() {
        Some(b) => (tok.encode(text, false)?, Some(b)),
        None => (tok.encode(text, true)?, None),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct PplResult {
    pub perplexity: f64,
    /// Mean negative log-likelihood per predicted token (nats).
    pub mean_nll: f64,
    /// Tokens in the evaluated windows (windows * seqlen, BOS included when windows start with it).
    pub tokens: usize,
    /// Tokens whose likelihood was scored (windows * (seqlen - 1)).
    pub predicted_tokens: usize,
    pub windows: usize,
    pub seqlen: usize,
    /// The BOS each window starts with (then it holds seqlen - 1 text tokens), if any.
    pub bos: Option<u32>,
    /// Tokens of the whole text before windowing.
    pub text_tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// The windows of the GPTQ protocol: `ids` (cut to `opts.max_tokens`) in non-overlapping windows
/// of `seqlen` tokens, each BOS followed by `seqlen - 1` text tokens with `opts.bos`; a final
/// partial window is dropped. Returns the windows' tokens, one after the other, and their count.
pub fn gptq_windows(ids: &[u32], opts: &PplOptions) -> Result<(Vec<u32>, usize)> {
    if opts.seqlen < 2 {
        bail!("seqlen must be at least 2, got {}", opts.seqlen);
    }
    let ids = match opts.max_tokens {
        Some(m) => &ids[..m.min(ids.len())],
        None => ids,
    };
    // text tokens per window
    let body = opts.seqlen - opts.bos.is_some() as usize;
    let windows = ids.len() / body;
    if windows == 0 {
        bail!("the text has {} tokens, fewer than one window of {} (lower --seqlen or give more text)", ids.len(), body);
    }
    let mut all = Vec::with_capacity(windows * opts.seqlen);
    for w in ids[..windows * body].chunks_exact(body) {
        all.extend(opts.bos);
        all.extend_from_slice(w);
    }
    Ok((all, windows))
}

/// Perplexity by the GPTQ protocol: the text was tokenized once into `ids`; it is cut into
/// non-overlapping windows of `seqlen` tokens (a final partial window is dropped); every token but
/// the first of each window is predicted from the ones before it; ppl = exp(sum NLL / count).
/// With `opts.bos`, windows are BOS followed by `seqlen - 1` tokens of `ids`, and those text
/// tokens are the ones scored (the first from BOS alone), so the count is the same.
/// `progress(done, total)` is called after each batch of windows.
pub fn perplexity(
    model: &mut Model,
    ids: &[u32],
    opts: &PplOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplResult> {
    let (all, windows) = gptq_windows(ids, opts)?;
    let start = Instant::now();
    let seq = opts.seqlen;
    let batch = opts.batch.max(1);
    let mut nll = 0f64;
    let mut done = 0;
    while done < windows {
        let b = batch.min(windows - done);
        let chunk = &all[done * seq..(done + b) * seq];
        let hidden = model.hidden_states(chunk, b, seq)?;
        nll += checked_nll(window_nll(model, &hidden, chunk, b, seq), done, b)?;
        done += b;
        progress(done, windows);
    }
    Ok(ppl_result(nll, windows, opts, ids.len(), start))
}

/// Default bound on the hidden states a streamed evaluation keeps (all windows of one pass).
pub const STREAM_BUDGET_BYTES: usize = 512 << 20;

/// [`perplexity`] with one decoder layer in memory at a time ([`Streamed`]): the windows go
/// through the model in passes of at most `budget_bytes` of hidden states (a multiple of
/// `opts.batch` windows, so every batch is the one [`perplexity`] runs and the result is the
/// same). `progress(done, total)` counts layers over all passes.
pub fn perplexity_streamed(
    model: &Streamed,
    ids: &[u32],
    opts: &PplOptions,
    budget_bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplResult> {
    let (all, windows) = gptq_windows(ids, opts)?;
    let start = Instant::now();
    let (seq, batch, cfg) = (opts.seqlen, opts.batch.max(1), model.config);
    let per = (windows_per_pass(cfg, seq, budget_bytes) / batch).max(1) * batch;
    let passes = windows.div_ceil(per);
    let layers = cfg.num_layers;
    let mut nll = 0f64;
    for p in 0..passes {
        let (w0, w1) = (p * per, ((p + 1) * per).min(windows));
        let toks = &all[w0 * seq..w1 * seq];
        let hidden = model.hidden_states(toks, w1 - w0, seq, batch, &mut |d, _| {
            progress(p * layers + d, passes * layers)
        })?;
        let head = model.head()?;
        let h = cfg.hidden_size;
        let mut done = w0;
        while done < w1 {
            let b = batch.min(w1 - done);
            let rows = (done - w0) * seq..(done - w0 + b) * seq;
            let w = window_nll_with(
                &|x, r| head.logits(x, r),
                head.vocab(),
                h,
                &hidden[rows.start * h..rows.end * h],
                &toks[rows],
                b,
                seq,
            );
            nll += checked_nll(w, done, b)?;
            done += b;
        }
    }
    Ok(ppl_result(nll, windows, opts, ids.len(), start))
}

fn checked_nll(w: f64, done: usize, b: usize) -> Result<f64> {
    if !w.is_finite() {
        bail!(
            "windows {}..{}: the negative log-likelihood is {w} (the logits overflow)",
            done,
            done + b
        );
    }
    Ok(w)
}

fn ppl_result(
    nll: f64,
    windows: usize,
    opts: &PplOptions,
    text_tokens: usize,
    start: Instant,
) -> PplResult {
    let seq = opts.seqlen;
    let seconds = start.elapsed().as_secs_f64();
    let predicted = windows * (seq - 1);
    let mean_nll = nll / predicted as f64;
    PplResult {
        perplexity: mean_nll.exp(),
        mean_nll,
        tokens: windows * seq,
        predicted_tokens: predicted,
        windows,
        seqlen: seq,
        bos: opts.bos,
        text_tokens,
        seconds,
        tokens_per_second: (windows * seq) as f64 / seconds,
    }
}

/// Sum of the NLL of tokens 1..seq of each window given normed hidden states `[b*seq, hidden]`.
/// Logits are computed a slice of rows at a time to bound memory. The last position of each
/// window predicts nothing inside it.
pub fn window_nll(model: &Model, hidden: &[f32], ids: &[u32], b: usize, seq: usize) -> f64 {
    window_nll_with(
        &|x, r| model.logits(x, r),
        model.head().shape[0],
        model.config.hidden_size,
        hidden,
        ids,
        b,
        seq,
    )
}

/// [`window_nll`] with the head given as a function from normed hidden rows to logits.
#[allow(clippy::too_many_arguments)]
pub fn window_nll_with(
    logits_of: &(dyn Fn(&[f32], usize) -> Vec<f32> + Sync),
    vocab: usize,
    h: usize,
    hidden: &[f32],
    ids: &[u32],
    b: usize,
    seq: usize,
) -> f64 {
    const ROWS: usize = 256;
    let mut total = 0f64;
    let rows = b * seq;
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + ROWS).min(rows);
        let logits = logits_of(&hidden[r0 * h..r1 * h], r1 - r0);
        total += logits
            .par_chunks_exact(vocab)
            .enumerate()
            .map(|(i, row)| {
                let r = r0 + i;
                if (r + 1) % seq == 0 {
                    return 0.0; // last position of a window predicts nothing inside it
                }
                let target = ids[r + 1] as usize;
                log_sum_exp(row) - row[target] as f64
            })
            .sum::<f64>();
        r0 = r1;
    }
    total
}

/// A UTF-8 text file to evaluate on (or to calibrate from), refused when it is not UTF-8 or is
/// empty, with the file's name in the message.
pub fn read_text(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        bail!("{}: the text is empty", path.display());
    }
    Ok(text)
}

/// Peak resident memory of this process in MiB (VmHWM), where the OS reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shrink_model::spm::{SpmOptions, SpmTokenizer};

    fn tok(add_bos: bool) -> Tokenizer {
        let texts = ["<unk>", "<s>", "</s>", "\u{2581}a", "\u{2581}b"]
            .map(String::from)
            .to_vec();
        let opts = SpmOptions {
            add_bos,
            ..Default::default()
        };
        Tokenizer::from_spm(SpmTokenizer::new(texts, vec![], vec![2, 3, 3, 1, 1], &opts).unwrap())
    }

    #[test]
    fn eval_tokens_leave_bos_to_the_windows() {
        // a BOS model: text tokens without BOS, and the BOS every window starts with
        assert_eq!(
            eval_tokens(&tok(true), "a b a").unwrap(),
            (vec![3, 4, 3], Some(1))
        );
        // no BOS: the default encoding, as before
        assert_eq!(
            eval_tokens(&tok(false), "a b a").unwrap(),
            (vec![3, 4, 3], None)
        );
    }
}
