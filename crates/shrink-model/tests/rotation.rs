//! Rotations (QuaRot R1 / SpinQuant R2, `shrink_model::rotation`): the rotated model's logits
//! equal the original's on the tiny fixtures of every rotatable family (tied and untied heads,
//! q/k/v biases, q/k norms, fused linears, MoE routers, a GGUF source), the Hadamard
//! constructions satisfy `H Hᵀ = n I`, and the refusals name the problem.
mod common;
use common::*;
use shrink_model::gguf::GgufFile;
use shrink_model::rotation::{
    hadamard, hadamard_exists, orthogonal, RotatedView, Rotation, RotationKind,
};
use shrink_model::source::{config_from_gguf, GgufSource, SafetensorsSource};
use shrink_model::{arch, Model, ModelConfig, ModelSource, TensorSource};

fn hf(name: &str) -> (ModelConfig, SafetensorsSource) {
    let dir = fixture(&format!("tiny/{name}"));
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    (cfg, SafetensorsSource::open(&dir).unwrap())
}

fn ids(name: &str) -> (Vec<u32>, usize, usize) {
    let refp = fixture(&format!("tiny/{name}/reference.safetensors"));
    let (shape, ids) = st_read(&refp, "input_ids");
    (ids.iter().map(|&x| x as u32).collect(), shape[0], shape[1])
}

fn logits(cfg: &ModelConfig, src: &dyn TensorSource, ids: &[u32], b: usize, t: usize) -> Vec<f32> {
    let mut m = Model::load(cfg, src).unwrap();
    let h = m.hidden_states(ids, b, t).unwrap();
    m.logits(&h, b * t)
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}

/// Rotates fixture `name` with each kind (R1 + R2, and R1 alone) and compares the logits of the
/// reference sequences; returns the largest max |diff|.
fn check_family(name: &str) -> f64 {
    let (cfg, _) = hf(name);
    let (ids, b, t) = ids(name);
    let want = logits(&cfg, &hf(name).1, &ids, b, t);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let mut worst = 0f64;
    for kind in [RotationKind::Hadamard, RotationKind::RandomOrthogonal] {
        for r2 in [true, false] {
            let rot = Rotation { kind, seed: 7, r2 };
            let view = RotatedView::new(Box::new(hf(name).1), &cfg, rot).unwrap();
            let rcfg = view.config();
            assert!(
                !rcfg.tie_word_embeddings,
                "{name}: the rotated head is untied"
            );
            assert!(view.contains(arch::HF_LM_HEAD));
            // the weights really change: the embedding is rotated
            let e0 = hf(name).1.load_rows(arch::HF_EMBED, &[1]).unwrap();
            let e1 = view.load_rows(arch::HF_EMBED, &[1]).unwrap();
            assert!(max_abs(&e0, &e1) > 1e-3, "{name}: embedding unchanged");
            let got = logits(&rcfg, &view, &ids, b, t);
            let d = max_abs(&got, &want);
            eprintln!(
                "{name} {} r2={r2}: max |logit diff| = {d:.2e} (max |logit| {scale:.2})",
                kind.name()
            );
            assert!(d < 1e-4, "{name} {kind:?} r2={r2}: logits differ by {d}");
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn llama_tied_head() {
    let (cfg, _) = hf("llama");
    assert!(cfg.tie_word_embeddings);
    check_family("llama");
}

#[test]
fn mistral_untied_head() {
    let (cfg, _) = hf("mistral");
    assert!(!cfg.tie_word_embeddings);
    check_family("mistral");
}

#[test]
fn qwen2_qkv_biases() {
    let (cfg, _) = hf("qwen2");
    assert!(cfg.qkv_bias);
    check_family("qwen2");
}

/// Qwen3's per-head q/k RMSNorm acts on q = x W_qᵀ, which R1 leaves unchanged: exact.
#[test]
fn qwen3_qk_norm_survives_r1() {
    check_family("qwen3");
}

#[test]
fn phi3_fused_qkv_and_gate_up() {
    check_family("phi3");
}

/// The router reads the normed stream: another reader, rotated like gate/up.
#[test]
fn moe_routers_are_readers() {
    check_family("mixtral");
    check_family("qwen3_moe_sparse");
    check_family("olmoe");
}

/// A GGUF source (q/k rows un-permuted on load): rotation works on the Hugging Face layout the
/// source serves.
#[test]
fn gguf_source() {
    let f = GgufFile::open(&fixture("tiny/llama/model.f32.gguf")).unwrap();
    let cfg = config_from_gguf(&f).unwrap();
    let (ids, b, t) = ids("llama");
    let want = logits(&cfg, &GgufSource::new(f, &cfg), &ids, b, t);
    let f = GgufFile::open(&fixture("tiny/llama/model.f32.gguf")).unwrap();
    let rot = Rotation::new(RotationKind::Hadamard);
    let view = RotatedView::new(Box::new(GgufSource::new(f, &cfg)), &cfg, rot).unwrap();
    let got = logits(&view.config(), &view, &ids, b, t);
    let d = max_abs(&got, &want);
    eprintln!("llama GGUF hadamard: max |logit diff| = {d:.2e}");
    assert!(d < 1e-4);
}

/// Gemma 3's sandwich norms (a weighted norm on each block's output) are refused.
#[test]
fn gemma3_is_refused() {
    let (cfg, src) = hf("gemma3");
    let e = RotatedView::new(Box::new(src), &cfg, Rotation::new(RotationKind::Hadamard))
        .err()
        .expect("gemma3 must be refused");
    let m = format!("{e:#}");
    eprintln!("{m}");
    assert!(
        m.contains("gemma3_text") && m.contains("post_attention_layernorm"),
        "{m}"
    );
    assert!(m.contains("sandwich"), "{m}");
}

#[test]
fn hadamard_sizes() {
    // Sylvester, Paley I (20, 24, 44), Paley II (12, 28, 36), products (144 = 12·12, 576 =
    // 12·12·4, SmolLM2's hidden size; 1536, 896, 640 of Qwen2.5 / Gemma 3)
    for n in [
        1, 2, 4, 8, 64, 256, 12, 20, 24, 28, 36, 44, 144, 240, 576, 640, 896, 1536,
    ] {
        let h = hadamard(n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let d: i32 = (0..n)
                    .map(|k| h[i * n + k] as i32 * h[j * n + k] as i32)
                    .sum();
                assert_eq!(
                    d,
                    if i == j { n as i32 } else { 0 },
                    "order {n}: (H Hᵀ)[{i},{j}]"
                );
            }
        }
    }
    for n in [6, 10, 30, 92, 3, 9] {
        assert!(!hadamard_exists(n), "{n}");
    }
}

#[test]
fn rotations_are_orthogonal() {
    for (kind, n) in [
        (RotationKind::Hadamard, 576),
        (RotationKind::Hadamard, 64),
        (RotationKind::RandomOrthogonal, 50),
        (RotationKind::RandomOrthogonal, 576),
    ] {
        let q = orthogonal(kind, n, 3).unwrap();
        let p = &q * q.transpose();
        let mut d = 0f64;
        for i in 0..n {
            for j in 0..n {
                d = d.max((p[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        eprintln!("{kind:?} {n}: max |Q Qᵀ - I| = {d:.2e}");
        assert!(d < 1e-12, "{kind:?} {n}: {d}");
        // seeded: the same seed gives the same matrix, another seed another one
        let q2 = orthogonal(kind, n, 3).unwrap();
        assert_eq!(q, q2);
        let q3 = orthogonal(kind, n, 4).unwrap();
        assert_ne!(q, q3);
    }
}

#[test]
fn sizes_without_a_construction_are_refused() {
    let e = hadamard(92).unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.contains("order 92") && e.contains("88 and 96"), "{e}");
    assert!(e.contains("random-orthogonal"), "{e}");
    let (mut cfg, src) = hf("llama");
    cfg.hidden_size = 92;
    let e = RotatedView::new(Box::new(src), &cfg, Rotation::new(RotationKind::Hadamard))
        .err()
        .unwrap();
    let m = format!("{e:#}");
    assert!(m.contains("hidden size 92"), "{m}");
    let (mut cfg, src) = hf("llama");
    cfg.head_dim = 10;
    let e = RotatedView::new(Box::new(src), &cfg, Rotation::new(RotationKind::Hadamard))
        .err()
        .unwrap();
    let m = format!("{e:#}");
    assert!(m.contains("head_dim 10"), "{m}");
    let e = RotationKind::parse("givens").unwrap_err().to_string();
    assert!(e.contains("hadamard or random-orthogonal"), "{e}");
}

/// The default model (SmolLM2-135M, hidden 576 = 12·12·4, head_dim 64, tied head) through
/// `ModelSource::rotated`: same logits on a short text, untied head.
#[test]
fn default_model_rotated() {
    let Some(p) = fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let src = ModelSource::open(&p).unwrap();
    assert!(src.config.tie_word_embeddings);
    let ids = src
        .tokenizer
        .encode("The capital of France is Paris, and", false)
        .unwrap();
    let t = ids.len();
    let want = logits(&src.config, src.tensors.as_ref(), &ids, 1, t);
    let rot = ModelSource::open(&p)
        .unwrap()
        .rotated(&Rotation::new(RotationKind::Hadamard))
        .unwrap();
    assert!(!rot.config.tie_word_embeddings);
    let got = logits(&rot.config, rot.tensors.as_ref(), &ids, 1, t);
    let d = max_abs(&got, &want);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    eprintln!("SmolLM2-135M hadamard R1+R2: max |logit diff| = {d:.2e} over {t} tokens (max |logit| {scale:.1})");
    assert!(d < 2e-3 * scale.max(1.0), "{d}");
}
