//! ggml quantizers: F32/F16 -> Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
//! IQ4_XS, MXFP4, the ternary TQ1_0 and TQ2_0, IQ1_S and IQ1_M (in `iq1`), and the lattice i-quants IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S ([`LATTICE_TYPES`], in
//! `iq_lattice`).
//!
//! A line-by-line port of llama.cpp's reference quantizers in `ggml/src/ggml-quants.c`
//! (the tree vendored in llama-cpp-python 0.3.36): without an importance matrix,
//! `quantize_row_*_ref`; with one, the `quantize_row_*_impl` paths that `quantize_q*` take when
//! `quant_weights != NULL` (`make_qx_quants`, `make_qkx2_quants`, `make_qkx3_quants`,
//! `make_qp_quants`). Block layouts are those of `ggml-common.h`, and the same that
//! `shrink_model::quants` dequantizes. Arithmetic is f32 in the reference's order; rounding uses
//! the reference's `nearest_int` (add 1.5 * 2^23) and `GGML_FP32_TO_FP16` (round to nearest even).
//!
//! Rows are independent (`n_per_row` is a multiple of the block size), so rows are quantized in
//! parallel; the importance matrix, when given, has one weight per column (`n_per_row` values), as
//! llama.cpp's imatrix stores the mean squared activation of each input column.
// The loops keep the reference's index form, so they can be read against ggml-quants.c line by line.
#![allow(clippy::needless_range_loop)]

use crate::gguf::GgmlType;
use anyhow::{bail, Result};
use half::f16;
use rayon::prelude::*;

mod iq1;
mod iq_lattice;

/// Uniform values in `[-0.5, 0.5)` from a xorshift generator, for the i-quant tests.
#[cfg(test)]
fn uniform_rng(mut s: u64) -> impl FnMut() -> f32 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

const QK_K: usize = 256;
const GROUP_MAX_EPS: f32 = 1e-15;

/// The i-quants on a lattice of 4- or 8-value points (llama.cpp's `iq3xs`/`iq2xs` grids, and
/// IQ1's 2048 points of `{-1, 0, 1}` plus a delta), which [`quantize`] writes by llama.cpp's own
/// search (`quantize_iq*`). They have no per-weight [`Affine`] grid: GPTQ rounds onto them 8
/// weights at a time ([`lattice_choose_unit`]).
pub const LATTICE_TYPES: [GgmlType; 7] = [
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
];

fn is_iq1(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::IQ1_S | GgmlType::IQ1_M)
}

/// Whether GPTQ can round onto `ty`: a grid per weight ([`grid_shape`]) or a lattice.
pub fn gptq_target(ty: GgmlType) -> bool {
    grid_shape(ty).is_some() || LATTICE_TYPES.contains(&ty)
}

/// Columns of a [`LATTICE_TYPES`] block that GPTQ rounds at once (one sign byte's 8 weights).
pub const LATTICE_UNIT: usize = iq_lattice::UNIT;

/// One 256-weight block of a [`LATTICE_TYPES`] type, fitted as llama.cpp fits it (scales,
/// points and signs), `qw` the block's importances; `y` holds `ty.type_size()` bytes. (IQ1_S,
/// which llama.cpp only quantizes with importances, takes them as all 1 when `qw` is `None`.)
pub fn quantize_lattice_block(ty: GgmlType, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    assert!(LATTICE_TYPES.contains(&ty), "{ty} is not a lattice type");
    match ty {
        GgmlType::IQ1_S => iq1::quantize_iq1_s(x, qw.unwrap_or(&[1.0; QK_K]), y),
        GgmlType::IQ1_M => iq1::quantize_iq1_m(x, qw, y),
        _ => iq_lattice::quantize_block(ty, x, qw, y),
    }
}

/// Rechooses unit `k` (weights `8k..8k+8`) of the written [`LATTICE_TYPES`] block `y` for the
/// values `x` under weights `w`, keeping the block's scales; `out` gets the unit's dequantized
/// values, bit for bit llama.cpp's (see `iq_lattice::choose_unit`).
pub fn lattice_choose_unit(
    ty: GgmlType,
    y: &mut [u8],
    k: usize,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
) {
    assert!(LATTICE_TYPES.contains(&ty), "{ty} is not a lattice type");
    if is_iq1(ty) {
        iq1::choose_unit(ty, y, k, x, w, out)
    } else {
        iq_lattice::choose_unit(ty, y, k, x, w, out)
    }
}

/// The dequantized values of unit `k` of the [`LATTICE_TYPES`] block `y`.
pub fn lattice_unit_values(ty: GgmlType, y: &[u8], k: usize, out: &mut [f32]) {
    assert!(LATTICE_TYPES.contains(&ty), "{ty} is not a lattice type");
    if is_iq1(ty) {
        iq1::unit_values(ty, y, k, out)
    } else {
        iq_lattice::unit_values(ty, y, k, out)
    }
}

/// Types [`quantize`] can produce: F32, F16, every [`GRID_TYPES`] and [`LATTICE_TYPES`] type.
pub const QUANT_TYPES: [GgmlType; GRID_TYPES.len() + LATTICE_TYPES.len() + 2] = {
    let mut t = [GgmlType::F32; GRID_TYPES.len() + LATTICE_TYPES.len() + 2];
    t[1] = GgmlType::F16;
    let mut i = 0;
    while i < GRID_TYPES.len() {
        t[i + 2] = GRID_TYPES[i];
        i += 1;
    }
    let mut j = 0;
    while j < LATTICE_TYPES.len() {
        t[i + 2 + j] = LATTICE_TYPES[j];
        j += 1;
    }
    t
};

/// Whether llama.cpp refuses to quantize `ty` without an importance matrix
/// (`ggml_quantize_requires_imatrix`: IQ2_XXS, IQ2_XS, IQ1_S).
pub fn requires_imatrix(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ1_S)
}

/// Whether [`quantize`] can write `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    QUANT_TYPES.contains(&ty)
}

/// Whether an importance matrix changes how `ty` is quantized (llama.cpp ignores it for Q8_0,
/// MXFP4, TQ1_0 and TQ2_0).
pub fn uses_imatrix(ty: GgmlType) -> bool {
    !matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::Q8_0
            | GgmlType::MXFP4
            | GgmlType::TQ1_0
            | GgmlType::TQ2_0
    )
}

/// llama-quantize's `tensor_type_fallback` (llama-quant.cpp): the type used instead of `ty` when
/// a row of `n_per_row` values is not a whole number of `ty` blocks (e.g. Q4_K on 576 columns ->
/// Q5_0, Q3_K -> Q4_0, IQ4_XS -> IQ4_NL), F16 when that does not fit either.
pub fn fallback_type(ty: GgmlType, n_per_row: usize) -> GgmlType {
    if n_per_row % ty.block_size() == 0 {
        return ty;
    }
    use GgmlType::*;
    let f = match ty {
        IQ1_S | IQ1_M | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ4_XS => IQ4_NL,
        Q2K | Q3K | TQ1_0 | TQ2_0 => Q4_0,
        Q4K => Q5_0,
        Q5K => Q5_1,
        Q6K => Q8_0,
        _ => F16,
    };
    if n_per_row % f.block_size() == 0 {
        f
    } else {
        GgmlType::F16
    }
}

/// Quantizes `x` (`nrows * n_per_row` values, row-major) to `ty`. `imatrix`, when given, has
/// `n_per_row` non-negative weights (llama.cpp's `quant_weights`).
pub fn quantize(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>> {
    if !can_quantize(ty) {
        bail!(
            "cannot quantize to {} (supported: {})",
            ty.name(),
            QUANT_TYPES.map(|t| t.name()).join(", ")
        );
    }
    if n_per_row == 0 || x.len() % n_per_row != 0 {
        bail!("{} values do not form rows of {n_per_row}", x.len());
    }
    let bs = ty.block_size();
    if n_per_row % bs != 0 {
        bail!(
            "rows of {n_per_row} values are not a whole number of {} blocks of {bs}",
            ty.name()
        );
    }
    if imatrix.is_none() && requires_imatrix(ty) {
        bail!(
            "{} needs an importance matrix (as in llama.cpp: ggml_quantize_requires_imatrix)",
            ty.name()
        );
    }
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            bail!(
                "importance matrix has {} values for rows of {n_per_row}",
                w.len()
            );
        }
        if w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            bail!("importance matrix has a negative or non-finite value");
        }
    }
    if x.iter().any(|v| !v.is_finite()) {
        bail!("tensor has a non-finite value (NaN or infinity)");
    }
    let row_bytes = n_per_row / bs * ty.type_size();
    let mut out = vec![0u8; x.len() / n_per_row * row_bytes];
    let qw = if uses_imatrix(ty) { imatrix } else { None };
    out.par_chunks_mut(row_bytes)
        .zip(x.par_chunks(n_per_row))
        .for_each(|(dst, row)| quantize_row(ty, row, dst, qw));
    Ok(out)
}

fn quantize_row(ty: GgmlType, x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    use GgmlType::*;
    match ty {
        F32 => {
            for (d, v) in y.chunks_exact_mut(4).zip(x) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        F16 => {
            for (d, v) in y.chunks_exact_mut(2).zip(x) {
                d.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        Q8_0 => blocks(x, y, 32, 34, q8_0_ref),
        Q4_0 => legacy(x, y, qw, 18, q4_0_ref, q4_0_impl),
        Q4_1 => legacy(x, y, qw, 20, q4_1_ref, q4_1_impl),
        Q5_0 => legacy(x, y, qw, 22, q5_0_ref, q5_0_impl),
        Q5_1 => legacy(x, y, qw, 24, q5_1_ref, q5_1_impl),
        Q4K => match qw {
            None => blocks(x, y, QK_K, 144, |x, y| qk_45(x, y, None, 15)),
            Some(w) => blocks_w(x, y, w, QK_K, 144, |x, y, qw| qk_45(x, y, Some(qw), 15)),
        },
        Q5K => match qw {
            None => blocks(x, y, QK_K, 176, |x, y| qk_45(x, y, None, 31)),
            Some(w) => blocks_w(x, y, w, QK_K, 176, |x, y, qw| qk_45(x, y, Some(qw), 31)),
        },
        Q6K => match qw {
            None => blocks(x, y, QK_K, 210, |x, y| q6_k(x, y, None)),
            Some(w) => blocks_w(x, y, w, QK_K, 210, |x, y, qw| q6_k(x, y, Some(qw))),
        },
        Q2K => match qw {
            None => blocks(x, y, QK_K, 84, |x, y| q2_k(x, y, None)),
            Some(w) => blocks_w(x, y, w, QK_K, 84, |x, y, qw| q2_k(x, y, Some(qw))),
        },
        Q3K => match qw {
            None => blocks(x, y, QK_K, 110, |x, y| q3_k(x, y, None)),
            Some(w) => blocks_w(x, y, w, QK_K, 110, |x, y, qw| q3_k(x, y, Some(qw))),
        },
        IQ4_NL | IQ4_XS => {
            let (bs, ts) = (ty.block_size(), ty.type_size());
            match qw {
                None => blocks(x, y, bs, ts, |x, y| iq4(x, y, None)),
                Some(w) => blocks_w(x, y, w, bs, ts, |x, y, qw| iq4(x, y, Some(qw))),
            }
        }
        // llama.cpp's quantize_mxfp4 and quantize_tq*_0 ignore the importance matrix
        MXFP4 => blocks(x, y, 32, 17, mxfp4),
        TQ1_0 => blocks(x, y, QK_K, 54, tq1_0),
        // quantize() has checked that IQ1_S has its importance matrix
        IQ1_S => blocks_w(x, y, qw.unwrap(), QK_K, 50, |x, y, qw| {
            iq1::quantize_iq1_s(x, qw, y)
        }),
        IQ1_M => match qw {
            None => blocks(x, y, QK_K, 56, |x, y| iq1::quantize_iq1_m(x, None, y)),
            Some(w) => blocks_w(x, y, w, QK_K, 56, |x, y, qw| {
                iq1::quantize_iq1_m(x, Some(qw), y)
            }),
        },
        TQ2_0 => blocks(x, y, QK_K, 66, tq2_0),
        IQ3_XXS | IQ3_S | IQ2_XXS | IQ2_XS | IQ2_S => {
            let ts = ty.type_size();
            match qw {
                None => blocks(x, y, QK_K, ts, |x, y| {
                    iq_lattice::quantize_block(ty, x, None, y)
                }),
                Some(w) => blocks_w(x, y, w, QK_K, ts, |x, y, qw| {
                    iq_lattice::quantize_block(ty, x, Some(qw), y)
                }),
            }
        }
        _ => unreachable!("filtered by can_quantize"),
    }
}

/// A legacy 32-weight block type (Q4_0, Q4_1, Q5_0, Q5_1) of `ts` bytes per block: llama.cpp's
/// `quantize_row_*_ref` without an importance matrix, its `quantize_row_*_impl` (weighted by the
/// imatrix and the row's mean square) with one.
fn legacy(
    x: &[f32],
    y: &mut [u8],
    qw: Option<&[f32]>,
    ts: usize,
    plain: fn(&[f32], &mut [u8]),
    weighted: fn(&[f32], &mut [u8], &[f32], f32),
) {
    match qw {
        None => blocks(x, y, 32, ts, plain),
        Some(w) => {
            let sigma2 = row_sigma2(x);
            blocks_w(x, y, w, 32, ts, |x, y, qw| weighted(x, y, qw, sigma2))
        }
    }
}

fn blocks(x: &[f32], y: &mut [u8], bs: usize, ts: usize, f: impl Fn(&[f32], &mut [u8])) {
    for (xb, yb) in x.chunks_exact(bs).zip(y.chunks_exact_mut(ts)) {
        f(xb, yb)
    }
}

fn blocks_w(
    x: &[f32],
    y: &mut [u8],
    w: &[f32],
    bs: usize,
    ts: usize,
    f: impl Fn(&[f32], &mut [u8], &[f32]),
) {
    for ((xb, yb), wb) in x
        .chunks_exact(bs)
        .zip(y.chunks_exact_mut(ts))
        .zip(w.chunks_exact(bs))
    {
        f(xb, yb, wb)
    }
}

/// `sum(x^2) / n_per_row` over the whole row (the `sigma2` of the 32-block `_impl` quantizers).
fn row_sigma2(x: &[f32]) -> f32 {
    sum_sq(x) / x.len() as f32
}

/// `sum x^2`, accumulated in order (as llama.cpp's loops do, for identical rounding).
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for v in x {
        s += v * v;
    }
    s
}

/// llama.cpp's importance weights of a sub-block: `qw[j] * sqrt(sigma2 + x[j]^2)`.
fn imatrix_weights(x: &[f32], qw: &[f32], sigma2: f32, w: &mut [f32]) {
    for j in 0..w.len() {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
}

/// `nearest_int`: round half to even via the 1.5 * 2^23 trick (valid for |x| <= 4194303).
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0f32;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

#[inline]
fn fp16(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

#[inline]
fn fp16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

// ----------------------------------------------------------------------------------- 32-blocks

/// `quantize_row_q8_0_ref` (also what `quantize_q8_0` does with an imatrix).
fn q8_0_ref(x: &[f32], y: &mut [u8]) {
    let mut amax = 0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&fp16(d));
    for j in 0..32 {
        y[2 + j] = (x[j] * id).round() as i8 as u8;
    }
}

/// `quantize_row_q4_0_ref`.
fn q4_0_ref(x: &[f32], y: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&fp16(d));
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[16 + j] * id;
        let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
        y[2 + j] = xi0 | (xi1 << 4);
    }
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `quantize_row_q4_1_ref`.
fn q4_1_ref(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&fp16(d));
    y[2..4].copy_from_slice(&fp16(min));
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[16 + j] - min) * id;
        let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
        y[4 + j] = xi0 | (xi1 << 4);
    }
}

fn put_q5(qs: &mut [u8], qh_out: &mut [u8], l: &[u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        let (xi0, xi1) = (l[j], l[j + 16]);
        qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (((xi0 & 0x10) >> 4) as u32) << j;
        qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

/// `quantize_row_q5_0_ref`.
fn q5_0_ref(x: &[f32], y: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&fp16(d));
    let mut l = [0u8; 32];
    for j in 0..32 {
        l[j] = ((x[j] * id + 16.5) as i8).min(31) as u8;
    }
    let (qh, qs) = y[2..].split_at_mut(4);
    put_q5(qs, qh, &l);
}

/// `quantize_row_q5_1_ref`.
fn q5_1_ref(x: &[f32], y: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[0..2].copy_from_slice(&fp16(d));
    y[2..4].copy_from_slice(&fp16(min));
    let mut l = [0u8; 32];
    for j in 0..32 {
        l[j] = ((x[j] - min) * id + 0.5) as u8;
    }
    let (qh, qs) = y[4..].split_at_mut(4);
    put_q5(qs, qh, &l);
}

fn impl_weights(x: &[f32], qw: &[f32], sigma2: f32) -> [f32; 32] {
    let mut w = [0f32; 32];
    imatrix_weights(x, qw, sigma2, &mut w);
    w
}

/// `quantize_row_q4_0_impl` (one block).
fn q4_0_impl(x: &[f32], y: &mut [u8], qw: &[f32], sigma2: f32) {
    let w = impl_weights(x, qw, sigma2);
    let mut l = [0i8; 32];
    let d = make_qx_quants(32, 8, x, &mut l, 1, Some(&w));
    y[0..2].copy_from_slice(&fp16(d));
    for j in 0..16 {
        y[2 + j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
    }
}

/// `quantize_row_q4_1_impl` (one block).
fn q4_1_impl(x: &[f32], y: &mut [u8], qw: &[f32], sigma2: f32) {
    let w = impl_weights(x, qw, sigma2);
    let mut l = [0u8; 32];
    let mut laux = [0u8; 32];
    let (d, min) = make_qkx3_quants(32, 15, x, Some(&w), &mut l, &mut laux, -0.9, 0.05, 36);
    y[0..2].copy_from_slice(&fp16(d));
    y[2..4].copy_from_slice(&fp16(-min));
    for j in 0..16 {
        y[4 + j] = l[j] | (l[j + 16] << 4);
    }
}

/// `quantize_row_q5_0_impl` (one block).
fn q5_0_impl(x: &[f32], y: &mut [u8], qw: &[f32], sigma2: f32) {
    let w = impl_weights(x, qw, sigma2);
    let mut l = [0i8; 32];
    let d = make_qx_quants(32, 16, x, &mut l, 1, Some(&w));
    y[0..2].copy_from_slice(&fp16(d));
    let lu: [u8; 32] = l.map(|v| v as u8);
    let (qh, qs) = y[2..].split_at_mut(4);
    put_q5(qs, qh, &lu);
}

/// `quantize_row_q5_1_impl` (one block).
fn q5_1_impl(x: &[f32], y: &mut [u8], qw: &[f32], sigma2: f32) {
    let w = impl_weights(x, qw, sigma2);
    let mut l = [0u8; 32];
    let mut laux = [0u8; 32];
    let (d, min) = make_qkx3_quants(32, 31, x, Some(&w), &mut l, &mut laux, -0.9, 0.05, 36);
    y[0..2].copy_from_slice(&fp16(d));
    y[2..4].copy_from_slice(&fp16(-min));
    let (qh, qs) = y[4..].split_at_mut(4);
    put_q5(qs, qh, &l);
}

// ------------------------------------------------------------------------------- helper search

/// `make_qx_quants`: symmetric levels `L[i] in [0, 2*nmax)`, returns the scale.
fn make_qx_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    l_out: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in &x[..n] {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    // rmse_type is always 1 here (the only value the ported quantizers pass).
    debug_assert_eq!(rmse_type, 1);
    let weight = |i: usize| -> f32 {
        match qw {
            Some(w) => w[i],
            None => x[i] * x[i],
        }
    };
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = weight(i);
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_qkx2_quants` (`use_mad = false`): levels in `[0, nmax]` with a min; returns
/// `(scale, the_min)` where the value is `scale * L - the_min`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    mad: bool,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    qkx_search(
        n,
        nmax,
        x,
        &|i| weights[i],
        l_out,
        laux,
        rmin,
        rdelta,
        nstep,
        min,
        max,
        sum_w,
        sum_x,
        mad,
    )
}

/// `make_qkx3_quants` (`use_mad = false`; `weights = None` means `x^2`).
#[allow(clippy::too_many_arguments)]
fn make_qkx3_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let wf = |i: usize| match weights {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = wf(0);
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = wf(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    qkx_search(
        n, nmax, x, &wf, l_out, laux, rmin, rdelta, nstep, min, max, sum_w, sum_x, false,
    )
}

/// The common body of `make_qkx2_quants` / `make_qkx3_quants` after the min/max scan.
#[allow(clippy::too_many_arguments)]
fn qkx_search(
    n: usize,
    nmax: i32,
    x: &[f32],
    wf: &dyn Fn(usize) -> f32,
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    mut min: f32,
    max: f32,
    sum_w: f32,
    sum_x: f32,
    mad: bool,
) -> (f32, f32) {
    // `use_mad`: the absolute error instead of the squared one (Q2_K's reference).
    let err = |d: f32| if mad { d.abs() } else { d * d };
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let diff = scale * l_out[i] as f32 + min - x[i];
        best_error += wf(i) * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = wf(i);
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += wf(i) * err(diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qp_quants`: positive levels in `[0, nmax]` for the sub-block scales/mins of a k-quant
/// super-block, weighted by `quant_weights`.
fn make_qp_quants(n: usize, nmax: i32, x: &[f32], l_out: &mut [u8], qw: &[f32]) -> f32 {
    let mut max = 0f32;
    for &v in &x[..n] {
        max = max.max(v);
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    // `L` is `uint8_t` in llama.cpp: a negative level (a negative `x`, as IQ2_XXS's sign-parity
    // flip passes) is stored wrapped (-1 -> 255) and read back so, while the sums use the int
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    let mut l: Vec<i32> = vec![0; n];
    for i in 0..n {
        let li = nearest_int(iscale * x[i]).min(nmax);
        l[i] = li as u8 as i32;
        let w = qw[i];
        sumlx += w * x[i] * li as f32;
        suml2 += w * li as f32 * li as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let mut slx = sumlx - w * x[i] * l[i] as f32;
            let mut sl2 = suml2 - w * l[i] as f32 * l[i] as f32;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8 as i32;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for i in 0..n {
        l_out[i] = l[i] as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ------------------------------------------------------------------------------------ k-quants

/// Packs 6-bit scale `ls` and min `lm` of sub-block `j` into the 12-byte `scales` field.
fn put_scale_min_k4(scales: &mut [u8], j: usize, ls: u8, lm: u8) {
    if j < 4 {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        scales[j - 4] |= (ls >> 4) << 6;
        scales[j] |= (lm >> 4) << 6;
    }
}

fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K (`nmax = 15`) and Q5_K (`nmax = 31`) super-blocks: `quantize_row_q{4,5}_K_ref` without
/// an importance matrix, `quantize_row_q{4,5}_K_impl` with one.
fn qk_45(x: &[f32], y: &mut [u8], qw: Option<&[f32]>, nmax: i32) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let mut weights = [0f32; 32];
    let mut sc_bytes = [0u8; 12];
    let (d_val, m_val);
    match qw {
        None => {
            let (mut max_scale, mut max_min) = (0f32, 0f32);
            let (rmin, nstep) = if nmax == 15 {
                (-1.0f32, 20)
            } else {
                (-0.5f32, 15)
            };
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let av_x = (sum_sq(xs) / 32.0).sqrt();
                for (w, v) in weights.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
                let (s, m) = make_qkx2_quants(
                    32,
                    nmax,
                    xs,
                    &weights,
                    &mut l[32 * j..32 * j + 32],
                    &mut laux,
                    rmin,
                    0.1,
                    nstep,
                    false,
                );
                scales[j] = s;
                mins[j] = m;
                if s > max_scale {
                    max_scale = s;
                }
                if m > max_min {
                    max_min = m;
                }
            }
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            for j in 0..8 {
                let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
                put_scale_min_k4(&mut sc_bytes, j, ls, lm);
            }
            d_val = max_scale / 63.0;
            m_val = max_min / 63.0;
        }
        Some(qw) => {
            let sigma2 = 2.0 * sum_sq(&x[..QK_K]) / QK_K as f32;
            let mut sw = [0f32; 8];
            for j in 0..8 {
                let xs = &x[32 * j..32 * j + 32];
                let q = &qw[32 * j..32 * j + 32];
                imatrix_weights(xs, q, sigma2, &mut weights);
                let mut sumw = 0f32;
                for w in &weights {
                    sumw += w;
                }
                sw[j] = sumw;
                let (s, m) = make_qkx3_quants(
                    32,
                    nmax,
                    xs,
                    Some(&weights),
                    &mut l[32 * j..32 * j + 32],
                    &mut laux,
                    -0.9,
                    0.05,
                    36,
                );
                scales[j] = s;
                mins[j] = m;
            }
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            d_val = make_qp_quants(8, 63, &scales, &mut ls, &sw);
            m_val = make_qp_quants(8, 63, &mins, &mut lm, &sw);
            for j in 0..8 {
                put_scale_min_k4(&mut sc_bytes, j, ls[j].min(63), lm[j].min(63));
            }
        }
    }
    let d16 = fp16(d_val);
    let m16 = fp16(m_val);
    let d_f = fp16_round(d_val);
    let m_f = fp16_round(m_val);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &sc_bytes);
        let d = d_f * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_f * m as f32;
        for ii in 0..32 {
            let v = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = v.clamp(0, nmax) as u8;
        }
    }
    y[0..2].copy_from_slice(&d16);
    y[2..4].copy_from_slice(&m16);
    y[4..16].copy_from_slice(&sc_bytes);
    if nmax == 15 {
        let q = &mut y[16..144];
        for (c, j) in (0..QK_K).step_by(64).enumerate() {
            for k in 0..32 {
                q[32 * c + k] = l[j + k] | (l[j + k + 32] << 4);
            }
        }
    } else {
        let (qh, ql) = y[16..176].split_at_mut(32);
        qh.fill(0);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (c, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = l[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * c + j] = l1 | (l2 << 4);
            }
            m1 = m1.wrapping_shl(2);
            m2 = m2.wrapping_shl(2);
        }
    }
}

/// Q6_K super-block: `quantize_row_q6_K_ref` / `quantize_row_q6_K_impl`.
fn q6_k(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let w = qw.map(|q| &q[16 * ib..16 * ib + 16]);
        let scale = make_qx_quants(16, 32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..], 1, w);
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    y.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0f32 / max_scale;
    let d16 = fp16(1.0 / iscale);
    let d_f = fp16_round(1.0 / iscale);
    let mut sc = [0i8; 16];
    for ib in 0..16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    for j in 0..16 {
        let d = d_f * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let v = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (v + 32) as i8;
        }
    }
    let lu: Vec<u8> = l.iter().map(|&v| v as u8).collect();
    for (half, j) in (0..QK_K).step_by(128).enumerate() {
        let ql = &mut y[64 * half..64 * half + 64];
        for k in 0..32 {
            let q1 = lu[j + k] & 0xF;
            let q2 = lu[j + k + 32] & 0xF;
            let q3 = lu[j + k + 64] & 0xF;
            let q4 = lu[j + k + 96] & 0xF;
            ql[k] = q1 | (q3 << 4);
            ql[k + 32] = q2 | (q4 << 4);
        }
        let qh = &mut y[128 + 32 * half..128 + 32 * half + 32];
        for k in 0..32 {
            qh[k] = (lu[j + k] >> 4)
                | ((lu[j + k + 32] >> 4) << 2)
                | ((lu[j + k + 64] >> 4) << 4)
                | ((lu[j + k + 96] >> 4) << 6);
        }
    }
    for ib in 0..16 {
        y[192 + ib] = sc[ib] as u8;
    }
    y[208..210].copy_from_slice(&d16);
}

// ------------------------------------------------------------------------------------ Q2_K, Q3_K

/// `make_q3_quants` (the Q3_K reference's sub-block fit; `do_rmse` as the reference calls it).
fn make_q3_quants(n: usize, nmax: i32, x: &[f32], l_out: &mut [i8], do_rmse: bool) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in &x[..n] {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if do_rmse {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l_out[i] = l as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l_out[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != l_out[i] as i32 {
                        slx += w * x[i] * new_l as f32;
                        sl2 += w * new_l as f32 * new_l as f32;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l_out[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for v in &mut l_out[..n] {
            *v += nmax as i8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
    }
    1.0 / iscale
}

/// The 2-bit codes of a Q2_K/Q3_K super-block into `qs` (64 bytes): for each half of 128,
/// byte `l` holds columns `l`, `l + 32`, `l + 64`, `l + 96` in bit pairs 0-1 .. 6-7.
fn put_2bit(qs: &mut [u8], l: &[u8]) {
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        for k in 0..32 {
            qs[32 * h + k] = (l[j + k] & 3)
                | ((l[j + k + 32] & 3) << 2)
                | ((l[j + k + 64] & 3) << 4)
                | ((l[j + k + 96] & 3) << 6);
        }
    }
}

/// Q2_K super-block: `quantize_row_q2_K_ref` without an importance matrix, `quantize_row_q2_K_impl`
/// with one. Layout: `scales[16]` (low nibble scale, high nibble min), `qs[64]`, `d`, `dmin`.
fn q2_k(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0f32; 16];
    let mut mins = [0f32; 16];
    let mut scales = [0f32; 16];
    let mut sc = [0u8; 16];
    let (d_f, m_f);
    match qw {
        None => {
            let q4scale = 15f32;
            let (mut max_scale, mut max_min) = (0f32, 0f32);
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                for (w, v) in weights.iter_mut().zip(xs) {
                    *w = v.abs();
                }
                let (s, m) = make_qkx2_quants(
                    16,
                    3,
                    xs,
                    &weights,
                    &mut l[16 * j..16 * j + 16],
                    &mut laux,
                    -0.5,
                    0.1,
                    15,
                    true,
                );
                scales[j] = s;
                mins[j] = m;
                max_scale = max_scale.max(s);
                max_min = max_min.max(m);
            }
            let mut d = [0u8; 2];
            if max_scale > 0.0 {
                let iscale = q4scale / max_scale;
                for j in 0..16 {
                    sc[j] = nearest_int(iscale * scales[j]) as u8;
                }
                d = fp16(max_scale / q4scale);
            }
            let mut dm = fp16(0.0);
            if max_min > 0.0 {
                let iscale = q4scale / max_min;
                for j in 0..16 {
                    sc[j] |= (nearest_int(iscale * mins[j]) as u8) << 4;
                }
                dm = fp16(max_min / q4scale);
            }
            y[80..82].copy_from_slice(&d);
            y[82..84].copy_from_slice(&dm);
            d_f = f16::from_le_bytes(d).to_f32();
            m_f = f16::from_le_bytes(dm).to_f32();
        }
        Some(qw) => {
            let sigma2 = sum_sq(&x[..QK_K]) / QK_K as f32;
            let mut sw = [0f32; 16];
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                let q = &qw[16 * j..16 * j + 16];
                imatrix_weights(xs, q, sigma2, &mut weights);
                for w in &weights {
                    sw[j] += w;
                }
                let (s, m) = make_qkx3_quants(
                    16,
                    3,
                    xs,
                    Some(&weights),
                    &mut l[16 * j..16 * j + 16],
                    &mut laux,
                    -0.9,
                    0.05,
                    36,
                );
                scales[j] = s;
                mins[j] = m;
            }
            let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
            let dm = make_qp_quants(16, 15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(16, 15, &mins, &mut lm, &sw);
            y[80..82].copy_from_slice(&fp16(dm));
            y[82..84].copy_from_slice(&fp16(mm));
            d_f = fp16_round(dm);
            m_f = fp16_round(mm);
            for j in 0..16 {
                sc[j] = ls[j] | (lm[j] << 4);
            }
        }
    }
    for j in 0..16 {
        let d = d_f * (sc[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_f * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    y[0..16].copy_from_slice(&sc);
    put_2bit(&mut y[16..80], &l);
}

/// Packs the 6-bit scale `v` of Q3_K sub-block `j` into the 12-byte `scales` field.
fn put_q3_scale(sc: &mut [u8; 12], j: usize, v: u8) {
    if j < 8 {
        sc[j] = v & 0xF;
    } else {
        sc[j - 8] |= (v & 0xF) << 4;
    }
    sc[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
}

/// Q3_K super-block: `quantize_row_q3_K_ref` / `quantize_row_q3_K_impl`. Layout: `hmask[32]`
/// (the third bit of column `j` at bit `j / 32` of byte `j % 32`), `qs[64]`, `scales[12]` (sixteen
/// 6-bit signed scales), `d`.
fn q3_k(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut sc = [0u8; 12];
    let d16;
    match qw {
        None => {
            let (mut max_scale, mut amax) = (0f32, 0f32);
            for j in 0..16 {
                scales[j] = make_q3_quants(16, 4, &x[16 * j..16 * j + 16], &mut l[16 * j..], true);
                if scales[j].abs() > amax {
                    amax = scales[j].abs();
                    max_scale = scales[j];
                }
            }
            if max_scale != 0.0 {
                let iscale = -32.0f32 / max_scale;
                for j in 0..16 {
                    let v = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                    put_q3_scale(&mut sc, j, v as u8);
                }
                d16 = fp16(1.0 / iscale);
            } else {
                d16 = fp16(0.0);
            }
        }
        Some(qw) => {
            let sigma2 = 2.0 * sum_sq(&x[..QK_K]) / QK_K as f32;
            let mut weight = [0f32; 16];
            let mut sw = [0f32; 16];
            for j in 0..16 {
                let xs = &x[16 * j..16 * j + 16];
                let q = &qw[16 * j..16 * j + 16];
                imatrix_weights(xs, q, sigma2, &mut weight);
                let mut sumw = 0f32;
                for w in &weight {
                    sumw += w;
                }
                sw[j] = sumw;
                scales[j] = make_qx_quants(16, 4, xs, &mut l[16 * j..], 1, Some(&weight));
            }
            let mut ls = [0i8; 16];
            let d_block = make_qx_quants(16, 32, &scales, &mut ls, 1, Some(&sw));
            for j in 0..16 {
                put_q3_scale(&mut sc, j, ls[j] as u8);
            }
            d16 = fp16(d_block);
        }
    }
    let d_all = f16::from_le_bytes(d16).to_f32();
    for j in 0..16 {
        let low = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
        let s = (low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    let (hm, rest) = y.split_at_mut(32);
    hm.fill(0);
    let mut lu = [0u8; QK_K];
    for j in 0..QK_K {
        let mut v = l[j] as u8;
        if v > 3 {
            hm[j % 32] |= 1 << (j / 32);
            v -= 4;
        }
        lu[j] = v;
    }
    put_2bit(&mut rest[..64], &lu);
    rest[64..76].copy_from_slice(&sc);
    rest[76..78].copy_from_slice(&d16);
}

// ------------------------------------------------------------------------------- IQ4_NL, IQ4_XS

use crate::quants::KVALUES_IQ4NL;

/// `best_index_int8`: the index of the level nearest to `x` (ties to the upper one).
fn best_index_int8(val: &[i8; 16], x: f32) -> usize {
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < val[mu] as f32 - x {
        mu - 1
    } else {
        mu
    }
}

/// An IQ4_NL block (32 weights, 18 bytes) or an IQ4_XS super-block (256 weights, 136 bytes):
/// `quantize_row_iq4_nl_impl` with `ntry = 7`, as `quantize_iq4_nl` / `quantize_iq4_xs` call it
/// with and without an importance matrix (without one the weights are `x^2`).
fn iq4(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let values = &KVALUES_IQ4NL;
    let sbs = x.len();
    let nb = sbs / 32;
    let ntry = 7i32;
    let mut sigma2 = 0f32;
    for v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0f32 / sbs as f32;
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut weight = [0f32; 32];
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for ib in 0..nb {
        let xb = &x[32 * ib..32 * ib + 32];
        match qw {
            Some(q) => {
                let q = &q[32 * ib..32 * ib + 32];
                imatrix_weights(xb, q, sigma2, &mut weight);
            }
            None => {
                for j in 0..32 {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut d = -max / values[0] as f32;
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for j in 0..32 {
            let li = best_index_int8(values, id * xb[j]);
            l[32 * ib + j] = li as u8;
            let q = values[li] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry + values[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..32 {
                let q = values[best_index_int8(values, id * xb[j])] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let q4_at;
    if nb > 1 {
        let (mut sh, mut sl) = (0u16, [0u8; 4]);
        let d = -max_scale / 32.0;
        y[0..2].copy_from_slice(&fp16(d));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nb {
            let li = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * li as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for j in 0..32 {
                l[32 * ib + j] = best_index_int8(values, idl * x[32 * ib + j]) as u8;
            }
            let lu = (li + 32) as u8;
            if ib % 2 == 0 {
                sl[ib / 2] = lu & 0xF;
            } else {
                sl[ib / 2] |= (lu & 0xF) << 4;
            }
            sh |= ((lu >> 4) as u16) << (2 * (ib % 8));
        }
        y[2..4].copy_from_slice(&sh.to_le_bytes());
        y[4..8].copy_from_slice(&sl);
        q4_at = 8;
    } else {
        y[0..2].copy_from_slice(&fp16(scales[0]));
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for j in 0..sbs {
            l[j] = best_index_int8(values, id * x[j]) as u8;
        }
        q4_at = 2;
    }
    let q4 = &mut y[q4_at..q4_at + sbs / 2];
    for i in 0..sbs / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

// ------------------------------------------------------------------ carrying GPTQ codes over

/// Packs integer codes of one 32-column group (already on a ggml grid) into a block of `ty`
/// without re-rounding them: `Q4_1`/`Q5_1` from asymmetric 4/5-bit codes (`d = scale`,
/// `m = -scale * zero`), `Q4_0`/`Q5_0`/`Q8_0` from symmetric codes whose zero is the grid's
/// midpoint (8, 16, 128). The f16 rounding of `d` and `m` is the only change to the values.
/// Returns `None` when the codes do not fit `ty`.
pub fn pack_codes_block(ty: GgmlType, codes: &[u8], scale: f32, zero: u32) -> Option<Vec<u8>> {
    if codes.len() != 32 {
        return None;
    }
    let maxc = *codes.iter().max()? as u32;
    let mut y = vec![0u8; ty.type_size()];
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let lim = if ty == GgmlType::Q4_1 { 15 } else { 31 };
            if maxc > lim || zero > lim {
                return None;
            }
            y[0..2].copy_from_slice(&fp16(scale));
            y[2..4].copy_from_slice(&fp16(-scale * zero as f32));
            if ty == GgmlType::Q4_1 {
                for j in 0..16 {
                    y[4 + j] = codes[j] | (codes[j + 16] << 4);
                }
            } else {
                let (qh, qs) = y[4..].split_at_mut(4);
                put_q5(qs, qh, codes);
            }
        }
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let mid = if ty == GgmlType::Q4_0 { 8 } else { 16 };
            if maxc >= 2 * mid || zero != mid {
                return None;
            }
            y[0..2].copy_from_slice(&fp16(scale));
            if ty == GgmlType::Q4_0 {
                for j in 0..16 {
                    y[2 + j] = codes[j] | (codes[j + 16] << 4);
                }
            } else {
                let (qh, qs) = y[2..].split_at_mut(4);
                put_q5(qs, qh, codes);
            }
        }
        GgmlType::Q8_0 => {
            if zero != 128 {
                return None;
            }
            y[0..2].copy_from_slice(&fp16(scale));
            for j in 0..32 {
                y[2 + j] = (codes[j] as i32 - 128) as i8 as u8;
            }
        }
        _ => return None,
    }
    Some(y)
}

/// The ggml block type that holds `bits`-bit codes of 32-column groups exactly, if any.
pub fn carry_type(bits: u32, sym: bool) -> Option<GgmlType> {
    match (bits, sym) {
        (4, false) => Some(GgmlType::Q4_1),
        (5, false) => Some(GgmlType::Q5_1),
        (4, true) => Some(GgmlType::Q4_0),
        (5, true) => Some(GgmlType::Q5_0),
        (8, true) => Some(GgmlType::Q8_0),
        _ => None,
    }
}

/// Quantizes one block of `ty` (`x` has `ty.block_size()` values) as [`quantize`] does: with
/// `qw` (the block's importance weights; ignored by Q8_0, as llama.cpp ignores it) the weighted
/// `_impl` path, whose 32-blocks also take `sigma2`, the mean square of the whole row
/// (`sum(x^2) / n_per_row` in llama.cpp). Panics on a type outside [`GRID_TYPES`].
pub fn quantize_block(ty: GgmlType, x: &[f32], qw: Option<&[f32]>, sigma2: f32, y: &mut [u8]) {
    use GgmlType::*;
    let qw = if uses_imatrix(ty) { qw } else { None };
    match (ty, qw) {
        (Q8_0, _) => q8_0_ref(x, y),
        (Q4_0, None) => q4_0_ref(x, y),
        (Q4_1, None) => q4_1_ref(x, y),
        (Q5_0, None) => q5_0_ref(x, y),
        (Q5_1, None) => q5_1_ref(x, y),
        (Q4_0, Some(w)) => q4_0_impl(x, y, w, sigma2),
        (Q4_1, Some(w)) => q4_1_impl(x, y, w, sigma2),
        (Q5_0, Some(w)) => q5_0_impl(x, y, w, sigma2),
        (Q5_1, Some(w)) => q5_1_impl(x, y, w, sigma2),
        (Q4K, w) => qk_45(x, y, w, 15),
        (Q5K, w) => qk_45(x, y, w, 31),
        (Q6K, w) => q6_k(x, y, w),
        (Q2K, w) => q2_k(x, y, w),
        (Q3K, w) => q3_k(x, y, w),
        (IQ4_NL | IQ4_XS, w) => iq4(x, y, w),
        (MXFP4, _) => mxfp4(x, y),
        (TQ1_0, _) => tq1_0(x, y),
        (TQ2_0, _) => tq2_0(x, y),
        _ => unreachable!("{ty} is not a grid type"),
    }
}

// ------------------------------------------------------------------------------------- MXFP4

/// The 16 E2M1 values of MXFP4, doubled (`kvalues_mxfp4` as f32; the scale is halved).
pub static MXFP4_LEVELS: [f32; 16] = {
    let mut t = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = crate::iq_tables::KVALUES_MXFP4[i] as f32;
        i += 1;
    }
    t
};

use crate::quants::e8m0_to_fp32_half as e8m0_half;

/// `best_index_mxfp4`: the first level nearest to `x` at scale `d` (`|kvalues[i] * d - x|`).
fn mxfp4_index(x: f32, d: f32) -> u8 {
    let mut best = 0;
    let mut best_err = (MXFP4_LEVELS[0] * d - x).abs();
    for (i, &k) in MXFP4_LEVELS.iter().enumerate().skip(1) {
        let err = (k * d - x).abs();
        if err < best_err {
            best = i;
            best_err = err;
        }
    }
    best as u8
}

/// `quantize_row_mxfp4_ref` (one block of 32): the shared exponent from the block's largest
/// magnitude, `e = floor(log2(amax)) - 2 + 127`, then each weight's nearest E2M1 level.
fn mxfp4(x: &[f32], y: &mut [u8]) {
    let mut amax = 0f32;
    for v in &x[..32] {
        if amax < v.abs() {
            amax = v.abs();
        }
    }
    let e = if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0) as u8
    } else {
        0
    };
    let d = e8m0_half(e);
    y[0] = e;
    for j in 0..16 {
        y[1 + j] = mxfp4_index(x[j], d) | (mxfp4_index(x[16 + j], d) << 4);
    }
}

// ------------------------------------------------------------------------------ TQ1_0, TQ2_0

/// The ternary digit `lroundf(x * id) + 1` in `0..=2` (`lroundf` rounds half away from zero, as
/// `f32::round` does; `|x * id| <= 1` as `id` is the block's `1 / amax`).
#[inline]
fn trit(x: f32, id: f32) -> u8 {
    ((x * id).round() as i32 + 1) as u8
}

/// `d = amax` of a 256-block and its inverse (0 for an all-zero block), as
/// `quantize_row_tq*_0_ref` compute them.
fn tq_scale(x: &[f32]) -> (f32, f32) {
    let mut amax = 0f32;
    for v in &x[..QK_K] {
        amax = cmax(amax, v.abs());
    }
    (amax, if amax != 0.0 { 1.0 / amax } else { 0.0 })
}

/// ggml's `MAX(a, b)`: `a > b ? a : b`.
#[inline]
fn cmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `quantize_row_tq1_0_ref` (one block of 256): codes `0..=2` from [`tq_scale`], packed by
/// [`put_tq1_0`], `d` (f16) last.
fn tq1_0(x: &[f32], y: &mut [u8]) {
    let (d, id) = tq_scale(x);
    let mut codes = [0u8; QK_K];
    for (c, v) in codes.iter_mut().zip(x) {
        *c = trit(*v, id);
    }
    put_tq1_0(y, &codes);
    y[52..54].copy_from_slice(&fp16(d));
}

/// `block_tq1_0`'s code bytes: 5 trits per byte along 32 bytes (weights `m + 32 n` of the first
/// 160), then along 16 (`m + 16 n` of the next 80), then 4 per byte along the 4 `qh` bytes
/// (`j + 4 m` of the last 16, the first trit shifted to the top), each byte the base-3 number
/// scaled to 0..255 by a ceiling division (`(q * 256 + 242) / 243`).
fn put_tq1_0(y: &mut [u8], codes: &[u8]) {
    let pack = |digits: &mut dyn Iterator<Item = u8>, shift: bool| -> u8 {
        let mut q = 0u16;
        for t in digits {
            q = q * 3 + t as u16;
        }
        if shift {
            q *= 3;
        }
        (q * 256).div_ceil(243) as u8
    };
    for m in 0..32 {
        y[m] = pack(&mut (0..5).map(|n| codes[m + 32 * n]), false);
    }
    for m in 0..16 {
        y[32 + m] = pack(&mut (0..5).map(|n| codes[160 + m + 16 * n]), false);
    }
    for j in 0..4 {
        y[48 + j] = pack(&mut (0..4).map(|m| codes[240 + j + 4 * m]), true);
    }
}

/// `quantize_row_tq2_0_ref` (one block of 256): codes `0..=2` from [`tq_scale`], 4 per byte
/// ([`put_tq2_0`]), `d` (f16) last.
fn tq2_0(x: &[f32], y: &mut [u8]) {
    let (d, id) = tq_scale(x);
    let mut codes = [0u8; QK_K];
    for (c, v) in codes.iter_mut().zip(x) {
        *c = trit(*v, id);
    }
    put_tq2_0(y, &codes);
    y[64..66].copy_from_slice(&fp16(d));
}

/// `block_tq2_0`'s code bytes: per 128-weight half, 32 bytes, weight `32 n + m` in bits
/// `2n..2n+2` of byte `m`.
fn put_tq2_0(y: &mut [u8], codes: &[u8]) {
    for half in 0..2 {
        for m in 0..32 {
            let mut q = 0u8;
            for n in 0..4 {
                q |= (codes[128 * half + 32 * n + m] & 3) << (2 * n);
            }
            y[32 * half + m] = q;
        }
    }
}

/// The `sigma2` of [`quantize_block`] for a row.
pub fn row_mean_square(x: &[f32]) -> f32 {
    row_sigma2(x)
}

// ------------------------------------------------------------------------- the grid of a block

/// The grid of one sub-block of a ggml block: code `q` stands for `a * (q - zero) + b`.
///
/// Every type [`GRID_TYPES`] lists dequantizes this way, with `a` and `b` computed exactly as
/// llama.cpp's `dequantize_row_*` computes them (`a = d * sc`, `b = -(dmin * m)` for the K-quants;
/// `a = d`, `b = m` for Q4_1/Q5_1; `b = -0.0`, which adds nothing, where a type has no offset), so
/// [`Affine::value`] equals llama.cpp's dequantized weight bit for bit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub a: f32,
    pub b: f32,
    pub zero: i32,
    /// A codebook: code `q` stands for `a * table[q] + b` instead (IQ4_NL, IQ4_XS, MXFP4; the
    /// float formats' [`crate::minifloat::E2M1_LEVELS`] and [`crate::minifloat::E4M3_LEVELS`],
    /// whose codes are their bit patterns, chosen by round-to-nearest-even).
    pub table: Option<&'static [f32]>,
}

/// [`KVALUES_IQ4NL`] as f32, the levels of the IQ4 grids.
pub static IQ4_LEVELS: [f32; 16] = {
    let mut t = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    t
};

impl Default for Affine {
    fn default() -> Self {
        Affine {
            a: 0.0,
            b: -0.0,
            zero: 0,
            table: None,
        }
    }
}

impl Affine {
    /// The value of code `q`.
    #[inline]
    pub fn value(&self, q: u32) -> f32 {
        match self.table {
            None => self.a * (q as i32 - self.zero) as f32 + self.b,
            Some(t) => self.a * t[q as usize] + self.b,
        }
    }

    /// The nearest code to `x` in `0..=max`: `clamp(round((x - b) / a) + zero)`, rounding half to
    /// even as llama.cpp's `nearest_int` does (its K-quants choose their final codes exactly so,
    /// from the stored f16 scales). `None` when `a` is 0 (every code has the same value).
    #[inline]
    pub fn code(&self, x: f32, max: u32) -> Option<u32> {
        if self.a == 0.0 {
            return None;
        }
        if let Some(t) = self.table {
            if t.as_ptr() == MXFP4_LEVELS.as_ptr() {
                // an unsorted table: llama.cpp's scan (`best_index_mxfp4`), first of equals
                return Some(mxfp4_index(x, self.a) as u32);
            }
            // the float formats: `(x - b) / a` clamped and rounded to nearest even, as
            // compressed-tensors' `_quantize` (`x / scale`, clamp, cast) does
            if t.as_ptr() == crate::minifloat::E2M1_LEVELS.as_ptr() {
                return Some(crate::minifloat::e2m1_code((x - self.b) / self.a));
            }
            if t.as_ptr() == crate::minifloat::E4M3_LEVELS.as_ptr() {
                return Some(crate::minifloat::e4m3_code((x - self.b) / self.a));
            }
            // the nearest level, ties to the upper one (`best_index_int8`)
            let v = (x - self.b) / self.a;
            let i = t.partition_point(|&l| l <= v).clamp(1, t.len() - 1);
            return Some(if v - t[i - 1] < t[i] - v { i - 1 } else { i } as u32);
        }
        let q = ((x - self.b) / self.a).round_ties_even() + self.zero as f32;
        // NaN falls through `clamp` and converts to 0.
        Some(q.clamp(0.0, max as f32) as u32)
    }
}

/// Types whose blocks [`decode_block`] and [`encode_codes`] handle: every type [`quantize`]
/// writes except the float ones.
pub const GRID_TYPES: [GgmlType; 15] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
];

/// `(columns per sub-block, largest code)` of a grid type: the sub-blocks sharing one [`Affine`].
pub fn grid_shape(ty: GgmlType) -> Option<(usize, u32)> {
    use GgmlType::*;
    Some(match ty {
        Q8_0 => (32, 255),
        Q4_0 | Q4_1 => (32, 15),
        Q5_0 | Q5_1 => (32, 31),
        Q4K => (32, 15),
        Q5K => (32, 31),
        Q6K => (16, 63),
        Q2K => (16, 3),
        Q3K => (16, 7),
        IQ4_NL | IQ4_XS | MXFP4 => (32, 15),
        TQ1_0 | TQ2_0 => (QK_K, 2),
        _ => return None,
    })
}

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// The sub-block grids (`block_size / sub-block` of them) and the codes (`block_size`, in
/// column order) of one block of `ty`. Codes are unsigned: `q + 8`/`q + 16`/`q + 128` for
/// Q4_0/Q5_0/Q8_0 and `q + 32` for Q6_K, whose `zero` is that offset.
pub fn decode_block(ty: GgmlType, y: &[u8], affines: &mut [Affine], codes: &mut [u8]) {
    use GgmlType::*;
    let none = -0.0f32;
    match ty {
        Q8_0 => {
            affines[0] = Affine {
                a: f16_at(y, 0),
                b: none,
                zero: 128,
                table: None,
            };
            for j in 0..32 {
                codes[j] = (y[2 + j] as i8 as i32 + 128) as u8;
            }
        }
        Q4_0 | Q4_1 => {
            let (b, zero, qs) = match ty {
                Q4_0 => (none, 8, &y[2..18]),
                _ => (f16_at(y, 2), 0, &y[4..20]),
            };
            affines[0] = Affine {
                a: f16_at(y, 0),
                b,
                zero,
                table: None,
            };
            for j in 0..16 {
                codes[j] = qs[j] & 0xF;
                codes[j + 16] = qs[j] >> 4;
            }
        }
        Q5_0 | Q5_1 => {
            let (b, zero, o) = match ty {
                Q5_0 => (none, 16, 2),
                _ => (f16_at(y, 2), 0, 4),
            };
            affines[0] = Affine {
                a: f16_at(y, 0),
                b,
                zero,
                table: None,
            };
            let qh = u32::from_le_bytes([y[o], y[o + 1], y[o + 2], y[o + 3]]);
            let qs = &y[o + 4..o + 20];
            for j in 0..16 {
                codes[j] = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
                codes[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            }
        }
        Q4K | Q5K => {
            let d = f16_at(y, 0);
            let dmin = f16_at(y, 2);
            for (j, aff) in affines.iter_mut().enumerate().take(8) {
                let (sc, m) = get_scale_min_k4(j, &y[4..16]);
                *aff = Affine {
                    a: d * sc as f32,
                    b: -(dmin * m as f32),
                    zero: 0,
                    table: None,
                };
            }
            let (qs, qh) = if ty == Q4K {
                (&y[16..144], None)
            } else {
                (&y[48..176], Some(&y[16..48]))
            };
            for c in 0..4 {
                for l in 0..32 {
                    let q = qs[32 * c + l];
                    let (mut lo, mut hi) = (q & 0xF, q >> 4);
                    if let Some(qh) = qh {
                        lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                    }
                    codes[64 * c + l] = lo;
                    codes[64 * c + 32 + l] = hi;
                }
            }
        }
        Q6K => {
            let d = f16_at(y, 208);
            for (j, aff) in affines.iter_mut().enumerate().take(16) {
                *aff = Affine {
                    a: d * y[192 + j] as i8 as f32,
                    b: none,
                    zero: 32,
                    table: None,
                };
            }
            for half in 0..2 {
                let ql = &y[64 * half..64 * half + 64];
                let qh = &y[128 + 32 * half..128 + 32 * half + 32];
                let c = &mut codes[128 * half..128 * half + 128];
                for l in 0..32 {
                    c[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    c[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    c[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    c[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
        Q2K => {
            let d = f16_at(y, 80);
            let dmin = f16_at(y, 82);
            for (j, aff) in affines.iter_mut().enumerate().take(16) {
                let sc = y[j];
                *aff = Affine {
                    a: d * (sc & 0xF) as f32,
                    b: -(dmin * (sc >> 4) as f32),
                    zero: 0,
                    table: None,
                };
            }
            for c in 0..QK_K {
                let (h, s, l) = (c / 128, (c % 128) / 32, c % 32);
                codes[c] = (y[16 + 32 * h + l] >> (2 * s)) & 3;
            }
        }
        Q3K => {
            let sc = &y[96..108];
            let d = f16_at(y, 108);
            for (j, aff) in affines.iter_mut().enumerate().take(16) {
                let low = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
                let s = (low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
                *aff = Affine {
                    a: d * s as f32,
                    b: none,
                    zero: 4,
                    table: None,
                };
            }
            for c in 0..QK_K {
                let (h, s, l) = (c / 128, (c % 128) / 32, c % 32);
                let low = (y[32 + 32 * h + l] >> (2 * s)) & 3;
                let high = (y[c % 32] >> (c / 32)) & 1;
                codes[c] = low | (high << 2);
            }
        }
        TQ1_0 | TQ2_0 => {
            // dequantize_row_tq*_0: (q - 1) * d, d (f16) after the codes
            affines[0] = Affine {
                a: f16_at(y, ty.type_size() - 2),
                b: none,
                zero: 1,
                table: None,
            };
            if ty == TQ2_0 {
                for c in 0..QK_K {
                    let (h, n, m) = (c / 128, (c % 128) / 32, c % 32);
                    codes[c] = (y[32 * h + m] >> (2 * n)) & 3;
                }
            } else {
                // the trit of digit p of a byte q: ((q * 3^p mod 256) * 3) >> 8, in the
                // dequantizer's order (digits outer, bytes inner) per span
                const POW3: [u8; 5] = [1, 3, 9, 27, 81];
                let mut o = 0;
                for (lo, hi, digits) in [(0, 32, 5), (32, 48, 5), (48, 52, 4)] {
                    for &p in &POW3[..digits] {
                        for &q in &y[lo..hi] {
                            codes[o] = ((q.wrapping_mul(p) as u16 * 3) >> 8) as u8;
                            o += 1;
                        }
                    }
                }
            }
        }
        MXFP4 => {
            affines[0] = Affine {
                a: e8m0_half(y[0]),
                b: none,
                zero: 0,
                table: Some(&MXFP4_LEVELS),
            };
            for j in 0..16 {
                codes[j] = y[1 + j] & 0xF;
                codes[16 + j] = y[1 + j] >> 4;
            }
        }
        IQ4_NL | IQ4_XS => {
            let d = f16_at(y, 0);
            let (nb, o) = if ty == IQ4_NL { (1, 2) } else { (8, 8) };
            let sh = u16::from_le_bytes([y[2], y[3]]) as i32;
            for (ib, aff) in affines.iter_mut().enumerate().take(nb) {
                let a = if ty == IQ4_NL {
                    d
                } else {
                    let ls = ((y[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xF)
                        | (((sh >> (2 * ib)) & 3) << 4);
                    d * (ls - 32) as f32
                };
                *aff = Affine {
                    a,
                    b: none,
                    zero: 0,
                    table: Some(&IQ4_LEVELS),
                };
                for j in 0..16 {
                    let q = y[o + 16 * ib + j];
                    codes[32 * ib + j] = q & 0xF;
                    codes[32 * ib + 16 + j] = q >> 4;
                }
            }
        }
        _ => unreachable!("{ty} is not a grid type"),
    }
}

/// Writes `codes` (as [`decode_block`] gives them) into the code bits of the block `y` of `ty`,
/// keeping its scales: the exact inverse of [`decode_block`]'s codes.
pub fn encode_codes(ty: GgmlType, y: &mut [u8], codes: &[u8]) {
    use GgmlType::*;
    match ty {
        Q8_0 => {
            for j in 0..32 {
                y[2 + j] = (codes[j] as i32 - 128) as i8 as u8;
            }
        }
        Q4_0 | Q4_1 => {
            let o = if ty == Q4_0 { 2 } else { 4 };
            for j in 0..16 {
                y[o + j] = codes[j] | (codes[j + 16] << 4);
            }
        }
        Q5_0 | Q5_1 => {
            let o = if ty == Q5_0 { 2 } else { 4 };
            let (qh, qs) = y[o..o + 20].split_at_mut(4);
            put_q5(qs, qh, codes);
        }
        Q4K | Q5K => {
            let (qh, qs) = if ty == Q4K {
                (None, &mut y[16..144])
            } else {
                let (qh, qs) = y[16..176].split_at_mut(32);
                qh.fill(0);
                (Some(qh), qs)
            };
            let mut qh = qh;
            for c in 0..4 {
                for l in 0..32 {
                    let (lo, hi) = (codes[64 * c + l], codes[64 * c + 32 + l]);
                    qs[32 * c + l] = (lo & 0xF) | ((hi & 0xF) << 4);
                    if let Some(qh) = qh.as_deref_mut() {
                        qh[l] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
                    }
                }
            }
        }
        Q6K => {
            for half in 0..2 {
                let c = &codes[128 * half..128 * half + 128];
                for l in 0..32 {
                    y[64 * half + l] = (c[l] & 0xF) | ((c[l + 64] & 0xF) << 4);
                    y[64 * half + l + 32] = (c[l + 32] & 0xF) | ((c[l + 96] & 0xF) << 4);
                    y[128 + 32 * half + l] = (c[l] >> 4)
                        | ((c[l + 32] >> 4) << 2)
                        | ((c[l + 64] >> 4) << 4)
                        | ((c[l + 96] >> 4) << 6);
                }
            }
        }
        Q2K => {
            put_2bit(&mut y[16..80], codes);
        }
        Q3K => {
            let (hm, rest) = y.split_at_mut(32);
            hm.fill(0);
            for (c, &q) in codes.iter().enumerate().take(QK_K) {
                hm[c % 32] |= (q >> 2) << (c / 32);
            }
            put_2bit(&mut rest[..64], codes);
        }
        MXFP4 => {
            for j in 0..16 {
                y[1 + j] = codes[j] | (codes[16 + j] << 4);
            }
        }
        IQ4_NL | IQ4_XS => {
            let o = if ty == IQ4_NL { 2 } else { 8 };
            for (ib, c) in codes.chunks(32).enumerate() {
                for j in 0..16 {
                    y[o + 16 * ib + j] = c[j] | (c[16 + j] << 4);
                }
            }
        }
        TQ1_0 => put_tq1_0(y, codes),
        TQ2_0 => put_tq2_0(y, codes),
        _ => unreachable!("{ty} is not a grid type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quants::dequantize;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = shrink_calib_free_rng(seed);
        (0..n)
            .map(|i| {
                let u = s() as f32 / u32::MAX as f32 - 0.5;
                // a few outliers, as real weights have (k-quants store 6-bit sub-block scales
                // relative to the super-block's largest, so far larger outliers zero whole
                // sub-blocks in llama.cpp's reference too)
                if i % 97 == 5 {
                    u * 0.4
                } else {
                    u * 0.1
                }
            })
            .collect()
    }

    fn shrink_calib_free_rng(seed: u64) -> impl FnMut() -> u32 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u32
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(2.4999), 2);
        assert_eq!(nearest_int(-7.6), -8);
    }

    /// Every type: quantize, dequantize with shrink's bit-exact dequantizer, and check the error
    /// is within the grid's resolution (and that the imatrix path differs but is no worse where
    /// the weights say so).
    #[test]
    fn round_trip_error_is_bounded() {
        let n_per_row = 512;
        let x = data(n_per_row * 8, 1);
        // the lattice types have no per-weight bound (a point of 4 or 8 weights is one of a few
        // hundred or thousand); iq_lattice's and iq1's tests bound their RMS error
        for ty in QUANT_TYPES.into_iter().filter(|t| {
            !LATTICE_TYPES.contains(t) && !matches!(t, GgmlType::IQ1_S | GgmlType::IQ1_M)
        }) {
            for imat in [false, true] {
                let w: Vec<f32> = (0..n_per_row).map(|i| 1.0 + (i % 7) as f32).collect();
                let q = quantize(ty, &x, n_per_row, imat.then_some(&w[..])).unwrap();
                assert_eq!(q.len(), ty.bytes_for(x.len() as u64).unwrap() as usize);
                let mut y = vec![0f32; x.len()];
                dequantize(ty, &q, &mut y).unwrap();
                let bits = match ty {
                    GgmlType::F32 => 24.0,
                    GgmlType::F16 => 11.0,
                    GgmlType::Q8_0 => 7.0,
                    GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K => 3.0,
                    GgmlType::IQ4_NL | GgmlType::IQ4_XS => 3.0,
                    GgmlType::Q2K | GgmlType::Q3K => 2.0,
                    // E2M1 under a power-of-two scale: the largest weights clip to 1.5 * 2^k
                    GgmlType::MXFP4 => 2.0,
                    GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => 4.0,
                    // ternary at d = the 256-block's amax: half a step is amax / 2
                    GgmlType::TQ1_0 | GgmlType::TQ2_0 => 2.0,
                    _ => 5.0,
                };
                let bs = if ty.block_size() == 1 {
                    32
                } else if matches!(ty, GgmlType::TQ1_0 | GgmlType::TQ2_0) {
                    QK_K
                } else {
                    32.min(ty.block_size())
                };
                for (xb, yb) in x.chunks(bs).zip(y.chunks(bs)) {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    for (a, b) in xb.iter().zip(yb) {
                        assert!(
                            (a - b).abs() <= amax / 2f32.powf(bits - 1.0) * 1.05 + 1e-6,
                            "{ty} imatrix={imat}: {a} -> {b} (block amax {amax})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(quantize(GgmlType::Q4K, &[0.0; 576], 576, None).is_err());
        assert!(quantize(GgmlType::Q4_0, &[0.0; 64], 32, Some(&[1.0; 16])).is_err());
        assert!(quantize(GgmlType::Q4_0, &[f32::NAN; 32], 32, None).is_err());
        assert!(quantize(GgmlType::IQ2_XXS, &[0.0; 256], 256, None).is_err());
        assert!(quantize(GgmlType::IQ1_S, &[0.0; 256], 256, None).is_err());
        assert!(quantize(GgmlType::IQ1_S, &[0.0; 256], 256, Some(&[1.0; 256])).is_ok());
        assert!(quantize(GgmlType::BF16, &[0.0; 256], 256, None).is_err());
        // llama.cpp asserts an importance matrix for IQ2_XS
        assert!(quantize(GgmlType::IQ2_XS, &[0.0; 256], 256, None).is_err());
        assert!(quantize(GgmlType::IQ2_XS, &[0.0; 256], 256, Some(&[1.0; 256])).is_ok());
        assert_eq!(fallback_type(GgmlType::Q4K, 576), GgmlType::Q5_0);
        assert_eq!(fallback_type(GgmlType::Q6K, 576), GgmlType::Q8_0);
        assert_eq!(fallback_type(GgmlType::Q4K, 1536), GgmlType::Q4K);
    }

    #[test]
    fn all_zero_blocks_stay_zero() {
        for ty in QUANT_TYPES {
            let w = requires_imatrix(ty).then_some(&[1.0; 256][..]);
            let q = quantize(ty, &[0.0; 256], 256, w).unwrap();
            let mut y = vec![1f32; 256];
            dequantize(ty, &q, &mut y).unwrap();
            assert!(y.iter().all(|v| *v == 0.0), "{ty}");
        }
    }

    #[test]
    fn carried_codes_dequantize_to_scale_times_code_minus_zero() {
        let codes: Vec<u8> = (0..32).map(|i| (i * 7 % 16) as u8).collect();
        let (scale, zero) = (0.013671875f32, 6u32); // exactly representable in f16
        let b = pack_codes_block(GgmlType::Q4_1, &codes, scale, zero).unwrap();
        let mut y = vec![0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y).unwrap();
        for (c, v) in codes.iter().zip(&y) {
            assert_eq!(*v, scale * (*c as f32 - zero as f32));
        }
        assert!(pack_codes_block(GgmlType::Q4_0, &codes, scale, zero).is_none());
        let b = pack_codes_block(GgmlType::Q4_0, &codes, scale, 8).unwrap();
        dequantize(GgmlType::Q4_0, &b, &mut y).unwrap();
        for (c, v) in codes.iter().zip(&y) {
            assert_eq!(*v, scale * (*c as f32 - 8.0));
        }
    }

    /// For every grid type, with and without an importance matrix: the decoded grids give the
    /// dequantized weights bit for bit, and re-encoding the decoded codes gives the same bytes.
    #[test]
    fn block_grids_decode_exactly_and_encode_back() {
        let n = 512;
        let x = data(n * 4, 7);
        let w: Vec<f32> = (0..n).map(|i| 0.5 + (i % 5) as f32).collect();
        for ty in GRID_TYPES {
            let (sub, max) = grid_shape(ty).unwrap();
            let bs = ty.block_size();
            for imat in [None, Some(&w[..])] {
                let q = quantize(ty, &x, n, imat).unwrap();
                let mut y = vec![0f32; x.len()];
                dequantize(ty, &q, &mut y).unwrap();
                let mut aff = vec![Affine::default(); bs / sub];
                let mut codes = vec![0u8; bs];
                for (k, blk) in q.chunks_exact(ty.type_size()).enumerate() {
                    decode_block(ty, blk, &mut aff, &mut codes);
                    for (j, &c) in codes.iter().enumerate() {
                        assert!(c as u32 <= max, "{ty}: code {c}");
                        let v = aff[j / sub].value(c as u32);
                        assert_eq!(
                            v.to_bits(),
                            y[k * bs + j].to_bits(),
                            "{ty} block {k} col {j}"
                        );
                        // re-rounding the value with the same grid gives the code back
                        if aff[j / sub].a != 0.0 {
                            assert_eq!(aff[j / sub].code(v, max), Some(c as u32), "{ty}");
                        }
                    }
                    let mut b2 = blk.to_vec();
                    encode_codes(ty, &mut b2, &vec![0u8; bs]);
                    encode_codes(ty, &mut b2, &codes);
                    assert_eq!(b2, blk, "{ty} block {k}");
                }
            }
        }
    }

    #[test]
    fn block_by_block_equals_whole_rows() {
        let n = 512;
        let x = data(n * 3, 11);
        let w: Vec<f32> = (0..n).map(|i| 1.0 + (i % 3) as f32).collect();
        for ty in GRID_TYPES {
            for imat in [None, Some(&w[..])] {
                let q = quantize(ty, &x, n, imat).unwrap();
                let (bs, ts) = (ty.block_size(), ty.type_size());
                let mut y = vec![0u8; q.len()];
                for (r, row) in x.chunks(n).enumerate() {
                    let s2 = row_mean_square(row);
                    for k in 0..n / bs {
                        let o = (r * n / bs + k) * ts;
                        let qw = imat.map(|w| &w[k * bs..(k + 1) * bs]);
                        quantize_block(ty, &row[k * bs..(k + 1) * bs], qw, s2, &mut y[o..o + ts]);
                    }
                }
                assert_eq!(y, q, "{ty} imatrix {}", imat.is_some());
            }
        }
    }
}
