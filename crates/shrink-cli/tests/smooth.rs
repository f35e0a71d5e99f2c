//! SmoothQuant (`compress --smooth A`) and activation fake-quantization (`eval --act-quant`):
//! smoothing folds exactly (8-bit weights keep the original perplexity), shrinks the activation
//! maxima it reports, is recorded and replayed; `--act-quant` changes the perplexity it
//! measures, of the evaluated model alone beside a reference, and by default where the
//! model's scheme records it; bad values are refused.
mod common;
use common::*;

#[test]
fn smoothing_folds_exactly_and_is_recorded() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let calib = calib_text(t.path());
    let out = t.path().join("sq");
    let args = [
        "compress",
        "-q",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--calib",
        s(&calib),
        "--nsamples",
        "8",
        "--seqlen",
        "32",
        "--smooth",
        "0.5",
        "--method",
        "rtn",
        "--bits",
        "8",
    ];
    let (code, _, err) = shrink(&args);
    assert_eq!(code, 0, "{err}");
    let (p0, p1) = (ppl16(&model, &calib), ppl16(&out, &calib));
    assert!(
        (p1 / p0 - 1.0).abs() < 0.01,
        "original {p0}, smoothed w8 {p1}"
    );
    let rep = report(&out);
    let mut groups = 0;
    for l in rep["layers"].as_array().unwrap() {
        let sm = l["smooth"].as_array().expect("smooth per layer");
        // q/k/v and gate/up: the groups a norm feeds
        assert_eq!(sm.len(), 2, "{sm:?}");
        for g in sm {
            let (b, a) = (
                g["act_max_before"].as_f64().unwrap(),
                g["act_max_after"].as_f64().unwrap(),
            );
            assert!(a.is_finite() && a > 0.0 && b > 0.0);
            groups += 1;
        }
    }
    assert!(groups > 0);
    let toml = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    assert!(toml.contains("smooth = 0.5"), "{toml}");
    for bad in ["0", "1.5", "-0.2"] {
        let o = t.path().join(format!("bad{bad}"));
        let flag = format!("--smooth={bad}");
        fails_with(
            &[
                "compress",
                "--model",
                s(&model),
                "--out",
                s(&o),
                "--calib",
                s(&calib),
                &flag,
                "--method",
                "rtn",
                "--bits",
                "8",
            ],
            &["smooth", "(0, 1)"],
        );
        assert!(!o.exists());
    }
}

#[test]
fn act_quant_changes_the_measured_perplexity() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let text = calib_text(t.path());
    let ppl = |extra: &[&str]| {
        eval_json(&model, &text, "16", extra)["perplexity"]
            .as_f64()
            .unwrap()
    };
    let base = ppl(&[]);
    let int8 = ppl(&["--act-quant", "int8"]);
    let fp4 = ppl(&["--act-quant", "mxfp4"]);
    // 8-bit activations move the perplexity a little, 4-bit ones more
    assert!(
        int8 != base && (int8 / base - 1.0).abs() < 0.02,
        "{base} {int8}"
    );
    assert!(
        (fp4 / base - 1.0).abs() > (int8 / base - 1.0).abs(),
        "{base} {int8} {fp4}"
    );
    for q in ["fp8", "nvfp4"] {
        assert!(ppl(&["--act-quant", q]).is_finite());
    }
    fails_with(
        &[
            "eval",
            "--model",
            s(&model),
            "--text",
            s(&text),
            "--act-quant",
            "int4",
        ],
        &["int4", "int8, fp8, nvfp4 or mxfp4"],
    );
}

/// With `--reference`, only the evaluated model's activations are quantized: its perplexity is
/// the one `--act-quant` alone measures, the reference's is the exact model's, and the KL
/// divergence of a model from itself is then that of its activation quantization alone. A model
/// compressed with a scheme that quantizes activations (W8A8) is evaluated so by default, and
/// `--act-quant none` gives its weights alone.
#[test]
fn act_quant_with_a_reference_and_recorded_by_the_scheme() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let text = calib_text(t.path());
    let eval = |m: &std::path::Path, extra: &[&str]| eval_json(m, &text, "16", extra);
    let ppl = |v: &serde_json::Value| v["perplexity"].as_f64().unwrap();
    let base = ppl(&eval(&model, &[]));
    let int8 = ppl(&eval(&model, &["--act-quant", "int8"]));
    let k = eval(&model, &["--act-quant", "int8", "--reference", s(&model)]);
    assert_eq!(k["act_quant"], "int8");
    assert!((ppl(&k) / int8 - 1.0).abs() < 1e-6, "{k} vs {int8}");
    let pref = k["perplexity_reference"].as_f64().unwrap();
    assert!((pref / base - 1.0).abs() < 1e-6, "{pref} vs {base}");
    // (the KLD pass sums the log-probabilities in another order: equal to ~1e-9)
    let kld = k["kld_mean"].as_f64().unwrap();
    assert!(kld > 0.0 && kld < 0.05, "{kld}");
    // without the flag the same comparison is of a model with itself
    let k0 = eval(&model, &["--reference", s(&model)]);
    assert!(k0["kld_mean"].as_f64().unwrap().abs() < 1e-9, "{k0}");

    // W8A8 records dynamic per-token int8 activations; eval applies them by default
    let calib = calib_text(t.path());
    let out = t.path().join("w8a8");
    let (code, _, err) = shrink(&[
        "compress",
        "-q",
        "--model",
        s(&model),
        "--method",
        "rtn",
        "--scheme",
        "W8A8",
        "--calib",
        s(&calib),
        "--nsamples",
        "4",
        "--seqlen",
        "16",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let by_default = eval(&out, &[]);
    assert_eq!(by_default["act_quant"], "int8", "{by_default}");
    let explicit = ppl(&eval(&out, &["--act-quant", "int8"]));
    let weights_only = eval(&out, &["--act-quant", "none"]);
    assert!(weights_only["act_quant"].is_null());
    assert_eq!(ppl(&by_default), explicit);
    assert_ne!(ppl(&by_default), ppl(&weights_only));
    // the notice says what was applied and how to turn it off
    let (code, _, err) = shrink(&[
        "eval",
        "--model",
        s(&out),
        "--text",
        s(&text),
        "--seqlen",
        "16",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("int8") && err.contains("--act-quant none"),
        "{err}"
    );
    // a reference's logits are saved exact
    fails_with(
        &[
            "eval",
            "--model",
            s(&out),
            "--text",
            s(&text),
            "--protocol",
            "llama.cpp",
            "--save-logits",
            s(&t.path().join("l.bin")),
        ],
        &["--save-logits", "--act-quant none"],
    );
}
