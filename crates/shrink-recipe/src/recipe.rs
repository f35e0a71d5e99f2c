//! Recipes: what `shrink compress` does, as data.
//!
//! A recipe (TOML) holds the calibration source, one or more `[[stage]]`s that run on each linear
//! in turn, and per-module rules, in the manner of llm-compressor's `targets`/`ignore`,
//! GPTQModel's `dynamic` and llama-quantize's `--tensor-type`:
//!
//! ```toml
//! ignore = ['layers\.0\.']           # these linears are left exactly as they are
//!
//! [calibration]
//! file = "data/calib.txt"
//! nsamples = 64
//!
//! [[stage]]
//! method = "gptq"
//! bits = 4
//! group_size = 64
//! targets = ['.*']                   # default: every compressible linear
//! ignore = ['experts\.']             # not in this stage
//!
//! [[override]]                       # these keys replace the stage's for the matched linears
//! match = '.*down_proj'
//! bits = 8
//! ```
//!
//! Patterns are regular expressions (the `regex` crate's syntax) searched anywhere in a linear's
//! module path, e.g. `model.layers.3.mlp.experts.5.down_proj` (its weight's name without
//! `.weight`); anchor with `^`/`$` to match whole names. Every pattern must match at least one
//! compressible linear of the model. An override applies to every stage of a one-stage recipe;
//! in a recipe of several stages it names its stage (`stage = 2`, counted from 1). Two overrides
//! may match the same linear only if they set different keys or the same values: a conflict is
//! refused before any work, naming both patterns, rather than one silently winning.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use shrink_methods::{
    ActOrder, Chain, Gptq, GptqConfig, Magnitude, Method, Obc, ObcConfig, QuantConfig, Rtn,
    SparseGpt, SparseGptConfig, Sparsity, Wanda,
};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalibSection {
    pub file: Option<PathBuf>,
    pub field: Option<String>,
    pub nsamples: Option<usize>,
    pub seqlen: Option<usize>,
    pub seed: Option<u64>,
}

/// One stage: a method and its settings, and the linears it applies to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub method: Option<String>,
    pub sparsity: Option<f64>,
    pub pattern: Option<String>,
    pub scope: Option<String>,
    pub bits: Option<u32>,
    pub group_size: Option<usize>,
    pub sym: Option<bool>,
    pub mse: Option<bool>,
    pub act_order: Option<String>,
    pub static_groups: Option<bool>,
    pub damp: Option<f64>,
    pub block_size: Option<usize>,
    /// Round onto this llama.cpp block type's grid (`Q4_K`, `Q5_0`, ...) instead of integer groups:
    /// its scales fitted as llama.cpp fits them, the codes chosen by the method. `bits`,
    /// `group_size` and `sym` follow from it ([`fill_grid`]).
    pub gguf_type: Option<String>,
    /// An llm-compressor preset scheme (`W4A16`, `W8A16`, `W8A8`, `FP8`, `FP8_DYNAMIC`,
    /// `FP8_BLOCK`, `NVFP4`, `NVFP4A16`, `MXFP4`, `MXFP4A16`): it sets the weight grid (`bits`,
    /// `group_size`, `sym`, `format`) and records the activation scheme in `act` ([`fill_grid`]).
    pub scheme: Option<String>,
    /// The weight number format (`int`, `fp8_tensor`, `fp8_channel`, `fp8_block`, `nvfp4`,
    /// `mxfp4`); default integer. A scheme fills it.
    pub format: Option<shrink_methods::NumberFormat>,
    /// The activation quantization the scheme deploys with, recorded as data (e.g.
    /// `dynamic per-token int8`); `shrink eval` of the compressed model fake-quantizes
    /// activations so by default ([`Recipe::recorded_act`]). A scheme fills it; it cannot be
    /// given alone.
    pub act: Option<String>,
    /// Patterns of the linears this stage applies to (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Patterns of linears this stage leaves out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

impl Stage {
    /// The settings alone (without `targets` / `ignore`).
    pub fn settings(&self) -> Stage {
        Stage {
            targets: vec![],
            ignore: vec![],
            ..self.clone()
        }
    }
}

/// Settings that replace a stage's for the linears `pattern` matches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Override {
    /// The `match` key.
    pub pattern: String,
    /// The stage it changes, counted from 1 (`None`: the only stage).
    pub stage: Option<usize>,
    /// The keys it sets (`targets` and `ignore` are not allowed here).
    pub set: Stage,
}

impl TryFrom<toml::Table> for Override {
    type Error = String;
    fn try_from(mut t: toml::Table) -> Result<Self, String> {
        let pattern = match t.remove("match") {
            Some(toml::Value::String(s)) => s,
            Some(v) => return Err(format!("`match` must be a string, got {v}")),
            None => return Err("an [[override]] needs `match = 'REGEX'`".into()),
        };
        let stage = match t.remove("stage") {
            Some(toml::Value::Integer(i)) if i >= 1 => Some(i as usize),
            Some(v) => return Err(format!("`stage` must be a stage number from 1, got {v}")),
            None => None,
        };
        for k in ["targets", "ignore"] {
            if t.contains_key(k) {
                return Err(format!(
                    "override '{pattern}': `{k}` belongs to a [[stage]] or the top level, not an override"
                ));
            }
        }
        let set: Stage = t
            .try_into()
            .map_err(|e| format!("override '{pattern}': {e}"))?;
        if set == Stage::default() {
            return Err(format!("override '{pattern}' sets nothing"));
        }
        Ok(Override {
            pattern,
            stage,
            set,
        })
    }
}

impl From<Override> for toml::Table {
    fn from(o: Override) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("match".into(), toml::Value::String(o.pattern));
        if let Some(s) = o.stage {
            t.insert("stage".into(), toml::Value::Integer(s as i64));
        }
        if let Ok(toml::Value::Table(set)) = toml::Value::try_from(&o.set) {
            t.extend(set);
        }
        t
    }
}

impl Serialize for Override {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        toml::Table::from(self.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Override {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = toml::Table::deserialize(d)?;
        Override::try_from(t).map_err(serde::de::Error::custom)
    }
}

/// AWQ before the stages (`[awq]`; `shrink compress --awq`, or `--method awq` for AWQ then
/// RTN): each group's per-channel input scale and each linear's clipping are searched for the
/// grid the stages quantize on, folded into the model, and the stages then compress the
/// rescaled weights (see `shrink_methods::awq`). AWQ is not a stage because it changes the op
/// before a group (a norm, or v_proj / up_proj rows) as well as the group's linears.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwqSection {
    /// llm-compressor's `duo_scaling` (default false: the paper's `s = s_X^α`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duo_scaling: Option<bool>,
    /// The clipping search (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<bool>,
    /// Candidates of α (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_grid: Option<usize>,
}

impl AwqSection {
    pub fn config(&self) -> shrink_methods::awq::AwqConfig {
        let d = shrink_methods::awq::AwqConfig::default();
        shrink_methods::awq::AwqConfig {
            duo_scaling: self.duo_scaling.unwrap_or(d.duo_scaling),
            clip: self.clip.unwrap_or(d.clip),
            n_grid: self.n_grid.unwrap_or(d.n_grid),
            ..d
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// AWQ before the stages ([`AwqSection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awq: Option<AwqSection>,
    /// SmoothQuant's α before the stages (and before AWQ): each norm-fed group's activation
    /// outliers migrated into its weights (`shrink compress --smooth A`; `shrink_pipeline::smooth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smooth: Option<f64>,
    /// A rotation of the model before anything else (`shrink compress --rotate`): `hadamard` or
    /// `random-orthogonal` (QuaRot R1 + SpinQuant R2, seed 0; see `shrink_model::rotation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate: Option<String>,
    /// Decoder layers removed before anything else (original layer numbers, ascending): the
    /// remaining layers are renumbered 0.. and compressed on the pruned model. Every pattern
    /// of the recipe refers to the original numbering too (see `shrink compress --help`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_layers: Vec<usize>,
    /// Layer merges (LaCo's RDSC, `shrink compress --merge-layers`), applied in order before
    /// anything else: each lists consecutive layers of the model as it stands after the merges
    /// before it, each named by its first original layer; they collapse into the first. The
    /// merged model's layers are renumbered 0.., and every pattern of the recipe refers to the
    /// original number of a layer's first original layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merge_layers: Vec<Vec<usize>>,
    /// Patterns of linears no stage touches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    #[serde(default)]
    pub calibration: CalibSection,
    #[serde(default)]
    pub stage: Vec<Stage>,
    #[serde(default, rename = "override", skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let r = Recipe::parse(&text).with_context(|| format!("{}", path.display()))?;
        if r.stage.len() > 1 {
            for (i, s) in r.stage.iter().enumerate() {
                build_method(s).with_context(|| format!("{}: stage {}", path.display(), i + 1))?;
            }
        }
        Ok(r)
    }

    /// The activation scheme the stages record (a stage's `scheme` with an `act`), or `None`
    /// when every stage keeps 16-bit activations. Stages that record different activation
    /// schemes are an error: one model is evaluated with one.
    pub fn recorded_act(&self) -> Result<Option<RecordedAct>> {
        let mut found: Option<RecordedAct> = None;
        for st in &self.stage {
            let (Some(scheme), Some(act)) = (&st.scheme, &st.act) else {
                continue;
            };
            let r = RecordedAct {
                scheme: scheme.to_ascii_uppercase(),
                act: act.clone(),
                eval: scheme_eval_act(scheme),
            };
            match &found {
                Some(f) if f.eval != r.eval || f.act != r.act => bail!(
                    "the stages record two activation schemes ({} and {}): evaluate with \
                     --act-quant given by hand",
                    f.scheme,
                    r.scheme
                ),
                Some(_) => {}
                None => found = Some(r),
            }
        }
        Ok(found)
    }

    pub fn parse(text: &str) -> Result<Recipe> {
        let mut r: Recipe =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("invalid recipe: {e}"))?;
        r.prepare_transforms()?;
        r.fill_grids()?;
        for (i, o) in r.overrides.iter().enumerate() {
            match o.stage {
                Some(s) if s > r.stage.len().max(1) => bail!(
                    "override {} ('{}') names stage {s}; the recipe has {}",
                    i + 1,
                    o.pattern,
                    r.stage.len().max(1)
                ),
                None if r.stage.len() > 1 => bail!(
                    "override {} ('{}'): the recipe has {} stages: say which with `stage = 1..{}`",
                    i + 1,
                    o.pattern,
                    r.stage.len(),
                    r.stage.len()
                ),
                _ => {}
            }
        }
        Ok(r)
    }

    /// Whether a transform before the stages needs calibration activations (AWQ, SmoothQuant):
    /// then no run of the recipe is data-free, whatever its stages' methods.
    pub fn transforms_need_data(&self) -> bool {
        self.awq.is_some() || self.smooth.is_some()
    }

    /// The transforms before the stages, checked: `method = "awq"` in the only stage means AWQ
    /// then RTN on the stage's grid (the stage becomes `rtn` and `[awq]` is set; in a recipe of
    /// several stages it is refused: AWQ is `[awq]` at the top level), AWQ's settings, and
    /// SmoothQuant's α in (0, 1).
    pub fn prepare_transforms(&mut self) -> Result<()> {
        let n = self.stage.len();
        for (i, s) in self.stage.iter_mut().enumerate() {
            if s.method.as_deref() == Some("awq") {
                if n > 1 {
                    bail!(
                        "stage {}: awq is not a stage of a recipe of several: put `[awq]` at the \
                         top level, and the stages that quantize after it (e.g. gptq)",
                        i + 1
                    );
                }
                s.method = Some("rtn".into());
                self.awq.get_or_insert_with(AwqSection::default);
            }
        }
        if let Some(a) = &self.awq {
            a.config().validate()?;
        }
        if let Some(a) = self.smooth {
            if !(a > 0.0 && a < 1.0) {
                bail!("smooth (SmoothQuant's alpha) must be in (0, 1), got {a}");
            }
        }
        Ok(())
    }

    /// [`fill_grid`] on every stage and override.
    pub fn fill_grids(&mut self) -> Result<()> {
        for (i, s) in self.stage.iter_mut().enumerate() {
            fill_grid(s).with_context(|| format!("stage {}", i + 1))?;
        }
        for o in &mut self.overrides {
            if let Some(m) = o
                .set
                .gguf_type
                .as_deref()
                .and_then(|n| shrink_model::ggml_mix::Mix::parse(n, false))
            {
                bail!(
                    "override '{}': gguf_type {} is a llama-quantize mix, which names a type for \
                     every linear: put it in a [[stage]]; an override names one type (e.g. Q6_K)",
                    o.pattern,
                    m.name()
                );
            }
            fill_grid(&mut o.set).with_context(|| format!("override '{}'", o.pattern))?;
        }
        Ok(())
    }

    /// The recipe as TOML (what `compress` writes to the output's `recipe.toml`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot write the recipe as TOML")
    }
}

/// Parses a llama.cpp type name for `gguf_type` (a llama-quantize mix such as `Q4_K_M` gives its
/// main type; [`crate::mix::expand_mixes`] gives the other linears theirs).
pub fn parse_grid_type(name: &str) -> Result<shrink_model::gguf::GgmlType> {
    if let Some(m) = shrink_model::ggml_mix::Mix::parse(name, false) {
        return Ok(m.default_type());
    }
    let t = shrink_model::gguf::GgmlType::from_name(name.trim()).with_context(|| {
        format!(
            "unknown ggml type '{name}' (a type: Q4_K, Q5_K, Q6_K, Q5_0, Q8_0, IQ4_XS, ...; or a \
             llama-quantize mix: Q4_K_M, Q3_K_M, Q5_K_M, Q4_K_S, ...)"
        )
    })?;
    QuantConfig::for_ggml(t)?;
    Ok(t)
}

/// An llm-compressor preset scheme: its weights (the grid, the llm-compressor name of the
/// preset) and its input activations, as `compressed_tensors/quantization/quant_scheme.py`
/// defines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheme {
    /// The preset's name as llm-compressor spells it.
    pub name: &'static str,
    pub bits: u32,
    pub group_size: Option<usize>,
    pub format: shrink_methods::NumberFormat,
    /// How the preset quantizes each linear's input (`None`: not at all, the `A16` schemes).
    pub act: Option<&'static str>,
}

/// The preset schemes shrink implements (llm-compressor's names).
pub const SCHEMES: [Scheme; 10] = {
    use shrink_methods::NumberFormat::*;
    [
        Scheme {
            name: "W4A16",
            bits: 4,
            group_size: Some(128),
            format: Int,
            act: None,
        },
        Scheme {
            name: "W8A16",
            bits: 8,
            group_size: Some(128),
            format: Int,
            act: None,
        },
        Scheme {
            name: "W8A8",
            bits: 8,
            group_size: None,
            format: Int,
            act: Some("dynamic per-token int8"),
        },
        Scheme {
            name: "FP8",
            bits: 8,
            group_size: None,
            format: Fp8Tensor,
            act: Some("static per-tensor fp8"),
        },
        Scheme {
            name: "FP8_DYNAMIC",
            bits: 8,
            group_size: None,
            format: Fp8Channel,
            act: Some("dynamic per-token fp8"),
        },
        Scheme {
            name: "FP8_BLOCK",
            bits: 8,
            group_size: None,
            format: Fp8Block,
            act: Some("dynamic per-group-128 fp8"),
        },
        Scheme {
            name: "NVFP4",
            bits: 4,
            group_size: Some(16),
            format: Nvfp4,
            act: Some("nvfp4: per-group-16 e4m3 scales (dynamic), static global scale"),
        },
        Scheme {
            name: "NVFP4A16",
            bits: 4,
            group_size: Some(16),
            format: Nvfp4,
            act: None,
        },
        Scheme {
            name: "MXFP4",
            bits: 4,
            group_size: Some(32),
            format: Mxfp4,
            act: Some("mxfp4: dynamic per-group-32 e8m0 scales"),
        },
        Scheme {
            name: "MXFP4A16",
            bits: 4,
            group_size: Some(32),
            format: Mxfp4,
            act: None,
        },
    ]
};

/// How `shrink eval` fake-quantizes the activations of a model compressed with preset `scheme`
/// (`shrink_model::actquant`): W8A8 int8 per token, FP8_DYNAMIC E4M3 per token, NVFP4 and
/// MXFP4 their FP4 groups. `None` for the weight-only presets and for the two eval does not
/// reproduce: FP8 (a static per-tensor scale, which needs activation calibration) and
/// FP8_BLOCK (dynamic E4M3 in groups of 128).
pub fn scheme_eval_act(scheme: &str) -> Option<shrink_model::actquant::ActQuant> {
    use shrink_model::actquant::ActQuant;
    match scheme.trim().to_ascii_uppercase().as_str() {
        "W8A8" => Some(ActQuant::Int8),
        "FP8_DYNAMIC" => Some(ActQuant::Fp8),
        "NVFP4" => Some(ActQuant::Nvfp4),
        "MXFP4" => Some(ActQuant::Mxfp4),
        _ => None,
    }
}

/// What a recipe's stages record about activations, for `shrink eval`.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedAct {
    /// The preset (`W8A8`, ...).
    pub scheme: String,
    /// The stage's `act` text (`dynamic per-token int8`, ...).
    pub act: String,
    /// How eval fake-quantizes it; `None` where it cannot ([`scheme_eval_act`]).
    pub eval: Option<shrink_model::actquant::ActQuant>,
}

/// The preset called `name` (case-insensitive), or an error listing them.
pub fn parse_scheme(name: &str) -> Result<Scheme> {
    let n = name.trim().to_ascii_uppercase();
    SCHEMES
        .iter()
        .find(|s| s.name == n)
        .copied()
        .with_context(|| {
            format!(
                "unknown scheme '{name}' (llm-compressor presets shrink implements: {})",
                SCHEMES.map(|s| s.name).join(", ")
            )
        })
}

/// A stage with `scheme` gets the preset's `bits`, `group_size`, `sym = true`, `format` and `act`.
/// A `bits`, `group_size` or `format` given beside it must agree (for the FP4 schemes a group size
/// other than theirs is refused by name); `mse` and `gguf_type` do not combine with a scheme, and
/// `act` is only what a scheme records.
pub fn fill_scheme(s: &mut Stage) -> Result<()> {
    let Some(name) = &s.scheme else {
        if let Some(a) = &s.act {
            bail!(
                "act = '{a}' without a scheme: the activation scheme is recorded from --scheme                  (W8A8, FP8_DYNAMIC, NVFP4, ...), not given alone"
            );
        }
        return Ok(());
    };
    let p = parse_scheme(name)?;
    let fp4 = p.format.shape().is_some_and(|(b, _)| b == 4);
    if let Some(b) = s.bits.filter(|&b| b != p.bits) {
        bail!(
            "scheme {} has {}-bit weights, but bits = {b} was given (drop --bits, or drop --scheme)",
            p.name,
            p.bits
        );
    }
    if let Some(g) = s.group_size.filter(|&g| Some(g) != p.group_size) {
        match p.group_size {
            Some(want) if fp4 => bail!(
                "scheme {} defines groups of {want} weights ({}); group size {g} is not one of its                  formats (NVFP4: 16, MXFP4: 32)",
                p.name,
                p.format.name()
            ),
            Some(want) => bail!(
                "scheme {} has groups of {want} columns, but group_size = {g} was given (drop                  --group-size, or use --bits {} --group-size {g} --sym without a scheme)",
                p.name,
                p.bits
            ),
            None => bail!(
                "scheme {} has no groups ({}), but group_size = {g} was given",
                p.name,
                if p.format.is_int() {
                    "one scale per output channel"
                } else {
                    p.format.name()
                }
            ),
        }
    }
    if let Some(f) = s.format.filter(|&f| f != p.format) {
        bail!(
            "scheme {} has {} weights, but format = {} was given",
            p.name,
            p.format.name(),
            f.name()
        );
    }
    if s.mse == Some(true) {
        bail!(
            "scheme {}: mse (the clipping search) does not apply to preset schemes (their scales              are the group maxima)",
            p.name
        );
    }
    if let Some(t) = &s.gguf_type {
        bail!(
            "scheme {} and gguf_type {t} both choose the grid: give one",
            p.name
        );
    }
    let act = p.act.map(str::to_string);
    if s.act.is_some() && s.act != act {
        bail!(
            "scheme {} records act = {:?}, but act = {:?} was given",
            p.name,
            p.act.unwrap_or("none"),
            s.act.as_deref().unwrap_or("none")
        );
    }
    s.scheme = Some(p.name.to_string());
    s.bits = Some(p.bits);
    s.group_size = p.group_size;
    s.sym = Some(true);
    s.format = (!p.format.is_int()).then_some(p.format);
    s.act = act;
    Ok(())
}

/// A stage with `gguf_type` gets that type's `bits`, `group_size` (its sub-block) and `sym`;
/// a `bits` or `group_size` given beside it must agree, and `mse` does not apply. A stage with
/// `scheme` gets the preset's grid ([`fill_scheme`]).
pub fn fill_grid(s: &mut Stage) -> Result<()> {
    fill_scheme(s)?;
    let Some(name) = &s.gguf_type else {
        return Ok(());
    };
    let t = parse_grid_type(name)?;
    let q = QuantConfig::for_ggml(t)?;
    if let Some(b) = s.bits.filter(|&b| b != q.bits) {
        bail!(
            "gguf_type {} has {}-bit codes, but bits = {b} was given",
            t.name(),
            q.bits
        );
    }
    if let Some(g) = s.group_size.filter(|&g| Some(g) != q.group_size) {
        bail!(
            "gguf_type {} has sub-blocks of {} columns, but group_size = {g} was given",
            t.name(),
            q.group_size.unwrap_or(0)
        );
    }
    if s.mse == Some(true) {
        bail!("mse (the clipping search of integer groups) does not apply to gguf_type {}: llama.cpp's fit chooses the scales", t.name());
    }
    s.gguf_type = Some(match shrink_model::ggml_mix::Mix::parse(name, false) {
        Some(m) => m.name().to_string(),
        None => t.name().to_string(),
    });
    s.bits = Some(q.bits);
    s.group_size = q.group_size;
    s.sym = Some(q.sym);
    Ok(())
}

/// The grid a stage asks for (`None` without `bits`).
fn stage_quant(s: &Stage) -> Result<Option<QuantConfig>> {
    let Some(bits) = s.bits else {
        return Ok(None);
    };
    if s.group_size == Some(0) {
        bail!("group size must be positive (omit --group-size for one group per output channel)");
    }
    let quant = QuantConfig {
        bits,
        group_size: s.group_size,
        sym: s.sym.unwrap_or(false),
        mse: s.mse.unwrap_or(false),
        ggml: s.gguf_type.as_deref().map(parse_grid_type).transpose()?,
        format: s.format.unwrap_or_default(),
    };
    quant.validate()?;
    Ok(Some(quant))
}

/// The sparsity a stage asks for (`None` without `sparsity` or `pattern`).
fn stage_sparsity(s: &Stage) -> Result<Option<Sparsity>> {
    match (s.sparsity, &s.pattern) {
        (Some(_), Some(_)) => bail!("give either a sparsity fraction or an N:M pattern, not both"),
        (Some(f), None) => {
            let sp = Sparsity::Unstructured(f);
            sp.validate()?;
            Ok(Some(sp))
        }
        (None, Some(p)) => match Sparsity::parse(p)? {
            sp @ Sparsity::NM { .. } => Ok(Some(sp)),
            _ => bail!("invalid N:M pattern '{p}' (expected e.g. 2:4 or 4:8)"),
        },
        (None, None) => Ok(None),
    }
}

fn stage_act_order(s: &Stage, default: &str) -> Result<ActOrder> {
    Ok(match s.act_order.as_deref().unwrap_or(default) {
        "none" | "false" => ActOrder::None,
        "dynamic" | "true" => ActOrder::Dynamic,
        "static" => ActOrder::Static,
        o => bail!("unknown act order '{o}' (use none, dynamic or static)"),
    })
}

fn stage_damp_block(s: &Stage) -> Result<(f64, usize)> {
    let block_size = s.block_size.unwrap_or(128);
    if block_size == 0 {
        bail!("block size must be positive");
    }
    let damp = s.damp.unwrap_or(0.01);
    if !(damp > 0.0 && damp <= 1.0) {
        bail!("damp must be in (0, 1], got {damp}");
    }
    Ok((damp, block_size))
}

/// Builds the method a stage describes, validating every setting before any heavy work.
pub fn build_method(s: &Stage) -> Result<Box<dyn Method>> {
    let method = s.method.as_deref().context(
        "no method given (use --method rtn|gptq|awq|magnitude|wanda|sparsegpt|obc or a recipe)",
    )?;
    let quant = stage_quant(s)?;
    let sparsity = stage_sparsity(s)?;
    let (damp, block_size) = stage_damp_block(s)?;
    if s.scope.is_some() && method != "magnitude" {
        bail!("--scope applies to magnitude pruning only");
    }
    let prunes = matches!(method, "magnitude" | "wanda" | "sparsegpt" | "obc");
    if prunes && sparsity.is_none() && method != "obc" {
        bail!("{method} prunes: give --sparsity FRACTION (e.g. 0.5) or --pattern N:M (e.g. 2:4)");
    }
    if !prunes && sparsity.is_some() {
        bail!(
            "{method} does not prune; for pruning plus quantization use --method \
             sparsegpt|wanda|magnitude with --sparsity/--pattern and --bits"
        );
    }
    let gptq = |quant: QuantConfig| -> Result<Box<dyn Method>> {
        Ok(Box::new(Gptq(GptqConfig {
            quant,
            block_size,
            damp,
            act_order: stage_act_order(s, "static")?,
            static_groups: s.static_groups.unwrap_or(false),
        })))
    };
    let need_bits = || {
        quant
            .clone()
            .context("no bit width given (use --bits 2..8)")
    };
    Ok(match method {
        "rtn" => Box::new(Rtn(need_bits()?)),
        "gptq" => gptq(need_bits()?)?,
        "magnitude" | "wanda" => {
            let sp = sparsity.unwrap();
            let prune: Box<dyn Method> = if method == "wanda" {
                Box::new(Wanda(sp))
            } else {
                let per_row = match s.scope.as_deref().unwrap_or("layer") {
                    "layer" => false,
                    "row" => true,
                    o => bail!("unknown scope '{o}' (use layer or row)"),
                };
                Box::new(Magnitude {
                    sparsity: sp,
                    per_row,
                })
            };
            match quant {
                Some(q) => Box::new(Chain(vec![prune, gptq(q)?])),
                None => prune,
            }
        }
        "sparsegpt" => {
            let sp = sparsity.unwrap();
            // Joint unstructured sparse + quantized: static act-order by default, as for GPTQ (on
            // SmolLM2-135M, 50% + W4 g64: perplexity 32.90 static vs 38.55 natural order).
            // Pruning alone, and N:M (consecutive groups), keep SparseGPT's natural order.
            let joint_unstructured = quant.is_some() && matches!(sp, Sparsity::Unstructured(_));
            let act_order = stage_act_order(s, if joint_unstructured { "static" } else { "none" })?;
            if matches!(sp, Sparsity::NM { .. }) && act_order != ActOrder::None {
                bail!("an N:M pattern needs --act-order none (its groups are consecutive columns)");
            }
            Box::new(SparseGpt(SparseGptConfig {
                sparsity: sp,
                quant,
                block_size,
                damp,
                act_order,
            }))
        }
        "obc" => {
            if sparsity.is_none() && quant.is_none() {
                bail!("obc needs --sparsity/--pattern, --bits, or both");
            }
            Box::new(Obc {
                config: ObcConfig {
                    sparsity,
                    quant,
                    damp,
                },
                max_d_in: 1024,
            })
        }
        "awq" => bail!(
            "awq runs before the stages: --method awq (AWQ then RTN), --awq with a quantizing \
             method, or [awq] in a recipe"
        ),
        m => bail!(
            "unknown method '{m}' (available: rtn, gptq, awq, magnitude, wanda, sparsegpt, obc)"
        ),
    })
}

/// The method of a whole recipe: its stages in turn.
pub fn build_recipe(r: &Recipe) -> Result<Box<dyn Method>> {
    let mut ms = r
        .stage
        .iter()
        .enumerate()
        .map(|(i, s)| build_method(s).with_context(|| format!("stage {}", i + 1)))
        .collect::<Result<Vec<_>>>()?;
    Ok(if ms.len() == 1 {
        ms.pop().unwrap()
    } else {
        Box::new(Chain(ms))
    })
}

/// The data-free method with the same grid or sparsity as a one-stage chain (RTN for
/// quantization, magnitude for pruning), used for MoE experts without enough calibration
/// tokens. `None` for joint or multi-stage settings.
pub fn data_free(stages: &[Stage]) -> Result<Option<Box<dyn Method>>> {
    Ok(match stages {
        [s] if s.sparsity.is_none() && s.pattern.is_none() && s.bits.is_some() => {
            Some(build_method(&Stage {
                method: Some("rtn".into()),
                act_order: None,
                damp: None,
                block_size: None,
                static_groups: None,
                ..s.settings()
            })?)
        }
        [s] if s.bits.is_none() && (s.sparsity.is_some() || s.pattern.is_some()) => {
            Some(build_method(&Stage {
                method: Some("magnitude".into()),
                damp: None,
                block_size: None,
                ..s.settings()
            })?)
        }
        _ => None,
    })
}
