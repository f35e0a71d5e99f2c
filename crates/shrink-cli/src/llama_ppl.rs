//! Perplexity under llama.cpp's protocol (`tools/perplexity/perplexity.cpp`, `perplexity()`), so
//! that shrink's number can be compared like for like with `llama-perplexity -c N`:
//! the text is tokenized once (BOS first when the tokenizer adds one), cut into chunks of `n_ctx`
//! tokens from the start, the first token of each chunk is replaced by BOS when the tokenizer adds
//! BOS, and only the second half of each chunk is scored (positions `n_ctx/2 .. n_ctx-2` predict
//! the next token: `n_ctx - n_ctx/2 - 1` tokens per chunk). The GPTQ-protocol number over the same
//! chunks (every position scored) is reported next to it.
use anyhow::Result;
use shrink_eval::kld::{llama_cpp_chunk_tokens, llama_cpp_chunks};
use shrink_model::stream::{windows_per_pass, Streamed};
use shrink_model::tensor::log_sum_exp;

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

/// llama.cpp's perplexity over the first `max_chunks` chunks of `n_ctx` tokens, with one decoder
/// layer in memory at a time: the chunks go through the model in passes of at most
/// `budget_bytes` of hidden states, one chunk per forward (llama.cpp's batch of one sequence).
/// `progress(done, total)` counts layers over all passes.
pub fn perplexity_llama_cpp(
    model: &Streamed,
    ids: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    budget_bytes: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LlamaPpl> {
    let t0 = std::time::Instant::now();
    let n_chunk = llama_cpp_chunks(ids.len(), n_ctx, max_chunks)?;
    let first = n_ctx / 2;
    let (mut nll_half, mut nll_all) = (0f64, 0f64);
    let (mut n_half, mut n_all) = (0usize, 0usize);
    let cfg = model.config;
    let h = cfg.hidden_size;
    let per = windows_per_pass(cfg, n_ctx, budget_bytes).min(n_chunk);
    let passes = n_chunk.div_ceil(per);
    let layers = cfg.num_layers;
    for p in 0..passes {
        let (c0, c1) = (p * per, ((p + 1) * per).min(n_chunk));
        let toks = llama_cpp_chunk_tokens(ids, n_ctx, c0..c1, bos);
        let hidden = model.hidden_states(&toks, c1 - c0, n_ctx, 1, &mut |d, _| {
            progress(p * layers + d, passes * layers)
        })?;
        let head = model.head()?;
        let vocab = head.vocab();
        for c in 0..c1 - c0 {
            let toks = &toks[c * n_ctx..(c + 1) * n_ctx];
            let hidden = &hidden[c * n_ctx * h..(c + 1) * n_ctx * h];
            // logits 64 positions at a time (a [n_ctx, vocab] block is large for big vocabularies)
            for r0 in (0..n_ctx - 1).step_by(64) {
                let r1 = (r0 + 64).min(n_ctx - 1);
                let logits = head.logits(&hidden[r0 * h..r1 * h], r1 - r0);
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
        }
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
