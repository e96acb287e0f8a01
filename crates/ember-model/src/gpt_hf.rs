//! GPT-2 checkpoints in HuggingFace format (`config.json` + `model.safetensors` or
//! `pytorch_model.bin`), in and out.
//!
//! HF's tensor tree is the one [`Gpt`] uses (`wte`, `wpe`, `h.N.ln_1`, `h.N.attn.c_attn`, …),
//! with or without a `transformer.` prefix. Its `Conv1D` layers store weights `[in, out]`, the
//! layout of Burn's `Linear`, so they load as they are; only an untied `lm_head.weight`
//! (an `nn.Linear`, `[vocab, emb]`) is transposed. The fused `c_attn` `[emb, 3·emb]` holds
//! q | k | v side by side, exactly as [`crate::gpt::CausalSelfAttention`] expects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use serde::Deserialize;
use serde_json::json;

use crate::gpt::{Gpt, GptConfig};
pub use crate::hf::{HfError, resolve_model_dir};
use crate::hf::{
    find_weights_file, host, param, read_checked, set_layer_norm, set_linear, transpose,
};
use crate::weights::{HostTensor, TensorSet, write_safetensors};

/// The fields of HF's `GPT2Config` that shape the model. Other fields are ignored.
#[derive(Debug, Deserialize)]
struct HfGpt2Config {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    resid_pdrop: Option<f64>,
    tie_word_embeddings: Option<bool>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    eos_token_id: Option<u32>,
}

/// A HuggingFace GPT-2 model directory, ready to load.
pub struct HfGpt2 {
    /// The directory holding `config.json` (a snapshot directory for the HF cache layout).
    pub dir: PathBuf,
    pub config: GptConfig,
    /// `eos_token_id` of config.json, when given.
    pub eos_token_id: Option<u32>,
    weights: TensorSet,
    /// `"transformer."` or `""`: how this file names its tensors.
    prefix: &'static str,
}

/// The GPT-2 size whose shape `config` has, if any (`gpt2-small`, …, `gpt2-xl`).
pub fn gpt2_size_name(config: &GptConfig) -> Option<&'static str> {
    let shape = (config.n_layers, config.emb_dim, config.n_heads);
    let name = match shape {
        (12, 768, 12) => "gpt2-small (124M)",
        (24, 1024, 16) => "gpt2-medium (355M)",
        (36, 1280, 20) => "gpt2-large (774M)",
        (48, 1600, 25) => "gpt2-xl (1558M)",
        _ => return None,
    };
    (config.vocab_size == 50257).then_some(name)
}

/// Reads a GPT-2 `config.json` into ember's config (qkv bias on, as GPT-2 has).
pub fn read_gpt2_config(path: &Path) -> Result<(GptConfig, Option<u32>), HfError> {
    let bad = |message: String| HfError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    // Checked before the fields, so another model's config says what it is.
    if let Some(model_type) = value.get("model_type").and_then(|v| v.as_str())
        && model_type != "gpt2"
    {
        return Err(bad(format!(
            "model_type is \"{model_type}\", expected \"gpt2\""
        )));
    }
    let hf: HfGpt2Config = crate::hf::config_from_json(value).map_err(bad)?;
    let activation = hf.activation_function.as_deref().unwrap_or("gelu_new");
    if !matches!(activation, "gelu_new" | "gelu_pytorch_tanh") {
        return Err(bad(format!(
            "activation_function \"{activation}\" is not supported (GPT-2 uses gelu_new, the tanh GELU)"
        )));
    }
    if let Some(n_inner) = hf.n_inner
        && n_inner != 4 * hf.n_embd
    {
        return Err(bad(format!(
            "n_inner {n_inner} is not 4 × n_embd ({}); ember's GPT uses a 4× feed-forward",
            4 * hf.n_embd
        )));
    }
    if hf.scale_attn_weights == Some(false) || hf.scale_attn_by_inverse_layer_idx == Some(true) {
        return Err(bad(
            "non-standard attention scaling (scale_attn_weights false or scale_attn_by_inverse_layer_idx true) is not supported".into(),
        ));
    }
    let config = GptConfig {
        vocab_size: hf.vocab_size,
        context_length: hf.n_positions,
        emb_dim: hf.n_embd,
        n_heads: hf.n_head,
        n_layers: hf.n_layer,
        drop_rate: hf.resid_pdrop.unwrap_or(0.1),
        qkv_bias: true,
        tie_weights: hf.tie_word_embeddings.unwrap_or(true),
        layer_norm_eps: hf.layer_norm_epsilon.unwrap_or(1e-5),
        emb_init_std: 0.02,
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    Ok((config, hf.eos_token_id))
}

impl HfGpt2 {
    /// Opens `path` (see [`resolve_model_dir`]): reads config.json and the weights' headers.
    pub fn open(path: &Path) -> Result<Self, HfError> {
        let dir = resolve_model_dir(path)?;
        let (config, eos_token_id) = read_gpt2_config(&dir.join("config.json"))?;
        let file = find_weights_file(&dir)?;
        let weights = TensorSet::open(&file)?;
        let prefix = if weights.contains("transformer.wte.weight") {
            "transformer."
        } else if weights.contains("wte.weight") {
            ""
        } else {
            let example = weights.names().next().unwrap_or("nothing").to_string();
            return Err(HfError::Other(format!(
                "{}: no `transformer.wte.weight` or `wte.weight`: not a GPT-2 checkpoint (first tensor: `{example}`)",
                weights.path().display()
            )));
        };
        Ok(Self {
            dir,
            config,
            eos_token_id,
            weights,
            prefix,
        })
    }

    /// Tensor names in the file that the model does not use (other than GPT-2's causal-mask
    /// buffers `attn.bias` / `attn.masked_bias`, which old checkpoints still carry).
    pub fn unused_tensors(&self) -> Vec<String> {
        let expected: Vec<String> = expected_names(&self.config)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        self.weights
            .names()
            .map(|n| n.strip_prefix(self.prefix).unwrap_or(n))
            .filter(|n| !expected.iter().any(|e| e == n))
            .filter(|n| !(n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias")))
            .filter(|n| !(*n == "lm_head.weight" && self.config.tie_weights))
            .map(str::to_string)
            .collect()
    }

    /// Reads tensor `name` (without prefix) and checks its shape.
    fn tensor(&self, name: &str, expected: &[usize]) -> Result<HostTensor, HfError> {
        // lm_head sits outside the `transformer.` tree.
        let full = if name == "lm_head.weight" {
            name.to_string()
        } else {
            format!("{}{name}", self.prefix)
        };
        read_checked(&self.weights, &full, expected)
    }

    /// Builds the model on `device`. `context_length`, when smaller than the checkpoint's
    /// `n_positions`, keeps only the first rows of the position embedding.
    pub fn load(&self, device: &Device, context_length: Option<usize>) -> Result<Gpt, HfError> {
        let mut config = self.config.clone();
        if let Some(context) = context_length {
            if context == 0 || context > config.context_length {
                return Err(HfError::Other(format!(
                    "context length {context} must be between 1 and the checkpoint's n_positions {}",
                    config.context_length
                )));
            }
            config.context_length = context;
        }
        let (v, d) = (self.config.vocab_size, self.config.emb_dim);
        let mut model = config.init(device);
        model.wte.weight = param(self.tensor("wte.weight", &[v, d])?, device);
        let wpe = self.tensor("wpe.weight", &[self.config.context_length, d])?;
        let rows = config.context_length;
        model.wpe.weight = param(
            HostTensor::new(vec![rows, d], wpe.data[..rows * d].to_vec()),
            device,
        );
        for (i, block) in model.h.iter_mut().enumerate() {
            let p = format!("h.{i}.");
            self.layer_norm(&mut block.ln_1, &format!("{p}ln_1"), d, device)?;
            self.linear(
                &mut block.attn.c_attn,
                &format!("{p}attn.c_attn"),
                d,
                3 * d,
                device,
            )?;
            self.linear(
                &mut block.attn.c_proj,
                &format!("{p}attn.c_proj"),
                d,
                d,
                device,
            )?;
            self.layer_norm(&mut block.ln_2, &format!("{p}ln_2"), d, device)?;
            self.linear(
                &mut block.mlp.c_fc,
                &format!("{p}mlp.c_fc"),
                d,
                4 * d,
                device,
            )?;
            self.linear(
                &mut block.mlp.c_proj,
                &format!("{p}mlp.c_proj"),
                4 * d,
                d,
                device,
            )?;
        }
        self.layer_norm(&mut model.ln_f, "ln_f", d, device)?;
        if let Some(head) = &mut model.lm_head {
            // nn.Linear [vocab, emb] → Burn [emb, vocab].
            let w = self.tensor("lm_head.weight", &[v, d])?;
            head.weight = param(transpose(&w), device);
        }
        Ok(model)
    }

    fn linear(
        &self,
        linear: &mut Linear,
        name: &str,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<(), HfError> {
        let weight = self.tensor(&format!("{name}.weight"), &[d_in, d_out])?;
        let bias = self.tensor(&format!("{name}.bias"), &[d_out])?;
        set_linear(linear, weight, bias, device);
        Ok(())
    }

    fn layer_norm(
        &self,
        norm: &mut LayerNorm,
        name: &str,
        d: usize,
        device: &Device,
    ) -> Result<(), HfError> {
        let gamma = self.tensor(&format!("{name}.weight"), &[d])?;
        let beta = self.tensor(&format!("{name}.bias"), &[d])?;
        set_layer_norm(norm, gamma, beta, device);
        Ok(())
    }
}

/// Every tensor a GPT-2 checkpoint of `config` holds (names without `transformer.`), with its
/// shape; `lm_head.weight` only when the head is untied.
fn expected_names(config: &GptConfig) -> Vec<(String, Vec<usize>)> {
    let (v, c, d) = (config.vocab_size, config.context_length, config.emb_dim);
    let mut names = vec![
        ("wte.weight".to_string(), vec![v, d]),
        ("wpe.weight".to_string(), vec![c, d]),
    ];
    for i in 0..config.n_layers {
        let p = format!("h.{i}.");
        for (name, shape) in [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_attn.bias", vec![3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("attn.c_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![d, 4 * d]),
            ("mlp.c_fc.bias", vec![4 * d]),
            ("mlp.c_proj.weight", vec![4 * d, d]),
            ("mlp.c_proj.bias", vec![d]),
        ] {
            names.push((format!("{p}{name}"), shape));
        }
    }
    names.push(("ln_f.weight".into(), vec![d]));
    names.push(("ln_f.bias".into(), vec![d]));
    if !config.tie_weights {
        names.push(("lm_head.weight".into(), vec![v, d]));
    }
    names
}

/// The model's tensors under HF GPT-2 names (with the `transformer.` prefix, as
/// `save_pretrained` writes them). A model without qkv bias gets a zero `c_attn.bias`, which
/// computes the same function.
pub fn gpt2_tensors(model: &Gpt) -> BTreeMap<String, HostTensor> {
    let mut out = BTreeMap::new();
    let mut put = |name: String, tensor: HostTensor| {
        out.insert(name, tensor);
    };
    let t = "transformer.";
    put(format!("{t}wte.weight"), host(model.wte.weight.val()));
    put(format!("{t}wpe.weight"), host(model.wpe.weight.val()));
    let linear = |put: &mut dyn FnMut(String, HostTensor), name: String, l: &Linear| {
        let weight = host(l.weight.val());
        let d_out = weight.shape[1];
        let bias = match &l.bias {
            Some(b) => host(b.val()),
            None => HostTensor::new(vec![d_out], vec![0.0; d_out]),
        };
        put(format!("{name}.weight"), weight);
        put(format!("{name}.bias"), bias);
    };
    let norm = |put: &mut dyn FnMut(String, HostTensor), name: String, n: &LayerNorm| {
        let gamma = host(n.gamma.val());
        let d = gamma.shape[0];
        let beta = match &n.beta {
            Some(b) => host(b.val()),
            None => HostTensor::new(vec![d], vec![0.0; d]),
        };
        put(format!("{name}.weight"), gamma);
        put(format!("{name}.bias"), beta);
    };
    for (i, block) in model.h.iter().enumerate() {
        let p = format!("{t}h.{i}.");
        norm(&mut put, format!("{p}ln_1"), &block.ln_1);
        linear(&mut put, format!("{p}attn.c_attn"), &block.attn.c_attn);
        linear(&mut put, format!("{p}attn.c_proj"), &block.attn.c_proj);
        norm(&mut put, format!("{p}ln_2"), &block.ln_2);
        linear(&mut put, format!("{p}mlp.c_fc"), &block.mlp.c_fc);
        linear(&mut put, format!("{p}mlp.c_proj"), &block.mlp.c_proj);
    }
    norm(&mut put, format!("{t}ln_f"), &model.ln_f);
    if let Some(head) = &model.lm_head {
        put("lm_head.weight".into(), transpose(&host(head.weight.val())));
    }
    out
}

/// Writes `config.json` + `model.safetensors` in HF GPT-2 layout into `dir` (created if
/// needed), loadable with `GPT2LMHeadModel.from_pretrained(dir)`.
pub fn export_gpt2(
    model: &Gpt,
    config: &GptConfig,
    eos_token_id: Option<u32>,
    dir: &Path,
) -> Result<(), HfError> {
    let io = |path: &Path, e: std::io::Error| HfError::Other(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let eos = eos_token_id.unwrap_or(config.vocab_size as u32 - 1);
    let hf_config = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": model.context_length(),
        "n_embd": config.emb_dim,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "use_cache": true,
        "torch_dtype": "float32",
    });
    let weights_path = dir.join("model.safetensors");
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&weights_path, &gpt2_tensors(model), &metadata)?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&hf_config).expect("json") + "\n";
    ember_data::write_atomically(&config_path, text.as_bytes()).map_err(|e| io(&config_path, e))
}
