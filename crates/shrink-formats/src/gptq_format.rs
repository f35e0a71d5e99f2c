//! GPTQ checkpoints as AutoGPTQ / GPTQModel / exllama / vLLM read them.
//!
//! Packing follows AutoGPTQ's `QuantLinear.pack` (`auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py`,
//! the layout GPTQModel calls `checkpoint_format: "gptq"`), for 2, 4 and 8 bits:
//!
//! - `{base}.qweight` I32 `[d_in*b/32, d_out]`: input rows `32/b*k .. 32/b*(k+1)` of the transposed
//!   code matrix are OR-ed into word row `k`, row `k*32/b + j` at bit `b*j`;
//! - `{base}.qzeros` I32 `[n_groups, d_out*b/32]`: zero points packed the same way along the output
//!   dimension. In the "gptq" (v1) format the stored value is `zero - 1` and readers add 1 back
//!   (so a zero point of 0 cannot be stored; "gptq_v2" stores `zero` itself);
//! - `{base}.scales` F16 (or F32) `[n_groups, d_out]`;
//! - `{base}.g_idx` I32 `[d_in]`: group of each input column (act-order keeps the original column
//!   order and records the permuted grouping here).
//!
//! Dequantization: `w[r, c] = scales[g_idx[c], r] * (code[c, r] - zero[g_idx[c], r])`.
use crate::compressed_tensors::{
    dense_items, i32_bytes, quantized_linears, u32_bytes, write_config_and_tokenizer, write_items,
    Item, ScaleDType,
};
use crate::hf::OutputDir;
use crate::quantized::{QLinear, QuantizedDir};
use crate::safetensors_writer::{DType, Entry};
use anyhow::{bail, Result};
use serde_json::json;
use shrink_model::source::SafetensorsSource;
use shrink_model::ModelConfig;
use std::path::{Path, PathBuf};

/// `checkpoint_format` of the written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptqFormat {
    /// zero points stored minus one (AutoGPTQ, vLLM, exllama, transformers).
    V1,
    /// zero points stored as they are (GPTQModel's internal format).
    V2,
}

impl GptqFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gptq" | "v1" => Ok(GptqFormat::V1),
            "gptq_v2" | "v2" => Ok(GptqFormat::V2),
            _ => bail!("unknown GPTQ checkpoint format '{s}' (use gptq or gptq_v2)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GptqFormat::V1 => "gptq",
            GptqFormat::V2 => "gptq_v2",
        }
    }
}

#[derive(Clone, Debug)]
pub struct GptqOptions {
    pub scale_dtype: ScaleDType,
    pub format: GptqFormat,
    pub force: bool,
}

/// Packs the columns of a `[rows, cols]` matrix of `bits`-bit values along `rows`:
/// word `[k, c]` holds rows `k*per .. (k+1)*per` of column `c` (`per = 32 / bits`).
fn pack_along_rows(vals: &[u32], rows: usize, cols: usize, bits: u32) -> Vec<u32> {
    let per = 32 / bits as usize;
    let mut out = vec![0u32; rows / per * cols];
    for r in 0..rows {
        let (k, j) = (r / per, r % per);
        for c in 0..cols {
            out[k * cols + c] |= vals[r * cols + c] << (bits as usize * j);
        }
    }
    out
}

/// The GPTQ tensors of one linear.
pub fn gptq_tensors(
    q: &QLinear,
    bits: u32,
    fmt: GptqFormat,
    sd: ScaleDType,
) -> Result<Vec<(Entry, Vec<u8>)>> {
    if ![2, 4, 8].contains(&bits) {
        bail!("GPTQ export supports 2, 4 and 8 bits (3-bit packing crosses words and is not written), got {bits}");
    }
    let per = 32 / bits as usize;
    if q.d_in % per != 0 || q.d_out % per != 0 {
        bail!(
            "{}: [{}, {}] is not divisible by {per} (GPTQ packs {per} values per int32)",
            q.name,
            q.d_out,
            q.d_in
        );
    }
    let base = q.name.trim_end_matches(".weight");
    let ng = q.n_groups();
    // codes transposed to [d_in, d_out]
    let mut t = vec![0u32; q.d_in * q.d_out];
    for r in 0..q.d_out {
        for c in 0..q.d_in {
            t[c * q.d_out + r] = q.codes[r * q.d_in + c] as u32;
        }
    }
    let qweight = pack_along_rows(&t, q.d_in, q.d_out, bits);
    // zeros transposed to [ng, d_out], then packed along d_out (columns of the transposed matrix)
    let mask = (1u32 << bits) - 1;
    let mut zt = vec![0u32; ng * q.d_out];
    for r in 0..q.d_out {
        for g in 0..ng {
            let z = q.zeros[r * ng + g];
            let stored = match fmt {
                GptqFormat::V1 => {
                    if z == 0 {
                        bail!(
                            "{}: row {r} group {g} has zero point 0, which the v1 'gptq' format cannot store (it stores zero - 1); use --checkpoint-format gptq_v2",
                            q.name
                        );
                    }
                    z - 1
                }
                GptqFormat::V2 => z,
            };
            zt[g * q.d_out + r] = stored as u32 & mask;
        }
    }
    let mut qzeros = vec![0u32; ng * q.d_out / per];
    for g in 0..ng {
        for r in 0..q.d_out {
            qzeros[g * (q.d_out / per) + r / per] |=
                zt[g * q.d_out + r] << (bits as usize * (r % per));
        }
    }
    let mut scales_t = vec![0f32; ng * q.d_out];
    for r in 0..q.d_out {
        for g in 0..ng {
            scales_t[g * q.d_out + r] = q.scales[r * ng + g];
        }
    }
    let e = |s: &str, dtype, shape: Vec<usize>| Entry {
        name: format!("{base}.{s}"),
        dtype,
        shape,
    };
    Ok(vec![
        (
            e("qweight", DType::I32, vec![q.d_in / per, q.d_out]),
            u32_bytes(&qweight),
        ),
        (
            e("qzeros", DType::I32, vec![ng, q.d_out / per]),
            u32_bytes(&qzeros),
        ),
        (
            e("scales", sd.dtype(), vec![ng, q.d_out]),
            sd.bytes(&scales_t),
        ),
        (e("g_idx", DType::I32, vec![q.d_in]), i32_bytes(&q.g_idx)),
    ])
}

/// Writes a GPTQ checkpoint directory from a `shrink compress` output directory.
pub fn write_gptq(src_dir: &Path, out: &Path, opts: &GptqOptions) -> Result<PathBuf> {
    let q = QuantizedDir::open(src_dir)?;
    let cfg = ModelConfig::from_hf_file(&src_dir.join("config.json"))?;
    let s = q.settings.clone();
    if !q.uniform() {
        bail!(
            "{}: the linears have different quantization settings (a per-module recipe); a GPTQ \
             checkpoint holds one bit width and group size: export compressed-tensors or gguf",
            src_dir.display()
        );
    }
    let lins = quantized_linears(&q, &cfg)?;
    // every linear the family compresses (the MoE router stays dense, as GPTQModel leaves it)
    let want = (0..cfg.num_layers)
        .map(|i| {
            shrink_model::arch::layer_layout(&cfg, i)
                .linears
                .iter()
                .filter(|l| l.compress)
                .count()
        })
        .sum::<usize>();
    if lins.len() != want {
        bail!(
            "{}: only {} of {} linears are quantized; GPTQ checkpoints quantize every linear of every layer",
            src_dir.display(),
            lins.len(),
            want
        );
    }
    let dense = std::sync::Arc::new(SafetensorsSource::open(src_dir)?);
    let dir = OutputDir::create(out, opts.force)?;
    let qnames: std::collections::HashSet<String> =
        lins.iter().map(|(b, _)| format!("{b}.weight")).collect();
    let mut items: Vec<Item> = dense_items(&cfg, &dense, &|n| qnames.contains(n))?;
    for (base, shape) in &lins {
        let ql = q.load(base, *shape)?;
        for (entry, bytes) in gptq_tensors(&ql, s.bits, opts.format, opts.scale_dtype)? {
            items.push((entry, Box::new(move || Ok(bytes))));
        }
    }
    write_items(&dir.join("model.safetensors"), items, "export gptq")?;
    let qc = json!({
        "quant_method": "gptq",
        "bits": s.bits,
        "group_size": s.group_size.map(|g| g as i64).unwrap_or(-1),
        "desc_act": s.act_order == "dynamic",
        "sym": s.sym,
        "static_groups": false,
        "true_sequential": true,
        "damp_percent": 0.01,
        "checkpoint_format": opts.format.name(),
        "pack_dtype": "int32",
        "lm_head": false,
        "meta": {"quantizer": [format!("shrink:{}", env!("CARGO_PKG_VERSION"))], "method": s.method},
    });
    write_config_and_tokenizer(src_dir, &dir, qc)?;
    dir.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qlin(d_out: usize, d_in: usize, g: usize, maxq: u32) -> QLinear {
        let ng = d_in.div_ceil(g);
        QLinear {
            name: "model.layers.0.mlp.up_proj.weight".into(),
            d_out,
            d_in,
            codes: (0..d_out * d_in)
                .map(|i| ((i * 7 + i / 5) as u32 % (maxq + 1)) as u8)
                .collect(),
            scales: (0..d_out * ng).map(|i| 0.01 + i as f32 * 1e-3).collect(),
            zeros: (0..d_out * ng)
                .map(|i| 1 + (i as i32 % maxq as i32))
                .collect(),
            g_idx: (0..d_in).map(|c| (c / g) as i32).collect(),
        }
    }

    /// Unpacks with the reference rules (shifts and masks as AutoGPTQ's dequantization does).
    #[test]
    fn unpacking_gives_back_codes_and_zeros() {
        for bits in [2u32, 4, 8] {
            let maxq = (1 << bits) - 1;
            let q = qlin(32, 64, 16, maxq);
            let t = gptq_tensors(&q, bits, GptqFormat::V1, ScaleDType::F32).unwrap();
            let words = |b: &[u8]| -> Vec<u32> {
                b.chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            let qw = words(&t[0].1);
            let qz = words(&t[1].1);
            let per = 32 / bits as usize;
            for r in 0..q.d_out {
                for c in 0..q.d_in {
                    let code = (qw[(c / per) * q.d_out + r] >> (bits as usize * (c % per))) & maxq;
                    assert_eq!(code, q.codes[r * q.d_in + c] as u32);
                    let g = q.g_idx[c] as usize;
                    let z = ((qz[g * (q.d_out / per) + r / per] >> (bits as usize * (r % per)))
                        & maxq)
                        + 1;
                    assert_eq!(z as i32, q.zeros[r * 4 + g]);
                }
            }
        }
    }

    #[test]
    fn v1_refuses_a_zero_point_of_zero_and_v2_keeps_it() {
        let mut q = qlin(8, 8, 8, 15);
        q.zeros[3] = 0;
        assert!(gptq_tensors(&q, 4, GptqFormat::V1, ScaleDType::F16).is_err());
        let t = gptq_tensors(&q, 4, GptqFormat::V2, ScaleDType::F16).unwrap();
        let z = u32::from_le_bytes(t[1].1[0..4].try_into().unwrap());
        assert_eq!((z >> 12) & 15, 0);
        assert!(gptq_tensors(&qlin(8, 8, 8, 7), 3, GptqFormat::V1, ScaleDType::F16).is_err());
    }
}
