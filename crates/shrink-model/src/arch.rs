//! Per-architecture tables: tensor names (Hugging Face and GGUF) and which linears share an input.
//!
//! This is the one place that knows tensor names. Every architecture of the Llama family shares the
//! decoder layout below; they differ only in biases, tying and rotary settings (see `ModelConfig`).

/// A supported decoder architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3 and models built on it (SmolLM, TinyLlama, ...).
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn from_model_type(t: &str) -> Option<Arch> {
        match t {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }
    pub fn from_hf_class(c: &str) -> Option<Arch> {
        match c {
            "LlamaForCausalLM" => Some(Arch::Llama),
            "MistralForCausalLM" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            _ => None,
        }
    }
    /// `general.architecture` in GGUF (llama.cpp writes Mistral models as "llama").
    pub fn from_gguf(a: &str) -> Option<Arch> {
        match a {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }
    pub fn supported() -> &'static str {
        "llama, mistral, qwen2"
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Mistral => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
    /// llama.cpp's converter permutes the rows of q/k for the "llama" GGUF architecture (it applies
    /// rotary embeddings to adjacent pairs instead of halves); loading must undo that.
    pub fn gguf_permutes_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::Mistral)
    }
}

/// The seven linear layers of a decoder block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Linear {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Linear {
    pub const ALL: [Linear; 7] = [
        Linear::Q,
        Linear::K,
        Linear::V,
        Linear::O,
        Linear::Gate,
        Linear::Up,
        Linear::Down,
    ];
    /// Short name as in Hugging Face tensor names (`q_proj`, ...).
    pub fn hf_name(self) -> &'static str {
        match self {
            Linear::Q => "q_proj",
            Linear::K => "k_proj",
            Linear::V => "v_proj",
            Linear::O => "o_proj",
            Linear::Gate => "gate_proj",
            Linear::Up => "up_proj",
            Linear::Down => "down_proj",
        }
    }
    fn hf_module(self) -> &'static str {
        match self {
            Linear::Q | Linear::K | Linear::V | Linear::O => "self_attn",
            _ => "mlp",
        }
    }
    fn gguf_name(self) -> &'static str {
        match self {
            Linear::Q => "attn_q",
            Linear::K => "attn_k",
            Linear::V => "attn_v",
            Linear::O => "attn_output",
            Linear::Gate => "ffn_gate",
            Linear::Up => "ffn_up",
            Linear::Down => "ffn_down",
        }
    }
    /// The group of linears that reads the same input as this one.
    pub fn group(self) -> Group {
        match self {
            Linear::Q | Linear::K | Linear::V => Group::AttnIn,
            Linear::O => Group::AttnOut,
            Linear::Gate | Linear::Up => Group::MlpIn,
            Linear::Down => Group::MlpOut,
        }
    }
}

/// Linears that share one input, in the order the forward pass (and "true sequential"
/// compression) visits them: {q,k,v} -> {o} -> {gate,up} -> {down}.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// q, k, v read the normed residual stream.
    AttnIn,
    /// o reads the attention output.
    AttnOut,
    /// gate, up read the normed residual stream after attention.
    MlpIn,
    /// down reads silu(gate) * up.
    MlpOut,
}

impl Group {
    pub const ORDER: [Group; 4] = [Group::AttnIn, Group::AttnOut, Group::MlpIn, Group::MlpOut];
    pub fn linears(self) -> &'static [Linear] {
        match self {
            Group::AttnIn => &[Linear::Q, Linear::K, Linear::V],
            Group::AttnOut => &[Linear::O],
            Group::MlpIn => &[Linear::Gate, Linear::Up],
            Group::MlpOut => &[Linear::Down],
        }
    }
}

/// Hugging Face name of a linear's weight (`suffix` = "weight" or "bias").
pub fn hf_linear(layer: usize, l: Linear, suffix: &str) -> String {
    format!(
        "model.layers.{layer}.{}.{}.{suffix}",
        l.hf_module(),
        l.hf_name()
    )
}
pub fn hf_input_norm(layer: usize) -> String {
    format!("model.layers.{layer}.input_layernorm.weight")
}
pub fn hf_post_norm(layer: usize) -> String {
    format!("model.layers.{layer}.post_attention_layernorm.weight")
}
pub const HF_EMBED: &str = "model.embed_tokens.weight";
pub const HF_NORM: &str = "model.norm.weight";
pub const HF_LM_HEAD: &str = "lm_head.weight";

/// Maps a Hugging Face tensor name to its GGUF name (llama.cpp's naming), if it has one.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    match name {
        HF_EMBED => return Some("token_embd.weight".into()),
        HF_NORM => return Some("output_norm.weight".into()),
        HF_LM_HEAD => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let layer: usize = idx.parse().ok()?;
    if rest == "input_layernorm.weight" {
        return Some(format!("blk.{layer}.attn_norm.weight"));
    }
    if rest == "post_attention_layernorm.weight" {
        return Some(format!("blk.{layer}.ffn_norm.weight"));
    }
    for l in Linear::ALL {
        for suffix in ["weight", "bias"] {
            if rest == format!("{}.{}.{suffix}", l.hf_module(), l.hf_name()) {
                return Some(format!("blk.{layer}.{}.{suffix}", l.gguf_name()));
            }
        }
    }
    None
}

/// All Hugging Face tensor names a model with this config has, in a stable order.
pub fn hf_tensor_names(cfg: &crate::ModelConfig) -> Vec<String> {
    let mut v = vec![HF_EMBED.to_string()];
    for i in 0..cfg.num_layers {
        v.push(hf_input_norm(i));
        for l in Linear::ALL {
            v.push(hf_linear(i, l, "weight"));
            let has_bias = match l.group() {
                Group::AttnIn => cfg.qkv_bias,
                Group::AttnOut => cfg.o_bias,
                _ => cfg.mlp_bias,
            };
            if has_bias {
                v.push(hf_linear(i, l, "bias"));
            }
        }
        v.push(hf_post_norm(i));
    }
    v.push(HF_NORM.to_string());
    if !cfg.tie_word_embeddings {
        v.push(HF_LM_HEAD.to_string());
    }
    v
}
