//! `scheme = "..."` in a recipe stage: llm-compressor's preset names set the weight grid and
//! record the activation scheme; conflicting settings are refused by name.
use shrink_methods::NumberFormat;
use shrink_recipe::recipe::{build_method, Recipe};

fn stage(extra: &str) -> anyhow::Result<Recipe> {
    Recipe::parse(&format!("[[stage]]\nmethod = 'gptq'\n{extra}\n"))
}

#[test]
fn presets_fill_the_grid_and_record_activations() {
    let cases = [
        ("W4A16", 4, Some(128), None, None),
        ("W8A16", 8, Some(128), None, None),
        ("W8A8", 8, None, None, Some("dynamic per-token int8")),
        (
            "FP8",
            8,
            None,
            Some(NumberFormat::Fp8Tensor),
            Some("static per-tensor fp8"),
        ),
        (
            "fp8_dynamic",
            8,
            None,
            Some(NumberFormat::Fp8Channel),
            Some("dynamic per-token fp8"),
        ),
        (
            "FP8_BLOCK",
            8,
            None,
            Some(NumberFormat::Fp8Block),
            Some("dynamic per-group-128 fp8"),
        ),
        ("NVFP4A16", 4, Some(16), Some(NumberFormat::Nvfp4), None),
        ("MXFP4A16", 4, Some(32), Some(NumberFormat::Mxfp4), None),
    ];
    for (name, bits, group, format, act) in cases {
        let r = stage(&format!("scheme = '{name}'")).unwrap();
        let s = &r.stage[0];
        assert_eq!(s.scheme.as_deref(), Some(name.to_uppercase().as_str()));
        assert_eq!(
            (s.bits, s.group_size, s.sym),
            (Some(bits), group, Some(true)),
            "{name}"
        );
        assert_eq!(s.format, format, "{name}");
        assert_eq!(s.act.as_deref(), act, "{name}");
        let m = build_method(s).unwrap();
        assert!(!m.name().is_empty());
        // the written recipe parses back to the same stage
        let again = Recipe::parse(&r.to_toml().unwrap()).unwrap();
        assert_eq!(again.stage, r.stage, "{name}");
    }
    assert!(stage("scheme = 'NVFP4'").unwrap().stage[0]
        .act
        .as_deref()
        .unwrap()
        .contains("nvfp4"));
}

#[test]
fn conflicts_are_refused_with_the_reason() {
    let e = |extra: &str| format!("{:#}", stage(extra).unwrap_err());
    let m = e("scheme = 'NVFP4A16'\ngroup_size = 32");
    assert!(
        m.contains("NVFP4A16 defines groups of 16") && m.contains("32"),
        "{m}"
    );
    let m = e("scheme = 'MXFP4'\ngroup_size = 16");
    assert!(m.contains("groups of 32"), "{m}");
    let m = e("scheme = 'W4A16'\nbits = 3");
    assert!(m.contains("4-bit weights, but bits = 3"), "{m}");
    let m = e("scheme = 'W4A16'\ngroup_size = 64");
    assert!(
        m.contains("groups of 128 columns, but group_size = 64"),
        "{m}"
    );
    let m = e("scheme = 'FP8_DYNAMIC'\ngroup_size = 128");
    assert!(m.contains("no groups"), "{m}");
    let m = e("scheme = 'W9A9'");
    assert!(
        m.contains("unknown scheme 'W9A9'") && m.contains("NVFP4A16"),
        "{m}"
    );
    let m = e("scheme = 'FP8'\ngguf_type = 'Q4_K'");
    assert!(m.contains("both choose the grid"), "{m}");
    let m = e("act = 'dynamic per-token int8'");
    assert!(m.contains("without a scheme"), "{m}");
    let m = e("scheme = 'NVFP4A16'\nmse = true");
    assert!(m.contains("mse"), "{m}");
    // a float format without a scheme checks its own group when the method is built
    let r = stage("bits = 4\ngroup_size = 32\nsym = true\nformat = 'nvfp4'").unwrap();
    let err = build_method(&r.stage[0]).err().unwrap().to_string();
    assert!(err.contains("groups of 16"), "{err}");
}

/// `Recipe::recorded_act`: what `shrink eval` applies to a compressed model by default.
#[test]
fn recorded_activations_for_eval() {
    use shrink_model::actquant::ActQuant;
    let got = |extra: &str| stage(extra).unwrap().recorded_act().unwrap();
    assert_eq!(got("scheme = 'W8A8'").unwrap().eval, Some(ActQuant::Int8));
    assert_eq!(
        got("scheme = 'FP8_DYNAMIC'").unwrap().eval,
        Some(ActQuant::Fp8)
    );
    assert_eq!(got("scheme = 'MXFP4'").unwrap().eval, Some(ActQuant::Mxfp4));
    // recorded, but not reproduced by eval: a static per-tensor scale
    let fp8 = got("scheme = 'FP8'").unwrap();
    assert_eq!((fp8.scheme.as_str(), fp8.eval), ("FP8", None));
    // weight-only presets and plain stages record none
    assert!(got("scheme = 'W4A16'").is_none());
    assert!(got("bits = 4").is_none());
    // two stages that quantize activations differently: refused by name
    let two = Recipe::parse(
        "[[stage]]\nmethod = 'rtn'\nscheme = 'W8A8'\ntargets = ['.*self_attn.*']\n\
         [[stage]]\nmethod = 'rtn'\nscheme = 'MXFP4'\ntargets = ['.*mlp.*']\n",
    )
    .unwrap();
    let e = two.recorded_act().unwrap_err().to_string();
    assert!(e.contains("W8A8") && e.contains("MXFP4"), "{e}");
}
