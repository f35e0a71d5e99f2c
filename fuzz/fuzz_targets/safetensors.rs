//! A safetensors file: open it (header checks) and load every tensor.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shrink_model::source::SafetensorsSource;
use shrink_model::TensorSource;

fuzz_target!(|data: &[u8]| {
    let p = std::env::temp_dir().join(format!("shrink-fuzz-{}.safetensors", std::process::id()));
    std::fs::write(&p, data).unwrap();
    if let Ok(st) = SafetensorsSource::open(&p) {
        let names: Vec<String> = st.names().map(String::from).collect();
        for n in names {
            let _ = st.load(&n);
        }
    }
});
