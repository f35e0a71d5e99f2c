//! shrink: compress large language models after training, and prove the result.
mod bench;
mod eval_kld;
mod eval_tasks;
mod export;
mod generate;
mod llama_ppl;
mod profile;
mod progress;
mod study;
mod sweep;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use shrink_eval::{peak_rss_mb, perplexity_streamed, PplOptions};
use shrink_model::stream::Streamed;
use shrink_model::tokenizer::encode;
use shrink_model::{ModelConfig, ModelSource};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "shrink",
    version,
    about = "Compress large language models after training, and prove the result",
    long_about = "shrink loads a model the way you hold it - a Hugging Face directory (config.json, \
*.safetensors, tokenizer.json) or a llama.cpp GGUF file - and runs it on the CPU in f32, one decoder \
layer at a time. Supported architectures: Llama (incl. SmolLM), Mistral, Qwen2, Qwen3, Gemma 3 \
(text), Phi-3, and the Mixture-of-Experts Qwen3-MoE and Mixtral.\n\n\
Quick start (after scripts/fetch):\n  shrink eval --model models/SmolLM2-135M-Instruct.Q4_1.gguf --text data/eval.txt"
)]
struct Cli {
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compress a model: calibrate, then quantize layer by layer (RTN or GPTQ).
    ///
    /// Calibration windows are drawn from --calib with --seed; each decoder layer is run once on
    /// them, and the linears of each group ({q,k,v} -> {o} -> {gate,up} -> {down}; in a MoE layer the
    /// router's input, then each expert's {gate,up} and {down}) are compressed
    /// in turn, each group seeing the outputs of the already-compressed ones. Only one layer's
    /// weights, the calibration activations and one group's Hessian are in memory at a time.
    Compress(Box<shrink_recipe::job::CompressJob>),
    /// Perplexity of a model on a text (GPTQ protocol).
    ///
    /// The whole text is tokenized once (with the model's own tokenizer and its default special
    /// tokens), cut into non-overlapping windows of --seqlen tokens (a final partial window is
    /// dropped), and perplexity = exp(mean NLL over every predicted token). A model whose
    /// tokenizer adds BOS (Gemma, Llama 2; GGUF tokenizer.ggml.add_bos_token) gets BOS followed by
    /// --seqlen - 1 text tokens in every window, and those text tokens are scored. This is token
    /// perplexity, not the word perplexity some harnesses report.
    Eval(EvalArgs),
    /// Multiple-choice task accuracy (lm-evaluation-harness's log-likelihood protocol) on
    /// OLMES's requests: piqa, arc_easy, hellaswag, ... (scripts/fetch --tasks).
    ///
    /// Each choice is scored as the sum of the log-probabilities of its continuation's tokens
    /// given its context (context and continuation tokenized together and split after the
    /// context's own tokens, lm-eval's _encode_pair; BOS first when the tokenizer adds one). A
    /// document is right (acc) when its gold choice has the highest sum, and for acc_per_char
    /// when it has the highest sum per character of continuation. Standard errors are
    /// sqrt(p(1-p)/(n-1)), as lm-eval reports them. OLMES's unconditional copies (doc_id >=
    /// 1000000) are skipped.
    EvalTasks(Box<eval_tasks::EvalTasksArgs>),
    /// Generate text: a prompt continued, or a chat message answered through the model's chat
    /// template, with a KV cache; greedy by default, or seeded sampling (temperature, top-k,
    /// top-p); stops at the model's EOS. Streams the text (--json: token ids and timings).
    Generate(Box<generate::GenerateArgs>),
    /// Convert a GGUF file into a Hugging Face directory (f32 safetensors, config.json,
    /// tokenizer.json, tokenizer_config.json) that transformers loads unchanged.
    ///
    /// Quantized GGUF tensors are dequantized exactly; q/k rows are un-permuted back to the
    /// Hugging Face layout. The directory is written under a temporary name and renamed at the end.
    Convert(ConvertArgs),
    /// List a model file's tensors: name, type, shape, size and bits per weight.
    ///
    /// Packed quantized tensors (compressed-tensors `weight_packed`, GPTQ `qweight`) count the
    /// weights they stand for; their scales, zero points, shapes and group indices count as
    /// overhead of those weights (bits per weight includes them).
    Inspect(InspectArgs),
    /// Export a model for an inference engine: compressed-tensors (vLLM, transformers), GPTQ
    /// (AutoGPTQ, GPTQModel, exllama, vLLM) or GGUF (llama.cpp).
    Export(Box<export::ExportArgs>),
    /// Profile a model's sensitivity: per linear, the output error of candidate sparsities and
    /// bit widths when compressed alone; per layer, outlier statistics and block importance. One
    /// dense calibration pass plus the candidates' solves. Writes JSON.
    Profile(Box<profile::ProfileArgs>),
    /// Measure speed: this machine's f32 matmul rate, then eval throughput and the forward pass's
    /// GFLOP/s as a fraction of that rate, in the same run. Writes JSON.
    Bench(bench::BenchArgs),
    /// Run a grid of recipes × calibration sources × seeds (each cell a compress run evaluated
    /// against the original), resumable, and write results.jsonl and a report (HTML and
    /// Markdown with Pareto plots of size against perplexity, KL divergence and task accuracy).
    Sweep(Box<sweep::SweepArgs>),
    /// Ready-made sweeps: `shrink study calibration` (how much the result depends on the
    /// calibration data, with the seed noise).
    #[command(subcommand)]
    Study(study::Study),
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long, short)]
    model: PathBuf,
    /// Matmul precision of the linears: f32 (faer, the exact path; default) or bf16 (bf16
    /// inputs, f32 accumulation through oneMKL; f32 with a notice where MKL is missing).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    precision: String,
    /// Fake-quantize the input of every decoder linear (the MoE router excepted) before its
    /// matmul, with dynamic scales, as a W8A8 / FP8 / FP4 serving kernel does: int8 (per token,
    /// amax/127), fp8 (E4M3 per token), nvfp4 (E2M1 in groups of 16 with E4M3 scales), mxfp4
    /// (E2M1 in groups of 32 with E8M0 scales), or none. Default: what the model's recipe.toml
    /// records (a directory written by `shrink compress --scheme W8A8|FP8_DYNAMIC|NVFP4|MXFP4`),
    /// else none. With --reference only this model's activations are quantized.
    #[arg(long, value_name = "int8|fp8|nvfp4|mxfp4|none")]
    act_quant: Option<String>,
    /// UTF-8 text file to evaluate on (e.g. data/eval.txt from scripts/fetch). Not needed with
    /// --reference-logits, whose file holds the tokens.
    #[arg(long, short, required_unless_present = "reference_logits")]
    text: Option<PathBuf>,
    /// Compare with this original model (directory or .gguf): KL divergence of the model's
    /// next-token distribution from the reference's, its 99th percentile and maximum, top-1
    /// agreement, Δp (RMS and max) and the perplexity ratio. Both models run in the same pass, one
    /// layer at a time. With --protocol llama.cpp the figures are llama-perplexity
    /// --kl-divergence's.
    #[arg(long, value_name = "MODEL")]
    reference: Option<PathBuf>,
    /// Write the reference's log-probabilities (the --reference model's, else this model's) in
    /// llama.cpp's --kl-divergence-base format, so later comparisons need not run it
    /// (--protocol llama.cpp).
    #[arg(long, value_name = "FILE")]
    save_logits: Option<PathBuf>,
    /// Compare with the log-probabilities saved in this file (by --save-logits or by
    /// `llama-perplexity --kl-divergence-base`) instead of running a reference; its tokens and
    /// context length are used (--protocol llama.cpp).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["reference", "save_logits"])]
    reference_logits: Option<PathBuf>,
    /// With --protocol llama.cpp: use at most N chunks of --seqlen tokens (llama-perplexity's
    /// --chunks).
    #[arg(long)]
    chunks: Option<usize>,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    seqlen: usize,
    /// Use only the first N tokens of the text.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Windows per forward batch (memory grows with it).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// The model runs one decoder layer at a time over all windows (only that layer's weights
    /// are in memory, dequantized); the windows' hidden states are kept, in passes of at most
    /// this many MiB (a 1.5B model's 100 windows of 512 tokens: 300 MiB).
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    stream_mb: usize,
    /// Print one JSON object (perplexity, tokens, seqlen, seconds, tokens_per_second, peak_rss_mb, ...).
    #[arg(long)]
    json: bool,
    /// Also write the logits of the first window (or of the whole text if shorter) to this
    /// safetensors file, as tensor `logits` [T, vocab] (for comparison with a reference).
    #[arg(long)]
    logits_out: Option<PathBuf>,
    /// Replace an existing --logits-out file.
    #[arg(long)]
    force: bool,
    /// gptq (every position of non-overlapping windows) or llama.cpp (llama-perplexity's: only
    /// the second half of each --seqlen chunk is scored, BOS first when the tokenizer adds one;
    /// --max-tokens limits the chunks). Compare llama.cpp with `llama-perplexity -c SEQLEN`.
    #[arg(long, default_value = "gptq")]
    protocol: String,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// The .gguf file to convert.
    model: PathBuf,
    /// Output directory (must not exist unless --force).
    #[arg(long, short)]
    out: PathBuf,
    /// Replace an existing output directory (only once the new one is complete).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct InspectArgs {
    /// A .gguf or .safetensors file, or a Hugging Face model directory.
    path: PathBuf,
}

pub use shrink_eval::read_text;

fn main() {
    let cli = Cli::parse();
    let quiet = cli.quiet;
    let r = match cli.cmd {
        Cmd::Compress(a) => shrink_recipe::job::run(&a, &progress::Term { quiet }).map(|_| ()),
        Cmd::Eval(a) => cmd_eval(a, quiet),
        Cmd::EvalTasks(a) => eval_tasks::run(*a, quiet),
        Cmd::Generate(a) => generate::run(*a, quiet),
        Cmd::Convert(a) => cmd_convert(a, quiet),
        Cmd::Inspect(a) => cmd_inspect(a),
        Cmd::Export(a) => export::run(*a, quiet),
        Cmd::Bench(a) => bench::run(a, quiet),
        Cmd::Profile(a) => profile::run(*a, quiet),
        Cmd::Sweep(a) => sweep::run(*a, quiet),
        Cmd::Study(s) => study::run(s, quiet),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The activation fake-quantization of `shrink eval`: `--act-quant` when given (`none`: off), else
/// what the model directory's recipe.toml records (its scheme's activations), said on stderr.
fn eval_act_quant(a: &EvalArgs, quiet: bool) -> Result<Option<shrink_model::actquant::ActQuant>> {
    use shrink_model::actquant::ActQuant;
    match a.act_quant.as_deref() {
        Some(q) if q.eq_ignore_ascii_case("none") => return Ok(None),
        Some(q) => return Ok(Some(ActQuant::parse(q).context("--act-quant")?)),
        None => {}
    }
    let path = a.model.join("recipe.toml");
    if !a.model.is_dir() || !path.is_file() {
        return Ok(None);
    }
    let Some(rec) = shrink_recipe::Recipe::load(&path)?.recorded_act()? else {
        return Ok(None);
    };
    let say = !quiet && !a.json;
    match rec.eval {
        Some(q) => {
            if say {
                eprintln!(
                    "activations fake-quantized as {} ({}: {}), as {} records; --act-quant none for weights only",
                    q.name(),
                    rec.scheme,
                    rec.act,
                    path.display()
                );
            }
            Ok(Some(q))
        }
        None => {
            if say {
                eprintln!(
                    "note: {} records {} activations ({}), which eval does not reproduce: \
                     weights only (or give --act-quant)",
                    path.display(),
                    rec.scheme,
                    rec.act
                );
            }
            Ok(None)
        }
    }
}

fn cmd_eval(a: EvalArgs, quiet: bool) -> Result<()> {
    shrink_model::gemm::set_bf16(a.precision == "bf16");
    let act = eval_act_quant(&a, quiet)?;
    if act.is_some() && a.save_logits.is_some() && a.reference.is_none() {
        bail!(
            "--save-logits without --reference saves this model's logits as a reference: \
             not with activation quantization (--act-quant none, or save the original's)"
        );
    }
    let t0 = Instant::now();
    if let Some(path) = &a.logits_out {
        shrink_formats::hf::OutputDir::refuse_existing(path, a.force)?;
    }
    let src = ModelSource::open(&a.model)?;
    let llama_cpp = a.protocol == "llama.cpp";
    if !llama_cpp && a.protocol != "gptq" {
        bail!("unknown protocol '{}' (use gptq or llama.cpp)", a.protocol);
    }
    if a.reference.is_some() || a.save_logits.is_some() || a.reference_logits.is_some() {
        return eval_kld::run(&a, &src, act, quiet);
    }
    let text_path = a.text.as_deref().expect("clap requires --text");
    let text = read_text(text_path)?;
    // llama.cpp's protocol tokenizes with the default special tokens and sets BOS per chunk
    // itself; the GPTQ protocol puts BOS before every window of a model that adds BOS.
    let (ids, bos) = if llama_cpp {
        (encode(&src.tokenizer, &text), src.tokenizer.adds_bos())
    } else {
        match shrink_eval::eval_tokens(&src.tokenizer, &text) {
            Ok((ids, bos)) => (Ok(ids), bos),
            Err(e) => (Err(e), None),
        }
    };
    let ids = ids.with_context(|| format!("{}: tokenizing", text_path.display()))?;
    let model = Streamed::new(&src.config, src.tensors.as_ref()).with_act_quant(act);
    let budget = a.stream_mb << 20;
    let load_seconds = t0.elapsed().as_secs_f64();
    if let Some(path) = &a.logits_out {
        // the first window as evaluated (BOS first for a BOS model under the GPTQ protocol)
        let first: Vec<u32> = match (llama_cpp, bos) {
            (false, Some(b)) => std::iter::once(b).chain(ids.iter().copied()).collect(),
            _ => ids.clone(),
        };
        let ids = first;
        let t = ids.len().min(a.seqlen);
        let hidden = model.hidden_states(&ids[..t], 1, t, 1, &mut |_, _| {})?;
        let logits = model.head()?.logits(&hidden, t);
        let vocab = logits.len() / t;
        shrink_formats::write_safetensors(
            path,
            &[("logits".into(), vec![t, vocab])],
            &Default::default(),
            &mut |_| Ok(shrink_model::Tensor::new(vec![t, vocab], logits.clone())),
        )?;
        if !a.json {
            eprintln!("wrote logits [{t}, {vocab}] to {}", path.display());
        }
        if ids.len() < a.seqlen {
            if a.json {
                println!(
                    "{}",
                    json!({"logits_out": path, "tokens": t, "input_ids": &ids[..t]})
                );
            }
            return Ok(());
        }
    }
    if llama_cpp {
        let chunks = a.chunks.or(a.max_tokens.map(|m| m / a.seqlen.max(1)));
        let bar = progress::bar(0, "layers", quiet || a.json);
        let r = llama_ppl::perplexity_llama_cpp(
            &model,
            &ids,
            a.seqlen,
            chunks,
            bos,
            budget,
            &mut |d, t| {
                bar.set_length(t as u64);
                bar.set_position(d as u64)
            },
        )?;
        bar.finish_and_clear();
        if a.json {
            let mut v = serde_json::to_value(&r)?;
            v["model"] = json!(a.model);
            v["text"] = json!(a.text);
            println!("{}", serde_json::to_string(&v)?);
        } else {
            println!(
                "perplexity {:.4} (llama.cpp protocol: second half of {} chunks of {}, {} tokens scored; all positions: {:.4}); {:.1} s",
                r.perplexity, r.chunks, r.n_ctx, r.scored_tokens, r.all_positions_perplexity, r.seconds
            );
        }
        return Ok(());
    }
    let opts = PplOptions {
        seqlen: a.seqlen,
        max_tokens: a.max_tokens,
        batch: a.batch,
        bos,
    };
    let bar = progress::bar(0, "layers", quiet || a.json);
    let r = perplexity_streamed(&model, &ids, &opts, budget, &mut |d, t| {
        bar.set_length(t as u64);
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    let peak = peak_rss_mb();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        let o = v.as_object_mut().unwrap();
        o.insert("peak_rss_mb".into(), json!(peak));
        o.insert("load_seconds".into(), json!(load_seconds));
        o.insert("model".into(), json!(a.model));
        o.insert("text".into(), json!(a.text));
        o.insert("act_quant".into(), json!(act.map(|q| q.name())));
        println!("{}", serde_json::to_string(&v)?);
    } else {
        let bos_note = if r.bos.is_some() {
            " (BOS first, then text)"
        } else {
            ""
        };
        println!(
            "perplexity {:.4} over {} windows of {} tokens{bos_note} ({} tokens in the text); {:.1} s, {:.0} tokens/s; peak RSS {:.0} MB",
            r.perplexity, r.windows, r.seqlen, r.text_tokens, r.seconds, r.tokens_per_second, peak.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

fn cmd_convert(a: ConvertArgs, quiet: bool) -> Result<()> {
    let src = ModelSource::open(&a.model)?;
    if !src.is_gguf {
        bail!(
            "{}: convert reads a GGUF file; this is already a Hugging Face directory",
            a.model.display()
        );
    }
    let bar = progress::bar(0, "tensors", quiet);
    let out = shrink_formats::write_hf_dir(&src, &a.out, a.force, &mut |d, t| {
        bar.set_length(t as u64);
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The family, sizes and per-layer calibration groups of a model's config (from the table).
fn print_architecture(cfg: &ModelConfig) {
    println!(
        "architecture: {} ({} layers, hidden {}, {} heads / {} kv heads x {}, vocab {})",
        cfg.arch.name,
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    let mut seen = Vec::new();
    for i in 0..cfg.num_layers {
        let lay = shrink_model::arch::layer_layout(cfg, i);
        let groups: Vec<String> = (0..lay.groups.len())
            .filter(|&g| lay.groups[g].expert.unwrap_or(0) == 0)
            .map(|g| lay.group_label(g).replace("experts.0.", "experts.E."))
            .collect();
        let line = groups.join(" -> ");
        if !seen.contains(&line) {
            println!("  layer {i}: groups {line}");
            seen.push(line);
        }
    }
    if let Some(m) = &cfg.moe {
        println!(
            "  experts: {} per MoE layer, top-{} ({}renormalised), expert intermediate {}, dense layers {:?}",
            m.num_experts,
            m.top_k,
            if m.norm_topk_prob { "" } else { "not " },
            m.expert_intermediate,
            m.dense_layers
        );
    }
    if let Some(w) = cfg.sliding_window {
        let n = (0..cfg.num_layers).filter(|&i| cfg.is_sliding(i)).count();
        println!(
            "  sliding window {w} on {n} of {} layers{}",
            cfg.num_layers,
            cfg.rope_local_theta
                .map(|t| format!(" (local rope base {t})"))
                .unwrap_or_default()
        );
    }
    if let Some(shrink_model::RopeScaling::LongRope {
        original_max_position_embeddings: orig,
        attention_factor,
        ..
    }) = &cfg.rope_scaling
    {
        println!(
            "  rope: LongRoPE, short factors up to {orig} tokens a sequence, long factors above; cos/sin x {attention_factor}"
        );
    }
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let p = &a.path;
    let mut rows: Vec<(String, String, Vec<usize>, u64)> = Vec::new();
    // Packed quantized tensors: name -> the number of weights they stand for.
    let mut packed_logical = std::collections::HashMap::new();
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF";
    if p.is_file() && is_gguf {
        let f = shrink_model::gguf::GgufFile::open(p)?;
        println!(
            "{}: GGUF v{}, {} tensors, {} metadata keys",
            p.display(),
            f.version(),
            f.tensors().len(),
            f.metadata().len()
        );
        for (k, v) in f.metadata() {
            let s = match v {
                shrink_model::gguf::GgufValue::Array(a) => format!("[{} values]", a.len()),
                shrink_model::gguf::GgufValue::String(s) if s.len() > 80 => {
                    format!("{:?}...", &s.chars().take(80).collect::<String>())
                }
                v => format!("{v:?}"),
            };
            println!("  {k} = {s}");
        }
        if let Ok(cfg) = shrink_model::source::config_from_gguf(&f) {
            print_architecture(&cfg);
        }
        for t in f.tensors() {
            rows.push((
                t.name.clone(),
                t.dtype.name().to_string(),
                t.shape_row_major(),
                t.n_bytes(),
            ));
        }
    } else {
        let st = shrink_model::source::SafetensorsSource::open(p)?;
        println!("{}: safetensors", shrink_model::TensorSource::describe(&st));
        if let Ok(cfg) = ModelConfig::from_hf_file(&p.join("config.json")) {
            print_architecture(&cfg);
        }
        for name in st.names() {
            let (dt, shape) = st.info(name).unwrap();
            let n: usize = shape.iter().product();
            rows.push((
                name.to_string(),
                format!("{dt:?}"),
                shape,
                (n * dt.bitsize() / 8) as u64,
            ));
        }
        packed_logical = packed_weights(&st);
    }
    let mut total_bytes = 0u64;
    let mut total_n = 0u64;
    println!(
        "{:<48} {:>6} {:>16} {:>12} {:>7}",
        "tensor", "type", "shape", "bytes", "bits/w"
    );
    let overhead = |name: &str| {
        !packed_logical.is_empty()
            && [
                ".weight_scale",
                ".weight_zero_point",
                ".weight_shape",
                ".weight_g_idx",
                ".qzeros",
                ".scales",
                ".g_idx",
            ]
            .iter()
            .any(|s| name.ends_with(s))
    };
    for (name, ty, shape, bytes) in &rows {
        let n: usize = match packed_logical.get(name) {
            Some(&n) => n,
            None if overhead(name) => 0,
            None => shape.iter().product(),
        };
        total_bytes += bytes;
        total_n += n as u64;
        let bpw = if n == 0 {
            "-".to_string()
        } else {
            format!("{:.3}", *bytes as f64 * 8.0 / n as f64)
        };
        println!(
            "{:<48} {:>6} {:>16} {:>12} {:>7}",
            name,
            ty,
            format!("{shape:?}"),
            bytes,
            bpw
        );
    }
    if !packed_logical.is_empty() {
        let q_bytes: u64 = rows
            .iter()
            .filter(|r| packed_logical.contains_key(&r.0) || overhead(&r.0))
            .map(|r| r.3)
            .sum();
        let q_n: usize = packed_logical.values().sum();
        println!(
            "quantized linears: {} tensors, {} weights, {} bytes with scales/zero points/group index: {:.3} bits per weight",
            packed_logical.len(),
            q_n,
            q_bytes,
            q_bytes as f64 * 8.0 / q_n.max(1) as f64
        );
    }
    println!(
        "{} tensors, {} parameters, {} bytes of tensor data, {:.3} bits per weight",
        rows.len(),
        total_n,
        total_bytes,
        total_bytes as f64 * 8.0 / total_n.max(1) as f64,
    );
    Ok(())
}

/// Packed quantized weights of a checkpoint and how many weights each stands for:
/// compressed-tensors `weight_packed` (its `weight_shape`) and GPTQ `qweight` (`g_idx` length x
/// output columns).
fn packed_weights(
    st: &shrink_model::source::SafetensorsSource,
) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for name in st.names() {
        if let Some(base) = name.strip_suffix(".weight_packed") {
            if let Some((_, _, b)) = st.raw(&format!("{base}.weight_shape")) {
                let n: i64 = match b.len() {
                    16 => b
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .product(),
                    8 => b
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                        .product(),
                    _ => 0,
                };
                m.insert(name.to_string(), n.max(0) as usize);
            }
        } else if let Some(base) = name.strip_suffix(".qweight") {
            if let (Some((_, g)), Some((_, q))) = (st.info(&format!("{base}.g_idx")), st.info(name))
            {
                m.insert(
                    name.to_string(),
                    g.first().copied().unwrap_or(0) * q.get(1).copied().unwrap_or(0),
                );
            }
        }
    }
    m
}
