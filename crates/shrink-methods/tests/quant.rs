//! The quantization grid (find_params / quantize / dequantize) and RTN.
mod common;
use common::Rng;
use shrink_methods::*;

fn cfg(bits: u32, group_size: Option<usize>, sym: bool, mse: bool) -> QuantConfig {
    QuantConfig {
        bits,
        group_size,
        sym,
        mse,
        ggml: None,
        format: Default::default(),
    }
}

fn codes_and_values(x: &[f32], c: &QuantConfig) -> (Vec<u32>, Vec<f32>) {
    let (s, z) = find_params(x, c);
    let q: Vec<u32> = x
        .iter()
        .map(|&v| quantize_value(v, s, z, c.maxq()))
        .collect();
    let v = q.iter().map(|&q| dequantize_value(q, s, z)).collect();
    (q, v)
}

#[test]
fn validate_messages() {
    assert!(cfg(4, Some(128), false, false).validate().is_ok());
    let e = cfg(9, None, false, false)
        .validate()
        .unwrap_err()
        .to_string();
    assert_eq!(e, "bits must be between 2 and 8, got 9");
    let e = cfg(1, None, false, false)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("got 1"), "{e}");
    let e = cfg(4, Some(0), false, false)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("group_size"), "{e}");
    assert_eq!(cfg(2, None, true, false).maxq(), 3);
    assert_eq!(cfg(8, None, true, false).maxq(), 255);
}

#[test]
fn asym_by_hand() {
    // 2 bits: xmin = -1, xmax = 2, scale = 3/3 = 1, zero = round(1) = 1.
    let c = cfg(2, None, false, false);
    let x = [-1.0f32, 0.5, 2.0, 1.5];
    assert_eq!(find_params(&x, &c), (1.0, 1));
    let (q, v) = codes_and_values(&x, &c);
    // 0.5 -> round(0.5) = 0 (half to even) -> code 1; 1.5 -> 2 -> code 3.
    assert_eq!(q, vec![0, 1, 3, 3]);
    assert_eq!(v, vec![-1.0, 0.0, 2.0, 2.0]);
    // Only non-negative values: xmin is clamped to 0, zero = 0.
    let c4 = cfg(4, None, false, false);
    let (s, z) = find_params(&[0.0, 1.5, 3.0], &c4);
    assert_eq!((s, z), (3.0f32 / 15.0, 0));
    // Only non-positive values: xmax is clamped to 0, zero = maxq.
    let (s, z) = find_params(&[-3.0, -1.0], &c4);
    assert_eq!((s, z), (3.0f32 / 15.0, 15));
}

#[test]
fn sym_by_hand() {
    // 2 bits: xmax = max(|-1.5|, 0.75) = 1.5, range [-1.5, 1.5], scale = 3/3 = 1, zero = 2.
    let c = cfg(2, None, true, false);
    let x = [-1.5f32, 0.75, 0.2, -0.5];
    assert_eq!(find_params(&x, &c), (1.0, 2));
    let (q, v) = codes_and_values(&x, &c);
    // -1.5 -> round(-1.5) = -2 -> code 0; 0.75 -> 1 -> 3; 0.2 -> 0 -> 2; -0.5 -> -0 -> 2.
    assert_eq!(q, vec![0, 3, 2, 2]);
    assert_eq!(v, vec![-2.0, 1.0, 0.0, 0.0]);
    // 4 bits: xmax = 7.5, scale = 15/15 = 1, zero = 8; 2.5 -> 2 (half to even) -> code 10.
    let c4 = cfg(4, None, true, false);
    let x = [-7.5f32, 3.0, 2.5, 7.5];
    assert_eq!(find_params(&x, &c4), (1.0, 8));
    let (q, _) = codes_and_values(&x, &c4);
    assert_eq!(q, vec![0, 11, 10, 15]);
    // Reference quirk: without a negative value xmin stays 0, so scale = xmax / maxq while the
    // zero point is still (maxq + 1) / 2; large values clip.
    let (s, z) = find_params(&[1.0, 3.0], &c);
    assert_eq!((s, z), (1.0, 2));
    assert_eq!(quantize_value(3.0, s, z, 3), 3);
}

#[test]
fn all_equal_and_all_zero_groups() {
    for sym in [false, true] {
        for bits in [2, 3, 4, 8] {
            let c = cfg(bits, None, sym, false);
            // All zero: range [-1, 1]; zero is exactly representable.
            let (q, v) = codes_and_values(&[0.0; 5], &c);
            assert!(v.iter().all(|&v| v == 0.0), "{bits} {sym}: {v:?}");
            assert!(q.iter().all(|&q| q <= c.maxq()));
            // All equal: finite scale, the value is reproduced to within half a step.
            for val in [0.37f32, -2.5, 1e-3] {
                let x = [val; 6];
                let (s, _) = find_params(&x, &c);
                assert!(s > 0.0 && s.is_finite());
                let (_, v) = codes_and_values(&x, &c);
                let tol = if sym && val > 0.0 {
                    val
                } else {
                    s / 2.0 + 1e-7
                };
                for &y in &v {
                    assert!(
                        (y - val).abs() <= tol,
                        "{bits} {sym} {val}: {y} (scale {s})"
                    );
                }
            }
        }
    }
}

#[test]
fn codes_in_range_and_zero_exact() {
    let mut rng = Rng::new(1);
    for trial in 0..200 {
        let bits = 2 + (trial % 7) as u32;
        let sym = trial % 2 == 0;
        let mse = trial % 3 == 0;
        let c = cfg(bits, None, sym, mse);
        let x: Vec<f32> = rng
            .normals(37)
            .iter()
            .map(|v| v * (trial as f32 * 0.1 + 0.01))
            .collect();
        let (s, z) = find_params(&x, &c);
        assert!(s > 0.0 && s.is_finite());
        assert!(z <= c.maxq());
        // Values far outside the range clamp into 0..=maxq.
        for &v in x.iter().chain([1e6f32, -1e6, f32::MAX, -f32::MAX].iter()) {
            assert!(quantize_value(v, s, z, c.maxq()) <= c.maxq());
        }
        // 0 is on the grid exactly.
        let q0 = quantize_value(0.0, s, z, c.maxq());
        assert_eq!(q0, z);
        assert_eq!(dequantize_value(q0, s, z), 0.0);
        // Without the clipping search every value is within half a step (asym). The symmetric
        // grid has zero (maxq+1)/2, so its top code is one step short of max|x|: within a step.
        if !mse && (!sym || x.iter().any(|&v| v < 0.0)) {
            let tol = if sym { s } else { s * 0.5 };
            for &v in &x {
                let y = dequantize_value(quantize_value(v, s, z, c.maxq()), s, z);
                assert!(
                    (y - v).abs() <= tol * (1.0 + 1e-5),
                    "{trial}: {v} -> {y}, scale {s}"
                );
            }
        }
    }
}

#[test]
fn non_dividing_groups() {
    // d_in = 10, g = 4: groups of 4, 4, 2.
    let mut rng = Rng::new(2);
    let (d_out, d_in) = (3, 10);
    let w = rng.normals(d_out * d_in);
    for sym in [false, true] {
        let c = cfg(3, Some(4), sym, false);
        assert_eq!(c.n_groups(d_in), 3);
        let q = rtn(&w, d_out, d_in, &c);
        assert_eq!(q.n_groups(), 3);
        assert_eq!(q.g_idx, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
        assert!(q.g_idx_is_trivial());
        assert_eq!(q.codes.len(), d_out * d_in);
        assert_eq!(q.scales.len(), d_out * 3);
        let deq = q.dequantize();
        for r in 0..d_out {
            for (k, (a, b)) in [(0, 4), (4, 8), (8, 10)].into_iter().enumerate() {
                let seg = &w[r * d_in + a..r * d_in + b];
                let (s, z) = find_params(seg, &c);
                assert_eq!((q.scales[r * 3 + k], q.zeros[r * 3 + k]), (s, z));
                for j in a..b {
                    let v = w[r * d_in + j];
                    let code = quantize_value(v, s, z, c.maxq());
                    assert_eq!(q.codes[r * d_in + j] as u32, code);
                    assert_eq!(deq[r * d_in + j], dequantize_value(code, s, z));
                }
            }
        }
    }
    // Per channel: one group spanning the row.
    let q = rtn(&w, d_out, d_in, &cfg(4, None, false, false));
    assert_eq!(q.n_groups(), 1);
    assert!(q.g_idx.iter().all(|&k| k == 0));
}

/// The clipping search minimizes sum |q(x) - x|^2.4 and tries the plain min-max range first,
/// so it can never do worse in that norm.
#[test]
fn mse_never_worse() {
    let mut rng = Rng::new(3);
    let mut improved = 0;
    let err = |x: &[f32], c: &QuantConfig| -> f64 {
        let (_, v) = codes_and_values(x, c);
        x.iter()
            .zip(&v)
            .map(|(a, b)| ((a - b).abs() as f64).powf(2.4))
            .sum()
    };
    for trial in 0..300 {
        let bits = 2 + (trial % 4) as u32;
        let sym = trial % 2 == 1;
        // Heavy-tailed rows (a few outliers) where clipping pays off.
        let mut x = rng.normals(64);
        for _ in 0..2 {
            let i = (rng.next_u64() % 64) as usize;
            x[i] *= 6.0;
        }
        let plain = err(&x, &cfg(bits, None, sym, false));
        let searched = err(&x, &cfg(bits, None, sym, true));
        assert!(
            searched <= plain * (1.0 + 1e-6),
            "{trial}: {searched} > {plain}"
        );
        if searched < plain * 0.99 {
            improved += 1;
        }
    }
    assert!(improved > 100, "the search rarely helps: {improved}/300");
}

#[test]
fn rtn_method_trait() {
    let mut rng = Rng::new(4);
    let w = shrink_model::Tensor::new(vec![8, 16], rng.normals(128));
    let m = Rtn(cfg(4, Some(8), false, false));
    assert_eq!(m.needs(), Needs::Nothing);
    let stats = InputStats {
        hessian: None,
        col_sq: &[],
        rows: 0,
    };
    assert_eq!(m.name(), "rtn w4 g8 asym");
    let c = m.compress("x", &w, &stats, None).unwrap();
    let q = c.quant.unwrap();
    assert_eq!(c.weight, q.dequantize());
    let bad = shrink_model::Tensor::new(vec![128], w.data.clone());
    assert!(m.compress("x", &bad, &stats, None).is_err());
}
