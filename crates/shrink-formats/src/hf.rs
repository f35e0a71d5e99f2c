//! Hugging Face model directories (config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json) that transformers loads unchanged.
use crate::safetensors_writer::write_safetensors;
use anyhow::{bail, Context, Result};
use serde_json::json;
use shrink_model::{arch, ModelSource, TensorSource};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An output directory built under a temporary name next to the target and renamed into place by
/// [`OutputDir::commit`]; dropped without commit (an error, a full disk), it is removed and a note
/// on stderr says that the target was left as it was.
pub struct OutputDir {
    target: PathBuf,
    tmp: PathBuf,
    committed: bool,
    /// Whether the target existed when the output was started (it is then replaced at commit).
    existed: bool,
}

impl OutputDir {
    /// Errors when `target` exists and `force` is not given (for checks before long work).
    pub fn refuse_existing(target: &Path, force: bool) -> Result<()> {
        if target.exists() && !force {
            bail!(
                "{}: already exists (pass --force to replace it)",
                target.display()
            );
        }
        Ok(())
    }

    /// Refuses an existing target unless `force` (then it is replaced only at commit).
    pub fn create(target: &Path, force: bool) -> Result<Self> {
        Self::refuse_existing(target, force)?;
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a valid output path", target.display()))?;
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create directory", parent.display()))?;
        let tmp = parent.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).ok();
        }
        remove_stale_temporaries(parent, &name.to_string_lossy());
        std::fs::create_dir(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        Ok(OutputDir {
            target: target.into(),
            tmp,
            committed: false,
            existed: target.exists(),
        })
    }
    /// Path of a file inside the (temporary) directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }
    /// Moves the finished directory into place (replacing an old one only now, when forced).
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_tree(&self.tmp).with_context(|| format!("{}: cannot sync", self.tmp.display()))?;
        if self.target.exists() {
            let old = self.tmp.with_file_name(format!(
                "{}.old",
                self.tmp.file_name().unwrap().to_string_lossy()
            ));
            std::fs::rename(&self.target, &old)
                .with_context(|| format!("{}: cannot move aside", self.target.display()))?;
            if let Err(e) = std::fs::rename(&self.tmp, &self.target) {
                // put the old output back rather than leave nothing under the target's name
                let back = std::fs::rename(&old, &self.target);
                return Err(anyhow::Error::new(e).context(format!(
                    "{}: cannot rename into place ({})",
                    self.target.display(),
                    match back {
                        Ok(()) => "the old output was put back".to_string(),
                        Err(b) => format!("the old output is at {}: {b}", old.display()),
                    }
                )));
            }
            std::fs::remove_dir_all(&old).ok();
        } else {
            std::fs::rename(&self.tmp, &self.target)
                .with_context(|| format!("{}: cannot rename into place", self.target.display()))?;
        }
        self.committed = true;
        // make the renames durable (best effort: not every filesystem syncs directories)
        if let Some(parent) = self.tmp.parent() {
            let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(self.target.clone())
    }
}

/// Removes `.NAME.tmp-PID` directories in `parent` left by runs that were killed (SIGKILL, power
/// loss) before they could clean up: those whose process no longer runs. Only on Linux, where
/// `/proc/PID` tells; a `.old` directory (an old output moved aside during a commit) is never
/// touched.
fn remove_stale_temporaries(parent: &Path, name: &str) {
    if !cfg!(target_os = "linux") || !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix) else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let path = e.path();
        if std::fs::remove_dir_all(&path).is_ok() {
            eprintln!(
                "note: removed {}, left by an interrupted run (process {pid} no longer runs)",
                path.display()
            );
        }
    }
}

/// Flushes every file under `dir` to disk (files written without their own sync included), so
/// that once the directory is renamed into place its content survives a crash.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    Ok(())
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let t = self.target.display();
        let state = if self.existed {
            format!("{t} was left unchanged")
        } else {
            format!("{t} was not created")
        };
        match std::fs::remove_dir_all(&self.tmp) {
            Ok(()) => eprintln!("note: {state}; the partial output was removed"),
            Err(e) => eprintln!(
                "note: {state}; the partial output {} could not be removed: {e}",
                self.tmp.display()
            ),
        }
    }
}

/// Writes `src` as a Hugging Face directory with f32 weights, one tensor at a time.
/// `progress(done, total)` is called after each tensor.
pub fn write_hf_dir(
    src: &ModelSource,
    out: &Path,
    force: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PathBuf> {
    let dir = OutputDir::create(out, force)?;
    write_hf_files(src, src.tensors.as_ref(), &dir, "convert", progress)?;
    dir.commit()
}

/// Writes model.safetensors (every tensor of `src.config`, taken from `tensors`, f32),
/// config.json, tokenizer.json and tokenizer_config.json into `dir`.
pub fn write_hf_files(
    src: &ModelSource,
    tensors: &dyn TensorSource,
    dir: &OutputDir,
    producer: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let cfg = &src.config;
    let names_shapes: Vec<(String, Vec<usize>)> = arch::tensor_table(cfg)
        .into_iter()
        .map(|e| (e.hf, e.shape))
        .collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "producer".to_string(),
        format!("shrink {} {producer}", env!("CARGO_PKG_VERSION")),
    );
    meta.insert(
        "source".to_string(),
        src.path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let total = names_shapes.len();
    write_safetensors(
        &dir.join("model.safetensors"),
        &names_shapes,
        &meta,
        &mut |i| {
            let (name, shape) = &names_shapes[i];
            let t = shrink_model::layer::load_checked(tensors, name, shape)?;
            progress(i + 1, total);
            Ok(t)
        },
    )?;
    write_json(&dir.join("config.json"), &cfg.to_hf_json())?;
    match src.tokenizer.hf() {
        Some(t) => t.save(dir.join("tokenizer.json"), true).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot write: {e}",
                dir.join("tokenizer.json").display()
            )
        })?,
        None => write_tokenizer_gguf(src, &dir.join(shrink_model::model::TOKENIZER_GGUF))?,
    }
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config(src))?;
    Ok(())
}

/// A tokenizer that tokenizer.json cannot express exactly (llama.cpp's SentencePiece-by-scores
/// vocabulary of a GGUF file) is kept as a GGUF file of its `tokenizer.*` metadata alone, which
/// [`shrink_model::ModelSource::open`] reads when a directory has no tokenizer.json.
fn write_tokenizer_gguf(src: &ModelSource, out: &Path) -> Result<()> {
    let from = if src.is_gguf {
        src.path.clone()
    } else {
        src.path.join(shrink_model::model::TOKENIZER_GGUF)
    };
    let f = shrink_model::gguf::GgufFile::open(&from)?;
    let mut w = shrink_model::gguf::GgufWriter::new();
    for (k, v) in f
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
    {
        w.add_metadata(k.clone(), v.clone());
    }
    w.write(out)
}

/// Writes `v` (pretty-printed) with [`write_atomic`].
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    write_atomic(path, (serde_json::to_string_pretty(v)? + "\n").as_bytes())
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it to `path`: `path`
/// holds either its old content or the new one, never a part. On failure (a full disk) the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = shrink_model::gguf::temp_sibling(path)?;
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!(
            "{}: cannot write (it was left unchanged)",
            path.display()
        )));
    }
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!(
            "{}: cannot rename {} into place",
            path.display(),
            tmp.display()
        )
    })
}

/// tokenizer_config.json: which special tokens are bos/eos and whether BOS is added.
fn tokenizer_config(src: &ModelSource) -> serde_json::Value {
    let tok = &src.tokenizer;
    let mut v = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": src.config.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    let o = v.as_object_mut().unwrap();
    for (name, id) in &src.special_tokens {
        if let Some(t) = tok.id_to_token(*id) {
            o.insert(name.clone(), json!(t));
        }
    }
    if let Some(t) = &src.chat_template {
        o.insert("chat_template".into(), json!(t));
    }
    v
}

/// The shape a tensor must have under `cfg`.
pub fn expected_shape(cfg: &shrink_model::ModelConfig, name: &str) -> Option<Vec<usize>> {
    arch::tensor_entry(cfg, name).map(|e| e.shape)
}
