//! Test helpers: a tiny seeded PRNG (SplitMix64 + Box-Muller) and layer-loss utilities.
#![allow(dead_code)]
use shrink_methods::Hessian;

/// Seeded generator: shrink-calib's SplitMix64 with a scrambled seed.
pub struct Rng(shrink_calib::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(shrink_calib::SplitMix64::new(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03,
        ))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
}

/// Correlated inputs `X = Z A` (`[rows, d]`), with `A = I + 0.5 G / sqrt(d)` for Gaussian `G`,
/// and column scales varying over an order of magnitude so that `diag(H)` is not flat.
pub fn correlated_inputs(rng: &mut Rng, rows: usize, d: usize) -> Vec<f32> {
    let z: Vec<f64> = (0..rows * d).map(|_| rng.normal()).collect();
    let mut a = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            a[i * d + j] = rng.normal() * 0.8 / (d as f64).sqrt() + if i == j { 1.0 } else { 0.0 };
        }
    }
    let colscale: Vec<f64> = (0..d).map(|_| (rng.uniform() * 2.3).exp()).collect();
    let mut x = vec![0.0f32; rows * d];
    for r in 0..rows {
        for j in 0..d {
            let mut s = 0.0;
            for k in 0..d {
                s += z[r * d + k] * a[k * d + j];
            }
            x[r * d + j] = (s * colscale[j]) as f32;
        }
    }
    x
}

pub fn hessian_of(x: &[f32], rows: usize, d: usize) -> Hessian {
    let mut h = Hessian::new(d);
    h.add_batch(x, rows);
    h
}

/// `tr((W - Q) H (W - Q)^T)` in f64 (= 2/n ||W X - Q X||^2 for H = 2/n X^T X).
pub fn layer_loss(w: &[f32], q: &[f32], d_out: usize, d_in: usize, h: &[f64]) -> f64 {
    let mut total = 0.0;
    let mut e = vec![0.0f64; d_in];
    for r in 0..d_out {
        for j in 0..d_in {
            e[j] = w[r * d_in + j] as f64 - q[r * d_in + j] as f64;
        }
        for i in 0..d_in {
            let mut s = 0.0;
            for j in 0..d_in {
                s += h[i * d_in + j] * e[j];
            }
            total += e[i] * s;
        }
    }
    total
}
