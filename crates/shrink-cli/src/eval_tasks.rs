//! `shrink eval-tasks`: multiple-choice task accuracy by lm-evaluation-harness's log-likelihood
//! protocol, on OLMES's requests (`scripts/fetch --tasks`). The scoring rules are in
//! `shrink_eval::tasks`; this runs the model over the requests.
//!
//! How the work is shared: every document's context is tokenized once (all its choices reuse
//! it); a request whose input tokens are a prefix of another's is read from that one's forward
//! ([`share_prefixes`]: identical inputs, one-token continuations of one context); the rows that
//! do run are sorted by length and cut into passes of at most `--pass-tokens` padded tokens
//! ([`plan_passes`]), so rows of similar length (often the choices of one document) go through
//! the model together with little padding, and each pass dequantizes each layer once for all of
//! its rows ([`Streamed`]). Rows are right-padded: a causal model's logits at a position do not
//! see the padding after it. The head runs only on the positions that predict continuation
//! tokens.
use crate::progress;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde_json::json;
use shrink_eval::peak_rss_mb;
use shrink_eval::tasks::{
    continuation_logprob, encode_pair, load_requests, plan_passes, read_cache, request_row,
    requests_path, share_prefixes, task_metrics, tasks_json, CacheLine, CacheWriter, Request, Row,
    TaskMetrics, TaskSpec, DEFAULT_DATA_DIR,
};
use shrink_model::model::{final_norm, load_final_norm};
use shrink_model::stream::Streamed;
use shrink_model::{DecoderLayer, ModelConfig, ModelSource, NoHook, Rope, TensorSource};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct EvalTasksArgs {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long, short)]
    model: PathBuf,
    /// Comma-separated tasks, each TASK or TASK:VARIANT (a folder under --data and one of its
    /// variant folders; the variant defaults to rc_0shot), e.g. piqa,arc_easy:rc_5shot,hellaswag.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Score only the first N documents of each task (all their choices).
    #[arg(long)]
    limit: Option<usize>,
    /// The oe_eval_tasks folder (scripts/fetch --tasks puts it at data/oe_eval_tasks).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Print one JSON object: {"tasks": {NAME: {acc, acc_per_char, acc_stderr,
    /// acc_per_char_stderr, docs}}, ...} plus counts and timing.
    #[arg(long)]
    json: bool,
    /// A JSON-lines file of per-request scores (task, variant, doc_id, idx, logprob): scores
    /// found there are not computed again, new ones are appended (flushed after every pass), so
    /// an interrupted run resumes where it stopped. One file per model.
    #[arg(long, value_name = "FILE")]
    cache: Option<PathBuf>,
    /// Padded tokens per pass through the model (each pass dequantizes every layer once and
    /// keeps its rows' hidden states; the cache is written after each).
    #[arg(long, default_value_t = 8192)]
    pass_tokens: usize,
    /// Padded tokens per forward batch within a pass (rows of about one length, sorted, each
    /// batch padded to its longest row).
    #[arg(long, default_value_t = 1024)]
    batch_tokens: usize,
    /// Longest input in tokens (lm-eval's max_length: longer requests keep their last tokens);
    /// default the model's max_position_embeddings.
    #[arg(long)]
    max_length: Option<usize>,
}

/// A request still to score: its task, its index there, what the model must run.
struct Job {
    task: usize,
    req: usize,
    row: Row,
}

pub fn run(a: EvalTasksArgs, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let mut specs: Vec<TaskSpec> = Vec::new();
    for s in &a.tasks {
        let spec = TaskSpec::parse(s)?;
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    if specs.is_empty() {
        bail!("--tasks is empty");
    }
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let mut tasks: Vec<(TaskSpec, Vec<Request>)> = Vec::new();
    for spec in specs {
        let path = requests_path(&a.data, &spec)?;
        let reqs = load_requests(&path, a.limit)?;
        tasks.push((spec, reqs));
    }
    let src = ModelSource::open(&a.model)?;
    let model_key = a.model.display().to_string();
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
    let mut scores: Vec<Vec<Option<f64>>> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut from_cache = 0usize;
    for (t, (spec, reqs)) in tasks.iter().enumerate() {
        let mut s = vec![None; reqs.len()];
        for (i, r) in reqs.iter().enumerate() {
            let key = (spec.task.clone(), spec.variant.clone(), r.doc_id, r.idx);
            if let Some(c) = cache.get(&key) {
                s[i] = Some(c.logprob);
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
    let bar = progress::bar(jobs.len() as u64, "requests", quiet || a.json);
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
        let (done, share) = (bar.position(), per_pass[p].len() as u64);
        let mut layer_done =
            |d: usize, t: usize| bar.set_position(done + share * d as u64 / (t as u64 + 1));
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
                scores[job.task][job.req] = Some(lp);
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
        bar.set_position(done + lines.len() as u64);
    }
    bar.finish_and_clear();
    let seconds = t_score.elapsed().as_secs_f64();

    let mut results: Vec<(String, TaskMetrics)> = Vec::new();
    for ((spec, reqs), s) in tasks.iter().zip(&scores) {
        let lp: Vec<f64> = s.iter().map(|x| x.expect("every request scored")).collect();
        results.push((spec.name(), task_metrics(reqs, &lp)?));
    }
    let requests: usize = tasks.iter().map(|t| t.1.len()).sum();
    let rps = if seconds > 0.0 {
        jobs.len() as f64 / seconds
    } else {
        0.0
    };
    if a.json {
        let mut v = tasks_json(&results);
        let o = v.as_object_mut().unwrap();
        o.insert("model".into(), json!(a.model));
        o.insert("limit".into(), json!(a.limit));
        o.insert("requests".into(), json!(requests));
        o.insert("scored_requests".into(), json!(jobs.len()));
        o.insert("cached_requests".into(), json!(from_cache));
        o.insert("forward_rows".into(), json!(running.len()));
        o.insert("passes".into(), json!(passes.len()));
        o.insert("tokens".into(), json!(real));
        o.insert("padded_tokens".into(), json!(padded));
        o.insert("seconds".into(), json!(seconds));
        o.insert("requests_per_second".into(), json!(rps));
        o.insert("wall_seconds".into(), json!(t0.elapsed().as_secs_f64()));
        o.insert("peak_rss_mb".into(), json!(peak_rss_mb()));
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{:<24} {:>6} {:>16} {:>16}",
            "task", "docs", "acc", "acc_per_char"
        );
        for (name, m) in &results {
            println!(
                "{:<24} {:>6} {:>7.4} ± {:.4} {:>7.4} ± {:.4}",
                name, m.docs, m.acc, m.acc_stderr, m.acc_per_char, m.acc_per_char_stderr
            );
        }
        println!(
            "{requests} requests ({} scored, {from_cache} from the cache) in {} forward rows, {} passes, {real} tokens ({padded} padded); {seconds:.1} s, {rps:.1} requests/s",
            jobs.len(),
            running.len(),
            passes.len()
        );
    }
    Ok(())
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
