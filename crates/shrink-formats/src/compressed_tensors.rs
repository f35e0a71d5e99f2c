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
//!
//! Float grids and W8A8 go to the formats compressed-tensors infers for them ([`ct_format`]):
//! `float-quantized` (FP8), `nvfp4-pack-quantized`, `mxfp4-pack-quantized` and `int-quantized`
//! ([`ct_float_tensors`], [`ct_int8_tensors`]), with the `quantization_config` llm-compressor
//! writes for the preset scheme ([`ct_float_args`]). `tools/reference/check_export_fp.py`
//! decompresses them with compressed-tensors itself.
use crate::hf::{write_json, OutputDir};
use crate::quantized::{base_name, FLinear, QLinear, QuantSettings, QuantizedDir};
use shrink_model::minifloat::{
    e4m3_decode, e4m3_encode, e8m0_decode, NumberFormat, MXFP4_GROUP, NVFP4_GROUP,
};

/// Side of FP8_BLOCK's tiles (`block_structure = [128, 128]`).
pub const FP8_TILE: usize = 128;
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

/// The compression format compressed-tensors (0.20.1) infers for a linear with these settings:
/// the first compressor of `COMPRESSION_FORMAT_PRIORITY` whose `can_compress` accepts the
/// scheme (`compressors/format.py`): FP4 with groups of 32 `mxfp4-pack-quantized`, of 16
/// `nvfp4-pack-quantized`, integer weights with activations `int-quantized`, integer weights
/// alone `pack-quantized`, float weights with activations `float-quantized`, else
/// `naive-quantized`.
pub fn ct_format(s: &QuantSettings) -> &'static str {
    match s.format {
        NumberFormat::Mxfp4 => "mxfp4-pack-quantized",
        NumberFormat::Nvfp4 => "nvfp4-pack-quantized",
        NumberFormat::Int if s.act.is_some() => "int-quantized",
        NumberFormat::Int => "pack-quantized",
        _ if s.act.is_some() => "float-quantized",
        _ => "naive-quantized",
    }
}

/// `weights` and `input_activations` of a config group for the float formats and W8A8, as
/// compressed-tensors 0.20.1 serialises llm-compressor's preset schemes
/// (`quantization/quant_scheme.py`: FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4A16, MXFP4, MXFP4A16, W8A8;
/// `QuantizationArgs.model_dump`, which leaves out unset fields). Schemes whose activations have
/// static scales (FP8's per-tensor `input_scale`, NVFP4's `input_global_scale`) need activation
/// calibration, which shrink does not do yet: refused, naming the scheme to use instead.
pub fn ct_float_args(s: &QuantSettings) -> Result<(Value, Value)> {
    let args = |bits: u32, ty: &str, group: Value, strategy: &str, dynamic: Value| {
        json!({
            "num_bits": bits,
            "type": ty,
            "symmetric": true,
            "group_size": group,
            "strategy": strategy,
            "dynamic": dynamic,
        })
    };
    let w = match s.format {
        NumberFormat::Fp8Tensor => args(8, "float", Value::Null, "tensor", json!(false)),
        NumberFormat::Fp8Channel => args(8, "float", Value::Null, "channel", json!(false)),
        NumberFormat::Fp8Block => {
            let mut a = args(8, "float", Value::Null, "block", json!(false));
            a["block_structure"] = json!([FP8_TILE, FP8_TILE]);
            a
        }
        NumberFormat::Nvfp4 => {
            let mut a = args(4, "float", json!(16), "tensor_group", json!(false));
            a["scale_dtype"] = json!("torch.float8_e4m3fn");
            a
        }
        NumberFormat::Mxfp4 => {
            let mut a = args(4, "float", json!(32), "group", json!(false));
            a["scale_dtype"] = json!("torch.uint8");
            a
        }
        NumberFormat::Int => args(8, "int", Value::Null, "channel", json!(false)),
    };
    if s.format == NumberFormat::Int && !(s.bits == 8 && s.sym && s.group_size.is_none()) {
        bail!("int-quantized export is W8A8's: 8-bit symmetric per-channel weights");
    }
    let scheme = s.scheme.as_deref().unwrap_or("");
    let act = match (scheme, &s.act) {
        (_, None) => Value::Null,
        ("W8A8", _) => args(8, "int", Value::Null, "token", json!(true)),
        ("FP8_DYNAMIC", _) => args(8, "float", Value::Null, "token", json!(true)),
        ("FP8_BLOCK", _) => args(8, "float", json!(128), "group", json!(true)),
        ("MXFP4", _) => {
            let mut a = args(4, "float", json!(32), "group", json!(true));
            a["scale_dtype"] = json!("torch.uint8");
            a
        }
        ("FP8", _) => bail!(
            "scheme FP8 quantizes activations with a static per-tensor scale (input_scale), which \
             needs activation calibration shrink does not do yet: compress with --scheme \
             FP8_DYNAMIC (the same weights per channel, dynamic per-token activations)"
        ),
        ("NVFP4", _) => bail!(
            "scheme NVFP4 needs each linear's input_global_scale (static activation calibration), \
             which shrink does not compute yet: compress with --scheme NVFP4A16 (the same weights)"
        ),
        (_, Some(a)) => bail!("no compressed-tensors activation arguments for '{a}' ({scheme})"),
    };
    if s.format == NumberFormat::Int && act.is_null() {
        bail!("int-quantized export needs W8A8's activations");
    }
    Ok((w, act))
}

fn u8_entry(name: String, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> (Entry, Vec<u8>) {
    (Entry { name, dtype, shape }, bytes)
}

/// The tensors of one float-grid linear, as compressed-tensors' compressors store them:
///
/// - FP8 (`float-quantized` / `naive-quantized`, `NaiveQuantizationCompressor`): `weight`
///   F8_E4M3 `[d_out, d_in]` (the codes are the bytes) and `weight_scale` F32: `[1]` per tensor,
///   `[d_out, 1]` per channel, `[ceil(d_out/128), ceil(d_in/128)]` per tile.
/// - NVFP4 (`nvfp4-pack-quantized`, `NVFP4PackedCompressor`, `pack_fp4_to_uint8`):
///   `weight_packed` U8 `[d_out, d_in/2]`, column `2k` in the low nibble and `2k+1` in the high;
///   `weight_scale` F8_E4M3 `[d_out, d_in/16]`; `weight_global_scale` F32 `[1]`.
/// - MXFP4 (`mxfp4-pack-quantized`, `MXFP4PackedCompressor`): `weight_packed` as NVFP4's and
///   `weight_scale` U8 `[d_out, d_in/32]`, the E8M0 exponents (`log2(scale) + 127`).
///
/// Decompression gives `level * scale / global_scale` (f32), shrink's dequantized weight.
pub fn ct_float_tensors(q: &FLinear) -> Result<Vec<(Entry, Vec<u8>)>> {
    let base = q.name.trim_end_matches(".weight");
    let n = |s: &str| format!("{base}.{s}");
    let ng = q.n_groups();
    let trivial = |g: usize| {
        q.g_idx
            .iter()
            .enumerate()
            .all(|(c, &k)| k as usize == c / g)
    };
    let packed = |q: &FLinear| -> Vec<u8> {
        q.codes
            .chunks(2)
            .map(|p| (p[0] & 15) | ((p.get(1).copied().unwrap_or(0) & 15) << 4))
            .collect()
    };
    Ok(match q.format {
        NumberFormat::Fp8Tensor | NumberFormat::Fp8Channel | NumberFormat::Fp8Block => {
            let scale: (Vec<usize>, Vec<f32>) = match q.format {
                NumberFormat::Fp8Tensor => {
                    if q.scales.iter().any(|&s| s != q.scales[0]) {
                        bail!("{base}: per-tensor FP8 with more than one scale");
                    }
                    (vec![1], vec![q.scales[0]])
                }
                NumberFormat::Fp8Channel => {
                    if ng != 1 {
                        bail!("{base}: per-channel FP8 with {ng} scales a row");
                    }
                    (vec![q.d_out, 1], q.scales.clone())
                }
                _ => {
                    let (tr, tc) = (q.d_out.div_ceil(FP8_TILE), q.d_in.div_ceil(FP8_TILE));
                    if ng != tc || !trivial(FP8_TILE) {
                        bail!("{base}: FP8 tiles do not have {tc} scales a row");
                    }
                    let mut t = Vec::with_capacity(tr * tc);
                    for i in 0..tr {
                        let r0 = i * FP8_TILE;
                        for r in r0..(r0 + FP8_TILE).min(q.d_out) {
                            if q.scales[r * ng..(r + 1) * ng] != q.scales[r0 * ng..(r0 + 1) * ng] {
                                bail!("{base}: rows {r0} and {r} of one FP8 tile differ in scale");
                            }
                        }
                        t.extend_from_slice(&q.scales[r0 * ng..(r0 + 1) * ng]);
                    }
                    (vec![tr, tc], t)
                }
            };
            if q.divisor != 1.0 {
                bail!("{base}: FP8 scales divided by {}", q.divisor);
            }
            vec![
                u8_entry(
                    n("weight"),
                    DType::F8E4M3,
                    vec![q.d_out, q.d_in],
                    q.codes.clone(),
                ),
                u8_entry(n("weight_scale"), DType::F32, scale.0, f32_bytes(&scale.1)),
            ]
        }
        NumberFormat::Nvfp4 | NumberFormat::Mxfp4 => {
            let g = if q.format == NumberFormat::Nvfp4 {
                NVFP4_GROUP
            } else {
                MXFP4_GROUP
            };
            if q.d_in % g != 0 || ng != q.d_in / g || !trivial(g) {
                bail!(
                    "{base}: {} needs whole groups of {g} in natural order ({} columns, {ng} \
                     groups a row)",
                    q.format.name(),
                    q.d_in
                );
            }
            let mut v = vec![u8_entry(
                n("weight_packed"),
                DType::U8,
                vec![q.d_out, q.d_in / 2],
                packed(q),
            )];
            if q.format == NumberFormat::Nvfp4 {
                let s8: Vec<u8> = q.scales.iter().map(|&s| e4m3_encode(s)).collect();
                if let Some(i) = s8
                    .iter()
                    .zip(&q.scales)
                    .position(|(&b, &s)| e4m3_decode(b) != s)
                {
                    bail!("{base}: NVFP4 scale {} is not an E4M3 value", q.scales[i]);
                }
                v.push(u8_entry(
                    n("weight_scale"),
                    DType::F8E4M3,
                    vec![q.d_out, ng],
                    s8,
                ));
                v.push(u8_entry(
                    n("weight_global_scale"),
                    DType::F32,
                    vec![1],
                    f32_bytes(&[q.divisor]),
                ));
            } else {
                let mut e = Vec::with_capacity(q.scales.len());
                for &s in &q.scales {
                    let b = (0..255u8).find(|&b| e8m0_decode(b) == s).with_context(|| {
                        format!("{base}: MXFP4 scale {s} is not a power of two in E8M0's range")
                    })?;
                    e.push(b);
                }
                if q.divisor != 1.0 {
                    bail!("{base}: MXFP4 scales divided by {}", q.divisor);
                }
                v.push(u8_entry(n("weight_scale"), DType::U8, vec![q.d_out, ng], e));
            }
            v
        }
        NumberFormat::Int => bail!("{base}: integer codes (use ct_tensors)"),
    })
}

/// W8A8's `int-quantized` tensors (`IntQuantizationCompressor`): `weight` I8 `[d_out, d_in]`,
/// the signed code `q - 128`, and `weight_scale` F32 `[d_out, 1]`; decompression is
/// `code * scale`, shrink's `scale * (q - 128)`.
pub fn ct_int8_tensors(q: &QLinear) -> Result<Vec<(Entry, Vec<u8>)>> {
    let base = q.name.trim_end_matches(".weight");
    if q.n_groups() != 1 || q.zeros.iter().any(|&z| z != 128) {
        bail!("{base}: int-quantized (W8A8) needs 8-bit symmetric per-channel codes (zero 128)");
    }
    Ok(vec![
        u8_entry(
            format!("{base}.weight"),
            DType::I8,
            vec![q.d_out, q.d_in],
            q.codes
                .iter()
                .map(|&c| (c as i16 - 128) as i8 as u8)
                .collect(),
        ),
        u8_entry(
            format!("{base}.weight_scale"),
            DType::F32,
            vec![q.d_out, 1],
            f32_bytes(&q.scales),
        ),
    ])
}

/// One entry of `config_groups`: int weights with the settings `s`, applied to `targets`.
fn ct_group(s: &QuantSettings, targets: Value) -> Result<Value> {
    if ct_format(s) != "pack-quantized" {
        let (weights, act) = ct_float_args(s)?;
        return Ok(json!({
            "format": ct_format(s),
            "input_activations": act,
            "output_activations": null,
            "targets": targets,
            "weights": weights,
        }));
    }
    let (strategy, group_size) = match s.group_size {
        Some(g) => ("group", json!(g)),
        None => ("channel", Value::Null),
    };
    let actorder = match s.act_order.as_str() {
        "dynamic" => json!("group"),
        "static" => json!("static"),
        _ => Value::Null,
    };
    Ok(json!({
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
    }))
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
        let tensors = match ct_format(&st) {
            "pack-quantized" => {
                let ql = q.load(base, *shape)?;
                let dynamic = st.act_order == "dynamic";
                ct_tensors(&ql, st.bits, st.sym, dynamic, opts.scale_dtype)
            }
            f => {
                if opts.scale_dtype != ScaleDType::F32 {
                    bail!("{f}: scales are written as the format defines them (f32 for FP8, E4M3 / E8M0 for FP4); --scale-dtype f16 does not apply");
                }
                // the config (and its refusals) before any tensor
                ct_float_args(&st).with_context(|| base.to_string())?;
                if st.format.is_int() {
                    ct_int8_tensors(&q.load(base, *shape)?)?
                } else {
                    ct_float_tensors(&q.load_float(base, *shape)?)?
                }
            }
        };
        for (entry, bytes) in tensors {
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
            Ok((format!("group_{i}"), ct_group(st, targets)?))
        })
        .collect::<Result<_>>()?;
    // one format for the model, or `mixed-precision` (compressed-tensors' `_flatten_formats`)
    let formats: std::collections::BTreeSet<&str> =
        groups.iter().map(|(st, _)| ct_format(st)).collect();
    let format = match formats.len() {
        1 => formats.into_iter().next().unwrap(),
        _ => "mixed-precision",
    };
    let qc = json!({
        "config_groups": config_groups,
        "format": format,
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

    fn flin(format: NumberFormat, d_out: usize, d_in: usize, g: usize) -> FLinear {
        let ng = d_in.div_ceil(g);
        let levels = format.levels().unwrap();
        let mut h = 12345u32;
        let mut next = || {
            h = h.wrapping_mul(1664525).wrapping_add(1013904223);
            h >> 8
        };
        let codes = (0..d_out * d_in)
            .map(|_| loop {
                let c = (next() as usize % levels.len()) as u8;
                if !levels[c as usize].is_nan() {
                    break c;
                }
            })
            .collect();
        let (scales, divisor): (Vec<f32>, f32) = match format {
            NumberFormat::Nvfp4 => (
                (0..d_out * ng)
                    .map(|_| e4m3_decode((next() % 0x7E) as u8 + 1))
                    .collect(),
                1234.5678,
            ),
            NumberFormat::Mxfp4 => (
                (0..d_out * ng)
                    .map(|_| e8m0_decode((next() % 40) as u8 + 100))
                    .collect(),
                1.0,
            ),
            NumberFormat::Fp8Block => {
                let tc = d_in.div_ceil(FP8_TILE);
                let tiles: Vec<f32> = (0..d_out.div_ceil(FP8_TILE) * tc)
                    .map(|i| 1e-4 * (i as f32 + 1.7))
                    .collect();
                (
                    (0..d_out * ng)
                        .map(|i| tiles[(i / ng) / FP8_TILE * tc + i % ng])
                        .collect(),
                    1.0,
                )
            }
            _ => (
                (0..d_out * ng).map(|i| 1e-3 * (i as f32 + 0.3)).collect(),
                1.0,
            ),
        };
        FLinear {
            name: "model.layers.0.mlp.up_proj.weight".into(),
            d_out,
            d_in,
            format,
            codes,
            scales,
            divisor,
            g_idx: (0..d_in).map(|c| (c / g) as i32).collect(),
        }
    }

    /// Decodes the exported tensors as compressed-tensors' decompressors read them (written
    /// independently of the exporter: nibbles, E4M3 / E8M0 scales, tiles) and compares with
    /// shrink's dequantization bit for bit.
    #[test]
    fn float_exports_decode_to_the_dequantized_weights_bit_for_bit() {
        let (d_out, d_in) = (130, 320);
        for (f, g) in [
            (NumberFormat::Nvfp4, 16),
            (NumberFormat::Mxfp4, 32),
            (NumberFormat::Fp8Channel, d_in),
            (NumberFormat::Fp8Block, FP8_TILE),
        ] {
            let q = flin(f, d_out, d_in, g);
            let want = q.dequantize();
            let t = ct_float_tensors(&q).unwrap();
            let get = |s: &str| {
                t.iter()
                    .find(|(e, _)| e.name.ends_with(&format!(".{s}")))
                    .unwrap_or_else(|| panic!("{f:?}: no {s}"))
            };
            let f32s = |b: &[u8]| -> Vec<f32> {
                b.chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            let mut got = vec![0f32; d_out * d_in];
            match f {
                NumberFormat::Nvfp4 | NumberFormat::Mxfp4 => {
                    let (e, p) = get("weight_packed");
                    assert_eq!(
                        (e.dtype, e.shape.clone()),
                        (DType::U8, vec![d_out, d_in / 2])
                    );
                    let (se, sb) = get("weight_scale");
                    let gs = if f == NumberFormat::Nvfp4 {
                        assert_eq!(se.dtype, DType::F8E4M3);
                        f32s(&get("weight_global_scale").1)[0]
                    } else {
                        assert_eq!(se.dtype, DType::U8);
                        1.0
                    };
                    for r in 0..d_out {
                        for c in 0..d_in {
                            let byte = p[r * d_in / 2 + c / 2];
                            let nib = if c % 2 == 0 { byte & 15 } else { byte >> 4 };
                            let mag =
                                [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0][(nib & 7) as usize];
                            let v = if nib & 8 != 0 { -mag } else { mag };
                            let sbyte = sb[r * (d_in / g) + c / g];
                            let s = if f == NumberFormat::Nvfp4 {
                                e4m3_decode(sbyte)
                            } else {
                                2f32.powi(sbyte as i32 - 127)
                            };
                            got[r * d_in + c] = v * (s / gs);
                        }
                    }
                }
                _ => {
                    let (e, w) = get("weight");
                    assert_eq!(e.dtype, DType::F8E4M3);
                    let (se, sb) = get("weight_scale");
                    let s = f32s(sb);
                    for r in 0..d_out {
                        for c in 0..d_in {
                            let k = if f == NumberFormat::Fp8Channel {
                                assert_eq!(se.shape, vec![d_out, 1]);
                                r
                            } else {
                                assert_eq!(se.shape, vec![2, 3]);
                                (r / 128) * 3 + c / 128
                            };
                            got[r * d_in + c] = e4m3_decode(w[r * d_in + c]) * s[k];
                        }
                    }
                }
            }
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{f:?} weight {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn float_configs_name_the_preset_and_refuse_static_activations() {
        let st = |format, scheme: &str, act: Option<&str>| QuantSettings {
            bits: 4,
            group_size: Some(16),
            sym: true,
            act_order: "static".into(),
            method: "gptq".into(),
            ggml: None,
            mix: None,
            format,
            scheme: Some(scheme.into()),
            act: act.map(str::to_string),
        };
        let nv = st(NumberFormat::Nvfp4, "NVFP4A16", None);
        assert_eq!(ct_format(&nv), "nvfp4-pack-quantized");
        let (w, a) = ct_float_args(&nv).unwrap();
        assert_eq!(w["strategy"], "tensor_group");
        assert_eq!(w["scale_dtype"], "torch.float8_e4m3fn");
        assert!(a.is_null());
        let e = ct_float_args(&st(NumberFormat::Nvfp4, "NVFP4", Some("nvfp4")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NVFP4A16"), "{e}");
        let fp8 = st(
            NumberFormat::Fp8Channel,
            "FP8_DYNAMIC",
            Some("dynamic per-token fp8"),
        );
        assert_eq!(ct_format(&fp8), "float-quantized");
        let (w, a) = ct_float_args(&fp8).unwrap();
        assert_eq!(
            (w["strategy"].clone(), a["strategy"].clone()),
            (json!("channel"), json!("token"))
        );
        let w8 = QuantSettings {
            bits: 8,
            group_size: None,
            ..st(NumberFormat::Int, "W8A8", Some("dynamic per-token int8"))
        };
        assert_eq!(ct_format(&w8), "int-quantized");
        assert_eq!(ct_float_args(&w8).unwrap().1["type"], "int");
    }

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
