//! `shrink eval-tasks`: multiple-choice task accuracy by lm-evaluation-harness's log-likelihood
//! protocol, on OLMES's requests (`scripts/fetch --tasks`); the work is
//! `shrink_eval::task_run`'s.
use crate::progress;
use anyhow::Result;
use serde_json::json;
use shrink_eval::task_run::{load_tasks, score_tasks, TaskOptions};
use shrink_eval::tasks::DEFAULT_DATA_DIR;
use shrink_model::ModelSource;
use std::path::PathBuf;

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

pub fn run(a: EvalTasksArgs, quiet: bool) -> Result<()> {
    let opts = TaskOptions {
        limit: a.limit,
        data: a.data.clone(),
        cache: a.cache.clone(),
        pass_tokens: a.pass_tokens,
        batch_tokens: a.batch_tokens,
        max_length: a.max_length,
    };
    let tasks = load_tasks(&a.tasks, &opts)?;
    let src = ModelSource::open(&a.model)?;
    let bar = progress::bar(0, "requests", quiet || a.json);
    let r = score_tasks(&a.model, &src, &tasks, &opts, &mut |d, n| {
        bar.set_length(n);
        bar.set_position(d)
    })?;
    bar.finish_and_clear();
    if a.json {
        let mut v = r.to_json();
        let o = v.as_object_mut().unwrap();
        o.insert("model".into(), json!(a.model));
        o.insert("limit".into(), json!(a.limit));
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{:<24} {:>6} {:>16} {:>16}",
            "task", "docs", "acc", "acc_per_char"
        );
        for (name, m) in &r.results {
            println!(
                "{:<24} {:>6} {:>7.4} ± {:.4} {:>7.4} ± {:.4}",
                name, m.docs, m.acc, m.acc_stderr, m.acc_per_char, m.acc_per_char_stderr
            );
        }
        println!(
            "{} requests ({} scored, {} from the cache) in {} forward rows, {} passes, {} tokens ({} padded); {:.1} s, {:.1} requests/s",
            r.requests,
            r.scored,
            r.cached,
            r.forward_rows,
            r.passes,
            r.tokens,
            r.padded_tokens,
            r.seconds,
            r.requests_per_second()
        );
    }
    Ok(())
}
