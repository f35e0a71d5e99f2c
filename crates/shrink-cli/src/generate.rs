//! `shrink generate`: text from a model, so that a user can see a compressed model still talks.
//!
//! The prompt is tokenized as the model's tokenizer does (BOS first where it adds one), or, with
//! `--chat`, rendered through the model's own chat template (GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`'s `chat_template`) with minijinja, the maintained Jinja engine, and
//! Python's string methods from minijinja-contrib's pycompat, as transformers'
//! `apply_chat_template(add_generation_prompt=True)` renders it; that text's special tokens are
//! then tokenized as the tokens they name. Decoding runs on a KV cache
//! ([`shrink_model::generate`]): greedy by default (`--temperature 0`), or seeded sampling with
//! temperature, top-k and top-p, until a stop token (the model's EOS) or `--max-new-tokens`.
//! The text is printed as it is generated.
use anyhow::{bail, Context, Result};
use shrink_model::generate::{Generator, Sampler, Sampling};
use shrink_model::ModelSource;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A Hugging Face model directory, a .gguf file, or a `shrink compress` output.
    #[arg(long, short)]
    model: PathBuf,
    /// Plain text to continue (tokenized with the model's special tokens, e.g. BOS).
    #[arg(long, conflicts_with = "chat", required_unless_present = "chat")]
    prompt: Option<String>,
    /// A user message, rendered with the model's chat template (with the generation prompt).
    #[arg(long)]
    chat: Option<String>,
    /// A system message before the user's (--chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only among the most likely tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past the model's stop tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (prompt and generated token ids, text, timings) instead of
    /// streaming the text.
    #[arg(long)]
    json: bool,
}

/// The chat template rendered for one exchange, as transformers' `apply_chat_template` does
/// (`messages`, `add_generation_prompt`, the special tokens' strings; `raise_exception` raises).
pub fn render_chat(
    template: &str,
    system: Option<&str>,
    user: &str,
    specials: &[(String, String)],
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .context("the model's chat template does not parse")?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(minijinja::context! { role => "system", content => s });
    }
    messages.push(minijinja::context! { role => "user", content => user });
    let mut ctx: std::collections::BTreeMap<String, minijinja::Value> = specials
        .iter()
        .map(|(k, v)| (k.clone(), minijinja::Value::from(v.clone())))
        .collect();
    ctx.insert("messages".into(), minijinja::Value::from(messages));
    ctx.insert("add_generation_prompt".into(), true.into());
    env.get_template("chat")?
        .render(ctx)
        .context("the model's chat template failed to render")
}

pub fn run(a: GenerateArgs, quiet: bool) -> Result<()> {
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    sampling.check()?;
    let t_load = Instant::now();
    let src = ModelSource::open(&a.model)?;
    let tok = &src.tokenizer;
    let specials: Vec<(String, String)> = src
        .special_tokens
        .iter()
        .filter_map(|(k, id)| Some((k.clone(), tok.id_to_token(*id)?)))
        .collect();
    let (text, add_special) = match (&a.prompt, &a.chat) {
        (Some(p), None) => (p.clone(), true),
        (None, Some(c)) => {
            let tpl = src.chat_template.as_deref().with_context(|| {
                format!(
                    "{}: the model has no chat template (tokenizer.chat_template in GGUF, \
                     chat_template in tokenizer_config.json); use --prompt",
                    a.model.display()
                )
            })?;
            let r = render_chat(tpl, a.system.as_deref(), c, &specials)
                .with_context(|| a.model.display().to_string())?;
            // the template writes BOS itself where the model wants it
            (r, false)
        }
        _ => bail!("give --prompt TEXT or --chat MESSAGE"),
    };
    let prompt = tok.encode(&text, add_special)?;
    if prompt.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let stops: Vec<u32> = if a.ignore_eos {
        vec![]
    } else {
        let mut s: Vec<u32> = src
            .special_tokens
            .iter()
            .filter(|(k, _)| k == "eos_token")
            .map(|(_, id)| *id)
            .collect();
        s.extend(src.config.eos_token_id);
        s.sort();
        s.dedup();
        s
    };
    let mut model = src.load_all()?;
    let load_s = t_load.elapsed().as_secs_f64();
    let max_len = prompt.len() + a.max_new_tokens;
    if max_len > src.config.max_position_embeddings && !quiet {
        eprintln!(
            "warning: {max_len} tokens exceed the model's max_position_embeddings {}",
            src.config.max_position_embeddings
        );
    }
    let mut gen = Generator::new(&mut model, max_len);
    let mut sampler = Sampler::new(sampling);
    let t0 = Instant::now();
    let mut logits = gen.feed(&prompt)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut out: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let mut stdout = std::io::stdout();
    let mut stopped = None;
    loop {
        let next = sampler.next(&logits);
        if stops.contains(&next) {
            stopped = Some(next);
            break;
        }
        out.push(next);
        if !a.json {
            // print what the tokens so far decode to beyond what is printed (a character split
            // over tokens waits for its last byte)
            let s = tok.decode(&out, true)?;
            if let Some(new) = s.strip_prefix(printed.as_str()) {
                if !new.ends_with('\u{FFFD}') {
                    write!(stdout, "{new}")?;
                    stdout.flush()?;
                    printed = s;
                }
            }
        }
        if out.len() == a.max_new_tokens {
            break;
        }
        logits = gen.feed(&[next])?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let text_out = tok.decode(&out, true)?;
    let tps = if decode_s > 0.0 {
        out.len() as f64 / decode_s
    } else {
        f64::NAN
    };
    if a.json {
        let v = serde_json::json!({
            "model": a.model,
            "prompt_text": text,
            "prompt_ids": prompt,
            "ids": out,
            "text": text_out,
            "stopped_by": stopped,
            "sampling": {"temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p, "seed": a.seed},
            "seconds": {"load": load_s, "prefill": prefill_s, "decode": decode_s},
            "tokens_per_second": tps,
            "peak_rss_mb": shrink_eval::peak_rss_mb(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if let Some(rest) = text_out.strip_prefix(printed.as_str()) {
            write!(stdout, "{rest}")?;
        }
        writeln!(stdout)?;
        if !quiet {
            eprintln!(
                "{} prompt tokens ({prefill_s:.2} s), {} new tokens at {tps:.1} tokens/s{}; peak RSS {:.0} MB",
                prompt.len(),
                out.len(),
                match stopped {
                    Some(id) => format!(", stopped at {}", tok.id_to_token(id).unwrap_or_default()),
                    None => String::new(),
                },
                shrink_eval::peak_rss_mb().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
