//! `shrink compress --allocate search`: a profile pass (one dense calibration pass solving every
//! candidate setting on every linear, [`Profiler`]), then the marginal-return greedy of
//! [`crate::search`] under the global budget, written into the recipe as per-linear
//! overrides. Everything that can be checked is checked before any work ([`prepare`]).
use super::ui::Ui;
use crate::budget::{linear_bits, Grid, Total, SCALE_BITS};
use crate::profile::{Candidate, Profiler};
use crate::search::{fractional_fill, greedy, with_linear_settings, Opt};
use crate::{build_method, Plan, Recipe, Slot, Stage};
use anyhow::{bail, Context, Result};
use serde_json::json;
use shrink_calib::CalibSet;
use shrink_formats::gguf_export::{predict_gguf_bytes, GgufExport, TypePlan};
use shrink_model::ggml_quant::fallback_type;
use shrink_model::gguf::GgmlType;
use shrink_model::ModelSource;
use std::collections::{BTreeMap, HashMap};

/// What is allocated.
#[derive(Clone, Debug)]
pub enum Budget {
    /// Bits per weight over the compressed linears (see [`crate::budget`]).
    Bpw(f64),
    /// The fraction of zeros over the compressed linears.
    Sparsity(f64),
    /// Bytes of the model.safetensors `shrink export --format compressed-tensors` writes;
    /// turned into a [`Budget::Bpw`] by [`prepare`] (see [`size_overhead_bits`]).
    Size(u64),
}

/// What the compressed-tensors export's model.safetensors holds besides the compressed
/// linears' codes, scales, zero points and g_idx, in bits: every other tensor of the model in
/// F32 (embeddings, norms, an untied head, linears the recipe leaves as they are), a
/// `weight_shape` (2 x I64) per compressed linear, and the safetensors header, estimated at
/// `len(name) + 70` bytes of JSON per tensor (five per compressed linear, counting
/// `weight_zero_point` and `weight_g_idx` whether or not they are written) plus 8 + 256 bytes:
/// the header is the only estimated part, a few kilobytes, over- rather than underestimated.
/// The scales are counted as `--scale-dtype f16` writes them (see [`crate::budget`]).
pub fn size_overhead_bits(cfg: &shrink_model::ModelConfig, compressed: &[String]) -> u64 {
    let set: std::collections::HashSet<String> =
        compressed.iter().map(|m| format!("{m}.weight")).collect();
    let mut bits = 0u64;
    let mut header = 8 + 256u64;
    for e in shrink_model::arch::tensor_table(cfg) {
        if set.contains(&e.hf) {
            continue;
        }
        bits += 32 * e.shape.iter().product::<usize>() as u64;
        header += e.hf.len() as u64 + 70;
    }
    for m in compressed {
        bits += 128;
        // weight_packed, weight_scale, weight_zero_point, weight_g_idx, weight_shape
        header += 5 * (m.len() as u64 + 18 + 70);
    }
    bits + 8 * header
}

/// A search checked and ready to run.
pub struct Search {
    pub budget: Budget,
    stage: usize,
    base: Stage,
    /// Candidate values (bits, or sparsities) and group sizes, and the stage each gives.
    values: Vec<f64>,
    groups: Vec<Option<usize>>,
    /// Whether the group size is searched too (written into the overrides).
    group_search: bool,
    stages: Vec<Stage>,
    /// The compressed linears and their `[d_out, d_in]`.
    linears: Vec<(String, [usize; 2])>,
    /// For --target-size: the bytes asked for and the bits outside the compressed linears.
    size: Option<(u64, u64)>,
    /// With --search-types: each candidate's llama.cpp type (parallel to `stages`); the costs
    /// are the GGUF export's padded bytes and --target-size counts that GGUF file.
    types: Vec<Option<GgmlType>>,
    /// With --search-types: the GGUF file's data alignment, and (for the report) the model
    /// source's path the prediction was made from.
    gguf_alignment: Option<u64>,
}

/// The GGUF `shrink export --format gguf` writes from a `shrink compress` output of `src` whose
/// linears carry llama.cpp types, with `main` for what they do not name (linears left as they
/// are; the embeddings and head get Q8_0, as the export's default).
fn gguf_export_of<'a>(src: &'a ModelSource, main: GgmlType) -> Result<GgufExport<'a>> {
    if !src.is_gguf {
        bail!(
            "{}: --search-types with --target-size counts the GGUF file the export writes,              whose metadata comes from the GGUF the model was read from; give a GGUF model              (or use --target-bpw)",
            src.path.display()
        );
    }
    Ok(GgufExport {
        src,
        quantized: None,
        metadata_from: Some(&src.path),
        plan: TypePlan::for_type(main),
        imatrix: None,
        carry_codes: true,
        keep_grid_types: true,
        tokenizer_pre: None,
        layers_before_drop: None,
    })
}

fn fmt_value(b: &Budget, v: f64, t: Option<GgmlType>) -> String {
    if let Some(t) = t {
        return t.name().to_string();
    }
    match b {
        Budget::Bpw(_) | Budget::Size(_) => format!("w{v}"),
        Budget::Sparsity(_) => format!("s{v}"),
    }
}

fn flag(b: &Budget) -> &'static str {
    match b {
        Budget::Bpw(_) => "--target-bpw",
        Budget::Size(_) => "--target-size",
        Budget::Sparsity(_) => "--sparsity",
    }
}

/// The one stage a search changes, and refusals of what it cannot do.
fn the_stage(recipe: &Recipe, budget: &Budget) -> Result<usize> {
    match budget {
        Budget::Bpw(_) | Budget::Size(_) => {
            let q: Vec<usize> = recipe
                .stage
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.method.as_deref(), Some("gptq") | Some("rtn")))
                .map(|(i, _)| i)
                .collect();
            match q.as_slice() {
                [i] if recipe.stage.len() == 1 => Ok(*i),
                [] => bail!(
                    "{} allocates bit widths: it needs a quantization method \
                     (--method gptq or rtn){}",
                    flag(budget),
                    match recipe.stage.first().and_then(|s| s.method.as_deref()) {
                        Some(m) => format!(", not '{m}'"),
                        None => String::new(),
                    }
                ),
                _ => bail!("{}: give a one-stage recipe (gptq or rtn)", flag(budget)),
            }
        }
        Budget::Sparsity(_) => {
            let (i, _) = crate::alloc::pruning_stage(recipe)?;
            Ok(i)
        }
    }
}

/// Checks a search before any work: the stage it changes, its candidates, the linears it spans,
/// and that the budget lies between the cheapest and the dearest assignment. Returns the recipe
/// to validate the plan with (the stage set to a candidate) and the search.
pub fn prepare(
    recipe: &Recipe,
    budget: Budget,
    candidates: &[f64],
    shapes: &[(String, [usize; 2])],
    src: &ModelSource,
    group_sizes: &[usize],
    types: &[GgmlType],
) -> Result<(Recipe, Search)> {
    let cfg = &src.config;
    let stage = the_stage(recipe, &budget)?;
    if !types.is_empty() {
        if matches!(budget, Budget::Sparsity(_)) {
            bail!("--search-types applies to --target-bpw / --target-size, not --sparsity");
        }
        if !group_sizes.is_empty() {
            bail!("--search-types and --search-group-sizes do not combine: a llama.cpp type fixes its own blocks");
        }
        if cfg.moe.is_some() {
            bail!(
                "--search-types: {} has experts, which llama.cpp stores stacked in one tensor                  of one type; a type per expert linear cannot be written",
                src.path.display()
            );
        }
        if recipe.overrides.iter().any(|o| o.set.gguf_type.is_some()) {
            bail!("--search-types chooses each linear's gguf_type; the recipe already sets one in an override");
        }
    }
    let key = match budget {
        Budget::Bpw(_) | Budget::Size(_) => "bits",
        Budget::Sparsity(_) => "sparsity",
    };
    if let Some(o) = recipe.overrides.iter().find(|o| match budget {
        Budget::Bpw(_) | Budget::Size(_) => o.set.bits.is_some(),
        Budget::Sparsity(_) => o.set.sparsity.is_some(),
    }) {
        bail!(
            "--allocate search chooses each linear's {key}; the recipe's override '{}' already \
             sets it (remove it, or run the recipe without --allocate search)",
            o.pattern
        );
    }
    let mut values: Vec<f64> = candidates.to_vec();
    values.sort_by(|a, b| a.total_cmp(b));
    values.dedup();
    if values.is_empty() {
        bail!("--allocate search: no candidate {key} values given");
    }
    let base = recipe.stage[stage].settings();
    let group_search = !group_sizes.is_empty();
    if group_search && matches!(budget, Budget::Sparsity(_)) {
        bail!("--search-group-sizes applies to --target-bpw / --target-size");
    }
    let gs: Vec<Option<usize>> = if group_search {
        let mut g = group_sizes.to_vec();
        g.sort();
        g.dedup();
        g.into_iter().map(Some).collect()
    } else {
        vec![base.group_size]
    };
    let (mut stages, mut vals, mut groups, mut tys) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &t in types {
        let mut s = Stage {
            bits: None,
            group_size: None,
            sym: None,
            gguf_type: Some(t.name().to_string()),
            ..base.clone()
        };
        crate::recipe::fill_grid(&mut s).with_context(|| format!("--search-types {}", t.name()))?;
        build_method(&s).with_context(|| format!("--allocate search candidate {}", t.name()))?;
        vals.push(s.bits.unwrap_or(0) as f64);
        groups.push(s.group_size);
        tys.push(Some(t));
        stages.push(s);
    }
    for &v in values.iter().filter(|_| types.is_empty()) {
        for &g in &gs {
            let mut s = base.clone();
            match budget {
                Budget::Bpw(_) | Budget::Size(_) => {
                    if v.fract() != 0.0 || !(1.0..=8.0).contains(&v) {
                        bail!("--search-bits: '{v}' is not a bit width 1..8");
                    }
                    s.bits = Some(v as u32);
                    s.group_size = g;
                }
                Budget::Sparsity(_) => s.sparsity = Some(v),
            }
            build_method(&s).with_context(|| format!("--allocate search candidate {key} {v}"))?;
            stages.push(s);
            vals.push(v);
            groups.push(g);
            tys.push(None);
        }
    }
    // The plan is validated with the stage at the first candidate.
    let mut r = recipe.clone();
    match budget {
        _ if !types.is_empty() => r.stage[stage] = stages[0].clone(),
        Budget::Bpw(_) | Budget::Size(_) => r.stage[stage].bits = Some(values[0] as u32),
        Budget::Sparsity(_) => r.stage[stage].sparsity = Some(values[0]),
    }
    let plan = Plan::new(
        &r,
        &shapes.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
    )?;
    let linears: Vec<(String, [usize; 2])> = shapes
        .iter()
        .filter(|(n, _)| matches!(plan.slot(n), Some(Slot::Setting(_))))
        .cloned()
        .collect();
    if linears.is_empty() {
        bail!("--allocate search: the recipe compresses no linear");
    }
    let mut size = None;
    let mut gguf_alignment = None;
    let budget = match budget {
        Budget::Size(bytes) => {
            let names: Vec<String> = linears.iter().map(|(n, _)| n.clone()).collect();
            let over = if types.is_empty() {
                size_overhead_bits(cfg, &names)
            } else {
                // The GGUF file's bytes besides the searched linears' blocks, at its largest
                // over the candidates as the main type (that of linears the recipe leaves).
                let searched: std::collections::HashSet<String> =
                    names.iter().map(|n| format!("{n}.weight")).collect();
                let mut over = 0u64;
                for &t in types {
                    let sizes = predict_gguf_bytes(&gguf_export_of(src, t)?, &HashMap::new())?;
                    let theirs: u64 = sizes
                        .tensors
                        .iter()
                        .filter(|x| x.parts.iter().any(|p| searched.contains(p)))
                        .map(|x| x.padded_bytes)
                        .sum();
                    over = over.max(8 * (sizes.total - theirs));
                    gguf_alignment = Some(sizes.alignment);
                }
                over
            };
            let w: u64 = linears.iter().map(|(_, [o, i])| (o * i) as u64).sum();
            let bpw = (8 * bytes) as f64 - over as f64;
            if bpw <= 0.0 {
                bail!(
                    "--target-size {bytes} cannot be met: the tensors that are not compressed \
                     (F32 in the compressed-tensors export) and the header alone take {} bytes",
                    over.div_ceil(8)
                );
            }
            size = Some((bytes, over));
            Budget::Bpw(bpw / w as f64)
        }
        b => b,
    };
    let s = Search {
        budget,
        stage,
        base,
        values: vals,
        groups,
        group_search,
        stages,
        linears,
        size,
        types: tys,
        gguf_alignment,
    };
    let (lo, hi) = s.range();
    let (target, what) = match (&s.budget, s.size) {
        (_, Some((bytes, _))) => (bytes as f64, "--target-size"),
        (Budget::Bpw(b), _) => (*b, "--target-bpw"),
        (Budget::Sparsity(p), _) => (*p, "--sparsity"),
        (Budget::Size(_), _) => unreachable!("converted above"),
    };
    let t = match s.budget {
        Budget::Bpw(b) | Budget::Sparsity(b) => b,
        Budget::Size(_) => unreachable!(),
    };
    if !(t.is_finite() && t >= lo - 1e-12 && t <= hi + 1e-12) {
        let cands = match (s.types.first(), s.types.last()) {
            (Some(Some(a)), Some(Some(b))) => format!("types {}..{}", a.name(), b.name()),
            _ => format!("{key} {}..{}", s.values[0], s.values[s.values.len() - 1]),
        };
        let size_note = match s.size {
            Some((_, over)) => format!(
                " (a file of {target} bytes leaves {t:.4} bits per weight for them; the rest \
                 of the model takes {:.1} MB)",
                over as f64 / 8e6
            ),
            None => String::new(),
        };
        bail!(
            "{what} {target} cannot be met: with the candidates {cands} the compressed \
             linears reach {lo:.4}..{hi:.4}{}{size_note}",
            match s.budget {
                Budget::Sparsity(_) => "; change --search-sparsities or the target",
                _ if !types.is_empty() => " bits per weight (llama.cpp blocks as the GGUF export stores them); change --search-types or the target",
                _ => " bits per weight (codes, f16 scales, zero points and g_idx as the compressed-tensors export stores them); change --search-bits or the target",
            }
        );
    }
    Ok((r, s))
}

impl Search {
    fn weights(&self) -> u64 {
        self.linears.iter().map(|(_, [o, i])| (o * i) as u64).sum()
    }

    /// Cost of option `j` on a linear: file bits, or weights kept.
    fn cost(&self, j: usize, shape: [usize; 2]) -> f64 {
        let [o, i] = shape;
        match self.budget {
            Budget::Bpw(_) | Budget::Size(_) => {
                let g = Grid::of_stage(&self.stages[j]).expect("a bits candidate");
                let bits = linear_bits(o, i, &g, SCALE_BITS);
                match (self.gguf_alignment, g.ggml) {
                    // the GGUF tensor's data, padded to the file's alignment
                    (Some(a), Some(_)) => (8 * (bits / 8).next_multiple_of(a)) as f64,
                    _ => bits as f64,
                }
            }
            Budget::Sparsity(_) => (o * i) as f64 * (1.0 - self.values[j]),
        }
    }

    /// The reachable range of the budget (bpw, or sparsity).
    pub fn range(&self) -> (f64, f64) {
        let n = self.weights() as f64;
        let (mut lo, mut hi) = (0.0, 0.0);
        for (_, sh) in &self.linears {
            let c: Vec<f64> = (0..self.stages.len()).map(|j| self.cost(j, *sh)).collect();
            lo += c.iter().copied().fold(f64::MAX, f64::min);
            hi += c.iter().copied().fold(f64::MIN, f64::max);
        }
        match self.budget {
            Budget::Bpw(_) | Budget::Size(_) => (lo / n, hi / n),
            // Sparsities ascending: the last candidate keeps the fewest.
            Budget::Sparsity(_) => (self.values[0], self.values[self.values.len() - 1]),
        }
    }

    /// The budget in cost units.
    fn budget_cost(&self) -> f64 {
        let n = self.weights() as f64;
        match self.budget {
            Budget::Bpw(b) => b * n,
            Budget::Size(_) => unreachable!("--target-size is converted to bpw by prepare"),
            Budget::Sparsity(p) => (1.0 - p) * n,
        }
    }

    /// The profile pass, the greedy, and the recipe with the allocation; the report's
    /// `allocation` section.
    pub fn run(
        &self,
        recipe: &Recipe,
        src: &ModelSource,
        calib: &CalibSet,
        n_layers: usize,
        ui: &dyn Ui,
    ) -> Result<(Recipe, serde_json::Value)> {
        let t = std::time::Instant::now();
        let candidates = self
            .stages
            .iter()
            .zip(self.values.iter().zip(self.groups.iter().zip(&self.types)))
            .map(|(s, (v, (g, t)))| {
                Ok(Candidate {
                    label: match (self.group_search, g) {
                        (true, Some(g)) => format!("{}g{g}", fmt_value(&self.budget, *v, *t)),
                        _ => fmt_value(&self.budget, *v, *t),
                    },
                    method: build_method(s)?,
                    ggml: *t,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let labels: Vec<String> = candidates.iter().map(|c| c.label.clone()).collect();
        let profiler = Profiler::new(candidates, 5.0)?;
        let bar = ui.bar(n_layers as u64, "search: profiling");
        let pass = shrink_pipeline::run(
            src,
            calib,
            &profiler,
            0..n_layers,
            &mut shrink_pipeline::Discard,
            &mut |d, _| bar.set_position(d as u64),
        )?;
        bar.finish_and_clear();
        let profile_s = t.elapsed().as_secs_f64();
        let measured: BTreeMap<String, BTreeMap<String, f64>> = profiler
            .linears()
            .into_iter()
            .map(|l| (l.name, l.rel_error))
            .collect();
        // The objective: the sum of the linears' measured relative output errors.
        let items: Vec<Vec<Opt>> = self
            .linears
            .iter()
            .map(|(name, sh)| {
                let errs = measured
                    .get(name)
                    .with_context(|| format!("search: {name} was not profiled"))?;
                Ok(labels
                    .iter()
                    .enumerate()
                    .map(|(j, l)| Opt {
                        cost: self.cost(j, *sh),
                        err: errs.get(l).copied().unwrap_or(f64::INFINITY),
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        let budget = self.budget_cost();
        let c = greedy(&items, budget)?;
        let partial = match self.budget {
            Budget::Sparsity(_) => fractional_fill(&items, &c, budget),
            Budget::Bpw(_) | Budget::Size(_) => None,
        };
        // The chosen value of each linear (a sparsity part way for the partial one).
        let mut chosen: Vec<f64> = c.choice.iter().map(|&j| self.values[j]).collect();
        let chosen_g: Vec<Option<usize>> = c.choice.iter().map(|&j| self.groups[j]).collect();
        let mut pred_err: Vec<f64> = items
            .iter()
            .zip(&c.choice)
            .map(|(o, &j)| o[j].err)
            .collect();
        if let Some(p) = partial {
            let (a, b) = (self.values[c.choice[p.item]], self.values[p.to]);
            // Rounded to 1e-6 as the recipe writes it; the kept weights then match the target to
            // within d_out * d_in * 5e-7 weights.
            chosen[p.item] = ((a + p.t * (b - a)) * 1e6).round() / 1e6;
            let (ea, eb) = (items[p.item][c.choice[p.item]].err, items[p.item][p.to].err);
            pred_err[p.item] = ea + p.t * (eb - ea);
        }
        // Each linear's llama.cpp type (--search-types), after the shape fallback: what the
        // GGUF holds, and what the override names.
        let chosen_t: Vec<Option<GgmlType>> = c
            .choice
            .iter()
            .zip(&self.linears)
            .map(|(&j, (_, [_, d_in]))| self.types[j].map(|t| fallback_type(t, *d_in)))
            .collect();
        // The base setting: the most common choice; overrides for the others.
        let mut counts: BTreeMap<(u64, Option<usize>, Option<&str>), usize> = BTreeMap::new();
        for ((v, g), t) in chosen.iter().zip(&chosen_g).zip(&chosen_t) {
            *counts
                .entry((v.to_bits(), *g, t.map(|t| t.name())))
                .or_default() += 1;
        }
        let (cv, cg, ct) = *counts.iter().max_by_key(|(_, n)| **n).unwrap().0;
        let ct = ct.and_then(GgmlType::from_name);
        let common = (f64::from_bits(cv), cg, ct);
        let set = |(v, g, t): (f64, Option<usize>, Option<GgmlType>)| -> Result<Stage> {
            Ok(match (self.budget.clone(), t) {
                (_, Some(t)) => {
                    let mut s = Stage {
                        gguf_type: Some(t.name().to_string()),
                        ..Stage::default()
                    };
                    crate::recipe::fill_grid(&mut s)?;
                    s
                }
                (Budget::Bpw(_) | Budget::Size(_), None) => Stage {
                    bits: Some(v as u32),
                    group_size: if self.group_search { g } else { None },
                    ..Stage::default()
                },
                (Budget::Sparsity(_), None) => Stage {
                    sparsity: Some(v),
                    ..Stage::default()
                },
            })
        };
        let per: Vec<(String, Stage)> = self
            .linears
            .iter()
            .zip(chosen.iter().zip(chosen_g.iter().zip(&chosen_t)))
            .map(|((n, _), (v, (g, t)))| Ok((n.clone(), set((*v, *g, *t))?)))
            .collect::<Result<_>>()?;
        let out = with_linear_settings(recipe, self.stage, &set(common)?, &per);
        // With --search-types and --target-size: the GGUF file's exact size, predicted.
        let predicted_gguf = match (self.size, ct) {
            (Some(_), Some(main)) if self.gguf_alignment.is_some() => {
                let map: HashMap<String, GgmlType> = self
                    .linears
                    .iter()
                    .zip(&chosen_t)
                    .filter_map(|((n, _), t)| Some((format!("{n}.weight"), (*t)?)))
                    .collect();
                Some(predict_gguf_bytes(&gguf_export_of(src, main)?, &map)?.total)
            }
            _ => None,
        };

        // What it reaches, by the accountant (bpw) or by count (zeros).
        let n = self.weights() as f64;
        let mut rows = Vec::new();
        let mut layers: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
        let mut total = Total::default();
        let mut kept = 0f64;
        for (k, ((name, [o, i]), v)) in self.linears.iter().zip(&chosen).enumerate() {
            let w = (o * i) as f64;
            let layer = layer_of(name);
            let (value, cost) = match self.budget {
                Budget::Bpw(_) | Budget::Size(_) => {
                    let g = Grid::of_stage(&Stage {
                        bits: Some(*v as u32),
                        group_size: chosen_g[k],
                        gguf_type: chosen_t[k].map(|t| t.name().to_string()),
                        ..self.base.clone()
                    })
                    .unwrap();
                    total.add(*o, *i, &g, SCALE_BITS);
                    let b = linear_bits(*o, *i, &g, SCALE_BITS) as f64;
                    (b / w, b)
                }
                Budget::Sparsity(_) => {
                    kept += w * (1.0 - v);
                    (*v, w * v)
                }
            };
            let e = layers.entry(layer).or_default();
            e.0 += cost;
            e.1 += w;
            rows.push(json!({
                "linear": name, "layer": layer, "d_out": o, "d_in": i,
                "bits": matches!(self.budget, Budget::Bpw(_)).then_some(*v as u32),
                "gguf_type": chosen_t[k].map(|t| t.name()),
                "group_size": matches!(self.budget, Budget::Bpw(_)).then_some(chosen_g[k]),
                "sparsity": matches!(self.budget, Budget::Sparsity(_)).then_some(*v),
                "bpw": matches!(self.budget, Budget::Bpw(_)).then_some(value),
                "profiled_rel_error": pred_err[k],
            }));
        }
        let (target, reached, unit) = match self.budget {
            Budget::Bpw(b) => (b, total.bpw(), "bpw"),
            Budget::Size(_) => unreachable!("--target-size is converted to bpw by prepare"),
            Budget::Sparsity(p) => (p, 1.0 - kept / n, "sparsity"),
        };
        let seconds = t.elapsed().as_secs_f64();
        ui.info(&format!(
            "search: {} {target} -> {reached:.5} over {} linears ({} upgrades{}); profile \
                 {profile_s:.1} s",
            unit,
            self.linears.len(),
            c.steps,
            if partial.is_some() {
                ", one part way"
            } else {
                ""
            }
        ));
        let alloc = json!({
            "strategy": "search",
            "solver": "marginal-return greedy over the profiled error curves (Shoham & Gersho 1988)",
            "objective": "sum over the compressed linears of the profiled relative output error ||XW^T - XW'^T||^2 / ||XW^T||^2, each linear compressed alone on the dense model's calibration inputs",
            "budget": unit,
            "target": target,
            "reached": reached,
            "reachable": self.range(),
            "accounting": match self.budget {
                _ if self.types.iter().any(|t| t.is_some()) => "llama.cpp blocks as the GGUF export stores them (each type after its shape fallback; with --target-size each tensor's data padded to the file's alignment); over the compressed linears only",
                Budget::Bpw(_) | Budget::Size(_) => "compressed-tensors pack-quantized file bits per weight: int32-packed codes, f16 scales, int32-packed zero points (asymmetric), int32 g_idx (act-order dynamic); over the compressed linears only",
                Budget::Sparsity(_) => "zeros over all weights of the compressed linears (as set in the recipe; the report's totals.sparsity is the count in the output)",
            },
            "target_size": self.size.map(|(bytes, over)| json!({
                "bytes": bytes,
                "other_tensors_and_header_bits": over,
                "file": if predicted_gguf.is_some() { "gguf (shrink export --format gguf)" } else { "model.safetensors (shrink export --format compressed-tensors --scale-dtype f16)" },
                "predicted_file_bytes": predicted_gguf.unwrap_or((total.bits + over).div_ceil(8)),
            })),
            "compressed_linears": self.linears.len(),
            "compressed_weights": self.weights(),
            "file_bits": matches!(self.budget, Budget::Bpw(_)).then_some(total.bits),
            "candidates": labels,
            "greedy_upgrades": c.steps,
            "partial": partial.map(|p| json!({"linear": self.linears[p.item].0, "fraction": p.t})),
            "profiled_error_sum": pred_err.iter().sum::<f64>(),
            "profile_seconds": profile_s,
            "profile_phases": pass.phases,
            "profile_candidate_solve_seconds": profiler.solve_seconds(),
            "seconds": seconds,
            "layers": layers.iter().map(|(l, (c, w))| json!({
                "layer": l,
                "weights": w,
                unit: c / w,
            })).collect::<Vec<_>>(),
            "linears": rows,
        });
        Ok((out, alloc))
    }
}

/// The layer index in `model.layers.N....` (`usize::MAX` when there is none).
fn layer_of(name: &str) -> usize {
    name.split('.')
        .skip_while(|p| *p != "layers")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Bits per weight of a plan's compressed linears (`None` when one of them does not quantize).
pub fn plan_bpw(plan: &Plan, shapes: &[(String, [usize; 2])]) -> Option<Total> {
    let mut t = Total::default();
    for (name, [o, i]) in shapes {
        match plan.slot(name) {
            Some(Slot::Setting(k)) => {
                let g = Grid::of_stage(plan.settings[*k].quant_stage()?)?;
                t.add(*o, *i, &g, SCALE_BITS);
            }
            _ => continue,
        }
    }
    (t.weights > 0).then_some(t)
}
