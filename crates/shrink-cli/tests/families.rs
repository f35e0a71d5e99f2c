//! Every family of the architecture table through the whole tool on a small synthetic model:
//! Hugging Face directory -> eval; -> GGUF (llama.cpp's names and metadata for the family) ->
//! eval gives the same perplexity; GGUF -> `convert` -> Hugging Face directory, the same again;
//! `compress --method gptq` quantizes every linear the family compresses. And the bad inputs a
//! family brings: an unknown model_type, a GGUF without a required key, a fused weight of the
//! wrong shape, an expert count that disagrees with the tensors.
mod common;
use common::*;
use serde_json::{json, Value};
use shrink_model::gguf::{GgufFile, GgufWriter};
use std::path::{Path, PathBuf};

fn base(model_type: &str, class: &str) -> Value {
    json!({
        "architectures": [class], "model_type": model_type,
        "vocab_size": 128, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "tie_word_embeddings": false
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    for (k, v) in b.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

/// Synthetic configs, one per family the table added (Llama/Qwen2/Mistral have their own tests).
fn configs() -> Vec<(&'static str, Value)> {
    vec![
        (
            "qwen3",
            merge(
                base("qwen3", "Qwen3ForCausalLM"),
                json!({"head_dim": 16, "tie_word_embeddings": true}),
            ),
        ),
        (
            "gemma3",
            merge(
                base("gemma3_text", "Gemma3ForCausalLM"),
                json!({
                    "num_hidden_layers": 3, "hidden_activation": "gelu_pytorch_tanh",
                    "query_pre_attn_scalar": 8, "sliding_window": 6,
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                    "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                    "attn_logit_softcapping": 5.0, "final_logit_softcapping": 8.0,
                    "tie_word_embeddings": true
                }),
            ),
        ),
        ("phi3", base("phi3", "Phi3ForCausalLM")),
        (
            "mixtral",
            merge(
                base("mixtral", "MixtralForCausalLM"),
                json!({"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 16}),
            ),
        ),
        (
            "qwen3_moe",
            merge(
                base("qwen3_moe", "Qwen3MoeForCausalLM"),
                json!({"num_hidden_layers": 3, "num_experts": 4, "num_experts_per_tok": 2,
                       "moe_intermediate_size": 16, "norm_topk_prob": true, "mlp_only_layers": [1]}),
            ),
        ),
    ]
}

fn text(dir: &Path) -> PathBuf {
    let p = dir.join("eval.txt");
    let t: String = (0..30)
        .map(|i| format!("Line {i}: the quick brown fox {} jumps. ", i * 3 % 7))
        .collect();
    std::fs::write(&p, t).unwrap();
    p
}

fn to_gguf(model: &Path, out: &Path) {
    let (code, _, err) = shrink(&[
        "export",
        "-q",
        "--model",
        s(model),
        "--format",
        "gguf",
        "--type",
        "F32",
        "--tokenizer-pre",
        "gpt2",
        "--out",
        s(out),
    ]);
    assert_eq!(code, 0, "export {}: {err}", model.display());
}

#[test]
fn every_family_round_trips_through_gguf_and_convert_and_compresses() {
    let tmp = tempfile::tempdir().unwrap();
    let text = text(tmp.path());
    let calib = calib_text(tmp.path());
    for (name, cfg) in configs() {
        let hf = synthetic_dir(tmp.path(), name, &cfg, &mut |_, _, _| {});
        let p_hf = ppl16(&hf, &text);
        assert!(p_hf.is_finite() && p_hf > 1.0, "{name}: {p_hf}");
        let gg = tmp.path().join(format!("{name}.gguf"));
        to_gguf(&hf, &gg);
        let f = GgufFile::open(&gg).unwrap();
        let c = shrink_model::ModelConfig::from_hf_file(&hf.join("config.json")).unwrap();
        assert_eq!(
            f.get_str("general.architecture").unwrap(),
            c.arch.gguf_name(),
            "{name}"
        );
        let p_gg = ppl16(&gg, &text);
        assert!(
            (p_gg - p_hf).abs() < 1e-4 * p_hf,
            "{name}: GGUF {p_gg} vs HF {p_hf}"
        );
        // the config read back from GGUF is the one written (bar the keys GGUF does not hold)
        let back = shrink_model::source::config_from_gguf(&f).unwrap();
        assert_eq!(back.layer_layouts(), c.layer_layouts(), "{name}");
        assert_eq!(back.sliding_layers, c.sliding_layers, "{name}");
        assert_eq!(
            (back.attn_softcap, back.final_softcap),
            (c.attn_softcap, c.final_softcap)
        );
        let conv = tmp.path().join(format!("{name}-conv"));
        let (code, _, err) = shrink(&["convert", "-q", s(&gg), "--out", s(&conv)]);
        assert_eq!(code, 0, "{name}: convert: {err}");
        let p_conv = ppl16(&conv, &text);
        assert!(
            (p_conv - p_hf).abs() < 1e-4 * p_hf,
            "{name}: converted {p_conv} vs {p_hf}"
        );

        let out = tmp.path().join(format!("{name}-gptq"));
        let (code, _, err) = shrink(&[
            "compress",
            "-q",
            "--model",
            s(&hf),
            "--method",
            "gptq",
            "--bits",
            "4",
            "--group-size",
            "16",
            "--calib",
            s(&calib),
            "--nsamples",
            "4",
            "--seqlen",
            "16",
            "--out",
            s(&out),
        ]);
        assert_eq!(code, 0, "{name}: compress: {err}");
        let r = report(&out);
        let reported: usize = r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["linears"].as_array().unwrap().len())
            .sum();
        let want: usize = (0..c.num_layers)
            .map(|i| {
                shrink_model::arch::layer_layout(&c, i)
                    .linears
                    .iter()
                    .filter(|l| l.compress)
                    .count()
            })
            .sum();
        assert_eq!(
            reported, want,
            "{name}: every compressible linear is compressed"
        );
        let p_q = ppl16(&out, &text);
        assert!(p_q.is_finite(), "{name}: {p_q}");
    }
}

/// Rewrites a GGUF file with `edit` applied to its metadata.
fn gguf_edit(
    src: &Path,
    out: &Path,
    edit: impl Fn(&mut Vec<(String, shrink_model::gguf::GgufValue)>),
) {
    let f = GgufFile::open(src).unwrap();
    let mut meta = f.metadata().to_vec();
    edit(&mut meta);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(k, v);
    }
    for t in f.tensors() {
        w.add_tensor(
            t.name.clone(),
            t.dims.clone(),
            t.dtype,
            f.tensor_data(t).to_vec(),
        )
        .unwrap();
    }
    w.write(out).unwrap();
}

#[test]
fn family_bad_inputs_get_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let text = text(tmp.path());
    let all = configs();
    let cfg = |n: &str| all.iter().find(|c| c.0 == n).unwrap().1.clone();
    // an unknown model_type
    let unknown = synthetic_dir(tmp.path(), "unknown", &cfg("qwen3"), &mut |_, _, _| {});
    let mut c = cfg("qwen3");
    c["model_type"] = json!("falcon_mamba");
    std::fs::write(unknown.join("config.json"), c.to_string()).unwrap();
    fails_with(
        &["eval", "--model", s(&unknown), "--text", s(&text)],
        &[
            "config.json",
            "unknown architecture model_type 'falcon_mamba'",
            "gemma3_text",
        ],
    );
    // a gemma3 GGUF without its sliding-window size
    let g = synthetic_dir(tmp.path(), "g3", &cfg("gemma3"), &mut |_, _, _| {});
    let gg = tmp.path().join("g3.gguf");
    to_gguf(&g, &gg);
    let bad = tmp.path().join("g3-nowindow.gguf");
    gguf_edit(&gg, &bad, |m| {
        m.retain(|(k, _)| k != "gemma3.attention.sliding_window")
    });
    fails_with(
        &["eval", "--model", s(&bad), "--text", s(&text)],
        &["g3-nowindow.gguf", "gemma3.attention.sliding_window"],
    );
    // a fused qkv_proj of the wrong shape
    let p = synthetic_dir(tmp.path(), "phi", &cfg("phi3"), &mut |_, _, _| {});
    let mut c = cfg("phi3");
    c["num_key_value_heads"] = json!(4);
    std::fs::write(p.join("config.json"), c.to_string()).unwrap();
    fails_with(
        &["eval", "--model", s(&p), "--text", s(&text)],
        &[
            "model.safetensors",
            "self_attn.qkv_proj.weight",
            "[64, 32]",
            "[96, 32]",
        ],
    );
    // an expert count that disagrees with the tensors: config.json, and GGUF metadata
    let m = synthetic_dir(tmp.path(), "mx", &cfg("mixtral"), &mut |_, _, _| {});
    let mg = tmp.path().join("mx.gguf");
    to_gguf(&m, &mg);
    let mut c = cfg("mixtral");
    c["num_local_experts"] = json!(6);
    std::fs::write(m.join("config.json"), c.to_string()).unwrap();
    fails_with(
        &["eval", "--model", s(&m), "--text", s(&text)],
        &[
            "model.safetensors",
            "block_sparse_moe.gate.weight",
            "[4, 32]",
            "[6, 32]",
        ],
    );
    let bad = tmp.path().join("mx-6.gguf");
    gguf_edit(&mg, &bad, |meta| {
        for (k, v) in meta.iter_mut() {
            if k == "llama.expert_count" {
                *v = shrink_model::gguf::GgufValue::U32(6);
            }
        }
    });
    fails_with(
        &["eval", "--model", s(&bad), "--text", s(&text)],
        &["mx-6.gguf", "ffn_gate_inp", "[4, 32]", "[6, 32]"],
    );
}

/// Llama 3.1 rope scaling through GGUF and back: the export writes the `rope_freqs` tensor that
/// llama.cpp's own converter wrote for the tiny Llama fixture (llama3 scaling, factor 8), the
/// converter's GGUF loads, and `convert` turns it into a config.json (transformers' `longrope`
/// with one set of factors) that gives the same model.
#[test]
fn llama3_rope_scaling_as_llama_cpp_rope_freqs() {
    let tmp = tempfile::tempdir().unwrap();
    let text = text(tmp.path());
    let hf = hf_dir(tmp.path()); // the tiny Llama fixture, llama3 rope scaling
    let p_hf = ppl16(&hf, &text);
    let gg = tmp.path().join("llama.gguf");
    to_gguf(&hf, &gg);
    let ours = GgufFile::open(&gg).unwrap();
    let theirs = GgufFile::open(&tiny("llama").join("model.f32.gguf")).unwrap();
    let (a, b) = (
        ours.dequantize("rope_freqs.weight").unwrap(),
        theirs.dequantize("rope_freqs.weight").unwrap(),
    );
    assert_eq!(a.len(), 8, "head_dim 16: 8 frequencies");
    assert!(a.iter().any(|&f| f > 1.0), "the scaling is active: {a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs(),
            "rope_freqs {a:?} vs converter {b:?}"
        );
    }
    let p_gg = ppl16(&gg, &text);
    assert!(
        (p_gg - p_hf).abs() < 1e-4 * p_hf,
        "GGUF {p_gg} vs HF {p_hf}"
    );
    // convert: the factors become a longrope config that reads back to the same model
    let conv = tmp.path().join("conv");
    let (code, _, err) = shrink(&["convert", "-q", s(&gg), "--out", s(&conv)]);
    assert_eq!(code, 0, "convert: {err}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(conv.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["rope_scaling"]["rope_type"], "longrope", "{cfg}");
    let p_conv = ppl16(&conv, &text);
    assert!(
        (p_conv - p_hf).abs() < 1e-4 * p_hf,
        "converted {p_conv} vs {p_hf}"
    );
    // and back to GGUF: the same rope_freqs again
    let gg2 = tmp.path().join("again.gguf");
    to_gguf(&conv, &gg2);
    assert_eq!(
        GgufFile::open(&gg2)
            .unwrap()
            .dequantize("rope_freqs.weight")
            .unwrap(),
        a
    );
}

/// LongRoPE's GGUF form: the two factor tensors, the original context length and the
/// attention factor.
fn longrope_of(p: &Path) -> (Vec<f32>, Vec<f32>, u64, f64) {
    let f = GgufFile::open(p).unwrap();
    (
        f.dequantize("rope_factors_long.weight").unwrap(),
        f.dequantize("rope_factors_short.weight").unwrap(),
        f.get_u64("phi3.rope.scaling.original_context_length")
            .unwrap(),
        f.get_f64("phi3.rope.scaling.attn_factor").unwrap(),
    )
}

/// Phi-3 LongRoPE through GGUF and back (the tiny `phi3_longrope` fixture: original length 32):
/// the export writes the `rope_factors_long` / `rope_factors_short` tensors and the
/// `phi3.rope.scaling.*` keys that llama.cpp's own converter wrote for it; the converter's GGUF
/// exports back to the same; `convert` turns it into a config.json (longrope, both factor
/// sets) that gives the same model; perplexity agrees at 16 tokens a window (short factors)
/// and at 40 (long factors).
#[test]
fn phi3_longrope_as_llama_cpp_rope_factors() {
    let tmp = tempfile::tempdir().unwrap();
    let text = text(tmp.path());
    let fx = tiny("phi3_longrope");
    let hf = tmp.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fx.join(f), hf.join(f)).unwrap();
    }
    std::fs::write(hf.join("tokenizer.json"), tokenizer_json(128)).unwrap();
    let theirs = fx.join("model.f32.gguf");
    let want = longrope_of(&theirs);
    assert_eq!((want.0.len(), want.2), (6, 32));
    assert!(want.0 != want.1 && want.3 > 1.0, "{want:?}");

    // HF -> GGUF: the converter's tensors and keys
    let gg = tmp.path().join("ours.gguf");
    to_gguf(&hf, &gg);
    assert_eq!(longrope_of(&gg), want);
    let mut ppls = vec![];
    for seqlen in ["16", "40"] {
        let (p_hf, p_gg) = (ppl_at(&hf, &text, seqlen), ppl_at(&gg, &text, seqlen));
        assert!(
            (p_gg - p_hf).abs() < 1e-4 * p_hf,
            "seqlen {seqlen}: GGUF {p_gg} vs HF {p_hf}"
        );
        ppls.push(p_hf);
    }
    assert!(
        (ppls[0] - ppls[1]).abs() > 1e-3 * ppls[0],
        "the two lengths are not told apart: {ppls:?}"
    );

    // the converter's GGUF exported again: the same tensors and keys
    let again = tmp.path().join("again.gguf");
    let (code, _, err) = shrink(&[
        "export",
        "-q",
        "--model",
        s(&theirs),
        "--format",
        "gguf",
        "--type",
        "F32",
        "--out",
        s(&again),
    ]);
    assert_eq!(code, 0, "export: {err}");
    assert_eq!(longrope_of(&again), want);

    // convert: transformers' longrope in config.json, read back to the same model
    let conv = tmp.path().join("conv");
    let (code, _, err) = shrink(&["convert", "-q", s(&theirs), "--out", s(&conv)]);
    assert_eq!(code, 0, "convert: {err}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(conv.join("config.json")).unwrap()).unwrap();
    let rs = &cfg["rope_scaling"];
    assert_eq!(rs["rope_type"], "longrope", "{cfg}");
    assert_eq!(cfg["original_max_position_embeddings"], 32, "{cfg}");
    assert_eq!(cfg["max_position_embeddings"], 128, "{cfg}");
    let list = |k: &str| -> Vec<f32> {
        rs[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    assert_eq!(
        (list("long_factor"), list("short_factor")),
        (want.0.clone(), want.1.clone())
    );
    assert_eq!(
        rs["attention_factor"].as_f64().unwrap() as f32,
        want.3 as f32
    );
    // the converter's synthetic SentencePiece vocabulary spells lowercase letters, digits, '.'
    // and ',' only
    let spm_text = tmp.path().join("spm.txt");
    let t: String = (0..40)
        .map(|i| format!("the quick brown fox {i} jumps over the lazy dog, again. "))
        .collect();
    std::fs::write(&spm_text, t).unwrap();
    for seqlen in ["16", "40"] {
        let (p_g, p_c) = (
            ppl_at(&theirs, &spm_text, seqlen),
            ppl_at(&conv, &spm_text, seqlen),
        );
        assert!(
            (p_c - p_g).abs() < 1e-4 * p_g,
            "seqlen {seqlen}: converted {p_c} vs GGUF {p_g}"
        );
    }
    // and the converted directory back to GGUF: the same again
    let back = tmp.path().join("back.gguf");
    let (code, _, err) = shrink(&[
        "export",
        "-q",
        "--model",
        s(&conv),
        "--format",
        "gguf",
        "--type",
        "F32",
        "--gguf-metadata",
        s(&theirs),
        "--out",
        s(&back),
    ]);
    assert_eq!(code, 0, "export of the converted directory: {err}");
    assert_eq!(longrope_of(&back), want);
}

/// A phi3 model with one set of per-frequency factors (longrope, short == long, attention
/// factor 1): llama.cpp's phi3 graph reads no `rope_freqs`, so the export writes the factors as
/// both `rope_factors_long` and `rope_factors_short`, which read back as the same model.
#[test]
fn phi3_one_set_of_factors_as_both_rope_factors() {
    let tmp = tempfile::tempdir().unwrap();
    let text = text(tmp.path());
    let f: Vec<f64> = (0..4).map(|i| 1.0 + 0.5 * i as f64).collect();
    let cfg = merge(
        base("phi3", "Phi3ForCausalLM"),
        json!({"rope_scaling": {"rope_type": "longrope", "short_factor": f, "long_factor": f,
                                "attention_factor": 1.0}}),
    );
    let hf = synthetic_dir(tmp.path(), "phi3f", &cfg, &mut |_, _, _| {});
    let c = shrink_model::ModelConfig::from_hf_file(&hf.join("config.json")).unwrap();
    assert!(matches!(
        c.rope_scaling,
        Some(shrink_model::RopeScaling::Factors { .. })
    ));
    let gg = tmp.path().join("phi3f.gguf");
    to_gguf(&hf, &gg);
    let g = GgufFile::open(&gg).unwrap();
    assert!(g.tensor("rope_freqs.weight").is_none());
    let want: Vec<f32> = f.iter().map(|&x| x as f32).collect();
    for t in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        assert_eq!(g.dequantize(t).unwrap(), want, "{t}");
    }
    let back = shrink_model::source::config_from_gguf(&g).unwrap();
    assert_eq!(back.rope_scaling, c.rope_scaling);
    let (p_hf, p_gg) = (ppl16(&hf, &text), ppl16(&gg, &text));
    assert!(
        (p_gg - p_hf).abs() < 1e-4 * p_hf,
        "GGUF {p_gg} vs HF {p_hf}"
    );
}
