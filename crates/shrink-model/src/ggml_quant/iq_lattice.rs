//! The lattice i-quants IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS and IQ2_S.
//!
//! A port of ggml-quants.c's (llama.cpp, MIT licence; the tree vendored in llama-cpp-python
//! 0.3.36) `iq3xs_init_impl` and `iq2xs_init_impl` (a grid's point -> index map and the
//! neighbour lists of the points off the grid), `iq3_find_best_neighbour` and
//! `iq2_find_best_neighbour`, and the row quantizers `quantize_row_iq3_xxs_impl` (grid 256),
//! `quantize_row_iq3_s_impl` (grid 512, as `quantize_iq3_s` calls it), `quantize_row_iq2_xxs_impl`,
//! `quantize_row_iq2_xs_impl` and `quantize_row_iq2_s_impl`. The five differ only in the constants
//! and switches of
//! [`Cfg`]; each is followed line by line, in f32 and in the reference's order, so that the bytes
//! equal llama.cpp's. The grid points are read from the dequantization tables of
//! [`crate::iq_tables`], which list them in the order of the quantizers' `kgrid_*` tables.

use super::{fp16, make_qp_quants, nearest_int, QK_K};
use crate::gguf::GgmlType;
use crate::iq_tables::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use std::sync::OnceLock;

const GROUP_MAX_EPS: f32 = 1e-15;
const GROUP_MAX_EPS_IQ3_XXS: f32 = 1e-8;
const GROUP_MAX_EPS_IQ2_S: f32 = 1e-8;

/// A grid of points of `n` (4 or 8) odd levels `2l + 1`, `l < 2^bits`, with `iq*xs_init_impl`'s
/// `kmap` (packed levels -> grid index, or `-(offset + 1)` of a point's neighbour list) and
/// `kneighbours` (per point off the grid: the count, then the grid indices at the `nwant`
/// smallest squared distances, nearest first, ties by index).
pub(super) struct Lattice {
    n: usize,
    bits: usize,
    pub(super) grid: Vec<[i8; 8]>,
    pub(super) map: Vec<i32>,
    neighbours: Vec<u16>,
}

/// A `map` entry that no quantizer looks up (IQ2's level 3, which `kMaxQ = 3` never reaches).
const UNUSED: i32 = i32::MIN;

impl Lattice {
    /// `points`: the dequantization grid (`n` bytes per point, value `j` in byte `j`), whose
    /// distinct byte values, in increasing order as signed bytes (IQ1's grid holds -1, 0, 1),
    /// are the levels `0, 1, ...`.
    fn new(points: &[u64], n: usize, bits: usize, kmap_size: usize, nwant: usize) -> Lattice {
        let byte = |p: u64, j: usize| (p >> (8 * j)) as u8;
        let mut vals: Vec<i8> = points
            .iter()
            .flat_map(|&p| (0..n).map(move |j| byte(p, j) as i8))
            .collect();
        vals.sort_unstable();
        vals.dedup();
        assert!(vals.len() <= 1 << bits);
        let grid: Vec<[i8; 8]> = points
            .iter()
            .map(|&p| {
                let mut g = [0i8; 8];
                for j in 0..n {
                    let l = vals.binary_search(&(byte(p, j) as i8)).unwrap();
                    g[j] = 2 * l as i8 + 1;
                }
                g
            })
            .collect();
        let mut map = vec![-1i32; kmap_size];
        for (i, g) in grid.iter().enumerate() {
            let mut index = 0usize;
            for k in 0..n {
                index |= (((g[k] - 1) / 2) as usize) << (bits * k);
            }
            map[index] = i as i32;
        }
        // The levels the quantizers can produce: 0..kMaxQ-1 with kMaxQ = 8 (IQ3) or 3 (IQ2).
        let kmax = if bits == 3 { 8 } else { 3 };
        let mut neighbours: Vec<u16> = Vec::new();
        let mut dist2: Vec<(i32, i32)> = Vec::with_capacity(grid.len());
        let mask = (1 << bits) - 1;
        for i in 0..kmap_size {
            if map[i] >= 0 {
                continue;
            }
            let mut pos = [0i32; 8];
            let mut reachable = true;
            for k in 0..n {
                let l = (i >> (bits * k)) & mask;
                reachable &= l < kmax;
                pos[k] = 2 * l as i32 + 1;
            }
            if !reachable {
                // llama.cpp lists neighbours for these too; no lookup ever reads them
                map[i] = UNUSED;
                continue;
            }
            dist2.clear();
            for (j, g) in grid.iter().enumerate() {
                let mut d2 = 0;
                for k in 0..n {
                    let d = g[k] as i32 - pos[k];
                    d2 += d * d;
                }
                dist2.push((d2, j as i32));
            }
            // qsort with iq*_compare_func: by distance, then index (a total order)
            dist2.sort_unstable();
            map[i] = -(neighbours.len() as i32 + 1);
            let start = neighbours.len();
            neighbours.push(0);
            let (mut d2, mut nhave, mut count) = (dist2[0].0, 1, 0u16);
            for &(d, j) in &dist2 {
                if d > d2 {
                    if nhave == nwant {
                        break;
                    }
                    d2 = d;
                    nhave += 1;
                }
                neighbours.push(j as u16);
                count += 1;
            }
            neighbours[start] = count;
        }
        Lattice {
            n,
            bits,
            grid,
            map,
            neighbours,
        }
    }

    /// `u`: packed levels of one point.
    #[inline]
    pub(super) fn pack(&self, l: &[i8]) -> usize {
        let mut u = 0usize;
        for i in 0..self.n {
            u |= (l[i] as usize) << (self.bits * i);
        }
        u
    }

    /// The grid indices listed for the off-grid point `u` (`kneighbors_q2xs - kmap_q2xs[u] - 1`
    /// past its count).
    fn neighbour_list(&self, u: usize) -> &[u16] {
        debug_assert!(self.map[u] < 0 && self.map[u] != UNUSED);
        let off = (-self.map[u] - 1) as usize;
        let num = self.neighbours[off] as usize;
        &self.neighbours[off + 1..off + 1 + num]
    }

    /// `iq3_find_best_neighbour` / `iq2_find_best_neighbour` with `value = g as f32`: among the
    /// neighbours of the off-grid point `u`, the first with the least
    /// `sum weight * (scale * value(g) - xval)^2` over the grid values `g` (`2 level + 1`); sets
    /// `l` to its levels and returns its index. (llama.cpp aborts where no distance is below
    /// `FLT_MAX`; this takes the nearest neighbour then.) IQ1's `iq1_find_best_neighbour2` reads
    /// `g` as the shifted level `xg[level]`; its fallback over the whole grid, for a list with no
    /// finite distance, indexes `xval` by the grid point, and this takes the first neighbour then.
    pub(super) fn best_neighbour_by(
        &self,
        u: usize,
        xval: &[f32],
        weight: &[f32],
        scale: f32,
        l: &mut [i8],
        value: impl Fn(i8) -> f32,
    ) -> usize {
        let list = self.neighbour_list(u);
        let mut best_d2 = f32::MAX;
        let mut grid_index = list[0] as usize;
        for &j in list {
            let pg = &self.grid[j as usize];
            let mut d2 = 0f32;
            for i in 0..self.n {
                let diff = scale * value(pg[i]) - xval[i];
                d2 += weight[i] * diff * diff;
            }
            if d2 < best_d2 {
                best_d2 = d2;
                grid_index = j as usize;
            }
        }
        let pg = &self.grid[grid_index];
        for i in 0..self.n {
            l[i] = (pg[i] - 1) / 2;
        }
        grid_index
    }
}

fn widen<T: Copy + Into<u64>>(t: &[T]) -> Vec<u64> {
    t.iter().map(|&v| v.into()).collect()
}

/// The lattice of `ty`, built once (`ggml_quantize_init`).
pub(super) fn lattice(ty: GgmlType) -> &'static Lattice {
    static IQ3_256: OnceLock<Lattice> = OnceLock::new();
    static IQ3_512: OnceLock<Lattice> = OnceLock::new();
    static IQ2_256: OnceLock<Lattice> = OnceLock::new();
    static IQ2_512: OnceLock<Lattice> = OnceLock::new();
    static IQ2_1024: OnceLock<Lattice> = OnceLock::new();
    static IQ1_2048: OnceLock<Lattice> = OnceLock::new();
    match ty {
        GgmlType::IQ3_XXS => {
            IQ3_256.get_or_init(|| Lattice::new(&widen(&IQ3XXS_GRID), 4, 3, 4096, 2))
        }
        GgmlType::IQ3_S => IQ3_512.get_or_init(|| Lattice::new(&widen(&IQ3S_GRID), 4, 3, 4096, 3)),
        GgmlType::IQ2_XXS => IQ2_256.get_or_init(|| Lattice::new(&IQ2XXS_GRID, 8, 2, 43692, 2)),
        GgmlType::IQ2_XS => IQ2_512.get_or_init(|| Lattice::new(&IQ2XS_GRID, 8, 2, 43692, 2)),
        GgmlType::IQ2_S => IQ2_1024.get_or_init(|| Lattice::new(&IQ2S_GRID, 8, 2, 43692, 1)),
        GgmlType::IQ1_S | GgmlType::IQ1_M => {
            IQ1_2048.get_or_init(|| Lattice::new(&IQ1S_GRID, 8, 2, 43692, 3))
        }
        _ => unreachable!("{ty} has no lattice"),
    }
}

/// What tells the five quantizers apart.
struct Cfg {
    /// weights per sub-block with one scale (32 for IQ3, 16 for IQ2)
    sub: usize,
    /// `kMaxQ`: levels `0..kMaxQ`
    kmax: i32,
    /// the scale search: `is` in `-steps..=steps`, `id = (2 kMaxQ - 1 + is * step) / max`
    steps: i32,
    /// (IQ2_XXS) the search is around `make_qp_quants(kMaxQ + 1)`'s scale: `max` is that scale
    /// times `kMaxQ`, and a sub-block where it is not positive is skipped
    qp_start: bool,
    /// (IQ2_XXS) the second pass (every point, at the searched scale) runs whenever the scale is
    /// positive, not only when a point was off the grid
    refine_always: bool,
    step: f32,
    /// `sigma2 = sigma_mul * sumx2 / QK_K`
    sigma_mul: f32,
    /// the weights without an importance matrix: `x^2`, or (IQ2_S) `0.25 sigma2 + x^2`
    plain_quarter_sigma: bool,
    /// a sub-block is skipped when its largest `|x|` is below this (IQ3_S: `!max`, i.e. zero)
    eps: Option<f32>,
    /// signs are stored as 7 bits with an even count of minus signs (IQ3_XXS, IQ2_XS)
    even_signs: bool,
    /// `is_on_grid` before the scale search (IQ3_S: false)
    on_grid_init: bool,
    /// the second pass redoes the points on the grid too (IQ3_S)
    second_pass_all: bool,
    /// `d = max_scale / 31 * fudge`
    fudge: Option<f32>,
}

fn cfg(ty: GgmlType) -> Cfg {
    match ty {
        GgmlType::IQ3_XXS => Cfg {
            sub: 32,
            kmax: 8,
            steps: 15,
            step: 0.2,
            qp_start: false,
            refine_always: false,
            sigma_mul: 2.0,
            plain_quarter_sigma: false,
            eps: Some(GROUP_MAX_EPS_IQ3_XXS),
            even_signs: true,
            on_grid_init: true,
            second_pass_all: false,
            fudge: Some(1.0125),
        },
        GgmlType::IQ3_S => Cfg {
            sub: 32,
            kmax: 8,
            steps: 9,
            step: 0.2,
            qp_start: false,
            refine_always: false,
            sigma_mul: 2.0,
            plain_quarter_sigma: false,
            eps: None,
            even_signs: false,
            on_grid_init: false,
            second_pass_all: true,
            fudge: Some(1.033),
        },
        GgmlType::IQ2_XXS => Cfg {
            sub: 32,
            kmax: 3,
            steps: 6,
            step: 0.1,
            qp_start: true,
            refine_always: true,
            sigma_mul: 1.0,
            plain_quarter_sigma: false,
            eps: Some(GROUP_MAX_EPS),
            even_signs: true,
            on_grid_init: false,
            second_pass_all: true,
            fudge: None,
        },
        GgmlType::IQ2_XS => Cfg {
            sub: 16,
            kmax: 3,
            steps: 9,
            step: 0.1,
            qp_start: false,
            refine_always: false,
            sigma_mul: 1.0,
            plain_quarter_sigma: false,
            eps: Some(GROUP_MAX_EPS),
            even_signs: true,
            on_grid_init: true,
            second_pass_all: false,
            fudge: None,
        },
        GgmlType::IQ2_S => Cfg {
            sub: 16,
            kmax: 3,
            steps: 9,
            step: 0.1,
            qp_start: false,
            refine_always: false,
            sigma_mul: 2.0,
            plain_quarter_sigma: true,
            eps: Some(GROUP_MAX_EPS_IQ2_S),
            even_signs: false,
            on_grid_init: true,
            second_pass_all: false,
            fudge: Some(0.9875),
        },
        _ => unreachable!("{ty} is not a lattice type"),
    }
}

/// One sub-block's result: its scale, the grid index of each point and the signs of each 8.
#[derive(Clone, Copy, Default)]
struct Sub {
    scale: f32,
    index: [u16; 8],
    signs: [u8; 4],
}

#[inline]
fn cmax(a: f32, b: f32) -> f32 {
    // ggml's MAX(a, b): `a > b ? a : b`
    if a > b {
        a
    } else {
        b
    }
}

/// The body of the `ib` loop of `quantize_row_iq*_impl`: `None` where the reference `continue`s
/// (a sub-block whose largest magnitude is below the type's epsilon).
fn sub_block(c: &Cfg, lat: &Lattice, xb: &[f32], qw: Option<&[f32]>, sigma2: f32) -> Option<Sub> {
    let bs = c.sub;
    let n = lat.n;
    let groups = bs / n;
    let mut weight = [0f32; 32];
    let mut waux = [0f32; 32];
    let mut xval = [0f32; 32];
    let mut l = [0i8; 32];
    let mut laux = [0i8; 32];
    let mut is_on_grid = [c.on_grid_init; 8];
    let mut is_on_grid_aux = [false; 8];
    let mut block_signs = [0u8; 4];
    match qw {
        Some(qw) => {
            for i in 0..bs {
                weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
            }
        }
        None if c.plain_quarter_sigma => {
            for i in 0..bs {
                weight[i] = 0.25 * sigma2 + xb[i] * xb[i];
            }
        }
        None => {
            for i in 0..bs {
                weight[i] = xb[i] * xb[i];
            }
        }
    }
    for i in 0..bs {
        waux[i] = weight[i].sqrt();
    }
    for k in 0..bs / 8 {
        let mut nflip = 0;
        let mut s = 0u8;
        for i in 0..8 {
            if xb[8 * k + i] >= 0.0 {
                xval[8 * k + i] = xb[8 * k + i];
            } else {
                xval[8 * k + i] = -xb[8 * k + i];
                nflip += 1;
                s |= 1 << i;
            }
        }
        if c.even_signs {
            if nflip % 2 != 0 {
                let mut imin = 0;
                let mut min = weight[8 * k] * xb[8 * k] * xb[8 * k];
                for i in 1..8 {
                    let ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                    if ax < min {
                        min = ax;
                        imin = i;
                    }
                }
                xval[8 * k + imin] = -xval[8 * k + imin];
                s ^= 1 << imin;
            }
            block_signs[k] = s & 127;
        } else {
            block_signs[k] = s;
        }
    }
    let mut max = xval[0];
    for i in 1..bs {
        max = cmax(max, xval[i]);
    }
    let skip = match c.eps {
        Some(eps) => max < eps,
        None => max == 0.0,
    };
    if skip {
        return None;
    }
    let q_top = (2 * c.kmax - 1) as f32;
    let mut best = 0f32;
    let mut scale = max / q_top;
    if c.qp_start {
        // quantize_row_iq2_xxs_impl: `scale = make_qp_quants(32, kMaxQ+1, xval, L, weight)`,
        // `eff_max = scale * kMaxQ` (its levels are overwritten below: the scale is positive, so
        // the second pass sets every point)
        let mut lq = [0u8; 32];
        scale = make_qp_quants(bs, c.kmax + 1, &xval[..bs], &mut lq, &weight[..bs]);
        max = scale * c.kmax as f32;
        if max <= 0.0 {
            return None;
        }
    }
    for is in -c.steps..=c.steps {
        let id = (q_top + is as f32 * c.step) / max;
        let this_scale = 1.0 / id;
        for k in 0..groups {
            for i in 0..n {
                let li = nearest_int(0.5 * (id * xval[n * k + i] - 1.0));
                laux[n * k + i] = li.clamp(0, c.kmax - 1) as i8;
            }
            let u = lat.pack(&laux[n * k..]);
            is_on_grid_aux[k] = true;
            if lat.map[u] < 0 {
                is_on_grid_aux[k] = false;
                lat.best_neighbour_by(
                    u,
                    &xval[n * k..],
                    &waux[n * k..],
                    this_scale,
                    &mut laux[n * k..],
                    |g| g as f32,
                );
            }
        }
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for i in 0..bs {
            let w = weight[i];
            let q = (2 * laux[i] as i32 + 1) as f32;
            sumqx += w * xval[i] * q;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l[..bs].copy_from_slice(&laux[..bs]);
            is_on_grid[..groups].copy_from_slice(&is_on_grid_aux[..groups]);
        }
    }
    let n_not_ongrid = is_on_grid[..groups].iter().filter(|g| !**g).count();
    if (c.refine_always || n_not_ongrid > 0) && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..groups {
            if !c.second_pass_all && is_on_grid[k] {
                continue;
            }
            for i in 0..n {
                let li = nearest_int(0.5 * (id * xval[n * k + i] - 1.0));
                l[n * k + i] = li.clamp(0, c.kmax - 1) as i8;
            }
            let u = lat.pack(&l[n * k..]);
            if lat.map[u] < 0 {
                lat.best_neighbour_by(
                    u,
                    &xval[n * k..],
                    &waux[n * k..],
                    scale,
                    &mut l[n * k..],
                    |g| g as f32,
                );
            }
        }
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for i in 0..bs {
            let w = weight[i];
            let q = (2 * l[i] as i32 + 1) as f32;
            sumqx += w * xval[i] * q;
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    if scale < 0.0 {
        // "should never happen": a positive scale and flipped signs
        scale = -scale;
        let m = if c.even_signs { 127 } else { 255 };
        for s in &mut block_signs[..bs / 8] {
            *s = !*s & m;
        }
    }
    let mut out = Sub {
        scale,
        index: [0; 8],
        signs: block_signs,
    };
    for k in 0..groups {
        let gi = lat.map[lat.pack(&l[n * k..])];
        assert!(gi >= 0, "a point off the {} grid", lat.grid.len());
        out.index[k] = gi as u16;
    }
    Some(out)
}

/// `nearest_int(0.5 * (id * scale - 1))` in `0..=15`: a sub-block's 4-bit scale.
#[inline]
fn scale4(id: f32, s: f32) -> u8 {
    nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15) as u8
}

/// One 256-weight block of `ty` (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S) into `y` (zeroed or not);
/// `qw` has the block's 256 importances.
pub(super) fn quantize_block(ty: GgmlType, x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
    let c = cfg(ty);
    let lat = lattice(ty);
    y.fill(0);
    let mut sumx2 = 0f32;
    for i in 0..QK_K {
        sumx2 += x[i] * x[i];
    }
    let sigma2 = c.sigma_mul * sumx2 / QK_K as f32;
    let nsub = QK_K / c.sub;
    let mut subs = [None; 16];
    let mut scales = [0f32; 16];
    let mut max_scale = 0f32;
    for ib in 0..nsub {
        let r = c.sub * ib;
        subs[ib] = sub_block(
            &c,
            lat,
            &x[r..r + c.sub],
            qw.map(|w| &w[r..r + c.sub]),
            sigma2,
        );
        if let Some(s) = subs[ib] {
            scales[ib] = s.scale;
            max_scale = cmax(max_scale, s.scale);
        }
    }
    let d = max_scale / 31.0;
    let id = 1.0 / d;
    let dh = |y: &mut [u8]| y[0..2].copy_from_slice(&fp16(d * c.fudge.unwrap_or(1.0)));
    match ty {
        GgmlType::IQ3_XXS => {
            // qs: 64 grid indices, then 8 u32 of 4 x 7 sign bits and the 4-bit scale
            if max_scale == 0.0 {
                return;
            }
            dh(y);
            let qs = &mut y[2..];
            for ib in 0..nsub {
                let mut ss = 0u32;
                if let Some(s) = subs[ib] {
                    for k in 0..8 {
                        qs[8 * ib + k] = s.index[k] as u8;
                    }
                    ss = s.signs[0] as u32
                        | (s.signs[1] as u32) << 7
                        | (s.signs[2] as u32) << 14
                        | (s.signs[3] as u32) << 21;
                }
                ss |= (scale4(id, scales[ib]) as u32) << 28;
                qs[64 + 4 * ib..68 + 4 * ib].copy_from_slice(&ss.to_le_bytes());
            }
        }
        GgmlType::IQ3_S => {
            // qs 2..66, qh 66..74, signs 74..106, scales 106..110; qs and signs advance only
            // past the sub-blocks not skipped (as the reference's pointers do), qh by position
            let (mut qs, mut sg) = (2, 74);
            for ib in 0..nsub {
                let Some(s) = subs[ib] else { continue };
                for k in 0..8 {
                    let gi = s.index[k] as usize;
                    y[qs + k] = gi as u8;
                    y[66 + (ib * 8 + k) / 8] |= ((gi >> 8) << ((ib * 8 + k) % 8)) as u8;
                }
                qs += 8;
                y[sg..sg + 4].copy_from_slice(&s.signs);
                sg += 4;
            }
            if max_scale == 0.0 {
                return;
            }
            dh(y);
            for ib in (0..nsub).step_by(2) {
                y[106 + ib / 2] = scale4(id, scales[ib]) | (scale4(id, scales[ib + 1]) << 4);
            }
        }
        GgmlType::IQ2_XXS => {
            // qs: per 32-block two u32, the 4 grid indices (bytes) and 4 x 7 sign bits plus
            // the 4-bit scale
            if max_scale == 0.0 {
                return;
            }
            dh(y);
            for ib in 0..nsub {
                let (mut q0, mut q1) = (0u32, 0u32);
                if let Some(s) = subs[ib] {
                    for k in 0..4 {
                        q0 |= (s.index[k] as u32) << (8 * k);
                        q1 |= (s.signs[k] as u32) << (7 * k);
                    }
                }
                q1 |= (scale4(id, scales[ib]) as u32) << 28;
                y[2 + 8 * ib..6 + 8 * ib].copy_from_slice(&q0.to_le_bytes());
                y[6 + 8 * ib..10 + 8 * ib].copy_from_slice(&q1.to_le_bytes());
            }
        }
        GgmlType::IQ2_XS => {
            // qs: 32 u16 of a 9-bit grid index and 7 sign bits (2..66), scales 66..74
            if max_scale == 0.0 {
                return;
            }
            dh(y);
            for ib in 0..nsub {
                if let Some(s) = subs[ib] {
                    for k in 0..2 {
                        let q = s.index[k] | (s.signs[k] as u16) << 9;
                        let o = 2 + 2 * (2 * ib + k);
                        y[o..o + 2].copy_from_slice(&q.to_le_bytes());
                    }
                }
                let l = scale4(id, scales[ib]);
                y[66 + ib / 2] |= if ib % 2 == 0 { l } else { l << 4 };
            }
        }
        GgmlType::IQ2_S => {
            // qs: 32 low index bytes (2..34) then 32 sign bytes (34..66), qh 66..74, scales 74..82
            for ib in 0..nsub {
                let Some(s) = subs[ib] else { continue };
                for k in 0..2 {
                    let i8 = 2 * ib + k;
                    let gi = s.index[k] as usize;
                    y[2 + i8] = gi as u8;
                    y[66 + i8 / 4] |= ((gi >> 8) << (2 * (i8 % 4))) as u8;
                    y[34 + i8] = s.signs[k];
                }
            }
            if max_scale == 0.0 {
                return;
            }
            dh(y);
            for ib in 0..nsub {
                let l = scale4(id, scales[ib]);
                y[74 + ib / 2] |= if ib % 2 == 0 { l } else { l << 4 };
            }
        }
        _ => unreachable!(),
    }
}

// ------------------------------------------------------------- one unit of 8 weights, rechosen

/// Weights in a unit that [`choose_unit`] chooses at once: 8 consecutive columns, the span of
/// one sign byte (two 4-value points of the IQ3 grids, one 8-value point of the IQ2 grids).
pub const UNIT: usize = 8;

/// The magnitudes of every point of `ty`'s grid as the dequantizers read them (`IQ3XXS_GRID` etc.
/// as bytes), `n` (4 or 8) per point.
fn magnitudes(ty: GgmlType) -> &'static [u8] {
    static M: [OnceLock<Vec<u8>>; 5] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let (i, f): (usize, fn() -> Vec<u8>) = match ty {
        GgmlType::IQ3_XXS => (0, || {
            IQ3XXS_GRID.iter().flat_map(|g| g.to_le_bytes()).collect()
        }),
        GgmlType::IQ3_S => (1, || {
            IQ3S_GRID.iter().flat_map(|g| g.to_le_bytes()).collect()
        }),
        GgmlType::IQ2_XS => (2, || {
            IQ2XS_GRID.iter().flat_map(|g| g.to_le_bytes()).collect()
        }),
        GgmlType::IQ2_S => (3, || {
            IQ2S_GRID.iter().flat_map(|g| g.to_le_bytes()).collect()
        }),
        GgmlType::IQ2_XXS => (4, || {
            IQ2XXS_GRID.iter().flat_map(|g| g.to_le_bytes()).collect()
        }),
        _ => unreachable!("{ty} has no lattice"),
    };
    M[i].get_or_init(f)
}

/// The scale of unit `k` (of 32) of a written block: what the dequantizer multiplies its grid
/// magnitudes by, computed as `shrink_model::quants` and ggml compute it.
pub(super) fn unit_scale(ty: GgmlType, y: &[u8], k: usize) -> f32 {
    let d = half::f16::from_bits(u16::from_le_bytes([y[0], y[1]])).to_f32();
    let nib = |b: u8, hi: bool| if hi { b >> 4 } else { b & 0xF } as u32;
    match ty {
        GgmlType::IQ3_XXS => {
            let ib = k / 4;
            let o = 66 + 4 * ib;
            let aux = u32::from_le_bytes([y[o], y[o + 1], y[o + 2], y[o + 3]]);
            d * (0.5 + (aux >> 28) as f32) * 0.5
        }
        GgmlType::IQ3_S => {
            let ib = k / 4;
            let ls = nib(y[106 + ib / 2], ib % 2 == 1);
            d * (1 + 2 * ls) as f32
        }
        GgmlType::IQ2_XXS => {
            let o = 6 + 8 * (k / 4);
            let aux = u32::from_le_bytes([y[o], y[o + 1], y[o + 2], y[o + 3]]);
            d * (0.5 + (aux >> 28) as f32) * 0.25
        }
        GgmlType::IQ2_XS | GgmlType::IQ2_S => {
            let ib = k / 2; // sub-block of 16
            let o = if ty == GgmlType::IQ2_XS { 66 } else { 74 };
            let ls = nib(y[o + ib / 2], ib % 2 == 1);
            d * (0.5 + ls as f32) * 0.25
        }
        _ => unreachable!("{ty} has no lattice"),
    }
}

/// Writes unit `k`'s grid indices (one 8-value point, or two 4-value points) and its sign mask
/// (bit `i` set = weight `i` negative; with even signs only the low 7 bits are stored).
fn put_unit(ty: GgmlType, y: &mut [u8], k: usize, idx: [usize; 2], signs: u8) {
    match ty {
        GgmlType::IQ3_XXS => {
            y[2 + 2 * k] = idx[0] as u8;
            y[3 + 2 * k] = idx[1] as u8;
            let (ib, l) = (k / 4, k % 4);
            let o = 66 + 4 * ib;
            let mut aux = u32::from_le_bytes([y[o], y[o + 1], y[o + 2], y[o + 3]]);
            aux = (aux & !(127 << (7 * l))) | ((signs as u32 & 127) << (7 * l));
            y[o..o + 4].copy_from_slice(&aux.to_le_bytes());
        }
        GgmlType::IQ3_S => {
            for (h, &gi) in idx.iter().enumerate() {
                let p = 2 * k + h;
                y[2 + p] = gi as u8;
                let bit = 1u8 << (p % 8);
                y[66 + p / 8] = (y[66 + p / 8] & !bit) | (((gi >> 8) as u8 & 1) << (p % 8));
            }
            y[74 + k] = signs;
        }
        GgmlType::IQ2_XXS => {
            let (ib, l) = (k / 4, k % 4);
            y[2 + 8 * ib + l] = idx[0] as u8;
            let o = 6 + 8 * ib;
            let mut aux = u32::from_le_bytes([y[o], y[o + 1], y[o + 2], y[o + 3]]);
            aux = (aux & !(127 << (7 * l))) | ((signs as u32 & 127) << (7 * l));
            y[o..o + 4].copy_from_slice(&aux.to_le_bytes());
        }
        GgmlType::IQ2_XS => {
            let q = idx[0] as u16 | ((signs as u16 & 127) << 9);
            y[2 + 2 * k..4 + 2 * k].copy_from_slice(&q.to_le_bytes());
        }
        GgmlType::IQ2_S => {
            y[2 + k] = idx[0] as u8;
            let sh = 2 * (k % 4);
            y[66 + k / 4] = (y[66 + k / 4] & !(3 << sh)) | ((((idx[0] >> 8) & 3) as u8) << sh);
            y[34 + k] = signs;
        }
        _ => unreachable!("{ty} has no lattice"),
    }
}

/// Whether `ty` stores 7 sign bits per 8 weights, the 8th making the count of minus signs even.
fn even_signs(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::IQ3_XXS | GgmlType::IQ2_XXS | GgmlType::IQ2_XS)
}

/// The best point of one `n`-value part of a unit: for magnitudes `a` and weights `w` at scale
/// `s`, the grid index of least `sum w (a - s g)^2`, that cost, and the least cost of that part
/// with one sign flipped (`+ min 4 w a s g`, a flip of weight `i` turns `(a - q)^2` into
/// `(a + q)^2`), each over the whole grid (first index on ties).
fn best_part(mags: &[u8], n: usize, a: &[f32], w: &[f32], s: f32) -> ((usize, f32), (usize, f32)) {
    let mut best = (0usize, f32::INFINITY);
    let mut best_flip = (0usize, f32::INFINITY);
    for (gi, g) in mags.chunks_exact(n).enumerate() {
        let mut cost = 0f32;
        let mut flip = f32::INFINITY;
        for i in 0..n {
            let q = s * g[i] as f32;
            let e = a[i] - q;
            cost += w[i] * e * e;
            flip = flip.min(4.0 * w[i] * a[i] * q);
        }
        if cost < best.1 {
            best = (gi, cost);
        }
        if cost + flip < best_flip.1 {
            best_flip = (gi, cost + flip);
        }
    }
    (best, best_flip)
}

/// Rechooses unit `k` (weights `8k..8k+8`) of the written block `y` of `ty` for the values `x`,
/// keeping the block's scales: the grid point(s) and signs of least `sum w (x - value)^2`, found
/// over the whole grid. Each sign is that of its `x` (every grid magnitude is positive); where
/// the type stores signs with even parity and that parity is odd, the one flip that costs least,
/// over every point, is taken. Writes the choice into `y` and the unit's dequantized values, bit
/// for bit what llama.cpp reads from `y`, into `out`. A unit whose scale is 0 keeps its bytes.
///
/// This is the rounding step of GPTQ onto a lattice: the sweep fixes a unit's 8 columns at once,
/// then passes each column's error on in order (`shrink_methods::sweep`).
pub(super) fn choose_unit(
    ty: GgmlType,
    y: &mut [u8],
    k: usize,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
) {
    let s = unit_scale(ty, y, k);
    let mags = magnitudes(ty);
    let n = lattice(ty).n;
    if s > 0.0 {
        let mut a = [0f32; UNIT];
        let mut signs = 0u8;
        for i in 0..UNIT {
            a[i] = x[i].abs();
            if x[i] < 0.0 {
                signs |= 1 << i;
            }
        }
        let odd = even_signs(ty) && signs.count_ones() % 2 == 1;
        let np = UNIT / n;
        let mut parts = [((0usize, 0f32), (0usize, 0f32)); 2];
        for h in 0..np {
            parts[h] = best_part(mags, n, &a[h * n..], &w[h * n..], s);
        }
        let mut idx = [parts[0].0 .0, parts[1].0 .0];
        if odd {
            // flip in the part where it costs least (the other part keeps its free best)
            let h = if np == 2 && parts[1].1 .1 + parts[0].0 .1 < parts[0].1 .1 + parts[1].0 .1 {
                1
            } else {
                0
            };
            idx[h] = parts[h].1 .0;
            let g = &mags[idx[h] * n..(idx[h] + 1) * n];
            let mut imin = 0;
            let mut min = f32::INFINITY;
            for i in 0..n {
                let c = 4.0 * w[h * n + i] * a[h * n + i] * (s * g[i] as f32);
                if c < min {
                    min = c;
                    imin = i;
                }
            }
            signs ^= 1 << (h * n + imin);
        }
        put_unit(ty, y, k, idx, signs);
    }
    unit_values(ty, y, k, out);
}

/// The dequantized values of unit `k` of the block `y` (as `shrink_model::quants` reads them).
pub(super) fn unit_values(ty: GgmlType, y: &[u8], k: usize, out: &mut [f32]) {
    let s = unit_scale(ty, y, k);
    let mags = magnitudes(ty);
    let sgn = |m: u8, j: usize| if (m >> j) & 1 != 0 { -1.0f32 } else { 1.0 };
    let parity = |m: u8| if m.count_ones() % 2 == 1 { m | 0x80 } else { m };
    let (idx, signs): ([usize; 2], u8) = match ty {
        GgmlType::IQ3_XXS => {
            let o = 66 + 4 * (k / 4);
            let aux = u32::from_le_bytes([y[o], y[o + 1], y[o + 2], y[o + 3]]);
            let m = ((aux >> (7 * (k % 4))) & 127) as u8;
            ([y[2 + 2 * k] as usize, y[3 + 2 * k] as usize], parity(m))
        }
        GgmlType::IQ3_S => {
            let i = |p: usize| y[2 + p] as usize | (((y[66 + p / 8] >> (p % 8)) & 1) as usize) << 8;
            ([i(2 * k), i(2 * k + 1)], y[74 + k])
        }
        GgmlType::IQ2_XXS => {
            let o = 6 + 8 * (k / 4);
            let aux = u32::from_le_bytes([y[o], y[o + 1], y[o + 2], y[o + 3]]);
            let m = ((aux >> (7 * (k % 4))) & 127) as u8;
            ([y[2 + 8 * (k / 4) + k % 4] as usize, 0], parity(m))
        }
        GgmlType::IQ2_XS => {
            let q = u16::from_le_bytes([y[2 + 2 * k], y[3 + 2 * k]]);
            ([(q & 511) as usize, 0], parity((q >> 9) as u8))
        }
        GgmlType::IQ2_S => {
            let i = y[2 + k] as usize | (((y[66 + k / 4] >> (2 * (k % 4))) & 3) as usize) << 8;
            ([i, 0], y[34 + k])
        }
        _ => unreachable!("{ty} has no lattice"),
    };
    let n = lattice(ty).n;
    for j in 0..UNIT {
        let g = mags[idx[j / n] * n + j % n];
        out[j] = s * g as f32 * sgn(signs, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_match_the_kgrid_tables_of_ggml_quants() {
        // the first and last entries of kgrid_256 / kgrid_512 / kgrid_2bit_512 / kgrid_2bit_1024
        for (ty, first, last) in [
            (GgmlType::IQ3_XXS, [0usize, 2, 4, 9], 3992usize),
            (GgmlType::IQ3_S, [0, 1, 2, 5], 4032),
            (GgmlType::IQ2_XXS, [0, 2, 5, 8], 43268),
            (GgmlType::IQ2_XS, [0, 2, 5, 8], 43690),
            (GgmlType::IQ2_S, [0, 2, 5, 8], 43690),
            (GgmlType::IQ1_S, [0, 2, 5, 8], 43690),
        ] {
            let lat = lattice(ty);
            let idx = |g: &[i8; 8]| {
                let l: Vec<i8> = g.iter().map(|v| (v - 1) / 2).collect();
                lat.pack(&l)
            };
            for (j, &f) in first.iter().enumerate() {
                assert_eq!(idx(&lat.grid[j]), f, "{ty} {j}");
            }
            assert_eq!(idx(lat.grid.last().unwrap()), last, "{ty}");
            for (i, g) in lat.grid.iter().enumerate() {
                assert_eq!(lat.map[idx(g)], i as i32);
            }
        }
    }

    /// `unit_values` reads what the dequantizer reads; `choose_unit` on a block's own
    /// dequantized values writes the block's bytes back; on other values it never does worse
    /// (under its weights) than the point llama.cpp's quantizer chose.
    #[test]
    fn units_read_and_rechoose_the_written_points() {
        let mut u = super::super::uniform_rng(0x9e37_79b9_7f4a_7c15u64);
        let x: Vec<f32> = (0..QK_K * 4).map(|_| (u() + u() + u()) * 0.1).collect();
        let imp: Vec<f32> = (0..QK_K).map(|i| 0.2 + (i % 7) as f32).collect();
        for ty in [
            GgmlType::IQ3_XXS,
            GgmlType::IQ3_S,
            GgmlType::IQ2_XXS,
            GgmlType::IQ2_XS,
            GgmlType::IQ2_S,
        ] {
            let ts = ty.type_size();
            for b in 0..4 {
                let xb = &x[b * QK_K..(b + 1) * QK_K];
                let mut y = vec![0u8; ts];
                quantize_block(ty, xb, Some(&imp), &mut y);
                let mut deq = vec![0f32; QK_K];
                crate::quants::dequantize(ty, &y, &mut deq).unwrap();
                let mut v = [0f32; UNIT];
                for k in 0..QK_K / UNIT {
                    unit_values(ty, &y, k, &mut v);
                    assert_eq!(&v[..], &deq[k * UNIT..(k + 1) * UNIT], "{ty} unit {k}");
                }
                // the block's own values come back as the block's bytes
                let mut y2 = y.clone();
                let ones = [1f32; UNIT];
                for k in 0..QK_K / UNIT {
                    choose_unit(ty, &mut y2, k, &deq[k * UNIT..], &ones, &mut v);
                    assert_eq!(&v[..], &deq[k * UNIT..(k + 1) * UNIT], "{ty} unit {k}");
                }
                assert_eq!(y2, y, "{ty} block {b}: requantized bytes differ");
                // perturbed values: the rechosen point is at least as close as the written one
                let w: Vec<f32> = (0..UNIT).map(|i| 0.5 + i as f32 * 0.3).collect();
                let mut y3 = y.clone();
                for k in 0..QK_K / UNIT {
                    let xu: Vec<f32> = (0..UNIT).map(|i| xb[k * UNIT + i] + 0.02 * u()).collect();
                    let cost = |vals: &[f32]| -> f32 {
                        (0..UNIT).map(|i| w[i] * (xu[i] - vals[i]).powi(2)).sum()
                    };
                    choose_unit(ty, &mut y3, k, &xu, &w, &mut v);
                    let old = cost(&deq[k * UNIT..(k + 1) * UNIT]);
                    assert!(
                        cost(&v) <= old * (1.0 + 1e-5) + 1e-12,
                        "{ty} unit {k}: {} > {old}",
                        cost(&v)
                    );
                }
                let mut deq3 = vec![0f32; QK_K];
                crate::quants::dequantize(ty, &y3, &mut deq3).unwrap();
                for k in 0..QK_K / UNIT {
                    unit_values(ty, &y3, k, &mut v);
                    assert_eq!(&v[..], &deq3[k * UNIT..(k + 1) * UNIT], "{ty} unit {k}");
                }
            }
        }
    }

    /// Quantize, dequantize with shrink's dequantizer and bound the relative RMS error (a sanity
    /// check; llama.cpp's bytes are checked in shrink-formats' llama_quantize_bytes test).
    #[test]
    fn round_trip_rms_error_is_plausible() {
        let mut u = super::super::uniform_rng(0x2545_f491_4f6c_dd1du64);
        let cols = 1024;
        // roughly normal (a sum of 4 uniforms), a few outliers
        let x: Vec<f32> = (0..cols * 4)
            .map(|i| {
                let v = (u() + u() + u() + u()) * 0.05;
                if i % 101 == 7 {
                    v * 5.0
                } else {
                    v
                }
            })
            .collect();
        let w: Vec<f32> = (0..cols).map(|i| 0.5 + (i % 5) as f32).collect();
        let ss = x.iter().map(|v| v * v).sum::<f32>();
        for (ty, lo, hi) in [
            (GgmlType::IQ3_XXS, 0.05, 0.3),
            (GgmlType::IQ3_S, 0.05, 0.3),
            (GgmlType::IQ2_XXS, 0.1, 0.6),
            (GgmlType::IQ2_XS, 0.1, 0.5),
            (GgmlType::IQ2_S, 0.1, 0.5),
        ] {
            for imat in [false, true] {
                if !imat && super::super::requires_imatrix(ty) {
                    continue;
                }
                let q = super::super::quantize(ty, &x, cols, imat.then_some(&w[..])).unwrap();
                assert_eq!(q.len(), x.len() / QK_K * ty.type_size());
                let mut y = vec![0f32; x.len()];
                crate::quants::dequantize(ty, &q, &mut y).unwrap();
                let e = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>();
                let rel = (e / ss).sqrt();
                assert!(
                    rel > lo && rel < hi,
                    "{ty} imatrix={imat}: relative RMS error {rel}"
                );
            }
        }
    }
}
