//! shrink-model: model loading and a layer-at-a-time forward pass for the decoder families of
//! [`arch::FAMILIES`] (Llama, Mistral, Qwen2/3, Gemma 3, Phi-3, Qwen3-MoE, Mixtral).
//!
//! - [`ModelSource::open`] reads a Hugging Face directory or a GGUF file (memory-mapped).
//! - [`ggml_quant`] writes llama.cpp's block types (a port of its reference quantizers) and exposes
//!   each block's grid, so the methods can round onto it.
//! - [`arch`] is the one table of families: tensor names, which linears share an input, norms,
//!   activation, attention features.
//! - [`DecoderLayer::forward`] runs one layer on a batch and exposes every linear's input to a
//!   [`LayerHook`].
pub mod actquant;
pub mod arch;
pub mod config;
pub mod fastmath;
pub mod gemm;
pub mod generate;
pub mod ggml_mix;
pub mod ggml_quant;
pub mod gguf;
pub mod iq_tables;
pub mod layer;
pub mod minifloat;
pub mod model;
pub mod packed;
pub mod quants;
pub mod resident;
pub mod rotation;
pub mod source;
pub mod spm;
pub mod stream;
pub mod tensor;
pub mod tokenizer;

pub use arch::{Arch, Family, InputProducer, Layout, LinearSpec, Role};
pub use config::{ModelConfig, MoeConfig, RopeScaling};
pub use layer::{DecoderLayer, LayerCache, LayerHook, LinearWeights, NoHook, Rope};
pub use model::{Model, ModelSource};
pub use source::TensorSource;
pub use tensor::Tensor;
