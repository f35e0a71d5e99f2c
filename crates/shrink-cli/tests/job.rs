//! The compress job as a library (`shrink_recipe::job`): what a sweep runner calls. It must do
//! exactly what `shrink compress` does with the same flags, and tell its caller what it does.
mod common;
use common::*;
use shrink_recipe::job::{self, Bar, CompressJob, Ui};
use std::sync::Mutex;

/// Records every bar and message a job shows.
#[derive(Default)]
struct Recorder {
    bars: Mutex<Vec<(String, u64)>>,
    info: Mutex<Vec<String>>,
    notices: Mutex<Vec<String>>,
}

struct NoBar;
impl Bar for NoBar {
    fn set_position(&self, _: u64) {}
    fn finish_and_clear(&self) {}
}

impl Ui for Recorder {
    fn bar(&self, len: u64, unit: &str) -> Box<dyn Bar> {
        self.bars.lock().unwrap().push((unit.to_string(), len));
        Box::new(NoBar)
    }
    fn info(&self, msg: &str) {
        self.info.lock().unwrap().push(msg.to_string());
    }
    fn notice(&self, msg: &str) {
        self.notices.lock().unwrap().push(msg.to_string());
    }
}

fn flags<'a>(model: &'a str, calib: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "--model",
        model,
        "--out",
        out,
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "16",
        "--calib",
        calib,
        "--nsamples",
        "4",
        "--seqlen",
        "16",
    ]
}

#[test]
fn the_library_job_writes_what_the_command_writes() {
    let t = tempfile::tempdir().unwrap();
    let hf = hf_dir(t.path());
    let calib = calib_text(t.path());
    let (lib_out, cli_out) = (t.path().join("lib"), t.path().join("cli"));
    let a = flags(s(&hf), s(&calib), s(&lib_out));
    let job = CompressJob::from_args(a.clone()).unwrap();
    let ui = Recorder::default();
    let outcome = job::run(&job, &ui).unwrap();
    assert_eq!(outcome.path, lib_out);
    // the returned report is the one written (both through the same text, so that float
    // parsing treats them alike)
    let returned: serde_json::Value = serde_json::from_str(&outcome.report.to_string()).unwrap();
    assert_eq!(returned, report(&lib_out));
    // the caller saw the layer loop and the run described
    let bars = ui.bars.lock().unwrap().clone();
    assert!(
        bars.iter().any(|(u, n)| u == "layers" && *n == 2),
        "bars: {bars:?}"
    );
    let info = ui.info.lock().unwrap().join("\n");
    assert!(
        info.contains("compressing") && info.contains("wrote"),
        "{info}"
    );

    let mut c = flags(s(&hf), s(&calib), s(&cli_out));
    c.insert(0, "compress");
    c.push("--quiet");
    let (code, _, err) = shrink(&c);
    assert_eq!(code, 0, "{err}");
    for f in [
        "model.safetensors",
        "quantized.safetensors",
        "recipe.toml",
        "config.json",
    ] {
        assert!(
            std::fs::read(lib_out.join(f)).unwrap() == std::fs::read(cli_out.join(f)).unwrap(),
            "{f} differs between the library job and the command"
        );
    }
}

#[test]
fn a_job_from_flags_has_the_command_lines_defaults_and_errors() {
    let j = CompressJob::from_args(["--model", "m.gguf", "--out", "d"]).unwrap();
    assert_eq!(j.model.to_str(), Some("m.gguf"));
    assert_eq!(j.sequential, "group");
    assert_eq!(j.moe_calibration, "fallback-rtn");
    assert_eq!(j.search_bits, "2,3,4,8");
    assert_eq!(j.agent_timeout, 60.0);
    assert_eq!(j.holdin_samples, 8);
    assert!(j.method.is_none() && !j.resume && !j.force);
    let e = CompressJob::from_args(["--model", "m", "--out", "d", "--bitz", "4"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--bitz"), "{e}");
    let e = CompressJob::from_args(["--out", "d"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--model"), "{e}");
    // a job refused before any work leaves nothing behind
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("never");
    let j = CompressJob::from_args([
        "--model",
        s(&hf_dir(t.path())),
        "--out",
        s(&out),
        "--method",
        "gptq",
        "--bits",
        "12",
    ])
    .unwrap();
    let e = job::run(&j, &job::Silent).unwrap_err();
    assert!(format!("{e:#}").contains("bits"), "{e:#}");
    assert!(!out.exists());
}
