//! The RNN encoder–decoder (Sutskever et al. 2014) with optional additive attention (Bahdanau
//! et al. 2015), with PyTorch `nn.LSTM`'s gates and parameter layout so a plain-PyTorch model
//! loads into it.
//!
//! Encoder: `src_emb(src)` → `n_layers` LSTM layers (optionally a backward direction too) from
//! a zero state; padded source positions leave the state unchanged, so each row's final state is
//! the one after its last real token. Decoder: `tgt_emb(y)` (with attention, concatenated with
//! the context vector) → `n_layers` LSTM layers starting from the encoder's final forward
//! states → generator. Attention: `score_j = vᵀ tanh(W₁ h_dec + W₂ h_enc_j)` over the real
//! source positions, with `h_dec` the decoder's top hidden state before the step.

use std::path::Path;

use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax, tanh};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Validate, check, config_from_toml, load_config};
use crate::hf::{HfError, param, read_checked, set_linear, transpose};
use crate::layers::{dropout, lookup};
use crate::weights::TensorSet;

/// Hyper-parameters of an [`LstmSeq2Seq`] (`configs/seq2seq/*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmSeq2SeqConfig {
    /// Source and target vocabulary sizes; 0 (or absent) in a training config: taken from the
    /// training data's vocabulary.
    #[serde(default)]
    pub src_vocab_size: usize,
    #[serde(default)]
    pub tgt_vocab_size: usize,
    /// Width of the token embeddings.
    pub emb_dim: usize,
    /// Width of every LSTM state.
    pub hidden: usize,
    pub n_layers: usize,
    /// Also run the encoder backwards; attention then reads both directions.
    #[serde(default)]
    pub bidirectional: bool,
    /// Bahdanau attention over the encoder outputs.
    #[serde(default)]
    pub attention: bool,
    /// Dropout between layers and on the decoder output while training.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub pad_id: u32,
}

impl Validate for LstmSeq2SeqConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check::at_least_one(&[
            ("src_vocab_size", self.src_vocab_size),
            ("tgt_vocab_size", self.tgt_vocab_size),
            ("emb_dim", self.emb_dim),
            ("hidden", self.hidden),
            ("n_layers", self.n_layers),
        ])?;
        check::probability("dropout", self.dropout)
    }
}

/// One LSTM layer, PyTorch's gates: `[i f g o] = W_ih x + b_ih + W_hh h + b_hh`,
/// `c' = σ(f)·c + σ(i)·tanh(g)`, `h' = σ(o)·tanh(c')`.
#[derive(Module, Debug)]
pub struct LstmLayer {
    /// `[in, 4·hidden]` with bias `b_ih`.
    pub input: Linear,
    /// `[hidden, 4·hidden]` with bias `b_hh`.
    pub recurrent: Linear,
    hidden: usize,
}

impl LstmLayer {
    fn new(d_in: usize, hidden: usize, device: &Device) -> Self {
        // PyTorch: every weight and bias U(-1/√hidden, 1/√hidden).
        let bound = 1.0 / (hidden as f64).sqrt();
        let init = burn::nn::Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let linear = |i: usize| {
            LinearConfig::new(i, 4 * hidden)
                .with_initializer(init.clone())
                .init(device)
        };
        Self {
            input: linear(d_in),
            recurrent: linear(hidden),
            hidden,
        }
    }

    /// One step from the input projection `x_proj = W_ih x + b_ih` `[batch, 4h]`.
    fn step(&self, x_proj: Tensor<2>, h: Tensor<2>, c: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let gates = x_proj + self.recurrent.forward(h);
        let [i, f, g, o] =
            [0, 1, 2, 3].map(|k| gates.clone().narrow(1, k * self.hidden, self.hidden));
        let c = sigmoid(f) * c + sigmoid(i) * tanh(g);
        let h = sigmoid(o) * tanh(c.clone());
        (h, c)
    }

    /// Runs over `xs: [batch, t, in]` in `order`, starting from `(h, c)`; `keep[s]` `[batch, 1]`
    /// is 1 where step `s` is real and 0 where it is padding (the state then stays). Returns the
    /// outputs `[batch, t, h]` in time order and the final state.
    fn run(
        &self,
        xs: Tensor<3>,
        state: (Tensor<2>, Tensor<2>),
        keep: &[Tensor<2>],
        reverse: bool,
    ) -> (Tensor<3>, (Tensor<2>, Tensor<2>)) {
        let [batch, len, _] = xs.dims();
        let proj = self.input.forward(xs); // [batch, t, 4h], all steps at once
        let (mut h, mut c) = state;
        let mut outputs = vec![None; len];
        let steps: Vec<usize> = if reverse {
            (0..len).rev().collect()
        } else {
            (0..len).collect()
        };
        for s in steps {
            let x = proj
                .clone()
                .narrow(1, s, 1)
                .reshape([batch, 4 * self.hidden]);
            let (h_new, c_new) = self.step(x, h.clone(), c.clone());
            let k = keep[s].clone();
            let skip = k.clone().neg().add_scalar(1.0);
            h = h_new * k.clone() + h * skip.clone();
            c = c_new * k + c * skip;
            outputs[s] = Some(h.clone());
        }
        let outputs: Vec<Tensor<2>> = outputs
            .into_iter()
            .map(|o| o.expect("every step ran"))
            .collect();
        (Tensor::stack(outputs, 1), (h, c))
    }
}

/// Additive attention: `score_j = vᵀ tanh(W₁ q + W₂ k_j)`.
#[derive(Module, Debug)]
pub struct BahdanauAttention {
    /// `W₁`: `[hidden, attn]` on the decoder state.
    pub query: Linear,
    /// `W₂`: `[enc, attn]` on each encoder output (computed once per source).
    pub key: Linear,
    /// `v`: `[attn, 1]`.
    pub score: Linear,
}

/// The encoder–decoder.
#[derive(Module, Debug)]
pub struct LstmSeq2Seq {
    pub src_emb: Embedding,
    pub tgt_emb: Embedding,
    pub encoder: Vec<LstmLayer>,
    /// Backward encoder layers when bidirectional.
    pub encoder_backward: Vec<LstmLayer>,
    pub decoder: Vec<LstmLayer>,
    pub attention: Option<BahdanauAttention>,
    /// `[hidden, tgt_vocab]`.
    pub generator: Linear,
    drop: Dropout,
    pad_id: u32,
}

/// The decoder's state between steps: per layer `(h, c)` `[batch, hidden]`, and for
/// attention the encoder outputs `[batch, src, enc]`, their projections `W₂ h_enc` and the
/// source padding.
#[derive(Clone, Debug)]
pub struct LstmState {
    pub layers: Vec<(Tensor<2>, Tensor<2>)>,
    memory: Option<(Tensor<3>, Tensor<3>, Tensor<2, Bool>)>,
    /// The attention weights `[batch, src]` of the last step (for plots).
    pub last_attention: Option<Tensor<2>>,
}

impl LstmState {
    /// The state of rows `rows: [n]` (beam search).
    pub fn select_rows(&self, rows: Tensor<1, Int>) -> Self {
        let pick = |t: &Tensor<2>| t.clone().select(0, rows.clone());
        Self {
            layers: self
                .layers
                .iter()
                .map(|(h, c)| (pick(h), pick(c)))
                .collect(),
            memory: self.memory.as_ref().map(|(outputs, keys, hide)| {
                (
                    outputs.clone().select(0, rows.clone()),
                    keys.clone().select(0, rows.clone()),
                    hide.clone().select(0, rows.clone()),
                )
            }),
            last_attention: self.last_attention.as_ref().map(pick),
        }
    }
}

impl LstmSeq2SeqConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_config(path)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        config_from_toml(text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        Validate::validate(self)
    }

    /// Width of the encoder outputs attention reads.
    fn enc_width(&self) -> usize {
        self.hidden * if self.bidirectional { 2 } else { 1 }
    }

    /// A randomly initialised model (PyTorch's LSTM init; embeddings N(0, 1)).
    pub fn init(&self, device: &Device) -> LstmSeq2Seq {
        let h = self.hidden;
        let layers = |first: usize| {
            (0..self.n_layers)
                .map(|l| LstmLayer::new(if l == 0 { first } else { h }, h, device))
                .collect::<Vec<_>>()
        };
        let dec_in = self.emb_dim + if self.attention { self.enc_width() } else { 0 };
        LstmSeq2Seq {
            src_emb: EmbeddingConfig::new(self.src_vocab_size, self.emb_dim).init(device),
            tgt_emb: EmbeddingConfig::new(self.tgt_vocab_size, self.emb_dim).init(device),
            encoder: layers(self.emb_dim),
            encoder_backward: if self.bidirectional {
                layers(self.emb_dim)
            } else {
                Vec::new()
            },
            decoder: layers(dec_in),
            attention: self.attention.then(|| BahdanauAttention {
                query: LinearConfig::new(h, h).with_bias(false).init(device),
                key: LinearConfig::new(self.enc_width(), h).init(device),
                score: LinearConfig::new(h, 1).with_bias(false).init(device),
            }),
            generator: LinearConfig::new(h, self.tgt_vocab_size).init(device),
            drop: DropoutConfig::new(self.dropout).init(),
            pad_id: self.pad_id,
        }
    }
}

impl LstmSeq2Seq {
    pub fn device(&self) -> Device {
        self.src_emb.weight.val().device()
    }

    fn hidden(&self) -> usize {
        self.encoder[0].hidden
    }

    /// Encodes `src: [batch, src]` (padding = `pad_id`, at the end of rows): the encoder
    /// outputs `[batch, src, enc]` and the final `(h, c)` per layer of the forward direction.
    pub fn encode(&self, src: Tensor<2, Int>) -> (Tensor<3>, Vec<(Tensor<2>, Tensor<2>)>) {
        let [batch, len] = src.dims();
        let device = src.device();
        let real = src.clone().not_equal_elem(self.pad_id as i64).float(); // [batch, src]
        let keep: Vec<Tensor<2>> = (0..len).map(|s| real.clone().narrow(1, s, 1)).collect();
        let zeros = || Tensor::<2>::zeros([batch, self.hidden()], &device);
        let emb = lookup(&self.src_emb, src);
        let mut x = emb.clone();
        let mut finals = Vec::new();
        for (l, layer) in self.encoder.iter().enumerate() {
            let input = if l == 0 { x } else { dropout(&self.drop, x) };
            let (out, state) = layer.run(input, (zeros(), zeros()), &keep, false);
            finals.push(state);
            x = out;
        }
        if self.encoder_backward.is_empty() {
            return (x, finals);
        }
        let mut back = emb;
        for (l, layer) in self.encoder_backward.iter().enumerate() {
            let input = if l == 0 {
                back
            } else {
                dropout(&self.drop, back)
            };
            back = layer.run(input, (zeros(), zeros()), &keep, true).0;
        }
        (Tensor::cat(vec![x, back], 2), finals)
    }

    /// The decoder's starting state for the source `src`.
    pub fn start(&self, src: Tensor<2, Int>) -> LstmState {
        let hide = src.clone().equal_elem(self.pad_id as i64);
        let (outputs, layers) = self.encode(src);
        let memory = self.attention.as_ref().map(|attn| {
            let keys = attn.key.forward(outputs.clone());
            (outputs, keys, hide)
        });
        LstmState {
            layers,
            memory,
            last_attention: None,
        }
    }

    /// The context vector `[batch, enc]` for the decoder's top state, and the weights.
    fn attend(&self, state: &LstmState) -> Option<(Tensor<2>, Tensor<2>)> {
        let attn = self.attention.as_ref()?;
        let (outputs, keys, hide) = state.memory.as_ref()?;
        let [batch, len, width] = outputs.dims();
        let query = state.layers.last().expect("layers").0.clone();
        let q = attn
            .query
            .forward(query)
            .reshape([batch, 1, keys.dims()[2]]);
        let scores = attn
            .score
            .forward(tanh(keys.clone() + q))
            .reshape([batch, len])
            .mask_fill(hide.clone(), f32::MIN);
        let weights = softmax(scores, 1);
        let context = weights
            .clone()
            .reshape([batch, 1, len])
            .matmul(outputs.clone())
            .reshape([batch, width]);
        Some((context, weights))
    }

    /// One decoding step: `tokens: [batch]` → logits `[batch, tgt_vocab]`, updating `state`.
    pub fn decode_step(&self, tokens: Tensor<1, Int>, state: &mut LstmState) -> Tensor<2> {
        let batch = tokens.dims()[0];
        let emb = lookup(&self.tgt_emb, tokens.reshape([batch, 1]));
        let mut x = emb.reshape([batch, self.tgt_emb.weight.dims()[1]]);
        if let Some((context, weights)) = self.attend(state) {
            x = Tensor::cat(vec![x, context], 1);
            state.last_attention = Some(weights);
        }
        for (l, layer) in self.decoder.iter().enumerate() {
            let input = if l == 0 { x } else { dropout(&self.drop, x) };
            let (h, c) = state.layers[l].clone();
            let next = layer.step(layer.input.forward(input), h, c);
            x = next.0.clone();
            state.layers[l] = next;
        }
        self.generator.forward(dropout(&self.drop, x))
    }

    /// Teacher-forced logits `[batch, tgt, tgt_vocab]` of target inputs `tgt: [batch, tgt]`.
    pub fn forward(&self, src: Tensor<2, Int>, tgt: Tensor<2, Int>) -> Tensor<3> {
        let [batch, len] = tgt.dims();
        let mut state = self.start(src);
        let steps: Vec<Tensor<2>> = (0..len)
            .map(|t| {
                let tokens = tgt.clone().narrow(1, t, 1).reshape([batch]);
                self.decode_step(tokens, &mut state)
            })
            .collect();
        Tensor::stack(steps, 1)
    }

    /// Loads a plain-PyTorch `state_dict` in safetensors (`src_emb`, `tgt_emb`, `encoder` and
    /// `decoder` as `nn.LSTM`s, `generator`; the names of `shared/fixtures/tiny-seq2seq`).
    /// Attention and backward layers, which that layout lacks, must be off in `config`.
    pub fn load_torch(
        config: &LstmSeq2SeqConfig,
        path: &Path,
        device: &Device,
    ) -> Result<Self, HfError> {
        if config.attention || config.bidirectional {
            return Err(HfError::Config {
                path: path.to_path_buf(),
                message: "PyTorch LSTM files load into models without attention or backward layers"
                    .into(),
            });
        }
        let weights = TensorSet::open(path)?;
        let mut model = config.init(device);
        let (h, e) = (config.hidden, config.emb_dim);
        let read = |name: &str, shape: &[usize]| read_checked(&weights, name, shape);
        let load_lstm = |layers: &mut [LstmLayer], name: &str| -> Result<(), HfError> {
            for (l, layer) in layers.iter_mut().enumerate() {
                let d_in = if l == 0 { e } else { h };
                let w_ih = read(&format!("{name}.weight_ih_l{l}"), &[4 * h, d_in])?;
                let b_ih = read(&format!("{name}.bias_ih_l{l}"), &[4 * h])?;
                let w_hh = read(&format!("{name}.weight_hh_l{l}"), &[4 * h, h])?;
                let b_hh = read(&format!("{name}.bias_hh_l{l}"), &[4 * h])?;
                set_linear(&mut layer.input, transpose(&w_ih), b_ih, device);
                set_linear(&mut layer.recurrent, transpose(&w_hh), b_hh, device);
            }
            Ok(())
        };
        load_lstm(&mut model.encoder, "encoder")?;
        load_lstm(&mut model.decoder, "decoder")?;
        model.src_emb.weight = param(read("src_emb.weight", &[config.src_vocab_size, e])?, device);
        model.tgt_emb.weight = param(read("tgt_emb.weight", &[config.tgt_vocab_size, e])?, device);
        let w = read("generator.weight", &[config.tgt_vocab_size, h])?;
        let b = read("generator.bias", &[config.tgt_vocab_size])?;
        set_linear(&mut model.generator, transpose(&w), b, device);
        Ok(model)
    }
}
