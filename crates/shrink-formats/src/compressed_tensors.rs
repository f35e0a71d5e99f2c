//! compressed-tensors "pack-quantized" directories, as llm-compressor writes them and vLLM and
//! transformers load them.
//!
//! Packing follows `compressed_tensors/compressors/pack_quantized/helpers.py`
//! (`pack_to_int32`, compressed-tensors 0.19): a signed code `q` in `[-2^(b-1), 2^(b-1))` is
//! offset by `2^(b-1)` (giving shrink's unsigned code) and element `i` of a row occupies bits
//! `i*b .. i*b+b` of the row's little-endian int32 words (dense packing; for b = 2, 4, 8 this is
//! the older "8 nibbles per int32" layout). Per linear `{base}`:
//!
//! - `{base}.weight_packed` I32 `[d_out, ceil(d_in*b/32)]`
//! - `{base}.weight_scale` (F32 or F16) `[d_out, n_groups]`
//! - `{base}.weight_zero_point` I32 `[ceil(d_out*b/32), n_groups]` (asymmetric only; packed along
//!   the output dimension, `packed_dim=0`)
//! - `{base}.weight_shape` I64 `[2]` = `[d_out, d_in]`
//! - `{base}.weight_g_idx` I32 `[d_in]` when the groups were formed in act-order (`actorder: group`)
//!
//! Decompression is `(q - zp) * scale`, which for shrink's codes is `(code - zero) * scale`: with
//! F32 scales it equals shrink's dequantized weight bit for bit.
use crate::hf::{write_json, OutputDir};
use crate::quantized::{base_name, QLinear, QuantSettings, QuantizedDir};
use crate::safetensors_writer::{f32_bytes, write_safetensors_raw, DType, Entry};
use anyhow::{bail, Context, Result};
use half::f16;
use serde_json::{json, Value};
use shrink_model::source::SafetensorsSource;
use shrink_model::{arch, ModelConfig, TensorSource};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Element type of the written scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleDType {
    F32,
    F16,
}

impl ScaleDType {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ScaleDType::F32),
            "f16" | "float16" => Ok(ScaleDType::F16),
            _ => bail!("unknown scale dtype '{s}' (use f32 or f16)"),
        }
    }
    pub fn dtype(self) -> DType {
        match self {
            ScaleDType::F32 => DType::F32,
            ScaleDType::F16 => DType::F16,
        }
    }
    /// The scale as the file stores it, widened back to f32.
    pub fn round(self, s: f32) -> f32 {
        match self {
            ScaleDType::F32 => s,
            ScaleDType::F16 => f16::from_f32(s).to_f32(),
        }
    }
    pub fn bytes(self, v: &[f32]) -> Vec<u8> {
        match self {
            ScaleDType::F32 => f32_bytes(v),
            ScaleDType::F16 => v
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }
}

/// Dense little-endian bit packing of one row of `bits`-bit unsigned values into
/// `ceil(len*bits/32)` int32 words (compressed-tensors `pack_to_int32`).
pub fn pack_row_dense(vals: &[u32], bits: u32) -> Vec<u32> {
    let n_words = (vals.len() * bits as usize).div_ceil(32);
    let mut out = vec![0u32; n_words];
    for (i, &v) in vals.iter().enumerate() {
        let bit = i * bits as usize;
        let (w, off) = (bit / 32, (bit % 32) as u32);
        out[w] |= v << off;
        if off + bits > 32 {
            out[w + 1] |= v >> (32 - off);
        }
    }
    out
}

/// Inverse of [`pack_row_dense`] for `len` values.
pub fn unpack_row_dense(words: &[u32], bits: u32, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| shrink_model::packed::unpack_dense(words, bits, i))
        .collect()
}

pub(crate) fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
pub(crate) fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Produces the bytes of one tensor when the writer gets to it.
pub(crate) type Maker = Box<dyn FnOnce() -> Result<Vec<u8>> + Send>;
/// One tensor to write: header entry and a way to produce its bytes.
pub(crate) type Item = (Entry, Maker);

/// The dense (non-linear) tensors of the model, f32, from the compressed directory's
/// model.safetensors: embeddings, norms, the head when untied, and biases.
pub(crate) fn dense_items(
    cfg: &ModelConfig,
    dense: &std::sync::Arc<SafetensorsSource>,
    quantized: &dyn Fn(&str) -> bool,
) -> Result<Vec<Item>> {
    let mut items: Vec<Item> = Vec::new();
    for e in arch::tensor_table(cfg) {
        let (name, shape) = (e.hf, e.shape);
        if quantized(&name) {
            continue;
        }
        let src = dense.clone();
        let n = name.clone();
        let sh = shape.clone();
        items.push((
            Entry {
                name: name.clone(),
                dtype: DType::F32,
                shape,
            },
            Box::new(move || {
                let t = shrink_model::layer::load_checked(src.as_ref(), &n, &sh)?;
                Ok(f32_bytes(&t.data))
            }),
        ));
    }
    Ok(items)
}

/// Writes `items` (sorted by name) into `dir/model.safetensors`.
pub(crate) fn write_items(path: &Path, mut items: Vec<Item>, producer: &str) -> Result<()> {
    items.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let entries: Vec<Entry> = items.iter().map(|(e, _)| e.clone()).collect();
    let mut makers: Vec<Option<Maker>> = items.into_iter().map(|(_, f)| Some(f)).collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "producer".to_string(),
        format!("shrink {} {producer}", env!("CARGO_PKG_VERSION")),
    );
    write_safetensors_raw(path, &entries, &meta, &mut |i| match makers[i].take() {
        Some(f) => f(),
        None => bail!("tensor {i} produced twice"),
    })
}

/// config.json of the compressed directory with `quantization_config` added, plus the tokenizer
/// files copied unchanged.
pub(crate) fn write_config_and_tokenizer(
    src: &Path,
    dir: &OutputDir,
    quantization_config: Value,
) -> Result<()> {
    let cfg_path = src.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let mut cfg: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    let o = cfg
        .as_object_mut()
        .with_context(|| format!("{}: not a JSON object", cfg_path.display()))?;
    o.insert("quantization_config".into(), quantization_config);
    write_json(&dir.join("config.json"), &cfg)?;
    for name in [
        "tokenizer.json",
        shrink_model::model::TOKENIZER_GGUF,
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let p = src.join(name);
        if p.is_file() {
            let dst = dir.join(name);
            std::fs::copy(&p, &dst)
                .with_context(|| format!("cannot copy {} to {}", p.display(), dst.display()))?;
        } else if name == "tokenizer.json" {
            bail!("{}: missing", p.display());
        }
    }
    Ok(())
}

/// Every linear of the model: its base name (`model.layers.3.mlp.down_proj`) and `[d_out, d_in]`,
/// in layer order.
pub(crate) fn all_linears(cfg: &ModelConfig) -> Vec<(String, [usize; 2])> {
    (0..cfg.num_layers)
        .flat_map(|i| {
            arch::layer_layout(cfg, i)
                .linears
                .into_iter()
                .map(move |l| (base_name(i, &l.path), l.shape))
        })
        .collect()
}

/// Every quantized linear of the model (base name and shape), in layer order; errors when none
/// is.
pub(crate) fn quantized_linears(
    q: &QuantizedDir,
    cfg: &ModelConfig,
) -> Result<Vec<(String, [usize; 2])>> {
    let v: Vec<(String, [usize; 2])> = all_linears(cfg)
        .into_iter()
        .filter(|(b, _)| q.has(b))
        .collect();
    if v.is_empty() {
        bail!(
            "{}: quantized.safetensors holds no quantized linear",
            q.dir.display()
        );
    }
    Ok(v)
}

/// Options of the compressed-tensors writer.
#[derive(Clone, Debug)]
pub struct CtOptions {
    pub scale_dtype: ScaleDType,
    pub force: bool,
}

/// The tensors compressed-tensors stores for one linear (see the module doc).
pub fn ct_tensors(
    q: &QLinear,
    bits: u32,
    sym: bool,
    with_g_idx: bool,
    sd: ScaleDType,
) -> Vec<(Entry, Vec<u8>)> {
    let base = q.name.trim_end_matches(".weight");
    let ng = q.n_groups();
    let e = |s: &str, dtype, shape: Vec<usize>| Entry {
        name: format!("{base}.{s}"),
        dtype,
        shape,
    };
    let mut packed = Vec::new();
    for r in 0..q.d_out {
        let row: Vec<u32> = q.codes[r * q.d_in..(r + 1) * q.d_in]
            .iter()
            .map(|&c| c as u32)
            .collect();
        packed.extend(pack_row_dense(&row, bits));
    }
    let words = (q.d_in * bits as usize).div_ceil(32);
    let mut out = vec![
        (
            e("weight_packed", DType::I32, vec![q.d_out, words]),
            u32_bytes(&packed),
        ),
        (
            e("weight_scale", sd.dtype(), vec![q.d_out, ng]),
            sd.bytes(&q.scales),
        ),
        (
            e("weight_shape", DType::I64, vec![2]),
            [q.d_out as i64, q.d_in as i64]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    ];
    if !sym {
        // packed_dim = 0: pack each group's column of zero points along the output dimension.
        let zw = (q.d_out * bits as usize).div_ceil(32);
        let mut zp = vec![0u32; zw * ng];
        for g in 0..ng {
            let col: Vec<u32> = (0..q.d_out).map(|r| q.zeros[r * ng + g] as u32).collect();
            for (w, v) in pack_row_dense(&col, bits).into_iter().enumerate() {
                zp[w * ng + g] = v;
            }
        }
        out.push((
            e("weight_zero_point", DType::I32, vec![zw, ng]),
            u32_bytes(&zp),
        ));
    }
    if with_g_idx {
        out.push((
            e("weight_g_idx", DType::I32, vec![q.d_in]),
            i32_bytes(&q.g_idx),
        ));
    }
    out
}

/// One entry of `config_groups`: int weights with the settings `s`, applied to `targets`.
fn ct_group(s: &QuantSettings, targets: Value) -> Value {
    let (strategy, group_size) = match s.group_size {
        Some(g) => ("group", json!(g)),
        None => ("channel", Value::Null),
    };
    let actorder = match s.act_order.as_str() {
        "dynamic" => json!("group"),
        "static" => json!("static"),
        _ => Value::Null,
    };
    json!({
        "format": "pack-quantized",
        "input_activations": null,
        "output_activations": null,
        "targets": targets,
        "weights": {
            "actorder": actorder,
            "block_structure": null,
            "dynamic": false,
            "group_size": group_size,
            "num_bits": s.bits,
            "observer": "minmax",
            "observer_kwargs": {},
            "strategy": strategy,
            "symmetric": s.sym,
            "type": "int",
            "zp_dtype": if s.sym { Value::Null } else { json!("torch.int8") },
        }
    })
}

/// Writes a compressed-tensors pack-quantized directory from a `shrink compress` output
/// directory. Linears with different settings (a per-module recipe) go in one config group per
/// setting, each targeting its modules by name.
pub fn write_compressed_tensors(src_dir: &Path, out: &Path, opts: &CtOptions) -> Result<PathBuf> {
    let q = QuantizedDir::open(src_dir)?;
    let cfg = ModelConfig::from_hf_file(&src_dir.join("config.json"))?;
    let s = q.settings.clone();
    let lins = quantized_linears(&q, &cfg)?;
    let dense = std::sync::Arc::new(SafetensorsSource::open(src_dir)?);
    let names: std::collections::HashSet<String> =
        lins.iter().map(|(b, _)| format!("{b}.weight")).collect();
    let dir = OutputDir::create(out, opts.force)?;
    let mut items = dense_items(&cfg, &dense, &|n| names.contains(n))?;
    // One config group per distinct setting; with several, each targets its modules by name.
    let mut groups: Vec<(QuantSettings, Vec<String>)> = Vec::new();
    for (base, shape) in &lins {
        let st = q.settings_for(base).clone();
        if st.sym && st.bits == 1 {
            bail!("1-bit symmetric quantization has no zero in compressed-tensors");
        }
        let ql = q.load(base, *shape)?;
        let dynamic = st.act_order == "dynamic";
        for (entry, bytes) in ct_tensors(&ql, st.bits, st.sym, dynamic, opts.scale_dtype) {
            items.push((entry, Box::new(move || Ok(bytes))));
        }
        match groups.iter_mut().find(|(g, _)| *g == st) {
            Some((_, v)) => v.push(base.clone()),
            None => groups.push((st, vec![base.clone()])),
        }
    }
    write_items(
        &dir.join("model.safetensors"),
        items,
        "export compressed-tensors",
    )?;
    let mut ignore = vec![json!("lm_head")];
    for (base, _) in all_linears(&cfg) {
        if !names.contains(&format!("{base}.weight")) {
            ignore.push(json!(base));
        }
    }
    let one = groups.len() == 1;
    let config_groups: serde_json::Map<String, Value> = groups
        .iter()
        .enumerate()
        .map(|(i, (st, modules))| {
            let targets = if one {
                json!(["Linear"])
            } else {
                json!(modules)
            };
            (format!("group_{i}"), ct_group(st, targets))
        })
        .collect();
    let qc = json!({
        "config_groups": config_groups,
        "format": "pack-quantized",
        "global_compression_ratio": null,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "producer": format!("shrink {} ({})", env!("CARGO_PKG_VERSION"), s.method),
    });
    write_config_and_tokenizer(src_dir, &dir, qc)?;
    dir.commit()
}

/// The sparsity of a dense model's linear weights: the fraction of exact zeros, and whether every
/// group of 4 consecutive input weights has at least 2 zeros (2:4).
pub fn sparsity_of(src: &dyn TensorSource, cfg: &ModelConfig) -> Result<(f64, bool)> {
    let (mut zeros, mut total) = (0u64, 0u64);
    let mut two_four = true;
    for i in 0..cfg.num_layers {
        for l in arch::layer_layout(cfg, i)
            .linears
            .iter()
            .filter(|l| l.compress)
        {
            let name = arch::hf_layer_tensor(i, &l.path, "weight");
            let t = src.load(&name)?;
            total += t.data.len() as u64;
            zeros += t.data.iter().filter(|v| **v == 0.0).count() as u64;
            if two_four {
                two_four = t
                    .data
                    .chunks(4)
                    .all(|c| c.iter().filter(|v| **v == 0.0).count() >= 2);
            }
        }
    }
    Ok((zeros as f64 / total.max(1) as f64, two_four))
}

/// Writes a sparse (pruned, not quantized) model as a plain dense directory, zeros stored, as
/// llm-compressor 0.14 itself saves pruned models (no `quantization_config`). compressed-tensors
/// 0.19 removed its sparse compressors (bitmask, 2:4 bitmask; `ModelCompressor` refuses Sparse24
/// configs "as of compressed-tensors>0.14.0"), and transformers 5.17 fails on a compressed-tensors
/// `quantization_config` that has a `sparsity_config` but no quantization groups, so no sparse
/// format is accepted any more. The measured sparsity and its structure ("2:4" or "unstructured")
/// are recorded under `shrink_sparsity` in config.json, a key the loaders ignore.
pub fn write_sparse_dense(
    src: &shrink_model::ModelSource,
    out: &Path,
    force: bool,
) -> Result<PathBuf> {
    let (sparsity, two_four) = sparsity_of(src.tensors.as_ref(), &src.config)?;
    if sparsity < 0.01 {
        bail!(
            "{}: linear weights are {:.2}% zeros and quantized.safetensors is absent: nothing to export as compressed-tensors (compress or prune the model first)",
            src.path.display(),
            100.0 * sparsity
        );
    }
    let dir = OutputDir::create(out, force)?;
    crate::hf::write_hf_files(
        src,
        src.tensors.as_ref(),
        &dir,
        "export compressed-tensors dense",
        &mut |_, _| {},
    )?;
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("{}: cannot read", cfg_path.display()))?;
    let mut cfg: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    cfg["shrink_sparsity"] = json!({
        "format": "dense",
        "global_sparsity": sparsity,
        "sparsity_structure": if two_four { "2:4" } else { "unstructured" },
        "targets": ["Linear"],
        "ignore": ["lm_head"],
    });
    write_json(&cfg_path, &cfg)?;
    dir.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_packing_round_trips_for_every_width() {
        for bits in 1..=8u32 {
            let vals: Vec<u32> = (0..77u32)
                .map(|i| ((i * 2654435761u32) >> 7) & ((1 << bits) - 1))
                .collect();
            let w = pack_row_dense(&vals, bits);
            assert_eq!(w.len(), (77 * bits as usize).div_ceil(32));
            assert_eq!(unpack_row_dense(&w, bits, 77), vals, "bits {bits}");
        }
        // 4-bit: element i is nibble i of the word, lowest first (the classic layout).
        let w = pack_row_dense(&[1, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_eq!(w, vec![0x8765_4321]);
    }
}
