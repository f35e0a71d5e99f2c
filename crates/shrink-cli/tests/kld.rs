//! `shrink eval --reference/--save-logits/--reference-logits`: a model against itself agrees
//! exactly, a changed model does not; the saved file reads back to the same figures as the
//! same-pass comparison; bad input is refused with one clear error.
mod common;
use common::*;

fn json_of(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = shrink(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[test]
fn kld_against_itself_a_changed_model_and_a_saved_file() {
    let t = tempfile::tempdir().unwrap();
    let hf = hf_dir(t.path());
    let text = t.path().join("text.txt");
    let body: String = (0..400)
        .map(|i| {
            ((b'a' + (i * 7 % 26) as u8) as char).to_string() + if i % 5 == 0 { " " } else { "" }
        })
        .collect();
    std::fs::write(&text, &body).unwrap();
    let (m, tx) = (s(&hf), s(&text));
    for proto in ["gptq", "llama.cpp"] {
        let v = json_of(&[
            "eval",
            "--model",
            m,
            "--reference",
            m,
            "--text",
            tx,
            "--seqlen",
            "32",
            "--protocol",
            proto,
            "--json",
        ]);
        assert!(v["kld_mean"].as_f64().unwrap().abs() < 1e-3, "{proto}: {v}");
        assert_eq!(v["top1_agreement"].as_f64().unwrap(), 1.0, "{proto}");
        assert!(
            (v["ppl_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-3,
            "{proto}"
        );
    }
    // a compressed model (RTN 2-bit) differs from the original
    let q = t.path().join("q");
    let (code, _, err) = shrink(&[
        "compress",
        "--model",
        m,
        "--method",
        "rtn",
        "--bits",
        "2",
        "--group-size",
        "16",
        "--calib",
        tx,
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--out",
        s(&q),
    ]);
    assert_eq!(code, 0, "{err}");
    let same = json_of(&[
        "eval",
        "--model",
        s(&q),
        "--reference",
        m,
        "--text",
        tx,
        "--seqlen",
        "32",
        "--protocol",
        "llama.cpp",
        "--json",
    ]);
    assert!(same["kld_mean"].as_f64().unwrap() > 1e-3, "{same}");
    // the reference saved once, read back: the same figures
    let f = t.path().join("base.kld");
    json_of(&[
        "eval",
        "--model",
        m,
        "--text",
        tx,
        "--seqlen",
        "32",
        "--protocol",
        "llama.cpp",
        "--save-logits",
        s(&f),
        "--json",
    ]);
    let file = json_of(&[
        "eval",
        "--model",
        s(&q),
        "--reference-logits",
        s(&f),
        "--protocol",
        "llama.cpp",
        "--json",
    ]);
    for k in [
        "kld_mean",
        "top1_agreement",
        "delta_p_rms",
        "ppl_ratio",
        "tokens",
    ] {
        assert_eq!(file[k], same[k], "{k}");
    }
    // bad input
    fails_with(
        &[
            "eval",
            "--model",
            s(&q),
            "--reference-logits",
            tx,
            "--protocol",
            "llama.cpp",
        ],
        &["text.txt", "_logits_"],
    );
    fails_with(
        &["eval", "--model", s(&q), "--reference-logits", s(&f)],
        &["--protocol llama.cpp"],
    );
    let cut = t.path().join("cut.kld");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&cut, &b[..b.len() - 10]).unwrap();
    fails_with(
        &[
            "eval",
            "--model",
            s(&q),
            "--reference-logits",
            s(&cut),
            "--protocol",
            "llama.cpp",
        ],
        &["cut.kld", "truncated"],
    );
    fails_with(
        &[
            "eval",
            "--model",
            s(&q),
            "--text",
            tx,
            "--protocol",
            "llama.cpp",
            "--seqlen",
            "32",
            "--save-logits",
            s(&f),
        ],
        &["base.kld"],
    );
}
