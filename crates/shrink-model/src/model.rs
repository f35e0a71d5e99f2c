//! Opening a model (Hugging Face directory or GGUF file) and running it end to end.
use crate::arch;
use crate::config::ModelConfig;
use crate::gguf::GgufFile;
use crate::layer::{check_layout, load_checked, DecoderLayer, LayerHook, NoHook, Rope};
use crate::rotation::{RotatedView, Rotation};
use crate::source::{
    config_from_gguf, GgufSource, LayerView, MergedView, SafetensorsSource, TensorSource,
};
use crate::tensor::{linear, rms_norm, Tensor};
use crate::tokenizer;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// In a directory shrink writes: the tokenizer of a GGUF model that tokenizer.json cannot express
/// exactly (llama.cpp's SentencePiece vocabulary), as a GGUF file of its `tokenizer.*` keys.
pub const TOKENIZER_GGUF: &str = "tokenizer.gguf";

/// A model as the user holds it: its config, its (memory-mapped) tensors and its tokenizer.
/// Nothing is dequantized until a layer is loaded.
pub struct ModelSource {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub tensors: Box<dyn TensorSource>,
    pub tokenizer: Tokenizer,
    /// True when read from a GGUF file.
    pub is_gguf: bool,
    /// The chat template, when the model has one (GGUF metadata or tokenizer_config.json).
    pub chat_template: Option<String>,
    /// Named special tokens ("bos_token", "eos_token", "unk_token", "pad_token") and their ids.
    pub special_tokens: Vec<(String, u32)>,
}

impl ModelSource {
    /// Opens a Hugging Face directory (config.json, *.safetensors, tokenizer.json) or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("{}: no such file or directory", path.display());
        }
        if path.is_dir() {
            let cfg_path = path.join("config.json");
            if !cfg_path.is_file() {
                bail!("{}: not a model directory (no config.json)", path.display());
            }
            let config = ModelConfig::from_hf_file(&cfg_path)?;
            // Quantized checkpoints (compressed-tensors, GPTQ) are dequantized on load.
            let tensors = crate::packed::wrap(path, SafetensorsSource::open(path)?)?;
            check_layout(&config, tensors.as_ref())?;
            let tok_path = path.join("tokenizer.json");
            let tok_gguf = path.join(TOKENIZER_GGUF);
            let tokenizer = if tok_path.is_file() {
                tokenizer::load_tokenizer_json(&tok_path)?
            } else if tok_gguf.is_file() {
                tokenizer::tokenizer_from_gguf(&GgufFile::open(&tok_gguf)?)?
            } else {
                bail!("{}: no tokenizer.json", path.display());
            };
            tokenizer::check_vocab(
                &tokenizer,
                config.vocab_size,
                &tok_path.display().to_string(),
            )?;
            let chat_template = std::fs::read_to_string(path.join("tokenizer_config.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| {
                    v.get("chat_template")
                        .and_then(|c| c.as_str())
                        .map(String::from)
                });
            let special_tokens =
                special_from_tokenizer_config(&path.join("tokenizer_config.json"), &tokenizer);
            Ok(ModelSource {
                path: path.into(),
                config,
                tensors,
                tokenizer,
                is_gguf: false,
                chat_template,
                special_tokens,
            })
        } else {
            let mut magic = [0u8; 4];
            {
                use std::io::Read;
                let mut f = std::fs::File::open(path)
                    .with_context(|| format!("{}: cannot open", path.display()))?;
                let n = f
                    .read(&mut magic)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                if n < 4 {
                    bail!(
                        "{}: file is too short to be a model ({n} bytes)",
                        path.display()
                    );
                }
            }
            if &magic == b"GGUF" {
                let file = GgufFile::open(path)?;
                let config = config_from_gguf(&file)?;
                let tokenizer = tokenizer::tokenizer_from_gguf(&file)?;
                tokenizer::check_vocab(&tokenizer, config.vocab_size, &path.display().to_string())?;
                let chat_template = file
                    .get("tokenizer.chat_template")
                    .and_then(|v| v.as_str())
                    .map(String::from);
                let keys = [
                    ("bos_token", "bos_token_id"),
                    ("eos_token", "eos_token_id"),
                    ("unk_token", "unknown_token_id"),
                    ("pad_token", "padding_token_id"),
                ];
                let special_tokens = keys
                    .iter()
                    .filter_map(|(name, key)| {
                        let id = file.get(&format!("tokenizer.ggml.{key}"))?.as_u64()?;
                        (id < config.vocab_size as u64).then(|| (name.to_string(), id as u32))
                    })
                    .collect();
                let src = GgufSource::new(file, &config);
                check_layout(&config, &src)?;
                Ok(ModelSource {
                    path: path.into(),
                    config,
                    tensors: Box::new(src),
                    tokenizer,
                    is_gguf: true,
                    chat_template,
                    special_tokens,
                })
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                bail!(
                    "{}: a lone safetensors file has no config or tokenizer; pass its directory",
                    path.display()
                )
            } else {
                bail!(
                    "{}: not a GGUF file (magic {:?}) and not a model directory",
                    path.display(),
                    magic
                )
            }
        }
    }

    /// This model with only the decoder layers `keep` (original indices), renumbered
    /// `0..keep.len()`: the config (layer count, per-layer lists) and the tensor names follow
    /// (see [`LayerView`]); nothing is copied. Refuses an empty, unsorted or out-of-range list.
    pub fn keep_layers(self, keep: &[usize]) -> Result<ModelSource> {
        let n = self.config.num_layers;
        if keep.is_empty() {
            bail!(
                "{}: no layer would remain (the model has {n})",
                self.path.display()
            );
        }
        if let Some(w) = keep.windows(2).find(|w| w[0] >= w[1]) {
            bail!(
                "kept layers must be strictly ascending, found {} before {}",
                w[0],
                w[1]
            );
        }
        if let Some(&i) = keep.iter().find(|&&i| i >= n) {
            bail!(
                "{}: layer {i} does not exist (the model has {n}: 0..{})",
                self.path.display(),
                n - 1
            );
        }
        let config = self.config.with_layers(keep);
        let tensors: Box<dyn TensorSource> = Box::new(LayerView {
            inner: self.tensors,
            keep: keep.to_vec(),
        });
        check_layout(&config, tensors.as_ref())?;
        Ok(ModelSource {
            config,
            tensors,
            ..self
        })
    }

    /// This model with its decoder layers merged: layer `i` of the result is `Σ_j c_j · θ_j` over
    /// `layers[i] = [(j, c_j), ..]` (original indices; see [`MergedView`]), and takes the
    /// per-layer settings (attention type, dense or MoE MLP) of its first original layer
    /// `layers[i][0].0`. The first layers must be strictly ascending; the layers merged into one
    /// must have the same tensors and shapes (checked here); nothing is copied.
    pub fn merge_layers(self, layers: Vec<Vec<(usize, f64)>>) -> Result<ModelSource> {
        let n = self.config.num_layers;
        if layers.is_empty() || layers.iter().any(|p| p.is_empty()) {
            bail!(
                "{}: a merged model needs at least one layer, each made of at least one",
                self.path.display()
            );
        }
        let heads: Vec<usize> = layers.iter().map(|p| p[0].0).collect();
        if let Some(w) = heads.windows(2).find(|w| w[0] >= w[1]) {
            bail!(
                "merged layers must be strictly ascending, found {} before {}",
                w[0],
                w[1]
            );
        }
        for p in &layers {
            for &(j, _) in p {
                if j >= n {
                    bail!(
                        "{}: layer {j} does not exist (the model has {n}: 0..{})",
                        self.path.display(),
                        n - 1
                    );
                }
                crate::arch::check_mergeable(&self.config, p[0].0, j)?;
            }
        }
        let config = self.config.with_layers(&heads);
        let tensors: Box<dyn TensorSource> = Box::new(MergedView {
            inner: self.tensors,
            layers,
        });
        check_layout(&config, tensors.as_ref())?;
        Ok(ModelSource {
            config,
            tensors,
            ..self
        })
    }

    /// This model rotated (QuaRot R1 on the residual stream after absorbing the norm weights,
    /// and SpinQuant R2 per head when `rotation.r2`; see [`crate::rotation`]): an ordinary model
    /// that computes the same function, its tensors rotated lazily one at a time as they are
    /// loaded ([`RotatedView`]). The head is untied (`tie_word_embeddings = false`), so every
    /// writer writes `lm_head.weight`. Refuses families where the rotation is not exact (Gemma 3's
    /// sandwich norms) and Hadamard sizes with no construction.
    pub fn rotated(self, rotation: &Rotation) -> Result<ModelSource> {
        let view = RotatedView::new(self.tensors, &self.config, *rotation).with_context(|| {
            format!("{}: --rotate {}", self.path.display(), rotation.kind.name())
        })?;
        let config = view.config();
        let tensors: Box<dyn TensorSource> = Box::new(view);
        check_layout(&config, tensors.as_ref())?;
        Ok(ModelSource {
            config,
            tensors,
            ..self
        })
    }

    pub fn load_layer(&self, i: usize) -> Result<DecoderLayer> {
        DecoderLayer::load(self.tensors.as_ref(), &self.config, i)
    }

    /// Embedding matrix `[vocab, hidden]`.
    pub fn load_embedding(&self) -> Result<Tensor> {
        load_checked(
            self.tensors.as_ref(),
            arch::HF_EMBED,
            &[self.config.vocab_size, self.config.hidden_size],
        )
    }

    /// The first layer's input for token ids, as [`embed_input`] gives it, reading only the
    /// embedding rows of the distinct ids (never the whole matrix in f32: 933 MB for a
    /// 152k x 1536 vocabulary).
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Vec<f32>> {
        embed_ids(&self.config, self.tensors.as_ref(), ids)
    }

    /// The final norm and the output head (`None` when tied to the embedding).
    pub fn load_head(&self) -> Result<(Tensor, Option<Tensor>)> {
        let c = &self.config;
        let norm = load_final_norm(c, self.tensors.as_ref())?;
        let head = if c.tie_word_embeddings {
            None
        } else {
            Some(load_checked(
                self.tensors.as_ref(),
                arch::HF_LM_HEAD,
                &[c.vocab_size, c.hidden_size],
            )?)
        };
        Ok((norm, head))
    }

    /// Loads every layer (f32) into memory for inference.
    pub fn load_all(&self) -> Result<Model> {
        Model::load(&self.config, self.tensors.as_ref())
    }
}

/// Special tokens named in a tokenizer_config.json (as strings or `{"content": ...}`), with their ids.
fn special_from_tokenizer_config(path: &Path, tok: &Tokenizer) -> Vec<(String, u32)> {
    let Some(v) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return vec![];
    };
    ["bos_token", "eos_token", "unk_token", "pad_token"]
        .iter()
        .filter_map(|k| {
            let s = v.get(*k).and_then(|x| {
                x.as_str()
                    .or_else(|| x.get("content").and_then(|c| c.as_str()))
            })?;
            Some((k.to_string(), tok.token_to_id(s)?))
        })
        .collect()
}

/// A model fully loaded in f32.
pub struct Model {
    pub config: ModelConfig,
    pub embed: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    pub lm_head: Option<Tensor>,
}

impl Model {
    /// Loads every tensor of a model with config `cfg` from `src`, checking shapes.
    pub fn load(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<Model> {
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed = load_checked(src, arch::HF_EMBED, &[v, h])?;
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::load(src, cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let norm = load_final_norm(cfg, src)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(load_checked(src, arch::HF_LM_HEAD, &[v, h])?)
        };
        Ok(Model {
            config: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Hidden states `[ids.len(), hidden]` for token ids (scaled where the family scales its
    /// embeddings); errors on an id outside the vocabulary.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        embed_input(&self.config, &self.embed, ids)
    }

    /// The output head (the embedding when tied).
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Runs all layers on `batch` sequences of `seq` tokens (`ids.len() == batch * seq`) and returns
    /// the final normed hidden states `[batch * seq, hidden]`.
    pub fn hidden_states(&mut self, ids: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        if ids.len() != batch * seq {
            bail!("expected {batch} x {seq} token ids, got {}", ids.len());
        }
        let mut x = self.embed(ids)?;
        let rope = Rope::new(&self.config, seq);
        let cfg = self.config.clone();
        for layer in self.layers.iter_mut() {
            layer.forward(
                &cfg,
                &rope,
                &mut x,
                batch,
                seq,
                &mut NoHook as &mut dyn LayerHook,
            )?;
            // finite weights can still overflow: name the layer where it first happens
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                bail!(
                    "layer {}: its output has a non-finite value ({}) at token {} (the weights are finite; the activations overflow)",
                    layer.index,
                    x[i],
                    i / cfg.hidden_size
                );
            }
        }
        final_norm(&cfg, &self.norm, &x)
    }

    /// Logits `[rows, vocab]` for normed hidden states `[rows, hidden]`.
    pub fn logits(&self, hidden: &[f32], rows: usize) -> Vec<f32> {
        head_logits(&self.config, self.head(), hidden, rows)
    }
}

/// The final norm (effective multiplier `norm`, see [`load_final_norm`]) of the last layer's
/// output `x` `[rows, hidden]`; errors where it is not finite.
pub fn final_norm(cfg: &ModelConfig, norm: &Tensor, x: &[f32]) -> Result<Vec<f32>> {
    let mut out = vec![0f32; x.len()];
    rms_norm(x, &norm.data, cfg.rms_norm_eps as f32, &mut out);
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        bail!(
            "the final norm ({}): its output has a non-finite value ({}) at token {} (the weights are finite; the activations overflow)",
            arch::HF_NORM,
            out[i],
            i / cfg.hidden_size
        );
    }
    Ok(out)
}

/// Logits `[rows, vocab]` of normed hidden states `[rows, hidden]` through `head` `[vocab,
/// hidden]`, soft-capped where the family caps its final logits.
pub fn head_logits(cfg: &ModelConfig, head: &Tensor, hidden: &[f32], rows: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * head.shape[0]];
    linear(hidden, rows, head, None, &mut y);
    if let Some(c) = cfg.final_softcap {
        let c = c as f32;
        y.iter_mut().for_each(|z| *z = c * (*z / c).tanh());
    }
    y
}

/// The final norm's effective multiplier (`1 + w` for [`arch::NormStyle::OnePlus`] families).
pub fn load_final_norm(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<Tensor> {
    let mut t = load_checked(src, arch::HF_NORM, &[cfg.hidden_size])?;
    if cfg.arch.norm_style == arch::NormStyle::OnePlus {
        t.data.iter_mut().for_each(|w| *w += 1.0);
    }
    Ok(t)
}

/// The first layer's input for token ids: embedding rows, times sqrt(hidden_size) in families
/// that scale embeddings (Gemma: transformers multiplies by that value rounded to f32).
pub fn embed_input(cfg: &ModelConfig, embed: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
    let mut x = embed_tokens(embed, ids)?;
    if cfg.arch.embed_scale {
        let s = (cfg.hidden_size as f64).sqrt() as f32;
        x.iter_mut().for_each(|v| *v *= s);
    }
    Ok(x)
}

/// [`embed_input`] from a tensor source, reading only the rows of the distinct ids
/// ([`TensorSource::load_rows`]).
pub fn embed_ids(cfg: &ModelConfig, src: &dyn TensorSource, ids: &[u32]) -> Result<Vec<f32>> {
    let h = cfg.hidden_size;
    let vocab = cfg.vocab_size;
    let mut uniq: Vec<u32> = ids.to_vec();
    uniq.sort_unstable();
    uniq.dedup();
    if let Some(&id) = uniq.last().filter(|&&id| id as usize >= vocab) {
        bail!("token id {id} is outside the vocabulary of {vocab}");
    }
    if let Some(sh) = src.shape(arch::HF_EMBED).filter(|sh| sh[..] != [vocab, h]) {
        bail!(
            "{}: tensor {} has shape {sh:?}, expected [{vocab}, {h}]",
            src.describe(),
            src.label(arch::HF_EMBED)
        );
    }
    let rows: Vec<usize> = uniq.iter().map(|&i| i as usize).collect();
    let table = src.load_rows(arch::HF_EMBED, &rows)?;
    if table.len() != rows.len() * h {
        bail!(
            "{}: the embedding's rows have {} values, not the hidden size {h}",
            src.describe(),
            table.len() / rows.len().max(1)
        );
    }
    let scale = cfg
        .arch
        .embed_scale
        .then(|| (cfg.hidden_size as f64).sqrt() as f32);
    let mut x = Vec::with_capacity(ids.len() * h);
    for id in ids {
        let k = uniq.binary_search(id).expect("every id is in uniq");
        let row = &table[k * h..(k + 1) * h];
        match scale {
            Some(s) => x.extend(row.iter().map(|v| v * s)),
            None => x.extend_from_slice(row),
        }
    }
    Ok(x)
}

/// Looks up rows of an embedding matrix.
pub fn embed_tokens(embed: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
    let (vocab, h) = embed.dims2();
    let mut x = Vec::with_capacity(ids.len() * h);
    for &id in ids {
        let id = id as usize;
        if id >= vocab {
            bail!("token id {id} is outside the vocabulary of {vocab}");
        }
        x.extend_from_slice(&embed.data[id * h..(id + 1) * h]);
    }
    Ok(x)
}
