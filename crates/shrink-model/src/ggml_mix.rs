//! llama-quantize's mixes: which ggml type each tensor of a model gets for a file type such as
//! `Q4_K_M` (a port of `llama_tensor_get_type`, `llama_tensor_get_type_impl` and
//! `tensor_type_fallback` in llama.cpp's `src/llama-quant.cpp`, as vendored in llama-cpp-python
//! 0.3.36).
//!
//! The rules are llama.cpp's, kept as it states them so that the type of every tensor equals what
//! `llama-quantize` picks for the same model, file type and imatrix presence:
//! - the token embedding follows the output head's rule when the head is tied (Q6_K, or Q8_0 when
//!   a row does not divide into 256-blocks), otherwise the main type;
//! - `attn_v` (and fused `attn_qkv`) and `ffn_down` get more bits in some layers, counted in the
//!   order llama.cpp walks the tensors (by layer, then by name);
//! - every type whose block does not divide a row falls back (Q4_K -> Q5_0, Q6_K -> Q8_0, ...).
//!
//! Not ported: the Falcon and GLM5 special cases, and the `LLM_TYPE_70B` attn_v bump (an
//! 80-layer Llama-2-70B rule) — shrink loads none of those models.
use crate::arch;
use crate::config::ModelConfig;
use crate::ggml_quant::fallback_type;
use crate::gguf::GgmlType;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// A llama.cpp file type (`llama_ftype`) with per-tensor rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Mix {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    IQ1_S,
    IQ1_M,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ2_M,
    IQ3_XXS,
    IQ3_XS,
    IQ3_S,
    IQ3_M,
    TQ1_0,
    TQ2_0,
    /// Expert tensors (3-D, stacked) MXFP4, every other quantized tensor Q8_0.
    MXFP4_MOE,
}

/// Every mix, in llama.cpp's ftype order.
pub const MIXES: [Mix; 30] = [
    Mix::Q4_0,
    Mix::Q4_1,
    Mix::Q8_0,
    Mix::Q5_0,
    Mix::Q5_1,
    Mix::Q2_K,
    Mix::Q3_K_S,
    Mix::Q3_K_M,
    Mix::Q3_K_L,
    Mix::Q4_K_S,
    Mix::Q4_K_M,
    Mix::Q5_K_S,
    Mix::Q5_K_M,
    Mix::Q6_K,
    Mix::IQ2_XXS,
    Mix::IQ2_XS,
    Mix::Q2_K_S,
    Mix::IQ3_XS,
    Mix::IQ3_XXS,
    Mix::IQ1_S,
    Mix::IQ4_NL,
    Mix::IQ3_S,
    Mix::IQ3_M,
    Mix::IQ2_S,
    Mix::IQ2_M,
    Mix::IQ4_XS,
    Mix::IQ1_M,
    Mix::TQ1_0,
    Mix::TQ2_0,
    Mix::MXFP4_MOE,
];

impl Mix {
    pub fn name(self) -> &'static str {
        match self {
            Mix::Q4_0 => "Q4_0",
            Mix::Q4_1 => "Q4_1",
            Mix::Q5_0 => "Q5_0",
            Mix::Q5_1 => "Q5_1",
            Mix::Q8_0 => "Q8_0",
            Mix::Q2_K => "Q2_K",
            Mix::Q2_K_S => "Q2_K_S",
            Mix::Q3_K_S => "Q3_K_S",
            Mix::Q3_K_M => "Q3_K_M",
            Mix::Q3_K_L => "Q3_K_L",
            Mix::Q4_K_S => "Q4_K_S",
            Mix::Q4_K_M => "Q4_K_M",
            Mix::Q5_K_S => "Q5_K_S",
            Mix::Q5_K_M => "Q5_K_M",
            Mix::Q6_K => "Q6_K",
            Mix::IQ4_NL => "IQ4_NL",
            Mix::IQ4_XS => "IQ4_XS",
            Mix::IQ1_S => "IQ1_S",
            Mix::IQ1_M => "IQ1_M",
            Mix::IQ2_XXS => "IQ2_XXS",
            Mix::IQ2_XS => "IQ2_XS",
            Mix::IQ2_S => "IQ2_S",
            Mix::IQ2_M => "IQ2_M",
            Mix::IQ3_XXS => "IQ3_XXS",
            Mix::IQ3_XS => "IQ3_XS",
            Mix::IQ3_S => "IQ3_S",
            Mix::IQ3_M => "IQ3_M",
            Mix::TQ1_0 => "TQ1_0",
            Mix::TQ2_0 => "TQ2_0",
            Mix::MXFP4_MOE => "MXFP4_MOE",
        }
    }

    /// The mix a name gives: an explicit one (`Q4_K_M`, case-insensitive) or, with `plain`, also
    /// a type name taken as its file type (`Q4_0`, `IQ4_XS`; llama-quantize's `Q4_K`, `Q3_K`,
    /// `Q5_K` aliases of the `_M` mixes are only taken as such with `plain`).
    pub fn parse(name: &str, plain: bool) -> Option<Mix> {
        let n = name.trim().to_ascii_uppercase();
        if let Some(m) = MIXES
            .iter()
            .copied()
            .find(|m| m.name() == n && m.is_explicit())
        {
            return Some(m);
        }
        if !plain {
            return None;
        }
        match n.as_str() {
            "Q3_K" => Some(Mix::Q3_K_M),
            "Q4_K" => Some(Mix::Q4_K_M),
            "Q5_K" => Some(Mix::Q5_K_M),
            _ => MIXES.iter().copied().find(|m| m.name() == n),
        }
    }

    /// A name that is a mix and not also a single type's name (Q4_K_M, Q2_K_S, ...).
    pub fn is_explicit(self) -> bool {
        GgmlType::from_name(self.name()).is_none()
    }

    /// `llama_ftype_get_default_type`: the type of tensors no rule changes.
    pub fn default_type(self) -> GgmlType {
        use GgmlType as T;
        match self {
            Mix::Q4_0 => T::Q4_0,
            Mix::Q4_1 => T::Q4_1,
            Mix::Q5_0 => T::Q5_0,
            Mix::Q5_1 => T::Q5_1,
            Mix::Q8_0 => T::Q8_0,
            Mix::Q2_K | Mix::Q2_K_S => T::Q2K,
            Mix::Q3_K_S | Mix::Q3_K_M | Mix::Q3_K_L => T::Q3K,
            Mix::Q4_K_S | Mix::Q4_K_M => T::Q4K,
            Mix::Q5_K_S | Mix::Q5_K_M => T::Q5K,
            Mix::Q6_K => T::Q6K,
            Mix::IQ4_NL => T::IQ4_NL,
            Mix::IQ4_XS => T::IQ4_XS,
            // the IQ2_S file type's main type is IQ2_XS (llama.cpp's own choice)
            Mix::IQ1_S => T::IQ1_S,
            Mix::IQ1_M => T::IQ1_M,
            Mix::IQ2_XXS => T::IQ2_XXS,
            Mix::IQ2_XS | Mix::IQ2_S => T::IQ2_XS,
            Mix::IQ2_M => T::IQ2_S,
            Mix::IQ3_XXS => T::IQ3_XXS,
            Mix::IQ3_XS | Mix::IQ3_S | Mix::IQ3_M => T::IQ3_S,
            Mix::TQ1_0 => T::TQ1_0,
            Mix::TQ2_0 => T::TQ2_0,
            Mix::MXFP4_MOE => T::MXFP4,
        }
    }

    /// `general.file_type` (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Mix::Q4_0 => 2,
            Mix::Q4_1 => 3,
            Mix::Q8_0 => 7,
            Mix::Q5_0 => 8,
            Mix::Q5_1 => 9,
            Mix::Q2_K => 10,
            Mix::Q3_K_S => 11,
            Mix::Q3_K_M => 12,
            Mix::Q3_K_L => 13,
            Mix::Q4_K_S => 14,
            Mix::Q4_K_M => 15,
            Mix::Q5_K_S => 16,
            Mix::Q5_K_M => 17,
            Mix::Q6_K => 18,
            Mix::Q2_K_S => 21,
            Mix::IQ4_NL => 25,
            Mix::IQ4_XS => 30,
            Mix::IQ2_XXS => 19,
            Mix::IQ1_S => 24,
            Mix::IQ1_M => 31,
            Mix::IQ2_XS => 20,
            Mix::IQ3_XS => 22,
            Mix::IQ3_XXS => 23,
            Mix::IQ3_S => 26,
            Mix::IQ3_M => 27,
            Mix::IQ2_S => 28,
            Mix::IQ2_M => 29,
            Mix::TQ1_0 => 36,
            Mix::TQ2_0 => 37,
            Mix::MXFP4_MOE => 38,
        }
    }
}

/// llama.cpp's broad tensor categories (`tensor_get_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        TokenEmbd
    } else if name.contains("attn_qkv.weight") || name.contains("attn_kv_b.weight") {
        AttnQkv
    } else if name.contains("attn_v.weight") {
        AttnV
    } else if name.contains("attn_k.weight") {
        AttnK
    } else if name.contains("attn_q.weight") {
        AttnQ
    } else if name.contains("attn_output.weight") {
        AttnOutput
    } else if name.contains("ffn_up") {
        FfnUp
    } else if name.contains("ffn_gate") {
        FfnGate
    } else if name.contains("ffn_down") {
        FfnDown
    } else {
        Other
    }
}

/// One tensor as llama-quantize sees it.
#[derive(Clone, Debug)]
pub struct MixTensor {
    /// GGUF name.
    pub name: String,
    /// `ne[0]`: the row length.
    pub row: usize,
    /// Number of dimensions (experts stacked: 3).
    pub n_dims: usize,
}

/// What the rules depend on besides the tensors.
#[derive(Clone, Debug)]
pub struct MixModel {
    pub n_layer: usize,
    /// `n_head / n_head_kv` of layer 0 (0 without kv heads).
    pub n_gqa: usize,
    /// Experts per MoE layer (0 for a dense model).
    pub n_expert: usize,
    /// An importance matrix is given (llama-quantize `--imatrix`).
    pub has_imatrix: bool,
}

impl MixModel {
    pub fn of(cfg: &ModelConfig, has_imatrix: bool) -> MixModel {
        MixModel {
            n_layer: cfg.num_layers,
            n_gqa: cfg.num_heads.checked_div(cfg.num_kv_heads).unwrap_or(0),
            n_expert: cfg.moe.as_ref().map_or(0, |m| m.num_experts),
            has_imatrix,
        }
    }
}

/// `tensor_allows_quantization`, for the tensors of the families shrink loads.
fn allows_quantization(t: &MixTensor) -> bool {
    t.n_dims >= 2
        && t.name.ends_with("weight")
        && !t.name.contains("_norm.weight")
        && !t.name.contains("ffn_gate_inp.weight")
}

/// llama.cpp's tensor order (`weight_name_comparer`): by layer (`blk.N.`; other tensors first),
/// then by name.
fn llama_order(a: &str, b: &str) -> std::cmp::Ordering {
    let layer = |s: &str| -> i64 {
        s.strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1)
    };
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

struct State<'a> {
    m: &'a MixModel,
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    tied: bool,
}

impl State<'_> {
    /// `layer_info`: the counter for a dense model, the layer in the name for MoE.
    fn layer_info(&self, counter: i64, name: &str) -> Result<(i64, i64)> {
        let n = self.m.n_layer as i64;
        if self.m.n_expert > 1 {
            let l: i64 = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("failed to determine the layer of tensor {name}"))?;
            if l < 0 || l >= n {
                bail!("bad layer {l} for tensor {name}: must be in [0, {n})");
            }
            return Ok((l, n));
        }
        Ok((counter, n))
    }

    /// `llama_tensor_get_type_impl`.
    fn rule(&mut self, mix: Mix, mut t: GgmlType, x: &MixTensor) -> Result<GgmlType> {
        use GgmlType as G;
        use Mix as F;
        let cat = category(&x.name);
        let gqa = self.m.n_gqa;
        let n_expert = self.m.n_expert;
        if mix == F::MXFP4_MOE {
            // the head (and a tied embedding) Q8_0; stacked expert tensors MXFP4; the rest Q8_0
            // (llama.cpp's MXFP4_MOE branch comes before every per-category rule)
            let head = cat == Category::Output || (self.tied && cat == Category::TokenEmbd);
            return Ok(if !head && x.n_dims == 3 && n_expert > 1 {
                G::MXFP4
            } else {
                G::Q8_0
            });
        }
        // llama.cpp's branch for the IQ1/IQ2 file types
        let iq2 = matches!(
            mix,
            F::IQ1_S | F::IQ1_M | F::IQ2_XXS | F::IQ2_XS | F::IQ2_S | F::IQ2_M
        );
        let iq2_s = matches!(mix, F::IQ2_S | F::IQ2_M);
        if cat == Category::Output || (self.tied && cat == Category::TokenEmbd) {
            let qk = t.block_size();
            if x.row % qk != 0 {
                t = G::Q8_0;
            } else if iq2 || mix == F::IQ3_XXS {
                t = G::Q5K;
            } else if t != G::Q8_0 {
                t = G::Q6K;
            }
        } else if cat == Category::TokenEmbd {
            match mix {
                F::IQ1_S | F::IQ1_M | F::IQ2_XXS | F::IQ2_XS => t = G::Q2K,
                F::IQ2_S | F::IQ2_M | F::IQ3_XXS => t = G::IQ3_S,
                F::TQ1_0 | F::TQ2_0 => t = G::Q4K,
                _ => {}
            }
        } else if iq2 {
            // llama.cpp's branch for the IQ1/IQ2 file types takes every other tensor
            if cat == Category::AttnQkv || cat == Category::AttnV {
                t = if gqa >= 4 || n_expert >= 4 {
                    G::Q4K
                } else if iq2_s {
                    G::IQ3_S
                } else {
                    G::Q2K
                };
                self.i_attention_wv += 1;
            } else if n_expert == 8 && cat == Category::AttnK {
                t = G::Q4K;
            } else if cat == Category::FfnDown {
                // the plain counter, even for MoE (no layer_info here)
                if self.i_ffn_down < self.m.n_layer as i64 / 8 {
                    t = if iq2_s { G::IQ3_S } else { G::Q2K };
                }
                self.i_ffn_down += 1;
            } else if cat == Category::AttnOutput {
                if n_expert == 8 {
                    t = G::Q5K;
                } else if matches!(mix, F::IQ1_S | F::IQ1_M) {
                    t = G::IQ2_XXS;
                } else if iq2_s {
                    t = G::IQ3_S;
                }
            }
        } else if cat == Category::AttnQkv || cat == Category::AttnV {
            match mix {
                F::IQ3_XXS => {
                    t = if gqa >= 4 {
                        G::Q4K
                    } else if !self.m.has_imatrix {
                        G::IQ3_S
                    } else {
                        G::IQ3_XXS
                    }
                }
                F::IQ3_XS | F::IQ3_S if gqa >= 4 => t = G::Q4K,
                F::IQ3_M => t = G::Q4K,
                F::Q2_K => t = if gqa >= 4 { G::Q4K } else { G::Q3K },
                F::Q2_K_S if gqa >= 4 => t = G::Q4K,
                F::Q3_K_M => {
                    t = if self.i_attention_wv < 2 {
                        G::Q5K
                    } else {
                        G::Q4K
                    }
                }
                F::Q3_K_L => t = G::Q5K,
                F::IQ4_NL | F::IQ4_XS if gqa >= 4 => t = G::Q5K,
                F::Q4_K_M | F::Q5_K_M
                    if use_more_bits(self.i_attention_wv, self.n_attention_wv) =>
                {
                    t = G::Q6K
                }
                F::Q4_K_S if self.i_attention_wv < 4 => t = G::Q5K,
                _ => {}
            }
            if n_expert == 8 {
                t = G::Q8_0;
            }
            self.i_attention_wv += 1;
            // fused qkv (Phi-3) also gets these: llama.cpp's attn_v branch comes first
        } else if cat == Category::AttnK {
            if n_expert == 8 {
                t = G::Q8_0;
            } else if mix == F::IQ3_XS {
                t = G::IQ3_XXS;
            } else if mix == F::IQ3_XXS {
                t = G::IQ2_S;
            }
        } else if cat == Category::AttnQ {
            if mix == F::IQ3_XS {
                t = G::IQ3_XXS;
            } else if mix == F::IQ3_XXS {
                t = G::IQ2_S;
            }
        } else if cat == Category::FfnDown {
            let (i, n) = self.layer_info(self.i_ffn_down, &x.name)?;
            match mix {
                F::IQ3_XXS if !self.m.has_imatrix => t = if i < n / 8 { G::Q4K } else { G::Q3K },
                F::IQ3_M if i < n / 8 || (n_expert == 8 && use_more_bits(i, n)) => t = G::Q4K,
                F::Q2_K => t = G::Q3K,
                F::Q2_K_S if i < n / 8 => t = G::Q4K,
                F::Q2_K_S => {}
                F::Q3_K_M => t = if i < n / 16 { G::Q5K } else { G::Q4K },
                F::Q3_K_L => t = G::Q5K,
                F::Q4_K_M if use_more_bits(i, n) => t = G::Q6K,
                F::Q4_K_M => {}
                F::IQ4_NL | F::IQ4_XS if i < n / 8 && !self.m.has_imatrix => t = G::Q5K,
                F::Q5_K_M if use_more_bits(i, n) => t = G::Q6K,
                F::Q4_K_S if i < n / 8 => t = G::Q5K,
                F::Q4_0 | F::Q5_0 if self.m.has_imatrix && i < n / 8 => {
                    t = if mix == F::Q4_0 { G::Q4_1 } else { G::Q5_1 }
                }
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttnOutput {
            if n_expert == 8 {
                if matches!(
                    mix,
                    F::Q2_K
                        | F::IQ3_XS
                        | F::IQ3_XXS
                        | F::Q3_K_S
                        | F::Q3_K_M
                        | F::IQ4_NL
                        | F::Q4_K_S
                        | F::Q4_K_M
                        | F::IQ3_S
                        | F::IQ3_M
                        | F::IQ4_XS
                ) {
                    t = G::Q5K;
                }
            } else {
                match mix {
                    F::Q2_K => t = G::Q3K,
                    F::IQ3_XXS => t = G::IQ3_S,
                    F::Q3_K_M | F::IQ3_M => t = G::Q4K,
                    F::Q3_K_L => t = G::Q5K,
                    _ => {}
                }
            }
        } else if cat == Category::FfnGate || cat == Category::FfnUp {
            let c = if cat == Category::FfnGate {
                &mut self.i_ffn_gate
            } else {
                &mut self.i_ffn_up
            };
            let counter = *c;
            *c += 1;
            let (i, n) = self.layer_info(counter, &x.name)?;
            if mix == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
                t = G::IQ3_XXS;
            }
        }
        Ok(t)
    }
}

/// Per-tensor overrides on top of a mix, like llama-quantize's flags.
#[derive(Clone, Debug, Default)]
pub struct MixFlags {
    /// `--token-embedding-type`.
    pub token_embedding: Option<GgmlType>,
    /// `--output-tensor-type`.
    pub output: Option<GgmlType>,
    /// `--pure`: every quantizable tensor gets the main type (then the shape fallback).
    pub pure: bool,
}

/// The type `llama-quantize` gives each quantizable tensor of `tensors` for `mix`
/// (`llama_tensor_get_type`; tensors it leaves as they are are absent from the map).
pub fn mix_types(
    tensors: &[MixTensor],
    m: &MixModel,
    mix: Mix,
    flags: &MixFlags,
) -> Result<BTreeMap<String, GgmlType>> {
    let mut order: Vec<&MixTensor> = tensors.iter().collect();
    order.sort_by(|a, b| llama_order(&a.name, &b.name));
    let mut st = State {
        m,
        n_attention_wv: order
            .iter()
            .filter(|t| matches!(category(&t.name), Category::AttnV | Category::AttnQkv))
            .count() as i64,
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
        tied: !order.iter().any(|t| category(&t.name) == Category::Output),
    };
    let mut out = BTreeMap::new();
    for x in order {
        if !allows_quantization(x) {
            continue;
        }
        let cat = category(&x.name);
        let t = match (cat, flags.token_embedding, flags.output) {
            (Category::TokenEmbd, Some(t), _) => t,
            (Category::Output, _, Some(t)) => t,
            // a tied embedding is quantized as the head would be (`output_tensor_type` included)
            (Category::TokenEmbd, None, Some(t)) if st.tied && !flags.pure => {
                fallback_type(t, x.row)
            }
            _ => {
                let mut t = mix.default_type();
                if !flags.pure {
                    t = st.rule(mix, t, x)?;
                }
                fallback_type(t, x.row)
            }
        };
        out.insert(x.name.clone(), t);
    }
    Ok(out)
}

/// The tensors of a model as llama-quantize would see them in shrink's GGUF export (experts
/// stacked into one 3-D tensor).
pub fn model_tensors(cfg: &ModelConfig) -> Vec<MixTensor> {
    let mut seen = std::collections::HashSet::new();
    let mut v = Vec::new();
    for e in arch::tensor_table(cfg) {
        if !seen.insert(e.gguf.name.clone()) {
            continue;
        }
        let row = *e.shape.last().unwrap_or(&0);
        let n_dims = e.shape.len() + usize::from(e.gguf.expert.is_some());
        v.push(MixTensor {
            name: e.gguf.name,
            row,
            n_dims,
        });
    }
    v
}

/// [`mix_types`] for a model shrink loads.
pub fn model_mix_types(
    cfg: &ModelConfig,
    mix: Mix,
    has_imatrix: bool,
    flags: &MixFlags,
) -> Result<BTreeMap<String, GgmlType>> {
    mix_types(
        &model_tensors(cfg),
        &MixModel::of(cfg, has_imatrix),
        mix,
        flags,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(n_layer: usize, hidden: usize, ffn: usize, tied: bool) -> Vec<MixTensor> {
        let mut v = vec![MixTensor {
            name: "token_embd.weight".into(),
            row: hidden,
            n_dims: 2,
        }];
        for l in 0..n_layer {
            for (n, row) in [
                ("attn_q", hidden),
                ("attn_k", hidden),
                ("attn_v", hidden),
                ("attn_output", hidden),
                ("ffn_gate", hidden),
                ("ffn_up", hidden),
                ("ffn_down", ffn),
            ] {
                v.push(MixTensor {
                    name: format!("blk.{l}.{n}.weight"),
                    row,
                    n_dims: 2,
                });
            }
            v.push(MixTensor {
                name: format!("blk.{l}.attn_norm.weight"),
                row: hidden,
                n_dims: 1,
            });
        }
        if !tied {
            v.push(MixTensor {
                name: "output.weight".into(),
                row: hidden,
                n_dims: 2,
            });
        }
        v
    }

    fn model(n_layer: usize, gqa: usize) -> MixModel {
        MixModel {
            n_layer,
            n_gqa: gqa,
            n_expert: 0,
            has_imatrix: true,
        }
    }

    #[test]
    fn q4_k_m_on_a_llama_shape() {
        // 32 layers, hidden 4096, ffn 11008 (11008 % 256 = 0): Llama-2-7B's shape
        let t = mix_types(
            &dense(32, 4096, 11008, false),
            &model(32, 1),
            Mix::Q4_K_M,
            &MixFlags::default(),
        )
        .unwrap();
        assert_eq!(t["output.weight"], GgmlType::Q6K);
        assert_eq!(t["token_embd.weight"], GgmlType::Q4K);
        assert!(!t.contains_key("blk.0.attn_norm.weight"));
        // use_more_bits(i, 32): i < 4, i >= 28, (i - 4) % 3 == 2
        let more: Vec<usize> = (0..32)
            .filter(|&i| t[&format!("blk.{i}.ffn_down.weight")] == GgmlType::Q6K)
            .collect();
        assert_eq!(
            more,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        for i in 0..32 {
            assert_eq!(
                t[&format!("blk.{i}.attn_v.weight")],
                t[&format!("blk.{i}.ffn_down.weight")]
            );
            assert_eq!(t[&format!("blk.{i}.attn_q.weight")], GgmlType::Q4K);
        }
    }

    #[test]
    fn tied_embedding_follows_the_output_rule_and_falls_back() {
        // SmolLM2-135M: hidden 576 (not a multiple of 256), ffn 1536, tied
        let t = mix_types(
            &dense(30, 576, 1536, true),
            &model(30, 3),
            Mix::Q4_K_M,
            &MixFlags::default(),
        )
        .unwrap();
        assert_eq!(t["token_embd.weight"], GgmlType::Q8_0);
        assert_eq!(t["blk.0.attn_q.weight"], GgmlType::Q5_0); // Q4_K -> Q5_0
        assert_eq!(t["blk.0.ffn_down.weight"], GgmlType::Q6K);
        assert_eq!(t["blk.4.ffn_down.weight"], GgmlType::Q4K);
        assert_eq!(t["blk.0.attn_v.weight"], GgmlType::Q8_0); // Q6_K -> Q8_0
        let pure = mix_types(
            &dense(30, 576, 1536, true),
            &model(30, 3),
            Mix::Q4_K_M,
            &MixFlags {
                pure: true,
                token_embedding: Some(GgmlType::Q8_0),
                output: None,
            },
        )
        .unwrap();
        assert_eq!(pure["blk.0.ffn_down.weight"], GgmlType::Q4K);
        assert_eq!(pure["blk.0.attn_v.weight"], GgmlType::Q5_0);
    }

    #[test]
    fn q3_k_m_and_q2_k_rules() {
        let tensors = dense(16, 4096, 4096, false);
        let t = mix_types(&tensors, &model(16, 4), Mix::Q3_K_M, &MixFlags::default()).unwrap();
        assert_eq!(t["blk.0.attn_v.weight"], GgmlType::Q5K);
        assert_eq!(t["blk.1.attn_v.weight"], GgmlType::Q5K);
        assert_eq!(t["blk.2.attn_v.weight"], GgmlType::Q4K);
        assert_eq!(t["blk.0.ffn_down.weight"], GgmlType::Q5K); // i < 16/16
        assert_eq!(t["blk.1.ffn_down.weight"], GgmlType::Q4K);
        assert_eq!(t["blk.5.attn_output.weight"], GgmlType::Q4K);
        assert_eq!(t["blk.5.attn_q.weight"], GgmlType::Q3K);
        let t = mix_types(&tensors, &model(16, 4), Mix::Q2_K, &MixFlags::default()).unwrap();
        assert_eq!(t["blk.3.attn_v.weight"], GgmlType::Q4K); // gqa >= 4
        assert_eq!(t["blk.3.ffn_down.weight"], GgmlType::Q3K);
        assert_eq!(t["blk.3.attn_output.weight"], GgmlType::Q3K);
        assert_eq!(t["blk.3.ffn_up.weight"], GgmlType::Q2K);
        let t = mix_types(&tensors, &model(16, 1), Mix::Q2_K, &MixFlags::default()).unwrap();
        assert_eq!(t["blk.3.attn_v.weight"], GgmlType::Q3K);
    }

    #[test]
    fn layer_order_is_numeric_not_lexical() {
        // blk.10 sorts after blk.9 in llama.cpp's order: the attn_v counter is the layer
        let t = mix_types(
            &dense(12, 4096, 4096, false),
            &model(12, 1),
            Mix::Q4_K_S,
            &MixFlags::default(),
        )
        .unwrap();
        let v: Vec<bool> = (0..12)
            .map(|i| t[&format!("blk.{i}.attn_v.weight")] == GgmlType::Q5K)
            .collect();
        assert_eq!(v, [[true; 4].as_slice(), &[false; 8]].concat());
    }

    /// MXFP4_MOE (`llama_tensor_get_type_impl`'s MXFP4_MOE branch): stacked experts MXFP4,
    /// attention, the shared/dense MLP, the router-free tensors and the head Q8_0; a dense model
    /// is all Q8_0.
    #[test]
    fn mxfp4_moe_puts_experts_in_mxfp4() {
        let mut t = dense(2, 512, 512, false);
        for l in 0..2 {
            for n in ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"] {
                t.push(MixTensor {
                    name: format!("blk.{l}.{n}.weight"),
                    row: 512,
                    n_dims: 3,
                });
            }
            t.push(MixTensor {
                name: format!("blk.{l}.ffn_gate_inp.weight"),
                row: 512,
                n_dims: 2,
            });
        }
        let moe = MixModel {
            n_expert: 8,
            ..model(2, 4)
        };
        let types = mix_types(&t, &moe, Mix::MXFP4_MOE, &MixFlags::default()).unwrap();
        for (name, ty) in &types {
            let want = if name.contains("_exps") {
                GgmlType::MXFP4
            } else {
                GgmlType::Q8_0
            };
            assert_eq!(*ty, want, "{name}");
        }
        assert_eq!(types["output.weight"], GgmlType::Q8_0);
        assert_eq!(types["token_embd.weight"], GgmlType::Q8_0);
        assert!(
            !types.contains_key("blk.0.ffn_gate_inp.weight"),
            "the router stays as it is"
        );
        assert_eq!(types.values().filter(|t| **t == GgmlType::MXFP4).count(), 6);
        let dense_types = mix_types(
            &dense(2, 512, 512, true),
            &model(2, 4),
            Mix::MXFP4_MOE,
            &MixFlags::default(),
        )
        .unwrap();
        assert!(dense_types.values().all(|t| *t == GgmlType::Q8_0));
        assert_eq!(Mix::MXFP4_MOE.file_type(), 38);
        assert_eq!(Mix::parse("mxfp4_moe", false), Some(Mix::MXFP4_MOE));
    }

    #[test]
    fn names() {
        assert_eq!(Mix::parse("q4_k_m", false), Some(Mix::Q4_K_M));
        assert_eq!(Mix::parse("Q4_K", false), None);
        assert_eq!(Mix::parse("Q4_K", true), Some(Mix::Q4_K_M));
        assert_eq!(Mix::parse("IQ4_XS", true), Some(Mix::IQ4_XS));
        assert_eq!(Mix::parse("IQ4_XS", false), None);
        assert_eq!(Mix::parse("Q7_K_M", true), None);
        for m in MIXES {
            assert_eq!(Mix::parse(m.name(), true), Some(m));
        }
    }
}
