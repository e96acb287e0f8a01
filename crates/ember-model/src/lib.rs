//! ember-model: GPT, BERT, seq2seq and LoRA on any Burn backend (library code takes a runtime `Device`).
//!
//! - [`config`]: TOML configs with one-line errors.
//! - [`gpt`]: GPT-2 family models; [`gpt_hf`]: HuggingFace GPT-2 checkpoints in and out.
//! - [`bert`]: BERT encoders with MLM/NSP/pooler heads; [`bert_hf`]: HuggingFace BERT checkpoints.
//! - [`hf`]: what the HuggingFace importers share; [`layers`]: attention and tied heads.
//! - [`weights`]: safetensors and PyTorch checkpoint files.
//! - [`loss`]: cross-entropy with PyTorch's `-100` ignore index.
//! - [`sampling`] and [`generate`]: decoding (greedy, temperature, top-k, top-p).
//! - [`transformer_seq2seq`]: the transformer encoder–decoder (nn.Transformer layout), cached decoding.
//! - [`lstm_seq2seq`]: the LSTM encoder–decoder with optional Bahdanau attention.
//! - [`seq2seq`]: decoding both of them: greedy and beam search.

pub mod bert;
pub mod bert_hf;
pub mod classifier;
pub mod config;
pub mod generate;
pub mod gpt;
pub mod gpt_hf;
pub mod hf;
pub mod layers;
pub mod lora;
pub mod loss;
pub mod lstm_seq2seq;
pub mod sampling;
pub mod seq2seq;
pub mod transformer_seq2seq;
pub mod weights;
