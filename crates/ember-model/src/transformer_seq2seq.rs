//! The transformer encoder–decoder of "Attention Is All You Need" (Vaswani et al. 2017), laid
//! out as PyTorch's `nn.Transformer` (post-LayerNorm, ReLU feed-forward, a final LayerNorm after
//! each stack), so a plain-PyTorch model's `state_dict` loads into it.
//!
//! Source: `emb(ids)·√d_model + positions` → encoder layers (self-attention that ignores padded
//! source keys, then feed-forward, each `x = norm(x + sublayer(x))`) → final norm = memory.
//! Target: the same embedding scheme → decoder layers (causal self-attention, cross-attention
//! over the memory with the source padding hidden, feed-forward) → final norm → generator.
//!
//! Decoding caches the decoder's self-attention keys/values per step and computes the
//! cross-attention keys/values of the memory once ([`DecoderCache`]).

use std::path::Path;

use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Validate, check, config_from_toml, load_config};
use crate::hf::{HfError, read_checked, set_layer_norm, set_linear, transpose};
use crate::layers::{
    LayerCache, attention_keeping_weights, dropout, layer_norm, linear, lookup, split_heads,
};
use crate::weights::{HostTensor, TensorSet};

/// How positions enter the embeddings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Fixed sin/cos waves (sin on even dimensions, cos on odd, base 10000), not trained.
    #[default]
    Sinusoidal,
    /// A trained `[max_len, d_model]` table per side.
    Learned,
}

/// Hyper-parameters of a [`TransformerSeq2Seq`] (`configs/seq2seq/*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerSeq2SeqConfig {
    /// Source and target vocabulary sizes; 0 (or absent) in a training config: taken from the
    /// training data's vocabulary.
    #[serde(default)]
    pub src_vocab_size: usize,
    #[serde(default)]
    pub tgt_vocab_size: usize,
    /// Width of every hidden state.
    pub d_model: usize,
    /// Attention heads; must divide `d_model`.
    pub n_heads: usize,
    pub n_encoder_layers: usize,
    pub n_decoder_layers: usize,
    /// Width of the feed-forward layers.
    pub ff_dim: usize,
    /// Longest source or target sequence (positions).
    pub max_len: usize,
    #[serde(default)]
    pub positions: Positions,
    /// One embedding table for source and target (they must share the vocabulary).
    #[serde(default)]
    pub shared_embeddings: bool,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The padding id, hidden from attention (0).
    #[serde(default)]
    pub pad_id: u32,
}

fn default_eps() -> f64 {
    1e-5
}

impl Validate for TransformerSeq2SeqConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check::at_least_one(&[
            ("src_vocab_size", self.src_vocab_size),
            ("tgt_vocab_size", self.tgt_vocab_size),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_encoder_layers", self.n_encoder_layers),
            ("n_decoder_layers", self.n_decoder_layers),
            ("ff_dim", self.ff_dim),
            ("max_len", self.max_len),
        ])?;
        check::divisible(("d_model", self.d_model), ("n_heads", self.n_heads))?;
        check::probability("dropout", self.dropout)?;
        check::positive("layer_norm_eps", self.layer_norm_eps)?;
        if self.shared_embeddings && self.src_vocab_size != self.tgt_vocab_size {
            return Err(ConfigError::Invalid(format!(
                "shared_embeddings needs one vocabulary, but src_vocab_size is {} and tgt_vocab_size {}",
                self.src_vocab_size, self.tgt_vocab_size
            )));
        }
        Ok(())
    }
}

/// Multi-head attention with separate q/k/v projections (`nn.MultiheadAttention`'s
/// `in_proj_weight` split in three) and an output projection.
#[derive(Module, Debug)]
pub struct MultiHeadAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub out: Linear,
    drop: Dropout,
    n_heads: usize,
}

impl MultiHeadAttention {
    /// `x: [batch, queries, d]` attending over `keys`/`values` already split into heads
    /// `[batch, heads, keys, head_dim]`, `hide` broadcastable to `[batch, heads, queries, keys]`.
    fn attend(&self, x: Tensor<3>, k: Tensor<4>, v: Tensor<4>, hide: Tensor<4, Bool>) -> Tensor<3> {
        self.attend_keeping_weights(x, k, v, hide, false).0
    }

    /// [`attend`](Self::attend), with its weights averaged over the heads
    /// `[batch, queries, keys]` when `keep_weights`.
    fn attend_keeping_weights(
        &self,
        x: Tensor<3>,
        k: Tensor<4>,
        v: Tensor<4>,
        hide: Tensor<4, Bool>,
        keep_weights: bool,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let q = split_heads(linear(&self.query, x), self.n_heads);
        let (out, weights) = attention_keeping_weights(q, k, v, hide, &self.drop, keep_weights);
        let mean = weights.map(|weights| {
            let [batch, _, queries, keys] = weights.dims();
            weights.mean_dim(1).reshape([batch, queries, keys])
        });
        (linear(&self.out, out), mean)
    }

    /// Keys and values of `source: [batch, keys, d]`, split into heads.
    fn keys_values(&self, source: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        (
            split_heads(linear(&self.key, source.clone()), self.n_heads),
            split_heads(linear(&self.value, source), self.n_heads),
        )
    }
}

/// `norm(x + drop(linear2(relu(linear1(x)))))`.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm: LayerNorm,
    drop: Dropout,
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = dropout(&self.drop, relu(linear(&self.linear1, x.clone())));
        let y = linear(&self.linear2, hidden);
        layer_norm(&self.norm, x + dropout(&self.drop, y))
    }
}

#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: MultiHeadAttention,
    pub norm1: LayerNorm,
    pub ff: FeedForward,
    drop: Dropout,
}

impl EncoderLayer {
    /// `x: [batch, src, d]`, `hide: [batch, 1, 1, src]` → `[batch, src, d]`.
    fn forward(&self, x: Tensor<3>, hide: Tensor<4, Bool>) -> Tensor<3> {
        let (k, v) = self.self_attn.keys_values(x.clone());
        let a = self.self_attn.attend(x.clone(), k, v, hide);
        self.ff
            .forward(layer_norm(&self.norm1, x + dropout(&self.drop, a)))
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: MultiHeadAttention,
    pub norm1: LayerNorm,
    pub cross_attn: MultiHeadAttention,
    pub norm2: LayerNorm,
    pub ff: FeedForward,
    drop: Dropout,
}

impl DecoderLayer {
    /// One decoder layer over `x: [batch, tgt, d]` given its self-attention keys/values (the
    /// cached past followed by `x`'s own) and the memory's cross-attention keys/values. With
    /// `cross_weights`, also the cross-attention weights `[batch, tgt, src]` (mean over heads).
    fn forward(
        &self,
        x: Tensor<3>,
        self_kv: (Tensor<4>, Tensor<4>),
        self_hide: Tensor<4, Bool>,
        cross_kv: (Tensor<4>, Tensor<4>),
        memory_hide: Tensor<4, Bool>,
        cross_weights: bool,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let a = self
            .self_attn
            .attend(x.clone(), self_kv.0, self_kv.1, self_hide);
        let x = layer_norm(&self.norm1, x + dropout(&self.drop, a));
        let (c, weights) = self.cross_attn.attend_keeping_weights(
            x.clone(),
            cross_kv.0,
            cross_kv.1,
            memory_hide,
            cross_weights,
        );
        let x = layer_norm(&self.norm2, x + dropout(&self.drop, c));
        (self.ff.forward(x), weights)
    }
}

/// The encoder–decoder with its embeddings and generator.
#[derive(Module, Debug)]
pub struct TransformerSeq2Seq {
    /// `[src_vocab, d]`; also the target table when embeddings are shared.
    pub src_emb: Embedding,
    pub tgt_emb: Option<Embedding>,
    /// Learned positions `[max_len, d]` (source, target); `None` for sinusoidal ones.
    pub src_pos: Option<Embedding>,
    pub tgt_pos: Option<Embedding>,
    pub encoder: Vec<EncoderLayer>,
    pub encoder_norm: LayerNorm,
    pub decoder: Vec<DecoderLayer>,
    pub decoder_norm: LayerNorm,
    /// `[d, tgt_vocab]`.
    pub generator: Linear,
    drop: Dropout,
    d_model: usize,
    max_len: usize,
    pad_id: u32,
}

/// Decoder state carried between steps: per layer, the self-attention keys/values of the
/// target so far (written in place, as GPT's cache) and the memory's cross-attention
/// keys/values `[batch, heads, src, head_dim]`.
#[derive(Clone, Debug)]
pub struct DecoderCache {
    self_kv: Vec<Option<LayerCache>>,
    cross_kv: Vec<(Tensor<4>, Tensor<4>)>,
    memory_hide: Tensor<4, Bool>,
    /// Target positions already decoded.
    pub len: usize,
    /// The last layer's cross-attention weights `[batch, src]` (mean over heads) of the last
    /// step.
    pub last_attention: Option<Tensor<2>>,
}

impl DecoderCache {
    /// The cache of rows `rows: [n]` (beam search).
    pub fn select_rows(&self, rows: Tensor<1, Int>) -> Self {
        let pick4 = |t: &Tensor<4>| t.clone().select(0, rows.clone());
        let pair = |(k, v): &(Tensor<4>, Tensor<4>)| (pick4(k), pick4(v));
        Self {
            self_kv: self
                .self_kv
                .iter()
                .map(|layer| layer.as_ref().map(|layer| layer.select_rows(rows.clone())))
                .collect(),
            cross_kv: self.cross_kv.iter().map(pair).collect(),
            memory_hide: self.memory_hide.clone().select(0, rows.clone()),
            len: self.len,
            last_attention: self
                .last_attention
                .clone()
                .map(|a| a.select(0, rows.clone())),
        }
    }
}

/// `linear` with its bias set to zero (PyTorch's `nn.MultiheadAttention` and `nn.Transformer`
/// start biases at 0).
fn zero_bias(mut linear: Linear) -> Linear {
    if let Some(bias) = &linear.bias {
        linear.bias = Some(burn::module::Param::from_tensor(bias.val().zeros_like()));
    }
    linear
}

/// `[len, d]` sinusoidal positions: `pe[p, 2i] = sin(p / 10000^(2i/d))`, `pe[p, 2i+1] = cos(…)`.
pub fn sinusoidal_positions(start: usize, len: usize, d: usize, device: &Device) -> Tensor<2> {
    let mut data = vec![0f32; len * d];
    for p in 0..len {
        for i in (0..d).step_by(2) {
            // Computed in f32 as PyTorch does: exp(i · -ln(10000)/d).
            let div = ((i as f32) * (-(10000f32).ln() / d as f32)).exp();
            let angle = (start + p) as f32 * div;
            data[p * d + i] = angle.sin();
            if i + 1 < d {
                data[p * d + i + 1] = angle.cos();
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [len, d]), device)
}

impl TransformerSeq2SeqConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_config(path)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        config_from_toml(text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        Validate::validate(self)
    }

    /// A randomly initialised model: matrices Xavier-uniform as `nn.Transformer`, embeddings
    /// N(0, d^-½) (so `·√d` gives unit scale), biases 0, norms (1, 0).
    pub fn init(&self, device: &Device) -> TransformerSeq2Seq {
        let d = self.d_model;
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device)
        };
        let lin = |i, o| zero_bias(linear(i, o));
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let drop = || DropoutConfig::new(self.dropout).init();
        let mha = || MultiHeadAttention {
            query: lin(d, d),
            key: lin(d, d),
            value: lin(d, d),
            out: lin(d, d),
            drop: drop(),
            n_heads: self.n_heads,
        };
        let encoder = (0..self.n_encoder_layers)
            .map(|_| EncoderLayer {
                self_attn: mha(),
                norm1: norm(),
                ff: FeedForward {
                    linear1: lin(d, self.ff_dim),
                    linear2: lin(self.ff_dim, d),
                    norm: norm(),
                    drop: drop(),
                },
                drop: drop(),
            })
            .collect();
        let decoder = (0..self.n_decoder_layers)
            .map(|_| DecoderLayer {
                self_attn: mha(),
                norm1: norm(),
                cross_attn: mha(),
                norm2: norm(),
                ff: FeedForward {
                    linear1: lin(d, self.ff_dim),
                    linear2: lin(self.ff_dim, d),
                    norm: norm(),
                    drop: drop(),
                },
                drop: drop(),
            })
            .collect();
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: (d as f64).powf(-0.5),
                })
                .init(device)
        };
        let learned = self.positions == Positions::Learned;
        TransformerSeq2Seq {
            src_emb: embedding(self.src_vocab_size),
            tgt_emb: (!self.shared_embeddings).then(|| embedding(self.tgt_vocab_size)),
            src_pos: learned.then(|| embedding(self.max_len)),
            tgt_pos: learned.then(|| embedding(self.max_len)),
            encoder,
            encoder_norm: norm(),
            decoder,
            decoder_norm: norm(),
            generator: lin(d, self.tgt_vocab_size),
            drop: drop(),
            d_model: d,
            max_len: self.max_len,
            pad_id: self.pad_id,
        }
    }
}

impl TransformerSeq2Seq {
    pub fn device(&self) -> Device {
        self.src_emb.weight.val().device()
    }

    /// Longest source or target sequence.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// `emb(ids)·√d + positions[start..start+len]`, dropout.
    fn embed(
        &self,
        table: &Embedding,
        positions: &Option<Embedding>,
        ids: Tensor<2, Int>,
        start: usize,
    ) -> Tensor<3> {
        let [batch, len] = ids.dims();
        let device = ids.device();
        let x = lookup(table, ids).mul_scalar((self.d_model as f32).sqrt());
        let pos = match positions {
            Some(table) => {
                let index = Tensor::<1, Int>::arange(start as i64..(start + len) as i64, &device)
                    .reshape([1, len]);
                lookup(table, index)
            }
            None => sinusoidal_positions(start, len, self.d_model, &device).reshape([
                1,
                len,
                self.d_model,
            ]),
        };
        dropout(&self.drop, x + pos.expand([batch, len, self.d_model]))
    }

    /// `[batch, src]` → `[batch, 1, 1, src]`, true at padded source keys.
    pub fn source_hide(&self, src: Tensor<2, Int>) -> Tensor<4, Bool> {
        let [batch, len] = src.dims();
        src.equal_elem(self.pad_id as i64)
            .reshape([batch, 1, 1, len])
    }

    /// The memory `[batch, src, d]` of source ids `[batch, src]` (padding = `pad_id`).
    ///
    /// # Panics
    /// When the source is longer than `max_len` (callers check lengths first).
    pub fn encode(&self, src: Tensor<2, Int>) -> Tensor<3> {
        assert!(src.dims()[1] <= self.max_len, "source longer than max_len");
        let hide = self.source_hide(src.clone());
        let mut x = self.embed(&self.src_emb, &self.src_pos, src, 0);
        for layer in &self.encoder {
            x = layer.forward(x, hide.clone());
        }
        layer_norm(&self.encoder_norm, x)
    }

    /// Teacher-forced logits `[batch, tgt, tgt_vocab]` of target inputs `tgt: [batch, tgt]`
    /// (starting with the begin token) over `memory` of `src`.
    pub fn decode(&self, tgt: Tensor<2, Int>, memory: Tensor<3>, src: Tensor<2, Int>) -> Tensor<3> {
        let [batch, len] = tgt.dims();
        assert!(len <= self.max_len, "target longer than max_len");
        let device = tgt.device();
        let causal = Tensor::<2, Bool>::tril_mask([len, len], 0, &device).reshape([1, 1, len, len]);
        let padded = tgt
            .clone()
            .equal_elem(self.pad_id as i64)
            .reshape([batch, 1, 1, len]);
        let self_hide = causal
            .expand([batch, 1, len, len])
            .bool_or(padded.expand([batch, 1, len, len]));
        let mut cache = self.start_decoding(memory, src);
        let x = self.decoder_stack(tgt, self_hide, &mut cache, false);
        linear(&self.generator, x)
    }

    /// Logits of `forward(src, tgt)`: encode, then decode with teacher forcing.
    pub fn forward(&self, src: Tensor<2, Int>, tgt: Tensor<2, Int>) -> Tensor<3> {
        let memory = self.encode(src.clone());
        self.decode(tgt, memory, src)
    }

    /// A cache with the memory's cross-attention keys/values computed once.
    pub fn start_decoding(&self, memory: Tensor<3>, src: Tensor<2, Int>) -> DecoderCache {
        let cross_kv = self
            .decoder
            .iter()
            .map(|layer| layer.cross_attn.keys_values(memory.clone()))
            .collect();
        DecoderCache {
            self_kv: Vec::new(),
            cross_kv,
            memory_hide: self.source_hide(src),
            len: 0,
            last_attention: None,
        }
    }

    /// Runs the decoder layers over `tgt` (positions `cache.len..`); returns the final-normed
    /// hidden states `[batch, t, d]`. When `decoding`, appends `tgt`'s keys/values to the cache
    /// and, for a one-token step, records the last layer's cross-attention; teacher forcing
    /// (training) attends over `tgt`'s own keys/values and keeps nothing.
    fn decoder_stack(
        &self,
        tgt: Tensor<2, Int>,
        self_hide: Tensor<4, Bool>,
        cache: &mut DecoderCache,
        decoding: bool,
    ) -> Tensor<3> {
        let table = self.tgt_emb.as_ref().unwrap_or(&self.src_emb);
        let len = tgt.dims()[1];
        let mut x = self.embed(table, &self.tgt_pos, tgt, cache.len);
        for (i, layer) in self.decoder.iter().enumerate() {
            let (mut k, mut v) = layer.self_attn.keys_values(x.clone());
            if decoding {
                if cache.self_kv.len() <= i {
                    cache.self_kv.push(None);
                }
                (k, v) = LayerCache::extend(&mut cache.self_kv[i], k, v);
            }
            let last_step = decoding && i + 1 == self.decoder.len() && len == 1;
            let (out, weights) = layer.forward(
                x,
                (k, v),
                self_hide.clone(),
                cache.cross_kv[i].clone(),
                cache.memory_hide.clone(),
                last_step,
            );
            if let Some(weights) = weights {
                let [batch, _, keys] = weights.dims();
                cache.last_attention = Some(weights.reshape([batch, keys]));
            }
            x = out;
        }
        if decoding {
            cache.len += len;
        }
        layer_norm(&self.decoder_norm, x)
    }

    /// One cached decoding step: `tokens: [batch]` at position `cache.len` → logits
    /// `[batch, tgt_vocab]`. Earlier positions are never recomputed.
    pub fn decode_step(&self, tokens: Tensor<1, Int>, cache: &mut DecoderCache) -> Tensor<2> {
        let batch = tokens.dims()[0];
        let device = tokens.device();
        // The new position sees every earlier one (all real: decoding never pads inside).
        let hide = Tensor::<4, Bool>::from_data(
            TensorData::new(vec![false; cache.len + 1], [1, 1, 1, cache.len + 1]),
            &device,
        );
        let x = self.decoder_stack(tokens.reshape([batch, 1]), hide, cache, true);
        let vocab = self.generator.weight.dims()[1];
        self.generator.forward(x).reshape([batch, vocab])
    }

    /// Loads a plain-PyTorch `state_dict` in safetensors laid out as `nn.Transformer` +
    /// `src_emb`/`tgt_emb`/`generator` (the names of `shared/fixtures/tiny-seq2seq`); the shapes
    /// must match `config`.
    pub fn load_torch(
        config: &TransformerSeq2SeqConfig,
        path: &Path,
        device: &Device,
    ) -> Result<Self, HfError> {
        let weights = TensorSet::open(path)?;
        let mut model = config.init(device);
        let d = config.d_model;
        let read = |name: &str, shape: &[usize]| read_checked(&weights, name, shape);
        let set_lin = |l: &mut Linear, name: &str, o: usize, i: usize| -> Result<(), HfError> {
            let w = read(&format!("{name}.weight"), &[o, i])?;
            let b = read(&format!("{name}.bias"), &[o])?;
            set_linear(l, transpose(&w), b, device);
            Ok(())
        };
        let set_norm = |n: &mut LayerNorm, name: &str| -> Result<(), HfError> {
            set_layer_norm(
                n,
                read(&format!("{name}.weight"), &[d])?,
                read(&format!("{name}.bias"), &[d])?,
                device,
            );
            Ok(())
        };
        let set_mha = |m: &mut MultiHeadAttention, name: &str| -> Result<(), HfError> {
            let w = read(&format!("{name}.in_proj_weight"), &[3 * d, d])?;
            let b = read(&format!("{name}.in_proj_bias"), &[3 * d])?;
            for (slot, part) in [&mut m.query, &mut m.key, &mut m.value]
                .into_iter()
                .zip(0..3)
            {
                let rows = HostTensor::new(
                    vec![d, d],
                    w.data[part * d * d..(part + 1) * d * d].to_vec(),
                );
                let bias = HostTensor::new(vec![d], b.data[part * d..(part + 1) * d].to_vec());
                set_linear(slot, transpose(&rows), bias, device);
            }
            set_lin(&mut m.out, &format!("{name}.out_proj"), d, d)
        };
        let ff = config.ff_dim;
        for (i, layer) in model.encoder.iter_mut().enumerate() {
            let p = format!("transformer.encoder.layers.{i}");
            set_mha(&mut layer.self_attn, &format!("{p}.self_attn"))?;
            set_norm(&mut layer.norm1, &format!("{p}.norm1"))?;
            set_lin(&mut layer.ff.linear1, &format!("{p}.linear1"), ff, d)?;
            set_lin(&mut layer.ff.linear2, &format!("{p}.linear2"), d, ff)?;
            set_norm(&mut layer.ff.norm, &format!("{p}.norm2"))?;
        }
        for (i, layer) in model.decoder.iter_mut().enumerate() {
            let p = format!("transformer.decoder.layers.{i}");
            set_mha(&mut layer.self_attn, &format!("{p}.self_attn"))?;
            set_norm(&mut layer.norm1, &format!("{p}.norm1"))?;
            set_mha(&mut layer.cross_attn, &format!("{p}.multihead_attn"))?;
            set_norm(&mut layer.norm2, &format!("{p}.norm2"))?;
            set_lin(&mut layer.ff.linear1, &format!("{p}.linear1"), ff, d)?;
            set_lin(&mut layer.ff.linear2, &format!("{p}.linear2"), d, ff)?;
            set_norm(&mut layer.ff.norm, &format!("{p}.norm3"))?;
        }
        set_norm(&mut model.encoder_norm, "transformer.encoder.norm")?;
        set_norm(&mut model.decoder_norm, "transformer.decoder.norm")?;
        set_lin(&mut model.generator, "generator", config.tgt_vocab_size, d)?;
        model.src_emb.weight =
            crate::hf::param(read("src_emb.weight", &[config.src_vocab_size, d])?, device);
        if let Some(tgt) = &mut model.tgt_emb {
            tgt.weight =
                crate::hf::param(read("tgt_emb.weight", &[config.tgt_vocab_size, d])?, device);
        }
        Ok(model)
    }
}
