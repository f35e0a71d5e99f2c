//! Writers. Every writer writes to a temporary name next to the target and renames it at the end,
//! so a failed write leaves nothing behind and never replaces what the user had.
pub mod compressed_tensors;
pub mod gguf_export;
pub use shrink_model::ggml_quant as gguf_quant;
pub mod gptq_format;
pub mod hf;
pub mod quantized;
pub mod safetensors_writer;

pub use hf::{write_atomic, write_hf_dir, write_hf_files, write_json, OutputDir};
pub use safetensors_writer::{f32_bytes, write_safetensors, write_safetensors_raw, DType, Entry};
