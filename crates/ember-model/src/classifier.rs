//! A GPT with a classification head instead of the language-model head (chapter 6 of the
//! book): the hidden state of one position per sequence goes through `emb → num_classes`.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::gpt::{Gpt, merge_into};
use crate::lora::{LoraAdapter, LoraConfig, LoraTarget, with_adapter};

/// Which position's hidden state is classified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// The last position of the padded sequence (the book's choice: under causal attention it
    /// is the only position that has seen every token).
    #[default]
    Last,
    /// The last real token of each sequence, ignoring the padding after it.
    LastNonPad,
}

/// Which weights train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trainable {
    /// Only the classification head.
    Head,
    /// The last `n` transformer blocks, the final LayerNorm and the head (`n = 1` is the
    /// book's choice).
    LastBlocks(usize),
    All,
    /// Only LoRA adapters (added with [`GptClassifier::add_lora`]).
    Lora,
}

impl Trainable {
    /// Parses `head`, `last-block`, `last-blocks:N`, `all` or `lora`.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "head" => Trainable::Head,
            "last-block" => Trainable::LastBlocks(1),
            "all" => Trainable::All,
            "lora" => Trainable::Lora,
            other => match other.strip_prefix("last-blocks:").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => Trainable::LastBlocks(n),
                _ => {
                    return Err(format!(
                        "unknown --trainable `{other}` (expected head, last-block, last-blocks:N with N ≥ 1, all or lora)"
                    ));
                }
            },
        })
    }
}

/// GPT body + classification head.
#[derive(Module, Debug)]
pub struct GptClassifier {
    pub gpt: Gpt,
    /// `[emb, num_classes]`, with bias.
    pub head: Linear,
    pub lora_head: Option<LoraAdapter>,
    /// Pool at each sequence's last real token instead of the last position.
    last_non_pad: bool,
}

impl GptClassifier {
    /// Replaces `gpt`'s output head by a fresh `emb → num_classes` layer (PyTorch's
    /// `nn.Linear` init, as the book's `torch.nn.Linear(768, num_classes)`).
    pub fn new(mut gpt: Gpt, num_classes: usize, pooling: Pooling) -> Self {
        let device = gpt.device();
        let emb = gpt.wpe.weight.dims()[1];
        gpt.lm_head = None;
        Self {
            gpt,
            head: LinearConfig::new(emb, num_classes).init(&device),
            lora_head: None,
            last_non_pad: pooling == Pooling::LastNonPad,
        }
    }

    pub fn num_classes(&self) -> usize {
        self.head.weight.dims()[1]
    }

    /// Class logits `[batch, num_classes]` of `ids: [batch, seq]`; `lengths: [batch]` are the
    /// real (unpadded) lengths, used by [`Pooling::LastNonPad`].
    pub fn forward(&self, ids: Tensor<2, Int>, lengths: Tensor<1, Int>) -> Tensor<2> {
        let hidden = self.gpt.hidden_states(ids); // [batch, seq, emb]
        let [batch, seq, emb] = hidden.dims();
        let pooled = if self.last_non_pad {
            let index = lengths
                .sub_scalar(1)
                .reshape([batch, 1, 1])
                .expand([batch, 1, emb]);
            hidden.gather(1, index)
        } else {
            hidden.slice(s![.., seq - 1..seq, ..])
        }
        .reshape([batch, emb]);
        with_adapter(self.head.forward(pooled.clone()), &self.lora_head, pooled)
    }

    /// Adds LoRA adapters (the head's too when targeted).
    pub fn add_lora(mut self, config: &LoraConfig) -> Self {
        let device = self.gpt.device();
        self.gpt = self.gpt.add_lora(config);
        if config.targets(LoraTarget::Head) {
            let [d_in, d_out] = self.head.weight.dims();
            self.lora_head = Some(config.adapter(d_in, d_out, &device));
        }
        self
    }

    /// Folds the adapters into the weights.
    pub fn merge_lora(mut self) -> Self {
        self.gpt = self.gpt.merge_lora();
        merge_into(&mut self.head, self.lora_head.take());
        self
    }

    /// Freezes everything but the weights `trainable` names.
    pub fn set_trainable(self, trainable: Trainable) -> Self {
        let n_layers = self.gpt.h.len();
        let pattern = match trainable {
            Trainable::All => return self.unfreeze(),
            Trainable::Head => r"^head\.".to_string(),
            Trainable::LastBlocks(n) => {
                let first = n_layers.saturating_sub(n);
                let blocks: Vec<String> = (first..n_layers).map(|i| i.to_string()).collect();
                format!(r"^(head\.|gpt\.ln_f\.|gpt\.h\.({})\.)", blocks.join("|"))
            }
            Trainable::Lora => r"(^|\.)lora_".to_string(),
        };
        let group = ParamGroup::from_regex(&pattern).expect("valid pattern");
        self.freeze().unfreeze_group(group)
    }

    /// (trainable, total) parameter counts. Only an autodiff device tracks gradients, so on
    /// a plain device nothing counts as trainable.
    pub fn param_counts(&self) -> (usize, usize) {
        let mut counter = Counter::default();
        self.visit(&mut counter);
        (counter.trainable, counter.total)
    }
}

#[derive(Default)]
struct Counter {
    trainable: usize,
    total: usize,
}

impl ModuleVisitor for Counter {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.shape().num_elements();
        self.total += n;
        if param.is_require_grad() {
            self.trainable += n;
        }
    }
}
