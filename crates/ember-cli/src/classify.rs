//! `ember finetune classify`, `ember classify` and `ember lora merge`: GPT and BERT classifiers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use clap::{Args, Subcommand};
use ember_data::bpe::{BpeTokenizer, END_OF_TEXT};
use ember_data::classification::{self, ClassBatches, ClassSplits};
use ember_data::datasets::DataCache;
use ember_data::tokenizer::Tokenizer;
use ember_model::bert::{Bert, BertClassifier, BertConfig, BertHeads};
use ember_model::bert_hf::HfBert;
use ember_model::classifier::{GptClassifier, Pooling, Trainable};
use ember_model::config::parse_toml;
use ember_model::gpt::{Gpt, GptConfig};
use ember_model::lora::{LoraConfig, LoraTarget};
use ember_model::weights::write_safetensors;
use ember_train::checkpoint::{self, TrainState};
use ember_train::classify::{
    ClassData, ClassRecord, ClassifierModel, ClassifyObserver, ClassifyOptions, ClassifySummary,
    best_model_path, finetune, read_class_metrics,
};
use ember_train::lm::TrainError;
use ember_train::plot::{Axes, Curve, plot_curves};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::pretrain::Arch;
use crate::{device, models, runs};

/// What a classifier run directory records (`classifier.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierRun {
    /// Where the GPT body came from (weights directory, run directory or "random init").
    pub source: String,
    /// The dataset (`spam`, a directory of CSVs, or a file).
    pub data: String,
    pub label_names: Vec<String>,
    /// GPT only: which position is classified (BERT classifies its pooled [CLS]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Every text is cut or padded to this many tokens.
    pub max_length: usize,
    pub pad_id: u32,
    /// Tokenizer (a GPT tokenizer directory, or BERT's tokenizer file; relative paths are
    /// inside the run directory); absent for GPT-2's.
    pub tokenizer: Option<PathBuf>,
    pub trainable: String,
    pub model: BodyConfig,
    pub lora: Option<LoraConfig>,
    pub options: ClassifyOptions,
    /// The columns and balancing of a CSV/TSV `data`: with `data` and the seed, what
    /// `--resume` needs to rebuild the same splits.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    #[serde(default = "default_label_column")]
    pub label_column: String,
    #[serde(default)]
    pub balance: bool,
}

fn default_text_column() -> String {
    "Text".into()
}

fn default_label_column() -> String {
    "Label".into()
}

/// The body's config; its fields tell GPT and BERT apart.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BodyConfig {
    Gpt(GptConfig),
    Bert(BertConfig),
}

impl ClassifierRun {
    fn tokenizer_path(&self, dir: &Path) -> Option<PathBuf> {
        self.tokenizer
            .as_ref()
            .map(|path| match path.is_relative() {
                true => dir.join(path),
                false => path.clone(),
            })
    }
}

const RUN_FILE: &str = "classifier.toml";

#[derive(Subcommand)]
pub enum FinetuneCommand {
    /// Fine-tune a GPT (or with --arch bert a BERT) as a text classifier (the book's chapter 6: SMS spam).
    Classify(FinetuneClassifyArgs),
    /// Fine-tune a GPT to follow instructions (the book's chapter 7: Alpaca-style JSON).
    Instruct(crate::instruct::FinetuneInstructArgs),
}

/// LoRA settings shared by the fine-tuning commands (used with `--trainable lora`).
/// Options rather than clap defaults, so that a flag given without `--trainable lora` is
/// refused ([`LoraArgs::refuse_unused`]) instead of silently ignored.
#[derive(Args)]
pub struct LoraArgs {
    /// [default: 16]
    #[arg(long)]
    lora_rank: Option<usize>,
    /// [default: 16]
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Layers that get adapters: all, or a list of q, k, v, attn_out, ff_in, ff_out, head
    /// (head: classifiers only) [default: all].
    #[arg(long)]
    lora_targets: Option<String>,
    /// Scale adapters by alpha/√rank (rsLoRA) instead of alpha/rank.
    #[arg(long)]
    rslora: bool,
}

impl LoraArgs {
    /// The validated config; without `head`, a `head` target (e.g. from `all`) is dropped,
    /// for models whose output layer is not adapted (the language-model head).
    pub fn config(&self, head: bool) -> Result<LoraConfig> {
        let asked = LoraTarget::parse_list(self.lora_targets.as_deref().unwrap_or("all"))
            .map_err(anyhow::Error::msg)?;
        if !head && asked == [LoraTarget::Head] {
            bail!(
                "--lora-targets head: this model has no classification head to adapt (name its \
                 layers: q, k, v, attn_out, ff_in, ff_out, or all)"
            );
        }
        let targets = asked
            .into_iter()
            .filter(|t| head || *t != LoraTarget::Head)
            .collect();
        let config = LoraConfig {
            rank: self.lora_rank.unwrap_or(16),
            alpha: self.lora_alpha.unwrap_or(16.0),
            rslora: self.rslora,
            targets,
        };
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    /// Refuses LoRA flags on a run that adds no adapters (`trainable` is the mode in use).
    pub fn refuse_unused(&self, trainable: &str) -> Result<()> {
        let given = [
            ("--lora-rank", self.lora_rank.is_some()),
            ("--lora-alpha", self.lora_alpha.is_some()),
            ("--lora-targets", self.lora_targets.is_some()),
            ("--rslora", self.rslora),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
            bail!(
                "{flag} needs --trainable lora (this run trains `{trainable}`, without adapters)"
            );
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct FinetuneClassifyArgs {
    /// `spam` or `sms-spam` (the SMS Spam Collection, balanced and split as in the book), a directory with
    /// train.csv / validation.csv / test.csv, or one CSV/TSV file (split 70/10/20).
    #[arg(long, default_value = "spam")]
    data: String,
    #[arg(long, default_value = "Text")]
    text_column: String,
    #[arg(long, default_value = "Label")]
    label_column: String,
    /// Undersample every class to the smallest when splitting one file.
    #[arg(long)]
    balance: bool,
    /// Model family of the body: gpt (classifies one position) or bert (classifies the pooled
    /// [CLS] output).
    #[arg(long, value_enum, default_value_t = Arch::Gpt)]
    arch: Arch,
    /// Pretrained weights: a HuggingFace GPT-2 / BERT directory or a run directory.
    #[arg(long, conflicts_with_all = ["checkpoint", "random_init"])]
    weights: Option<PathBuf>,
    /// A pretraining run directory (its latest checkpoint).
    #[arg(long, conflicts_with = "random_init")]
    checkpoint: Option<PathBuf>,
    /// Start from random weights of --model-config.
    #[arg(long)]
    random_init: bool,
    /// Model config for --random-init: a built-in name or a TOML file [default: gpt2-small;
    /// bert-mini with --arch bert].
    #[arg(long, requires = "random_init", conflicts_with_all = ["weights", "checkpoint"])]
    model_config: Option<String>,
    /// head | last-block | last-blocks:N | all | lora [default: last-block for pretrained GPT
    /// weights (the book's choice); all for BERT and for --random-init].
    #[arg(long)]
    trainable: Option<String>,
    /// BERT from --random-init: tokenizer.json, vocab.txt or a directory [default: a WordPiece
    /// vocabulary trained on the training split, saved in the run].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Size of that WordPiece vocabulary [default: 8000].
    #[arg(long, requires = "random_init", conflicts_with = "tokenizer")]
    vocab_size: Option<usize>,
    /// GPT: last (the last position, as the book) or last-non-pad (each text's last token)
    /// [default: last].
    #[arg(long)]
    pooling: Option<String>,
    #[command(flatten)]
    lora: LoraArgs,
    /// Tokens per text [default: the longest training text, at most the context length].
    #[arg(long)]
    max_length: Option<usize>,
    /// GPT: dropout while fine-tuning (the book fine-tunes without) [default: 0]. BERT keeps
    /// its config's dropout (hidden_dropout_prob, also before the head).
    #[arg(long)]
    drop_rate: Option<f64>,
    /// Passes over the training split [default: 5]; with --resume, the new total.
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Loss evaluation every N steps (0: none).
    #[arg(long, default_value_t = 50)]
    eval_freq: usize,
    /// Batches per loss evaluation.
    #[arg(long, default_value_t = 5)]
    eval_iter: usize,
    /// Batches of each split for the per-epoch accuracies [default: all].
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Clip the gradients' global norm to this value [default: no clipping].
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long, default_value_t = 123)]
    seed: u64,
    #[arg(long, default_value = "runs/classify")]
    out: PathBuf,
    /// Replace a run already in --out.
    #[arg(long)]
    overwrite: bool,
    /// Continue the classifier run in this directory from its latest checkpoint, with its own
    /// settings (only --epochs may change).
    #[arg(long, conflicts_with_all = ["data", "text_column", "label_column", "balance", "arch", "weights", "checkpoint", "random_init", "model_config", "trainable", "tokenizer", "vocab_size", "pooling", "lora_rank", "lora_alpha", "lora_targets", "rslora", "max_length", "drop_rate", "batch_size", "lr", "weight_decay", "eval_freq", "eval_iter", "eval_batches", "grad_clip", "seed", "out", "overwrite"])]
    resume: Option<PathBuf>,
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// Classifier run directory (written by `ember finetune classify`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Texts to classify.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    texts: Vec<String>,
    /// A UTF-8 file with one text per line.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Fold a LoRA classifier's adapters into its weights, as a new run directory.
    Merge(LoraMergeArgs),
}

#[derive(Args)]
pub struct LoraMergeArgs {
    /// Classifier run trained with --trainable lora.
    #[arg(long)]
    checkpoint: PathBuf,
    /// New run directory for the merged model.
    #[arg(long)]
    out: PathBuf,
}

/// Tokens of the WordPiece vocabulary trained for a BERT classifier from random weights.
const DEFAULT_WORDPIECE_SIZE: usize = 8000;

/// How the splits of a run come from `--data`.
struct DataSource<'a> {
    data: &'a str,
    text_column: &'a str,
    label_column: &'a str,
    balance: bool,
    seed: u64,
}

/// The splits named by `--data`.
fn load_splits(source: &DataSource<'_>) -> Result<ClassSplits> {
    // `sms-spam` is the dataset's name in `ember data list`.
    if is_spam_dataset(source.data) {
        let path = DataCache::from_env().file("sms-spam", "sms_spam/SMSSpamCollection")?;
        let data = classification::read_sms_spam(&path)?;
        return Ok(classification::split(&data, true, source.seed));
    }
    let path = Path::new(source.data);
    if path.is_dir() {
        if source.balance {
            bail!(
                "--balance undersamples one file before splitting it; {} is split already (train, validation, test)",
                path.display()
            );
        }
        let mut files = Vec::new();
        for name in ["train", "validation", "test"] {
            let file = ["csv", "tsv"]
                .iter()
                .map(|ext| path.join(format!("{name}.{ext}")))
                .find(|p| p.is_file())
                .with_context(|| format!("{}: no {name}.csv or {name}.tsv", path.display()))?;
            files.push(file);
        }
        return Ok(classification::read_split_tables(
            [&files[0], &files[1], &files[2]],
            source.text_column,
            source.label_column,
        )?);
    }
    if !path.exists() {
        bail!(
            "--data {}: no such file or directory (and not `spam`)",
            source.data
        );
    }
    let data = classification::read_table(path, source.text_column, source.label_column)?;
    Ok(classification::split(&data, source.balance, source.seed))
}

fn is_spam_dataset(data: &str) -> bool {
    matches!(data, "spam" | "sms-spam")
}

/// How the texts of a classifier run become ids.
enum TextEncoder {
    /// GPT: the BPE ids of the text, cut to the length (padding: `<|endoftext|>`).
    Gpt(BpeTokenizer),
    /// BERT: `[CLS] text [SEP]`, cut inside so `[SEP]` stays (padding: `[PAD]`).
    Bert(Tokenizer),
}

impl TextEncoder {
    fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        Ok(match self {
            Self::Gpt(bpe) => {
                let mut ids = bpe.encode_ordinary(text);
                ids.truncate(max_len);
                ids
            }
            Self::Bert(tokenizer) => tokenizer.encode_for_encoder(text, None, max_len)?.ids,
        })
    }

    fn pad_id(&self, fallback: u32) -> u32 {
        match self {
            Self::Gpt(bpe) => bpe.special_id(END_OF_TEXT).unwrap_or(0),
            Self::Bert(tokenizer) => tokenizer.token_id("[PAD]").unwrap_or(fallback),
        }
    }

    fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt(bpe) => bpe.vocab_size(),
            Self::Bert(tokenizer) => tokenizer.vocab_size(),
        }
    }

    /// The examples, encoded and padded to `max_len`.
    fn batches(
        &self,
        examples: &[classification::Example],
        max_len: usize,
        pad: u32,
    ) -> Result<ClassBatches> {
        let encoded = examples
            .iter()
            .map(|e| self.encode(&e.text, max_len))
            .collect::<Result<Vec<_>>>()?;
        let labels = examples.iter().map(|e| e.label).collect();
        Ok(ClassBatches::from_encoded(encoded, labels, max_len, pad))
    }
}

/// The body of a new classifier, from pretrained weights or random ones.
enum Body {
    Gpt(Box<Gpt>),
    Bert(Box<Bert>),
}

/// What `--weights`, `--checkpoint` or `--random-init` give: (source, config, body,
/// encoder, tokenizer path to record).
fn load_body(
    args: &FinetuneClassifyArgs,
    splits: &ClassSplits,
    device: &Device,
) -> Result<(String, BodyConfig, Body, TextEncoder, Option<PathBuf>)> {
    let pretrained = args.weights.as_ref().or(args.checkpoint.as_ref());
    if pretrained.is_none() && !args.random_init {
        bail!(
            "say where the body comes from: --weights DIR, --checkpoint RUN_DIR or --random-init"
        );
    }
    match args.arch {
        Arch::Gpt => {
            if args.tokenizer.is_some() {
                bail!("--tokenizer is for --arch bert; a GPT body brings its tokenizer");
            }
            let (source, config, gpt, tokenizer_dir) = match pretrained {
                Some(path) => {
                    let loaded = runs::load_gpt(path, device, None)?;
                    (
                        path.display().to_string(),
                        loaded.config,
                        loaded.model,
                        loaded.tokenizer,
                    )
                }
                None => {
                    let name = args.model_config.as_deref().unwrap_or("gpt2-small");
                    let config = models::load_gpt_config(name, None)?;
                    crate::memory::check_model_fits(config.num_params(), true, device)?;
                    let gpt = config.init(device);
                    (format!("random init ({name})"), config, gpt, None)
                }
            };
            let tokenizer = crate::tokenize::load_tokenizer(tokenizer_dir.as_ref())?;
            let mut config = config;
            let drop_rate = args.drop_rate.unwrap_or(0.0);
            config.drop_rate = drop_rate;
            let gpt = gpt.with_drop_rate(drop_rate);
            Ok((
                source,
                BodyConfig::Gpt(config),
                Body::Gpt(Box::new(gpt)),
                TextEncoder::Gpt(tokenizer),
                tokenizer_dir.map(|d| runs::absolute(&d)),
            ))
        }
        Arch::Bert => {
            if let Some(path) = pretrained {
                if args.tokenizer.is_some() {
                    bail!("--tokenizer goes with --random-init; pretrained weights bring theirs");
                }
                if crate::bert_pretrain::is_bert_run(path) {
                    let run = crate::bert_pretrain::load_run(path, device)?;
                    let tokenizer_path = crate::bert_pretrain::tokenizer_path(path)?;
                    return Ok((
                        path.display().to_string(),
                        BodyConfig::Bert(run.config),
                        Body::Bert(Box::new(run.model)),
                        TextEncoder::Bert(run.tokenizer),
                        Some(runs::absolute(&tokenizer_path)),
                    ));
                }
                let cached = runs::hf_cache_dir(path);
                let hf = HfBert::open(cached.as_deref().unwrap_or(path))?;
                let bert = hf.load(device)?;
                let tokenizer = Tokenizer::open(&hf.dir)?;
                return Ok((
                    path.display().to_string(),
                    BodyConfig::Bert(hf.config.clone()),
                    Body::Bert(Box::new(bert)),
                    TextEncoder::Bert(tokenizer),
                    Some(runs::absolute(&hf.dir)),
                ));
            }
            let name = args.model_config.as_deref().unwrap_or("bert-mini");
            let mut config = models::load_bert_config(name, None)?;
            let (tokenizer, recorded) = match &args.tokenizer {
                Some(path) => (Tokenizer::open(path)?, runs::absolute(path)),
                None => {
                    let texts = splits.train.iter().map(|e| e.text.as_str());
                    // Saved into --out with the run (a relative path), once all is checked.
                    let size = args.vocab_size.unwrap_or(DEFAULT_WORDPIECE_SIZE);
                    let tokenizer = Tokenizer::train_wordpiece(texts, size, true)?;
                    config.vocab_size = tokenizer.vocab_size();
                    (tokenizer, PathBuf::from("tokenizer.json"))
                }
            };
            crate::memory::check_model_fits(config.num_params(CLASSIFIER_HEADS), true, device)?;
            let bert = config.init(CLASSIFIER_HEADS, device);
            Ok((
                format!("random init ({name})"),
                BodyConfig::Bert(config),
                Body::Bert(Box::new(bert)),
                TextEncoder::Bert(tokenizer),
                Some(recorded),
            ))
        }
    }
}

pub fn run_finetune(command: FinetuneCommand, device_spec: &str) -> Result<()> {
    match command {
        FinetuneCommand::Classify(args) => finetune_classifier(args, device_spec),
        FinetuneCommand::Instruct(args) => crate::instruct::run_finetune(args, device_spec),
    }
}

fn finetune_classifier(args: FinetuneClassifyArgs, device_spec: &str) -> Result<()> {
    let device = device::parse_device(device_spec)?.autodiff();
    if let Some(run_dir) = &args.resume {
        return resume_classifier(run_dir, args.epochs, &device);
    }
    // Freezing random weights would train the head on random features.
    let trainable_name = args.trainable.clone().unwrap_or_else(|| {
        match (args.arch, args.random_init) {
            (Arch::Gpt, false) => "last-block",
            (Arch::Gpt, true) | (Arch::Bert, _) => "all",
        }
        .to_string()
    });
    let trainable = Trainable::parse(&trainable_name).map_err(anyhow::Error::msg)?;
    let pooling = match (args.arch, args.pooling.as_deref()) {
        (Arch::Bert, None) => None,
        (Arch::Bert, Some(_)) => bail!(
            "--pooling is for GPT classifiers; a BERT classifier classifies its pooled [CLS] output"
        ),
        (Arch::Gpt, None | Some("last")) => Some(Pooling::Last),
        (Arch::Gpt, Some("last-non-pad")) => Some(Pooling::LastNonPad),
        (_, Some(other)) => bail!("unknown --pooling `{other}` (expected last or last-non-pad)"),
    };
    if args.arch == Arch::Bert && trainable == Trainable::Lora {
        bail!(
            "--trainable lora is supported for GPT classifiers; for BERT use head, last-block, last-blocks:N or all"
        );
    }
    if args.arch == Arch::Gpt && args.vocab_size.is_some() {
        bail!(
            "--vocab-size sizes the WordPiece vocabulary trained for a BERT from --random-init (--arch bert)"
        );
    }
    if args.arch == Arch::Bert && args.drop_rate.is_some() {
        bail!(
            "--drop-rate is for GPT classifiers; a BERT classifier keeps its config's dropout (hidden_dropout_prob)"
        );
    }
    let lora = if trainable == Trainable::Lora {
        Some(args.lora.config(true)?)
    } else {
        args.lora.refuse_unused(&trainable_name)?;
        None
    };
    let options = ClassifyOptions {
        epochs: args.epochs.unwrap_or(5),
        batch_size: args.batch_size,
        lr: args.lr,
        weight_decay: args.weight_decay,
        eval_freq: args.eval_freq,
        eval_iter: args.eval_iter,
        eval_batches: args.eval_batches,
        grad_clip: args.grad_clip,
        seed: args.seed,
    };
    options.validate().map_err(anyhow::Error::msg)?;
    if let Some(rate) = args.drop_rate
        && !(0.0..1.0).contains(&rate)
    {
        bail!("--drop-rate must be in [0, 1), got {rate}");
    }
    runs::check_new_run_dir(&args.out, args.overwrite, false)?;

    // A data path is recorded absolute: --resume may run from another directory.
    let data_arg = match is_spam_dataset(&args.data) {
        true => args.data.clone(),
        false => runs::recorded_source(&args.data),
    };
    let splits = load_splits(&DataSource {
        data: &data_arg,
        text_column: &args.text_column,
        label_column: &args.label_column,
        balance: args.balance,
        seed: args.seed,
    })?;
    let num_classes = splits.label_names.len().max(2);
    for (name, part) in [
        ("train", &splits.train),
        ("validation", &splits.validation),
        ("test", &splits.test),
    ] {
        if let Some(bad) = part.iter().find(|e| e.label >= num_classes) {
            bail!(
                "{name} split: label {} outside the {num_classes} classes",
                bad.label
            );
        }
    }
    if splits.train.len() < args.batch_size.max(1) || splits.validation.is_empty() {
        bail!(
            "{}: too few examples for a training batch of {} (train {}, validation {}, test {})",
            args.data,
            args.batch_size,
            splits.train.len(),
            splits.validation.len(),
            splits.test.len()
        );
    }
    device.seed(args.seed);
    let (source, config, body, encoder, tokenizer_path) = load_body(&args, &splits, &device)?;
    let (model_vocab, context, config_pad, n_layers) = match &config {
        BodyConfig::Gpt(c) => (c.vocab_size, c.context_length, 0, c.n_layers),
        BodyConfig::Bert(c) => (
            c.vocab_size,
            c.max_position_embeddings,
            c.pad_token_id,
            c.num_hidden_layers,
        ),
    };
    if let Trainable::LastBlocks(n) = trainable
        && n > n_layers
    {
        bail!(
            "--trainable {trainable_name}: the model has {n_layers} block(s); use all to train every weight"
        );
    }
    if encoder.vocab_size() > model_vocab {
        bail!(
            "the tokenizer has {} tokens but the model's vocab_size is {model_vocab}",
            encoder.vocab_size()
        );
    }
    let mut longest = 1;
    for example in &splits.train {
        longest = longest.max(encoder.encode(&example.text, context)?.len());
    }
    let max_length = match args.max_length {
        Some(0) => bail!("--max-length must be at least 1"),
        Some(n) if n > context => {
            bail!("--max-length {n} exceeds the model's context length {context}")
        }
        Some(n) => n,
        None => longest.clamp(1, context),
    };
    let pad = encoder.pad_id(config_pad);
    let train = encoder.batches(&splits.train, max_length, pad)?;
    let validation = encoder.batches(&splits.validation, max_length, pad)?;
    let test = encoder.batches(&splits.test, max_length, pad)?;
    eprintln!(
        "{}: {} / {} / {} examples, {num_classes} classes ({}), {max_length} tokens each",
        args.data,
        train.len(),
        validation.len(),
        test.len(),
        splits.label_names.join(", ")
    );

    // Everything is checked: now the run directory is written. The run keeps its own copy
    // of the tokenizer, so it does not depend on where the body came from staying.
    runs::prepare_new_run_dir(&args.out, args.overwrite, false)?;
    let tokenizer_path = match (tokenizer_path, &encoder) {
        (Some(source), TextEncoder::Gpt(_)) => {
            let own = PathBuf::from("tokenizer");
            runs::copy_vocabulary(&source, &args.out.join(&own), ("encoder.json", "vocab.bpe"))?;
            Some(own)
        }
        (Some(_), TextEncoder::Bert(tokenizer @ Tokenizer::Hf(_))) => {
            let own = PathBuf::from("tokenizer.json");
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            tokenizer.save_json(&args.out.join(&own))?;
            if args.random_init && args.tokenizer.is_none() {
                eprintln!(
                    "trained a WordPiece vocabulary of {} tokens on the training split ({})",
                    tokenizer.vocab_size(),
                    own.display()
                );
            }
            Some(own)
        }
        (path, _) => path,
    };
    let run = ClassifierRun {
        source,
        data: data_arg,
        label_names: splits.label_names.clone(),
        pooling,
        max_length,
        pad_id: pad,
        tokenizer: tokenizer_path,
        trainable: trainable_name,
        model: config.clone(),
        lora,
        options: options.clone(),
        text_column: args.text_column.clone(),
        label_column: args.label_column.clone(),
        balance: args.balance,
    };
    let data = ClassData {
        train: &train,
        validation: &validation,
        test: &test,
    };
    fit(body, &run, data, &args.out, None)
}

/// `finetune classify --resume`: the run's own splits, tokenizer and settings (only the
/// number of epochs may grow), its latest checkpoint, then the same loop.
fn resume_classifier(run_dir: &Path, epochs: Option<usize>, device: &Device) -> Result<()> {
    let mut run = read_run(run_dir)?;
    let checkpoint_dir = checkpoint::latest(run_dir)?;
    if let Some(epochs) = epochs {
        runs::refuse_fewer_epochs(run_dir, &checkpoint_dir, epochs)?;
        run.options.epochs = epochs;
    }
    run.options.validate().map_err(anyhow::Error::msg)?;
    let splits = load_splits(&DataSource {
        data: &run.data,
        text_column: &run.text_column,
        label_column: &run.label_column,
        balance: run.balance,
        seed: run.options.seed,
    })?;
    if splits.label_names != run.label_names {
        bail!(
            "{}: its classes are now {} but the run was trained on {}",
            run.data,
            splits.label_names.join(", "),
            run.label_names.join(", ")
        );
    }
    let encoder = run_encoder(run_dir, &run)?;
    let train = encoder.batches(&splits.train, run.max_length, run.pad_id)?;
    let validation = encoder.batches(&splits.validation, run.max_length, run.pad_id)?;
    let test = encoder.batches(&splits.test, run.max_length, run.pad_id)?;
    let body = body_of(&run.model, device);
    let data = ClassData {
        train: &train,
        validation: &validation,
        test: &test,
    };
    fit(body, &run, data, run_dir, Some(&checkpoint_dir))
}

/// Builds the classifier around `body`, loads the checkpoint in `resume_dir` (when
/// resuming), freezes what the run does not train, and fine-tunes.
fn fit(
    body: Body,
    run: &ClassifierRun,
    data: ClassData<'_>,
    out: &Path,
    resume_dir: Option<&Path>,
) -> Result<()> {
    let trainable = Trainable::parse(&run.trainable).map_err(anyhow::Error::msg)?;
    let optim = run.options.optimizer();
    // Trainable weights are chosen after loading: a loaded record replaces them.
    match classifier_of(body, run) {
        Classifier::Gpt(model) => {
            let (model, optim, state) = crate::pretrain::resume_from::<
                ember_train::classify::ClassRecord,
                _,
            >(resume_dir, out, *model, optim, None)?;
            let model = model.set_trainable(trainable);
            let counts = model.param_counts();
            let best = train_classifier(model, optim, counts, run, data, out, state)?;
            if run.lora.is_some() {
                save_adapters(out, &best, run)?;
            }
        }
        Classifier::Bert(model) => {
            let (model, optim, state) = crate::pretrain::resume_from::<
                ember_train::classify::ClassRecord,
                _,
            >(resume_dir, out, *model, optim, None)?;
            let model = model.set_trainable(trainable).map_err(anyhow::Error::msg)?;
            let counts = model.param_counts();
            train_classifier(model, optim, counts, run, data, out, state)?;
        }
    }
    Ok(())
}

/// The BERT heads of a classifier body: the pooler, under the classification head.
const CLASSIFIER_HEADS: BertHeads = BertHeads {
    pooler: true,
    mlm: false,
    nsp: false,
};

/// A body with the layers of `config` (weights random until loaded).
fn body_of(config: &BodyConfig, device: &Device) -> Body {
    match config {
        BodyConfig::Gpt(config) => Body::Gpt(Box::new(config.init(device))),
        BodyConfig::Bert(config) => Body::Bert(Box::new(config.init(CLASSIFIER_HEADS, device))),
    }
}

/// The classifier `run` describes around `body`: its head, pooling, LoRA adapters and (BERT)
/// dropout before the head.
fn classifier_of(body: Body, run: &ClassifierRun) -> Classifier {
    let num_classes = run.label_names.len().max(2);
    match (body, &run.model) {
        (Body::Gpt(gpt), _) => {
            let pooling = run.pooling.unwrap_or_default();
            let mut model = GptClassifier::new(*gpt, num_classes, pooling);
            if let Some(lora) = &run.lora {
                model = model.add_lora(lora);
            }
            Classifier::Gpt(Box::new(model))
        }
        (Body::Bert(bert), BodyConfig::Bert(config)) => Classifier::Bert(Box::new(
            BertClassifier::new(*bert, num_classes, config.hidden_dropout_prob),
        )),
        (Body::Bert(_), BodyConfig::Gpt(_)) => unreachable!("a BERT body has a BERT config"),
    }
}

/// Writes the run file, fine-tunes, plots and prints the best epoch's accuracies; returns the
/// best model.
fn train_classifier<M: ClassifierModel>(
    model: M,
    optim: ModuleOptimizer,
    (trainable_params, total_params): (usize, usize),
    run: &ClassifierRun,
    data: ClassData<'_>,
    out: &Path,
    resume: Option<TrainState>,
) -> Result<M> {
    eprintln!(
        "model from {}: {total_params} parameters, {trainable_params} trainable ({})",
        run.source, run.trainable
    );
    write_run(out, run)?;
    let options = &run.options;
    let mut observer = Progress::default();
    crate::interrupt::install();
    let result = finetune(model, optim, data, options, out, resume, &mut observer);
    if let Some(bar) = observer.bar.take() {
        bar.finish_and_clear();
    }
    let (best, summary): (M, ClassifySummary) = result.map_err(|err| match err {
        TrainError::Interrupted { step } => anyhow::anyhow!(
            "interrupted after step {step}; its checkpoint is saved: continue with `ember finetune classify --resume {}`",
            out.display()
        ),
        other => other.into(),
    })?;
    let records = read_class_metrics(&out.join("metrics.jsonl")).map_err(anyhow::Error::msg)?;
    plot_classifier(
        &records,
        data.train.batches(options.batch_size, None, true).len(),
        out,
    )?;
    println!(
        "best epoch {}: train accuracy {:.2}%, validation {:.2}%, test {:.2}% ({:.0} s)",
        summary.best_epoch + 1,
        100.0 * summary.train_acc,
        100.0 * summary.val_acc,
        100.0 * summary.test_acc,
        summary.seconds
    );
    println!(
        "run directory: {} (classifier.toml, metrics.jsonl, loss.png, accuracy.png, best/, checkpoints/)",
        out.display()
    );
    Ok(best)
}

fn write_run(dir: &Path, run: &ClassifierRun) -> Result<()> {
    runs::write_run_file(dir, RUN_FILE, run)
}

fn read_run(dir: &Path) -> Result<ClassifierRun> {
    let path = dir.join(RUN_FILE);
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    if !path.is_file() {
        bail!(
            "{} is not a classifier run directory (no {RUN_FILE}; train one with `ember finetune classify`)",
            dir.display()
        );
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let run: ClassifierRun =
        parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    runs::checked_run_file(&path, run, |run| {
        let (positions, vocab) = match &run.model {
            BodyConfig::Gpt(c) => {
                c.validate().map_err(|e| e.to_string())?;
                (c.context_length, c.vocab_size)
            }
            BodyConfig::Bert(c) => {
                c.validate().map_err(|e| e.to_string())?;
                (c.max_position_embeddings, c.vocab_size)
            }
        };
        if !(1..=positions).contains(&run.max_length) {
            return Err(format!(
                "max_length {} is outside 1..={positions}, the model's positions",
                run.max_length
            ));
        }
        if run.pad_id as usize >= vocab {
            return Err(format!(
                "pad_id {} is outside the model's vocabulary of {vocab}",
                run.pad_id
            ));
        }
        if run.label_names.len() < 2 {
            return Err(format!(
                "label_names has {} names; a classifier has at least 2",
                run.label_names.len()
            ));
        }
        if let Some(lora) = &run.lora {
            lora.validate()?;
        }
        run.options.validate()
    })
}

/// A classifier of either family.
enum Classifier {
    Gpt(Box<GptClassifier>),
    Bert(Box<BertClassifier>),
}

/// The best model of a classifier run, on `device`.
fn load_classifier(dir: &Path, run: &ClassifierRun, device: &Device) -> Result<Classifier> {
    let path = best_model_path(dir);
    if !path.exists() {
        bail!(
            "{} holds no trained classifier yet ({} is missing: its fine-tuning stopped before the first epoch ended; continue it with `ember finetune classify --resume {}`)",
            dir.display(),
            path.display(),
            dir.display()
        );
    }
    let load_error = |e| anyhow::anyhow!("{}: {}", path.display(), checkpoint::record_error(e));
    Ok(match classifier_of(body_of(&run.model, device), run) {
        Classifier::Gpt(model) => {
            Classifier::Gpt(Box::new(model.try_load_file(&path).map_err(load_error)?))
        }
        Classifier::Bert(model) => {
            Classifier::Bert(Box::new(model.try_load_file(&path).map_err(load_error)?))
        }
    })
}

/// `best/adapter_model.safetensors` + `best/adapter_config.json` (PEFT's file names).
fn save_adapters(dir: &Path, model: &GptClassifier, run: &ClassifierRun) -> Result<()> {
    let lora = run.lora.as_ref().expect("a LoRA run");
    let best = dir.join("best");
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(
        &best.join("adapter_model.safetensors"),
        &model.adapter_tensors(),
        &metadata,
    )?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "use_rslora": lora.rslora,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": lora.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "modules_to_save": ["score"],
    });
    let path = best.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    ember_data::write_atomically(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn plot_classifier(records: &[ClassRecord], steps_per_epoch: usize, dir: &Path) -> Result<()> {
    let epochs = |r: &ClassRecord| r.step as f64 / steps_per_epoch.max(1) as f64;
    let examples = records.iter().map(|r| r.examples_seen).max().unwrap_or(0) as f64;
    // Loss evaluations every eval_freq steps and at each epoch's end.
    let losses: Vec<&ClassRecord> = records.iter().collect();
    {
        let curve = |name, value: fn(&ClassRecord) -> f64| Curve {
            name,
            points: losses.iter().map(|r| (epochs(r), value(r))).collect(),
        };
        let axes = Axes {
            title: "Loss",
            y_label: "Loss",
            top_label: "Examples seen",
            top_max: examples,
        };
        plot_curves(
            &[
                curve("Training loss", |r| r.train_loss),
                curve("Validation loss", |r| r.val_loss),
            ],
            &axes,
            &dir.join("loss.png"),
        )
        .map_err(anyhow::Error::msg)?;
    }
    let per_epoch: Vec<&ClassRecord> = records.iter().filter(|r| r.kind == "epoch").collect();
    let curve = |name, value: fn(&ClassRecord) -> Option<f64>| Curve {
        name,
        points: per_epoch
            .iter()
            .map(|r| (epochs(r), value(r).unwrap_or(f64::NAN)))
            .collect(),
    };
    let axes = Axes {
        title: "Accuracy",
        y_label: "Accuracy",
        top_label: "Examples seen",
        top_max: examples,
    };
    plot_curves(
        &[
            curve("Training accuracy", |r| r.train_acc),
            curve("Validation accuracy", |r| r.val_acc),
            curve("Test accuracy", |r| r.test_acc),
        ],
        &axes,
        &dir.join("accuracy.png"),
    )
    .map_err(anyhow::Error::msg)
}

pub fn run_classify(args: ClassifyArgs, device_spec: &str) -> Result<()> {
    let device = device::parse_device(device_spec)?;
    let run = read_run(&args.checkpoint)?;
    let model = load_classifier(&args.checkpoint, &run, &device)?;
    let encoder = run_encoder(&args.checkpoint, &run)?;
    let texts: Vec<String> = match &args.file {
        Some(path) => ember_data::read_text_file(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => args.texts.clone(),
    };
    if texts.is_empty() {
        match &args.file {
            Some(path) => bail!("{}: no text to classify (only blank lines)", path.display()),
            None => bail!("nothing to classify"),
        }
    }
    let predictions = match &model {
        Classifier::Gpt(m) => predict(m.as_ref(), &run, &encoder, &texts, &device)?,
        Classifier::Bert(m) => predict(m.as_ref(), &run, &encoder, &texts, &device)?,
    };
    for (text, (label, probability)) in texts.iter().zip(predictions) {
        println!("{label}\t{probability:.4}\t{text}");
    }
    Ok(())
}

/// Where the classifier run in `dir` keeps its tokenizer (`None`: GPT-2's).
pub fn tokenizer_location(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(read_run(dir)?.tokenizer_path(dir))
}

/// The tokenizer of the classifier run in `dir`.
fn run_encoder(dir: &Path, run: &ClassifierRun) -> Result<TextEncoder> {
    let tokenizer_path = run.tokenizer_path(dir);
    Ok(match &run.model {
        BodyConfig::Gpt(_) => {
            TextEncoder::Gpt(crate::tokenize::load_tokenizer(tokenizer_path.as_ref())?)
        }
        BodyConfig::Bert(_) => TextEncoder::Bert(Tokenizer::open(
            tokenizer_path
                .as_deref()
                .context("the BERT classifier run names no tokenizer")?,
        )?),
    })
}

/// (label name, probability) of each text.
fn predict<M: ClassifierModel>(
    model: &M,
    run: &ClassifierRun,
    encoder: &TextEncoder,
    texts: &[String],
    device: &Device,
) -> Result<Vec<(String, f32)>> {
    let examples: Vec<classification::Example> = texts
        .iter()
        .map(|t| classification::Example {
            text: t.clone(),
            label: 0,
        })
        .collect();
    let data = encoder.batches(&examples, run.max_length, run.pad_id)?;
    crate::progress::warn_cut(
        texts
            .iter()
            .map(|t| Ok(encoder.encode(t, run.max_length + 1)?.len())),
        run.max_length,
        "the run's max_length",
    )?;
    let mut out = Vec::with_capacity(texts.len());
    for rows in data.batches(16, None, false) {
        let (ids, lengths, _) = data.tensors(&rows, device);
        let probs = softmax(model.logits(ids, lengths), 1);
        let classes = probs.dims()[1];
        let values = probs
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading probabilities: {e:?}"))?;
        for row in values.chunks(classes) {
            let (best, p) =
                row.iter().enumerate().fold(
                    (0, f32::MIN),
                    |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
                );
            let name = run
                .label_names
                .get(best)
                .cloned()
                .unwrap_or_else(|| best.to_string());
            out.push((name, p));
        }
    }
    Ok(out)
}

pub fn run_lora(command: LoraCommand, device_spec: &str) -> Result<()> {
    let LoraCommand::Merge(args) = command;
    let device = device::parse_device(device_spec)?;
    let mut run = read_run(&args.checkpoint)?;
    if run.lora.is_none() {
        bail!(
            "{} has no LoRA adapters to merge",
            args.checkpoint.display()
        );
    }
    runs::refuse_existing_run(&args.out)?;
    let Classifier::Gpt(model) = load_classifier(&args.checkpoint, &run, &device)? else {
        bail!(
            "{}: only GPT classifiers have LoRA adapters",
            args.checkpoint.display()
        );
    };
    let merged = model.merge_lora();
    // The merged run gets its own copy of a vocabulary kept inside the adapters' run.
    if let Some(own) = run.tokenizer.clone().filter(|path| path.is_relative()) {
        let source = args.checkpoint.join(&own);
        runs::copy_vocabulary(&source, &args.out.join(&own), ("encoder.json", "vocab.bpe"))?;
    }
    run.lora = None;
    run.trainable = format!("{} (merged)", run.trainable);
    run.source = format!("{} merged from {}", run.source, args.checkpoint.display());
    std::fs::create_dir_all(args.out.join("best"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let path = best_model_path(&args.out);
    merged
        .save_file(&path)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), checkpoint::record_error(e)))?;
    write_run(&args.out, &run)?;
    println!(
        "merged the adapters of {} into {}",
        args.checkpoint.display(),
        args.out.display()
    );
    Ok(())
}

/// Progress bar and per-epoch lines.
#[derive(Default)]
struct Progress {
    bar: Option<ProgressBar>,
}

impl ClassifyObserver for Progress {
    fn stop_requested(&self) -> bool {
        crate::interrupt::requested()
    }

    fn on_start(&mut self, total_steps: usize) {
        let bar = ProgressBar::new(total_steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps · {msg} · {elapsed_precise} eta {eta_precise}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        self.bar = Some(bar);
    }

    fn on_step(&mut self, step: usize, loss: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.3}"));
        }
    }

    fn on_record(&mut self, r: &ClassRecord) {
        let line = match (r.train_acc, r.val_acc, r.test_acc) {
            (Some(train), Some(val), Some(test)) => format!(
                "epoch {}: train accuracy {:.2}%, validation {:.2}%, test {:.2}% (loss {:.3} / {:.3})",
                r.epoch + 1,
                100.0 * train,
                100.0 * val,
                100.0 * test,
                r.train_loss,
                r.val_loss
            ),
            _ => format!(
                "ep {} (step {:06}): train loss {:.3}, val loss {:.3}",
                r.epoch + 1,
                r.step,
                r.train_loss,
                r.val_loss
            ),
        };
        crate::progress::say_above(self.bar.as_ref(), &line);
    }
}
