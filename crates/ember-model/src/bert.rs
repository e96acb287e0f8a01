//! BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
//! Language Understanding"), as HuggingFace's `BertModel` computes it.
//!
//! word + position + token-type embeddings → LayerNorm → dropout → `num_hidden_layers`
//! post-LayerNorm encoder layers (bidirectional self-attention that ignores padded keys, then a
//! GELU feed-forward, each added to its input *before* the LayerNorm) → hidden states. Heads on
//! top, each optional so one type loads every HF variant: the pooler (dense + tanh on `[CLS]`),
//! the masked-LM head (dense, GELU, LayerNorm, decoder tied to the word embeddings, own bias)
//! and the next-sentence head (2-way on the pooled output).
//!
//! Field names follow HF's key tree (`embeddings.word_embeddings`, `encoder.layer.N.attention.
//! self.query`, …) closely enough that [`crate::bert_hf`] is a short mapping. Config fields
//! carry HF's `config.json` names, so a preset and a checkpoint's config read the same.

use std::path::Path;

use burn::module::{Param, ParamGroup};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Gelu, Initializer, LayerNorm,
    LayerNormConfig, Linear, LinearConfig,
};
use burn::prelude::*;
use burn::tensor::activation::tanh;
use serde::{Deserialize, Serialize};

use crate::classifier::Trainable;
use crate::config::{ConfigError, Validate, check, config_from_toml, load_config};
use crate::layers::{
    attention, dropout, layer_norm, linear, lookup, padding_hide, split_heads, tied_logits,
};
use crate::loss::cross_entropy;

/// Hyper-parameters of a BERT encoder (`configs/models/bert-*.toml`, or HF `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    /// Number of WordPiece ids (30,522 for bert-base-uncased).
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer (4 × hidden_size in the published models).
    pub intermediate_size: usize,
    /// Longest sequence the position embedding covers (512).
    pub max_position_embeddings: usize,
    /// Number of segment ids (2: sentence A and B).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (1e-12 in BERT).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Feed-forward activation: `gelu` (exact erf, BERT's) or `gelu_new` (tanh approximation).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Dropout on embeddings and on both residual branches during training.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention weights during training.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// The id of `[PAD]`.
    #[serde(default)]
    pub pad_token_id: u32,
}

fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}

/// Which heads a [`Bert`] carries on top of the encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BertHeads {
    /// Dense + tanh on the `[CLS]` hidden state (sentence classification, NSP).
    pub pooler: bool,
    /// Masked-language-model head.
    pub mlm: bool,
    /// Next-sentence-prediction head (needs the pooler).
    pub nsp: bool,
}

impl BertHeads {
    /// What `BertForPreTraining` has: pooler, MLM and NSP.
    pub const PRETRAINING: Self = Self {
        pooler: true,
        mlm: true,
        nsp: true,
    };
}

impl Validate for BertConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check::at_least_one(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ])?;
        check::divisible(
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
        )?;
        check::probability("hidden_dropout_prob", self.hidden_dropout_prob)?;
        check::probability(
            "attention_probs_dropout_prob",
            self.attention_probs_dropout_prob,
        )?;
        check::positive("layer_norm_eps", self.layer_norm_eps)?;
        if (self.pad_token_id as usize) >= self.vocab_size {
            return Err(ConfigError::Invalid(format!(
                "pad_token_id {} is not below vocab_size {}",
                self.pad_token_id, self.vocab_size
            )));
        }
        self.activation().map(|_| ())
    }
}

impl BertConfig {
    /// Reads and validates a TOML config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_config(path)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        config_from_toml(text)
    }

    /// Checks the sizes that would otherwise fail deep inside a tensor op.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Validate::validate(self)
    }

    /// The feed-forward activation `hidden_act` names.
    fn activation(&self) -> Result<Gelu, ConfigError> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Gelu::new()),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Gelu::new_approximate()),
            other => Err(ConfigError::Invalid(format!(
                "hidden_act \"{other}\" is not supported (use gelu or gelu_new)"
            ))),
        }
    }

    /// Exact number of parameters of [`BertConfig::init`] with `heads`.
    pub fn num_params(&self, heads: BertHeads) -> usize {
        // In u128, saturated, as `GptConfig::num_params`.
        let (v, h, i) = (
            self.vocab_size as u128,
            self.hidden_size as u128,
            self.intermediate_size as u128,
        );
        let ln = 2 * h;
        let positions = self.max_position_embeddings as u128 + self.type_vocab_size as u128;
        let embeddings = (v + positions) * h + ln;
        let layer = 4 * (h * h + h) + ln + (h * i + i) + (i * h + h) + ln;
        let pooler = if heads.pooler || heads.nsp {
            h * h + h
        } else {
            0
        };
        let mlm = if heads.mlm { h * h + h + ln + v } else { 0 };
        let nsp = if heads.nsp { 2 * h + 2 } else { 0 };
        let total = embeddings + self.num_hidden_layers as u128 * layer + pooler + mlm + nsp;
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// A randomly initialised model on `device`, initialised as HF's BERT: weights N(0, 0.02),
    /// biases 0, LayerNorms (1, 0).
    pub fn init(&self, heads: BertHeads, device: &Device) -> Bert {
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let h = self.hidden_size;
        let act = self.activation().unwrap_or_else(|_| Gelu::new());
        let linear = |d_in: usize, d_out: usize| {
            LinearConfig::new(d_in, d_out)
                .with_initializer(init.clone())
                .init(device)
        };
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, h)
                .with_initializer(init.clone())
                .init(device)
        };
        let layer_norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let hidden_drop = || DropoutConfig::new(self.hidden_dropout_prob).init();
        let layers = (0..self.num_hidden_layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    query: linear(h, h),
                    key: linear(h, h),
                    value: linear(h, h),
                    output: linear(h, h),
                    output_norm: layer_norm(),
                    attn_drop: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                    resid_drop: hidden_drop(),
                    n_heads: self.num_attention_heads,
                },
                intermediate: linear(h, self.intermediate_size),
                output: linear(self.intermediate_size, h),
                output_norm: layer_norm(),
                act: act.clone(),
                resid_drop: hidden_drop(),
            })
            .collect();
        Bert {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(self.vocab_size),
                position_embeddings: embedding(self.max_position_embeddings),
                token_type_embeddings: embedding(self.type_vocab_size),
                layer_norm: layer_norm(),
                drop: hidden_drop(),
            },
            layers,
            pooler: (heads.pooler || heads.nsp).then(|| linear(h, h)),
            mlm: heads.mlm.then(|| BertMlmHead {
                transform: linear(h, h),
                act: act.clone(),
                layer_norm: layer_norm(),
                bias: Param::from_tensor(Tensor::zeros([self.vocab_size], device)),
            }),
            nsp: heads.nsp.then(|| linear(h, 2)),
        }
    }
}

/// Word, position and segment embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// `[vocab, hidden]`; also the MLM decoder's weight.
    pub word_embeddings: Embedding,
    /// `[max_position_embeddings, hidden]`.
    pub position_embeddings: Embedding,
    /// `[type_vocab_size, hidden]`.
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
    drop: Dropout,
}

impl BertEmbeddings {
    /// `ids`, `token_types: [batch, seq]` → `[batch, seq, hidden]`; positions count from 0 in
    /// every row, padded or not (as HF's BERT does).
    pub fn forward(&self, ids: Tensor<2, Int>, token_types: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &ids.device())
            .reshape([1, seq])
            .expand([batch, seq]);
        let x = lookup(&self.word_embeddings, ids)
            + lookup(&self.position_embeddings, positions)
            + lookup(&self.token_type_embeddings, token_types);
        dropout(&self.drop, layer_norm(&self.layer_norm, x))
    }
}

/// Bidirectional multi-head self-attention with its output projection, residual and LayerNorm
/// (HF's `attention.self` + `attention.output`).
#[derive(Module, Debug)]
pub struct BertAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    /// `[hidden, hidden]`: mixes the heads back into the hidden state.
    pub output: Linear,
    pub output_norm: LayerNorm,
    attn_drop: Dropout,
    resid_drop: Dropout,
    n_heads: usize,
}

impl BertAttention {
    /// `x: [batch, seq, hidden]`, `hide: [batch, 1, 1, seq]` (true at padded keys) →
    /// `LN(x + attention(x))`.
    pub fn forward(&self, x: Tensor<3>, hide: Tensor<4, Bool>) -> Tensor<3> {
        let heads = self.n_heads;
        let q = split_heads(linear(&self.query, x.clone()), heads);
        let k = split_heads(linear(&self.key, x.clone()), heads);
        let v = split_heads(linear(&self.value, x.clone()), heads);
        let context = attention(q, k, v, hide, &self.attn_drop);
        let out = dropout(&self.resid_drop, linear(&self.output, context));
        layer_norm(&self.output_norm, x + out)
    }
}

/// One post-LayerNorm encoder layer: attention, then `hidden → intermediate → GELU → hidden`.
#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    /// `[hidden, intermediate]`.
    pub intermediate: Linear,
    /// `[intermediate, hidden]`.
    pub output: Linear,
    pub output_norm: LayerNorm,
    act: Gelu,
    resid_drop: Dropout,
}

impl BertLayer {
    /// `x: [batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>, hide: Tensor<4, Bool>) -> Tensor<3> {
        let x = self.attention.forward(x, hide);
        let hidden = self.act.forward(linear(&self.intermediate, x.clone()));
        let ff = linear(&self.output, hidden);
        layer_norm(&self.output_norm, x + dropout(&self.resid_drop, ff))
    }
}

/// The masked-LM head: `LN(GELU(dense(h)))` · word_embeddingsᵀ + bias.
#[derive(Module, Debug)]
pub struct BertMlmHead {
    pub transform: Linear,
    act: Gelu,
    pub layer_norm: LayerNorm,
    /// `[vocab]`: the decoder's own bias (its weight is the word embedding table).
    pub bias: Param<Tensor<1>>,
}

/// A BERT encoder with optional pooler, masked-LM and next-sentence heads.
#[derive(Module, Debug)]
pub struct Bert {
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    /// `[hidden, hidden]` dense of the pooler (tanh follows).
    pub pooler: Option<Linear>,
    pub mlm: Option<BertMlmHead>,
    /// `[hidden, 2]`: is sentence B the one that followed sentence A?
    pub nsp: Option<Linear>,
}

impl Bert {
    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embeddings.word_embeddings.weight.val().device()
    }

    /// Longest sequence the position embedding covers.
    pub fn max_positions(&self) -> usize {
        self.embeddings.position_embeddings.weight.dims()[0]
    }

    /// Hidden size.
    pub fn hidden_size(&self) -> usize {
        self.embeddings.word_embeddings.weight.dims()[1]
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.embeddings.word_embeddings.weight.dims()[0]
    }

    /// Last hidden states `[batch, seq, hidden]` of `ids`, `token_types` and `attention_mask`
    /// (all `[batch, seq]`; mask 1 for real tokens, 0 for padding, as HF's). Padded positions
    /// are computed too (they attend to the real tokens) but never attended to.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        token_types: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<3> {
        self.forward_all(ids, token_types, attention_mask)
            .pop()
            .expect("embeddings are always there")
    }

    /// The embeddings' output and every layer's output: `num_hidden_layers + 1` tensors
    /// `[batch, seq, hidden]` (HF's `hidden_states`).
    pub fn forward_all(
        &self,
        ids: Tensor<2, Int>,
        token_types: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Vec<Tensor<3>> {
        let seq = ids.dims()[1];
        assert!(
            seq <= self.max_positions(),
            "sequence of {seq} tokens exceeds max_position_embeddings {}",
            self.max_positions()
        );
        let hide = padding_hide(attention_mask);
        let mut states = vec![self.embeddings.forward(ids, token_types)];
        for layer in &self.layers {
            let x = states.last().expect("non-empty").clone();
            states.push(layer.forward(x, hide.clone()));
        }
        states
    }

    /// The pooled `[CLS]` representation `[batch, hidden]`: tanh(dense(hidden[:, 0])).
    ///
    /// # Panics
    /// When the model has no pooler.
    pub fn pooled(&self, hidden: Tensor<3>) -> Tensor<2> {
        let pooler = self.pooler.as_ref().expect("this BERT has no pooler");
        let [batch, _, width] = hidden.dims();
        let cls = hidden.narrow(1, 0, 1).reshape([batch, width]);
        tanh(pooler.forward(cls))
    }

    /// Masked-LM logits `[batch, seq, vocab]` of hidden states `[batch, seq, hidden]`.
    ///
    /// # Panics
    /// When the model has no MLM head.
    pub fn mlm_logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let head = self.mlm.as_ref().expect("this BERT has no MLM head");
        let x = head
            .layer_norm
            .forward(head.act.forward(linear(&head.transform, hidden)));
        let vocab = self.vocab_size();
        tied_logits(x, self.embeddings.word_embeddings.weight.val())
            + head.bias.val().reshape([1, 1, vocab])
    }

    /// Next-sentence logits `[batch, 2]` (index 0 = "B follows A") of the pooled output.
    ///
    /// # Panics
    /// When the model has no NSP head.
    pub fn nsp_logits(&self, pooled: Tensor<2>) -> Tensor<2> {
        self.nsp
            .as_ref()
            .expect("this BERT has no NSP head")
            .forward(pooled)
    }
}

/// The inputs of one pretraining step, as tensors on the model's device.
#[derive(Clone, Debug)]
pub struct PretrainingInputs {
    /// `[batch, seq]` corrupted ids, segment ids and attention mask (1 = real token).
    pub ids: Tensor<2, Int>,
    pub token_types: Tensor<2, Int>,
    pub attention_mask: Tensor<2, Int>,
    /// `[n]` flat positions (`row · seq + column`) the masked LM predicts…
    pub chosen: Tensor<1, Int>,
    /// …and `[n]` the original ids there.
    pub chosen_labels: Tensor<1, Int>,
    /// `[batch]` next-sentence labels (0: B follows A); `None` for masked LM alone.
    pub next_labels: Option<Tensor<1, Int>>,
}

impl Bert {
    /// `BertForPreTraining`'s loss: masked-LM cross-entropy over the chosen positions, plus the
    /// next-sentence cross-entropy when `next_labels` are given. Only the chosen rows (≈15%)
    /// go through the `hidden × vocab` decoder, the largest matrix of a small BERT; the value is
    /// HF's loss with labels -100 at every other position.
    ///
    /// # Panics
    /// When the model lacks the MLM head (or the NSP head and `next_labels` are given).
    pub fn pretraining_loss(&self, inputs: PretrainingInputs) -> Tensor<1> {
        let hidden = self.forward(inputs.ids, inputs.token_types, inputs.attention_mask);
        let [batch, seq, width] = hidden.dims();
        let rows = hidden
            .clone()
            .reshape([batch * seq, width])
            .select(0, inputs.chosen);
        let n = rows.dims()[0];
        let logits = self.mlm_logits(rows.reshape([1, n, width]));
        let vocab = logits.dims()[2];
        let mlm = cross_entropy(logits.reshape([n, vocab]), inputs.chosen_labels);
        match inputs.next_labels {
            Some(labels) => mlm + cross_entropy(self.nsp_logits(self.pooled(hidden)), labels),
            None => mlm,
        }
    }
}

/// BERT with a classification head on the pooled `[CLS]` output, as HF's
/// `BertForSequenceClassification`: dropout, then `hidden → num_classes`.
#[derive(Module, Debug)]
pub struct BertClassifier {
    /// The encoder with its pooler (no MLM or NSP head).
    pub bert: Bert,
    drop: Dropout,
    /// `[hidden, num_classes]`, initialised N(0, 0.02) like the rest of BERT.
    pub head: Linear,
}

impl BertClassifier {
    /// Puts a fresh head on `bert`, dropping its MLM and NSP heads; a BERT without a pooler
    /// gets a fresh one. `drop_rate` is the dropout before the head (HF: hidden_dropout_prob).
    pub fn new(mut bert: Bert, num_classes: usize, drop_rate: f64) -> Self {
        let device = bert.device();
        let h = bert.hidden_size();
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let linear = |d_out: usize| {
            LinearConfig::new(h, d_out)
                .with_initializer(init.clone())
                .init(&device)
        };
        bert.mlm = None;
        bert.nsp = None;
        if bert.pooler.is_none() {
            bert.pooler = Some(linear(h));
        }
        Self {
            bert,
            drop: DropoutConfig::new(drop_rate).init(),
            head: linear(num_classes),
        }
    }

    pub fn num_classes(&self) -> usize {
        self.head.weight.dims()[1]
    }

    /// Class logits `[batch, num_classes]` of `ids: [batch, seq]` (`[CLS] text [SEP]`, padded);
    /// `lengths: [batch]` are the real lengths, so padding is masked out of attention.
    pub fn forward(&self, ids: Tensor<2, Int>, lengths: Tensor<1, Int>) -> Tensor<2> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        let mask = positions
            .lower(lengths.reshape([batch, 1]).expand([batch, seq]))
            .int();
        let types = Tensor::<2, Int>::zeros([batch, seq], &device);
        let hidden = self.bert.forward(ids, types, mask);
        self.head
            .forward(dropout(&self.drop, self.bert.pooled(hidden)))
    }

    /// Freezes everything but the weights `trainable` names: `head` (with the pooler, which
    /// is fresh or pretrained on NSP only), `last-blocks:N` (also the pooler and head) or
    /// `all`. LoRA adapters are for GPT classifiers.
    pub fn set_trainable(self, trainable: Trainable) -> Result<Self, String> {
        let n_layers = self.bert.layers.len();
        let pattern = match trainable {
            Trainable::All => return Ok(self.unfreeze()),
            Trainable::Head => r"^(head\.|bert\.pooler\.)".to_string(),
            Trainable::LastBlocks(n) => {
                let first = n_layers.saturating_sub(n);
                let blocks: Vec<String> = (first..n_layers).map(|i| i.to_string()).collect();
                format!(
                    r"^(head\.|bert\.pooler\.|bert\.layers\.({})\.)",
                    blocks.join("|")
                )
            }
            Trainable::Lora => {
                return Err(
                    "--trainable lora is supported for GPT classifiers; for BERT use head, last-blocks:N or all"
                        .into(),
                );
            }
        };
        let group = ParamGroup::from_regex(&pattern).expect("valid pattern");
        Ok(self.freeze().unfreeze_group(group))
    }

    /// (trainable, total) parameter counts.
    pub fn param_counts(&self) -> (usize, usize) {
        crate::lora::param_counts(self)
    }
}

/// How a sentence embedding is read off the hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SentencePooling {
    /// The `[CLS]` position's hidden state.
    Cls,
    /// The mean over real (unmasked) positions, as sentence-transformers' MiniLM/MPNet models.
    Mean,
}

/// L2-normalised sentence embeddings `[batch, hidden]` of `hidden: [batch, seq, hidden]`
/// with `attention_mask: [batch, seq]` (1 = real token), so cosine similarity is a dot product.
pub fn sentence_embeddings(
    hidden: Tensor<3>,
    attention_mask: Tensor<2, Int>,
    pooling: SentencePooling,
) -> Tensor<2> {
    let [batch, seq, width] = hidden.dims();
    let pooled = match pooling {
        SentencePooling::Cls => hidden.narrow(1, 0, 1).reshape([batch, width]),
        SentencePooling::Mean => {
            let mask = attention_mask.float().reshape([batch, seq, 1]);
            let summed = (hidden * mask.clone()).sum_dim(1).reshape([batch, width]);
            // sentence-transformers clamps the count at 1e-9 against all-padding rows.
            let count = mask.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
            summed / count
        }
    };
    // torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
    let norm = pooled
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    pooled / norm
}
