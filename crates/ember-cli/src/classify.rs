//! `ember finetune classify`, `ember classify` and `ember lora merge`: GPT classifiers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use clap::{Args, Subcommand};
use ember_data::bpe::{BpeTokenizer, END_OF_TEXT};
use ember_data::classification::{self, ClassBatches, ClassSplits};
use ember_data::datasets::DataCache;
use ember_model::classifier::{GptClassifier, Pooling, Trainable};
use ember_model::config::parse_toml;
use ember_model::gpt::GptConfig;
use ember_model::lora::{LoraConfig, LoraTarget};
use ember_model::weights::write_safetensors;
use ember_train::classify::{
    ClassData, ClassRecord, ClassifyObserver, ClassifyOptions, best_model_path, finetune,
    read_class_metrics,
};
use ember_train::plot::{Axes, Curve, plot_curves};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

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
    pub pooling: Pooling,
    /// Every text is cut or padded to this many tokens.
    pub max_length: usize,
    pub pad_id: u32,
    /// Tokenizer directory; absent for GPT-2's.
    pub tokenizer: Option<PathBuf>,
    pub trainable: String,
    pub model: GptConfig,
    pub lora: Option<LoraConfig>,
    pub options: ClassifyOptions,
}

const RUN_FILE: &str = "classifier.toml";

#[derive(Subcommand)]
pub enum FinetuneCommand {
    /// Fine-tune a GPT as a text classifier (the book's chapter 6: SMS spam).
    Classify(FinetuneClassifyArgs),
    /// Fine-tune a GPT to follow instructions (the book's chapter 7: Alpaca-style JSON).
    Instruct(crate::instruct::FinetuneInstructArgs),
}

/// LoRA settings shared by the fine-tuning commands (used with `--trainable lora`).
#[derive(Args)]
pub struct LoraArgs {
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Layers that get adapters: all, or a list of q, k, v, attn_out, ff_in, ff_out, head
    /// (head: classifiers only).
    #[arg(long, default_value = "all")]
    lora_targets: String,
    /// Scale adapters by alpha/√rank (rsLoRA) instead of alpha/rank.
    #[arg(long)]
    rslora: bool,
}

impl LoraArgs {
    /// The validated config; without `head`, a `head` target (e.g. from `all`) is dropped,
    /// for models whose output layer is not adapted (the language-model head).
    pub fn config(&self, head: bool) -> Result<LoraConfig> {
        let targets = LoraTarget::parse_list(&self.lora_targets)
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .filter(|t| head || *t != LoraTarget::Head)
            .collect();
        let config = LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            rslora: self.rslora,
            targets,
        };
        config.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

#[derive(Args)]
pub struct FinetuneClassifyArgs {
    /// `spam` (the SMS Spam Collection, balanced and split as in the book), a directory with
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
    /// Pretrained weights: a HuggingFace GPT-2 directory or a run directory.
    #[arg(long, conflicts_with_all = ["checkpoint", "random_init"])]
    weights: Option<PathBuf>,
    /// A pretraining run directory (its latest checkpoint).
    #[arg(long, conflicts_with = "random_init")]
    checkpoint: Option<PathBuf>,
    /// Start from random weights of --model-config.
    #[arg(long)]
    random_init: bool,
    /// Model config for --random-init: a built-in name or a TOML file.
    #[arg(long, default_value = "gpt2-small", requires = "random_init")]
    model_config: String,
    /// head | last-block | last-blocks:N | all | lora.
    #[arg(long, default_value = "last-block")]
    trainable: String,
    /// last (the last position, as the book) or last-non-pad (each text's last token).
    #[arg(long, default_value = "last")]
    pooling: String,
    #[command(flatten)]
    lora: LoraArgs,
    /// Tokens per text [default: the longest training text, at most the context length].
    #[arg(long)]
    max_length: Option<usize>,
    /// Dropout while fine-tuning (the book fine-tunes without).
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
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
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long, default_value_t = 123)]
    seed: u64,
    #[arg(long, default_value = "runs/classify")]
    out: PathBuf,
    /// Replace a run already in --out.
    #[arg(long)]
    overwrite: bool,
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

/// The splits named by `--data`.
fn load_splits(args: &FinetuneClassifyArgs) -> Result<ClassSplits> {
    if args.data == "spam" {
        let path = DataCache::from_env().file("sms-spam", "sms_spam/SMSSpamCollection")?;
        let data = classification::read_sms_spam(&path)?;
        return Ok(classification::split(&data, true, args.seed));
    }
    let path = Path::new(&args.data);
    if path.is_dir() {
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
            &args.text_column,
            &args.label_column,
        )?);
    }
    if !path.exists() {
        bail!(
            "--data {}: no such file or directory (and not `spam`)",
            args.data
        );
    }
    let data = classification::read_table(path, &args.text_column, &args.label_column)?;
    Ok(classification::split(&data, args.balance, args.seed))
}

fn pad_id(tokenizer: &BpeTokenizer) -> u32 {
    tokenizer.special_id(END_OF_TEXT).unwrap_or(0)
}

pub fn run_finetune(command: FinetuneCommand, device_spec: &str) -> Result<()> {
    match command {
        FinetuneCommand::Classify(args) => finetune_classifier(args, device_spec),
        FinetuneCommand::Instruct(args) => crate::instruct::run_finetune(args, device_spec),
    }
}

fn finetune_classifier(args: FinetuneClassifyArgs, device_spec: &str) -> Result<()> {
    let device = device::parse_device(device_spec)?.autodiff();
    let trainable = Trainable::parse(&args.trainable).map_err(anyhow::Error::msg)?;
    let pooling = match args.pooling.as_str() {
        "last" => Pooling::Last,
        "last-non-pad" => Pooling::LastNonPad,
        other => bail!("unknown --pooling `{other}` (expected last or last-non-pad)"),
    };
    let lora = (trainable == Trainable::Lora)
        .then(|| args.lora.config(true))
        .transpose()?;
    let options = ClassifyOptions {
        epochs: args.epochs,
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
    if !(0.0..1.0).contains(&args.drop_rate) {
        bail!("--drop-rate must be in [0, 1), got {}", args.drop_rate);
    }
    if args.out.join(RUN_FILE).exists() && !args.overwrite {
        bail!(
            "{} already holds a classifier run; replace it with --overwrite or choose another --out",
            args.out.display()
        );
    }

    let splits = load_splits(&args)?;
    // The body.
    device.seed(args.seed);
    let (source, config, gpt, tokenizer_dir) = match (&args.weights, &args.checkpoint) {
        (Some(path), _) | (None, Some(path)) => {
            let loaded = runs::load_gpt(path, &device, None)?;
            (
                path.display().to_string(),
                loaded.config,
                loaded.model,
                loaded.tokenizer,
            )
        }
        (None, None) if args.random_init => {
            let config = models::load_gpt_config(&args.model_config, None)?;
            let gpt = config.init(&device);
            (
                format!("random init ({})", args.model_config),
                config,
                gpt,
                None,
            )
        }
        (None, None) => bail!(
            "say where the GPT body comes from: --weights DIR, --checkpoint RUN_DIR or --random-init"
        ),
    };
    let tokenizer = crate::tokenize::load_tokenizer(tokenizer_dir.as_ref())?;
    if tokenizer.vocab_size() > config.vocab_size {
        bail!(
            "the tokenizer has {} tokens but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    let mut config = config;
    config.drop_rate = args.drop_rate;
    let gpt = gpt.with_drop_rate(args.drop_rate);

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
    let encode = |text: &str| tokenizer.encode_ordinary(text);
    let longest = splits
        .train
        .iter()
        .map(|e| encode(&e.text).len())
        .max()
        .unwrap_or(1);
    let max_length = match args.max_length {
        Some(0) => bail!("--max-length must be at least 1"),
        Some(n) if n > config.context_length => bail!(
            "--max-length {n} exceeds the model's context length {}",
            config.context_length
        ),
        Some(n) => n,
        None => longest.clamp(1, config.context_length),
    };
    let pad = pad_id(&tokenizer);
    let batches =
        |part: &[classification::Example]| ClassBatches::new(part, encode, max_length, pad);
    let (train, validation, test) = (
        batches(&splits.train),
        batches(&splits.validation),
        batches(&splits.test),
    );

    let mut model = GptClassifier::new(gpt, num_classes, pooling);
    if let Some(lora) = &lora {
        model = model.add_lora(lora);
    }
    let model = model.set_trainable(trainable);
    let (trainable_params, total_params) = model.param_counts();
    eprintln!(
        "{}: {} / {} / {} examples, {num_classes} classes ({}), {max_length} tokens each",
        args.data,
        train.len(),
        validation.len(),
        test.len(),
        splits.label_names.join(", ")
    );
    eprintln!(
        "model from {source}: {total_params} parameters, {trainable_params} trainable ({})",
        args.trainable
    );

    if args.overwrite && args.out.exists() {
        for file in [RUN_FILE, "metrics.jsonl", "loss.png", "accuracy.png"] {
            let _ = std::fs::remove_file(args.out.join(file));
        }
        let _ = std::fs::remove_dir_all(args.out.join("checkpoints"));
        let _ = std::fs::remove_dir_all(args.out.join("best"));
    }
    let run = ClassifierRun {
        source,
        data: args.data.clone(),
        label_names: splits.label_names.clone(),
        pooling,
        max_length,
        pad_id: pad,
        tokenizer: tokenizer_dir.map(|d| std::path::absolute(&d).unwrap_or(d)),
        trainable: args.trainable.clone(),
        model: config,
        lora,
        options: options.clone(),
    };
    write_run(&args.out, &run)?;

    let mut observer = Progress::default();
    crate::interrupt::install();
    let (best, summary) = finetune(
        model,
        options.optimizer(),
        ClassData {
            train: &train,
            validation: &validation,
            test: &test,
        },
        &options,
        &args.out,
        &mut observer,
    )?;
    if let Some(bar) = observer.bar.take() {
        bar.finish_and_clear();
    }
    if run.lora.is_some() {
        save_adapters(&args.out, &best, &run)?;
    }
    let records =
        read_class_metrics(&args.out.join("metrics.jsonl")).map_err(anyhow::Error::msg)?;
    plot_classifier(
        &records,
        train.batches(options.batch_size, None, true).len(),
        &args.out,
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
        "run directory: {} (classifier.toml, metrics.jsonl, loss.png, accuracy.png, best/)",
        args.out.display()
    );
    Ok(())
}

fn write_run(dir: &Path, run: &ClassifierRun) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = toml::to_string(run).context("serializing classifier.toml")?;
    let path = dir.join(RUN_FILE);
    ember_data::write_atomically(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn read_run(dir: &Path) -> Result<ClassifierRun> {
    let path = dir.join(RUN_FILE);
    if !path.is_file() {
        bail!(
            "{} is not a classifier run directory (no {RUN_FILE}; train one with `ember finetune classify`)",
            dir.display()
        );
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The best model of a classifier run, on `device`.
fn load_classifier(dir: &Path, run: &ClassifierRun, device: &Device) -> Result<GptClassifier> {
    let mut model = GptClassifier::new(
        run.model.init(device),
        run.label_names.len().max(2),
        run.pooling,
    );
    if let Some(lora) = &run.lora {
        model = model.add_lora(lora);
    }
    let path = best_model_path(dir);
    model
        .try_load_file(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
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
    let tokenizer = crate::tokenize::load_tokenizer(run.tokenizer.as_ref())?;
    let texts: Vec<String> = match &args.file {
        Some(path) => ember_data::read_text_file(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => args.texts.clone(),
    };
    if texts.is_empty() {
        bail!("nothing to classify");
    }
    for (text, (label, probability)) in texts
        .iter()
        .zip(predict(&model, &run, &tokenizer, &texts, &device)?)
    {
        println!("{label}\t{probability:.4}\t{text}");
    }
    Ok(())
}

/// (label name, probability) of each text.
fn predict(
    model: &GptClassifier,
    run: &ClassifierRun,
    tokenizer: &BpeTokenizer,
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
    let data = ClassBatches::new(
        &examples,
        |t| tokenizer.encode_ordinary(t),
        run.max_length,
        run.pad_id,
    );
    let mut out = Vec::with_capacity(texts.len());
    for rows in data.batches(16, None, false) {
        let (ids, lengths, _) = data.tensors(&rows, device);
        let probs = softmax(model.forward(ids, lengths), 1);
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
    if args.out.join(RUN_FILE).exists() {
        bail!(
            "{} already holds a classifier run; choose another --out",
            args.out.display()
        );
    }
    let merged = load_classifier(&args.checkpoint, &run, &device)?.merge_lora();
    run.lora = None;
    run.trainable = format!("{} (merged)", run.trainable);
    run.source = format!("{} merged from {}", run.source, args.checkpoint.display());
    std::fs::create_dir_all(args.out.join("best"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let path = best_model_path(&args.out);
    merged
        .save_file(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
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
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}
