//! SmoothQuant (`compress --smooth A`) and activation fake-quantization (`eval --act-quant`):
//! smoothing folds exactly (8-bit weights keep the original perplexity), shrinks the activation
//! maxima it reports, is recorded and replayed; `--act-quant` changes the perplexity it
//! measures; bad values are refused.
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
    let ppl = |extra: &[&str]| -> f64 {
        let mut a = vec![
            "eval",
            "-q",
            "--model",
            s(&model),
            "--text",
            s(&text),
            "--seqlen",
            "16",
            "--json",
        ];
        a.extend_from_slice(extra);
        let (code, out, err) = shrink(&a);
        assert_eq!(code, 0, "{a:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        v["perplexity"].as_f64().unwrap()
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
    fails_with(
        &[
            "eval",
            "--model",
            s(&model),
            "--text",
            s(&text),
            "--act-quant",
            "int8",
            "--reference",
            s(&model),
        ],
        &["--act-quant", "--reference"],
    );
}
