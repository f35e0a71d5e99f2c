//! GPTQ and RTN on llama.cpp's own grids: the blocks they write dequantize (with llama.cpp's
//! arithmetic) to exactly the weights they report, re-rounding those weights with the fitted grids
//! gives the same codes, RTN is llama.cpp's reference quantizer byte for byte, a diagonal Hessian
//! gives llama.cpp's imatrix quantizer byte for byte (K-quants), and GPTQ's layer loss beats
//! llama.cpp's importance-weighted rounding on correlated inputs.
mod common;
use common::{correlated_inputs, hessian_of, layer_loss, Rng};
use shrink_methods::grid::{grid_for, rtn_on};
use shrink_methods::*;
use shrink_model::ggml_quant::{
    decode_block, grid_shape, lattice_choose_unit, quantize, Affine, GRID_TYPES, LATTICE_TYPES,
    LATTICE_UNIT,
};
use shrink_model::gguf::GgmlType;
use shrink_model::quants::dequantize;

fn weights(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.normals(n).iter().map(|v| v * 0.05).collect()
}

fn gptq_on(ty: GgmlType, act_order: ActOrder) -> GptqConfig {
    GptqConfig {
        act_order,
        ..GptqConfig::new(QuantConfig::for_ggml(ty).unwrap())
    }
}

/// The blocks of `q` (of type `ty`, sized for `weight`) and their llama.cpp decoding, which
/// equals `weight` bit for bit.
fn decodes_to<'a>(ty: GgmlType, q: &'a QuantizedWeight, weight: &[f32]) -> (&'a Vec<u8>, Vec<f32>) {
    let (t, blocks) = q.ggml.as_ref().expect("ggml blocks");
    assert_eq!(*t, ty);
    assert_eq!(
        blocks.len(),
        ty.bytes_for(weight.len() as u64).unwrap() as usize
    );
    let mut y = vec![0f32; weight.len()];
    dequantize(ty, blocks, &mut y).unwrap();
    for (i, (a, b)) in y.iter().zip(weight).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{ty}: weight {i}: file {a} vs sweep {b}"
        );
    }
    (blocks, y)
}

/// The blocks of `q` decode to `weight` bit for bit, and every weight re-rounded on its block's
/// grid gives its code back.
fn check_consistent(ty: GgmlType, q: &QuantizedWeight, weight: &[f32]) {
    let (blocks, y) = decodes_to(ty, q, weight);
    let (sub, max) = grid_shape(ty).unwrap();
    let bs = ty.block_size();
    let mut aff = vec![Affine::default(); bs / sub];
    let mut codes = vec![0u8; bs];
    for (k, blk) in blocks.chunks_exact(ty.type_size()).enumerate() {
        decode_block(ty, blk, &mut aff, &mut codes);
        for j in 0..bs {
            assert_eq!(codes[j], q.codes[k * bs + j], "{ty}: block {k} code {j}");
            if let Some(c) = aff[j / sub].code(y[k * bs + j], max) {
                assert_eq!(c, codes[j] as u32, "{ty}: re-rounding block {k} column {j}");
            }
        }
    }
}

#[test]
fn rtn_on_a_ggml_grid_is_llama_cpps_quantizer() {
    let (d_out, d_in) = (6, 512);
    let w = weights(&mut Rng::new(3), d_out * d_in);
    for ty in GRID_TYPES {
        let grid = grid_for(&QuantConfig::for_ggml(ty).unwrap(), d_in).unwrap();
        let q = rtn_on(&*grid, &w, d_out, d_in);
        assert_eq!(
            q.ggml.as_ref().unwrap().1,
            quantize(ty, &w, d_in, None).unwrap(),
            "{ty}"
        );
        check_consistent(ty, &q, &q.dequantize());
    }
}

#[test]
fn diagonal_hessian_gives_llama_cpps_imatrix_blocks() {
    let (d_out, d_in) = (8, 512);
    let w = weights(&mut Rng::new(5), d_out * d_in);
    // Diagonal: no error is propagated, so GPTQ is rounding with the importance `diag(H)`.
    let diag: Vec<f64> = (0..d_in).map(|j| 0.5 + (j % 7) as f64).collect();
    let mut hm = vec![0f64; d_in * d_in];
    for j in 0..d_in {
        hm[j * d_in + j] = diag[j];
    }
    let h = Hessian::from_matrix(d_in, hm, 64);
    let imat: Vec<f32> = diag.iter().map(|&v| v as f32).collect();
    for ty in GRID_TYPES {
        let r = gptq(&w, d_out, d_in, &h, &gptq_on(ty, ActOrder::None)).unwrap();
        check_consistent(ty, &r.q, &r.weight);
        let theirs = quantize(ty, &w, d_in, Some(&imat)).unwrap();
        let ours = &r.q.ggml.as_ref().unwrap().1;
        if matches!(
            ty,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
        ) {
            // The K-quants choose their final codes on the stored f16 scales, as the sweep does.
            assert_eq!(ours, &theirs, "{ty}");
        } else {
            // llama.cpp's 32-blocks round with the unrounded scale; the sweep rounds onto the
            // stored one. Same scales, and never a worse weighted error.
            let ts = ty.type_size();
            let head = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                4
            } else {
                2
            };
            for (a, b) in ours.chunks(ts).zip(theirs.chunks(ts)) {
                assert_eq!(a[..head], b[..head], "{ty}: block scales");
            }
            let mut y = vec![0f32; w.len()];
            dequantize(ty, &theirs, &mut y).unwrap();
            let err = |q: &[f32]| -> f64 {
                q.iter()
                    .zip(&w)
                    .enumerate()
                    .map(|(i, (a, b))| diag[i % d_in] * ((a - b) as f64).powi(2))
                    .sum()
            };
            assert!(err(&r.weight) <= err(&y) * (1.0 + 1e-12), "{ty}");
        }
    }
}

/// A `[d_out, d_in]` weight, the Hessian of 2048 correlated input rows, and its diagonal as the
/// importance matrix llama.cpp would weight with.
fn correlated_problem(seed: u64, d_out: usize, d_in: usize) -> (Vec<f32>, Hessian, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let rows = 2048;
    let w = weights(&mut rng, d_out * d_in);
    let x = correlated_inputs(&mut rng, rows, d_in);
    let h = hessian_of(&x, rows, d_in);
    let hm = h.matrix();
    let imat = (0..d_in).map(|j| hm[j * d_in + j] as f32).collect();
    (w, h, imat)
}

#[test]
fn gptq_on_ggml_grids_beats_weighted_rounding() {
    let (d_out, d_in) = (16, 512);
    let (w, h, imat) = correlated_problem(9, d_out, d_in);
    let hm = h.matrix();
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q3K,
        GgmlType::Q2K,
        GgmlType::IQ4_XS,
        GgmlType::IQ4_NL,
        GgmlType::Q4_0,
        GgmlType::Q5_1,
        GgmlType::MXFP4,
    ] {
        for act in [ActOrder::None, ActOrder::Static] {
            let r = gptq(&w, d_out, d_in, &h, &gptq_on(ty, act)).unwrap();
            check_consistent(ty, &r.q, &r.weight);
            let mut y = vec![0f32; w.len()];
            dequantize(ty, &quantize(ty, &w, d_in, Some(&imat)).unwrap(), &mut y).unwrap();
            let (ours, theirs) = (
                layer_loss(&w, &r.weight, d_out, d_in, hm),
                layer_loss(&w, &y, d_out, d_in, hm),
            );
            assert!(
                ours < theirs * 0.9,
                "{ty} {act:?}: GPTQ loss {ours} vs llama.cpp imatrix rounding {theirs}"
            );
        }
    }
}

/// The lattice blocks of `q` decode to `weight` bit for bit, and rechoosing every unit of 8 for
/// its own decoded values, at the fitted scales, writes the same bytes.
fn check_lattice_consistent(ty: GgmlType, q: &QuantizedWeight, weight: &[f32]) {
    let (blocks, y) = decodes_to(ty, q, weight);
    let ones = [1f32; LATTICE_UNIT];
    let mut out = [0f32; LATTICE_UNIT];
    let mut again = blocks.clone();
    let bs = ty.block_size();
    for (b, blk) in again.chunks_exact_mut(ty.type_size()).enumerate() {
        for k in 0..bs / LATTICE_UNIT {
            let o = b * bs + k * LATTICE_UNIT;
            lattice_choose_unit(ty, blk, k, &y[o..o + LATTICE_UNIT], &ones, &mut out);
            assert_eq!(
                &out[..],
                &y[o..o + LATTICE_UNIT],
                "{ty}: block {b} unit {k}"
            );
        }
    }
    assert!(
        &again == blocks,
        "{ty}: re-rounding the decoded weights changed the bytes"
    );
}

#[test]
fn gptq_on_lattices_beats_llama_cpps_search() {
    let (d_out, d_in) = (16, 512);
    let (w, h, imat) = correlated_problem(11, d_out, d_in);
    let hm = h.matrix();
    for ty in LATTICE_TYPES {
        let mut y = vec![0f32; w.len()];
        dequantize(ty, &quantize(ty, &w, d_in, Some(&imat)).unwrap(), &mut y).unwrap();
        let theirs = layer_loss(&w, &y, d_out, d_in, hm);
        for act in [ActOrder::None, ActOrder::Static] {
            let r = gptq(&w, d_out, d_in, &h, &gptq_on(ty, act)).unwrap();
            check_lattice_consistent(ty, &r.q, &r.weight);
            let ours = layer_loss(&w, &r.weight, d_out, d_in, hm);
            assert!(
                ours < theirs * 0.9,
                "{ty} {act:?}: GPTQ loss {ours} vs llama.cpp imatrix search {theirs}"
            );
            eprintln!("{ty} {act:?}: GPTQ loss / llama.cpp's {:.3}", ours / theirs);
        }
    }
}

#[test]
fn bad_grid_settings_are_errors() {
    let d_in = 576;
    // Q4_K on 576 columns falls back to Q5_0 as llama-quantize does.
    let g = grid_for(&QuantConfig::for_ggml(GgmlType::Q4K).unwrap(), d_in).unwrap();
    assert_eq!(g.label(), "Q5_0");
    let e = QuantConfig::for_ggml(GgmlType::BF16)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("BF16") && e.contains("IQ3_S"), "{e}");
    // the lattices on rows of 576 fall back to IQ4_NL, as llama-quantize does
    for t in LATTICE_TYPES {
        let g = grid_for(&QuantConfig::for_ggml(t).unwrap(), d_in).unwrap();
        assert_eq!(g.label(), "IQ4_NL", "{t}");
        assert_eq!(
            grid_for(&QuantConfig::for_ggml(t).unwrap(), 512)
                .unwrap()
                .label(),
            t.name()
        );
    }
    // 100 columns: no quantized fallback (llama-quantize writes F16)
    let e = grid_for(&QuantConfig::for_ggml(GgmlType::Q4K).unwrap(), 100)
        .err()
        .unwrap();
    assert!(e.to_string().contains("F16"), "{e}");
    let h = Hessian::from_matrix(
        64,
        (0..64 * 64)
            .map(|k| if k % 65 == 0 { 1.0 } else { 0.0 })
            .collect(),
        8,
    );
    let w = vec![0.1f32; 2 * 64];
    let e = gptq(&w, 2, 64, &h, &gptq_on(GgmlType::Q4_0, ActOrder::Dynamic))
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("act-order"), "{e:#}");
    let mask = vec![false; 2 * 64];
    let e = gptq_masked(
        &w,
        2,
        64,
        &h,
        &gptq_on(GgmlType::Q4_0, ActOrder::None),
        Some(&mask),
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("pruning"), "{e:#}");
}
