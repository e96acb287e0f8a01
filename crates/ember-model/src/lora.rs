//! LoRA (Hu et al. 2021): a frozen weight `W` plus a trainable low-rank update, so a layer
//! computes `x·W + scale · x·A·B` with `A: [in, r]`, `B: [r, out]` and `scale = alpha / r`
//! (rsLoRA: `alpha / √r`). `B` starts at zero, so an adapted model starts equal to its base.
//!
//! Burn ships `apply_lora` for whole `Linear` layers; GPT-2's fused q|k|v projection needs one
//! adapter per slice (the book's model has separate W_query/W_key/W_value, which is what the
//! trainable counts assume), so ember keeps its own adapters next to the layers they adapt.

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

/// Which layers get adapters and how they scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// rsLoRA scaling `alpha / √rank` instead of `alpha / rank`.
    #[serde(default)]
    pub rslora: bool,
    /// Layers to adapt: any of `q`, `k`, `v`, `attn_out`, `ff_in`, `ff_out`, `head`.
    pub targets: Vec<LoraTarget>,
}

/// A kind of Linear layer in a GPT block (or the output/classification head).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    Q,
    K,
    V,
    AttnOut,
    FfIn,
    FfOut,
    Head,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::AttnOut,
        LoraTarget::FfIn,
        LoraTarget::FfOut,
        LoraTarget::Head,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q",
            LoraTarget::K => "k",
            LoraTarget::V => "v",
            LoraTarget::AttnOut => "attn_out",
            LoraTarget::FfIn => "ff_in",
            LoraTarget::FfOut => "ff_out",
            LoraTarget::Head => "head",
        }
    }

    /// Parses a comma-separated list (`all` for every layer).
    pub fn parse_list(text: &str) -> Result<Vec<LoraTarget>, String> {
        if text.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        text.split(',')
            .map(str::trim)
            .map(|name| {
                Self::ALL
                    .into_iter()
                    .find(|t| t.name() == name)
                    .ok_or_else(|| {
                        format!(
                            "unknown LoRA target `{name}` (expected all or a list of q, k, v, attn_out, ff_in, ff_out, head)"
                        )
                    })
            })
            .collect()
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("LoRA rank must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("LoRA alpha must be positive, got {}", self.alpha));
        }
        if self.targets.is_empty() {
            return Err("LoRA needs at least one target layer".into());
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    pub fn targets(&self, target: LoraTarget) -> bool {
        self.targets.contains(&target)
    }

    /// An adapter for a `[d_in, d_out]` layer on `device`.
    pub fn adapter(&self, d_in: usize, d_out: usize, device: &Device) -> LoraAdapter {
        // The book's init: kaiming_uniform_(A, a=√5) on A [in, r], whose fan-in for PyTorch is
        // its second dimension, r: U(-1/√r, 1/√r).
        let bound = 1.0 / (self.rank as f64).sqrt();
        let a = Tensor::<2>::random(
            [d_in, self.rank],
            Distribution::Uniform(-bound, bound),
            device,
        );
        let b = Tensor::<2>::zeros([self.rank, d_out], device);
        LoraAdapter {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale: self.scale(),
        }
    }
}

/// The low-rank update of one layer: `scale · x·A·B`.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `[in, rank]`.
    pub a: Param<Tensor<2>>,
    /// `[rank, out]`, zero at the start.
    pub b: Param<Tensor<2>>,
    pub scale: f64,
}

impl LoraAdapter {
    /// `x: [.., in]` → `[.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        x.matmul(self.a.val().unsqueeze())
            .matmul(self.b.val().unsqueeze())
            .mul_scalar(self.scale)
    }

    /// The update as a dense `[in, out]` matrix, for merging into the base weight.
    pub fn delta(&self) -> Tensor<2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scale)
    }

    pub fn num_params(&self) -> usize {
        let [d_in, rank] = self.a.dims();
        let out = self.b.dims()[1];
        rank * (d_in + out)
    }
}

/// Adds `adapter` (if any) to a layer's output.
pub fn with_adapter<const D: usize>(
    out: Tensor<D>,
    adapter: &Option<LoraAdapter>,
    x: Tensor<D>,
) -> Tensor<D> {
    match adapter {
        Some(adapter) => out + adapter.forward(x),
        None => out,
    }
}

/// (trainable, total) parameter counts of any module. Only an autodiff device tracks
/// gradients, so on a plain device nothing counts as trainable.
pub fn param_counts<M: Module>(module: &M) -> (usize, usize) {
    let mut counter = Counter::default();
    module.visit(&mut counter);
    (counter.trainable, counter.total)
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
