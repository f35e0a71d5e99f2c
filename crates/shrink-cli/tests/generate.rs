//! `shrink generate`: greedy output equal to transformers' `generate` on the default model
//! (fixture from tools/reference/generate_ref.py), each greedy token the argmax of the full
//! uncached forward pass, seeded sampling reproducible, chat templates rendered, and bad input
//! refused with one clear error.
mod common;
use common::*;
use shrink_model::{Model, ModelConfig};

fn json_of(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = shrink(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The default model's greedy tokens equal transformers' for every fixture prompt (two plain
/// prompts and one rendered through the chat template), prompt ids included.
#[test]
fn greedy_equals_transformers_on_the_default_model() {
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !model.exists() {
        eprintln!("skipped: {} is absent (run scripts/fetch)", model.display());
        return;
    }
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/reference/generate_smollm2.json"))
            .unwrap(),
    )
    .unwrap();
    let n = f["max_new_tokens"].as_u64().unwrap().to_string();
    for p in f["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let flag = if p["kind"] == "chat" {
            "--chat"
        } else {
            "--prompt"
        };
        let r = json_of(&[
            "generate",
            "--model",
            s(&model),
            flag,
            text,
            "--max-new-tokens",
            &n,
            "--json",
            "-q",
        ]);
        assert_eq!(
            ids(&r["prompt_ids"]),
            ids(&p["prompt_ids"]),
            "{text}: prompt ids"
        );
        if let Some(rendered) = p["rendered"].as_str() {
            assert_eq!(r["prompt_text"].as_str().unwrap(), rendered);
        }
        let (got, want) = (ids(&r["ids"]), ids(&p["ids"]));
        assert!(want.len() >= 64, "the fixture holds at least 64 new tokens");
        assert_eq!(got, want, "{text}");
    }
}

/// On a tiny model: every greedy token is the argmax of the uncached forward pass over the
/// prompt and the tokens before it; sampling with a seed repeats itself.
#[test]
fn greedy_follows_the_full_pass_and_sampling_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = hf_dir(tmp.path());
    let r = json_of(&[
        "generate",
        "--model",
        s(&dir),
        "--prompt",
        "hello there",
        "--max-new-tokens",
        "12",
        "--json",
        "-q",
    ]);
    let prompt = ids(&r["prompt_ids"]);
    let out = ids(&r["ids"]);
    assert_eq!(out.len(), 12);
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let src = shrink_model::source::SafetensorsSource::open(&dir).unwrap();
    let mut m = Model::load(&cfg, &src).unwrap();
    let all: Vec<u32> = prompt.iter().chain(&out).copied().collect();
    let t = all.len() - 1;
    let h = m.hidden_states(&all[..t], 1, t).unwrap();
    let logits = m.logits(&h, t);
    let v = cfg.vocab_size;
    for (i, tok) in out.iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + i) * v..(prompt.len() + i) * v];
        assert_eq!(shrink_model::generate::argmax(row), *tok, "token {i}");
    }
    let sample = |seed: &str| {
        ids(&json_of(&[
            "generate",
            "--model",
            s(&dir),
            "--prompt",
            "hello there",
            "--max-new-tokens",
            "16",
            "--temperature",
            "1.5",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--json",
            "-q",
        ])["ids"])
    };
    let (a, b, c) = (sample("1"), sample("1"), sample("2"));
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed, other tokens");
    assert_ne!(a, out, "sampling is not greedy");
}

/// Chat templates from tokenizer_config.json: rendered with the messages and the generation
/// prompt; a template that does not parse, or that raises, is an error naming the model.
#[test]
fn chat_templates_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = hf_dir(tmp.path());
    let cfgp = dir.join("tokenizer_config.json");
    let write_tpl = |t: &str| {
        std::fs::write(&cfgp, serde_json::json!({ "chat_template": t }).to_string()).unwrap()
    };
    fails_with(
        &["generate", "--model", s(&dir), "--chat", "hi"],
        &["has no chat template", "--prompt"],
    );
    write_tpl("{% for m in messages %}<{{ m.role }}>{{ m.content | upper }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}");
    let r = json_of(&[
        "generate",
        "--model",
        s(&dir),
        "--system",
        "Be brief.",
        "--chat",
        "hi",
        "--max-new-tokens",
        "2",
        "--json",
        "-q",
    ]);
    assert_eq!(r["prompt_text"], "<system>BE BRIEF.<user>HI<assistant>");
    write_tpl("{% for m in messages %}{{ m.content }");
    fails_with(
        &["generate", "--model", s(&dir), "--chat", "hi"],
        &["chat template does not parse", "hf"],
    );
    write_tpl("{{ raise_exception('Conversation roles must alternate') }}");
    fails_with(
        &["generate", "--model", s(&dir), "--chat", "hi"],
        &["failed to render", "Conversation roles must alternate"],
    );
    for (args, needle) in [
        (
            vec!["--max-new-tokens", "0"],
            "--max-new-tokens must be at least 1",
        ),
        (vec!["--temperature=-1"], "--temperature must be >= 0"),
        (vec!["--top-p", "0"], "--top-p must be in (0, 1]"),
    ] {
        let mut a = vec!["generate", "--model", s(&dir), "--prompt", "x"];
        a.extend(args);
        fails_with(&a, &[needle]);
    }
}
