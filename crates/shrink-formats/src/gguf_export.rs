//! GGUF export for llama.cpp: metadata, tokenizer and tensors, quantized with [`crate::gguf_quant`]
//! (llama.cpp's reference quantizers), optionally weighted by an importance matrix, or carrying
//! shrink's own GPTQ codes over where they fit a ggml block type exactly.
//!
//! Layout follows llama.cpp's `convert_hf_to_gguf.py` for the "llama" / "qwen2" architectures:
//! tensor names from [`shrink_model::arch::hf_to_gguf`], dims in ggml order (`[d_in, d_out]`), and
//! for "llama" the rows of `attn_q` / `attn_k` permuted so that rotary pairs are adjacent
//! (`LlamaModel.permute`: GGUF row `h*2d + 2i + j` is Hugging Face row `h*2d + j*d + i`).
//! Norms stay F32, as llama-quantize leaves them.
use crate::gguf_quant::{self, carry_type, fallback_type, pack_codes_block};
use crate::quantized::{QLinear, QuantizedDir};
use anyhow::{bail, Context, Result};
use shrink_model::arch::{self, NormStyle, Role, TensorKind};
use shrink_model::ggml_mix::{Mix, MixFlags};
use shrink_model::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use shrink_model::{ModelConfig, ModelSource};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Mean squared activation of every input column of every linear group (llama.cpp's imatrix:
/// `sum(x_j^2) / n_rows`), keyed by (layer, index of the group in the layer's layout).
#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    pub values: HashMap<(usize, usize), Vec<f32>>,
    /// Rows (tokens) seen per group.
    pub rows: usize,
    pub chunks: usize,
    pub dataset: String,
}

/// The group of linear `k` in a layout.
fn group_of(lay: &arch::Layout, k: usize) -> usize {
    lay.groups
        .iter()
        .position(|g| g.linears.contains(&k))
        .expect("every linear of a layout is in a group")
}

/// The GGUF weight name of every linear of layer `layer` that llama-imatrix collects (not the
/// experts, whose statistics llama.cpp stores per expert in one tensor), with its group and d_in.
fn imatrix_linears(cfg: &ModelConfig, layer: usize) -> Vec<(String, usize, usize)> {
    let lay = arch::layer_layout(cfg, layer);
    lay.linears
        .iter()
        .enumerate()
        .filter(|(_, l)| l.expert.is_none() && l.role != Role::Router)
        .map(|(k, l)| {
            (
                format!("blk.{layer}.{}.weight", l.gguf),
                group_of(&lay, k),
                l.shape[1],
            )
        })
        .collect()
}

impl Imatrix {
    /// The importance of linear `k` of `layer`'s layout (its group's).
    pub fn get(&self, cfg: &ModelConfig, layer: usize, k: usize) -> Option<&[f32]> {
        let lay = arch::layer_layout(cfg, layer);
        self.values
            .get(&(layer, group_of(&lay, k)))
            .map(|v| v.as_slice())
    }

    /// Reads llama-imatrix's GGUF file (`{gguf name}.in_sum2` / `{gguf name}.counts`, value =
    /// sum / count as llama-quantize computes it). Linears that share an input must agree (they
    /// do in files llama-imatrix writes); the first one found is used for the group.
    pub fn read_gguf(cfg: &ModelConfig, path: &Path) -> Result<Imatrix> {
        let f = GgufFile::open(path)?;
        let p = path.display();
        let mut values = HashMap::new();
        for layer in 0..cfg.num_layers {
            for (g, group, d_in) in imatrix_linears(cfg, layer) {
                if values.contains_key(&(layer, group)) {
                    continue;
                }
                let (Some(_), Some(_)) = (
                    f.tensor(&format!("{g}.in_sum2")),
                    f.tensor(&format!("{g}.counts")),
                ) else {
                    continue;
                };
                let sums = f.dequantize(&format!("{g}.in_sum2"))?;
                let counts = f.dequantize(&format!("{g}.counts"))?;
                if sums.len() != d_in || counts.len() != 1 {
                    bail!("{p}: '{g}.in_sum2' has {} values for {d_in} columns (or several counts: MoE files are not supported)", sums.len());
                }
                let c = counts[0].round();
                let v: Vec<f32> = if c > 0.0 {
                    sums.iter().map(|s| s / c).collect()
                } else {
                    vec![1.0; d_in]
                };
                values.insert((layer, group), v);
            }
        }
        if values.is_empty() {
            bail!("{p}: no importance data for any linear of this model");
        }
        let dataset = f
            .get("imatrix.datasets")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let chunks = f
            .get("imatrix.chunk_count")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        let size = f
            .get("imatrix.chunk_size")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        Ok(Imatrix {
            values,
            rows: chunks * size,
            chunks,
            dataset,
        })
    }

    /// Writes the matrix as llama-imatrix's GGUF file (`tools/imatrix/imatrix.cpp`, read by
    /// `common/imatrix-loader.cpp`): per linear `{gguf name}.in_sum2` F32 `[d_in]` and
    /// `{gguf name}.counts` F32 `[1]`; llama-quantize uses `in_sum2 / counts`. The means are
    /// stored with a count of 1, so llama-quantize sees exactly the values shrink uses.
    pub fn write_gguf(&self, cfg: &ModelConfig, path: &Path) -> Result<()> {
        let mut w = GgufWriter::new();
        w.pad_end();
        w.add_metadata("general.type", GgufValue::String("imatrix".into()));
        w.add_metadata(
            "imatrix.datasets",
            GgufValue::Array(vec![GgufValue::String(self.dataset.clone())]),
        );
        w.add_metadata("imatrix.chunk_count", GgufValue::U32(self.chunks as u32));
        w.add_metadata(
            "imatrix.chunk_size",
            GgufValue::U32((self.rows / self.chunks.max(1)) as u32),
        );
        for layer in 0..cfg.num_layers {
            for (g, group, _) in imatrix_linears(cfg, layer) {
                let Some(v) = self.values.get(&(layer, group)) else {
                    continue;
                };
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.add_tensor(
                    format!("{g}.in_sum2"),
                    vec![v.len() as u64, 1],
                    GgmlType::F32,
                    bytes,
                )?;
                w.add_tensor(
                    format!("{g}.counts"),
                    vec![1, 1],
                    GgmlType::F32,
                    1f32.to_le_bytes().to_vec(),
                )?;
            }
        }
        w.write(path)
    }
}

/// Which ggml type each tensor class gets, like llama-quantize's `--type`,
/// `--token-embedding-type`, `--output-tensor-type` and `--tensor-type PATTERN=TYPE`.
#[derive(Clone, Debug)]
pub struct TypePlan {
    /// Linear weights of the decoder layers.
    pub linear: GgmlType,
    pub embedding: GgmlType,
    /// The output head when untied.
    pub output: GgmlType,
    /// `(substring of the GGUF name, type)`, the first match wins over the class default.
    pub overrides: Vec<(String, GgmlType)>,
    /// llama-quantize's mix (file type) and the type it gives each tensor
    /// ([`shrink_model::ggml_mix::model_mix_types`]); below `overrides`, above the class defaults.
    pub mix: Option<(Mix, BTreeMap<String, GgmlType>)>,
}

impl TypePlan {
    /// Defaults for a main type: embeddings and head at Q8_0 (F16/F32 when the main type is).
    pub fn for_type(t: GgmlType) -> Self {
        let side = match t {
            GgmlType::F32 | GgmlType::F16 => t,
            _ => GgmlType::Q8_0,
        };
        TypePlan {
            linear: t,
            embedding: side,
            output: side,
            overrides: vec![],
            mix: None,
        }
    }

    /// llama-quantize's choice for `mix` on this model (`flags`: its `--token-embedding-type`,
    /// `--output-tensor-type`).
    pub fn for_mix(
        cfg: &ModelConfig,
        mix: Mix,
        has_imatrix: bool,
        flags: &MixFlags,
    ) -> Result<Self> {
        let types = shrink_model::ggml_mix::model_mix_types(cfg, mix, has_imatrix, flags)?;
        let mut p = TypePlan::for_type(mix.default_type());
        if let Some(t) = types.get("token_embd.weight") {
            p.embedding = *t;
        }
        if let Some(t) = types.get("output.weight") {
            p.output = *t;
        }
        p.mix = Some((mix, types));
        Ok(p)
    }

    /// `general.file_type`.
    pub fn file_type(&self) -> u32 {
        match &self.mix {
            Some((m, _)) => m.file_type(),
            None => file_type(self.linear),
        }
    }

    /// The requested type of a tensor (before the shape fallback).
    pub fn requested(&self, gguf_name: &str) -> GgmlType {
        if let Some((_, t)) = self
            .overrides
            .iter()
            .find(|(p, _)| gguf_name.contains(p.as_str()))
        {
            return *t;
        }
        if let Some(t) = self.mix.as_ref().and_then(|(_, m)| m.get(gguf_name)) {
            return *t;
        }
        if gguf_name == "token_embd.weight" {
            self.embedding
        } else if gguf_name == "output.weight" {
            self.output
        } else if gguf_name.ends_with("norm.weight")
            || gguf_name.ends_with(".bias")
            || gguf_name.ends_with("ffn_gate_inp.weight")
        {
            // llama-quantize never quantizes the MoE router (llama-quant.cpp)
            GgmlType::F32
        } else {
            self.linear
        }
    }
}

/// Parses a type name as llama-quantize spells it (Q4_K, q4_k, Q8_0, F16, ...).
pub fn parse_type(s: &str) -> Result<GgmlType> {
    let t = GgmlType::from_name(s.trim()).with_context(|| format!("unknown tensor type '{s}'"))?;
    if !gguf_quant::can_quantize(t) {
        bail!(
            "shrink cannot write tensor type {} (it writes {})",
            t.name(),
            gguf_quant::QUANT_TYPES.map(|t| t.name()).join(", ")
        );
    }
    Ok(t)
}

/// What to export.
pub struct GgufExport<'a> {
    pub src: &'a ModelSource,
    /// Quantized codes of `src` (a `shrink compress` directory), carried over where they fit.
    pub quantized: Option<&'a QuantizedDir>,
    /// A GGUF file whose tokenizer and other metadata are copied (the source itself when it is a
    /// GGUF file).
    pub metadata_from: Option<&'a Path>,
    pub plan: TypePlan,
    pub imatrix: Option<&'a Imatrix>,
    /// Carry shrink's codes over where they fit (otherwise re-quantize the dequantized weights).
    pub carry_codes: bool,
    /// A linear rounded onto a llama.cpp grid (`compress --gguf-type`) keeps that type, whatever
    /// the plan says (no `--type` given: the file holds the types the codes were chosen for).
    pub keep_grid_types: bool,
    /// Without `metadata_from`: build tokenizer.ggml.* from the model's tokenizer.json (byte-level
    /// BPE) with this llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`, e.g. "smollm",
    /// "llama-bpe", "qwen2", "gpt2"; llama.cpp's converter picks it by hashing test tokenizations,
    /// which shrink cannot reproduce, so it must be named).
    pub tokenizer_pre: Option<String>,
    /// When the model is `metadata_from`'s model with layers dropped (`shrink compress
    /// --drop-layers`): the layer count of that original, which its `block_count` then gives.
    pub layers_before_drop: Option<usize>,
}

/// tokenizer.ggml.* (llama.cpp's "gpt2" byte-level BPE vocabulary) from the model's tokenizer, as
/// llama.cpp's `convert_hf_to_gguf.py` (`_set_vocab_gpt2`) writes it: tokens in id order (padded
/// with `[PAD{i}]`, type UNUSED, up to the model's vocabulary), token types (1 normal, 3 control for
/// special added tokens, 4 user-defined for other added tokens), merges as "a b", special ids,
/// whether BOS is added, and the chat template.
pub fn tokenizer_metadata(src: &ModelSource, pre: &str) -> Result<Vec<(String, GgufValue)>> {
    let path = src.path.display();
    let hf = src.tokenizer.hf().with_context(|| {
        format!(
            "{path}: the tokenizer is {}; GGUF export builds only byte-level BPE vocabularies (pass --gguf-metadata FILE.gguf)",
            src.tokenizer.kind_name()
        )
    })?;
    let tj: serde_json::Value = serde_json::from_str(
        &hf.to_string(false)
            .map_err(|e| anyhow::anyhow!("{path}: cannot serialize the tokenizer: {e}"))?,
    )?;
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        bail!("{path}: tokenizer model is {}, GGUF export builds only byte-level BPE vocabularies (pass --gguf-metadata FILE.gguf)", model["type"]);
    }
    let byte_level = |v: &serde_json::Value| -> bool {
        v["type"].as_str() == Some("ByteLevel")
            || v["pretokenizers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["type"].as_str() == Some("ByteLevel")))
    };
    if !byte_level(&tj["pre_tokenizer"]) {
        bail!("{path}: tokenizer is not byte-level BPE (no ByteLevel pre-tokenizer); pass --gguf-metadata FILE.gguf");
    }
    let n = src.config.vocab_size;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![1i32; n];
    let vocab = model["vocab"]
        .as_object()
        .with_context(|| format!("{path}: tokenizer model has no vocab"))?;
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .with_context(|| format!("{path}: bad id for token {t:?}"))? as usize;
        if id >= n {
            bail!("{path}: token {t:?} has id {id}, outside the model's vocabulary of {n}");
        }
        tokens[id] = Some(t.clone());
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else {
            continue;
        };
        let id = id as usize;
        if id >= n {
            bail!("{path}: added token {t:?} has id {id}, outside the model's vocabulary of {n}");
        }
        tokens[id] = Some(t.to_string());
        types[id] = if a["special"].as_bool().unwrap_or(false) {
            3
        } else {
            4
        };
    }
    let tokens: Vec<GgufValue> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            GgufValue::String(t.unwrap_or_else(|| {
                types[i] = 5;
                format!("[PAD{i}]")
            }))
        })
        .collect();
    let merges: Vec<GgufValue> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => {
                Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
            }
            _ => None,
        })
        .map(GgufValue::String)
        .collect();
    let mut kv = vec![
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            GgufValue::String(pre.into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufValue::Array(tokens),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            GgufValue::Array(merges),
        ),
    ];
    for (name, id) in &src.special_tokens {
        let key = match name.as_str() {
            "bos_token" => "bos_token_id",
            "eos_token" => "eos_token_id",
            "unk_token" => "unknown_token_id",
            "pad_token" => "padding_token_id",
            _ => continue,
        };
        kv.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(*id)));
    }
    let adds_bos = src.tokenizer.adds_bos().is_some();
    kv.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(adds_bos),
    ));
    if let Some(t) = &src.chat_template {
        kv.push((
            "tokenizer.chat_template".into(),
            GgufValue::String(t.clone()),
        ));
    }
    Ok(kv)
}

/// Per-tensor record of what was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorReport {
    pub name: String,
    pub ggml_type: String,
    pub requested: String,
    pub carried_codes: bool,
    pub imatrix: bool,
    pub elements: u64,
    pub bytes: u64,
}

/// llama.cpp's `llama_ftype` for a main type (general.file_type).
fn file_type(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4K => 14, // Q4_K_S
        GgmlType::Q5K => 16, // Q5_K_S
        GgmlType::Q6K => 18,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 12, // llama-quantize's Q3_K (= Q3_K_M)
        GgmlType::IQ4_NL => 25,
        GgmlType::IQ4_XS => 30,
        GgmlType::IQ2_XXS => 19,
        GgmlType::IQ1_S => 24,
        GgmlType::IQ1_M => 31,
        GgmlType::IQ2_XS => 20,
        GgmlType::IQ3_XXS => 23,
        GgmlType::IQ3_S => 26,
        GgmlType::IQ2_S => 28,
        GgmlType::TQ1_0 => 36,
        GgmlType::TQ2_0 => 37,
        GgmlType::MXFP4 => 38, // MXFP4_MOE
        _ => 0,
    }
}

/// GGUF row `h*2d + 2i + j` <- Hugging Face row `h*2d + j*d + i` (`perm[gguf_row] = hf_row`).
pub fn qk_permutation(rows: usize, n_head: usize) -> Result<Vec<usize>> {
    if n_head == 0 || rows % (2 * n_head) != 0 {
        bail!("cannot permute {rows} rows over {n_head} heads");
    }
    let d = rows / n_head / 2;
    let mut perm = vec![0; rows];
    for h in 0..n_head {
        for i in 0..d {
            for j in 0..2 {
                perm[h * 2 * d + 2 * i + j] = h * 2 * d + j * d + i;
            }
        }
    }
    Ok(perm)
}

fn permute_rows(data: &[f32], cols: usize, perm: &[usize]) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (i, &p) in perm.iter().enumerate() {
        out[i * cols..(i + 1) * cols].copy_from_slice(&data[p * cols..(p + 1) * cols]);
    }
    out
}

/// Metadata keys that describe the model (as llama.cpp's converter writes them).
fn arch_metadata(w: &mut GgufWriter, cfg: &ModelConfig) -> Result<()> {
    match &cfg.rope_scaling {
        None => {}
        Some(shrink_model::RopeScaling::Linear { factor }) => {
            let a = cfg.arch.gguf_name();
            w.add_metadata(
                format!("{a}.rope.scaling.type"),
                GgufValue::String("linear".into()),
            );
            w.add_metadata(
                format!("{a}.rope.scaling.factor"),
                GgufValue::F32(*factor as f32),
            );
        }
        // written as the rope_freqs tensor (see build_gguf)
        Some(
            shrink_model::RopeScaling::Llama3 { .. } | shrink_model::RopeScaling::Factors { .. },
        ) => {}
        // the rope_factors_long / rope_factors_short tensors (see rope_tensors) and these two
        // keys, as llama.cpp's converter writes them (Phi3MiniModel)
        Some(shrink_model::RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        }) => {
            let a = cfg.arch.gguf_name();
            w.add_metadata(
                format!("{a}.rope.scaling.original_context_length"),
                GgufValue::U32(*original_max_position_embeddings as u32),
            );
            w.add_metadata(
                format!("{a}.rope.scaling.attn_factor"),
                GgufValue::F32(*attention_factor as f32),
            );
        }
    }
    let a = cfg.arch.gguf_name();
    let k = |s: &str| format!("{a}.{s}");
    w.add_metadata("general.architecture", GgufValue::String(a.into()));
    for (key, v) in [
        ("block_count", cfg.num_layers),
        ("context_length", cfg.max_position_embeddings),
        ("embedding_length", cfg.hidden_size),
        ("feed_forward_length", cfg.intermediate_size),
        ("attention.head_count", cfg.num_heads),
        ("attention.head_count_kv", cfg.num_kv_heads),
        ("attention.key_length", cfg.head_dim),
        ("attention.value_length", cfg.head_dim),
        ("rope.dimension_count", cfg.rotary_dim),
    ] {
        w.add_metadata(k(key), GgufValue::U32(v as u32));
    }
    w.add_metadata(k("rope.freq_base"), GgufValue::F32(cfg.rope_theta as f32));
    w.add_metadata(
        k("attention.layer_norm_rms_epsilon"),
        GgufValue::F32(cfg.rms_norm_eps as f32),
    );
    w.add_metadata(k("vocab_size"), GgufValue::U32(cfg.vocab_size as u32));
    // Family features, under llama.cpp's key names (llama-arch.cpp LLM_KV_NAMES).
    if let Some(m) = &cfg.moe {
        w.add_metadata(k("expert_count"), GgufValue::U32(m.num_experts as u32));
        w.add_metadata(k("expert_used_count"), GgufValue::U32(m.top_k as u32));
        if a != "llama" {
            w.add_metadata(
                k("expert_feed_forward_length"),
                GgufValue::U32(m.expert_intermediate as u32),
            );
        }
        if m.norm_topk_prob != cfg.arch.gguf_renormalizes_topk {
            // llama.cpp's graph for the architecture decides (qwen3moe always renormalises,
            // olmoe never); shrink reads this key back
            w.add_metadata(k("expert_weights_norm"), GgufValue::Bool(m.norm_topk_prob));
        }
    }
    if let Some(win) = cfg.sliding_window.filter(|_| a == "gemma3") {
        w.add_metadata(k("attention.sliding_window"), GgufValue::U32(win as u32));
        let pattern: Vec<GgufValue> = cfg
            .sliding_layers
            .iter()
            .map(|&b| GgufValue::Bool(b))
            .collect();
        w.add_metadata(
            k("attention.sliding_window_pattern"),
            GgufValue::Array(pattern),
        );
    }
    if let Some(t) = cfg.rope_local_theta.filter(|&t| t != 10000.0) {
        bail!(
            "GGUF export: the local rope base {t} is not 10000, the value llama.cpp's gemma3 uses"
        );
    }
    if let Some(s) = cfg.query_pre_attn_scalar {
        if s != cfg.head_dim as f64 {
            bail!("GGUF export: query_pre_attn_scalar {s} differs from head_dim {}; llama.cpp's gemma3 scales queries by 1/sqrt(head_dim)", cfg.head_dim);
        }
    }
    for (key, v) in [
        ("attn_logit_softcapping", cfg.attn_softcap),
        ("final_logit_softcapping", cfg.final_softcap),
    ] {
        if let Some(v) = v {
            w.add_metadata(k(key), GgufValue::F32(v as f32));
        }
    }
    Ok(())
}

/// Copies the tokenizer (and every other non-quantization key) from `from`.
fn copy_metadata(
    w: &mut GgufWriter,
    from: &GgufFile,
    cfg: &ModelConfig,
    layers_before_drop: Option<usize>,
) -> Result<()> {
    let arch = from.architecture()?;
    if arch != cfg.arch.gguf_name() {
        bail!(
            "{}: architecture '{arch}' does not match the model's '{}'",
            from.path().display(),
            cfg.arch.gguf_name()
        );
    }
    if let Some(n) = from
        .get(&format!("{arch}.block_count"))
        .and_then(|v| v.as_u64())
    {
        if layers_before_drop == Some(n as usize) && n as usize != cfg.num_layers {
            // the model is this file's with layers dropped: block_count is rewritten below, and
            // a per-layer list could not be remapped
            for (k, v) in from.metadata() {
                if k.starts_with(&format!("{arch}."))
                    && v.as_array().is_some_and(|a| a.len() == n as usize)
                {
                    bail!(
                        "{}: '{k}' lists a value per layer; shrink cannot remap it to the model \
                         with layers dropped",
                        from.path().display()
                    );
                }
            }
        } else if n as usize != cfg.num_layers {
            bail!(
                "{}: {n} blocks, but the model has {} layers; pass the GGUF the model came from",
                from.path().display(),
                cfg.num_layers
            );
        }
    }
    let toks = from
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| a.len())
        .unwrap_or(0);
    if toks != cfg.vocab_size {
        bail!(
            "{}: tokenizer has {toks} tokens, the model's vocabulary {}",
            from.path().display(),
            cfg.vocab_size
        );
    }
    for (k, v) in from.metadata() {
        if k == "general.file_type"
            || k == "general.quantization_version"
            || k == "general.alignment"
            || k.starts_with("quantize.")
        {
            continue;
        }
        w.add_metadata(k.clone(), v.clone());
    }
    Ok(())
}

/// Builds the GGUF in memory; returns the writer and a per-tensor report.
/// The writer with the metadata of the file `e` describes (no tensors yet).
fn gguf_metadata(e: &GgufExport) -> Result<GgufWriter> {
    let cfg = &e.src.config;
    let mut w = GgufWriter::new();
    w.pad_end();
    match e.metadata_from {
        Some(p) => {
            let f = GgufFile::open(p)?;
            copy_metadata(&mut w, &f, cfg, e.layers_before_drop)?;
        }
        None => match &e.tokenizer_pre {
            Some(pre) => {
                w.add_metadata("general.name", GgufValue::String(
                    e.src.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                ));
                for (k, v) in tokenizer_metadata(e.src, pre)? {
                    w.add_metadata(k, v);
                }
            }
            None => bail!(
                "{}: GGUF export needs llama.cpp's tokenizer metadata: pass --gguf-metadata FILE.gguf (the GGUF the model came from), or --tokenizer-pre NAME to build it from tokenizer.json (byte-level BPE; NAME is llama.cpp's pre-tokenizer, e.g. smollm, llama-bpe, qwen2)",
                e.src.path.display()
            ),
        },
    }
    arch_metadata(&mut w, cfg)?;
    w.add_metadata("general.file_type", GgufValue::U32(e.plan.file_type()));
    w.add_metadata("general.quantization_version", GgufValue::U32(2));
    if let Some(im) = e.imatrix {
        w.add_metadata(
            "quantize.imatrix.dataset",
            GgufValue::String(im.dataset.clone()),
        );
        w.add_metadata(
            "quantize.imatrix.entries_count",
            GgufValue::U32(
                (0..cfg.num_layers)
                    .map(|l| {
                        imatrix_linears(cfg, l)
                            .iter()
                            .filter(|(_, g, _)| im.values.contains_key(&(l, *g)))
                            .count()
                    })
                    .sum::<usize>() as u32,
            ),
        );
        w.add_metadata(
            "quantize.imatrix.chunks_count",
            GgufValue::U32(im.chunks as u32),
        );
    }
    Ok(w)
}

/// GGUF tensors in order of first appearance, each with its parts: an expert's linears stack
/// into one tensor `[n_experts, d_out, d_in]` (llama.cpp's `ffn_*_exps`), experts in order.
fn gguf_tensor_parts(table: &[arch::TensorEntry]) -> Vec<(&str, Vec<&arch::TensorEntry>)> {
    let mut order: Vec<&str> = Vec::new();
    let mut parts: HashMap<&str, Vec<&arch::TensorEntry>> = HashMap::new();
    for t in table {
        let v = parts.entry(t.gguf.name.as_str()).or_default();
        if v.is_empty() {
            order.push(&t.gguf.name);
        }
        v.push(t);
    }
    order
        .into_iter()
        .map(|g| (g, parts.remove(g).unwrap_or_default()))
        .collect()
}

/// `(rows, cols)` of a tensor entry's shape (a 1-D tensor is one row).
fn rows_cols(t: &arch::TensorEntry) -> Result<(usize, usize)> {
    match t.shape.as_slice() {
        [r, c] => Ok((*r, *c)),
        [c] => Ok((1, *c)),
        s => bail!("tensor '{}' has shape {s:?}", t.hf),
    }
}

/// GGUF dims (ggml order) of a tensor of `parts` parts of `rows x cols` (1-D when `one_d`).
fn gguf_dims(one_d: bool, rows: usize, cols: usize, parts: usize, stacked: bool) -> Vec<u64> {
    match (one_d, stacked) {
        (true, _) => vec![cols as u64],
        (false, false) => vec![cols as u64, rows as u64],
        (false, true) => vec![cols as u64, rows as u64, parts as u64],
    }
}

/// The exact length of the file [`write_gguf`] writes for `e` when the linear weights named in
/// `linear_types` (Hugging Face weight names, `model.layers.0.self_attn.q_proj.weight`) have
/// those types (before llama.cpp's shape fallback, which is applied) and every other tensor the
/// type `e.plan` gives it: the header (the metadata and tensor infos [`build_gguf`] writes) and
/// each tensor's blocks, padded. Only the metadata is built; no tensor is loaded. For budgets
/// stated as a file size (`compress --allocate search --target-size` with `--search-types`).
/// A stacked expert tensor takes the type of its first expert's linear, as the export does.
pub fn predict_gguf_bytes(
    e: &GgufExport,
    linear_types: &HashMap<String, GgmlType>,
) -> Result<GgufSizes> {
    let cfg = &e.src.config;
    let w = gguf_metadata(e)?;
    let table = arch::tensor_table(cfg);
    let mut tensors = Vec::new();
    let mut hf: Vec<Vec<String>> = Vec::new();
    for (gname, entries) in gguf_tensor_parts(&table) {
        let first = entries[0];
        let (rows, cols) = rows_cols(first)?;
        let one_d = first.shape.len() == 1;
        let ty = if one_d {
            GgmlType::F32
        } else {
            fallback_type(
                linear_types
                    .get(&first.hf)
                    .copied()
                    .unwrap_or_else(|| e.plan.requested(gname)),
                cols,
            )
        };
        let dims = gguf_dims(
            one_d,
            rows,
            cols,
            entries.len(),
            first.gguf.expert.is_some(),
        );
        tensors.push((gname.to_string(), dims, ty));
        hf.push(entries.iter().map(|t| t.hf.clone()).collect());
    }
    for (name, f) in rope_tensors(cfg) {
        tensors.push((name.to_string(), vec![f.len() as u64], GgmlType::F32));
        hf.push(vec![]);
    }
    let alignment = w.alignment()?;
    let total = w.predicted_len(&tensors)?;
    let mut out = Vec::with_capacity(tensors.len());
    for ((name, dims, ty), parts) in tensors.into_iter().zip(hf) {
        let n = GgmlType::bytes_for(&ty, dims.iter().product())
            .with_context(|| format!("GGUF size: tensor '{name}' does not fit {ty} blocks"))?;
        out.push(GgufTensorSize {
            name,
            parts,
            ty,
            padded_bytes: n.next_multiple_of(alignment),
        });
    }
    Ok(GgufSizes {
        total,
        alignment,
        tensors: out,
    })
}

/// What [`predict_gguf_bytes`] finds.
#[derive(Clone, Debug)]
pub struct GgufSizes {
    /// Bytes of the whole file.
    pub total: u64,
    /// The file's data alignment.
    pub alignment: u64,
    pub tensors: Vec<GgufTensorSize>,
}

/// One GGUF tensor's type and data bytes (padded to the alignment).
#[derive(Clone, Debug)]
pub struct GgufTensorSize {
    pub name: String,
    /// The Hugging Face tensors it holds (several for stacked experts).
    pub parts: Vec<String>,
    pub ty: GgmlType,
    pub padded_bytes: u64,
}

/// Builds the GGUF file `e` describes in memory, with a report line per tensor.
pub fn build_gguf(e: &GgufExport) -> Result<(GgufWriter, Vec<TensorReport>)> {
    let cfg = &e.src.config;
    let mut w = gguf_metadata(e)?;
    let permute = cfg.arch.gguf_permutes_qk();
    let one_plus = cfg.arch.norm_style == NormStyle::OnePlus;
    let mut report = Vec::new();
    let table = arch::tensor_table(cfg);
    let mut layouts: HashMap<usize, arch::Layout> = HashMap::new();
    for (gname, entries) in gguf_tensor_parts(&table) {
        let entries = &entries;
        let first = entries[0];
        let shape = &first.shape;
        let (rows, cols) = rows_cols(first)?;
        let requested = e.plan.requested(gname);
        let mut ty = if shape.len() == 1 {
            GgmlType::F32
        } else {
            fallback_type(requested, cols)
        };
        if let (Some(q), true, true) = (e.quantized, e.keep_grid_types, e.carry_codes) {
            if let Some(t) = part_grid_type(q, cfg, &mut layouts, first)? {
                ty = t;
            }
        }
        // the linear this tensor belongs to: (layer, index in the layout, weight or bias)
        let lin = match (first.layer, first.kind) {
            (Some(l), TensorKind::LinearWeight(k)) => Some((l, k, true)),
            (Some(l), TensorKind::LinearBias(k)) => Some((l, k, false)),
            _ => None,
        };
        let role = lin.map(|(l, k, _)| {
            layouts
                .entry(l)
                .or_insert_with(|| arch::layer_layout(cfg, l))
                .linears[k]
                .role
        });
        let n = match (lin, shape.len()) {
            (Some((_, _, false)), 1) => cols, // a bias: permuted as a column
            _ => rows,
        };
        let perm = match role {
            Some(Role::Q) if permute => Some(qk_permutation(n, cfg.num_heads)?),
            Some(Role::K) if permute => Some(qk_permutation(n, cfg.num_kv_heads)?),
            _ => None,
        };
        let stacked = first.gguf.expert.is_some();
        // Carry GPTQ codes over where the block type holds them exactly; a stacked expert
        // tensor is carried when every expert's linear is.
        let mut carried = None;
        if let (Some(q), Some((_, _, true)), true) = (e.quantized, lin, e.carry_codes) {
            let mut blocks = Vec::with_capacity(entries.len());
            for part in entries {
                match carry_part(q, cfg, &mut layouts, part, ty, perm.as_deref())? {
                    Some(b) => blocks.push(b),
                    None => break,
                }
            }
            if blocks.len() == entries.len() {
                carried = Some(blocks.concat());
            }
        }
        let imat = match (e.imatrix, lin, stacked) {
            (Some(im), Some((layer, k, true)), false) => im.get(cfg, layer, k),
            _ => None,
        };
        let (data, used_imatrix, was_carried) = match carried {
            Some(d) => (d, false, true),
            None => {
                let mut x = Vec::with_capacity(rows * cols * entries.len());
                for part in entries {
                    let t = e.src.tensors.load(&part.hf)?;
                    if &t.shape != shape {
                        bail!(
                            "{}: tensor '{}' has shape {:?}, expected {shape:?}",
                            e.src.tensors.describe(),
                            part.hf,
                            t.shape
                        );
                    }
                    let mut d = match &perm {
                        Some(p) if shape.len() == 1 => permute_rows(&t.data, 1, p),
                        Some(p) => permute_rows(&t.data, cols, p),
                        None => t.data,
                    };
                    if one_plus && matches!(part.kind, TensorKind::Norm(_) | TensorKind::FinalNorm)
                    {
                        // llama.cpp's converter stores Gemma's norms as 1 + w
                        d.iter_mut().for_each(|w| *w += 1.0);
                    }
                    x.extend(d);
                }
                let im = imat.filter(|_| gguf_quant::uses_imatrix(ty));
                let d = gguf_quant::quantize(ty, &x, cols, im)
                    .with_context(|| format!("quantizing '{gname}' to {}", ty.name()))?;
                (d, im.is_some(), false)
            }
        };
        let dims = gguf_dims(shape.len() == 1, rows, cols, entries.len(), stacked);
        report.push(TensorReport {
            name: gname.to_string(),
            ggml_type: ty.name().to_string(),
            requested: requested.name().to_string(),
            carried_codes: was_carried,
            imatrix: used_imatrix,
            elements: (rows * cols * entries.len()) as u64,
            bytes: data.len() as u64,
        });
        w.add_tensor(gname.to_string(), dims, ty, data)?;
    }
    for (name, f) in rope_tensors(cfg) {
        let data: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        report.push(TensorReport {
            name: name.to_string(),
            ggml_type: GgmlType::F32.name().to_string(),
            requested: GgmlType::F32.name().to_string(),
            carried_codes: false,
            imatrix: false,
            elements: f.len() as u64,
            bytes: data.len() as u64,
        });
        w.add_tensor(name.to_string(), vec![f.len() as u64], GgmlType::F32, data)?;
    }
    Ok((w, report))
}

/// llama.cpp's per-frequency rope tensors for this model, F32 as its converter writes them:
/// `rope_freqs.weight` for one set of factors (Llama 3.1, computed as the converter does), and
/// LongRoPE's `rope_factors_long.weight` and `rope_factors_short.weight`
/// (`Phi3MiniModel.generate_extra_tensors`). llama.cpp's phi3 graph reads only the latter two,
/// so a phi3 model with one set of factors writes it as both.
fn rope_tensors(cfg: &ModelConfig) -> Vec<(&'static str, Vec<f32>)> {
    let (long, short) = ("rope_factors_long.weight", "rope_factors_short.weight");
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    match (
        &cfg.rope_scaling,
        shrink_model::layer::rope_freq_factors(cfg),
    ) {
        (
            Some(shrink_model::RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            }),
            _,
        ) => vec![(long, f32s(long_factor)), (short, f32s(short_factor))],
        (_, Some(f)) if cfg.arch.gguf_name() == "phi3" => vec![(long, f.clone()), (short, f)],
        (_, Some(f)) => vec![("rope_freqs.weight", f)],
        (_, None) => vec![],
    }
}

/// Writes the GGUF file (via a temporary name and a rename).
pub fn write_gguf(e: &GgufExport, out: &Path, force: bool) -> Result<(PathBuf, Vec<TensorReport>)> {
    if out.exists() && !force {
        bail!(
            "{}: already exists (pass --force to replace it)",
            out.display()
        );
    }
    if out.is_dir() {
        bail!(
            "{}: is a directory; GGUF export writes one file",
            out.display()
        );
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create directory", parent.display()))?;
    }
    let (w, report) = build_gguf(e)?;
    w.write(out)?;
    Ok((out.to_path_buf(), report))
}

/// The linear a tensor entry is the weight of: its `quantized.safetensors` base name and
/// `[d_out, d_in]` (`None` for other tensors).
fn part_linear(
    cfg: &ModelConfig,
    layouts: &mut HashMap<usize, arch::Layout>,
    part: &arch::TensorEntry,
) -> Option<(String, [usize; 2])> {
    let (Some(layer), TensorKind::LinearWeight(k)) = (part.layer, part.kind) else {
        return None;
    };
    let spec = &layouts
        .entry(layer)
        .or_insert_with(|| arch::layer_layout(cfg, layer))
        .linears[k];
    Some((crate::quantized::base_name(layer, &spec.path), spec.shape))
}

/// The llama.cpp type a linear's weight was rounded onto by `compress --gguf-type`, if any.
fn part_grid_type(
    q: &QuantizedDir,
    cfg: &ModelConfig,
    layouts: &mut HashMap<usize, arch::Layout>,
    part: &arch::TensorEntry,
) -> Result<Option<GgmlType>> {
    match part_linear(cfg, layouts, part) {
        Some((base, _)) => q.ggml_type(&base),
        None => Ok(None),
    }
}

/// The blocks of one linear's codes for a GGUF tensor of type `ty`, when its integer groups are
/// exactly that type's blocks (groups of 32, sym/asym as `carry_type` says, no act-order
/// permutation); `None` when they are not, and the writer re-quantizes instead.
fn carry_part(
    q: &QuantizedDir,
    cfg: &ModelConfig,
    layouts: &mut HashMap<usize, arch::Layout>,
    part: &arch::TensorEntry,
    ty: GgmlType,
    perm: Option<&[usize]>,
) -> Result<Option<Vec<u8>>> {
    let Some((base, shape)) = part_linear(cfg, layouts, part) else {
        return Ok(None);
    };
    if let Some((t, blocks)) = q.ggml(&base, shape)? {
        // Rounded onto this very type's grid by `compress --gguf-type`: the blocks as they are
        // (Q/K rows reordered as llama.cpp's converter does; a block lies within one row).
        if t != ty {
            return Ok(None);
        }
        return Ok(Some(match perm {
            Some(p) => {
                let rb = blocks.len() / shape[0].max(1);
                p.iter()
                    .flat_map(|&r| &blocks[r * rb..(r + 1) * rb])
                    .copied()
                    .collect()
            }
            None => blocks,
        }));
    }
    let s = q.settings_for(&base);
    if !(q.has(&base)
        && s.format.is_int()
        && s.group_size == Some(32)
        && carry_type(s.bits, s.sym) == Some(ty))
    {
        return Ok(None);
    }
    let ql = q.load(&base, shape)?;
    if !(ql.g_idx_trivial(32) && ql.d_in % 32 == 0) {
        return Ok(None);
    }
    let ql = match perm {
        Some(p) => ql.permute_rows(p),
        None => ql,
    };
    carry_blocks(&ql, ty).map(Some)
}

/// The blocks of a whole linear from its codes (rows of `d_in / 32` groups of 32).
fn carry_blocks(q: &QLinear, ty: GgmlType) -> Result<Vec<u8>> {
    let ng = q.n_groups();
    let mut out = Vec::with_capacity(q.d_out * q.d_in / 32 * ty.type_size());
    for r in 0..q.d_out {
        for g in 0..q.d_in / 32 {
            let codes = &q.codes[r * q.d_in + 32 * g..r * q.d_in + 32 * g + 32];
            let (s, z) = (q.scales[r * ng + g], q.zeros[r * ng + g]);
            let b = pack_codes_block(ty, codes, s, z as u32).with_context(|| {
                format!(
                    "{}: row {r} group {g} (zero {z}) does not fit {}",
                    q.name,
                    ty.name()
                )
            })?;
            out.extend_from_slice(&b);
        }
    }
    Ok(out)
}

/// Accumulates llama.cpp-style importance statistics from the calibration forward pass.
struct ImatrixHook<'a> {
    layer: usize,
    sums: &'a mut HashMap<(usize, usize), (Vec<f64>, usize)>,
}

impl shrink_model::LayerHook for ImatrixHook<'_> {
    fn before_group(
        &mut self,
        layer: &mut shrink_model::DecoderLayer,
        group: usize,
        input: &[f32],
        rows: usize,
    ) -> Result<()> {
        if layer.layout.groups[group].expert.is_some() {
            return Ok(()); // llama.cpp keeps experts' statistics per expert; not collected
        }
        let d = layer.layout.linears[layer.layout.groups[group].linears[0]].shape[1];
        let e = self
            .sums
            .entry((self.layer, group))
            .or_insert_with(|| (vec![0f64; d], 0));
        for r in input.chunks_exact(d) {
            for (s, v) in e.0.iter_mut().zip(r) {
                *s += (*v as f64) * (*v as f64);
            }
        }
        e.1 += rows;
        Ok(())
    }
}

/// Runs the model over `nsamples` windows of `seqlen` calibration tokens, one layer at a time,
/// and returns the mean squared input of every linear group (what llama-imatrix collects).
pub fn compute_imatrix(
    src: &ModelSource,
    ids: &[u32],
    nsamples: usize,
    seqlen: usize,
    dataset: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Imatrix> {
    let cfg = &src.config;
    if ids.len() != nsamples * seqlen || nsamples == 0 {
        bail!(
            "expected {nsamples} x {seqlen} calibration ids, got {}",
            ids.len()
        );
    }
    let mut x = src.embed_ids(ids)?;
    let rope = shrink_model::Rope::new(cfg, seqlen);
    let h = cfg.hidden_size;
    let mut sums: HashMap<(usize, usize), (Vec<f64>, usize)> = HashMap::new();
    let batch = 4usize;
    for i in 0..cfg.num_layers {
        let mut layer = src.load_layer(i)?;
        for chunk in x.chunks_mut(batch * seqlen * h) {
            let b = chunk.len() / (seqlen * h);
            let mut hook = ImatrixHook {
                layer: i,
                sums: &mut sums,
            };
            layer.forward(cfg, &rope, chunk, b, seqlen, &mut hook)?;
        }
        progress(i + 1, cfg.num_layers);
    }
    let mut values = HashMap::new();
    for (k, (s, n)) in sums {
        values.insert(k, s.iter().map(|v| (v / n.max(1) as f64) as f32).collect());
    }
    Ok(Imatrix {
        values,
        rows: ids.len(),
        chunks: nsamples,
        dataset: dataset.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_the_reader_inverse() {
        // shrink's GgufSource un-permutes with: GGUF row h*2d + 2i + j -> HF row h*2d + j*d + i.
        let perm = qk_permutation(8, 2).unwrap();
        assert_eq!(perm, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let rows: Vec<f32> = (0..8).map(|r| r as f32).collect();
        let mut t = shrink_model::Tensor::new(vec![8, 1], permute_rows(&rows, 1, &perm));
        shrink_model::source::unpermute_rows(&mut t, 2).unwrap();
        assert_eq!(t.data, rows);
        assert!(qk_permutation(6, 4).is_err());
    }

    #[test]
    fn type_plan_and_names() {
        let p = TypePlan {
            overrides: vec![("attn_v".into(), GgmlType::Q6K)],
            ..TypePlan::for_type(GgmlType::Q4K)
        };
        assert_eq!(p.requested("blk.3.attn_v.weight"), GgmlType::Q6K);
        assert_eq!(p.requested("blk.3.attn_q.weight"), GgmlType::Q4K);
        assert_eq!(p.requested("token_embd.weight"), GgmlType::Q8_0);
        assert_eq!(p.requested("blk.0.attn_norm.weight"), GgmlType::F32);
        assert_eq!(parse_type("q4_k").unwrap(), GgmlType::Q4K);
        assert_eq!(parse_type("Q8_0").unwrap(), GgmlType::Q8_0);
        assert_eq!(parse_type("Q2_K").unwrap(), GgmlType::Q2K);
        assert!(parse_type("BF16").is_err());
        assert!(parse_type("Q9").is_err());
        for (name, ft) in [
            ("IQ3_XXS", 23),
            ("iq3_s", 26),
            ("IQ2_XXS", 19),
            ("IQ1_S", 24),
            ("IQ1_M", 31),
            ("IQ2_XS", 20),
            ("IQ2_S", 28),
        ] {
            let t = parse_type(name).unwrap();
            assert_eq!(file_type(t), ft, "{name}");
        }
    }
}
