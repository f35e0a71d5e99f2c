//! The calibration Hessians' spectra of a model before and after a rotation
//! ([`shrink_pipeline::hessian_spectra`], [`shrink_model::ModelSource::rotated`]):
//!
//! ```sh
//! cargo run --release -p shrink-pipeline --example spectrum -- MODEL CALIB.txt NSAMPLES SEQLEN \
//!     [hadamard|random-orthogonal] OUT.json
//! ```
//!
//! Prints, per group kind, the median and max over layers of the rotated / original ratio of
//! the top eigenvalue, the damped condition number and the largest diagonal entry; writes every
//! group's figures to OUT.json.
use anyhow::{Context, Result};
use shrink_calib::{CalibSet, TextSource};
use shrink_model::rotation::{Rotation, RotationKind};
use shrink_model::ModelSource;
use shrink_pipeline::hessian_spectra;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 6 {
        anyhow::bail!(
            "usage: spectrum MODEL CALIB NSAMPLES SEQLEN hadamard|random-orthogonal OUT.json"
        );
    }
    let model = PathBuf::from(&a[0]);
    let (n, l): (usize, usize) = (
        a[2].parse().context("NSAMPLES")?,
        a[3].parse().context("SEQLEN")?,
    );
    let kind = RotationKind::parse(&a[4])?;
    let src = ModelSource::open(&model)?;
    let text = TextSource::from_path(std::path::Path::new(&a[1]), None)?;
    let calib = CalibSet::sample(&text, &src.tokenizer, n, l, 0)?;
    let layers = 0..src.config.num_layers;
    let t = std::time::Instant::now();
    let before = hessian_spectra(&src, &calib, layers.clone(), &mut |d, t| {
        eprint!("\roriginal {d}/{t}")
    })?;
    eprintln!(" {:.0} s", t.elapsed().as_secs_f64());
    let rot = ModelSource::open(&model)?.rotated(&Rotation::new(kind))?;
    let after = hessian_spectra(&rot, &calib, layers, &mut |d, t| {
        eprint!("\rrotated {d}/{t}")
    })?;
    eprintln!(" {:.0} s", t.elapsed().as_secs_f64());
    let mut by_group: BTreeMap<String, Vec<[f64; 3]>> = BTreeMap::new();
    for (b, r) in before.iter().zip(&after) {
        let (Some(sb), Some(sr)) = (b.spectrum, r.spectrum) else {
            continue;
        };
        by_group.entry(b.group.clone()).or_default().push([
            sr.top / sb.top,
            sr.condition_damped / sb.condition_damped,
            sr.max_diag / sb.max_diag,
        ]);
    }
    println!(
        "rotated / original over {} layers ({}; {n} x {l} calibration tokens, seed 0):",
        src.config.num_layers,
        kind.name()
    );
    println!(
        "{:<28} {:>22} {:>22} {:>22}",
        "group", "top eig (median, max)", "cond damped (med, max)", "max diag (med, max)"
    );
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    for (g, rows) in &by_group {
        let mut cols: Vec<Vec<f64>> = (0..3)
            .map(|k| rows.iter().map(|r| r[k]).collect())
            .collect();
        let s: Vec<String> = cols
            .iter_mut()
            .map(|c| {
                let (m, x) = med(c);
                format!("{m:.4}, {x:.4}")
            })
            .collect();
        println!("{g:<28} {:>22} {:>22} {:>22}", s[0], s[1], s[2]);
    }
    let json = serde_json::json!({"model": model, "rotation": kind.name(), "nsamples": n, "seqlen": l, "seed": 0,
        "original": before, "rotated": after});
    std::fs::write(&a[5], serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("{}: cannot write", a[5]))?;
    Ok(())
}
