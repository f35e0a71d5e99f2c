//! `--allocate agent` end to end: the run log, rollbacks, determinism, the recipe that
//! reproduces the allocation, external proposers that answer well, badly or not at all, and the
//! perplexity guard.
mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn args(model: &Path, calib: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "compress",
        "--model",
        s(model),
        "--calib",
        s(calib),
        "--nsamples",
        "8",
        "--seqlen",
        "32",
        "--out",
        s(out),
        "-q",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

fn run_ok(v: &[String]) -> String {
    let (code, _, err) = shrink(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{v:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn steps(rep: &Value) -> Vec<Value> {
    rep["allocation"]["steps"].as_array().unwrap().clone()
}

/// The log is consistent: a step is kept exactly when its rise is within the threshold, kept
/// steps chain their perplexities, and the allocation lands on the target.
fn check_log(rep: &Value, threshold: f64, target: f64) {
    let al = &rep["allocation"];
    assert_eq!(al["strategy"], "agent");
    let st = steps(rep);
    assert!(!st.is_empty());
    let mut ckpt = al["start_perplexity"].as_f64().unwrap();
    for x in &st {
        let (p, c) = (
            x["perplexity"].as_f64().unwrap(),
            x["checkpoint_perplexity"].as_f64().unwrap(),
        );
        assert!((c - ckpt).abs() < 1e-9 * ckpt, "{x}");
        let rise = p / c - 1.0;
        assert!((rise - x["rise"].as_f64().unwrap()).abs() < 1e-9);
        assert_eq!(x["accepted"].as_bool().unwrap(), rise <= threshold, "{x}");
        if x["accepted"].as_bool().unwrap() {
            ckpt = p;
        }
    }
    assert!((al["final_perplexity"].as_f64().unwrap() - ckpt).abs() < 1e-9 * ckpt);
    let reached = al["sparsity"].as_f64().unwrap();
    assert!((reached - target).abs() < 1e-6, "{reached}");
    // each layer's linears pruned at the sparsity the loop gave it
    let per: Vec<f64> = al["sparsities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    for l in rep["layers"].as_array().unwrap() {
        let i = l["index"].as_u64().unwrap() as usize;
        let f = l["sparsity"].as_f64().unwrap();
        assert!((f - per[i]).abs() < 0.02, "layer {i}: {f} vs {}", per[i]);
    }
    let total = rep["totals"]["sparsity"].as_f64().unwrap();
    assert!((total - target).abs() < 0.01, "{total}");
}

#[test]
fn builtin_agent_is_deterministic_and_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let extra = [
        "--method",
        "wanda",
        "--sparsity",
        "0.5",
        "--allocate",
        "agent",
        "--agent-start",
        "0.3",
        "--agent-step",
        "0.1",
        "--rollback-threshold",
        "0.05",
        "--holdin-samples",
        "4",
    ];
    let (a, b) = (t.join("a"), t.join("b"));
    run_ok(&args(&model, &calib, &a, &extra));
    run_ok(&args(&model, &calib, &b, &extra));
    let rep = report(&a);
    check_log(&rep, 0.05, 0.5);
    assert!(steps(&rep).iter().all(|x| x["proposer"] == "builtin"));
    assert_eq!(rep["allocation"]["holdin_windows"], 4);
    // the same seed, the same allocation and model
    for f in ["recipe.toml", "model.safetensors"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    // the recipe holds the allocation: the same model without --allocate
    let c = t.join("c");
    run_ok(&[
        "compress".into(),
        "--model".into(),
        s(&model).into(),
        "--recipe".into(),
        s(&a.join("recipe.toml")).into(),
        "--out".into(),
        s(&c).into(),
        "-q".into(),
    ]);
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(c.join("model.safetensors")).unwrap()
    );
}

fn agent_run(t: &Path, name: &str, cmd: &str, extra: &[&str]) -> (Value, String, PathBuf) {
    let model = t.join("hf");
    let calib = t.join("calib.txt");
    let out = t.join(name);
    let mut e = vec![
        "--method",
        "wanda",
        "--sparsity",
        "0.5",
        "--allocate",
        "agent",
        "--agent-start",
        "0.3",
        "--agent-step",
        "0.05",
        "--rollback-threshold",
        "100",
        "--agent-cmd",
        cmd,
    ];
    e.extend_from_slice(extra);
    let err = run_ok(&args(&model, &calib, &out, &e));
    (report(&out), err, out)
}

#[test]
fn external_agents_good_bad_and_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    hf_dir(t);
    calib_text(t);
    // A scripted agent: always layer 1 by 0.1; once layer 1 is full (0.7) its answer is an
    // impossible step and the built-in policy takes over.
    let (rep, err, _) = agent_run(
        t,
        "good",
        r#"while read l; do echo '{"prune":[{"layer":1,"amount":0.1}],"note":"layer 1"}'; done"#,
        &[],
    );
    check_log(&rep, 100.0, 0.5);
    let st = steps(&rep);
    assert_eq!(st[0]["proposer"], "agent");
    assert_eq!(st[0]["note"], "layer 1");
    for x in &st {
        if x["proposer"] == "agent" {
            assert_eq!(x["prune"][0]["layer"], 1);
        } else {
            assert!(
                x["agent_error"]
                    .as_str()
                    .unwrap()
                    .contains("impossible step"),
                "{x}"
            );
        }
    }
    let per = &rep["allocation"]["sparsities"];
    assert!(per[1][1].as_f64().unwrap() > per[0][1].as_f64().unwrap());
    assert!(!err.contains("takes over for the rest"), "{err}");

    // Not JSON: logged, the built-in policy steps; three in a row and the agent is dropped.
    let (rep, err, _) = agent_run(t, "nonsense", "while read l; do echo nonsense; done", &[]);
    check_log(&rep, 100.0, 0.5);
    let st = steps(&rep);
    assert!(st.iter().all(|x| x["proposer"] == "builtin"));
    assert!(st[0]["agent_error"]
        .as_str()
        .unwrap()
        .contains("not a proposal"));
    assert!(err.contains("not a proposal"), "{err}");

    // Silent: one timeout and the built-in policy finishes; the run does not hang.
    let (rep, err, _) = agent_run(t, "silent", "sleep 60", &["--agent-timeout", "0.5"]);
    check_log(&rep, 100.0, 0.5);
    let st = steps(&rep);
    assert!(st[0]["agent_error"]
        .as_str()
        .unwrap()
        .contains("no answer within 0.5 s"));
    assert!(st[1..].iter().all(|x| x["agent_error"].is_null()));
    assert!(err.contains("takes over for the rest of the run"), "{err}");
    assert_eq!(rep["allocation"]["agent_failures"], 1);

    // An agent that reads the request: prunes the layer of lowest z-score by the step size.
    let script = t.join("agent.py");
    std::fs::write(
        &script,
        "import json, sys\n\
         for line in sys.stdin:\n    \
             r = json.loads(line)\n    \
             if r.get('done'): break\n    \
             ok = [l for l in r['layers'] if l['sparsity'] + r['step_size'] <= r['max_layer_sparsity']]\n    \
             l = min(ok, key=lambda l: l['score_p10_z'])\n    \
             print(json.dumps({'prune': [{'layer': l['layer'], 'amount': r['step_size']}]}), flush=True)\n",
    )
    .unwrap();
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("import json")
        .status()
        .is_ok_and(|s| s.success())
    {
        let (rep, _, _) = agent_run(t, "py", &format!("python3 {}", s(&script)), &[]);
        check_log(&rep, 100.0, 0.5);
        assert!(steps(&rep).iter().all(|x| x["proposer"] == "agent"));
    }
}

#[test]
fn agent_settings_are_checked_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let o = t.join("bad");
    for (extra, needle) in [
        (
            vec![
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--agent-cmd",
                "cat",
            ],
            "--agent-cmd needs --allocate agent",
        ),
        (
            vec!["--method", "gptq", "--bits", "4", "--allocate", "agent"],
            "no stage with an unstructured sparsity",
        ),
        (
            vec![
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--allocate",
                "agent",
                "--agent-start",
                "0.6",
            ],
            "--agent-start must be in [0, --sparsity 0.5]",
        ),
        (
            vec![
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--allocate",
                "agent",
                "--rollback-threshold=-1",
            ],
            "--rollback-threshold must be a fraction >= 0",
        ),
        (
            vec![
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--allocate",
                "agent",
                "--agent-timeout",
                "0",
            ],
            "--agent-timeout must be a positive",
        ),
        (
            vec![
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--max-ppl-rise=-0.1",
            ],
            "--max-ppl-rise must be a fraction >= 0",
        ),
    ] {
        let a = args(&model, &calib, &o, &extra);
        fails_with(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[needle]);
        assert!(!o.exists());
    }
}

/// On the default model: steps of 0.2 on one layer at a time, rolled back above a 5% rise.
/// The log must show rollbacks and still reach the target; the guard refuses a model whose
/// held-in perplexity rose too much and writes nothing.
#[test]
fn rollbacks_and_the_guard_on_the_default_model() {
    let Some(model) = fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let calib = root().join("data/calib.txt");
    let out = t.join("agent");
    let base = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "compress",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--nsamples",
            "4",
            "--seqlen",
            "128",
            "--layers",
            "4",
            "--method",
            "wanda",
            "--out",
            s(out),
            "-q",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    run_ok(&base(
        &out,
        &[
            "--sparsity",
            "0.5",
            "--allocate",
            "agent",
            "--agent-start",
            "0.3",
            "--agent-step",
            "0.2",
            "--agent-layers",
            "1",
            "--rollback-threshold",
            "0.05",
            "--holdin-samples",
            "4",
        ],
    ));
    let rep = report(&out);
    check_log(&rep, 0.05, 0.5);
    let rolled = steps(&rep)
        .iter()
        .filter(|x| x["accepted"] == false)
        .count();
    assert!(rolled >= 1, "no rollback: {:?}", rep["allocation"]["steps"]);
    assert_eq!(rep["allocation"]["rollbacks"], rolled);

    // The guard: 80% Wanda pruning of 4 layers raises held-in perplexity by far more than 1%.
    let g = t.join("guarded");
    let a = base(&g, &["--sparsity", "0.8", "--max-ppl-rise", "0.01"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails_with(
        &a,
        &[
            "held-in perplexity rose from",
            "--max-ppl-rise 0.01",
            "not written",
        ],
    );
    assert!(!g.exists());
    // A loose guard passes and is reported.
    let a = base(
        &g,
        &["--sparsity", "0.8", "--max-ppl-rise", "1000", "--resume"],
    );
    run_ok(&a);
    let rep = report(&g);
    assert!(rep["guard"]["rise"].as_f64().unwrap() > 0.01);
}
