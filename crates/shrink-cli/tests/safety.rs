//! Output safety: an existing output is never replaced without --force, and a write that fails
//! (a full disk) leaves the previous output exactly as it was, leaves no temporary files and says
//! so. A full disk is simulated two ways: RLIMIT_FSIZE (`ulimit -f`, with SIGXFSZ ignored so that
//! writes fail with EFBIG, as they fail with ENOSPC on a full disk), and, where this process may
//! mount, a small tmpfs (skipped with a note otherwise).
mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every file under `dir` (relative path -> bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// Temporary files or directories a write left next to its target.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".part") || n.ends_with(".old"))
        .collect()
}

/// Runs shrink with writes limited to `kib` KiB per file (SIGXFSZ ignored, so a write past the
/// limit fails with EFBIG instead of killing the process).
fn shrink_fsize(kib: u64, args: &[&str]) -> (i32, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {}; exec \"$@\"", kib * 2))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_shrink"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// An existing output directory: a converted model plus a file of the user's.
fn previous_output(gguf: &Path, out: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let (code, _, err) = shrink(&["convert", s(gguf), "--out", s(out), "-q"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(out.join("my-notes.txt"), "the user's file").unwrap();
    snapshot(out)
}

fn compress_args<'a>(model: &'a Path, calib: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "compress",
        "--model",
        s(model),
        "--calib",
        s(calib),
        "--nsamples",
        "4",
        "--seqlen",
        "16",
        "--method",
        "rtn",
        "--bits",
        "4",
        "--out",
        s(out),
        "-q",
    ]
}

#[test]
fn existing_output_is_never_replaced_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let g = gguf_file(t);
    let model = hf_dir(t);
    let calib = calib_text(t);
    let out = t.join("out");
    let before = previous_output(&g, &out);

    // convert and compress refuse, and touch nothing
    let err = fails_with(
        &["convert", s(&g), "--out", s(&out)],
        &["out", "already exists (pass --force to replace it)"],
    );
    assert!(!err.contains("note:"), "nothing was started: {err}");
    assert_eq!(snapshot(&out), before);
    fails_with(
        &compress_args(&model, &calib, &out),
        &["already exists (pass --force to replace it)"],
    );
    assert_eq!(snapshot(&out), before);
    // an existing plain file is refused too
    let file = t.join("file-out");
    std::fs::write(&file, "keep me").unwrap();
    fails_with(&["convert", s(&g), "--out", s(&file)], &["already exists"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(leftovers(t).is_empty(), "{:?}", leftovers(t));

    // eval --logits-out does not overwrite a file either
    let logits = t.join("logits.safetensors");
    std::fs::write(&logits, "keep me").unwrap();
    let eval = |force: bool| {
        let mut a = vec!["eval", "--model", s(&model), "--text", s(&calib)];
        a.extend(["--seqlen", "16", "--logits-out", s(&logits), "-q"]);
        if force {
            a.push("--force");
        }
        a
    };
    fails_with(&eval(false), &["logits.safetensors", "already exists"]);
    assert_eq!(std::fs::read_to_string(&logits).unwrap(), "keep me");
    let (code, _, err) = shrink(&eval(true));
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(&logits).unwrap(), b"keep me");

    // with --force the old output is replaced whole (the user's extra file goes with it)
    let (code, _, err) = shrink(&["convert", s(&g), "--out", s(&out), "--force", "-q"]);
    assert_eq!(code, 0, "{err}");
    let after = snapshot(&out);
    assert!(!after.contains_key(Path::new("my-notes.txt")));
    let mut expected = before.clone();
    expected.remove(Path::new("my-notes.txt"));
    assert_eq!(after, expected, "the same conversion gives the same files");
    let (code, _, err) = shrink(&{
        let mut a = compress_args(&model, &calib, &out);
        a.push("--force");
        a
    });
    assert_eq!(code, 0, "{err}");
    assert!(out.join("report.json").is_file());
    assert!(leftovers(t).is_empty(), "{:?}", leftovers(t));
}

#[test]
fn disk_full_leaves_the_previous_output_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let g = gguf_file(t);
    let model = hf_dir(t);
    let calib = calib_text(t);
    // the tiny model's safetensors file is ~380 KiB; 64 KiB per file is a full disk for it
    const LIMIT_KIB: u64 = 64;
    assert!(
        std::fs::metadata(model.join("model.safetensors"))
            .unwrap()
            .len()
            > LIMIT_KIB << 10
    );

    // a new output: nothing is created
    let fresh = t.join("fresh");
    let (code, err) = shrink_fsize(LIMIT_KIB, &["convert", s(&g), "--out", s(&fresh)]);
    assert_eq!(code, 1, "{err}");
    println!("shrink exit code 1, stderr: {}", err.trim());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert!(err.contains("fresh was not created"), "{err}");
    assert!(!fresh.exists());
    assert!(leftovers(t).is_empty(), "{:?}", leftovers(t));

    // replacing an existing output (--force): it is left exactly as it was
    let out = t.join("out");
    let before = previous_output(&g, &out);
    let (code, err) = shrink_fsize(LIMIT_KIB, &["convert", s(&g), "--out", s(&out), "--force"]);
    assert_eq!(code, 1, "{err}");
    println!("shrink exit code 1, stderr: {}", err.trim());
    assert!(
        err.contains("model.safetensors") && err.contains("File too large"),
        "{err}"
    );
    assert!(err.contains("out was left unchanged"), "{err}");
    assert_eq!(snapshot(&out), before);
    assert!(leftovers(t).is_empty(), "{:?}", leftovers(t));

    // the same for compress
    let mut args = compress_args(&model, &calib, &out);
    args.push("--force");
    let (code, err) = shrink_fsize(LIMIT_KIB, &args);
    assert_eq!(code, 1, "{err}");
    println!("shrink exit code 1, stderr: {}", err.trim());
    assert!(err.contains("File too large"), "{err}");
    assert!(err.contains("out was left unchanged"), "{err}");
    assert_eq!(snapshot(&out), before);
    assert!(leftovers(t).is_empty(), "{:?}", leftovers(t));

    // and a large enough limit succeeds (the limit, not something else, made it fail)
    let (code, err) = shrink_fsize(4 << 10, &["convert", s(&g), "--out", s(&fresh)]);
    assert_eq!(code, 0, "{err}");
    assert!(fresh.join("model.safetensors").is_file());
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_on_a_small_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let g = gguf_file(t);
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    }
    let _guard = Tmpfs(mnt.clone());
    // the previous output: small files that fit
    let out = mnt.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("config.json"), "{\"previous\": true}").unwrap();
    std::fs::write(out.join("model.safetensors"), vec![7u8; 16 << 10]).unwrap();
    let before = snapshot(&out);

    let (code, _, err) = shrink(&["convert", s(&g), "--out", s(&out), "--force"]);
    assert_eq!(code, 1, "{err}");
    println!("shrink exit code 1, stderr: {}", err.trim());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("out was left unchanged"), "{err}");
    assert_eq!(snapshot(&out), before);
    assert!(leftovers(&mnt).is_empty(), "{:?}", leftovers(&mnt));

    let fresh = mnt.join("fresh");
    let (code, _, err) = shrink(&["convert", s(&g), "--out", s(&fresh)]);
    assert_eq!(code, 1, "{err}");
    println!("shrink exit code 1, stderr: {}", err.trim());
    assert!(
        err.contains("No space left on device") && err.contains("was not created"),
        "{err}"
    );
    assert!(!fresh.exists());
    assert!(leftovers(&mnt).is_empty(), "{:?}", leftovers(&mnt));
}

#[test]
#[cfg(target_os = "linux")]
fn temporaries_of_killed_runs_are_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let g = gguf_file(t);
    // a dead process's temporary (PIDs never reach u32::MAX - 1 on Linux: pid_max <= 2^22) ...
    let dead = t.join(format!(".out.tmp-{}", u32::MAX - 1));
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("model.safetensors"), "half written").unwrap();
    // ... a live one (this test's own process), and an old output moved aside: both stay
    let live = t.join(format!(".out.tmp-{}", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    let old = t.join(format!(".out.tmp-{}.old", u32::MAX - 1));
    std::fs::create_dir(&old).unwrap();
    let (code, _, err) = shrink(&["convert", s(&g), "--out", s(&t.join("out")), "-q"]);
    assert_eq!(code, 0, "{err}");
    assert!(!dead.exists(), "{err}");
    assert!(err.contains("left by an interrupted run"), "{err}");
    assert!(live.exists() && old.exists());
}
