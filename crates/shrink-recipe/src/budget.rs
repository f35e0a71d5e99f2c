//! The bits-per-weight accountant: what a quantized linear costs in the file
//! `shrink export --format compressed-tensors --scale-dtype f16` writes (pack-quantized, see
//! `shrink_formats::compressed_tensors`), counted tensor by tensor. Scales are counted at 16 bits,
//! as llm-compressor stores them (in the model's f16/bf16 dtype) and as the GPTQ export writes
//! them by default; shrink's compressed-tensors export defaults to F32 scales (bit-exact with
//! the dequantized weights), which adds 16 bits per group.
//!
//! For a linear `[d_out, d_in]` quantized to `b` bits with `G = ceil(d_in / g)` groups per row
//! (`G = 1` per output channel), the file holds:
//!
//! | tensor | shape | bits |
//! |---|---|---|
//! | `weight_packed` (I32) | `[d_out, ceil(d_in b / 32)]` | `32 d_out ceil(d_in b / 32)` |
//! | `weight_scale` (F16) | `[d_out, G]` | `s d_out G`, `s = 16` (32 with `--scale-dtype f32`) |
//! | `weight_zero_point` (I32, asymmetric only) | `[ceil(d_out b / 32), G]` | `32 G ceil(d_out b / 32)` |
//! | `weight_g_idx` (I32, `act_order = "dynamic"` only) | `[d_in]` | `32 d_in` |
//!
//! and `bpw = total bits / (d_out d_in)`. So, with the packing's rounding aside,
//! `bpw ≈ b + s/g + b/g (asym) + 32/d_out (dynamic act-order)`; e.g. W4 g64 asym f16:
//! `4 + 16/64 + 4/64 = 4.3125`; W3 g32: `3 + 0.5 + 0.09375 = 3.59375`; W4 g128: `4.15625`.
//! (The two-element `weight_shape` tensor, 128 bits per linear, and the safetensors header are
//! metadata, not counted.)
//!
//! A linear rounded onto a llama.cpp block type (`gguf_type`) costs what GGUF stores for it
//! instead: `8 d_out · row bytes` of the type its row falls back to (Q4_K: 144 bytes per 256
//! columns, 4.5 bpw; Q6_K: 6.5625; Q5_0: 5.5; ...).
//!
//! The **model's bpw** is the sum of those bits over the *compressed* linears divided by their
//! weights: linears a recipe leaves as they are (`ignore`, a stage's `targets`), the embeddings,
//! norms and `lm_head` are outside the budget (as for a global sparsity), and are reported apart.
use crate::recipe::Stage;
use anyhow::{bail, Result};
use serde::Serialize;

/// Bits of a scale as counted (f16: `shrink export --scale-dtype f16`).
pub const SCALE_BITS: u32 = 16;

/// The quantization grid of one linear, as far as storage is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Grid {
    pub bits: u32,
    /// Input columns per group; `None`: one group per output channel.
    pub group_size: Option<usize>,
    pub sym: bool,
    /// Whether the file stores `g_idx` (act-order `dynamic`).
    pub g_idx: bool,
    /// A llama.cpp block type (`gguf_type`): the linear costs its blocks in the GGUF file
    /// (the type's shape fallback applied), not the compressed-tensors packing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ggml: Option<shrink_model::gguf::GgmlType>,
}

impl Grid {
    /// The grid of a stage's settings (`None` when the stage does not quantize).
    pub fn of_stage(s: &Stage) -> Option<Grid> {
        Some(Grid {
            bits: s.bits?,
            group_size: s.group_size,
            sym: s.sym.unwrap_or(false),
            g_idx: s.act_order.as_deref() == Some("dynamic")
                || s.act_order.as_deref() == Some("true"),
            ggml: s
                .gguf_type
                .as_deref()
                .and_then(|n| crate::recipe::parse_grid_type(n).ok()),
        })
    }
}

/// The file bits of one `[d_out, d_in]` linear under `grid` with `scale_bits`-bit scales (see the
/// module doc for the formula).
pub fn linear_bits(d_out: usize, d_in: usize, grid: &Grid, scale_bits: u32) -> u64 {
    if let Some(t) = grid.ggml {
        let t = shrink_model::ggml_quant::fallback_type(t, d_in);
        if let Some(bytes) = t.bytes_for(d_in as u64) {
            return 8 * d_out as u64 * bytes;
        }
    }
    let (d_out, d_in, b) = (d_out as u64, d_in as u64, grid.bits as u64);
    let groups = match grid.group_size {
        Some(g) => d_in.div_ceil(g.max(1) as u64),
        None => 1,
    };
    let packed = 32 * d_out * (d_in * b).div_ceil(32);
    let scales = scale_bits as u64 * d_out * groups;
    let zeros = if grid.sym {
        0
    } else {
        32 * groups * (d_out * b).div_ceil(32)
    };
    let g_idx = if grid.g_idx { 32 * d_in } else { 0 };
    packed + scales + zeros + g_idx
}

/// Bits per weight of one linear.
pub fn linear_bpw(d_out: usize, d_in: usize, grid: &Grid, scale_bits: u32) -> f64 {
    linear_bits(d_out, d_in, grid, scale_bits) as f64 / (d_out * d_in).max(1) as f64
}

/// Totals over the compressed linears.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Total {
    pub bits: u64,
    pub weights: u64,
}

impl Total {
    pub fn add(&mut self, d_out: usize, d_in: usize, grid: &Grid, scale_bits: u32) {
        self.bits += linear_bits(d_out, d_in, grid, scale_bits);
        self.weights += (d_out * d_in) as u64;
    }
    pub fn bpw(&self) -> f64 {
        self.bits as f64 / self.weights.max(1) as f64
    }
}

/// Parses a size such as `120MB`, `1.5GiB`, `3000000` (bytes) into bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = match num.parse() {
        Ok(v) => v,
        Err(_) => {
            bail!("--target-size '{s}': expected a number with an optional unit (120MB, 1.5GiB)")
        }
    };
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("--target-size '{s}': unknown unit '{u}' (use B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    if !(v > 0.0 && v.is_finite()) {
        bail!("--target-size '{s}' must be positive");
    }
    Ok((v * mult).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(bits: u32, gs: Option<usize>, sym: bool, g_idx: bool) -> Grid {
        Grid {
            bits,
            group_size: gs,
            sym,
            g_idx,
            ggml: None,
        }
    }

    #[test]
    fn hand_counts() {
        // 576 x 576, W4 g64 asym: 576 rows x 72 words x 32 = 1,327,104 code bits; 9 groups:
        // 576 x 9 x 16 = 82,944 scale bits; zero points ceil(576*4/32) = 72 words x 9 groups
        // x 32 = 20,736 bits. 1,430,784 / 331,776 = 4.3125.
        let w4 = g(4, Some(64), false, false);
        assert_eq!(linear_bits(576, 576, &w4, 16), 1_327_104 + 82_944 + 20_736);
        assert_eq!(linear_bpw(576, 576, &w4, 16), 4.3125);
        // W3 g32 asym: 3 + 16/32 + 3/32.
        assert_eq!(
            linear_bpw(576, 576, &g(3, Some(32), false, false), 16),
            3.59375
        );
        // W4 g128 on d_in = 576: 5 groups (the last one 64 wide), not 4.5.
        let b = linear_bits(576, 576, &g(4, Some(128), false, false), 16);
        assert_eq!(b, 576 * 72 * 32 + 576 * 5 * 16 + 72 * 5 * 32);
        // Symmetric: no zero points; f32 scales double the scale part.
        assert_eq!(
            linear_bits(576, 576, &g(4, Some(64), true, false), 32),
            1_327_104 + 2 * 82_944
        );
        // Dynamic act-order stores g_idx: 32 bits per input column.
        assert_eq!(
            linear_bits(576, 576, &g(4, Some(64), false, true), 16),
            1_430_784 + 32 * 576
        );
        // Per channel, 3 bits, d_in = 10: a row is 30 bits, one word; one scale and zero each.
        // Zero points of 7 rows x 3 bits = 21 bits: one word.
        assert_eq!(
            linear_bits(7, 10, &g(3, None, false, false), 16),
            7 * 32 + 7 * 16 + 32
        );
        // A llama.cpp type costs its blocks: Q4_K on 1536 columns is 6 super-blocks of 144
        // bytes a row (4.5 bpw); on 576 columns it falls back to Q5_0, 18 blocks of 22 bytes
        // (5.5 bpw).
        let q4k = Grid {
            ggml: Some(shrink_model::gguf::GgmlType::Q4K),
            ..g(4, Some(32), false, false)
        };
        assert_eq!(linear_bits(576, 1536, &q4k, 16), 8 * 576 * 6 * 144);
        assert_eq!(linear_bpw(576, 1536, &q4k, 16), 4.5);
        assert_eq!(linear_bpw(576, 576, &q4k, 16), 5.5);
    }

    #[test]
    fn model_total_and_stage_grid() {
        let s = Stage {
            bits: Some(4),
            group_size: Some(64),
            act_order: Some("dynamic".into()),
            ..Stage::default()
        };
        let grid = Grid::of_stage(&s).unwrap();
        assert!(grid.g_idx && !grid.sym);
        assert!(Grid::of_stage(&Stage::default()).is_none());
        let mut t = Total::default();
        t.add(64, 64, &g(2, Some(64), true, false), 16);
        t.add(64, 64, &g(8, Some(64), true, false), 16);
        assert_eq!(t.weights, 2 * 4096);
        assert_eq!(t.bpw(), (2.0 + 0.25 + 8.0 + 0.25) / 2.0);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("120MB").unwrap(), 120_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 1_610_612_736);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MB").is_err());
        assert!(parse_size("0MB").is_err());
    }
}
