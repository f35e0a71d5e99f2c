//! `gguf_type = "Q4_K_M"`: a llama-quantize mix as a recipe.
//!
//! A stage whose `gguf_type` names a mix rounds every linear onto the grid of the type
//! llama-quantize would give it ([`shrink_model::ggml_mix`]): the stage keeps the mix's main type
//! and the linears the rules move elsewhere get `[[override]]`s naming their type, one per type,
//! so the recipe written beside the output states every linear's grid.
use crate::recipe::{Override, Recipe, Stage};
use anyhow::{bail, Result};
use shrink_model::arch;
use shrink_model::ggml_mix::{model_mix_types, Mix, MixFlags};
use shrink_model::ggml_quant::fallback_type;
use shrink_model::gguf::GgmlType;
use shrink_model::ModelConfig;
use std::collections::BTreeMap;

/// The mix a stage's `gguf_type` names, if it names one (`plain`: a type name such as `Q2_K`
/// is taken as llama-quantize's file type of that name).
pub fn stage_mix(s: &Stage, plain: bool) -> Option<Mix> {
    s.gguf_type.as_deref().and_then(|n| Mix::parse(n, plain))
}

/// Each compressible linear (module path) and the type llama-quantize gives its weight under
/// `mix`.
pub fn linear_types(
    cfg: &ModelConfig,
    mix: Mix,
    has_imatrix: bool,
) -> Result<BTreeMap<String, GgmlType>> {
    let types = model_mix_types(cfg, mix, has_imatrix, &MixFlags::default())?;
    let modules: std::collections::HashSet<String> =
        crate::compressible_modules(cfg, 0..cfg.num_layers)
            .into_iter()
            .collect();
    let mut out = BTreeMap::new();
    for e in arch::tensor_table(cfg) {
        if !matches!(e.kind, arch::TensorKind::LinearWeight(_)) {
            continue;
        }
        let module = e.hf.trim_end_matches(".weight").to_string();
        if !modules.contains(&module) {
            continue;
        }
        if let Some(t) = types.get(&e.gguf.name) {
            out.insert(module, *t);
        }
    }
    Ok(out)
}

/// Expands every stage that names a mix into per-linear overrides for this model (`has_imatrix`:
/// the method is calibrated, as llama-quantize with `--imatrix` — its rules differ for a few
/// mixes; `plain`: see [`stage_mix`]). Idempotent: a recipe already expanded (a `recipe.toml`
/// shrink wrote) is unchanged.
pub fn expand_mixes(
    r: &mut Recipe,
    cfg: &ModelConfig,
    has_imatrix: bool,
    plain: bool,
) -> Result<()> {
    let shapes: BTreeMap<String, [usize; 2]> = crate::compressible_shapes(cfg, 0..cfg.num_layers)
        .into_iter()
        .collect();
    for (i, s) in r.stage.iter().enumerate() {
        let Some(mix) = stage_mix(s, plain) else {
            continue;
        };
        if !r.drop_layers.is_empty() || !r.merge_layers.is_empty() {
            bail!(
                "gguf_type {}: a llama-quantize mix with dropped or merged layers is not \
                 supported (its rules count layers); name a single type, or remove the layers \
                 first",
                mix.name()
            );
        }
        let main = mix.default_type();
        let mut by_type: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for (module, t) in linear_types(cfg, mix, has_imatrix)? {
            let d_in = shapes.get(&module).map_or(0, |s| s[1]);
            // the stage's own type falls back by shape by itself (GgmlGrid)
            if t == fallback_type(main, d_in) {
                continue;
            }
            by_type.entry(t.name()).or_default().push(module);
        }
        let stage = (r.stage.len() > 1).then_some(i + 1);
        for (t, modules) in by_type {
            let pattern = format!(
                "^(?:{})$",
                modules
                    .iter()
                    .map(|m| regex::escape(m))
                    .collect::<Vec<_>>()
                    .join("|")
            );
            let mut set = Stage {
                gguf_type: Some(t.to_string()),
                ..Stage::default()
            };
            crate::recipe::fill_grid(&mut set)?;
            let o = Override {
                pattern,
                stage,
                set,
            };
            if !r.overrides.contains(&o) {
                r.overrides.push(o);
            }
        }
    }
    Ok(())
}
