//! A GPT with a classification head instead of the language-model head (chapter 6 of the
//! book): the hidden state of one position per sequence goes through `emb → num_classes`.

use std::collections::BTreeMap;

use burn::module::{Module, Param, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::gpt::{Gpt, merge_into};
use crate::lora::{LoraAdapter, LoraConfig, LoraTarget, with_adapter};
use crate::weights::HostTensor;

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

    /// The adapters (and the head they adapt, whose base is not part of any pretrained
    /// checkpoint) under PEFT's names for a HF GPT-2 classifier: `…lora_A.weight` is `Aᵀ`
    /// `[rank, in]`, `…lora_B.weight` is `Bᵀ` `[out, rank]`. GPT-2's fused q|k|v has no PEFT
    /// name per slice; ember names them `attn.c_attn.{q,k,v}`.
    pub fn adapter_tensors(&self) -> BTreeMap<String, HostTensor> {
        let mut out = BTreeMap::new();
        let prefix = "base_model.model.";
        let mut put = |name: String, adapter: &Option<LoraAdapter>| {
            if let Some(adapter) = adapter {
                out.insert(
                    format!("{prefix}{name}.lora_A.weight"),
                    host_t(adapter.a.val()),
                );
                out.insert(
                    format!("{prefix}{name}.lora_B.weight"),
                    host_t(adapter.b.val()),
                );
            }
        };
        for (i, block) in self.gpt.h.iter().enumerate() {
            let p = format!("transformer.h.{i}.");
            put(format!("{p}attn.c_attn.q"), &block.attn.lora_q);
            put(format!("{p}attn.c_attn.k"), &block.attn.lora_k);
            put(format!("{p}attn.c_attn.v"), &block.attn.lora_v);
            put(format!("{p}attn.c_proj"), &block.attn.lora_out);
            put(format!("{p}mlp.c_fc"), &block.mlp.lora_fc);
            put(format!("{p}mlp.c_proj"), &block.mlp.lora_proj);
        }
        put("score".into(), &self.lora_head);
        out.insert(
            format!("{prefix}score.weight"),
            host_t(self.head.weight.val()),
        );
        if let Some(bias) = &self.head.bias {
            let bias = bias.val();
            let n = bias.dims()[0];
            let data = bias.into_data().try_into_vec_as::<f32>().expect("f32");
            out.insert(
                format!("{prefix}score.bias"),
                HostTensor::new(vec![n], data),
            );
        }
        out
    }

    /// Loads what [`GptClassifier::adapter_tensors`] wrote onto this model (built with the
    /// same LoRA config); a missing or mis-shaped tensor is an error naming it.
    pub fn load_adapter_tensors(
        mut self,
        tensors: &BTreeMap<String, HostTensor>,
    ) -> Result<Self, String> {
        let device = self.gpt.device();
        let prefix = "base_model.model.";
        let take = |name: &str, shape: [usize; 2]| -> Result<Tensor<2>, String> {
            let full = format!("{prefix}{name}");
            let t = tensors
                .get(&full)
                .ok_or_else(|| format!("missing tensor `{full}`"))?;
            if t.shape != shape {
                return Err(format!(
                    "tensor `{full}`: expected shape {shape:?}, found {:?}",
                    t.shape
                ));
            }
            Ok(Tensor::<2>::from_data(TensorData::new(t.data.clone(), shape), &device).transpose())
        };
        let load = |name: String, adapter: &mut Option<LoraAdapter>| -> Result<(), String> {
            if let Some(adapter) = adapter {
                let [d_in, rank] = adapter.a.dims();
                let d_out = adapter.b.dims()[1];
                adapter.a =
                    Param::from_tensor(take(&format!("{name}.lora_A.weight"), [rank, d_in])?);
                adapter.b =
                    Param::from_tensor(take(&format!("{name}.lora_B.weight"), [d_out, rank])?);
            }
            Ok(())
        };
        for (i, block) in self.gpt.h.iter_mut().enumerate() {
            let p = format!("transformer.h.{i}.");
            load(format!("{p}attn.c_attn.q"), &mut block.attn.lora_q)?;
            load(format!("{p}attn.c_attn.k"), &mut block.attn.lora_k)?;
            load(format!("{p}attn.c_attn.v"), &mut block.attn.lora_v)?;
            load(format!("{p}attn.c_proj"), &mut block.attn.lora_out)?;
            load(format!("{p}mlp.c_fc"), &mut block.mlp.lora_fc)?;
            load(format!("{p}mlp.c_proj"), &mut block.mlp.lora_proj)?;
        }
        load("score".into(), &mut self.lora_head)?;
        let [emb, classes] = self.head.weight.dims();
        self.head.weight = Param::from_tensor(take("score.weight", [classes, emb])?);
        if let Some(bias) = tensors.get(&format!("{prefix}score.bias")) {
            if bias.shape != [classes] {
                return Err(format!(
                    "tensor `{prefix}score.bias`: expected shape [{classes}], found {:?}",
                    bias.shape
                ));
            }
            let t = Tensor::<1>::from_data(TensorData::new(bias.data.clone(), [classes]), &device);
            self.head.bias = Some(Param::from_tensor(t));
        }
        Ok(self)
    }

    /// (trainable, total) parameter counts. Only an autodiff device tracks gradients, so on
    /// a plain device nothing counts as trainable.
    pub fn param_counts(&self) -> (usize, usize) {
        crate::lora::param_counts(self)
    }
}

/// A `[rows, cols]` tensor transposed to host `[cols, rows]` (Burn `[in, out]` → PyTorch
/// `nn.Linear` `[out, in]`).
fn host_t(t: Tensor<2>) -> HostTensor {
    let [rows, cols] = t.dims();
    let data = t
        .transpose()
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 data");
    HostTensor::new(vec![cols, rows], data)
}
