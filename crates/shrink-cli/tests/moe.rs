//! Mixture-of-Experts compression end to end on a tiny synthetic Qwen3-MoE model built so that
//! one expert of every layer receives no calibration token: every expert comes out quantized
//! under each `--moe-calibration` policy, the report gives each expert's token count and what was
//! done, the router stays dense, and the exports (compressed-tensors, GGUF with llama.cpp's
//! stacked expert tensors) load back with every expert quantized.
mod common;
use common::*;
use shrink_model::gguf::GgmlType;
use shrink_model::source::SafetensorsSource;
use shrink_model::{ModelSource, TensorSource};
use std::path::{Path, PathBuf};

const H: usize = 32;
const EXPERTS: usize = 4;
const FF: usize = 16;
const LAYERS: usize = 2;
/// Expert that the router never picks (see [`moe_dir`]).
const STARVED: usize = 3;

/// A tiny Qwen3-MoE directory. Hidden dimension 0 carries a constant +4 from the embedding and
/// dimension 1 +4 or -4 by token parity (o_proj and the experts' down_proj write nothing into
/// either), so after each MLP norm their signs are known; the router is -8 on dimension 0 for
/// expert [`STARVED`] (top-2 never picks it), +8 / -8 on dimension 1 for experts 0 / 1, so
/// even tokens go to experts 0 and 2 and odd ones to 1 and 2.
fn moe_dir(dir: &Path) -> PathBuf {
    let cfg = serde_json::json!({
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": 128, "hidden_size": H, "intermediate_size": 48, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "num_experts": EXPERTS, "num_experts_per_tok": 2, "moe_intermediate_size": FF,
        "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "tie_word_embeddings": false, "hidden_act": "silu"
    });
    synthetic_dir(dir, "moe", &cfg, &mut |name, shape, v| {
        let cols = *shape.last().unwrap();
        if name.ends_with("embed_tokens.weight") {
            for (t, r) in v.chunks_mut(cols).enumerate() {
                r[0] = 4.0;
                r[1] = if t % 2 == 0 { 4.0 } else { -4.0 };
            }
        } else if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
            v[..2 * cols].fill(0.0); // rows 0 and 1: nothing written into dimensions 0, 1
        } else if name.ends_with("mlp.gate.weight") {
            for (e, r) in v.chunks_mut(cols).enumerate() {
                (r[0], r[1]) = match e {
                    0 => (0.0, 8.0),
                    1 => (0.0, -8.0),
                    STARVED => (-8.0, 0.0),
                    _ => (0.0, 0.0),
                };
            }
        }
    })
}

fn compress(model: &Path, calib: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "compress",
        "-q",
        "--model",
        s(model),
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "16",
        "--calib",
        s(calib),
        "--nsamples",
        "4",
        "--seqlen",
        "16",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = shrink(&args);
    assert_eq!(code, 0, "compress {extra:?} failed: {err}");
    report(out)
}

/// Every expert linear of the report, by (layer, expert, name) -> (tokens, note).
fn experts(r: &serde_json::Value) -> Vec<(usize, usize, String, u64, Option<String>)> {
    let mut v = vec![];
    for l in r["layers"].as_array().unwrap() {
        for lin in l["linears"].as_array().unwrap() {
            let name = lin["name"].as_str().unwrap().to_string();
            if let Some(rest) = name.split(".experts.").nth(1) {
                let e: usize = rest.split('.').next().unwrap().parse().unwrap();
                v.push((
                    l["index"].as_u64().unwrap() as usize,
                    e,
                    name,
                    lin["tokens"].as_u64().unwrap(),
                    lin["note"].as_str().map(String::from),
                ));
            }
        }
    }
    v
}

#[test]
fn every_expert_is_quantized_under_each_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let model = moe_dir(tmp.path());
    let calib = calib_text(tmp.path());
    let orig = SafetensorsSource::open(&model).unwrap();
    for policy in ["fallback-rtn", "routed", "all"] {
        let out = tmp.path().join(format!("out-{policy}"));
        let r = compress(&model, &calib, &out, &["--moe-calibration", policy]);
        let ex = experts(&r);
        // 2 layers x 4 experts x (gate, up, down)
        assert_eq!(ex.len(), LAYERS * EXPERTS * 3, "{policy}: {ex:?}");
        let total: u64 = ex
            .iter()
            .filter(|x| x.2.ends_with("gate_proj.weight"))
            .map(|x| x.3)
            .sum();
        assert_eq!(
            total,
            (LAYERS * 4 * 16 * 2) as u64,
            "{policy}: top-2 of every token"
        );
        for (layer, e, name, tokens, note) in &ex {
            if *e == STARVED {
                assert_eq!(*tokens, 0, "{name}");
                let note = note
                    .as_deref()
                    .unwrap_or_else(|| panic!("{policy}: {name} has no note"));
                let want = if policy == "all" {
                    "statistics from all"
                } else {
                    "data-free"
                };
                assert!(note.contains(want), "{policy}: {name}: {note}");
            } else {
                assert!(
                    *tokens > 0,
                    "{policy}: layer {layer} expert {e} got no tokens: {ex:?}"
                );
            }
        }
        // The router is never compressed; every expert weight is quantized and finite.
        assert!(
            !r.to_string().contains("mlp.gate.weight"),
            "{policy}: the router was compressed"
        );
        let q = SafetensorsSource::open(&out.join("quantized.safetensors")).unwrap();
        let dense = SafetensorsSource::open(&out).unwrap();
        for (_, _, name, _, _) in &ex {
            let base = name.trim_end_matches(".weight");
            assert!(
                q.contains(&format!("{base}.qcodes")),
                "{policy}: {base} not quantized"
            );
            let w = dense.load(name).unwrap();
            assert!(w.data.iter().all(|v| v.is_finite()));
            assert_ne!(
                w.data,
                orig.load(name).unwrap().data,
                "{policy}: {name} left dense"
            );
            let distinct: std::collections::BTreeSet<u32> =
                w.data[..16].iter().map(|v| v.to_bits()).collect();
            assert!(
                distinct.len() <= 16,
                "{name}: more than 16 levels in a group of 16"
            );
        }
        for l in 0..LAYERS {
            let router = format!("model.layers.{l}.mlp.gate.weight");
            assert_eq!(
                dense.load(&router).unwrap().data,
                orig.load(&router).unwrap().data
            );
        }
        // The compressed directory loads and evaluates as a model.
        let m = ModelSource::open(&out).unwrap().load_all().unwrap();
        assert_eq!(m.layers.len(), LAYERS);
    }
}

#[test]
fn moe_exports_keep_every_expert_quantized() {
    let tmp = tempfile::tempdir().unwrap();
    let model = moe_dir(tmp.path());
    let calib = calib_text(tmp.path());
    let out = tmp.path().join("q");
    compress(&model, &calib, &out, &[]);
    let text = tmp.path().join("eval.txt");
    std::fs::write(
        &text,
        "some words to evaluate the model on, twice; some words to evaluate.",
    )
    .unwrap();
    let p_q = ppl16(&out, &text);
    // compressed-tensors: one packed weight per expert linear, the router dense and ignored
    let ct = tmp.path().join("ct");
    let (code, _, err) = shrink(&[
        "export",
        "-q",
        "--model",
        s(&out),
        "--format",
        "compressed-tensors",
        "--out",
        s(&ct),
    ]);
    assert_eq!(code, 0, "{err}");
    let st = SafetensorsSource::open(&ct).unwrap();
    let packed = st.names().filter(|n| n.ends_with(".weight_packed")).count();
    // per layer: q, k, v, o and 4 experts x 3
    assert_eq!(packed, LAYERS * (4 + EXPERTS * 3));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct.join("config.json")).unwrap()).unwrap();
    let ignore = cfg["quantization_config"]["ignore"].to_string();
    assert!(ignore.contains("model.layers.0.mlp.gate"), "{ignore}");
    assert!(
        (ppl16(&ct, &text) - p_q).abs() < 1e-3 * p_q,
        "compressed-tensors changes the model"
    );
    // GGUF: experts stacked into ffn_{gate,up,down}_exps, read back by shrink to the same model
    let gg = tmp.path().join("m.gguf");
    let (code, _, err) = shrink(&[
        "export",
        "-q",
        "--model",
        s(&out),
        "--format",
        "gguf",
        "--type",
        "Q8_0",
        "--tokenizer-pre",
        "gpt2",
        "--out",
        s(&gg),
    ]);
    assert_eq!(code, 0, "{err}");
    let f = shrink_model::gguf::GgufFile::open(&gg).unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "qwen3moe");
    assert_eq!(f.get_u64("qwen3moe.expert_count").unwrap(), EXPERTS as u64);
    let t = f.tensor("blk.1.ffn_down_exps.weight").unwrap();
    assert_eq!(t.shape_row_major(), vec![EXPERTS, H, FF]);
    assert!(f.tensor("blk.0.ffn_gate_inp.weight").is_some());
    let p_g = ppl16(&gg, &text);
    assert!(
        (p_g - p_q).abs() < 0.02 * p_q,
        "GGUF Q8_0 {p_g} vs compressed {p_q}"
    );
    // llama-quantize's MXFP4_MOE file type: the stacked experts MXFP4, everything else Q8_0;
    // ffn_down_exps rows (FF = 16) are not whole 32-blocks, so it falls back to F16 as
    // llama-quantize's tensor_type_fallback does
    let gm = tmp.path().join("mxfp4moe.gguf");
    let (code, _, err) = shrink(&[
        "export",
        "-q",
        "--model",
        s(&out),
        "--format",
        "gguf",
        "--type",
        "MXFP4_MOE",
        "--tokenizer-pre",
        "gpt2",
        "--out",
        s(&gm),
    ]);
    assert_eq!(code, 0, "{err}");
    let f = shrink_model::gguf::GgufFile::open(&gm).unwrap();
    assert_eq!(
        f.get("general.file_type").and_then(|v| v.as_u64()),
        Some(38)
    );
    for (name, want) in [
        ("blk.1.ffn_down_exps.weight", GgmlType::F16),
        ("blk.0.ffn_gate_exps.weight", GgmlType::MXFP4),
        ("blk.1.ffn_up_exps.weight", GgmlType::MXFP4),
        ("blk.0.attn_q.weight", GgmlType::Q8_0),
    ] {
        assert_eq!(f.tensor(name).unwrap().dtype, want, "{name}");
    }
    assert!(ppl16(&gm, &text).is_finite());
}

/// GPTQ codes on llama.cpp's Q4_0 grid (sym, groups of 32) are carried into the stacked expert
/// tensors `ffn_*_exps` as they are into the other linears: no expert is re-rounded by the GGUF
/// writer. transformers' tiny Mixtral fixture (expert d_in 64 and 32).
#[test]
fn stacked_expert_tensors_carry_gptq_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hf");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny("mixtral").join(f), src.join(f)).unwrap();
    }
    std::fs::write(src.join("tokenizer.json"), tokenizer_json(128)).unwrap();
    let calib = calib_text(tmp.path());
    let out = tmp.path().join("q");
    let (code, _, err) = shrink(&[
        "compress",
        "-q",
        "--model",
        s(&src),
        "--method",
        "gptq",
        "--bits",
        "4",
        "--group-size",
        "32",
        "--sym",
        "--calib",
        s(&calib),
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    let gg = tmp.path().join("m.gguf");
    let rep = tmp.path().join("export.json");
    let (code, _, err) = shrink(&[
        "export",
        "-q",
        "--model",
        s(&out),
        "--format",
        "gguf",
        "--type",
        "Q4_0",
        "--tokenizer-pre",
        "gpt-2",
        "--out",
        s(&gg),
        "--report",
        s(&rep),
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    let exps: Vec<&serde_json::Value> = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap().contains("_exps"))
        .collect();
    assert_eq!(exps.len(), 6, "2 layers x gate/up/down");
    for t in &exps {
        assert_eq!(t["ggml_type"], "Q4_0", "{t}");
        assert_eq!(t["carried_codes"], true, "{t}");
    }
    // carried codes: every expert weight read back from the GGUF differs from the compressed
    // model's only by the f16 rounding of its block scale (relative 2^-11); re-rounding onto
    // llama.cpp's own Q4_0 scale (max / -8) would move weights by up to half a step.
    let (q, g) = (
        ModelSource::open(&out).unwrap(),
        ModelSource::open(&gg).unwrap(),
    );
    let mut n = 0;
    for (l, e, w) in
        (0..2).flat_map(|l| (0..4).flat_map(move |e| ["w1", "w2", "w3"].map(|w| (l, e, w))))
    {
        let name = &format!("model.layers.{l}.block_sparse_moe.experts.{e}.{w}.weight");
        let (a, b) = (
            q.tensors.load(name).unwrap().data,
            g.tensors.load(name).unwrap().data,
        );
        assert_eq!(a.len(), b.len(), "{name}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= x.abs() * 1e-3 + 1e-12,
                "{name}: {x} vs {y}"
            );
        }
        n += 1;
    }
    assert_eq!(n, 2 * 4 * 3, "every expert linear compared");
}
