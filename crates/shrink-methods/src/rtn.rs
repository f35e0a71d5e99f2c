//! Round to nearest: every weight goes to its nearest grid point, with the grid of its row (or of
//! its group of `group_size` input columns) from [`find_params`].
use crate::quant::{find_params, quantize_value, QuantConfig, QuantizedWeight};
use rayon::prelude::*;

/// Quantizes a `[d_out, d_in]` row-major weight by round to nearest on the grid of `cfg`.
///
/// Groups are contiguous runs of `group_size` columns; the last one of a row is shorter when
/// `group_size` does not divide `d_in`. `g_idx` is the natural `j / group_size`.
pub fn rtn(w: &[f32], d_out: usize, d_in: usize, cfg: &QuantConfig) -> QuantizedWeight {
    assert_eq!(
        w.len(),
        d_out * d_in,
        "rtn: weight has {} values, expected {d_out} x {d_in}",
        w.len()
    );
    let g = cfg.group_len(d_in);
    let ng = cfg.n_groups(d_in);
    let maxq = cfg.maxq();
    let mut codes = vec![0u8; d_out * d_in];
    let mut scales = vec![0.0f32; d_out * ng];
    let mut zeros = vec![0u32; d_out * ng];
    if d_in > 0 {
        codes
            .par_chunks_mut(d_in)
            .zip(scales.par_chunks_mut(ng))
            .zip(zeros.par_chunks_mut(ng))
            .zip(w.par_chunks(d_in))
            .for_each(|(((codes, scales), zeros), row)| {
                for k in 0..ng {
                    let (a, b) = (k * g, ((k + 1) * g).min(d_in));
                    let (s, z) = find_params(&row[a..b], cfg);
                    scales[k] = s;
                    zeros[k] = z;
                    for j in a..b {
                        codes[j] = quantize_value(row[j], s, z, maxq) as u8;
                    }
                }
            });
    }
    QuantizedWeight {
        d_out,
        d_in,
        config: cfg.clone(),
        codes,
        scales,
        zeros,
        g_idx: (0..d_in).map(|j| (j / g) as u32).collect(),
    }
}
