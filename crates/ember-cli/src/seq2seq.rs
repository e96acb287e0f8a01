//! `ember train seq2seq` and `ember translate`: encoder–decoders (transformer or LSTM with
//! attention) on `source<TAB>target` pairs, character-level.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::{Args, Subcommand};
use ember_data::bpe::BpeTokenizer;
use ember_data::seq2seq::{
    BOS, CharVocab, EOS, Pair, Seq2SeqBatch, Seq2SeqLoader, Seq2SeqVocab, read_pairs, split_files,
};
use ember_model::config::{ConfigError, parse_toml};
use ember_model::lstm_seq2seq::LstmSeq2SeqConfig;
use ember_model::seq2seq::{DecodeOptions, Decoded, Seq2SeqModel, beam_search, greedy};
use ember_model::transformer_seq2seq::TransformerSeq2SeqConfig;
use ember_train::checkpoint;
use ember_train::lm::{LossModel, Splits, TrainOptions};
use serde::{Deserialize, Serialize};

use crate::device;
use crate::pretrain::{resume_from, train_and_report};
use crate::progress::{EpochSample, TrainProgress};

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train an encoder–decoder on source<TAB>target pairs from a recipe (--config
    /// dates-transformer or dates-lstm: date normalisation), or continue one (--resume).
    Seq2seq(TrainSeq2SeqArgs),
}

#[derive(Args)]
pub struct TrainSeq2SeqArgs {
    /// Recipe: a TOML file or a built-in name (dates-transformer, dates-lstm).
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint (--epochs may grow).
    #[arg(long, conflicts_with_all = ["config", "data", "lr", "batch_size", "overwrite", "out"])]
    resume: Option<PathBuf>,
    /// Data directory with train.tsv, val.tsv and test.tsv [default: the recipe's].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Epochs [default: the recipe's]; with --resume, the new total.
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate [default: the recipe's].
    #[arg(long)]
    lr: Option<f64>,
    /// Pairs per batch [default: the recipe's].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Run directory for checkpoints, metrics and plots.
    #[arg(long, default_value = "runs/seq2seq")]
    out: PathBuf,
    /// Replace the run already in --out.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
pub struct TranslateArgs {
    /// Run directory written by `ember train seq2seq`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Texts to translate.
    #[arg(required = true)]
    texts: Vec<String>,
    /// Beam width (1: greedy).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    beam: u32,
    /// Rank finished beams by log p / length^P.
    #[arg(long, default_value_t = 1.0, value_parser = finite_number)]
    length_penalty: f64,
    /// Most tokens per output, the end token included [default: twice the longest training
    /// target].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_len: Option<u32>,
    /// Draw the attention over the source of the (single) text as a heatmap PNG.
    #[arg(long)]
    attention_png: Option<PathBuf>,
    /// Replace an existing --attention-png file.
    #[arg(long, requires = "attention_png")]
    force: bool,
}

/// A finite number (NaN and infinities rank nothing).
fn finite_number(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err("must be a finite number".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The model part of a recipe: `arch = "transformer"` or `"lstm"` with that model's fields.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "arch", rename_all = "lowercase")]
pub enum Seq2SeqConfig {
    Transformer(TransformerSeq2SeqConfig),
    Lstm(LstmSeq2SeqConfig),
}

/// By hand rather than serde's internally tagged form, whose errors inside the table name
/// neither the field nor its line (`[model]`: invalid type: string "x", expected usize): the
/// table is read whole, then as the config `arch` names, whose errors name the field.
impl<'de> Deserialize<'de> for Seq2SeqConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(deserializer)?;
        let arch = match table.remove("arch") {
            Some(toml::Value::String(arch)) => arch,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`arch`: expected \"transformer\" or \"lstm\", found {other}"
                )));
            }
            None => return Err(D::Error::missing_field("arch")),
        };
        // toml's own errors from a table name the key (`… expected usize in `d_model``).
        fn read<T: serde::de::DeserializeOwned, E: Error>(table: toml::Table) -> Result<T, E> {
            T::deserialize(toml::Value::Table(table)).map_err(E::custom)
        }
        match arch.as_str() {
            "transformer" => read(table).map(Self::Transformer),
            "lstm" => read(table).map(Self::Lstm),
            other => Err(D::Error::unknown_variant(other, &["transformer", "lstm"])),
        }
    }
}

impl Seq2SeqConfig {
    /// Longest sequence the model takes (the transformer's positions; the LSTM has no limit).
    fn max_len(&self) -> usize {
        match self {
            Self::Transformer(c) => c.max_len,
            Self::Lstm(_) => usize::MAX,
        }
    }

    fn set_vocab(&mut self, size: usize) -> Result<()> {
        let (src, tgt) = match self {
            Self::Transformer(c) => (&mut c.src_vocab_size, &mut c.tgt_vocab_size),
            Self::Lstm(c) => (&mut c.src_vocab_size, &mut c.tgt_vocab_size),
        };
        for (name, field) in [("src_vocab_size", src), ("tgt_vocab_size", tgt)] {
            if *field == 0 {
                *field = size;
            } else if *field < size {
                bail!("{name} = {} is below the data's {size} characters", *field);
            }
        }
        Ok(self.validate()?)
    }

    /// The model's own checks (sizes, dropout), whichever architecture it is.
    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Transformer(c) => c.validate(),
            Self::Lstm(c) => c.validate(),
        }
    }
}

/// When the data directory lacks its files, generate the date task there.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateDates {
    pub n: usize,
    pub seed: u64,
}

/// What the model reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// One token per character of the training pairs.
    #[default]
    Char,
    /// A byte-level BPE of `bpe_vocab_size` trained on the training pairs.
    Bpe,
}

fn default_bpe_vocab_size() -> usize {
    1000
}

/// A seq2seq recipe (`configs/seq2seq/*.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqRecipe {
    /// Directory with train.tsv, val.tsv and test.tsv (relative to the working directory).
    pub data: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_dates: Option<GenerateDates>,
    /// `char` (default) or `bpe`.
    #[serde(default)]
    pub tokens: TokenKind,
    #[serde(default = "default_bpe_vocab_size")]
    pub bpe_vocab_size: usize,
    pub model: Seq2SeqConfig,
    pub train: TrainOptions,
}

/// What a seq2seq run directory records (`seq2seq.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqRun {
    pub recipe: Seq2SeqRecipe,
    /// The characters of the vocabulary after the four specials, in id order (empty for a
    /// BPE run, whose vocabulary is the run's encoder.json + vocab.bpe).
    pub vocab: String,
    /// Most tokens decoded per output.
    pub decode_max_len: usize,
}

const RUN_FILE: &str = "seq2seq.toml";

pub fn run_train(command: TrainCommand, device_spec: &str) -> Result<()> {
    let TrainCommand::Seq2seq(args) = command;
    let device = device::parse_device(device_spec)?.autodiff();
    let previous = args.resume.as_deref().map(read_run).transpose()?;
    let out = args.resume.clone().unwrap_or_else(|| args.out.clone());
    let mut recipe = match (&previous, &args.config) {
        (Some(run), _) => run.recipe.clone(),
        (None, Some(config)) => crate::models::load_recipe::<Seq2SeqRecipe>(
            crate::models::RecipeKind::Seq2Seq,
            Some(config),
            "dates-transformer",
        )?,
        (None, None) => unreachable!("clap requires --config or --resume"),
    };
    if let Some(data) = &args.data {
        recipe.data = data.clone();
    }
    if previous.is_none() {
        // Absolute, so that --resume from another directory reads the same pairs.
        recipe.data = crate::runs::absolute(&recipe.data);
    }
    crate::pretrain::set_epochs(
        &mut recipe.train,
        args.epochs,
        previous.is_some().then_some(out.as_path()),
    )?;
    if let Some(lr) = args.lr {
        recipe.train.lr = lr;
    }
    if let Some(batch_size) = args.batch_size {
        recipe.train.batch_size = batch_size;
    }
    recipe.train.validate().map_err(anyhow::Error::msg)?;
    if previous.is_none() {
        crate::runs::check_new_run_dir(&out, args.overwrite, true)?;
    }

    let [train_path, val_path, test_path] = split_files(&recipe.data);
    if !train_path.is_file() {
        match &recipe.generate_dates {
            Some(generate) => {
                let examples = ember_data::dates::generate(generate.n, generate.seed);
                ember_data::dates::write_splits(&recipe.data, &examples)
                    .with_context(|| format!("{}: cannot write", recipe.data.display()))?;
                eprintln!(
                    "generated {} date pairs (seed {}) into {}",
                    generate.n,
                    generate.seed,
                    recipe.data.display()
                );
            }
            None => bail!(
                "{}: no such file (the data directory needs train.tsv, val.tsv and test.tsv)",
                train_path.display()
            ),
        }
    }
    let train_pairs = read_pairs(&train_path)?;
    let val_pairs = read_pairs(&val_path)?;
    let test_pairs = read_pairs(&test_path)?;
    let (vocab, trained_bpe) = match (&previous, recipe.tokens) {
        (Some(run), _) => (run_vocab(run, &out)?, None),
        (None, TokenKind::Char) => (Seq2SeqVocab::Chars(CharVocab::build(&train_pairs)), None),
        (None, TokenKind::Bpe) => {
            let (vocab, trained) = Seq2SeqVocab::train_bpe(&train_pairs, recipe.bpe_vocab_size)
                .map_err(|e| anyhow::anyhow!("bpe_vocab_size: {e}"))?;
            (vocab, Some(trained))
        }
    };
    // The model's checks, which need the vocabulary's size, name the file they read.
    let recipe_file = match (&previous, &args.config) {
        (Some(_), _) => out.join(RUN_FILE),
        (None, Some(config)) => config.clone(),
        (None, None) => unreachable!("clap requires --config or --resume"),
    };
    recipe
        .model
        .set_vocab(vocab.len())
        .map_err(|e| anyhow::anyhow!("{}: {e}", recipe_file.display()))?;
    let max_len = recipe.model.max_len();
    let decode_max_len = match &previous {
        Some(run) => run.decode_max_len,
        None => train_pairs
            .iter()
            .map(|p| vocab.encode(&p.target).len() + 1)
            .max()
            .unwrap_or(1)
            .saturating_mul(2)
            .min(max_len),
    };
    let batch_size = recipe.train.batch_size;
    let seed = recipe.train.seed;
    let loader = |pairs: &[Pair], shuffle: Option<u64>, what: &Path| {
        Seq2SeqLoader::new(
            pairs,
            |t| vocab.encode(t),
            max_len,
            batch_size,
            shuffle,
            &what.display().to_string(),
        )
    };
    let train_loader = loader(&train_pairs, Some(seed), &train_path)?;
    let val_loader = loader(&val_pairs, None, &val_path)?;
    let test_loader = loader(&test_pairs, None, &test_path)?;

    ember_train::lm::Splits {
        train: &train_loader,
        val: &val_loader,
    }
    .check()?;
    let run = Seq2SeqRun {
        recipe: recipe.clone(),
        vocab: match &vocab {
            Seq2SeqVocab::Chars(chars) => chars.chars().iter().collect(),
            Seq2SeqVocab::Bpe(_) => String::new(),
        },
        decode_max_len,
    };
    // Written once the model is built and its checkpoint (when resuming) loaded: a failure
    // before leaves the old run, or the run being resumed, as it was.
    let write_run = || -> Result<()> {
        if previous.is_none() {
            crate::runs::prepare_new_run_dir(&out, args.overwrite, true)?;
        }
        if let Some(trained) = &trained_bpe {
            trained
                .save(&out)
                .with_context(|| format!("writing the BPE vocabulary into {}", out.display()))?;
        }
        crate::runs::write_run_file(&out, RUN_FILE, &run)
    };
    let resume_dir = match &previous {
        Some(_) => Some(checkpoint::latest(&out)?),
        None => None,
    };

    eprintln!(
        "data: {} / {} / {} pairs, {} tokens in the vocabulary; {} batches of {batch_size} per epoch",
        train_pairs.len(),
        val_pairs.len(),
        test_pairs.len(),
        vocab.len(),
        ember_data::loader::Batches::num_batches(&train_loader)
    );
    device.seed(seed);
    let context = TrainContext {
        run: &run,
        vocab: &vocab,
        train: &train_loader,
        val: &val_loader,
        test: &test_loader,
        val_pairs: &val_pairs,
        out: &out,
        resume_dir: resume_dir.as_deref(),
        write_run: &write_run,
    };
    match &recipe.model {
        Seq2SeqConfig::Transformer(config) => train_and_test(config.init(&device), context),
        Seq2SeqConfig::Lstm(config) => train_and_test(config.init(&device), context),
    }
}

struct TrainContext<'a> {
    run: &'a Seq2SeqRun,
    vocab: &'a Seq2SeqVocab,
    train: &'a Seq2SeqLoader,
    val: &'a Seq2SeqLoader,
    test: &'a Seq2SeqLoader,
    val_pairs: &'a [Pair],
    out: &'a Path,
    /// The checkpoint to continue from.
    resume_dir: Option<&'a Path>,
    /// Prepares the run directory and writes the run's files.
    write_run: &'a dyn Fn() -> Result<()>,
}

fn train_and_test<M>(model: M, cx: TrainContext<'_>) -> Result<()>
where
    M: LossModel<Seq2SeqBatch> + Seq2SeqModel,
{
    let options = &cx.run.recipe.train;
    eprintln!("model: {} parameters", model.num_params());
    let mut observer = TrainProgress::new(TranslationSample {
        vocab: cx.vocab,
        pair: cx.val_pairs.first().cloned(),
        decode_max_len: cx.run.decode_max_len,
    });
    let (model, optim, state) = resume_from::<ember_train::lm::EvalRecord, _>(
        cx.resume_dir,
        cx.out,
        model,
        options.optimizer(),
        Some(ember_data::loader::Batches::num_batches(cx.train)),
    )?;
    (cx.write_run)()?;
    let model = train_and_report(
        model,
        optim,
        Splits {
            train: cx.train,
            val: cx.val,
        },
        options,
        cx.out,
        state,
        &mut observer,
        "ember train seq2seq --resume",
    )?;
    let model = model.valid();
    let started = std::time::Instant::now();
    let (hits, n) = exact_match(&model, cx.test, cx.run.decode_max_len);
    let accuracy = hits as f64 / n.max(1) as f64;
    println!(
        "test exact match: {:.2}% ({hits}/{n}), greedy, {:.0} s",
        100.0 * accuracy,
        started.elapsed().as_secs_f64()
    );
    let summary =
        serde_json::json!({"split": "test", "exact_match": accuracy, "correct": hits, "total": n});
    ember_data::write_atomically(
        &cx.out.join("test.json"),
        (serde_json::to_string_pretty(&summary)? + "\n").as_bytes(),
    )?;
    println!(
        "run directory: {} (seq2seq.toml, metrics.jsonl, loss.png, checkpoints/, test.json)",
        cx.out.display()
    );
    Ok(())
}

fn decode_options(max_len: usize, beam: usize, length_penalty: f64) -> DecodeOptions {
    DecodeOptions {
        bos_id: BOS,
        eos_id: EOS,
        max_len,
        beam,
        length_penalty,
    }
}

/// Greedy outputs equal to the targets, over every example of `data`.
fn exact_match<M: Seq2SeqModel>(model: &M, data: &Seq2SeqLoader, max_len: usize) -> (usize, usize) {
    let device = model.device();
    let options = decode_options(max_len, 1, 0.0);
    let mut hits = 0;
    let rows: Vec<usize> = (0..data.len()).collect();
    for chunk in rows.chunks(256) {
        let batch = data.collate(chunk);
        let src = Tensor::<2, Int>::from_data(
            TensorData::new(batch.src.clone(), [batch.batch, batch.src_len]),
            &device,
        );
        for (decoded, &row) in greedy(model, src, &options).iter().zip(chunk) {
            if decoded.tokens == data.target(row) {
                hits += 1;
            }
        }
    }
    (hits, data.len())
}

/// A translation of the first validation source.
struct TranslationSample<'a> {
    vocab: &'a Seq2SeqVocab,
    pair: Option<Pair>,
    decode_max_len: usize,
}

impl<M: Seq2SeqModel> EpochSample<M> for TranslationSample<'_> {
    fn sample(&mut self, model: &M) -> Result<String, String> {
        let pair = self.pair.as_ref().ok_or("no validation pair")?;
        let options = decode_options(self.decode_max_len, 1, 0.0);
        let output = translate_one(model, self.vocab, &pair.source, &options);
        Ok(format!(
            "{} → {} (target {})",
            pair.source,
            self.vocab.decode(&output.tokens),
            pair.target
        ))
    }
}

fn translate_one<M: Seq2SeqModel>(
    model: &M,
    vocab: &Seq2SeqVocab,
    text: &str,
    options: &DecodeOptions,
) -> Decoded {
    let ids: Vec<i64> = vocab.encode(text).into_iter().map(i64::from).collect();
    let len = ids.len();
    let src = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &model.device());
    if options.beam > 1 {
        beam_search(model, src, options)
    } else {
        greedy(model, src, options).remove(0)
    }
}

/// Reads `RUN_DIR/seq2seq.toml`.
fn read_run(dir: &Path) -> Result<Seq2SeqRun> {
    let path = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a seq2seq run directory (no {RUN_FILE}; train one with `ember train seq2seq`)",
            dir.display()
        )
    })?;
    let run: Seq2SeqRun =
        parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    crate::runs::checked_run_file(&path, run, |run| {
        run.recipe.model.validate().map_err(|e| e.to_string())?;
        run.recipe.train.validate()?;
        if !(1..=run.recipe.model.max_len()).contains(&run.decode_max_len) {
            return Err(format!(
                "decode_max_len {} is outside 1..={}, the model's max_len",
                run.decode_max_len,
                run.recipe.model.max_len()
            ));
        }
        Ok(())
    })
}

/// The vocabulary a run was trained with.
fn run_vocab(run: &Seq2SeqRun, dir: &Path) -> Result<Seq2SeqVocab> {
    Ok(match run.recipe.tokens {
        TokenKind::Char => Seq2SeqVocab::Chars(CharVocab::from_chars(run.vocab.chars().collect())),
        TokenKind::Bpe => Seq2SeqVocab::Bpe(BpeTokenizer::from_dir(dir)?),
    })
}

pub fn run_translate(args: TranslateArgs, device_spec: &str) -> Result<()> {
    let device = device::parse_device(device_spec)?;
    let run = read_run(&args.checkpoint)?;
    if args.attention_png.is_some() && args.texts.len() != 1 {
        bail!("--attention-png draws one text's attention; give exactly one text");
    }
    if let Some(png) = &args.attention_png {
        crate::runs::check_output_file(png, args.force)?;
    }
    let vocab = run_vocab(&run, &args.checkpoint)?;
    let dir = checkpoint::latest(&args.checkpoint)?;
    match &run.recipe.model {
        Seq2SeqConfig::Transformer(config) => {
            let model = checkpoint::load_model(&dir, config.init(&device))?;
            translate_texts(&model, &vocab, &run, &args)
        }
        Seq2SeqConfig::Lstm(config) => {
            let model = checkpoint::load_model(&dir, config.init(&device))?;
            translate_texts(&model, &vocab, &run, &args)
        }
    }
}

fn translate_texts<M: Seq2SeqModel>(
    model: &M,
    vocab: &Seq2SeqVocab,
    run: &Seq2SeqRun,
    args: &TranslateArgs,
) -> Result<()> {
    let decode_max_len = args.max_len.map_or(run.decode_max_len, |n| n as usize);
    let options = decode_options(decode_max_len, args.beam as usize, args.length_penalty);
    let max_len = run.recipe.model.max_len();
    if decode_max_len > max_len {
        bail!("--max-len {decode_max_len} exceeds the model's max_len {max_len}");
    }
    for text in &args.texts {
        let len = vocab.encode(text).len();
        if len == 0 {
            bail!("an empty text has nothing to translate");
        }
        if len > max_len {
            bail!("text of {len} tokens exceeds the model's max_len {max_len}: {text}");
        }
        let decoded = translate_one(model, vocab, text, &options);
        let output = vocab.decode(&decoded.tokens);
        println!("{output}");
        if let Some(png) = &args.attention_png {
            if decoded.attention.is_empty() {
                bail!("this model keeps no attention weights to draw (an LSTM without attention)");
            }
            let mut rows: Vec<String> = decoded.tokens.iter().map(|&t| vocab.token(t)).collect();
            if rows.len() < decoded.attention.len() {
                rows.push("<eos>".into());
            }
            let cols: Vec<String> = vocab
                .encode(text)
                .into_iter()
                .map(|t| vocab.token(t))
                .collect();
            ember_train::plot::plot_attention(&decoded.attention, &rows, &cols, png)
                .map_err(anyhow::Error::msg)?;
            eprintln!("attention: {}", png.display());
        }
    }
    Ok(())
}
