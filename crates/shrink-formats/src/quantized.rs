//! Reading what `shrink compress` wrote: the integer codes, scales, zero points and group index of
//! every quantized linear (`quantized.safetensors`), with the settings from its metadata.
//!
//! Per linear `base` (e.g. `model.layers.0.self_attn.q_proj`): `{base}.qcodes` U8 `[d_out, d_in]`,
//! `{base}.scales` F32 `[d_out, n_groups]`, `{base}.zeros` I32 `[d_out, n_groups]`,
//! `{base}.g_idx` I32 `[d_in]`; the weight is `w[r, c] = scales[r, g] * (qcodes[r, c] - zeros[r, g])`
//! with `g = g_idx[c]` (the GPTQ reference grid).
//!
//! A linear on a float grid (`format` in the stage: FP8 E4M3, NVFP4, MXFP4) has the same four
//! tensors, read differently ([`FLinear`]): `qcodes` holds each weight's own bits (an E4M3 byte,
//! an E2M1 nibble), `scales` the stored scales as f32 values (f32 for FP8, the E4M3 value for
//! NVFP4, the power of two for MXFP4), and `zeros` the bits of the f32 every scale is divided by
//! (NVFP4's global scale; 1 otherwise), so `w = level(qcodes) * (scales / f32::from_bits(zeros))`.
//!
//! A linear rounded onto a llama.cpp block type's grid (`compress --gguf-type`) has instead
//! `{base}.ggml` U8 `[d_out, row bytes]`, its blocks as GGUF stores them, and `{base}.gtype` I32
//! `[1]`, the ggml type id.
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use shrink_model::gguf::GgmlType;
use shrink_model::minifloat::NumberFormat;
use shrink_model::source::SafetensorsSource;

use std::path::{Path, PathBuf};

/// The quantization settings of a compressed directory.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantSettings {
    pub bits: u32,
    /// `None`: one group per output channel.
    pub group_size: Option<usize>,
    pub sym: bool,
    /// "none", "static" or "dynamic" (GPTQ act-order as shrink names it).
    pub act_order: String,
    /// The method label (e.g. "gptq w4 g64 asym").
    pub method: String,
    /// The llama.cpp type whose grid the codes are on (`gguf_type`), if any (a mix's main type).
    pub ggml: Option<GgmlType>,
    /// The llama-quantize mix `gguf_type` named (`Q4_K_M`), if it named one.
    pub mix: Option<shrink_model::ggml_mix::Mix>,
    /// The number format of the codes (`format` in the stage; integer when absent).
    pub format: NumberFormat,
    /// The llm-compressor preset scheme the stage named (`scheme`), if any.
    pub scheme: Option<String>,
    /// The activation quantization the scheme records (`act`), if any.
    pub act: Option<String>,
}

impl QuantSettings {
    /// The settings a stage of the recipe (as JSON) gives.
    pub fn from_stage(stage: &serde_json::Value, method: &str) -> Result<QuantSettings> {
        let bits = stage
            .get("bits")
            .and_then(|v| v.as_u64())
            .context("the stage has no 'bits'")? as u32;
        if !(2..=8).contains(&bits) {
            bail!("bits = {bits} is outside 2..=8");
        }
        let s = QuantSettings {
            bits,
            group_size: stage
                .get("group_size")
                .and_then(|v| v.as_u64())
                .map(|g| g as usize),
            sym: stage.get("sym").and_then(|v| v.as_bool()).unwrap_or(false),
            act_order: stage
                .get("act_order")
                .and_then(|v| v.as_str())
                .unwrap_or("none")
                .to_string(),
            method: method.to_string(),
            ggml: match stage.get("gguf_type").and_then(|v| v.as_str()) {
                Some(n) => Some(match shrink_model::ggml_mix::Mix::parse(n, false) {
                    Some(m) => m.default_type(),
                    None => GgmlType::from_name(n)
                        .with_context(|| format!("unknown gguf_type '{n}'"))?,
                }),
                None => None,
            },
            mix: stage
                .get("gguf_type")
                .and_then(|v| v.as_str())
                .and_then(|n| shrink_model::ggml_mix::Mix::parse(n, false)),
            format: match stage.get("format") {
                Some(v) if !v.is_null() => serde_json::from_value(v.clone())
                    .with_context(|| format!("unknown number format {v}"))?,
                _ => NumberFormat::Int,
            },
            scheme: stage
                .get("scheme")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            act: stage
                .get("act")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        };
        if s.group_size == Some(0) {
            bail!("group_size 0");
        }
        Ok(s)
    }
}

/// One quantized linear.
#[derive(Clone, Debug)]
pub struct QLinear {
    pub name: String,
    pub d_out: usize,
    pub d_in: usize,
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub zeros: Vec<i32>,
    pub g_idx: Vec<i32>,
}

impl QLinear {
    pub fn n_groups(&self) -> usize {
        self.scales.len() / self.d_out.max(1)
    }
    /// Whether `g_idx[c] == c / group` for every column.
    pub fn g_idx_trivial(&self, group: usize) -> bool {
        self.g_idx
            .iter()
            .enumerate()
            .all(|(c, &g)| g as usize == c / group.max(1))
    }
    /// `scale * (code - zero)` in f32, exactly as shrink dequantizes.
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.n_groups();
        let mut out = vec![0f32; self.d_out * self.d_in];
        for r in 0..self.d_out {
            for c in 0..self.d_in {
                let g = self.g_idx[c] as usize;
                let s = self.scales[r * ng + g];
                let z = self.zeros[r * ng + g];
                out[r * self.d_in + c] = s * (self.codes[r * self.d_in + c] as f32 - z as f32);
            }
        }
        out
    }
    /// The same linear with its rows reordered: new row `i` is old row `perm[i]`.
    pub fn permute_rows(&self, perm: &[usize]) -> QLinear {
        let ng = self.n_groups();
        let mut q = self.clone();
        for (i, &p) in perm.iter().enumerate() {
            q.codes[i * self.d_in..(i + 1) * self.d_in]
                .copy_from_slice(&self.codes[p * self.d_in..(p + 1) * self.d_in]);
            q.scales[i * ng..(i + 1) * ng].copy_from_slice(&self.scales[p * ng..(p + 1) * ng]);
            q.zeros[i * ng..(i + 1) * ng].copy_from_slice(&self.zeros[p * ng..(p + 1) * ng]);
        }
        q
    }
}

/// One quantized linear on a float grid (see the module doc).
#[derive(Clone, Debug)]
pub struct FLinear {
    pub name: String,
    pub d_out: usize,
    pub d_in: usize,
    pub format: NumberFormat,
    /// `[d_out, d_in]`: each weight's bits in the format.
    pub codes: Vec<u8>,
    /// `[d_out, n_groups]` stored scales (f32 values).
    pub scales: Vec<f32>,
    /// What every scale is divided by (NVFP4's global scale; 1 otherwise).
    pub divisor: f32,
    pub g_idx: Vec<i32>,
}

impl FLinear {
    pub fn n_groups(&self) -> usize {
        self.scales.len() / self.d_out.max(1)
    }
    /// `level(code) * (scale / divisor)` in f32, as shrink dequantizes (and compressed-tensors'
    /// `_dequantize`).
    pub fn dequantize(&self) -> Vec<f32> {
        let levels = self.format.levels().expect("a float format");
        let ng = self.n_groups();
        let mut out = vec![0f32; self.d_out * self.d_in];
        for r in 0..self.d_out {
            for c in 0..self.d_in {
                let a = self.scales[r * ng + self.g_idx[c] as usize] / self.divisor;
                out[r * self.d_in + c] = a * levels[self.codes[r * self.d_in + c] as usize];
            }
        }
        out
    }
}

/// A `shrink compress` output directory opened for export.
pub struct QuantizedDir {
    pub dir: PathBuf,
    /// The settings most linears have (all of them unless a recipe gave some others).
    pub settings: QuantSettings,
    /// Linears whose settings differ from [`QuantizedDir::settings`] (per-module recipes).
    per_linear: std::collections::HashMap<String, QuantSettings>,
    file: SafetensorsSource,
}

impl QuantizedDir {
    /// Whether `dir` holds a `quantized.safetensors`.
    pub fn present(dir: &Path) -> bool {
        dir.is_dir() && dir.join("quantized.safetensors").is_file()
    }

    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("quantized.safetensors");
        if !path.is_file() {
            bail!(
                "{}: no quantized.safetensors (export of quantized formats reads a `shrink compress` output directory)",
                dir.display()
            );
        }
        let meta = read_metadata(&path)?;
        let method = meta.get("method").cloned().unwrap_or_default();
        let stage: serde_json::Value = meta
            .get("stage")
            .and_then(|s| serde_json::from_str(s).ok())
            .with_context(|| {
                format!(
                    "{}: metadata has no valid 'stage' (not written by shrink compress?)",
                    path.display()
                )
            })?;
        let settings = QuantSettings::from_stage(&stage, &method)
            .with_context(|| format!("{}: metadata 'stage'", path.display()))?;
        let mut per_linear = std::collections::HashMap::new();
        if let Some(text) = meta.get("linear_stages") {
            let map: std::collections::BTreeMap<String, serde_json::Value> =
                serde_json::from_str(text).with_context(|| {
                    format!(
                        "{}: metadata 'linear_stages' is not valid JSON",
                        path.display()
                    )
                })?;
            for (base, st) in map {
                let s = QuantSettings::from_stage(&st, &method).with_context(|| {
                    format!("{}: metadata 'linear_stages' of {base}", path.display())
                })?;
                per_linear.insert(base, s);
            }
        }
        Ok(QuantizedDir {
            dir: dir.into(),
            settings,
            per_linear,
            file: SafetensorsSource::open(&path)?,
        })
    }

    /// The settings of the linear `base`.
    pub fn settings_for(&self, base: &str) -> &QuantSettings {
        self.per_linear.get(base).unwrap_or(&self.settings)
    }

    /// Whether every quantized linear has the same settings.
    pub fn uniform(&self) -> bool {
        self.per_linear.values().all(|s| *s == self.settings)
    }

    /// The blocks of the linear `base` when it was rounded onto a llama.cpp grid: its type and
    /// `[d_out, d_in]` weights' worth of blocks (checked against the shape).
    pub fn ggml(&self, base: &str, shape: [usize; 2]) -> Result<Option<(GgmlType, Vec<u8>)>> {
        let f = self.dir.join("quantized.safetensors");
        let f = f.display();
        let Some(t) = self.ggml_type(base)? else {
            return Ok(None);
        };
        let (dt, s, bytes) = self
            .file
            .raw(&format!("{base}.ggml"))
            .with_context(|| format!("{f}: tensor '{base}.ggml' is missing"))?;
        let [d_out, d_in] = shape;
        let want = (d_in % t.block_size() == 0)
            .then(|| t.bytes_for((d_out * d_in) as u64))
            .flatten();
        if dt != Dtype::U8 || want != Some(bytes.len() as u64) || s.first() != Some(&d_out) {
            bail!(
                "{f}: '{base}.ggml' is {dt:?} {s:?} ({} bytes), not [{d_out}, {d_in}] weights of {}",
                bytes.len(),
                t.name()
            );
        }
        Ok(Some((t, bytes.to_vec())))
    }

    /// The llama.cpp type the linear `base` was rounded onto, if any (`{base}.gtype`).
    pub fn ggml_type(&self, base: &str) -> Result<Option<GgmlType>> {
        let f = self.dir.join("quantized.safetensors");
        let f = f.display();
        let Some((dt, _, tb)) = self.file.raw(&format!("{base}.gtype")) else {
            return Ok(None);
        };
        if dt != Dtype::I32 || tb.len() != 4 {
            bail!("{f}: '{base}.gtype' is not one I32");
        }
        let id = i32::from_le_bytes([tb[0], tb[1], tb[2], tb[3]]);
        let t = GgmlType::from_u32(id as u32)
            .filter(|t| shrink_model::ggml_quant::gptq_target(*t))
            .with_context(|| format!("{f}: '{base}.gtype' = {id} is not a ggml grid type"))?;
        Ok(Some(t))
    }

    /// How many linears were rounded onto llama.cpp grids (which only GGUF export writes).
    pub fn ggml_linears(&self) -> usize {
        self.file.names().filter(|n| n.ends_with(".gtype")).count()
    }

    /// Whether the linear `base` (`model.layers.3.mlp.experts.5.down_proj`) was quantized.
    pub fn has(&self, base: &str) -> bool {
        self.file.info(&format!("{base}.qcodes")).is_some()
    }

    /// Loads the linear `base` and validates it against its `[d_out, d_in]` under the config.
    pub fn load(&self, base: &str, shape: [usize; 2]) -> Result<QLinear> {
        let [d_out, d_in] = shape;
        let file = self.dir.join("quantized.safetensors");
        let f = file.display();
        let raw = |suffix: &str, dt: Dtype, shape: &[usize]| -> Result<&[u8]> {
            let name = format!("{base}.{suffix}");
            let (d, s, bytes) = self
                .file
                .raw(&name)
                .with_context(|| format!("{f}: tensor '{name}' is missing"))?;
            if d != dt || s != shape {
                bail!("{f}: tensor '{name}' is {d:?} {s:?}, expected {dt:?} {shape:?}");
            }
            Ok(bytes)
        };
        let fmt = self.settings_for(base).format;
        if !fmt.is_int() {
            bail!(
                "{f}: {base} is on the {} grid: its codes are floats, which only compressed-tensors \
                 export writes (--format compressed-tensors)",
                fmt.name()
            );
        }
        let codes = raw("qcodes", Dtype::U8, &[d_out, d_in])?.to_vec();
        let ng = self
            .file
            .info(&format!("{base}.scales"))
            .map(|(_, s)| s.get(1).copied().unwrap_or(0))
            .unwrap_or(0);
        if ng == 0 || ng > d_in {
            bail!("{f}: '{base}.scales' has {ng} groups for {d_in} columns");
        }
        let scales: Vec<f32> = raw("scales", Dtype::F32, &[d_out, ng])?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let i32s = |b: &[u8]| -> Vec<i32> {
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let zeros = i32s(raw("zeros", Dtype::I32, &[d_out, ng])?);
        let g_idx = i32s(raw("g_idx", Dtype::I32, &[d_in])?);
        let maxq = (1u32 << self.settings_for(base).bits) - 1;
        if let Some(c) = codes.iter().find(|&&c| c as u32 > maxq) {
            bail!("{f}: '{base}.qcodes' has code {c} above {maxq}");
        }
        if let Some(z) = zeros.iter().find(|&&z| z < 0 || z as u32 > maxq) {
            bail!("{f}: '{base}.zeros' has zero point {z} outside 0..={maxq}");
        }
        if let Some(g) = g_idx.iter().find(|&&g| g < 0 || g as usize >= ng) {
            bail!("{f}: '{base}.g_idx' has group {g} outside 0..{ng}");
        }
        if let Some(s) = scales.iter().find(|s| !s.is_finite()) {
            bail!("{f}: '{base}.scales' has a non-finite scale {s}");
        }
        Ok(QLinear {
            name: format!("{base}.weight"),
            d_out,
            d_in,
            codes,
            scales,
            zeros,
            g_idx,
        })
    }
}

impl QuantizedDir {
    /// Loads the float-grid linear `base` (see the module doc) and validates it: codes of the
    /// format (no NaN), finite positive scales, one positive divisor, `g_idx` in range.
    pub fn load_float(&self, base: &str, shape: [usize; 2]) -> Result<FLinear> {
        let [d_out, d_in] = shape;
        let file = self.dir.join("quantized.safetensors");
        let f = file.display();
        let fmt = self.settings_for(base).format;
        let Some(levels) = fmt.levels() else {
            bail!("{f}: {base} has integer codes, not a float format");
        };
        let get = |suffix: &str, dt: Dtype, rows: usize| -> Result<(Vec<usize>, &[u8])> {
            let name = format!("{base}.{suffix}");
            let (d, s, bytes) = self
                .file
                .raw(&name)
                .with_context(|| format!("{f}: tensor '{name}' is missing"))?;
            if d != dt || s.first() != Some(&rows) || s.len() > 2 {
                bail!("{f}: tensor '{name}' is {d:?} {s:?}, expected {dt:?} with {rows} rows");
            }
            Ok((s.to_vec(), bytes))
        };
        let (cs, codes) = get("qcodes", Dtype::U8, d_out)?;
        if cs != [d_out, d_in] {
            bail!("{f}: '{base}.qcodes' is {cs:?}, expected [{d_out}, {d_in}]");
        }
        if let Some(c) = codes
            .iter()
            .find(|&&c| c as usize >= levels.len() || levels[c as usize].is_nan())
        {
            bail!(
                "{f}: '{base}.qcodes' has code {c}, not a finite {} value",
                fmt.name()
            );
        }
        let (ss, sb) = get("scales", Dtype::F32, d_out)?;
        let ng = ss.get(1).copied().unwrap_or(0);
        if ng == 0 || ng > d_in {
            bail!("{f}: '{base}.scales' has {ng} groups for {d_in} columns");
        }
        let f32s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let i32s = |b: &[u8]| -> Vec<i32> {
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let scales = f32s(sb);
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            bail!("{f}: '{base}.scales' has scale {s}, not finite and positive");
        }
        let (_, zb) = get("zeros", Dtype::I32, d_out)?;
        let zeros = i32s(zb);
        let divisor = f32::from_bits(zeros.first().copied().unwrap_or(0) as u32);
        if zeros.len() != scales.len()
            || zeros.iter().any(|&z| z != zeros[0])
            || !(divisor.is_finite() && divisor > 0.0)
        {
            bail!(
                "{f}: '{base}.zeros' does not hold one positive f32 divisor per group ({divisor})"
            );
        }
        let (gs, gb) = get("g_idx", Dtype::I32, d_in)?;
        if gs != [d_in] {
            bail!("{f}: '{base}.g_idx' is {gs:?}, expected [{d_in}]");
        }
        let g_idx = i32s(gb);
        if let Some(g) = g_idx.iter().find(|&&g| g < 0 || g as usize >= ng) {
            bail!("{f}: '{base}.g_idx' has group {g} outside 0..{ng}");
        }
        Ok(FLinear {
            name: format!("{base}.weight"),
            d_out,
            d_in,
            format: fmt,
            codes: codes.to_vec(),
            scales,
            divisor,
            g_idx,
        })
    }
}

/// `model.layers.{i}.{path}` (e.g. `model.layers.3.self_attn.q_proj`): a linear's name without
/// `.weight`, the prefix of its quantized tensors.
pub fn base_name(layer: usize, path: &str) -> String {
    format!("model.layers.{layer}.{path}")
}

/// The `__metadata__` of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<std::collections::HashMap<String, String>> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .with_context(|| format!("{}: too short for safetensors", path.display()))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 {
        bail!(
            "{}: safetensors header of {n} bytes is implausible",
            path.display()
        );
    }
    let mut h = vec![0u8; n as usize];
    f.read_exact(&mut h)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&h)
        .with_context(|| format!("{}: header is not JSON", path.display()))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}
