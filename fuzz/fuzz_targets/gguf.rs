//! A GGUF file: open it (header checks), dequantize every tensor, then open it as a model
//! (config, tokenizer, layout) and load every tensor.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shrink_model::gguf::GgufFile;
use shrink_model::ModelSource;

fuzz_target!(|data: &[u8]| {
    let p = std::env::temp_dir().join(format!("shrink-fuzz-{}.gguf", std::process::id()));
    std::fs::write(&p, data).unwrap();
    if let Ok(f) = GgufFile::open(&p) {
        for t in f.tensors() {
            let _ = f.dequantize(&t.name);
        }
    }
    if let Ok(src) = ModelSource::open(&p) {
        let _ = shrink_model::tokenizer::encode(&src.tokenizer, "Hello world, 123!");
        let _ = src.load_all();
    }
});
