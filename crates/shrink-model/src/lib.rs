//! shrink-model: model loading and a layer-at-a-time forward pass for the Llama family.
//!
//! - [`ModelSource::open`] reads a Hugging Face directory or a GGUF file (memory-mapped).
//! - [`arch`] is the one table of tensor names and of which linears share an input.
//! - [`DecoderLayer::forward`] runs one layer on a batch and exposes every linear's input to a
//!   [`LayerHook`].
pub mod arch;
pub mod config;
pub mod fastmath;
pub mod gguf;
pub mod layer;
pub mod model;
pub mod packed;
pub mod quants;
pub mod source;
pub mod spm;
pub mod tensor;
pub mod tokenizer;

pub use arch::{Arch, Group, Linear};
pub use config::{ModelConfig, RopeScaling};
pub use layer::{DecoderLayer, LayerHook, LinearWeights, NoHook, Rope};
pub use model::{Model, ModelSource};
pub use source::TensorSource;
pub use tensor::Tensor;
