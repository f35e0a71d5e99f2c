//! `shrink eval-tasks` end to end on the tiny Llama (a byte-level tokenizer of 128 one-byte
//! tokens, no BOS, 64 positions) and a task folder written here: every request's score equals
//! the log-likelihood computed directly, one unpadded sequence at a time, whatever the passes,
//! batches and prefix sharing; the accuracy follows from those scores; the cache resumes; bad
//! input gets clear errors.
mod common;
use common::{fails_with, hf_dir, s, shrink};
use flate2::write::GzEncoder;
use serde_json::{json, Value};
use shrink_model::tensor::log_sum_exp;
use shrink_model::ModelSource;
use std::io::Write;
use std::path::Path;

fn gz(text: &str) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// (doc_id, label, context, choices)
fn docs() -> Vec<(u64, usize, String, Vec<&'static str>)> {
    vec![
        (0, 1, "Q: sky?\nA:".into(), vec![" green", " blue", " b"]),
        // trailing space on the context: it moves to the continuation
        (
            1,
            0,
            "The cat sat on the ".into(),
            vec!["mat.", "moon.", "m"],
        ),
        // one-character continuations of one context: one forward serves all
        (2, 2, "Pick:".into(), vec![" a", " b", " c", " d"]),
        // longer than the model's 64 positions: the last 65 tokens, as lm-eval keeps them
        (3, 0, "x".repeat(70) + " so", vec![" yes", " no"]),
        (4, 1, "2+2=".into(), vec!["3", "4"]),
    ]
}

fn requests_text() -> String {
    let mut lines = Vec::new();
    for (doc, label, ctx, choices) in docs() {
        for (i, c) in choices.iter().enumerate() {
            for (d, ctx) in [(doc, ctx.as_str()), (doc + 1_000_000, "A:")] {
                lines.push(
                    json!({"request_type": "loglikelihood", "doc": {}, "idx": i, "label": label,
                           "task_name": "toy", "doc_id": d, "native_id": doc,
                           "request": {"context": ctx, "continuation": c}})
                    .to_string(),
                );
            }
        }
    }
    lines.join("\n") + "\n"
}

fn write_task(root: &Path, task: &str, variant: &str, bytes: &[u8]) {
    let d = root.join(task).join(variant);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("requests.jsonl.gz"), bytes).unwrap();
}

/// lm-eval's score of one request, computed directly: bytes are tokens here.
fn direct_logprob(model: &mut shrink_model::Model, ctx: &str, cont: &str) -> f64 {
    let kept = ctx.trim_end();
    let cont = format!("{}{cont}", &ctx[kept.len()..]);
    let whole: Vec<u32> = format!("{kept}{cont}").bytes().map(u32::from).collect();
    let n_cont = cont.len();
    let start = whole.len().saturating_sub(65);
    let input = &whole[start..whole.len() - 1];
    let t = input.len();
    let hidden = model.hidden_states(input, 1, t).unwrap();
    let logits = model.logits(&hidden, t);
    let v = logits.len() / t;
    (t - n_cont..t)
        .zip(&whole[whole.len() - n_cont..])
        .map(|(p, &tok)| {
            let row = &logits[p * v..(p + 1) * v];
            row[tok as usize] as f64 - log_sum_exp(row)
        })
        .sum()
}

fn cache_scores(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn eval_tasks_scores_match_direct_log_likelihoods() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let data = t.path().join("oe_eval_tasks");
    write_task(&data, "toy", "rc_0shot", &gz(&requests_text()));
    write_task(&data, "toy", "rc_5shot", &gz(&requests_text()));
    let cache = t.path().join("cache.jsonl");
    // small passes and batches: several of each
    let run = |extra: &[&str]| -> Value {
        let mut args = vec![
            "eval-tasks",
            "--model",
            s(&model),
            "--tasks",
            "toy,toy:rc_5shot",
            "--data",
            s(&data),
            "--json",
            "--pass-tokens",
            "60",
            "--batch-tokens",
            "24",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = shrink(&args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let v = run(&["--cache", s(&cache)]);
    let n_req: usize = docs().iter().map(|d| d.3.len()).sum();
    assert_eq!(v["requests"], 2 * n_req);
    assert_eq!(v["scored_requests"], 2 * n_req);
    assert!(v["passes"].as_u64().unwrap() > 1, "{v}");
    // rc_0shot and rc_5shot are the same requests: one forward row serves both, and the
    // one-character choices of doc 2 share their context's row
    assert!(
        v["forward_rows"].as_u64().unwrap() < n_req as u64 - 2,
        "{v}"
    );

    let mut m = ModelSource::open(&model).unwrap().load_all().unwrap();
    let lines = cache_scores(&cache);
    assert_eq!(lines.len(), 2 * n_req);
    let mut want_acc = 0;
    let mut want_pc = 0;
    for (doc, label, ctx, choices) in docs() {
        let mut sums = Vec::new();
        for (i, c) in choices.iter().enumerate() {
            let want = direct_logprob(&mut m, &ctx, c);
            for variant in ["rc_0shot", "rc_5shot"] {
                let got = lines
                    .iter()
                    .find(|l| l["doc_id"] == doc && l["idx"] == i && l["variant"] == variant)
                    .unwrap_or_else(|| panic!("doc {doc} choice {i} {variant} not cached"));
                let g = got["logprob"].as_f64().unwrap();
                assert!(
                    (g - want).abs() < 1e-3 * want.abs().max(1.0),
                    "doc {doc} choice {i}: {g} vs {want}"
                );
                assert_eq!(got["task"], "toy");
            }
            sums.push(want);
        }
        let best = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        want_acc += (best(&sums) == label) as usize;
        let chars: Vec<f64> = choices
            .iter()
            .zip(&sums)
            .map(|(c, s)| s / c.chars().count() as f64)
            .collect();
        want_pc += (best(&chars) == label) as usize;
    }
    for name in ["toy", "toy:rc_5shot"] {
        let r = &v["tasks"][name];
        assert_eq!(r["docs"], 5, "{v}");
        assert!(
            (r["acc"].as_f64().unwrap() - want_acc as f64 / 5.0).abs() < 1e-12,
            "{v}"
        );
        assert!(
            (r["acc_per_char"].as_f64().unwrap() - want_pc as f64 / 5.0).abs() < 1e-12,
            "{v}"
        );
        let p = r["acc"].as_f64().unwrap();
        assert!((r["acc_stderr"].as_f64().unwrap() - (p * (1.0 - p) / 4.0).sqrt()).abs() < 1e-12);
    }

    // resume: everything is in the cache
    let again = run(&["--cache", s(&cache)]);
    assert_eq!(again["scored_requests"], 0);
    assert_eq!(again["cached_requests"], 2 * n_req);
    assert_eq!(again["tasks"], v["tasks"]);
    // an interrupted run: half the lines and a cut one; the rest is scored again
    let text = std::fs::read_to_string(&cache).unwrap();
    let keep: Vec<&str> = text.lines().take(n_req).collect();
    std::fs::write(&cache, keep.join("\n") + "\n{\"model\": \"x").unwrap();
    let resumed = run(&["--cache", s(&cache)]);
    assert_eq!(resumed["cached_requests"], n_req);
    assert_eq!(resumed["scored_requests"], n_req);
    assert_eq!(resumed["tasks"], v["tasks"]);
    assert_eq!(cache_scores(&cache).len(), 2 * n_req);
    // --limit: the first documents only; without a cache
    let lim = run(&["--limit", "2"]);
    assert_eq!(lim["tasks"]["toy"]["docs"], 2);
    assert_eq!(lim["requests"], 12);
    // the cache belongs to one model
    fails_with(
        &[
            "eval-tasks",
            "--model",
            s(&t.path().join("hf/.")),
            "--tasks",
            "toy",
            "--data",
            s(&data),
            "--cache",
            s(&cache),
        ],
        &["cache.jsonl: line 1: a score of model"],
    );
}

#[test]
fn eval_tasks_bad_input_gets_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let data = t.path().join("oe_eval_tasks");
    let m = s(&model);
    // `eval-tasks --model M --tasks TASKS --data DATA` must fail naming each of `expect`
    let fails = |tasks: &str, expect: &[&str]| {
        fails_with(
            &[
                "eval-tasks",
                "--model",
                m,
                "--tasks",
                tasks,
                "--data",
                s(&data),
            ],
            expect,
        )
    };
    fails(
        "piqa",
        &["oe_eval_tasks: no task data", "scripts/fetch --tasks"],
    );
    write_task(&data, "toy", "rc_0shot", &gz(&requests_text()));
    write_task(&data, "piqa", "mc_5shot", &gz(&requests_text()));
    fails(
        "toy,hellaswag",
        &["unknown task 'hellaswag'", "known tasks: piqa, toy"],
    );
    fails(
        "piqa",
        &[
            "task 'piqa' has no variant 'rc_0shot'",
            "its variants: mc_5shot",
        ],
    );
    fails("toy:../piqa", &["is not a task name"]);
    // a corrupt JSON line on line 3
    let mut text: Vec<String> = requests_text().lines().map(String::from).collect();
    text[2] = text[2].replacen('{', "{,", 1);
    write_task(&data, "bad", "rc_0shot", &gz(&(text.join("\n") + "\n")));
    fails(
        "bad",
        &["bad/rc_0shot/requests.jsonl.gz: line 3: not a request line"],
    );
    // a truncated gzip stream
    let z = gz(&requests_text().repeat(20));
    write_task(&data, "cut", "rc_0shot", &z[..z.len() / 2]);
    fails("cut", &["cut/rc_0shot/requests.jsonl.gz: line ", "gzip"]);
    // not gzip
    write_task(&data, "plain", "rc_0shot", requests_text().as_bytes());
    fails(
        "plain",
        &["plain/rc_0shot/requests.jsonl.gz: line 1", "gzip"],
    );
}

/// The reference's scores (tools/reference/tasks_ref.py: every request alone, unpadded, from
/// an independent forward pass and lm-eval's own _encode_pair) against `shrink eval-tasks` on
/// the default model, when the opt-in task data (scripts/fetch --tasks) is there: the numpy
/// float64 backend's fixture (5 task variants, 8 documents each).
#[test]
fn eval_tasks_matches_the_reference_fixture() {
    matches_fixture("tasks_smollm2.json", 5e-3, 1.0);
}

/// The same against transformers' own forward pass (`--backend transformers`, float32, the
/// tokenizer transformers builds from the GGUF) on ARC-Easy and HellaSwag, 100 documents each:
/// log-likelihoods within 1e-3 and the same choice on at least 99.5% of the documents.
#[test]
fn eval_tasks_matches_transformers() {
    matches_fixture("tasks_smollm2_transformers.json", 1e-3, 0.995);
}

fn matches_fixture(name: &str, tol: f64, same_choice: f64) {
    let root = common::root();
    let data = root.join("data/oe_eval_tasks");
    if !data.is_dir() {
        eprintln!(
            "SKIPPED: {} is absent (scripts/fetch --tasks)",
            data.display()
        );
        return;
    }
    let Some(model) = common::fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/reference").join(name)).unwrap(),
    )
    .unwrap();
    let tasks: Vec<&str> = fx["tasks"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let limit = fx["tasks"][tasks[0]]["limit"].as_u64().unwrap().to_string();
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache.jsonl");
    let names = tasks.join(",");
    let (code, out, err) = shrink(&[
        "eval-tasks",
        "--model",
        s(&model),
        "--tasks",
        &names,
        "--limit",
        &limit,
        "--data",
        s(&data),
        "--json",
        "--cache",
        s(&cache),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let got = cache_scores(&cache);
    let want = fx["requests"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    let mut worst = 0f64;
    for w in want {
        let g = got
            .iter()
            .find(|g| {
                ["task", "variant", "doc_id", "idx"]
                    .iter()
                    .all(|k| g[k] == w[k])
            })
            .unwrap_or_else(|| panic!("{w} not scored"));
        assert_eq!(
            g["tokens"], w["tokens"],
            "{w}: the continuation's tokens differ"
        );
        let (a, b) = (
            g["logprob"].as_f64().unwrap(),
            w["logprob"].as_f64().unwrap(),
        );
        worst = worst.max((a - b).abs());
        assert!((a - b).abs() < tol, "{w}: shrink {a} vs reference {b}");
    }
    // the choice made per document (highest sum, and highest per character) by each side
    let choice = |rows: &[&Value], task: &str, variant: &str| -> Vec<(u64, i64)> {
        let mut best: std::collections::BTreeMap<u64, (f64, i64)> = Default::default();
        for r in rows
            .iter()
            .filter(|r| r["task"] == task && r["variant"] == variant)
        {
            let (d, i, lp) = (
                r["doc_id"].as_u64().unwrap(),
                r["idx"].as_i64().unwrap(),
                r["logprob"].as_f64().unwrap(),
            );
            let e = best.entry(d).or_insert((f64::NEG_INFINITY, -1));
            if lp > e.0 {
                *e = (lp, i);
            }
        }
        best.into_iter().map(|(d, (_, i))| (d, i)).collect()
    };
    let (g, w): (Vec<&Value>, Vec<&Value>) = (got.iter().collect(), want.iter().collect());
    let (mut same, mut docs) = (0usize, 0usize);
    for t in &tasks {
        let spec = &fx["tasks"][*t];
        let (task, variant) = (
            spec["task"].as_str().unwrap(),
            spec["variant"].as_str().unwrap(),
        );
        let (a, b) = (choice(&g, task, variant), choice(&w, task, variant));
        assert_eq!(a.len(), b.len());
        same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        docs += a.len();
    }
    eprintln!(
        "{name}: largest |logprob - reference| over {} requests: {worst:.2e}; same choice on {same} of {docs} documents",
        want.len()
    );
    assert!(same as f64 >= same_choice * docs as f64, "{same} of {docs}");
    if same_choice >= 1.0 {
        for name in &tasks {
            for k in ["acc", "acc_per_char", "docs"] {
                assert_eq!(v["tasks"][name][k], fx["metrics"][name][k], "{name} {k}");
            }
        }
    }
}

/// `compress --eval-tasks`: the report carries both models' accuracies, equal to what
/// `shrink eval-tasks` gives for the original and for the written model; `--reference` replaces
/// the original; bad settings are refused before any work.
#[test]
fn compress_eval_tasks_reports_both_models() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let data = t.path().join("oe_eval_tasks");
    write_task(&data, "toy", "rc_0shot", &gz(&requests_text()));
    let tasks_of = |m: &Path| -> Value {
        let (code, out, err) = shrink(&[
            "eval-tasks",
            "--model",
            s(m),
            "--tasks",
            "toy",
            "--data",
            s(&data),
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(out.trim()).unwrap()["tasks"].clone()
    };
    let compress = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "compress",
            "-q",
            "--model",
            s(&model),
            "--method",
            "rtn",
            "--bits",
            "3",
            "--out",
            s(out),
            "--tasks-data",
            s(&data),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let out = t.path().join("rtn3");
    let a = compress(&out, &["--eval-tasks", "toy"]);
    let (code, _, err) = shrink(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("toy: acc"), "the accuracies are shown: {err}");
    let rep = common::report(&out);
    let ev = &rep["eval"]["tasks"];
    assert_eq!(ev["original"]["tasks"], tasks_of(&model));
    assert_eq!(ev["compressed"]["tasks"], tasks_of(&out));
    assert_eq!(ev["original"]["tasks"]["toy"]["docs"], 5);
    assert!(
        rep["eval"]["original"].is_null(),
        "no --eval text: no perplexity"
    );

    // --reference: the compressed model is compared with it (here: the 3-bit output)
    let out2 = t.path().join("rtn8");
    let mut a = compress(&out2, &["--eval-tasks", "toy", "--reference", s(&out)]);
    a[7] = "8".into();
    let (code, _, err) = shrink(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let rep = common::report(&out2);
    assert_eq!(rep["eval"]["tasks"]["original"]["tasks"], tasks_of(&out));
    assert_eq!(rep["eval"]["reference"], s(&out));

    // --eval-tasks-cache: the original is scored once over several runs
    let cache = t.path().join("orig.jsonl");
    for (k, cached) in [(0, false), (1, true)] {
        let o = t.path().join(format!("cached{k}"));
        let a = compress(
            &o,
            &["--eval-tasks", "toy", "--eval-tasks-cache", s(&cache)],
        );
        let (code, _, err) = shrink(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{err}");
        let orig = &common::report(&o)["eval"]["tasks"]["original"];
        assert_eq!(orig["tasks"], tasks_of(&model));
        let n = orig["requests"].as_u64().unwrap();
        assert_eq!(
            orig["cached_requests"].as_u64().unwrap(),
            if cached { n } else { 0 }
        );
    }

    let bad = t.path().join("bad");
    for (extra, needles) in [
        (
            vec!["--eval-tasks", "nosuchtask"],
            vec!["--eval-tasks", "nosuchtask", "toy"],
        ),
        (vec!["--eval-tasks-limit", "3"], vec!["--eval-tasks"]),
        (
            vec!["--eval-tasks-cache", s(&cache)],
            vec!["--eval-tasks-cache", "--eval-tasks TASKS"],
        ),
        (vec!["--reference", s(&out)], vec!["--reference", "--eval"]),
    ] {
        let a = compress(&bad, &extra);
        fails_with(&a.iter().map(String::as_str).collect::<Vec<_>>(), &needles);
        assert!(!bad.exists());
    }
}
