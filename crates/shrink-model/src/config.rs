//! Model configuration: read from a Hugging Face `config.json` or from GGUF metadata, validated once.
use crate::arch::Arch;
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
    /// `use_sliding_window`); shrink runs full attention and refuses longer sequences.
    pub sliding_window: Option<usize>,
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
        if let Some(act) = v.get("hidden_act").and_then(|x| x.as_str()) {
            if act != "silu" {
                bail!("{file}: hidden_act '{act}' is not supported (the Llama family uses 'silu')");
            }
        }
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
        // transformers 5 nests rope settings in `rope_parameters`; older files use rope_theta + rope_scaling.
        let rope_params = v.get("rope_parameters").filter(|x| x.is_object());
        let rope_theta = opt_f64(v, "rope_theta", file)?
            .or(rope_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(|x| x.as_f64()))
            .unwrap_or(10000.0);
        let scaling = v
            .get("rope_scaling")
            .filter(|x| x.is_object())
            .or(rope_params);
        let rope_scaling = match scaling {
            None => None,
            Some(s) => parse_rope_scaling(s, file)?,
        };
        let attention_bias = opt_bool(v, "attention_bias", file)?.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: get_usize(v, "vocab_size", file)?,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size", file)?,
            num_layers: get_usize(v, "num_hidden_layers", file)?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: opt_f64(v, "rms_norm_eps", file)?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_usize(v, "max_position_embeddings", file)?.unwrap_or(2048),
            tie_word_embeddings: opt_bool(v, "tie_word_embeddings", file)?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: opt_bool(v, "mlp_bias", file)?.unwrap_or(false),
            bos_token_id: opt_token_id(v, "bos_token_id", file)?,
            eos_token_id: opt_token_id(v, "eos_token_id", file)?,
            sliding_window: match arch {
                Arch::Mistral => opt_usize(v, "sliding_window", file)?,
                Arch::Qwen2 if opt_bool(v, "use_sliding_window", file)?.unwrap_or(false) => {
                    opt_usize(v, "sliding_window", file)?
                }
                _ => None,
            },
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
        match self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => positive("factor", factor)?,
            Some(RopeScaling::Llama3 {
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
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
            "use_cache": true,
            "initializer_range": 0.02,
        });
        let o = v.as_object_mut().unwrap();
        if self.arch == Arch::Llama {
            o.insert("attention_bias".into(), json!(self.qkv_bias));
            o.insert("mlp_bias".into(), json!(self.mlp_bias));
        }
        if self.arch != Arch::Llama {
            o.insert("sliding_window".into(), json!(self.sliding_window));
            o.insert(
                "use_sliding_window".into(),
                json!(self.sliding_window.is_some()),
            );
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

fn parse_rope_scaling(s: &Value, file: &str) -> Result<Option<RopeScaling>> {
    let ty = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|x| x.as_str())
        .unwrap_or("default");
    let f = |k: &str| -> Result<f64> {
        s.get(k)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("{file}: rope scaling '{ty}' needs a numeric '{k}'"))
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
        other => bail!("{file}: rope scaling type '{other}' is not supported (supported: default, linear, llama3)"),
    })
}
