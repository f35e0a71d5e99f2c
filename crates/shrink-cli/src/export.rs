//! `shrink export`: write a compressed model in a format inference engines load
//! (compressed-tensors, GPTQ, GGUF).
use crate::progress;
use anyhow::{bail, Context, Result};
use shrink_calib::{CalibSet, TextSource};
use shrink_formats::compressed_tensors::{
    write_compressed_tensors, write_sparse_dense, CtOptions, ScaleDType,
};
use shrink_formats::gguf_export::{
    compute_imatrix, parse_type, write_gguf, GgufExport, Imatrix, TypePlan,
};
use shrink_formats::gptq_format::{write_gptq, GptqFormat, GptqOptions};
use shrink_formats::quantized::QuantizedDir;
use shrink_model::ggml_mix::{Mix, MixFlags};
use shrink_model::ModelSource;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(after_long_help = "EXAMPLES:\n  \
shrink export --model out/gptq-w4g64 --format compressed-tensors --out out/ct-w4g64\n  \
shrink export --model out/gptq-w4g64 --format gptq --out out/gptq-ckpt\n  \
shrink export --model models/SmolLM2-135M-Instruct.Q4_1.gguf --format gguf --type Q4_K \\\n      \
--imatrix-calib data/calib.txt --out out/smollm2-q4k-imat.gguf\n  \
shrink export --model out/gptq-w4g32 --format gguf --type Q4_1 --out out/gptq-w4g32.gguf   (codes carried over)\n\n\
INPUT: compressed-tensors and gptq read a `shrink compress` output directory (quantized.safetensors\n\
holds the integer codes). compressed-tensors also takes a pruned dense model (written dense, with a\n\
sparsity_config). gguf reads any model (Hugging Face directory or GGUF) and quantizes its weights;\n\
from a `shrink compress` directory whose codes fit the chosen block type exactly (4-bit asymmetric\n\
groups of 32 -> Q4_1, 4-bit symmetric -> Q4_0, 8-bit symmetric -> Q8_0) it carries the codes over.\n\n\
Every output is written under a temporary name and renamed when complete.")]
pub struct ExportArgs {
    /// The model: a `shrink compress` directory, a Hugging Face directory or a .gguf file.
    #[arg(long, short)]
    model: PathBuf,
    /// compressed-tensors | gptq | gguf
    #[arg(long)]
    format: String,
    /// Output directory (compressed-tensors, gptq) or .gguf file.
    #[arg(long, short)]
    out: PathBuf,
    /// Replace an existing output (only once the new one is complete).
    #[arg(long)]
    force: bool,
    /// GGUF: type of the decoder linears (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K,
    /// Q6_K, IQ4_NL, IQ4_XS, IQ3_S, IQ3_XXS, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_M, IQ1_S (IQ2_XS,
    /// IQ2_XXS and IQ1_S need an importance matrix), MXFP4, the ternary TQ1_0 and TQ2_0, F16,
    /// F32). Rows that are not whole blocks fall back as in llama-quantize (Q4_K -> Q5_0,
    /// Q5_K -> Q5_1, Q6_K -> Q8_0, the i-quants -> IQ4_NL). Default: the type the codes fit (from
    /// a compress directory with groups of 32), else Q8_0.
    ///
    /// A llama-quantize file type (Q4_K_M, Q4_K_S, Q3_K_M, Q3_K_S, Q3_K_L, Q5_K_M, Q5_K_S, Q2_K_S,
    /// MXFP4_MOE: stacked experts MXFP4, the rest Q8_0)
    /// picks each tensor's type by llama-quantize's own rules (attn_v / ffn_down get more bits in
    /// some layers; the token embedding and head their own type), as `llama-quantize` without
    /// `--pure` does. A plain type name is the same type everywhere (`--pure`), unless `--mix`.
    #[arg(long = "type")]
    ty: Option<String>,
    /// GGUF: take a plain --type (Q4_0, Q2_K, IQ4_XS, Q6_K, Q4_K = Q4_K_M, ...) as llama-quantize's
    /// file type of that name, with its per-tensor rules, instead of that type everywhere.
    #[arg(long, requires = "ty")]
    mix: bool,
    /// GGUF: type of token_embd.weight [default: Q8_0, or the --type when it is F16/F32].
    #[arg(long)]
    token_embedding_type: Option<String>,
    /// GGUF: type of output.weight (untied heads) [default as --token-embedding-type].
    #[arg(long)]
    output_tensor_type: Option<String>,
    /// GGUF: PATTERN=TYPE, repeatable; tensors whose GGUF name contains PATTERN get TYPE
    /// (e.g. --tensor-type attn_v=Q6_K --tensor-type ffn_down=Q6_K).
    #[arg(long = "tensor-type")]
    tensor_type: Vec<String>,
    /// GGUF: compute an importance matrix (mean squared activation of each input column) on this
    /// calibration text and weight the rounding error by it (llama.cpp's imatrix).
    #[arg(long)]
    imatrix_calib: Option<PathBuf>,
    /// GGUF: use the calibration tokens of a safetensors file (`input_ids`, e.g. the
    /// calibration_ids.safetensors that compress writes) for the importance matrix.
    #[arg(long, conflicts_with = "imatrix_calib")]
    imatrix_ids: Option<PathBuf>,
    /// Importance matrix: number of windows.
    #[arg(long, default_value_t = 64)]
    imatrix_nsamples: usize,
    /// Importance matrix: tokens per window.
    #[arg(long, default_value_t = 512)]
    imatrix_seqlen: usize,
    /// Importance matrix: seed for drawing windows.
    #[arg(long, default_value_t = 0)]
    imatrix_seed: u64,
    /// GGUF: read the importance matrix from a llama-imatrix GGUF file (e.g. one written by
    /// --imatrix-out, or by llama.cpp's llama-imatrix).
    #[arg(long, conflicts_with_all = ["imatrix_calib", "imatrix_ids"])]
    imatrix: Option<PathBuf>,
    /// Also save the importance matrix in llama-imatrix's GGUF format (llama-quantize --imatrix
    /// reads it).
    #[arg(long)]
    imatrix_out: Option<PathBuf>,
    /// GGUF: copy the tokenizer and other metadata from this GGUF file [default: the model itself
    /// when it is a GGUF, else the GGUF named as "model" in a compress directory's report.json].
    #[arg(long)]
    gguf_metadata: Option<PathBuf>,
    /// GGUF from a Hugging Face directory without --gguf-metadata: build the tokenizer metadata
    /// from tokenizer.json (byte-level BPE) with this llama.cpp pre-tokenizer name
    /// (tokenizer.ggml.pre: smollm, llama-bpe, qwen2, gpt2, ...).
    #[arg(long)]
    tokenizer_pre: Option<String>,
    /// GGUF: re-quantize shrink's dequantized weights instead of carrying its codes over.
    #[arg(long)]
    no_carry: bool,
    /// compressed-tensors / gptq: element type of the scales [default: f32 for
    /// compressed-tensors (exact), f16 for gptq (what its kernels expect)].
    #[arg(long)]
    scale_dtype: Option<String>,
    /// gptq: checkpoint_format, gptq (zero points stored minus one; AutoGPTQ, vLLM, exllama,
    /// transformers) or gptq_v2 (GPTQModel).
    #[arg(long, default_value = "gptq")]
    checkpoint_format: String,
    /// Also write a JSON report of what was written (per tensor: type, bytes, codes carried over).
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn run(a: ExportArgs, quiet: bool) -> Result<()> {
    let t0 = std::time::Instant::now();
    let fmt = a.format.to_ascii_lowercase();
    if !matches!(fmt.as_str(), "gguf") && QuantizedDir::present(&a.model) {
        let n = QuantizedDir::open(&a.model)?.ggml_linears();
        if n > 0 {
            bail!(
                "{}: {n} linears were rounded onto llama.cpp block grids (compress --gguf-type), \
                 which only GGUF holds: export with --format gguf, or compress with integer \
                 groups (--bits/--group-size) for {fmt}",
                a.model.display()
            );
        }
    }
    let (out, report) = match fmt.as_str() {
        "compressed-tensors" | "ct" => {
            let sd = ScaleDType::parse(a.scale_dtype.as_deref().unwrap_or("f32"))?;
            if QuantizedDir::present(&a.model) {
                let out = write_compressed_tensors(
                    &a.model,
                    &a.out,
                    &CtOptions {
                        scale_dtype: sd,
                        force: a.force,
                    },
                )?;
                (out, serde_json::json!({"format": "compressed-tensors"}))
            } else {
                let src = ModelSource::open(&a.model)?;
                let out = write_sparse_dense(&src, &a.out, a.force)?;
                (
                    out,
                    serde_json::json!({"format": "compressed-tensors dense (sparse)"}),
                )
            }
        }
        "gptq" => {
            let sd = ScaleDType::parse(a.scale_dtype.as_deref().unwrap_or("f16"))?;
            let out = write_gptq(
                &a.model,
                &a.out,
                &GptqOptions {
                    scale_dtype: sd,
                    format: GptqFormat::parse(&a.checkpoint_format)?,
                    force: a.force,
                },
            )?;
            (out, serde_json::json!({"format": "gptq"}))
        }
        "gguf" => export_gguf(&a, quiet)?,
        f => bail!("unknown format '{f}' (use compressed-tensors, gptq or gguf)"),
    };
    let bytes = size_of(&out);
    if let Some(p) = &a.report {
        let mut r = report;
        r["out"] = serde_json::json!(out);
        r["bytes"] = serde_json::json!(bytes);
        r["seconds"] = serde_json::json!(t0.elapsed().as_secs_f64());
        shrink_formats::write_json(p, &r)?;
    }
    eprintln!(
        "wrote {} ({:.1} MB) in {:.1} s",
        out.display(),
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn size_of(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

fn export_gguf(a: &ExportArgs, quiet: bool) -> Result<(PathBuf, serde_json::Value)> {
    if a.scale_dtype.is_some() {
        bail!("--scale-dtype applies to compressed-tensors and gptq, not gguf");
    }
    let src = ModelSource::open(&a.model)?;
    let qdir = if QuantizedDir::present(&a.model) {
        Some(QuantizedDir::open(&a.model)?)
    } else {
        None
    };
    // A mix (llama-quantize's file type: Q4_K_M, or --mix with a type name) or one main type.
    let mix: Option<Mix> = match &a.ty {
        Some(t) => match Mix::parse(t, a.mix) {
            Some(m) => Some(m),
            None if a.mix => bail!(
                "--mix: '{t}' is not a file type shrink writes ({})",
                shrink_model::ggml_mix::MIXES.map(|m| m.name()).join(", ")
            ),
            None => None,
        },
        None => qdir.as_ref().and_then(|q| q.settings.mix),
    };
    let main = match (&a.ty, mix) {
        (_, Some(m)) => m.default_type(),
        (Some(t), None) => parse_type(t)?,
        (None, None) => match &qdir {
            Some(q) if q.settings.ggml.is_some() => q.settings.ggml.unwrap(),
            Some(q) if q.settings.group_size == Some(32) => {
                shrink_formats::gguf_quant::carry_type(q.settings.bits, q.settings.sym)
                    .unwrap_or(shrink_model::gguf::GgmlType::Q8_0)
            }
            _ => shrink_model::gguf::GgmlType::Q8_0,
        },
    };
    let token_embedding = a
        .token_embedding_type
        .as_deref()
        .map(parse_type)
        .transpose()?;
    let output_type = a
        .output_tensor_type
        .as_deref()
        .map(parse_type)
        .transpose()?;
    let mut overrides = Vec::new();
    for tt in &a.tensor_type {
        let (p, t) = tt
            .split_once('=')
            .with_context(|| format!("--tensor-type '{tt}': expected PATTERN=TYPE"))?;
        if p.is_empty() {
            bail!("--tensor-type '{tt}': empty pattern");
        }
        overrides.push((p.to_string(), parse_type(t)?));
    }
    let has_imatrix = a.imatrix.is_some() || a.imatrix_calib.is_some() || a.imatrix_ids.is_some();
    // The type of a `compress --gguf-type` directory is carried, not re-quantized: its blocks are
    // written as they are (a tensor that still needs llama.cpp's quantizer fails there, cleanly).
    let main_carried =
        a.ty.is_none() && mix.is_none() && qdir.as_ref().is_some_and(|q| q.settings.ggml.is_some());
    if let Some(t) = std::iter::once(main)
        .filter(|_| !main_carried)
        .chain(token_embedding)
        .chain(output_type)
        .chain(overrides.iter().map(|(_, t)| *t))
        .find(|t| shrink_formats::gguf_quant::requires_imatrix(*t) && !has_imatrix)
    {
        bail!(
            "{} needs an importance matrix (as in llama.cpp): give --imatrix-calib, --imatrix-ids \
             or --imatrix",
            t.name()
        );
    }
    let meta_from: Option<PathBuf> = match &a.gguf_metadata {
        Some(p) => Some(p.clone()),
        None if src.is_gguf => Some(a.model.clone()),
        None if a.tokenizer_pre.is_some() => None,
        None => origin_gguf(&a.model),
    };
    let imatrix: Option<Imatrix> = match (&a.imatrix_calib, &a.imatrix_ids) {
        (None, None) => match &a.imatrix {
            Some(p) => Some(Imatrix::read_gguf(&src.config, p)?),
            None => None,
        },
        (calib, ids) => {
            let set = match (calib, ids) {
                (Some(c), _) => {
                    let ts = TextSource::from_path(c, None)?;
                    CalibSet::sample(
                        &ts,
                        &src.tokenizer,
                        a.imatrix_nsamples,
                        a.imatrix_seqlen,
                        a.imatrix_seed,
                    )?
                }
                (None, Some(p)) => CalibSet::load(p, src.config.vocab_size)?,
                _ => unreachable!(),
            };
            if !quiet {
                eprintln!(
                    "importance matrix: {} x {} tokens from {}",
                    set.nsamples, set.seqlen, set.source
                );
            }
            let bar = progress::bar(src.config.num_layers as u64, "layers", quiet);
            let im = compute_imatrix(
                &src,
                &set.ids,
                set.nsamples,
                set.seqlen,
                &set.source,
                &mut |d, _| bar.set_position(d as u64),
            )?;
            bar.finish_and_clear();
            Some(im)
        }
    };
    if let (Some(p), Some(im)) = (&a.imatrix_out, &imatrix) {
        im.write_gguf(&src.config, p)?;
        eprintln!("wrote importance matrix {}", p.display());
    }
    let mut plan = match mix {
        Some(m) => TypePlan::for_mix(
            &src.config,
            m,
            imatrix.is_some() || qdir.as_ref().is_some_and(|q| q.settings.ggml.is_some()),
            &MixFlags {
                token_embedding,
                output: output_type,
                pure: false,
            },
        )?,
        None => {
            let mut p = TypePlan::for_type(main);
            if let Some(t) = token_embedding {
                p.embedding = t;
                p.output = t;
            }
            if let Some(t) = output_type {
                p.output = t;
            }
            p
        }
    };
    plan.overrides = overrides;
    let e = GgufExport {
        src: &src,
        quantized: qdir.as_ref(),
        metadata_from: meta_from.as_deref(),
        tokenizer_pre: a.tokenizer_pre.clone(),
        plan,
        imatrix: imatrix.as_ref(),
        carry_codes: !a.no_carry,
        keep_grid_types: a.ty.is_none(),
        layers_before_drop: layers_before_drop(&a.model),
    };
    let (out, rep) = write_gguf(&e, &a.out, a.force)?;
    let carried = rep.iter().filter(|r| r.carried_codes).count();
    let with_im = rep.iter().filter(|r| r.imatrix).count();
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for r in &rep {
        *types.entry(r.ggml_type.clone()).or_default() += 1;
    }
    if !quiet {
        eprintln!(
            "{} tensors ({}); {carried} with shrink's codes carried over, {with_im} weighted by the importance matrix",
            rep.len(),
            types
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok((
        out,
        serde_json::json!({
            "format": "gguf",
            "type": main.name(),
            "imatrix": imatrix.as_ref().map(|i| serde_json::json!({"dataset": i.dataset, "rows": i.rows, "chunks": i.chunks})),
            "carried_tensors": carried,
            "tensors": rep,
        }),
    ))
}

/// The original layer count of a `shrink compress --drop-layers` or `--merge-layers` output
/// (its report.json).
fn layers_before_drop(dir: &Path) -> Option<usize> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).ok()?).ok()?;
    ["layer_drop", "layer_merge"]
        .iter()
        .find_map(|k| r.get(k)?.get("layers_before")?.as_u64().map(|n| n as usize))
}

/// The GGUF a `shrink compress` directory was made from ("model" in its report.json), if any.
fn origin_gguf(dir: &Path) -> Option<PathBuf> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).ok()?).ok()?;
    let p = PathBuf::from(r.get("model")?.as_str()?);
    let cands = [p.clone(), dir.join(&p)];
    cands
        .into_iter()
        .find(|c| c.is_file() && c.extension().is_some_and(|e| e == "gguf"))
}
