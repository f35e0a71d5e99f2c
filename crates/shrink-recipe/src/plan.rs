//! A recipe resolved against a model: the stages each linear gets, decided before any work.
use crate::recipe::{build_method, data_free, Recipe, Stage};
use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::Serialize;
use shrink_methods::{Chain, Method};
use shrink_pipeline::{Assign, Choice};
use std::collections::BTreeMap;

/// One distinct setting of a plan and the method built from it.
pub struct Setting {
    /// The effective stages (overrides applied, without targets / ignore).
    pub stages: Vec<Stage>,
    pub method: Box<dyn Method>,
    pub fallback: Option<Box<dyn Method>>,
    /// How many linears get it.
    pub linears: usize,
}

impl Setting {
    /// The stage whose grid the quantized form uses (the last one with bits).
    pub fn quant_stage(&self) -> Option<&Stage> {
        self.stages.iter().rev().find(|s| s.bits.is_some())
    }
}

/// What a linear gets.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Left as it is, and why.
    Keep(String),
    /// Index into [`Plan::settings`].
    Setting(usize),
}

/// A recipe resolved for a list of linears.
pub struct Plan {
    pub settings: Vec<Setting>,
    /// Per linear module path, in the order given.
    pub modules: Vec<(String, Slot)>,
    index: BTreeMap<String, usize>,
}

struct Pat {
    re: Regex,
    text: String,
    /// Where it comes from, for messages: `ignore`, `stage 1 targets`, `override 2`.
    origin: String,
    hits: usize,
}

fn compile(text: &str, origin: String) -> Result<Pat> {
    let re = Regex::new(text).with_context(|| format!("{origin} '{text}': invalid pattern"))?;
    Ok(Pat {
        re,
        text: text.to_string(),
        origin,
        hits: 0,
    })
}

impl Plan {
    /// Resolves `recipe` for the compressible linears `modules` (module paths, e.g.
    /// `model.layers.0.self_attn.q_proj`). Refuses, before any work: an invalid pattern, a
    /// pattern that matches none of `modules`, conflicting overrides, and invalid settings.
    pub fn new(recipe: &Recipe, modules: &[String]) -> Result<Plan> {
        let stages = if recipe.stage.is_empty() {
            vec![Stage::default()]
        } else {
            recipe.stage.clone()
        };
        let mut ignore: Vec<Pat> = recipe
            .ignore
            .iter()
            .map(|p| compile(p, "ignore".into()))
            .collect::<Result<_>>()?;
        let mut targets: Vec<Vec<Pat>> = Vec::new();
        let mut skips: Vec<Vec<Pat>> = Vec::new();
        for (i, s) in stages.iter().enumerate() {
            targets.push(
                s.targets
                    .iter()
                    .map(|p| compile(p, format!("stage {} targets", i + 1)))
                    .collect::<Result<_>>()?,
            );
            skips.push(
                s.ignore
                    .iter()
                    .map(|p| compile(p, format!("stage {} ignore", i + 1)))
                    .collect::<Result<_>>()?,
            );
        }
        let mut overrides: Vec<Pat> = recipe
            .overrides
            .iter()
            .enumerate()
            .map(|(i, o)| compile(&o.pattern, format!("override {}", i + 1)))
            .collect::<Result<_>>()?;

        let mut settings: Vec<Setting> = Vec::new();
        let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::with_capacity(modules.len());
        for m in modules {
            let slot = 'slot: {
                if let Some(p) = ignore.iter_mut().find(|p| p.re.is_match(m)) {
                    p.hits += 1;
                    break 'slot Slot::Keep(format!("ignored by the recipe (ignore '{}')", p.text));
                }
                let mut chain = Vec::new();
                for (i, s) in stages.iter().enumerate() {
                    let t = &mut targets[i];
                    let targeted = t.is_empty() || {
                        let mut any = false;
                        for p in t.iter_mut().filter(|p| p.re.is_match(m)) {
                            p.hits += 1;
                            any = true;
                        }
                        any
                    };
                    let mut skipped = false;
                    for p in skips[i].iter_mut().filter(|p| p.re.is_match(m)) {
                        p.hits += 1;
                        skipped = true;
                    }
                    if !targeted || skipped {
                        continue;
                    }
                    chain.push(apply_overrides(m, i, s, recipe, &mut overrides)?);
                }
                if chain.is_empty() {
                    break 'slot Slot::Keep("not targeted by any stage of the recipe".into());
                }
                let key = serde_json::to_string(&chain)?;
                let k = match by_key.get(&key) {
                    Some(&k) => k,
                    None => {
                        let method = build_chain(&chain).with_context(|| {
                            format!("{m}: the settings it gets ({})", describe(&chain))
                        })?;
                        settings.push(Setting {
                            fallback: data_free(&chain)?,
                            stages: chain,
                            method,
                            linears: 0,
                        });
                        by_key.insert(key, settings.len() - 1);
                        settings.len() - 1
                    }
                };
                settings[k].linears += 1;
                Slot::Setting(k)
            };
            out.push((m.clone(), slot));
        }
        for p in ignore
            .iter()
            .chain(targets.iter().flatten())
            .chain(skips.iter().flatten())
            .chain(overrides.iter())
        {
            if p.hits == 0 {
                let example = modules.first().map(String::as_str).unwrap_or("(none)");
                bail!(
                    "{} '{}' matches none of the model's {} compressible linears (module paths \
                     such as '{example}'; `shrink inspect` lists them)",
                    p.origin,
                    p.text,
                    modules.len()
                );
            }
        }
        if settings.is_empty() {
            bail!("the recipe leaves every linear as it is: nothing to compress");
        }
        let index = out
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (m.clone(), i))
            .collect();
        Ok(Plan {
            settings,
            modules: out,
            index,
        })
    }

    /// The same plan with every module renamed by `f` (e.g. from a model's original layer
    /// numbers to those of the model with some layers dropped).
    pub fn renamed(mut self, f: impl Fn(&str) -> String) -> Plan {
        for (m, _) in &mut self.modules {
            *m = f(m);
        }
        self.index = self
            .modules
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (m.clone(), i))
            .collect();
        self
    }

    /// The slot of a module.
    pub fn slot(&self, module: &str) -> Option<&Slot> {
        self.index.get(module).map(|&i| &self.modules[i].1)
    }

    /// The setting most linears get (its quantized grid describes the output by default).
    pub fn main_setting(&self) -> &Setting {
        self.settings
            .iter()
            .max_by_key(|s| s.linears)
            .expect("a plan has at least one setting")
    }

    /// How many linears the recipe leaves as they are.
    pub fn kept(&self) -> usize {
        self.modules
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Keep(_)))
            .count()
    }

    /// Per distinct setting: its method label, stages and number of linears; for the report.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "settings": self.settings.iter().map(|s| serde_json::json!({
                "method": s.method.name(),
                "stages": s.stages,
                "linears": s.linears,
            })).collect::<Vec<_>>(),
            "kept": self.kept(),
        })
    }
}

/// A stage with the overrides for module `m` applied, refusing two that set one key differently.
fn apply_overrides(
    m: &str,
    stage_ix: usize,
    stage: &Stage,
    recipe: &Recipe,
    pats: &mut [Pat],
) -> Result<Stage> {
    let mut v = match serde_json::to_value(stage.settings())? {
        serde_json::Value::Object(o) => o,
        _ => unreachable!("a stage serializes to an object"),
    };
    // key -> (override number, pattern, value)
    let mut set_by: BTreeMap<String, (usize, String, serde_json::Value)> = BTreeMap::new();
    for (i, (o, p)) in recipe.overrides.iter().zip(pats.iter_mut()).enumerate() {
        if o.stage.unwrap_or(1) != stage_ix + 1 || !p.re.is_match(m) {
            continue;
        }
        p.hits += 1;
        let serde_json::Value::Object(keys) = serde_json::to_value(&o.set)? else {
            unreachable!()
        };
        for (k, val) in keys.into_iter().filter(|(_, v)| !v.is_null()) {
            if let Some((j, pj, vj)) = set_by.get(&k) {
                if *vj != val {
                    bail!(
                        "{m}: override {j} ('{pj}') sets {k} = {vj} and override {} ('{}') sets \
                         {k} = {val}; both match it: make the patterns disjoint or give one value",
                        i + 1,
                        o.pattern
                    );
                }
            }
            set_by.insert(k.clone(), (i + 1, o.pattern.clone(), val.clone()));
            v.insert(k, val);
        }
    }
    Ok(serde_json::from_value(serde_json::Value::Object(v))?)
}

fn build_chain(chain: &[Stage]) -> Result<Box<dyn Method>> {
    let mut ms = chain
        .iter()
        .enumerate()
        .map(|(i, s)| {
            build_method(s).with_context(|| {
                if chain.len() > 1 {
                    format!("stage {}", i + 1)
                } else {
                    "the stage".into()
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(if ms.len() == 1 {
        ms.pop().unwrap()
    } else {
        Box::new(Chain(ms))
    })
}

/// `method=gptq bits=8 ...` for messages.
fn describe(chain: &[Stage]) -> String {
    chain
        .iter()
        .map(|s| match toml::to_string(s) {
            Ok(t) => t.trim().replace('\n', " "),
            Err(_) => format!("{s:?}"),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

impl Assign for Plan {
    fn name(&self) -> String {
        let main = self.main_setting().method.name();
        let others = self.settings.len() - 1;
        match (others, self.kept()) {
            (0, 0) => main,
            (o, k) => {
                format!("{main} (+{o} other settings, {k} linears kept; per linear in the report)")
            }
        }
    }
    fn choose(&self, module: &str) -> Result<Choice<'_>> {
        match self.slot(module) {
            Some(Slot::Keep(why)) => Ok(Choice::Keep(why.clone())),
            Some(Slot::Setting(k)) => {
                let s = &self.settings[*k];
                Ok(Choice::Compress {
                    method: s.method.as_ref(),
                    fallback: s.fallback.as_deref(),
                })
            }
            None => bail!("{module}: not a linear the recipe was resolved for"),
        }
    }
}
