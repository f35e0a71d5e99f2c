//! `shrink compress --allocate search`: a profile pass (one dense calibration pass solving every
//! candidate setting on every linear, [`Profiler`]), then the marginal-return greedy of
//! [`shrink_recipe::search`] under the global budget, written into the recipe as per-linear
//! overrides. Everything that can be checked is checked before any work ([`prepare`]).
use crate::progress;
use anyhow::{bail, Context, Result};
use serde_json::json;
use shrink_calib::CalibSet;
use shrink_model::ModelSource;
use shrink_recipe::budget::{linear_bits, Grid, Total, SCALE_BITS};
use shrink_recipe::profile::{Candidate, Profiler};
use shrink_recipe::search::{fractional_fill, greedy, with_linear_settings, Opt};
use shrink_recipe::{build_method, Plan, Recipe, Slot, Stage};
use std::collections::BTreeMap;

/// What is allocated.
#[derive(Clone, Debug)]
pub enum Budget {
    /// Bits per weight over the compressed linears (see [`shrink_recipe::budget`]).
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
/// The scales are counted as `--scale-dtype f16` writes them (see [`shrink_recipe::budget`]).
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
}

fn fmt_value(b: &Budget, v: f64) -> String {
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
            let (i, _) = shrink_recipe::alloc::pruning_stage(recipe)?;
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
    cfg: &shrink_model::ModelConfig,
    group_sizes: &[usize],
) -> Result<(Recipe, Search)> {
    let stage = the_stage(recipe, &budget)?;
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
    let (mut stages, mut vals, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    for &v in &values {
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
        }
    }
    // The plan is validated with the stage at the first candidate.
    let mut r = recipe.clone();
    match budget {
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
    let budget = match budget {
        Budget::Size(bytes) => {
            let names: Vec<String> = linears.iter().map(|(n, _)| n.clone()).collect();
            let over = size_overhead_bits(cfg, &names);
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
        let (a, b) = (s.values[0], s.values[s.values.len() - 1]);
        let size_note = match s.size {
            Some((_, over)) => format!(
                " (a file of {target} bytes leaves {t:.4} bits per weight for them; the rest \
                 of the model takes {:.1} MB)",
                over as f64 / 8e6
            ),
            None => String::new(),
        };
        bail!(
            "{what} {target} cannot be met: with the candidates {key} {a}..{b} the compressed \
             linears reach {lo:.4}..{hi:.4}{}{size_note}",
            match s.budget {
                Budget::Sparsity(_) => "; change --search-sparsities or the target",
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
                linear_bits(o, i, &g, SCALE_BITS) as f64
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
        quiet: bool,
    ) -> Result<(Recipe, serde_json::Value)> {
        let t = std::time::Instant::now();
        let candidates = self
            .stages
            .iter()
            .zip(self.values.iter().zip(&self.groups))
            .map(|(s, (v, g))| {
                Ok(Candidate {
                    label: match (self.group_search, g) {
                        (true, Some(g)) => format!("{}g{g}", fmt_value(&self.budget, *v)),
                        _ => fmt_value(&self.budget, *v),
                    },
                    method: build_method(s)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let labels: Vec<String> = candidates.iter().map(|c| c.label.clone()).collect();
        let profiler = Profiler::new(candidates, 5.0)?;
        let bar = progress::bar(n_layers as u64, "search: profiling", quiet);
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
        // The base setting: the most common choice; overrides for the others.
        let mut counts: BTreeMap<(u64, Option<usize>), usize> = BTreeMap::new();
        for (v, g) in chosen.iter().zip(&chosen_g) {
            *counts.entry((v.to_bits(), *g)).or_default() += 1;
        }
        let (cv, cg) = *counts.iter().max_by_key(|(_, n)| **n).unwrap().0;
        let common = (f64::from_bits(cv), cg);
        let set = |(v, g): (f64, Option<usize>)| match self.budget {
            Budget::Bpw(_) | Budget::Size(_) => Stage {
                bits: Some(v as u32),
                group_size: if self.group_search { g } else { None },
                ..Stage::default()
            },
            Budget::Sparsity(_) => Stage {
                sparsity: Some(v),
                ..Stage::default()
            },
        };
        let per: Vec<(String, Stage)> = self
            .linears
            .iter()
            .zip(chosen.iter().zip(&chosen_g))
            .map(|((n, _), (v, g))| (n.clone(), set((*v, *g))))
            .collect();
        let out = with_linear_settings(recipe, self.stage, &set(common), &per);

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
        if !quiet {
            eprintln!(
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
            );
        }
        let alloc = json!({
            "strategy": "search",
            "solver": "marginal-return greedy over the profiled error curves (Shoham & Gersho 1988)",
            "objective": "sum over the compressed linears of the profiled relative output error ||XW^T - XW'^T||^2 / ||XW^T||^2, each linear compressed alone on the dense model's calibration inputs",
            "budget": unit,
            "target": target,
            "reached": reached,
            "reachable": self.range(),
            "accounting": match self.budget {
                Budget::Bpw(_) | Budget::Size(_) => "compressed-tensors pack-quantized file bits per weight: int32-packed codes, f16 scales, int32-packed zero points (asymmetric), int32 g_idx (act-order dynamic); over the compressed linears only",
                Budget::Sparsity(_) => "zeros over all weights of the compressed linears (as set in the recipe; the report's totals.sparsity is the count in the output)",
            },
            "target_size": self.size.map(|(bytes, over)| json!({
                "bytes": bytes,
                "other_tensors_and_header_bits": over,
                "predicted_file_bytes": (total.bits + over).div_ceil(8),
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
