//! Reading quantized Hugging Face checkpoints back to f32: compressed-tensors "pack-quantized"
//! and GPTQ ("gptq" v1 / "gptq_v2"), as `shrink export` writes them (and llm-compressor /
//! AutoGPTQ / GPTQModel do).
//!
//! - compressed-tensors (`compressed_tensors/compressors/pack_quantized`): `weight_packed` I32
//!   `[d_out, ceil(d_in*b/32)]`, element `i` at bits `i*b..` of the row (dense little-endian
//!   packing), offset by `2^(b-1)`; `weight_zero_point` packed the same way along the output
//!   dimension (asymmetric only); `weight = (q - zp) * weight_scale`, group `g_idx[c]` or
//!   `c / group_size`.
//! - GPTQ (AutoGPTQ `QuantLinear`): `qweight` I32 `[d_in*b/32, d_out]` (32/b input rows per word),
//!   `qzeros` I32 `[n_groups, d_out*b/32]` (+1 in the v1 format), `scales` `[n_groups, d_out]`,
//!   `g_idx` `[d_in]`; `weight[r, c] = scales[g, r] * (q[c, r] - z[g, r])` with `g = g_idx[c]`.
//!
//! Every other tensor is read from the safetensors files as usual.
use crate::source::{SafetensorsSource, TensorSource};
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use safetensors::Dtype;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug)]
enum Scheme {
    CompressedTensors {
        bits: u32,
        sym: bool,
        group_size: Option<usize>,
    },
    Gptq {
        bits: u32,
        v1: bool,
    },
}

/// A safetensors checkpoint whose quantized linears are dequantized on load.
pub struct PackedSource {
    inner: SafetensorsSource,
    scheme: Scheme,
}

/// Wraps `inner` when `config.json` declares a quantized checkpoint shrink can read; returns it
/// unchanged for plain (or `dense`-format compressed-tensors) checkpoints.
pub fn wrap(dir: &Path, inner: SafetensorsSource) -> Result<Box<dyn TensorSource>> {
    let cfg_path = dir.join("config.json");
    let v: Value = match std::fs::read_to_string(&cfg_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        Some(v) => v,
        None => return Ok(Box::new(inner)),
    };
    let Some(qc) = v.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(Box::new(inner));
    };
    let f = cfg_path.display();
    let method = qc
        .get("quant_method")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let scheme = match method {
        "compressed-tensors" => {
            let format = qc.get("format").and_then(|m| m.as_str()).unwrap_or("");
            if format == "dense" {
                return Ok(Box::new(inner));
            }
            if format != "pack-quantized" {
                bail!("{f}: compressed-tensors format '{format}' is not supported (shrink reads pack-quantized and dense)");
            }
            let groups = qc
                .get("config_groups")
                .and_then(|g| g.as_object())
                .with_context(|| format!("{f}: quantization_config has no config_groups"))?;
            if groups.len() != 1 {
                bail!(
                    "{f}: {} config_groups; shrink reads checkpoints with one",
                    groups.len()
                );
            }
            let w = groups
                .values()
                .next()
                .and_then(|g| g.get("weights"))
                .with_context(|| format!("{f}: config group has no 'weights'"))?;
            let bits = w.get("num_bits").and_then(|b| b.as_u64()).unwrap_or(0) as u32;
            if !(1..=8).contains(&bits) {
                bail!("{f}: num_bits {bits} outside 1..=8");
            }
            if w.get("type").and_then(|t| t.as_str()) != Some("int") {
                bail!("{f}: only integer weight quantization is supported");
            }
            let group_size = match w.get("strategy").and_then(|s| s.as_str()) {
                Some("group") => Some(
                    w.get("group_size")
                        .and_then(|g| g.as_u64())
                        .filter(|g| *g > 0)
                        .with_context(|| format!("{f}: group strategy without group_size"))?
                        as usize,
                ),
                Some("channel") => None,
                s => bail!("{f}: weight strategy {s:?} is not supported (group, channel)"),
            };
            Scheme::CompressedTensors {
                bits,
                sym: w.get("symmetric").and_then(|s| s.as_bool()).unwrap_or(true),
                group_size,
            }
        }
        "gptq" => {
            let bits = qc.get("bits").and_then(|b| b.as_u64()).unwrap_or(0) as u32;
            if ![2, 4, 8].contains(&bits) {
                bail!("{f}: GPTQ bits {bits} not supported (2, 4, 8)");
            }
            let fmt = qc
                .get("checkpoint_format")
                .and_then(|c| c.as_str())
                .unwrap_or("gptq");
            let v1 = match fmt {
                "gptq" => true,
                "gptq_v2" => false,
                o => bail!("{f}: GPTQ checkpoint_format '{o}' is not supported"),
            };
            Scheme::Gptq { bits, v1 }
        }
        m => bail!(
            "{f}: quant_method '{m}' is not supported (shrink reads compressed-tensors and gptq)"
        ),
    };
    Ok(Box::new(PackedSource { inner, scheme }))
}

fn words(dt: Dtype, b: &[u8]) -> Result<Vec<u32>> {
    if dt != Dtype::I32 {
        bail!("expected I32, got {dt:?}");
    }
    Ok(b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn floats(dt: Dtype, b: &[u8]) -> Result<Vec<f32>> {
    Ok(match dt {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => bail!("scales have dtype {d:?}"),
    })
}

/// Value `i` of a row of `bits`-bit values packed densely into little-endian u32 words (a value
/// may straddle two words), as compressed-tensors' pack-quantized format stores them.
pub fn unpack_dense(row: &[u32], bits: u32, i: usize) -> u32 {
    let bit = i * bits as usize;
    let (w, off) = (bit / 32, bit % 32);
    let lo = row[w] as u64 >> off;
    let hi = if off + bits as usize > 32 {
        (row[w + 1] as u64) << (32 - off)
    } else {
        0
    };
    ((lo | hi) & ((1u64 << bits) - 1)) as u32
}

impl PackedSource {
    fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, &[u8])> {
        let (d, s, b) = self
            .inner
            .raw(name)
            .with_context(|| format!("{}: tensor '{name}' is missing", self.inner.describe()))?;
        Ok((d, s.to_vec(), b))
    }

    fn load_ct(&self, base: &str, bits: u32, sym: bool, gs: Option<usize>) -> Result<Tensor> {
        let (_, _, shp) = self.raw(&format!("{base}.weight_shape"))?;
        let dims: Vec<i64> = match shp.len() {
            16 => shp
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            8 => shp
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            n => bail!("'{base}.weight_shape' has {n} bytes"),
        };
        let (d_out, d_in) = (dims[0] as usize, dims[1] as usize);
        let (pd, ps, pb) = self.raw(&format!("{base}.weight_packed"))?;
        let nw = (d_in * bits as usize).div_ceil(32);
        if ps != [d_out, nw] {
            bail!("'{base}.weight_packed' is {ps:?}, expected [{d_out}, {nw}]");
        }
        let packed = words(pd, pb)?;
        let (sd, ss, sb) = self.raw(&format!("{base}.weight_scale"))?;
        let ng = *ss.get(1).unwrap_or(&0);
        if ss.len() != 2 || ss[0] != d_out || ng == 0 {
            bail!("'{base}.weight_scale' has shape {ss:?} for [{d_out}, {d_in}]");
        }
        let scales = floats(sd, sb)?;
        let offset = 1u32 << (bits - 1);
        let zp: Vec<i32> = if sym {
            vec![0; d_out * ng]
        } else {
            let (zd, zs, zb) = self.raw(&format!("{base}.weight_zero_point"))?;
            let zw = (d_out * bits as usize).div_ceil(32);
            if zs != [zw, ng] {
                bail!("'{base}.weight_zero_point' is {zs:?}, expected [{zw}, {ng}]");
            }
            let z = words(zd, zb)?;
            let mut out = vec![0i32; d_out * ng];
            for g in 0..ng {
                let col: Vec<u32> = (0..zw).map(|w| z[w * ng + g]).collect();
                for r in 0..d_out {
                    out[r * ng + g] = unpack_dense(&col, bits, r) as i32 - offset as i32;
                }
            }
            out
        };
        let g_idx: Vec<usize> = match self.inner.raw(&format!("{base}.weight_g_idx")) {
            Some((d, _, b)) => words(d, b)?.into_iter().map(|g| g as usize).collect(),
            None => (0..d_in).map(|c| c / gs.unwrap_or(d_in).max(1)).collect(),
        };
        if g_idx.len() != d_in || g_idx.iter().any(|&g| g >= ng) {
            bail!("'{base}': group index does not fit {ng} groups");
        }
        let mut w = vec![0f32; d_out * d_in];
        for r in 0..d_out {
            let row = &packed[r * nw..(r + 1) * nw];
            for c in 0..d_in {
                let q = unpack_dense(row, bits, c) as i32 - offset as i32;
                let g = g_idx[c];
                // compressed-tensors: (x_q - zero_point) * scale
                w[r * d_in + c] = (q - zp[r * ng + g]) as f32 * scales[r * ng + g];
            }
        }
        Ok(Tensor::new(vec![d_out, d_in], w))
    }

    fn load_gptq(&self, base: &str, bits: u32, v1: bool) -> Result<Tensor> {
        let per = 32 / bits as usize;
        let maxq = (1u32 << bits) - 1;
        let (qd, qs, qb) = self.raw(&format!("{base}.qweight"))?;
        let (zd, zs, zb) = self.raw(&format!("{base}.qzeros"))?;
        let (sd, ss, sb) = self.raw(&format!("{base}.scales"))?;
        if qs.len() != 2 || zs.len() != 2 || ss.len() != 2 {
            bail!("'{base}': GPTQ tensors must be 2-D");
        }
        let (d_in, d_out, ng) = (qs[0] * per, qs[1], ss[0]);
        if ss[1] != d_out || zs != [ng, d_out / per] || ng == 0 {
            bail!("'{base}': qweight {qs:?}, qzeros {zs:?}, scales {ss:?} do not agree");
        }
        let qw = words(qd, qb)?;
        let qz = words(zd, zb)?;
        let scales = floats(sd, sb)?;
        let g_idx: Vec<usize> = match self.inner.raw(&format!("{base}.g_idx")) {
            Some((d, _, b)) => words(d, b)?.into_iter().map(|g| g as usize).collect(),
            None => bail!("'{base}.g_idx' is missing"),
        };
        if g_idx.len() != d_in || g_idx.iter().any(|&g| g >= ng) {
            bail!("'{base}.g_idx' does not fit {ng} groups");
        }
        let mut w = vec![0f32; d_out * d_in];
        for c in 0..d_in {
            let g = g_idx[c];
            for r in 0..d_out {
                let q = (qw[(c / per) * d_out + r] >> (bits as usize * (c % per))) & maxq;
                let mut z = (qz[g * (d_out / per) + r / per] >> (bits as usize * (r % per))) & maxq;
                if v1 {
                    z += 1;
                }
                w[r * d_in + c] = scales[g * d_out + r] * (q as f32 - z as f32);
            }
        }
        Ok(Tensor::new(vec![d_out, d_in], w))
    }
}

impl TensorSource for PackedSource {
    fn load_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        if self.inner.contains(name) {
            return self.inner.load_rows(name, rows);
        }
        crate::source::gather_rows(&self.load(name)?, rows, name)
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        if self.inner.contains(name) {
            return self.inner.load(name);
        }
        let Some(base) = name.strip_suffix(".weight") else {
            return self.inner.load(name);
        };
        let r = match &self.scheme {
            Scheme::CompressedTensors {
                bits,
                sym,
                group_size,
            } if self.inner.contains(&format!("{base}.weight_packed")) => {
                self.load_ct(base, *bits, *sym, *group_size)
            }
            Scheme::Gptq { bits, v1 } if self.inner.contains(&format!("{base}.qweight")) => {
                self.load_gptq(base, *bits, *v1)
            }
            _ => return self.inner.load(name),
        };
        r.with_context(|| format!("{}: dequantizing '{name}'", self.inner.describe()))
    }
    fn contains(&self, name: &str) -> bool {
        if self.inner.contains(name) {
            return true;
        }
        match name.strip_suffix(".weight") {
            Some(b) => {
                self.inner.contains(&format!("{b}.weight_packed"))
                    || self.inner.contains(&format!("{b}.qweight"))
            }
            None => false,
        }
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
