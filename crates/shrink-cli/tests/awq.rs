//! AWQ (`compress --method awq`, `--awq`): the scale fold is exact in every family of the table,
//! the folded and quantized model is an ordinary one (8-bit AWQ keeps the original perplexity),
//! the search never loses to round-to-nearest on its own objective, the report and recipe
//! record it, `--recipe` replays it, and bad settings are refused before any work.
mod common;
use common::*;
use shrink_model::layer::{NoHook, Rope};
use shrink_model::source::SafetensorsSource;
use shrink_model::{DecoderLayer, ModelConfig, Role};

fn tiny_config(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(tiny(name).join("config.json")).unwrap()).unwrap()
}

/// Folding random scales into every group that has a producer leaves each layer's output
/// unchanged, in every family, with grouped-query attention (o_proj not foldable) and without
/// it (v_proj rows fold into o_proj).
#[test]
fn input_scales_fold_exactly_in_every_family() {
    let t = tempfile::tempdir().unwrap();
    let mut o_folds = 0;
    for name in [
        "llama",
        "qwen2",
        "qwen3",
        "gemma3",
        "phi3",
        "mixtral",
        "qwen3_moe",
        "olmoe",
    ] {
        for mha in [false, true] {
            let mut c = tiny_config(name);
            if mha {
                c["num_key_value_heads"] = c["num_attention_heads"].clone();
            }
            let dir = synthetic_dir(t.path(), &format!("{name}-{mha}"), &c, &mut |_, _, _| {});
            let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
            let src = SafetensorsSource::open(&dir).unwrap();
            let (batch, seq) = (2, 12);
            let rope = Rope::new(&cfg, seq);
            let mut seed = 5u64;
            let mut next = || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as f32 / (1u64 << 31) as f32
            };
            for i in 0..cfg.num_layers {
                let mut layer = DecoderLayer::load(&src, &cfg, i).unwrap();
                let x: Vec<f32> = (0..batch * seq * cfg.hidden_size)
                    .map(|_| 2.0 * next() - 1.0)
                    .collect();
                let mut y0 = x.clone();
                layer
                    .forward(&cfg, &rope, &mut y0, batch, seq, &mut NoHook)
                    .unwrap();
                for g in 0..layer.layout.groups.len() {
                    let first = &layer.layout.linears[layer.layout.groups[g].linears[0]];
                    let (role, expert, d_in) = (first.role, first.expert, first.shape[1]);
                    let producer = layer.layout.input_producer(g);
                    match role {
                        Role::Q | Role::Qkv | Role::Down => assert!(producer.is_some()),
                        Role::O => assert_eq!(producer.is_some(), mha, "{name} o_proj"),
                        Role::Gate | Role::GateUp => {
                            assert_eq!(producer.is_some(), expert.is_none(), "{name} gate")
                        }
                        Role::Router => assert!(producer.is_none()),
                        _ => {}
                    }
                    if producer.is_none() {
                        assert!(layer.fold_input_scale(g, &vec![1.0; d_in]).is_err());
                        continue;
                    }
                    if role == Role::O {
                        o_folds += 1;
                    }
                    let s: Vec<f32> = (0..d_in).map(|_| 0.5 + 1.5 * next()).collect();
                    layer.fold_input_scale(g, &s).unwrap();
                }
                assert!(layer.fold_input_scale(0, &[1.0]).is_err(), "wrong length");
                let mut y1 = x.clone();
                layer
                    .forward(&cfg, &rope, &mut y1, batch, seq, &mut NoHook)
                    .unwrap();
                let scale = y0.iter().fold(0f32, |a, v| a.max(v.abs()));
                let diff = y0
                    .iter()
                    .zip(&y1)
                    .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
                assert!(
                    diff <= 2e-5 * scale.max(1.0),
                    "{name} (mha {mha}) layer {i}: |diff| {diff} of {scale}"
                );
            }
        }
    }
    assert!(o_folds >= 8, "v_proj -> o_proj folds exercised: {o_folds}");
}

fn compress(model: &std::path::Path, out: &std::path::Path, extra: &[&str]) {
    let mut a = vec!["compress", "-q", "--model", s(model), "--out", s(out)];
    a.extend_from_slice(extra);
    let (code, _, err) = shrink(&a);
    assert_eq!(code, 0, "{a:?}: {err}");
}

#[test]
fn awq_is_an_ordinary_model_recorded_and_replayed() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let calib = calib_text(t.path());
    let c = ["--calib", s(&calib), "--nsamples", "8", "--seqlen", "32"];
    // 8 bits: the fold must leave the model's function as it was
    let (w8, w3, again) = (
        t.path().join("w8"),
        t.path().join("w3"),
        t.path().join("again"),
    );
    compress(
        &model,
        &w8,
        &[
            &["--method", "awq", "--bits", "8", "--group-size", "16"],
            &c[..],
        ]
        .concat(),
    );
    let (p0, p8) = (ppl16(&model, &calib), ppl16(&w8, &calib));
    assert!((p8 / p0 - 1.0).abs() < 0.01, "original {p0}, awq w8 {p8}");
    // the norms now carry the folded scales
    let norm = "model.layers.0.input_layernorm.weight";
    let a = SafetensorsSource::open(&model).unwrap();
    let b = SafetensorsSource::open(&w8).unwrap();
    use shrink_model::TensorSource;
    assert_ne!(a.load(norm).unwrap().data, b.load(norm).unwrap().data);

    compress(
        &model,
        &w3,
        &[
            &["--method", "awq", "--bits", "3", "--group-size", "16"],
            &c[..],
        ]
        .concat(),
    );
    let rep = report(&w3);
    let layers = rep["layers"].as_array().unwrap();
    let mut searched = 0;
    let mut gained = 0;
    for l in layers {
        for g in l["awq"].as_array().expect("awq per layer") {
            if let Some(why) = g["skipped"].as_str() {
                // the tiny Llama has grouped-query attention
                assert!(why.contains("grouped-query"), "{g}");
                assert_eq!(g["group"], "o_proj");
                continue;
            }
            let (loss, rtn) = (g["loss"].as_f64().unwrap(), g["loss_rtn"].as_f64().unwrap());
            assert!(loss <= rtn * (1.0 + 1e-9), "{g}");
            searched += 1;
            gained += (loss < 0.999 * rtn) as usize;
        }
    }
    assert_eq!(
        searched,
        3 * layers.len(),
        "q/k/v, gate/up and down of every layer"
    );
    assert!(gained > 0, "no group gained from its scale");
    assert!(rep["totals"]["phases"]["awq"].as_f64().unwrap() > 0.0);
    let toml = std::fs::read_to_string(w3.join("recipe.toml")).unwrap();
    assert!(
        toml.contains("[awq]") && toml.contains("method = \"rtn\""),
        "{toml}"
    );
    compress(&model, &again, &["--recipe", s(&w3.join("recipe.toml"))]);
    assert!(
        std::fs::read(w3.join("model.safetensors")).unwrap()
            == std::fs::read(again.join("model.safetensors")).unwrap(),
        "--recipe did not replay AWQ"
    );
    // AWQ before GPTQ runs, and records both
    let g = t.path().join("gptq");
    compress(
        &model,
        &g,
        &[
            &[
                "--awq",
                "--method",
                "gptq",
                "--bits",
                "3",
                "--group-size",
                "16",
            ],
            &c[..],
        ]
        .concat(),
    );
    let rep = report(&g);
    assert!(rep["layers"][0]["awq"].as_array().unwrap().len() >= 3);
    assert!(rep["layers"][0]["linears"][0]["method"]
        .as_str()
        .unwrap()
        .starts_with("gptq"));
}

#[test]
fn awq_bad_settings_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let model = hf_dir(t.path());
    let calib = calib_text(t.path());
    let out = t.path().join("out");
    let base = [
        "compress",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--calib",
        s(&calib),
    ];
    fails_with(
        &[
            &base[..],
            &["--awq", "--method", "magnitude", "--sparsity", "0.5"],
        ]
        .concat(),
        &["AWQ", "quantiz"],
    );
    fails_with(&[&base[..], &["--method", "awq"]].concat(), &["bit width"]);
    let recipe = t.path().join("r.toml");
    std::fs::write(
        &recipe,
        "[[stage]]\nmethod = \"awq\"\nbits = 4\n\n[[stage]]\nmethod = \"gptq\"\nbits = 4\n",
    )
    .unwrap();
    fails_with(
        &[&base[..], &["--recipe", s(&recipe)]].concat(),
        &["awq is not a stage", "[awq]"],
    );
    std::fs::write(
        &recipe,
        "[awq]\nn_grid = 0\n[[stage]]\nmethod = \"rtn\"\nbits = 4\n",
    )
    .unwrap();
    fails_with(
        &[&base[..], &["--recipe", s(&recipe)]].concat(),
        &["n_grid"],
    );
    std::fs::write(
        &recipe,
        "[awq]\nalpha = 0.5\n[[stage]]\nmethod = \"rtn\"\nbits = 4\n",
    )
    .unwrap();
    fails_with(&[&base[..], &["--recipe", s(&recipe)]].concat(), &["alpha"]);
    assert!(!out.exists());
}
