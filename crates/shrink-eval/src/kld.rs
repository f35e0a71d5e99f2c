//! Agreement of a compressed model with its original: KL divergence, top-1 agreement, Δp and the
//! perplexity ratio, per predicted token.
//!
//! Two protocols:
//! - **gptq**: the perplexity windows ([`crate::gptq_windows`]), every position but each window's
//!   last; the reference distribution is exact (f64 log-softmax of its logits).
//! - **llama.cpp**: `llama-perplexity --kl-divergence` (tools/perplexity/perplexity.cpp,
//!   `kl_divergence()`): chunks of `n_ctx` tokens from the start of the text (BOS replacing the
//!   first token of each chunk where the tokenizer adds BOS), the second half of each chunk
//!   scored. The reference's log-probabilities are stored as llama.cpp stores them in its
//!   `--kl-divergence-base` file (per token: an f32 scale and minimum, then one uint16 per vocabulary
//!   entry over the top 16 nats, see [`quantize_log_probs`]), and every statistic is computed from
//!   that stored form with llama.cpp's arithmetic, whether the reference runs in the same pass or
//!   its file ([`crate::logits_file`]) is read. The figures therefore equal llama.cpp's for the same
//!   pair of models, up to the models' own float differences.
//!
//! Per token t with reference distribution P and compressed Q:
//! - KLD(t) = Σ_i P_i (log P_i − log Q_i) (llama.cpp: over the entries with log P_i > −16);
//! - top-1 agreement: argmax P = argmax Q;
//! - Δp(t) = Q(x_{t+1}) − P(x_{t+1}) for the text's next token x_{t+1} (llama.cpp's Δp), and
//!   Δp_top(t) = Q(k) − P(k) for the reference's top token k;
//! - perplexity ratio: exp(mean NLL_Q − mean NLL_P).
use crate::logits_file::{rows_per_chunk, LogitsReader, LogitsWriter};
use crate::{gptq_windows, PplOptions};
use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;
use shrink_model::stream::{windows_per_pass, Streamed};

/// Row length, in uint16, of one token's stored log-probabilities: two f32 (scale, minimum log
/// probability) and one uint16 per vocabulary entry, padded to an even count (llama.cpp's `nv`).
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// llama.cpp's `nearest_int`: round to nearest, ties to even (the magic-number trick).
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0;
    let i = val.to_bits() as i32;
    (i & 0x007fffff) - 0x00400000
}

/// Stores the log-softmax of `logits` into `out` (`row_len(vocab)` uint16) as llama.cpp's
/// `log_softmax(n_vocab, logits, log_prob, tok)` does, and returns the NLL of `tok` it computes
/// (f64 of the same float operations).
pub fn quantize_log_probs(logits: &[f32], tok: usize, out: &mut [u16]) -> f64 {
    let mut max_logit = logits[0];
    let mut min_logit = logits[0];
    for &l in &logits[1..] {
        max_logit = max_logit.max(l);
        min_logit = min_logit.min(l);
    }
    min_logit = min_logit.max(max_logit - 16.0);
    let mut sum_exp = 0f64;
    for &l in logits {
        sum_exp += (l - max_logit).exp() as f64;
    }
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min_logit - max_logit - log_sum_exp;
    let scale = (max_logit - min_logit) / 65535.0;
    let s = scale.to_le_bytes();
    let m = min_log_prob.to_le_bytes();
    out[0] = u16::from_le_bytes([s[0], s[1]]);
    out[1] = u16::from_le_bytes([s[2], s[3]]);
    out[2] = u16::from_le_bytes([m[0], m[1]]);
    out[3] = u16::from_le_bytes([m[2], m[3]]);
    let body = &mut out[4..];
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (o, &l) in body.iter_mut().zip(logits) {
            *o = if l > min_logit {
                nearest_int(inv * (l - min_logit)) as u16
            } else {
                0
            };
        }
    } else {
        body.iter_mut().for_each(|o| *o = 0);
    }
    for o in body[logits.len()..].iter_mut() {
        *o = 0;
    }
    (max_logit + log_sum_exp - logits[tok]) as f64
}

fn row_scale_min(row: &[u16]) -> (f32, f32) {
    let s = [row[0].to_le_bytes(), row[1].to_le_bytes()];
    let m = [row[2].to_le_bytes(), row[3].to_le_bytes()];
    (
        f32::from_le_bytes([s[0][0], s[0][1], s[1][0], s[1][1]]),
        f32::from_le_bytes([m[0][0], m[0][1], m[1][0], m[1][1]]),
    )
}

/// One token's comparison.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenStat {
    pub nll: f64,
    pub nll_base: f64,
    pub kld: f64,
    pub same_top: bool,
    /// Q − P of the text's next token.
    pub p_diff: f64,
    /// Q − P of the reference's top token.
    pub p_diff_top: f64,
}

/// Compares the compressed model's `logits` with the reference's stored row (`row_len(vocab)`
/// uint16) for next token `tok`, with llama.cpp's float arithmetic (`log_softmax(n_vocab, logits,
/// base_log_prob, tok, kld)`).
pub fn compare_quantized(logits: &[f32], base: &[u16], tok: usize) -> TokenStat {
    let mut max_logit = logits[0];
    let mut imax = 0;
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l > max_logit {
            max_logit = l;
            imax = i;
        }
    }
    let mut sum_exp = 0f64;
    for &l in logits {
        sum_exp += (l - max_logit).exp() as f64;
    }
    let log_sum_exp = sum_exp.ln() as f32;
    let (scale, min_log_prob) = row_scale_min(base);
    let b = &base[4..];
    let nll = max_logit + log_sum_exp - logits[tok];
    let nll_base = -(scale * b[tok] as f32 + min_log_prob);
    let max_logit = max_logit + log_sum_exp;
    let mut sum = 0f64;
    let mut imax_base = 0;
    let mut p_log_base_max = 0f32;
    for (i, &l) in logits.iter().enumerate() {
        let p_log_base = scale * b[i] as f32 + min_log_prob;
        if i == 0 || p_log_base > p_log_base_max {
            p_log_base_max = p_log_base;
            imax_base = i;
        }
        if p_log_base > -16.0 {
            let p_base = p_log_base.exp();
            sum += (p_base * (p_log_base - l + max_logit)) as f64;
        }
    }
    let p_base = (-nll_base).exp();
    let p = (-nll).exp();
    let p_top = (logits[imax_base] - max_logit).exp();
    TokenStat {
        nll: nll as f64,
        nll_base: nll_base as f64,
        kld: sum,
        same_top: imax == imax_base,
        p_diff: (p - p_base) as f64,
        p_diff_top: (p_top - p_log_base_max.exp()) as f64,
    }
}

/// Compares two logit rows exactly (f64 log-softmax of both; the sum over the whole vocabulary).
pub fn compare_exact(logits: &[f32], base: &[f32], tok: usize) -> TokenStat {
    let lse = |r: &[f32]| {
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        m + r.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    };
    let argmax = |r: &[f32]| {
        let mut k = 0;
        for (i, &x) in r.iter().enumerate() {
            if x > r[k] {
                k = i;
            }
        }
        k
    };
    let (lq, lp) = (lse(logits), lse(base));
    let mut kld = 0f64;
    for (&q, &p) in logits.iter().zip(base) {
        let lpi = p as f64 - lp;
        let pi = lpi.exp();
        if pi > 0.0 {
            kld += pi * (lpi - (q as f64 - lq));
        }
    }
    let (kq, kp) = (argmax(logits), argmax(base));
    let nll = lq - logits[tok] as f64;
    let nll_base = lp - base[tok] as f64;
    TokenStat {
        nll,
        nll_base,
        kld,
        same_top: kq == kp,
        p_diff: (-nll).exp() - (-nll_base).exp(),
        p_diff_top: (logits[kp] as f64 - lq).exp() - (base[kp] as f64 - lp).exp(),
    }
}

/// The statistics over all compared tokens.
#[derive(Default)]
pub struct KldAccum {
    stats: Vec<TokenStat>,
}

/// What `shrink eval --reference` reports (names as in `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct KldReport {
    pub protocol: &'static str,
    /// Tokens compared.
    pub tokens: usize,
    pub kld_mean: f64,
    /// Standard error of the mean KLD (llama.cpp's ±).
    pub kld_mean_stderr: f64,
    pub kld_median: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    /// Fraction of tokens where both models' most likely token is the same.
    pub top1_agreement: f64,
    /// RMS of Δp = Q(next token) − P(next token) (llama.cpp's "RMS Δp").
    pub delta_p_rms: f64,
    /// Largest |Δp|.
    pub delta_p_max: f64,
    /// RMS and largest |Q(k) − P(k)| for the reference's top token k.
    pub delta_p_top_rms: f64,
    pub delta_p_top_max: f64,
    /// exp(mean NLL of the model − mean NLL of the reference): PPL(Q)/PPL(base).
    pub ppl_ratio: f64,
    pub perplexity: f64,
    pub perplexity_reference: f64,
}

/// llama.cpp's percentile: linear interpolation between sorted values (in f32, as it does).
fn percentile(sorted: &[f32], fraction: f32) -> f64 {
    if fraction <= 0.0 {
        return sorted[0] as f64;
    }
    if fraction >= 1.0 {
        return *sorted.last().unwrap() as f64;
    }
    let mut p = fraction * (sorted.len() - 1) as f32;
    let ip = p as usize;
    p -= ip as f32;
    ((1.0 - p) * sorted[ip] + p * sorted[(ip + 1).min(sorted.len() - 1)]) as f64
}

impl KldAccum {
    pub fn push(&mut self, s: TokenStat) {
        self.stats.push(s);
    }
    pub fn extend(&mut self, s: impl IntoIterator<Item = TokenStat>) {
        self.stats.extend(s);
    }

    /// The report; `None` without any token.
    pub fn report(&self, protocol: &'static str) -> Option<KldReport> {
        let n = self.stats.len();
        if n == 0 {
            return None;
        }
        let nf = n as f64;
        let sum = |f: &dyn Fn(&TokenStat) -> f64| self.stats.iter().map(f).sum::<f64>();
        let kld_mean = sum(&|s| s.kld) / nf;
        let kld2 = sum(&|s| s.kld * s.kld) / nf;
        let var = kld2 - kld_mean * kld_mean;
        let kld_mean_stderr = if var > 0.0 && n > 10 {
            (var / (nf - 1.0)).sqrt()
        } else {
            0.0
        };
        // llama.cpp keeps the per-token KLD as f32 for its percentiles
        let mut k: Vec<f32> = self.stats.iter().map(|s| s.kld as f32).collect();
        k.sort_by(f32::total_cmp);
        let kld_median = if n % 2 == 0 {
            (0.5 * (k[n / 2] + k[n / 2 - 1])) as f64
        } else {
            k[n / 2] as f64
        };
        let nll = sum(&|s| s.nll) / nf;
        let nll_base = sum(&|s| s.nll_base) / nf;
        let rms = |f: &dyn Fn(&TokenStat) -> f64| (sum(&|s| f(s) * f(s)) / nf).sqrt();
        let max_abs = |f: &dyn Fn(&TokenStat) -> f64| {
            self.stats.iter().map(|s| f(s).abs()).fold(0.0, f64::max)
        };
        Some(KldReport {
            protocol,
            tokens: n,
            kld_mean,
            kld_mean_stderr,
            kld_median,
            kld_p99: percentile(&k, 0.99),
            kld_max: *k.last().unwrap() as f64,
            top1_agreement: self.stats.iter().filter(|s| s.same_top).count() as f64 / nf,
            delta_p_rms: rms(&|s| s.p_diff),
            delta_p_max: max_abs(&|s| s.p_diff),
            delta_p_top_rms: rms(&|s| s.p_diff_top),
            delta_p_top_max: max_abs(&|s| s.p_diff_top),
            ppl_ratio: (nll - nll_base).exp(),
            perplexity: nll.exp(),
            perplexity_reference: nll_base.exp(),
        })
    }
}

/// Compares `rows` rows of compressed logits with stored reference rows, in parallel, in order.
pub fn compare_rows_quantized(
    logits: &[f32],
    base: &[u16],
    next: &[u32],
    vocab: usize,
) -> Vec<TokenStat> {
    let nv = row_len(vocab);
    logits
        .par_chunks_exact(vocab)
        .zip(base.par_chunks_exact(nv))
        .zip(next.par_iter())
        .map(|((l, b), &t)| compare_quantized(l, b, t as usize))
        .collect()
}

/// Stores `rows` reference logit rows (llama.cpp's form), in parallel; returns their NLLs.
pub fn quantize_rows(logits: &[f32], next: &[u32], vocab: usize, out: &mut [u16]) -> Vec<f64> {
    let nv = row_len(vocab);
    logits
        .par_chunks_exact(vocab)
        .zip(out.par_chunks_exact_mut(nv))
        .zip(next.par_iter())
        .map(|((l, o), &t)| quantize_log_probs(l, t as usize, o))
        .collect()
}

/// The chunks llama.cpp's protocol scores: whole chunks of `n_ctx` tokens out of `n_tokens`, at
/// most `max_chunks`; an error for a context under 4 tokens or a text shorter than one chunk.
pub fn llama_cpp_chunks(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> Result<usize> {
    if n_ctx < 4 {
        bail!("context of {n_ctx} tokens is too short");
    }
    let n_chunk = (n_tokens / n_ctx).min(max_chunks.unwrap_or(usize::MAX));
    if n_chunk == 0 {
        bail!("{n_tokens} tokens: fewer than one chunk of {n_ctx}");
    }
    Ok(n_chunk)
}

/// The tokens of chunks `chunks` as llama.cpp evaluates them: each chunk's first token replaced
/// by `bos` where the tokenizer adds BOS.
pub fn llama_cpp_chunk_tokens(
    ids: &[u32],
    n_ctx: usize,
    chunks: std::ops::Range<usize>,
    bos: Option<u32>,
) -> Vec<u32> {
    let mut toks = ids[chunks.start * n_ctx..chunks.end * n_ctx].to_vec();
    if let Some(b) = bos {
        toks.iter_mut().step_by(n_ctx).for_each(|t| *t = b);
    }
    toks
}

/// Where the reference distribution of [`kld_llama_cpp`] comes from.
pub enum Base<'a, 'm> {
    /// The reference model, run in the same pass.
    Model(&'a Streamed<'m>),
    /// A saved log-probabilities file (its tokens are the ones evaluated).
    File(&'a mut LogitsReader),
}

/// What [`kld_llama_cpp`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct LlamaCppKld {
    pub chunks: usize,
    pub n_ctx: usize,
    /// The reference's perplexity over the scored tokens (from its stored log-probabilities when
    /// read from a file; its own logits otherwise).
    pub reference_perplexity: f64,
    /// The comparison, when a model was compared.
    pub kld: Option<KldReport>,
}

/// llama.cpp's `--kl-divergence` protocol (see the module docs) over the first `max_chunks`
/// chunks of `n_ctx` tokens of `ids` (or of the file's tokens), comparing `model` with `base`;
/// with `save`, the reference's stored rows are also written (llama.cpp's
/// `--kl-divergence-base`); `model` may then be `None`. `bos` replaces each chunk's first token.
/// One decoder layer of each model is in memory at a time; chunks go in passes of at most
/// `budget_bytes` of hidden states per model. `progress(done, total)` counts layers.
#[allow(clippy::too_many_arguments)]
pub fn kld_llama_cpp(
    model: Option<&Streamed>,
    mut base: Base,
    ids: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    budget_bytes: usize,
    mut save: Option<&mut LogitsWriter>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LlamaCppKld> {
    let (ids, n_ctx): (Vec<u32>, usize) = match &base {
        Base::File(f) => (f.tokens.clone(), f.n_ctx),
        Base::Model(_) => (ids.to_vec(), n_ctx),
    };
    let n_chunk = llama_cpp_chunks(ids.len(), n_ctx, max_chunks)?;
    let cfgs: Vec<_> = model
        .iter()
        .map(|m| m.config)
        .chain(match &base {
            Base::Model(b) => Some(b.config),
            Base::File(_) => None,
        })
        .collect();
    let vocab = match &base {
        Base::File(f) => f.n_vocab,
        Base::Model(b) => b.config.vocab_size,
    };
    if let Some(m) = model {
        if m.config.vocab_size != vocab {
            bail!(
                "the model's vocabulary has {} tokens, the reference's {vocab}: a KL divergence needs the same vocabulary",
                m.config.vocab_size
            );
        }
    }
    let per = cfgs
        .iter()
        .map(|c| windows_per_pass(c, n_ctx, budget_bytes))
        .min()
        .unwrap_or(n_chunk)
        .min(n_chunk);
    let passes = n_chunk.div_ceil(per);
    let layers: usize = cfgs.iter().map(|c| c.num_layers).sum::<usize>().max(1);
    let first = n_ctx / 2;
    let (rows, nv) = (rows_per_chunk(n_ctx), row_len(vocab));
    let mut acc = KldAccum::default();
    let (mut nll_base, mut n_base) = (0f64, 0usize);
    let mut stored = Vec::new();
    for p in 0..passes {
        let (c0, c1) = (p * per, ((p + 1) * per).min(n_chunk));
        let toks = llama_cpp_chunk_tokens(&ids, n_ctx, c0..c1, bos);
        let mut done_layers = p * layers;
        let mut run = |m: &Streamed| -> Result<Vec<f32>> {
            let base_done = done_layers;
            let h = m.hidden_states(&toks, c1 - c0, n_ctx, 1, &mut |d, _| {
                progress(base_done + d, passes * layers)
            })?;
            done_layers += m.config.num_layers;
            Ok(h)
        };
        let ref_hidden = match &base {
            Base::Model(b) => Some(run(b)?),
            Base::File(_) => None,
        };
        let hidden = model.map(&mut run).transpose()?;
        let ref_head = match &base {
            Base::Model(b) => Some(b.head()?),
            Base::File(_) => None,
        };
        let head = model.map(|m| m.head()).transpose()?;
        for c in 0..c1 - c0 {
            let toks = &toks[c * n_ctx..(c + 1) * n_ctx];
            // the reference's stored rows for positions first..n_ctx-1
            match (&mut base, &ref_hidden, &ref_head) {
                (Base::File(f), _, _) => f.next_chunk(&mut stored)?,
                (Base::Model(b), Some(x), Some(hd)) => {
                    let h = b.config.hidden_size;
                    stored.resize(rows * nv, 0);
                    for r0 in (first..n_ctx - 1).step_by(64) {
                        let r1 = (r0 + 64).min(n_ctx - 1);
                        let at = c * n_ctx;
                        let l = hd.logits(&x[(at + r0) * h..(at + r1) * h], r1 - r0);
                        let nll = quantize_rows(
                            &l,
                            &toks[r0 + 1..r1 + 1],
                            vocab,
                            &mut stored[(r0 - first) * nv..(r1 - first) * nv],
                        );
                        nll_base += nll.iter().sum::<f64>();
                        n_base += nll.len();
                    }
                }
                _ => unreachable!(),
            }
            if let Some(w) = save.as_deref_mut() {
                w.rows(&stored)?;
            }
            if let (Some(m), Some(x), Some(hd)) = (model, &hidden, &head) {
                let h = m.config.hidden_size;
                for r0 in (first..n_ctx - 1).step_by(64) {
                    let r1 = (r0 + 64).min(n_ctx - 1);
                    let at = c * n_ctx;
                    let l = hd.logits(&x[(at + r0) * h..(at + r1) * h], r1 - r0);
                    acc.extend(compare_rows_quantized(
                        &l,
                        &stored[(r0 - first) * nv..(r1 - first) * nv],
                        &toks[r0 + 1..r1 + 1],
                        vocab,
                    ));
                }
            }
        }
    }
    let kld = acc.report("llama.cpp");
    // from the reference's own logits when it ran, else from its stored rows
    let reference_perplexity = if n_base > 0 {
        (nll_base / n_base as f64).exp()
    } else {
        kld.as_ref().map_or(f64::NAN, |k| k.perplexity_reference)
    };
    Ok(LlamaCppKld {
        chunks: n_chunk,
        n_ctx,
        reference_perplexity,
        kld,
    })
}

/// The comparison over the GPTQ protocol's windows (every position but each window's last), with
/// the reference's exact distribution; both models stream layer by layer in passes of at most
/// `budget_bytes` of hidden states each (a multiple of `opts.batch` windows).
pub fn kld_gptq(
    model: &Streamed,
    reference: &Streamed,
    ids: &[u32],
    opts: &PplOptions,
    budget_bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<KldReport> {
    let (cfg, rcfg) = (model.config, reference.config);
    if cfg.vocab_size != rcfg.vocab_size {
        bail!(
            "the model's vocabulary has {} tokens, the reference's {}: a KL divergence needs the same vocabulary",
            cfg.vocab_size,
            rcfg.vocab_size
        );
    }
    let (all, windows) = gptq_windows(ids, opts)?;
    let (seq, batch) = (opts.seqlen, opts.batch.max(1));
    let per =
        windows_per_pass(cfg, seq, budget_bytes).min(windows_per_pass(rcfg, seq, budget_bytes));
    let per = (per / batch).max(1) * batch;
    let passes = windows.div_ceil(per);
    let layers = cfg.num_layers + rcfg.num_layers;
    let vocab = cfg.vocab_size;
    let mut acc = KldAccum::default();
    for p in 0..passes {
        let (w0, w1) = (p * per, ((p + 1) * per).min(windows));
        let toks = &all[w0 * seq..w1 * seq];
        let n = w1 - w0;
        let xr = reference.hidden_states(toks, n, seq, batch, &mut |d, _| {
            progress(p * layers + d, passes * layers)
        })?;
        let x = model.hidden_states(toks, n, seq, batch, &mut |d, _| {
            progress(p * layers + rcfg.num_layers + d, passes * layers)
        })?;
        let (hr, hq) = (reference.head()?, model.head()?);
        let (h, hrs) = (cfg.hidden_size, rcfg.hidden_size);
        const ROWS: usize = 128;
        let rows = n * seq;
        for r0 in (0..rows).step_by(ROWS) {
            let r1 = (r0 + ROWS).min(rows);
            let lq = hq.logits(&x[r0 * h..r1 * h], r1 - r0);
            let lp = hr.logits(&xr[r0 * hrs..r1 * hrs], r1 - r0);
            let st: Vec<Option<TokenStat>> = lq
                .par_chunks_exact(vocab)
                .zip(lp.par_chunks_exact(vocab))
                .enumerate()
                .map(|(i, (q, pr))| {
                    let r = r0 + i;
                    ((r + 1) % seq != 0).then(|| compare_exact(q, pr, toks[r + 1] as usize))
                })
                .collect();
            acc.extend(st.into_iter().flatten());
        }
    }
    Ok(acc.report("gptq").expect("at least one window"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(seed: u64, n: usize, v: usize, sharp: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n * v)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * sharp
            })
            .collect()
    }

    #[test]
    fn identical_models_agree_exactly() {
        let v = 101;
        let l = rows(1, 3, v, 12.0);
        let mut acc = KldAccum::default();
        for r in 0..3 {
            let row = &l[r * v..(r + 1) * v];
            let e = compare_exact(row, row, 7);
            assert!(e.kld.abs() < 1e-12 && e.same_top && e.p_diff == 0.0);
            let mut q = vec![0u16; row_len(v)];
            let nll = quantize_log_probs(row, 7, &mut q);
            assert!((nll - e.nll).abs() < 1e-5, "{nll} vs {}", e.nll);
            let s = compare_quantized(row, &q, 7);
            // the uint16 steps of the stored form (16 nats / 65535) bound the KLD
            assert!(s.kld.abs() < 1e-3, "{}", s.kld);
            assert!(s.same_top);
            acc.push(s);
        }
        let r = acc.report("llama.cpp").unwrap();
        assert!((r.ppl_ratio - 1.0).abs() < 1e-3);
    }

    #[test]
    fn quantized_and_exact_agree_and_detect_a_change() {
        let v = 257;
        let p = rows(2, 1, v, 10.0);
        let mut q = p.clone();
        // move mass: the compressed model prefers another token
        let top = (0..v).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        q[(top + 1) % v] = p[top] + 3.0;
        let mut stored = vec![0u16; row_len(v)];
        quantize_log_probs(&p, 3, &mut stored);
        let a = compare_quantized(&q, &stored, 3);
        let b = compare_exact(&q, &p, 3);
        assert!(!a.same_top && !b.same_top);
        assert!(b.kld > 0.1, "{}", b.kld);
        assert!(
            (a.kld - b.kld).abs() < 1e-2 * b.kld.max(1.0),
            "{} vs {}",
            a.kld,
            b.kld
        );
        assert!(
            b.p_diff_top < 0.0 && a.p_diff_top < 0.0,
            "the reference's top token lost probability"
        );
    }

    #[test]
    fn stored_row_layout_is_llama_cpp_s() {
        // nv = 2*((n_vocab + 1)/2) + 4
        assert_eq!(row_len(49152), 49156);
        assert_eq!(row_len(7), 12);
        let l = [0.0f32, 1.0, 2.0, -30.0, 2.0];
        let mut o = vec![0u16; row_len(5)];
        quantize_log_probs(&l, 0, &mut o);
        let (scale, min) = row_scale_min(&o);
        assert_eq!(scale, 16.0 / 65535.0);
        // the maximum is stored as 65535, a value below max - 16 as 0
        assert_eq!(o[4 + 2], 65535);
        assert_eq!(o[4 + 3], 0);
        assert!(min < -16.0);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
    }
}
