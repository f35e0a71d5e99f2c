//! The default model against transformers (fixtures written by tools/reference/*.py).
mod common;
use common::*;
use shrink_model::tokenizer::encode;
use shrink_model::ModelSource;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn logits_match_transformers_on_fixed_prompt() {
    let Some(path) = fetched(MODEL) else { return };
    let src = ModelSource::open(&path).unwrap();
    let fx = fixture("reference/logits.safetensors");
    let prompt = std::fs::read_to_string(fixture("reference/prompt.txt")).unwrap();
    let ids = encode(&src.tokenizer, &prompt).unwrap();
    let (_, ref_ids) = st_read(&fx, "input_ids");
    assert_eq!(
        ids.iter().map(|&i| i as f64).collect::<Vec<_>>(),
        ref_ids,
        "prompt token ids differ from transformers"
    );
    assert!(ids.len() >= 64);
    let mut model = src.load_all().unwrap();
    let t = ids.len();
    let hidden = model.hidden_states(&ids, 1, t).unwrap();
    let logits = model.logits(&hidden, t);
    let vocab = model.config.vocab_size;
    let (_, cols) = st_read(&fx, "cols");
    let (_, ref_cols) = st_read(&fx, "logits_cols");
    let (_, top1) = st_read(&fx, "top1");
    let (_, lse) = st_read(&fx, "logsumexp");
    let mut max_diff = 0f64;
    for p in 0..t {
        let row = &logits[p * vocab..(p + 1) * vocab];
        for (k, &c) in cols.iter().enumerate() {
            max_diff = max_diff.max((row[c as usize] as f64 - ref_cols[p * cols.len() + k]).abs());
        }
        let am = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |a, (i, &v)| if v > a.1 { (i, v) } else { a },
            )
            .0;
        assert_eq!(am as f64, top1[p], "top-1 token differs at position {p}");
        let l = shrink_model::tensor::log_sum_exp(row);
        max_diff = max_diff.max((l - lse[p]).abs());
    }
    eprintln!(
        "max |logit diff| over {t} positions x {} columns (+ logsumexp): {max_diff:.2e}",
        cols.len()
    );
    assert!(
        max_diff < 5e-3,
        "max abs logit difference {max_diff} >= 5e-3"
    );
}

#[test]
fn tokenizer_ids_match_transformers() {
    let Some(path) = fetched(MODEL) else { return };
    let src = ModelSource::open(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/tokenizer_ids.json")).unwrap(),
    )
    .unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.chars().count() >= 20_000);
    let want: Vec<u32> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let got = encode(&src.tokenizer, text).unwrap();
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "first differing token at index {first_diff:?}"
    );
    assert_eq!(got.len(), want.len());
    // The same text, decoded back, round-trips.
    let back = src.tokenizer.decode(&got, false).unwrap();
    assert_eq!(back, text);
}

#[test]
fn gguf_config_is_smollm2() {
    let Some(path) = fetched(MODEL) else { return };
    let c = ModelSource::open(&path).unwrap().config;
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_heads,
            c.num_kv_heads,
            c.vocab_size
        ),
        (30, 576, 1536, 9, 3, 49152)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
}

/// The tokenizer rebuilt from GGUF metadata is, piece for piece, the one transformers builds
/// (tests/fixtures/reference/gguf_tokenizer_transformers.json, from tools/reference/tokenizer_ids.py).
#[test]
fn gguf_tokenizer_definition_equals_transformers() {
    let Some(path) = fetched(MODEL) else { return };
    let src = ModelSource::open(&path).unwrap();
    let ours: serde_json::Value =
        serde_json::from_str(&src.tokenizer.hf().unwrap().to_string(false).unwrap()).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/gguf_tokenizer_transformers.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "model",
    ] {
        assert_eq!(
            ours[key], theirs[key],
            "tokenizer part '{key}' differs from transformers'"
        );
    }
}
