//! `shrink sweep`: run a grid of recipes × calibration sources × seeds and report it.
use anyhow::{Context, Result};
use shrink_recipe::sweep::{self, Grid, SweepArgs as Run};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_long_help = "GRID (TOML):\n  \
seeds = [0, 1, 2]\n\n  \
[eval]\n  text = \"data/eval.txt\"        # perplexity, KL divergence, top-1 against the original\n  \
max_tokens = 8192             # optional: its first N tokens\n  \
tasks = [\"arc_easy\", \"piqa\"]   # optional: task accuracy (compress --eval-tasks)\n  \
tasks_limit = 100             # optional: first N documents per task\n\n  \
[[calibration]]               # one or more sources\n  name = \"wiki\"\n  file = \"data/calib.txt\"       \
# a recipe's [calibration] keys, less seed\n  nsamples = 64\n  seqlen = 512\n\n  \
[[calibration]]\n  name = \"self\"\n  file = \"generated:self\"      # the model samples its own text (seeded, from BOS)\n  \
nsamples = 64\n  seqlen = 512\n\n  \
[[calibration]]\n  name = \"faq\"\n  file = \"generated:family=models/bigger.gguf\"   # FAQ: a larger sibling (same vocabulary)\n  \
from = \"wiki\"                 # regenerates this source's windows, seed for seed\n  \
candidates = 2                # per window; the family model's lowest mean NLL is kept\n  \
prompt_tokens = 128           # of each window, kept as the prompt (default seqlen / 4)\n  \
nsamples = 64\n  seqlen = 512\n\n  \
[[calibration]]\n  name = \"half\"\n  mix = { wiki = 0.5, self = 0.5 }   # the first windows of each, by weight\n  \
nsamples = 64\n  seqlen = 512\n\n  \
[[recipe]]                    # one or more recipes\n  name = \"gptq-w4g64\"\n  \
[[recipe.stage]]              # a recipe's tables: stages, overrides, ignore\n  method = \"gptq\"\n  bits = 4\n  group_size = 64\n\n\
Each recipe runs once per calibration source and seed; a data-free recipe (rtn, magnitude)\n\
runs once. Cells run one after the other, each a `shrink compress` evaluated against the\n\
original. A killed sweep continues where it stopped when run again: finished cells are kept,\n\
the running one continues from its checkpoint.\n\n\
OUTPUT (--out DIR):\n  \
results.jsonl    one JSON object per finished cell: recipe, calibration, seed, bytes, bpw,\n                   \
perplexity, kld_mean, top1_agreement, tasks, ...\n  \
report.html      self-contained: Pareto plots, the table (mean ± sd over seeds), profiles\n  \
report.md        the same with plots/*.png\n  \
plots/           SVG and PNG\n  \
cells/ID/        each cell's report.json and recipe.toml\n  \
calib/           the calibration tokens of each source and seed (shared by the recipes)\n\n\
EXAMPLE:\n  \
shrink sweep --model models/SmolLM2-135M-Instruct.Q4_1.gguf --grid examples/sweep.toml --out out/sweep")]
pub struct SweepArgs {
    /// The model every cell compresses (a Hugging Face directory or a .gguf file).
    #[arg(long, short)]
    pub model: PathBuf,
    /// The grid file (TOML; see below).
    #[arg(long, short)]
    pub grid: PathBuf,
    /// The sweep's directory: created, or continued when it holds this sweep's results.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Keep each cell's model files (by default only its report.json and recipe.toml stay).
    #[arg(long)]
    pub keep_models: bool,
    /// Do not run anything: write the report from the cells finished so far.
    #[arg(long)]
    pub report_only: bool,
    /// Also draw this cell's per-linear error profile (a cell id from results.jsonl).
    #[arg(long, value_name = "CELL")]
    pub profile: Option<String>,
    /// The oe_eval_tasks folder, for [eval] tasks.
    #[arg(long, value_name = "DIR", default_value = shrink_eval::tasks::DEFAULT_DATA_DIR)]
    pub tasks_data: PathBuf,
}

pub fn run(a: SweepArgs, quiet: bool) -> Result<()> {
    let grid = Grid::load(&a.grid)?;
    let args = Run {
        model: a.model.clone(),
        grid: a.grid.clone(),
        out: a.out.clone(),
        keep_models: a.keep_models,
        tasks_data: a.tasks_data.clone(),
    };
    let results = if a.report_only {
        let p = a.out.join("results.jsonl");
        if !p.exists() {
            anyhow::bail!(
                "{}: no results to report (run the sweep first)",
                p.display()
            );
        }
        sweep::read_results(&p)?
    } else {
        sweep::run(&args, &crate::progress::Term { quiet })?.results
    };
    let cells = a.out.join("cells");
    let cell_report = |id: &str| -> Option<serde_json::Value> {
        let t = std::fs::read_to_string(cells.join(id).join("report.json")).ok()?;
        serde_json::from_str(&t).ok()
    };
    let mut notes = vec![
        format!("model: {}", a.model.display()),
        format!(
            "evaluation: {}{}, GPTQ protocol (windows of 512), against the original model{}",
            grid.eval.text.display(),
            grid.eval
                .max_tokens
                .map(|n| format!(" (first {n} tokens)"))
                .unwrap_or_default(),
            if grid.eval.tasks.is_empty() {
                String::new()
            } else {
                format!(
                    "; tasks {} ({} documents each)",
                    grid.eval.tasks.join(", "),
                    grid.eval
                        .tasks_limit
                        .map(|n| format!("first {n}"))
                        .unwrap_or("all".into())
                )
            }
        ),
        "size (MB, bytes/1e6): compressed linears as compressed-tensors packs them (codes, f16 \
         scales, zero points); a linear only pruned as sparse-bitmask (16-bit kept values + 1 \
         bit per weight); every other tensor at 16 bits. bpw: the compressed linears alone."
            .into(),
        format!(
            "{} cells; seeds {:?}; mean ± sample sd over seeds",
            results.len(),
            grid.seeds
        ),
    ];
    if a.model.extension().is_some_and(|e| e == "gguf") {
        notes.push(
            "the original is the GGUF file's weights dequantized to f32 (no unquantized model \
             is available): absolute figures are against it"
                .into(),
        );
    }
    let w = shrink_report::write(
        &a.out,
        &shrink_report::ReportInput {
            title: format!(
                "shrink sweep: {}",
                a.model.file_name().unwrap_or_default().to_string_lossy()
            ),
            notes,
            results: &results,
            cell_report: &cell_report,
            profile_cell: a.profile.clone(),
        },
    )
    .context("writing the report")?;
    if let Some(why) = &w.no_plots {
        eprintln!("note: the report has no plots: {why}");
    }
    eprintln!("report: {} ({})", w.html.display(), w.md.display());
    Ok(())
}
