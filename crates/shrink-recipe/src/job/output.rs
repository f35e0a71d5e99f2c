//! The files a compress job writes: each finished layer into the checkpoint, the gathered
//! quantized tensors, a model that was only pruned of layers, and the evaluation against the
//! original that `--eval` adds to the report.
use super::checkpoint::Checkpoint;
use super::ui::Ui;
use super::{CompressJob, Outcome};
use crate::Recipe;
use anyhow::{bail, Context, Result};
use serde_json::json;
use shrink_calib::CalibSet;
use shrink_eval::task_run::{load_tasks, score_tasks, TaskOptions, TaskRun};
use shrink_eval::tasks::{Request, TaskSpec};
use shrink_formats::{
    f32_bytes, write_hf_files, write_json, write_safetensors_raw, DType, Entry, OutputDir,
};
use shrink_methods::QuantizedWeight;
use shrink_model::source::SafetensorsSource;
use shrink_model::{DecoderLayer, ModelSource};
use shrink_pipeline::{LayerReport, LayerSink};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes each finished layer (f32 tensors plus the quantized form) to its own safetensors file.
pub(super) struct LayerFiles<'a> {
    pub ckpt: &'a Checkpoint,
    pub hidden_size: usize,
}

fn quant_entries(base: &str, q: &QuantizedWeight) -> Vec<(Entry, Vec<u8>)> {
    let g = q.n_groups();
    let e = |suffix: &str, dtype, shape: Vec<usize>| Entry {
        name: format!("{base}.{suffix}"),
        dtype,
        shape,
    };
    if let Some((t, blocks)) = &q.ggml {
        // On a llama.cpp grid the blocks are the quantized form (their offsets are nowhere else).
        return vec![
            (
                e(
                    "ggml",
                    DType::U8,
                    vec![q.d_out, blocks.len() / q.d_out.max(1)],
                ),
                blocks.clone(),
            ),
            (
                e("gtype", DType::I32, vec![1]),
                (t.to_u32() as i32).to_le_bytes().to_vec(),
            ),
        ];
    }
    vec![
        (
            e("qcodes", DType::U8, vec![q.d_out, q.d_in]),
            q.codes.clone(),
        ),
        (
            e("scales", DType::F32, vec![q.d_out, g]),
            f32_bytes(&q.scales),
        ),
        (
            e("zeros", DType::I32, vec![q.d_out, g]),
            q.zeros
                .iter()
                .flat_map(|&z| (z as i32).to_le_bytes())
                .collect(),
        ),
        (
            e("g_idx", DType::I32, vec![q.d_in]),
            q.g_idx
                .iter()
                .flat_map(|&z| (z as i32).to_le_bytes())
                .collect(),
        ),
    ]
}

impl LayerSink for LayerFiles<'_> {
    fn layer_done(
        &mut self,
        layer: &DecoderLayer,
        quant: &[(usize, QuantizedWeight)],
        report: &LayerReport,
        hidden: &[f32],
    ) -> Result<()> {
        let i = layer.index;
        let mut items: Vec<(Entry, Vec<u8>)> = Vec::new();
        let mut f32t = |name: String, t: &shrink_model::Tensor| {
            items.push((
                Entry {
                    name,
                    dtype: DType::F32,
                    shape: t.shape.clone(),
                },
                f32_bytes(&t.data),
            ));
        };
        for (name, t) in layer.hf_tensors() {
            f32t(name, &t);
        }
        for (k, q) in quant {
            let base = layer.linear_name(*k);
            items.extend(quant_entries(base.trim_end_matches(".weight"), q));
        }
        let entries: Vec<Entry> = items.iter().map(|(e, _)| e.clone()).collect();
        let mut bytes: Vec<Option<Vec<u8>>> = items.into_iter().map(|(_, b)| Some(b)).collect();
        let path = self
            .ckpt
            .layers_dir()
            .join(format!("layer_{i:05}.safetensors"));
        write_safetensors_raw(&path, &entries, &BTreeMap::new(), &mut |k| {
            Ok(bytes[k].take().unwrap_or_default())
        })?;
        self.ckpt.layer_done(report, hidden, self.hidden_size)
    }
}

/// Gathers the per-layer quantized tensors into one quantized.safetensors.
pub(super) fn write_quantized(
    layers: &SafetensorsSource,
    path: &Path,
    meta: BTreeMap<String, String>,
) -> Result<usize> {
    let mut entries = Vec::new();
    for name in layers.names() {
        if [".qcodes", ".scales", ".zeros", ".g_idx", ".ggml", ".gtype"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            let (dt, shape, _) = layers.raw(name).unwrap();
            let dtype = match dt {
                safetensors::Dtype::U8 => DType::U8,
                safetensors::Dtype::I32 => DType::I32,
                _ => DType::F32,
            };
            entries.push(Entry {
                name: name.to_string(),
                dtype,
                shape: shape.to_vec(),
            });
        }
    }
    let n = entries.len();
    if n > 0 {
        write_safetensors_raw(path, &entries, &meta, &mut |k| {
            Ok(layers.raw(&entries[k].name).unwrap().2.to_vec())
        })?;
    }
    Ok(n / 4)
}

/// Perplexity of the original model (`original`, before any layer drop) and of the compressed
/// one (`overlay`, with `src`'s config) on the first `n` calibration windows (which already start
/// with BOS where the model adds it).
pub(super) fn holdin_perplexity(
    original: &Path,
    src: &ModelSource,
    overlay: &dyn shrink_model::TensorSource,
    calib: &CalibSet,
    n: usize,
) -> Result<(f64, f64)> {
    let w = n.min(calib.nsamples).max(1);
    let ids = &calib.ids[..w * calib.seqlen];
    let opts = shrink_eval::PplOptions {
        seqlen: calib.seqlen,
        ..Default::default()
    };
    let ppl =
        |cfg: &shrink_model::ModelConfig, t: &dyn shrink_model::TensorSource| -> Result<f64> {
            let m = shrink_model::stream::Streamed::new(cfg, t);
            Ok(shrink_eval::perplexity_streamed(
                &m,
                ids,
                &opts,
                shrink_eval::STREAM_BUDGET_BYTES,
                &mut |_, _| {},
            )?
            .perplexity)
        };
    let orig = ModelSource::open(original)?;
    let o = ppl(&orig.config, orig.tensors.as_ref())?;
    drop(orig);
    let q = ppl(&src.config, overlay)?;
    Ok((o, q))
}

/// Writes the pruned model as it is (layer pruning without a compression method): config.json,
/// model.safetensors, the tokenizer, report.json and recipe.toml.
pub(super) fn write_pruned(
    a: &CompressJob,
    src: &ModelSource,
    recipe: &Recipe,
    calib: Option<&CalibSet>,
    (layer_drop, layer_merge): (Option<serde_json::Value>, Option<serde_json::Value>),
    eval: &EvalPlan,
    ui: &dyn Ui,
) -> Result<Outcome> {
    let t = std::time::Instant::now();
    let dir = OutputDir::create(&a.out, a.force)?;
    let names = shrink_model::arch::tensor_table(&src.config).len();
    let bar = ui.bar(names as u64, "tensors");
    write_hf_files(src, src.tensors.as_ref(), &dir, "compress", &mut |d, _| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    if let Some(c) = calib {
        c.save(&dir.join("calibration_ids.safetensors"))?;
    }
    let mut out = json!({
        "shrink_version": env!("CARGO_PKG_VERSION"),
        "model": a.model,
        "method": "none (layer pruning only)",
        "recipe": recipe,
        "calibration": calib,
        "layer_drop": layer_drop,
        "layer_merge": layer_merge,
        "quantized_linears": 0,
        "totals": {"assemble_seconds": t.elapsed().as_secs_f64(), "peak_rss_mb": shrink_eval::peak_rss_mb()},
    });
    if let Some(v) = eval.run(a, &dir.join(""), "pruned", ui)? {
        out["eval"] = v;
    }
    write_json(&dir.join("report.json"), &out)?;
    std::fs::write(dir.join("recipe.toml"), recipe.to_toml()?)
        .with_context(|| format!("{}: cannot write", dir.join("recipe.toml").display()))?;
    let path = dir.commit()?;
    ui.info(&format!(
        "wrote {} ({} layers) in {:.1} s",
        path.display(),
        src.config.num_layers,
        t.elapsed().as_secs_f64()
    ));
    Ok(Outcome { path, report: out })
}

/// `--eval`: perplexity of the original model and of the written one (`label` in the message),
/// for report.json's `eval`.
/// What `--eval`, `--eval-tasks` and `--reference` ask for, loaded before any work (the text
/// read, every task's requests parsed), so that a bad file is refused up front.
pub(super) struct EvalPlan {
    text: Option<String>,
    tasks: Vec<(TaskSpec, Vec<Request>)>,
    task_opts: TaskOptions,
}

impl EvalPlan {
    pub fn prepare(a: &CompressJob) -> Result<EvalPlan> {
        let text = match &a.eval {
            Some(p) => Some(shrink_eval::read_text(p)?),
            None => None,
        };
        let task_opts = TaskOptions {
            limit: a.eval_tasks_limit,
            data: a.tasks_data.clone(),
            ..TaskOptions::default()
        };
        let tasks = if a.eval_tasks.is_empty() {
            if a.eval_tasks_limit.is_some() || a.eval_tasks_cache.is_some() {
                bail!("--eval-tasks-limit and --eval-tasks-cache are settings of --eval-tasks: give --eval-tasks TASKS");
            }
            vec![]
        } else {
            load_tasks(&a.eval_tasks, &task_opts).context("--eval-tasks")?
        };
        if a.reference.is_some() && text.is_none() && tasks.is_empty() {
            bail!(
                "--reference is the model --eval and --eval-tasks compare with: give one of them"
            );
        }
        if let Some(r) = &a.reference {
            // opened now: a missing or unreadable reference is refused before any work
            let (orig, comp) = (ModelSource::open(r)?, ModelSource::open(&a.model)?);
            if orig.config.vocab_size != comp.config.vocab_size {
                bail!(
                    "--reference {}: its vocabulary has {} tokens, {} has {}: the models cannot be \
                     compared token by token",
                    r.display(),
                    orig.config.vocab_size,
                    a.model.display(),
                    comp.config.vocab_size
                );
            }
        }
        Ok(EvalPlan {
            text,
            tasks,
            task_opts,
        })
    }

    /// report.json's `eval`: perplexities and agreement on the text, task accuracies of both
    /// models; None when nothing was asked.
    pub fn run(
        &self,
        a: &CompressJob,
        written: &Path,
        label: &str,
        ui: &dyn Ui,
    ) -> Result<Option<serde_json::Value>> {
        let mut v = match &self.text {
            Some(text) => eval_against_original(a, written, text, label, ui)?,
            None if self.tasks.is_empty() => return Ok(None),
            None => json!({}),
        };
        if !self.tasks.is_empty() {
            let reference = a.reference.as_ref().unwrap_or(&a.model);
            let score = |path: &Path, what: &str, cache: Option<&PathBuf>| -> Result<TaskRun> {
                let src = ModelSource::open(path)?;
                let bar = ui.bar(0, &format!("task requests ({what})"));
                let opts = TaskOptions {
                    cache: cache.cloned(),
                    ..self.task_opts.clone()
                };
                let r = score_tasks(path, &src, &self.tasks, &opts, &mut |d, _| {
                    bar.set_position(d)
                })?;
                bar.finish_and_clear();
                Ok(r)
            };
            let o = score(reference, "original", a.eval_tasks_cache.as_ref())?;
            let c = score(written, label, None)?;
            for ((name, mo), (_, mc)) in o.results.iter().zip(&c.results) {
                ui.notice(&format!(
                    "{name}: acc {:.4} -> {:.4}, acc_per_char {:.4} -> {:.4} ({} documents)",
                    mo.acc, mc.acc, mo.acc_per_char, mc.acc_per_char, mc.docs
                ));
            }
            v["tasks"] = json!({
                "tasks": a.eval_tasks,
                "limit": a.eval_tasks_limit,
                "original": o.to_json(),
                "compressed": c.to_json(),
            });
        }
        v["reference"] = json!(a.reference.as_ref().unwrap_or(&a.model));
        Ok(Some(v))
    }
}

pub(super) fn eval_against_original(
    a: &CompressJob,
    written: &Path,
    text: &str,
    label: &str,
    ui: &dyn Ui,
) -> Result<serde_json::Value> {
    // One pass of both models over the same windows gives both perplexities and their
    // agreement (KL divergence of the predicted distributions, top-1, Δp: `shrink eval
    // --reference`, GPTQ protocol).
    let t = std::time::Instant::now();
    let (orig, comp) = (
        ModelSource::open(a.reference.as_ref().unwrap_or(&a.model))?,
        ModelSource::open(written)?,
    );
    let (mut ids, bos) = shrink_eval::eval_tokens(&comp.tokenizer, text)?;
    if let Some(n) = a.eval_max_tokens {
        ids.truncate(n);
    }
    let opts = shrink_eval::PplOptions {
        bos,
        ..shrink_eval::PplOptions::default()
    };
    let k = shrink_eval::kld::kld_gptq(
        &shrink_model::stream::Streamed::new(&comp.config, comp.tensors.as_ref()),
        &shrink_model::stream::Streamed::new(&orig.config, orig.tensors.as_ref()),
        &ids,
        &opts,
        shrink_eval::STREAM_BUDGET_BYTES,
        &mut |_, _| {},
    )?;
    let seconds = t.elapsed().as_secs_f64();
    let windows = shrink_eval::gptq_windows(&ids, &opts)?.1;
    let ppl = |perplexity: f64| shrink_eval::PplResult {
        perplexity,
        mean_nll: perplexity.ln(),
        tokens: windows * opts.seqlen,
        predicted_tokens: k.tokens,
        windows,
        seqlen: opts.seqlen,
        bos,
        text_tokens: ids.len(),
        seconds,
        tokens_per_second: (2 * windows * opts.seqlen) as f64 / seconds.max(1e-9),
    };
    let (o, q) = (ppl(k.perplexity_reference), ppl(k.perplexity));
    ui.notice(&format!(
        "perplexity: original {:.4}, {label} {:.4} ({:+.2}%); agreement with the original: mean \
         KL divergence {:.4e}, top-1 {:.2}%",
        o.perplexity,
        q.perplexity,
        100.0 * (q.perplexity / o.perplexity - 1.0),
        k.kld_mean,
        100.0 * k.top1_agreement
    ));
    Ok(json!({"text": a.eval, "original": o, "compressed": q, "agreement": k}))
}
