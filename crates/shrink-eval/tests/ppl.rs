//! Perplexity by the GPTQ protocol, against values computed from transformers' outputs.
#[path = "../../shrink-model/tests/common.rs"]
mod common;
use common::*;
use shrink_eval::{perplexity, PplOptions};
use shrink_model::source::SafetensorsSource;
use shrink_model::{Model, ModelConfig, ModelSource};

/// On a tiny model, shrink's perplexity equals exp(mean NLL) computed from transformers' logits
/// for the same windows (two windows of 24 tokens).
#[test]
fn protocol_matches_reference_logits_on_tiny_model() {
    let dir = fixture("tiny/qwen2");
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let mut m = Model::load(&cfg, &SafetensorsSource::open(&dir).unwrap()).unwrap();
    let refp = dir.join("reference.safetensors");
    let (shape, ids) = st_read(&refp, "input_ids");
    let (_, logits) = st_read(&refp, "logits");
    let (b, t, v) = (shape[0], shape[1], cfg.vocab_size);
    let mut nll = 0.0;
    for s in 0..b {
        for p in 0..t - 1 {
            let row = &logits[(s * t + p) * v..(s * t + p + 1) * v];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            nll += lse - row[ids[s * t + p + 1] as usize];
        }
    }
    let want = (nll / (b * (t - 1)) as f64).exp();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    // One extra token beyond the two windows is dropped, as a partial window is.
    let mut longer = ids.clone();
    longer.push(5);
    for batch in [1, 2] {
        let r = perplexity(
            &mut m,
            &longer,
            &PplOptions {
                seqlen: t,
                max_tokens: None,
                batch,
                bos: None,
            },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!((r.windows, r.tokens, r.predicted_tokens), (2, 48, 46));
        assert!(
            (r.perplexity / want - 1.0).abs() < 1e-5,
            "ppl {} vs reference {want}",
            r.perplexity
        );
    }
    // max_tokens keeps only the first window.
    let r = perplexity(
        &mut m,
        &ids,
        &PplOptions {
            seqlen: t,
            max_tokens: Some(30),
            batch: 4,
            bos: None,
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.windows, 1);
    // Too little text is an error, not a NaN.
    let e = perplexity(
        &mut m,
        &ids[..10],
        &PplOptions {
            seqlen: t,
            max_tokens: None,
            batch: 1,
            bos: None,
        },
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("fewer than one window"), "{e}");
}

/// A model whose tokenizer adds BOS: each window is BOS + seqlen - 1 text tokens, the text tokens
/// are scored (same count as without BOS), and the result equals today's protocol run on those
/// BOS-prefixed windows laid end to end. Without BOS the windows are today's, exactly.
#[test]
fn bos_windows_start_with_bos_and_score_the_text_tokens() {
    let dir = fixture("tiny/qwen2");
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let mut m = Model::load(&cfg, &SafetensorsSource::open(&dir).unwrap()).unwrap();
    let (_, ids) = st_read(&dir.join("reference.safetensors"), "input_ids");
    let text: Vec<u32> = ids.iter().map(|&x| x as u32).collect(); // 48 tokens
    let (seq, bos) = (8, 3u32);
    let opts = |bos| PplOptions {
        seqlen: seq,
        max_tokens: None,
        batch: 2,
        bos,
    };
    let r = perplexity(&mut m, &text, &opts(Some(bos)), &mut |_, _| {}).unwrap();
    // 48 text tokens / 7 per window = 6 windows (6 tokens left over are dropped)
    assert_eq!((r.windows, r.tokens, r.predicted_tokens), (6, 48, 42));
    assert_eq!((r.bos, r.text_tokens), (Some(bos), 48));
    let laid_out: Vec<u32> = text
        .chunks_exact(seq - 1)
        .take(6)
        .flat_map(|w| std::iter::once(bos).chain(w.iter().copied()))
        .collect();
    assert_eq!(laid_out.len(), 48);
    let same = perplexity(&mut m, &laid_out, &opts(None), &mut |_, _| {}).unwrap();
    assert_eq!(r.mean_nll, same.mean_nll, "windows are BOS + 7 text tokens");
    // without BOS: windows of 8 text tokens from the start, as before
    let plain = perplexity(&mut m, &text, &opts(None), &mut |_, _| {}).unwrap();
    assert_eq!((plain.windows, plain.tokens, plain.bos), (6, 48, None));
    assert_ne!(plain.mean_nll, r.mean_nll);
}

/// The default model on the whole evaluation split agrees with transformers within 0.1%
/// (tests/fixtures/reference/ppl_eval.json from tools/reference/perplexity.py).
#[test]
fn default_model_eval_split_perplexity_matches_transformers() {
    let (Some(model), Some(text)) = (
        fetched("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        fetched("data/eval.txt"),
    ) else {
        return;
    };
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference/ppl_eval.json")).unwrap())
            .unwrap();
    let text = std::fs::read_to_string(text).unwrap();
    assert_eq!(
        text.len() as u64,
        fx["text"]["bytes"].as_u64().unwrap(),
        "data/eval.txt is not the text the fixture used"
    );
    let src = ModelSource::open(&model).unwrap();
    let (ids, bos) = shrink_eval::eval_tokens(&src.tokenizer, &text).unwrap();
    assert_eq!(
        bos, None,
        "SmolLM2's GGUF says add_bos_token = false: no BOS windows"
    );
    assert_eq!(
        ids.len() as u64,
        fx["text"]["total_text_tokens"].as_u64().unwrap()
    );
    let mut m = src.load_all().unwrap();
    let r = perplexity(
        &mut m,
        &ids,
        &PplOptions {
            seqlen: 512,
            max_tokens: None,
            batch: 4,
            bos,
        },
        &mut |_, _| {},
    )
    .unwrap();
    let want = fx["perplexity"].as_f64().unwrap();
    eprintln!(
        "eval split: shrink {:.6} vs transformers {want:.6} ({} tokens)",
        r.perplexity, r.tokens
    );
    assert_eq!(r.tokens as u64, fx["tokens"].as_u64().unwrap());
    assert!(
        (r.perplexity / want - 1.0).abs() < 1e-3,
        "perplexity {} vs transformers {want}",
        r.perplexity
    );
}

/// The streamed evaluation (one layer in memory, windows in passes) gives exactly the resident
/// model's perplexity, for every tiny family (dense, sliding-window Gemma, fused Phi-3, MoE),
/// with and without BOS, and whether the windows fit in one pass or need several.
#[test]
fn streamed_perplexity_equals_resident() {
    use shrink_eval::perplexity_streamed;
    use shrink_model::stream::Streamed;
    for fam in ["llama", "qwen3", "gemma3", "phi3", "mixtral", "qwen3_moe"] {
        let dir = fixture(&format!("tiny/{fam}"));
        let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
        let src = SafetensorsSource::open(&dir).unwrap();
        let mut m = Model::load(&cfg, &src).unwrap();
        let v = cfg.vocab_size as u32;
        let ids: Vec<u32> = (0..7 * 16 + 3).map(|i| (i * 7919 + 13) % v).collect();
        for (bos, batch) in [(None, 2), (Some(1), 3)] {
            let opts = PplOptions {
                seqlen: 16,
                max_tokens: None,
                batch,
                bos,
            };
            let want = perplexity(&mut m, &ids, &opts, &mut |_, _| {}).unwrap();
            let s = Streamed::new(&cfg, &src);
            // one window's hidden states: 16 x hidden x 4 bytes; budgets of 1 window (rounded
            // up to one batch per pass) and of everything
            let one = 16 * cfg.hidden_size * 4;
            for budget in [one, 1 << 30] {
                let mut calls = 0;
                let got =
                    perplexity_streamed(&s, &ids, &opts, budget, &mut |_, _| calls += 1).unwrap();
                assert_eq!(got.windows, want.windows, "{fam}");
                assert_eq!(
                    got.perplexity.to_bits(),
                    want.perplexity.to_bits(),
                    "{fam} bos {bos:?} budget {budget}: streamed {} vs resident {}",
                    got.perplexity,
                    want.perplexity
                );
                let passes = if budget == one {
                    want.windows.div_ceil(batch)
                } else {
                    1
                };
                assert_eq!(
                    calls,
                    passes * cfg.num_layers,
                    "{fam}: progress per layer and pass"
                );
            }
        }
    }
}
