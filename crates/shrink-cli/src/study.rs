//! `shrink study calibration`: a ready-made sweep over calibration sources and seeds.
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Study {
    /// How much does the result depend on the calibration data? For each recipe (--stage), vary
    /// the source (the text of --calib, the model's own generated text, their half-and-half
    /// mixture) and the seed; report mean ± sd per source and which differences between sources
    /// are larger than the seed noise (Welch's t-test). A sweep underneath: DIR/grid.toml is
    /// the grid it runs, and the sweep resumes when killed.
    Calibration(Box<CalibStudyArgs>),
}

#[derive(clap::Args)]
#[command(after_long_help = "EXAMPLE:\n  \
shrink study calibration --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\\n    \
--stage method=gptq,bits=3,group_size=64 --stage method=sparsegpt,sparsity=0.5 \\\n    \
--calib data/calib.txt --eval data/eval.txt --seeds 5 --out out/study")]
pub struct CalibStudyArgs {
    /// The model to compress (a Hugging Face directory or a .gguf file).
    #[arg(long, short)]
    model: PathBuf,
    /// A recipe to study, as a recipe stage's keys: `method=gptq,bits=3,group_size=64` (repeat
    /// for several recipes).
    #[arg(long, required = true, value_name = "KEY=VALUE,...")]
    stage: Vec<String>,
    /// The real calibration text (a file, .jsonl or directory).
    #[arg(long)]
    calib: PathBuf,
    /// The field of a .jsonl --calib.
    #[arg(long)]
    calib_field: Option<String>,
    /// Leave out the self-generated source (and the mixture).
    #[arg(long)]
    no_self: bool,
    /// The evaluation text (perplexity, KL divergence and top-1 against the original).
    #[arg(long)]
    eval: PathBuf,
    /// Evaluate on its first N tokens.
    #[arg(long, value_name = "N")]
    eval_max_tokens: Option<usize>,
    /// Seeds 0..N per source (at least 2; 5 or more to tell sources apart).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Calibration windows per source and seed.
    #[arg(long, default_value_t = 32)]
    nsamples: usize,
    /// Tokens per window (generating them is the slow part of the self source).
    #[arg(long, default_value_t = 256)]
    seqlen: usize,
    /// The study's directory (a sweep directory: results.jsonl, report.html, report.md).
    #[arg(long, short)]
    out: PathBuf,
}

/// A stage spec `k=v,k=v` as TOML lines (numbers and booleans as they are, the rest quoted).
fn stage_toml(spec: &str) -> Result<(String, String)> {
    let mut lines = String::new();
    let mut name = Vec::new();
    for kv in spec.split(',').filter(|s| !s.trim().is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--stage {spec:?}: '{kv}' is not KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || k.is_empty() {
            bail!("--stage {spec:?}: '{k}' is not a key");
        }
        let val = if v.parse::<f64>().is_ok() || v == "true" || v == "false" {
            v.to_string()
        } else {
            format!("{v:?}")
        };
        writeln!(lines, "{k} = {val}")?;
        name.push(
            v.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>(),
        );
    }
    if lines.is_empty() {
        bail!("--stage is empty");
    }
    Ok((name.join("-"), lines))
}

pub fn run(s: Study, quiet: bool) -> Result<()> {
    let Study::Calibration(a) = s;
    if a.seeds < 2 {
        bail!(
            "--seeds must be at least 2 (the seed noise needs two), got {}",
            a.seeds
        );
    }
    let mut g = String::new();
    writeln!(
        g,
        "# shrink study calibration: this sweep's grid (written by the study)\nseeds = {:?}\n",
        (0..a.seeds).collect::<Vec<_>>()
    )?;
    writeln!(g, "[eval]\ntext = {:?}", a.eval)?;
    if let Some(n) = a.eval_max_tokens {
        writeln!(g, "max_tokens = {n}")?;
    }
    let src = |name: &str, file: &str, field: Option<&String>| -> String {
        let mut t = format!("\n[[calibration]]\nname = \"{name}\"\nfile = {file:?}\n");
        if let Some(f) = field {
            t += &format!("field = {f:?}\n");
        }
        t + &format!("nsamples = {}\nseqlen = {}\n", a.nsamples, a.seqlen)
    };
    g += &src("text", &a.calib.to_string_lossy(), a.calib_field.as_ref());
    if !a.no_self {
        g += &src("self", shrink_calib::GENERATED_SELF, None);
        g += &format!(
            "\n[[calibration]]\nname = \"mix\"\nmix = {{ text = 0.5, self = 0.5 }}\nnsamples = {}\nseqlen = {}\n",
            a.nsamples, a.seqlen
        );
    }
    let mut names = Vec::new();
    for spec in &a.stage {
        let (name, body) = stage_toml(spec)?;
        if names.contains(&name) {
            bail!("--stage {spec:?} is given twice");
        }
        write!(
            g,
            "\n[[recipe]]\nname = \"{name}\"\n[[recipe.stage]]\n{body}"
        )?;
        names.push(name);
    }
    // checked as the sweep will read it, before anything is written
    shrink_recipe::sweep::Grid::parse(&g).context("the study's grid")?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create", a.out.display()))?;
    let grid = a.out.join("grid.toml");
    match std::fs::read_to_string(&grid) {
        Ok(old) if old != g => bail!(
            "{} holds a study with other settings (its grid.toml differs): use another --out",
            a.out.display()
        ),
        _ => {}
    }
    std::fs::write(&grid, &g).with_context(|| format!("{}: cannot write", grid.display()))?;
    crate::sweep::run(
        crate::sweep::SweepArgs {
            model: a.model.clone(),
            grid,
            out: a.out.clone(),
            keep_models: false,
            report_only: false,
            profile: None,
            tasks_data: shrink_eval::tasks::DEFAULT_DATA_DIR.into(),
        },
        quiet,
    )?;
    // the verdicts, on the terminal too
    let results = shrink_recipe::sweep::read_results(&a.out.join("results.jsonl"))?;
    let (points, _) = shrink_report::aggregate(&results);
    for p in &points {
        eprintln!(
            "{:<28} {:<6} perplexity {:<18} KLD {}",
            p.recipe,
            p.calibration.as_deref().unwrap_or("-"),
            p.perplexity.show(3),
            p.kld.show(4)
        );
    }
    for d in shrink_report::source_differences(&points) {
        eprintln!(
            "{} {}: {} {:.4} vs {} {:.4}: {} (Welch t {:.2}, p {:.3})",
            d.recipe,
            d.metric,
            d.a,
            d.mean_a,
            d.b,
            d.mean_b,
            if d.beyond_noise {
                "larger than the seed noise"
            } else {
                "within the seed noise"
            },
            d.t,
            d.p
        );
    }
    Ok(())
}
