//! ember-model: GPT, BERT, seq2seq and LoRA on any Burn backend (library code takes a runtime `Device`).
//!
//! - [`config`]: TOML configs with one-line errors.
//! - [`gpt`]: GPT-2 family models; [`gpt_hf`]: HuggingFace GPT-2 checkpoints in and out.
//! - [`weights`]: safetensors and PyTorch checkpoint files.
//! - [`loss`]: cross-entropy with PyTorch's `-100` ignore index.
//! - [`sampling`] and [`generate`]: decoding (greedy, temperature, top-k, top-p).

pub mod classifier;
pub mod config;
pub mod generate;
pub mod gpt;
pub mod gpt_hf;
pub mod lora;
pub mod loss;
pub mod sampling;
pub mod weights;
