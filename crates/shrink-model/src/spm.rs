//! SentencePiece-style ("SPM") tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.model =
//! "llama"`: `tokens`, `scores`, `token_type`, no merges), as llama.cpp tokenizes it, so that the
//! ids are the ones llama.cpp feeds the model (Gemma, Llama 1/2, Mistral v0.1, Phi-3, ...).
//!
//! No maintained Rust crate implements llama.cpp's SPM-by-scores algorithm from GGUF metadata
//! (the `tokenizers` crate needs merges or a Unigram model; transformers' conversion of such a GGUF
//! into merges is known to split differently, e.g. "former" into "▁f","orm","er" for Gemma 3), so
//! this module follows llama.cpp's `src/llama-vocab.cpp` (read from the tree vendored in
//! llama-cpp-python 0.3.36) step by step:
//!
//! * loading (`llama_vocab::impl::load`): token types become attributes; defaults for the "llama"
//!   model are BOS 1, EOS 2, UNK 0, `add_bos = true`, `add_eos = false`, `add_space_prefix = true`,
//!   each overridden by its `tokenizer.ggml.*` key; an empty token text becomes `[EMPTY_<id>]`;
//!   tokens whose text marks them as end-of-generation or FIM (`<end_of_turn>`, `<|im_end|>`, ...)
//!   are given the CONTROL attribute, and the other text-based attribute fix-ups that affect
//!   tokenization are applied (see [`SpmTokenizer::new`]);
//! * `tokenizer_st_partition`: the raw text is first split at special tokens (CONTROL,
//!   USER_DEFINED and UNKNOWN tokens, longest text first); with `parse_special = false` only
//!   USER_DEFINED tokens are matched, as llama.cpp (and transformers for added tokens) does;
//! * `impl::tokenize`, case `LLAMA_VOCAB_TYPE_SPM`: BOS first when `add_bos`, each raw fragment
//!   gets a leading space when `add_space_prefix` and it is the first fragment or follows a special
//!   token, spaces become U+2581 "▁", then `llm_tokenizer_spm_session::tokenize`; EOS last when
//!   `add_eos`;
//! * `llm_tokenizer_spm_session::tokenize`: split into UTF-8 characters, seed a priority queue
//!   with every adjacent pair whose concatenation is a token, repeatedly merge the pair with the
//!   highest score (ties: the leftmost), skipping queue entries made stale by earlier merges, then
//!   emit each symbol's token, or its bytes as `<0xXX>` tokens (byte fallback) when it has none;
//! * decoding: `token_to_piece` and `impl::detokenize`.
use std::collections::{BinaryHeap, HashMap};

/// GGUF `tokenizer.ggml.token_type` values (llama.h `llama_token_type`).
pub mod token_type {
    pub const UNDEFINED: i64 = 0;
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// Token attributes (llama.h `llama_token_attr`), a bit set.
pub mod attr {
    pub const UNDEFINED: u32 = 0;
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

/// What the GGUF metadata says besides the vocabulary (llama.cpp's defaults for "llama" in
/// [`SpmOptions::default`]).
#[derive(Clone, Debug)]
pub struct SpmOptions {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`, `eom_token_id`, `fim_*_token_id` given in the file: the
    /// text-based detection of that kind of token is then skipped, as in llama.cpp.
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    /// FIM prefix, suffix, middle, pad, repo, separator.
    pub fim: [Option<u32>; 6],
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// `general.name`: llama.cpp sets per-token strip attributes for Phi-3 by name.
    pub model_name: String,
    /// Where the vocabulary came from (a file name), for error messages.
    pub source: String,
}

impl Default for SpmOptions {
    fn default() -> Self {
        SpmOptions {
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            eot: None,
            eom: None,
            fim: [None; 6],
            add_bos: true,
            add_eos: false,
            add_space_prefix: true,
            model_name: String::new(),
            source: String::new(),
        }
    }
}

/// An SPM vocabulary with llama.cpp's tokenization rules.
#[derive(Clone, Debug)]
pub struct SpmTokenizer {
    texts: Vec<String>,
    scores: Vec<f32>,
    attrs: Vec<u32>,
    ids: HashMap<String, u32>,
    /// CONTROL, USER_DEFINED and UNKNOWN tokens, longest text first.
    special: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    source: String,
}

/// Texts llama.cpp recognises as end-of-turn / end-of-generation tokens (`impl::load`).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_TEXTS: [&[&str]; 6] = [
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// A piece of the text after splitting at special tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fragment {
    /// Byte range of the raw text.
    Raw(usize, usize),
    Token(u32),
}

/// One entry of the merge queue (`llm_bigram_spm`): ordered by score, then by the leftmost.
#[derive(Debug)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// llama.cpp's comparator: `l < r` when `l.score < r.score || (l.score == r.score && l.left >
    /// r.left)`, so the top of the max-heap is the highest score and, among equal scores, the
    /// smallest `left`. (`total_cmp` orders NaN scores, which real vocabularies do not have.)
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// A symbol of the merge chain (`llm_symbol`): a byte range of the escaped text.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    start: usize,
    n: usize,
}

fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

impl SpmTokenizer {
    /// Builds the tokenizer from the vocabulary (`texts`, `scores` and `types` by id; `scores`
    /// and `types` may be empty: score 0, NORMAL). Errors name the problem; the caller adds the file.
    pub fn new(
        texts: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i64>,
        opts: &SpmOptions,
    ) -> Result<Self, String> {
        let n = texts.len();
        if n == 0 {
            return Err("the vocabulary is empty".into());
        }
        if n > u32::MAX as usize {
            return Err(format!("{n} tokens is more than token ids can hold"));
        }
        if !scores.is_empty() && scores.len() < n {
            return Err(format!(
                "{} scores for {n} tokens (llama.cpp needs one per token)",
                scores.len()
            ));
        }
        if !types.is_empty() && types.len() < n {
            return Err(format!(
                "{} token types for {n} tokens (llama.cpp needs one per token)",
                types.len()
            ));
        }
        let mut texts = texts;
        let mut ids = HashMap::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        for (i, t) in texts.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
            if let Some(j) = ids.insert(t.clone(), i as u32) {
                return Err(format!(
                    "tokens {j} and {i} are both {t:?} (llama.cpp refuses duplicate tokens)"
                ));
            }
            attrs.push(match types.get(i).copied() {
                None => attr::NORMAL,
                Some(token_type::UNKNOWN) => attr::UNKNOWN,
                Some(token_type::UNUSED) => attr::UNUSED,
                Some(token_type::NORMAL) => attr::NORMAL,
                Some(token_type::CONTROL) => attr::CONTROL,
                Some(token_type::USER_DEFINED) => attr::USER_DEFINED,
                Some(token_type::BYTE) => attr::BYTE,
                Some(_) => attr::UNDEFINED,
            });
        }
        let scores = if scores.is_empty() {
            vec![0.0; n]
        } else {
            scores[..n].to_vec()
        };
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let (bos, eos) = (in_range(opts.bos), in_range(opts.eos));
        if opts.add_bos && bos.is_none() {
            return Err("tokenizer.ggml.add_bos_token is true but there is no BOS token".into());
        }
        if opts.add_eos && eos.is_none() {
            return Err("tokenizer.ggml.add_eos_token is true but there is no EOS token".into());
        }
        let mut tok = SpmTokenizer {
            texts,
            scores,
            attrs,
            ids,
            special: vec![],
            bos,
            eos,
            add_bos: opts.add_bos,
            add_eos: opts.add_eos,
            add_space_prefix: opts.add_space_prefix,
            source: opts.source.clone(),
        };
        tok.fix_attributes(opts);
        // the special-token cache: llama.cpp sorts with std::sort by text length (longest first),
        // which leaves the order of equal lengths unspecified; here it is by id. It only matters
        // for two equally long special tokens that overlap in the text.
        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                tok.attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special.sort_by_key(|&i| std::cmp::Reverse(tok.texts[i as usize].len()));
        tok.special = special;
        tok.strip_attributes(opts);
        Ok(tok)
    }

    /// The text-based attribute fix-ups of llama.cpp's `impl::load` that change how text is split
    /// or decoded: end-of-turn / end-of-message / FIM / end-of-generation texts become CONTROL,
    /// gpt-oss's `<|channel|>`-style tokens USER_DEFINED, `<|end|>` USER_DEFINED next to
    /// `<|return|>` + `<|call|>`, `</s>` NORMAL next to `<|tool_response>`. (llama.cpp marks only
    /// the first FIM text of a kind it meets in hash-map order; here every one of them is marked.
    /// The UNUSED marking of "unused" control tokens changes nothing here and is left out.)
    fn fix_attributes(&mut self, opts: &SpmOptions) {
        let mark = |texts: &[&str], given: Option<u32>, this: &mut Self| {
            if given.is_some() {
                return;
            }
            for t in texts {
                if let Some(&id) = this.ids.get(*t) {
                    this.attrs[id as usize] |= attr::CONTROL;
                }
            }
        };
        mark(EOT_TEXTS, opts.eot, self);
        mark(EOM_TEXTS, opts.eom, self);
        for (texts, given) in FIM_TEXTS.iter().zip(opts.fim) {
            mark(texts, given, self);
        }
        let mut eog: Vec<u32> = Vec::new();
        for t in EOG_TEXTS {
            if let Some(&id) = self.ids.get(*t) {
                self.attrs[id as usize] |= attr::CONTROL;
                eog.push(id);
            }
        }
        eog.extend(opts.fim[3..].iter().flatten());
        eog.extend([self.eos, opts.eot, opts.eom].iter().flatten());
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = self.ids.get(t) {
                self.attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        let in_eog = |t: &str, s: &Self| {
            eog.iter()
                .any(|&i| s.texts.get(i as usize).is_some_and(|x| x == t))
        };
        let has = |t: &str, s: &Self| in_eog(t, s);
        if ((has("<|return|>", self) && has("<|call|>", self))
            || (has("<|calls|>", self) && has("<|flush|>", self)))
            && has("<|end|>", self)
        {
            let id = self.ids["<|end|>"];
            self.attrs[id as usize] = attr::USER_DEFINED;
        }
        if (has("<|tool_response>", self) || has("<|plamo:eos|>", self)) && has("</s>", self) {
            let id = self.ids["</s>"];
            self.attrs[id as usize] = attr::NORMAL;
        }
    }

    /// Per-token strip attributes llama.cpp sets by model name (after building the special
    /// cache): for Phi-3 every special token strips the spaces after it, except `<unk>`, `<s>`,
    /// `<|endoftext|>`; `</s>` too.
    fn strip_attributes(&mut self, opts: &SpmOptions) {
        let name = opts.model_name.to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &self.special {
                self.attrs[id as usize] |= attr::RSTRIP;
            }
            if let Some(&id) = self.ids.get("</s>") {
                self.attrs[id as usize] |= attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = self.ids.get(t) {
                    self.attrs[id as usize] &= !attr::RSTRIP;
                }
            }
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }
    /// The BOS id when the tokenizer puts one first (`add_bos`).
    pub fn adds_bos(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }
    pub fn adds_eos(&self) -> Option<u32> {
        self.eos.filter(|_| self.add_eos)
    }
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }
    pub fn attr(&self, id: u32) -> Option<u32> {
        self.attrs.get(id as usize).copied()
    }

    /// llama.cpp's `tokenize(text, add_special, parse_special)`.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        let frags = if text.is_empty() {
            vec![]
        } else {
            self.partition(text, parse_special)
        };
        if add_special {
            if let Some(b) = self.adds_bos() {
                out.push(b);
            }
        }
        let mut prev_special = true;
        let mut buf = String::new();
        for f in frags {
            match f {
                Fragment::Raw(a, b) => {
                    buf.clear();
                    if self.add_space_prefix && prev_special {
                        buf.push('\u{2581}');
                    }
                    for c in text[a..b].chars() {
                        buf.push(if c == ' ' { '\u{2581}' } else { c });
                    }
                    self.spm(&buf, &mut out)?;
                    prev_special = false;
                }
                Fragment::Token(t) => {
                    out.push(t);
                    prev_special = true;
                }
            }
        }
        if add_special {
            if let Some(e) = self.adds_eos() {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// `tokenizer_st_partition`: for each special token in turn (longest first), split every raw
    /// fragment at each of its occurrences, stripping spaces beside it per its LSTRIP / RSTRIP.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        let mut frags = vec![Fragment::Raw(0, text.len())];
        for &id in &self.special {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue; // user-defined tokens are split out even without parse_special
            }
            let pat = self.texts[id as usize].as_str();
            // a token not in the text cannot be in a fragment: skip the fragment walk
            if !text.contains(pat) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Raw(mut off, end) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(m) = text[off..end].find(pat).map(|p| p + off) {
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > off && c_isspace(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > off {
                        next.push(Fragment::Raw(off, left_end));
                    }
                    next.push(Fragment::Token(id));
                    off = m + pat.len();
                    if a & attr::RSTRIP != 0 {
                        while off < end && c_isspace(bytes[off]) {
                            off += 1;
                        }
                    }
                }
                if off < end {
                    next.push(Fragment::Raw(off, end));
                }
            }
            frags = next;
        }
        frags
    }

    /// `llm_tokenizer_spm_session::tokenize` on already escaped text.
    fn spm(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let n = c.len_utf8();
            syms.push(Symbol {
                prev: i.checked_sub(1),
                next: (start + n < text.len()).then_some(i + 1),
                start,
                n,
            });
        }
        let mut queue = BinaryHeap::new();
        let try_add =
            |l: Option<usize>, r: Option<usize>, syms: &[Symbol], q: &mut BinaryHeap<_>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                let s = syms[l].start;
                let size = syms[l].n + syms[r].n;
                if let Some(&id) = self.ids.get(&text[s..s + size]) {
                    q.push(Bigram {
                        left: l,
                        right: r,
                        score: self.scores[id as usize],
                        size,
                    });
                }
            };
        for i in 1..syms.len() {
            try_add(Some(i - 1), Some(i), &syms, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            if l.n == 0 || r.n == 0 || l.n + r.n != b.size {
                continue; // one of them was merged since
            }
            syms[b.left].n += r.n;
            syms[b.right].n = 0;
            syms[b.left].next = r.next;
            if let Some(nx) = r.next {
                syms[nx].prev = Some(b.left);
            }
            try_add(syms[b.left].prev, Some(b.left), &syms, &mut queue);
            try_add(Some(b.left), syms[b.left].next, &syms, &mut queue);
        }
        // `resegment`: every merged symbol is a token (a pair is merged only when its text is
        // one), so a symbol without a token is a single unmerged character, which llama.cpp's
        // reverse-merge table (keyed by pairs' texts) never holds: its bytes go out one by one.
        let mut i = if syms.is_empty() { None } else { Some(0) };
        while let Some(k) = i {
            let s = syms[k];
            let piece = &text[s.start..s.start + s.n];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        let id = self.byte_to_token(byte).ok_or_else(|| {
                            let c = piece.chars().next().unwrap_or_default();
                            let src = if self.source.is_empty() {
                                String::new()
                            } else {
                                format!("{}: ", self.source)
                            };
                            format!(
                                "{src}the text has {c:?} (U+{:04X}), which this vocabulary cannot spell: no token for it and no byte-fallback token <0x{byte:02X}>",
                                c as u32
                            )
                        })?;
                        out.push(id);
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    /// `llama_vocab::byte_to_token`: the `<0xXX>` token, else the byte itself as a token (None:
    /// neither exists, where llama.cpp throws).
    pub fn byte_to_token(&self, byte: u8) -> Option<u32> {
        if let Some(&id) = self.ids.get(&format!("<0x{byte:02X}>")) {
            return Some(id);
        }
        // a lone byte is a string only below 0x80 (above, it is not UTF-8, so no token has it)
        if byte < 0x80 {
            return self.ids.get(&(byte as char).to_string()).copied();
        }
        None
    }

    /// `token_to_piece(token, lstrip, special)`: the bytes a token stands for. Control and unknown
    /// tokens give nothing unless `special`; user-defined (and, with `special`, control) tokens
    /// their text; normal tokens their text with "▁" as space; byte tokens their byte.
    pub fn piece(&self, id: u32, lstrip: usize, special: bool) -> Vec<u8> {
        let Some(t) = self.texts.get(id as usize) else {
            return vec![];
        };
        let a = self.attrs[id as usize];
        let special_attr = attr::UNKNOWN | attr::CONTROL;
        if !special && a & special_attr != 0 {
            return vec![];
        }
        let strip = |b: &[u8]| -> Vec<u8> {
            let k = b.iter().take(lstrip).take_while(|&&c| c == b' ').count();
            b[k..].to_vec()
        };
        if a & (special_attr | attr::USER_DEFINED) != 0 {
            strip(t.as_bytes())
        } else if a & attr::NORMAL != 0 {
            strip(t.replace('\u{2581}', " ").as_bytes())
        } else if a & attr::BYTE != 0 {
            // `token_to_byte`: strtol of the two characters after "<0x"
            let b = t
                .get(3..5)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            strip(&[b])
        } else {
            vec![]
        }
    }

    /// `impl::detokenize(tokens, remove_special, unparse_special)` for SPM (no space cleaning):
    /// the first piece loses one leading space when `add_space_prefix` - unless `remove_special`
    /// dropped a leading BOS, then none; `remove_special` also drops a trailing EOS when the
    /// tokenizer adds one.
    pub fn decode_bytes(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && !ids.is_empty() && ids.last().copied() == self.eos {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::new();
        for &id in ids {
            out.extend(self.piece(id, remove_space as usize, unparse_special));
            remove_space = false;
        }
        out
    }

    /// [`SpmTokenizer::decode_bytes`] as text (invalid UTF-8, e.g. a character cut between byte
    /// tokens, becomes U+FFFD).
    pub fn decode(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, remove_special, unparse_special))
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary: "<unk>" "<s>" "</s>", the 256 byte tokens, then `words` (text, score).
    fn vocab(words: &[(&str, f32)], opts: &SpmOptions) -> SpmTokenizer {
        let mut texts = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut scores = vec![0.0, 0.0, 0.0];
        let mut types = vec![
            token_type::UNKNOWN,
            token_type::CONTROL,
            token_type::CONTROL,
        ];
        for b in 0..=255u8 {
            texts.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            types.push(token_type::BYTE);
        }
        for (w, s) in words {
            texts.push(w.to_string());
            scores.push(*s);
            types.push(if w.starts_with("<u:") {
                token_type::USER_DEFINED
            } else {
                token_type::NORMAL
            });
        }
        SpmTokenizer::new(texts, scores, types, opts).unwrap()
    }

    fn ids(t: &SpmTokenizer, words: &[&str]) -> Vec<u32> {
        words.iter().map(|w| t.token_to_id(w).unwrap()).collect()
    }

    fn no_specials() -> SpmOptions {
        SpmOptions {
            add_bos: false,
            add_space_prefix: false,
            ..Default::default()
        }
    }

    #[test]
    fn highest_score_pair_merges_first() {
        // "abc": "ab" (-1) outscores "bc" (-2), so a+b merge and "c" stays; with "bc" better, b+c
        let t = vocab(
            &[("a", -5.), ("b", -5.), ("c", -5.), ("ab", -1.), ("bc", -2.)],
            &no_specials(),
        );
        assert_eq!(
            t.encode("abc", false, false).unwrap(),
            ids(&t, &["ab", "c"])
        );
        let t = vocab(
            &[("a", -5.), ("b", -5.), ("c", -5.), ("ab", -3.), ("bc", -2.)],
            &no_specials(),
        );
        assert_eq!(
            t.encode("abc", false, false).unwrap(),
            ids(&t, &["a", "bc"])
        );
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        // "aaa": both "aa" pairs score the same; the left one merges, leaving "aa","a"
        let t = vocab(&[("a", -5.), ("aa", -1.)], &no_specials());
        assert_eq!(
            t.encode("aaa", false, false).unwrap(),
            ids(&t, &["aa", "a"])
        );
        // "abab" with ab and ba tied: pairs at 0 (ab), 1 (ba), 2 (ab): 0 merges, then 2
        let t = vocab(
            &[("a", -5.), ("b", -5.), ("ab", -1.), ("ba", -1.)],
            &no_specials(),
        );
        assert_eq!(
            t.encode("abab", false, false).unwrap(),
            ids(&t, &["ab", "ab"])
        );
        assert_eq!(
            t.encode("bab", false, false).unwrap(),
            ids(&t, &["ba", "b"])
        );
    }

    #[test]
    fn merges_need_every_intermediate_token() {
        // "abcd" is a token but "abc"/"bcd" are not reachable without "ab"/"cd"... pairs merge into
        // longer tokens only through tokens
        let t = vocab(
            &[
                ("a", -9.),
                ("b", -9.),
                ("c", -9.),
                ("d", -9.),
                ("ab", -1.),
                ("cd", -2.),
                ("abcd", -3.),
            ],
            &no_specials(),
        );
        assert_eq!(t.encode("abcd", false, false).unwrap(), ids(&t, &["abcd"]));
        let t = vocab(
            &[
                ("a", -9.),
                ("b", -9.),
                ("c", -9.),
                ("d", -9.),
                ("ab", -1.),
                ("abcd", -3.),
            ],
            &no_specials(),
        );
        assert_eq!(
            t.encode("abcd", false, false).unwrap(),
            ids(&t, &["ab", "c", "d"])
        );
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let t = vocab(&[("a", -1.)], &no_specials());
        // "é" is C3 A9, "🙂" F0 9F 99 82
        let got = t.encode("aé🙂", false, false).unwrap();
        let want = ids(
            &t,
            &[
                "a", "<0xC3>", "<0xA9>", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>",
            ],
        );
        assert_eq!(got, want);
        assert_eq!(t.decode(&got, false, false), "aé🙂");
        // without byte tokens the character cannot be spelled: an error, not a panic
        let opts = SpmOptions {
            source: "v.gguf".into(),
            ..no_specials()
        };
        let t = SpmTokenizer::new(vec!["a".into(), "b".into()], vec![], vec![], &opts).unwrap();
        let e = t.encode("aé", false, false).unwrap_err();
        assert!(
            e.starts_with("v.gguf: ") && e.contains("'é' (U+00E9)") && e.contains("<0xC3>"),
            "{e}"
        );
        // ASCII falls back to the byte itself as a token when there is no <0xXX> token
        let t = SpmTokenizer::new(
            vec!["a".into(), "\n".into()],
            vec![-1., -1.],
            vec![],
            &no_specials(),
        )
        .unwrap();
        assert_eq!(t.byte_to_token(b'\n'), Some(1));
    }

    #[test]
    fn empty_text_bos_eos_and_space_prefix() {
        let opts = SpmOptions {
            add_eos: true,
            ..Default::default()
        };
        let t = vocab(&[("\u{2581}a", -1.), ("a", -2.), ("\u{2581}", -3.)], &opts);
        assert_eq!(t.encode("", true, false).unwrap(), vec![1, 2]);
        assert_eq!(t.encode("", false, false).unwrap(), Vec::<u32>::new());
        // add_space_prefix: "a a" -> "▁a▁a"
        let got = t.encode("a a", true, false).unwrap();
        assert_eq!(
            got,
            [vec![1], ids(&t, &["\u{2581}a", "\u{2581}a"]), vec![2]].concat()
        );
        // detokenize: with BOS removed the prefix space stays (llama.cpp), without BOS it goes
        assert_eq!(t.decode(&got, true, false), " a a");
        assert_eq!(t.decode(&got[1..got.len() - 1], false, false), "a a");
        assert_eq!(t.adds_bos(), Some(1));
        let t = vocab(&[("a", -2.)], &no_specials());
        assert_eq!(t.adds_bos(), None);
        assert_eq!(t.encode("a", true, false).unwrap(), ids(&t, &["a"]));
    }

    #[test]
    fn special_tokens_in_raw_text() {
        let t = vocab(
            &[
                ("<u:x>", 0.),
                ("a", -1.),
                ("<", -1.),
                ("s", -1.),
                (">", -1.),
                ("\u{2581}a", -0.5),
            ],
            &SpmOptions {
                add_bos: false,
                ..Default::default()
            },
        );
        // user-defined tokens are matched in raw text without parse_special; the fragment after
        // one gets the space prefix again
        let got = t.encode("a<u:x>a", false, false).unwrap();
        assert_eq!(got, ids(&t, &["\u{2581}a", "<u:x>", "\u{2581}a"]));
        // control tokens only with parse_special
        let got = t.encode("<s>a", false, false).unwrap();
        let bytes: Vec<u32> = [0xE2, 0x96, 0x81]
            .map(|b| t.byte_to_token(b).unwrap())
            .to_vec();
        assert_eq!(got, [bytes, ids(&t, &["<", "s", ">", "a"])].concat());
        let got = t.encode("<s>a", false, true).unwrap();
        assert_eq!(got, ids(&t, &["<s>", "\u{2581}a"]));
        // decoding: control tokens only with unparse_special, user-defined always
        assert_eq!(t.decode(&got, false, false), " a");
        assert_eq!(t.decode(&got, false, true), "<s> a");
    }

    #[test]
    fn eog_texts_become_control() {
        let mut texts: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        texts.push("<end_of_turn>".into());
        texts.push("x".into());
        let types = vec![2, 3, 3, token_type::USER_DEFINED, 1];
        let t = SpmTokenizer::new(texts, vec![], types, &no_specials()).unwrap();
        assert_ne!(t.attr(3).unwrap() & attr::CONTROL, 0);
        // so it is no longer split out of raw text without parse_special
        assert!(!t
            .encode("<end_of_turn>", false, false)
            .unwrap_or_default()
            .contains(&3));
        assert_eq!(t.encode("<end_of_turn>", false, true).unwrap(), vec![3]);
    }

    #[test]
    fn vocabulary_errors() {
        let e = SpmTokenizer::new(vec![], vec![], vec![], &no_specials()).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = SpmTokenizer::new(vec!["a".into(), "a".into()], vec![], vec![], &no_specials())
            .unwrap_err();
        assert!(e.contains("duplicate"), "{e}");
        let e = SpmTokenizer::new(vec!["a".into()], vec![], vec![], &SpmOptions::default())
            .unwrap_err();
        assert!(e.contains("BOS"), "{e}");
        let e = SpmTokenizer::new(
            vec!["a".into(), "b".into()],
            vec![0.],
            vec![],
            &no_specials(),
        )
        .unwrap_err();
        assert!(e.contains("1 scores for 2 tokens"), "{e}");
        // an empty token text is renamed as llama.cpp does
        let t =
            SpmTokenizer::new(vec!["a".into(), "".into()], vec![], vec![], &no_specials()).unwrap();
        assert_eq!(t.id_to_token(1), Some("[EMPTY_1]"));
    }
}
