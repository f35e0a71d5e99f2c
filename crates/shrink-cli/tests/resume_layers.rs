//! `--resume` of runs that remove layers (`--drop-layers`, `--merge-layers`) and compress the
//! rest, on the default model: the run is stopped after every layer is compressed (90% pruning
//! of its first two layers, and the perplexity guard at 0 refuses the output and keeps the
//! checkpoint), then resumed with a looser guard. The resumed run must
//! reuse the interrupted run's choice of layers (no new scoring or merge search) and write the
//! same files as an uninterrupted run; resuming with other removal settings is refused.
mod common;
use common::*;
use std::path::Path;

fn partial(out: &Path) -> std::path::PathBuf {
    out.parent().unwrap().join(format!(
        ".{}.partial",
        out.file_name().unwrap().to_string_lossy()
    ))
}

fn check_resume(removal: &[&str], other: &[&str], refused: &str, key: &str) {
    let (Some(model), Some(calib)) = (
        fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        fetched("data/calib.txt"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let args = |out: &Path, guard: &str, removal: &[&str], extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "compress",
            "-q",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--method",
            "magnitude",
            "--sparsity",
            "0.9",
            "--layers",
            "2",
            "--max-ppl-rise",
            guard,
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(removal.iter().chain(extra).map(|x| x.to_string()));
        v
    };
    let run = |a: &[String]| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        shrink(&a)
    };
    let full = t.join("full");
    let (code, _, err) = run(&args(&full, "1e6", removal, &[]));
    assert_eq!(code, 0, "{err}");

    // the held-in perplexity rises: the guard at 0 refuses
    let cut = t.join("cut");
    let (code, _, err) = run(&args(&cut, "0", removal, &[]));
    assert_eq!(code, 1, "the guard did not stop the run: {err}");
    assert!(
        err.contains("held-in perplexity rose") && err.contains("--resume"),
        "{err}"
    );
    assert!(!cut.exists() && partial(&cut).exists());

    // other removal settings: refused, naming them; the checkpoint stays
    let (code, _, err) = run(&args(&cut, "1e6", other, &["--resume"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(refused), "{err}");
    assert!(partial(&cut).exists());

    let (code, _, err) = run(&args(&cut, "1e6", removal, &["--resume"]));
    assert_eq!(code, 0, "{err}");
    assert!(!partial(&cut).exists());
    for f in [
        "model.safetensors",
        "config.json",
        "recipe.toml",
        "calibration_ids.safetensors",
    ] {
        assert!(
            std::fs::read(full.join(f)).unwrap() == std::fs::read(cut.join(f)).unwrap(),
            "{f} differs between the uninterrupted and the resumed run ({removal:?})"
        );
    }
    let (a, b) = (report(&full), report(&cut));
    assert_eq!(a[key]["layers_after"], 29);
    assert_eq!(b[key]["layers_after"], 29);
    assert_eq!(
        b["resumed_at_layer"], 2,
        "every layer was done before the guard"
    );
    let what = if key == "layer_merge" {
        "merges"
    } else {
        "dropped"
    };
    assert_eq!(a[key][what], b[key][what]);
}

#[test]
fn a_merge_run_resumes_with_the_same_merges() {
    check_resume(
        &["--merge-layers", "1", "--merge-size", "2"],
        &["--merge-layers", "1", "--merge-size", "3"],
        "different layer-merging settings",
        "layer_merge",
    );
}

#[test]
fn a_drop_run_resumes_with_the_same_layers() {
    check_resume(
        &["--drop-layers", "1", "--layer-score", "angular"],
        &["--drop-layers", "1", "--layer-score", "bi"],
        "different layer-pruning settings",
        "layer_drop",
    );
}
