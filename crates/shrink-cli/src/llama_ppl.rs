//! Perplexity under llama.cpp's protocol (`tools/perplexity/perplexity.cpp`, `perplexity()`), so
//! that shrink's number can be compared like for like with `llama-perplexity -c N`:
//! the text is tokenized once (BOS first when the tokenizer adds one), cut into chunks of `n_ctx`
//! tokens from the start, the first token of each chunk is replaced by BOS when the tokenizer adds
//! BOS, and only the second half of each chunk is scored (positions `n_ctx/2 .. n_ctx-2` predict
//! the next token: `n_ctx - n_ctx/2 - 1` tokens per chunk). The GPTQ-protocol number over the same
//! chunks (every position scored) is reported next to it.
use anyhow::{bail, Result};
use shrink_model::tensor::log_sum_exp;
use shrink_model::Model;

#[derive(Debug, serde::Serialize)]
pub struct LlamaPpl {
    pub protocol: &'static str,
    pub perplexity: f64,
    pub chunks: usize,
    pub n_ctx: usize,
    pub scored_tokens: usize,
    pub all_positions_perplexity: f64,
    pub seconds: f64,
}

pub fn perplexity_llama_cpp(
    model: &mut Model,
    ids: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LlamaPpl> {
    let t0 = std::time::Instant::now();
    if n_ctx < 4 {
        bail!("context of {n_ctx} tokens is too short");
    }
    let mut n_chunk = ids.len() / n_ctx;
    if let Some(m) = max_chunks {
        n_chunk = n_chunk.min(m);
    }
    if n_chunk == 0 {
        bail!("{} tokens: fewer than one chunk of {n_ctx}", ids.len());
    }
    let first = n_ctx / 2;
    let (mut nll_half, mut nll_all) = (0f64, 0f64);
    let (mut n_half, mut n_all) = (0usize, 0usize);
    let h = model.config.hidden_size;
    for c in 0..n_chunk {
        let mut toks = ids[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            toks[0] = b;
        }
        let hidden = model.hidden_states(&toks, 1, n_ctx)?;
        // logits 64 positions at a time (a [n_ctx, vocab] block is large for big vocabularies)
        let vocab = model.config.vocab_size;
        for r0 in (0..n_ctx - 1).step_by(64) {
            let r1 = (r0 + 64).min(n_ctx - 1);
            let logits = model.logits(&hidden[r0 * h..r1 * h], r1 - r0);
            for j in r0..r1 {
                let row = &logits[(j - r0) * vocab..(j - r0 + 1) * vocab];
                let nll = log_sum_exp(row) - row[toks[j + 1] as usize] as f64;
                nll_all += nll;
                n_all += 1;
                if j >= first {
                    nll_half += nll;
                    n_half += 1;
                }
            }
        }
        progress(c + 1, n_chunk);
    }
    Ok(LlamaPpl {
        protocol: "llama.cpp",
        perplexity: (nll_half / n_half as f64).exp(),
        chunks: n_chunk,
        n_ctx,
        scored_tokens: n_half,
        all_positions_perplexity: (nll_all / n_all as f64).exp(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
