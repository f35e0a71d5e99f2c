//! Writers. Every writer writes to a temporary name next to the target and renames it at the end,
//! so a failed write leaves nothing behind and never replaces what the user had.
pub mod hf;
pub mod safetensors_writer;

pub use hf::{write_hf_dir, OutputDir};
pub use safetensors_writer::write_safetensors;
