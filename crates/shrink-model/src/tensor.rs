//! A plain row-major f32 tensor and the few dense kernels the forward pass needs.
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// A dense row-major f32 tensor. Matrices are `[rows, cols]`; a linear weight is `[d_out, d_in]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// Rows and columns of a 2-D tensor (a 1-D tensor is one row, a 0-D tensor one value).
    pub fn dims2(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [c] => (1, *c),
            [] => (1, 1),
            [r, c] => (*r, *c),
            s => (s[..s.len() - 1].iter().product(), *s.last().unwrap_or(&1)),
        }
    }
}

/// The parallelism used for large matrix products (all of rayon's threads).
pub fn par() -> Par {
    Par::rayon(0)
}

/// `y[n, d_out] = x[n, d_in] * w[d_out, d_in]^T` (+ `bias`), the product every linear layer computes.
pub fn linear(x: &[f32], n: usize, w: &Tensor, bias: Option<&Tensor>, y: &mut [f32]) {
    let (d_out, d_in) = w.dims2();
    assert_eq!(
        x.len(),
        n * d_in,
        "linear: input has {} values, expected {n} x {d_in}",
        x.len()
    );
    assert_eq!(y.len(), n * d_out);
    if let Some(mkl) = crate::gemm::bf16_backend() {
        let (xb, wb) = (crate::gemm::to_bf16(x), crate::gemm::to_bf16(&w.data));
        mkl.gemm_bf16(n, d_out, d_in, &xb, false, &wb, true, 0.0, y);
        if let Some(b) = bias {
            for row in y.chunks_exact_mut(d_out) {
                for (v, bb) in row.iter_mut().zip(&b.data) {
                    *v += bb;
                }
            }
        }
        return;
    }
    let lhs = MatRef::from_row_major_slice(x, n, d_in);
    let rhs = MatRef::from_row_major_slice(&w.data, d_out, d_in).transpose();
    let dst = MatMut::from_row_major_slice_mut(y, n, d_out);
    let p = if n * d_out * d_in < 1 << 18 {
        Par::Seq
    } else {
        par()
    };
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, p);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(d_out) {
            for (v, bb) in row.iter_mut().zip(&b.data) {
                *v += bb;
            }
        }
    }
}

/// Root-mean-square norm of each row of `x` (`[n, d]`), times `weight`: `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = w * (v * r);
        }
    }
}

/// SiLU(gate) * up, in place in `gate` (vectorized, [`crate::fastmath`]).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    crate::fastmath::silu_mul(gate, up);
}

/// GELU(gate) * up with the tanh approximation (PyTorch's `gelu(approximate="tanh")`:
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`), in place in `gate`.
pub fn geglu_tanh(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    const BETA: f32 = 0.797_884_6; // sqrt(2 / pi)
    const KAPPA: f32 = 0.044715;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        let inner = BETA * (x + KAPPA * x * x * x);
        *g = 0.5 * x * (1.0 + inner.tanh()) * u;
    }
}

/// Numerically stable log-sum-exp of a row: `max + ln(sum(e^(x - max)))`, the exponentials in
/// f32 ([`crate::fastmath`], relative error < 2.5e-7), summed in f32 blocks of 1024 and in f64
/// across blocks.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    crate::fastmath::log_sum_exp(row)
}
