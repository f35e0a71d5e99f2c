//! Running a model over task requests: multiple-choice task accuracy by lm-evaluation-harness's log-likelihood
//! protocol, on OLMES's requests (`scripts/fetch --tasks`). The scoring rules are in
//! [`crate::tasks`]; this runs the model over the requests (`shrink eval-tasks`, `shrink compress
//! --eval-tasks`).
//!
//! How the work is shared: every document's context is tokenized once (all its choices reuse
//! it); a request whose input tokens are a prefix of another's is read from that one's forward
//! ([`share_prefixes`]: identical inputs, one-token continuations of one context); the rows that
//! do run are sorted by length and cut into passes of at most [`TaskOptions::pass_tokens`] padded tokens
//! ([`plan_passes`]), so rows of similar length (often the choices of one document) go through
//! the model together with little padding, and each pass dequantizes each layer once for all of
//! its rows ([`Streamed`]). Rows are right-padded: a causal model's logits at a position do not
//! see the padding after it. The head runs only on the positions that predict continuation
//! tokens.
use crate::peak_rss_mb;
use crate::tasks::{
    continuation_logprob, encode_pair, load_requests, plan_passes, read_cache, request_row,
    requests_path, share_prefixes, task_metrics, tasks_json, CacheLine, CacheWriter, Request, Row,
    TaskMetrics, TaskSpec, DEFAULT_DATA_DIR,
};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde_json::json;
use shrink_model::model::{final_norm, load_final_norm};
use shrink_model::stream::Streamed;
use shrink_model::{DecoderLayer, ModelConfig, ModelSource, NoHook, Rope, TensorSource};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How the requests are run (the flags of `shrink eval-tasks`).
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// Score only the first N documents of each task (all their choices).
    pub limit: Option<usize>,
    /// The oe_eval_tasks folder.
    pub data: PathBuf,
    /// A JSON-lines cache of per-request scores (read, then appended after every pass).
    pub cache: Option<PathBuf>,
    /// Padded tokens per pass through the model.
    pub pass_tokens: usize,
    /// Padded tokens per forward batch within a pass.
    pub batch_tokens: usize,
    /// Longest input in tokens (default: the model's max_position_embeddings).
    pub max_length: Option<usize>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            limit: None,
            data: PathBuf::from(DEFAULT_DATA_DIR),
            cache: None,
            pass_tokens: 8192,
            batch_tokens: 1024,
            max_length: None,
        }
    }
}

/// The tasks' metrics and what it took to get them.
#[derive(Clone, Debug)]
pub struct TaskRun {
    pub results: Vec<(String, TaskMetrics)>,
    /// Requests of every task (after --limit).
    pub requests: usize,
    /// Requests scored in this run (the others came from the cache).
    pub scored: usize,
    pub cached: usize,
    /// Rows run through the model (requests whose input is a prefix of another's share its row).
    pub forward_rows: usize,
    pub passes: usize,
    pub tokens: usize,
    pub padded_tokens: usize,
    /// Seconds spent scoring (model passes), and the whole run.
    pub seconds: f64,
    pub wall_seconds: f64,
}

impl TaskRun {
    pub fn requests_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.scored as f64 / self.seconds
        } else {
            0.0
        }
    }
    /// `{"tasks": {NAME: {acc, ...}}, "requests": .., ...}` (`shrink eval-tasks --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = tasks_json(&self.results);
        let o = v.as_object_mut().unwrap();
        o.insert("requests".into(), json!(self.requests));
        o.insert("scored_requests".into(), json!(self.scored));
        o.insert("cached_requests".into(), json!(self.cached));
        o.insert("forward_rows".into(), json!(self.forward_rows));
        o.insert("passes".into(), json!(self.passes));
        o.insert("tokens".into(), json!(self.tokens));
        o.insert("padded_tokens".into(), json!(self.padded_tokens));
        o.insert("seconds".into(), json!(self.seconds));
        o.insert(
            "requests_per_second".into(),
            json!(self.requests_per_second()),
        );
        o.insert("wall_seconds".into(), json!(self.wall_seconds));
        o.insert("peak_rss_mb".into(), json!(peak_rss_mb()));
        v
    }
}

/// Parses a task list (`piqa,arc_easy:rc_5shot`) and loads every task's requests, before any
/// model work: an unknown task, a missing or corrupt file is an error naming it.
pub fn load_tasks(names: &[String], opts: &TaskOptions) -> Result<Vec<(TaskSpec, Vec<Request>)>> {
    let mut specs: Vec<TaskSpec> = Vec::new();
    for s in names {
        let spec = TaskSpec::parse(s)?;
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    if specs.is_empty() {
        bail!("--tasks is empty");
    }
    if opts.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let mut tasks = Vec::new();
    for spec in specs {
        let path = requests_path(&opts.data, &spec)?;
        let reqs = load_requests(&path, opts.limit)?;
        tasks.push((spec, reqs));
    }
    Ok(tasks)
}

/// A request still to score: its task, its index there, what the model must run.
struct Job {
    task: usize,
    req: usize,
    row: Row,
}

/// Scores every request of `tasks` with the model `src` (named `model` in the cache) and
/// computes each task's metrics. `progress(done, total)` counts requests.
pub fn score_tasks(
    model: &Path,
    src: &ModelSource,
    tasks: &[(TaskSpec, Vec<Request>)],
    a: &TaskOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<TaskRun> {
    let t0 = Instant::now();
    let model_key = model.display().to_string();
    let cache = match &a.cache {
        Some(p) => read_cache(p, &model_key)?,
        None => HashMap::new(),
    };
    let cfg = &src.config;
    let bos = src.tokenizer.adds_bos();
    let prefix = bos.or(cfg.bos_token_id).or(cfg.eos_token_id);
    let max_len = a.max_length.unwrap_or(cfg.max_position_embeddings).max(2);

    // Tokenize: every distinct string once (a document's context serves all its choices).
    let memo: RefCell<HashMap<String, Vec<u32>>> = RefCell::new(HashMap::new());
    let encode = |s: &str| -> Result<Vec<u32>> {
        if let Some(v) = memo.borrow().get(s) {
            return Ok(v.clone());
        }
        let mut v: Vec<u32> = bos.into_iter().collect();
        v.extend(src.tokenizer.encode(s, false)?);
        memo.borrow_mut().insert(s.to_string(), v.clone());
        Ok(v)
    };
    let mut scores: Vec<Vec<Option<(f64, bool)>>> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut from_cache = 0usize;
    for (t, (spec, reqs)) in tasks.iter().enumerate() {
        let mut s = vec![None; reqs.len()];
        for (i, r) in reqs.iter().enumerate() {
            let key = (spec.task.clone(), spec.variant.clone(), r.doc_id, r.idx);
            if let Some(c) = cache.get(&key) {
                s[i] = Some((c.logprob, c.greedy));
                from_cache += 1;
                continue;
            }
            let what = || format!("{} document {} choice {}", spec.name(), r.doc_id, r.idx);
            let (ctx, cont) =
                encode_pair(&encode, &r.context, &r.continuation, prefix).with_context(what)?;
            let row = request_row(&ctx, &cont, max_len).with_context(what)?;
            jobs.push(Job {
                task: t,
                req: i,
                row,
            });
        }
        memo.borrow_mut().clear();
        scores.push(s);
    }
    drop(cache);

    // Which rows run, in which passes.
    let inputs: Vec<&[u32]> = jobs.iter().map(|j| j.row.input.as_slice()).collect();
    let host = share_prefixes(&inputs);
    let running: Vec<(usize, usize)> = (0..jobs.len())
        .filter(|&i| host[i] == i)
        .map(|i| (i, jobs[i].row.input.len()))
        .collect();
    let passes = plan_passes(&running, a.pass_tokens.max(1));
    // Within a pass, forward batches of rows of about one length (the pass is sorted longest
    // first), each padded to its longest row: row -> (pass, batch, slot).
    let mut slot = vec![(usize::MAX, 0usize, 0usize); jobs.len()];
    let mut batches: Vec<Vec<Vec<usize>>> = Vec::with_capacity(passes.len());
    for (p, rows) in passes.iter().enumerate() {
        let lens: Vec<(usize, usize)> =
            rows.iter().map(|&r| (r, jobs[r].row.input.len())).collect();
        let b = plan_passes(&lens, a.batch_tokens.max(1));
        for (bi, rows) in b.iter().enumerate() {
            for (k, &r) in rows.iter().enumerate() {
                slot[r] = (p, bi, k);
            }
        }
        batches.push(b);
    }
    let mut per_pass: Vec<Vec<usize>> = vec![Vec::new(); passes.len()];
    for i in 0..jobs.len() {
        per_pass[slot[host[i]].0].push(i);
    }

    let head = if jobs.is_empty() {
        None
    } else {
        Some(Streamed::new(cfg, src.tensors.as_ref()).head()?)
    };
    let mut writer = match &a.cache {
        Some(p) if !jobs.is_empty() => Some(CacheWriter::open(p)?),
        _ => None,
    };
    let h = cfg.hidden_size;
    let total = jobs.len() as u64;
    let mut pos = 0u64;
    progress(0, total);
    let t_score = Instant::now();
    let (mut padded, mut real) = (0usize, 0usize);
    for (p, pass_batches) in batches.iter().enumerate() {
        let mut groups: Vec<(Vec<u32>, usize, usize)> = Vec::with_capacity(pass_batches.len());
        for rows in pass_batches {
            let seq = jobs[rows[0]].row.input.len();
            let n = rows.len();
            let mut ids = vec![0u32; n * seq];
            for (k, &r) in rows.iter().enumerate() {
                let inp = &jobs[r].row.input;
                ids[k * seq..k * seq + inp.len()].copy_from_slice(inp);
                real += inp.len();
            }
            padded += n * seq;
            groups.push((ids, n, seq));
        }
        // the bar moves with the layers of a pass, by that pass's share of the requests
        let (done, share) = (pos, per_pass[p].len() as u64);
        let mut layer_done =
            |d: usize, t: usize| progress(done + share * d as u64 / (t as u64 + 1), total);
        let hidden = batched_hidden_states(cfg, src.tensors.as_ref(), &groups, &mut layer_done)
            .with_context(|| {
                format!(
                    "pass {} of {} ({} rows)",
                    p + 1,
                    passes.len(),
                    passes[p].len()
                )
            })?;
        let head = head.as_ref().unwrap();
        let vocab = head.vocab();
        // The head on the positions that predict continuation tokens, some rows at a time.
        const ROWS: usize = 256;
        let mine = &per_pass[p];
        let mut lines: Vec<CacheLine> = Vec::with_capacity(mine.len());
        let mut j0 = 0;
        while j0 < mine.len() {
            let mut j1 = j0;
            let mut m = 0;
            while j1 < mine.len() && (j1 == j0 || m + jobs[mine[j1]].row.targets.len() <= ROWS) {
                m += jobs[mine[j1]].row.targets.len();
                j1 += 1;
            }
            let mut gathered = Vec::with_capacity(m * h);
            let mut offs = Vec::with_capacity(j1 - j0);
            for &j in &mine[j0..j1] {
                let row = &jobs[j].row;
                let (_, b, k) = slot[host[j]];
                let (hid, seq) = (&hidden[b], groups[b].2);
                offs.push(gathered.len() / h);
                for q in row.first..row.first + row.targets.len() {
                    let at = k * seq + q;
                    gathered.extend_from_slice(&hid[at * h..(at + 1) * h]);
                }
            }
            let logits = head.logits(&gathered, m);
            let scored: Vec<(f64, bool)> = mine[j0..j1]
                .par_iter()
                .zip(&offs)
                .map(|(&j, &o)| {
                    let t = &jobs[j].row.targets;
                    continuation_logprob(&logits[o * vocab..(o + t.len()) * vocab], vocab, t)
                })
                .collect();
            for (&j, (lp, greedy)) in mine[j0..j1].iter().zip(scored) {
                let job = &jobs[j];
                let (spec, reqs) = &tasks[job.task];
                let r = &reqs[job.req];
                if !lp.is_finite() {
                    bail!(
                        "{} document {} choice {}: the log-likelihood is {lp} (the logits overflow)",
                        spec.name(),
                        r.doc_id,
                        r.idx
                    );
                }
                scores[job.task][job.req] = Some((lp, greedy));
                lines.push(CacheLine {
                    model: model_key.clone(),
                    task: spec.task.clone(),
                    variant: spec.variant.clone(),
                    doc_id: r.doc_id,
                    idx: r.idx,
                    logprob: lp,
                    tokens: job.row.targets.len(),
                    greedy,
                });
            }
            j0 = j1;
        }
        if let Some(w) = writer.as_mut() {
            w.append(&lines)?;
        }
        pos = done + lines.len() as u64;
        progress(pos, total);
    }
    let seconds = t_score.elapsed().as_secs_f64();

    let mut results: Vec<(String, TaskMetrics)> = Vec::new();
    for ((spec, reqs), s) in tasks.iter().zip(&scores) {
        let (lp, greedy): (Vec<f64>, Vec<bool>) =
            s.iter().map(|x| x.expect("every request scored")).unzip();
        results.push((spec.name(), task_metrics(reqs, &lp, &greedy)?));
    }
    Ok(TaskRun {
        results,
        requests: tasks.iter().map(|t| t.1.len()).sum(),
        scored: jobs.len(),
        cached: from_cache,
        forward_rows: running.len(),
        passes: passes.len(),
        tokens: real,
        padded_tokens: padded,
        seconds,
        wall_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The final normed hidden states of groups of rows, group `g` holding `n` rows of `seq` tokens
/// (`ids.len() == n * seq`), run as one forward batch each. As [`Streamed::hidden_states`], one
/// decoder layer is loaded (dequantized) at a time, but once for all groups, so rows of
/// different lengths need no common padding. `progress(layers_done, layers)` after each layer.
fn batched_hidden_states(
    cfg: &ModelConfig,
    tensors: &dyn TensorSource,
    groups: &[(Vec<u32>, usize, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f32>>> {
    let h = cfg.hidden_size;
    let mut xs: Vec<Vec<f32>> = groups
        .iter()
        .map(|(ids, n, seq)| {
            if ids.len() != n * seq {
                bail!("expected {n} x {seq} token ids, got {}", ids.len());
            }
            shrink_model::model::embed_ids(cfg, tensors, ids)
        })
        .collect::<Result<_>>()?;
    let max_seq = groups.iter().map(|g| g.2).max().unwrap_or(1);
    let rope = Rope::new(cfg, max_seq);
    for i in 0..cfg.num_layers {
        let mut layer = DecoderLayer::load(tensors, cfg, i)?;
        for (x, (_, n, seq)) in xs.iter_mut().zip(groups) {
            layer.forward(cfg, &rope, x, *n, *seq, &mut NoHook)?;
            if let Some(j) = x.iter().position(|v| !v.is_finite()) {
                bail!(
                    "layer {i}: its output has a non-finite value ({}) at token {} of a row of {seq} (the activations overflow)",
                    x[j],
                    (j / h) % seq
                );
            }
        }
        progress(i + 1, cfg.num_layers);
    }
    let norm = load_final_norm(cfg, tensors)?;
    xs.iter().map(|x| final_norm(cfg, &norm, x)).collect()
}
