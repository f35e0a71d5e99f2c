//! oneMKL backend (shrink_model::gemm): f32 and bf16 products against a plain f64 reference.
//! Skipped with a message when oneMKL cannot be loaded (scripts/fetch-mkl) or the CPU lacks BF16.
use shrink_model::gemm;

fn setup() -> Option<&'static gemm::Mkl> {
    if std::env::var_os("SHRINK_MKL").is_none() {
        std::env::set_var(
            "SHRINK_MKL",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../third_party/mkl/lib"),
        );
    }
    let m = gemm::mkl();
    if m.is_none() {
        eprintln!("SKIPPED: oneMKL not found (run scripts/fetch-mkl or set SHRINK_MKL)");
    }
    m
}

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 2654435761 + seed * 40503) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// C = A B^T (forward shape) and C = A^T A (Hessian shape) in f64.
fn reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[j * k + p] as f64)
                .sum();
        }
    }
    c
}

fn rel_err(c: &[f32], r: &[f64]) -> f64 {
    let num: f64 = c.iter().zip(r).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = r.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn sgemm_matches_reference() {
    let Some(mkl) = setup() else { return };
    let (m, n, k) = (37, 53, 129);
    let (a, b) = (data(m * k, 1), data(n * k, 2));
    let mut c = vec![0f32; m * n];
    mkl.sgemm(m, n, k, &a, &b, true, &mut c);
    let e = rel_err(&c, &reference(m, n, k, &a, &b));
    assert!(e < 1e-6, "sgemm relative error {e}");
}

#[test]
fn bf16_gemm_close_to_f32() {
    let Some(mkl) = setup() else { return };
    if !gemm::cpu_bf16().0 {
        eprintln!("note: CPU lacks AVX512-BF16; MKL emulates bf16 (checked for correctness only)");
    }
    let (m, n, k) = (37, 53, 576);
    let (a, b) = (data(m * k, 3), data(n * k, 4));
    let r = reference(m, n, k, &a, &b);
    let mut c = vec![0f32; m * n];
    mkl.gemm_bf16(
        m,
        n,
        k,
        &gemm::to_bf16(&a),
        false,
        &gemm::to_bf16(&b),
        true,
        0.0,
        &mut c,
    );
    let e = rel_err(&c, &r);
    // bf16 inputs carry 8 significant bits: ~2^-9 relative per input, averaged over k products.
    assert!(e < 1e-2 && e > 0.0, "bf16 relative error {e}");
    // Hessian shape: X^T X from X stored [k, m], accumulated twice with beta = 1.
    let x = data(k * m, 5);
    let mut xt = vec![0f32; m * k];
    for p in 0..k {
        for i in 0..m {
            xt[i * k + p] = x[p * m + i];
        }
    }
    let r = reference(m, m, k, &xt, &xt);
    let xb = gemm::to_bf16(&x);
    let mut h = vec![0f32; m * m];
    mkl.gemm_bf16(m, m, k, &xb, true, &xb, false, 0.0, &mut h);
    mkl.gemm_bf16(m, m, k, &xb, true, &xb, false, 1.0, &mut h);
    let h: Vec<f32> = h.iter().map(|v| v / 2.0).collect();
    let e = rel_err(&h, &r);
    assert!(e < 1e-2, "bf16 X^T X relative error {e}");
}
