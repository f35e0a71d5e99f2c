//! Matmul micro-benchmarks for the Hessian (ignored by default).
mod common;
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};
use std::time::Instant;

#[test]
#[ignore]
fn bench_mm() {
    let d = 1536;
    let rows = 8192;
    let x = common::Rng::new(1).normals(rows * d);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for chunk in [256usize, 512, 1024, 2048, 8192] {
        let mut acc = Mat::<f32>::zeros(d, d);
        let t = Instant::now();
        for c in x.chunks(chunk * d) {
            let n = c.len() / d;
            let xr = MatRef::from_row_major_slice(c, n, d);
            tri_matmul(
                acc.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Replace,
                xr.transpose(),
                BlockStructure::Rectangular,
                xr,
                BlockStructure::Rectangular,
                1.0f32,
                Par::rayon(0),
            );
        }
        let tt = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for c in x.chunks(chunk * d) {
            let n = c.len() / d;
            let xr = MatRef::from_row_major_slice(c, n, d);
            matmul(
                acc.as_mut(),
                Accum::Replace,
                xr.transpose(),
                xr,
                1.0f32,
                Par::rayon(0),
            );
        }
        let tf = t.elapsed().as_secs_f64();
        let mut acc64 = Mat::<f64>::zeros(d, d);
        let t = Instant::now();
        for c in x64.chunks(chunk * d) {
            let n = c.len() / d;
            let xr = MatRef::from_row_major_slice(c, n, d);
            matmul(
                acc64.as_mut(),
                Accum::Add,
                xr.transpose(),
                xr,
                1.0f64,
                Par::rayon(0),
            );
        }
        let t64 = t.elapsed().as_secs_f64();
        // Column-major copy of the chunk (X^T row-major) as lhs.
        let t = Instant::now();
        let mut xt = vec![0.0f32; chunk * d];
        for c in x.chunks(chunk * d) {
            let n = c.len() / d;
            for r in 0..n {
                for j in 0..d {
                    xt[j * n + r] = c[r * d + j];
                }
            }
            let lhs = MatRef::from_row_major_slice(&xt[..n * d], d, n);
            let rhs = MatRef::from_row_major_slice(c, n, d);
            matmul(
                acc.as_mut(),
                Accum::Replace,
                lhs,
                rhs,
                1.0f32,
                Par::rayon(0),
            );
        }
        let tft = t.elapsed().as_secs_f64();
        let gf = 2.0 * rows as f64 * (d * d) as f64 / 1e9;
        println!("chunk {chunk}: tri f32 {tt:.3}s ({:.0} GF/s eff), full f32 {tf:.3}s ({:.0}), full f64 {t64:.3}s ({:.0}), full f32 transposed-copy {tft:.3}s ({:.0})",
            gf / tt, gf / tf, gf / t64, gf / tft);
    }
}
