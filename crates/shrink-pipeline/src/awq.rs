//! AWQ in the sequential pipeline (the searches are `shrink_methods::awq`).
//!
//! With AWQ on, each layer runs forward twice. The first pass is the unquantized layer: before
//! each group of linears that share an input, [`AwqHook`] gathers the input's per-channel mean
//! `|x|` and `XᵀX`, searches the group's scale `s` for the grid each linear is later quantized
//! on (the plan's method's [`shrink_methods::Method::quant_grid`]), and the clipping of every
//! linear but q/k on the scaled weights (`XᵀX` rescaled to `diag(s)^-1 XᵀX diag(s)^-1`). As in
//! llm-awq, every group is searched on the unquantized layer's activations, and nothing changes
//! the layer until the pass is over. Then the scales are folded into the layer
//! (`DecoderLayer::fold_input_scale`: the group's columns times `s`, the norm or the v_proj /
//! up_proj rows before it divided by `s`) and the clipping applied, in forward order. The
//! second pass is the ordinary compression of the rescaled layer (RTN, GPTQ, ...), whose output
//! feeds the next layer.
//!
//! Groups whose input has no exact producer to fold into are left unscaled, and the report says
//! why: o_proj under grouped-query attention, a MoE expert's gate/up, the router.
use crate::{module_name, Assign, Choice};
use anyhow::{bail, Result};
use serde::Serialize;
use shrink_methods::awq::{self, AwqConfig, AwqLinear, ClipChoice};
use shrink_methods::{all_finite, Hessian};
use shrink_model::layer::LayerHook;
use shrink_model::{DecoderLayer, Role};

/// What AWQ did to one group of a layer.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AwqGroupReport {
    /// e.g. `q_proj/k_proj/v_proj`.
    pub group: String,
    /// Why the group was left unscaled, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// The group's output error `tr(Δ XᵀX Δᵀ)` after round to nearest, with the chosen scale
    /// and without it (`s = 1`): their ratio is what the scale gained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_rtn: Option<f64>,
    /// Per clipped linear: (name, mean clip ratio, fraction of (row, group) pairs clipped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clip: Vec<(String, f64, f64)>,
}

struct Pending {
    group: usize,
    scales: Vec<f32>,
    clips: Vec<(usize, ClipChoice)>,
}

/// The first pass's hook: searches every group, changes nothing until [`AwqHook::apply`].
pub struct AwqHook<'a> {
    pub plan: &'a dyn Assign,
    pub cfg: &'a AwqConfig,
    pub layer: usize,
    pending: Vec<Pending>,
    pub reports: Vec<AwqGroupReport>,
    /// Seconds spent in the searches (the Hessians included).
    pub seconds: f64,
}

impl<'a> AwqHook<'a> {
    pub fn new(plan: &'a dyn Assign, cfg: &'a AwqConfig, layer: usize) -> Self {
        AwqHook {
            plan,
            cfg,
            layer,
            pending: vec![],
            reports: vec![],
            seconds: 0.0,
        }
    }

    /// Folds the scales and applies the clipping found in the pass, in forward order (a group's
    /// own weights are only changed by its own fold before its clipping; later folds scale
    /// their rows, which commutes with the clamp).
    pub fn apply(&mut self, layer: &mut DecoderLayer) -> Result<()> {
        for p in self.pending.drain(..) {
            layer.fold_input_scale(p.group, &p.scales)?;
            for (k, c) in &p.clips {
                let d_in = layer.linears[*k].weight.shape[1];
                awq::apply_clip(&mut layer.linears[*k].weight.data, d_in, c);
            }
        }
        Ok(())
    }

    fn skip(&mut self, layer: &DecoderLayer, g: usize, why: &str) {
        self.reports.push(AwqGroupReport {
            group: layer.layout.group_label(g),
            skipped: Some(why.to_string()),
            alpha: None,
            loss: None,
            loss_rtn: None,
            clip: vec![],
        });
    }
}

impl LayerHook for AwqHook<'_> {
    fn before_group(
        &mut self,
        layer: &mut DecoderLayer,
        g: usize,
        input: &[f32],
        rows: usize,
    ) -> Result<()> {
        let t = std::time::Instant::now();
        let spec = layer.layout.groups[g].clone();
        let first = &layer.layout.linears[spec.linears[0]];
        if first.role == Role::Router {
            return Ok(()); // never quantized; its input is the MoE experts' too
        }
        if layer.layout.input_producer(g).is_none() {
            let why = match first.role {
                Role::O => "grouped-query attention: a value channel feeds several heads",
                _ => "MoE expert: its input norm also feeds the router and the other experts",
            };
            self.skip(layer, g, why);
            return Ok(());
        }
        // the grid each linear is later quantized on
        let mut grids = Vec::with_capacity(spec.linears.len());
        for &k in &spec.linears {
            let grid = if layer.layout.linears[k].compress {
                match self.plan.choose(&module_name(layer, k))? {
                    Choice::Compress { method, .. } => method.quant_grid().cloned(),
                    Choice::Keep(_) => None,
                }
            } else {
                None
            };
            grids.push(grid);
        }
        if grids.iter().all(|g| g.is_none()) {
            self.skip(layer, g, "no linear of the group is quantized");
            return Ok(());
        }
        if rows == 0 {
            self.skip(layer, g, "no calibration tokens");
            return Ok(());
        }
        let d_in = first.shape[1];
        if !all_finite(input) {
            bail!(
                "layer {}: AWQ: the input of {} has non-finite values",
                self.layer,
                layer.layout.group_label(g)
            );
        }
        let mut mean = vec![0f64; d_in];
        for row in input.chunks_exact(d_in).take(rows) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v.abs() as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows as f64);
        let mut h = Hessian::new(d_in);
        h.add_batch(&input[..rows * d_in], rows);
        let h32: Vec<f32> = h.matrix().iter().map(|&v| v as f32).collect();
        drop(h);
        let lins: Vec<AwqLinear> = spec
            .linears
            .iter()
            .zip(&grids)
            .map(|(&k, grid)| AwqLinear {
                weight: &layer.linears[k].weight.data,
                d_out: layer.linears[k].weight.shape[0],
                grid: grid.as_ref(),
            })
            .collect();
        let choice = awq::search_scales(self.cfg, &lins, d_in, &mean, &h32).map_err(|e| {
            anyhow::anyhow!(
                "layer {}: AWQ scale search of {}: {e}",
                self.layer,
                layer.layout.group_label(g)
            )
        })?;
        drop(lins);
        let mut clips = Vec::new();
        let mut clip_report = Vec::new();
        if self.cfg.clip {
            let s = &choice.scales;
            // XᵀX of the scaled input diag(s)^-1 X
            let hs: Vec<f32> = h32
                .iter()
                .enumerate()
                .map(|(i, v)| v / (s[i / d_in] * s[i % d_in]))
                .collect();
            for (&k, grid) in spec.linears.iter().zip(&grids) {
                let Some(grid) = grid else { continue };
                // llm-awq leaves the query and key projections unclipped
                if matches!(layer.layout.linears[k].role, Role::Q | Role::K | Role::Qkv) {
                    continue;
                }
                let w = &layer.linears[k].weight;
                let d_out = w.shape[0];
                let mut ws = w.data.clone();
                for row in ws.chunks_exact_mut(d_in) {
                    row.iter_mut().zip(s).for_each(|(v, f)| *v *= f);
                }
                if let Some(c) = awq::search_clip(self.cfg, grid, &ws, d_out, d_in, &hs)? {
                    clip_report.push((
                        layer.layout.linears[k].path.clone(),
                        c.mean_ratio,
                        c.clipped_fraction,
                    ));
                    clips.push((k, c));
                }
            }
        }
        self.reports.push(AwqGroupReport {
            group: layer.layout.group_label(g),
            skipped: None,
            alpha: Some(choice.alpha),
            loss: Some(choice.loss),
            loss_rtn: Some(choice.loss_rtn),
            clip: clip_report,
        });
        self.pending.push(Pending {
            group: g,
            scales: choice.scales,
            clips,
        });
        self.seconds += t.elapsed().as_secs_f64();
        Ok(())
    }
}
