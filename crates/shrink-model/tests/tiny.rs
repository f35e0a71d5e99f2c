//! Tiny random-weight Llama, Qwen2 and Mistral models against transformers' logits
//! (fixtures from tools/reference/tiny_models.py).
mod common;
use common::*;
use shrink_model::layer::{LayerHook, NoHook, Rope};
use shrink_model::source::SafetensorsSource;
use shrink_model::{Model, ModelConfig, Role};

fn load(name: &str) -> Model {
    let dir = fixture(&format!("tiny/{name}"));
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let src = SafetensorsSource::open(&dir).unwrap();
    Model::load(&cfg, &src).unwrap()
}

/// Max abs difference of logits for both reference sequences; also checks the first layer alone.
fn check(name: &str, tol: f64) {
    let mut m = load(name);
    let refp = fixture(&format!("tiny/{name}/reference.safetensors"));
    let (shape, ids) = st_read(&refp, "input_ids");
    let (b, t) = (shape[0], shape[1]);
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let (_, want) = st_read(&refp, "logits");
    let hidden = m.hidden_states(&ids, b, t).unwrap();
    let got = m.logits(&hidden, b * t);
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{name}: max |logit diff| = {d:.2e}");
    assert!(d < tol, "{name}: logits differ from transformers by {d}");

    // Layer 0 alone on sequence 0.
    let (_, want_h) = st_read(&refp, "hidden_layer1");
    let mut x = m.embed(&ids[..t]).unwrap();
    let rope = Rope::new(&m.config, t);
    let cfg = m.config.clone();
    m.layers[0]
        .forward(&cfg, &rope, &mut x, 1, t, &mut NoHook)
        .unwrap();
    let d = x
        .iter()
        .zip(&want_h)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-4, "{name}: layer 0 output differs by {d}");
}

#[test]
fn llama_tied_llama3_rope_scaling() {
    check("llama", 1e-4);
}

#[test]
fn qwen2_biases_untied() {
    check("qwen2", 1e-4);
}

#[test]
fn mistral_untied() {
    check("mistral", 1e-4);
}

#[test]
fn llama_bf16_sharded_linear_rope() {
    check("llama_bf16_sharded", 1e-4);
}

#[test]
fn configs_parse_their_variants() {
    let c = load("qwen2").config;
    assert!(c.qkv_bias && !c.o_bias && !c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 1e6);
    let l = load("llama").config;
    assert!(l.tie_word_embeddings);
    assert!(matches!(
        l.rope_scaling,
        Some(shrink_model::RopeScaling::Llama3 { .. })
    ));
    let s = load("llama_bf16_sharded").config;
    assert_eq!(
        s.rope_scaling,
        Some(shrink_model::RopeScaling::Linear { factor: 2.0 })
    );
}

/// The hook sees every group's input in true-sequential order with the right widths, and a
/// change it makes to a group's weights takes effect for that same forward pass.
#[test]
fn hook_sees_group_inputs_in_order_and_can_edit_weights() {
    struct Rec(Vec<(String, usize, usize)>, bool);
    impl LayerHook for Rec {
        fn before_group(
            &mut self,
            layer: &mut shrink_model::DecoderLayer,
            g: usize,
            input: &[f32],
            rows: usize,
        ) -> anyhow::Result<()> {
            let label = layer.layout.group_label(g);
            self.0.push((label.clone(), rows, input.len() / rows));
            if self.1 && label == "down_proj" {
                layer.linear_mut(Role::Down).weight.data.fill(0.0);
            }
            Ok(())
        }
    }
    let mut m = load("qwen2");
    let cfg = m.config.clone();
    let rope = Rope::new(&cfg, 8);
    let x0 = m.embed(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let mut rec = Rec(vec![], false);
    let mut x = x0.clone();
    m.layers[0]
        .forward(&cfg, &rope, &mut x, 2, 4, &mut rec)
        .unwrap();
    let q = cfg.num_heads * cfg.head_dim;
    assert_eq!(
        rec.0,
        vec![
            ("q_proj/k_proj/v_proj".to_string(), 8, 64),
            ("o_proj".to_string(), 8, q),
            ("gate_proj/up_proj".to_string(), 8, 64),
            ("down_proj".to_string(), 8, cfg.intermediate_size)
        ]
    );
    let mut zeroed = Rec(vec![], true);
    let mut y = x0.clone();
    m.layers[0]
        .forward(&cfg, &rope, &mut y, 2, 4, &mut zeroed)
        .unwrap();
    assert_ne!(x, y, "zeroing down_proj in the hook must change the output");
}

/// The dense MLP computes gate and up a slice of rows at a time (so that only the down
/// projection's input is whole); slices of a few rows give the same layer output as one slice,
/// with separate gate/up (Llama, Gemma 3's GeGLU) and fused gate_up (Phi-3) linears, over
/// several sequences.
#[test]
fn chunked_mlp_equals_whole_mlp() {
    use shrink_model::layer::with_mlp_chunk_elems;
    for name in ["llama", "gemma3", "phi3"] {
        let m = load(name);
        let cfg = m.config.clone();
        let (b, t) = (3, 11);
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % 50 + 1) as u32).collect();
        let x0 = m.embed(&ids).unwrap();
        let rope = Rope::new(&cfg, t);
        let run = |elems: usize| {
            let mut layer = load(name).layers.swap_remove(0);
            let mut x = x0.clone();
            with_mlp_chunk_elems(elems, || {
                layer
                    .forward(&cfg, &rope, &mut x, b, t, &mut NoHook)
                    .unwrap()
            });
            x
        };
        let whole = run(usize::MAX);
        let inter = cfg.intermediate_size;
        for rows in [1, 4, 7] {
            let sliced = run(rows * inter);
            let d = whole
                .iter()
                .zip(&sliced)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let scale = whole.iter().map(|v| v.abs()).fold(0f32, f32::max);
            assert!(
                d <= 1e-5 * scale,
                "{name}: {rows}-row slices differ from the whole MLP by {d} (scale {scale})"
            );
        }
    }
}
