//! Float grids: FP8 E4M3 weights (one scale per tensor, per output channel or per 128×128 tile),
//! NVFP4 (E2M1 values, an E4M3 scale per 16 weights, an f32 global scale per tensor) and MXFP4
//! (E2M1 values, an E8M0 power-of-two scale per 32 weights), behind [`Grid`].
//!
//! Scales are computed exactly as compressed-tensors computes them for llm-compressor's preset
//! schemes (`compressed_tensors/quantization/quant_scheme.py` FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4,
//! MXFP4; checked against vllm-project/compressed-tensors at ac8e2ba), in f32:
//!
//! - `calculate_qparams` (`quantization/utils/helpers.py`), symmetric: `amax = max(|min(x, 0)|,
//!   max(x, 0))` of the group (row, tile or tensor); FP8: `scale = amax / 448` (its `bit_range / 2`
//!   with range [-448, 448]); FP4: `scale = amax / 6`, then `global_scale * scale` rounded to E4M3
//!   (clamped to ±448) for NVFP4; a scale of 0 becomes the scale dtype's `eps` (0.125 for E4M3
//!   scales, `f32::EPSILON` for f32 ones).
//! - `generate_gparam`: NVFP4's `global_scale = 448 * 6 / max(amax(W), f32::MIN_POSITIVE)` (1 if
//!   that is not finite).
//! - `generate_mx_scales` (`quantization/utils/mxfp_utils.py`): MXFP4's exponent
//!   `e = 127 + floor(log2(round_to_power_2(amax))) - 2`, clamped to 0..=255, scale `2^(e - 127)`,
//!   where `round_to_power_2` adds 2^21 to the f32 bit pattern and keeps sign and exponent (so
//!   amax >= 1.75 * 2^k rounds up to 2^(k+1)). The OCP MX spec v1.0 §6.3 uses
//!   `floor(log2(amax)) - 2` without that rounding (and clips 6..8 × scale to 6); llama.cpp's
//!   MXFP4 is the spec's ([`crate::grid::GgmlGrid`] with MXFP4). This grid follows
//!   compressed-tensors, whose `mxfp4-pack-quantized` files it exports to.
//! - `_quantize` / `_dequantize` (`quantization/lifecycle/forward_helpers.py`): the code of `x` is
//!   `round(clamp(x / scale, -max, max))` onto the element format, to nearest even
//!   ([`shrink_model::minifloat`]); its value `code * scale`, NVFP4's scale being
//!   `weight_scale / global_scale` (f32). Every value [`Affine::value`] gives is the file's own
//!   dequantization bit for bit.
//!
//! Parameters that span rows (a tensor's global scale, a 128×128 tile's scale) come from the
//! original weight when the grid is made ([`FpGrid::new`]); the per-row FP8 formats are static
//! (fitted up front from the original rows, as llm-compressor's GPTQ does for channel and block
//! strategies), and the NVFP4 / MXFP4 groups are fitted when the sweep reaches them, from the
//! weights as updated so far, with the global scale fixed.
use crate::grid::{Affine, Grid};
use crate::quant::{NumberFormat, QuantConfig, QuantizedWeight};
use anyhow::{bail, Result};
use shrink_model::minifloat::{e4m3_decode, e4m3_encode, E2M1_LEVELS, E4M3_LEVELS};

/// Side of FP8_BLOCK's square tiles (`block_structure = [128, 128]`).
pub const FP8_TILE: usize = 128;
pub use shrink_model::minifloat::E4M3_SCALE_EPS;
pub use shrink_model::minifloat::{MXFP4_GROUP, NVFP4_GROUP};

pub use shrink_model::minifloat::{
    amax, fp8_scale, mxfp4_exponent, nvfp4_global_scale, nvfp4_group_scale,
};

/// A float grid for the rows of one `[d_out, d_in]` weight (see the module documentation).
pub struct FpGrid {
    cfg: QuantConfig,
    fmt: NumberFormat,
    d_in: usize,
    /// FP8 per tensor: the tensor's scale; NVFP4: the global scale; otherwise 1.
    tensor_scale: f32,
    /// FP8_BLOCK: the scale of every tile, `[ceil(d_out/128), ceil(d_in/128)]`.
    tiles: Vec<f32>,
}

impl FpGrid {
    /// The grid of `cfg` (a float format) for the weight `w` (`[d_out, d_in]`, the original
    /// values, which give the parameters spanning rows).
    pub fn new(cfg: &QuantConfig, w: &[f32], d_out: usize, d_in: usize) -> Result<FpGrid> {
        cfg.validate()?;
        if w.len() != d_out * d_in {
            bail!(
                "{}: the weight has {} values, not {d_out} x {d_in}",
                cfg.label(),
                w.len()
            );
        }
        if let Some(v) = w.iter().find(|v| !v.is_finite()) {
            bail!("{}: the weight holds a non-finite value {v}", cfg.label());
        }
        let fmt = cfg.format;
        let mut tensor_scale = 1.0;
        let mut tiles = Vec::new();
        match fmt {
            NumberFormat::Fp8Tensor => tensor_scale = fp8_scale(amax(w)),
            NumberFormat::Nvfp4 => tensor_scale = nvfp4_global_scale(amax(w)),
            NumberFormat::Fp8Block => {
                let (tr, tc) = (d_out.div_ceil(FP8_TILE), d_in.div_ceil(FP8_TILE));
                tiles = vec![0.0f32; tr * tc];
                for (i, t) in tiles.iter_mut().enumerate() {
                    let (r0, c0) = ((i / tc) * FP8_TILE, (i % tc) * FP8_TILE);
                    let (r1, c1) = ((r0 + FP8_TILE).min(d_out), (c0 + FP8_TILE).min(d_in));
                    let m = (r0..r1)
                        .map(|r| amax(&w[r * d_in + c0..r * d_in + c1]))
                        .fold(0.0f32, f32::max);
                    *t = fp8_scale(m);
                }
            }
            NumberFormat::Fp8Channel | NumberFormat::Mxfp4 => {}
            NumberFormat::Int => bail!("{}: not a float format", cfg.label()),
        }
        Ok(FpGrid {
            cfg: cfg.clone(),
            fmt,
            d_in,
            tensor_scale,
            tiles,
        })
    }

    fn table(&self) -> &'static [f32] {
        match self.fmt {
            NumberFormat::Nvfp4 | NumberFormat::Mxfp4 => &E2M1_LEVELS,
            _ => &E4M3_LEVELS,
        }
    }

    fn affine(&self, scale: f32) -> Affine {
        Affine {
            a: scale,
            b: -0.0,
            zero: 0,
            table: Some(self.table()),
        }
    }

    fn set_codes(&self, x: &[f32], affines: &[Affine], codes: &mut [u8]) {
        let sub = self.sub_len();
        for (j, (c, &v)) in codes.iter_mut().zip(x).enumerate() {
            *c = affines[j / sub].code(v, self.max_code()).unwrap_or(0) as u8;
        }
    }
}

impl Grid for FpGrid {
    fn label(&self) -> String {
        self.cfg.label()
    }
    fn block_len(&self) -> usize {
        match self.fmt {
            NumberFormat::Nvfp4 => NVFP4_GROUP,
            NumberFormat::Mxfp4 => MXFP4_GROUP,
            _ => self.d_in.max(1),
        }
    }
    fn sub_len(&self) -> usize {
        match self.fmt {
            NumberFormat::Fp8Block => FP8_TILE,
            _ => self.block_len(),
        }
    }
    fn max_code(&self) -> u32 {
        self.table().len() as u32 - 1
    }
    fn stored_bytes(&self) -> usize {
        // NVFP4 keeps each group's E4M3 scale byte (its f32 value / global is not invertible)
        usize::from(self.fmt == NumberFormat::Nvfp4)
    }
    fn fit(
        &self,
        x: &[f32],
        _importance: Option<&[f32]>,
        _sigma2: f32,
        affines: &mut [Affine],
        codes: &mut [u8],
        stored: &mut [u8],
    ) {
        match self.fmt {
            NumberFormat::Fp8Tensor => affines[0] = self.affine(self.tensor_scale),
            NumberFormat::Fp8Channel => affines[0] = self.affine(fp8_scale(amax(x))),
            NumberFormat::Nvfp4 => {
                let s = nvfp4_group_scale(amax(x), self.tensor_scale);
                stored[0] = e4m3_encode(s);
                affines[0] = self.affine(s / self.tensor_scale);
            }
            NumberFormat::Mxfp4 => {
                let e = mxfp4_exponent(amax(x));
                affines[0] = self.affine(shrink_model::minifloat::e8m0_decode(e));
            }
            // rows of a tile share its scale: only `fit_row` knows the row
            NumberFormat::Fp8Block | NumberFormat::Int => {
                unreachable!("{} is fitted by row", self.label())
            }
        }
        self.set_codes(x, affines, codes);
    }
    fn fit_row(
        &self,
        row: usize,
        x: &[f32],
        importance: Option<&[f32]>,
        sigma2: f32,
        affines: &mut [Affine],
        codes: &mut [u8],
        stored: &mut [u8],
    ) {
        if self.fmt != NumberFormat::Fp8Block {
            return self.fit(x, importance, sigma2, affines, codes, stored);
        }
        let tc = self.d_in.div_ceil(FP8_TILE);
        let base = (row / FP8_TILE) * tc;
        for (k, a) in affines.iter_mut().enumerate() {
            *a = self.affine(self.tiles[base + k]);
        }
        self.set_codes(x, affines, codes);
    }
    fn row_dependent(&self) -> bool {
        self.fmt == NumberFormat::Fp8Block
    }
    fn assemble(
        &self,
        d_out: usize,
        d_in: usize,
        codes: Vec<u8>,
        affines: Vec<Affine>,
        stored: Vec<u8>,
        g_idx: Vec<u32>,
    ) -> QuantizedWeight {
        // `scales` are the stored scales (f32 values), `zeros` the bits of the f32 they are divided
        // by (NVFP4's global scale, else 1): value = level(code) * scale / divisor.
        let (scales, div) = match self.fmt {
            NumberFormat::Nvfp4 => (
                stored.iter().map(|&b| e4m3_decode(b)).collect(),
                self.tensor_scale,
            ),
            _ => (affines.iter().map(|a| a.a).collect::<Vec<f32>>(), 1.0f32),
        };
        let n = scales.len();
        QuantizedWeight {
            d_out,
            d_in,
            config: self.cfg.clone(),
            codes,
            scales,
            zeros: vec![div.to_bits(); n],
            g_idx,
            ggml: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shrink_model::minifloat::e4m3_round;

    #[test]
    fn mx_exponent_follows_compressed_tensors_round_to_power_2() {
        // amax 6 = 1.5 * 2^2: stays 2^2, exponent 2 - 2 = 0 -> scale 1, 6 / 1 = 6 on the grid
        assert_eq!(mxfp4_exponent(6.0), 127);
        // 1.75 * 2^2 = 7 rounds up to 2^3: scale 2 (the spec's floor would give 1 and clip 7 to 6)
        assert_eq!(mxfp4_exponent(7.0), 128);
        assert_eq!(mxfp4_exponent(6.99), 127);
        assert_eq!(mxfp4_exponent(1.0), 125);
        assert_eq!(mxfp4_exponent(0.0), 0);
        assert_eq!(mxfp4_exponent(1e-38), 0);
    }

    #[test]
    fn nvfp4_scales_are_e4m3_and_never_zero() {
        let g = nvfp4_global_scale(3.0);
        assert_eq!(g, 2688.0 / 3.0);
        // the tensor's largest group maps to 448 (rounded onto E4M3)
        assert_eq!(nvfp4_group_scale(3.0, g), 448.0);
        let s = nvfp4_group_scale(0.01, g);
        assert_eq!(s, e4m3_round(g * (0.01 / 6.0)));
        assert_eq!(nvfp4_group_scale(0.0, g), 0.125);
        assert_eq!(nvfp4_global_scale(0.0), 1.0);
        assert_eq!(fp8_scale(0.0), f32::EPSILON);
    }
}
