//! Checkpoints of a running `shrink compress`, so that `--resume` continues an interrupted run.
//!
//! The checkpoint lives next to the output, in `.{name}.partial/`:
//! - `settings.json`: the resolved recipe, the model, the layer count and the calibration set's
//!   description (written once, at the start);
//! - `calibration_ids.safetensors`: the calibration tokens;
//! - `layers/layer_NNNNN.safetensors` and `layers/layer_NNNNN.json`: each finished layer's weights
//!   (and quantized form) and its report;
//! - `hidden.safetensors`: the calibration hidden states after the last finished layer (the next
//!   layer's input), and `state.json` with the index of the next layer.
//!
//! Every file is written under a temporary name and renamed, and `state.json` is renamed last, so
//! a run killed at any instant leaves a checkpoint that names a layer whose inputs are on disk.
//! Resuming recomputes nothing that was finished and, with the same settings, gives the same
//! output bit for bit as an uninterrupted run (the layer's computation depends only on its
//! weights and its input hidden states, both restored exactly).
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shrink_calib::CalibSet;
use shrink_formats::{f32_bytes, write_json, write_safetensors_raw, DType, Entry};
use shrink_model::source::{SafetensorsSource, TensorSource};
use shrink_pipeline::LayerReport;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    pub dir: PathBuf,
}

/// What a resumed run restores.
pub struct Restored {
    pub calib: CalibSet,
    pub next_layer: usize,
    pub hidden: Option<Vec<f32>>,
    pub reports: Vec<LayerReport>,
}

impl Checkpoint {
    /// The checkpoint directory of the output `out`.
    pub fn path_for(out: &Path) -> PathBuf {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "out".into());
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        parent.join(format!(".{name}.partial"))
    }

    /// The checkpoint directory of `out`, or an error when there is none to resume.
    pub fn require(out: &Path) -> Result<PathBuf> {
        let dir = Self::path_for(out);
        if !dir.is_dir() {
            bail!(
                "{}: no checkpoint to resume (--resume continues a run of the same command that \
                 was interrupted)",
                dir.display()
            );
        }
        Ok(dir)
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    /// Starts a new checkpoint; refuses to overwrite an interrupted run's.
    pub fn create(out: &Path, settings: &Value, calib: &CalibSet) -> Result<Checkpoint> {
        let dir = Self::path_for(out);
        if dir.exists() {
            bail!(
                "{}: an interrupted run of this output left a checkpoint here; pass --resume to \
                 continue it (with the same settings), or delete that directory to start over",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir.join("layers"))
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let c = Checkpoint { dir };
        calib.save(&c.dir.join("calibration_ids.safetensors"))?;
        let mut s = settings.clone();
        s["calibration"] = serde_json::to_value(calib)?;
        write_json(&c.dir.join("settings.json"), &s)?;
        write_json(&c.dir.join("state.json"), &json!({"next_layer": 0}))?;
        Ok(c)
    }

    /// The settings an interrupted run of `out` was started with (its `settings.json`).
    pub fn saved_settings(out: &Path) -> Result<Value> {
        let p = Self::require(out)?.join("settings.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid checkpoint file", p.display()))
    }

    /// Opens an interrupted run's checkpoint, checking that `settings` are the ones it was
    /// started with.
    pub fn resume(
        out: &Path,
        settings: &Value,
        vocab_size: usize,
    ) -> Result<(Checkpoint, Restored)> {
        let dir = Self::require(out)?;
        let c = Checkpoint { dir };
        let read = |name: &str| -> Result<Value> {
            let p = c.dir.join(name);
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid checkpoint file", p.display()))
        };
        let saved = read("settings.json")?;
        for key in [
            "model",
            "recipe",
            "layers",
            "sequential",
            "layer_drop",
            "layer_merge",
        ] {
            if saved[key] != settings[key] {
                bail!(
                    "{}: the interrupted run used different settings ({key}: {} then, {} now); \
                     resume with the same command, or delete the checkpoint to start over",
                    c.dir.display(),
                    saved[key],
                    settings[key]
                );
            }
        }
        let mut calib = CalibSet::load(&c.dir.join("calibration_ids.safetensors"), vocab_size)?;
        if let Ok(meta) = serde_json::from_value::<CalibSet>(saved["calibration"].clone()) {
            calib = CalibSet {
                ids: calib.ids,
                ..meta
            };
        }
        let state = read("state.json")?;
        let next_layer = state["next_layer"]
            .as_u64()
            .with_context(|| format!("{}: state.json has no next_layer", c.dir.display()))?
            as usize;
        let mut reports = Vec::with_capacity(next_layer);
        for i in 0..next_layer {
            let r: LayerReport =
                serde_json::from_value(read(&format!("layers/layer_{i:05}.json"))?)
                    .with_context(|| format!("{}: layer {i}: invalid report", c.dir.display()))?;
            reports.push(r);
        }
        let hidden = if next_layer > 0 {
            let p = c.dir.join("hidden.safetensors");
            let src = SafetensorsSource::open(&p)?;
            Some(src.load("hidden")?.data)
        } else {
            None
        };
        Ok((
            c,
            Restored {
                calib,
                next_layer,
                hidden,
                reports,
            },
        ))
    }

    /// Records that layer `i` is finished: its report, the hidden states after it, then the
    /// state naming layer `i + 1` (its weights were written before, by the layer sink).
    pub fn layer_done(
        &self,
        report: &LayerReport,
        hidden: &[f32],
        hidden_size: usize,
    ) -> Result<()> {
        let i = report.index;
        write_json(
            &self.dir.join(format!("layers/layer_{i:05}.json")),
            &serde_json::to_value(report)?,
        )?;
        let entries = [Entry {
            name: "hidden".into(),
            dtype: DType::F32,
            shape: vec![hidden.len() / hidden_size.max(1), hidden_size],
        }];
        let mut bytes = Some(f32_bytes(hidden));
        write_safetensors_raw(
            &self.dir.join("hidden.safetensors"),
            &entries,
            &BTreeMap::new(),
            &mut |_| Ok(bytes.take().unwrap_or_default()),
        )?;
        write_json(&self.dir.join("state.json"), &json!({"next_layer": i + 1}))
    }

    /// Removes the checkpoint once the output is in place.
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
