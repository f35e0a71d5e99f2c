//! Round to nearest: every weight goes to its nearest grid point, with the grid of its row (or of
//! its group of `group_size` input columns) from [`crate::quant::find_params`]. [`rtn_on`] does the
//! same on any [`crate::grid::Grid`].
use crate::grid::{rtn_on, IntGrid};
use crate::quant::{QuantConfig, QuantizedWeight};

/// Quantizes a `[d_out, d_in]` row-major weight by round to nearest on the grid of `cfg`.
///
/// Groups are contiguous runs of `group_size` columns; the last one of a row is shorter when
/// `group_size` does not divide `d_in`. `g_idx` is the natural `j / group_size`.
pub fn rtn(w: &[f32], d_out: usize, d_in: usize, cfg: &QuantConfig) -> QuantizedWeight {
    let grid = IntGrid::new(
        QuantConfig {
            ggml: None,
            format: crate::quant::NumberFormat::Int,
            ..cfg.clone()
        },
        d_in,
    );
    rtn_on(&grid, w, d_out, d_in)
}
