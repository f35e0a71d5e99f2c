//! shrink-report: a sweep's report — `report.html` (self-contained: plots inlined as SVG),
//! `report.md` (plots as PNG files beside it) and `plots/*.svg|png`, from `results.jsonl`.
//!
//! - **Pareto plots**: model size (MB, as `bytes` counts it) against perplexity, KL divergence
//!   from the original and mean task accuracy, one series per method (the first word of the
//!   cell's `method`, with the calibration source when the grid has several), error bars of one
//!   standard deviation over seeds, the original as a dashed reference line; the points on the
//!   Pareto front (no other point is both smaller and better) are ringed.
//! - **The table**: every recipe × calibration, its seeds aggregated (mean ± sd), the Pareto
//!   front marked.
//! - **Per-layer profile**: each recipe's mean relative output error per decoder layer (its
//!   first cell), and for a chosen cell each linear's error per layer.
//!
//! Text in the plots needs a TrueType font: DejaVu Sans or Liberation Sans from the system, or
//! the file `SHRINK_FONT` names. Without one the report has its tables but no plots, and says
//! so.
use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A recipe × calibration with its seeds aggregated.
#[derive(Clone, Debug)]
pub struct Point {
    pub recipe: String,
    pub calibration: Option<String>,
    /// The series it is drawn in.
    pub series: String,
    pub method: String,
    pub seeds: usize,
    pub bpw: Option<f64>,
    pub mb: f64,
    pub perplexity: Stat,
    pub kld: Stat,
    pub top1: Stat,
    /// Mean accuracy over the tasks (acc_per_char; `acc` for LAMBADA-style greedy tasks).
    pub task_mean: Stat,
    /// On the size/perplexity Pareto front.
    pub pareto: bool,
    /// The first cell (for the profile plot).
    pub first_cell: String,
}

/// Mean and sample standard deviation of a metric over seeds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    /// `None` for a single value.
    pub sd: Option<f64>,
}

impl Stat {
    pub fn of(v: &[f64]) -> Stat {
        let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len();
        if n == 0 {
            return Stat::default();
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = (n > 1)
            .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Stat { n, mean, sd }
    }

    /// `mean ± sd`, or the mean alone for one value, or — for none.
    pub fn show(&self, digits: usize) -> String {
        match (self.n, self.sd) {
            (0, _) => "—".into(),
            (_, Some(sd)) => format!("{:.*} ± {:.*}", digits, self.mean, digits, sd),
            (_, None) => format!("{:.*}", digits, self.mean),
        }
    }
}

/// Mean task accuracy of a record: acc_per_char, or acc for a task scored by greedy match
/// (LAMBADA), over its tasks; `None` without tasks.
fn task_mean(tasks: &Value) -> Option<f64> {
    let t = tasks.as_object()?;
    if t.is_empty() {
        return None;
    }
    let v: Vec<f64> = t
        .iter()
        .filter_map(|(name, m)| {
            if name.starts_with("lambada") {
                m["acc"].as_f64()
            } else {
                m["acc_per_char"].as_f64()
            }
        })
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The original model's reference values (from the records, which all carry them).
#[derive(Clone, Debug, Default)]
pub struct Original {
    pub perplexity: Option<f64>,
    pub task_mean: Option<f64>,
}

/// Aggregates the records over seeds (grid order kept) and marks the Pareto front.
pub fn aggregate(results: &[Value]) -> (Vec<Point>, Original) {
    let several_calibs = results
        .iter()
        .filter_map(|r| r["calibration"].as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1;
    let mut order: Vec<(String, Option<String>)> = Vec::new();
    let mut groups: BTreeMap<(String, Option<String>), Vec<&Value>> = BTreeMap::new();
    for r in results {
        let key = (
            r["recipe"].as_str().unwrap_or("?").to_string(),
            r["calibration"].as_str().map(str::to_string),
        );
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    let f =
        |rs: &[&Value], k: &str| -> Vec<f64> { rs.iter().filter_map(|r| r[k].as_f64()).collect() };
    let mut points: Vec<Point> = order
        .into_iter()
        .map(|key| {
            let rs = &groups[&key];
            let method = rs[0]["method"].as_str().unwrap_or("?").to_string();
            let family = method.split_whitespace().next().unwrap_or("?").to_string();
            let series = match (&key.1, several_calibs) {
                (Some(c), true) => format!("{family} ({c})"),
                _ => family,
            };
            let tm: Vec<f64> = rs.iter().filter_map(|r| task_mean(&r["tasks"])).collect();
            Point {
                recipe: key.0.clone(),
                calibration: key.1.clone(),
                series,
                method,
                seeds: rs.len(),
                bpw: rs[0]["bpw"].as_f64(),
                mb: rs[0]["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                perplexity: Stat::of(&f(rs, "perplexity")),
                kld: Stat::of(&f(rs, "kld_mean")),
                top1: Stat::of(&f(rs, "top1_agreement")),
                task_mean: Stat::of(&tm),
                pareto: false,
                first_cell: rs[0]["cell"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect();
    let n = points.len();
    for i in 0..n {
        let (a, pa) = (points[i].mb, points[i].perplexity.mean);
        points[i].pareto = points[i].perplexity.n > 0
            && !(0..n).any(|j| {
                let (b, pb) = (points[j].mb, points[j].perplexity.mean);
                j != i && points[j].perplexity.n > 0 && b <= a && pb <= pa && (b < a || pb < pa)
            });
    }
    let original = Original {
        perplexity: results
            .iter()
            .find_map(|r| r["original_perplexity"].as_f64()),
        task_mean: results.iter().find_map(|r| task_mean(&r["original_tasks"])),
    };
    (points, original)
}

/// Registers a TrueType font for the plots' text; `None` when there is none.
pub fn find_font() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var_os("SHRINK_FONT")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
        "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    ] {
        c.push(PathBuf::from(p));
    }
    c.into_iter().find(|p| p.is_file())
}

fn register_font() -> Result<PathBuf> {
    static DONE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let r = DONE.get_or_init(|| {
        let p = find_font()?;
        let bytes: &'static [u8] = Box::leak(std::fs::read(&p).ok()?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).ok()?;
        Some(p)
    });
    r.clone().context(
        "no TrueType font for the plots' text (install fonts-dejavu-core, or set SHRINK_FONT to a .ttf file)",
    )
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One metric of the Pareto plots.
#[derive(Clone, Copy)]
struct Metric {
    file: &'static str,
    label: &'static str,
    get: fn(&Point) -> Stat,
    log: bool,
}

const METRICS: [Metric; 3] = [
    Metric {
        file: "pareto-perplexity",
        label: "perplexity (lower is better)",
        get: |p| p.perplexity,
        log: true,
    },
    Metric {
        file: "pareto-kld",
        label: "mean KL divergence from the original",
        get: |p| p.kld,
        log: true,
    },
    Metric {
        file: "pareto-tasks",
        label: "mean task accuracy (higher is better)",
        get: |p| p.task_mean,
        log: false,
    },
];

type PlotResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn draw_pareto<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    points: &[Point],
    m: Metric,
    reference: Option<f64>,
    title: &str,
) -> PlotResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let vals: Vec<(f64, Stat)> = points
        .iter()
        .map(|p| (p.mb, (m.get)(p)))
        .filter(|(_, s)| s.n > 0)
        .collect();
    let lo = |s: &Stat| s.mean - s.sd.unwrap_or(0.0);
    let hi = |s: &Stat| s.mean + s.sd.unwrap_or(0.0);
    let mut y0 = vals
        .iter()
        .map(|(_, s)| lo(s))
        .fold(f64::INFINITY, f64::min);
    let mut y1 = vals
        .iter()
        .map(|(_, s)| hi(s))
        .fold(f64::NEG_INFINITY, f64::max);
    if let Some(r) = reference.filter(|r| !m.log || *r > 0.0) {
        y0 = y0.min(r);
        y1 = y1.max(r);
    }
    let x1 = vals.iter().map(|v| v.0).fold(0.0, f64::max) * 1.08 + 1.0;
    let x0 = (vals.iter().map(|v| v.0).fold(f64::INFINITY, f64::min) * 0.92).max(0.0);
    let mut builder = ChartBuilder::on(&root);
    let chart = builder
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64);
    let series: Vec<String> = {
        let mut s: Vec<String> = Vec::new();
        for p in points {
            if !s.contains(&p.series) {
                s.push(p.series.clone());
            }
        }
        s
    };
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("model size (MB)")
                .x_label_formatter(&|v| tick_label(*v))
                .y_desc(m.label)
                .y_label_formatter(&|v| tick_label(*v))
                .label_style(("sans-serif", 14))
                .draw()?;
            if let Some(r) = reference {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x0, r), (x1, r)],
                        8,
                        5,
                        BLACK.stroke_width(1),
                    ))?
                    .label("original")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
            }
            for (k, name) in series.iter().enumerate() {
                let c = PALETTE[k % PALETTE.len()];
                let mut pts: Vec<(f64, Stat, bool)> = points
                    .iter()
                    .filter(|p| &p.series == name)
                    .map(|p| (p.mb, (m.get)(p), p.pareto))
                    .filter(|v| v.1.n > 0)
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                if pts.is_empty() {
                    continue;
                }
                // the line joins the series' best point at each size (points of one size,
                // e.g. 50% and 2:4 sparsity, are not joined to each other)
                let mut line: Vec<(f64, f64)> = Vec::new();
                for p in &pts {
                    match line.last_mut() {
                        Some(l) if l.0 == p.0 => l.1 = l.1.min(p.1.mean),
                        _ => line.push((p.0, p.1.mean)),
                    }
                }
                chart
                    .draw_series(LineSeries::new(line, c.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                chart.draw_series(
                    pts.iter()
                        .map(|p| Circle::new((p.0, p.1.mean), 4, c.filled())),
                )?;
                chart.draw_series(pts.iter().filter(|p| p.1.sd.is_some()).map(|p| {
                    ErrorBar::new_vertical(p.0, lo(&p.1), p.1.mean, hi(&p.1), c.stroke_width(1), 8)
                }))?;
                if m.file == "pareto-perplexity" {
                    chart.draw_series(
                        pts.iter()
                            .filter(|p| p.2)
                            .map(|p| Circle::new((p.0, p.1.mean), 8, BLACK.stroke_width(1))),
                    )?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()?;
        }};
    }
    if m.log {
        let (a, b) = (y0.max(1e-6) / 1.15, y1.max(1e-6) * 1.15);
        body!(chart
            .build_cartesian_2d(x0..x1, (a..b).log_scale().with_key_points(log_ticks(a, b)))?);
    } else {
        let pad = ((y1 - y0) * 0.1).max(0.01);
        body!(chart.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?);
    }
    root.present()?;
    Ok(())
}

/// Two calibration sources of one recipe compared on one metric over their seeds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceDiff {
    pub recipe: String,
    pub metric: &'static str,
    pub a: String,
    pub b: String,
    pub mean_a: f64,
    pub mean_b: f64,
    /// Welch's t statistic of mean_a − mean_b.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// p < 0.05: the difference is larger than the seed noise.
    pub beyond_noise: bool,
}

/// For every recipe run on several calibration sources with at least two seeds each, each pair
/// of sources on perplexity and KLD: Welch's unequal-variance t-test of the two means over the
/// seeds (t = Δ / √(s_a²/n_a + s_b²/n_b), Welch–Satterthwaite df, two-sided p from Student's t).
/// A difference with p < 0.05 is called larger than the seed noise. With few seeds this is a
/// rough guide: no correction for the number of pairs is made.
pub fn source_differences(points: &[Point]) -> Vec<SourceDiff> {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let mut out = Vec::new();
    type Measure = (&'static str, fn(&Point) -> Stat);
    let metrics: [Measure; 2] = [("perplexity", |p| p.perplexity), ("KLD", |p| p.kld)];
    let mut recipes: Vec<&str> = Vec::new();
    for p in points {
        if !recipes.contains(&p.recipe.as_str()) {
            recipes.push(&p.recipe);
        }
    }
    for r in recipes {
        let by: Vec<&Point> = points
            .iter()
            .filter(|p| p.recipe == r && p.calibration.is_some() && p.seeds >= 2)
            .collect();
        for (i, pa) in by.iter().enumerate() {
            for pb in &by[i + 1..] {
                for (metric, get) in metrics {
                    let (a, b) = (get(pa), get(pb));
                    let (Some(sa), Some(sb)) = (a.sd, b.sd) else {
                        continue;
                    };
                    let (va, vb) = (sa * sa / a.n as f64, sb * sb / b.n as f64);
                    let se = (va + vb).sqrt();
                    let d = a.mean - b.mean;
                    let (t, df, p) = if se > 0.0 {
                        let df = (va + vb).powi(2)
                            / (va * va / (a.n as f64 - 1.0) + vb * vb / (b.n as f64 - 1.0));
                        let t = d / se;
                        let p = StudentsT::new(0.0, 1.0, df)
                            .map(|st| 2.0 * (1.0 - st.cdf(t.abs())))
                            .unwrap_or(f64::NAN);
                        (t, df, p)
                    } else if d == 0.0 {
                        (0.0, f64::NAN, 1.0)
                    } else {
                        (f64::INFINITY.copysign(d), f64::NAN, 0.0)
                    };
                    out.push(SourceDiff {
                        recipe: r.to_string(),
                        metric,
                        a: pa.calibration.clone().unwrap_or_default(),
                        b: pb.calibration.clone().unwrap_or_default(),
                        mean_a: a.mean,
                        mean_b: b.mean,
                        t,
                        df,
                        p,
                        beyond_noise: p < 0.05,
                    });
                }
            }
        }
    }
    out
}

/// Tick values for a log axis over `[a, b]`: the 1-2-5 steps of each decade, or, when that
/// gives fewer than four, the finer 1, 1.5, 2, 3, 5, 7 (plotters' own log ticks show only the
/// powers of ten, so a range inside one decade would have no label at all).
fn log_ticks(a: f64, b: f64) -> Vec<f64> {
    let pick = |steps: &[f64]| -> Vec<f64> {
        let mut v = Vec::new();
        let mut e = a.log10().floor() as i32;
        while 10f64.powi(e) <= b * 1.0001 && v.len() < 200 {
            for m in steps {
                let t = m * 10f64.powi(e);
                if t >= a * 0.9999 && t <= b * 1.0001 {
                    v.push(t);
                }
            }
            e += 1;
        }
        v
    };
    let coarse = pick(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 4 {
        // many decades: keep at most about ten labels
        let every = coarse.len().div_ceil(10);
        return coarse.into_iter().step_by(every).collect();
    }
    let fine = pick(&[1.0, 1.5, 2.0, 3.0, 5.0, 7.0]);
    if fine.len() >= 3 {
        return fine;
    }
    // a narrow range: five evenly spaced (in log) values
    (0..5).map(|i| a * (b / a).powf(i as f64 / 4.0)).collect()
}

/// A tick label without floating-point noise: 0.002, 15, 1.5e3.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let m = v.abs();
    if !(1e-3..1e5).contains(&m) {
        return format!("{v:.1e}");
    }
    let digits = (3 - m.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Per-layer lines: (label, [(layer, value)]).
type Profile = Vec<(String, Vec<(f64, f64)>)>;

fn draw_profile<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    lines: &Profile,
    title: &str,
) -> PlotResult<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let all = lines.iter().flat_map(|l| l.1.iter());
    let (mut y0, mut y1, mut x1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in all {
        if y > 0.0 {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        x1 = x1.max(x);
    }
    if !y0.is_finite() {
        (y0, y1) = (1e-6, 1.0);
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            -0.5..x1 + 0.5,
            (y0 / 1.3..y1 * 1.3)
                .log_scale()
                .with_key_points(log_ticks(y0 / 1.3, y1 * 1.3)),
        )?;
    chart
        .configure_mesh()
        .x_desc("decoder layer")
        .y_desc("relative output error")
        .y_label_formatter(&|v| tick_label(*v))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (k, (name, pts)) in lines.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1 > 0.0).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Each layer's mean relative error of a cell's report.json; per linear when `per_linear`.
pub fn layer_profile(report: &Value, per_linear: bool) -> Profile {
    let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order = Vec::new();
    for l in report["layers"].as_array().into_iter().flatten() {
        let i = l["index"].as_f64().unwrap_or(0.0);
        let lin = l["linears"].as_array().cloned().unwrap_or_default();
        if per_linear {
            for x in &lin {
                let name = x["name"].as_str().unwrap_or("?");
                // model.layers.3.self_attn.q_proj.weight -> self_attn.q_proj
                let short = name
                    .split('.')
                    .skip_while(|p| p.parse::<usize>().is_err())
                    .skip(1)
                    .filter(|p| *p != "weight")
                    .collect::<Vec<_>>()
                    .join(".");
                if let Some(e) = x["rel_error"].as_f64() {
                    if !by.contains_key(&short) {
                        order.push(short.clone());
                    }
                    by.entry(short).or_default().push((i, e));
                }
            }
        } else {
            let e: Vec<f64> = lin.iter().filter_map(|x| x["rel_error"].as_f64()).collect();
            if !e.is_empty() {
                if !by.contains_key("") {
                    order.push(String::new());
                }
                by.entry(String::new())
                    .or_default()
                    .push((i, e.iter().sum::<f64>() / e.len() as f64));
            }
        }
    }
    order
        .into_iter()
        .map(|k| {
            let v = by.remove(&k).unwrap();
            (k, v)
        })
        .collect()
}

/// What [`write`] needs besides the results.
pub struct ReportInput<'a> {
    pub title: String,
    /// Lines of text under the title (model, evaluation, what the sizes count).
    pub notes: Vec<String>,
    pub results: &'a [Value],
    /// A cell's report.json by cell id, for the profiles.
    pub cell_report: &'a dyn Fn(&str) -> Option<Value>,
    /// A cell whose per-linear profile is drawn too.
    pub profile_cell: Option<String>,
}

/// What [`write`] wrote.
#[derive(Debug)]
pub struct Written {
    pub html: PathBuf,
    pub md: PathBuf,
    pub plots: Vec<PathBuf>,
    /// Why there are no plots, when there are none.
    pub no_plots: Option<String>,
}

fn svg_of(
    size: (u32, u32),
    f: impl Fn(DrawingArea<SVGBackend, plotters::coord::Shift>) -> PlotResult<()>,
) -> Result<String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, size).into_drawing_area();
        f(root).map_err(|e| anyhow::anyhow!("drawing the plot: {e}"))?;
    }
    Ok(s)
}

fn png_of(
    path: &Path,
    size: (u32, u32),
    f: impl Fn(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> PlotResult<()>,
) -> Result<()> {
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        f(root).map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `report.html`, `report.md` and `plots/` into `dir`.
pub fn write(dir: &Path, input: &ReportInput) -> Result<Written> {
    if input.results.is_empty() {
        bail!("{}: no finished cells to report", dir.display());
    }
    let (points, original) = aggregate(input.results);
    let plots_dir = dir.join("plots");
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("{}: cannot create", plots_dir.display()))?;
    let mut svgs: Vec<(String, String, String)> = Vec::new(); // (file stem, caption, svg)
    let mut plots = Vec::new();
    let font = register_font();
    let no_plots = match &font {
        Err(e) => Some(format!("{e:#}")),
        Ok(_) => None,
    };
    if font.is_ok() {
        let size = (860, 520);
        for m in METRICS {
            if !points.iter().any(|p| (m.get)(p).n > 0) {
                continue;
            }
            let reference = match m.file {
                "pareto-perplexity" => original.perplexity,
                "pareto-tasks" => original.task_mean,
                _ => None,
            };
            let title = format!(
                "size against {}",
                m.label.split(" (").next().unwrap_or(m.label)
            );
            let svg = svg_of(size, |r| draw_pareto(r, &points, m, reference, &title))?;
            let p = plots_dir.join(format!("{}.svg", m.file));
            std::fs::write(&p, &svg).with_context(|| format!("{}: cannot write", p.display()))?;
            let png = plots_dir.join(format!("{}.png", m.file));
            png_of(&png, size, |r| {
                draw_pareto(r, &points, m, reference, &title)
            })?;
            plots.extend([p, png]);
            svgs.push((m.file.into(), title, svg));
        }
        // per-layer profiles: each recipe's first cell
        let mut lines: Profile = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for p in &points {
            if !seen.insert(p.recipe.clone()) {
                continue;
            }
            if let Some(rep) = (input.cell_report)(&p.first_cell) {
                if let Some((_, v)) = layer_profile(&rep, false).into_iter().next() {
                    lines.push((p.recipe.clone(), v));
                }
            }
        }
        let mut profiles: Vec<(String, String, Profile)> = Vec::new();
        if !lines.is_empty() {
            profiles.push((
                "profile-layers".into(),
                "per-layer error (each recipe's first cell)".into(),
                lines,
            ));
        }
        if let Some(c) = &input.profile_cell {
            let rep = (input.cell_report)(c).with_context(|| {
                format!("--profile {c}: no such finished cell (its cells/{c}/report.json)")
            })?;
            profiles.push((
                format!("profile-{c}"),
                format!("per-linear error of {c}"),
                layer_profile(&rep, true),
            ));
        }
        for (stem, title, lines) in profiles {
            let svg = svg_of(size, |r| draw_profile(r, &lines, &title))?;
            let p = plots_dir.join(format!("{stem}.svg"));
            std::fs::write(&p, &svg).with_context(|| format!("{}: cannot write", p.display()))?;
            let png = plots_dir.join(format!("{stem}.png"));
            png_of(&png, size, |r| draw_profile(r, &lines, &title))?;
            plots.extend([p, png]);
            svgs.push((stem, title, svg));
        }
    }
    let has_tasks = points.iter().any(|p| p.task_mean.n > 0);
    // --- the table, as rows of cells
    let mut head = vec![
        "recipe",
        "calibration",
        "seeds",
        "method",
        "bpw",
        "MB",
        "perplexity",
        "KLD",
        "top-1",
    ];
    if has_tasks {
        head.push("task mean");
    }
    head.push("Pareto");
    let mut rows: Vec<Vec<String>> = Vec::new();
    if let Some(p) = original.perplexity {
        let mut r = vec![
            "original".into(),
            "—".into(),
            "—".into(),
            "reference".into(),
            "—".into(),
            "—".into(),
            format!("{p:.3}"),
            "0".into(),
            "1".into(),
        ];
        if has_tasks {
            r.push(
                original
                    .task_mean
                    .map(|t| format!("{t:.4}"))
                    .unwrap_or("—".into()),
            );
        }
        r.push(String::new());
        rows.push(r);
    }
    for p in &points {
        let mut r = vec![
            p.recipe.clone(),
            p.calibration.clone().unwrap_or("— (data-free)".into()),
            p.seeds.to_string(),
            p.method.clone(),
            p.bpw.map(|b| format!("{b:.3}")).unwrap_or("—".into()),
            format!("{:.1}", p.mb),
            p.perplexity.show(3),
            p.kld.show(4),
            p.top1.show(4),
        ];
        if has_tasks {
            r.push(p.task_mean.show(4));
        }
        r.push(if p.pareto {
            "✓".into()
        } else {
            String::new()
        });
        rows.push(r);
    }
    // --- Markdown
    let mut md = format!("# {}\n\n", input.title);
    for n in &input.notes {
        md.push_str(&format!("- {n}\n"));
    }
    md.push_str("\n## Results (mean ± sd over seeds)\n\n");
    md.push_str(&format!(
        "| {} |\n|{}|\n",
        head.join(" | "),
        head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    ));
    for r in &rows {
        md.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    md.push_str("\nPareto: no other row is both smaller and of lower perplexity.\n\n");
    let diffs = source_differences(&points);
    let diff_head = [
        "recipe",
        "metric",
        "source A",
        "source B",
        "mean A",
        "mean B",
        "Welch t",
        "p",
        "beyond the seed noise?",
    ];
    let diff_rows: Vec<Vec<String>> = diffs
        .iter()
        .map(|d| {
            vec![
                d.recipe.clone(),
                d.metric.to_string(),
                d.a.clone(),
                d.b.clone(),
                format!("{:.4}", d.mean_a),
                format!("{:.4}", d.mean_b),
                format!("{:.2}", d.t),
                format!("{:.3}", d.p),
                if d.beyond_noise {
                    format!(
                        "yes: {} is {}",
                        if d.mean_a < d.mean_b { &d.a } else { &d.b },
                        "lower"
                    )
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    const DIFF_NOTE: &str = "Welch's t-test over the seeds of each pair of calibration sources \
        (two-sided; p < 0.05 is called beyond the seed noise; no correction for the number of pairs).";
    if !diffs.is_empty() {
        md.push_str("## Calibration sources against the seed noise\n\n");
        md.push_str(&format!(
            "| {} |\n|{}|\n",
            diff_head.join(" | "),
            diff_head
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        ));
        for r in &diff_rows {
            md.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        md.push_str(&format!("\n{DIFF_NOTE}\n\n"));
    }
    if let Some(why) = &no_plots {
        md.push_str(&format!("No plots: {why}.\n"));
    }
    for (stem, title, _) in &svgs {
        md.push_str(&format!("## {title}\n\n![{title}](plots/{stem}.png)\n\n"));
    }
    // --- HTML, self-contained
    let mut html =
        String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    html.push_str(&format!("<title>{}</title>\n", esc(&input.title)));
    html.push_str("<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th{background:#f0f0f0}td:nth-child(-n+4){text-align:left}tr.pareto{background:#eef7ee}\
figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:.3em}ul{font-size:14px}</style></head><body>\n");
    html.push_str(&format!("<h1>{}</h1>\n<ul>\n", esc(&input.title)));
    for n in &input.notes {
        html.push_str(&format!("<li>{}</li>\n", esc(n)));
    }
    html.push_str("</ul>\n");
    let mut figs = svgs.iter();
    if let Some((_, title, svg)) = figs.next() {
        html.push_str(&format!(
            "<figure><figcaption>{}</figcaption>{}</figure>\n",
            esc(title),
            svg
        ));
    }
    html.push_str("<h2>Results (mean ± sd over seeds)</h2>\n<table><tr>");
    for h in &head {
        html.push_str(&format!("<th>{}</th>", esc(h)));
    }
    html.push_str("</tr>\n");
    for r in &rows {
        let class = if r.last().map(|s| s == "✓").unwrap_or(false) {
            " class=\"pareto\""
        } else {
            ""
        };
        html.push_str(&format!("<tr{class}>"));
        for c in r {
            html.push_str(&format!("<td>{}</td>", esc(c)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str(
        "</table>\n<p>Pareto (green): no other row is both smaller and of lower perplexity.</p>\n",
    );
    if !diffs.is_empty() {
        html.push_str("<h2>Calibration sources against the seed noise</h2>\n<table><tr>");
        for h in &diff_head {
            html.push_str(&format!("<th>{}</th>", esc(h)));
        }
        html.push_str("</tr>\n");
        for (r, d) in diff_rows.iter().zip(&diffs) {
            html.push_str(if d.beyond_noise {
                "<tr class=\"pareto\">"
            } else {
                "<tr>"
            });
            for c in r {
                html.push_str(&format!("<td>{}</td>", esc(c)));
            }
            html.push_str("</tr>\n");
        }
        html.push_str(&format!("</table>\n<p>{}</p>\n", esc(DIFF_NOTE)));
    }
    if let Some(why) = &no_plots {
        html.push_str(&format!("<p><b>No plots:</b> {}.</p>\n", esc(why)));
    }
    for (_, title, svg) in figs {
        html.push_str(&format!(
            "<figure><figcaption>{}</figcaption>{}</figure>\n",
            esc(title),
            svg
        ));
    }
    html.push_str("</body></html>\n");
    let (html_path, md_path) = (dir.join("report.html"), dir.join("report.md"));
    for (p, text) in [(&html_path, &html), (&md_path, &md)] {
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, p).with_context(|| format!("{}: cannot write", p.display()))?;
    }
    Ok(Written {
        html: html_path,
        md: md_path,
        plots,
        no_plots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(recipe: &str, seed: u64, bytes: f64, ppl: f64) -> Value {
        json!({"cell": format!("{recipe}.wiki.s{seed}"), "recipe": recipe, "calibration": "wiki",
               "seed": seed, "method": format!("{recipe} x"), "bytes": bytes, "bpw": bytes / 1e7,
               "perplexity": ppl, "original_perplexity": 14.0, "kld_mean": ppl / 100.0,
               "top1_agreement": 0.8, "tasks": {}, "original_tasks": {}})
    }

    #[test]
    fn source_differences_follow_welch() {
        let mut r = Vec::new();
        // source x: ppl 10, 11, 12 (sd 1); source y: 20, 21, 22; source z: 10.5, 11.5, 12.5
        for (src, base) in [("x", 10.0), ("y", 20.0), ("z", 10.5)] {
            for s in 0..3u64 {
                let mut v = rec("g", s, 50e6, base + s as f64);
                v["calibration"] = json!(src);
                v["cell"] = json!(format!("g.{src}.s{s}"));
                r.push(v);
            }
        }
        let (p, _) = aggregate(&r);
        let d = source_differences(&p);
        let ppl: Vec<&SourceDiff> = d.iter().filter(|d| d.metric == "perplexity").collect();
        assert_eq!(ppl.len(), 3, "{d:?}");
        let xy = ppl.iter().find(|d| d.a == "x" && d.b == "y").unwrap();
        // t = -10 / sqrt(1/3 + 1/3) = -12.25, df = 4
        assert!((xy.t + 10.0 / (2.0f64 / 3.0).sqrt()).abs() < 1e-9, "{xy:?}");
        assert!((xy.df - 4.0).abs() < 1e-9);
        assert!(xy.beyond_noise && xy.p < 1e-3);
        let xz = ppl.iter().find(|d| d.a == "x" && d.b == "z").unwrap();
        // t = -0.5 / 0.816 = -0.612, df 4: p = 0.573
        assert!((xz.p - 0.5734).abs() < 1e-3, "{xz:?}");
        assert!(!xz.beyond_noise);
    }

    #[test]
    fn log_axes_get_labelled_ticks_inside_one_decade_and_across_many() {
        // perplexities 15 to 42: inside one decade and a half
        let t = log_ticks(13.0, 48.0);
        assert!(t.len() >= 3, "{t:?}");
        assert!(t.iter().all(|&v| (13.0..=48.0).contains(&v)), "{t:?}");
        assert_eq!(
            t.iter().map(|&v| tick_label(v)).collect::<Vec<_>>(),
            ["15", "20", "30"]
        );
        // a W2 collapse next to the original: four decades, at most ten labels
        let t = log_ticks(10.0, 4000.0);
        assert!(t.len() >= 4 && t.len() <= 10, "{t:?}");
        // a narrow range still has labels
        assert_eq!(log_ticks(15.3, 15.9).len(), 5);
        assert_eq!(tick_label(0.002), "0.002");
        assert_eq!(tick_label(0.015), "0.015");
        assert_eq!(tick_label(1500.0), "1500");
    }

    #[test]
    fn seeds_aggregate_and_the_pareto_front_is_the_non_dominated_set() {
        let r = vec![
            rec("a", 0, 50e6, 16.0),
            rec("a", 1, 50e6, 18.0),
            rec("b", 0, 40e6, 20.0),
            rec("c", 0, 60e6, 19.0), // dominated by a (smaller and better)
            rec("d", 0, 40e6, 25.0), // dominated by b (same size, worse)
        ];
        let (p, o) = aggregate(&r);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].seeds, 2);
        assert!((p[0].perplexity.mean - 17.0).abs() < 1e-12);
        assert!((p[0].perplexity.sd.unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(
            p.iter().map(|p| p.pareto).collect::<Vec<_>>(),
            [true, true, false, false]
        );
        assert_eq!(o.perplexity, Some(14.0));
    }

    #[test]
    fn task_mean_uses_acc_for_greedy_tasks() {
        let t = json!({"arc_easy": {"acc": 0.1, "acc_per_char": 0.5}, "lambada:bpb_0shot": {"acc": 0.3, "acc_per_char": 0.9}});
        assert!((task_mean(&t).unwrap() - 0.4).abs() < 1e-12);
        assert_eq!(task_mean(&json!({})), None);
    }

    #[test]
    fn report_has_the_table_and_plots() {
        let d = tempfile::tempdir().unwrap();
        let r = vec![
            rec("a", 0, 50e6, 16.0),
            rec("a", 1, 50e6, 18.0),
            rec("b", 0, 40e6, 20.0),
        ];
        let report = json!({"layers": [
            {"index": 0, "linears": [{"name": "model.layers.0.mlp.up_proj.weight", "rel_error": 0.01}]},
            {"index": 1, "linears": [{"name": "model.layers.1.mlp.up_proj.weight", "rel_error": 0.02}]}]});
        let w = write(
            d.path(),
            &ReportInput {
                title: "t".into(),
                notes: vec!["n <1>".into()],
                results: &r,
                cell_report: &|_| Some(report.clone()),
                profile_cell: Some("a.wiki.s0".into()),
            },
        )
        .unwrap();
        let html = std::fs::read_to_string(&w.html).unwrap();
        assert!(html.contains("17.000 ± 1.414"), "{html}");
        assert!(html.contains("n &lt;1&gt;"));
        let md = std::fs::read_to_string(&w.md).unwrap();
        assert!(md.contains("| a | wiki | 2 |"));
        match w.no_plots {
            Some(why) => eprintln!("skipped the plot checks: {why}"),
            None => {
                assert!(html.contains("<svg"), "plots inlined");
                for p in &w.plots {
                    let b = std::fs::read(p).unwrap();
                    assert!(b.len() > 1000, "{}", p.display());
                    if p.extension().unwrap() == "png" {
                        assert_eq!(&b[..4], b"\x89PNG");
                    }
                }
                assert_eq!(w.plots.len(), 2 * 4, "{:?}", w.plots); // ppl, kld, layers, per-linear
            }
        }
    }
}
