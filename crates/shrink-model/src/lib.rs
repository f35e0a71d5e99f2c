//! shrink-model: model loading and a layer-at-a-time forward pass for the Llama family.
pub mod gguf;
pub mod quants;
