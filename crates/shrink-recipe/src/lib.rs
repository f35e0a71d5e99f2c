//! shrink-recipe: compression recipes and their resolution against a model.
//!
//! - [`recipe`]: the TOML recipe (calibration, stages, `ignore`, per-module `[[override]]`s)
//!   and the methods its stages build;
//! - [`alloc`]: budgets allocated over layers (OWL), written back as overrides;
//! - [`layers`]: layer pruning (which decoder layers to drop: angular distance, block
//!   influence, the last layers, random);
//! - [`merge`]: layer merging (LaCo's RDSC layer collapse and its similarity-guided search);
//! - [`budget`]: the bits-per-weight accountant (what the exported file stores);
//! - [`search`]: allocation from measured error curves under a budget (`--allocate search`);
//! - [`job`]: the compress job itself (every setting of `shrink compress`, [`job::run`]);
//! - [`sweep`]: a grid of recipes × calibration sources × seeds, run cell by cell (`shrink sweep`);
//! - [`plan`]: a recipe resolved for a model's linears, the per-linear [`Assign`] the pipeline
//!   runs.
//!
//! `shrink compress`, the allocators and sweeps all go through here: whatever chooses the
//! settings writes a recipe, and a recipe reproduces the run.
//!
//! [`Assign`]: shrink_pipeline::Assign
pub mod agent;
pub mod alloc;
pub mod budget;
pub mod calib_source;
pub mod job;
pub mod layers;
pub mod merge;
pub mod mix;
pub mod plan;
pub mod profile;
pub mod recipe;
pub mod search;
pub mod sweep;

pub use plan::{Plan, Setting, Slot};
pub use recipe::{build_method, data_free, CalibSection, Override, Recipe, Stage};

/// The compressible linears of layers `layers` of a model, by module path, in pipeline order.
pub fn compressible_modules(
    cfg: &shrink_model::ModelConfig,
    layers: std::ops::Range<usize>,
) -> Vec<String> {
    compressible_shapes(cfg, layers)
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// [`compressible_modules`] with each linear's `[d_out, d_in]`.
pub fn compressible_shapes(
    cfg: &shrink_model::ModelConfig,
    layers: std::ops::Range<usize>,
) -> Vec<(String, [usize; 2])> {
    let mut out = Vec::new();
    for i in layers {
        let lay = shrink_model::arch::layer_layout(cfg, i);
        for g in &lay.groups {
            for &k in &g.linears {
                let l = &lay.linears[k];
                if l.compress {
                    out.push((
                        shrink_model::arch::hf_layer_tensor(i, &l.path, "weight")
                            .trim_end_matches(".weight")
                            .to_string(),
                        l.shape,
                    ));
                }
            }
        }
    }
    out
}
