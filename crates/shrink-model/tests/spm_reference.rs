//! shrink's SentencePiece tokenizer against llama.cpp's own ids for the Gemma 3 GGUF
//! (tests/fixtures/reference/gemma3_tokens.json from tools/reference/spm_tokenize_ref.py, which
//! runs llama-tokenize). Every sample must give exactly llama.cpp's ids, and decoding them must
//! give the text back. Skipped, with a note, where models/gemma-3-270m-q4_k_m.gguf is absent (it
//! comes from `scripts/fetch --all`, which CI does not run).
mod common;
use common::*;
use sha2::{Digest, Sha256};
use shrink_model::gguf::GgufFile;
use shrink_model::tokenizer::{spm_from_gguf, tokenizer_from_gguf};

const GEMMA: &str = "models/gemma-3-270m-q4_k_m.gguf";

/// The text of a sample: stored in the fixture, or rebuilt from data/ by the fixture's cut rule
/// (up to the first blank line at or after code point N).
fn sample_text(s: &serde_json::Value) -> Option<String> {
    if let Some(t) = s["text"].as_str() {
        return Some(t.to_string());
    }
    let src = s["source"].as_str().unwrap();
    let path = root().join(src);
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "skipping sample {}: {} is missing",
            s["name"],
            path.display()
        );
        return None;
    };
    let at = s["cut_at_blank_line_after_char"].as_u64().unwrap() as usize;
    let from = text.char_indices().nth(at).map(|(b, _)| b).unwrap();
    let cut = from + text[from..].find("\n\n").unwrap();
    Some(text[..cut].to_string())
}

#[test]
fn gemma3_ids_equal_llama_cpp() {
    let path = root().join(GEMMA);
    if !path.exists() {
        eprintln!(
            "skipping: {} is absent (scripts/fetch --all fetches it)",
            path.display()
        );
        return;
    }
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/gemma3_tokens.json")).unwrap(),
    )
    .unwrap();
    let f = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&f).unwrap();
    let spm = spm_from_gguf(&f, GEMMA).unwrap();
    assert_eq!(
        tok.adds_bos(),
        Some(2),
        "Gemma 3 says add_bos_token = true, BOS = 2"
    );
    assert!(!spm.add_space_prefix());
    let mut checked = 0;
    for s in fx["samples"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let Some(text) = sample_text(s) else {
            continue;
        };
        assert_eq!(
            (text.chars().count() as u64, text.len() as u64),
            (s["chars"].as_u64().unwrap(), s["bytes"].as_u64().unwrap()),
            "{name}: not the text the fixture was made from"
        );
        let sha = format!("{:x}", Sha256::digest(text.as_bytes()));
        assert_eq!(sha, s["sha256"].as_str().unwrap(), "{name}: sha256 differs");
        let want: Vec<u32> = s["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let parse_special = s["parse_special"].as_bool().unwrap();
        let got = if parse_special {
            spm.encode(&text, true, true).unwrap()
        } else {
            tok.encode(&text, true).unwrap()
        };
        if got != want {
            let i = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            let show = |ids: &[u32]| -> Vec<String> {
                ids.iter()
                    .skip(i.saturating_sub(3))
                    .take(8)
                    .map(|&t| format!("{t}:{:?}", spm.id_to_token(t).unwrap_or("?")))
                    .collect()
            };
            panic!(
                "{name}: {} ids from shrink, {} from llama.cpp; first difference at {i}:\n  shrink    {:?}\n  llama.cpp {:?}",
                got.len(),
                want.len(),
                show(&got),
                show(&want)
            );
        }
        // decoding without the special tokens gives the text back (Gemma adds no space prefix),
        // except that a "▁" typed in the text comes back as a space: the encoder escapes spaces
        // to "▁", so llama.cpp's decoder cannot tell them apart either
        if !parse_special {
            let back = text.replace('\u{2581}', " ");
            assert_eq!(tok.decode(&got, true).unwrap(), back, "{name}: decode");
        }
        eprintln!("{name}: {} ids, all equal to llama.cpp's", got.len());
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} samples could be checked");
}
