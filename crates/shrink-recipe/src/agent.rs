//! `--allocate agent`: the iterative loop of "LLMs can Compress LLMs: Adaptive Pruning by
//! Agents" (Kodathala & Vunnam, arXiv 2601.09694), with a pluggable proposer.
//!
//! **The paper.** Each linear layer gets a sensitivity profile `P_l = {z_l^(s), z_l^(g), rho_l}`:
//! - `s_l`, the 10th percentile of the Wanda statistic `S_l = |W_l| (.) ||X_l||_2` over the
//!   layer's *active* (non-zero) weights, z-scored across layers,
//!   `z_l^(s) = (s_l - mu_s) / (sigma_s + eps)`;
//! - `g_l`, a gradient importance `(1/M) sum_i |dL_i/dW_l|`, z-scored the same way;
//! - `rho_l`, the layer's current sparsity.
//!
//! An LLM agent reads the profiles and the outcomes of its earlier steps ("self-reflection")
//! and chooses which layers to prune further. A checkpoint rollback reverts a step whose
//! perplexity degradation passes a threshold. The loop repeats until the target sparsity is
//! reached (21-40 iterations and 2-4 rollbacks for Qwen3 4B/8B at ~45%).
//!
//! **Here.**
//! - The profile is `s_l` (recomputed on the active weights after every accepted step, so a
//!   layer that was just pruned ranks as more sensitive), OWL's outlier share and `rho_l`.
//!   shrink has no backward pass, so the gradient score `z^(g)` is **not** computed.
//! - "Layer" is a decoder block: a step sets the sparsity of all its compressible linears.
//! - Candidate models are pruned with Wanda's mask (per output row, the paper's statistic) from
//!   the *dense* model's input norms, gathered in one calibration pass. Masks are recomputed
//!   from the dense weights, so a rollback is exact.
//! - Perplexity is measured on a held-in slice: the first `holdin` calibration windows (never
//!   the evaluation text). Only the blocks from the first changed one onwards are recomputed;
//!   the inputs of every block at the last checkpoint are kept.
//! - A step is **rolled back** when its held-in perplexity exceeds the checkpoint's by more than
//!   `rollback_threshold` (relative, e.g. 0.02 = 2%).
//! - The allocation found (one sparsity per block) is then what the run's own method
//!   (SparseGPT, Wanda, ...) prunes with, through the normal sequential pipeline.
//!
//! **Proposers.** The default is [`builtin_proposal`], deterministic: the `layers_per_step`
//! blocks of lowest `z^(s)` that can still move take one step each; a block whose step was rolled
//! back waits `cooldown` steps and then moves by half its previous step; after three rollbacks
//! it is left where it is. (Counting only the rollbacks since a block's last kept step was
//! tried: on the default model at 50% it took 97 steps, 60 rolled back, and ended at a
//! held-in perplexity of 33.98, against 31.68 in 49 steps with this rule.) An external program (`--agent-cmd`) gets the same information and
//! answers for itself: one JSON object per line each way ([`Request`] -> [`Proposal`]). An
//! answer that is not valid JSON, names an impossible step, or does not arrive within the time
//! limit is recorded in the log and the built-in policy takes that step; after a timeout, or
//! three failed answers in a row, the program is stopped and the built-in policy finishes the
//! run.
use crate::alloc::{LayerOutliers, OwlProbe};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use shrink_methods::{Compressed, InputStats, Method, Needs, Sparsity};
use shrink_model::tensor::rms_norm;
use shrink_model::{Model, NoHook, Rope, Tensor};
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The schema version of [`Request`] (field `shrink_agent`).
pub const PROTOCOL: u32 = 1;

/// One dense calibration pass: OWL's per-layer statistics plus every linear's input norms.
pub struct AgentProbe {
    pub owl: OwlProbe,
    linears: Mutex<Vec<ProbedLinear>>,
}

/// A compressible linear and `sum_t x_tj^2` of its dense inputs.
#[derive(Clone, Debug)]
pub struct ProbedLinear {
    /// Module path without `.weight`.
    pub module: String,
    pub layer: usize,
    pub col_sq: Vec<f64>,
}

impl AgentProbe {
    pub fn new(owl_m: f64) -> Result<AgentProbe> {
        Ok(AgentProbe {
            owl: OwlProbe::new(owl_m)?,
            linears: Mutex::new(Vec::new()),
        })
    }
    pub fn linears(&self) -> Vec<ProbedLinear> {
        self.linears.lock().unwrap().clone()
    }
}

impl Method for AgentProbe {
    fn name(&self) -> String {
        "agent probe".into()
    }
    fn needs(&self) -> Needs {
        Needs::ColumnNorms
    }
    fn compress(
        &self,
        linear: &str,
        weight: &Tensor,
        stats: &InputStats,
        mask: Option<&[bool]>,
    ) -> Result<Compressed> {
        let out = self.owl.compress(linear, weight, stats, mask)?;
        let module = linear.trim_end_matches(".weight").to_string();
        let layer = crate::alloc::layer_of(&module)?;
        self.linears.lock().unwrap().push(ProbedLinear {
            module,
            layer,
            col_sq: stats.col_sq.to_vec(),
        });
        Ok(out)
    }
}

/// Settings of the loop (`--sparsity`, `--agent-*`, `--rollback-threshold`).
#[derive(Clone, Debug, Serialize)]
pub struct AgentSettings {
    /// Global sparsity over all compressible weights of the compressed layers.
    pub target: f64,
    /// Every block starts at this sparsity (no rollback applies to it).
    pub start: f64,
    /// Sparsity a block gains in one step.
    pub step: f64,
    /// Blocks moved per built-in step.
    pub layers_per_step: usize,
    /// Relative held-in perplexity rise over the checkpoint that rolls a step back.
    pub rollback_threshold: f64,
    /// No block goes above this sparsity.
    pub max_layer_sparsity: f64,
    /// The loop stops with an error after this many steps.
    pub max_steps: usize,
    /// Steps a rolled-back block waits before the built-in policy proposes it again.
    pub cooldown: usize,
}

impl AgentSettings {
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.target > 0.0 && self.target < 1.0,
            "--allocate agent needs a global --sparsity in (0, 1), got {}",
            self.target
        );
        ensure!(
            (0.0..=self.target).contains(&self.start),
            "--agent-start must be in [0, --sparsity {}], got {}",
            self.target,
            self.start
        );
        ensure!(
            self.step > 0.0 && self.step <= 0.5,
            "--agent-step must be in (0, 0.5], got {}",
            self.step
        );
        ensure!(
            self.layers_per_step >= 1,
            "--agent-layers must be at least 1"
        );
        ensure!(
            self.rollback_threshold.is_finite() && self.rollback_threshold >= 0.0,
            "--rollback-threshold must be a fraction >= 0 (0.02 = a 2% rise), got {}",
            self.rollback_threshold
        );
        ensure!(
            self.max_layer_sparsity >= self.target && self.max_layer_sparsity < 1.0,
            "the largest block sparsity {} must lie in [--sparsity, 1)",
            self.max_layer_sparsity
        );
        ensure!(self.max_steps >= 1, "--agent-max-steps must be at least 1");
        Ok(())
    }
}

/// One block as the proposer sees it.
#[derive(Clone, Debug, Serialize)]
pub struct LayerView {
    pub layer: usize,
    /// Compressible weights of the block.
    pub weights: usize,
    /// Current sparsity `rho_l` (accepted steps only).
    pub sparsity: f64,
    /// 10th percentile of `|W| * ||X||` over the block's active weights (`s_l`).
    pub score_p10: f64,
    /// `z_l^(s)` across blocks.
    pub score_p10_z: f64,
    /// OWL's outlier share of the dense block (%), for information.
    pub outlier_pct: f64,
}

/// What shrink sends the proposer before each step (one JSON object on one line).
#[derive(Clone, Debug, Serialize)]
pub struct Request<'a> {
    /// Protocol version ([`PROTOCOL`]).
    pub shrink_agent: u32,
    pub step: usize,
    pub target_sparsity: f64,
    /// Global sparsity now.
    pub sparsity: f64,
    /// Fraction of all compressible weights still to prune to reach the target.
    pub budget_left: f64,
    /// The built-in step size (an external proposer may choose other amounts).
    pub step_size: f64,
    pub max_layer_sparsity: f64,
    pub rollback_threshold: f64,
    pub dense_perplexity: f64,
    /// Held-in perplexity of the last accepted state.
    pub checkpoint_perplexity: f64,
    pub layers: &'a [LayerView],
    pub history: &'a [Step],
}

/// What a proposer answers: sparsity to add to some blocks (one JSON object on one line), e.g.
/// `{"prune": [{"layer": 3, "amount": 0.05}], "note": "layer 3 is least sensitive"}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    pub prune: Vec<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Amount {
    pub layer: usize,
    pub amount: f64,
}

/// One step of the run log.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: usize,
    /// `builtin` or `agent`.
    pub proposer: String,
    /// What was applied (amounts after fitting the remaining budget).
    pub prune: Vec<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why the external agent's answer was not used, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<String>,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
    pub perplexity: f64,
    pub checkpoint_perplexity: f64,
    /// `perplexity / checkpoint_perplexity - 1`.
    pub rise: f64,
    pub accepted: bool,
    pub seconds: f64,
}

/// The result of the loop.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Final sparsity per block, in layer order.
    pub sparsities: Vec<(usize, f64)>,
    pub layers: Vec<LayerView>,
    pub steps: Vec<Step>,
    pub dense_perplexity: f64,
    /// Held-in perplexity after the starting sparsity, before the first step.
    pub start_perplexity: f64,
    pub final_perplexity: f64,
    /// Global sparsity reached (weighted by block size).
    pub sparsity: f64,
    pub rollbacks: usize,
    pub agent_failures: usize,
    pub holdin_windows: usize,
    pub holdin_seqlen: usize,
    pub seconds: f64,
}

/// The built-in proposer: a pure function of the request (profile, history, settings).
pub fn builtin_proposal(req: &Request, s: &AgentSettings) -> Result<Proposal> {
    let mut pool: Vec<(&LayerView, f64, bool)> = Vec::new();
    for l in req.layers {
        // The steps of this block that were rolled back.
        let rolled: Vec<usize> = req
            .history
            .iter()
            .filter(|h| !h.accepted && h.prune.iter().any(|a| a.layer == l.layer))
            .map(|h| h.step)
            .collect();
        if rolled.len() >= 3 {
            continue;
        }
        let amount =
            (s.step * 0.5f64.powi(rolled.len() as i32)).min(s.max_layer_sparsity - l.sparsity);
        if amount < 1e-4 {
            continue;
        }
        let waiting = rolled.last().is_some_and(|&r| req.step <= r + s.cooldown);
        pool.push((l, amount, waiting));
    }
    if pool.iter().any(|p| !p.2) {
        pool.retain(|p| !p.2);
    }
    ensure!(
        !pool.is_empty(),
        "no block can be pruned further: every block is at the largest sparsity {} or had three \
         steps rolled back (global sparsity {:.4} of the target {}); raise --rollback-threshold \
         or lower --sparsity",
        s.max_layer_sparsity,
        req.sparsity,
        s.target
    );
    pool.sort_by(|a, b| {
        a.0.score_p10_z
            .total_cmp(&b.0.score_p10_z)
            .then(a.0.layer.cmp(&b.0.layer))
    });
    let chosen: Vec<&(&LayerView, f64, bool)> = pool.iter().take(s.layers_per_step).collect();
    let names: Vec<String> = chosen.iter().map(|c| c.0.layer.to_string()).collect();
    Ok(Proposal {
        prune: chosen
            .iter()
            .map(|c| Amount {
                layer: c.0.layer,
                amount: c.1,
            })
            .collect(),
        note: Some(format!(
            "lowest z(s) of the blocks that can move: {}",
            names.join(", ")
        )),
    })
}

/// Checks a proposal against the current state: known blocks, once each, positive finite
/// amounts that keep every block at or below the largest sparsity.
pub fn validate(p: &Proposal, layers: &[LayerView], max_layer: f64) -> Result<()> {
    ensure!(!p.prune.is_empty(), "the proposal prunes nothing");
    let mut seen = std::collections::BTreeSet::new();
    for a in &p.prune {
        let Some(l) = layers.iter().find(|l| l.layer == a.layer) else {
            bail!(
                "layer {} is not one of the compressed blocks ({}..={})",
                a.layer,
                layers.first().map_or(0, |l| l.layer),
                layers.last().map_or(0, |l| l.layer)
            );
        };
        ensure!(seen.insert(a.layer), "layer {} appears twice", a.layer);
        ensure!(
            a.amount.is_finite() && a.amount > 0.0,
            "layer {}: amount {} is not a positive sparsity",
            a.layer,
            a.amount
        );
        ensure!(
            l.sparsity + a.amount <= max_layer + 1e-9,
            "layer {}: {} + {} exceeds the largest block sparsity {max_layer}",
            a.layer,
            l.sparsity,
            a.amount
        );
    }
    Ok(())
}

/// An external proposer: a program run once (`sh -c CMD`) that reads one [`Request`] per line on
/// stdin and writes one [`Proposal`] per line on stdout.
pub struct External {
    cmd: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<String>,
    timeout: Duration,
}

impl External {
    pub fn spawn(cmd: &str, timeout: Duration) -> Result<External> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("--agent-cmd '{cmd}': cannot start it"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(External {
            cmd: cmd.into(),
            child,
            stdin,
            rx,
            timeout,
        })
    }

    /// Sends one request and waits for one answer line. `Err((msg, fatal))`: fatal when the
    /// program can no longer be trusted to answer in step (timeout, exit, closed input).
    fn ask(&mut self, req: &str) -> std::result::Result<Proposal, (String, bool)> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or(("its input is closed".to_string(), true))?;
        if let Err(e) = writeln!(stdin, "{req}").and_then(|_| stdin.flush()) {
            return Err((format!("cannot write to it ({e}): it has exited"), true));
        }
        match self.rx.recv_timeout(self.timeout) {
            Ok(line) => serde_json::from_str::<Proposal>(&line).map_err(|e| {
                let shown: String = line.chars().take(120).collect();
                (
                    format!(
                        "its answer is not a proposal ({e}): '{shown}'; expected e.g. \
                         {{\"prune\": [{{\"layer\": 3, \"amount\": 0.05}}]}}"
                    ),
                    false,
                )
            }),
            Err(RecvTimeoutError::Timeout) => Err((
                format!("no answer within {} s", self.timeout.as_secs_f64()),
                true,
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Err(("it exited without answering".to_string(), true))
            }
        }
    }

    /// Tells the program the run is over and stops it.
    fn finish(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "{{\"shrink_agent\": {PROTOCOL}, \"done\": true}}");
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for External {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The held-in slice perplexity is measured on: `windows` sequences of `seq` tokens.
pub struct HeldIn {
    pub ids: Vec<u32>,
    pub windows: usize,
    pub seq: usize,
}

struct Linear {
    layer: usize,
    k: usize,
    d_out: usize,
    d_in: usize,
    dense: Vec<f32>,
    norms: Vec<f32>,
    col_sq: Vec<f64>,
}

struct Measure<'a> {
    rope: Rope,
    hold: &'a HeldIn,
    /// Input of every block at the last checkpoint.
    cache: Vec<Vec<f32>>,
}

impl Measure<'_> {
    /// Held-in perplexity with the blocks from `from` on recomputed; the new inputs of blocks
    /// `from + 1..`.
    fn run(&self, model: &mut Model, from: usize) -> Result<(f64, Vec<Vec<f32>>)> {
        let cfg = model.config.clone();
        let mut x = self.cache[from].clone();
        let mut tail = Vec::new();
        for l in from..model.layers.len() {
            if l > from {
                tail.push(x.clone());
            }
            model.layers[l].forward(
                &cfg,
                &self.rope,
                &mut x,
                self.hold.windows,
                self.hold.seq,
                &mut NoHook,
            )?;
        }
        let mut out = vec![0f32; x.len()];
        rms_norm(&x, &model.norm.data, cfg.rms_norm_eps as f32, &mut out);
        let nll = shrink_eval::window_nll(
            model,
            &out,
            &self.hold.ids,
            self.hold.windows,
            self.hold.seq,
        );
        let ppl = (nll / (self.hold.windows * (self.hold.seq - 1)) as f64).exp();
        ensure!(
            ppl.is_finite(),
            "the held-in perplexity is not finite (the pruned model's logits overflow)"
        );
        Ok((ppl, tail))
    }
}

/// Sets block `layer`'s linears to Wanda's mask at sparsity `s` (from the dense weights) and
/// returns the block's new `s_l`.
fn apply(model: &mut Model, lins: &[Linear], layer: usize, s: f64) -> f64 {
    let mut scores = Vec::new();
    for l in lins.iter().filter(|l| l.layer == layer) {
        let mask = shrink_methods::wanda_mask(
            &l.dense,
            l.d_out,
            l.d_in,
            &l.col_sq,
            Sparsity::Unstructured(s),
        );
        let w = &mut model.layers[layer].linears[l.k].weight.data;
        for (i, ((o, d), m)) in w.iter_mut().zip(&l.dense).zip(&mask).enumerate() {
            *o = if *m { 0.0 } else { *d };
            if !*m && *d != 0.0 {
                scores.push(d.abs() * l.norms[i % l.d_in]);
            }
        }
    }
    p10(&mut scores)
}

fn p10(scores: &mut [f32]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let k = ((scores.len() - 1) as f64 * 0.1).round() as usize;
    let (_, v, _) = scores.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    *v as f64
}

fn global(views: &[LayerView]) -> f64 {
    let n: f64 = views.iter().map(|v| v.weights as f64).sum();
    views
        .iter()
        .map(|v| v.sparsity * v.weights as f64)
        .sum::<f64>()
        / n.max(1.0)
}

fn rezscore(views: &mut [LayerView]) {
    let z = crate::profile::z_scores(&views.iter().map(|v| v.score_p10).collect::<Vec<_>>());
    for (v, z) in views.iter_mut().zip(z) {
        v.score_p10_z = z;
    }
}

/// Runs the loop on `model` (loaded dense; left pruned at the final allocation). `probed` are
/// the compressible linears with their dense input norms, `outliers` OWL's statistics of the
/// same pass. `log` is called after every step.
pub fn run(
    model: &mut Model,
    probed: &[ProbedLinear],
    outliers: &[LayerOutliers],
    hold: &HeldIn,
    s: &AgentSettings,
    mut agent: Option<External>,
    log: &mut dyn FnMut(&Step),
) -> Result<Outcome> {
    s.check()?;
    let t0 = Instant::now();
    ensure!(
        hold.windows >= 1 && hold.seq >= 2,
        "the held-in slice needs at least one window of 2 tokens"
    );
    ensure!(
        hold.ids.len() == hold.windows * hold.seq,
        "held-in ids: {} for {} x {}",
        hold.ids.len(),
        hold.windows,
        hold.seq
    );
    // Every probed linear in the loaded model.
    let mut lins = Vec::new();
    for p in probed {
        let layer = model
            .layers
            .get(p.layer)
            .with_context(|| format!("{}: no layer {} in the model", p.module, p.layer))?;
        let k = (0..layer.linears.len())
            .find(|&k| shrink_pipeline::module_name(layer, k) == p.module)
            .with_context(|| format!("{}: not a linear of layer {}", p.module, p.layer))?;
        let w = &layer.linears[k].weight;
        let (d_out, d_in) = w.dims2();
        ensure!(
            p.col_sq.len() == d_in,
            "{}: {} input norms for {d_in} columns",
            p.module,
            p.col_sq.len()
        );
        lins.push(Linear {
            layer: p.layer,
            k,
            d_out,
            d_in,
            dense: w.data.clone(),
            norms: p.col_sq.iter().map(|v| v.max(0.0).sqrt() as f32).collect(),
            col_sq: p.col_sq.clone(),
        });
    }
    let mut blocks: Vec<usize> = lins.iter().map(|l| l.layer).collect();
    blocks.dedup();
    ensure!(!blocks.is_empty(), "no compressible linear was measured");
    let mut views: Vec<LayerView> = blocks
        .iter()
        .map(|&b| LayerView {
            layer: b,
            weights: lins
                .iter()
                .filter(|l| l.layer == b)
                .map(|l| l.d_out * l.d_in)
                .sum(),
            sparsity: 0.0,
            score_p10: 0.0,
            score_p10_z: 0.0,
            outlier_pct: outliers
                .iter()
                .find(|o| o.layer == b)
                .map_or(f64::NAN, |o| o.outlier_pct),
        })
        .collect();

    let embed = model.embed(&hold.ids)?;
    let mut m = Measure {
        rope: Rope::new(&model.config, hold.seq),
        hold,
        cache: vec![embed],
    };
    let (dense_ppl, tail) = m.run(model, 0)?;
    m.cache.extend(tail);
    for v in views.iter_mut() {
        v.sparsity = s.start;
        v.score_p10 = apply(model, &lins, v.layer, s.start);
    }
    rezscore(&mut views);
    let (start_ppl, tail) = m.run(model, 0)?;
    m.cache.truncate(1);
    m.cache.extend(tail);
    let mut ckpt_ppl = start_ppl;
    let mut steps: Vec<Step> = Vec::new();
    let mut failures_in_row = 0usize;
    let mut agent_failures = 0usize;
    let total: f64 = views.iter().map(|v| v.weights as f64).sum();
    let eps = 0.5 / total; // half a weight
    let mut step_no = 0;
    while global(&views) < s.target - eps {
        step_no += 1;
        ensure!(
            step_no <= s.max_steps,
            "the agent did not reach sparsity {} in {} steps (reached {:.4}); raise \
             --agent-max-steps or --agent-step",
            s.target,
            s.max_steps,
            global(&views)
        );
        let t = Instant::now();
        let before = global(&views);
        let req = Request {
            shrink_agent: PROTOCOL,
            step: step_no,
            target_sparsity: s.target,
            sparsity: before,
            budget_left: s.target - before,
            step_size: s.step,
            max_layer_sparsity: s.max_layer_sparsity,
            rollback_threshold: s.rollback_threshold,
            dense_perplexity: dense_ppl,
            checkpoint_perplexity: ckpt_ppl,
            layers: &views,
            history: &steps,
        };
        // The external agent's answer, or why it is not used.
        let mut agent_error = None;
        let mut from_agent = None;
        if let Some(ext) = agent.as_mut() {
            let line = serde_json::to_string(&req)?;
            match ext.ask(&line) {
                Ok(p) => match validate(&p, &views, s.max_layer_sparsity) {
                    Ok(()) => from_agent = Some(p),
                    Err(e) => agent_error = Some((format!("impossible step: {e}"), false)),
                },
                Err(e) => agent_error = Some(e),
            }
            if let Some((e, fatal)) = &agent_error {
                agent_failures += 1;
                failures_in_row += 1;
                if *fatal || failures_in_row >= 3 {
                    eprintln!(
                        "warning: --agent-cmd '{}': {e}; the built-in policy takes over for the \
                         rest of the run",
                        ext.cmd
                    );
                    agent = None;
                } else {
                    eprintln!(
                        "warning: --agent-cmd '{}': {e}; the built-in policy takes this step",
                        ext.cmd
                    );
                }
            } else {
                failures_in_row = 0;
            }
        }
        let (mut prop, proposer) = match from_agent {
            Some(p) => (p, "agent"),
            None => (builtin_proposal(&req, s)?, "builtin"),
        };
        // Fit the remaining budget: scale every amount down on the last step.
        let added: f64 = prop
            .prune
            .iter()
            .map(|a| a.amount * views.iter().find(|v| v.layer == a.layer).unwrap().weights as f64)
            .sum();
        let left = (s.target - before) * total;
        if added > left {
            let f = left / added;
            prop.prune.iter_mut().for_each(|a| a.amount *= f);
        }
        let old: Vec<(usize, f64, f64)> = prop
            .prune
            .iter()
            .map(|a| {
                let v = views.iter().find(|v| v.layer == a.layer).unwrap();
                (a.layer, v.sparsity, v.score_p10)
            })
            .collect();
        for a in &prop.prune {
            let v = views.iter_mut().find(|v| v.layer == a.layer).unwrap();
            v.sparsity += a.amount;
            v.score_p10 = apply(model, &lins, a.layer, v.sparsity);
        }
        let from = prop.prune.iter().map(|a| a.layer).min().unwrap();
        let (ppl, tail) = m.run(model, from)?;
        let rise = ppl / ckpt_ppl - 1.0;
        let accepted = rise <= s.rollback_threshold;
        let after = global(&views);
        if accepted {
            m.cache.truncate(from + 1);
            m.cache.extend(tail);
            rezscore(&mut views);
        } else {
            for (layer, sp, p10) in &old {
                let v = views.iter_mut().find(|v| v.layer == *layer).unwrap();
                v.sparsity = *sp;
                v.score_p10 = *p10;
                apply(model, &lins, *layer, *sp);
            }
        }
        let st = Step {
            step: step_no,
            proposer: proposer.into(),
            prune: prop.prune,
            note: prop.note,
            agent_error: agent_error.map(|e| e.0),
            sparsity_before: before,
            sparsity_after: if accepted { after } else { before },
            perplexity: ppl,
            checkpoint_perplexity: ckpt_ppl,
            rise,
            accepted,
            seconds: t.elapsed().as_secs_f64(),
        };
        if accepted {
            ckpt_ppl = ppl;
        }
        log(&st);
        steps.push(st);
    }
    if let Some(mut a) = agent.take() {
        a.finish();
    }
    Ok(Outcome {
        sparsities: views.iter().map(|v| (v.layer, v.sparsity)).collect(),
        sparsity: global(&views),
        layers: views,
        rollbacks: steps.iter().filter(|s| !s.accepted).count(),
        steps,
        dense_perplexity: dense_ppl,
        start_perplexity: start_ppl,
        final_perplexity: ckpt_ppl,
        agent_failures,
        holdin_windows: hold.windows,
        holdin_seqlen: hold.seq,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The whole strategy on a model: one dense calibration pass over `layers` (input norms and
/// OWL's statistics at threshold `owl_m`; `progress(done, total)` per layer), the dense model loaded, the held-in
/// slice taken from the first `holdin` calibration windows, then [`run`].
#[allow(clippy::too_many_arguments)]
pub fn allocate(
    src: &shrink_model::ModelSource,
    calib: &shrink_calib::CalibSet,
    layers: std::ops::Range<usize>,
    owl_m: f64,
    holdin: usize,
    s: &AgentSettings,
    agent: Option<External>,
    progress: &mut dyn FnMut(usize, usize),
    log: &mut dyn FnMut(&Step),
) -> Result<Outcome> {
    s.check()?;
    let probe = AgentProbe::new(owl_m)?;
    shrink_pipeline::run(
        src,
        calib,
        &probe as &dyn Method,
        layers,
        &mut shrink_pipeline::Discard,
        progress,
    )?;
    let windows = holdin.min(calib.nsamples).max(1);
    let hold = HeldIn {
        ids: calib.ids[..windows * calib.seqlen].to_vec(),
        windows,
        seq: calib.seqlen,
    };
    let mut model = src.load_all()?;
    run(
        &mut model,
        &probe.linears(),
        &probe.owl.layers(),
        &hold,
        s,
        agent,
        log,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(layer: usize, sparsity: f64, z: f64) -> LayerView {
        LayerView {
            layer,
            weights: 100,
            sparsity,
            score_p10: 0.0,
            score_p10_z: z,
            outlier_pct: 0.0,
        }
    }

    fn settings() -> AgentSettings {
        AgentSettings {
            target: 0.5,
            start: 0.4,
            step: 0.05,
            layers_per_step: 2,
            rollback_threshold: 0.02,
            max_layer_sparsity: 0.7,
            max_steps: 100,
            cooldown: 2,
        }
    }

    fn step(n: usize, layers: &[usize], accepted: bool) -> Step {
        Step {
            step: n,
            proposer: "builtin".into(),
            prune: layers
                .iter()
                .map(|&l| Amount {
                    layer: l,
                    amount: 0.05,
                })
                .collect(),
            note: None,
            agent_error: None,
            sparsity_before: 0.0,
            sparsity_after: 0.0,
            perplexity: 0.0,
            checkpoint_perplexity: 0.0,
            rise: 0.0,
            accepted,
            seconds: 0.0,
        }
    }

    fn req<'a>(n: usize, layers: &'a [LayerView], history: &'a [Step]) -> Request<'a> {
        Request {
            shrink_agent: PROTOCOL,
            step: n,
            target_sparsity: 0.5,
            sparsity: global(layers),
            budget_left: 0.0,
            step_size: 0.05,
            max_layer_sparsity: 0.7,
            rollback_threshold: 0.02,
            dense_perplexity: 1.0,
            checkpoint_perplexity: 1.0,
            layers,
            history,
        }
    }

    #[test]
    fn builtin_takes_the_least_sensitive_blocks_and_backs_off_after_a_rollback() {
        let s = settings();
        let layers = [
            view(0, 0.4, 1.0),
            view(1, 0.4, -1.0),
            view(2, 0.4, 0.0),
            view(3, 0.68, -2.0),
        ];
        // layer 3 is least sensitive but has only 0.02 left: it moves by what is left
        let p = builtin_proposal(&req(1, &layers, &[]), &s).unwrap();
        let got: Vec<(usize, f64)> = p.prune.iter().map(|a| (a.layer, a.amount)).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 3);
        assert!((got[0].1 - 0.02).abs() < 1e-12);
        assert_eq!(got[1], (1, 0.05));
        // step 1 (layers 3 and 1) was rolled back: they wait two steps
        let hist = [step(1, &[3, 1], false)];
        let p = builtin_proposal(&req(2, &layers, &hist), &s).unwrap();
        let got: Vec<usize> = p.prune.iter().map(|a| a.layer).collect();
        assert_eq!(got, vec![2, 0]);
        // after the cooldown they come back with half a step
        let p = builtin_proposal(&req(4, &layers, &hist), &s).unwrap();
        assert_eq!(
            p.prune[1],
            Amount {
                layer: 1,
                amount: 0.025
            }
        );
        // three rollbacks: left alone for good
        let hist = [
            step(1, &[1], false),
            step(2, &[1], false),
            step(3, &[1], false),
        ];
        let p = builtin_proposal(&req(10, &layers, &hist), &s).unwrap();
        assert!(p.prune.iter().all(|a| a.layer != 1));
        // kept steps in between do not reset the count
        let hist = [
            step(1, &[1], false),
            step(2, &[1], true),
            step(3, &[1], false),
            step(4, &[1], false),
        ];
        let p = builtin_proposal(&req(10, &layers, &hist), &s).unwrap();
        assert!(p.prune.iter().all(|a| a.layer != 1));
        let p = builtin_proposal(&req(10, &layers, &hist[..3]), &s).unwrap();
        assert_eq!(p.prune[1].layer, 1);
        assert!((p.prune[1].amount - 0.0125).abs() < 1e-12);
        // nothing can move: a clear error
        let full = [view(0, 0.7, 0.0)];
        let e = builtin_proposal(&req(1, &full, &[]), &s).unwrap_err();
        assert!(
            e.to_string().contains("no block can be pruned further"),
            "{e}"
        );
    }

    #[test]
    fn proposals_are_validated() {
        let layers = [view(4, 0.4, 0.0), view(5, 0.4, 0.0)];
        let ok = Proposal {
            prune: vec![Amount {
                layer: 5,
                amount: 0.3,
            }],
            note: None,
        };
        validate(&ok, &layers, 0.7).unwrap();
        let bad = |layer, amount| Proposal {
            prune: vec![Amount { layer, amount }],
            note: None,
        };
        for (p, want) in [
            (bad(9, 0.1), "not one of the compressed blocks (4..=5)"),
            (bad(4, -0.1), "not a positive sparsity"),
            (bad(4, f64::NAN), "not a positive sparsity"),
            (bad(4, 0.31), "exceeds the largest block sparsity"),
            (
                Proposal {
                    prune: vec![],
                    note: None,
                },
                "prunes nothing",
            ),
        ] {
            let e = validate(&p, &layers, 0.7).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let twice = Proposal {
            prune: vec![
                Amount {
                    layer: 4,
                    amount: 0.1,
                },
                Amount {
                    layer: 4,
                    amount: 0.1,
                },
            ],
            note: None,
        };
        assert!(validate(&twice, &layers, 0.7)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        // the wire format: unknown fields are refused, the note is optional
        let p: Proposal = serde_json::from_str(r#"{"prune":[{"layer":4,"amount":0.05}]}"#).unwrap();
        assert_eq!(
            p.prune[0],
            Amount {
                layer: 4,
                amount: 0.05
            }
        );
        assert!(serde_json::from_str::<Proposal>(r#"{"prune":[{"layer":4,"amt":0.05}]}"#).is_err());
    }

    #[test]
    fn external_agent_protocol() {
        let layers = [view(0, 0.4, 0.0)];
        let r = req(1, &layers, &[]);
        let line = serde_json::to_string(&r).unwrap();
        // answers one line per request
        let mut a = External::spawn(
            r#"while read l; do echo '{"prune":[{"layer":0,"amount":0.01}],"note":"x"}'; done"#,
            Duration::from_secs(10),
        )
        .unwrap();
        let p = a.ask(&line).unwrap();
        assert_eq!(p.prune[0].amount, 0.01);
        assert_eq!(a.ask(&line).unwrap().note.as_deref(), Some("x"));
        // bad JSON: an error that is not fatal
        let mut a = External::spawn(
            "while read l; do echo nonsense; done",
            Duration::from_secs(10),
        )
        .unwrap();
        let (e, fatal) = a.ask(&line).unwrap_err();
        assert!(e.contains("not a proposal") && !fatal, "{e}");
        // silence: a timeout, fatal
        let mut a = External::spawn("sleep 30", Duration::from_millis(300)).unwrap();
        let (e, fatal) = a.ask(&line).unwrap_err();
        assert!(e.contains("no answer within") && fatal, "{e}");
        // exits at once
        let mut a = External::spawn("true", Duration::from_secs(10)).unwrap();
        let (_, fatal) = a.ask(&line).unwrap_err();
        assert!(fatal);
    }
}
