//! GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"), as built
//! in chapter 4 of *Build a Large Language Model (From Scratch)*.
//!
//! token + learned position embeddings → dropout → `n_layers` pre-LayerNorm blocks (causal
//! multi-head attention, then a 4× feed-forward with tanh-GELU, each wrapped in a shortcut) →
//! final LayerNorm → bias-free output head, optionally tied to the token embedding.
//!
//! Field names follow HuggingFace's GPT-2 key tree (`wte`, `wpe`, `h.N.ln_1`, `h.N.attn.c_attn`,
//! `h.N.attn.c_proj`, `h.N.ln_2`, `h.N.mlp.c_fc`, `h.N.mlp.c_proj`, `ln_f`), so loading a
//! pretrained checkpoint is a short mapping. Burn's `Linear` stores weights `[in, out]`, the
//! same layout as HF's `Conv1D`.

use std::path::Path;

use burn::module::Param;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use crate::config::ConfigError;
use crate::config::{Validate, check, config_from_toml, load_config};
use crate::layers::{
    LayerCache, add_bias_residual_layer_norm, attention, bias, drop_prob, dropout, layer_norm,
    linear_split, lookup, product_split, split_heads, tied_logits_split, with_bias,
};
use crate::lora::{LoraAdapter, LoraConfig, LoraTarget, with_adapter};
use ember_kernels::bias_gelu_tanh;

/// Hyper-parameters of a GPT model, loaded from `configs/models/*.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Number of token ids (50,257 for GPT-2's BPE).
    pub vocab_size: usize,
    /// Longest sequence the position embedding covers (1,024 for GPT-2).
    pub context_length: usize,
    /// Width of the residual stream.
    pub emb_dim: usize,
    /// Attention heads per layer; must divide `emb_dim`.
    pub n_heads: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Dropout on embeddings, attention weights and residual branches during training.
    pub drop_rate: f64,
    /// Bias on the query/key/value projection (true for OpenAI's GPT-2 weights).
    pub qkv_bias: bool,
    /// Share the output head with the token embedding (GPT-2's checkpoints do).
    #[serde(default)]
    pub tie_weights: bool,
    /// LayerNorm epsilon (GPT-2: 1e-5).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Standard deviation of the token and position embeddings at initialisation. 1.0 is
    /// PyTorch's `nn.Embedding` default, which the book's model uses: with it the token identity
    /// dominates the residual stream and small-data pretraining leaves the unigram plateau within
    /// ~20 steps. GPT-2's 0.02 stalls there on the-verdict (train loss ≈ 6.0 after 65 steps of
    /// the book's 124M recipe, against ≈ 4.9 at step 30 with 1.0). With a tied head use 0.02:
    /// N(0,1) rows as output weights make the first logits huge (loss ≈ 24).
    #[serde(default = "default_emb_init_std")]
    pub emb_init_std: f64,
}

fn default_emb_init_std() -> f64 {
    1.0
}

fn default_layer_norm_eps() -> f64 {
    1e-5
}

impl Validate for GptConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check::at_least_one(&[
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("emb_dim", self.emb_dim),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
        ])?;
        check::divisible(("emb_dim", self.emb_dim), ("n_heads", self.n_heads))?;
        check::probability("drop_rate", self.drop_rate)?;
        check::positive("emb_init_std", self.emb_init_std)?;
        check::positive("layer_norm_eps", self.layer_norm_eps)
    }
}

impl GptConfig {
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

    /// Exact number of parameters of [`GptConfig::init`], without building the model.
    pub fn num_params(&self) -> usize {
        // In u128, saturated: a mistyped size (`emb_dim = 1e9`) reports a huge count instead
        // of overflowing, and the caller refuses it.
        let (v, c, d, l) = (
            self.vocab_size as u128,
            self.context_length as u128,
            self.emb_dim as u128,
            self.n_layers as u128,
        );
        let ln = 2 * d;
        let attn = d * 3 * d + if self.qkv_bias { 3 * d } else { 0 } + d * d + d;
        let mlp = d * 4 * d + 4 * d + 4 * d * d + d;
        let head = if self.tie_weights { 0 } else { d * v };
        let total = v * d + c * d + l * (2 * ln + attn + mlp) + ln + head;
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// Builds a randomly initialised model on `device` (weights N(0, 0.02), as GPT-2).
    pub fn init(&self, device: &Device) -> Gpt {
        let init = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let emb_init = Initializer::Normal {
            mean: 0.0,
            std: self.emb_init_std,
        };
        let d = self.emb_dim;
        let linear = |d_in: usize, d_out: usize, bias: bool| {
            LinearConfig::new(d_in, d_out)
                .with_bias(bias)
                .with_initializer(init.clone())
                .init(device)
        };
        let layer_norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.drop_rate).init();
        let h = (0..self.n_layers)
            .map(|_| GptBlock {
                ln_1: layer_norm(),
                attn: CausalSelfAttention {
                    c_attn: linear(d, 3 * d, self.qkv_bias),
                    c_proj: linear(d, d, true),
                    attn_drop: dropout(),
                    n_heads: self.n_heads,
                    lora_q: None,
                    lora_k: None,
                    lora_v: None,
                    lora_out: None,
                },
                ln_2: layer_norm(),
                mlp: FeedForward {
                    c_fc: linear(d, 4 * d, true),
                    c_proj: linear(4 * d, d, true),
                    lora_fc: None,
                    lora_proj: None,
                },
                resid_drop: dropout(),
            })
            .collect();
        Gpt {
            wte: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(emb_init.clone())
                .init(device),
            wpe: EmbeddingConfig::new(self.context_length, d)
                .with_initializer(emb_init)
                .init(device),
            drop: dropout(),
            h,
            ln_f: layer_norm(),
            lm_head: (!self.tie_weights).then(|| linear(d, self.vocab_size, false)),
            context_length: self.context_length,
        }
    }
}

/// Causal multi-head self-attention with one fused q/k/v projection.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// `[emb, 3·emb]`: queries, keys and values side by side.
    pub c_attn: Linear,
    /// `[emb, emb]`: mixes the heads back into the residual stream.
    pub c_proj: Linear,
    attn_drop: Dropout,
    n_heads: usize,
    /// LoRA adapters of the query, key and value slices of `c_attn` and of `c_proj`.
    pub lora_q: Option<LoraAdapter>,
    pub lora_k: Option<LoraAdapter>,
    pub lora_v: Option<LoraAdapter>,
    pub lora_out: Option<LoraAdapter>,
}

impl CausalSelfAttention {
    /// `x: [batch, seq, emb]` → `[batch, seq, emb]`; position t attends to positions ≤ t,
    /// through [`ember_kernels::causal_self_attention`] on the fused projection.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (out, bias) = self.forward_unbiased(x);
        with_bias(out, bias)
    }

    /// [`CausalSelfAttention::forward`] before the output projection's bias, which is
    /// returned beside it (see [`Stream`]).
    fn forward_unbiased(&self, x: Tensor<3>) -> Branch {
        let drop_prob = drop_prob(&self.attn_drop, &x.device());
        let qkv = self.qkv(x, 1);
        let context = ember_kernels::causal_self_attention(qkv, self.n_heads, drop_prob);
        self.project_out(context, 1)
    }

    /// Attention over the cached positions and `x`'s new ones, appending the new keys and
    /// values to `cache`, before the output projection's bias, which is returned beside it
    /// (see [`Stream`]). `x: [batch, new, emb]`; `hide: [batch, 1, new, past + new]` is true
    /// where a query must not look (future or padding). `threads`: see [`linear_split`].
    fn forward_cached_unbiased(
        &self,
        x: Tensor<3>,
        hide: Tensor<4, Bool>,
        cache: &mut Option<LayerCache>,
        threads: usize,
    ) -> Branch {
        let emb = x.dims()[2];
        let qkv = self.qkv(x, threads);
        let head = |i: usize| split_heads(qkv.clone().narrow(2, i * emb, emb), self.n_heads);
        let (k, v) = LayerCache::extend(cache, head(1), head(2));
        let context = attention(head(0), k, v, hide, &self.attn_drop);
        self.project_out(context, threads)
    }

    /// The projection `[batch, seq, 3·emb]` of `x: [batch, seq, emb]`: queries, keys and
    /// values side by side, each with its LoRA adapter's share added when there is one.
    fn qkv(&self, x: Tensor<3>, threads: usize) -> Tensor<3> {
        let qkv = linear_split(&self.c_attn, x.clone(), threads);
        let adapters = [&self.lora_q, &self.lora_k, &self.lora_v];
        if adapters.iter().all(|adapter| adapter.is_none()) {
            return qkv;
        }
        let emb = x.dims()[2];
        let parts = adapters
            .into_iter()
            .enumerate()
            .map(|(i, adapter)| {
                with_adapter(qkv.clone().narrow(2, i * emb, emb), adapter, x.clone())
            })
            .collect();
        Tensor::cat(parts, 2)
    }

    /// The heads' merged output `[batch, queries, emb]` projected for the residual stream,
    /// and the projection's bias, not yet added.
    fn project_out(&self, context: Tensor<3>, threads: usize) -> Branch {
        let out = with_adapter(
            product_split(&self.c_proj, context.clone(), threads),
            &self.lora_out,
            context,
        );
        (out, bias(&self.c_proj))
    }
}

/// The position-wise feed-forward network: `emb → 4·emb → GELU(tanh) → emb`
/// ([`ember_kernels::gelu_tanh`]).
#[derive(Module, Debug)]
pub struct FeedForward {
    pub c_fc: Linear,
    pub c_proj: Linear,
    pub lora_fc: Option<LoraAdapter>,
    pub lora_proj: Option<LoraAdapter>,
}

impl FeedForward {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (out, bias) = self.forward_unbiased(x, 1);
        with_bias(out, bias)
    }

    /// [`FeedForward::forward`] with each product split over `threads` (see [`linear_split`]),
    /// before `c_proj`'s bias, which is returned beside it (see [`Stream`]); `c_fc`'s bias
    /// goes in with the GELU.
    fn forward_unbiased(&self, x: Tensor<3>, threads: usize) -> Branch {
        let up = with_adapter(
            product_split(&self.c_fc, x.clone(), threads),
            &self.lora_fc,
            x,
        );
        let hidden = bias_gelu_tanh(up, bias(&self.c_fc));
        let out = with_adapter(
            product_split(&self.c_proj, hidden.clone(), threads),
            &self.lora_proj,
            hidden,
        );
        (out, bias(&self.c_proj))
    }
}

/// One pre-LayerNorm transformer block with shortcut connections.
#[derive(Module, Debug)]
pub struct GptBlock {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: FeedForward,
    resid_drop: Dropout,
}

impl GptBlock {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_stream(Stream::from(x)).resolve()
    }

    /// [`GptBlock::forward`] on the residual stream, whose last branch may still wait to be
    /// added by the LayerNorm that reads it first.
    fn forward_stream(&self, stream: Stream) -> Stream {
        let (x, normed) = stream.normed(&self.ln_1);
        let attn = self.attn.forward_unbiased(normed);
        let (x, normed) = Stream::sum(x, attn, &self.resid_drop).normed(&self.ln_2);
        let mlp = self.mlp.forward_unbiased(normed, 1);
        Stream::sum(x, mlp, &self.resid_drop)
    }

    /// [`GptBlock::forward`] with attention through a key/value cache; `threads`: see
    /// [`linear_split`].
    pub fn forward_cached(
        &self,
        x: Tensor<3>,
        hide: Tensor<4, Bool>,
        cache: &mut Option<LayerCache>,
        threads: usize,
    ) -> Tensor<3> {
        self.forward_cached_stream(Stream::from(x), hide, cache, threads)
            .resolve()
    }

    /// [`GptBlock::forward_cached`] on the residual stream (see [`GptBlock::forward_stream`]).
    fn forward_cached_stream(
        &self,
        stream: Stream,
        hide: Tensor<4, Bool>,
        cache: &mut Option<LayerCache>,
        threads: usize,
    ) -> Stream {
        let (x, normed) = stream.normed(&self.ln_1);
        let attn = self
            .attn
            .forward_cached_unbiased(normed, hide, cache, threads);
        let (x, normed) = Stream::sum(x, attn, &self.resid_drop).normed(&self.ln_2);
        let mlp = self.mlp.forward_unbiased(normed, threads);
        Stream::sum(x, mlp, &self.resid_drop)
    }
}

/// A branch's output before its bias, and the bias.
type Branch = (Tensor<3>, Option<Tensor<1>>);

/// The residual stream `[batch, seq, emb]` between sub-layers: `x`, plus the last branch's
/// output when its sum can wait for the LayerNorm that reads it. Why: on a GPU (inference) the
/// bias, the shortcut sum and that LayerNorm are one kernel instead of three; on the CPU and
/// under autodiff the same ops run in the same order as without it.
struct Stream {
    x: Tensor<3>,
    pending: Option<Branch>,
}

impl From<Tensor<3>> for Stream {
    fn from(x: Tensor<3>) -> Self {
        Self { x, pending: None }
    }
}

impl Stream {
    /// `x + dropout(branch + bias)`; without dropout (inference, or a rate of 0) the sum is
    /// left to the next LayerNorm.
    fn sum(x: Tensor<3>, (branch, bias): Branch, resid_drop: &Dropout) -> Self {
        match drop_prob(resid_drop, &x.device()) {
            0.0 => Self {
                x,
                pending: Some((branch, bias)),
            },
            _ => Self::from(x + dropout(resid_drop, with_bias(branch, bias))),
        }
    }

    /// The stream's value and its LayerNorm by `module`.
    fn normed(self, module: &LayerNorm) -> (Tensor<3>, Tensor<3>) {
        match self.pending {
            Some((branch, bias)) => add_bias_residual_layer_norm(module, branch, bias, self.x),
            None => (self.x.clone(), layer_norm(module, self.x)),
        }
    }

    /// The stream's value.
    fn resolve(self) -> Tensor<3> {
        match self.pending {
            Some((branch, bias)) => ember_kernels::add_bias_residual(branch, bias, self.x),
            None => self.x,
        }
    }
}

/// `linear.weight += adapter.delta()`. The sum is detached: a merged weight is a new leaf (on
/// an autodiff device a parameter computed from others cannot take gradients of its own, and
/// training from a LoRA run failed on that).
pub fn merge_into(linear: &mut Linear, adapter: Option<LoraAdapter>) {
    if let Some(adapter) = adapter {
        linear.weight = Param::from_tensor((linear.weight.val() + adapter.delta()).detach());
    }
}

/// Keys and values of the positions processed so far, one [`LayerCache`] per layer, so
/// decoding one more token costs one position instead of the sequence.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// Threads that share each decoding step's matrix products (see [`linear_split`]); 0 or 1
    /// leaves them to the backend, which is right for GPUs.
    pub threads: usize,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache whose steps split their matrix products over `threads`.
    pub fn with_threads(threads: usize) -> Self {
        Self {
            threads,
            ..Self::default()
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some(layer)) => layer.len(),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.clear();
    }

    /// Keeps only the batch rows `rows` (in that order), e.g. when other sequences finished.
    pub fn retain_rows(&mut self, rows: &[usize]) {
        let Some(Some(first)) = self.layers.first() else {
            return;
        };
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let device = first.device();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &device);
        for layer in self.layers.iter_mut().flatten() {
            *layer = layer.select_rows(index.clone());
        }
    }
}

/// A GPT language model.
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding `[vocab, emb]`.
    pub wte: Embedding,
    /// Position embedding `[context_length, emb]`.
    pub wpe: Embedding,
    drop: Dropout,
    pub h: Vec<GptBlock>,
    pub ln_f: LayerNorm,
    /// Output head `[emb, vocab]`; `None` when tied to `wte`.
    pub lm_head: Option<Linear>,
    context_length: usize,
}

impl Gpt {
    /// The same weights with another dropout probability (e.g. pretrained weights, whose
    /// checkpoint says 0.1, fine-tuned without dropout).
    pub fn with_drop_rate(mut self, drop_rate: f64) -> Self {
        let dropout = || DropoutConfig::new(drop_rate).init();
        self.drop = dropout();
        for block in &mut self.h {
            block.attn.attn_drop = dropout();
            block.resid_drop = dropout();
        }
        self
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Adds LoRA adapters to the block layers `config` targets (the head is the caller's).
    pub fn add_lora(mut self, config: &LoraConfig) -> Self {
        let device = self.device();
        let d = self.wpe.weight.dims()[1];
        let adapter = |target: LoraTarget, d_in: usize, d_out: usize| {
            config
                .targets(target)
                .then(|| config.adapter(d_in, d_out, &device))
        };
        for block in &mut self.h {
            block.attn.lora_q = adapter(LoraTarget::Q, d, d);
            block.attn.lora_k = adapter(LoraTarget::K, d, d);
            block.attn.lora_v = adapter(LoraTarget::V, d, d);
            block.attn.lora_out = adapter(LoraTarget::AttnOut, d, d);
            block.mlp.lora_fc = adapter(LoraTarget::FfIn, d, 4 * d);
            block.mlp.lora_proj = adapter(LoraTarget::FfOut, 4 * d, d);
        }
        self
    }

    /// Freezes every weight but the LoRA adapters (call after [`Gpt::add_lora`]).
    pub fn train_only_lora(self) -> Self {
        let group = burn::module::ParamGroup::from_regex(r"(^|\.)lora_").expect("valid pattern");
        self.freeze().unfreeze_group(group)
    }

    /// Folds every adapter into its base weight and removes it: same function, plain layers.
    pub fn merge_lora(mut self) -> Self {
        let d = self.wpe.weight.dims()[1];
        for block in &mut self.h {
            let attn = &mut block.attn;
            for (slot, adapter) in [
                (0, attn.lora_q.take()),
                (1, attn.lora_k.take()),
                (2, attn.lora_v.take()),
            ] {
                if let Some(adapter) = adapter {
                    let weight = attn.c_attn.weight.val();
                    let updated = weight.clone().slice_assign(
                        s![.., slot * d..(slot + 1) * d],
                        weight.slice(s![.., slot * d..(slot + 1) * d]) + adapter.delta(),
                    );
                    attn.c_attn.weight = Param::from_tensor(updated.detach());
                }
            }
            merge_into(&mut attn.c_proj, attn.lora_out.take());
            merge_into(&mut block.mlp.c_fc, block.mlp.lora_fc.take());
            merge_into(&mut block.mlp.c_proj, block.mlp.lora_proj.take());
        }
        self
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.wpe.weight.val().device()
    }

    /// Final hidden states `[batch, seq, emb]` for token ids `[batch, seq]` (seq ≤ context_length).
    pub fn hidden_states(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        assert!(
            seq <= self.context_length,
            "sequence of {seq} tokens exceeds the context length {}",
            self.context_length
        );
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &ids.device())
            .reshape([1, seq])
            .expand([batch, seq]);
        let mut stream = Stream::from(self.embed(ids, positions));
        for block in &self.h {
            stream = block.forward_stream(stream);
        }
        stream.normed(&self.ln_f).1
    }

    /// Final hidden states `[batch, new, emb]` of `ids: [batch, new]`, continuing the sequence
    /// whose keys and values `cache` holds (empty for a prefill). `positions: [batch, new]`
    /// index the position embedding (they differ per row when rows are left-padded);
    /// `hide: [batch, 1, new, cache.len() + new]` is true where a query must not attend.
    pub fn forward_cached(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        hide: Tensor<4, Bool>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let new = ids.dims()[1];
        assert!(
            cache.len() + new <= self.context_length,
            "{} cached + {new} new positions exceed the context length {}",
            cache.len(),
            self.context_length
        );
        cache.layers.resize(self.h.len(), None);
        let mut stream = Stream::from(self.embed(ids, positions));
        for (block, layer) in self.h.iter().zip(cache.layers.iter_mut()) {
            stream = block.forward_cached_stream(stream, hide.clone(), layer, cache.threads);
        }
        stream.normed(&self.ln_f).1
    }

    /// Token plus position embeddings `[batch, seq, emb]`, after dropout, of `ids` and
    /// `positions: [batch, seq]`, in the position table's dtype: the activations' (a token
    /// table stored in bf16 by [`Gpt::with_weight_dtype`] gives bf16 rows).
    fn embed(&self, ids: Tensor<2, Int>, positions: Tensor<2, Int>) -> Tensor<3> {
        let positions = lookup(&self.wpe, positions);
        let tokens = lookup(&self.wte, ids).cast(positions.dtype());
        dropout(&self.drop, tokens + positions)
    }

    /// The same model with its matrices (every block's four projections, the token embedding
    /// and an untied output head) stored in `dtype`: bf16 for decoding on the CPU, or `f32` to
    /// widen such a model back. Why bf16: a decoding step streams every weight once per token,
    /// so its speed is the machine's read bandwidth over the weights' bytes (494 MB for
    /// gpt2-small in f32): half the bytes and half the memory. Measured on 2 cores (gpt2-small,
    /// 20–25 GB/s read): 1.4–1.7× the `f32` tokens/s. Biases, LayerNorms and the position
    /// embedding stay `f32`, and so do the activations: each weight is widened exactly as it is
    /// read, so the only difference from the `f32` model is the weights' rounding to bf16 (8
    /// significant bits). For inference: training needs `f32` weights. Where the backend cannot
    /// read bf16 weights in its products ([`ember_kernels::weight_dtype_read`]), each product
    /// casts them back.
    pub fn with_weight_dtype(mut self, dtype: burn::tensor::DType) -> Self {
        let cast = |param: &mut Param<Tensor<2>>| {
            *param = Param::from_tensor(param.val().cast(dtype));
        };
        for block in &mut self.h {
            cast(&mut block.attn.c_attn.weight);
            cast(&mut block.attn.c_proj.weight);
            cast(&mut block.mlp.c_fc.weight);
            cast(&mut block.mlp.c_proj.weight);
        }
        cast(&mut self.wte.weight);
        if let Some(head) = &mut self.lm_head {
            cast(&mut head.weight);
        }
        self
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.head(self.hidden_states(ids))
    }

    /// The output head on hidden states `[batch, seq, emb]` → `[batch, seq, vocab]`.
    pub fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.head_split(hidden, 1)
    }

    /// [`Gpt::head`] with the vocabulary split over `threads` (see [`linear_split`]).
    pub fn head_split(&self, hidden: Tensor<3>, threads: usize) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => linear_split(head, hidden, threads),
            None => tied_logits_split(hidden, self.wte.weight.val(), threads),
        }
    }
}
