//! `compress --rotate`: the rotated, compressed model is an ordinary untied model whose
//! perplexity is the unrotated one's up to rounding, the rotation is in report.json and
//! recipe.toml, and `--recipe` replays it byte for byte.
mod common;
use common::*;

#[test]
fn rotate_is_recorded_and_replayed() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let calib = calib_text(t.path());
    let run = |out: &std::path::Path, extra: &[&str]| {
        let mut a = vec!["compress", "-q", "--model", s(&model), "--out", s(out)];
        a.extend_from_slice(extra);
        let (code, _, err) = shrink(&a);
        assert_eq!(code, 0, "{a:?}: {err}");
    };
    let (plain, rot, again) = (
        t.path().join("plain"),
        t.path().join("rot"),
        t.path().join("again"),
    );
    let rtn8 = ["--method", "rtn", "--bits", "8"];
    run(&plain, &rtn8);
    run(&rot, &[&rtn8[..], &["--rotate", "hadamard"]].concat());
    let rep = report(&rot);
    assert_eq!(rep["rotation"]["kind"], "hadamard");
    assert_eq!(rep["recipe"]["rotate"], "hadamard");
    let toml = std::fs::read_to_string(rot.join("recipe.toml")).unwrap();
    assert!(toml.contains("rotate = \"hadamard\""), "{toml}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rot.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tie_word_embeddings"], false);
    // 8-bit rounding in either basis: the same perplexity within 1%
    let (p, r) = (ppl16(&plain, &calib), ppl16(&rot, &calib));
    assert!((r / p - 1.0).abs() < 0.01, "plain {p}, rotated {r}");
    // the recipe replays the rotation
    run(&again, &["--recipe", s(&rot.join("recipe.toml"))]);
    assert!(
        std::fs::read(rot.join("model.safetensors")).unwrap()
            == std::fs::read(again.join("model.safetensors")).unwrap(),
        "--recipe did not replay the rotation"
    );
    let bad = t.path().join("bad");
    fails_with(
        &[
            "compress",
            "--model",
            s(&model),
            "--out",
            s(&bad),
            "--method",
            "rtn",
            "--bits",
            "8",
            "--rotate",
            "spin",
        ],
        &["--rotate", "spin"],
    );
    assert!(!bad.exists());
}
