//! The sequential layer-by-layer compression driver.
//!
//! Calibration samples are embedded once; then, for each decoder layer in turn, the layer is loaded
//! (only that layer is in memory besides the activations), and run forward once on all samples
//! with a hook. Before each group of linears that share an input ({q,k,v} -> {o} -> {gate,up} ->
//! {down}, "true sequential"), the hook accumulates what the method needs from that input (the
//! Hessian 2/n X^T X), compresses the group's linears, and puts the compressed weights in place;
//! the forward pass then continues with them, so every later group — and the next layer — sees
//! the outputs of already-compressed linears. Every linear runs once, every Hessian is built once.
use anyhow::{bail, Result};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use serde::Serialize;
use shrink_calib::CalibSet;
use shrink_methods::{
    all_finite, count_zeros, mask_respected, nm_violations, Hessian, InputStats, Method, Needs,
    QuantizedWeight, Sparsity,
};
use shrink_model::layer::{LayerHook, NoHook, Rope};
use shrink_model::{DecoderLayer, ModelSource};
use std::ops::Range;
use std::time::Instant;

pub mod awq;
pub mod smooth;
pub mod spectrum;
pub use awq::AwqGroupReport;
pub use smooth::SmoothGroupReport;
pub use spectrum::{hessian_spectra, GroupSpectrum};

/// Wall time per phase, in seconds.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Phases {
    /// Loading (and dequantizing) layer weights.
    pub load: f64,
    /// The forward pass itself (norms, linears, attention), excluding the hook's work.
    pub forward: f64,
    /// Accumulating Hessians.
    pub hessian: f64,
    /// The method's solve (compressing weights).
    pub solve: f64,
    /// Measuring each linear's output error.
    pub error: f64,
    /// Handing finished layers to the sink (writing them).
    pub write: f64,
    /// AWQ's unquantized pass and searches (0 without AWQ).
    #[serde(default)]
    pub awq: f64,
    /// SmoothQuant's unquantized pass (0 without it).
    #[serde(default)]
    pub smooth: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LinearReport {
    pub name: String,
    pub d_out: usize,
    pub d_in: usize,
    /// The method that compressed it (`none` when a recipe left it as it was).
    #[serde(default)]
    pub method: String,
    /// ||X W^T - X W'^T||_F^2 / ||X W^T||_F^2 over the calibration inputs X of this linear
    /// (computed as tr(D H D^T) / tr(W H W^T) with D = W - W').
    pub rel_error: f64,
    /// Rows of X the error was measured on.
    pub error_rows: usize,
    /// Calibration tokens this linear's input held (for an expert: the tokens routed to it).
    pub tokens: usize,
    /// How an expert was calibrated when its tokens were below the threshold (the policy and
    /// the method used instead), or why a linear was left as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub seconds: f64,
    /// Zeros in the new weight (and how many were pruned), when the method prunes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<SparsityReport>,
    /// Method-specific details (damping used, retries, ...).
    pub info: serde_json::Value,
}

/// The sparsity of a weight as written.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SparsityReport {
    /// Weights in the matrix.
    pub weights: usize,
    /// Positions the method pruned.
    pub pruned: usize,
    /// Exact zeros in the new weight (pruned ones plus any kept weight that is 0, e.g. a
    /// quantized weight on the zero point).
    pub zeros: usize,
    /// `zeros / weights`.
    pub fraction: f64,
    /// For N:M: groups of M holding more than N non-zeros (always 0; checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nm_violations: Option<usize>,
}

/// Checks a pruned weight: every pruned position is exactly 0 and an N:M pattern holds in every
/// group. Returns the report entry.
fn check_sparsity(
    name: &str,
    w: &[f32],
    d_in: usize,
    mask: Option<&[bool]>,
    target: Option<Sparsity>,
) -> Result<Option<SparsityReport>> {
    let Some(mask) = mask else {
        if target.is_some() {
            bail!("{name}: the method prunes but returned no mask");
        }
        return Ok(None);
    };
    if mask.len() != w.len() || !mask_respected(w, mask) {
        bail!("{name}: a pruned weight is not exactly 0 after compression");
    }
    let pruned = mask.iter().filter(|m| **m).count();
    let zeros = count_zeros(w);
    let nm = match target {
        Some(Sparsity::NM { n, m }) => {
            let v = nm_violations(w, d_in, n, m);
            if v > 0 {
                bail!("{name}: {v} groups of {m} hold more than {n} non-zeros");
            }
            Some(v)
        }
        _ => None,
    };
    Ok(Some(SparsityReport {
        weights: w.len(),
        pruned,
        zeros,
        fraction: zeros as f64 / w.len().max(1) as f64,
        nm_violations: nm,
    }))
}

/// `sum_t x_tj^2` per column of a `[rows, d]` input, in f64.
fn column_sq_sums(x: &[f32], rows: usize) -> Vec<f64> {
    let d = x.len() / rows.max(1);
    let mut acc = vec![0.0f64; d];
    for row in x.chunks(d.max(1)) {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += (*v as f64) * (*v as f64);
        }
    }
    acc
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LayerReport {
    pub index: usize,
    pub seconds: f64,
    /// Zeros / weights over the layer's linears, when the method prunes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    pub linears: Vec<LinearReport>,
    /// What AWQ did to each group, when it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub awq: Vec<AwqGroupReport>,
    /// What SmoothQuant did to each group, when it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smooth: Vec<SmoothGroupReport>,
}

/// Zeros / weights over the linears that report sparsity (`None` if none does).
pub fn total_sparsity<'a>(linears: impl IntoIterator<Item = &'a LinearReport>) -> Option<f64> {
    let (mut z, mut n) = (0usize, 0usize);
    for s in linears.into_iter().filter_map(|l| l.sparsity.as_ref()) {
        z += s.zeros;
        n += s.weights;
    }
    (n > 0).then(|| z as f64 / n as f64)
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineReport {
    pub method: String,
    pub layers: Vec<LayerReport>,
    pub phases: Phases,
    pub seconds: f64,
}

/// Receives each layer when it is finished: its weights, the quantized form of its linears (if
/// any), its report, and the hidden states it produced on the calibration samples (the input of
/// the next layer: with the finished layers, everything needed to resume the run from here).
pub trait LayerSink {
    fn layer_done(
        &mut self,
        layer: &DecoderLayer,
        quant: &[(usize, QuantizedWeight)],
        report: &LayerReport,
        hidden: &[f32],
    ) -> Result<()>;
}

/// A sink that keeps nothing (for measurements).
pub struct Discard;
impl LayerSink for Discard {
    fn layer_done(
        &mut self,
        _: &DecoderLayer,
        _: &[(usize, QuantizedWeight)],
        _: &LayerReport,
        _: &[f32],
    ) -> Result<()> {
        Ok(())
    }
}

/// Rows used to measure the output error when the method needs no Hessian.
const ERROR_ROWS_WITHOUT_HESSIAN: usize = 2048;

/// What the pipeline does with one linear.
pub enum Choice<'a> {
    /// Leave the weight as it is; the reason goes into the report.
    Keep(String),
    /// Compress it with `method`; `fallback` is the data-free method with the same settings
    /// (RTN / magnitude) for experts without enough calibration tokens.
    Compress {
        method: &'a dyn Method,
        fallback: Option<&'a dyn Method>,
    },
}

/// Which method compresses which linear: one method for all ([`Uniform`]) or a per-module
/// recipe. Linears are named by their module path without `.weight`, e.g.
/// `model.layers.3.mlp.experts.5.down_proj`.
pub trait Assign: Sync {
    /// A label for the report (e.g. `gptq w4 g64 asym`).
    fn name(&self) -> String;
    /// The choice for the linear `module`.
    fn choose(&self, module: &str) -> Result<Choice<'_>>;
}

/// Every linear compressed by the same method.
pub struct Uniform<'a> {
    pub method: &'a dyn Method,
    pub fallback: Option<&'a dyn Method>,
}

impl Assign for Uniform<'_> {
    fn name(&self) -> String {
        self.method.name()
    }
    fn choose(&self, _module: &str) -> Result<Choice<'_>> {
        Ok(Choice::Compress {
            method: self.method,
            fallback: self.fallback,
        })
    }
}

/// The module path of linear `k` of `layer` (its weight's name without `.weight`).
pub fn module_name(layer: &DecoderLayer, k: usize) -> String {
    let n = layer.linear_name(k);
    n.strip_suffix(".weight").unwrap_or(&n).to_string()
}

struct CompressHook<'a> {
    plan: &'a dyn Assign,
    opts: &'a Options,
    /// [`Sequential::Layer`]: the groups' statistics, compressed after the forward pass.
    deferred: Option<Vec<(usize, GroupStats)>>,
    layer: usize,
    phases: Phases,
    linears: Vec<LinearReport>,
    quant: Vec<(usize, QuantizedWeight)>,
    /// Tokens routed to each expert of this layer (MoE).
    routed: Vec<usize>,
}

/// sum_ij (A B)_ij * C_ij for row-major A [m,k], B [k,n], C [m,n] (a trace of A B C^T).
fn trace_abct(a: &[f32], b: &[f32], c: &[f32], m: usize, k: usize, n: usize) -> f64 {
    let mut ab = vec![0f32; m * n];
    matmul(
        MatMut::from_row_major_slice_mut(&mut ab, m, n),
        Accum::Replace,
        MatRef::from_row_major_slice(a, m, k),
        MatRef::from_row_major_slice(b, k, n),
        1.0f32,
        Par::rayon(0),
    );
    ab.iter().zip(c).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Relative output error of replacing `w` by `w_new` (both [d_out, d_in]) for inputs with
/// Hessian `h` (f32 copy, [d_in, d_in]), or directly on `x` ([rows, d_in]) without one.
pub fn rel_output_error(
    w: &[f32],
    w_new: &[f32],
    d_out: usize,
    d_in: usize,
    h: Option<&[f32]>,
    x: &[f32],
    rows: usize,
) -> (f64, usize) {
    let diff: Vec<f32> = w.iter().zip(w_new).map(|(a, b)| a - b).collect();
    match h {
        Some(h) => {
            let num = trace_abct(&diff, h, &diff, d_out, d_in, d_in);
            let den = trace_abct(w, h, w, d_out, d_in, d_in);
            (num / den.max(f64::MIN_POSITIVE), rows)
        }
        None => {
            let r = rows.min(ERROR_ROWS_WITHOUT_HESSIAN);
            let xr = &x[..r * d_in];
            let mut y = vec![0f32; r * d_out];
            let mut e = vec![0f32; r * d_out];
            let xm = MatRef::from_row_major_slice(xr, r, d_in);
            matmul(
                MatMut::from_row_major_slice_mut(&mut y, r, d_out),
                Accum::Replace,
                xm,
                MatRef::from_row_major_slice(w, d_out, d_in).transpose(),
                1.0f32,
                Par::rayon(0),
            );
            matmul(
                MatMut::from_row_major_slice_mut(&mut e, r, d_out),
                Accum::Replace,
                xm,
                MatRef::from_row_major_slice(&diff, d_out, d_in).transpose(),
                1.0f32,
                Par::rayon(0),
            );
            let num: f64 = e.iter().map(|v| (*v as f64).powi(2)).sum();
            let den: f64 = y.iter().map(|v| (*v as f64).powi(2)).sum();
            (num / den.max(f64::MIN_POSITIVE), r)
        }
    }
}

/// What the compression of one group needs from its input.
struct GroupStats {
    hessian: Option<Hessian>,
    col_sq: Vec<f64>,
    /// The first rows of the input (up to the rows the error is measured on without a Hessian).
    sample: Vec<f32>,
    rows: usize,
}

impl CompressHook<'_> {
    fn stats(
        &mut self,
        layer: &DecoderLayer,
        group: usize,
        input: &[f32],
        rows: usize,
    ) -> Result<GroupStats> {
        let label = || layer.layout.group_label(group);
        let d_in = layer.layout.linears[layer.layout.groups[group].linears[0]].shape[1];
        if !all_finite(input) {
            bail!(
                "layer {}: the input of {} has non-finite values (NaN or Inf); the layers before it produced them",
                self.layer,
                label()
            );
        }
        // What the group's methods need together (Nothing when every linear is kept).
        let mut needs = Needs::Nothing;
        let mut compresses = false;
        for &k in &layer.layout.groups[group].linears {
            if !layer.layout.linears[k].compress {
                continue;
            }
            if let Choice::Compress { method, .. } = self.plan.choose(&module_name(layer, k))? {
                compresses = true;
                needs = needs.max(method.needs());
            }
        }
        let hessian = if needs == Needs::Hessian {
            let t = Instant::now();
            let mut h = Hessian::new(d_in);
            h.add_batch(input, rows);
            h.check_finite().map_err(|e| {
                anyhow::anyhow!("layer {}: Hessian of {}: {e}", self.layer, label())
            })?;
            self.phases.hessian += t.elapsed().as_secs_f64();
            Some(h)
        } else {
            None
        };
        let col_sq = match &hessian {
            Some(h) => h.col_sq_norms(),
            None if needs == Needs::ColumnNorms => column_sq_sums(input, rows),
            None => Vec::new(),
        };
        let keep = if hessian.is_some() || !compresses {
            0
        } else {
            rows.min(ERROR_ROWS_WITHOUT_HESSIAN)
        };
        Ok(GroupStats {
            hessian,
            col_sq,
            sample: input[..keep * d_in].to_vec(),
            rows,
        })
    }

    /// The method for one linear of a group: the plan's choice, then the MoE policy for an
    /// expert below the token threshold (with the note the report gives).
    fn method_for<'p>(
        &self,
        method: &'p dyn Method,
        fallback: Option<&'p dyn Method>,
        expert: Option<usize>,
        d_in: usize,
        rows: usize,
    ) -> Result<(&'p dyn Method, Option<String>)> {
        let Some(e) = expert else {
            return Ok((method, None));
        };
        let routed = self.routed.get(e).copied().unwrap_or(0);
        let min = self.opts.min_expert_tokens.unwrap_or(2 * d_in);
        Ok(match self.opts.moe {
            MoeCalibration::FallbackRtn if routed < min => match fallback {
                Some(f) => (f, Some(format!("expert {e}: {routed} routed tokens < {min}: compressed with the data-free {} (--moe-calibration fallback-rtn)", f.name()))),
                None => (method, None),
            },
            MoeCalibration::Routed if rows == 0 => match fallback {
                Some(f) => (f, Some(format!("expert {e}: no routed tokens: compressed with the data-free {}", f.name()))),
                None => bail!("layer {}: expert {e} received no calibration tokens and the method has no data-free fallback; use --moe-calibration all or fallback-rtn", self.layer),
            },
            MoeCalibration::All => (method, Some(format!("expert {e}: {routed} routed tokens; statistics from all {rows} tokens (--moe-calibration all)"))),
            _ => (method, None),
        })
    }

    fn compress_group(
        &mut self,
        layer: &mut DecoderLayer,
        group: usize,
        st: &GroupStats,
    ) -> Result<()> {
        let (hessian, col_sq, input, rows) = (&st.hessian, &st.col_sq, &st.sample, st.rows);
        let spec = layer.layout.groups[group].clone();
        if !spec
            .linears
            .iter()
            .any(|&k| layer.layout.linears[k].compress)
        {
            return Ok(()); // the MoE router: kept as it is
        }
        let h32: Option<Vec<f32>> = hessian
            .as_ref()
            .map(|h| h.matrix().iter().map(|&v| v as f32).collect());
        let stats = InputStats {
            hessian: hessian.as_ref(),
            col_sq,
            rows,
        };
        let tokens = match spec.expert {
            Some(e) => self.routed.get(e).copied().unwrap_or(0),
            None => rows,
        };
        for k in spec.linears.clone() {
            if !layer.layout.linears[k].compress {
                continue;
            }
            let name = layer.linear_name(k);
            let (d_out, d_in_w) = layer.linears[k].weight.dims2();
            let plan = self.plan;
            let (method, note) = match plan.choose(&module_name(layer, k))? {
                Choice::Keep(why) => {
                    self.linears.push(LinearReport {
                        name,
                        d_out,
                        d_in: d_in_w,
                        method: "none".into(),
                        rel_error: 0.0,
                        error_rows: 0,
                        tokens,
                        note: Some(why),
                        seconds: 0.0,
                        sparsity: None,
                        info: serde_json::json!({}),
                    });
                    continue;
                }
                Choice::Compress { method, fallback } => {
                    self.method_for(method, fallback, spec.expert, d_in_w, rows)?
                }
            };
            if method.needs() == Needs::Hessian && hessian.is_none() {
                bail!(
                    "layer {}: {} needs a Hessian that was not gathered",
                    self.layer,
                    method.name()
                );
            }
            let t = Instant::now();
            let old = &layer.linears[k].weight;
            let c = method.compress(&name, old, &stats, None)?;
            let solve = t.elapsed().as_secs_f64();
            self.phases.solve += solve;
            if c.weight.len() != old.data.len() || !all_finite(&c.weight) {
                bail!("layer {}: compressing {name} produced a weight that is not finite or has the wrong size", self.layer);
            }
            let t = Instant::now();
            let (rel_error, error_rows) = if rows == 0 {
                (f64::NAN, 0)
            } else {
                rel_output_error(
                    &old.data,
                    &c.weight,
                    d_out,
                    d_in_w,
                    h32.as_deref(),
                    input,
                    rows,
                )
            };
            self.phases.error += t.elapsed().as_secs_f64();
            let sparsity = check_sparsity(
                &name,
                &c.weight,
                d_in_w,
                c.mask.as_deref(),
                method.sparsity(),
            )?;
            layer.linears[k].weight.data = c.weight;
            if let Some(q) = c.quant {
                self.quant.push((k, q));
            }
            self.linears.push(LinearReport {
                name,
                d_out,
                d_in: d_in_w,
                method: method.name(),
                rel_error,
                error_rows,
                tokens,
                note,
                seconds: solve,
                sparsity,
                info: c.info,
            });
        }
        Ok(())
    }
}

impl LayerHook for CompressHook<'_> {
    fn experts_see_all(&self) -> bool {
        self.opts.moe == MoeCalibration::All
    }
    fn routed(&mut self, _layer: usize, expert: usize, tokens: usize) {
        if self.routed.len() <= expert {
            self.routed.resize(expert + 1, 0);
        }
        self.routed[expert] = tokens;
    }
    fn before_group(
        &mut self,
        layer: &mut DecoderLayer,
        group: usize,
        input: &[f32],
        rows: usize,
    ) -> Result<()> {
        let st = self.stats(layer, group, input, rows)?;
        match &mut self.deferred {
            Some(d) => {
                d.push((group, st));
                Ok(())
            }
            None => self.compress_group(layer, group, &st),
        }
    }
}

/// Compresses `layers` of `src` with `method`, calibrated on `calib`, handing each finished layer
/// to `sink`. `progress(done, total)` is called after each layer.
pub fn run(
    src: &ModelSource,
    calib: &CalibSet,
    method: &dyn Method,
    layers: Range<usize>,
    sink: &mut dyn LayerSink,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PipelineReport> {
    run_from(
        src,
        calib,
        &Uniform {
            method,
            fallback: None,
        },
        layers,
        None,
        &Options::default(),
        sink,
        progress,
    )
}

/// How the experts of a MoE layer are calibrated (`--moe-calibration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoeCalibration {
    /// Each expert's statistics come from the tokens routed to it; an expert that got none is
    /// compressed with the data-free fallback.
    Routed,
    /// Every expert runs on every token for its statistics (the routed outputs still drive the
    /// forward pass).
    All,
    /// Routed statistics; an expert below the token threshold is compressed with the
    /// data-free fallback (RTN for quantization, magnitude for pruning) and the report says so.
    #[default]
    FallbackRtn,
}

/// Pipeline settings beyond the method.
#[derive(Default)]
pub struct Options {
    pub sequential: Sequential,
    pub moe: MoeCalibration,
    /// Experts with fewer routed tokens than this use the fallback under
    /// [`MoeCalibration::FallbackRtn`]; default 2 x the group's d_in.
    pub min_expert_tokens: Option<usize>,
    /// AWQ's scale and clipping search before each layer is compressed ([`awq`]).
    pub awq: Option<shrink_methods::awq::AwqConfig>,
    /// SmoothQuant's migration strength α before each layer is compressed ([`smooth`]).
    pub smooth: Option<f64>,
}

/// Which inputs the groups of a layer are calibrated on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sequential {
    /// "True sequential" (GPTQ/SparseGPT reference option): each group of a layer sees the
    /// outputs of the groups already compressed before it ({q,k,v} -> o -> {gate,up} -> down).
    #[default]
    Group,
    /// llm-compressor's sequential pipeline: every group of a layer is calibrated on the
    /// uncompressed layer's activations, then the compressed layer is run again to produce the
    /// next layer's input (one more forward pass per layer).
    Layer,
}

/// [`run`] starting at `layers.start` from `hidden`, the calibration hidden states that layer
/// receives (as handed to [`LayerSink::layer_done`] by the layer before it), instead of from the
/// embeddings: the resume path. With `hidden = None` the run starts from the embeddings and
/// `layers.start` must be 0. `plan` chooses the method of each linear (a per-module recipe, or
/// [`Uniform`]).
#[allow(clippy::too_many_arguments)]
pub fn run_from(
    src: &ModelSource,
    calib: &CalibSet,
    plan: &dyn Assign,
    layers: Range<usize>,
    hidden: Option<Vec<f32>>,
    opts: &Options,
    sink: &mut dyn LayerSink,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PipelineReport> {
    let start = Instant::now();
    let cfg = &src.config;
    if layers.end > cfg.num_layers {
        bail!(
            "layer range {layers:?} exceeds the model's {} layers",
            cfg.num_layers
        );
    }
    let mut phases = Phases::default();
    let t = Instant::now();
    let mut x = match hidden {
        Some(h) => {
            let want = calib.nsamples * calib.seqlen * cfg.hidden_size;
            if h.len() != want {
                bail!(
                    "saved hidden states have {} values; {} samples x {} tokens x hidden size {} \
                     need {want}",
                    h.len(),
                    calib.nsamples,
                    calib.seqlen,
                    cfg.hidden_size
                );
            }
            if !all_finite(&h) {
                bail!("saved hidden states hold non-finite values");
            }
            h
        }
        None => {
            if layers.start != 0 {
                bail!(
                    "a run starting at layer {} needs the hidden states of layer {}",
                    layers.start,
                    layers.start
                );
            }
            src.embed_ids(&calib.ids)?
        }
    };
    phases.load += t.elapsed().as_secs_f64();
    let rope = Rope::new(cfg, calib.seqlen);
    let total = layers.len();
    let mut reports = Vec::with_capacity(total);
    for (done, i) in layers.enumerate() {
        let t_layer = Instant::now();
        let t = Instant::now();
        let mut layer = src.load_layer(i)?;
        phases.load += t.elapsed().as_secs_f64();
        let sequential = opts.sequential;
        let mut hook = CompressHook {
            plan,
            opts,
            routed: vec![],
            deferred: (sequential == Sequential::Layer).then(Vec::new),
            layer: i,
            phases: Phases::default(),
            linears: vec![],
            quant: vec![],
        };
        let mut smooth_reports = vec![];
        if let Some(alpha) = opts.smooth {
            // the unquantized pass: each norm-fed group's maxima, then the fold
            let t = Instant::now();
            let mut sh = smooth::SmoothHook::new(alpha);
            let mut xs = x.clone();
            layer.forward(cfg, &rope, &mut xs, calib.nsamples, calib.seqlen, &mut sh)?;
            drop(xs);
            sh.apply(&mut layer)?;
            phases.smooth += t.elapsed().as_secs_f64();
            smooth_reports = sh.reports;
        }
        let mut awq_reports = vec![];
        if let Some(acfg) = &opts.awq {
            // the unquantized pass: search every group, then fold and clip
            let t = Instant::now();
            let mut ah = awq::AwqHook::new(plan, acfg, i);
            let mut xa = x.clone();
            layer.forward(cfg, &rope, &mut xa, calib.nsamples, calib.seqlen, &mut ah)?;
            drop(xa);
            ah.apply(&mut layer)?;
            phases.awq += t.elapsed().as_secs_f64();
            awq_reports = ah.reports;
        }
        let t = Instant::now();
        let x_in = (sequential == Sequential::Layer).then(|| x.clone());
        layer.forward(cfg, &rope, &mut x, calib.nsamples, calib.seqlen, &mut hook)?;
        if let (Some(groups), Some(x_in)) = (hook.deferred.take(), x_in) {
            // Every group was calibrated on the uncompressed layer; compress them all, then run
            // the compressed layer to give the next layer its input.
            for (g, st) in &groups {
                hook.compress_group(&mut layer, *g, st)?;
            }
            drop(groups);
            x = x_in;
            layer.forward(
                cfg,
                &rope,
                &mut x,
                calib.nsamples,
                calib.seqlen,
                &mut NoHook,
            )?;
        }
        let fwd_total = t.elapsed().as_secs_f64();
        if !all_finite(&x) {
            bail!(
                "layer {i}: its output on the calibration data has non-finite values (NaN or Inf)"
            );
        }
        let h = &hook.phases;
        phases.forward += fwd_total - h.hessian - h.solve - h.error;
        phases.hessian += h.hessian;
        phases.solve += h.solve;
        phases.error += h.error;
        let t = Instant::now();
        let report = LayerReport {
            index: i,
            seconds: t_layer.elapsed().as_secs_f64(),
            sparsity: total_sparsity(&hook.linears),
            linears: hook.linears,
            awq: awq_reports,
            smooth: smooth_reports,
        };
        sink.layer_done(&layer, &hook.quant, &report, &x)?;
        phases.write += t.elapsed().as_secs_f64();
        reports.push(report);
        progress(done + 1, total);
    }
    Ok(PipelineReport {
        method: plan.name(),
        layers: reports,
        phases,
        seconds: start.elapsed().as_secs_f64(),
    })
}
