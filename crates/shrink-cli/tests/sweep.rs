//! `shrink sweep`: a killed sweep resumes to the same results.jsonl as an uninterrupted one; bad
//! grids and a directory of another sweep are refused without touching what is there.
mod common;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn shrink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shrink"))
}

fn grid(dir: &Path, calib: &Path, eval: &Path, body: &str) -> PathBuf {
    let p = dir.join("grid.toml");
    std::fs::write(
        &p,
        format!(
            "seeds = [0, 1]\n[eval]\ntext = {eval:?}\nmax_tokens = 1024\n\
             [[calibration]]\nname = \"wiki\"\nfile = {calib:?}\nnsamples = 4\nseqlen = 128\n{body}"
        ),
    )
    .unwrap();
    p
}

const RECIPES: &str = r#"
[[recipe]]
name = "rtn-w4"
[[recipe.stage]]
method = "rtn"
bits = 4
group_size = 64
[[recipe]]
name = "gptq-w4"
[[recipe.stage]]
method = "gptq"
bits = 4
group_size = 64
"#;

fn sweep_args(model: &Path, grid: &Path, out: &Path) -> Vec<String> {
    [
        "sweep",
        "-q",
        "--model",
        common::s(model),
        "--grid",
        common::s(grid),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--out".into(), out.to_string_lossy().to_string()])
    .collect()
}

/// The token ids of a saved calibration set, checking its shape.
fn saved_ids(path: &Path, shape: [usize; 2]) -> Vec<i64> {
    let b = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let t = st.tensor("input_ids").unwrap();
    assert_eq!(t.shape(), shape, "{}", path.display());
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `common::fails_with` for an argument list of owned strings.
fn fails(args: Vec<String>, needles: &[&str]) -> String {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    common::fails_with(&a, needles)
}

fn next_layer(partial: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(partial.join("state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&s).ok()?["next_layer"].as_u64()
}

/// Kill -9 in the middle of the first GPTQ cell (its checkpoint past layer 5 of 30), run the
/// sweep again: it continues that cell from its checkpoint, runs the rest, and its results.jsonl
/// equals an uninterrupted sweep's byte for byte. Then the report is there, with its plots.
#[test]
fn killed_sweep_resumes_to_identical_results() {
    let (Some(model), Some(calib), Some(eval)) = (
        common::fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        common::fetched("data/calib.txt"),
        common::fetched("data/eval.txt"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let g = grid(tmp.path(), &calib, &eval, RECIPES);

    let full = tmp.path().join("full");
    let o = shrink()
        .args(sweep_args(&model, &g, &full))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("3 cells (0 finished before, 3 to run)"),
        "{err}"
    );
    let full_results = std::fs::read_to_string(full.join("results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = full_results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = lines.iter().map(|r| r["cell"].as_str().unwrap()).collect();
    assert_eq!(ids, ["rtn-w4", "gptq-w4.wiki.s0", "gptq-w4.wiki.s1"]);
    for r in &lines {
        for k in ["recipe", "bytes", "bpw", "perplexity", "kld_mean"] {
            assert!(!r[k].is_null(), "{k} missing in {r}");
        }
        // W4 g64 asym: 4 bits + (f16 scale + 4-bit zero) / 64
        assert!((r["bpw"].as_f64().unwrap() - 4.3125).abs() < 1e-9, "{r}");
    }
    // the seeds draw different calibration tokens, so GPTQ's results differ
    assert_ne!(lines[1]["perplexity"], lines[2]["perplexity"]);
    assert_eq!(lines[1]["bytes"], lines[2]["bytes"]);
    assert_eq!(lines[0]["seed"], serde_json::Value::Null);
    // GPTQ beats RTN at the same size on the same evaluation
    assert!(lines[1]["kld_mean"].as_f64() < lines[0]["kld_mean"].as_f64());
    // model files are pruned by default; each cell keeps its report and recipe
    let cell = full.join("cells/gptq-w4.wiki.s0");
    assert!(cell.join("report.json").exists() && cell.join("recipe.toml").exists());
    assert!(!cell.join("model.safetensors").exists());
    assert!(full.join("report.html").exists() && full.join("report.md").exists());

    // the same sweep, killed in its first GPTQ cell
    let cut = tmp.path().join("cut");
    let partial = cut.join("cells/.gptq-w4.wiki.s0.partial");
    let mut child = shrink()
        .args(sweep_args(&model, &g, &cut))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !next_layer(&partial).is_some_and(|n| n >= 5) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before it was killed"
        );
        assert!(t.elapsed() < Duration::from_secs(600), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = std::fs::read_to_string(cut.join("results.jsonl")).unwrap();
    assert_eq!(before.lines().count(), 1, "only the RTN cell was finished");

    let o = shrink()
        .args(sweep_args(&model, &g, &cut))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 finished before, 2 to run"), "{err}");
    assert!(err.contains("continuing from its checkpoint"), "{err}");
    let resumed = std::fs::read_to_string(cut.join("results.jsonl")).unwrap();
    assert_eq!(
        resumed, full_results,
        "a resumed sweep must record the same results"
    );
    assert!(
        !partial.exists(),
        "the checkpoint is removed once the cell is done"
    );

    // run again: nothing left to do, nothing changes
    let o = shrink()
        .args(sweep_args(&model, &g, &cut))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("0 to run"), "{err}");
    assert_eq!(
        std::fs::read_to_string(cut.join("results.jsonl")).unwrap(),
        full_results
    );
}

/// A grid with an unknown key, an empty axis or no recipe; a directory that holds another
/// sweep; a recipe changed under the same name: each refused with what is wrong, and the
/// directory's results are left as they were.
#[test]
fn bad_grids_and_other_sweeps_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tmp.path().join("calib.txt");
    let eval = tmp.path().join("eval.txt");
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(200);
    std::fs::write(&calib, &text).unwrap();
    std::fs::write(&eval, &text).unwrap();
    let model = common::hf_dir(tmp.path());
    let out = tmp.path().join("out");
    let run = |g: &Path| sweep_args(&model, g, &out);

    let g = grid(
        tmp.path(),
        &calib,
        &eval,
        &format!("{RECIPES}\ncolour = 3\n"),
    );
    fails(run(&g), &["grid.toml", "colour"]);
    let g = grid(
        tmp.path(),
        &calib,
        &eval,
        "[[recipe]]\nname = \"a\"\nflavour = 1\n",
    );
    fails(run(&g), &["grid.toml", "flavour"]);
    let g = tmp.path().join("grid.toml");
    std::fs::write(
        &g,
        format!("seeds = []\n[eval]\ntext = {eval:?}\n[[calibration]]\nname = \"w\"\nfile = {calib:?}\n{RECIPES}"),
    )
    .unwrap();
    fails(run(&g), &["grid.toml", "seeds", "empty"]);
    let g = grid(tmp.path(), &calib, &eval, "");
    fails(run(&g), &["grid.toml", "recipe"]);
    let g = grid(tmp.path(), &calib.with_extension("missing"), &eval, RECIPES);
    fails(run(&g), &["calibration 'wiki'", "calib.missing"]);
    assert!(!out.exists(), "a refused grid must not create the output");

    // a real (tiny) sweep, then another model into the same directory
    let g = grid(tmp.path(), &calib, &eval, RECIPES);
    let o = shrink().args(run(&g)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 3);
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(model.join(f), other.join(f)).unwrap();
    }
    fails(
        sweep_args(&other, &g, &out),
        &["holds another sweep's results", "another --out"],
    );
    // the same recipe name with other settings
    let changed = RECIPES.replace(
        "bits = 4\ngroup_size = 64\n[[recipe]]",
        "bits = 3\ngroup_size = 64\n[[recipe]]",
    );
    assert_ne!(changed, RECIPES);
    let g2 = grid(tmp.path(), &calib, &eval, &changed);
    fails(run(&g2), &["rtn-w4", "another recipe", "new name"]);
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl")).unwrap(),
        results,
        "a refused sweep must leave the results as they were"
    );
    // --report-only redraws from the results without running anything
    let g = grid(tmp.path(), &calib, &eval, RECIPES);
    let mut a = run(&g);
    a.push("--report-only".into());
    let o = shrink().args(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| rtn-w4 |") && md.contains("| gptq-w4 |"),
        "{md}"
    );
}

/// Calibration sources that are no file: `generated:self` (the model samples its own windows,
/// seeded) and a mixture by weight, which takes the first windows of each part's own set.
#[test]
fn generated_and_mixed_calibration_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(200),
    )
    .unwrap();
    let model = common::hf_dir(tmp.path());
    let g = tmp.path().join("grid.toml");
    std::fs::write(
        &g,
        format!(
            "seeds = [3]\n[eval]\ntext = {text:?}\n\
             [[calibration]]\nname = \"wiki\"\nfile = {text:?}\nnsamples = 4\nseqlen = 32\n\
             [[calibration]]\nname = \"self\"\nfile = \"generated:self\"\nnsamples = 4\nseqlen = 32\n\
             [[calibration]]\nname = \"half\"\nmix = {{ wiki = 1, self = 1 }}\nnsamples = 4\nseqlen = 32\n\
             [[recipe]]\nname = \"gptq\"\n[[recipe.stage]]\nmethod = \"gptq\"\nbits = 4\ngroup_size = 32\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = shrink()
        .args(sweep_args(&model, &g, &out))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let ids = |name: &str| saved_ids(&out.join(format!("calib/{name}-s3.safetensors")), [4, 32]);
    let (wiki, own, half) = (ids("wiki"), ids("self"), ids("half"));
    assert_ne!(wiki, own);
    // sampled windows differ from each other
    assert_ne!(own[..32], own[32..64]);
    // the mixture: 2 windows of each part (sorted by name: self, then wiki)
    assert_eq!(half[..64], own[..64]);
    assert_eq!(half[64..], wiki[..64]);
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let cells: Vec<String> = results
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["cell"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(cells, ["gptq.wiki.s3", "gptq.self.s3", "gptq.half.s3"]);
    // a seed gives the same generated windows
    let again = tmp.path().join("again");
    let o = shrink()
        .args(sweep_args(&model, &g, &again))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(again.join("calib/self-s3.safetensors")).unwrap(),
        std::fs::read(out.join("calib/self-s3.safetensors")).unwrap()
    );
    // an unknown generated source is refused before any work
    std::fs::write(
        &g,
        std::fs::read_to_string(&g)
            .unwrap()
            .replace("generated:self", "generated:other"),
    )
    .unwrap();
    let bad = tmp.path().join("bad");
    fails(
        sweep_args(&model, &g, &bad),
        &["calibration 'self'", "generated:other", "generated:self"],
    );
}

/// `shrink study calibration`: text, self-generated and mixed sources × seeds for each recipe,
/// with the Welch comparison of the sources in the report and on the terminal.
#[test]
fn calibration_study_compares_sources_against_the_seed_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(200),
    )
    .unwrap();
    let model = common::hf_dir(tmp.path());
    let out = tmp.path().join("study");
    let args = |seeds: &str, bits: &str| -> Vec<String> {
        [
            "study",
            "calibration",
            "-q",
            "--model",
            common::s(&model),
            "--stage",
            &format!("method=gptq,bits={bits},group_size=32"),
            "--calib",
            common::s(&text),
            "--eval",
            common::s(&text),
            "--seeds",
            seeds,
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            common::s(&out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let o = shrink().args(args("2", "4")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 6, "3 sources x 2 seeds");
    let grid = std::fs::read_to_string(out.join("grid.toml")).unwrap();
    assert!(grid.contains("generated:self") && grid.contains("mix = { text = 0.5, self = 0.5 }"));
    // each of the 3 pairs on perplexity and KLD, with a verdict
    let verdicts = err.matches("the seed noise (Welch t").count();
    assert_eq!(verdicts, 6, "{err}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Calibration sources against the seed noise"),
        "{md}"
    );
    // other settings into the same directory are refused; one seed is refused
    let a = args("2", "3");
    fails(a, &["other settings", "another --out"]);
    let a = args("1", "4");
    fails(a, &["--seeds must be at least 2"]);
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl")).unwrap(),
        results
    );
}

/// FAQ (`generated:family=MODEL`): the family model regenerates the text source's windows of
/// the same seed, keeping each window's prompt tokens and the best of its candidates; what it
/// chose and what it cost go beside the tokens. A family model with another vocabulary is
/// refused before any work.
#[test]
fn faq_regenerates_the_text_windows_and_refuses_another_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(200),
    )
    .unwrap();
    let model = common::hf_dir(tmp.path());
    // a "larger sibling": the same weights and vocabulary (the mechanism is what is tested)
    let family = tmp.path().join("family");
    std::fs::create_dir_all(&family).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(model.join(f), family.join(f)).unwrap();
    }
    let grid = |fam: &Path| -> PathBuf {
        let g = tmp.path().join("grid.toml");
        std::fs::write(
            &g,
            format!(
                "seeds = [1]\n[eval]\ntext = {text:?}\n\
                 [[calibration]]\nname = \"wiki\"\nfile = {text:?}\nnsamples = 3\nseqlen = 32\n\
                 [[calibration]]\nname = \"faq\"\nfile = \"generated:family={}\"\nfrom = \"wiki\"\n\
                 candidates = 3\nprompt_tokens = 8\nnsamples = 3\nseqlen = 32\n\
                 [[recipe]]\nname = \"gptq\"\n[[recipe.stage]]\nmethod = \"gptq\"\nbits = 4\ngroup_size = 32\n",
                fam.display()
            ),
        )
        .unwrap();
        g
    };
    let out = tmp.path().join("out");
    let o = shrink()
        .args(sweep_args(&model, &grid(&family), &out))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let ids = |name: &str| saved_ids(&out.join(format!("calib/{name}-s1.safetensors")), [3, 32]);
    let (wiki, faq) = (ids("wiki"), ids("faq"));
    for w in 0..3 {
        let r = w * 32..w * 32 + 8;
        assert_eq!(
            faq[r.clone()],
            wiki[r],
            "window {w}: the prompt is the original's"
        );
    }
    assert_ne!(faq, wiki, "the rest is regenerated");
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("calib/faq-s1.json")).unwrap())
            .unwrap();
    assert_eq!(info["generated_tokens"], 3 * 3 * 24);
    assert!(info["seconds"].as_f64().unwrap() >= 0.0);
    let nll = info["choice"]["nll"].as_array().unwrap();
    let kept = info["choice"]["kept"].as_array().unwrap();
    for (v, k) in nll.iter().zip(kept) {
        let v: Vec<f64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let k = k.as_u64().unwrap() as usize;
        assert_eq!(v.len(), 3);
        assert!(
            v.iter().all(|&x| x >= v[k]),
            "the kept candidate has the lowest NLL: {v:?} {k}"
        );
    }

    // another vocabulary
    std::fs::write(family.join("tokenizer.json"), common::tokenizer_json(100)).unwrap();
    let bad = tmp.path().join("bad");
    let a = sweep_args(&model, &grid(&family), &bad);
    fails(a, &["calibration 'faq'", "same vocabulary", "family"]);
    assert!(!bad.exists(), "refused before any work");
}
