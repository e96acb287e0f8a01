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
    /// BertForPreTraining), a model name in the HuggingFace cache, or an ember BERT run
    /// directory (`ember pretrain --arch bert`).
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

/// How a sentence's token vectors become one vector. Described in `--pooling`'s own help: help
/// on the values would switch `embed --help` to clap's long, multi-line form.
#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    Cls,
    Mean,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// BERT directory in HuggingFace format (a sentence-transformers model directory works),
    /// a model name in the HuggingFace cache, or an ember BERT run directory.
    #[arg(long)]
    model: PathBuf,
    /// Sentences to embed.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    texts: Vec<String>,
    /// Embed every line of this file instead (empty lines skipped).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Pooling: `cls` (the [CLS] position) or `mean` (the mean over real tokens) [default: from
    /// the model's 1_Pooling/config.json, else mean].
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
    /// Replace an existing --out file.
    #[arg(long, requires = "out")]
    force: bool,
    /// Tokenizer: tokenizer.json, vocab.txt or a directory [default: the model directory's].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

/// A loaded BERT with its tokenizer.
struct LoadedBert {
    /// The HuggingFace directory or ember run directory it came from.
    dir: PathBuf,
    pad_token_id: u32,
    model: Bert,
    tokenizer: Tokenizer,
}

/// A BERT from an ember run directory (`ember pretrain --arch bert`) or a HuggingFace
/// directory (or a name in the HuggingFace cache).
fn load(model: &Path, tokenizer: Option<&Path>, device: &Device) -> Result<LoadedBert> {
    if crate::bert_pretrain::is_bert_run(model) {
        let run = crate::bert_pretrain::load_run(model, device)?;
        let tokenizer = match tokenizer {
            Some(path) => Tokenizer::open(path)?,
            None => run.tokenizer,
        };
        return checked(LoadedBert {
            dir: model.to_path_buf(),
            pad_token_id: run.config.pad_token_id,
            model: run.model,
            tokenizer,
        });
    }
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
    checked(LoadedBert {
        pad_token_id: hf.config.pad_token_id,
        dir: hf.dir,
        model: bert,
        tokenizer,
    })
}

fn checked(loaded: LoadedBert) -> Result<LoadedBert> {
    if loaded.tokenizer.vocab_size() > loaded.model.vocab_size() {
        bail!(
            "tokenizer has {} tokens but the model's vocab_size is {}",
            loaded.tokenizer.vocab_size(),
            loaded.model.vocab_size()
        );
    }
    Ok(loaded)
}

/// A `[MASK]`'s position and its candidates `(id, probability)`, most likely first.
pub(crate) type MaskPrediction = (usize, Vec<(u32, f32)>);

/// The `top_k` most likely tokens `(id, probability)` at every `mask_id` of each input:
/// `[input][mask] = (position, candidates)`. Only the masked rows go through the vocabulary
/// projection and the softmax. Candidates are the first `tokens` ids, the tokenizer's: rows of
/// a larger embedding table have no text to show.
pub(crate) fn mask_predictions(
    model: &Bert,
    inputs: &[EncoderInput],
    [pad_id, mask_id]: [u32; 2],
    tokens: usize,
    top_k: usize,
    device: &Device,
) -> Result<Vec<Vec<MaskPrediction>>> {
    let batch = EncoderBatch::pad(inputs, pad_id);
    let [ids, types, mask] = tensors(&batch, device);
    let hidden = model.forward(ids, types, mask); // [batch, seq, hidden]
    let width = hidden.dims()[2];
    let positions: Vec<(usize, usize)> = inputs
        .iter()
        .enumerate()
        .flat_map(|(row, input)| {
            input
                .ids
                .iter()
                .enumerate()
                .filter(|(_, id)| **id == mask_id)
                .map(move |(pos, _)| (row, pos))
        })
        .collect();
    let mut out: Vec<Vec<MaskPrediction>> = vec![Vec::new(); inputs.len()];
    if positions.is_empty() {
        return Ok(out);
    }
    let flat: Vec<i64> = positions
        .iter()
        .map(|&(row, pos)| (row * batch.seq + pos) as i64)
        .collect();
    let n = flat.len();
    let index = Tensor::<1, Int>::from_data(TensorData::new(flat, [n]), device);
    let rows = hidden
        .reshape([batch.batch * batch.seq, width])
        .select(0, index)
        .reshape([1, n, width]);
    let probs = softmax(model.mlm_logits(rows), 2); // [1, n, vocab]
    let vocab = probs.dims()[2];
    let probs: Vec<f32> = probs.into_data().try_into_vec_as::<f32>()?;
    for (&(row, pos), dist) in positions.iter().zip(probs.chunks(vocab)) {
        let mut ranked: Vec<(u32, f32)> = dist
            .iter()
            .take(tokens)
            .enumerate()
            .map(|(id, &p)| (id as u32, p))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(top_k);
        out[row].push((pos, ranked));
    }
    Ok(out)
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
        .unwrap_or(loaded.pad_token_id)
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
            loaded.dir.display()
        );
    }
    let tokenizer = &loaded.tokenizer;
    let mask_id = ["[MASK]", "<mask>"]
        .iter()
        .find_map(|t| tokenizer.token_id(t))
        .context("the tokenizer has no [MASK] token")?;
    let max_len = loaded.model.max_positions();
    progress::warn_cut(
        args.texts.iter().map(|t| {
            Ok(tokenizer
                .encode_for_encoder(t, args.pair.as_deref(), max_len + 1)?
                .ids
                .len())
        }),
        max_len,
        "the model's limit",
    )?;
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
    let predictions = mask_predictions(
        &loaded.model,
        &inputs,
        [pad_id(&loaded), mask_id],
        tokenizer.vocab_size(),
        args.top_k as usize,
        &device,
    )?;
    for (text, masks) in args.texts.iter().zip(predictions) {
        println!("{text}");
        for (pos, ranked) in masks {
            println!("  [MASK] at token {pos}:");
            for (id, p) in ranked {
                let token = tokenizer.token(id).unwrap_or_else(|| format!("<{id}>"));
                println!("    {p:.4}  {token}  (id {id})");
            }
        }
    }
    Ok(())
}

/// sentence-transformers' settings beside the weights: pooling (`1_Pooling/config.json`) and
/// `max_seq_length` (`sentence_bert_config.json`); `None` where a file or field is absent, and
/// the pooling when `pooling_given` (the command line chose it). A pooling mode ember does not
/// have (max, weighted mean, last token, mean / √length) is an error: the model's vectors would
/// silently be other ones.
fn sentence_transformers_settings(
    dir: &Path,
    pooling_given: bool,
) -> Result<(Option<SentencePooling>, Option<usize>)> {
    let pooling_config = dir.join("1_Pooling/config.json");
    let on = |key: &str| -> Result<bool> {
        Ok(ember_data::optional_json_field::<bool>(&pooling_config, key)? == Some(true))
    };
    let pooling = if pooling_given {
        None
    } else if on("pooling_mode_cls_token")? {
        Some(SentencePooling::Cls)
    } else if on("pooling_mode_mean_tokens")? {
        Some(SentencePooling::Mean)
    } else {
        let other = [
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        ];
        for mode in other {
            if on(mode)? {
                bail!(
                    "{}: {mode} is not supported (ember pools by the CLS token or the mean); \
                     pass --pooling cls or mean to embed with one of those anyway",
                    pooling_config.display()
                );
            }
        }
        None
    };
    let max_len = ember_data::optional_json_field::<usize>(
        &dir.join("sentence_bert_config.json"),
        "max_seq_length",
    )?;
    Ok((pooling, max_len))
}

pub fn run_embed(args: EmbedArgs, device_spec: &str) -> Result<()> {
    if let Some(out) = &args.out {
        crate::runs::check_output_file(out, args.force)?;
    }
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
    let (st_pooling, st_max_len) =
        sentence_transformers_settings(&loaded.dir, args.pooling.is_some())?;
    let pooling = match args.pooling {
        Some(PoolingArg::Cls) => SentencePooling::Cls,
        Some(PoolingArg::Mean) => SentencePooling::Mean,
        None => st_pooling.unwrap_or(SentencePooling::Mean),
    };
    let positions = loaded.model.max_positions();
    // sentence_bert_config.json's length is capped by the positions, as sentence-transformers
    // caps it by the tokenizer's limit; --max-length must fit.
    let max_len = match args.max_length {
        Some(n) => n,
        None => st_max_len.map_or(positions, |n| n.min(positions)),
    };
    if max_len < 3 || max_len > positions {
        bail!(
            "--max-length {max_len} must be between 3 and the model's max_position_embeddings {positions}"
        );
    }
    progress::warn_cut(
        texts.iter().map(|t| {
            Ok(loaded
                .tokenizer
                .encode_for_encoder(t, None, max_len + 1)?
                .ids
                .len())
        }),
        max_len,
        "the model's limit",
    )?;
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
