//! Quantization grids: the values a row of a weight may take, and how their parameters are fitted.
//!
//! RTN and the GPTQ/SparseGPT column sweep round onto a [`Grid`]. A grid cuts each row into blocks
//! of [`Grid::block_len`] columns whose parameters are fitted together ([`Grid::fit`]). A block is
//! made of sub-blocks of [`Grid::sub_len`] columns that share one [`Affine`]: code `q` stands for
//! `a * (q - zero) + b`. The sweep fits a block (up front from the original weights, or when it
//! reaches the block, from the weights as updated so far), then chooses every code itself with
//! [`Affine::code`] and propagates the rounding error; the grid finally packs the codes
//! ([`Grid::assemble`]).
//!
//! - [`IntGrid`]: GPTQ's uniform integer groups (`find_params`: min-max or MSE-clipped scale and
//!   integer zero per group of `group_size` columns; `b = 0`).
//! - [`GgmlGrid`]: a llama.cpp block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K). Its
//!   scales (f16 block scales; for the K-quants 6-bit sub-block scales and mins under f16 super-block
//!   scales) are fitted by a port of llama.cpp's own quantizer, weighted by the importance of each
//!   column (the Hessian diagonal `2/n sum x^2`, proportional to llama-imatrix's mean `x^2`, which
//!   llama-quantize weights with), and the block's bytes are kept so the codes go back into exactly
//!   that block. Every value [`Affine::value`] gives equals llama.cpp's dequantization of the
//!   written block bit for bit, so the error GPTQ propagates is the error of the file.
//!
//! Codebook grids (IQ4_NL's 16 levels, FP8/FP4) fit the same shape with a level table in place of
//! the integers `q - zero`: [`crate::grid_fp::FpGrid`] (FP8 E4M3, NVFP4, MXFP4). A grid whose
//! parameters span rows (FP8's 128×128 tiles) says so ([`Grid::row_dependent`]) and is fitted
//! with the row's index ([`Grid::fit_row`]), up front.
pub use crate::grid_fp::FpGrid;
use crate::quant::{find_params, quantize_value, NumberFormat, QuantConfig, QuantizedWeight};
use anyhow::{bail, Result};
pub use shrink_model::ggml_quant::Affine;
use shrink_model::ggml_quant::{
    decode_block, encode_codes, fallback_type, grid_shape, lattice_choose_unit, quantize_block,
    quantize_lattice_block, GRID_TYPES, LATTICE_TYPES, LATTICE_UNIT,
};
use shrink_model::gguf::GgmlType;

/// A quantization grid for the rows of one linear (of `d_in` columns).
pub trait Grid: Send + Sync {
    /// e.g. `w4 g64 asym` or `Q4_K`.
    fn label(&self) -> String;
    /// Columns whose parameters are fitted together (the last block of a row may be shorter).
    fn block_len(&self) -> usize;
    /// Columns sharing one [`Affine`]; divides [`Grid::block_len`].
    fn sub_len(&self) -> usize;
    /// Largest code.
    fn max_code(&self) -> u32;
    /// Bytes of stored state per block (the ggml block); 0 when the affines are all there is.
    fn stored_bytes(&self) -> usize {
        0
    }
    /// Whether [`Grid::fit`] uses importance weights.
    fn uses_importance(&self) -> bool {
        false
    }
    /// Fits one block of a row: `x` its values, `importance` one weight per column, `sigma2` the
    /// mean square of the whole row. Writes one affine per sub-block, the fitted codes (the
    /// nearest under the fitter's own rule, which the caller may replace), and the stored state.
    fn fit(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        sigma2: f32,
        affines: &mut [Affine],
        codes: &mut [u8],
        stored: &mut [u8],
    );
    /// [`Grid::fit`] for row `row` of the weight; grids whose parameters span rows (a 128×128
    /// tile's scale) need the row, the others ignore it.
    #[allow(clippy::too_many_arguments)]
    fn fit_row(
        &self,
        _row: usize,
        x: &[f32],
        importance: Option<&[f32]>,
        sigma2: f32,
        affines: &mut [Affine],
        codes: &mut [u8],
        stored: &mut [u8],
    ) {
        self.fit(x, importance, sigma2, affines, codes, stored)
    }
    /// Columns whose codes are chosen together: 1 for a grid per weight, 8 for a lattice, whose
    /// codes are points of several weights ([`LatticeGrid`]). Units are consecutive columns
    /// aligned to their length.
    fn unit_len(&self) -> usize {
        1
    }
    /// For a grid with [`Grid::unit_len`] > 1: rechooses unit `k` of a fitted block (`stored`
    /// its bytes) for the values `x` under the weights `w` (one per column), keeping the block's
    /// scales, and writes the unit's values into `out`.
    fn choose_unit(&self, _stored: &mut [u8], _k: usize, _x: &[f32], _w: &[f32], _out: &mut [f32]) {
        unreachable!("{} chooses codes per weight", self.label())
    }
    /// Whether [`Grid::fit_row`] depends on the row: such a grid is fitted up front only (its
    /// configuration has no `group_size`, so the sweep's parameters are static).
    fn row_dependent(&self) -> bool {
        false
    }
    /// The quantized weight from the final codes (`[d_out, d_in]`, natural column order), the
    /// affines (`[d_out, subs per row]`), the stored state (`[d_out, blocks per row, bytes]`) and
    /// the sub-block of every column (`g_idx`).
    fn assemble(
        &self,
        d_out: usize,
        d_in: usize,
        codes: Vec<u8>,
        affines: Vec<Affine>,
        stored: Vec<u8>,
        g_idx: Vec<u32>,
    ) -> QuantizedWeight;
}

/// The grid a configuration describes for rows of `d_in` columns (integer or llama.cpp grids;
/// the float formats' parameters come from the whole weight: [`grid_for_weight`]).
pub fn grid_for(cfg: &QuantConfig, d_in: usize) -> Result<Box<dyn Grid>> {
    cfg.validate()?;
    if cfg.format != NumberFormat::Int {
        bail!(
            "{}: a float grid is made from the weight it quantizes (grid_for_weight)",
            cfg.label()
        );
    }
    Ok(match cfg.ggml {
        None => Box::new(IntGrid::new(cfg.clone(), d_in)),
        Some(t) if LATTICE_TYPES.contains(&fallback_type(t, d_in)) => {
            Box::new(LatticeGrid::new(cfg, t))
        }
        Some(t) => Box::new(GgmlGrid::new(cfg, t, d_in)?),
    })
}

/// The grid a configuration describes for the `[d_out, d_in]` weight `w` (its original values):
/// [`grid_for`], or for a float format a [`FpGrid`] whose tensor-wide parameters come from `w`.
pub fn grid_for_weight(
    cfg: &QuantConfig,
    w: &[f32],
    d_out: usize,
    d_in: usize,
) -> Result<Box<dyn Grid>> {
    match cfg.format {
        NumberFormat::Int => grid_for(cfg, d_in),
        _ => Ok(Box::new(FpGrid::new(cfg, w, d_out, d_in)?)),
    }
}

/// GPTQ's integer groups (see [`crate::quant`]).
pub struct IntGrid {
    cfg: QuantConfig,
    g: usize,
}

impl IntGrid {
    /// The integer groups of `cfg` (whose `ggml` is ignored) for rows of `d_in` columns.
    pub fn new(cfg: QuantConfig, d_in: usize) -> Self {
        let g = cfg.group_len(d_in);
        IntGrid { cfg, g }
    }
}

impl Grid for IntGrid {
    fn label(&self) -> String {
        self.cfg.label()
    }
    fn block_len(&self) -> usize {
        self.g
    }
    fn sub_len(&self) -> usize {
        self.g
    }
    fn max_code(&self) -> u32 {
        self.cfg.maxq()
    }
    fn fit(
        &self,
        x: &[f32],
        _importance: Option<&[f32]>,
        _sigma2: f32,
        affines: &mut [Affine],
        codes: &mut [u8],
        _stored: &mut [u8],
    ) {
        let (scale, zero) = find_params(x, &self.cfg);
        let maxq = self.cfg.maxq();
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = quantize_value(v, scale, zero, maxq) as u8;
        }
        affines[0] = Affine {
            a: scale,
            b: -0.0,
            zero: zero as i32,
            table: None,
        };
    }
    fn assemble(
        &self,
        d_out: usize,
        d_in: usize,
        codes: Vec<u8>,
        affines: Vec<Affine>,
        _stored: Vec<u8>,
        g_idx: Vec<u32>,
    ) -> QuantizedWeight {
        QuantizedWeight {
            d_out,
            d_in,
            config: self.cfg.clone(),
            codes,
            scales: affines.iter().map(|a| a.a).collect(),
            zeros: affines.iter().map(|a| a.zero as u32).collect(),
            g_idx,
            ggml: None,
        }
    }
}

/// A llama.cpp block type's own grid (see the module documentation).
pub struct GgmlGrid {
    cfg: QuantConfig,
    /// The type written: the requested one, or llama-quantize's fallback when its blocks do not
    /// divide the row (Q4_K on 576 columns is Q5_0).
    pub ty: GgmlType,
    sub: usize,
    max: u32,
}

impl GgmlGrid {
    pub fn new(cfg: &QuantConfig, requested: GgmlType, d_in: usize) -> Result<Self> {
        let ty = fallback_type(requested, d_in);
        let Some((sub, max)) = grid_shape(ty) else {
            bail!(
                "rows of {d_in} columns hold no whole {} blocks, and llama-quantize's fallback for \
                 them is {}, which is not a quantized grid shrink can round onto ({})",
                requested.name(),
                ty.name(),
                GRID_TYPES.map(|t| t.name()).join(", ")
            );
        };
        Ok(GgmlGrid {
            cfg: cfg.clone(),
            ty,
            sub,
            max,
        })
    }
}

impl Grid for GgmlGrid {
    fn label(&self) -> String {
        self.ty.name().to_string()
    }
    fn block_len(&self) -> usize {
        self.ty.block_size()
    }
    fn sub_len(&self) -> usize {
        self.sub
    }
    fn max_code(&self) -> u32 {
        self.max
    }
    fn stored_bytes(&self) -> usize {
        self.ty.type_size()
    }
    fn uses_importance(&self) -> bool {
        shrink_model::ggml_quant::uses_imatrix(self.ty)
    }
    fn fit(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        sigma2: f32,
        affines: &mut [Affine],
        codes: &mut [u8],
        stored: &mut [u8],
    ) {
        quantize_block(self.ty, x, importance, sigma2, stored);
        decode_block(self.ty, stored, affines, codes);
    }
    fn assemble(
        &self,
        d_out: usize,
        d_in: usize,
        codes: Vec<u8>,
        affines: Vec<Affine>,
        mut stored: Vec<u8>,
        g_idx: Vec<u32>,
    ) -> QuantizedWeight {
        let (bs, ts) = (self.ty.block_size(), self.ty.type_size());
        for (row_codes, row_blocks) in codes.chunks(d_in).zip(stored.chunks_mut(d_in / bs * ts)) {
            for (c, y) in row_codes.chunks(bs).zip(row_blocks.chunks_mut(ts)) {
                encode_codes(self.ty, y, c);
            }
        }
        QuantizedWeight {
            d_out,
            d_in,
            config: self.cfg.clone(),
            codes,
            scales: affines.iter().map(|a| a.a).collect(),
            zeros: affines.iter().map(|a| a.zero as u32).collect(),
            g_idx,
            ggml: Some((self.ty, stored)),
        }
    }
}

/// A lattice i-quant's blocks (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M): 256
/// weights under one f16 scale and 3- or 4-bit sub-block scales, whose codes are points of 4 or 8
/// weights of a fixed codebook (llama.cpp's `iq3xs`/`iq2xs` grids with sign bits per 8; IQ1's
/// unsigned grid of `{-1, 0, 1}` plus a fitted delta).
///
/// [`Grid::fit`] is llama.cpp's own quantizer (`quantize_row_iq*_impl`), importance-weighted like
/// [`GgmlGrid`]; it fixes the scales. The sweep then rounds a unit of 8 columns at a time
/// ([`Grid::choose_unit`]: the point and signs of least weighted error over the whole codebook,
/// at the fitted scales) and passes each of its 8 columns' errors on in order. That is GPTQ's
/// update with a vector quantizer (as GPTVQ, van Baalen et al. 2024, eq. 4, does with its own
/// codebooks): fixing columns `S` at once to `q` costs `(x - q)^T ((H_F^-1)_SS)^-1 (x - q) / 2`,
/// which the in-order updates with the codes fixed attain exactly, and whose diagonal weights
/// `1 / U_qq^2` the choice uses. The per-weight affines are placeholders (one per block, its
/// f16 scale); the block bytes are the codes.
pub struct LatticeGrid {
    cfg: QuantConfig,
    pub ty: GgmlType,
}

impl LatticeGrid {
    pub fn new(cfg: &QuantConfig, ty: GgmlType) -> Self {
        assert!(LATTICE_TYPES.contains(&ty), "{ty} is not a lattice type");
        LatticeGrid {
            cfg: cfg.clone(),
            ty,
        }
    }
}

impl Grid for LatticeGrid {
    fn label(&self) -> String {
        self.ty.name().to_string()
    }
    fn block_len(&self) -> usize {
        self.ty.block_size()
    }
    fn sub_len(&self) -> usize {
        self.ty.block_size()
    }
    fn max_code(&self) -> u32 {
        0
    }
    fn stored_bytes(&self) -> usize {
        self.ty.type_size()
    }
    fn uses_importance(&self) -> bool {
        true
    }
    fn unit_len(&self) -> usize {
        LATTICE_UNIT
    }
    fn fit(
        &self,
        x: &[f32],
        importance: Option<&[f32]>,
        _sigma2: f32,
        affines: &mut [Affine],
        codes: &mut [u8],
        stored: &mut [u8],
    ) {
        quantize_lattice_block(self.ty, x, importance, stored);
        codes.fill(0);
        affines[0] = Affine {
            a: half::f16::from_bits(u16::from_le_bytes([stored[0], stored[1]])).to_f32(),
            b: -0.0,
            zero: 0,
            table: None,
        };
    }
    fn choose_unit(&self, stored: &mut [u8], k: usize, x: &[f32], w: &[f32], out: &mut [f32]) {
        lattice_choose_unit(self.ty, stored, k, x, w, out)
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
        QuantizedWeight {
            d_out,
            d_in,
            config: self.cfg.clone(),
            codes,
            scales: affines.iter().map(|a| a.a).collect(),
            zeros: vec![0; affines.len()],
            g_idx,
            ggml: Some((self.ty, stored)),
        }
    }
}

/// Round to nearest on `grid`: every block fitted from the weights alone (no importance), every
/// weight given the fitter's own code. On a [`GgmlGrid`] these are llama.cpp's reference
/// quantizer's blocks, byte for byte what `llama-quantize --pure` writes without an imatrix.
pub fn rtn_on(grid: &dyn Grid, w: &[f32], d_out: usize, d_in: usize) -> QuantizedWeight {
    use rayon::prelude::*;
    assert_eq!(
        w.len(),
        d_out * d_in,
        "rtn_on: weight is not {d_out} x {d_in}"
    );
    let (bl, sub, sb) = (grid.block_len(), grid.sub_len(), grid.stored_bytes());
    let n_blocks = d_in.div_ceil(bl.max(1));
    let n_sub = d_in.div_ceil(sub.max(1));
    let stride = (n_blocks * sb).max(1);
    let mut codes = vec![0u8; d_out * d_in];
    let mut affines = vec![Affine::default(); d_out * n_sub.max(1)];
    let mut stored = vec![0u8; d_out * stride];
    if d_in > 0 {
        codes
            .par_chunks_mut(d_in)
            .zip(affines.par_chunks_mut(n_sub))
            .zip(stored.par_chunks_mut(stride))
            .zip(w.par_chunks(d_in))
            .enumerate()
            .for_each(|(r, (((c, a), s), row))| {
                let s2 = shrink_model::ggml_quant::row_mean_square(row);
                for k in 0..n_blocks {
                    let (lo, hi) = (k * bl, ((k + 1) * bl).min(d_in));
                    let sa = lo / sub;
                    let st = if sb > 0 {
                        &mut s[k * sb..(k + 1) * sb]
                    } else {
                        &mut s[..0]
                    };
                    grid.fit_row(
                        r,
                        &row[lo..hi],
                        None,
                        s2,
                        &mut a[sa..hi.div_ceil(sub)],
                        &mut c[lo..hi],
                        st,
                    );
                }
            });
    }
    if sb == 0 {
        stored.clear();
    }
    let g_idx = (0..d_in).map(|j| (j / sub.max(1)) as u32).collect();
    grid.assemble(d_out, d_in, codes, affines, stored, g_idx)
}
