//! Sparsity targets and mask selection shared by the pruning methods.
//!
//! A mask is a `Vec<bool>` over a row-major `[d_out, d_in]` weight, `true` = pruned (set to 0).
//! Every selector prunes an exact count: `round(s * len)` of each comparison group for
//! unstructured sparsity `s`, and `M - N` of every `M` consecutive weights of a row for the
//! semi-structured pattern N:M ("keep N of every M", NVIDIA's convention: 2:4 keeps 2 of 4).
//! Ties are broken by position (lower index pruned first) so masks are deterministic.
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// What fraction or pattern of a weight to prune.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Sparsity {
    /// Prune this fraction (0..1) of each comparison group.
    Unstructured(f64),
    /// Keep `n` of every `m` consecutive weights of a row (prune `m - n`).
    NM { n: usize, m: usize },
}

impl Sparsity {
    /// Parses `0.5` (a fraction) or `2:4` (a pattern).
    pub fn parse(s: &str) -> Result<Sparsity> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once(':') {
            let (n, m): (usize, usize) = match (a.trim().parse(), b.trim().parse()) {
                (Ok(n), Ok(m)) => (n, m),
                _ => bail!("invalid N:M pattern '{s}' (expected e.g. 2:4 or 4:8)"),
            };
            let sp = Sparsity::NM { n, m };
            sp.validate()?;
            return Ok(sp);
        }
        match s.parse::<f64>() {
            Ok(f) => {
                let sp = Sparsity::Unstructured(f);
                sp.validate()?;
                Ok(sp)
            }
            Err(_) => bail!("invalid sparsity '{s}' (expected a fraction such as 0.5)"),
        }
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            Sparsity::Unstructured(f) => ensure!(
                f.is_finite() && (0.0..1.0).contains(&f),
                "sparsity must be a fraction in [0, 1), got {f}"
            ),
            Sparsity::NM { n, m } => ensure!(
                m >= 1 && n < m && m <= 256,
                "N:M pattern {n}:{m}: need 0 <= N < M <= 256 (keep N of every M weights)"
            ),
        }
        Ok(())
    }

    /// The fraction of weights pruned.
    pub fn fraction(&self) -> f64 {
        match *self {
            Sparsity::Unstructured(f) => f,
            Sparsity::NM { n, m } => (m - n) as f64 / m as f64,
        }
    }

    /// `50%` or `2:4`.
    pub fn label(&self) -> String {
        match *self {
            Sparsity::Unstructured(f) => format!("{}%", (f * 1000.0).round() / 10.0),
            Sparsity::NM { n, m } => format!("{n}:{m}"),
        }
    }

    /// Checks that rows of `d_in` columns can carry this sparsity.
    pub fn check_dims(&self, linear: &str, d_in: usize) -> Result<()> {
        if let Sparsity::NM { n, m } = *self {
            ensure!(
                d_in % m == 0,
                "{linear}: the input size {d_in} is not a multiple of M = {m}, so the {n}:{m} \
                 pattern cannot tile its rows"
            );
        }
        Ok(())
    }
}

/// Marks the `k` lowest of `scores[idx]` (ties: lower index first) as pruned in `mask`.
fn prune_lowest(scores: &[f32], idx: &mut [usize], k: usize, mask: &mut [bool]) {
    if k == 0 {
        return;
    }
    let cmp = |a: &usize, b: &usize| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    for &i in &idx[..k.min(idx.len())] {
        mask[i] = true;
    }
}

/// Number pruned out of `len` at fraction `f` (round half up, so 50% of an odd count rounds up).
pub fn prune_count(len: usize, f: f64) -> usize {
    ((len as f64 * f).round() as usize).min(len)
}

/// Mask pruning the lowest `scores` of a `[d_out, d_in]` weight: `per_row` = each output row is
/// a comparison group (Wanda's per-output comparison), otherwise the whole matrix is one group
/// (layer-wise magnitude pruning). N:M always compares within each group of `m` of a row.
pub fn select_mask(
    scores: &[f32],
    d_out: usize,
    d_in: usize,
    sparsity: Sparsity,
    per_row: bool,
) -> Vec<bool> {
    assert_eq!(scores.len(), d_out * d_in);
    let mut mask = vec![false; scores.len()];
    match sparsity {
        Sparsity::Unstructured(f) if !per_row => {
            let mut idx: Vec<usize> = (0..scores.len()).collect();
            prune_lowest(scores, &mut idx, prune_count(scores.len(), f), &mut mask);
        }
        Sparsity::Unstructured(f) => {
            let k = prune_count(d_in, f);
            let mut idx = Vec::with_capacity(d_in);
            for r in 0..d_out {
                idx.clear();
                idx.extend(r * d_in..(r + 1) * d_in);
                prune_lowest(scores, &mut idx, k, &mut mask);
            }
        }
        Sparsity::NM { n, m } => {
            let mut idx = Vec::with_capacity(m);
            for start in (0..scores.len()).step_by(m) {
                idx.clear();
                idx.extend(start..(start + m).min(scores.len()));
                let k = (m - n).min(idx.len());
                prune_lowest(scores, &mut idx, k, &mut mask);
            }
        }
    }
    mask
}

/// Prunes the `m - n` lowest of the `m` scores in `s` (positions relative to `s`), setting
/// `pruned[i]` for them (used inside the SparseGPT sweep).
pub fn nm_select_into(s: &[f32], n: usize, pruned: &mut [bool]) {
    let mut idx: Vec<usize> = (0..s.len()).collect();
    let k = s.len().saturating_sub(n);
    prune_lowest(s, &mut idx, k, pruned);
}

/// Number of exact zeros.
pub fn count_zeros(w: &[f32]) -> usize {
    w.iter().filter(|v| **v == 0.0).count()
}

/// Number of groups of `m` consecutive weights of a row that hold more than `n` non-zeros
/// (0 means the weight obeys N:M). `d_in` must be a multiple of `m`.
pub fn nm_violations(w: &[f32], d_in: usize, n: usize, m: usize) -> usize {
    if m == 0 || d_in % m != 0 {
        return w.len();
    }
    w.chunks(m)
        .filter(|g| g.iter().filter(|v| **v != 0.0).count() > n)
        .count()
}

/// Whether all pruned positions of `mask` hold exactly 0 in `w`.
pub fn mask_respected(w: &[f32], mask: &[bool]) -> bool {
    w.iter().zip(mask).all(|(v, m)| !m || *v == 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_validate() {
        assert_eq!(Sparsity::parse("0.5").unwrap(), Sparsity::Unstructured(0.5));
        assert_eq!(Sparsity::parse("2:4").unwrap(), Sparsity::NM { n: 2, m: 4 });
        assert!(Sparsity::parse("1.0").is_err());
        assert!(Sparsity::parse("-0.1").is_err());
        assert!(Sparsity::parse("4:4").is_err());
        assert!(Sparsity::parse("2:x").is_err());
        assert!(Sparsity::parse("half").is_err());
        assert_eq!(Sparsity::NM { n: 2, m: 4 }.fraction(), 0.5);
        assert_eq!(Sparsity::parse("0.6").unwrap().label(), "60%");
    }

    #[test]
    fn exact_counts() {
        let scores: Vec<f32> = (0..60).map(|i| ((i * 37) % 11) as f32).collect();
        let m = select_mask(&scores, 3, 20, Sparsity::Unstructured(0.5), true);
        for r in 0..3 {
            assert_eq!(m[r * 20..(r + 1) * 20].iter().filter(|b| **b).count(), 10);
        }
        let m = select_mask(&scores, 3, 20, Sparsity::Unstructured(0.6), false);
        assert_eq!(m.iter().filter(|b| **b).count(), 36);
        // The pruned scores are never above a kept one.
        let maxp = (0..60)
            .filter(|&i| m[i])
            .map(|i| scores[i])
            .fold(f32::MIN, f32::max);
        let mink = (0..60)
            .filter(|&i| !m[i])
            .map(|i| scores[i])
            .fold(f32::MAX, f32::min);
        assert!(maxp <= mink);
        let m = select_mask(&scores, 3, 20, Sparsity::NM { n: 2, m: 4 }, true);
        for g in m.chunks(4) {
            assert_eq!(g.iter().filter(|b| **b).count(), 2);
        }
        let w: Vec<f32> = scores
            .iter()
            .zip(&m)
            .map(|(s, p)| if *p { 0.0 } else { s + 1.0 })
            .collect();
        assert_eq!(nm_violations(&w, 20, 2, 4), 0);
        assert!(mask_respected(&w, &m));
        assert_eq!(nm_violations(&[1.0; 8], 8, 2, 4), 2);
    }
}
