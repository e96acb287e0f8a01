//! `ember fill-mask` and `ember embed`: BERT encoders from HuggingFace model directories
//! (BertForMaskedLM / BertForPreTraining for fill-mask; any BERT, e.g. a sentence-transformers
//! model such as all-MiniLM-L6-v2, for embeddings).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use clap::{Args, ValueEnum};
use ember_data::tokenizer::{EncoderBatch, EncoderInput, Tokenizer};
use ember_model::bert::{Bert, SentencePooling, sentence_embeddings};
use ember_model::bert_hf::HfBert;

use crate::{device, progress, runs};

#[derive(Args)]
pub struct FillMaskArgs {
    /// BERT directory in HuggingFace format with an MLM head (BertForMaskedLM or
    /// BertForPreTraining), or a model name in the HuggingFace cache.
    #[arg(long)]
    model: PathBuf,
    /// Texts with one or more [MASK] tokens.
    #[arg(required = true)]
    texts: Vec<String>,
    /// Second segment (sentence B, token type 1) for a single text.
    #[arg(long)]
    pair: Option<String>,
    /// Candidates to print per mask.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,
    /// Tokenizer: tokenizer.json, vocab.txt or a directory [default: the model directory's].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    /// The [CLS] position.
    Cls,
    /// The mean over real tokens.
    Mean,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// BERT directory in HuggingFace format (a sentence-transformers model directory works),
    /// or a model name in the HuggingFace cache.
    #[arg(long)]
    model: PathBuf,
    /// Sentences to embed.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    texts: Vec<String>,
    /// Embed every line of this file instead (empty lines skipped).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Pooling [default: from the model's 1_Pooling/config.json, else mean].
    #[arg(long, value_enum)]
    pooling: Option<PoolingArg>,
    /// Longest input in tokens, special tokens included [default: the model's
    /// sentence_bert_config.json max_seq_length, else max_position_embeddings].
    #[arg(long)]
    max_length: Option<usize>,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Write the JSON lines here (written whole, then renamed) instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tokenizer: tokenizer.json, vocab.txt or a directory [default: the model directory's].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

/// A loaded BERT with its tokenizer.
struct LoadedBert {
    hf: HfBert,
    model: Bert,
    tokenizer: Tokenizer,
}

fn load(model: &Path, tokenizer: Option<&Path>, device: &Device) -> Result<LoadedBert> {
    let cached = runs::hf_cache_dir(model);
    let hf = HfBert::open(cached.as_deref().unwrap_or(model))?;
    let bert = hf.load(device)?;
    let unused = hf.unused_tensors();
    if let Some(first) = unused.first() {
        eprintln!(
            "note: {} tensor(s) in {} not used (e.g. `{first}`)",
            unused.len(),
            hf.dir.display()
        );
    }
    let tokenizer = Tokenizer::open(tokenizer.unwrap_or(&hf.dir))?;
    if tokenizer.vocab_size() > bert.vocab_size() {
        bail!(
            "tokenizer has {} tokens but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            bert.vocab_size()
        );
    }
    Ok(LoadedBert {
        hf,
        model: bert,
        tokenizer,
    })
}

/// `[batch, seq]` id, type-id and mask tensors of a padded batch.
fn tensors(batch: &EncoderBatch, device: &Device) -> [Tensor<2, Int>; 3] {
    let shape = [batch.batch, batch.seq];
    [&batch.ids, &batch.type_ids, &batch.attention_mask]
        .map(|v| Tensor::from_data(TensorData::new(v.clone(), shape), device))
}

fn pad_id(loaded: &LoadedBert) -> u32 {
    loaded
        .tokenizer
        .token_id("[PAD]")
        .unwrap_or(loaded.hf.config.pad_token_id)
}

pub fn run_fill_mask(args: FillMaskArgs, device_spec: &str) -> Result<()> {
    if args.pair.is_some() && args.texts.len() != 1 {
        bail!(
            "--pair goes with exactly one text, got {}",
            args.texts.len()
        );
    }
    let device = device::parse_device(device_spec)?;
    let loaded = load(&args.model, args.tokenizer.as_deref(), &device)?;
    if loaded.model.mlm.is_none() {
        bail!(
            "{}: the checkpoint has no masked-LM head (cls.predictions.*); fill-mask needs BertForMaskedLM or BertForPreTraining weights",
            loaded.hf.dir.display()
        );
    }
    let tokenizer = &loaded.tokenizer;
    let mask_id = ["[MASK]", "<mask>"]
        .iter()
        .find_map(|t| tokenizer.token_id(t))
        .context("the tokenizer has no [MASK] token")?;
    let max_len = loaded.model.max_positions();
    let mut inputs = Vec::new();
    for (n, text) in args.texts.iter().enumerate() {
        let input = tokenizer.encode_for_encoder(text, args.pair.as_deref(), max_len)?;
        if !input.ids.contains(&mask_id) {
            bail!(
                "text {}: no [MASK] token{}",
                n + 1,
                if tokenizer.encode(text)?.contains(&mask_id) {
                    format!(" within the first {max_len} tokens")
                } else {
                    String::new()
                }
            );
        }
        inputs.push(input);
    }
    let batch = EncoderBatch::pad(&inputs, pad_id(&loaded));
    let [ids, types, mask] = tensors(&batch, &device);
    let hidden = loaded.model.forward(ids, types, mask);
    let probs = softmax(loaded.model.mlm_logits(hidden), 2); // [batch, seq, vocab]
    let vocab = probs.dims()[2];
    let probs: Vec<f32> = probs.into_data().try_into_vec_as::<f32>()?;
    let top_k = args.top_k as usize;
    for (row, (text, input)) in args.texts.iter().zip(&inputs).enumerate() {
        println!("{text}");
        for (pos, _) in input
            .ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == mask_id)
        {
            let start = (row * batch.seq + pos) * vocab;
            let mut ranked: Vec<(usize, f32)> = probs[start..start + vocab]
                .iter()
                .copied()
                .enumerate()
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            println!("  [MASK] at token {pos}:");
            for (id, p) in ranked.into_iter().take(top_k) {
                let token = tokenizer
                    .token(id as u32)
                    .unwrap_or_else(|| format!("<{id}>"));
                println!("    {p:.4}  {token}  (id {id})");
            }
        }
    }
    Ok(())
}

/// sentence-transformers' settings beside the weights: pooling (`1_Pooling/config.json`) and
/// `max_seq_length` (`sentence_bert_config.json`).
fn sentence_transformers_settings(dir: &Path) -> (Option<SentencePooling>, Option<usize>) {
    let read = |path: PathBuf| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    };
    let pooling = read(dir.join("1_Pooling/config.json")).and_then(|config| {
        let on = |key: &str| config.get(key).and_then(|v| v.as_bool()) == Some(true);
        if on("pooling_mode_cls_token") {
            Some(SentencePooling::Cls)
        } else if on("pooling_mode_mean_tokens") {
            Some(SentencePooling::Mean)
        } else {
            None
        }
    });
    let max_len = read(dir.join("sentence_bert_config.json"))
        .and_then(|c| c.get("max_seq_length").and_then(|v| v.as_u64()))
        .map(|n| n as usize);
    (pooling, max_len)
}

pub fn run_embed(args: EmbedArgs, device_spec: &str) -> Result<()> {
    let texts: Vec<String> = match &args.file {
        Some(path) => ember_data::read_text_file(path)?
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => args.texts.clone(),
    };
    if texts.is_empty() {
        bail!(
            "{}: no text to embed",
            args.file
                .as_deref()
                .map_or("".into(), |p| p.display().to_string())
        );
    }
    let device = device::parse_device(device_spec)?;
    let loaded = load(&args.model, args.tokenizer.as_deref(), &device)?;
    let (st_pooling, st_max_len) = sentence_transformers_settings(&loaded.hf.dir);
    let pooling = match args.pooling {
        Some(PoolingArg::Cls) => SentencePooling::Cls,
        Some(PoolingArg::Mean) => SentencePooling::Mean,
        None => st_pooling.unwrap_or(SentencePooling::Mean),
    };
    let positions = loaded.model.max_positions();
    let max_len = args.max_length.or(st_max_len).unwrap_or(positions);
    if max_len < 3 || max_len > positions {
        bail!(
            "--max-length {max_len} must be between 3 and the model's max_position_embeddings {positions}"
        );
    }
    let pad = pad_id(&loaded);
    let bar = (texts.len() > args.batch_size as usize)
        .then(|| progress::count_bar(texts.len() as u64, "embedding"));
    let mut lines = String::new();
    for chunk in texts.chunks(args.batch_size as usize) {
        let inputs: Vec<EncoderInput> = chunk
            .iter()
            .map(|t| loaded.tokenizer.encode_for_encoder(t, None, max_len))
            .collect::<Result<_, _>>()?;
        let batch = EncoderBatch::pad(&inputs, pad);
        let [ids, types, mask] = tensors(&batch, &device);
        let hidden = loaded.model.forward(ids, types, mask.clone());
        let vectors = sentence_embeddings(hidden, mask, pooling);
        let width = vectors.dims()[1];
        let values: Vec<f32> = vectors.into_data().try_into_vec_as::<f32>()?;
        for (text, vector) in chunk.iter().zip(values.chunks(width)) {
            let line = serde_json::json!({ "text": text, "embedding": vector });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        if let Some(bar) = &bar {
            bar.inc(chunk.len() as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match &args.out {
        Some(path) => ember_data::write_atomically(path, lines.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?,
        None => std::io::stdout().write_all(lines.as_bytes())?,
    }
    Ok(())
}
