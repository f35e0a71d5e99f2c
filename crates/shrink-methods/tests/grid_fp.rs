//! The float grids (FP8 E4M3 per tensor / channel / 128×128 tile, NVFP4, MXFP4): RTN's codes are
//! the nearest-even level of `x / scale` with scales recomputed here from the definitions, the
//! dequantized weight is `level * scale / divisor`, and GPTQ runs on them through the same
//! `Grid` trait (its weight equals its codes' dequantization bit for bit, and it beats RTN).
mod common;
use common::{correlated_inputs, hessian_of, layer_loss, Rng};
use shrink_methods::grid::{grid_for_weight, rtn_on};
use shrink_methods::*;
use shrink_model::minifloat::{e4m3_round, E2M1_LEVELS, E4M3_LEVELS};

const FORMATS: [NumberFormat; 5] = [
    NumberFormat::Fp8Tensor,
    NumberFormat::Fp8Channel,
    NumberFormat::Fp8Block,
    NumberFormat::Nvfp4,
    NumberFormat::Mxfp4,
];

fn weight(rng: &mut Rng, d_out: usize, d_in: usize) -> Vec<f32> {
    let mut w: Vec<f32> = rng.normals(d_out * d_in).iter().map(|v| v * 0.02).collect();
    // a few outliers, and an all-zero group, so scales differ and the eps rule is exercised
    w[7] = 0.9;
    w[d_in + 3] = -0.4;
    for v in &mut w[2 * d_in..2 * d_in + 32] {
        *v = 0.0;
    }
    w
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// The code a brute-force scan gives: the level nearest to `v` (clamped), ties to the even code,
/// NaN levels skipped.
fn brute_code(v: f32, levels: &[f32], max: f32) -> usize {
    let v = v.clamp(-max, max);
    let half = levels.len() / 2;
    let range = if v.is_sign_negative() {
        half..levels.len()
    } else {
        0..half
    };
    let mut best = usize::MAX;
    for c in range {
        let l = levels[c];
        if l.is_nan() {
            continue;
        }
        if best == usize::MAX {
            best = c;
            continue;
        }
        let (d, db) = ((v - l).abs(), (v - levels[best]).abs());
        if d < db || (d == db && c % 2 == 0) {
            best = c;
        }
    }
    best
}

/// The scale (value per level) of row `r`, column `j`, from the definitions in compressed-tensors.
fn expected_scale(
    f: NumberFormat,
    w: &[f32],
    d_out: usize,
    d_in: usize,
    r: usize,
    j: usize,
) -> f32 {
    let row = &w[r * d_in..(r + 1) * d_in];
    match f {
        NumberFormat::Fp8Tensor => nz(amax(w) / 448.0, f32::EPSILON),
        NumberFormat::Fp8Channel => nz(amax(row) / 448.0, f32::EPSILON),
        NumberFormat::Fp8Block => {
            let (r0, c0) = (r / 128 * 128, j / 128 * 128);
            let m = (r0..(r0 + 128).min(d_out))
                .map(|rr| amax(&w[rr * d_in + c0..rr * d_in + (c0 + 128).min(d_in)]))
                .fold(0f32, f32::max);
            nz(m / 448.0, f32::EPSILON)
        }
        NumberFormat::Nvfp4 => {
            let gs = 2688.0 / amax(w);
            let g = &row[j / 16 * 16..(j / 16 * 16 + 16).min(d_in)];
            let s8 = nz(e4m3_round((gs * (amax(g) / 6.0)).min(448.0)), 0.125);
            s8 / gs
        }
        NumberFormat::Mxfp4 => {
            let g = &row[j / 32 * 32..(j / 32 * 32 + 32).min(d_in)];
            let m = amax(g);
            if m == 0.0 {
                return 2f32.powi(-127);
            }
            // round_to_power_2: mantissa >= 0.75 rounds up
            let mut e = m.log2().floor() as i32;
            if m >= 1.75 * 2f32.powi(e) {
                e += 1;
            }
            2f32.powi(e - 2)
        }
        NumberFormat::Int => unreachable!(),
    }
}

fn nz(s: f32, eps: f32) -> f32 {
    if s == 0.0 {
        eps
    } else {
        s
    }
}

#[test]
fn rtn_codes_are_the_nearest_even_level_at_the_reference_scales() {
    let mut rng = Rng::new(11);
    let (d_out, d_in) = (260, 200); // tiles of 128 that do not divide either side
    let w = weight(&mut rng, d_out, d_in);
    for f in FORMATS {
        let cfg = QuantConfig::for_format(f).unwrap();
        let grid = grid_for_weight(&cfg, &w, d_out, d_in).unwrap();
        let q = rtn_on(&*grid, &w, d_out, d_in);
        assert!(!q.is_integer());
        let deq = q.dequantize();
        let (levels, max): (&[f32], f32) = match f {
            NumberFormat::Nvfp4 | NumberFormat::Mxfp4 => (&E2M1_LEVELS, 6.0),
            _ => (&E4M3_LEVELS, 448.0),
        };
        for r in 0..d_out {
            for j in 0..d_in {
                let k = r * d_in + j;
                let s = expected_scale(f, &w, d_out, d_in, r, j);
                let c = q.codes[k] as usize;
                let want = brute_code(w[k] / s, levels, max);
                assert_eq!(
                    levels[c].to_bits(),
                    levels[want].to_bits(),
                    "{f:?} [{r},{j}] x {} scale {s}",
                    w[k]
                );
                assert_eq!(
                    deq[k].to_bits(),
                    (s * levels[c]).to_bits(),
                    "{f:?} [{r},{j}]"
                );
            }
        }
    }
}

#[test]
fn nvfp4_stores_e4m3_group_scales_and_one_global_scale() {
    let mut rng = Rng::new(3);
    let (d_out, d_in) = (8, 64);
    let w = weight(&mut rng, d_out, d_in);
    let cfg = QuantConfig::for_format(NumberFormat::Nvfp4).unwrap();
    let q = rtn_on(
        &*grid_for_weight(&cfg, &w, d_out, d_in).unwrap(),
        &w,
        d_out,
        d_in,
    );
    assert_eq!(q.scales.len(), d_out * d_in / 16);
    let gs = f32::from_bits(q.zeros[0]);
    assert_eq!(gs, 2688.0 / amax(&w));
    assert!(q.zeros.iter().all(|&z| z == q.zeros[0]));
    for &s in &q.scales {
        assert_eq!(e4m3_round(s), s, "scale {s} is not an E4M3 value");
        assert!(s > 0.0);
    }
    // the group holding the tensor's largest magnitude has scale 448
    assert_eq!(q.scales[0], 448.0);
    // the all-zero group (row 2, first 32 columns) gets compressed-tensors' eps, 0.125
    assert_eq!(q.scales[2 * 4], 0.125);
    assert!(q.codes[2 * d_in..2 * d_in + 32].iter().all(|&c| c == 0));
}

#[test]
fn gptq_runs_on_every_float_grid_and_beats_rtn() {
    let mut rng = Rng::new(5);
    let (d_out, d_in, rows) = (160, 256, 512);
    let w = weight(&mut rng, d_out, d_in);
    let x = correlated_inputs(&mut rng, rows, d_in);
    let h = hessian_of(&x, rows, d_in);
    let hm = h.matrix();
    for f in FORMATS {
        let cfg = QuantConfig::for_format(f).unwrap();
        for act_order in [ActOrder::None, ActOrder::Static] {
            let g = gptq(
                &w,
                d_out,
                d_in,
                &h,
                &GptqConfig {
                    act_order,
                    ..GptqConfig::new(cfg.clone())
                },
            )
            .unwrap();
            let deq = g.q.dequantize();
            assert!(
                g.weight
                    .iter()
                    .zip(&deq)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{f:?}: GPTQ's weight is not its codes' dequantization"
            );
            assert!(g.q.g_idx_is_trivial() || f == NumberFormat::Fp8Block);
            let r = rtn_on(
                &*grid_for_weight(&cfg, &w, d_out, d_in).unwrap(),
                &w,
                d_out,
                d_in,
            );
            let (lg, lr) = (
                layer_loss(&w, &g.weight, d_out, d_in, hm),
                layer_loss(&w, &r.dequantize(), d_out, d_in, hm),
            );
            assert!(lg < lr, "{f:?} {act_order:?}: GPTQ loss {lg} >= RTN {lr}");
            if f != NumberFormat::Nvfp4 && f != NumberFormat::Mxfp4 {
                // static scales: GPTQ and RTN share them
                assert_eq!(g.q.scales, r.scales, "{f:?}");
            }
        }
    }
}

#[test]
fn float_formats_refuse_other_groups_and_settings() {
    let e = |c: QuantConfig| c.validate().unwrap_err().to_string();
    let nv = QuantConfig::for_format(NumberFormat::Nvfp4).unwrap();
    assert!(e(QuantConfig {
        group_size: Some(32),
        ..nv.clone()
    })
    .contains("nvfp4 g16 defines groups of 16 columns, but group_size = 32"),);
    assert!(e(QuantConfig {
        sym: false,
        ..nv.clone()
    })
    .contains("symmetric"));
    assert!(e(QuantConfig { bits: 8, ..nv }).contains("4-bit codes"));
    let fp8 = QuantConfig::for_format(NumberFormat::Fp8Channel).unwrap();
    assert!(e(QuantConfig {
        group_size: Some(128),
        ..fp8
    })
    .contains("no group size"));
    // a float grid needs its weight
    let mx = QuantConfig::for_format(NumberFormat::Mxfp4).unwrap();
    assert!(grid::grid_for(&mx, 64).is_err());
    let w = vec![f32::NAN; 64];
    let err = grid_for_weight(&mx, &w, 1, 64).err().unwrap().to_string();
    assert!(err.contains("non-finite"), "{err}");
    // old configurations (no `format` key) still parse, as integers
    let old: QuantConfig =
        serde_json::from_str(r#"{"bits":4,"group_size":64,"sym":false,"mse":false}"#).unwrap();
    assert_eq!(old.format, NumberFormat::Int);
    let s = serde_json::to_string(&QuantConfig::for_format(NumberFormat::Nvfp4).unwrap()).unwrap();
    assert!(s.contains(r#""format":"nvfp4""#), "{s}");
}
