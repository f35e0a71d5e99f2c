//! Interrupted compressions: a run killed with SIGKILL and continued with `--resume` gives the
//! same files, bit for bit, as an uninterrupted run; wrong resumes are refused clearly.
#[path = "../../shrink-model/tests/common.rs"]
mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn shrink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shrink"))
}

fn partial(out: &Path) -> PathBuf {
    out.parent().unwrap().join(format!(
        ".{}.partial",
        out.file_name().unwrap().to_string_lossy()
    ))
}

fn next_layer(out: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(partial(out).join("state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&s).ok()?["next_layer"].as_u64()
}

fn run(args: &[String]) -> (bool, String) {
    let o = shrink().args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Kill -9 after layer 3 of 8 has been checkpointed, resume, compare with an uninterrupted run.
#[test]
fn killed_run_resumes_to_identical_output() {
    let (Some(model), Some(calib)) = (
        common::fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        common::fetched("data/calib.txt"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "compress",
            "-q",
            "--model",
            model.to_str().unwrap(),
            "--method",
            "gptq",
            "--bits",
            "4",
            "--group-size",
            "64",
            "--calib",
            calib.to_str().unwrap(),
            "--nsamples",
            "8",
            "--seqlen",
            "128",
            "--layers",
            "8",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let full = tmp.path().join("full");
    let t = Instant::now();
    let (ok, err) = run(&args(&full));
    assert!(ok, "{err}");
    let full_s = t.elapsed().as_secs_f64();
    assert!(!partial(&full).exists(), "checkpoint left after success");

    let cut = tmp.path().join("cut");
    let mut child = shrink()
        .args(args(&cut))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if next_layer(&cut).is_some_and(|n| n >= 3) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = next_layer(&cut).unwrap();
    assert!((3..8).contains(&done), "killed after {done} layers");
    assert!(
        !cut.exists(),
        "an interrupted run must not leave an output directory"
    );

    // Without --resume the checkpoint is protected.
    let (ok, err) = run(&args(&cut));
    assert!(
        !ok && err.contains("--resume") && err.contains(".cut.partial"),
        "{err}"
    );
    // With other settings the resume is refused, naming what differs.
    let mut other = args(&cut);
    other[7] = "3".into();
    other.push("--resume".into());
    let (ok, err) = run(&other);
    assert!(
        !ok && err.contains("different settings") && err.contains("recipe"),
        "{err}"
    );

    let mut again = args(&cut);
    again.push("--resume".into());
    let t = Instant::now();
    let (ok, err) = run(&again);
    assert!(ok, "{err}");
    let resume_s = t.elapsed().as_secs_f64();
    assert!(!partial(&cut).exists());
    for f in [
        "model.safetensors",
        "quantized.safetensors",
        "calibration_ids.safetensors",
        "config.json",
        "tokenizer.json",
    ] {
        assert!(
            std::fs::read(full.join(f)).unwrap() == std::fs::read(cut.join(f)).unwrap(),
            "{f} differs between the uninterrupted and the resumed run"
        );
    }
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("report.json")).unwrap()).unwrap();
    assert_eq!(rep["resumed_at_layer"], done);
    assert_eq!(rep["layers"].as_array().unwrap().len(), 8);
    eprintln!("uninterrupted {full_s:.1} s; killed after {done}/8 layers; resume {resume_s:.1} s");
}

/// `--resume` with nothing to resume is a clear error.
#[test]
fn resume_without_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let (ok, err) = run(&[
        "compress".into(),
        "--model".into(),
        common::fixture("tiny/llama").to_str().unwrap().into(),
        "--method".into(),
        "rtn".into(),
        "--bits".into(),
        "4".into(),
        "--calib".into(),
        "/nonexistent.txt".into(),
        "--out".into(),
        out.to_str().unwrap().into(),
        "--resume".into(),
    ]);
    assert!(!ok && err.contains("no checkpoint to resume"), "{err}");
    assert!(!out.exists());
}
