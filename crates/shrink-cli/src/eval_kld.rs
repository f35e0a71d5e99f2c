//! `shrink eval --reference/--save-logits/--reference-logits`: agreement with the original model.
use crate::{progress, read_text, EvalArgs};
use anyhow::{bail, Context, Result};
use serde_json::json;
use shrink_eval::kld::{kld_gptq, kld_llama_cpp, llama_cpp_chunks, Base, KldReport};
use shrink_eval::logits_file::{LogitsReader, LogitsWriter};
use shrink_eval::{peak_rss_mb, PplOptions};
use shrink_model::stream::Streamed;
use shrink_model::tokenizer::encode;
use shrink_model::ModelSource;
use std::path::Path;

/// The text's tokens for a protocol, checking that the reference's tokenizer gives the same.
fn tokens(
    src: &ModelSource,
    reference: Option<&ModelSource>,
    text_path: &Path,
    llama_cpp: bool,
) -> Result<(Vec<u32>, Option<u32>)> {
    let text = read_text(text_path)?;
    let tok = |s: &ModelSource| -> Result<(Vec<u32>, Option<u32>)> {
        if llama_cpp {
            Ok((encode(&s.tokenizer, &text)?, s.tokenizer.adds_bos()))
        } else {
            shrink_eval::eval_tokens(&s.tokenizer, &text)
        }
    };
    let (ids, bos) = tok(src).with_context(|| format!("{}: tokenizing", text_path.display()))?;
    if let Some(r) = reference {
        let (rids, rbos) =
            tok(r).with_context(|| format!("{}: tokenizing", text_path.display()))?;
        if rids != ids || rbos != bos {
            let at = ids.iter().zip(&rids).take_while(|(a, b)| a == b).count();
            bail!(
                "{} and {} tokenize {} differently (first difference at token {at}; BOS {:?} vs {:?}): a KL divergence compares distributions over the same tokens",
                src.path.display(),
                r.path.display(),
                text_path.display(),
                bos,
                rbos
            );
        }
    }
    Ok((ids, bos))
}

fn print_report(k: &KldReport, chunks_note: &str) {
    println!(
        "agreement with the reference over {} tokens ({} protocol{chunks_note}):",
        k.tokens, k.protocol
    );
    println!(
        "  KL divergence   mean {:.6} ± {:.6}, median {:.6}, 99% {:.6}, max {:.6}",
        k.kld_mean, k.kld_mean_stderr, k.kld_median, k.kld_p99, k.kld_max
    );
    println!("  same top token  {:.3}%", 100.0 * k.top1_agreement);
    println!(
        "  Δp next token   RMS {:.3}%, max |Δp| {:.3}%;  reference's top token: RMS {:.3}%, max {:.3}%",
        100.0 * k.delta_p_rms,
        100.0 * k.delta_p_max,
        100.0 * k.delta_p_top_rms,
        100.0 * k.delta_p_top_max
    );
    println!(
        "  perplexity      {:.4} vs reference {:.4} (ratio {:.6})",
        k.perplexity, k.perplexity_reference, k.ppl_ratio
    );
}

pub fn run(
    a: &EvalArgs,
    src: &ModelSource,
    act: Option<shrink_model::actquant::ActQuant>,
    quiet: bool,
) -> Result<()> {
    let llama_cpp = a.protocol == "llama.cpp";
    if !llama_cpp && (a.save_logits.is_some() || a.reference_logits.is_some()) {
        bail!("--save-logits and --reference-logits use llama.cpp's file and protocol: add --protocol llama.cpp");
    }
    if let Some(p) = &a.save_logits {
        shrink_formats::hf::OutputDir::refuse_existing(p, a.force)?;
    }
    let reference = a.reference.as_deref().map(ModelSource::open).transpose()?;
    let budget = a.stream_mb << 20;
    // activation fake-quantization is this model's alone: the reference stays exact
    let model = Streamed::new(&src.config, src.tensors.as_ref()).with_act_quant(act);
    let bar = progress::bar(0, "layers", quiet || a.json);
    let mut prog = |d: usize, t: usize| {
        bar.set_length(t as u64);
        bar.set_position(d as u64)
    };
    let mut out = json!({
        "model": a.model,
        "reference": a.reference,
        "reference_logits": a.reference_logits,
        "protocol": a.protocol,
        "act_quant": act.map(|q| q.name()),
    });
    let report = if llama_cpp {
        let rstream = reference
            .as_ref()
            .map(|r| Streamed::new(&r.config, r.tensors.as_ref()));
        let bos = src.tokenizer.adds_bos();
        let mut reader = a
            .reference_logits
            .as_deref()
            .map(LogitsReader::open)
            .transpose()?;
        let ids = match (&reader, &a.text) {
            (Some(_), _) => Vec::new(),
            (None, Some(t)) => tokens(src, reference.as_ref(), t, true)?.0,
            (None, None) => bail!("--text is needed"),
        };
        if let Some(r) = &reader {
            if r.n_vocab != src.config.vocab_size {
                bail!(
                    "{}: saved with a vocabulary of {} tokens; {} has {}",
                    a.reference_logits.as_ref().unwrap().display(),
                    r.n_vocab,
                    a.model.display(),
                    src.config.vocab_size
                );
            }
        }
        // What is compared with what: the model with the reference (model or file), or, with
        // only --save-logits, the model is the reference whose rows are written.
        let (compared, base) = match (&rstream, reader.as_mut()) {
            (_, Some(r)) => (Some(&model), Base::File(r)),
            (Some(r), None) => (Some(&model), Base::Model(r)),
            (None, None) => (None, Base::Model(&model)),
        };
        let n_ctx = match &base {
            Base::File(r) => r.n_ctx,
            Base::Model(_) => a.seqlen,
        };
        let chunks = a
            .chunks
            .or(a.max_tokens.map(|m| m / n_ctx.max(1)))
            .map(|c| c.max(1));
        let mut writer = match &a.save_logits {
            Some(p) => {
                let n = llama_cpp_chunks(ids.len(), n_ctx, chunks)?;
                let vocab = match &rstream {
                    Some(r) => r.config.vocab_size,
                    None => src.config.vocab_size,
                };
                Some(LogitsWriter::create(p, n_ctx, vocab, &ids[..n * n_ctx])?)
            }
            None => None,
        };
        let r = kld_llama_cpp(
            compared,
            base,
            &ids,
            n_ctx,
            chunks,
            bos,
            budget,
            writer.as_mut(),
            &mut prog,
        )?;
        if let (Some(w), Some(p)) = (writer, &a.save_logits) {
            w.finish()?;
            if !a.json {
                eprintln!("wrote {} ({} chunks of {})", p.display(), r.chunks, r.n_ctx);
            }
            out["saved_logits"] = json!(p);
        }
        out["chunks"] = json!(r.chunks);
        out["n_ctx"] = json!(r.n_ctx);
        out["reference_perplexity"] = json!(r.reference_perplexity);
        if r.kld.is_none() && !a.json {
            println!(
                "perplexity {:.4} (llama.cpp protocol, {} chunks of {})",
                r.reference_perplexity, r.chunks, r.n_ctx
            );
        }
        r.kld
    } else {
        let Some(r) = &reference else {
            bail!("--reference MODEL is needed");
        };
        let text = a.text.as_deref().context("--text is needed")?;
        let (ids, bos) = tokens(src, Some(r), text, false)?;
        let opts = PplOptions {
            seqlen: a.seqlen,
            max_tokens: a.max_tokens,
            batch: a.batch,
            bos,
        };
        let rs = Streamed::new(&r.config, r.tensors.as_ref());
        Some(kld_gptq(&model, &rs, &ids, &opts, budget, &mut prog)?)
    };
    bar.finish_and_clear();
    if let Some(k) = &report {
        if let (serde_json::Value::Object(o), serde_json::Value::Object(kv)) =
            (&mut out, serde_json::to_value(k)?)
        {
            o.extend(kv);
        }
        if !a.json {
            let note = out
                .get("chunks")
                .map(|c| format!(", {} chunks of {}", c, out["n_ctx"]))
                .unwrap_or_default();
            print_report(k, &note);
        }
    }
    out["peak_rss_mb"] = json!(peak_rss_mb());
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}
