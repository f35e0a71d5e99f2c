//! Evaluation with one decoder layer in memory at a time.
//!
//! [`Model`](crate::Model) holds every layer in f32: a 1.5B model needs 6 GB for that, a 7B model
//! would not fit in 24 GB. A [`Streamed`] model instead keeps the *activations* of all the
//! windows it evaluates and brings the weights through them one layer at a time: embed every
//! window, drop the embedding; for each layer, load (dequantize) it, run every window through it
//! in batches, drop it; then norm and hand the hidden states to the head. Peak memory is one layer
//! plus the windows' hidden states (`windows x seq x hidden x 4` bytes, bounded by the caller,
//! see [`windows_per_pass`]) plus the head, instead of the whole model.
//!
//! Why this design rather than keeping the stored (quantized) weights and dequantizing tiles
//! inside the matmul: it works the same for every source (GGUF blocks of any ggml type, packed
//! compressed-tensors/GPTQ codes, f16/bf16 safetensors) without a quantized matmul kernel per
//! format, and every window sees exactly the f32 weights, operations and batch shapes of the
//! resident path, so its results equal [`Model`]'s. The cost is dequantizing each layer once per
//! pass instead of once per run: with every window in one pass, that is the same work.
//!
//! Model files are memory-mapped; [`crate::resident::release`] drops the pages of each tensor
//! after it is copied, so the mapped file does not fill the resident set either.
use crate::config::ModelConfig;
use crate::layer::{load_checked, DecoderLayer, NoHook, Rope};
use crate::model::{final_norm, head_logits, load_final_norm};
use crate::source::TensorSource;
use crate::{arch, Tensor};
use anyhow::{bail, Result};

/// A model read one layer at a time from its tensors.
pub struct Streamed<'a> {
    pub config: &'a ModelConfig,
    pub tensors: &'a dyn TensorSource,
    /// Every layer's [`DecoderLayer::act_quant`] (activation fake-quantization of this model
    /// only: a reference evaluated beside it keeps exact activations).
    pub act_quant: Option<crate::actquant::ActQuant>,
}

/// The output head: the final norm is applied by [`Streamed::hidden_states`]; this is the
/// projection to the vocabulary (the embedding when tied).
pub struct Head<'a> {
    config: &'a ModelConfig,
    weight: Tensor,
}

impl Head<'_> {
    /// Logits `[rows, vocab]` of normed hidden states `[rows, hidden]` (as [`crate::Model::logits`]).
    pub fn logits(&self, hidden: &[f32], rows: usize) -> Vec<f32> {
        head_logits(self.config, &self.weight, hidden, rows)
    }
    pub fn vocab(&self) -> usize {
        self.weight.shape[0]
    }
}

/// How many windows of `seq` tokens one pass holds so that their hidden states stay within
/// `budget_bytes` (at least one).
pub fn windows_per_pass(cfg: &ModelConfig, seq: usize, budget_bytes: usize) -> usize {
    (budget_bytes / (seq * cfg.hidden_size * 4).max(1)).max(1)
}

impl<'a> Streamed<'a> {
    pub fn new(config: &'a ModelConfig, tensors: &'a dyn TensorSource) -> Self {
        Streamed {
            config,
            tensors,
            act_quant: None,
        }
    }

    /// The same model with its linears' inputs fake-quantized by `a`.
    pub fn with_act_quant(mut self, a: Option<crate::actquant::ActQuant>) -> Self {
        self.act_quant = a;
        self
    }

    /// The final normed hidden states `[n * seq, hidden]` of `n` windows of `seq` tokens
    /// (`ids.len() == n * seq`), computed layer by layer; each layer runs on `batch` windows at a
    /// time (the batch shapes of [`crate::Model::hidden_states`] called on the same batches).
    /// `progress(layers_done, layers)` is called after each layer.
    pub fn hidden_states(
        &self,
        ids: &[u32],
        n: usize,
        seq: usize,
        batch: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<f32>> {
        let cfg = self.config;
        if ids.len() != n * seq {
            bail!("expected {n} x {seq} token ids, got {}", ids.len());
        }
        let h = cfg.hidden_size;
        let mut x = crate::model::embed_ids(cfg, self.tensors, ids)?;
        let rope = Rope::new(cfg, seq);
        let batch = batch.max(1);
        for i in 0..cfg.num_layers {
            let mut layer = DecoderLayer::load(self.tensors, cfg, i)?;
            layer.act_quant = self.act_quant;
            for (b, chunk) in x.chunks_mut(batch * seq * h).enumerate() {
                let rows = chunk.len() / h;
                layer.forward(cfg, &rope, chunk, rows / seq, seq, &mut NoHook)?;
                if let Some(j) = chunk.iter().position(|v| !v.is_finite()) {
                    bail!(
                        "layer {i}: its output has a non-finite value ({}) at token {} (the weights are finite; the activations overflow)",
                        chunk[j],
                        b * batch * seq + j / h
                    );
                }
            }
            drop(layer);
            progress(i + 1, cfg.num_layers);
        }
        let norm = load_final_norm(cfg, self.tensors)?;
        final_norm(cfg, &norm, &x)
    }

    /// Loads the output head (the embedding when tied).
    pub fn head(&self) -> Result<Head<'a>> {
        let c = self.config;
        let name = if c.tie_word_embeddings {
            arch::HF_EMBED
        } else {
            arch::HF_LM_HEAD
        };
        Ok(Head {
            config: c,
            weight: load_checked(self.tensors, name, &[c.vocab_size, c.hidden_size])?,
        })
    }
}
