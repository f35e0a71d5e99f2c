//! Tokenizers: a `tokenizer.json` from a Hugging Face directory, or one rebuilt from GGUF metadata
//! (`tokenizer.ggml.*`): GPT-2 byte-level BPE (`model = "gpt2"`) the way transformers rebuilds it,
//! so the token ids agree with it, and SentencePiece-style vocabularies (`model = "llama"`: Gemma,
//! Llama 2, Phi-3) the way llama.cpp tokenizes them ([`crate::spm`]).
//!
//! [`Tokenizer`] is the one type the rest of shrink uses, whichever kind is behind it.
use crate::gguf::GgufFile;
use crate::spm::{SpmOptions, SpmTokenizer};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map};
use std::path::Path;
use std::str::FromStr;

/// A model's tokenizer: the Hugging Face `tokenizers` one (tokenizer.json, or GPT-2 BPE rebuilt
/// from GGUF) or llama.cpp's SPM.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    kind: Kind,
    /// The BOS id when encoding with special tokens puts it first.
    bos: Option<u32>,
}

#[derive(Clone, Debug)]
enum Kind {
    Hf(Box<tokenizers::Tokenizer>),
    Spm(Box<SpmTokenizer>),
}

impl Tokenizer {
    /// Wraps a Hugging Face tokenizer. Whether it adds BOS is read from what its post-processor
    /// does to a probe text: a token put before the text's own tokens is the BOS.
    pub fn from_hf(t: tokenizers::Tokenizer) -> Self {
        let probe = |special| {
            t.encode("a", special)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        };
        let (with, without) = (probe(true), probe(false));
        let bos = (with.len() > without.len() && with[1..].starts_with(&without)).then(|| with[0]);
        Tokenizer {
            kind: Kind::Hf(Box::new(t)),
            bos,
        }
    }

    pub fn from_spm(t: SpmTokenizer) -> Self {
        Tokenizer {
            bos: t.adds_bos(),
            kind: Kind::Spm(Box::new(t)),
        }
    }

    /// Token ids of `text`; `add_special`: the special tokens the tokenizer adds by default (BOS
    /// for most). Special tokens spelled in the text: the HF tokenizer matches its added tokens;
    /// SPM, as llama.cpp without `parse_special`, only user-defined ones.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        match &self.kind {
            Kind::Hf(t) => Ok(t
                .encode(text, add_special)
                .map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?
                .get_ids()
                .to_vec()),
            Kind::Spm(t) => t
                .encode(text, add_special, false)
                .map_err(|e| anyhow::anyhow!("tokenization failed: {e}")),
        }
    }

    /// Text of `ids`; `skip_special`: leave out special (control) tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.kind {
            Kind::Hf(t) => t
                .decode(ids, skip_special)
                .map_err(|e| anyhow::anyhow!("decoding failed: {e}")),
            Kind::Spm(t) => Ok(t.decode(ids, skip_special, !skip_special)),
        }
    }

    /// The BOS id when the tokenizer puts BOS before the text by default (GGUF
    /// `tokenizer.ggml.add_bos_token`, or a Hugging Face post-processor that adds it). Evaluation
    /// and calibration windows of such a model start with it (see shrink-eval and shrink-calib).
    pub fn adds_bos(&self) -> Option<u32> {
        self.bos
    }

    /// Number of tokens, added ones included.
    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Hf(t) => t.get_vocab_size(true),
            Kind::Spm(t) => t.vocab_size(),
        }
    }

    /// The largest token id (None for an empty vocabulary).
    pub fn max_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Hf(t) => t.get_vocab(true).values().copied().max(),
            Kind::Spm(t) => t.vocab_size().checked_sub(1).map(|m| m as u32),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.kind {
            Kind::Hf(t) => t.token_to_id(token),
            Kind::Spm(t) => t.token_to_id(token),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.kind {
            Kind::Hf(t) => t.id_to_token(id),
            Kind::Spm(t) => t.id_to_token(id).map(String::from),
        }
    }

    /// The Hugging Face tokenizer, when that is the kind (writing tokenizer.json needs it).
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.kind {
            Kind::Hf(t) => Some(t),
            Kind::Spm(_) => None,
        }
    }

    /// The SPM tokenizer, when that is the kind.
    pub fn spm(&self) -> Option<&SpmTokenizer> {
        match &self.kind {
            Kind::Spm(t) => Some(t),
            Kind::Hf(_) => None,
        }
    }

    /// "byte-level BPE" or "SentencePiece (llama.cpp SPM)", for messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Hf(_) => "Hugging Face tokenizers",
            Kind::Spm(_) => "SentencePiece (llama.cpp SPM)",
        }
    }
}

pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    // The tokenizers library panics on some syntax errors (tokenizers 0.23: an `expect` in the
    // decoder's deserializer), so the syntax is checked here first.
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", path.display()))?;
    parse_tokenizer(&text)
        .map(Tokenizer::from_hf)
        .map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))
}

/// `Tokenizer::from_str`, with a panic inside the tokenizers library (it has `expect`s on some
/// malformed inputs, e.g. a `Precompiled` normalizer whose charsmap does not parse) turned into an
/// error instead of a crash.
fn parse_tokenizer(json: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    // one swap of the panic hook at a time, so that concurrent calls cannot leave it silenced
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_str(json));
    std::panic::set_hook(hook);
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("");
            Err(format!("the tokenizers library failed on it ({msg})"))
        }
    }
}

/// Errors when the tokenizer can produce ids the model has no embedding for.
pub fn check_vocab(tok: &Tokenizer, vocab_size: usize, file: &str) -> Result<()> {
    let n = tok.vocab_size();
    let max_id = tok.max_id().unwrap_or(0) as usize;
    if n == 0 {
        bail!("{file}: the tokenizer has an empty vocabulary");
    }
    if max_id >= vocab_size {
        bail!(
            "{file}: the tokenizer's vocabulary ({n} tokens, largest id {max_id}) does not fit the model's vocab_size {vocab_size}"
        );
    }
    Ok(())
}

/// GPT-2's reversible map from bytes to printable characters (`bytes_to_unicode`).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    out
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a GGUF `tokenizer.ggml.pre` value (None: GPT-2's own).
fn pre_split(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// Builds the tokenizer a GGUF file describes: `tokenizer.ggml.model` "gpt2" (byte-level BPE,
/// rebuilt as transformers does) or "llama" (SentencePiece by scores, as llama.cpp does).
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer> {
    let file = f.path().display().to_string();
    let model = f.get_str("tokenizer.ggml.model")?;
    match model {
        "gpt2" => bpe_from_gguf(f, &file),
        "llama" => spm_from_gguf(f, &file).map(Tokenizer::from_spm),
        _ => bail!("{file}: tokenizer.ggml.model '{model}' is not supported yet (supported: gpt2 byte-level BPE, llama SentencePiece)"),
    }
}

/// The SPM tokenizer of a GGUF file with `tokenizer.ggml.model = "llama"`, with llama.cpp's
/// defaults for keys the file lacks (BOS 1, EOS 2, UNK 0, add_bos true, add_eos false,
/// add_space_prefix true; a special id outside the vocabulary keeps the default).
pub fn spm_from_gguf(f: &GgufFile, file: &str) -> Result<SpmTokenizer> {
    let tokens: Vec<String> = f
        .get_str_array("tokenizer.ggml.tokens")?
        .into_iter()
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        bail!("{file}: tokenizer.ggml.tokens is empty");
    }
    let scores = match f.get("tokenizer.ggml.scores") {
        Some(_) => f.get_f32_array("tokenizer.ggml.scores")?,
        None => vec![],
    };
    let types = match f.get("tokenizer.ggml.token_type") {
        Some(_) => f.get_i64_array("tokenizer.ggml.token_type")?,
        None => vec![],
    };
    let n = tokens.len() as u64;
    let id = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
        let k = format!("tokenizer.ggml.{key}");
        Ok(match f.get(&k) {
            None => default,
            Some(v) => match v.as_u64() {
                Some(i) if i < n => Some(i as u32),
                Some(_) => default,
                None => bail!(
                    "{file}: metadata key '{k}' is {}, not a token id",
                    v.type_name()
                ),
            },
        })
    };
    let flag = |key: &str, default: bool| -> Result<bool> {
        let k = format!("tokenizer.ggml.{key}");
        match f.get(&k) {
            None => Ok(default),
            Some(_) => f.get_bool(&k),
        }
    };
    let d = SpmOptions::default();
    let opts = SpmOptions {
        bos: id("bos_token_id", d.bos)?,
        eos: id("eos_token_id", d.eos)?,
        unk: id("unknown_token_id", d.unk)?,
        eot: id("eot_token_id", None)?,
        eom: id("eom_token_id", None)?,
        fim: [
            id("fim_pre_token_id", None)?.or(id("prefix_token_id", None)?),
            id("fim_suf_token_id", None)?.or(id("suffix_token_id", None)?),
            id("fim_mid_token_id", None)?.or(id("middle_token_id", None)?),
            id("fim_pad_token_id", None)?,
            id("fim_rep_token_id", None)?,
            id("fim_sep_token_id", None)?,
        ],
        add_bos: flag("add_bos_token", d.add_bos)?,
        add_eos: flag("add_eos_token", d.add_eos)?,
        add_space_prefix: flag("add_space_prefix", d.add_space_prefix)?,
        model_name: f
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        source: file.to_string(),
    };
    SpmTokenizer::new(tokens, scores, types, &opts)
        .map_err(|e| anyhow::anyhow!("{file}: cannot build its SentencePiece tokenizer: {e}"))
}

/// GPT-2 style byte-level BPE from `tokenizer.ggml.{tokens,token_type,merges}`, as transformers
/// rebuilds it.
fn bpe_from_gguf(f: &GgufFile, file: &str) -> Result<Tokenizer> {
    let tokens = f.get_str_array("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        bail!("{file}: tokenizer.ggml.tokens is empty");
    }
    let merges = f.get_str_array("tokenizer.ggml.merges")?;
    let types: Vec<i64> = if f.get("tokenizer.ggml.token_type").is_some() {
        f.get_i64_array("tokenizer.ggml.token_type")?
    } else {
        vec![]
    };
    if !types.is_empty() && types.len() != tokens.len() {
        bail!(
            "{file}: tokenizer.ggml.token_type has {} entries but there are {} tokens",
            types.len(),
            tokens.len()
        );
    }
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let add_bos = f
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let bos = f
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.as_u64());
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();

    let mut vocab = Map::new();
    let mut spelled = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let s: String = if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_string()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(s.clone(), json!(i));
        spelled.push(s);
    }
    let mut merge_list = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let parts: Vec<&str> = m.split(' ').collect();
        if parts.len() != 2 {
            bail!("{file}: tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by one space");
        }
        merge_list.push(json!([parts[0], parts[1]]));
    }
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let ty = types.get(i).copied().unwrap_or(1);
        // 3 = CONTROL (special), 4 = USER_DEFINED (added, not special); as transformers does, a control
        // token spelled outside the byte alphabet is a mislabel and is skipped.
        let special = match ty {
            3 if t.chars().all(|c| alphabet.contains(&c)) => true,
            4 => false,
            _ => continue,
        };
        added.push(
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": special}),
        );
    }
    let pre_tokenizer = match pre_split(pre) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
    };
    let post_processor = match (add_bos, bos) {
        (true, Some(b)) => {
            let bt = &spelled[b as usize % spelled.len()];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bt, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bt, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bt, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bt.clone(): {"id": bt, "ids": [b], "tokens": [bt]}}})
        }
        // transformers writes a template without special tokens when no BOS is added.
        _ => json!({"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {}}),
    };
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merge_list},
    });
    parse_tokenizer(&tj.to_string())
        .map(Tokenizer::from_hf)
        .map_err(|e| anyhow::anyhow!("{file}: cannot build a tokenizer from its metadata: {e}"))
}

/// Tokenizes `text` as the model's tokenizer does by default (special tokens per its post-processor).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tok.encode(text, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufValue, GgufWriter};

    /// A GGUF holding only an SPM vocabulary: <unk> <s> </s>, the byte tokens, "▁a" and "a",
    /// plus the given extra metadata.
    fn spm_gguf(dir: &Path, extra: &[(&str, GgufValue)]) -> GgufFile {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        tokens.extend(["\u{2581}a".to_string(), "a".into()]);
        types.extend([1, 1]);
        let scores: Vec<GgufValue> = (0..tokens.len())
            .map(|i| GgufValue::F32(-(i as f32)))
            .collect();
        let mut w = GgufWriter::new();
        w.add_metadata("tokenizer.ggml.model", GgufValue::String("llama".into()));
        w.add_metadata(
            "tokenizer.ggml.tokens",
            GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
        );
        w.add_metadata("tokenizer.ggml.scores", GgufValue::Array(scores));
        w.add_metadata(
            "tokenizer.ggml.token_type",
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        );
        for (k, v) in extra {
            w.add_metadata(*k, v.clone());
        }
        let p = dir.join(format!("v{}.gguf", extra.len()));
        w.write(&p).unwrap();
        GgufFile::open(&p).unwrap()
    }

    #[test]
    fn gguf_llama_vocabulary_is_spm_with_llama_cpp_defaults() {
        let dir = tempfile::tempdir().unwrap();
        // no add_bos_token / add_space_prefix keys: llama.cpp's SPM defaults (BOS 1 added, space prefix)
        let tok = tokenizer_from_gguf(&spm_gguf(dir.path(), &[])).unwrap();
        assert!(tok.spm().is_some() && tok.hf().is_none());
        assert_eq!(tok.adds_bos(), Some(1));
        let a = tok.token_to_id("\u{2581}a").unwrap();
        assert_eq!(tok.encode("a a", true).unwrap(), vec![1, a, a]);
        assert_eq!(tok.encode("a a", false).unwrap(), vec![a, a]);
        assert_eq!(tok.decode(&[1, a, a], true).unwrap(), " a a");
        // the file's keys override them
        let f = spm_gguf(
            dir.path(),
            &[
                ("tokenizer.ggml.add_bos_token", GgufValue::Bool(false)),
                ("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false)),
            ],
        );
        let tok = tokenizer_from_gguf(&f).unwrap();
        assert_eq!(tok.adds_bos(), None);
        assert_eq!(
            tok.encode("a", true).unwrap(),
            vec![tok.token_to_id("a").unwrap()]
        );
        // a BOS id of its own, and a flag of the wrong type is an error naming the file and key
        let f = spm_gguf(
            dir.path(),
            &[("tokenizer.ggml.bos_token_id", GgufValue::U32(2))],
        );
        assert_eq!(tokenizer_from_gguf(&f).unwrap().adds_bos(), Some(2));
        let f = spm_gguf(
            dir.path(),
            &[("tokenizer.ggml.add_bos_token", GgufValue::U32(1))],
        );
        let e = tokenizer_from_gguf(&f).unwrap_err().to_string();
        assert!(e.contains("v1.gguf") && e.contains("add_bos_token"), "{e}");
    }
}
