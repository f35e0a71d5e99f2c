//! Layer merging (`compress --merge-layers N`, LaCo): the merged weights are the RDSC formula on
//! every tensor of the block, exactly N layers go, the similarity loop keeps the merges it should
//! on constructed models, the recipe replays the merges, the exports read back, and bad input is
//! refused before any work.
mod common;
use common::*;
use shrink_model::{ModelSource, TensorSource};
use std::path::Path;

fn ok(args: &[&str]) -> String {
    let (code, _, err) = shrink(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max)
}

fn merges(out: &Path) -> Vec<Vec<usize>> {
    serde_json::from_value(report(out)["layer_merge"]["merges"].clone()).unwrap()
}

/// The tensors of decoder layer `i` (names without the `model.layers.{i}.` prefix).
fn layer_names(src: &ModelSource, i: usize) -> Vec<String> {
    let pre = format!("model.layers.{i}.");
    shrink_model::arch::tensor_table(&src.config)
        .into_iter()
        .filter_map(|e| e.hf.strip_prefix(&pre).map(String::from))
        .collect()
}

fn tensor(src: &dyn TensorSource, layer: usize, tail: &str) -> Vec<f32> {
    src.load(&format!("model.layers.{layer}.{tail}"))
        .unwrap()
        .data
}

/// Checks that layer `new` of `out` is `θ_base + Σ_k (θ_{base+k} − θ_base)` over the original
/// layers `group = [base, base+1, ..]` of `orig`, for every tensor of the block (the formula
/// computed here in f64, in the paper's form); returns how many tensors were compared.
fn assert_rdsc(orig: &ModelSource, out: &ModelSource, new: usize, group: &[usize]) -> usize {
    let names = layer_names(orig, group[0]);
    assert!(names.iter().any(|n| n.contains("norm")), "{names:?}");
    for tail in &names {
        let base: Vec<f64> = tensor(orig.tensors.as_ref(), group[0], tail)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mut want = base.clone();
        for &k in &group[1..] {
            let t = tensor(orig.tensors.as_ref(), k, tail);
            for ((w, b), v) in want.iter_mut().zip(&base).zip(&t) {
                *w += *v as f64 - b;
            }
        }
        let got = tensor(out.tensors.as_ref(), new, tail);
        assert_eq!(got.len(), want.len(), "{tail}");
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0f64, f64::max);
        assert!(
            err < 1e-6,
            "layer {new} ({tail}): differs from the RDSC formula over {group:?} by {err}"
        );
        // ... and it is not one of the merged layers as it was (the test can fail)
        for &k in group {
            assert_ne!(
                got,
                tensor(orig.tensors.as_ref(), k, tail),
                "{tail} = layer {k}"
            );
        }
    }
    names.len()
}

fn assert_same_layer(orig: &ModelSource, out: &ModelSource, new: usize, old: usize) {
    for tail in layer_names(orig, old) {
        assert_eq!(
            tensor(out.tensors.as_ref(), new, &tail),
            tensor(orig.tensors.as_ref(), old, &tail),
            "layer {new} should be the original layer {old} ({tail})"
        );
    }
}

#[test]
fn merged_weights_equal_the_rdsc_formula() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = llama6(t, "l6", &[]);
    let calib = calib_text(t);
    let gguf = t.join("l6.gguf");
    gguf_of(&model, &gguf);
    // T = -1 keeps the first candidate: base H - C = 5 - 3 = 2, layers 2, 3, 4 into 2; from the
    // Hugging Face directory and from the GGUF file (q/k permuted there)
    for (name, input) in [("hf", &model), ("gguf", &gguf)] {
        let out = t.join(format!("m-{name}"));
        ok(&[
            "compress",
            "-q",
            "--model",
            s(input),
            "--calib",
            s(&calib),
            "--nsamples",
            "2",
            "--seqlen",
            "16",
            "--merge-layers",
            "2",
            "--merge-size",
            "3",
            "--merge-threshold",
            "-1",
            "--out",
            s(&out),
        ]);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["num_hidden_layers"], 4, "{name}");
        assert_eq!(merges(&out), vec![vec![2, 3, 4]], "{name}");
        let r = report(&out);
        let lm = &r["layer_merge"];
        assert_eq!(lm["layers_before"], 6);
        assert_eq!(lm["layers_after"], 4);
        assert_eq!(lm["layers"][2]["from"], serde_json::json!([2, 3, 4]));
        assert_eq!(
            lm["layers"][2]["coefficients"],
            serde_json::json!([-1.0, 1.0, 1.0])
        );
        assert_eq!(lm["layers"][3]["from"], serde_json::json!([5]));
        let steps = lm["search"]["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(steps[0]["accepted"], true);
        let orig = ModelSource::open(&model).unwrap();
        let got = ModelSource::open(&out).unwrap();
        assert_eq!(got.config.num_layers, 4);
        assert!(!got.tensors.contains("model.layers.4.mlp.up_proj.weight"));
        // 2 norms and 7 linears
        assert_eq!(assert_rdsc(&orig, &got, 2, &[2, 3, 4]), 9);
        for (new, old) in [(0, 0), (1, 1), (3, 5)] {
            assert_same_layer(&orig, &got, new, old);
        }
        let text = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
        assert!(text.contains("merge_layers"), "{text}");
    }
}

#[test]
fn the_loop_keeps_merges_by_similarity_and_stops_at_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let calib = calib_text(t);
    let run = |model: &Path, name: &str, extra: &[&str]| {
        let out = t.join(name);
        let mut a = vec![
            "compress",
            "-q",
            "--model",
            s(model),
            "--calib",
            s(&calib),
            "--nsamples",
            "4",
            "--seqlen",
            "24",
            "--merge-size",
            "2",
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        ok(&a);
        out
    };
    // layers 1 and 2 do nothing. With C = 2 a merge of l and l+1 is θ_{l+1} at l, i.e. layer l
    // removed: similarity 1 exactly where l is an identity layer. From the top: base 3 (layer 3
    // removed: < T), base 2 (identity: kept), then l = 2 - I = 1: the identity layer 1 goes too.
    let model = llama6(t, "id12", &[1, 2]);
    let out = run(
        &model,
        "id12-2",
        &["--merge-layers", "2", "--merge-threshold", "0.9999"],
    );
    assert_eq!(merges(&out), vec![vec![2, 3], vec![1, 2]]);
    let r = report(&out);
    let steps = r["layer_merge"]["search"]["steps"].as_array().unwrap();
    let acc: Vec<bool> = steps
        .iter()
        .map(|s| s["accepted"].as_bool().unwrap())
        .collect();
    assert_eq!(acc, vec![false, true, true], "{steps:?}");
    assert!(steps[1]["similarity"].as_f64().unwrap() > 0.99999);
    assert!(steps[0]["similarity"].as_f64().unwrap() < 0.9999);
    // the merged model is the original without its identity layers: same logits
    let x = token_ids(24);
    let got = model_logits(
        &mut ModelSource::open(&out).unwrap().load_all().unwrap(),
        &x,
    );
    let want = model_logits(
        &mut ModelSource::open(&model).unwrap().load_all().unwrap(),
        &x,
    );
    assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
    // one layer only: the loop stops after the first kept merge
    let one = run(
        &model,
        "id12-1",
        &["--merge-layers", "1", "--merge-threshold", "0.9999"],
    );
    assert_eq!(merges(&one), vec![vec![2, 3]]);
    assert_eq!(
        ModelSource::open(&one).unwrap().config.num_layers,
        5,
        "exactly N layers go"
    );

    // nothing passes T = 0.9999 on a random model: the first sweep keeps nothing, the second
    // lowers T to the best similarity the first rejected and keeps that candidate
    let rnd = llama6(t, "rnd", &[]);
    let out = run(
        &rnd,
        "rnd-1",
        &["--merge-layers", "1", "--merge-threshold", "0.9999"],
    );
    let r = report(&out);
    let steps = r["layer_merge"]["search"]["steps"].as_array().unwrap();
    let first: Vec<&serde_json::Value> = steps.iter().filter(|s| s["pass"] == 1).collect();
    assert_eq!(first.len(), 4, "bases 3, 2, 1, 0: {steps:?}"); // H − C = 3 down to L = 0
    assert!(first.iter().all(|s| s["accepted"] == false));
    let best = first
        .iter()
        .max_by(|a, b| {
            a["similarity"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["similarity"].as_f64().unwrap())
        })
        .unwrap();
    let last = steps.last().unwrap();
    assert_eq!(last["pass"], 2);
    assert_eq!(last["accepted"], true);
    assert_eq!(last["layers"], best["layers"]);
    assert_eq!(last["threshold"], best["similarity"]);
    assert_eq!(
        r["layer_merge"]["search"]["final_threshold"],
        best["similarity"]
    );
    assert_eq!(ModelSource::open(&out).unwrap().config.num_layers, 5);
}

#[test]
fn merge_with_a_method_calibrates_the_merged_model_and_the_recipe_replays_it() {
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
        "--merge-layers",
        "2",
        "--merge-size",
        "3",
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
    let m = merges(&out);
    assert_eq!(
        m.iter().map(|g| g.len() - 1).sum::<usize>(),
        2,
        "exactly 2 layers merged away: {m:?}"
    );
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
    // recipe.toml lists the merges; --recipe replays them (no measuring) with the same output
    let text = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    assert!(text.contains("merge_layers"), "{text}");
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
    assert_eq!(merges(&again), m);
    assert_eq!(report(&again)["layer_merge"]["method"], "recipe");
    for f in ["model.safetensors", "quantized.safetensors", "config.json"] {
        assert!(
            std::fs::read(out.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(),
            "{f} differs when the recipe is rerun"
        );
    }
    // every export reads back with the merged layer count
    let x = token_ids(16);
    let want = model_logits(
        &mut ModelSource::open(&out).unwrap().load_all().unwrap(),
        &x,
    );
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
        let err = max_diff(&model_logits(&mut m.load_all().unwrap(), &x), &want);
        assert!(err < 0.05, "{fmt}: logits differ by {err}");
    }
}

#[test]
fn a_merged_gguf_model_exports_to_gguf_with_the_original_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let hf = llama6(t, "l6", &[]);
    let gguf = t.join("l6.gguf");
    gguf_of(&hf, &gguf);
    let calib = calib_text(t);
    let out = t.join("merged");
    ok(&[
        "compress",
        "-q",
        "--model",
        s(&gguf),
        "--calib",
        s(&calib),
        "--nsamples",
        "2",
        "--seqlen",
        "16",
        "--merge-layers",
        "2",
        "--merge-size",
        "3",
        "--merge-threshold",
        "-1",
        "--out",
        s(&out),
    ]);
    let dst = t.join("merged.gguf");
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
    let b = model_logits(
        &mut ModelSource::open(&out).unwrap().load_all().unwrap(),
        &x,
    );
    assert!(max_diff(&a, &b) < 1e-4, "{}", max_diff(&a, &b));
    // and the merge changed the model (the test can fail)
    let orig = model_logits(
        &mut ModelSource::open(&gguf).unwrap().load_all().unwrap(),
        &x,
    );
    assert!(max_diff(&a, &orig) > 1e-3);
}

#[test]
fn bad_layer_merge_input_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = llama6(t, "l6", &[]); // 6 layers
    let out = t.join("o");
    let missing = t.join("no-such-calib.txt");
    let base = |m: &Path, extra: &[&str]| {
        let mut a = vec![
            "compress".to_string(),
            "-q".into(),
            "--model".into(),
            s(m).into(),
            "--calib".into(),
            s(&missing).into(),
            "--out".into(),
            s(&out).into(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let check_on = |m: &Path, extra: &[&str], needles: &[&str]| {
        let a = base(m, extra);
        let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
        // the calibration file does not exist: the merge error must come first
        let err = fails_with(&a, needles);
        assert!(!err.contains("no-such-calib"), "{err}");
        assert!(!out.exists());
    };
    let check = |extra: &[&str], needles: &[&str]| check_on(&model, extra, needles);
    check(
        &["--merge-layers", "6"],
        &["--merge-layers 6", "has 6", "at most 5"],
    );
    check(
        &["--merge-layers", "9", "--method", "rtn", "--bits", "8"],
        &["--merge-layers 9", "has 6"],
    );
    check(&["--merge-layers", "0"], &["--merge-layers 0"]);
    check(
        &["--merge-layers", "1", "--drop-layers", "1"],
        &["--merge-layers and --drop-layers"],
    );
    check(
        &["--merge-size", "3"],
        &["--merge-size", "--merge-layers N"],
    );
    check(
        &["--merge-layers", "1", "--merge-size", "1"],
        &["--merge-size 1", "at least 2"],
    );
    check(
        &["--merge-layers", "1", "--merge-threshold", "1.5"],
        &["--merge-threshold 1.5", "[-1, 1]"],
    );
    check(
        &["--merge-layers", "1", "--merge-highest", "6"],
        &["--merge-highest 6", "6 layers"],
    );
    // the default C = 7 does not fit 6 layers
    check(&["--merge-layers", "1"], &["no block of --merge-size 7"]);
    check(
        &["--merge-layers", "1", "--merge-size", "3", "--bits", "4"],
        &["bits", "no method", "merge"],
    );
    check(
        &[
            "--merge-layers",
            "1",
            "--merge-size",
            "3",
            "--target-bpw",
            "4",
            "--method",
            "gptq",
        ],
        &["layer merging"],
    );
    let recipe = t.join("r.toml");
    for (text, needles) in [
        (
            "merge_layers = [[1, 3]]\n",
            &["r.toml: merge_layers", "not consecutive"][..],
        ),
        (
            "merge_layers = [[2]]\n",
            &["r.toml: merge_layers", "at least 2"][..],
        ),
        (
            "merge_layers = [[2, 3], [3, 4]]\n",
            &["r.toml: merge_layers", "merge 2 starts at layer 3"][..],
        ),
        (
            "merge_layers = [[0, 1, 2, 3, 4, 5, 6]]\n",
            &["r.toml: merge_layers", "not consecutive"][..],
        ),
        (
            "merge_layers = [[1, 2]]\ndrop_layers = [4]\n",
            &["r.toml: merge_layers", "drops some"][..],
        ),
    ] {
        std::fs::write(&recipe, text).unwrap();
        check(&["--recipe", s(&recipe)], needles);
    }
    std::fs::write(&recipe, "drop_layers = [4]\n").unwrap();
    check(
        &[
            "--recipe",
            s(&recipe),
            "--merge-layers",
            "1",
            "--merge-size",
            "3",
        ],
        &["r.toml: drop_layers", "--merge-layers"],
    );
    // a dense layer and a MoE layer cannot merge (Qwen3-MoE fixture: layer 1 is dense)
    let moe = t.join("moe");
    std::fs::create_dir_all(&moe).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny("qwen3_moe").join(f), moe.join(f)).unwrap();
    }
    std::fs::write(moe.join("tokenizer.json"), tokenizer_json(128)).unwrap();
    std::fs::write(&recipe, "merge_layers = [[0, 1]]\n").unwrap();
    check_on(
        &moe,
        &["--recipe", s(&recipe)],
        &["layers 0 and 1 have different tensors"],
    );
}
