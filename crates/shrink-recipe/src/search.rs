//! `--allocate search`: per-linear settings chosen from measured error curves under a global
//! budget, written back into the recipe as one anchored `[[override]]` per linear.
//!
//! **The problem.** Linear `i` has options `j` (candidate bit widths, or sparsities), each with a
//! cost `c_ij` (file bits from [`crate::budget`], or weights kept) and a measured error `e_ij`
//! (the relative output error of that linear alone compressed with option `j`, from
//! [`crate::profile::Profiler`]'s dense calibration pass). Choose one option per linear to
//! minimise `sum_i e_i` subject to `sum_i c_i <= C`. The objective treats the measured errors as
//! additive, the usual assumption of profile-based allocation (each number is measured with every
//! other linear dense; interactions are not modelled).
//!
//! **The solver** is the marginal-return greedy of discrete bit allocation (Shoham & Gersho,
//! "Efficient bit allocation for an arbitrary set of quantizers", IEEE Trans. ASSP 36(9), 1988;
//! the greedy that ScaleBITS, arXiv 2602.17698, Sec. 4, scales to LLMs): start every linear at its
//! cheapest option; repeatedly apply, over all linears, the upgrade with the largest error
//! reduction per unit of added cost `(e_cur - e_j) / (c_j - c_cur)` that still fits the remaining
//! budget (an upgrade may skip options, which takes the lower convex hull of each curve); stop
//! when none fits. While no upgrade has been passed over for lack of room, every point of this
//! path is a solution of the Lagrangian relaxation `min sum_i e_i + lambda c_i` over the convex
//! hulls of the curves (Shoham & Gersho, Sec. III), hence optimal for the cost it spends; the
//! last steps, taken with the room left, may be off the hull. The unspent remainder is smaller
//! than the cheapest upgrade still available (the step granularity).
//!
//! For a sparsity budget the remainder is then spent exactly by [`fractional_fill`]: the best
//! next upgrade is taken part way (a sparsity between two candidates, its error interpolated
//! linearly), so that the kept weights sum to the target.
use crate::recipe::{Override, Recipe, Stage};
use anyhow::{bail, ensure, Result};
use serde::Serialize;

/// One option of a linear: what it costs and the error it gives.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Opt {
    pub cost: f64,
    pub err: f64,
}

/// The greedy's choice: one option index per item, the cost and error reached.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    pub choice: Vec<usize>,
    pub cost: f64,
    pub err: f64,
    /// Greedy upgrades applied.
    pub steps: usize,
}

/// The cheapest option of an item (the lower error among equal costs).
fn cheapest(opts: &[Opt]) -> usize {
    let mut best = 0;
    for (j, o) in opts.iter().enumerate() {
        let b = &opts[best];
        if o.cost < b.cost || (o.cost == b.cost && o.err < b.err) {
            best = j;
        }
    }
    best
}

/// The best upgrade of `opts` from option `cur`: `(ratio, option)`, only upgrades that cost more
/// and lower the error, and cost at most `room` more when given.
fn best_upgrade(opts: &[Opt], cur: usize, room: Option<f64>) -> Option<(f64, usize)> {
    let c = opts[cur];
    let mut best: Option<(f64, usize)> = None;
    for (j, o) in opts.iter().enumerate() {
        let dc = o.cost - c.cost;
        let de = c.err - o.err;
        if dc <= 0.0 || de <= 0.0 {
            continue;
        }
        if let Some(r) = room {
            if dc > r * (1.0 + 1e-12) {
                continue;
            }
        }
        let ratio = de / dc;
        if best.map_or(true, |(b, _)| ratio > b) {
            best = Some((ratio, j));
        }
    }
    best
}

/// The marginal-return greedy (see the module doc) over `items` under `budget`. Refuses a
/// budget below the cheapest assignment.
pub fn greedy(items: &[Vec<Opt>], budget: f64) -> Result<Choice> {
    ensure!(!items.is_empty(), "nothing to allocate over");
    for (i, o) in items.iter().enumerate() {
        ensure!(!o.is_empty(), "item {i} has no options");
        ensure!(
            o.iter().all(|o| o.cost.is_finite() && o.err.is_finite()),
            "item {i}: non-finite cost or error"
        );
    }
    let mut choice: Vec<usize> = items.iter().map(|o| cheapest(o)).collect();
    let mut cost: f64 = items.iter().zip(&choice).map(|(o, &j)| o[j].cost).sum();
    if cost > budget * (1.0 + 1e-12) {
        bail!("the budget {budget} is below the cheapest assignment ({cost})");
    }
    let mut steps = 0;
    loop {
        let room = budget - cost;
        let mut best: Option<(f64, usize, usize)> = None;
        for (i, o) in items.iter().enumerate() {
            if let Some((r, j)) = best_upgrade(o, choice[i], Some(room)) {
                if best.map_or(true, |(b, _, _)| r > b) {
                    best = Some((r, i, j));
                }
            }
        }
        let Some((_, i, j)) = best else { break };
        cost += items[i][j].cost - items[i][choice[i]].cost;
        choice[i] = j;
        steps += 1;
    }
    let err = items.iter().zip(&choice).map(|(o, &j)| o[j].err).sum();
    Ok(Choice {
        choice,
        cost,
        err,
        steps,
    })
}

/// A part-way upgrade: item `item` moves the fraction `t` (in `[0, 1)`) of the way from its
/// chosen option to option `to`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Partial {
    pub item: usize,
    pub to: usize,
    pub t: f64,
}

/// Spends the greedy's remainder `budget - c.cost` exactly: the upgrade with the best ratio over
/// all items (ignoring the room), taken the fraction `remainder / its cost` of the way. `None`
/// when nothing is left to spend or no upgrade lowers an error.
pub fn fractional_fill(items: &[Vec<Opt>], c: &Choice, budget: f64) -> Option<Partial> {
    let room = budget - c.cost;
    if room <= 0.0 {
        return None;
    }
    let mut best: Option<(f64, usize, usize)> = None;
    for (i, o) in items.iter().enumerate() {
        if let Some((r, j)) = best_upgrade(o, c.choice[i], None) {
            if best.map_or(true, |(b, _, _)| r > b) {
                best = Some((r, i, j));
            }
        }
    }
    let (_, item, to) = best?;
    let dc = items[item][to].cost - items[item][c.choice[item]].cost;
    Some(Partial {
        item,
        to,
        t: (room / dc).min(1.0),
    })
}

/// The anchored pattern that matches exactly one module path.
pub fn exact_pattern(module: &str) -> String {
    format!("^{}$", regex::escape(module))
}

/// The recipe with stage `stage` set to `base` and one anchored override for each linear of
/// `per_linear` whose setting differs from `base` (what `--allocate search` writes; the
/// output's recipe.toml then reproduces the allocation).
pub fn with_linear_settings(
    recipe: &Recipe,
    stage: usize,
    base: &Stage,
    per_linear: &[(String, Stage)],
) -> Recipe {
    let mut r = recipe.clone();
    let st = &mut r.stage[stage];
    if base.bits.is_some() {
        st.bits = base.bits;
    }
    if base.sparsity.is_some() {
        st.sparsity = base.sparsity;
    }
    if base.group_size.is_some() {
        st.group_size = base.group_size;
    }
    if base.gguf_type.is_some() {
        st.gguf_type = base.gguf_type.clone();
        st.sym = base.sym;
    }
    for (m, set) in per_linear {
        let differs = (set.bits.is_some() && set.bits != base.bits)
            || (set.sparsity.is_some() && set.sparsity != base.sparsity)
            || (set.group_size.is_some() && set.group_size != base.group_size)
            || (set.gguf_type.is_some() && set.gguf_type != base.gguf_type);
        if differs {
            r.overrides.push(Override {
                pattern: exact_pattern(m),
                stage: (r.stage.len() > 1).then_some(stage + 1),
                set: set.clone(),
            });
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(v: &[(f64, f64)]) -> Vec<Opt> {
        v.iter().map(|&(cost, err)| Opt { cost, err }).collect()
    }

    #[test]
    fn greedy_takes_the_best_ratio_first() {
        // Two linears of the same size, bits 2/3/4: A gains much more per bit than B.
        let a = curve(&[(2.0, 1.0), (3.0, 0.3), (4.0, 0.1)]);
        let b = curve(&[(2.0, 0.2), (3.0, 0.1), (4.0, 0.05)]);
        let items = vec![a, b];
        // Budget 6: one upgrade of 1 bit beyond the minimum of 4 -> A to 3 bits.
        let c = greedy(&items, 5.0).unwrap();
        assert_eq!(c.choice, vec![1, 0]);
        assert_eq!(c.cost, 5.0);
        // 6: A 3->4 gains 0.2/bit, B 2->3 gains 0.1/bit -> A to 4 bits.
        assert_eq!(greedy(&items, 6.0).unwrap().choice, vec![2, 0]);
        assert_eq!(greedy(&items, 7.0).unwrap().choice, vec![2, 1]);
        assert_eq!(greedy(&items, 100.0).unwrap().choice, vec![2, 2]);
        // Below the minimum: refused.
        assert!(greedy(&items, 3.9).is_err());
        // A budget between steps leaves less than one step unspent.
        let c = greedy(&items, 5.5).unwrap();
        assert_eq!(c.cost, 5.0);
    }

    #[test]
    fn greedy_is_optimal_against_brute_force() {
        // Uneven costs (sizes), non-convex curves; the greedy must match the exhaustive optimum
        // at the hull points of its path (7, 9, 11, 11.5, 13.5, 21.5, 24: worked out by hand) and is
        // never better than it elsewhere.
        let hull = [7.0, 9.0, 11.0, 11.5, 13.5, 21.5, 24.0];
        let items = vec![
            curve(&[(2.0, 5.0), (3.0, 4.9), (4.0, 1.0), (8.0, 0.9)]), // skip 3 -> hull 2,4,8
            curve(&[(4.0, 3.0), (6.0, 1.0), (8.0, 0.8), (16.0, 0.1)]),
            curve(&[(1.0, 0.5), (1.5, 0.2), (2.0, 0.17), (4.0, 0.0)]),
        ];
        for budget in [
            7.0, 8.0, 9.0, 10.0, 11.0, 11.5, 12.0, 13.5, 14.0, 20.0, 21.5, 24.0, 28.0,
        ] {
            let c = greedy(&items, budget).unwrap();
            let mut best = f64::MAX;
            for i in 0..4 {
                for j in 0..4 {
                    for k in 0..4 {
                        let cost = items[0][i].cost + items[1][j].cost + items[2][k].cost;
                        if cost <= budget {
                            let e = items[0][i].err + items[1][j].err + items[2][k].err;
                            best = best.min(e);
                        }
                    }
                }
            }
            assert!(c.cost <= budget);
            assert!(c.err >= best - 1e-12);
            if hull.contains(&budget) {
                assert_eq!(c.cost, budget);
                assert!(
                    (c.err - best).abs() < 1e-12,
                    "budget {budget}: {c:?} vs {best}"
                );
            }
        }
        // The non-convex option (3 bits, barely better than 2) is skipped: 2 -> 4 directly.
        let c = greedy(&items, 9.0).unwrap();
        assert_eq!(c.choice[0], 2, "{c:?}");
    }

    #[test]
    fn fill_spends_the_remainder_exactly() {
        // Kept weights as cost: two linears of 100 weights, sparsities 0.8 / 0.6 / 0.4.
        let a = curve(&[(20.0, 0.5), (40.0, 0.2), (60.0, 0.1)]);
        let b = curve(&[(20.0, 0.3), (40.0, 0.2), (60.0, 0.15)]);
        let items = vec![a, b];
        let budget = 70.0; // global 65% sparsity
        let c = greedy(&items, budget).unwrap();
        assert_eq!(c.choice, vec![1, 0]); // A first (0.3/20), then B 0.1/20 = A 0.1/20
        let p = fractional_fill(&items, &c, budget).unwrap();
        let dc = items[p.item][p.to].cost - items[p.item][c.choice[p.item]].cost;
        assert!((c.cost + p.t * dc - budget).abs() < 1e-12);
        assert!(p.t > 0.0 && p.t < 1.0);
        assert!(fractional_fill(&items, &greedy(&items, 40.0).unwrap(), 40.0).is_none());
    }

    #[test]
    fn overrides_are_anchored_and_only_where_different() {
        let r = Recipe {
            stage: vec![Stage {
                method: Some("gptq".into()),
                bits: Some(4),
                ..Stage::default()
            }],
            ..Recipe::default()
        };
        let bits = |b| Stage {
            bits: Some(b),
            ..Stage::default()
        };
        let out = with_linear_settings(
            &r,
            0,
            &bits(3),
            &[
                ("model.layers.0.mlp.down_proj".into(), bits(3)),
                ("model.layers.1.mlp.down_proj".into(), bits(8)),
            ],
        );
        assert_eq!(out.stage[0].bits, Some(3));
        assert_eq!(out.overrides.len(), 1);
        assert_eq!(
            out.overrides[0].pattern,
            "^model\\.layers\\.1\\.mlp\\.down_proj$"
        );
        let re = regex::Regex::new(&out.overrides[0].pattern).unwrap();
        assert!(re.is_match("model.layers.1.mlp.down_proj"));
        assert!(!re.is_match("model.layers.11.mlp.down_proj"));
        // Round trip through TOML.
        let back = Recipe::parse(&out.to_toml().unwrap()).unwrap();
        assert_eq!(back, out);
    }
}
