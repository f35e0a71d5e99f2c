//! GPTQ against RTN, a brute-force oracle, its own loss, damping, and g_idx consistency.
mod common;
use common::{correlated_inputs, hessian_of, layer_loss, Rng};
use shrink_methods::*;

fn qcfg(bits: u32, group_size: Option<usize>, sym: bool) -> QuantConfig {
    QuantConfig {
        bits,
        group_size,
        sym,
        mse: false,
        ggml: None,
        format: Default::default(),
    }
}

fn gcfg(quant: QuantConfig, act_order: ActOrder, static_groups: bool) -> GptqConfig {
    GptqConfig {
        act_order,
        static_groups,
        ..GptqConfig::new(quant)
    }
}

fn random_layer(rng: &mut Rng, d_out: usize, d_in: usize, rows: usize) -> (Vec<f32>, Hessian) {
    let w: Vec<f32> = rng.normals(d_out * d_in).iter().map(|v| v * 0.05).collect();
    let x = correlated_inputs(rng, rows, d_in);
    (w, hessian_of(&x, rows, d_in))
}

/// Exact optimum of `(w - q)^T H (w - q)` over all code vectors of one row on a fixed grid.
fn row_optimum(row: &[f32], s: f32, z: u32, bits: u32, hm: &[f64]) -> f64 {
    let d_in = row.len();
    let levels = 1usize << bits;
    let mut best = f64::INFINITY;
    let mut q = vec![0.0f32; d_in];
    let mut code = vec![0usize; d_in];
    loop {
        for j in 0..d_in {
            q[j] = dequantize_value(code[j] as u32, s, z);
        }
        best = best.min(layer_loss(row, &q, 1, d_in, hm));
        // Next code vector (odometer).
        let mut j = 0;
        while j < d_in {
            code[j] += 1;
            if code[j] < levels {
                break;
            }
            code[j] = 0;
            j += 1;
        }
        if j == d_in {
            return best;
        }
    }
}

/// Test 2: on a tiny problem (3 x 6, per-channel) the exact optimum over the same grid (every
/// code vector of every row) bounds GPTQ from below; GPTQ is closer to it than RTN. GPTQ is
/// greedy, so on a single tiny instance it can lose to RTN; the totals over seeds may not.
#[test]
fn brute_force_oracle() {
    let (d_out, d_in) = (3, 6);
    let seeds = 20;
    for (bits, act) in [
        (2, ActOrder::None),
        (2, ActOrder::Dynamic),
        (3, ActOrder::None),
        (3, ActOrder::Dynamic),
    ] {
        let c = qcfg(bits, None, false);
        let (mut sum_g, mut sum_r, mut sum_o) = (0.0, 0.0, 0.0);
        let (mut sum_ratio, mut sum_rtn_ratio, mut worst, mut lost) = (0.0, 0.0, 0.0f64, 0);
        for seed in 0..seeds {
            let mut rng = Rng::new(100 + seed);
            let (w, h) = random_layer(&mut rng, d_out, d_in, 40);
            let hm = h.matrix();
            let mut opt = 0.0;
            for r in 0..d_out {
                let row = &w[r * d_in..(r + 1) * d_in];
                let (s, z) = find_params(row, &c);
                opt += row_optimum(row, s, z, bits, hm);
            }
            let g = gptq(&w, d_out, d_in, &h, &gcfg(c.clone(), act, false)).unwrap();
            let gl = layer_loss(&w, &g.weight, d_out, d_in, hm);
            let rl = layer_loss(&w, &rtn(&w, d_out, d_in, &c).dequantize(), d_out, d_in, hm);
            assert!(
                opt <= gl * (1.0 + 1e-9),
                "seed {seed}: optimum {opt} above GPTQ {gl}"
            );
            assert!(
                opt <= rl * (1.0 + 1e-9),
                "seed {seed}: optimum {opt} above RTN {rl}"
            );
            if gl > rl {
                lost += 1;
            }
            sum_g += gl;
            sum_r += rl;
            sum_o += opt;
            sum_ratio += gl / opt;
            sum_rtn_ratio += rl / opt;
            worst = worst.max(gl / opt);
        }
        let mean = sum_ratio / seeds as f64;
        let mean_rtn = sum_rtn_ratio / seeds as f64;
        println!(
            "oracle w{bits} {act:?}: mean gptq/opt {mean:.3} (worst {worst:.3}), mean rtn/opt {mean_rtn:.3}, \
             totals opt {sum_o:.4} gptq {sum_g:.4} rtn {sum_r:.4}, gptq > rtn in {lost}/{seeds} seeds"
        );
        assert!(
            sum_o <= sum_g && sum_g < sum_r,
            "totals: opt {sum_o} gptq {sum_g} rtn {sum_r}"
        );
        assert!(
            mean < mean_rtn,
            "GPTQ not closer to the optimum than RTN: {mean} vs {mean_rtn}"
        );
        assert!(
            lost <= seeds / 4,
            "GPTQ lost to RTN in {lost}/{seeds} seeds"
        );
        // In natural order a heavily weighted late column must absorb all earlier errors, so the
        // 1.5x bound is asserted for act-order (the order GPTQ's authors recommend).
        if act != ActOrder::None {
            assert!(mean < 1.5, "GPTQ is {mean:.3}x the optimum on average");
        }
    }
}

/// The paper's Step 1 written plainly (no lazy batches, no Cholesky): per row, quantize column
/// i, spread its error with the i-th row of the inverse Hessian of the remaining columns, then
/// remove column i from that inverse (OBS, eq. 3/4 of the paper). In f64.
fn naive_gptq(
    w: &[f32],
    d_out: usize,
    d_in: usize,
    h: &[f64],
    damp: f64,
    c: &QuantConfig,
) -> Vec<f32> {
    let n = d_in;
    let mean = (0..n).map(|j| h[j * n + j]).sum::<f64>() / n as f64;
    // Gauss-Jordan inverse of the damped H.
    let mut a: Vec<f64> = h.to_vec();
    for j in 0..n {
        a[j * n + j] += damp * mean;
    }
    let mut inv = vec![0.0f64; n * n];
    for j in 0..n {
        inv[j * n + j] = 1.0;
    }
    for col in 0..n {
        let p = a[col * n + col];
        for k in 0..n {
            a[col * n + k] /= p;
            inv[col * n + k] /= p;
        }
        for r in 0..n {
            if r != col {
                let f = a[r * n + col];
                for k in 0..n {
                    a[r * n + k] -= f * a[col * n + k];
                    inv[r * n + k] -= f * inv[col * n + k];
                }
            }
        }
    }
    let mut out = vec![0.0f32; d_out * n];
    for r in 0..d_out {
        let (s, z) = find_params(&w[r * n..(r + 1) * n], c);
        let mut hinv = inv.clone();
        let mut row: Vec<f64> = w[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
        for i in 0..n {
            let q = dequantize_value(quantize_value(row[i] as f32, s, z, c.maxq()), s, z) as f64;
            out[r * n + i] = q as f32;
            let d = hinv[i * n + i];
            let e = (row[i] - q) / d;
            for k in i + 1..n {
                row[k] -= e * hinv[i * n + k];
            }
            // Remove i: Hinv <- Hinv - Hinv[:, i] Hinv[i, :] / Hinv_ii.
            let coli: Vec<f64> = (0..n).map(|k| hinv[k * n + i]).collect();
            for a in 0..n {
                for b in 0..n {
                    hinv[a * n + b] -= coli[a] * coli[b] / d;
                }
            }
        }
    }
    out
}

/// Lazy batches + Cholesky give the same result as the plain sequential algorithm.
#[test]
fn matches_naive_sequential_algorithm() {
    let (d_out, d_in) = (32, 40);
    let mut total = 0;
    let mut differ = 0;
    for seed in 0..4 {
        let mut rng = Rng::new(200 + seed);
        let (w, h) = random_layer(&mut rng, d_out, d_in, 200);
        for bits in [2, 4] {
            let c = qcfg(bits, None, seed % 2 == 0);
            let reference = naive_gptq(&w, d_out, d_in, h.matrix(), 0.01, &c);
            for bs in [128, 7] {
                let cfg = GptqConfig {
                    block_size: bs,
                    ..GptqConfig::new(c.clone())
                };
                let g = gptq(&w, d_out, d_in, &h, &cfg).unwrap();
                total += reference.len();
                differ += reference
                    .iter()
                    .zip(&g.weight)
                    .filter(|(a, b)| a != b)
                    .count();
                let lr = layer_loss(&w, &reference, d_out, d_in, h.matrix());
                let lg = layer_loss(&w, &g.weight, d_out, d_in, h.matrix());
                assert!(
                    (lr - lg).abs() <= 1e-3 * lr,
                    "seed {seed} w{bits} block {bs}: {lg} vs {lr}"
                );
            }
        }
    }
    println!("naive vs gptq: {differ}/{total} weights differ");
    // Rounding differences can flip a code where a value sits on a rounding boundary.
    assert!(differ * 1000 <= total, "{differ}/{total} weights differ");
}

/// Test 3: GPTQ's layer loss tr((W-Q) H (W-Q)^T) is never above RTN's on the same grid, for many
/// shapes and settings. The reported `loss` matches the damped-Hessian loss.
#[test]
fn never_worse_than_rtn() {
    let mut count = 0;
    let mut worse = 0;
    let mut ratios = Vec::new();
    for (seed, &(d_out, d_in)) in [(64usize, 96usize), (96, 64)].iter().enumerate() {
        for s in 0..2u64 {
            let mut rng = Rng::new(7 + 10 * seed as u64 + s);
            let (w, h) = random_layer(&mut rng, d_out, d_in, 256);
            let hm = h.matrix();
            for group in [None, Some(32), Some(24)] {
                for bits in [2, 3, 4, 8] {
                    for sym in [false, true] {
                        for mse in [false, true] {
                            if mse && bits != 3 {
                                continue;
                            }
                            let quant = QuantConfig {
                                bits,
                                group_size: group,
                                sym,
                                mse,
                                ggml: None,
                                format: Default::default(),
                            };
                            let rl = layer_loss(
                                &w,
                                &rtn(&w, d_out, d_in, &quant).dequantize(),
                                d_out,
                                d_in,
                                hm,
                            );
                            for act in [ActOrder::None, ActOrder::Dynamic, ActOrder::Static] {
                                for sg in [false, true] {
                                    let mut cfg = gcfg(quant.clone(), act, sg);
                                    if count % 5 == 0 {
                                        cfg.block_size = 16; // blocks not aligned with groups
                                    }
                                    let g = gptq(&w, d_out, d_in, &h, &cfg).unwrap();
                                    let gl = layer_loss(&w, &g.weight, d_out, d_in, hm);
                                    // At 3+ bits GPTQ never loses to RTN. At 2 bits the grid of a
                                    // group (fitted to the weights as updated so far) can widen
                                    // and, rarely, cost a little more than RTN's grid.
                                    if gl > rl {
                                        assert!(
                                            bits == 2 && gl <= 1.05 * rl,
                                            "{d_out}x{d_in} {quant:?} {act:?} static_groups={sg}: gptq {gl} > rtn {rl}"
                                        );
                                        worse += 1;
                                    }
                                    assert!(g.weight.iter().all(|v| v.is_finite()));
                                    assert_eq!(g.damp_retries, 0);
                                    // loss = 1/2 tr((W-Q) H_damped (W-Q)^T)
                                    let mean_diag =
                                        (0..d_in).map(|j| hm[j * d_in + j]).sum::<f64>()
                                            / d_in as f64;
                                    let damped = gl
                                        + cfg.damp
                                            * mean_diag
                                            * w.iter()
                                                .zip(&g.weight)
                                                .map(|(a, b)| ((a - b) as f64).powi(2))
                                                .sum::<f64>();
                                    let rel = (2.0 * g.loss - damped).abs() / damped;
                                    assert!(
                                        rel < 1e-3,
                                        "loss {} vs 1/2 damped layer loss {}",
                                        g.loss,
                                        damped / 2.0
                                    );
                                    ratios.push(gl / rl);
                                    count += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{count} runs, gptq/rtn loss ratio: median {:.3}, max {:.3}; {worse} runs above RTN (all 2-bit, within 5%)",
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1]
    );
    assert!(
        worse * 100 <= count,
        "{worse} of {count} runs worse than RTN"
    );
    assert!(ratios[ratios.len() / 2] < 0.8);
}

/// Test 5: the QuantizedWeight dequantizes to exactly the returned weight, for every act-order
/// variant, and g_idx describes the groups.
#[test]
fn g_idx_consistent() {
    let (d_out, d_in) = (24, 40);
    let mut rng = Rng::new(11);
    let (w, h) = random_layer(&mut rng, d_out, d_in, 128);
    for group in [None, Some(8), Some(12)] {
        for act in [ActOrder::None, ActOrder::Dynamic, ActOrder::Static] {
            for sg in [false, true] {
                for sym in [false, true] {
                    let quant = qcfg(3, group, sym);
                    let cfg = gcfg(quant.clone(), act, sg);
                    let g = gptq(&w, d_out, d_in, &h, &cfg).unwrap();
                    let deq = g.q.dequantize();
                    assert!(
                        deq.iter()
                            .zip(&g.weight)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{group:?} {act:?} {sg}: dequantize() differs from the weight"
                    );
                    assert!(g.q.codes.iter().all(|&c| (c as u32) <= quant.maxq()));
                    assert_eq!(g.q.g_idx.len(), d_in);
                    let ng = quant.n_groups(d_in);
                    assert_eq!(g.q.n_groups(), ng);
                    assert!(g.q.g_idx.iter().all(|&k| (k as usize) < ng));
                    let gs = quant.group_len(d_in);
                    // Every group holds g columns (the last one possibly fewer).
                    let mut sizes = vec![0usize; ng];
                    for &k in &g.q.g_idx {
                        sizes[k as usize] += 1;
                    }
                    for (k, &n) in sizes.iter().enumerate() {
                        let expect = gs.min(d_in - k * gs);
                        assert_eq!(n, expect, "{group:?} {act:?}: group {k} has {n} columns");
                    }
                    let dynamic_groups = group.is_some() && act == ActOrder::Dynamic && !sg;
                    assert_eq!(
                        g.q.g_idx_is_trivial(),
                        !dynamic_groups,
                        "{group:?} {act:?} {sg}"
                    );
                }
            }
        }
    }
}

/// Act-order with dynamic groups: the group of the column processed at position p is p / g in
/// diag(H)-descending order.
#[test]
fn dynamic_act_order_groups_follow_diag() {
    let (d_out, d_in) = (8, 20);
    let mut rng = Rng::new(12);
    let (w, h) = random_layer(&mut rng, d_out, d_in, 100);
    let hm = h.matrix();
    let mut perm: Vec<usize> = (0..d_in).collect();
    perm.sort_by(|&a, &b| hm[b * d_in + b].total_cmp(&hm[a * d_in + a]));
    let g = gptq(
        &w,
        d_out,
        d_in,
        &h,
        &gcfg(qcfg(4, Some(6), false), ActOrder::Dynamic, false),
    )
    .unwrap();
    for (p, &j) in perm.iter().enumerate() {
        assert_eq!(g.q.g_idx[j] as usize, p / 6);
    }
}

/// Test 4: rank-deficient Hessian with a dead input.
#[test]
fn rank_deficient_and_dead_column() {
    let (d_out, d_in, rows) = (16, 32, 10);
    let mut rng = Rng::new(13);
    let w: Vec<f32> = rng.normals(d_out * d_in);
    let mut x = correlated_inputs(&mut rng, rows, d_in);
    for r in 0..rows {
        x[r * d_in + 5] = 0.0;
    }
    let h = hessian_of(&x, rows, d_in);
    for act in [ActOrder::None, ActOrder::Dynamic, ActOrder::Static] {
        for group in [None, Some(8)] {
            let g = gptq(
                &w,
                d_out,
                d_in,
                &h,
                &gcfg(qcfg(4, group, false), act, false),
            )
            .unwrap();
            assert!(g.weight.iter().all(|v| v.is_finite()));
            assert_eq!(g.dead_columns, 1);
            for r in 0..d_out {
                assert_eq!(g.weight[r * d_in + 5], 0.0);
            }
            assert!(g.loss.is_finite());
        }
    }
}

/// Test 4: an indefinite Hessian needs more damping; a hopeless one is an error.
#[test]
fn damping_retries() {
    let d = 4;
    // I + 1.05 (e0 e1^T + e1 e0^T): eigenvalues 2.05, -0.05, 1, 1; mean diagonal 1.
    let mut m = vec![0.0f64; d * d];
    for i in 0..d {
        m[i * d + i] = 1.0;
    }
    m[1] = 1.05;
    m[d] = 1.05;
    let h = Hessian::from_matrix(d, m, 10);
    let w: Vec<f32> = Rng::new(14).normals(3 * d);
    let g = gptq(&w, 3, d, &h, &GptqConfig::new(qcfg(4, None, false))).unwrap();
    assert_eq!(g.damp_retries, 1);
    assert!((g.damp_used - 0.1).abs() < 1e-12, "{}", g.damp_used);
    assert!(g.weight.iter().all(|v| v.is_finite()));

    // Eigenvalue -3 with mean diagonal 1: not even damping 1.0 helps.
    let mut m = vec![0.0f64; d * d];
    for i in 0..d {
        m[i * d + i] = 1.0;
    }
    m[1] = 4.0;
    m[d] = 4.0;
    let h = Hessian::from_matrix(d, m, 10);
    let e = gptq(&w, 3, d, &h, &GptqConfig::new(qcfg(4, None, false)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not positive definite"), "{e}");

    // Non-finite Hessian or weight.
    let mut m = vec![0.0f64; d * d];
    m[0] = f64::NAN;
    assert!(gptq(
        &w,
        3,
        d,
        &Hessian::from_matrix(d, m, 1),
        &GptqConfig::new(qcfg(4, None, false))
    )
    .is_err());
    let mut w2 = w.clone();
    w2[0] = f32::INFINITY;
    let h = Hessian::from_matrix(
        d,
        (0..d * d)
            .map(|k| if k % (d + 1) == 0 { 1.0 } else { 0.0 })
            .collect(),
        1,
    );
    assert!(gptq(&w2, 3, d, &h, &GptqConfig::new(qcfg(4, None, false))).is_err());
    // Shape mismatch and bad config.
    assert!(gptq(&w, 3, d + 1, &h, &GptqConfig::new(qcfg(4, None, false))).is_err());
    assert!(gptq(&w, 3, d, &h, &GptqConfig::new(qcfg(9, None, false))).is_err());
}

/// With H = I (uncorrelated inputs) GPTQ has nothing to propagate: it equals RTN exactly.
#[test]
fn identity_hessian_equals_rtn() {
    let (d_out, d_in) = (10, 48);
    let w: Vec<f32> = Rng::new(15).normals(d_out * d_in);
    let h = Hessian::from_matrix(
        d_in,
        (0..d_in * d_in)
            .map(|k| if k % (d_in + 1) == 0 { 2.0 } else { 0.0 })
            .collect(),
        100,
    );
    for group in [None, Some(16), Some(20)] {
        let quant = qcfg(3, group, false);
        let g = gptq(&w, d_out, d_in, &h, &GptqConfig::new(quant.clone())).unwrap();
        let r = rtn(&w, d_out, d_in, &quant);
        assert_eq!(g.q.codes, r.codes);
        assert_eq!(g.weight, r.dequantize());
    }
}

#[test]
fn gptq_method_trait() {
    let (d_out, d_in) = (12, 32);
    let mut rng = Rng::new(16);
    let (w, h) = random_layer(&mut rng, d_out, d_in, 64);
    let t = shrink_model::Tensor::new(vec![d_out, d_in], w);
    let m = Gptq(gcfg(qcfg(4, Some(16), false), ActOrder::Static, false));
    assert_eq!(m.needs(), Needs::Hessian);
    let none = InputStats {
        hessian: None,
        col_sq: &[],
        rows: 0,
    };
    let stats = |h| InputStats {
        hessian: Some(h),
        col_sq: &[],
        rows: 64,
    };
    assert_eq!(m.name(), "gptq w4 g16 asym actorder=static");
    assert!(m.compress("l", &t, &none, None).is_err());
    let c = m.compress("l", &t, &stats(&h), None).unwrap();
    assert_eq!(c.weight, c.quant.as_ref().unwrap().dequantize());
    assert_eq!(c.info["damp_retries"], 0);
    assert!(c.info["gptq_loss"].as_f64().unwrap() > 0.0);
    let wrong = Hessian::new(d_in + 1);
    let e = m
        .compress("model.layers.0.mlp.up_proj", &t, &stats(&wrong), None)
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("up_proj"), "{e:#}");
}
