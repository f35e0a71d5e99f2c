//! IQ1_S and IQ1_M: 256 weights as 32 points of llama.cpp's 2048-point grid of 8 values in
//! `{-1, 0, 1}`, each shifted by `±IQ1S_DELTA`, under a 3-bit scale per 32 (IQ1_S) or 16 (IQ1_M)
//! weights.
//!
//! A port of ggml-quants.c's (llama.cpp, MIT licence; the tree vendored in llama-cpp-python
//! 0.3.36) `quantize_row_iq1_s_impl`, `quantize_row_iq1_m_impl` and `iq1_find_best_neighbour2`,
//! followed line by line in f32 and in the reference's order so that the bytes equal llama.cpp's.
//! Both solve the weighted least-squares split of a sub-block into the three levels exactly
//! (sorted values, prefix sums, every pair of boundaries), then move each 8-value point that is
//! off the grid to its best listed neighbour (`iq2xs_init_impl`'s lists, [`super::iq_lattice`]).
//!
//! One difference from the reference: it sorts a sub-block's values with glibc's `qsort`, which
//! leaves equal values in an order the C standard does not fix; this sorts stably (index order
//! among equal values), as glibc's merge sort does.

use super::iq_lattice::{lattice, Lattice};
use super::{fp16, nearest_int, QK_K};
use crate::gguf::GgmlType;

/// `IQ1S_DELTA`, `IQ1M_DELTA` (ggml-common.h): the shift of the grid values.
const DELTA: f32 = 0.125;
const GROUP_MAX_EPS_IQ1_S: f32 = 1e-12;
const GROUP_MAX_EPS_IQ1_M: f32 = 1e-7;
/// The level values with the delta added (`x_p`) or subtracted (`x_m`).
const X_P: [f32; 3] = [-1.0 + DELTA, DELTA, 1.0 + DELTA];
const X_M: [f32; 3] = [-1.0 - DELTA, -DELTA, 1.0 - DELTA];

#[inline]
fn cmax(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The indices of `xb` in ascending order of value (`qsort` with `iq1_sort_helper`; stable).
fn ascending<const N: usize>(xb: &[f32]) -> [usize; N] {
    let mut idx: [usize; N] = std::array::from_fn(|j| j);
    idx.sort_by(|&a, &b| {
        xb[a]
            .partial_cmp(&xb[b])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    idx
}

/// The levels of the split `besti1 <= besti2` of the values sorted by `idx`: 0 below `besti1`,
/// 1 up to `besti2`, 2 above; mirrored (`2 - l`) for a negative scale.
fn split_levels<const N: usize>(
    idx: &[usize; N],
    besti1: i32,
    besti2: i32,
    mirror: bool,
) -> [i8; N] {
    let mut lv = [0i8; N];
    for (j, &i) in idx.iter().enumerate() {
        let l = if (j as i32) < besti1 {
            0
        } else if (j as i32) < besti2 {
            1
        } else {
            2
        };
        lv[i] = if mirror { 2 - l } else { l };
    }
    lv
}

/// The grid index of each 8-value part of `lv` (levels `0..3`), moving parts off the grid to
/// their best neighbour at `scale` (`xx(k)`: the shifted levels of part `k`); whether all were
/// on the grid.
fn to_grid(
    lat: &Lattice,
    lv: &mut [i8],
    xb: &[f32],
    weight: &[f32],
    scale: f32,
    xx: impl Fn(usize) -> &'static [f32; 3],
    index: &mut [u16],
) -> bool {
    let mut all_on_grid = true;
    for k in 0..lv.len() / 8 {
        let u = lat.pack(&lv[8 * k..]);
        let mut gi = lat.map[u];
        if gi < 0 {
            all_on_grid = false;
            let xg = xx(k);
            gi = lat.best_neighbour_by(
                u,
                &xb[8 * k..],
                &weight[8 * k..],
                scale,
                &mut lv[8 * k..],
                |g| xg[((g - 1) / 2) as usize],
            ) as i32;
        }
        index[k] = gi as u16;
    }
    all_on_grid
}

/// `sum w q x / sum w q^2` over the chosen points (`q = xx(k)[level]`), when both are positive.
fn refit(
    lat: &Lattice,
    index: &[u16],
    xb: &[f32],
    weight: &[f32],
    xx: impl Fn(usize) -> &'static [f32; 3],
    scale: f32,
) -> f32 {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for (k, &gi) in index.iter().enumerate() {
        let pg = &lat.grid[gi as usize];
        for j in 0..8 {
            let w = weight[8 * k + j];
            let q = xx(k)[((pg[j] - 1) / 2) as usize];
            sumqx += w * q * xb[8 * k + j];
            sumq2 += w * q * q;
        }
    }
    if sumqx > 0.0 && sumq2 > 0.0 {
        sumqx / sumq2
    } else {
        scale
    }
}

/// One 256-weight block of IQ1_S (`block_iq1_s`: `d` f16, `qs[32]` low index bytes, `qh[8]` u16
/// of four 3-bit high index bits, the 3-bit scale at bit 12 and the delta's sign at bit 15) from
/// `x` and its importances `qw` (required, as in llama.cpp).
pub(super) fn quantize_iq1_s(x: &[f32], qw: &[f32], y: &mut [u8]) {
    const BS: usize = 32;
    let lat = lattice(GgmlType::IQ1_S);
    y.fill(0);
    let mut sumx2 = 0f32;
    for i in 0..QK_K {
        sumx2 += x[i] * x[i];
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let mut scales = [0f32; QK_K / BS];
    let mut shifts = [0i8; QK_K / BS];
    let mut qh = [0u16; QK_K / BS];
    let mut max_scale = 0f32;
    for ib in 0..QK_K / BS {
        let xb = &x[BS * ib..BS * (ib + 1)];
        let qwb = &qw[BS * ib..BS * (ib + 1)];
        let mut weight = [0f32; BS];
        for i in 0..BS {
            weight[i] = qwb[i] * (sigma2 + xb[i] * xb[i]).sqrt();
        }
        let mut max = xb[0].abs();
        for i in 1..BS {
            max = cmax(max, xb[i].abs());
        }
        if max < GROUP_MAX_EPS_IQ1_S {
            scales[ib] = 0.0;
            shifts[ib] = 1;
            continue;
        }
        let idx = ascending::<BS>(xb);
        let mut sumx = [0f32; BS + 1];
        let mut sumw = [0f32; BS + 1];
        for j in 0..BS {
            let i = idx[j];
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        let (mut best_score, mut scale) = (-f32::MAX, max);
        let (mut besti1, mut besti2, mut best_shift) = (-1i32, -1i32, 0i32);
        for i1 in 0..=BS {
            for i2 in i1..=BS {
                for (xs, shift) in [(&X_P, 1), (&X_M, -1)] {
                    let sumqx = (sumx[i1] - sumx[0]) * xs[0]
                        + (sumx[i2] - sumx[i1]) * xs[1]
                        + (sumx[BS] - sumx[i2]) * xs[2];
                    let sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0]
                        + (sumw[i2] - sumw[i1]) * xs[1] * xs[1]
                        + (sumw[BS] - sumw[i2]) * xs[2] * xs[2];
                    if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                        scale = sumqx / sumq2;
                        best_score = scale * sumqx;
                        (besti1, besti2, best_shift) = (i1 as i32, i2 as i32, shift);
                    }
                }
            }
        }
        if besti1 < 0 || besti2 < 0 || best_shift == 0 {
            scales[ib] = 0.0;
            shifts[ib] = 1;
            continue;
        }
        let mut lv = split_levels::<BS>(&idx, besti1, besti2, scale < 0.0);
        if scale < 0.0 {
            scale = -scale;
            best_shift = -best_shift;
        }
        let xx: &'static [f32; 3] = if best_shift == 1 { &X_P } else { &X_M };
        let mut index = [0u16; BS / 8];
        if !to_grid(lat, &mut lv, xb, &weight, scale, |_| xx, &mut index) {
            scale = refit(lat, &index, xb, &weight, |_| xx, scale);
        }
        let mut h = 0u16;
        for k in 0..BS / 8 {
            y[2 + (BS / 8) * ib + k] = index[k] as u8;
            h |= (index[k] >> 8) << (3 * k);
        }
        qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = best_shift as i8;
        max_scale = cmax(max_scale, scale);
    }
    if max_scale != 0.0 {
        let d = max_scale / 15.0;
        // 1.125: llama.cpp's fudge factor
        y[0..2].copy_from_slice(&fp16(d * 1.125));
        let id = 1.0 / d;
        for ib in 0..QK_K / BS {
            let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
            if shifts[ib] == -1 {
                l |= 8;
            }
            qh[ib] |= l << 12;
        }
    }
    for ib in 0..QK_K / BS {
        y[34 + 2 * ib..36 + 2 * ib].copy_from_slice(&qh[ib].to_le_bytes());
    }
}

/// One 256-weight block of IQ1_M (`block_iq1_m`: `qs[32]` low index bytes, `qh[16]` a nibble
/// per index (3 high bits, the delta's sign), `scales` four u16 of 3-bit scales per 16 weights
/// whose top nibbles hold the f16 `d`) from `x` and, when given, its importances `qw` (without,
/// the weights are `x^2`).
pub(super) fn quantize_iq1_m(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    const BS: usize = 16;
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let lat = lattice(GgmlType::IQ1_M);
    y.fill(0);
    let mut sumx2 = 0f32;
    for i in 0..QK_K {
        sumx2 += x[i] * x[i];
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    let weights = |ib: usize, weight: &mut [f32; BS]| {
        let xb = &x[BS * ib..BS * (ib + 1)];
        match qw {
            Some(qw) => {
                for i in 0..BS {
                    weight[i] = qw[BS * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt();
                }
            }
            None => {
                for i in 0..BS {
                    weight[i] = xb[i] * xb[i];
                }
            }
        }
    };
    // the shifted levels of part k (0: first 8, 1: last 8) under shift code s: 0 = (+, +),
    // 1 = (+, -), 2 = (-, +), 3 = (-, -)
    let xx = |s: i32, k: usize| -> &'static [f32; 3] {
        let plus = if k == 0 { s < 2 } else { s % 2 == 0 };
        if plus {
            &X_P
        } else {
            &X_M
        }
    };
    let mut scales = [0f32; QK_K / BS];
    let mut shifts = [0i32; QK_K / BS];
    let mut max_scale = 0f32;
    for ib in 0..QK_K / BS {
        let xb = &x[BS * ib..BS * (ib + 1)];
        let mut weight = [0f32; BS];
        weights(ib, &mut weight);
        let mut max = xb[0].abs();
        for i in 1..BS {
            max = cmax(max, xb[i].abs());
        }
        if max < GROUP_MAX_EPS_IQ1_M {
            scales[ib] = 0.0;
            shifts[ib] = 0;
            continue;
        }
        let idx = ascending::<BS>(xb);
        let (mut best_score, mut scale) = (-f32::MAX, max);
        let (mut besti1, mut besti2, mut best_k) = (-1i32, -1i32, -1i32);
        // prefix sums per half (each half has its own shift); the 3-group sums of a split are
        // `T v[2] - px[i1] - px[i2]`, as v[0] - v[1] = v[1] - v[2] = -1
        let mut px = [[0f32; BS + 1]; 2];
        let mut pw = [[0f32; BS + 1]; 2];
        for j in 0..BS {
            let i = idx[j];
            let h = if i < BS / 2 { 0 } else { 1 };
            px[h][j + 1] = px[h][j] + weight[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + weight[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        let txs = [px[0][BS], px[1][BS]];
        let tws = [pw[0][BS], pw[1][BS]];
        let (p2, m2) = (X_P[2], X_M[2]);
        let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
        let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
        let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
        let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
        for i1 in 0..=BS {
            for i2 in i1..=BS {
                let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                    ([0f32; 2], [0f32; 2], [0f32; 2], [0f32; 2]);
                for h in 0..2 {
                    let sx = px[h][i1] + px[h][i2];
                    qx_p[h] = txs[h] * p2 - sx;
                    qx_m[h] = txs[h] * m2 - sx;
                    q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                let sumqx = [
                    qx_p[0] + qx_p[1],
                    qx_p[0] + qx_m[1],
                    qx_m[0] + qx_p[1],
                    qx_m[0] + qx_m[1],
                ];
                let sumq2 = [
                    q2_p[0] + q2_p[1],
                    q2_p[0] + q2_m[1],
                    q2_m[0] + q2_p[1],
                    q2_m[0] + q2_m[1],
                ];
                for k in 0..4 {
                    if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                        scale = sumqx[k] / sumq2[k];
                        best_score = scale * sumqx[k];
                        (besti1, besti2, best_k) = (i1 as i32, i2 as i32, k as i32);
                    }
                }
            }
        }
        if besti1 < 0 || besti2 < 0 || best_k < 0 {
            scales[ib] = 0.0;
            shifts[ib] = 0;
            continue;
        }
        let mut lv = split_levels::<BS>(&idx, besti1, besti2, scale < 0.0);
        if scale < 0.0 {
            scale = -scale;
            best_k = 3 - best_k;
        }
        let mut index = [0u16; BS / 8];
        if !to_grid(
            lat,
            &mut lv,
            xb,
            &weight,
            scale,
            |k| xx(best_k, k),
            &mut index,
        ) {
            scale = refit(lat, &index, xb, &weight, |k| xx(best_k, k), scale);
        }
        y[2 * ib] = index[0] as u8;
        y[2 * ib + 1] = index[1] as u8;
        y[32 + ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
        scales[ib] = scale;
        shifts[ib] = best_k;
        max_scale = cmax(max_scale, scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for ib in 0..QK_K / BS {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
        y[32 + ib] |= MASKS[shifts[ib] as usize];
        let xb = &x[BS * ib..BS * (ib + 1)];
        let mut weight = [0f32; BS];
        weights(ib, &mut weight);
        for k in 0..BS / 8 {
            let gi = y[2 * ib + k] as usize + (((y[32 + ib] as usize) << (8 - 4 * k)) & 0x700);
            let pg = &lat.grid[gi];
            let xs = xx(shifts[ib], k);
            for j in 0..8 {
                let w = weight[8 * k + j];
                let q = xs[((pg[j] - 1) / 2) as usize] * (2 * l + 1) as f32;
                sumqx += w * q * xb[8 * k + j];
                sumq2 += w * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    // 1.1125: llama.cpp's fudge factor; the f16's nibbles go to the top of the four words
    let s = u16::from_le_bytes(fp16(d * 1.1125));
    sc[0] |= (s & 0x000f) << 12;
    sc[1] |= (s & 0x00f0) << 8;
    sc[2] |= (s & 0x0f00) << 4;
    sc[3] |= s & 0xf000;
    for (k, w) in sc.iter().enumerate() {
        y[48 + 2 * k..50 + 2 * k].copy_from_slice(&w.to_le_bytes());
    }
}

// ------------------------------------------------------------- one unit of 8 weights, rechosen

/// The grid's points as the dequantizer reads them: 8 values in `{-1, 0, 1}` per point.
fn points() -> &'static [[i8; 8]] {
    static P: std::sync::OnceLock<Vec<[i8; 8]>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        crate::iq_tables::IQ1S_GRID
            .iter()
            .map(|g| g.to_le_bytes().map(|b| b as i8))
            .collect()
    })
}

/// Unit `k` (weights `8k..8k+8`, one grid point) of a written IQ1_S/IQ1_M block: its scale
/// `dl`, its delta and its grid index, computed as `shrink_model::quants` and ggml compute them.
fn unit_parts(ty: GgmlType, y: &[u8], k: usize) -> (f32, f32, usize) {
    let delta = |neg: bool| if neg { -DELTA } else { DELTA };
    match ty {
        GgmlType::IQ1_S => {
            let d = half::f16::from_bits(u16::from_le_bytes([y[0], y[1]])).to_f32();
            let ib = k / 4;
            let qh = u16::from_le_bytes([y[34 + 2 * ib], y[35 + 2 * ib]]);
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let idx = y[2 + k] as usize | (((qh >> (3 * (k % 4))) & 7) as usize) << 8;
            (dl, delta(qh & 0x8000 != 0), idx)
        }
        GgmlType::IQ1_M => {
            let sc: [u16; 4] =
                std::array::from_fn(|i| u16::from_le_bytes([y[48 + 2 * i], y[49 + 2 * i]]));
            let d_bits = (sc[0] >> 12)
                | ((sc[1] >> 8) & 0x00F0)
                | ((sc[2] >> 4) & 0x0F00)
                | (sc[3] & 0xF000);
            let d = half::f16::from_bits(d_bits).to_f32();
            let ib = k / 4;
            let s = sc[ib / 2] >> (6 * (ib % 2));
            let dl = d * (2 * ((s >> (3 * ((k % 4) / 2))) & 7) + 1) as f32;
            let qh = y[32 + k / 2] >> (4 * (k % 2));
            let idx = y[k] as usize | ((qh & 7) as usize) << 8;
            (dl, delta(qh & 8 != 0), idx)
        }
        _ => unreachable!("{ty} is not IQ1"),
    }
}

/// Writes unit `k`'s grid index into the block `y`, keeping its scale and delta.
fn put_index(ty: GgmlType, y: &mut [u8], k: usize, idx: usize) {
    match ty {
        GgmlType::IQ1_S => {
            y[2 + k] = idx as u8;
            let o = 34 + 2 * (k / 4);
            let sh = 3 * (k % 4);
            let mut qh = u16::from_le_bytes([y[o], y[o + 1]]);
            qh = (qh & !(7 << sh)) | ((((idx >> 8) & 7) as u16) << sh);
            y[o..o + 2].copy_from_slice(&qh.to_le_bytes());
        }
        GgmlType::IQ1_M => {
            y[k] = idx as u8;
            let sh = 4 * (k % 2);
            let b = &mut y[32 + k / 2];
            *b = (*b & !(7 << sh)) | ((((idx >> 8) & 7) as u8) << sh);
        }
        _ => unreachable!("{ty} is not IQ1"),
    }
}

/// The dequantized values of unit `k` of the IQ1_S/IQ1_M block `y`: `dl * (g + delta)`.
pub(super) fn unit_values(ty: GgmlType, y: &[u8], k: usize, out: &mut [f32]) {
    let (dl, delta, idx) = unit_parts(ty, y, k);
    let g = &points()[idx];
    for j in 0..8 {
        out[j] = dl * (g[j] as f32 + delta);
    }
}

/// Rechooses unit `k` of the written IQ1_S/IQ1_M block `y` for the values `x`, keeping the
/// block's scales and deltas: the grid point of least `sum w (x - dl (g + delta))^2` over all
/// 2048 (first on ties). Writes it into `y` and the unit's dequantized values, bit for bit what
/// llama.cpp reads, into `out`. A unit whose scale is 0 keeps its bytes. (GPTQ's rounding step,
/// as `iq_lattice::choose_unit` is for the signed lattices.)
pub(super) fn choose_unit(
    ty: GgmlType,
    y: &mut [u8],
    k: usize,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
) {
    let (dl, delta, _) = unit_parts(ty, y, k);
    if dl > 0.0 {
        let mut vals = [0f32; 3];
        for (l, v) in vals.iter_mut().enumerate() {
            *v = dl * ((l as i32 - 1) as f32 + delta);
        }
        let mut best = (0usize, f32::INFINITY);
        for (gi, g) in points().iter().enumerate() {
            let mut cost = 0f32;
            for j in 0..8 {
                let e = x[j] - vals[(g[j] + 1) as usize];
                cost += w[j] * e * e;
            }
            if cost < best.1 {
                best = (gi, cost);
            }
        }
        put_index(ty, y, k, best.0);
    }
    unit_values(ty, y, k, out);
}

#[cfg(test)]
mod tests {
    use super::super::quantize;
    use super::{choose_unit, unit_values};
    use crate::gguf::GgmlType;

    /// `unit_values` reads what the dequantizer reads; `choose_unit` on a block's own values
    /// writes its bytes back, and on other values never does worse under its weights than the
    /// point llama.cpp chose.
    #[test]
    fn units_read_and_rechoose_the_written_points() {
        let mut u = super::super::uniform_rng(0x9e37_79b9_7f4a_7c15u64);
        let x: Vec<f32> = (0..256 * 4).map(|_| (u() + u() + u()) * 0.1).collect();
        let imp: Vec<f32> = (0..256).map(|i| 0.2 + (i % 7) as f32).collect();
        for ty in [GgmlType::IQ1_S, GgmlType::IQ1_M] {
            for xb in x.chunks(256) {
                let y = quantize(ty, xb, 256, Some(&imp)).unwrap();
                let mut deq = vec![0f32; 256];
                crate::quants::dequantize(ty, &y, &mut deq).unwrap();
                let mut v = [0f32; 8];
                let mut y2 = y.clone();
                let ones = [1f32; 8];
                for k in 0..32 {
                    unit_values(ty, &y, k, &mut v);
                    assert_eq!(&v[..], &deq[8 * k..8 * k + 8], "{ty} unit {k}");
                    choose_unit(ty, &mut y2, k, &deq[8 * k..], &ones, &mut v);
                    assert_eq!(&v[..], &deq[8 * k..8 * k + 8], "{ty} unit {k}");
                }
                assert_eq!(y2, y, "{ty}: requantized bytes differ");
                let w: Vec<f32> = (0..8).map(|i| 0.5 + i as f32 * 0.3).collect();
                let mut y3 = y.clone();
                for k in 0..32 {
                    let xu: Vec<f32> = (0..8).map(|i| xb[8 * k + i] + 0.02 * u()).collect();
                    let cost = |vals: &[f32]| -> f32 {
                        (0..8).map(|i| w[i] * (xu[i] - vals[i]).powi(2)).sum()
                    };
                    choose_unit(ty, &mut y3, k, &xu, &w, &mut v);
                    let old = cost(&deq[8 * k..8 * k + 8]);
                    assert!(cost(&v) <= old * (1.0 + 1e-5) + 1e-12, "{ty} unit {k}");
                }
                let mut deq3 = vec![0f32; 256];
                crate::quants::dequantize(ty, &y3, &mut deq3).unwrap();
                for k in 0..32 {
                    unit_values(ty, &y3, k, &mut v);
                    assert_eq!(&v[..], &deq3[8 * k..8 * k + 8], "{ty} unit {k}");
                }
            }
        }
    }

    /// A round trip through shrink's dequantizer loses what 1.5-1.75 bits lose and no more; an
    /// all-zero row stays zero. (llama.cpp's bytes are checked in shrink-formats'
    /// llama_quantize_bytes test.)
    #[test]
    fn round_trip_rms_error_is_plausible() {
        let mut u = super::super::uniform_rng(0x2545_f491_4f6c_dd1du64);
        let cols = 1024;
        let x: Vec<f32> = (0..cols * 4)
            .map(|_| (u() + u() + u() + u()) * 0.05)
            .collect();
        let w: Vec<f32> = (0..cols).map(|i| 0.5 + (i % 5) as f32).collect();
        let ss = x.iter().map(|v| v * v).sum::<f32>();
        for ty in [GgmlType::IQ1_S, GgmlType::IQ1_M] {
            for imat in [false, true] {
                let q = quantize(ty, &x, cols, imat.then_some(&w[..]));
                if !imat && ty == GgmlType::IQ1_S {
                    assert!(
                        q.is_err(),
                        "IQ1_S needs an importance matrix, as in llama.cpp"
                    );
                    continue;
                }
                let q = q.unwrap();
                assert_eq!(q.len(), x.len() / 256 * ty.type_size());
                let mut y = vec![0f32; x.len()];
                crate::quants::dequantize(ty, &q, &mut y).unwrap();
                let e: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
                let rel = (e / ss).sqrt();
                assert!(
                    rel > 0.2 && rel < 0.8,
                    "{ty} imatrix={imat}: relative RMS error {rel}"
                );
                let z = quantize(ty, &vec![0f32; cols], cols, Some(&w)).unwrap();
                assert!(z.iter().all(|&b| b == 0), "{ty}: zero row");
            }
        }
    }
}
