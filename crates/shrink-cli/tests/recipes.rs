//! Per-module recipes end to end: `ignore`, stage `targets`, `[[override]]`s, the per-linear
//! report, the output's recipe.toml reproducing the run, the exports of mixed settings, and the
//! errors before any work.
mod common;
use common::*;
use shrink_model::source::{SafetensorsSource, TensorSource};
use std::path::{Path, PathBuf};

fn write(t: &Path, name: &str, text: &str) -> PathBuf {
    let p = t.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn compress(t: &Path, model: &Path, recipe: &Path, out: &str) -> PathBuf {
    let o = t.join(out);
    let (code, _, err) = shrink(&[
        "compress",
        "--model",
        s(model),
        "--recipe",
        s(recipe),
        "--out",
        s(&o),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    o
}

#[test]
fn overrides_ignore_and_recipe_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let recipe = write(
        t,
        "r.toml",
        &format!(
            "ignore = ['layers\\.0\\.self_attn\\.o_proj$']\n\n[calibration]\nfile = {:?}\nnsamples = 8\nseqlen = 32\n\n\
             [[stage]]\nmethod = \"gptq\"\nbits = 4\ngroup_size = 32\n\n\
             [[override]]\nmatch = 'down_proj'\nbits = 8\n\n\
             [[override]]\nmatch = 'layers\\.1\\.mlp\\.down_proj'\nbits = 8\nsym = true\n",
            s(&calib)
        ),
    );
    let out = compress(t, &model, &recipe, "mixed");
    let rep = report(&out);
    let mut methods = std::collections::BTreeMap::new();
    for l in rep["layers"].as_array().unwrap() {
        for lin in l["linears"].as_array().unwrap() {
            methods.insert(
                lin["name"].as_str().unwrap().to_string(),
                lin["method"].as_str().unwrap().to_string(),
            );
        }
    }
    assert_eq!(methods.len(), 14, "{methods:?}");
    assert_eq!(methods["model.layers.0.self_attn.o_proj.weight"], "none");
    assert!(methods["model.layers.0.mlp.down_proj.weight"].starts_with("gptq w8 g32 asym"));
    assert!(methods["model.layers.1.mlp.down_proj.weight"].starts_with("gptq w8 g32 sym"));
    assert!(methods["model.layers.1.self_attn.o_proj.weight"].starts_with("gptq w4 g32 asym"));
    assert_eq!(rep["plan"]["kept"], 1);
    assert_eq!(rep["plan"]["settings"].as_array().unwrap().len(), 3);

    // The ignored linear is the original weight; the others changed.
    let orig = SafetensorsSource::open(&model.join("model.safetensors")).unwrap();
    let new = SafetensorsSource::open(&out.join("model.safetensors")).unwrap();
    let o = "model.layers.0.self_attn.o_proj.weight";
    assert_eq!(orig.load(o).unwrap().data, new.load(o).unwrap().data);
    let q1 = "model.layers.1.self_attn.o_proj.weight";
    assert_ne!(orig.load(q1).unwrap().data, new.load(q1).unwrap().data);
    // Its quantized form: absent for the ignored linear, 8-bit codes for down_proj.
    let q = SafetensorsSource::open(&out.join("quantized.safetensors")).unwrap();
    assert!(q.info("model.layers.0.self_attn.o_proj.qcodes").is_none());
    let codes = q.raw("model.layers.0.mlp.down_proj.qcodes").unwrap().2;
    assert!(codes.iter().any(|&c| c > 15), "8-bit codes expected");
    let codes4 = q.raw("model.layers.0.mlp.up_proj.qcodes").unwrap().2;
    assert!(codes4.iter().all(|&c| c <= 15));

    // recipe.toml reproduces the run byte for byte.
    let again = compress(t, &model, &out.join("recipe.toml"), "again");
    for f in ["model.safetensors", "quantized.safetensors"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }

    // compressed-tensors: one config group per setting, each naming its modules; the ignored
    // linear in `ignore`. GPTQ holds one setting: refused with the reason.
    let ct = t.join("ct");
    let (code, _, err) = shrink(&[
        "export",
        "--model",
        s(&out),
        "--format",
        "compressed-tensors",
        "--out",
        s(&ct),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct.join("config.json")).unwrap()).unwrap();
    let qc = &cfg["quantization_config"];
    let groups = qc["config_groups"].as_object().unwrap();
    assert_eq!(groups.len(), 3);
    let mut bits: Vec<(u64, bool, usize)> = groups
        .values()
        .map(|g| {
            (
                g["weights"]["num_bits"].as_u64().unwrap(),
                g["weights"]["symmetric"].as_bool().unwrap(),
                g["targets"].as_array().unwrap().len(),
            )
        })
        .collect();
    bits.sort();
    assert_eq!(bits, vec![(4, false, 11), (8, false, 1), (8, true, 1)]);
    assert!(qc["ignore"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "model.layers.0.self_attn.o_proj"));
    fails_with(
        &[
            "export",
            "--model",
            s(&out),
            "--format",
            "gptq",
            "--out",
            s(&t.join("g")),
            "-q",
        ],
        &[
            "different quantization settings",
            "compressed-tensors or gguf",
        ],
    );
    assert!(!t.join("g").exists());
}

#[test]
fn stage_targets_split_methods() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    // Attention by RTN, the MLP by GPTQ: two stages with disjoint targets.
    let recipe = write(
        t,
        "split.toml",
        &format!(
            "[calibration]\nfile = {:?}\nnsamples = 8\nseqlen = 32\n\n\
             [[stage]]\nmethod = \"rtn\"\nbits = 4\ngroup_size = 32\ntargets = ['self_attn']\n\n\
             [[stage]]\nmethod = \"gptq\"\nbits = 4\ngroup_size = 32\ntargets = ['mlp']\n",
            s(&calib)
        ),
    );
    let out = compress(t, &model, &recipe, "split");
    for l in report(&out)["layers"].as_array().unwrap() {
        for lin in l["linears"].as_array().unwrap() {
            let (n, m) = (
                lin["name"].as_str().unwrap(),
                lin["method"].as_str().unwrap(),
            );
            let want = if n.contains("self_attn") {
                "rtn"
            } else {
                "gptq"
            };
            assert!(m.starts_with(want), "{n}: {m}");
        }
    }
}

#[test]
fn bad_recipes_fail_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let head = format!(
        "[calibration]\nfile = {:?}\nnsamples = 8\nseqlen = 32\n\n",
        s(&calib)
    );
    let gptq = "[[stage]]\nmethod = \"gptq\"\nbits = 4\ngroup_size = 32\n\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "nomatch",
            format!("{head}{gptq}[[override]]\nmatch = 'layers\\.7\\.'\nbits = 8\n"),
            vec!["override 1", "layers\\.7\\.", "matches none", "model.layers.0.self_attn.q_proj"],
        ),
        (
            "ignore_nomatch",
            format!("ignore = ['vision_tower']\n{head}{gptq}"),
            vec!["ignore 'vision_tower'", "matches none"],
        ),
        (
            "conflict",
            format!("{head}{gptq}[[override]]\nmatch = 'down_proj'\nbits = 8\n\n[[override]]\nmatch = 'layers\\.1\\.'\nbits = 3\n"),
            vec!["model.layers.1.mlp.down_proj", "override 1 ('down_proj') sets bits = 8", "override 2 ('layers\\.1\\.') sets bits = 3"],
        ),
        (
            "badregex",
            format!("{head}{gptq}[[override]]\nmatch = 'down_proj('\nbits = 8\n"),
            vec!["override 1 'down_proj('", "invalid pattern"],
        ),
        (
            "nostage",
            format!("{head}[[stage]]\nmethod = \"wanda\"\nsparsity = 0.5\n\n{gptq}[[override]]\nmatch = 'down_proj'\nbits = 8\n"),
            vec!["override 1", "2 stages", "stage = 1..2"],
        ),
        (
            "stage3",
            format!("{head}{gptq}[[override]]\nmatch = 'down_proj'\nstage = 3\nbits = 8\n"),
            vec!["names stage 3", "has 1"],
        ),
        (
            "badvalue",
            format!("{head}{gptq}[[override]]\nmatch = 'down_proj'\nbits = 12\n"),
            vec!["model.layers.0.mlp.down_proj", "bits"],
        ),
        (
            "unknownkey",
            format!("{head}{gptq}[[override]]\nmatch = 'down_proj'\nbitz = 8\n"),
            vec!["override 'down_proj'", "bitz"],
        ),
        (
            "everything_ignored",
            format!("ignore = ['.']\n{head}{gptq}"),
            vec!["leaves every linear as it is"],
        ),
    ];
    for (name, text, needles) in cases {
        let r = write(t, &format!("{name}.toml"), &text);
        let out = t.join(name);
        let err = fails_with(
            &[
                "compress",
                "--model",
                s(&model),
                "--recipe",
                s(&r),
                "--out",
                s(&out),
                "-q",
            ],
            &needles,
        );
        assert!(
            err.contains(&format!("{name}.toml")),
            "{name}: the error names the recipe: {err}"
        );
        assert!(!out.exists(), "{name}: nothing written");
        let partial = t.join(format!(".{name}.partial"));
        assert!(!partial.exists(), "{name}: no checkpoint left");
    }
}

/// `--allocate owl`: per-layer sparsities within +-lambda of the target, the global number of
/// zeros at the target, the allocation in the report, and a recipe.toml that reproduces it.
#[test]
fn owl_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let out = t.join("owl");
    let base = |extra: &[&str], out: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "compress",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--nsamples",
            "8",
            "--seqlen",
            "32",
            "--out",
            s(out),
            "-q",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let args = base(
        &[
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            "--allocate",
            "owl",
            "--owl-lambda",
            "0.1",
        ],
        &out,
    );
    let (code, _, err) = shrink(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let rep = report(&out);
    let al = &rep["allocation"];
    assert_eq!(al["strategy"], "owl");
    let sp: Vec<f64> = al["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["sparsity"].as_f64().unwrap())
        .collect();
    assert_eq!(sp.len(), 2);
    // two layers of equal size: one at target - lambda, the other at target + lambda
    assert!((sp[0] + sp[1] - 1.0).abs() < 1e-9, "{sp:?}");
    assert!(((sp[0] - sp[1]).abs() - 0.2).abs() < 1e-9, "{sp:?}");
    // each layer's linears pruned at their layer's sparsity; the total at the target
    for (i, l) in rep["layers"].as_array().unwrap().iter().enumerate() {
        let f = l["sparsity"].as_f64().unwrap();
        assert!((f - sp[i]).abs() < 0.01, "layer {i}: {f} vs {}", sp[i]);
    }
    let total = rep["totals"]["sparsity"].as_f64().unwrap();
    assert!((total - 0.5).abs() < 0.005, "{total}");
    // recipe.toml holds the allocation: the same model without --allocate
    let again = compress(t, &model, &out.join("recipe.toml"), "again");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );
    // refused before any work: nothing to allocate, a pattern, a lambda out of range
    for (extra, needle) in [
        (
            vec!["--method", "gptq", "--bits", "4", "--allocate", "owl"],
            "no stage with an unstructured sparsity",
        ),
        (
            vec!["--method", "wanda", "--pattern", "2:4", "--allocate", "owl"],
            "no stage with an unstructured sparsity",
        ),
        (
            vec![
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--allocate",
                "owl",
                "--owl-lambda",
                "0.9",
            ],
            "--owl-lambda",
        ),
        (
            vec![
                "--method",
                "wanda",
                "--sparsity",
                "0.5",
                "--allocate",
                "agentx",
            ],
            "unknown --allocate",
        ),
    ] {
        let o = t.join("bad");
        let args = base(&extra, &o);
        fails_with(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[needle],
        );
        assert!(!o.exists());
    }
}

/// `shrink profile`: every linear has an error per candidate, errors grow with sparsity and
/// fall with bits, every layer has its statistics; bad candidates are refused before work.
#[test]
fn profile_of_a_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let out = t.join("p.json");
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "profile",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--nsamples",
            "8",
            "--seqlen",
            "32",
            "--out",
            s(&out),
            "-q",
            "--group-size",
            "32",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let a = args(&["--sparsities", "0.3,0.7", "--bits", "2,8"]);
    let (code, _, err) = shrink(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(p["candidates"].as_array().unwrap().len(), 4);
    let lins = p["linears"].as_array().unwrap();
    assert_eq!(lins.len(), 14);
    for l in lins {
        let e = &l["rel_error"];
        let g = |k: &str| e[k].as_f64().unwrap();
        assert!(g("sparsegpt 70%") > g("sparsegpt 30%"), "{l}");
        assert!(
            g("gptq w2 g32 asym actorder=static") > g("gptq w8 g32 asym actorder=static"),
            "{l}"
        );
        assert!(g("sparsegpt 30%") > 0.0);
    }
    let layers = p["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let imp = l["importance"].as_f64().unwrap();
        assert!(imp > 0.0 && imp < 2.0, "{l}");
        assert!(l["outlier_pct"].as_f64().unwrap() >= 0.0);
        assert!(l["score_p10"].as_f64().unwrap() > 0.0);
    }
    let z: f64 = layers
        .iter()
        .map(|l| l["score_p10_z"].as_f64().unwrap())
        .sum();
    assert!(z.abs() < 1e-9);
    assert!(
        p["costs"]["candidate_solve_seconds"]
            .as_object()
            .unwrap()
            .len()
            == 4
    );
    // refused: an existing output, a sparsity out of range, a bit width out of range, no candidate
    for (extra, needle) in [
        (vec!["--sparsities", "0.5", "--bits", ""], "exists"),
        (
            vec!["--force", "--sparsities", "1.5", "--bits", ""],
            "--sparsities 1.5",
        ),
        (
            vec!["--force", "--sparsities", "", "--bits", "1"],
            "--bits 1",
        ),
        (
            vec!["--force", "--sparsities", "", "--bits", ""],
            "no candidate",
        ),
        (vec!["--force", "--sparsities", "x"], "'x' is not a number"),
    ] {
        let a = args(&extra);
        fails_with(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[needle]);
    }
}

/// `--target-bpw` with `--allocate search` (the default with --target-bpw): per-linear bit
/// widths whose bits per weight, as the compressed-tensors export stores them, reach the target
/// to within one upgrade step; the allocation in the report; a recipe.toml that reproduces the
/// output; one config group per bit width in the export; unreachable budgets refused before any
/// work.
#[test]
fn target_bpw_search() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = hf_dir(t);
    let calib = calib_text(t);
    let base = |extra: &[&str], out: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "compress",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--nsamples",
            "8",
            "--seqlen",
            "32",
            "--out",
            s(out),
            "-q",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |extra: &[&str], out: &Path| {
        let args = base(extra, out);
        let (code, _, err) = shrink(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{err}");
        report(out)
    };
    let out = t.join("bpw");
    let target = 3.5;
    let rep = run(
        &[
            "--method",
            "gptq",
            "--group-size",
            "32",
            "--target-bpw",
            "3.5",
        ],
        &out,
    );
    let al = &rep["allocation"];
    assert_eq!(al["strategy"], "search");
    // Every dimension of the tiny model is a multiple of 32, so with g32 asymmetric and f16
    // scales a linear of b bits costs exactly b + 16/32 + b/32 bits per weight.
    let bpw = |b: f64| b + 0.5 + b / 32.0;
    let (mut bits_total, mut weights) = (0.0, 0.0);
    let mut widths = std::collections::BTreeSet::new();
    let mut steps = Vec::new();
    let lins = al["linears"].as_array().unwrap();
    assert_eq!(lins.len(), 14);
    for l in lins {
        let b = l["bits"].as_f64().unwrap();
        let w = (l["d_out"].as_u64().unwrap() * l["d_in"].as_u64().unwrap()) as f64;
        assert!((l["bpw"].as_f64().unwrap() - bpw(b)).abs() < 1e-12);
        bits_total += bpw(b) * w;
        weights += w;
        widths.insert(b as u32);
        if let Some(next) = [2.0, 3.0, 4.0, 8.0].iter().find(|&&c| c > b) {
            steps.push((bpw(*next) - bpw(b)) * w);
        }
    }
    let reached = bits_total / weights;
    assert!((al["reached"].as_f64().unwrap() - reached).abs() < 1e-12);
    assert!(
        (rep["totals"]["bpw"]["bpw"].as_f64().unwrap() - reached).abs() < 1e-12,
        "{}",
        rep["totals"]["bpw"]
    );
    // At or under the target, and no single upgrade would still fit: within the step
    // granularity.
    assert!(reached <= target + 1e-12, "{reached}");
    let room = target * weights - bits_total;
    assert!(
        steps.iter().all(|&c| c > room),
        "an upgrade of {steps:?} fits in {room}"
    );
    assert!(widths.len() > 1, "a mixed allocation expected: {widths:?}");
    // Each linear's quantized codes have its allocated width.
    let q = SafetensorsSource::open(&out.join("quantized.safetensors")).unwrap();
    for l in lins {
        let name = l["linear"].as_str().unwrap();
        let max = *q
            .raw(&format!("{name}.qcodes"))
            .unwrap()
            .2
            .iter()
            .max()
            .unwrap() as u32;
        assert!(max < 1 << l["bits"].as_u64().unwrap(), "{name}");
    }

    // recipe.toml reproduces the output byte for byte.
    let again = compress(t, &model, &out.join("recipe.toml"), "bpw-again");
    for f in ["model.safetensors", "quantized.safetensors"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
    // compressed-tensors: one config group per width.
    let ct = t.join("bpw-ct");
    let (code, _, err) = shrink(&[
        "export",
        "--model",
        s(&out),
        "--format",
        "compressed-tensors",
        "--out",
        s(&ct),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ct.join("config.json")).unwrap()).unwrap();
    let groups = cfg["quantization_config"]["config_groups"]
        .as_object()
        .unwrap();
    assert_eq!(groups.len(), widths.len());

    // Bit widths and group sizes searched together: every linear gets one of each, the budget
    // holds, and the recipe reproduces the output.
    let bg = t.join("bits-groups");
    let rep = run(
        &[
            "--method",
            "gptq",
            "--target-bpw",
            "3.5",
            "--search-group-sizes",
            "32,64",
        ],
        &bg,
    );
    let al = &rep["allocation"];
    assert!(al["reached"].as_f64().unwrap() <= 3.5 + 1e-12);
    assert_eq!(al["candidates"].as_array().unwrap().len(), 8);
    for l in al["linears"].as_array().unwrap() {
        let g = l["group_size"].as_u64().unwrap();
        assert!(g == 32 || g == 64, "{l}");
    }
    let again = compress(t, &model, &bg.join("recipe.toml"), "bits-groups-again");
    assert_eq!(
        std::fs::read(bg.join("quantized.safetensors")).unwrap(),
        std::fs::read(again.join("quantized.safetensors")).unwrap()
    );

    // --target-size: the compressed-tensors file export writes (f16 scales), at most the target
    // and within one upgrade step (plus the header estimate) of it.
    let sz = t.join("size");
    let rep = run(
        &[
            "--method",
            "gptq",
            "--group-size",
            "32",
            "--target-size",
            "75000",
        ],
        &sz,
    );
    let predicted = rep["allocation"]["target_size"]["predicted_file_bytes"]
        .as_u64()
        .unwrap();
    let ct = t.join("size-ct");
    let (code, _, err) = shrink(&[
        "export",
        "--model",
        s(&sz),
        "--format",
        "compressed-tensors",
        "--scale-dtype",
        "f16",
        "--out",
        s(&ct),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    let actual = std::fs::metadata(ct.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(actual <= 75_000, "{actual}");
    assert!(
        predicted >= actual && predicted - actual < 4096,
        "{predicted} vs {actual}"
    );
    assert!(actual > 75_000 - 8_000, "{actual}");

    // A global sparsity searched over the linears: the zeros at the target.
    let sp = t.join("sparse");
    let rep = run(
        &[
            "--method",
            "sparsegpt",
            "--sparsity",
            "0.5",
            "--allocate",
            "search",
        ],
        &sp,
    );
    let al = &rep["allocation"];
    assert!((al["reached"].as_f64().unwrap() - 0.5).abs() < 1e-5, "{al}");
    let total = rep["totals"]["sparsity"].as_f64().unwrap();
    assert!((total - 0.5).abs() < 0.01, "{total}");
    let again = compress(t, &model, &sp.join("recipe.toml"), "sparse-again");
    assert_eq!(
        std::fs::read(sp.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );

    // Refused before any work, naming the flag.
    for (extra, needle) in [
        (
            vec![
                "--method",
                "gptq",
                "--group-size",
                "32",
                "--target-bpw",
                "1.5",
            ],
            "--target-bpw 1.5 cannot be met",
        ),
        (
            vec![
                "--method",
                "gptq",
                "--group-size",
                "32",
                "--target-bpw",
                "9",
            ],
            "--target-bpw 9 cannot be met",
        ),
        (
            vec!["--method", "wanda", "--target-bpw", "4"],
            "needs a quantization method",
        ),
        (vec!["--target-bpw", "4"], "needs a quantization method"),
        (
            vec![
                "--method",
                "gptq",
                "--group-size",
                "32",
                "--target-size",
                "30KB",
            ],
            "--target-size 30000 cannot be met",
        ),
        (
            vec!["--method", "gptq", "--target-size", "12XB"],
            "--target-size '12XB'",
        ),
        (
            vec!["--method", "gptq", "--target-bpw", "4", "--allocate", "owl"],
            "--allocate search",
        ),
        (
            vec!["--method", "gptq", "--bits", "4", "--allocate", "search"],
            "needs a budget",
        ),
        (
            vec![
                "--method",
                "wanda",
                "--sparsity",
                "0.9",
                "--allocate",
                "search",
            ],
            "--sparsity 0.9 cannot be met",
        ),
    ] {
        let o = t.join("bad");
        let args = base(&extra, &o);
        fails_with(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[needle],
        );
        assert!(!o.exists());
    }
}

/// `--search-types` with `--target-size`: each linear gets one of the llama.cpp types, GPTQ
/// rounds onto its grid, and the GGUF file `export` then writes is exactly the size the search
/// predicted, at most the target, with more than one type in it; the recipe reproduces it.
/// Bad combinations are refused before any work.
#[test]
fn target_size_gguf_types() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = gguf_file(t);
    let calib = calib_text(t);
    let export = |m: &Path, out: &Path, extra: &[&str]| -> u64 {
        let mut args = vec![
            "export",
            "--model",
            s(m),
            "--format",
            "gguf",
            "--out",
            s(out),
            "-q",
        ];
        args.extend(extra);
        let (code, _, err) = shrink(&args);
        assert_eq!(code, 0, "{err}");
        std::fs::metadata(out).unwrap().len()
    };
    // The range: every linear at Q4_0, or at Q8_0 (embeddings and head at Q8_0 in both).
    let lo = export(&model, &t.join("q4.gguf"), &["--type", "Q4_0"]);
    let hi = export(&model, &t.join("q8.gguf"), &["--type", "Q8_0"]);
    assert!(hi > lo + 4096, "{lo} {hi}");
    let target = (lo + hi) / 2;
    let compress_to = |target: u64, extra: &[&str], out: &Path| -> (i32, String) {
        let target_s = target.to_string();
        let mut args = vec![
            "compress",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--nsamples",
            "8",
            "--seqlen",
            "32",
            "--method",
            "gptq",
            "--target-size",
            &target_s,
            "--out",
            s(out),
            "-q",
        ];
        args.extend(extra);
        let (code, _, err) = shrink(&args);
        (code, err)
    };
    let compress = |extra: &[&str], out: &Path| compress_to(target, extra, out);
    let out = t.join("types");
    let (code, err) = compress(&["--search-types", "Q4_0,Q5_0,Q8_0,Q4_K"], &out);
    assert_eq!(code, 0, "{err}");
    let rep = report(&out);
    let al = &rep["allocation"];
    assert_eq!(
        al["candidates"],
        serde_json::json!(["Q4_0", "Q5_0", "Q8_0", "Q4_K"])
    );
    let predicted = al["target_size"]["predicted_file_bytes"].as_u64().unwrap();
    let mut types = std::collections::BTreeSet::new();
    for l in al["linears"].as_array().unwrap() {
        // Q4_K falls back to Q5_0 on rows of 64 or 160 columns, as llama-quantize's does
        let ty = l["gguf_type"].as_str().unwrap().to_string();
        assert!(["Q4_0", "Q5_0", "Q8_0"].contains(&ty.as_str()), "{l}");
        types.insert(ty);
    }
    assert!(types.len() > 1, "a mixed allocation expected: {types:?}");
    let file = t.join("types.gguf");
    let actual = export(&out, &file, &[]);
    assert_eq!(predicted, actual);
    assert!(actual <= target, "{actual} > {target}");
    // Each tensor holds the type the allocation gave its linear.
    let g = shrink_model::gguf::GgufFile::open(&file).unwrap();
    let cfg = shrink_model::ModelSource::open(&file).unwrap().config;
    for l in al["linears"].as_array().unwrap() {
        let name = format!("{}.weight", l["linear"].as_str().unwrap());
        let gname = shrink_model::arch::hf_to_gguf(&cfg, &name).unwrap().name;
        assert_eq!(
            g.tensor(&gname).unwrap().dtype.name(),
            l["gguf_type"].as_str().unwrap()
        );
    }
    // recipe.toml reproduces the codes.
    let again = t.join("types-again");
    let (code, _, err) = shrink(&[
        "compress",
        "--model",
        s(&model),
        "--recipe",
        s(&out.join("recipe.toml")),
        "--out",
        s(&again),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(out.join("quantized.safetensors")).unwrap(),
        std::fs::read(again.join("quantized.safetensors")).unwrap()
    );
    // Refused before any work.
    for (extra, needle) in [
        (vec!["--search-types", "Q4_K_M"], "is a llama-quantize mix"),
        (
            vec!["--search-types", "Q4_0,Q9_9"],
            "unknown ggml type 'Q9_9'",
        ),
        (
            vec!["--search-types", "Q4_0", "--search-group-sizes", "32"],
            "do not combine",
        ),
    ] {
        let (code, err) = compress(&extra, &t.join("bad"));
        assert_ne!(code, 0);
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!t.join("bad").exists());
    }
    let (code, err) = compress_to(lo - 1000, &["--search-types", "Q4_0,Q8_0"], &t.join("bad"));
    assert_ne!(code, 0);
    assert!(err.contains("cannot be met"), "{err}");
    // An HF directory has no GGUF metadata to size the file with.
    let hf = hf_dir(t);
    fails_with(
        &[
            "compress",
            "--model",
            s(&hf),
            "--calib",
            s(&calib),
            "--method",
            "gptq",
            "--target-size",
            "100KB",
            "--search-types",
            "Q4_0,Q8_0",
            "--out",
            s(&t.join("bad")),
        ],
        &["--search-types with --target-size counts the GGUF file"],
    );
}
