//! The families of the architecture table against transformers 5 (fixtures from
//! tools/reference/tiny_models.py: tiny random-weight Qwen3, Gemma 3, Phi-3, Qwen3-MoE and
//! Mixtral models and their logits, hidden states and MoE routing), and their GGUF copies made by
//! llama.cpp's own converter (tools/reference/tiny_gguf.py).
mod common;
use common::*;
use shrink_model::arch::NormSlot;
use shrink_model::gguf::GgufFile;
use shrink_model::layer::{LayerHook, NoHook, Rope};
use shrink_model::source::{config_from_gguf, GgufSource, SafetensorsSource};
use shrink_model::{arch, DecoderLayer, Model, ModelConfig, Role, RopeScaling, TensorSource};

fn hf(name: &str) -> (ModelConfig, SafetensorsSource) {
    let dir = fixture(&format!("tiny/{name}"));
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    (cfg, SafetensorsSource::open(&dir).unwrap())
}

fn gguf(name: &str) -> (ModelConfig, GgufSource) {
    let f = GgufFile::open(&fixture(&format!("tiny/{name}/model.f32.gguf"))).unwrap();
    let cfg = config_from_gguf(&f).unwrap();
    let src = GgufSource::new(f, &cfg);
    (cfg, src)
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// shrink's logits of the reference token ids `ids_key` and transformers' `logits_key`.
fn logits_of(
    name: &str,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    ids_key: &str,
    logits_key: &str,
) -> (Vec<f32>, Vec<f64>) {
    let refp = fixture(&format!("tiny/{name}/reference.safetensors"));
    let mut m = Model::load(cfg, src).unwrap();
    let (shape, ids) = st_read(&refp, ids_key);
    let (b, t) = (shape[0], shape[1]);
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let (_, want) = st_read(&refp, logits_key);
    let hidden = m.hidden_states(&ids, b, t).unwrap();
    (m.logits(&hidden, b * t), want)
}

/// Logits of the reference sequences `ids_key` against transformers' `logits_key`: max |diff|
/// below 1e-4, top-1 identical at every position; returns the max |diff|.
fn check_logits(
    name: &str,
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    ids_key: &str,
    logits_key: &str,
) -> f64 {
    let (got, want) = logits_of(name, cfg, src, ids_key, logits_key);
    let d = max_diff(&got, &want);
    eprintln!("{name}: max |{logits_key} diff| = {d:.2e}");
    assert!(
        d < 1e-4,
        "{name}: {logits_key} differ from transformers by {d}"
    );
    let v = cfg.vocab_size;
    for r in 0..got.len() / v {
        let am = |x: &mut dyn Iterator<Item = f64>| {
            x.enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0
        };
        let g = am(&mut got[r * v..(r + 1) * v].iter().map(|x| *x as f64));
        let w = am(&mut want[r * v..(r + 1) * v].iter().copied());
        assert_eq!(g, w, "{name}: top-1 of {logits_key} differs at row {r}");
    }
    d
}

/// Logits of both reference sequences and every layer's output of sequence 0 against
/// transformers; top-1 identical at every position.
fn check(name: &str, cfg: &ModelConfig, src: &dyn TensorSource) {
    let refp = fixture(&format!("tiny/{name}/reference.safetensors"));
    let mut m = Model::load(cfg, src).unwrap();
    let (shape, ids) = st_read(&refp, "input_ids");
    let t = shape[1];
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    check_logits(name, cfg, src, "input_ids", "logits");
    if matches!(name, "qwen2" | "llama") {
        return; // the older fixtures have no per-layer hidden states
    }
    // hidden_states[l + 1] = output of layer l (the last one after the final norm)
    let (hs, want_h) = st_read(&refp, "hidden_states");
    let h = cfg.hidden_size;
    let mut x = m.embed(&ids[..t]).unwrap();
    assert!(max_diff(&x, &want_h[..t * h]) < 1e-5, "{name}: embedding");
    let rope = Rope::new(cfg, t);
    let n = m.layers.len();
    let (_, last_raw) = st_read(&refp, "hidden_last_layer_raw");
    for (l, layer) in m.layers.iter_mut().enumerate() {
        layer
            .forward(cfg, &rope, &mut x, 1, t, &mut NoHook)
            .unwrap();
        let want_l = if l + 1 == n {
            &last_raw[..]
        } else {
            &want_h[(l + 1) * t * h..(l + 2) * t * h]
        };
        let d = max_diff(&x, want_l);
        assert!(d < 1e-4, "{name}: layer {l} output differs by {d}");
    }
    assert_eq!(hs[0], n + 1);
}

#[test]
fn qwen3_qk_norm_explicit_head_dim() {
    let (c, s) = hf("qwen3");
    assert_eq!((c.head_dim, c.num_heads * c.head_dim), (32, 128));
    check("qwen3", &c, &s);
}

#[test]
fn gemma3_sandwich_norms_sliding_window_two_ropes() {
    let (c, s) = hf("gemma3");
    assert_eq!(c.sliding_layers, vec![true, true, false, true]);
    assert_eq!((c.sliding_window, c.rope_local_theta), (Some(8), Some(1e4)));
    assert_eq!(c.query_pre_attn_scalar, Some(24.0));
    check("gemma3", &c, &s);
}

#[test]
fn gemma3_final_softcap_and_per_type_rope_parameters() {
    let (c, s) = hf("gemma3_softcap");
    assert!(c.final_softcap.is_some());
    // transformers' Gemma 3 ignores attn_logit_softcapping; so does shrink
    assert_eq!(c.attn_softcap, None);
    assert_eq!(c.rope_local_theta, Some(1e4));
    check("gemma3_softcap", &c, &s);
}

#[test]
fn phi3_fused_qkv_and_gate_up() {
    let (c, s) = hf("phi3");
    let lay = arch::layer_layout(&c, 0);
    assert_eq!(lay.linears.len(), 4, "qkv, o, gate_up, down");
    assert_eq!(lay.groups.len(), 4);
    check("phi3", &c, &s);
}

#[test]
fn phi3_partial_rotary() {
    let (c, s) = hf("phi3_partial");
    assert_eq!(c.rotary_dim * 2, c.head_dim);
    check("phi3_partial", &c, &s);
}

/// Phi-3's LongRoPE (tools/reference/tiny_models.py `phi3_longrope`: original length 32,
/// max 128, random short and long factors for the 6 frequencies of a 12-dim partial rotary,
/// attention factor derived): the 24-token sequences use the short factors, the
/// 48-token ones the long factors, both with cos and sin scaled, as in transformers; the same
/// from llama.cpp's converter's GGUF (`rope_factors_long` / `rope_factors_short` tensors,
/// `phi3.rope.scaling.attn_factor`).
#[test]
fn phi3_longrope_short_and_long_factors() {
    let (c, s) = hf("phi3_longrope");
    let Some(RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings,
        attention_factor,
    }) = &c.rope_scaling
    else {
        panic!("not LongRoPE: {:?}", c.rope_scaling)
    };
    assert_eq!(
        (c.rotary_dim, short_factor.len(), long_factor.len()),
        (12, 6, 6)
    );
    assert_eq!(
        (*original_max_position_embeddings, c.max_position_embeddings),
        (32, 128)
    );
    // transformers' derived attention_scaling (the fixture's metadata): sqrt(1 + ln 4 / ln 32)
    assert!(
        (attention_factor - 1.1832159566199232).abs() < 1e-15,
        "{attention_factor}"
    );
    let short = check_logits("phi3_longrope", &c, &s, "input_ids", "logits");
    let long = check_logits("phi3_longrope", &c, &s, "input_ids_long", "logits_long");
    check("phi3_longrope", &c, &s);
    eprintln!("phi3_longrope (HF): short {short:.2e}, long {long:.2e}");

    // The comparison tells the factors apart: without the switch (short factors at 48 tokens
    // too), or without the attention factor, the long logits are far off.
    for (what, scaling) in [
        (
            "no switch",
            RopeScaling::LongRope {
                short_factor: short_factor.clone(),
                long_factor: short_factor.clone(),
                original_max_position_embeddings: 32,
                attention_factor: *attention_factor,
            },
        ),
        (
            "no attention factor",
            RopeScaling::LongRope {
                short_factor: short_factor.clone(),
                long_factor: long_factor.clone(),
                original_max_position_embeddings: 32,
                attention_factor: 1.0,
            },
        ),
    ] {
        let mut wrong = c.clone();
        wrong.rope_scaling = Some(scaling);
        let (got, want) = logits_of("phi3_longrope", &wrong, &s, "input_ids_long", "logits_long");
        let d = max_diff(&got, &want);
        eprintln!("phi3_longrope with {what}: max |logits_long diff| = {d:.2e}");
        assert!(
            d > 0.05,
            "{what}: the long logits do not depend on it ({d})"
        );
    }

    // llama.cpp's converter's GGUF of the same model
    let (gc, gs) = gguf("phi3_longrope");
    assert_eq!(gc.layer_layouts(), c.layer_layouts());
    let Some(RopeScaling::LongRope {
        short_factor: gs_short,
        long_factor: gs_long,
        original_max_position_embeddings: g_orig,
        attention_factor: g_att,
    }) = &gc.rope_scaling
    else {
        panic!("GGUF: not LongRoPE: {:?}", gc.rope_scaling)
    };
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    assert_eq!(f32s(gs_short), f32s(short_factor));
    assert_eq!(f32s(gs_long), f32s(long_factor));
    assert_eq!(*g_orig, 32);
    assert_eq!(*g_att as f32, *attention_factor as f32);
    let short = check_logits("phi3_longrope", &gc, &gs, "input_ids", "logits");
    let long = check_logits("phi3_longrope", &gc, &gs, "input_ids_long", "logits_long");
    eprintln!("phi3_longrope (GGUF): short {short:.2e}, long {long:.2e}");
}

/// LongRoPE in config.json: the transformers 5 form (`rope_parameters` with its own
/// original_max_position_embeddings, which a top-level one overrides), an explicit
/// attention_factor or `factor`, and one set of factors with attention factor 1 read as plain
/// per-frequency factors.
#[test]
fn longrope_config_forms() {
    let dir = fixture("tiny/phi3_longrope");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let read = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        edit(&mut v);
        ModelConfig::from_hf_json(&v, "config.json")
            .unwrap()
            .rope_scaling
            .unwrap()
    };
    let parts = |r: RopeScaling| match r {
        RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        } => (original_max_position_embeddings, attention_factor),
        other => panic!("{other:?}"),
    };
    let derived = |factor: f64, orig: f64| (1.0 + factor.ln() / orig.ln()).sqrt();
    assert_eq!(parts(read(&|_| {})), (32, derived(4.0, 32.0)));
    // transformers 5 style: rope_parameters, no rope_scaling
    let t5 = read(&|v| {
        let mut p = v["rope_scaling"].clone();
        p["rope_type"] = "longrope".into();
        p["rope_theta"] = 10000.0.into();
        p["original_max_position_embeddings"] = 32.into();
        v["rope_parameters"] = p;
        v.as_object_mut().unwrap().remove("rope_scaling");
    });
    assert_eq!(t5, read(&|_| {}));
    // Phi3Config: the top-level field wins (default 4096 when absent)
    assert_eq!(
        parts(read(&|v| {
            v["rope_scaling"]["original_max_position_embeddings"] = 64.into();
        }))
        .0,
        32
    );
    let no_top = read(&|v| {
        v.as_object_mut()
            .unwrap()
            .remove("original_max_position_embeddings");
    });
    assert_eq!(parts(no_top), (4096, 1.0), "128 / 4096 <= 1: no scaling");
    // another family: the rope parameters' own value, else max_position_embeddings
    let llama = |orig: Option<u64>| {
        read(&|v| {
            v["model_type"] = "llama".into();
            v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
            v["partial_rotary_factor"] = serde_json::Value::Null;
            v["head_dim"] = 12.into();
            v.as_object_mut()
                .unwrap()
                .remove("original_max_position_embeddings");
            if let Some(o) = orig {
                v["rope_scaling"]["original_max_position_embeddings"] = o.into();
            }
        })
    };
    assert_eq!(parts(llama(Some(16))), (16, derived(8.0, 16.0)));
    assert_eq!(parts(llama(None)), (128, 1.0));
    // explicit attention_factor; factor instead of the ratio
    assert_eq!(
        parts(read(&|v| v["rope_scaling"]["attention_factor"] = 1.5.into())).1,
        1.5
    );
    assert_eq!(
        parts(read(&|v| v["rope_scaling"]["factor"] = 16.0.into())).1,
        derived(16.0, 32.0)
    );
    // Phi3Config's older names of longrope
    assert_eq!(
        read(&|v| v["rope_scaling"]["type"] = "su".into()),
        read(&|_| {})
    );
    // one set of factors, attention factor 1: plain per-frequency factors
    let one = read(&|v| {
        v["rope_scaling"]["long_factor"] = v["rope_scaling"]["short_factor"].clone();
        v["rope_scaling"]["attention_factor"] = 1.0.into();
    });
    assert!(matches!(one, RopeScaling::Factors { .. }), "{one:?}");
    // config.json written back reads as the same scaling
    let c = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let written = c.to_hf_json();
    let again = ModelConfig::from_hf_json(&written, "written").unwrap();
    assert_eq!(again.rope_scaling, c.rope_scaling);
    assert_eq!(again.rotary_dim, c.rotary_dim);
    assert_eq!(written["original_max_position_embeddings"], 32);
    // Phi3Config's default pad_token_id 32000 is outside a 128-token vocabulary (transformers
    // refuses to build the embedding): written as null
    assert_eq!(
        written.get("pad_token_id"),
        Some(&serde_json::Value::Null),
        "{written}"
    );
}

#[test]
fn qwen3_moe_with_a_dense_layer() {
    let (c, s) = hf("qwen3_moe");
    let m = c.moe.as_ref().unwrap();
    assert_eq!(
        (m.num_experts, m.top_k, m.dense_layers.clone()),
        (4, 2, vec![1])
    );
    assert!(arch::layer_layout(&c, 1).find(Role::Router).is_none());
    check("qwen3_moe", &c, &s);
    routing("qwen3_moe", &c, &s);
}

#[test]
fn mixtral_top2() {
    let (c, s) = hf("mixtral");
    check("mixtral", &c, &s);
    routing("mixtral", &c, &s);
}

/// OLMoE: q_norm / k_norm over the whole projection (64 and 32 wide), top-2 without
/// renormalisation, each expert `intermediate_size` wide.
#[test]
fn olmoe_whole_projection_qk_norm_unnormalised_top2() {
    let (c, s) = hf("olmoe");
    let m = c.moe.as_ref().unwrap();
    assert_eq!(
        (
            m.num_experts,
            m.top_k,
            m.norm_topk_prob,
            m.expert_intermediate
        ),
        (4, 2, false, 32)
    );
    let lay = arch::layer_layout(&c, 0);
    let len = |slot| lay.norms.iter().find(|n| n.slot == slot).unwrap().len;
    assert_eq!((len(NormSlot::Q), len(NormSlot::K)), (64, 32));
    check("olmoe", &c, &s);
    routing("olmoe", &c, &s);
    // llama.cpp's converter's GGUF: the same model (its olmoe graph does not renormalise)
    let (gc, gs) = gguf("olmoe");
    assert_eq!(gc.layer_layouts(), c.layer_layouts());
    assert!(!gc.moe.as_ref().unwrap().norm_topk_prob);
    check("olmoe", &gc, &gs);
}

/// The top-k experts of every token in every MoE layer equal transformers' (the fixture's seed
/// keeps every k-th / (k+1)-th probability gap above 1e-3), and the per-expert token counts the
/// forward pass reports equal transformers'.
fn routing(name: &str, cfg: &ModelConfig, src: &dyn TensorSource) {
    struct R<'a> {
        cfg: &'a ModelConfig,
        topk: Vec<Vec<usize>>,
        counts: Vec<usize>,
    }
    impl LayerHook for R<'_> {
        fn before_group(
            &mut self,
            l: &mut DecoderLayer,
            g: usize,
            x: &[f32],
            rows: usize,
        ) -> anyhow::Result<()> {
            let k = l.layout.groups[g].linears[0];
            if l.layout.linears[k].role != Role::Router {
                return Ok(());
            }
            let w = &l.linears[k].weight;
            let (ne, h) = w.dims2();
            for r in 0..rows {
                let mut logits: Vec<(usize, f32)> = (0..ne)
                    .map(|e| (e, (0..h).map(|j| x[r * h + j] * w.data[e * h + j]).sum()))
                    .collect();
                logits.sort_by(|a, b| b.1.total_cmp(&a.1));
                let top = self.cfg.moe.as_ref().unwrap().top_k;
                self.topk.push(logits[..top].iter().map(|p| p.0).collect());
            }
            Ok(())
        }
        fn routed(&mut self, _: usize, _: usize, tokens: usize) {
            self.counts.push(tokens);
        }
    }
    let refp = fixture(&format!("tiny/{name}/reference.safetensors"));
    let (shape, ids) = st_read(&refp, "input_ids");
    let (b, t) = (shape[0], shape[1]);
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let mut m = Model::load(cfg, src).unwrap();
    let mut x = m.embed(&ids).unwrap();
    let rope = Rope::new(cfg, t);
    let mut checked = 0;
    for (l, layer) in m.layers.iter_mut().enumerate() {
        let mut r = R {
            cfg,
            topk: vec![],
            counts: vec![],
        };
        layer.forward(cfg, &rope, &mut x, b, t, &mut r).unwrap();
        if r.topk.is_empty() {
            continue;
        }
        let (_, want) = st_read(&refp, &format!("router_topk_layer{l}"));
        let got: Vec<f64> = r.topk.iter().flatten().map(|&e| e as f64).collect();
        assert_eq!(got, want, "{name}: routing of layer {l}");
        let (_, counts) = st_read(&refp, &format!("router_counts_layer{l}"));
        let got: Vec<f64> = r.counts.iter().map(|&c| c as f64).collect();
        assert_eq!(got, counts, "{name}: tokens per expert in layer {l}");
        checked += 1;
    }
    assert!(checked > 0);
}

/// llama.cpp's converter's GGUF of each family loads to the same logits as the Hugging Face
/// directory (names, q/k permutation, fused Phi-3 tensors, stacked experts, metadata, and
/// the tiny Llama's llama3 rope scaling as the converter's `rope_freqs` tensor).
#[test]
fn gguf_from_llama_cpp_converter_matches_transformers() {
    for name in [
        "llama",
        "qwen2",
        "qwen3",
        "phi3",
        "phi3_partial",
        "mixtral",
        "qwen3_moe_sparse",
    ] {
        let (c, s) = gguf(name);
        let (hc, _) = hf(name);
        assert_eq!(c.layer_layouts(), hc.layer_layouts(), "{name}");
        check(name, &c, &s);
    }
}

/// Gemma 3's GGUF: every tensor equals the Hugging Face one in Hugging Face form (llama.cpp's
/// converter stores the norms as 1 + w; shrink reads them back), and the config follows
/// llama.cpp's reading of a gemma3 file (every 6th layer global, 1/sqrt(key_length) scaling),
/// which is not transformers' for this tiny model's layer_types and query_pre_attn_scalar, so
/// its logits cannot be compared with transformers'.
#[test]
fn gemma3_gguf_tensors_and_llama_cpp_config() {
    let (c, s) = gguf("gemma3");
    let (hc, hs) = hf("gemma3");
    assert_eq!(c.sliding_layers, vec![true; 4]);
    assert_eq!(c.query_pre_attn_scalar, Some(c.head_dim as f64));
    assert_eq!(
        (c.rope_theta, c.rope_local_theta, c.sliding_window),
        (1e6, Some(1e4), Some(8))
    );
    assert_eq!(c.rope_scaling, hc.rope_scaling);
    let mut n = 0;
    for e in arch::tensor_table(&hc) {
        let (a, b) = (s.load(&e.hf).unwrap(), hs.load(&e.hf).unwrap());
        assert_eq!(a.shape, b.shape, "{}", e.hf);
        let d = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-7, "{}: differs by {d}", e.hf);
        n += 1;
    }
    assert_eq!(n, 2 + 4 * 13);
}

/// The KV-cached forward pass (generation) gives the uncached pass's logits on every tiny
/// family: the first tokens fed at once (the prompt), the rest one at a time, against the logits
/// of the whole sequence in one pass; beyond the sliding window for Gemma 3 (window 8 in the
/// fixtures where it is set) and through the MoE routing.
#[test]
fn kv_cached_decoding_equals_the_full_pass() {
    for name in [
        "llama",
        "qwen2",
        "qwen3",
        "gemma3",
        "gemma3_softcap",
        "phi3",
        "phi3_partial",
        "mixtral",
        "qwen3_moe",
        "olmoe",
        // within its original 32 positions (past them the full pass uses the long factors for
        // every position while the cached keys keep the short ones, as in transformers)
        "phi3_longrope",
    ] {
        let (cfg, src) = hf(name);
        let mut m = Model::load(&cfg, &src).unwrap();
        let t = 24.min(cfg.max_position_embeddings);
        let ids: Vec<u32> = (0..t)
            .map(|i| ((i * 37 + 5) % cfg.vocab_size) as u32)
            .collect();
        let hidden = m.hidden_states(&ids, 1, t).unwrap();
        let want = m.logits(&hidden, t);
        let v = cfg.vocab_size;
        let mut g = shrink_model::generate::Generator::new(&mut m, t);
        let prompt = 5;
        let mut worst = 0f64;
        let mut check_row = |got: &[f32], pos: usize| {
            let w = &want[pos * v..(pos + 1) * v];
            let d = got
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max);
            worst = worst.max(d);
            assert_eq!(
                shrink_model::generate::argmax(got),
                shrink_model::generate::argmax(w),
                "{name}: top-1 at {pos}"
            );
        };
        let got = g.feed(&ids[..prompt]).unwrap();
        check_row(&got, prompt - 1);
        for p in prompt..t {
            let got = g.feed(&ids[p..p + 1]).unwrap();
            check_row(&got, p);
        }
        assert_eq!(g.len(), t);
        assert!(g.feed(&ids[..1]).is_err(), "past max_len");
        eprintln!("{name}: cached vs full max |logit diff| = {worst:.2e}");
        assert!(worst < 1e-4, "{name}: {worst}");
    }
}

/// Batched decoding: three sequences fed together (prompt, then one token per step) give each
/// sequence's own uncached logits on every tiny family (rope positions per sequence, each
/// sequence's own cache); and `sample_batch` is reproducible from its seed.
#[test]
fn batched_kv_decoding_equals_each_sequence_alone() {
    use shrink_model::generate::{sample_batch, BatchGenerator, Sampling};
    for name in ["llama", "qwen3", "gemma3", "phi3", "mixtral", "qwen3_moe"] {
        let (cfg, src) = hf(name);
        let mut m = Model::load(&cfg, &src).unwrap();
        let (t, b, v) = (16.min(cfg.max_position_embeddings), 3, cfg.vocab_size);
        let seqs: Vec<Vec<u32>> = (0..b)
            .map(|s| (0..t).map(|i| ((i * 37 + 11 * s + 5) % v) as u32).collect())
            .collect();
        let want: Vec<Vec<f32>> = seqs
            .iter()
            .map(|ids| {
                let h = m.hidden_states(ids, 1, t).unwrap();
                m.logits(&h, t)
            })
            .collect();
        let mut g = BatchGenerator::new(&mut m, b, t);
        let prompt = 4;
        let mut worst = 0f64;
        let mut check = |got: &[f32], pos: usize| {
            for s in 0..b {
                let (g, w) = (&got[s * v..(s + 1) * v], &want[s][pos * v..(pos + 1) * v]);
                let d = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .fold(0.0, f64::max);
                worst = worst.max(d);
            }
        };
        let ids: Vec<u32> = seqs
            .iter()
            .flat_map(|s| s[..prompt].iter().copied())
            .collect();
        check(&g.feed(&ids).unwrap(), prompt - 1);
        for p in prompt..t {
            let ids: Vec<u32> = seqs.iter().map(|s| s[p]).collect();
            check(&g.feed(&ids).unwrap(), p);
        }
        assert!(g.feed(&[1, 2]).is_err(), "2 tokens over a batch of 3");
        eprintln!("{name}: batched cached vs full max |logit diff| = {worst:.2e}");
        assert!(worst < 1e-4, "{name}: {worst}");

        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        };
        let n = 8.min(cfg.max_position_embeddings - 1);
        let all = sample_batch(&mut m, &[1], 4, n, &s, &mut |_| {}).unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|x| x.len() == n));
        assert_ne!(all[0], all[1], "{name}: the streams differ");
        let again = sample_batch(&mut m, &[1], 4, n, &s, &mut |_| {}).unwrap();
        assert_eq!(all, again, "{name}: a seed gives the same sequences");
    }
}
