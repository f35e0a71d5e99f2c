//! The uniform integer quantization grid shared by RTN and GPTQ.
//!
//! This follows the `Quantizer` of the GPTQ reference code (IST-DASLab/gptq, `quant.py`):
//! min-max parameters per output row (or per group of input columns of that row), an optional
//! MSE-style clipping search (norm 2.4, grid 100, max shrink 0.8), and
//! `q = clamp(round(x / scale) + zero, 0, maxq)`, `x' = scale * (q - zero)`.
//!
//! All arithmetic is in f32 with round-half-to-even (what `torch.round` does), so codes match the
//! Python reference bit for bit where the inputs are the same.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use shrink_model::ggml_quant::{gptq_target, grid_shape, GRID_TYPES, LATTICE_TYPES};
use shrink_model::gguf::GgmlType;

/// The quantization grid: bit width, grouping, symmetric or asymmetric, optional clipping search.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuantConfig {
    /// Bits per weight, 2..=8.
    pub bits: u32,
    /// Number of consecutive input columns sharing one (scale, zero); `None` = one pair per output
    /// channel (row).
    pub group_size: Option<usize>,
    /// Symmetric grid: zero point fixed at `(maxq + 1) / 2`.
    pub sym: bool,
    /// Search shrunk ranges for the lowest `sum |q(x) - x|^2.4` (GPTQ's `mse` option).
    pub mse: bool,
    /// Round onto this llama.cpp block type's own grid instead of integer groups (scales fitted
    /// per block as llama.cpp fits them, see [`crate::grid::GgmlGrid`]). `bits`, `group_size` and
    /// `sym` then only describe it ([`QuantConfig::for_ggml`]); rows whose length the type's
    /// blocks do not divide use llama-quantize's fallback type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ggml: Option<GgmlType>,
    /// The number format of the codes: integer groups (the default, and what a configuration
    /// without the key means) or a float format ([`crate::grid_fp::FpGrid`]), whose `bits`,
    /// `group_size` and `sym` it fixes ([`QuantConfig::for_format`]).
    #[serde(default, skip_serializing_if = "NumberFormat::is_int")]
    pub format: NumberFormat,
}

pub use shrink_model::minifloat::NumberFormat;

/// Norm of the clipping search error (GPTQ reference `norm`).
pub const MSE_NORM: f32 = 2.4;
/// Number of grid steps of the clipping search (GPTQ reference `grid`).
pub const MSE_GRID: usize = 100;
/// Largest relative shrink of the range tried by the clipping search (GPTQ reference `maxshrink`).
pub const MSE_MAXSHRINK: f64 = 0.8;

/// Why GPTQ cannot round onto `t`: it is none of the grids shrink handles.
fn no_grid(t: GgmlType) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot round onto the grid of {} (shrink rounds onto {}, and the lattices {})",
        t.name(),
        GRID_TYPES.map(|t| t.name()).join(", "),
        LATTICE_TYPES.map(|t| t.name()).join(", ")
    )
}

impl QuantConfig {
    /// Checks the configuration, with a message that names the bad field.
    pub fn validate(&self) -> Result<()> {
        if !(2..=8).contains(&self.bits) {
            bail!("bits must be between 2 and 8, got {}", self.bits);
        }
        if self.group_size == Some(0) {
            bail!("group_size must be at least 1 (or absent for per-channel), got 0");
        }
        if let Some((bits, group)) = self.format.shape() {
            let f = self.format.name();
            if self.bits != bits {
                bail!(
                    "{f} has {bits}-bit codes, but bits = {} was given",
                    self.bits
                );
            }
            if self.group_size != group {
                let want = match group {
                    Some(g) => format!("groups of {g} columns"),
                    None => "no group size (its scales are per tensor, channel or tile)".into(),
                };
                let got = match self.group_size {
                    Some(g) => format!("group_size = {g}"),
                    None => "no group size".into(),
                };
                bail!("{f} defines {want}, but {got} was given");
            }
            if !self.sym {
                bail!("{f} is symmetric (no zero point); sym must be true");
            }
            if self.mse {
                bail!("mse (the clipping search of integer groups) does not apply to {f}: its scales are the group maxima");
            }
            if self.ggml.is_some() {
                bail!("{f} and a llama.cpp grid (gguf_type) cannot be combined");
            }
        }
        if let Some(t) = self.ggml {
            if !gptq_target(t) {
                return Err(no_grid(t));
            }
        }
        Ok(())
    }

    /// The grid of a llama.cpp block type: `bits` its code width, `group_size` its sub-block,
    /// `sym` when it has no offset (Q4_0, Q5_0, Q8_0, Q6_K, TQ1_0, TQ2_0).
    /// A lattice type (IQ3_XXS, IQ3_S: 3 bits; IQ2_XXS, IQ2_XS, IQ2_S, and IQ1_S, IQ1_M, whose
    /// 1.56/1.75 bits per weight are below `bits`' floor of 2: 2 bits) has its 256-weight
    /// block as the group and is symmetric: its codes are points of 8 weights
    /// ([`crate::grid::LatticeGrid`]).
    pub fn for_ggml(t: GgmlType) -> Result<QuantConfig> {
        if LATTICE_TYPES.contains(&t) {
            let three = matches!(t, GgmlType::IQ3_XXS | GgmlType::IQ3_S);
            return Ok(QuantConfig {
                bits: if three { 3 } else { 2 },
                group_size: Some(t.block_size()),
                sym: true,
                mse: false,
                ggml: Some(t),
                format: NumberFormat::Int,
            });
        }
        let Some((sub, max)) = grid_shape(t) else {
            return Err(no_grid(t));
        };
        Ok(QuantConfig {
            bits: 32 - max.leading_zeros(),
            group_size: Some(sub),
            sym: matches!(
                t,
                GgmlType::Q4_0
                    | GgmlType::Q5_0
                    | GgmlType::Q8_0
                    | GgmlType::Q6K
                    | GgmlType::TQ1_0
                    | GgmlType::TQ2_0
            ),
            mse: false,
            ggml: Some(t),
            format: NumberFormat::Int,
        })
    }

    /// The grid of a float format (its `bits`, `group_size`; symmetric).
    pub fn for_format(format: NumberFormat) -> Result<QuantConfig> {
        let Some((bits, group_size)) = format.shape() else {
            bail!("the integer format has no fixed grid: give bits and group_size");
        };
        Ok(QuantConfig {
            bits,
            group_size,
            sym: true,
            mse: false,
            ggml: None,
            format,
        })
    }

    /// Largest code, `2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// Width of a group for a row of `d_in` columns (`d_in` when per-channel; never 0).
    pub fn group_len(&self, d_in: usize) -> usize {
        match self.group_size {
            Some(g) => g.max(1),
            None => d_in.max(1),
        }
    }

    /// Number of groups per row: `ceil(d_in / g)`, the last group being shorter when `g` does
    /// not divide `d_in` (1 when per-channel).
    pub fn n_groups(&self, d_in: usize) -> usize {
        d_in.div_ceil(self.group_len(d_in)).max(1)
    }

    /// A short label such as `w4 g128 asym` or `w3 perchannel sym mse`.
    pub fn label(&self) -> String {
        if let Some(t) = self.ggml {
            return format!("{} grid", t.name());
        }
        if !self.format.is_int() {
            return self.format.name().to_string();
        }
        let g = match self.group_size {
            Some(g) => format!("g{g}"),
            None => "perchannel".to_string(),
        };
        let s = if self.sym { "sym" } else { "asym" };
        let m = if self.mse { " mse" } else { "" };
        format!("w{} {g} {s}{m}", self.bits)
    }
}

/// Round half to even, like `torch.round`.
#[inline]
pub fn round_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// Min-max quantization parameters `(scale, zero)` of one row segment (GPTQ `Quantizer.find_params`).
///
/// Asymmetric: `xmin = min(min x, 0)`, `xmax = max(max x, 0)` so that 0 is always on the grid;
/// `scale = (xmax - xmin) / maxq`, `zero = round(-xmin / scale)`.
/// Symmetric: `xmax = max(|xmin|, xmax)`, `xmin = -xmax` when `xmin < 0` (as the reference does;
/// a segment with no negative value keeps `xmin = 0`), `zero = (maxq + 1) / 2`.
/// An all-zero segment uses the range `[-1, 1]`.
///
/// With `cfg.mse`, ranges `p * [xmin, xmax]` for `p = 1, 0.99, ..., 0.21` are tried and the one with the
/// lowest `sum |q(x) - x|^2.4` is kept (ties keep the wider range).
pub fn find_params(x: &[f32], cfg: &QuantConfig) -> (f32, u32) {
    let maxq_u = cfg.maxq();
    let maxq = maxq_u as f32;
    let mut xmin = x.iter().fold(0.0f32, |a, &b| a.min(b));
    let mut xmax = x.iter().fold(0.0f32, |a, &b| a.max(b));
    if cfg.sym {
        xmax = xmax.max(xmin.abs());
        if xmin < 0.0 {
            xmin = -xmax;
        }
    }
    if xmin == 0.0 && xmax == 0.0 {
        xmin = -1.0;
        xmax = 1.0;
    }
    let sym_zero = 1u32 << (cfg.bits - 1); // (maxq + 1) / 2
    let params = |lo: f32, hi: f32| -> (f32, u32) {
        let scale = (hi - lo) / maxq;
        if !(scale > 0.0 && scale.is_finite()) {
            // Degenerate range (e.g. subnormal weights): fall back to the [-1, 1] grid, on which
            // such values quantize to the zero point.
            let scale = 2.0 / maxq;
            let zero = if cfg.sym {
                sym_zero
            } else {
                round_even(1.0 / scale) as u32
            };
            return (scale, zero);
        }
        let zero = if cfg.sym {
            sym_zero
        } else {
            (round_even(-lo / scale).clamp(0.0, maxq)) as u32
        };
        (scale, zero)
    };
    let (mut scale, mut zero) = params(xmin, xmax);
    if cfg.mse {
        let mut best = f64::INFINITY;
        let steps = (MSE_MAXSHRINK * MSE_GRID as f64) as usize;
        for i in 0..steps {
            let p = (1.0 - i as f64 / MSE_GRID as f64) as f32;
            let (s1, z1) = params(p * xmin, p * xmax);
            // sum |q(x) - x|^2.4 (f32 terms, f64 sum), abandoned once it cannot beat `best`.
            let mut err = 0.0f64;
            let mut buf = [0.0f32; 64];
            for c in x.chunks(64) {
                for (b, &v) in buf.iter_mut().zip(c) {
                    *b = (dequantize_value(quantize_value(v, s1, z1, maxq_u), s1, z1) - v).abs();
                }
                let part: f32 = buf[..c.len()].iter().map(|e| e.powf(MSE_NORM)).sum();
                err += part as f64;
                if err >= best {
                    break;
                }
            }
            if err < best {
                best = err;
                scale = s1;
                zero = z1;
            }
        }
    }
    (scale, zero)
}

/// Code of one value: `clamp(round(x / scale) + zero, 0, maxq)` (round half to even).
#[inline]
pub fn quantize_value(x: f32, scale: f32, zero: u32, maxq: u32) -> u32 {
    let q = round_even(x / scale) + zero as f32;
    // NaN falls through `clamp` and converts to 0.
    q.clamp(0.0, maxq as f32) as u32
}

/// Value of one code: `scale * (q - zero)`.
#[inline]
pub fn dequantize_value(q: u32, scale: f32, zero: u32) -> f32 {
    scale * (q as f32 - zero as f32)
}

/// Quantized form of one linear weight: what the export formats pack.
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    pub d_out: usize,
    pub d_in: usize,
    pub config: QuantConfig,
    /// `[d_out, d_in]` row-major codes, each `<= maxq`.
    pub codes: Vec<u8>,
    /// `[d_out, n_groups]` scales.
    pub scales: Vec<f32>,
    /// `[d_out, n_groups]` zero points (codes).
    pub zeros: Vec<u32>,
    /// `[d_in]`: the group of each input column (`i / group_size` unless GPTQ's dynamic act-order
    /// formed the groups in permuted order).
    pub g_idx: Vec<u32>,
    /// On a llama.cpp grid: the type written and its blocks (`[d_out, d_in / block size]`
    /// blocks, row-major), which hold these codes; the affines are then `scales`' sub-block
    /// scales with offsets only the blocks hold, so [`QuantizedWeight::dequantize`] reads the
    /// blocks.
    pub ggml: Option<(GgmlType, Vec<u8>)>,
}

impl QuantizedWeight {
    /// Number of (scale, zero) pairs per row.
    pub fn n_groups(&self) -> usize {
        self.scales
            .len()
            .checked_div(self.d_out)
            .unwrap_or_else(|| self.config.n_groups(self.d_in))
    }

    /// Whether the codes are integer groups (`scale * (q - zero)`), which every format packs, rather
    /// than the blocks of a llama.cpp type, which only GGUF holds.
    pub fn is_integer(&self) -> bool {
        self.ggml.is_none() && self.config.format.is_int()
    }

    /// On a float format: the value of every code, `level(code) * scale / divisor` with the
    /// divisor's f32 bits in `zeros` (NVFP4's global scale; 1 otherwise), as
    /// compressed-tensors' `_dequantize` computes it (`scale / global_scale`, then times the
    /// level, in f32).
    fn dequantize_float(&self, levels: &[f32]) -> Vec<f32> {
        let ng = self.n_groups();
        let mut out = vec![0.0f32; self.d_out * self.d_in];
        for r in 0..self.d_out {
            for j in 0..self.d_in {
                let g = r * ng + self.g_idx[j] as usize;
                let a = self.scales[g] / f32::from_bits(self.zeros[g]);
                out[r * self.d_in + j] = a * levels[self.codes[r * self.d_in + j] as usize];
            }
        }
        out
    }

    /// Whether `g_idx` is the natural `i / group_size` (what formats without `g_idx` assume).
    pub fn g_idx_is_trivial(&self) -> bool {
        let g = self.config.group_len(self.d_in);
        self.g_idx
            .iter()
            .enumerate()
            .all(|(i, &k)| k as usize == i / g)
    }

    /// The f32 weight `[d_out, d_in]` these codes stand for: `scale[r, g_idx[j]] * (q - zero)`.
    pub fn dequantize(&self) -> Vec<f32> {
        if let Some((t, blocks)) = &self.ggml {
            let mut out = vec![0.0f32; self.d_out * self.d_in];
            shrink_model::quants::dequantize(*t, blocks, &mut out)
                .expect("blocks of the weight's own shape");
            return out;
        }
        if let Some(levels) = self.config.format.levels() {
            return self.dequantize_float(levels);
        }
        let ng = self.n_groups();
        let mut out = vec![0.0f32; self.d_out * self.d_in];
        for r in 0..self.d_out {
            let codes = &self.codes[r * self.d_in..(r + 1) * self.d_in];
            let scales = &self.scales[r * ng..(r + 1) * ng];
            let zeros = &self.zeros[r * ng..(r + 1) * ng];
            let dst = &mut out[r * self.d_in..(r + 1) * self.d_in];
            for j in 0..self.d_in {
                let g = self.g_idx[j] as usize;
                dst[j] = dequantize_value(codes[j] as u32, scales[g], zeros[g]);
            }
        }
        out
    }
}
