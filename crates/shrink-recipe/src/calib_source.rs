//! Calibration sets that need the model itself: `generated:self` ([`shrink_calib::generated`]).
use crate::job::ui::Ui;
use anyhow::{Context, Result};
use shrink_calib::{CalibSet, GenerateOptions, GENERATED_SELF};
use shrink_model::ModelSource;
use std::path::Path;

/// `path` names a generated source rather than a file.
pub fn is_generated(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with("generated:"))
}

/// The generated set `path` names (`generated:self`), `n` windows of `l` tokens with `seed`,
/// sampled from `src` held in memory (a progress bar counts the tokens).
pub fn generated_set(
    path: &Path,
    src: &ModelSource,
    n: usize,
    l: usize,
    seed: u64,
    ui: &dyn Ui,
) -> Result<CalibSet> {
    let name = path.to_string_lossy();
    if name != GENERATED_SELF {
        anyhow::bail!(
            "calibration source '{name}': unknown generated source (known: {GENERATED_SELF})"
        );
    }
    // BOS where the tokenizer adds it (it stays first in each window), else the model's BOS or
    // end-of-text token as a start that the windows leave out
    let adds = src.tokenizer.adds_bos();
    let start = adds
        .or(src.config.bos_token_id)
        .or(src.config.eos_token_id)
        .with_context(|| {
            format!(
                "{GENERATED_SELF}: the model names no BOS or end-of-text token to start sampling from"
            )
        })?;
    let t = std::time::Instant::now();
    let mut model = src
        .load_all()
        .context("loading the model to generate calibration")?;
    let bar = ui.bar(
        (n * (l - adds.is_some() as usize)) as u64,
        "generated tokens",
    );
    let set = CalibSet::generate(
        &mut model,
        &GenerateOptions {
            nsamples: n,
            seqlen: l,
            seed,
            temperature: 1.0,
            top_p: 1.0,
            start,
            keep_start: adds.is_some(),
        },
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    ui.info(&format!(
        "generated {n} x {l} calibration tokens in {:.1} s (seed {seed})",
        t.elapsed().as_secs_f64()
    ));
    Ok(set)
}
