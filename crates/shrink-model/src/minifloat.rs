//! The small float formats of FP8 / FP4 weights: E4M3 (`float8_e4m3fn`), E2M1 (FP4) and E8M0
//! (a power-of-two scale).
//!
//! Sources: OCP Microscaling Formats (MX) Specification v1.0, §5.3.2 (E2M1: 1 sign, 2 exponent
//! bits, bias 1, 1 mantissa bit; values ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}) and §5.4.1 (E8M0: bias 127,
//! 0xFF is NaN); "FP8 Formats for Deep Learning" (Micikevicius et al., 2022), Table 1 (E4M3: bias
//! 7, no infinities, S.1111.111 is NaN, largest normal 448, subnormals down to 2^-9). The code of a
//! value is its bit pattern: an E2M1 nibble `s eem`, an E4M3 byte `s eeee mmm`.
//!
//! Rounding is to nearest, ties to even (the IEEE 754 default, which `Tensor.to(float8_e4m3fn)`
//! uses and compressed-tensors' `cast_to_fp4` reproduces with its bucket thresholds:
//! `compressed_tensors/quantization/utils/fp4_utils.py`), saturating at the largest finite value
//! (compressed-tensors clamps to ±max before every cast).

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest E2M1 value.
pub const E2M1_MAX: f32 = 6.0;

/// NVFP4's group (`group_size = 16`).
pub const NVFP4_GROUP: usize = 16;
/// MXFP4's group (`group_size = 32`).
pub const MXFP4_GROUP: usize = 32;

/// The number format of quantized weights.
#[derive(
    Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq, Hash,
)]
#[serde(rename_all = "snake_case")]
pub enum NumberFormat {
    /// Integer codes `scale * (q - zero)` (or a llama.cpp block type's grid, `ggml`).
    #[default]
    Int,
    /// FP8 E4M3 values, one f32 scale per tensor (llm-compressor's FP8 weights).
    Fp8Tensor,
    /// FP8 E4M3 values, one f32 scale per output channel (FP8_DYNAMIC's weights).
    Fp8Channel,
    /// FP8 E4M3 values, one f32 scale per 128×128 tile (FP8_BLOCK's weights).
    Fp8Block,
    /// E2M1 values, an E4M3 scale per 16 weights and an f32 global scale per tensor.
    Nvfp4,
    /// E2M1 values, an E8M0 (power of two) scale per 32 weights.
    Mxfp4,
}

impl NumberFormat {
    pub fn is_int(&self) -> bool {
        *self == NumberFormat::Int
    }
    /// Code width, groups and symmetry the format implies (`None` group: per row, per tile or per
    /// tensor).
    pub fn shape(self) -> Option<(u32, Option<usize>)> {
        match self {
            NumberFormat::Int => None,
            NumberFormat::Fp8Tensor | NumberFormat::Fp8Channel | NumberFormat::Fp8Block => {
                Some((8, None))
            }
            NumberFormat::Nvfp4 => Some((4, Some(NVFP4_GROUP))),
            NumberFormat::Mxfp4 => Some((4, Some(MXFP4_GROUP))),
        }
    }
    /// `fp8 pertensor`, `nvfp4 g16`, ...
    pub fn name(self) -> &'static str {
        match self {
            NumberFormat::Int => "int",
            NumberFormat::Fp8Tensor => "fp8 pertensor",
            NumberFormat::Fp8Channel => "fp8 perchannel",
            NumberFormat::Fp8Block => "fp8 block128x128",
            NumberFormat::Nvfp4 => "nvfp4 g16",
            NumberFormat::Mxfp4 => "mxfp4 g32",
        }
    }
    /// The value table of the codes (`None` for integers).
    pub fn levels(self) -> Option<&'static [f32]> {
        match self {
            NumberFormat::Int => None,
            NumberFormat::Nvfp4 | NumberFormat::Mxfp4 => Some(&E2M1_LEVELS),
            _ => Some(&E4M3_LEVELS),
        }
    }
}

const fn e4m3_value(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0xF) as i32;
    let m = (b & 7) as f32;
    if e == 15 && b & 7 == 7 {
        return f32::NAN;
    }
    // 2^(e-7) * (1 + m/8) for e > 0, 2^-6 * m/8 for e = 0 (exact in f32)
    let mut p = 1.0f32;
    let mut k = if e == 0 { -6 } else { e - 7 };
    while k > 0 {
        p *= 2.0;
        k -= 1;
    }
    while k < 0 {
        p *= 0.5;
        k += 1;
    }
    let frac = if e == 0 { m / 8.0 } else { 1.0 + m / 8.0 };
    sign * p * frac
}

/// Every E4M3 byte's value (NaN at 0x7F and 0xFF); byte 0x80 is -0.
pub static E4M3_LEVELS: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e4m3_value(i as u8);
        i += 1;
    }
    t
};

/// Every E2M1 nibble's value: codes 0..=7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign
/// (code 8 is -0).
pub static E2M1_LEVELS: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Round-to-nearest-even of `|x|` onto the ascending magnitudes `mags` (index = code): between
/// two neighbours the nearer, a tie to the even code (the even mantissa). Saturates at the last.
/// The two differences are exact (Sterbenz: neighbours are within a factor 2, or one is 0), so
/// ties are seen exactly.
fn nearest_even(v: f32, mags: &[f32]) -> usize {
    let i = mags.partition_point(|&l| l <= v);
    if i == 0 {
        return 0;
    }
    if i >= mags.len() {
        return mags.len() - 1;
    }
    let (lo, hi) = (mags[i - 1], mags[i]);
    let (dl, dh) = (v - lo, hi - v);
    if dl < dh || (dl == dh && (i - 1) % 2 == 0) {
        i - 1
    } else {
        i
    }
}

/// The E4M3 byte nearest to `x` (ties to even, saturating at ±448; NaN gives 0x7F).
pub fn e4m3_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    sign | nearest_even(x.abs(), &E4M3_LEVELS[..0x7F]) as u8
}

/// The value of an E4M3 byte.
#[inline]
pub fn e4m3_decode(b: u8) -> f32 {
    E4M3_LEVELS[b as usize]
}

/// `x` rounded onto E4M3 (the value `Tensor.clamp(-448, 448).to(float8_e4m3fn)` holds).
pub fn e4m3_round(x: f32) -> f32 {
    e4m3_decode(e4m3_encode(x))
}

/// The E2M1 nibble nearest to `x` (ties to even, saturating at ±6; NaN gives 0).
pub fn e2m1_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let sign = if x.is_sign_negative() { 8u8 } else { 0 };
    sign | nearest_even(x.abs(), &E2M1_LEVELS[..8]) as u8
}

/// The value of an E2M1 nibble (its low 4 bits).
#[inline]
pub fn e2m1_decode(c: u8) -> f32 {
    E2M1_LEVELS[(c & 15) as usize]
}

/// The value of an E8M0 scale byte: `2^(e - 127)` (0xFF is NaN).
pub fn e8m0_decode(e: u8) -> f32 {
    if e == 0xFF {
        return f32::NAN;
    }
    // 2^(e-127) for e >= 1 is a normal f32; 2^-127 is the subnormal 0x0040_0000.
    if e == 0 {
        f32::from_bits(0x0040_0000)
    } else {
        f32::from_bits((e as u32) << 23)
    }
}

/// The E4M3 code nearest to `v` among codes of one sign: `v` already divided by the scale.
/// Used by [`crate::ggml_quant::Affine::code`] for the E4M3 level table.
pub(crate) fn e4m3_code(v: f32) -> u32 {
    e4m3_encode(v.clamp(-E4M3_MAX, E4M3_MAX)) as u32
}

/// The E2M1 code nearest to `v` (see [`e4m3_code`]).
pub(crate) fn e2m1_code(v: f32) -> u32 {
    e2m1_encode(v.clamp(-E2M1_MAX, E2M1_MAX)) as u32
}

/// compressed-tensors' `eps` for E4M3 scales (`_get_dtype_eps`).
pub const E4M3_SCALE_EPS: f32 = 0.125;

// The scale rules of compressed-tensors (see `shrink_methods::grid_fp`), shared by the weight
// grids and the activation fake-quantization (`crate::actquant`).

/// `max(|min(x, 0)|, max(x, 0))`.
pub fn amax(x: &[f32]) -> f32 {
    let lo = x.iter().fold(0.0f32, |a, &b| a.min(b));
    let hi = x.iter().fold(0.0f32, |a, &b| a.max(b));
    lo.abs().max(hi)
}

/// FP8's f32 scale of a group whose largest magnitude is `amax`: `amax / 448`, 0 -> `f32::EPSILON`.
pub fn fp8_scale(amax: f32) -> f32 {
    let s = amax / E4M3_MAX;
    if s == 0.0 {
        f32::EPSILON
    } else {
        s
    }
}

/// NVFP4's per-tensor global scale: `448 * 6 / max(amax, MIN_POSITIVE)`, 1 when not finite.
pub fn nvfp4_global_scale(amax: f32) -> f32 {
    let g = (E4M3_MAX * E2M1_MAX) / amax.max(f32::MIN_POSITIVE);
    if g.is_finite() {
        g
    } else {
        1.0
    }
}

/// NVFP4's E4M3 group scale (as f32): `e4m3(clamp(global * (amax / 6), -448, 448))`, 0 -> 0.125.
pub fn nvfp4_group_scale(amax: f32, global: f32) -> f32 {
    let s = e4m3_round((global * (amax / E2M1_MAX)).clamp(-E4M3_MAX, E4M3_MAX));
    if s == 0.0 {
        E4M3_SCALE_EPS
    } else {
        s
    }
}

/// MXFP4's E8M0 exponent byte of a group whose largest magnitude is `amax` (see the module doc).
pub fn mxfp4_exponent(amax: f32) -> u8 {
    let p2 = f32::from_bits(amax.to_bits().wrapping_add(1 << 21) & 0xFF80_0000);
    if p2 == 0.0 {
        return 0; // log2(0) = -inf, clamped to 0
    }
    if !p2.is_finite() {
        return 255;
    }
    // p2 is a power of two (normal, as the mask drops the mantissa; a subnormal amax gives 0)
    let e = ((p2.to_bits() >> 23) & 0xFF) as i32 - 127;
    (127 + e - 2).clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_levels_are_the_format() {
        assert_eq!(e4m3_decode(0x7E), 448.0);
        assert_eq!(e4m3_decode(0xFE), -448.0);
        assert!(e4m3_decode(0x7F).is_nan() && e4m3_decode(0xFF).is_nan());
        assert_eq!(e4m3_decode(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(e4m3_decode(0x07), 7.0 * 2f32.powi(-9)); // largest subnormal
        assert_eq!(e4m3_decode(0x08), 2f32.powi(-6)); // smallest normal
        assert_eq!(e4m3_decode(0x38), 1.0);
        assert_eq!(e4m3_decode(0x39), 1.125);
        assert!(e4m3_decode(0x80) == 0.0 && e4m3_decode(0x80).is_sign_negative());
        // positive codes ascend strictly, so the code order is the value order
        for b in 1..0x7Fu8 {
            assert!(e4m3_decode(b) > e4m3_decode(b - 1), "{b:#x}");
        }
        // 126 positive finite non-zero values + 0, mirrored
        for b in 0..0x7Fu8 {
            assert_eq!(e4m3_decode(b | 0x80), -e4m3_decode(b));
            assert_eq!(e4m3_encode(e4m3_decode(b)), b);
            assert_eq!(e4m3_encode(-e4m3_decode(b)), b | 0x80);
        }
    }

    #[test]
    fn e4m3_rounds_to_nearest_even_and_saturates() {
        // 1.0625 is halfway between 1 (0x38, even) and 1.125 (0x39): to 1
        assert_eq!(e4m3_encode(1.0625), 0x38);
        // 1.1875 halfway between 1.125 (odd) and 1.25 (0x3A, even): to 1.25
        assert_eq!(e4m3_encode(1.1875), 0x3A);
        assert_eq!(e4m3_encode(1.0626), 0x39);
        assert_eq!(e4m3_encode(-1.0625), 0xB8);
        assert_eq!(e4m3_decode(0x7D), 416.0);
        assert_eq!(e4m3_encode(432.0), 0x7E); // halfway 416 (odd) / 448 (even)
        assert_eq!(e4m3_encode(1e9), 0x7E);
        assert_eq!(e4m3_encode(-1e9), 0xFE);
        // subnormals: 2^-10 is halfway between 0 and 2^-9: to 0; a bit above goes up
        assert_eq!(e4m3_encode(2f32.powi(-10)), 0x00);
        assert_eq!(e4m3_encode(2f32.powi(-10) * 1.0001), 0x01);
        // 1.5 * 2^-9 is halfway between codes 1 and 2: to 2
        assert_eq!(e4m3_encode(1.5 * 2f32.powi(-9)), 0x02);
        assert_eq!(e4m3_encode(-1e-30), 0x80);
    }

    #[test]
    fn e2m1_rounds_like_compressed_tensors_cast_to_fp4() {
        // cast_to_fp4's buckets: [0, .25] -> 0, (.25, .75) -> .5, [.75, 1.25] -> 1,
        // (1.25, 1.75) -> 1.5, [1.75, 2.5] -> 2, (2.5, 3.5) -> 3, [3.5, 5] -> 4, (5, ..) -> 6
        let cases = [
            (0.25, 0.0),
            (0.2501, 0.5),
            (0.75, 1.0),
            (0.7499, 0.5),
            (1.25, 1.0),
            (1.2501, 1.5),
            (1.75, 2.0),
            (2.5, 2.0),
            (2.5001, 3.0),
            (3.5, 4.0),
            (5.0, 4.0),
            (5.0001, 6.0),
            (100.0, 6.0),
        ];
        for (x, want) in cases {
            assert_eq!(e2m1_decode(e2m1_encode(x)), want, "{x}");
            assert_eq!(e2m1_decode(e2m1_encode(-x)), -want, "-{x}");
        }
        for c in 0..16u8 {
            assert_eq!(e2m1_encode(e2m1_decode(c)), c);
        }
    }

    #[test]
    fn e8m0_is_a_power_of_two() {
        assert_eq!(e8m0_decode(127), 1.0);
        assert_eq!(e8m0_decode(130), 8.0);
        assert_eq!(e8m0_decode(1), 2f32.powi(-126));
        assert_eq!(e8m0_decode(0), 2f32.powi(-127));
        assert_eq!(e8m0_decode(254), 2f32.powi(127));
        assert!(e8m0_decode(255).is_nan());
    }
}
