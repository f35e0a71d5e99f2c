//! Helpers shared by the CLI integration tests: run the binary, write tiny models.
#![allow(dead_code)]
use shrink_model::gguf::{GgmlType, GgufValue, GgufWriter};
use shrink_model::source::{SafetensorsSource, TensorSource};
use shrink_model::tokenizer::bytes_to_unicode;
use shrink_model::{arch, ModelConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../shrink-model/tests/common.rs"]
mod model_common;
/// A fetched file under the repository root, or None (skip) outside CI.
#[allow(unused_imports)]
pub use model_common::fetched;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
/// A path as the `&str` argument of a command.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn tiny(name: &str) -> PathBuf {
    root().join("tests/fixtures/tiny").join(name)
}

pub fn shrink(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shrink"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs shrink expecting a clean failure whose message contains every `needle`.
pub fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let (code, _, err) = shrink(args);
    assert_eq!(
        code, 1,
        "expected exit code 1 for {args:?}, got {code}; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr for {args:?} lacks {n:?}: {err}");
    }
    err
}

/// A byte-level BPE tokenizer.json of 128 single-byte tokens (bytes 0..127), no merges.
pub fn tokenizer_json(n: usize) -> String {
    let sp = bytes_to_unicode();
    let vocab: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|b| (sp[b % 256].to_string(), (b as u64).into()))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// A Hugging Face directory: the tiny Llama fixture plus a tokenizer.
pub fn hf_dir(dir: &Path) -> PathBuf {
    let d = dir.join("hf");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny("llama").join(f), d.join(f)).unwrap();
    }
    std::fs::write(d.join("tokenizer.json"), tokenizer_json(128)).unwrap();
    d
}

/// llama.cpp's q/k row permutation (convert_hf_to_gguf.py `permute`), the inverse of what
/// shrink undoes when reading.
pub fn permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let d = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..d {
                let hf = h * 2 * d + j * d + i;
                let gg = h * 2 * d + 2 * i + j;
                out[gg * cols..(gg + 1) * cols].copy_from_slice(&w[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

/// A GGUF file of the tiny Mistral fixture (untied head; F32 tensors, q/k permuted as llama.cpp
/// stores them for its "llama" architecture, a byte-level BPE tokenizer in the metadata).
pub fn gguf_file(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    gguf_of(&tiny("mistral"), &p);
    p
}

/// Writes the model of Hugging Face directory `hf` (config.json and safetensors) as the GGUF
/// file `out`, with a tokenizer of `vocab_size` (at most 256) single-byte tokens.
pub fn gguf_of(hf: &Path, out: &Path) {
    let src = SafetensorsSource::open(hf).unwrap();
    let cfg = ModelConfig::from_hf_file(&hf.join("config.json")).unwrap();
    let n_tokens = cfg.vocab_size.min(256);
    let mut w = GgufWriter::new();
    let u = |x: usize| GgufValue::U32(x as u32);
    w.add_metadata("general.architecture", GgufValue::String("llama".into()));
    w.add_metadata("llama.block_count", u(cfg.num_layers));
    w.add_metadata("llama.embedding_length", u(cfg.hidden_size));
    w.add_metadata("llama.feed_forward_length", u(cfg.intermediate_size));
    w.add_metadata("llama.attention.head_count", u(cfg.num_heads));
    w.add_metadata("llama.attention.head_count_kv", u(cfg.num_kv_heads));
    w.add_metadata(
        "llama.rope.freq_base",
        GgufValue::F32(cfg.rope_theta as f32),
    );
    w.add_metadata(
        "llama.attention.layer_norm_rms_epsilon",
        GgufValue::F32(cfg.rms_norm_eps as f32),
    );
    w.add_metadata("llama.context_length", u(64));
    w.add_metadata("tokenizer.ggml.model", GgufValue::String("gpt2".into()));
    let sp = bytes_to_unicode();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        GgufValue::Array(
            (0..n_tokens)
                .map(|b| GgufValue::String(sp[b].to_string()))
                .collect(),
        ),
    );
    w.add_metadata(
        "tokenizer.ggml.token_type",
        GgufValue::Array((0..n_tokens).map(|_| GgufValue::I32(1)).collect()),
    );
    w.add_metadata("tokenizer.ggml.merges", GgufValue::Array(vec![]));
    for name in arch::hf_tensor_names(&cfg) {
        let t = src.load(&name).unwrap();
        let (rows, cols) = t.dims2();
        let data = if name.contains("q_proj") {
            permute(&t.data, rows, cols, cfg.num_heads)
        } else if name.contains("k_proj") {
            permute(&t.data, rows, cols, cfg.num_kv_heads)
        } else {
            t.data.clone()
        };
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor(
            arch::hf_to_gguf(&cfg, &name).unwrap().name,
            dims,
            GgmlType::F32,
            bytes,
        )
        .unwrap();
    }
    w.write(out).unwrap();
}

pub fn calib_text(dir: &Path) -> PathBuf {
    let p = dir.join("calib.txt");
    let text: String = (0..400)
        .map(|i| {
            format!(
                "sample {i} of calibration text, with words and numbers {}. ",
                i * 7 % 13
            )
        })
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

pub fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// A copy of the HF directory `model` at `out` with every value of tensor `name` set to `value`.
pub fn scaled_copy(model: &Path, out: &Path, name: &str, value: f32) -> PathBuf {
    std::fs::create_dir(out).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), out.join(f)).unwrap();
    }
    let st = SafetensorsSource::open(model).unwrap();
    let names: Vec<(String, Vec<usize>)> = st
        .names()
        .map(|n| (n.to_string(), st.info(n).unwrap().1))
        .collect();
    shrink_formats::write_safetensors(
        &out.join("model.safetensors"),
        &names,
        &Default::default(),
        &mut |i| {
            let mut t = st.load(&names[i].0).unwrap();
            if names[i].0 == name {
                t.data.iter_mut().for_each(|v| *v = value);
            }
            Ok(t)
        },
    )
    .unwrap();
    out.to_path_buf()
}

/// A deterministic pseudo-random number in [-1, 1).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Changes a tensor's values before it is written: (name, shape, values).
pub type TensorEdit<'a> = &'a mut dyn FnMut(&str, &[usize], &mut Vec<f32>);

/// A Hugging Face directory `dir/name` of random weights (seeded) for the family that `config`
/// describes, with every tensor the family's table lists, a 128-token byte-level tokenizer, and
/// `edit(name, shape, values)` applied to each tensor before it is written. Norm weights are
/// 1 + 0.1 N (0.1 N for families whose norms scale by 1 + w), the rest 0.3 U(-1, 1).
pub fn synthetic_dir(
    dir: &Path,
    name: &str,
    config: &serde_json::Value,
    edit: TensorEdit,
) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    std::fs::write(d.join("tokenizer.json"), tokenizer_json(128)).unwrap();
    let c = ModelConfig::from_hf_file(&d.join("config.json")).unwrap();
    let one_plus = c.arch.norm_style == arch::NormStyle::OnePlus;
    let names: Vec<(String, Vec<usize>)> = arch::tensor_table(&c)
        .into_iter()
        .map(|e| (e.hf, e.shape))
        .collect();
    let mut rng = Lcg(7);
    shrink_formats::write_safetensors(
        &d.join("model.safetensors"),
        &names,
        &Default::default(),
        &mut |i| {
            let (name, shape) = &names[i];
            let n: usize = shape.iter().product();
            let base = if one_plus { 0.0 } else { 1.0 };
            let mut v: Vec<f32> = if name.ends_with("norm.weight") {
                (0..n).map(|_| base + 0.1 * rng.next()).collect()
            } else {
                (0..n).map(|_| 0.3 * rng.next()).collect()
            };
            edit(name, shape, &mut v);
            Ok(shrink_model::Tensor::new(shape.clone(), v))
        },
    )
    .unwrap();
    d
}

/// `shrink eval --seqlen 16 --json` of `model` on `text`: the perplexity (the run must succeed).
pub fn ppl16(model: &Path, text: &Path) -> f64 {
    ppl_at(model, text, "16")
}

/// `shrink eval --seqlen SEQLEN --json` of `model` on `text`: the perplexity (the run must
/// succeed).
pub fn ppl_at(model: &Path, text: &Path, seqlen: &str) -> f64 {
    eval_json(model, text, seqlen, &[])["perplexity"]
        .as_f64()
        .unwrap()
}

/// `shrink eval --seqlen SEQLEN --json` of `model` on `text` with `extra` flags: its JSON line
/// (the run must succeed).
pub fn eval_json(model: &Path, text: &Path, seqlen: &str, extra: &[&str]) -> serde_json::Value {
    let mut a = vec![
        "eval",
        "-q",
        "--model",
        s(model),
        "--text",
        s(text),
        "--seqlen",
        seqlen,
        "--json",
    ];
    a.extend_from_slice(extra);
    let (code, out, err) = shrink(&a);
    assert_eq!(code, 0, "{a:?}: {err}");
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

/// A 6-layer random Llama whose layers `identity` add nothing to the residual stream (o_proj
/// and down_proj zero): their input equals their output (layer dropping and merging tests).
pub fn llama6(t: &Path, name: &str, identity: &[usize]) -> PathBuf {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny("llama").join("config.json")).unwrap())
            .unwrap();
    cfg["num_hidden_layers"] = 6.into();
    // plain rope, so that the GGUF export (no rope_freqs tensor) applies
    cfg["rope_scaling"] = serde_json::Value::Null;
    cfg.as_object_mut().unwrap().remove("rope_parameters");
    synthetic_dir(t, name, &cfg, &mut |n, _, v| {
        for &i in identity {
            if n == format!("model.layers.{i}.self_attn.o_proj.weight")
                || n == format!("model.layers.{i}.mlp.down_proj.weight")
            {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
        }
    })
}

/// `n` token ids of the tiny models' 128-token vocabulary.
pub fn token_ids(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % 128) as u32).collect()
}

/// Logits of a loaded model on `ids` (one sequence).
pub fn model_logits(m: &mut shrink_model::Model, ids: &[u32]) -> Vec<f32> {
    let h = m.hidden_states(ids, 1, ids.len()).unwrap();
    m.logits(&h, ids.len())
}
