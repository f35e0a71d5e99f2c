//! llama-quantize's mixes: for each file type (Q4_K_M, Q3_K_M, ...), without and with an
//! importance matrix, the type shrink's port of `llama_tensor_get_type` gives every tensor of a
//! real model equals the type `llama-quantize` gave it, and so does `general.file_type`.
//! tests/fixtures/gguf_quant/mix_types_NAME.json come from tools/reference/mix_types_fixture.sh;
//! a fixture whose model is not fetched here is skipped, with a message.
use shrink_model::ggml_mix::{model_mix_types, Mix, MixFlags};
use shrink_model::ModelSource;
use std::path::PathBuf;

#[test]
fn mixes_pick_llama_quantizes_types() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("tests/fixtures/gguf_quant");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mix_types_") && n.ends_with(".json"))
        })
        .collect();
    fixtures.sort();
    assert!(
        !fixtures.is_empty(),
        "no mix_types_*.json in {}",
        dir.display()
    );
    let mut checked_models = 0;
    for fx in fixtures {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&fx).unwrap()).unwrap();
        let model = root.join(v["model"].as_str().unwrap());
        if !model.exists() {
            eprintln!(
                "skipping {}: {} is not fetched (scripts/fetch --all)",
                fx.display(),
                model.display()
            );
            continue;
        }
        let cfg = ModelSource::open(&model).unwrap().config;
        let mut tensors = 0;
        for (name, modes) in v["mixes"].as_object().unwrap() {
            let mix = Mix::parse(name, true).unwrap_or_else(|| panic!("mix {name}"));
            for (mode, r) in modes.as_object().unwrap() {
                let mine =
                    model_mix_types(&cfg, mix, mode == "imatrix", &MixFlags::default()).unwrap();
                // (null: a --dry-run fixture, which writes no file)
                if !r["file_type"].is_null() {
                    assert_eq!(
                        r["file_type"].as_u64(),
                        Some(mix.file_type() as u64),
                        "{name} {mode}: file type"
                    );
                }
                for (t, ty) in r["types"].as_object().unwrap() {
                    let ty = ty.as_str().unwrap();
                    match mine.get(t) {
                        Some(m) => assert_eq!(m.name(), ty, "{}: {name} {mode}: {t}", fx.display()),
                        // not quantized: kept as in the F32 input
                        None => assert_eq!(
                            ty,
                            "F32",
                            "{}: {name} {mode}: {t} not typed by shrink",
                            fx.display()
                        ),
                    }
                    tensors += 1;
                }
                assert!(
                    mine.keys().all(|k| r["types"].get(k).is_some()),
                    "{name} {mode}: shrink types tensors llama-quantize's file lacks"
                );
            }
        }
        eprintln!(
            "{}: {tensors} tensor types equal llama-quantize's",
            fx.display()
        );
        checked_models += 1;
    }
    assert!(
        checked_models > 0,
        "no fixture's model is fetched (run scripts/fetch)"
    );
}
