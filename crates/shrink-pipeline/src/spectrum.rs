//! The spectrum of every linear group's calibration Hessian `H = 2 XᵀX / n` (the statistics
//! GPTQ and SparseGPT use; [`shrink_methods::Hessian`]): top eigenvalue and condition number,
//! on the uncompressed model, layer by layer.
//!
//! A large top eigenvalue is a direction of high curvature, where a small rounding error costs
//! much output error (HeRo-Q, arXiv 2601.21626: "low error, high loss").
//!
//! An orthogonal rotation does not change these eigenvalues: a reader of the rotated stream sees
//! inputs `X Q`, so its Hessian is `Qᵀ H Q`, similar to `H` (R2 likewise gives o_proj
//! `diag(R)ᵀ H diag(R)`; down_proj's input, the MLP's hidden units, is not rotated at all). What
//! a rotation changes is how the curvature lies on the coordinates a per-channel quantizer
//! rounds: the diagonal of `H` (QuIP's incoherence, Chee et al. 2023). So the spectrum also gives
//! `max_diag / mean`, the largest per-channel curvature over the mean eigenvalue, which a
//! Hadamard rotation flattens towards 1. Shrinking the top eigenvalue itself needs a
//! transformation that is not orthogonal (HeRo-Q's diagonal smoothing).
use anyhow::Result;
use serde::Serialize;
use shrink_calib::CalibSet;
use shrink_methods::hessian::Spectrum;
use shrink_methods::Hessian;
use shrink_model::layer::{DecoderLayer, LayerHook, Rope};
use shrink_model::ModelSource;
use std::ops::Range;

/// The spectrum of one linear group's Hessian.
#[derive(Clone, Debug, Serialize)]
pub struct GroupSpectrum {
    pub layer: usize,
    /// The group's label (`q_proj/k_proj/v_proj`, `experts.3.gate_proj/up_proj`).
    pub group: String,
    pub d_in: usize,
    /// Rows (tokens) of its input.
    pub tokens: usize,
    /// `None` for a group with no tokens (an expert nothing was routed to).
    pub spectrum: Option<Spectrum>,
}

struct SpectrumHook {
    out: Vec<GroupSpectrum>,
}

impl LayerHook for SpectrumHook {
    fn before_group(
        &mut self,
        layer: &mut DecoderLayer,
        group: usize,
        input: &[f32],
        rows: usize,
    ) -> Result<()> {
        let d = input.len() / rows.max(1);
        let spectrum = if rows == 0 {
            None
        } else {
            let mut h = Hessian::new(d);
            h.add_batch(input, rows);
            Some(h.spectrum().map_err(|e| {
                anyhow::anyhow!(
                    "layer {}, {}: {e}",
                    layer.index,
                    layer.layout.group_label(group)
                )
            })?)
        };
        self.out.push(GroupSpectrum {
            layer: layer.index,
            group: layer.layout.group_label(group),
            d_in: d,
            tokens: rows,
            spectrum,
        });
        Ok(())
    }
}

/// Runs the calibration windows through `layers` of `src` (uncompressed) and returns the
/// spectrum of each group's Hessian, in forward order. `progress(done, total)` after each layer.
pub fn hessian_spectra(
    src: &ModelSource,
    calib: &CalibSet,
    layers: Range<usize>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<GroupSpectrum>> {
    let cfg = &src.config;
    if layers.end > cfg.num_layers {
        anyhow::bail!(
            "layer range {layers:?} exceeds the model's {} layers",
            cfg.num_layers
        );
    }
    if layers.start != 0 {
        anyhow::bail!("hessian_spectra starts at layer 0 (got {layers:?})");
    }
    let mut x = src.embed_ids(&calib.ids)?;
    let rope = Rope::new(cfg, calib.seqlen);
    let mut hook = SpectrumHook { out: vec![] };
    let total = layers.len();
    for (done, i) in layers.enumerate() {
        let mut layer = src.load_layer(i)?;
        layer.forward(cfg, &rope, &mut x, calib.nsamples, calib.seqlen, &mut hook)?;
        progress(done + 1, total);
    }
    Ok(hook.out)
}
