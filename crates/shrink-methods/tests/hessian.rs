//! The running-average Hessian.
mod common;
use common::{correlated_inputs, Rng};
use shrink_methods::hessian::CHUNK_ROWS;
use shrink_methods::*;

fn naive(x: &[f32], rows: usize, d: usize) -> Vec<f64> {
    let mut h = vec![0.0f64; d * d];
    for r in 0..rows {
        for i in 0..d {
            for j in 0..d {
                h[i * d + j] += x[r * d + i] as f64 * x[r * d + j] as f64;
            }
        }
    }
    h.iter().map(|v| v * 2.0 / rows as f64).collect()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn add_in(d: usize, x: &[f32], sizes: &[usize]) -> Hessian {
    let mut h = Hessian::new(d);
    let mut at = 0;
    for &s in sizes {
        h.add_batch(&x[at * d..(at + s) * d], s);
        at += s;
    }
    h
}

#[test]
fn chunks_equal_one_batch_and_naive() {
    let d = 24;
    let rows = 2 * CHUNK_ROWS + 300;
    let mut rng = Rng::new(1);
    let x = correlated_inputs(&mut rng, rows, d);
    let one = add_in(d, &x, &[rows]);
    assert_eq!(one.nsamples(), rows);
    assert_eq!(one.dim(), d);
    let m = one.matrix();
    for i in 0..d {
        for j in 0..d {
            assert_eq!(m[i * d + j], m[j * d + i]);
        }
    }
    // Batches cut at multiples of CHUNK_ROWS: the same f32 products, summed in f64.
    let aligned = add_in(d, &x, &[CHUNK_ROWS, CHUNK_ROWS, 300]);
    let r = max_rel(aligned.matrix(), one.matrix());
    assert!(r < 1e-9, "aligned chunks differ by {r:e}");
    assert_eq!(aligned.nsamples(), rows);
    // Against the plain f64 sum: the f32 products round at ~1e-7.
    let reference = naive(&x, rows, d);
    let r = max_rel(one.matrix(), &reference);
    assert!(r < 1e-6, "one batch vs naive f64: {r:e}");
    // Arbitrary cuts: different f32 partial sums, still within f32 rounding.
    let ragged = add_in(d, &x, &[1, 99, 700, 5, 1000, rows - 1805]);
    let r = max_rel(ragged.matrix(), &reference);
    assert!(r < 1e-6, "ragged chunks vs naive f64: {r:e}");
    assert_eq!(ragged.nsamples(), rows);
    // Column sums of squares.
    let cs = one.col_sq_norms();
    for j in 0..d {
        let e: f64 = (0..rows).map(|r| (x[r * d + j] as f64).powi(2)).sum();
        assert!((cs[j] - e).abs() <= 1e-6 * e, "col {j}: {} vs {e}", cs[j]);
    }
    let cs2 = ragged.col_sq_norms();
    for j in 0..d {
        assert!((cs2[j] - cs[j]).abs() <= 1e-6 * cs[j]);
    }
    assert!(one.check_finite().is_ok());
}

/// A small exact case: integer inputs make every product exact in f32.
#[test]
fn exact_small_case() {
    let x = [1.0f32, 2.0, 0.0, -1.0, 3.0, 1.0];
    let mut h = Hessian::new(2);
    h.add_batch(&x[..2], 1);
    h.add_batch(&x[2..], 2);
    // X^T X = [[1+0+9, 2+0+3], [5, 4+1+1]] = [[10, 5], [5, 6]], times 2/3.
    let expect = [20.0 / 3.0, 10.0 / 3.0, 10.0 / 3.0, 4.0];
    for (a, b) in h.matrix().iter().zip(expect) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    assert_eq!(h.col_sq_norms(), vec![10.0, 6.0]);
    assert_eq!(h.nsamples(), 3);
    // Empty batches change nothing.
    h.add_batch(&[], 0);
    assert_eq!(h.nsamples(), 3);
}

#[test]
fn finiteness() {
    assert!(all_finite(&[0.0, 1.0, -3.0]));
    assert!(!all_finite(&[0.0, f32::NAN]));
    assert!(!all_finite(&[f32::INFINITY]));
    let mut h = Hessian::new(2);
    h.add_batch(&[1.0, f32::NAN], 1);
    let e = h.check_finite().unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
    let h = Hessian::from_matrix(2, vec![2.0, 0.0, 0.0, 4.0], 10);
    assert_eq!(h.col_sq_norms(), vec![10.0, 20.0]);
}

/// The spectrum of [[20/3, 10/3], [10/3, 4]]
/// against the closed form of a 2 x 2 symmetric matrix; a singular one has no condition number.
#[test]
fn spectrum_of_small_cases() {
    let (a, b, c) = (20.0 / 3.0, 10.0 / 3.0, 4.0);
    let h = Hessian::from_matrix(2, vec![a, b, b, c], 3);
    let s = h.spectrum().unwrap();
    let m = (a + c) / 2.0;
    let r = (((a - c) / 2.0f64).powi(2) + b * b).sqrt();
    assert!(
        (s.top - (m + r)).abs() < 1e-12 && (s.min - (m - r)).abs() < 1e-12,
        "{s:?}"
    );
    assert!((s.condition.unwrap() - (m + r) / (m - r)).abs() < 1e-9);
    assert_eq!(s.max_diag, a);
    assert!((s.mean - m).abs() < 1e-12);
    let d = 0.01 * m;
    assert!((s.condition_damped - (m + r + d) / (m - r + d)).abs() < 1e-9);
    let s = shrink_methods::hessian::spectrum_of(2, &[1.0, 1.0, 1.0, 1.0]).unwrap();
    assert!(
        s.condition.is_none() && (s.top - 2.0).abs() < 1e-12,
        "{s:?}"
    );
    assert!(shrink_methods::hessian::spectrum_of(0, &[]).is_err());
}
