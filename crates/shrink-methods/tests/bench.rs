//! Timings (ignored by default): `cargo test --release -p shrink-methods --test bench -- --ignored --nocapture`.
mod common;
use common::Rng;
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};
use shrink_methods::*;
use std::time::Instant;

fn random_x(rows: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    // Cheap correlated inputs: a shared low-rank part plus noise.
    let k = 8;
    let basis = rng.normals(k * d);
    let mut x = vec![0.0f32; rows * d];
    for r in 0..rows {
        let c: Vec<f32> = rng.normals(k);
        for j in 0..d {
            let mut s = 0.3 * rng.normal() as f32;
            for t in 0..k {
                s += c[t] * basis[t * d + j];
            }
            x[r * d + j] = s;
        }
    }
    x
}

/// The alternative: the whole product in f64.
fn xtx_f64(x: &[f32], rows: usize, d: usize) -> Mat<f64> {
    let mut acc = Mat::<f64>::zeros(d, d);
    let chunk = 512;
    let mut buf = vec![0.0f64; chunk * d];
    for (ci, c) in x.chunks(chunk * d).enumerate() {
        let n = c.len() / d;
        for (b, &v) in buf.iter_mut().zip(c) {
            *b = v as f64;
        }
        let xr = MatRef::from_row_major_slice(&buf[..n * d], n, d);
        tri_matmul(
            acc.as_mut(),
            BlockStructure::TriangularLower,
            if ci == 0 { Accum::Replace } else { Accum::Add },
            xr.transpose(),
            BlockStructure::Rectangular,
            xr,
            BlockStructure::Rectangular,
            1.0f64,
            Par::rayon(0),
        );
    }
    let _ = rows;
    acc
}

#[test]
#[ignore]
fn bench_gptq() {
    println!("rayon threads: {}", rayon::current_num_threads());
    let rows = 32768;
    for &(d_out, d_in) in &[(1536usize, 576usize), (576, 1536)] {
        let x = random_x(rows, d_in, 1);
        let t = Instant::now();
        let mut h = Hessian::new(d_in);
        for c in x.chunks(4096 * d_in) {
            h.add_batch(c, c.len() / d_in);
        }
        let t_h = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let h64 = xtx_f64(&x, rows, d_in);
        let t_h64 = t.elapsed().as_secs_f64();
        let mut maxrel = 0.0f64;
        let hm = h.matrix();
        let scale = 2.0 / rows as f64;
        let hmax = hm.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        for i in 0..d_in {
            for j in 0..=i {
                maxrel = maxrel.max((hm[i * d_in + j] - scale * h64[(i, j)]).abs() / hmax);
            }
        }
        let w = Rng::new(2).normals(d_out * d_in);
        let w: Vec<f32> = w.iter().map(|v| v * 0.02).collect();
        for (label, quant, act) in [
            (
                "w4 g128 asym",
                QuantConfig {
                    bits: 4,
                    group_size: Some(128),
                    sym: false,
                    mse: false,
                    ggml: None,
                    format: Default::default(),
                },
                ActOrder::None,
            ),
            (
                "w4 perchannel sym",
                QuantConfig {
                    bits: 4,
                    group_size: None,
                    sym: true,
                    mse: false,
                    ggml: None,
                    format: Default::default(),
                },
                ActOrder::None,
            ),
            (
                "w4 g128 asym actorder",
                QuantConfig {
                    bits: 4,
                    group_size: Some(128),
                    sym: false,
                    mse: false,
                    ggml: None,
                    format: Default::default(),
                },
                ActOrder::Dynamic,
            ),
            (
                "w4 g128 asym static",
                QuantConfig {
                    bits: 4,
                    group_size: Some(128),
                    sym: false,
                    mse: false,
                    ggml: None,
                    format: Default::default(),
                },
                ActOrder::Static,
            ),
            (
                "w4 g128 asym mse",
                QuantConfig {
                    bits: 4,
                    group_size: Some(128),
                    sym: false,
                    mse: true,
                    ggml: None,
                    format: Default::default(),
                },
                ActOrder::None,
            ),
        ] {
            let mut cfg = GptqConfig::new(quant.clone());
            cfg.act_order = act;
            let _ = gptq(&w, d_out, d_in, &h, &cfg).unwrap();
            let t = Instant::now();
            let reps = 3;
            let mut loss = 0.0;
            for _ in 0..reps {
                loss = gptq(&w, d_out, d_in, &h, &cfg).unwrap().loss;
            }
            let t_g = t.elapsed().as_secs_f64() / reps as f64;
            let t = Instant::now();
            let q = rtn(&w, d_out, d_in, &quant);
            let t_r = t.elapsed().as_secs_f64();
            let rl = common::layer_loss(&w, &q.dequantize(), d_out, d_in, hm) / 2.0;
            println!(
                "{d_out}x{d_in} {label}: gptq {:.3} s (loss {loss:.4e}, rtn loss {rl:.4e}), rtn {:.4} s",
                t_g, t_r
            );
        }
        println!(
            "{d_out}x{d_in}: hessian {rows} rows: f32-chunk {:.3} s, full f64 {:.3} s, max rel diff {maxrel:.2e}",
            t_h, t_h64
        );
    }
}

#[test]
#[ignore]
fn bench_find_params_mse() {
    let x: Vec<f32> = common::Rng::new(4).normals(128 * 2000);
    let cfg = QuantConfig {
        bits: 4,
        group_size: Some(128),
        sym: false,
        mse: true,
        ggml: None,
        format: Default::default(),
    };
    let t = Instant::now();
    let mut acc = 0.0f32;
    for c in x.chunks(128) {
        acc += find_params(c, &cfg).0;
    }
    println!(
        "find_params mse g128: {:.2} us/group ({:.1} ns/el) {acc}",
        t.elapsed().as_secs_f64() * 1e6 / 2000.0,
        t.elapsed().as_secs_f64() * 1e9 / x.len() as f64
    );
}
