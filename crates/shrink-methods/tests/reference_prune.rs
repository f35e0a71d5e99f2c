//! shrink's SparseGPT and Wanda against llm-compressor's own kernels (`sgpt_sparsify`,
//! `wanda_sparsify`, 0.14) on the same weight and inputs: fixture written by
//! tools/reference/prune_layer.py.
mod common;
use common::layer_loss;
use shrink_methods::*;
use shrink_model::source::{SafetensorsSource, TensorSource};

fn fixture() -> SafetensorsSource {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference/prune_layer.safetensors");
    SafetensorsSource::open(&p).unwrap()
}

/// Fraction of positions where both weights are zero or both non-zero.
fn mask_agreement(a: &[f32], b: &[f32]) -> f64 {
    let same = a
        .iter()
        .zip(b)
        .filter(|(x, y)| (**x == 0.0) == (**y == 0.0))
        .count();
    same as f64 / a.len() as f64
}

#[test]
fn sparsegpt_and_wanda_match_llm_compressor() {
    let f = fixture();
    let w = f.load("W").unwrap();
    let x = f.load("X").unwrap();
    let (d_out, d_in) = (w.shape[0], w.shape[1]);
    let rows = x.shape[0];
    let mut h = Hessian::new(d_in);
    h.add_batch(&x.data, rows);
    // Their f32 Hessian and ours (f64 accumulation) agree up to their normalization: they
    // divide by the number of sequences (8 of 64 tokens), we by the number of tokens.
    let hr = f.load("H").unwrap();
    let per_token = 64.0;
    let scale = hr.data.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
    let hd = h
        .matrix()
        .iter()
        .zip(&hr.data)
        .fold(0f64, |a, (p, q)| a.max((p * per_token - *q as f64).abs()));
    assert!(hd / scale < 1e-5, "Hessians differ by {hd} (scale {scale})");

    for (name, sp) in [
        ("50", Sparsity::Unstructured(0.5)),
        ("2of4", Sparsity::NM { n: 2, m: 4 }),
    ] {
        let theirs = f.load(&format!("sparsegpt_{name}")).unwrap().data;
        let ours = sparsegpt(&w.data, d_out, d_in, &h, &SparseGptConfig::new(sp))
            .unwrap()
            .weight;
        let agree = mask_agreement(&theirs, &ours);
        let (lt, lo) = (
            layer_loss(&w.data, &theirs, d_out, d_in, h.matrix()),
            layer_loss(&w.data, &ours, d_out, d_in, h.matrix()),
        );
        eprintln!("sparsegpt {name}: mask agreement {agree:.5}, loss ours {lo:.6} theirs {lt:.6}");
        assert!(agree > 0.995, "sparsegpt {name}: masks agree on {agree}");
        assert!(
            lo <= lt * 1.01,
            "sparsegpt {name}: loss {lo} vs llm-compressor {lt}"
        );

        let theirs = f.load(&format!("wanda_{name}")).unwrap().data;
        let col_sq = h.col_sq_norms();
        let mask = wanda_mask(&w.data, d_out, d_in, &col_sq, sp);
        let ours: Vec<f32> = w
            .data
            .iter()
            .zip(&mask)
            .map(|(v, m)| if *m { 0.0 } else { *v })
            .collect();
        let agree = mask_agreement(&theirs, &ours);
        eprintln!("wanda {name}: mask agreement {agree:.5}");
        assert!(agree > 0.999, "wanda {name}: masks agree on {agree}");
    }
}
