//! Calibration sets: text from a file, a JSON-lines file or a directory; tokenized once; N windows
//! of L tokens drawn with a seed.
//!
//! Sampling follows the GPTQ reference for a joined corpus (its wikitext2 loader): the documents
//! are joined with a blank line and tokenized once, and each sample is the window of L tokens
//! starting at a uniformly random position. The generator is SplitMix64, so a seed gives the same
//! windows on every machine.
//!
//! Models whose tokenizer puts BOS first ([`Tokenizer::adds_bos`]: Gemma, Llama 2, ...) are
//! trained to always see it there, so each of their windows is BOS followed by L - 1 text tokens
//! (the text itself is tokenized without BOS). Other models keep windows of L text tokens.
use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use shrink_model::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

pub mod generated;
pub use generated::{FamilyOptions, GenerateOptions, GENERATED_FAMILY, GENERATED_SELF};

/// Default number of calibration samples (the GPTQ reference uses 128).
pub const DEFAULT_NSAMPLES: usize = 128;
/// Default sample length in tokens (the reference uses 2048; 512 keeps CPU runs short).
pub const DEFAULT_SEQLEN: usize = 512;
pub const DEFAULT_SEED: u64 = 0;

/// Where calibration text comes from.
#[derive(Clone, Debug, Serialize)]
pub enum TextSource {
    /// A UTF-8 text file, used whole.
    File(PathBuf),
    /// A JSON-lines file: one object per line; the named string field of each is a document.
    JsonLines { path: PathBuf, field: String },
    /// Every `*.txt` file of a directory (sorted by name), each a document.
    Dir(PathBuf),
}

impl TextSource {
    /// Picks the kind from the path: a directory, a `.jsonl` file (needs `field`), or text.
    pub fn from_path(path: &Path, field: Option<&str>) -> Result<Self> {
        if path.is_dir() {
            return Ok(TextSource::Dir(path.into()));
        }
        let jsonl = path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "ndjson");
        Ok(match (jsonl, field) {
            (true, f) => TextSource::JsonLines {
                path: path.into(),
                field: f.unwrap_or("text").into(),
            },
            (false, Some(f)) => TextSource::JsonLines {
                path: path.into(),
                field: f.into(),
            },
            (false, None) => TextSource::File(path.into()),
        })
    }

    /// The documents of the source, in order.
    pub fn documents(&self) -> Result<Vec<String>> {
        let read = |p: &Path| -> Result<String> {
            let b = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
            String::from_utf8(b).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not UTF-8 text (invalid byte at offset {})",
                    p.display(),
                    e.utf8_error().valid_up_to()
                )
            })
        };
        let docs = match self {
            TextSource::File(p) => vec![read(p)?],
            TextSource::JsonLines { path, field } => {
                let text = read(path)?;
                let mut docs = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(line).with_context(|| {
                        format!("{}: line {} is not valid JSON", path.display(), i + 1)
                    })?;
                    let s = v.get(field).and_then(|x| x.as_str()).with_context(|| {
                        format!(
                            "{}: line {} has no string field '{field}'",
                            path.display(),
                            i + 1
                        )
                    })?;
                    docs.push(s.to_string());
                }
                docs
            }
            TextSource::Dir(d) => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(d)
                    .with_context(|| format!("{}: cannot list directory", d.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "txt"))
                    .collect();
                files.sort();
                if files.is_empty() {
                    bail!("{}: no *.txt files in the directory", d.display());
                }
                files.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?
            }
        };
        let docs: Vec<String> = docs.into_iter().filter(|d| !d.trim().is_empty()).collect();
        if docs.is_empty() {
            bail!("{}: the calibration text is empty", self.describe());
        }
        Ok(docs)
    }

    pub fn describe(&self) -> String {
        match self {
            TextSource::File(p) | TextSource::Dir(p) => p.display().to_string(),
            TextSource::JsonLines { path, field } => {
                format!("{} (field '{field}')", path.display())
            }
        }
    }
}

/// SplitMix64: a tiny, well-mixed, portable generator.
pub struct SplitMix64(u64);
impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// N calibration samples of L tokens each.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibSet {
    pub nsamples: usize,
    pub seqlen: usize,
    pub seed: u64,
    pub source: String,
    /// Tokens of the whole text the windows were drawn from.
    pub text_tokens: usize,
    /// `[nsamples * seqlen]`, sample after sample.
    #[serde(skip)]
    pub ids: Vec<u32>,
    /// Start of each window in the tokenized text (of its first text token).
    pub starts: Vec<usize>,
    /// The BOS id each window starts with (models whose tokenizer adds BOS), else None.
    #[serde(default)]
    pub bos: Option<u32>,
}

impl CalibSet {
    /// Tokenizes `source` once (documents joined with "\n\n", no special tokens) and draws
    /// `nsamples` windows at seeded uniformly random starts: `seqlen` text tokens each, or BOS
    /// and `seqlen - 1` text tokens when the tokenizer adds BOS.
    pub fn sample(
        source: &TextSource,
        tok: &Tokenizer,
        nsamples: usize,
        seqlen: usize,
        seed: u64,
    ) -> Result<Self> {
        if nsamples == 0 || seqlen == 0 {
            bail!("calibration needs at least one sample of at least one token (got {nsamples} x {seqlen})");
        }
        let bos = tok.adds_bos();
        let body = seqlen - bos.is_some() as usize;
        if body == 0 {
            bail!("calibration samples of {seqlen} token would hold only BOS (this model's tokenizer adds BOS): use --seqlen 2 or more");
        }
        let text = source.documents()?.join("\n\n");
        let all = tok
            .encode(text.as_str(), false)
            .with_context(|| format!("{}: tokenizing", source.describe()))?;
        if all.len() < body + 1 {
            bail!(
                "{}: the calibration text has {} tokens, too short for samples of {seqlen} tokens (lower --seqlen or give more text)",
                source.describe(),
                all.len()
            );
        }
        let mut rng = SplitMix64::new(seed);
        let span = (all.len() - body) as u64;
        let starts: Vec<usize> = (0..nsamples)
            .map(|_| rng.below(span + 1) as usize)
            .collect();
        let mut ids = Vec::with_capacity(nsamples * seqlen);
        for &s in &starts {
            ids.extend(bos);
            ids.extend_from_slice(&all[s..s + body]);
        }
        Ok(CalibSet {
            nsamples,
            seqlen,
            seed,
            source: source.describe(),
            text_tokens: all.len(),
            ids,
            starts,
            bos,
        })
    }

    /// No calibration data: the set of a data-free run (methods that need no activations, RTN and
    /// magnitude, compressing each layer's weights as they are read; nothing runs forward).
    pub fn empty() -> Self {
        CalibSet {
            nsamples: 0,
            seqlen: 0,
            seed: 0,
            source: "none (data-free)".into(),
            text_tokens: 0,
            ids: vec![],
            starts: vec![],
            bos: None,
        }
    }

    /// Reads calibration ids saved by [`CalibSet::save`] (or any safetensors file with an I64 or
    /// I32 tensor `input_ids` of shape `[nsamples, seqlen]`), e.g. to reuse another tool's tokens.
    pub fn load(path: &Path, vocab_size: usize) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: invalid safetensors file: {e}", path.display()))?;
        let t = st
            .tensor("input_ids")
            .map_err(|_| anyhow::anyhow!("{}: no tensor 'input_ids'", path.display()))?;
        let [nsamples, seqlen] = t.shape() else {
            bail!(
                "{}: input_ids must be 2-D [nsamples, seqlen], found shape {:?}",
                path.display(),
                t.shape()
            );
        };
        let ids: Vec<i64> = match t.dtype() {
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I32 => t
                .data()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            d => bail!(
                "{}: input_ids has dtype {d:?}; expected I64 or I32",
                path.display()
            ),
        };
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab_size) {
            bail!(
                "{}: token id {bad} is outside the model's vocabulary of {vocab_size}",
                path.display()
            );
        }
        if *nsamples == 0 || *seqlen == 0 {
            bail!("{}: input_ids is empty", path.display());
        }
        Ok(CalibSet {
            nsamples: *nsamples,
            seqlen: *seqlen,
            seed: 0,
            source: path.display().to_string(),
            text_tokens: 0,
            ids: ids.into_iter().map(|i| i as u32).collect(),
            starts: vec![],
            bos: None,
        })
    }

    /// Writes the token ids as a safetensors file with one I64 tensor `input_ids` `[nsamples, seqlen]`
    /// (the form the peer scripts in tools/peer read, so both tools see the same tokens).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self
            .ids
            .iter()
            .flat_map(|&i| (i as i64).to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::I64, vec![self.nsamples, self.seqlen], &bytes)
            .map_err(|e| anyhow::anyhow!("calibration ids: {e}"))?;
        let tmp = path.with_extension("safetensors.part");
        safetensors::serialize_to_file([("input_ids", view)], None, &tmp)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot rename", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace-split word-level tokenizer over a tiny vocabulary; with `bos`, a post-processor
    /// that puts "<s>" (id 5) first.
    fn tok_with(bos: bool) -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> =
            ["[UNK]", "a", "b", "c", "d", "<s>"]
                .iter()
                .enumerate()
                .map(|(i, w)| (w.to_string(), (i as u64).into()))
                .collect();
        let post = if bos {
            serde_json::json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [5], "tokens": ["<s>"]}}})
        } else {
            serde_json::Value::Null
        };
        let j = serde_json::json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": post, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}});
        Tokenizer::from_hf(j.to_string().parse().unwrap())
    }

    fn tok() -> Tokenizer {
        tok_with(false)
    }

    #[test]
    fn bos_models_get_bos_then_seqlen_minus_one_text_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        // token i of the text is "abcd"[i % 4], ids 1..=4
        std::fs::write(&p, "a b c d ".repeat(50)).unwrap();
        let src = TextSource::from_path(&p, None).unwrap();
        let plain = CalibSet::sample(&src, &tok(), 8, 16, 7).unwrap();
        assert_eq!(plain.bos, None);
        assert_eq!(plain.text_tokens, 200);
        for (w, &s) in plain.ids.chunks(16).zip(&plain.starts) {
            let want: Vec<u32> = (s..s + 16).map(|i| (i % 4) as u32 + 1).collect();
            assert_eq!(
                w,
                &want[..],
                "a window without BOS is 16 text tokens from its start"
            );
        }
        let t = tok_with(true);
        assert_eq!(t.adds_bos(), Some(5));
        let b = CalibSet::sample(&src, &t, 8, 16, 7).unwrap();
        assert_eq!(b.bos, Some(5));
        assert_eq!(b.ids.len(), 8 * 16);
        assert_eq!(b.text_tokens, 200, "the text is tokenized without BOS");
        for (w, &s) in b.ids.chunks(16).zip(&b.starts) {
            assert_eq!(w[0], 5);
            let want: Vec<u32> = (s..s + 15).map(|i| (i % 4) as u32 + 1).collect();
            assert_eq!(&w[1..], &want[..]);
            assert!(s + 15 <= 200);
        }
        assert!(!b.ids.chunks(16).any(|w| w[1..].contains(&5)));
        let e = CalibSet::sample(&src, &t, 2, 1, 0).unwrap_err().to_string();
        assert!(e.contains("only BOS"), "{e}");
    }

    #[test]
    fn seeded_windows_are_reproducible_and_within_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "a b c d ".repeat(50)).unwrap();
        let src = TextSource::from_path(&p, None).unwrap();
        let a = CalibSet::sample(&src, &tok(), 8, 16, 7).unwrap();
        let b = CalibSet::sample(&src, &tok(), 8, 16, 7).unwrap();
        let c = CalibSet::sample(&src, &tok(), 8, 16, 8).unwrap();
        assert_eq!(a.ids, b.ids);
        assert_ne!(a.starts, c.starts);
        assert_eq!(a.ids.len(), 8 * 16);
        assert!(a.starts.iter().all(|&s| s + 16 <= a.text_tokens));
    }

    #[test]
    fn sources_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("t.jsonl");
        std::fs::write(&j, "{\"text\": \"a b c\"}\n\n{\"text\": \"d a b\"}\n").unwrap();
        let s = TextSource::from_path(&j, None).unwrap();
        assert_eq!(s.documents().unwrap(), vec!["a b c", "d a b"]);
        let e = TextSource::from_path(&j, Some("body"))
            .unwrap()
            .documents()
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.jsonl") && e.contains("field 'body'"), "{e}");
        let d = dir.path().join("docs");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("1.txt"), "a b").unwrap();
        std::fs::write(d.join("2.txt"), "c d").unwrap();
        assert_eq!(
            TextSource::from_path(&d, None)
                .unwrap()
                .documents()
                .unwrap(),
            vec!["a b", "c d"]
        );
        let empty = dir.path().join("e.txt");
        std::fs::write(&empty, "\n  \n").unwrap();
        let e = CalibSet::sample(
            &TextSource::from_path(&empty, None).unwrap(),
            &tok(),
            2,
            4,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("e.txt") && e.contains("empty"), "{e}");
        let short = dir.path().join("s.txt");
        std::fs::write(&short, "a b c").unwrap();
        let e = CalibSet::sample(
            &TextSource::from_path(&short, None).unwrap(),
            &tok(),
            2,
            4,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("s.txt") && e.contains("too short"), "{e}");
    }

    #[test]
    fn save_writes_i64_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "a b c d ".repeat(10)).unwrap();
        let c =
            CalibSet::sample(&TextSource::from_path(&p, None).unwrap(), &tok(), 3, 5, 1).unwrap();
        let out = dir.path().join("ids.safetensors");
        c.save(&out).unwrap();
        let b = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        let t = st.tensor("input_ids").unwrap();
        assert_eq!(t.shape(), &[3, 5]);
        let got: Vec<u32> = t
            .data()
            .chunks_exact(8)
            .map(|x| i64::from_le_bytes(x.try_into().unwrap()) as u32)
            .collect();
        assert_eq!(got, c.ids);
    }
}
