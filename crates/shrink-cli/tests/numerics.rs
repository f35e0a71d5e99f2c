//! Numerical guards end to end: finite weights whose activations overflow are reported at the
//! layer (or the final norm, or the logits) where it happens instead of a NaN perplexity, and
//! GPTQ's damping is recorded per linear in report.json with every written weight finite.
mod common;
use common::*;
use std::path::Path;

fn eval_args<'a>(model: &'a Path, text: &'a Path) -> Vec<&'a str> {
    vec![
        "eval",
        "--model",
        s(model),
        "--text",
        s(text),
        "--seqlen",
        "16",
        "-q",
    ]
}

#[test]
fn overflowing_activations_are_named_where_they_appear_in_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let text = calib_text(t);
    // the good model gives a finite perplexity
    let (code, out, err) = shrink(&[
        "eval",
        "--model",
        s(&model),
        "--text",
        s(&text),
        "--seqlen",
        "16",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["perplexity"].as_f64().unwrap().is_finite());

    let big = scaled_copy(
        &model,
        &t.join("layer1"),
        "model.layers.1.post_attention_layernorm.weight",
        3e38,
    );
    let err = fails_with(
        &eval_args(&big, &text),
        &["layer 1:", "non-finite", "overflow"],
    );
    assert!(!err.contains("layer 0:"), "{err}");
    let big = scaled_copy(&model, &t.join("norm"), "model.norm.weight", 3e38);
    fails_with(
        &eval_args(&big, &text),
        &["final norm", "model.norm.weight", "non-finite"],
    );
}

#[test]
fn gptq_report_records_damping_and_weights_are_finite() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let out = t.join("out");
    let (code, _, err) = shrink(&[
        "compress",
        "--model",
        s(&model),
        "--calib",
        s(&calib),
        "--nsamples",
        "4",
        "--seqlen",
        "16",
        "--method",
        "gptq",
        "--bits",
        "3",
        "--out",
        s(&out),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    let r = report(&out);
    let mut n = 0;
    for l in r["layers"].as_array().unwrap() {
        for lin in l["linears"].as_array().unwrap() {
            let info = &lin["info"];
            let damp = info["damp"].as_f64().unwrap();
            let retries = info["damp_retries"].as_u64().unwrap();
            assert!((0.01..=1.0).contains(&damp), "{lin}");
            // the damping actually used is the start value raised x10 per retry (at most 1)
            let expected = (0.01 * 10f64.powi(retries as i32)).min(1.0);
            assert!((damp - expected).abs() < 1e-12, "{lin}");
            assert!(lin["rel_error"].as_f64().unwrap().is_finite(), "{lin}");
            n += 1;
        }
    }
    assert_eq!(n, 2 * 7, "every linear of both layers is reported");
    let st = shrink_model::source::SafetensorsSource::open(&out.join("model.safetensors")).unwrap();
    for name in st.names() {
        let t = shrink_model::TensorSource::load(&st, name).unwrap();
        assert!(t.data.iter().all(|v| v.is_finite()), "{name}");
    }
}
