//! Model configuration: read from a Hugging Face `config.json` or from GGUF metadata, validated once.
use crate::arch::{Activation, Arch};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// Rotary-embedding frequency scaling (`rope_scaling` / `rope_parameters` in config.json).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (HF "linear").
    Linear { factor: f64 },
    /// Llama 3.1 piecewise scaling of the inverse frequencies (HF "llama3").
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Each rotary frequency `i` divided by `factors[i]` (`rotary_dim / 2` of them): the
    /// `rope_freqs` tensor of llama.cpp (its converter's form of Llama 3.1 scaling; llama.cpp
    /// computes `theta_i = pos * base^(-2i/d) / factors[i]`). In config.json this is transformers'
    /// `longrope` with `short_factor == long_factor == factors` and `attention_factor` 1
    /// (`inv_freq = 1 / (ext_factors * base^(2i/d))`), which is the same rotation.
    Factors { factors: Vec<f64> },
    /// Phi-3's LongRoPE (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini): two sets of per-frequency
    /// divisors and a scale on cos and sin. transformers 5 (`modeling_rope_utils.py`,
    /// `_compute_longrope_parameters` and `dynamic_rope_update`'s `longrope_frequency_update`):
    /// `inv_freq[i] = 1 / (ext_factors[i] * base^(2i/d))` with `ext_factors = long_factor` when
    /// the forward's sequence length (`max(position_ids) + 1`) exceeds
    /// `original_max_position_embeddings` and `short_factor` otherwise, for every position of
    /// that forward; cos and sin are both multiplied by `attention_factor` (whichever set is in
    /// use). `attention_factor`, when the config does not give it, is `1` if `factor <= 1` and
    /// `sqrt(1 + ln(factor) / ln(original_max_position_embeddings))` otherwise, `factor` being
    /// the config's or `max_position_embeddings / original_max_position_embeddings`.
    ///
    /// shrink's forward switches as transformers does, per forward pass on its sequence length,
    /// for a Hugging Face directory and a GGUF alike. llama.cpp stores the two sets as the
    /// `rope_factors_long.weight` / `rope_factors_short.weight` tensors and the scale as
    /// `{arch}.rope.scaling.attn_factor` (applied to every position as here), and switches on
    /// the *context size* instead (`llama_model::get_rope_factors`: long when `n_ctx_seq` >
    /// `{arch}.rope.scaling.original_context_length`; llama-context.cpp pads `n_ctx_seq` to a
    /// multiple of 256), so a llama.cpp context larger than the original length uses the long
    /// factors even for a short sequence, where transformers and shrink use the short ones
    /// (measured: results/families/README.md, `tools/reference/check_longrope_convert.py`).
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// The sequence length above which LongRoPE's long factors apply (`None` for the others).
    pub fn long_above(&self) -> Option<usize> {
        match self {
            RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            } => Some(*original_max_position_embeddings),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Sliding-window attention span, where the config enables it (Mistral, Qwen2 with
    /// `use_sliding_window`, Gemma 3's local layers): a query at position i sees keys j with
    /// i - window < j <= i.
    pub sliding_window: Option<usize>,
    /// Per layer: true where the layer uses the sliding window (and, with
    /// `rope_local_theta`, the local rope base); empty means no layer does.
    pub sliding_layers: Vec<bool>,
    /// Rope base of the sliding-window layers (Gemma 3's `rope_local_base_freq`); `None`: they
    /// use `rope_theta` and `rope_scaling` like the others.
    pub rope_local_theta: Option<f64>,
    /// The gated MLP's activation.
    pub act: Activation,
    /// Queries are scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2` (Gemma).
    pub query_pre_attn_scalar: Option<f64>,
    /// Leading dimensions of each head that rope rotates (`head_dim` unless the config has a
    /// `partial_rotary_factor`, as Phi-3.5/Phi-4-mini); the rest pass through.
    pub rotary_dim: usize,
    /// `cap * tanh(s / cap)` on attention scores (Gemma 2 style), when set.
    pub attn_softcap: Option<f64>,
    /// `cap * tanh(z / cap)` on the output logits, when set.
    pub final_softcap: Option<f64>,
    /// Mixture-of-Experts settings, for MoE families.
    pub moe: Option<MoeConfig>,
}

/// The Mixture-of-Experts part of a config.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Each expert's intermediate size.
    pub expert_intermediate: usize,
    /// Renormalise the top-k probabilities to sum to 1.
    pub norm_topk_prob: bool,
    /// Layers with a dense MLP instead of experts (Qwen3-MoE's `mlp_only_layers` and
    /// `decoder_sparse_step`).
    pub dense_layers: Vec<usize>,
}

impl MoeConfig {
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        !self.dense_layers.contains(&layer)
    }
}

impl ModelConfig {
    /// True where layer `i` attends through the sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_layers.get(i).copied().unwrap_or(false)
    }
    /// The layout of every layer (see [`crate::arch::layer_layout`]).
    pub fn layer_layouts(&self) -> Vec<crate::arch::Layout> {
        (0..self.num_layers)
            .map(|i| crate::arch::layer_layout(self, i))
            .collect()
    }
    /// This config with only the layers `keep` (original indices, strictly ascending), renumbered
    /// `0..keep.len()`: the layer count and every per-layer list (sliding-window layers, MoE
    /// dense layers) follow the kept layers. The caller checks `keep` (see
    /// [`crate::ModelSource::keep_layers`]).
    pub fn with_layers(&self, keep: &[usize]) -> ModelConfig {
        let mut c = self.clone();
        c.num_layers = keep.len();
        if !self.sliding_layers.is_empty() {
            c.sliding_layers = keep
                .iter()
                .map(|&i| self.sliding_layers.get(i).copied().unwrap_or(false))
                .collect();
        }
        if let Some(m) = &mut c.moe {
            m.dense_layers = keep
                .iter()
                .enumerate()
                .filter(|(_, &i)| !self.moe.as_ref().unwrap().is_moe_layer(i))
                .map(|(new, _)| new)
                .collect();
        }
        c
    }
    /// The attention scale applied to q k^T.
    pub fn attn_scale(&self) -> f32 {
        // transformers computes the scale as a Python float (f64) and multiplies in f32.
        let s = self.query_pre_attn_scalar.unwrap_or(self.head_dim as f64);
        s.powf(-0.5) as f32
    }
}

fn get_usize(v: &Value, key: &str, file: &str) -> Result<usize> {
    match v.get(key) {
        None | Some(Value::Null) => bail!("{file}: required field '{key}' is missing"),
        Some(x) => x.as_u64().map(|n| n as usize).with_context(|| {
            format!("{file}: field '{key}' must be a non-negative integer, found {x}")
        }),
    }
}
fn opt_usize(v: &Value, key: &str, file: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => get_usize(v, key, file).map(Some),
    }
}
/// The shortest decimal that reads back as the same f32, as f64: a GGUF's f32 `1e-6` is written
/// as `1e-6` in config.json, not `9.999999974752427e-7`. Values that are not f32 (an f64 from
/// a config.json) come back unchanged whenever their f32 rounding prints the same.
fn shortest_f32(x: f64) -> f64 {
    let short: f64 = format!("{}", x as f32).parse().unwrap_or(x);
    if short as f32 == x as f32 && (x as f32) as f64 == x {
        short
    } else {
        x
    }
}

fn opt_f64(v: &Value, key: &str, file: &str) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .with_context(|| format!("{file}: field '{key}' must be a number, found {x}")),
    }
}
fn opt_bool(v: &Value, key: &str, file: &str) -> Result<Option<bool>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .with_context(|| format!("{file}: field '{key}' must be true or false, found {x}")),
    }
}
fn opt_token_id(v: &Value, key: &str, file: &str) -> Result<Option<u32>> {
    let id = match v.get(key) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::Array(a)) => a.first().and_then(|x| x.as_u64()),
        _ => None,
    };
    id.map(|n| {
        u32::try_from(n).with_context(|| format!("{file}: field '{key}' = {n} is not a token id"))
    })
    .transpose()
}

impl ModelConfig {
    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_hf_json(&v, &path.display().to_string())
    }

    /// Parses a config.json value; `file` names the source in error messages.
    pub fn from_hf_json(v: &Value, file: &str) -> Result<Self> {
        if !v.is_object() {
            bail!("{file}: expected a JSON object");
        }
        let model_type = v.get("model_type").and_then(|x| x.as_str());
        let archs: Vec<&str> = v
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let arch = match model_type {
            Some(t) => Arch::from_model_type(t)
                .with_context(|| format!("{file}: unknown architecture model_type '{t}' (supported: {})", Arch::supported()))?,
            None => archs
                .iter()
                .find_map(|a| Arch::from_hf_class(a))
                .with_context(|| format!("{file}: no 'model_type' and no known 'architectures' entry (found {archs:?}; supported: {})", Arch::supported()))?,
        };
        if model_type == Some("gemma3") {
            bail!("{file}: model_type 'gemma3' is the multimodal Gemma3ForConditionalGeneration; shrink reads the text-only 'gemma3_text' (Gemma3ForCausalLM)");
        }
        let act_key = ["hidden_activation", "hidden_act"]
            .into_iter()
            .find(|k| v.get(*k).is_some_and(|x| x.is_string()));
        let act = match act_key {
            None => arch.default_act,
            Some(k) => {
                let name = v[k].as_str().unwrap_or_default();
                Activation::from_hf(name).with_context(|| {
                    format!("{file}: {k} '{name}' is not supported (supported: silu, gelu_pytorch_tanh)")
                })?
            }
        };
        let hidden_size = get_usize(v, "hidden_size", file)?;
        let num_heads = get_usize(v, "num_attention_heads", file)?;
        let num_kv_heads = opt_usize(v, "num_key_value_heads", file)?.unwrap_or(num_heads);
        let head_dim = match opt_usize(v, "head_dim", file)? {
            Some(h) => h,
            None => {
                if num_heads == 0 || hidden_size % num_heads != 0 {
                    bail!("{file}: hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}");
                }
                hidden_size / num_heads
            }
        };
        // transformers: dim = int(head_dim * partial_rotary_factor)
        let rotary_dim = match opt_f64(v, "partial_rotary_factor", file)? {
            None => head_dim,
            Some(f) if f > 0.0 && f <= 1.0 => (head_dim as f64 * f) as usize,
            Some(f) => bail!("{file}: partial_rotary_factor {f} must be in (0, 1]"),
        };
        // transformers 5 nests rope settings in `rope_parameters` (per layer type for models
        // with local and global layers); older files use rope_theta + rope_scaling (+
        // rope_local_base_freq).
        let rope_params = v.get("rope_parameters").filter(|x| x.is_object());
        let per_type =
            rope_params.filter(|p| p.get("full_attention").is_some_and(|x| x.is_object()));
        let global_params = match per_type {
            Some(p) => p.get("full_attention"),
            None => rope_params,
        };
        let rope_theta = opt_f64(v, "rope_theta", file)?
            .or(global_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(|x| x.as_f64()))
            .unwrap_or(10000.0);
        let scaling = v
            .get("rope_scaling")
            .filter(|x| x.is_object())
            .or(global_params);
        let max_position_embeddings =
            opt_usize(v, "max_position_embeddings", file)?.unwrap_or(2048);
        let rope_scaling = match scaling {
            None => None,
            Some(s) => parse_rope_scaling(s, v, arch, max_position_embeddings, file)?,
        };
        let rope_local_theta = match opt_f64(v, "rope_local_base_freq", file)? {
            Some(t) => Some(t),
            None => per_type
                .and_then(|p| p.get("sliding_attention"))
                .and_then(|p| p.get("rope_theta"))
                .and_then(|x| x.as_f64()),
        };
        let attention_bias = opt_bool(v, "attention_bias", file)?.unwrap_or(false);
        let (qkv_bias, o_bias) = if arch.qkv_bias_always {
            (true, false)
        } else {
            (attention_bias, attention_bias)
        };
        let num_layers = get_usize(v, "num_hidden_layers", file)?;
        let (sliding_window, sliding_layers) = parse_sliding(v, arch, num_layers, file)?;
        let moe = parse_moe(v, arch, num_layers, file)?;
        let cfg = ModelConfig {
            arch,
            vocab_size: get_usize(v, "vocab_size", file)?,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size", file)?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f64(v, "rms_norm_eps", file)?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: opt_bool(v, "tie_word_embeddings", file)?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: opt_bool(v, "mlp_bias", file)?.unwrap_or(false),
            bos_token_id: opt_token_id(v, "bos_token_id", file)?,
            eos_token_id: opt_token_id(v, "eos_token_id", file)?,
            sliding_window,
            sliding_layers,
            rope_local_theta,
            act,
            query_pre_attn_scalar: opt_f64(v, "query_pre_attn_scalar", file)?,
            rotary_dim,
            attn_softcap: match arch.attn_softcap {
                true => opt_f64(v, "attn_logit_softcapping", file)?,
                false => None,
            },
            final_softcap: opt_f64(v, "final_logit_softcapping", file)?,
            moe,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Checks that the sizes are consistent; `file` names the source in the message.
    pub fn validate(&self, file: &str) -> Result<()> {
        let nz = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (k, n) in nz {
            if n == 0 {
                bail!("{file}: {k} must be positive");
            }
            if n > 1 << 24 {
                bail!("{file}: {k} = {n} is implausibly large");
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            bail!(
                "{file}: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if self.head_dim % 2 != 0 {
            bail!(
                "{file}: head_dim {} must be even for rotary embeddings",
                self.head_dim
            );
        }
        if self.rotary_dim % 2 != 0 || self.rotary_dim == 0 || self.rotary_dim > self.head_dim {
            bail!(
                "{file}: the rotary dimension {} must be even and between 2 and head_dim {}",
                self.rotary_dim,
                self.head_dim
            );
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            bail!("{file}: rms_norm_eps {} is out of range", self.rms_norm_eps);
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            bail!("{file}: rope_theta {} must be positive", self.rope_theta);
        }
        let positive = |k: &str, x: f64| -> Result<()> {
            if !(x > 0.0 && x.is_finite()) {
                bail!("{file}: rope scaling '{k}' = {x} must be a positive number");
            }
            Ok(())
        };
        for (k, x) in [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
            ("rope_local_base_freq", self.rope_local_theta),
        ] {
            if let Some(x) = x {
                if !(x > 0.0 && x.is_finite()) {
                    bail!("{file}: {k} = {x} must be a positive number");
                }
            }
        }
        if !self.sliding_layers.is_empty() && self.sliding_layers.len() != self.num_layers {
            bail!(
                "{file}: the sliding-window pattern covers {} layers but the model has {}",
                self.sliding_layers.len(),
                self.num_layers
            );
        }
        if let Some(m) = &self.moe {
            if m.expert_intermediate == 0 || m.expert_intermediate > 1 << 24 {
                bail!(
                    "{file}: the experts' intermediate size {} is out of range",
                    m.expert_intermediate
                );
            }
            if m.num_experts > 1 << 12 {
                bail!("{file}: {} experts is implausibly many", m.num_experts);
            }
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                for (k, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if f.len() != self.rotary_dim / 2 {
                        bail!(
                            "{file}: rope scaling 'longrope': '{k}' has {} entries; the rotary dimension {} (head_dim {} x partial_rotary_factor) needs {}",
                            f.len(),
                            self.rotary_dim,
                            self.head_dim,
                            self.rotary_dim / 2
                        );
                    }
                    if let Some(bad) = f.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                        bail!("{file}: rope scaling 'longrope': '{k}' holds {bad}, not a positive number");
                    }
                }
                if *original_max_position_embeddings == 0 {
                    bail!("{file}: rope scaling 'longrope': original_max_position_embeddings must be positive");
                }
                positive("attention_factor", *attention_factor)?;
            }
            Some(RopeScaling::Factors { factors }) => {
                if factors.len() != self.rotary_dim / 2 {
                    bail!(
                        "{file}: {} per-frequency rope factors for a rotary dimension of {} (expected {})",
                        factors.len(),
                        self.rotary_dim,
                        self.rotary_dim / 2
                    );
                }
                if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                    bail!("{file}: per-frequency rope factor {bad} is not a positive number");
                }
            }
            Some(RopeScaling::Linear { factor }) => positive("factor", *factor)?,
            &Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                positive("factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                positive(
                    "original_max_position_embeddings",
                    original_max_position_embeddings,
                )?;
                if high_freq_factor <= low_freq_factor {
                    bail!("{file}: rope scaling 'high_freq_factor' ({high_freq_factor}) must exceed 'low_freq_factor' ({low_freq_factor})");
                }
            }
        }
        Ok(())
    }

    /// The config.json a Hugging Face loader (transformers) reads for this model.
    pub fn to_hf_json(&self) -> Value {
        let rope_scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                json!({"rope_type": "linear", "type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": *original_max_position_embeddings as u64,
            }),
            Some(RopeScaling::Factors { factors }) => json!({
                "rope_type": "longrope", "short_factor": factors, "long_factor": factors,
                "attention_factor": 1.0, "factor": 1.0,
                "original_max_position_embeddings": self.max_position_embeddings,
            }),
            // attention_factor stated, not left to be derived (a GGUF's may not be the derived one)
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => json!({
                "rope_type": "longrope", "short_factor": short_factor, "long_factor": long_factor,
                "attention_factor": attention_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let mut v = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.act.hf_name(),
            "rms_norm_eps": shortest_f32(self.rms_norm_eps),
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
            "use_cache": true,
            "initializer_range": 0.02,
        });
        let o = v.as_object_mut().unwrap();
        let name = self.arch.name;
        if !self.arch.qkv_bias_always {
            o.insert("attention_bias".into(), json!(self.qkv_bias));
        }
        if name == "llama" {
            o.insert("mlp_bias".into(), json!(self.mlp_bias));
        }
        if name != "llama" {
            o.insert("sliding_window".into(), json!(self.sliding_window));
        }
        if matches!(name, "qwen2" | "qwen3" | "qwen3_moe") {
            o.insert(
                "use_sliding_window".into(),
                json!(self.sliding_window.is_some()),
            );
            if self.sliding_window.is_some() {
                let first = self.sliding_layers.iter().position(|s| *s);
                o.insert(
                    "max_window_layers".into(),
                    json!(first.unwrap_or(self.num_layers)),
                );
            }
        }
        if !self.sliding_layers.is_empty() {
            let types: Vec<&str> = self
                .sliding_layers
                .iter()
                .map(|s| {
                    if *s {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect();
            o.insert("layer_types".into(), json!(types));
        }
        if self.rotary_dim != self.head_dim {
            o.insert(
                "partial_rotary_factor".into(),
                json!(self.rotary_dim as f64 / self.head_dim as f64),
            );
        }
        if name == "phi3" {
            // transformers' Phi3Config puts this top-level key (default 4096) into the rope
            // parameters, over any value inside rope_scaling
            let orig = self
                .rope_scaling
                .as_ref()
                .and_then(|r| r.long_above())
                .unwrap_or(self.max_position_embeddings);
            o.insert("original_max_position_embeddings".into(), json!(orig));
            // Phi3Config's default pad_token_id is 32000, which a smaller vocabulary cannot
            // hold (transformers then refuses to build the embedding)
            if self.vocab_size <= 32000 {
                o.insert("pad_token_id".into(), Value::Null);
            }
        }
        if name == "gemma3_text" {
            o.insert("hidden_activation".into(), json!(self.act.hf_name()));
            // transformers' Gemma3TextConfig types this field as int (256 in the released
            // configs) and refuses 256.0.
            let scalar = self.query_pre_attn_scalar.map(|s| {
                if s.fract() == 0.0 && s.abs() < 1e15 {
                    json!(s as i64)
                } else {
                    json!(s)
                }
            });
            o.insert("query_pre_attn_scalar".into(), json!(scalar));
            o.insert("rope_local_base_freq".into(), json!(self.rope_local_theta));
            o.insert("attn_logit_softcapping".into(), json!(self.attn_softcap));
            o.insert("final_logit_softcapping".into(), json!(self.final_softcap));
        }
        if let Some(m) = &self.moe {
            o.insert("num_experts_per_tok".into(), json!(m.top_k));
            if name == "mixtral" {
                o.insert("num_local_experts".into(), json!(m.num_experts));
            } else if name == "olmoe" {
                // each expert is intermediate_size wide
                o.insert("num_experts".into(), json!(m.num_experts));
                o.insert("intermediate_size".into(), json!(m.expert_intermediate));
                o.insert("norm_topk_prob".into(), json!(m.norm_topk_prob));
                o.insert("clip_qkv".into(), Value::Null);
            } else {
                o.insert("num_experts".into(), json!(m.num_experts));
                o.insert("moe_intermediate_size".into(), json!(m.expert_intermediate));
                o.insert("norm_topk_prob".into(), json!(m.norm_topk_prob));
                o.insert("decoder_sparse_step".into(), json!(1));
                o.insert("mlp_only_layers".into(), json!(m.dense_layers));
            }
        }
        if let Some(b) = self.bos_token_id {
            o.insert("bos_token_id".into(), json!(b));
        }
        if let Some(e) = self.eos_token_id {
            o.insert("eos_token_id".into(), json!(e));
        }
        v
    }
}

/// The sliding window and which layers use it: `layer_types` where the config lists them
/// (transformers 5 writes it for every family with local layers), else Gemma's
/// `sliding_window_pattern` (every p-th layer global), else Mistral's window on every layer, or
/// Qwen's `use_sliding_window` from `max_window_layers` on.
fn parse_sliding(
    v: &Value,
    arch: Arch,
    num_layers: usize,
    file: &str,
) -> Result<(Option<usize>, Vec<bool>)> {
    let enabled = match arch.name {
        "qwen2" | "qwen3" | "qwen3_moe" => {
            opt_bool(v, "use_sliding_window", file)?.unwrap_or(false)
        }
        _ => true,
    };
    let window = if enabled {
        opt_usize(v, "sliding_window", file)?
    } else {
        None
    };
    let Some(w) = window else {
        return Ok((None, vec![]));
    };
    if w == 0 {
        bail!("{file}: sliding_window must be positive");
    }
    if let Some(lt) = v.get("layer_types").filter(|x| !x.is_null()) {
        let a = lt
            .as_array()
            .with_context(|| format!("{file}: field 'layer_types' must be a list"))?;
        if a.len() != num_layers {
            bail!(
                "{file}: 'layer_types' lists {} layers but num_hidden_layers is {num_layers}",
                a.len()
            );
        }
        let layers = a
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => bail!("{file}: 'layer_types' entry {t} is not 'sliding_attention' or 'full_attention'"),
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok((Some(w), layers));
    }
    let layers = match arch.name {
        "gemma3_text" => {
            let p = opt_usize(v, "sliding_window_pattern", file)?.with_context(|| {
                format!("{file}: a sliding_window needs 'layer_types' or 'sliding_window_pattern'")
            })?;
            if p == 0 {
                bail!("{file}: sliding_window_pattern must be positive");
            }
            (0..num_layers).map(|i| (i + 1) % p != 0).collect()
        }
        "qwen2" | "qwen3" | "qwen3_moe" => {
            let from = opt_usize(v, "max_window_layers", file)?.unwrap_or(0);
            (0..num_layers).map(|i| i >= from).collect()
        }
        _ => vec![true; num_layers],
    };
    Ok((Some(w), layers))
}

/// The experts of a MoE family (`None` for dense families).
fn parse_moe(v: &Value, arch: Arch, num_layers: usize, file: &str) -> Result<Option<MoeConfig>> {
    if !arch.is_moe() {
        return Ok(None);
    }
    // Qwen3-MoE hub configs say num_experts; transformers 5 writes num_local_experts
    let (experts_key, ff_key) = match arch.name {
        "mixtral" => ("num_local_experts", "intermediate_size"),
        // OLMoE: every layer MoE, each expert `intermediate_size` wide
        "olmoe" => ("num_experts", "intermediate_size"),
        _ if v.get("num_experts").is_none() && v.get("num_local_experts").is_some() => {
            ("num_local_experts", "moe_intermediate_size")
        }
        _ => ("num_experts", "moe_intermediate_size"),
    };
    let num_experts = get_usize(v, experts_key, file)?;
    let top_k = get_usize(v, "num_experts_per_tok", file)?;
    if num_experts == 0 || top_k == 0 || top_k > num_experts {
        bail!(
            "{file}: num_experts_per_tok {top_k} must be between 1 and {experts_key} {num_experts}"
        );
    }
    if let Some(c) = v.get("clip_qkv").filter(|x| !x.is_null()) {
        bail!("{file}: clip_qkv {c} (clamping q/k/v) is not supported; only null");
    }
    let mut dense_layers = vec![];
    if !matches!(arch.name, "mixtral" | "olmoe") {
        if let Some(m) = v.get("mlp_only_layers").filter(|x| !x.is_null()) {
            let a = m.as_array().with_context(|| {
                format!("{file}: field 'mlp_only_layers' must be a list of layer indices")
            })?;
            for x in a {
                let i = x
                    .as_u64()
                    .filter(|&i| (i as usize) < num_layers)
                    .with_context(|| format!("{file}: 'mlp_only_layers' entry {x} is not a layer index below {num_layers}"))?;
                dense_layers.push(i as usize);
            }
        }
        let step = opt_usize(v, "decoder_sparse_step", file)?.unwrap_or(1);
        if step == 0 {
            bail!("{file}: decoder_sparse_step must be positive");
        }
        for i in 0..num_layers {
            if (i + 1) % step != 0 && !dense_layers.contains(&i) {
                dense_layers.push(i);
            }
        }
        dense_layers.sort();
    }
    Ok(Some(MoeConfig {
        num_experts,
        top_k,
        expert_intermediate: get_usize(v, ff_key, file)?,
        norm_topk_prob: match arch.name {
            "mixtral" => true,
            _ => opt_bool(v, "norm_topk_prob", file)?.unwrap_or(false),
        },
        dense_layers,
    }))
}

/// The rope scaling of a config.json: `s` is `rope_scaling` (or the global `rope_parameters`),
/// `v` the whole config.
fn parse_rope_scaling(
    s: &Value,
    v: &Value,
    arch: Arch,
    max_position_embeddings: usize,
    file: &str,
) -> Result<Option<RopeScaling>> {
    let mut ty = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|x| x.as_str())
        .unwrap_or("default");
    if arch.name == "phi3" && matches!(ty, "su" | "yarn") {
        // transformers' Phi3Config.convert_rope_params_to_dict: the older names of longrope
        ty = "longrope";
    }
    let f = |k: &str| -> Result<f64> {
        s.get(k)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("{file}: rope scaling '{ty}' needs a numeric '{k}'"))
    };
    let opt = |k: &str| -> Result<Option<f64>> {
        match s.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_f64().map(Some).with_context(|| {
                format!("{file}: rope scaling '{ty}': '{k}' must be a number, found {x}")
            }),
        }
    };
    Ok(match ty {
        "default" | "none" => None,
        "linear" => Some(RopeScaling::Linear { factor: f("factor")? }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: f("original_max_position_embeddings")?,
        }),
        "longrope" => {
            // transformers 5, modeling_rope_utils.py (`standardize_rope_params`,
            // `_compute_longrope_parameters`); see RopeScaling::LongRope.
            let list = |k: &str| -> Result<Vec<f64>> {
                s.get(k)
                    .and_then(|x| x.as_array())
                    .with_context(|| format!("{file}: rope scaling 'longrope' needs a list '{k}'"))?
                    .iter()
                    .map(|x| {
                        x.as_f64().with_context(|| {
                            format!("{file}: rope scaling 'longrope': '{k}' holds a non-number {x}")
                        })
                    })
                    .collect()
            };
            let (short, long) = (list("short_factor")?, list("long_factor")?);
            // `standardize_rope_params` (run again when the rotary embedding is built) copies a
            // top-level original_max_position_embeddings over the rope parameters' own;
            // Phi3Config always has that field (default 4096). Else the rope parameters' value,
            // else max_position_embeddings.
            let top = opt_usize(v, "original_max_position_embeddings", file)?;
            let orig = match (top, arch.name) {
                (Some(o), _) => o,
                (None, "phi3") => 4096,
                (None, _) => match opt("original_max_position_embeddings")? {
                    Some(o) if o >= 1.0 && o.fract() == 0.0 => o as usize,
                    Some(o) => bail!("{file}: rope scaling 'longrope': original_max_position_embeddings {o} must be a positive integer"),
                    None => max_position_embeddings,
                },
            };
            if orig == 0 {
                bail!("{file}: original_max_position_embeddings must be positive");
            }
            let factor = match opt("factor")? {
                Some(x) => x,
                None => max_position_embeddings as f64 / orig as f64,
            };
            let attention_factor = match opt("attention_factor")? {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (orig as f64).ln()).sqrt(),
            };
            if short == long && attention_factor == 1.0 {
                // one fixed set of factors (as shrink writes llama.cpp's rope_freqs)
                Some(RopeScaling::Factors { factors: short })
            } else {
                Some(RopeScaling::LongRope {
                    short_factor: short,
                    long_factor: long,
                    original_max_position_embeddings: orig,
                    attention_factor,
                })
            }
        }
        other => bail!("{file}: rope scaling type '{other}' is not supported (supported: default, linear, llama3, longrope)"),
    })
}

#[cfg(test)]
mod tests {
    use super::shortest_f32;

    #[test]
    fn shortest_f32_prints_gguf_floats_as_written() {
        assert_eq!(shortest_f32(1e-6f32 as f64), 1e-6);
        assert_eq!(shortest_f32(1e-5f32 as f64), 1e-5);
        // an f64 from a config.json is kept as it is
        assert_eq!(shortest_f32(1e-6), 1e-6);
        assert_eq!(shortest_f32(0.1), 0.1);
        assert_eq!(shortest_f32(10000.0), 10000.0);
    }
}
