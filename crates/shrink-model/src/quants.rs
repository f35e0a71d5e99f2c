//! Dequantization of ggml tensor formats to `f32`.
//!
//! Every routine here is bit-exact with llama.cpp's `dequantize_row_*` functions
//! (`ggml/src/ggml-quants.c`) and with the `gguf` Python package
//! (`gguf/quants.py`): the same products are formed in `f32` in the same order,
//! and no fused multiply-add is used (Rust never contracts `a * b + c`).
//!
//! All multi-byte fields are little-endian. `f16` fields are IEEE binary16
//! (`ggml_half`) and are converted to `f32` exactly.
//!
//! Large inputs are split into chunks of whole blocks and processed in
//! parallel with rayon.

// `x % n != 0` is kept over `is_multiple_of` (Rust 1.87) for the workspace MSRV.
#![allow(clippy::manual_is_multiple_of)]

use anyhow::{anyhow, bail, Result};
use half::f16;
use rayon::prelude::*;

use crate::gguf::GgmlType;
use crate::iq_tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
    KVALUES_MXFP4,
};

/// Number of weights in a "super-block" of the k-quants (`QK_K` in ggml).
pub const QK_K: usize = 256;

/// Elements handled per rayon task.
const CHUNK_ELEMENTS: usize = 1 << 15;

/// True when [`dequantize`] supports `ty`: every type [`GgmlType`] knows (the match in
/// `dequantize_blocks` is exhaustive, so a new variant needs its dequantizer).
pub fn is_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | F64
            | I8
            | I16
            | I32
            | I64
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q8_1
            | Q2K
            | Q3K
            | Q4K
            | Q5K
            | Q6K
            | Q8K
            | IQ4_NL
            | IQ4_XS
            | IQ2_XXS
            | IQ2_XS
            | IQ2_S
            | IQ3_XXS
            | IQ3_S
            | IQ1_S
            | IQ1_M
            | TQ1_0
            | TQ2_0
            | MXFP4
    )
}

/// Dequantizes `data` (whole blocks of type `ty`) into `out`.
///
/// `out.len()` is the number of elements; it must be a multiple of
/// `ty.block_size()`, and `data.len()` must equal
/// `out.len() / block_size * type_size`. Integer types (`I8`..`I64`) are
/// converted with `as f32`, `F64` is rounded to the nearest `f32`.
///
/// Returns an error (never panics) for unsupported types or size mismatches.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    if !is_supported(ty) {
        bail!("dequantization of type {} is not supported", ty.name());
    }
    let bs = ty.block_size();
    let ts = ty.type_size();
    if out.len() % bs != 0 {
        bail!(
            "{} elements is not a multiple of the {} block size {}",
            out.len(),
            ty.name(),
            bs
        );
    }
    let n_blocks = out.len() / bs;
    let expected = n_blocks
        .checked_mul(ts)
        .ok_or_else(|| anyhow!("byte size of {} {} blocks overflows", n_blocks, ty.name()))?;
    if data.len() != expected {
        bail!(
            "{} data has {} bytes, expected {} for {} elements ({} blocks of {} bytes)",
            ty.name(),
            data.len(),
            expected,
            out.len(),
            n_blocks,
            ts
        );
    }
    let blocks_per_chunk = (CHUNK_ELEMENTS / bs).max(1);
    if n_blocks <= blocks_per_chunk {
        dequantize_blocks(ty, data, out);
    } else {
        out.par_chunks_mut(blocks_per_chunk * bs)
            .zip(data.par_chunks(blocks_per_chunk * ts))
            .for_each(|(o, d)| dequantize_blocks(ty, d, o));
    }
    Ok(())
}

/// Serial worker: `data` and `out` hold the same whole number of blocks.
fn dequantize_blocks(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    use GgmlType::*;
    match ty {
        F32 => for_blocks::<4, 1>(data, out, |b, y| y[0] = f32::from_le_bytes(*b)),
        F16 => for_blocks::<2, 1>(data, out, |b, y| y[0] = f16_le(b, 0)),
        BF16 => for_blocks::<2, 1>(data, out, |b, y| y[0] = bf16_le(b)),
        F64 => for_blocks::<8, 1>(data, out, |b, y| y[0] = f64::from_le_bytes(*b) as f32),
        I8 => for_blocks::<1, 1>(data, out, |b, y| y[0] = b[0] as i8 as f32),
        I16 => for_blocks::<2, 1>(data, out, |b, y| y[0] = i16::from_le_bytes(*b) as f32),
        I32 => for_blocks::<4, 1>(data, out, |b, y| y[0] = i32::from_le_bytes(*b) as f32),
        I64 => for_blocks::<8, 1>(data, out, |b, y| y[0] = i64::from_le_bytes(*b) as f32),
        Q4_0 => for_blocks::<18, 32>(data, out, dequant_q4_0),
        Q4_1 => for_blocks::<20, 32>(data, out, dequant_q4_1),
        Q5_0 => for_blocks::<22, 32>(data, out, dequant_q5_0),
        Q5_1 => for_blocks::<24, 32>(data, out, dequant_q5_1),
        Q8_0 => for_blocks::<34, 32>(data, out, dequant_q8_0),
        Q8_1 => for_blocks::<36, 32>(data, out, dequant_q8_1),
        Q2K => for_blocks::<84, QK_K>(data, out, dequant_q2_k),
        Q3K => for_blocks::<110, QK_K>(data, out, dequant_q3_k),
        Q4K => for_blocks::<144, QK_K>(data, out, dequant_q4_k),
        Q5K => for_blocks::<176, QK_K>(data, out, dequant_q5_k),
        Q6K => for_blocks::<210, QK_K>(data, out, dequant_q6_k),
        Q8K => for_blocks::<292, QK_K>(data, out, dequant_q8_k),
        IQ4_NL => for_blocks::<18, 32>(data, out, dequant_iq4_nl),
        IQ4_XS => for_blocks::<136, QK_K>(data, out, dequant_iq4_xs),
        IQ2_XXS => for_blocks::<66, QK_K>(data, out, dequant_iq2_xxs),
        IQ2_XS => for_blocks::<74, QK_K>(data, out, dequant_iq2_xs),
        IQ2_S => for_blocks::<82, QK_K>(data, out, dequant_iq2_s),
        IQ3_XXS => for_blocks::<98, QK_K>(data, out, dequant_iq3_xxs),
        IQ3_S => for_blocks::<110, QK_K>(data, out, dequant_iq3_s),
        IQ1_S => for_blocks::<50, QK_K>(data, out, dequant_iq1_s),
        IQ1_M => for_blocks::<56, QK_K>(data, out, dequant_iq1_m),
        TQ1_0 => for_blocks::<54, QK_K>(data, out, dequant_tq1_0),
        TQ2_0 => for_blocks::<66, QK_K>(data, out, dequant_tq2_0),
        MXFP4 => for_blocks::<17, 32>(data, out, dequant_mxfp4),
    }
}

#[inline(always)]
fn for_blocks<const TS: usize, const BS: usize>(
    data: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; TS], &mut [f32; BS]),
) {
    for (d, y) in data.chunks_exact(TS).zip(out.chunks_exact_mut(BS)) {
        // Both conversions are infallible: `chunks_exact` yields exactly TS / BS items.
        if let (Ok(d), Ok(y)) = (<&[u8; TS]>::try_from(d), <&mut [f32; BS]>::try_from(y)) {
            f(d, y);
        }
    }
}

/// Little-endian `f16` at byte offset `i`, widened exactly to `f32`.
#[inline(always)]
fn f16_le(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// `bf16` is the upper half of an `f32`.
#[inline(always)]
fn bf16_le(b: &[u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(*b) as u32) << 16)
}

/// `block_q4_0` (18 bytes, 32 weights):
/// `d: f16` (0..2), `qs: [u8; 16]` (2..18).
/// Weight `j` (j < 16) is the low nibble of `qs[j]`, weight `j + 16` the high
/// nibble; `y = (q - 8) * d`.
fn dequant_q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_le(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        let x0 = (qs[j] & 0x0F) as i32 - 8;
        let x1 = (qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// The 16 levels of IQ4_NL and IQ4_XS (`kvalues_iq4nl` in ggml-common.h).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `block_iq4_nl` (18 bytes, 32 weights): `d: f16` (0..2), `qs: [u8; 16]` (2..18), nibbles as in
/// Q4_0; `y = d * kvalues_iq4nl[q]`.
fn dequant_iq4_nl(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_le(b, 0);
    for j in 0..16 {
        y[j] = d * KVALUES_IQ4NL[(b[2 + j] & 0xF) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(b[2 + j] >> 4) as usize] as f32;
    }
}

/// `block_iq4_xs` (136 bytes, 256 weights in 8 groups of 32): `d: f16` (0..2), `scales_h: u16`
/// (2..4, the high 2 bits of group `ib` at bits `2 ib`), `scales_l: [u8; 4]` (4..8, the low 4
/// bits, two groups per byte), `qs: [u8; 128]` (8..136, 16 bytes per group, nibbles as in Q4_0);
/// `y = (d * (ls - 32)) * kvalues_iq4nl[q]`.
fn dequant_iq4_xs(b: &[u8; 136], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]) as i32;
    for ib in 0..8 {
        let ls = ((b[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
        for j in 0..16 {
            y[32 * ib + j] = dl * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
            y[32 * ib + j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
        }
    }
}

/// `block_q4_1` (20 bytes, 32 weights):
/// `d: f16` (0..2), `m: f16` (2..4), `qs: [u8; 16]` (4..20).
/// Nibbles as in Q4_0; `y = q * d + m`.
fn dequant_q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_le(b, 0);
    let m = f16_le(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        let x0 = (qs[j] & 0x0F) as f32;
        let x1 = (qs[j] >> 4) as f32;
        y[j] = x0 * d + m;
        y[j + 16] = x1 * d + m;
    }
}

/// `block_q5_0` (22 bytes, 32 weights):
/// `d: f16` (0..2), `qh: u32` (2..6, bit `j` = 5th bit of weight `j`),
/// `qs: [u8; 16]` (6..22, low nibbles as in Q4_0); `y = (q - 16) * d`.
fn dequant_q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_le(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as i32;
        let xh1 = ((qh >> (j + 12)) & 0x10) as i32;
        let x0 = ((qs[j] & 0x0F) as i32 | xh0) - 16;
        let x1 = ((qs[j] >> 4) as i32 | xh1) - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// `block_q5_1` (24 bytes, 32 weights):
/// `d: f16` (0..2), `m: f16` (2..4), `qh: u32` (4..8), `qs: [u8; 16]` (8..24);
/// 5-bit `q` as in Q5_0, `y = q * d + m`.
fn dequant_q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_le(b, 0);
    let m = f16_le(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        let x0 = (qs[j] & 0x0F) as u32 | xh0;
        let x1 = (qs[j] >> 4) as u32 | xh1;
        y[j] = x0 as f32 * d + m;
        y[j + 16] = x1 as f32 * d + m;
    }
}

/// `block_q8_0` (34 bytes, 32 weights):
/// `d: f16` (0..2), `qs: [i8; 32]` (2..34); `y = q * d`.
fn dequant_q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_le(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = q as i8 as f32 * d;
    }
}

/// `block_q8_1` (36 bytes, 32 weights):
/// `d: f16` (0..2), `s: f16` (2..4, `d * sum(qs)`, unused here),
/// `qs: [i8; 32]` (4..36); `y = q * d`.
///
/// Note: gguf-py 0.19 lists an obsolete 40-byte size for Q8_1; ggml's
/// `block_q8_1` has been 36 bytes for a long time and that is used here.
fn dequant_q8_1(b: &[u8; 36], y: &mut [f32; 32]) {
    let d = f16_le(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[4..36]) {
        *yj = q as i8 as f32 * d;
    }
}

/// `block_q2_K` (84 bytes, 256 weights in 16 groups of 16):
/// `scales: [u8; 16]` (0..16, low nibble = scale, high nibble = min of a group),
/// `qs: [u8; 64]` (16..80, 2-bit quants), `d: f16` (80..82), `dmin: f16` (82..84).
/// Each 128-weight half uses 32 bytes of `qs`; the four 32-weight runs of a half
/// take bits `0-1`, `2-3`, `4-5`, `6-7` of those bytes.
/// `y = (d * sc) * q - (dmin * m)`.
fn dequant_q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let scales = &b[0..16];
    let d = f16_le(b, 80);
    let min = f16_le(b, 82);
    let mut is = 0;
    let mut o = 0;
    for half in 0..2 {
        let q = &b[16 + 32 * half..16 + 32 * (half + 1)];
        for shift in [0u32, 2, 4, 6] {
            for sub in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0x0F) as f32;
                let ml = min * (sc >> 4) as f32;
                for l in 0..16 {
                    let qv = ((q[l + 16 * sub] >> shift) & 3) as f32;
                    y[o] = dl * qv - ml;
                    o += 1;
                }
            }
        }
    }
}

/// `block_q3_K` (110 bytes, 256 weights in 16 groups of 16):
/// `hmask: [u8; 32]` (0..32, high bit of each quant), `qs: [u8; 64]` (32..96,
/// low 2 bits, arranged as in Q2_K), `scales: [u8; 12]` (96..108, sixteen
/// 6-bit signed scales: low 4 bits from bytes 0..8 (low nibbles for groups
/// 0..8, high nibbles for 8..16), high 2 bits from bytes 8..12),
/// `d: f16` (108..110).
/// `q = low2 - (hmask bit set ? 0 : 4)`, `y = (d * (scale - 32)) * q`.
fn dequant_q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let hm = &b[0..32];
    let sc = &b[96..108];
    let d_all = f16_le(b, 108);
    let mut scales = [0i32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let low = if j < 8 { sc[j] & 0x0F } else { sc[j - 8] >> 4 };
        let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    let mut is = 0;
    let mut o = 0;
    let mut m: u8 = 1;
    for half in 0..2 {
        let q = &b[32 + 32 * half..32 + 32 * (half + 1)];
        for shift in [0u32, 2, 4, 6] {
            for sub in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                for l in 0..16 {
                    let k = l + 16 * sub;
                    let low = ((q[k] >> shift) & 3) as i32;
                    let qv = low - if hm[k] & m != 0 { 0 } else { 4 };
                    y[o] = dl * qv as f32;
                    o += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// Unpacks the 6-bit scale and min of group `j` (0..8) from the 12-byte
/// `scales` field shared by Q4_K and Q5_K (`get_scale_min_k4` in ggml):
/// groups 0..4 use the low 6 bits of bytes `j` / `j + 4`; groups 4..8 take
/// their low 4 bits from the nibbles of byte `j + 4` and their high 2 bits from
/// the top bits of bytes `j - 4` / `j`.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K` (144 bytes, 256 weights in 8 groups of 32):
/// `d: f16` (0..2), `dmin: f16` (2..4), `scales: [u8; 12]` (4..16, see
/// [`scale_min_k4`]), `qs: [u8; 128]` (16..144). Each 64-weight chunk uses 32
/// bytes: low nibbles are group `2i`, high nibbles group `2i + 1`.
/// `y = (d * sc) * q - (dmin * m)`.
fn dequant_q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    let min = f16_le(b, 2);
    let scales = &b[4..16];
    for c in 0..4 {
        let q = &b[16 + 32 * c..16 + 32 * (c + 1)];
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let out = &mut y[64 * c..64 * (c + 1)];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `block_q5_K` (176 bytes, 256 weights in 8 groups of 32):
/// `d: f16` (0..2), `dmin: f16` (2..4), `scales: [u8; 12]` (4..16, as Q4_K),
/// `qh: [u8; 32]` (16..48, bit `g` of `qh[l]` is the 5th bit of weight `l` of
/// group `g`), `qs: [u8; 128]` (48..176, nibbles as Q4_K).
/// `y = (d * sc) * q - (dmin * m)`.
fn dequant_q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    let min = f16_le(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let mut u1: u8 = 1;
    let mut u2: u8 = 2;
    for c in 0..4 {
        let ql = &b[48 + 32 * c..48 + 32 * (c + 1)];
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let out = &mut y[64 * c..64 * (c + 1)];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
            out[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
        u1 = u1.wrapping_shl(2);
        u2 = u2.wrapping_shl(2);
    }
}

/// `block_q6_K` (210 bytes, 256 weights in 16 groups of 16):
/// `ql: [u8; 128]` (0..128, low 4 bits), `qh: [u8; 64]` (128..192, high 2
/// bits), `scales: [i8; 16]` (192..208), `d: f16` (208..210).
/// Each 128-weight half uses 64 bytes of `ql` and 32 of `qh`; for `l < 32` the
/// four weights `l`, `l+32`, `l+64`, `l+96` are
/// `(ql[l] & 15, ql[l+32] & 15, ql[l] >> 4, ql[l+32] >> 4)` combined with bits
/// `0-1`, `2-3`, `4-5`, `6-7` of `qh[l]`; `y = (d * scale) * (q - 32)`.
fn dequant_q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * (half + 1)];
        let qh = &b[128 + 32 * half..128 + 32 * (half + 1)];
        let sc = &b[192 + 8 * half..192 + 8 * (half + 1)];
        let out = &mut y[128 * half..128 * (half + 1)];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// `block_q8_K` (292 bytes, 256 weights): `d: f32` (0..4), `qs: [i8; 256]`
/// (4..260), `bsums: [i16; 16]` (260..292, unused here); `y = d * q`.
fn dequant_q8_k(b: &[u8; 292], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (yj, &q) in y.iter_mut().zip(&b[4..260]) {
        *yj = d * q as i8 as f32;
    }
}

/// `1.0`, or `-1.0` when bit `j` of `signs` is set (ggml: `signs & kmask_iq2xs[j] ? -1.f : 1.f`).
#[inline(always)]
fn sign(signs: u8, j: usize) -> f32 {
    if (signs >> j) & 1 != 0 {
        -1.0
    } else {
        1.0
    }
}

/// The 4-bit sub-scale of IQ2_XXS/IQ2_XS/IQ2_S as ggml and gguf-py form it:
/// `d * (0.5 + ls) * 0.25`, two roundings in that order.
#[inline(always)]
fn iq2_scale(d: f32, ls: u32) -> f32 {
    d * (0.5 + ls as f32) * 0.25
}

/// `block_iq2_xxs` (66 bytes, 256 weights in 8 groups of 32): `d: f16` (0..2), `qs: [u16; 32]`
/// (2..66) read as 8 pairs of `u32` `(aux0, aux1)`, one pair per group. Byte `l` of `aux0`
/// indexes [`IQ2XXS_GRID`] for weights `8l..8l+8`; bits `7l..7l+7` of `aux1` index
/// [`KSIGNS_IQ2XS`] for their signs; `aux1 >> 28` is the group's scale `ls`.
/// `y = (d * (0.5 + ls) * 0.25) * grid[j] * sign`.
fn dequant_iq2_xxs(b: &[u8; 66], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    for ib in 0..8 {
        let q = &b[2 + 8 * ib..2 + 8 * ib + 8];
        let aux1 = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
        let db = iq2_scale(d, aux1 >> 28);
        for l in 0..4 {
            let grid = IQ2XXS_GRID[q[l] as usize].to_le_bytes();
            let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = db * grid[j] as f32 * sign(signs, j);
            }
        }
    }
}

/// `block_iq2_xs` (74 bytes, 256 weights in 16 groups of 16): `d: f16` (0..2), `qs: [u16; 32]`
/// (2..66: bits 0..9 index [`IQ2XS_GRID`] for 8 weights, bits 9..16 index [`KSIGNS_IQ2XS`]),
/// `scales: [u8; 8]` (66..74, two 4-bit `ls` per byte, low nibble first).
/// `y = (d * (0.5 + ls) * 0.25) * grid[j] * sign`.
fn dequant_iq2_xs(b: &[u8; 74], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    for ib in 0..8 {
        let sc = b[66 + ib] as u32;
        let db = [iq2_scale(d, sc & 0xF), iq2_scale(d, sc >> 4)];
        for l in 0..4 {
            let k = 4 * ib + l;
            let q = u16::from_le_bytes([b[2 + 2 * k], b[3 + 2 * k]]);
            let grid = IQ2XS_GRID[(q & 511) as usize].to_le_bytes();
            let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
            for j in 0..8 {
                y[8 * k + j] = db[l / 2] * grid[j] as f32 * sign(signs, j);
            }
        }
    }
}

/// `block_iq2_s` (82 bytes, 256 weights in 16 groups of 16): `d: f16` (0..2), `qs: [u8; 32]`
/// (2..34, low 8 bits of the [`IQ2S_GRID`] index of weights `8k..8k+8`), `signs: [u8; 32]`
/// (34..66, one sign bit per weight), `qh: [u8; 8]` (66..74, the index's high 2 bits, four
/// per byte, low first), `scales: [u8; 8]` (74..82, as IQ2_XS).
/// `y = (d * (0.5 + ls) * 0.25) * grid[j] * sign`.
fn dequant_iq2_s(b: &[u8; 82], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    for ib in 0..8 {
        let sc = b[74 + ib] as u32;
        let db = [iq2_scale(d, sc & 0xF), iq2_scale(d, sc >> 4)];
        for l in 0..4 {
            let k = 4 * ib + l;
            let idx = b[2 + k] as usize | (((b[66 + ib] >> (2 * l)) & 3) as usize) << 8;
            let grid = IQ2S_GRID[idx].to_le_bytes();
            let signs = b[34 + k];
            for j in 0..8 {
                y[8 * k + j] = db[l / 2] * grid[j] as f32 * sign(signs, j);
            }
        }
    }
}

/// `block_iq3_xxs` (98 bytes, 256 weights in 8 groups of 32): `d: f16` (0..2), `qs: [u8; 64]`
/// (2..66, one [`IQ3XXS_GRID`] index per 4 weights), `scales_and_signs: [u32; 8]` (66..98, one
/// per group: bits `7l..7l+7` index [`KSIGNS_IQ2XS`] for weights `8l..8l+8`, bits 28..32 are
/// `ls`). `y = (d * (0.5 + ls) * 0.5) * grid[j] * sign`.
fn dequant_iq3_xxs(b: &[u8; 98], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    for ib in 0..8 {
        let o = 66 + 4 * ib;
        let aux = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let g1 = IQ3XXS_GRID[b[2 + 8 * ib + 2 * l] as usize].to_le_bytes();
            let g2 = IQ3XXS_GRID[b[3 + 8 * ib + 2 * l] as usize].to_le_bytes();
            let out = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
            for j in 0..4 {
                out[j] = db * g1[j] as f32 * sign(signs, j);
                out[j + 4] = db * g2[j] as f32 * sign(signs, j + 4);
            }
        }
    }
}

/// `block_iq3_s` (110 bytes, 256 weights in 8 groups of 32): `d: f16` (0..2), `qs: [u8; 64]`
/// (2..66, low 8 bits of the [`IQ3S_GRID`] index of weights `4k..4k+4`), `qh: [u8; 8]`
/// (66..74, bit `k % 8` of byte `k / 8` is the index's 9th bit), `signs: [u8; 32]` (74..106,
/// one bit per weight), `scales: [u8; 4]` (106..110, 4-bit `ls` per group, low nibble first).
/// `y = (d * (1 + 2 ls)) * grid[j] * sign`.
fn dequant_iq3_s(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    for ib in 0..8 {
        let ls = (b[106 + ib / 2] >> (4 * (ib % 2))) & 0xF;
        let db = d * (1 + 2 * ls as u32) as f32;
        for l in 0..8 {
            let k = 8 * ib + l;
            let idx = b[2 + k] as usize | (((b[66 + k / 8] >> (k % 8)) & 1) as usize) << 8;
            let grid = IQ3S_GRID[idx].to_le_bytes();
            let signs = b[74 + k / 2];
            for j in 0..4 {
                y[4 * k + j] = db * grid[j] as f32 * sign(signs, 4 * (k % 2) + j);
            }
        }
    }
}

/// `IQ1S_DELTA` in ggml: the shift of the IQ1 grid values `{-1, 0, 1}`.
const IQ1S_DELTA: f32 = 0.125;

/// `block_iq1_s` (50 bytes, 256 weights in 8 groups of 32): `d: f16` (0..2), `qs: [u8; 32]`
/// (2..34, low 8 bits of the [`IQ1S_GRID`] index of weights `8k..8k+8`), `qh: [u16; 8]`
/// (34..50, one per group: bits `3l..3l+3` are the high 3 index bits of its `l`-th index,
/// bits 12..15 the scale `ls`, bit 15 the sign of the delta).
/// `y = (d * (2 ls + 1)) * (grid[j] + delta)`.
fn dequant_iq1_s(b: &[u8; 50], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 0);
    for ib in 0..8 {
        let qh = u16::from_le_bytes([b[34 + 2 * ib], b[35 + 2 * ib]]);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 {
            -IQ1S_DELTA
        } else {
            IQ1S_DELTA
        };
        for l in 0..4 {
            let idx = b[2 + 4 * ib + l] as usize | (((qh >> (3 * l)) & 7) as usize) << 8;
            let grid = IQ1S_GRID[idx].to_le_bytes();
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = dl * (grid[j] as i8 as f32 + delta);
            }
        }
    }
}

/// `block_iq1_m` (56 bytes, 256 weights in 16 groups of 16): `qs: [u8; 32]` (0..32, low 8
/// bits of the [`IQ1S_GRID`] index of weights `8k..8k+8`), `qh: [u8; 16]` (32..48, one nibble
/// per index, low first: bits 0..3 the high index bits, bit 3 the sign of the delta),
/// `scales: [u16; 4]` (48..56: bits `3s..3s+3` of word `g / 4` are the 3-bit scale `ls` of group
/// `g`, `s = g % 4`; the top nibbles of the four words, first word lowest, form the `f16` `d`).
/// `y = (d * (2 ls + 1)) * (grid[j] + delta)`.
fn dequant_iq1_m(b: &[u8; 56], y: &mut [f32; QK_K]) {
    let sc: [u16; 4] = std::array::from_fn(|k| u16::from_le_bytes([b[48 + 2 * k], b[49 + 2 * k]]));
    let d_bits =
        (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000);
    let d = f16::from_bits(d_bits).to_f32();
    for ib in 0..8 {
        let s = sc[ib / 2] >> (6 * (ib % 2));
        let dl = [
            d * (2 * (s & 7) + 1) as f32,
            d * (2 * ((s >> 3) & 7) + 1) as f32,
        ];
        for l in 0..4 {
            let k = 4 * ib + l;
            let qh = b[32 + k / 2] >> (4 * (k % 2));
            let idx = b[k] as usize | ((qh & 7) as usize) << 8;
            let delta = if qh & 8 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
            let grid = IQ1S_GRID[idx].to_le_bytes();
            for j in 0..8 {
                y[8 * k + j] = dl[l / 2] * (grid[j] as i8 as f32 + delta);
            }
        }
    }
}

/// `block_tq1_0` (54 bytes, 256 ternary weights): `qs: [u8; 48]` (0..48), `qh: [u8; 4]`
/// (48..52), `d: f16` (52..54). Each byte holds 5 (`qs`) or 4 (`qh`) base-3 digits as a
/// fixed-point fraction: digit `n` of byte `q` is `((q * 3^n mod 256) * 3) >> 8`. Weights
/// run digit-major: bytes 0..32 give weights `32n + m`, bytes 32..48 weights `160 + 16n + m`,
/// `qh` weights `240 + 4n + m`. `y = (digit - 1) * d`.
fn dequant_tq1_0(b: &[u8; 54], y: &mut [f32; QK_K]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let d = f16_le(b, 52);
    let mut o = 0;
    for (bytes, digits) in [(&b[0..32], 5), (&b[32..48], 5), (&b[48..52], 4)] {
        for &p in &POW3[..digits] {
            for &q in bytes {
                let t = ((q.wrapping_mul(p) as u16 * 3) >> 8) as i32 - 1;
                y[o] = t as f32 * d;
                o += 1;
            }
        }
    }
}

/// `block_tq2_0` (66 bytes, 256 ternary weights): `qs: [u8; 64]` (0..64), `d: f16` (64..66).
/// Each 128-weight half uses 32 bytes; weight `32 s + m` of a half is bits `2s..2s+2` of byte
/// `m`. `y = (q - 1) * d`.
fn dequant_tq2_0(b: &[u8; 66], y: &mut [f32; QK_K]) {
    let d = f16_le(b, 64);
    for half in 0..2 {
        for s in 0..4 {
            for m in 0..32 {
                let q = ((b[32 * half + m] >> (2 * s)) & 3) as i32 - 1;
                y[128 * half + 32 * s + m] = q as f32 * d;
            }
        }
    }
}

/// Half the value of an e8m0 exponent byte, `2^(e - 128)`, exactly (`ggml_e8m0_to_fp32_half`):
/// `e = 0, 1` give the f32 subnormals `2^-128`, `2^-127`. `e = 255` gives `2^127`, not the NaN
/// of the OCP MX spec, as in ggml and gguf-py.
#[inline(always)]
pub(crate) fn e8m0_to_fp32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// `block_mxfp4` (17 bytes, 32 weights): `e: u8` (0, e8m0 shared exponent), `qs: [u8; 16]`
/// (1..17, nibbles as in Q4_0, each an E2M1 code). `y = kvalues_mxfp4[q] * 2^(e - 128)`
/// (the table holds doubled values, the scale is halved).
fn dequant_mxfp4(b: &[u8; 17], y: &mut [f32; 32]) {
    let d = e8m0_to_fp32_half(b[0]);
    for j in 0..16 {
        y[j] = KVALUES_MXFP4[(b[1 + j] & 0xF) as usize] as f32 * d;
        y[j + 16] = KVALUES_MXFP4[(b[1 + j] >> 4) as usize] as f32 * d;
    }
}
