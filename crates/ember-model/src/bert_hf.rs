//! BERT checkpoints in HuggingFace format: `config.json` + `model.safetensors` or
//! `pytorch_model.bin`, as `BertModel`, `BertForMaskedLM`, `BertForPreTraining` and
//! sentence-transformers save them.
//!
//! Encoder tensors sit under `bert.` in the task models and at the top level in a bare
//! `BertModel`; the heads (`cls.predictions.*`, `cls.seq_relationship.*`, `pooler.dense.*`)
//! load when present. Every dense weight is an `nn.Linear` `[out, in]` and is transposed for
//! Burn's `[in, out]`. LayerNorms are `.weight`/`.bias`, or `.gamma`/`.beta` in old
//! TF-converted files. The MLM decoder is tied to the word embeddings; only its bias is read.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use serde::Deserialize;

use crate::bert::{Bert, BertConfig, BertHeads};
use crate::hf::{
    HfError, find_weights_file, param, read_checked, resolve_model_dir, set_layer_norm, set_linear,
    transpose,
};
use crate::weights::{HostTensor, TensorSet};

/// The fields of HF's `BertConfig` that shape the model; other fields are ignored.
#[derive(Debug, Deserialize)]
struct HfBertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
    hidden_dropout_prob: Option<f64>,
    attention_probs_dropout_prob: Option<f64>,
    pad_token_id: Option<u32>,
    position_embedding_type: Option<String>,
}

/// Reads a BERT `config.json` into ember's config.
pub fn read_bert_config(path: &Path) -> Result<BertConfig, HfError> {
    let bad = |message: String| HfError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    // Checked before the fields, so another model's config says what it is.
    if let Some(model_type) = value.get("model_type").and_then(|v| v.as_str())
        && model_type != "bert"
    {
        return Err(bad(format!(
            "model_type is \"{model_type}\", expected \"bert\""
        )));
    }
    let hf: HfBertConfig = crate::hf::config_from_json(value).map_err(bad)?;
    if let Some(kind) = &hf.position_embedding_type
        && kind != "absolute"
    {
        return Err(bad(format!(
            "position_embedding_type \"{kind}\" is not supported (only absolute)"
        )));
    }
    let config = BertConfig {
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: hf.num_attention_heads,
        intermediate_size: hf.intermediate_size,
        max_position_embeddings: hf.max_position_embeddings,
        type_vocab_size: hf.type_vocab_size.unwrap_or(2),
        layer_norm_eps: hf.layer_norm_eps.unwrap_or(1e-12),
        hidden_act: hf.hidden_act.unwrap_or_else(|| "gelu".into()),
        hidden_dropout_prob: hf.hidden_dropout_prob.unwrap_or(0.1),
        attention_probs_dropout_prob: hf.attention_probs_dropout_prob.unwrap_or(0.1),
        pad_token_id: hf.pad_token_id.unwrap_or(0),
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    Ok(config)
}

/// A HuggingFace BERT model directory, ready to load.
pub struct HfBert {
    /// The directory holding `config.json`.
    pub dir: PathBuf,
    pub config: BertConfig,
    /// The heads the file has weights for.
    pub heads: BertHeads,
    weights: TensorSet,
    /// `"bert."` or `""`: where the encoder's tensors sit.
    prefix: &'static str,
    /// Names read so far, for [`HfBert::unused_tensors`].
    used: RefCell<BTreeSet<String>>,
}

impl HfBert {
    /// Opens `path` (a model directory or HF cache folder): reads config.json and the weights'
    /// headers, and finds which heads the file has.
    pub fn open(path: &Path) -> Result<Self, HfError> {
        let dir = resolve_model_dir(path)?;
        let config = read_bert_config(&dir.join("config.json"))?;
        let weights = TensorSet::open(&find_weights_file(&dir)?)?;
        let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else if weights.contains("embeddings.word_embeddings.weight") {
            ""
        } else {
            let example = weights.names().next().unwrap_or("nothing").to_string();
            return Err(HfError::Other(format!(
                "{}: no `bert.embeddings.word_embeddings.weight` or `embeddings.word_embeddings.weight`: not a BERT checkpoint (first tensor: `{example}`)",
                weights.path().display()
            )));
        };
        let heads = BertHeads {
            pooler: weights.contains(&format!("{prefix}pooler.dense.weight")),
            mlm: weights.contains("cls.predictions.transform.dense.weight"),
            nsp: weights.contains("cls.seq_relationship.weight"),
        };
        Ok(Self {
            dir,
            config,
            heads,
            weights,
            prefix,
            used: RefCell::default(),
        })
    }

    /// Tensor names in the file that [`HfBert::load`] did not use, other than buffers and tied
    /// copies it skips on purpose (`embeddings.position_ids`, the MLM decoder weight).
    pub fn unused_tensors(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.weights
            .names()
            .filter(|n| !used.contains(*n))
            .filter(|n| !n.ends_with("embeddings.position_ids"))
            .filter(|n| *n != "cls.predictions.decoder.weight")
            .map(str::to_string)
            .collect()
    }

    /// Reads `full` (as named in the file) and checks its shape.
    fn tensor(&self, full: &str, expected: &[usize]) -> Result<HostTensor, HfError> {
        let tensor = read_checked(&self.weights, full, expected)?;
        self.used.borrow_mut().insert(full.to_string());
        Ok(tensor)
    }

    /// The first of `names` the file has (e.g. `LayerNorm.weight` or old `LayerNorm.gamma`).
    fn first_of(&self, names: [String; 2], expected: &[usize]) -> Result<HostTensor, HfError> {
        let [a, b] = names;
        if self.weights.contains(&b) && !self.weights.contains(&a) {
            self.tensor(&b, expected)
        } else {
            self.tensor(&a, expected)
        }
    }

    /// Builds the model with every head the file has, on `device`.
    pub fn load(&self, device: &Device) -> Result<Bert, HfError> {
        let c = &self.config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let p = self.prefix;
        let mut model = c.init(self.heads, device);
        let e = &mut model.embeddings;
        for (table, name, rows) in [
            (
                &mut e.word_embeddings.weight,
                "word_embeddings",
                c.vocab_size,
            ),
            (
                &mut e.position_embeddings.weight,
                "position_embeddings",
                c.max_position_embeddings,
            ),
            (
                &mut e.token_type_embeddings.weight,
                "token_type_embeddings",
                c.type_vocab_size,
            ),
        ] {
            *table = param(
                self.tensor(&format!("{p}embeddings.{name}.weight"), &[rows, h])?,
                device,
            );
        }
        self.layer_norm(
            &mut e.layer_norm,
            &format!("{p}embeddings.LayerNorm"),
            h,
            device,
        )?;
        for (n, layer) in model.layers.iter_mut().enumerate() {
            let l = format!("{p}encoder.layer.{n}.");
            let a = &mut layer.attention;
            self.linear(
                &mut a.query,
                &format!("{l}attention.self.query"),
                h,
                h,
                device,
            )?;
            self.linear(&mut a.key, &format!("{l}attention.self.key"), h, h, device)?;
            self.linear(
                &mut a.value,
                &format!("{l}attention.self.value"),
                h,
                h,
                device,
            )?;
            self.linear(
                &mut a.output,
                &format!("{l}attention.output.dense"),
                h,
                h,
                device,
            )?;
            self.layer_norm(
                &mut a.output_norm,
                &format!("{l}attention.output.LayerNorm"),
                h,
                device,
            )?;
            self.linear(
                &mut layer.intermediate,
                &format!("{l}intermediate.dense"),
                h,
                i,
                device,
            )?;
            self.linear(&mut layer.output, &format!("{l}output.dense"), i, h, device)?;
            self.layer_norm(
                &mut layer.output_norm,
                &format!("{l}output.LayerNorm"),
                h,
                device,
            )?;
        }
        if let Some(pooler) = &mut model.pooler {
            self.linear(pooler, &format!("{p}pooler.dense"), h, h, device)?;
        }
        if let Some(head) = &mut model.mlm {
            self.linear(
                &mut head.transform,
                "cls.predictions.transform.dense",
                h,
                h,
                device,
            )?;
            self.layer_norm(
                &mut head.layer_norm,
                "cls.predictions.transform.LayerNorm",
                h,
                device,
            )?;
            let bias = self.first_of(
                [
                    "cls.predictions.bias".into(),
                    "cls.predictions.decoder.bias".into(),
                ],
                &[c.vocab_size],
            )?;
            head.bias = param(bias, device);
            // Some files also save the tied decoder bias under its second name.
            self.used
                .borrow_mut()
                .insert("cls.predictions.decoder.bias".into());
        }
        if let Some(nsp) = &mut model.nsp {
            self.linear(nsp, "cls.seq_relationship", h, 2, device)?;
        }
        Ok(model)
    }

    /// Loads `name.weight` (`[d_out, d_in]`, transposed) and `name.bias` into `linear`.
    fn linear(
        &self,
        linear: &mut Linear,
        name: &str,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<(), HfError> {
        let weight = self.tensor(&format!("{name}.weight"), &[d_out, d_in])?;
        let bias = self.tensor(&format!("{name}.bias"), &[d_out])?;
        set_linear(linear, transpose(&weight), bias, device);
        Ok(())
    }

    fn layer_norm(
        &self,
        norm: &mut LayerNorm,
        name: &str,
        d: usize,
        device: &Device,
    ) -> Result<(), HfError> {
        let gamma = self.first_of([format!("{name}.weight"), format!("{name}.gamma")], &[d])?;
        let beta = self.first_of([format!("{name}.bias"), format!("{name}.beta")], &[d])?;
        set_layer_norm(norm, gamma, beta, device);
        Ok(())
    }
}
