//! Vectorized elementwise kernels of the forward pass: softmax, SiLU-gated product and
//! log-sum-exp, all built on one branch-free `exp`.
//!
//! `exp(x)` uses Cody–Waite range reduction `x = n ln2 + r`, `|r| <= ln2/2`, the Cephes `expf`
//! minimax polynomial for `e^r`, and scales by `2^n` through the exponent bits (`n` is read off the
//! bits of `x log2(e) + 1.5·2^23`, so no float-to-int conversion is needed). Its relative error
//! is below 2.5e-7 (a couple of ulp) on `[-87, 88]` (tested against f64 `exp`). Inputs are clamped to
//! `[-87.34, 88]`: below, the result is the smallest normal f32 (≈1.2e-38) instead of a
//! subnormal or 0, which changes no softmax or SiLU result by more than that; NaN stays NaN.
//!
//! The loops are plain scalar code over slices with 8 explicit accumulator lanes for the
//! reductions, so the compiler vectorizes them. On x86-64 each kernel is compiled a second time
//! with AVX2+FMA enabled and picked at run time; both versions do the same operations in the
//! same order (Rust never fuses a multiply and an add on its own), so they give identical bits.

const LANES: usize = 8;

/// `e^x` for one value (see the module docs for range and accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 355/512 exactly
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: x + MAGIC rounds x to an integer
    let x = x.clamp(-87.336_54, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = (((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * (r * r)
        + r
        + 1.0;
    // t's low mantissa bits hold n (offset by MAGIC's bits); 2^n has exponent field n + 127.
    let e = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    p * f32::from_bits(e)
}

/// Runs `$body` compiled for AVX2+FMA when the CPU has them, else for the baseline target.
macro_rules! dispatch {
    ($name:ident, $avx:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $body:ident) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `$avx` is compiled with.
                    return unsafe { $avx($($arg),*) };
                }
            }
            $body($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
    };
}

#[inline(always)]
fn max_body(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            acc[k] = acc[k].max(c[k]);
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    acc.iter().fold(m, |a, &b| a.max(b))
}

/// `x[i] <- e^(x[i] - shift)`, returning the sum of the new values.
#[inline(always)]
fn exp_shifted_body(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            let e = exp(c[k] - shift);
            c[k] = e;
            acc[k] += e;
        }
    }
    let mut s = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        s += *v;
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let m = max_body(row);
    let inv = 1.0 / exp_shifted_body(row, m);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn silu_mul_body(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g * *u / (1.0 + exp(-*g));
    }
}

/// Rows longer than this are summed in f32 block by block, each block's sum added in f64.
const LSE_BLOCK: usize = 1024;

#[inline(always)]
fn log_sum_exp_body(row: &[f32]) -> f64 {
    let m = max_body(row);
    let mut s = 0f64;
    let mut buf = [0f32; LSE_BLOCK];
    for block in row.chunks(LSE_BLOCK) {
        let b = &mut buf[..block.len()];
        b.copy_from_slice(block);
        s += exp_shifted_body(b, m) as f64;
    }
    m as f64 + s.ln()
}

dispatch!(softmax_in_place, softmax_avx2, (row: &mut [f32]) -> (), softmax_body);
dispatch!(silu_mul, silu_mul_avx2, (gate: &mut [f32], up: &[f32]) -> (), silu_mul_body);
dispatch!(log_sum_exp, log_sum_exp_avx2, (row: &[f32]) -> f64, log_sum_exp_body);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut worst = 0f64;
        let n = 2_000_000;
        for i in 0..=n {
            let x = -87.0f32 + (175.0 * i as f64 / n as f64) as f32;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "max relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        let tiny = exp(-1000.0);
        assert!(tiny > 0.0 && tiny < 1.2e-38, "{tiny:e}");
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn kernels_match_f64() {
        let row: Vec<f32> = (0..1037)
            .map(|i| ((i * 7919 % 1000) as f32 / 37.0) - 9.0)
            .collect();
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        let want = m + s.ln();
        assert!((log_sum_exp(&row) - want).abs() < 1e-6);

        let mut p = row.clone();
        softmax_in_place(&mut p);
        for (pi, &v) in p.iter().zip(&row) {
            let w = (v as f64 - m).exp() / s;
            assert!((*pi as f64 - w).abs() <= 1e-6 * w + 1e-12, "{pi} vs {w}");
        }

        let mut g = row.clone();
        let up: Vec<f32> = row.iter().map(|v| v * 0.5 - 1.0).collect();
        silu_mul(&mut g, &up);
        for ((gi, &v), &u) in g.iter().zip(&row).zip(&up) {
            let (v, u) = (v as f64, u as f64);
            let w = v / (1.0 + (-v).exp()) * u;
            assert!(
                (*gi as f64 - w).abs() <= 1e-6 * w.abs() + 1e-30,
                "{gi} vs {w}"
            );
        }
    }

    #[test]
    fn dispatched_and_baseline_agree_bit_for_bit() {
        let row: Vec<f32> = (0..531).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        let mut a = row.clone();
        let mut b = row.clone();
        softmax_in_place(&mut a);
        softmax_body(&mut b);
        assert_eq!(a, b);
        assert_eq!(log_sum_exp(&row), log_sum_exp_body(&row));
    }
}
