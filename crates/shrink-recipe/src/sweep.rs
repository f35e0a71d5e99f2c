//! Sweeps: a grid of recipes × calibration sources × seeds, each cell one compress [`job`] run,
//! its size and quality recorded as one line of `results.jsonl` (`shrink sweep`).
//!
//! The grid file reuses the recipe format:
//!
//! ```toml
//! seeds = [0, 1, 2]
//!
//! [eval]
//! text = "data/eval.txt"       # perplexity, KL divergence and top-1 against the original
//! max_tokens = 8192            # the first N tokens of it (whole windows of 512)
//! tasks = ["arc_easy"]         # optional: task accuracy (as compress --eval-tasks)
//! tasks_limit = 100
//!
//! [[calibration]]
//! name = "wiki"
//! file = "data/calib.txt"      # the keys of a recipe's [calibration], less `seed`
//! nsamples = 64
//! seqlen = 512
//!
//! [[calibration]]
//! name = "self"
//! file = "generated:self"      # the model samples its own calibration text (data-free)
//! nsamples = 64
//! seqlen = 512
//!
//! [[calibration]]
//! name = "faq"
//! file = "generated:family=models/bigger-sibling.gguf"   # FAQ: a larger model of the family
//! from = "wiki"                # regenerates the windows of this text source, seed for seed
//! candidates = 2               # per window; the family model's lowest mean NLL is kept
//! prompt_tokens = 128          # of each original window, kept as the prompt
//! nsamples = 64
//! seqlen = 512
//!
//! [[calibration]]
//! name = "half"
//! mix = { wiki = 0.5, self = 0.5 }   # a mixture of the sources above, by weight
//! nsamples = 64
//!
//! [[recipe]]
//! name = "gptq-w4g64"
//! [[recipe.stage]]             # the tables of a recipe (stages, overrides, ignore, ...)
//! method = "gptq"
//! bits = 4
//! group_size = 64
//! ```
//!
//! A mixture of `nsamples` windows takes, for each seed, the first round(n·w/Σw) windows of each
//! named source's set of that seed (the last source gets the remainder); the sources must have
//! the mixture's seqlen and at least that many windows, and their own sets are drawn (or
//! generated) once and shared with the cells that use them alone.
//!
//! Every recipe runs once per calibration source and seed, except a data-free one (every stage
//! `rtn` or `magnitude`, and no `[recipe.awq]`): it needs no calibration, so it runs once
//! (`calibration` and `seed` null). Cells run in grid order: recipes, then calibration sources, then seeds.
//!
//! The output directory holds:
//! - `sweep.json`: what the results belong to (the model and the evaluation); another sweep's
//!   directory is refused;
//! - `results.jsonl`: one JSON object per finished cell (see [`Record`]), in grid order; it holds
//!   no timings, so an interrupted and resumed sweep writes the same file as an uninterrupted one;
//! - `calib/NAME-sSEED.safetensors`: the calibration tokens of each source and seed, drawn once
//!   and shared by every recipe (compress --calib-ids);
//! - `cells/ID/`: each cell's `report.json` (per-layer errors, timings) and `recipe.toml` (the
//!   model files are removed once the cell is measured unless `keep_models`);
//! - `original_tasks.jsonl`: the original's task scores, computed once (compress
//!   --eval-tasks-cache).
//!
//! A killed sweep continues where it stopped: finished cells are never redone, and the cell that
//! was running continues from its compress checkpoint (compress --resume).
//!
//! [`job`]: crate::job
use crate::job::{self, CompressJob, Ui};
use crate::{CalibSection, Recipe};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The `[eval]` table of a grid.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// The evaluation text (compress --eval).
    pub text: PathBuf,
    /// Evaluate on its first N tokens only (compress --eval-max-tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Tasks scored on both models (compress --eval-tasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// The first N documents of each task (compress --eval-tasks-limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_limit: Option<usize>,
}

/// A `[[calibration]]` source of a grid: a name and a recipe's `[calibration]` keys but `seed`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalibSource {
    pub name: String,
    /// A text, JSON-lines file or directory, or `generated:self`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A mixture of other sources of the grid, by weight (instead of `file`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mix: BTreeMap<String, f64>,
    /// FAQ (`file = "generated:family=MODEL"`): the text source of the grid whose windows of
    /// the same seed the family model regenerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// FAQ: candidates per window (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<usize>,
    /// FAQ: tokens of each original window kept as the prompt (default a quarter of seqlen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsamples: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seqlen: Option<usize>,
}

/// A `[[recipe]]` of a grid.
#[derive(Clone, Debug, PartialEq)]
pub struct GridRecipe {
    pub name: String,
    pub recipe: Recipe,
    /// Every stage is `rtn` or `magnitude`: no calibration, one cell.
    pub data_free: bool,
}

/// A parsed grid file.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub recipes: Vec<GridRecipe>,
    pub calibrations: Vec<CalibSource>,
    pub seeds: Vec<u64>,
    pub eval: EvalSection,
}

/// One run of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// `RECIPE`, or `RECIPE.CALIBRATION.sSEED`: the cell's directory name under `cells/`.
    pub id: String,
    pub recipe: usize,
    /// Indices into the grid's calibration sources and seeds; `None` for a data-free recipe.
    pub calibration: Option<usize>,
    pub seed: Option<u64>,
}

const TOP_KEYS: [&str; 4] = ["seeds", "eval", "calibration", "recipe"];

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(
            "{what} name '{name}': use letters, digits, '-' and '_' only (it names the cell's \
             directory)"
        );
    }
    Ok(())
}

impl Grid {
    pub fn load(path: &Path) -> Result<Grid> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the grid", path.display()))?;
        Grid::parse(&text).with_context(|| format!("grid {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Grid> {
        let mut top: toml::Table = text
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid TOML: {e}"))?;
        if let Some(k) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
            bail!(
                "unknown key `{k}` (a grid has {})",
                TOP_KEYS.map(|k| format!("`{k}`")).join(", ")
            );
        }
        let seeds: Vec<u64> = match top.remove("seeds") {
            None => vec![0],
            Some(v) => v.try_into().map_err(|e| {
                anyhow::anyhow!("`seeds` must be a list of non-negative integers: {e}")
            })?,
        };
        if seeds.is_empty() {
            bail!("`seeds` is empty: give at least one seed (e.g. seeds = [0])");
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(s) = seeds.iter().find(|s| !seen.insert(**s)) {
            bail!("`seeds` lists {s} twice");
        }
        let eval: EvalSection = match top.remove("eval") {
            None => bail!("no [eval] table: a sweep needs `text` to evaluate every cell on"),
            Some(v) => v.try_into().map_err(|e| anyhow::anyhow!("[eval]: {e}"))?,
        };
        if eval.max_tokens == Some(0) {
            bail!("[eval] max_tokens = 0: evaluate on at least one window of 512 tokens");
        }
        let tables = |key: &str, v: Option<toml::Value>| -> Result<Vec<toml::Table>> {
            match v {
                None => Ok(vec![]),
                Some(toml::Value::Array(a)) => a
                    .into_iter()
                    .map(|x| match x {
                        toml::Value::Table(t) => Ok(t),
                        other => bail!("[[{key}]] entries must be tables, got {other}"),
                    })
                    .collect(),
                Some(other) => bail!("`{key}` must be an array of tables ([[{key}]]), got {other}"),
            }
        };
        let mut calibrations = Vec::new();
        for (i, t) in tables("calibration", top.remove("calibration"))?
            .into_iter()
            .enumerate()
        {
            if t.contains_key("seed") {
                bail!(
                    "[[calibration]] {}: `seed` is the grid's axis: list the seeds in the top-level \
                     `seeds = [...]`",
                    i + 1
                );
            }
            let c: CalibSource = t
                .try_into()
                .map_err(|e| anyhow::anyhow!("[[calibration]] {}: {e}", i + 1))?;
            check_name("calibration", &c.name)?;
            if calibrations.iter().any(|o: &CalibSource| o.name == c.name) {
                bail!("two [[calibration]] sources are named '{}'", c.name);
            }
            match (&c.file, c.mix.is_empty()) {
                (Some(_), false) | (None, true) => bail!(
                    "[[calibration]] {}: give either `file` (a text, or generated:self) or `mix`                      (other sources by weight)",
                    c.name
                ),
                _ => {}
            }
            if c.field.is_some() && c.file.is_none() {
                bail!("[[calibration]] {}: `field` needs a `file`", c.name);
            }
            calibrations.push(c);
        }
        for c in &calibrations {
            let family = c
                .file
                .as_deref()
                .and_then(crate::calib_source::family_model);
            if family.is_none()
                && (c.from.is_some() || c.candidates.is_some() || c.prompt_tokens.is_some())
            {
                bail!(
                    "[[calibration]] {}: `from`, `candidates` and `prompt_tokens` belong to a \
                     FAQ source (file = \"generated:family=MODEL\")",
                    c.name
                );
            }
            if family.is_some() {
                let Some(from) = &c.from else {
                    bail!(
                        "[[calibration]] {}: a FAQ source needs `from`, the text source whose \
                         windows the family model regenerates",
                        c.name
                    );
                };
                let ok = calibrations.iter().any(|o| {
                    &o.name == from
                        && o.file
                            .as_deref()
                            .is_some_and(|f| !crate::calib_source::is_generated(f))
                });
                if !ok {
                    bail!(
                        "[[calibration]] {}: from = '{from}' must name a [[calibration]] source \
                         with a text file",
                        c.name
                    );
                }
            }
            for (part, w) in &c.mix {
                let Some(o) = calibrations.iter().find(|o| &o.name == part) else {
                    bail!(
                        "[[calibration]] {}: mix names '{part}', which is no [[calibration]] source",
                        c.name
                    );
                };
                if !o.mix.is_empty() {
                    bail!("[[calibration]] {}: '{part}' is itself a mixture", c.name);
                }
                if !(w.is_finite() && *w > 0.0) {
                    bail!(
                        "[[calibration]] {}: the weight of '{part}' must be > 0, got {w}",
                        c.name
                    );
                }
                if o.seqlen.unwrap_or(shrink_calib::DEFAULT_SEQLEN)
                    != c.seqlen.unwrap_or(shrink_calib::DEFAULT_SEQLEN)
                {
                    bail!(
                        "[[calibration]] {}: '{part}' has another seqlen than the mixture",
                        c.name
                    );
                }
            }
        }
        let mut recipes = Vec::new();
        for (i, mut t) in tables("recipe", top.remove("recipe"))?
            .into_iter()
            .enumerate()
        {
            let name = match t.remove("name") {
                Some(toml::Value::String(s)) => s,
                Some(v) => bail!("[[recipe]] {}: `name` must be a string, got {v}", i + 1),
                None => bail!("[[recipe]] {}: no `name`", i + 1),
            };
            check_name("recipe", &name)?;
            if t.contains_key("calibration") {
                bail!(
                    "recipe '{name}': calibration is the grid's axis: put it in [[calibration]] \
                     sources, not in a recipe"
                );
            }
            let text = toml::to_string(&t).context("recipe as TOML")?;
            let recipe = Recipe::parse(&text).with_context(|| format!("recipe '{name}'"))?;
            if recipe.stage.is_empty() {
                bail!("recipe '{name}' has no [[recipe.stage]]: it would compress nothing");
            }
            for (k, s) in recipe.stage.iter().enumerate() {
                crate::build_method(s)
                    .with_context(|| format!("recipe '{name}': stage {}", k + 1))?;
            }
            if recipes.iter().any(|r: &GridRecipe| r.name == name) {
                bail!("two recipes are named '{name}'");
            }
            let data_free = !recipe.transforms_need_data()
                && recipe
                    .stage
                    .iter()
                    .all(|s| matches!(s.method.as_deref(), Some("rtn" | "magnitude")));
            recipes.push(GridRecipe {
                name,
                recipe,
                data_free,
            });
        }
        if recipes.is_empty() {
            bail!("no [[recipe]]: the grid has nothing to run");
        }
        if calibrations.is_empty() && recipes.iter().any(|r| !r.data_free) {
            let r = recipes.iter().find(|r| !r.data_free).unwrap();
            bail!(
                "no [[calibration]] source, and recipe '{}' needs calibration: add a \
                 [[calibration]] with `name` and `file`",
                r.name
            );
        }
        Ok(Grid {
            recipes,
            calibrations,
            seeds,
            eval,
        })
    }

    /// The cells, in the order they run.
    pub fn cells(&self) -> Vec<Cell> {
        let mut out = Vec::new();
        for (r, gr) in self.recipes.iter().enumerate() {
            if gr.data_free {
                out.push(Cell {
                    id: gr.name.clone(),
                    recipe: r,
                    calibration: None,
                    seed: None,
                });
                continue;
            }
            for (c, cal) in self.calibrations.iter().enumerate() {
                for &s in &self.seeds {
                    out.push(Cell {
                        id: format!("{}.{}.s{s}", gr.name, cal.name),
                        recipe: r,
                        calibration: Some(c),
                        seed: Some(s),
                    });
                }
            }
        }
        out
    }

    /// The recipe a cell runs (its calibration section filled in).
    pub fn cell_recipe(&self, cell: &Cell) -> Recipe {
        let mut r = self.recipes[cell.recipe].recipe.clone();
        if let (Some(c), Some(seed)) = (cell.calibration, cell.seed) {
            let c = &self.calibrations[c];
            r.calibration = CalibSection {
                // a mixture has no file of its own: the cell runs on its saved tokens
                file: Some(c.file.clone().unwrap_or_else(|| {
                    let parts: Vec<String> =
                        c.mix.iter().map(|(k, w)| format!("{k}={w}")).collect();
                    PathBuf::from(format!("mix:{}", parts.join(",")))
                })),
                field: c.field.clone(),
                nsamples: c.nsamples,
                seqlen: c.seqlen,
                seed: Some(seed),
            };
        }
        r
    }
}

/// FNV-1a, 64 bits: a stable fingerprint of a cell's recipe (not a security measure).
fn fingerprint(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Settings of a sweep run.
#[derive(Clone, Debug)]
pub struct SweepArgs {
    pub model: PathBuf,
    pub grid: PathBuf,
    pub out: PathBuf,
    /// Keep each cell's model files (by default only report.json and recipe.toml stay).
    pub keep_models: bool,
    /// The oe_eval_tasks folder for `[eval] tasks`.
    pub tasks_data: PathBuf,
}

/// What one finished cell measured: a line of `results.jsonl`.
///
/// - `bytes`: the model as a compressed-tensors checkpoint would store it: the compressed
///   linears as counted by [`crate::budget`] (packed codes, f16 scales, zero points), a linear
///   that is only pruned in the `sparse-bitmask` layout (16-bit kept values plus one mask bit
///   per weight; compressed-tensors 0.18's compressor), every other tensor (embeddings, head,
///   norms, linears left as they are) at 16 bits;
/// - `bpw`: the compressed linears' bits per weight in that count.
pub type Record = Value;

/// Bits of each tensor kind as counted for `bytes`.
const DENSE_BITS: u64 = 16;

/// Total parameters of a written model (its model.safetensors header).
fn safetensors_params(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let len = u64::from_le_bytes(n) as usize;
    if len > 100 << 20 {
        bail!("{}: safetensors header of {len} bytes", path.display());
    }
    let mut h = vec![0u8; len];
    f.read_exact(&mut h)
        .with_context(|| format!("{}: truncated header", path.display()))?;
    let v: Value = serde_json::from_slice(&h)
        .with_context(|| format!("{}: header is not JSON", path.display()))?;
    let mut total = 0u64;
    for (k, t) in v.as_object().into_iter().flatten() {
        if k == "__metadata__" {
            continue;
        }
        let shape = t["shape"].as_array().cloned().unwrap_or_default();
        total += shape
            .iter()
            .map(|d| d.as_u64().unwrap_or(0))
            .product::<u64>();
    }
    Ok(total)
}

/// The storage count of a cell from its report: (compressed-linear bits, their weights, label).
fn storage_bits(report: &Value) -> (u64, u64, &'static str) {
    let b = &report["totals"]["bpw"];
    if let (Some(bits), Some(w)) = (b["file_bits"].as_u64(), b["weights"].as_u64()) {
        return (
            bits,
            w,
            "compressed-tensors pack-quantized (f16 scales); zeros stored as codes",
        );
    }
    let (mut bits, mut weights) = (0u64, 0u64);
    for l in report["layers"].as_array().into_iter().flatten() {
        for lin in l["linears"].as_array().into_iter().flatten() {
            let n = lin["d_out"].as_u64().unwrap_or(0) * lin["d_in"].as_u64().unwrap_or(0);
            if let Some(p) = lin["info"]["pruned"].as_u64() {
                bits += (n - p.min(n)) * DENSE_BITS + n;
                weights += n;
            }
        }
    }
    (
        bits,
        weights,
        "sparse-bitmask: 16-bit kept values + 1 mask bit per weight",
    )
}

/// The record of a finished cell from its output directory.
fn record(grid: &Grid, cell: &Cell, hash: &str, dir: &Path) -> Result<Record> {
    let rpath = dir.join("report.json");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&rpath)
            .with_context(|| format!("{}: cannot read", rpath.display()))?,
    )
    .with_context(|| format!("{}: not JSON", rpath.display()))?;
    let params = safetensors_params(&dir.join("model.safetensors"))?;
    let (bits, weights, storage) = storage_bits(&report);
    let other = params.saturating_sub(weights);
    let bytes = (bits + other * DENSE_BITS).div_ceil(8);
    let e = &report["eval"];
    let mut tasks = BTreeMap::new();
    let mut original_tasks = BTreeMap::new();
    for (key, out) in [
        ("compressed", &mut tasks),
        ("original", &mut original_tasks),
    ] {
        for (name, m) in e["tasks"][key].as_object().into_iter().flatten() {
            out.insert(
                name.clone(),
                json!({"acc": m["acc"], "acc_per_char": m["acc_per_char"], "docs": m["docs"]}),
            );
        }
    }
    let gr = &grid.recipes[cell.recipe];
    Ok(json!({
        "cell": cell.id,
        "recipe": gr.name,
        "calibration": cell.calibration.map(|c| grid.calibrations[c].name.clone()),
        "seed": cell.seed,
        "method": report["method"],
        "recipe_fingerprint": hash,
        "bytes": bytes,
        "bpw": if weights > 0 { json!(bits as f64 / weights as f64) } else { Value::Null },
        "storage": storage,
        "sparsity": report["totals"]["sparsity"],
        "perplexity": e["compressed"]["perplexity"],
        "original_perplexity": e["original"]["perplexity"],
        "kld_mean": e["agreement"]["kld_mean"],
        "top1_agreement": e["agreement"]["top1_agreement"],
        "eval_tokens": e["agreement"]["tokens"],
        "tasks": tasks,
        "original_tasks": original_tasks,
        "mean_rel_error": report["totals"]["mean_rel_error"],
    }))
}

/// What `sweep.json` says a directory's results belong to.
fn identity(a: &SweepArgs, grid: &Grid) -> Value {
    json!({
        "shrink_sweep": 1,
        "model": a.model,
        "model_bytes": std::fs::metadata(&a.model).map(|m| m.len()).ok(),
        "eval": grid.eval,
    })
}

/// Reads `results.jsonl`: the finished cells by id. A last line cut short by a kill is dropped
/// (the file is rewritten without it).
pub fn read_results(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v["cell"].is_string() => out.push(v),
            _ if i + 1 == lines.len() && !text.ends_with('\n') => {
                // an append cut short: rewrite the file without it
                let mut keep = String::new();
                for v in &out {
                    keep.push_str(&serde_json::to_string(v)?);
                    keep.push('\n');
                }
                write_atomic(path, keep.as_bytes())?;
            }
            _ => bail!(
                "{}: line {} is not a sweep result (a cell's JSON object)",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

fn append_line(path: &Path, v: &Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for appending", path.display()))?;
    let mut line = serde_json::to_string(v)?;
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_data())
        .with_context(|| format!("{}: cannot append", path.display()))
}

/// Removes a finished cell's model files (keeps report.json and recipe.toml).
fn prune_cell(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if name != "report.json" && name != "recipe.toml" && e.file_type()?.is_file() {
            std::fs::remove_file(e.path())
                .with_context(|| format!("{}: cannot remove", e.path().display()))?;
        }
    }
    Ok(())
}

/// What a finished sweep ran.
#[derive(Debug)]
pub struct SweepOutcome {
    pub results: Vec<Record>,
    /// Cells run by this call (the others were finished before).
    pub ran: usize,
}

/// Runs every cell of the grid not yet in `results.jsonl`.
pub fn run(a: &SweepArgs, ui: &dyn Ui) -> Result<SweepOutcome> {
    let grid = Grid::load(&a.grid)?;
    // the model and the evaluation text are checked before any work
    let src = shrink_model::ModelSource::open(&a.model)?;
    for c in &grid.calibrations {
        match &c.file {
            Some(f) if crate::calib_source::family_model(f).is_some() => {
                let fam = crate::calib_source::family_model(f).unwrap();
                let fsrc = shrink_model::ModelSource::open(&fam)
                    .with_context(|| format!("calibration '{}': the family model", c.name))?;
                crate::calib_source::check_same_vocabulary(&src, &fsrc, &fam)
                    .with_context(|| format!("calibration '{}'", c.name))?;
            }
            Some(f)
                if crate::calib_source::is_generated(f)
                    && f.as_os_str() != shrink_calib::GENERATED_SELF =>
            {
                bail!(
                    "calibration '{}': unknown generated source '{}' (known: {}, {}MODEL)",
                    c.name,
                    f.display(),
                    shrink_calib::GENERATED_SELF,
                    shrink_calib::GENERATED_FAMILY
                );
            }
            Some(f) if crate::calib_source::is_generated(f) => {}
            Some(f) if !f.exists() => bail!(
                "calibration '{}': {}: no such file or directory",
                c.name,
                f.display()
            ),
            _ => {}
        }
    }
    shrink_eval::read_text(&grid.eval.text).context("[eval] text")?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create", a.out.display()))?;
    let id_path = a.out.join("sweep.json");
    let ident = identity(a, &grid);
    match std::fs::read_to_string(&id_path) {
        Ok(t) => {
            let old: Value = serde_json::from_str(&t)
                .with_context(|| format!("{}: not JSON", id_path.display()))?;
            if old != ident {
                bail!(
                    "{} holds another sweep's results (model {}, eval {}); this sweep is model {}, \
                     eval {}: use another --out, or remove that directory",
                    a.out.display(),
                    old["model"],
                    old["eval"],
                    ident["model"],
                    ident["eval"]
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if a.out.join("results.jsonl").exists() {
                bail!(
                    "{}: results.jsonl without sweep.json: not a directory this version of shrink \
                     sweep wrote; use another --out",
                    a.out.display()
                );
            }
            write_atomic(&id_path, serde_json::to_string_pretty(&ident)?.as_bytes())?;
        }
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", id_path.display())),
    }
    let results_path = a.out.join("results.jsonl");
    let mut results = read_results(&results_path)?;
    let cells = grid.cells();
    let hashes: Vec<String> = cells
        .iter()
        .map(|c| Ok(fingerprint(&grid.cell_recipe(c).to_toml()?)))
        .collect::<Result<_>>()?;
    for r in &results {
        let id = r["cell"].as_str().unwrap_or_default();
        if let Some(k) = cells.iter().position(|c| c.id == id) {
            if r["recipe_fingerprint"].as_str() != Some(hashes[k].as_str()) {
                bail!(
                    "{}: cell '{id}' was run with another recipe than the grid's now: give the \
                     changed recipe a new name, or use another --out",
                    results_path.display()
                );
            }
        }
    }
    let done = |results: &[Record], id: &str| results.iter().any(|r| r["cell"] == id);
    let todo: Vec<usize> = (0..cells.len())
        .filter(|&k| !done(&results, &cells[k].id))
        .collect();
    ui.notice(&format!(
        "sweep: {} cells ({} finished before, {} to run) in {}",
        cells.len(),
        cells.len() - todo.len(),
        todo.len(),
        a.out.display()
    ));
    let cells_dir = a.out.join("cells");
    let calib_dir = a.out.join("calib");
    std::fs::create_dir_all(&cells_dir)?;
    std::fs::create_dir_all(&calib_dir)?;
    let t0 = Instant::now();
    let mut timed: Vec<(bool, f64)> = Vec::new(); // (data-free, seconds) of cells run here
    for (n, &k) in todo.iter().enumerate() {
        let cell = &cells[k];
        let gr = &grid.recipes[cell.recipe];
        let left = &todo[n..];
        ui.notice(&format!(
            "[{}/{}] {}{}",
            cells.len() - left.len() + 1,
            cells.len(),
            cell.id,
            eta(
                &timed,
                left.iter()
                    .map(|&j| grid.recipes[cells[j].recipe].data_free)
            )
            .map(|s| format!(" (about {} left)", human(s)))
            .unwrap_or_default()
        ));
        let t = Instant::now();
        let dir = cells_dir.join(&cell.id);
        if !dir.join("report.json").exists() {
            run_cell(a, &grid, cell, &src, &calib_dir, &dir, ui)
                .with_context(|| format!("sweep cell '{}'", cell.id))?;
        }
        let rec = record(&grid, cell, &hashes[k], &dir)
            .with_context(|| format!("sweep cell '{}'", cell.id))?;
        append_line(&results_path, &rec)?;
        if !a.keep_models {
            prune_cell(&dir)?;
        }
        ui.notice(&format!(
            "  {}: {:.2} bpw, {:.1} MB, perplexity {:.4} (original {:.4}), KLD {:.4}",
            cell.id,
            rec["bpw"].as_f64().unwrap_or(f64::NAN),
            rec["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            rec["perplexity"].as_f64().unwrap_or(f64::NAN),
            rec["original_perplexity"].as_f64().unwrap_or(f64::NAN),
            rec["kld_mean"].as_f64().unwrap_or(f64::NAN),
        ));
        timed.push((gr.data_free, t.elapsed().as_secs_f64()));
        results.push(rec);
    }
    // grid order (a grid extended since the last run may have finished cells out of order)
    let order = |r: &Record| cells.iter().position(|c| r["cell"] == c.id.as_str());
    results.sort_by_key(|r| order(r).unwrap_or(usize::MAX));
    ui.info(&format!(
        "sweep: {} cells run in {}",
        todo.len(),
        human(t0.elapsed().as_secs_f64())
    ));
    Ok(SweepOutcome {
        results,
        ran: todo.len(),
    })
}

/// Time left: the mean time of the cells run so far of each kind (data-free or calibrated),
/// times the cells left of that kind; `None` before the first of a kind that is still to come.
fn eta(timed: &[(bool, f64)], left: impl Iterator<Item = bool>) -> Option<f64> {
    let mean = |free: bool| {
        let v: Vec<f64> = timed.iter().filter(|t| t.0 == free).map(|t| t.1).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let (mf, mc) = (mean(true), mean(false));
    let mut total = 0.0;
    for free in left {
        total += if free { mf.or(mc)? } else { mc? };
    }
    Some(total)
}

fn human(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 5400.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// The calibration tokens of source `c` and `seed`, drawn (or generated, or mixed) once for
/// every recipe and saved as `calib/NAME-sSEED.safetensors`; their path.
fn calib_ids(
    grid: &Grid,
    c: usize,
    seed: u64,
    src: &shrink_model::ModelSource,
    calib_dir: &Path,
    ui: &dyn Ui,
) -> Result<PathBuf> {
    let cal = &grid.calibrations[c];
    let ids = calib_dir.join(format!("{}-s{seed}.safetensors", cal.name));
    if ids.exists() {
        return Ok(ids);
    }
    let n = cal.nsamples.unwrap_or(shrink_calib::DEFAULT_NSAMPLES);
    let l = cal.seqlen.unwrap_or(shrink_calib::DEFAULT_SEQLEN);
    let ctx = || format!("calibration '{}'", cal.name);
    let set = match &cal.file {
        Some(f) if crate::calib_source::family_model(f).is_some() => {
            let fam = crate::calib_source::family_model(f).unwrap();
            let from = cal.from.as_deref().expect("checked in Grid::parse");
            let fc = &grid.calibrations[grid
                .calibrations
                .iter()
                .position(|o| o.name == from)
                .expect("checked in Grid::parse")];
            let source = shrink_calib::TextSource::from_path(
                fc.file.as_deref().expect("checked in Grid::parse"),
                fc.field.as_deref(),
            )
            .with_context(ctx)?;
            let originals = shrink_calib::CalibSet::sample(&source, &src.tokenizer, n, l, seed)
                .with_context(ctx)?;
            let o = shrink_calib::FamilyOptions {
                prompt_tokens: cal.prompt_tokens.unwrap_or(l / 4).max(1),
                candidates: cal.candidates.unwrap_or(2),
                temperature: 1.0,
                seed,
            };
            ui.notice(&format!(
                "  calibration '{}', seed {seed}: {} regenerates {n} windows of '{from}' ({} \
                 candidates each, {} prompt tokens kept)",
                cal.name,
                fam.display(),
                o.candidates,
                o.prompt_tokens
            ));
            let (set, choice, seconds) =
                crate::calib_source::family_set(&fam, src, &originals, &o, ui).with_context(ctx)?;
            // what was chosen and what it cost, beside the tokens
            let info = json!({
                "family_model": fam, "from": from, "seed": seed, "nsamples": n, "seqlen": l,
                "prompt_tokens": o.prompt_tokens, "candidates": o.candidates,
                "temperature": o.temperature, "seconds": seconds,
                "generated_tokens": n * o.candidates * (l - o.prompt_tokens),
                "choice": choice,
            });
            write_atomic(
                &ids.with_extension("json"),
                serde_json::to_string_pretty(&info)?.as_bytes(),
            )?;
            ui.notice(&format!(
                "  calibration '{}', seed {seed}: regenerated in {seconds:.0} s",
                cal.name
            ));
            set
        }
        Some(f) if crate::calib_source::is_generated(f) => {
            ui.notice(&format!(
                "  calibration '{}', seed {seed}: generating {n} x {l} tokens",
                cal.name
            ));
            let t = Instant::now();
            let set =
                crate::calib_source::generated_set(f, src, n, l, seed, ui).with_context(ctx)?;
            let info = json!({"source": set.source, "seed": seed, "nsamples": n, "seqlen": l,
                              "seconds": t.elapsed().as_secs_f64()});
            write_atomic(
                &ids.with_extension("json"),
                serde_json::to_string_pretty(&info)?.as_bytes(),
            )?;
            set
        }
        Some(f) => {
            let source =
                shrink_calib::TextSource::from_path(f, cal.field.as_deref()).with_context(ctx)?;
            shrink_calib::CalibSet::sample(&source, &src.tokenizer, n, l, seed).with_context(ctx)?
        }
        None => {
            // the first windows of each part's own set of this seed, by weight
            let total: f64 = cal.mix.values().sum();
            let mut out = shrink_calib::CalibSet {
                nsamples: n,
                seqlen: l,
                seed,
                source: String::new(),
                text_tokens: 0,
                ids: Vec::with_capacity(n * l),
                starts: vec![],
                bos: None,
            };
            let (mut left, mut parts) = (n, Vec::new());
            for (k, (name, w)) in cal.mix.iter().enumerate() {
                let take = if k + 1 == cal.mix.len() {
                    left
                } else {
                    ((n as f64 * w / total).round() as usize).min(left)
                };
                left -= take;
                if take == 0 {
                    continue;
                }
                let j = grid
                    .calibrations
                    .iter()
                    .position(|o| &o.name == name)
                    .expect("checked in Grid::parse");
                let p = calib_ids(grid, j, seed, src, calib_dir, ui)?;
                let part = shrink_calib::CalibSet::load(&p, src.config.vocab_size)?;
                if part.nsamples < take {
                    bail!(
                        "calibration '{}': takes {take} windows of '{name}', which has {}: raise                          its nsamples",
                        cal.name,
                        part.nsamples
                    );
                }
                out.ids.extend_from_slice(&part.ids[..take * l]);
                parts.push(format!("{take} of {name}"));
            }
            out.source = format!("mix: {}", parts.join(", "));
            out
        }
    };
    let tmp = ids.with_extension("tmp.safetensors");
    set.save(&tmp)?;
    std::fs::rename(&tmp, &ids).with_context(|| format!("{}: cannot write", ids.display()))?;
    Ok(ids)
}

fn run_cell(
    a: &SweepArgs,
    grid: &Grid,
    cell: &Cell,
    src: &shrink_model::ModelSource,
    calib_dir: &Path,
    dir: &Path,
    ui: &dyn Ui,
) -> Result<()> {
    let recipe = grid.cell_recipe(cell);
    // the cell's recipe, read by the job (which writes its own full recipe.toml into `dir`)
    let recipe_path = dir
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{}.recipe.toml", cell.id));
    write_atomic(&recipe_path, recipe.to_toml()?.as_bytes())?;
    let s = |p: &Path| p.to_string_lossy().to_string();
    let mut args: Vec<String> = vec![
        "--model".into(),
        s(&a.model),
        "--recipe".into(),
        s(&recipe_path),
        "--out".into(),
        s(dir),
        "--eval".into(),
        s(&grid.eval.text),
    ];
    if let Some(n) = grid.eval.max_tokens {
        args.extend(["--eval-max-tokens".into(), n.to_string()]);
    }
    if !grid.eval.tasks.is_empty() {
        args.extend([
            "--eval-tasks".into(),
            grid.eval.tasks.join(","),
            "--eval-tasks-cache".into(),
            s(&a.out.join("original_tasks.jsonl")),
            "--tasks-data".into(),
            s(&a.tasks_data),
        ]);
        if let Some(n) = grid.eval.tasks_limit {
            args.extend(["--eval-tasks-limit".into(), n.to_string()]);
        }
    }
    if let (Some(c), Some(seed)) = (cell.calibration, cell.seed) {
        let ids = calib_ids(grid, c, seed, src, calib_dir, ui)?;
        args.extend(["--calib-ids".into(), s(&ids)]);
    }
    let checkpoint = crate::job::checkpoint::Checkpoint::path_for(dir);
    let resume = checkpoint.is_dir();
    if resume {
        args.push("--resume".into());
        ui.notice(&format!(
            "  {}: continuing from its checkpoint {}",
            cell.id,
            checkpoint.display()
        ));
    }
    let job = CompressJob::from_args(&args)?;
    job::run(&job, ui)?;
    std::fs::remove_file(&recipe_path).ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: &str = r#"
seeds = [0, 1]
[eval]
text = "data/eval.txt"
max_tokens = 1024
[[calibration]]
name = "wiki"
file = "data/calib.txt"
nsamples = 8
[[recipe]]
name = "rtn-w4"
[[recipe.stage]]
method = "rtn"
bits = 4
group_size = 64
[[recipe]]
name = "gptq-w4"
[[recipe.stage]]
method = "gptq"
bits = 4
group_size = 64
"#;

    #[test]
    fn cells_in_grid_order_data_free_once() {
        let g = Grid::parse(GRID).unwrap();
        let ids: Vec<String> = g.cells().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["rtn-w4", "gptq-w4.wiki.s0", "gptq-w4.wiki.s1"]);
        let c = &g.cells()[2];
        let r = g.cell_recipe(c);
        assert_eq!(r.calibration.seed, Some(1));
        assert_eq!(r.calibration.nsamples, Some(8));
        assert_eq!(r.stage[0].bits, Some(4));
        assert!(g.cell_recipe(&g.cells()[0]).calibration.file.is_none());
    }

    #[test]
    fn bad_grids_are_refused_with_the_reason() {
        let err = |t: &str| format!("{:#}", Grid::parse(t).unwrap_err());
        assert!(err(&GRID.replace("seeds", "sedes")).contains("unknown key `sedes`"));
        assert!(err(&GRID.replace("[0, 1]", "[]")).contains("`seeds` is empty"));
        assert!(err(&GRID.replace(
            "bits = 4\ngroup_size = 64\n[[recipe]]",
            "bitz = 4\n[[recipe]]"
        ))
        .contains("bitz"));
        let no_recipe = GRID.split("[[recipe]]").next().unwrap();
        assert!(err(no_recipe).contains("no [[recipe]]"));
        let no_calib = GRID.replace(
            "[[calibration]]\nname = \"wiki\"\nfile = \"data/calib.txt\"\nnsamples = 8\n",
            "",
        );
        assert!(err(&no_calib).contains("needs calibration"));
        assert!(
            err(&GRID.replace("nsamples = 8", "seed = 3")).contains("`seed` is the grid's axis")
        );
        assert!(
            err(&GRID.replace("name = \"gptq-w4\"", "name = \"rtn-w4\"")).contains("two recipes")
        );
        assert!(err(&GRID.replace("name = \"wiki\"", "name = \"a b\"")).contains("letters, digits"));
        assert!(err(&GRID.replace("max_tokens = 1024", "max_tokns = 1024")).contains("max_tokns"));
        // mixtures
        let mix = |m: &str| {
            GRID.replace(
                "[[recipe]]\nname = \"rtn-w4\"",
                &format!("[[calibration]]\nname = \"m\"\n{m}\n[[recipe]]\nname = \"rtn-w4\""),
            )
        };
        assert!(Grid::parse(&mix("mix = { wiki = 1.0 }")).is_ok());
        assert!(err(&mix("mix = { wikki = 1.0 }")).contains("'wikki', which is no"));
        assert!(err(&mix("mix = { wiki = 0.0 }")).contains("must be > 0"));
        assert!(err(&mix("mix = { wiki = 1.0 }\nfile = \"x\"")).contains("either `file`"));
        assert!(err(&mix("nsamples = 3")).contains("either `file`"));
        assert!(err(&mix("mix = { wiki = 1.0 }\nseqlen = 64")).contains("another seqlen"));
    }

    #[test]
    fn eta_waits_for_a_measured_cell_of_each_kind() {
        assert_eq!(eta(&[], [false].into_iter()), None);
        assert_eq!(
            eta(&[(false, 10.0), (false, 20.0)], [false, false].into_iter()),
            Some(30.0)
        );
        assert_eq!(eta(&[(false, 10.0)], [true].into_iter()), Some(10.0));
        assert_eq!(eta(&[(true, 2.0)], [false].into_iter()), None);
    }

    #[test]
    fn results_cut_short_lose_only_the_cut_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("results.jsonl");
        std::fs::write(&p, "{\"cell\": \"a\"}\n{\"cell\": \"b\", \"perp").unwrap();
        let r = read_results(&p).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"cell\":\"a\"}\n");
        std::fs::write(&p, "{\"cell\": \"a\"}\nnot json\n").unwrap();
        assert!(format!("{:#}", read_results(&p).unwrap_err()).contains("line 2"));
    }
}
