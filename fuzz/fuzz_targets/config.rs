//! A config.json: parse and validate it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shrink_model::ModelConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = ModelConfig::from_hf_json(&v, "config.json");
    }
});
