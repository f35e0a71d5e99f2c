//! Layer pruning (`compress --drop-layers N --layer-score ...`): the pruned model computes what
//! the original computes with those layers skipped, the scores choose the layers they should on
//! constructed models, the recipe reproduces the drop, the exports read back, and bad input is
//! refused before any work.
mod common;
use common::*;
use shrink_model::ModelSource;
use std::path::{Path, PathBuf};

fn ok(args: &[&str]) -> String {
    let (code, _, err) = shrink(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The tiny Gemma 3 fixture (4 layers: sliding, sliding, full, sliding; window 8) with a
/// tokenizer.
fn gemma_dir(t: &Path) -> PathBuf {
    let d = t.join("gemma3");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny("gemma3").join(f), d.join(f)).unwrap();
    }
    std::fs::write(d.join("tokenizer.json"), tokenizer_json(128)).unwrap();
    d
}

/// Logits of the original model at `orig` run with the layers `skip` left out (each kept layer
/// keeps its own index, so its attention type comes from the original config).
fn reference(orig: &Path, skip: &[usize], ids: &[u32]) -> Vec<f32> {
    let mut m = ModelSource::open(orig).unwrap().load_all().unwrap();
    m.layers.retain(|l| !skip.contains(&l.index));
    model_logits(&mut m, ids)
}

fn dropped(out: &Path) -> Vec<usize> {
    serde_json::from_value(report(out)["layer_drop"]["dropped"].clone()).unwrap()
}

#[test]
fn pruned_model_equals_the_original_skipping_those_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = gemma_dir(t);
    let x = token_ids(40); // longer than the sliding window of 8: local and global layers differ
                           // drop layer 1 (sliding) by a recipe: the full-attention layer 2 becomes layer 1
    let recipe = t.join("r.toml");
    std::fs::write(&recipe, "drop_layers = [1]\n").unwrap();
    let out = t.join("drop1");
    ok(&[
        "compress",
        "-q",
        "--model",
        s(&model),
        "--recipe",
        s(&recipe),
        "--out",
        s(&out),
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 3);
    assert_eq!(
        cfg["layer_types"],
        serde_json::json!(["sliding_attention", "full_attention", "sliding_attention"])
    );
    let src = ModelSource::open(&out).unwrap();
    assert_eq!(src.config.num_layers, 3);
    assert!(!src
        .tensors
        .contains("model.layers.3.self_attn.q_proj.weight"));
    let got = model_logits(&mut src.load_all().unwrap(), &x);
    let want = reference(&model, &[1], &x);
    assert_eq!(
        got, want,
        "logits differ from the original run without layer 1"
    );
    // ... and they are not the logits of a wrong drop (the test can fail)
    assert_ne!(got, reference(&model, &[2], &x));
    assert_ne!(got, reference(&model, &[], &x));

    // --layer-score last drops layer 2 (the one before the final layer)
    let out = t.join("last1");
    ok(&[
        "compress",
        "-q",
        "--model",
        s(&model),
        "--drop-layers",
        "1",
        "--layer-score",
        "last",
        "--out",
        s(&out),
    ]);
    assert_eq!(dropped(&out), vec![2]);
    let got = model_logits(
        &mut ModelSource::open(&out).unwrap().load_all().unwrap(),
        &x,
    );
    assert_eq!(got, reference(&model, &[2], &x));
}

#[test]
fn moe_dense_layers_follow_the_kept_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Qwen3-MoE fixture: 3 layers, layer 1 has a dense MLP (mlp_only_layers = [1])
    let model = t.join("moe");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny("qwen3_moe").join(f), model.join(f)).unwrap();
    }
    std::fs::write(model.join("tokenizer.json"), tokenizer_json(128)).unwrap();
    let recipe = t.join("r.toml");
    std::fs::write(&recipe, "drop_layers = [0]\n").unwrap();
    let out = t.join("o");
    ok(&[
        "compress",
        "-q",
        "--model",
        s(&model),
        "--recipe",
        s(&recipe),
        "--out",
        s(&out),
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(cfg["mlp_only_layers"], serde_json::json!([0]));
    let x = token_ids(20);
    let got = model_logits(
        &mut ModelSource::open(&out).unwrap().load_all().unwrap(),
        &x,
    );
    assert_eq!(got, reference(&model, &[0], &x));
}

#[test]
fn scores_choose_the_layers_that_do_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = llama6(t, "l6", &[1, 2]);
    let calib = calib_text(t);
    let run = |score: &str, n: &str, name: &str, extra: &[&str]| {
        let out = t.join(name);
        let mut a = vec![
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
            "--drop-layers",
            n,
            "--layer-score",
            score,
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        ok(&a);
        out
    };
    let ang = run("angular", "2", "ang", &[]);
    assert_eq!(dropped(&ang), vec![1, 2]);
    let r = report(&ang);
    let a: Vec<f64> = serde_json::from_value(r["layer_drop"]["scores"]["angular"].clone()).unwrap();
    assert_eq!(a.len(), 5); // blocks of 2 starting at 0..=4
    assert!(a[1] < 1e-3, "{a:?}");
    assert!(
        a.iter().enumerate().all(|(l, v)| l == 1 || *v > 1e-2),
        "{a:?}"
    );
    let bi = run("bi", "2", "bi", &[]);
    assert_eq!(dropped(&bi), vec![1, 2]);
    let b: Vec<f64> =
        serde_json::from_value(report(&bi)["layer_drop"]["scores"]["bi"].clone()).unwrap();
    assert!(
        b[1] < 1e-6 && b[2] < 1e-6 && b[0] > 1e-3 && b[3] > 1e-3,
        "{b:?}"
    );
    // last: layers 3 and 4 (the final layer 5 is kept); needs no calibration
    let out = t.join("last");
    ok(&[
        "compress",
        "-q",
        "--model",
        s(&model),
        "--drop-layers",
        "2",
        "--layer-score",
        "last",
        "--out",
        s(&out),
    ]);
    assert_eq!(dropped(&out), vec![3, 4]);
    // random: seeded
    let r1 = run("random", "3", "r1", &["--layer-seed", "5"]);
    let r2 = run("random", "3", "r2", &["--layer-seed", "5"]);
    assert_eq!(dropped(&r1), dropped(&r2));
    assert_eq!(dropped(&r1).len(), 3);
    // the identity layers' removal changes nothing
    let x = token_ids(24);
    let got = model_logits(
        &mut ModelSource::open(&ang).unwrap().load_all().unwrap(),
        &x,
    );
    let full = reference(&model, &[], &x);
    let err = got
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err < 1e-4,
        "dropping identity layers changed the logits by {err}"
    );
}

#[test]
fn drop_with_a_method_calibrates_the_pruned_model_and_the_recipe_reproduces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = llama6(t, "l6", &[]);
    let calib = calib_text(t);
    let out = t.join("gptq");
    ok(&[
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
        "--drop-layers",
        "2",
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "32",
        "--out",
        s(&out),
    ]);
    let r = report(&out);
    let gone = dropped(&out);
    assert_eq!(gone.len(), 2);
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["index"], i);
        for lin in l["linears"].as_array().unwrap() {
            assert!(lin["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("model.layers.{i}.")));
        }
    }
    let q =
        shrink_model::source::SafetensorsSource::open(&out.join("quantized.safetensors")).unwrap();
    assert!(q.names().any(|n| n.starts_with("model.layers.3.")));
    assert!(!q.names().any(|n| n.starts_with("model.layers.4.")));
    assert_eq!(ModelSource::open(&out).unwrap().config.num_layers, 4);
    // recipe.toml holds the list, in the original numbering; it drops the same layers again
    // (no scoring) and gives the same output
    let text = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    assert!(text.contains("drop_layers"), "{text}");
    let again = t.join("again");
    ok(&[
        "compress",
        "-q",
        "--model",
        s(&model),
        "--recipe",
        s(&out.join("recipe.toml")),
        "--out",
        s(&again),
    ]);
    assert_eq!(dropped(&again), gone);
    assert_eq!(report(&again)["layer_drop"]["score"], "recipe");
    for f in ["model.safetensors", "quantized.safetensors", "config.json"] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(),
            "{f} differs when the recipe is rerun"
        );
    }
    // every export reads back with the pruned layer count
    for (fmt, dst, extra) in [
        ("compressed-tensors", t.join("ct"), &[][..]),
        ("gptq", t.join("gptq_out"), &[][..]),
        (
            "gguf",
            t.join("m.gguf"),
            &["--tokenizer-pre", "smollm", "--token-embedding-type", "F32"][..],
        ),
    ] {
        let mut a = vec![
            "export",
            "-q",
            "--model",
            s(&out),
            "--format",
            fmt,
            "--out",
            s(&dst),
        ];
        a.extend_from_slice(extra);
        ok(&a);
        let m = ModelSource::open(&dst).unwrap();
        assert_eq!(m.config.num_layers, 4, "{fmt}");
        let x = token_ids(16);
        let a = model_logits(&mut m.load_all().unwrap(), &x);
        let b = model_logits(
            &mut ModelSource::open(&out).unwrap().load_all().unwrap(),
            &x,
        );
        let err = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        // the codes are carried exactly; GGUF's f16 scales round a little
        assert!(err < 0.05, "{fmt}: logits differ by {err}");
    }
}

#[test]
fn recipe_patterns_use_the_original_layer_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = llama6(t, "l6", &[]);
    let calib = calib_text(t);
    // drop layer 1 and leave original layer 4 (new layer 3) as it is
    let recipe = t.join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "drop_layers = [1]\nignore = ['^model\\.layers\\.4\\.']\n\n[calibration]\nfile = {:?}\n\
             nsamples = 4\nseqlen = 32\n\n[[stage]]\nmethod = \"rtn\"\nbits = 8\n",
            s(&calib)
        ),
    )
    .unwrap();
    let out = t.join("o");
    ok(&[
        "compress",
        "-q",
        "--model",
        s(&model),
        "--recipe",
        s(&recipe),
        "--out",
        s(&out),
    ]);
    for l in report(&out)["layers"].as_array().unwrap() {
        for lin in l["linears"].as_array().unwrap() {
            let kept = lin["method"] == "none";
            assert_eq!(kept, l["index"] == 3, "{lin}");
        }
    }
    // a pattern that only matches a dropped layer is refused
    std::fs::write(
        &recipe,
        format!(
            "drop_layers = [1]\nignore = ['^model\\.layers\\.1\\.']\n\n[calibration]\nfile = {:?}\n\
             nsamples = 4\nseqlen = 32\n\n[[stage]]\nmethod = \"rtn\"\nbits = 8\n",
            s(&calib)
        ),
    )
    .unwrap();
    let out2 = t.join("o2");
    fails_with(
        &[
            "compress",
            "-q",
            "--model",
            s(&model),
            "--recipe",
            s(&recipe),
            "--out",
            s(&out2),
        ],
        &["original layer numbers", "matches"],
    );
    assert!(!out2.exists());
}

#[test]
fn bad_layer_drop_input_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = gemma_dir(t); // 4 layers
    let out = t.join("o");
    let missing = t.join("no-such-calib.txt");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "compress".to_string(),
            "-q".into(),
            "--model".into(),
            s(&model).into(),
            "--calib".into(),
            s(&missing).into(),
            "--out".into(),
            s(&out).into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let check = |extra: &[&str], needles: &[&str]| {
        let a = base(extra);
        let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
        // the calibration file does not exist: the drop error must come first
        let err = fails_with(&a, needles);
        assert!(!err.contains("no-such-calib"), "{err}");
        assert!(!out.exists());
    };
    check(
        &["--drop-layers", "4"],
        &["--drop-layers 4", "has 4", "at most 3"],
    );
    check(
        &["--drop-layers", "9", "--method", "rtn", "--bits", "8"],
        &["--drop-layers 9", "has 4"],
    );
    check(&["--drop-layers", "0"], &["--drop-layers 0"]);
    check(&["--layer-score", "angular"], &["--drop-layers N"]);
    check(
        &["--drop-layers", "1", "--layer-score", "cosine"],
        &["unknown --layer-score 'cosine'"],
    );
    check(
        &["--drop-layers", "1", "--layer-seed", "3"],
        &["--layer-seed", "random"],
    );
    check(
        &["--drop-layers", "1", "--bits", "4"],
        &["bits", "no method"],
    );
    let recipe = t.join("r.toml");
    for (list, needle) in [
        ("[7]", "layer 7 does not exist"),
        ("[0, 0]", "twice"),
        ("[0, 1, 2, 3]", "cannot drop 4"),
    ] {
        std::fs::write(&recipe, format!("drop_layers = {list}\n")).unwrap();
        check(&["--recipe", s(&recipe)], &["r.toml: drop_layers", needle]);
    }
}

#[test]
fn a_pruned_gguf_model_exports_to_gguf_with_the_original_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let hf = llama6(t, "l6", &[]);
    let gguf = t.join("l6.gguf");
    gguf_of(&hf, &gguf);
    let out = t.join("pruned");
    ok(&[
        "compress",
        "-q",
        "--model",
        s(&gguf),
        "--drop-layers",
        "2",
        "--layer-score",
        "last",
        "--out",
        s(&out),
    ]);
    // the metadata (tokenizer) comes from the GGUF the model came from, whose block_count is 6
    let dst = t.join("pruned.gguf");
    ok(&[
        "export",
        "-q",
        "--model",
        s(&out),
        "--format",
        "gguf",
        "--type",
        "F32",
        "--token-embedding-type",
        "F32",
        "--out",
        s(&dst),
    ]);
    let f = shrink_model::gguf::GgufFile::open(&dst).unwrap();
    assert_eq!(f.get("llama.block_count").unwrap().as_u64(), Some(4));
    let x = token_ids(16);
    let a = model_logits(
        &mut ModelSource::open(&dst).unwrap().load_all().unwrap(),
        &x,
    );
    let b = reference(&gguf, &[3, 4], &x);
    let err = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "logits differ by {err}");
}
