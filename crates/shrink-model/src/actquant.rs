//! Activation fake-quantization (`shrink eval --act-quant`): the input of every decoder linear
//! (the MoE router excepted) is rounded onto a low-precision grid just before its matmul, with
//! dynamic scales, as the W8A8 / FP8 / FP4 kernels of a serving engine quantize it. The weights
//! are whatever the model holds; the matmul itself stays f32.
//!
//! - `int8`: symmetric per token (row), `scale = amax / 127`, codes `round_half_even(x / scale)`
//!   clamped to [-127, 127] (vLLM's dynamic `scaled_int8_quant`).
//! - `fp8`: E4M3 per token, `scale = amax / 448`, `x / scale` rounded to the nearest E4M3 value
//!   (vLLM's dynamic per-token FP8).
//! - `nvfp4`: E2M1 values in groups of 16 along the row, each group's scale an E4M3 value
//!   `e4m3(global * amax_g / 6)`, `global = 448 * 6 / amax` of the whole input of the call — the
//!   weights' rule (compressed-tensors `generate_gparam`), here computed from each input
//!   dynamically, where an engine uses a global scale calibrated once.
//! - `mxfp4`: E2M1 values in groups of 32, each group's scale `2^(e - 127)` with
//!   compressed-tensors' E8M0 exponent rule ([`crate::minifloat::mxfp4_exponent`]).
//!
//! `amax` of a row or group of zeros gives a zero input, as the kernels do.
use crate::minifloat::{
    amax, e2m1_decode, e2m1_encode, e4m3_round, e8m0_decode, mxfp4_exponent, nvfp4_global_scale,
    nvfp4_group_scale, E4M3_MAX, MXFP4_GROUP, NVFP4_GROUP,
};
use anyhow::{bail, Result};

/// An activation scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    Int8,
    Fp8,
    Nvfp4,
    Mxfp4,
}

impl ActQuant {
    pub fn parse(s: &str) -> Result<ActQuant> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "int8" => ActQuant::Int8,
            "fp8" => ActQuant::Fp8,
            "nvfp4" => ActQuant::Nvfp4,
            "mxfp4" => ActQuant::Mxfp4,
            o => bail!("unknown activation quantization '{o}' (use int8, fp8, nvfp4 or mxfp4)"),
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            ActQuant::Int8 => "int8",
            ActQuant::Fp8 => "fp8",
            ActQuant::Nvfp4 => "nvfp4",
            ActQuant::Mxfp4 => "mxfp4",
        }
    }
}

/// `x` rounded onto E2M1 (half to even, saturating at ±6).
fn e2m1_round(x: f32) -> f32 {
    e2m1_decode(e2m1_encode(x))
}

/// `x` (`[rows, d]` row-major) fake-quantized with `a`.
pub fn fake_quant(a: ActQuant, x: &[f32], d: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    let d = d.max(1);
    match a {
        ActQuant::Int8 => {
            for row in out.chunks_mut(d) {
                let s = amax(row) / 127.0;
                if s > 0.0 {
                    row.iter_mut()
                        .for_each(|v| *v = (*v / s).round_ties_even().clamp(-127.0, 127.0) * s);
                }
            }
        }
        ActQuant::Fp8 => {
            for row in out.chunks_mut(d) {
                let s = amax(row) / E4M3_MAX;
                if s > 0.0 {
                    row.iter_mut().for_each(|v| *v = e4m3_round(*v / s) * s);
                }
            }
        }
        ActQuant::Nvfp4 => {
            let global = nvfp4_global_scale(amax(x));
            for row in out.chunks_mut(d) {
                for g in row.chunks_mut(NVFP4_GROUP) {
                    let s = nvfp4_group_scale(amax(g), global) / global;
                    g.iter_mut().for_each(|v| *v = e2m1_round(*v / s) * s);
                }
            }
        }
        ActQuant::Mxfp4 => {
            for row in out.chunks_mut(d) {
                for g in row.chunks_mut(MXFP4_GROUP) {
                    let s = e8m0_decode(mxfp4_exponent(amax(g)));
                    if s > 0.0 && s.is_finite() {
                        g.iter_mut().for_each(|v| *v = e2m1_round(*v / s) * s);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minifloat::E2M1_LEVELS;

    #[test]
    fn each_scheme_rounds_onto_its_grid() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
            .collect();
        // int8: 255 levels per row, amax exact, errors below half a step
        let q = fake_quant(ActQuant::Int8, &x, 32);
        for (row, qr) in x.chunks(32).zip(q.chunks(32)) {
            let s = amax(row) / 127.0;
            for (a, b) in row.iter().zip(qr) {
                assert!((a - b).abs() <= 0.5 * s + 1e-6);
                let k = b / s;
                assert!((k - k.round()).abs() < 1e-3);
            }
            assert_eq!(amax(qr), amax(row));
        }
        // fp8: the values over the scale are E4M3 values
        let q = fake_quant(ActQuant::Fp8, &x, 32);
        for (row, qr) in x.chunks(32).zip(q.chunks(32)) {
            let s = amax(row) / E4M3_MAX;
            for b in qr {
                assert_eq!(e4m3_round(b / s), b / s);
            }
        }
        // mxfp4: group values are E2M1 levels times a power of two
        let q = fake_quant(ActQuant::Mxfp4, &x, 64);
        for (g, qg) in x.chunks(32).zip(q.chunks(32)) {
            let s = e8m0_decode(mxfp4_exponent(amax(g)));
            for b in qg {
                assert!(E2M1_LEVELS.contains(&(b / s).abs()), "{b} / {s}");
            }
        }
        // nvfp4: every group holds at most 15 distinct values, the input's sign kept
        let q = fake_quant(ActQuant::Nvfp4, &x, 64);
        for (a, b) in x.iter().zip(&q) {
            assert!(*b == 0.0 || a.signum() == b.signum());
        }
        assert!((0..4).all(|g| {
            let mut v: Vec<i64> = q[g * 16..(g + 1) * 16]
                .iter()
                .map(|f| (f * 1e6) as i64)
                .collect();
            v.sort();
            v.dedup();
            v.len() <= 15
        }));
        // zeros stay zeros
        assert!(fake_quant(ActQuant::Int8, &[0.0; 8], 8)
            .iter()
            .all(|v| *v == 0.0));
        assert!(ActQuant::parse("int4").is_err());
    }

    #[test]
    fn e2m1_rounds_half_to_even() {
        assert_eq!(e2m1_round(0.25), 0.0);
        assert_eq!(e2m1_round(0.75), 1.0);
        assert_eq!(e2m1_round(2.5), 2.0);
        assert_eq!(e2m1_round(5.0), 4.0);
        assert_eq!(e2m1_round(-7.0), -6.0);
    }
}
