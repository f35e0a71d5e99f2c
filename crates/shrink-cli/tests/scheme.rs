//! `compress --scheme`: llm-compressor's preset schemes through the command line, on the tiny
//! Llama: the float grids are written, recorded in recipe.toml (which replays them), and the
//! compressed-tensors export carries the scheme's format; bad combinations are refused.
mod common;
use common::*;

#[test]
fn schemes_compress_replay_and_export() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let calib = calib_text(t.path());
    for (scheme, format) in [
        ("NVFP4A16", "nvfp4-pack-quantized"),
        ("MXFP4A16", "mxfp4-pack-quantized"),
        ("FP8_DYNAMIC", "float-quantized"),
    ] {
        let out = t.path().join(scheme);
        let (code, _, err) = shrink(&[
            "compress",
            "-q",
            "--model",
            s(&model),
            "--method",
            "gptq",
            "--scheme",
            scheme,
            "--calib",
            s(&calib),
            "--nsamples",
            "4",
            "--seqlen",
            "16",
            "--out",
            s(&out),
        ]);
        assert_eq!(code, 0, "{scheme}: {err}");
        let toml = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
        assert!(toml.contains(scheme), "{scheme}: {toml}");
        let again = t.path().join(format!("{scheme}-again"));
        let (code, _, err) = shrink(&[
            "compress",
            "-q",
            "--model",
            s(&model),
            "--recipe",
            s(&out.join("recipe.toml")),
            "--out",
            s(&again),
        ]);
        assert_eq!(code, 0, "{scheme} replay: {err}");
        assert!(
            std::fs::read(out.join("model.safetensors")).unwrap()
                == std::fs::read(again.join("model.safetensors")).unwrap(),
            "{scheme}: the recipe did not replay"
        );
        let ct = t.path().join(format!("{scheme}-ct"));
        let (code, _, err) = shrink(&[
            "export",
            "--model",
            s(&out),
            "--format",
            "compressed-tensors",
            "--out",
            s(&ct),
        ]);
        assert_eq!(code, 0, "{scheme} export: {err}");
        let cfg = std::fs::read_to_string(ct.join("config.json")).unwrap();
        assert!(cfg.contains(format), "{scheme}: {cfg}");
    }
    let bad = t.path().join("bad");
    for (extra, needle) in [
        (vec!["--scheme", "NVFP4A16", "--group-size", "32"], "group"),
        (vec!["--scheme", "W5A5"], "W5A5"),
    ] {
        let mut a = vec![
            "compress",
            "--model",
            s(&model),
            "--method",
            "rtn",
            "--out",
            s(&bad),
        ];
        a.extend(extra);
        fails_with(&a, &[needle]);
        assert!(!bad.exists());
    }
}
