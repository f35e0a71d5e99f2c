//! `shrink profile`: a sensitivity profile of a model from one dense calibration pass.
use crate::progress;
use anyhow::{bail, Context, Result};
use serde_json::json;
use shrink_calib::{CalibSet, TextSource, DEFAULT_SEED, DEFAULT_SEQLEN};
use shrink_formats::write_json;
use shrink_methods::QuantizedWeight;
use shrink_model::{DecoderLayer, ModelSource};
use shrink_pipeline::{LayerReport, LayerSink};
use shrink_recipe::job::list;
use shrink_recipe::profile::{block_influence, layer_profiles, Candidate, Profiler};
use shrink_recipe::{build_method, Stage};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
#[command(after_long_help = "EXAMPLE:\n  \
shrink profile --model models/SmolLM2-135M-Instruct.Q4_1.gguf --calib data/calib.txt \\\n      \
--nsamples 64 --seqlen 512 --out out/smollm2.profile.json\n\n\
OUTPUT (JSON): per linear, the relative output error ||XW^T - XW'^T||^2 / ||XW^T||^2 of every\n\
candidate when that linear alone is compressed (on the dense model's inputs); per layer, OWL's\n\
outlier percentage, the 10th percentile of |W|*||X|| and its z-score across layers (the\n\
statistic of \"Adaptive Pruning by Agents\"), and the block importance 1 - cos(input, output).\n\
`costs` says what each number took: the pass itself, and the solves of each candidate.")]
pub struct ProfileArgs {
    /// A Hugging Face directory or a .gguf file.
    #[arg(long, short)]
    model: PathBuf,
    /// Calibration text: a UTF-8 file, a .jsonl file (see --calib-field) or a directory of .txt
    /// files (never the evaluation text).
    #[arg(long)]
    calib: PathBuf,
    #[arg(long)]
    calib_field: Option<String>,
    #[arg(long, default_value_t = 64)]
    nsamples: usize,
    #[arg(long, default_value_t = DEFAULT_SEQLEN)]
    seqlen: usize,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Where to write the JSON profile.
    #[arg(long, short)]
    out: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    /// Candidate sparsities, comma-separated (empty: none).
    #[arg(long, default_value = "0.3,0.4,0.5,0.6,0.7,0.8")]
    sparsities: String,
    /// The pruning method of the sparsity candidates: sparsegpt, wanda or magnitude.
    #[arg(long, default_value = "sparsegpt")]
    prune_method: String,
    /// Candidate bit widths, comma-separated (empty: none).
    #[arg(long, default_value = "2,3,4,8")]
    bits: String,
    /// The quantization method of the bit candidates: gptq or rtn.
    #[arg(long, default_value = "gptq")]
    quant_method: String,
    /// Group size of the bit candidates (omit for per channel).
    #[arg(long)]
    group_size: Option<usize>,
    /// OWL's outlier threshold M.
    #[arg(long, default_value_t = 5.0)]
    owl_m: f64,
}

/// Block importance from the hidden states each layer hands on.
struct Influence {
    prev: Vec<f32>,
    d: usize,
    out: Vec<f64>,
}

impl LayerSink for Influence {
    fn layer_done(
        &mut self,
        _: &DecoderLayer,
        _: &[(usize, QuantizedWeight)],
        _: &LayerReport,
        hidden: &[f32],
    ) -> Result<()> {
        self.out.push(block_influence(&self.prev, hidden, self.d));
        self.prev.clear();
        self.prev.extend_from_slice(hidden);
        Ok(())
    }
}

pub fn run(a: ProfileArgs, quiet: bool) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!("{}: exists (use --force to replace it)", a.out.display());
    }
    let mut candidates = Vec::new();
    for sp in list::<f64>(&a.sparsities, "--sparsities")? {
        let m = build_method(&Stage {
            method: Some(a.prune_method.clone()),
            sparsity: Some(sp),
            ..Stage::default()
        })
        .with_context(|| format!("--sparsities {sp}"))?;
        candidates.push(Candidate {
            label: m.name(),
            method: m,
            ggml: None,
        });
    }
    for b in list::<u32>(&a.bits, "--bits")? {
        let m = build_method(&Stage {
            method: Some(a.quant_method.clone()),
            bits: Some(b),
            group_size: a.group_size,
            ..Stage::default()
        })
        .with_context(|| format!("--bits {b}"))?;
        candidates.push(Candidate {
            label: m.name(),
            method: m,
            ggml: None,
        });
    }
    if candidates.is_empty() {
        bail!("no candidate settings: give --sparsities and/or --bits");
    }
    let src = ModelSource::open(&a.model)?;
    let source = TextSource::from_path(&a.calib, a.calib_field.as_deref())?;
    let calib = CalibSet::sample(&source, &src.tokenizer, a.nsamples, a.seqlen, a.seed)?;
    let profiler = Profiler::new(candidates, a.owl_m)?;
    let cfg = &src.config;
    let mut sink = Influence {
        prev: src.embed_ids(&calib.ids)?,
        d: cfg.hidden_size,
        out: Vec::new(),
    };
    if !quiet {
        eprintln!(
            "profiling {} ({} layers, {} candidates), calibration {} x {} tokens from {}",
            a.model.display(),
            cfg.num_layers,
            profiler.candidates.len(),
            calib.nsamples,
            calib.seqlen,
            calib.source
        );
    }
    let t = Instant::now();
    let bar = progress::bar(cfg.num_layers as u64, "layers", quiet);
    let report = shrink_pipeline::run(
        &src,
        &calib,
        &profiler,
        0..cfg.num_layers,
        &mut sink,
        &mut |d, _| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    let total = t.elapsed().as_secs_f64();
    let solves = profiler.solve_seconds();
    let solve_total: f64 = solves.values().sum();
    let layers = layer_profiles(&profiler.probe.layers(), &sink.out);
    let out = json!({
        "shrink_version": env!("CARGO_PKG_VERSION"),
        "model": a.model,
        "calibration": calib,
        "candidates": profiler.candidates.iter().map(|c| &c.label).collect::<Vec<_>>(),
        "costs": {
            "seconds_total": total,
            "pass_seconds": total - solve_total,
            "candidate_solve_seconds": solves,
            "pass_phases": report.phases,
            "notes": {
                "rel_error": "one solve per candidate and linear (candidate_solve_seconds) plus one error trace each",
                "outlier_pct, score_p10": "free: from the pass's input norms",
                "importance": "free: from the hidden states the pass computes anyway",
            },
            "peak_rss_mb": shrink_eval::peak_rss_mb(),
        },
        "layers": layers,
        "linears": profiler.linears(),
    });
    write_json(&a.out, &out)?;
    if !quiet {
        eprintln!(
            "wrote {} in {total:.1} s (pass {:.1} s, candidate solves {solve_total:.1} s)",
            a.out.display(),
            total - solve_total
        );
    }
    Ok(())
}
