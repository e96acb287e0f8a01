//! `ember pretrain`: a recipe from `configs/pretrain/`, overridable by flags.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::Device;
use clap::Args;
use ember_data::bpe::BpeTokenizer;
use ember_data::loader::{Batch, TokenWindows, WindowLoader, split_text};
use ember_model::generate::{GenerateOptions, generate};
use ember_model::gpt::Gpt;
use ember_model::sampling::SamplingConfig;
use ember_train::checkpoint::{self, TrainState};
use ember_train::lm::{LossModel, Splits, TrainError, TrainObserver, TrainOptions, train};
use serde::{Deserialize, Serialize};

use crate::progress::{EpochSample, TrainProgress};
use crate::runs::{self, RunInfo, read_run_info, write_run_info};
use crate::{data, device, models};

/// The default recipe (built in, as every recipe of `configs/`).
const DEFAULT_RECIPE: &str = "gpt-tiny-verdict";

/// A pretraining recipe (`configs/pretrain/*.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Model config: a built-in name (`gpt2-small`, `gpt-tiny`, …) or a TOML path.
    pub model: String,
    /// Corpus: a dataset name or a text file.
    pub corpus: String,
    pub train_ratio: f64,
    /// Overrides the model's context length (also the window length).
    pub context_length: Option<usize>,
    /// Distance between window starts [default: the context length, no overlap].
    pub stride: Option<usize>,
    /// Prompt of the sample printed after each epoch.
    pub start_context: String,
    pub sample_tokens: usize,
    /// Fields that replace the model config's (drop_rate, qkv_bias, tie_weights).
    #[serde(default)]
    pub model_overrides: ModelOverrides,
    pub train: TrainOptions,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    pub drop_rate: Option<f64>,
    pub qkv_bias: Option<bool>,
    pub tie_weights: Option<bool>,
    pub emb_init_std: Option<f64>,
}

/// Which model family `ember pretrain` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Gpt,
    Bert,
}

#[derive(Args)]
pub struct PretrainArgs {
    /// Model family: gpt (next-token prediction) or bert (masked LM, optionally with
    /// next-sentence prediction; default recipe configs/pretrain/bert-mini-verdict.toml).
    #[arg(long, value_enum, default_value_t = Arch::Gpt)]
    pub(crate) arch: Arch,
    /// Recipe: a TOML file or a built-in name: gpt-tiny-verdict (the default), the-verdict-124m
    /// (the book's chapter 5 run), or bert-mini-verdict (the default with --arch bert).
    #[arg(long)]
    pub(crate) recipe: Option<PathBuf>,
    /// Model config: a built-in name (gpt-tiny, gpt2-small … gpt2-xl; with --arch bert
    /// bert-tiny, bert-mini, bert-base) or a TOML file.
    #[arg(long)]
    pub(crate) model_config: Option<String>,
    /// Corpus: a text file or a dataset name (BERT: one or more).
    #[arg(long, num_args = 1..)]
    pub(crate) corpus: Vec<String>,
    /// Passes over the training split [default: the recipe's]; with --resume, the new total.
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Peak learning rate of AdamW [default: the recipe's].
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Windows per optimizer step [default: the recipe's].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Seed of the initial weights, data order and dropout [default: the recipe's].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Context length (window length; for BERT the longest sequence); overrides the recipe's.
    #[arg(long)]
    pub(crate) context_length: Option<usize>,
    /// GPT: distance between window starts [default: the context length].
    #[arg(long)]
    pub(crate) stride: Option<usize>,
    /// Tokenizer: for GPT a directory with encoder.json + vocab.bpe, or a GPT run directory (its
    /// tokenizer) [default: GPT-2's]; for BERT a tokenizer.json, vocab.txt or directory
    /// [default: WordPiece trained on the corpus].
    #[arg(long)]
    pub(crate) tokenizer: Option<PathBuf>,
    /// GPT: start from pretrained weights instead of random ones, a HuggingFace GPT-2
    /// directory or a run directory. Their config and tokenizer replace the recipe's.
    #[arg(long, conflicts_with_all = ["model_config", "tokenizer"])]
    pub(crate) weights: Option<PathBuf>,
    /// BERT: training objectives, `mlm` or `mlm,nsp` [default: the recipe's].
    #[arg(long)]
    pub(crate) objectives: Option<String>,
    /// BERT: size of the WordPiece vocabulary trained on the corpus [default: the recipe's].
    #[arg(long, conflicts_with = "tokenizer")]
    pub(crate) vocab_size: Option<usize>,
    /// Run directory for checkpoints, metrics and the loss plot.
    #[arg(long, default_value = "runs/pretrain")]
    pub(crate) out: PathBuf,
    /// Replace the run already in --out (its run file, checkpoints, metrics and plots are
    /// deleted; other files stay).
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Continue the run in this directory from its latest checkpoint, with its own settings
    /// (only --epochs may change).
    #[arg(long, conflicts_with_all = ["recipe", "model_config", "corpus", "tokenizer", "weights", "overwrite", "objectives", "vocab_size", "lr", "batch_size", "seed", "context_length", "stride", "out"])]
    pub(crate) resume: Option<PathBuf>,
}

pub fn run(args: PretrainArgs, device_spec: &str) -> Result<()> {
    let bert_resume = args
        .resume
        .as_deref()
        .is_some_and(crate::bert_pretrain::is_bert_run);
    if args.arch == Arch::Bert || bert_resume {
        return crate::bert_pretrain::run(&args, device_spec);
    }
    let device = device::parse_device(device_spec)?.autodiff();
    let (mut info, run_dir, resume_dir, pretrained) = match &args.resume {
        Some(run_dir) => {
            let info = read_run_info(run_dir)?;
            if info.instruct.is_some() {
                bail!(
                    "{} is an instruction fine-tune; continue it with `ember finetune instruct --resume {}`",
                    run_dir.display(),
                    run_dir.display()
                );
            }
            if info.recipe.is_none() {
                bail!(
                    "{} holds imported weights, not a training run; train them with `ember pretrain --weights {}`",
                    run_dir.display(),
                    run_dir.display()
                );
            }
            let dir = checkpoint::latest(run_dir)?;
            (info, run_dir.clone(), Some(dir), None)
        }
        None => {
            runs::check_new_run_dir(&args.out, args.overwrite, true)?;
            let (info, pretrained) = new_run_info(&args, &device)?;
            (info, args.out.clone(), None, pretrained)
        }
    };
    let recipe = info.recipe.as_mut().expect("a training run has a recipe");
    // Flags that may change on resume too (e.g. more epochs).
    set_epochs(
        &mut recipe.train,
        args.epochs,
        resume_dir.is_some().then_some(run_dir.as_path()),
    )?;
    recipe.train.validate().map_err(anyhow::Error::msg)?;
    let recipe = recipe.clone();

    let tokenizer = crate::tokenize::load_tokenizer(info.tokenizer_dir(&run_dir).as_ref())?;
    if tokenizer.vocab_size() > info.model.vocab_size {
        bail!(
            "the tokenizer has {} tokens but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            info.model.vocab_size
        );
    }
    let corpus_path = data::resolve_text_source(&recipe.corpus)?;
    let text = ember_data::read_text_file(&corpus_path)?;
    if text.trim().is_empty() {
        bail!("{}: the corpus is empty", corpus_path.display());
    }
    let (train_text, val_text) = split_text(&text, recipe.train_ratio)?;
    let corpus_name = corpus_path.display();
    let window = info.model.context_length;
    let loader = |part: &str, what: &str, shuffle: Option<u64>, drop_last: bool| {
        let stride = recipe.stride.unwrap_or(window);
        let windows = TokenWindows::new(tokenizer.encode(part), window, stride, what)?;
        Ok::<_, anyhow::Error>(WindowLoader::new(
            windows,
            recipe.train.batch_size,
            shuffle,
            drop_last,
        )?)
    };
    let train_loader = loader(
        train_text,
        &format!("the training split of {corpus_name}"),
        Some(recipe.train.seed),
        true,
    )?;
    let val_loader = loader(
        val_text,
        &format!("the validation split of {corpus_name}"),
        None,
        false,
    )?;

    let splits = Splits {
        train: &train_loader,
        val: &val_loader,
    };
    splits.check()?;
    // The model before the run directory: a config too large for memory aborts here, with
    // the old run (or the empty directory) untouched.
    device.seed(recipe.train.seed);
    let model = match pretrained {
        Some(model) => model,
        None => {
            crate::memory::check_model_fits(info.model.num_params(), true, &device)?;
            info.model.init(&device)
        }
    };
    // The checkpoint before the run file: a resume that fails on a damaged checkpoint leaves
    // the run's description (its epochs) as it was.
    let (model, optim, state) = resume_from::<ember_train::lm::EvalRecord, _>(
        resume_dir.as_deref(),
        &run_dir,
        model,
        recipe.train.optimizer(),
        Some(train_loader.num_batches()),
    )?;
    if resume_dir.is_none() {
        runs::prepare_new_run_dir(&run_dir, args.overwrite, true)?;
    }
    runs::keep_own_tokenizer(&run_dir, &mut info)?;
    write_run_info(&run_dir, &info)?;
    eprintln!(
        "model: {} parameters; train: {} of {} × {} tokens per epoch; validation: {}",
        info.model.num_params(),
        crate::progress::batches(train_loader.num_batches()),
        train_loader.batch_size(),
        window,
        crate::progress::batches(val_loader.num_batches())
    );
    if tokenizer.vocab_size() < info.model.vocab_size
        && resume_dir.is_none()
        && info.source.is_none()
    {
        eprintln!(
            "note: the tokenizer has {} tokens and the model's vocab_size is {}: the other outputs \
             are never targets, and loss and perplexity count them (set vocab_size = {} in the \
             model config to leave them out)",
            tokenizer.vocab_size(),
            info.model.vocab_size,
            tokenizer.vocab_size()
        );
    }
    let mut observer = TrainProgress::new(GptSample {
        tokenizer: &tokenizer,
        start_context: recipe.start_context.clone(),
        sample_tokens: recipe.sample_tokens,
        eos_id: None,
    });
    train_and_report(
        model,
        optim,
        splits,
        &recipe.train,
        &run_dir,
        state,
        &mut observer,
        "ember pretrain --resume",
    )?;
    if !observer.last_sample.is_empty() {
        println!("{}", observer.last_sample);
    }
    println!(
        "run directory: {} (metrics.jsonl, loss.png, checkpoints/)",
        run_dir.display()
    );
    Ok(())
}

/// Loads the checkpoint in `resume_dir` (when resuming) into `model` and `optim`, refusing it
/// when the training data no longer gives the `train_batches` per epoch it was saved with
/// (`None`: checked by the training loop), or when the run's `metrics.jsonl` does not read as
/// records `R` (`EvalRecord` for language-model runs, `ClassRecord` for classifiers).
pub(crate) fn resume_from<R: serde::de::DeserializeOwned, M: Module>(
    resume_dir: Option<&Path>,
    run_dir: &Path,
    model: M,
    optim: ModuleOptimizer,
    train_batches: Option<usize>,
) -> Result<(M, ModuleOptimizer, Option<TrainState>)> {
    let Some(dir) = resume_dir else {
        return Ok((model, optim, None));
    };
    let state = checkpoint::load_state(dir)?;
    if let Some(batches) = train_batches {
        state
            .check_batches_per_epoch(batches)
            .map_err(|e| anyhow::anyhow!("{}: {e}", run_dir.display()))?;
    }
    // Training cuts metrics.jsonl back to this step once it starts, after the run file is
    // written: damage found only then would leave that file changed by a resume that never ran.
    let metrics = run_dir.join("metrics.jsonl");
    if metrics.exists() {
        ember_train::metrics::read_records::<R>(&metrics).map_err(anyhow::Error::msg)?;
    }
    let model = checkpoint::load_model(dir, model)?;
    let optim = checkpoint::load_optimizer(dir, optim)?;
    eprintln!("resuming {} from step {}", run_dir.display(), state.step);
    Ok((model, optim, Some(state)))
}

/// Applies `--epochs` to a run's options. On resume (`resumed_run`: its directory), refuses
/// fewer epochs than the run has done, and says when the number changes the span of a
/// learning-rate schedule with warmup or decay, which covers all epochs: the rate from the
/// current step on then follows the new schedule (after a finished cosine it rises again).
pub(crate) fn set_epochs(
    options: &mut TrainOptions,
    epochs: Option<usize>,
    resumed_run: Option<&Path>,
) -> Result<()> {
    let Some(epochs) = epochs else {
        return Ok(());
    };
    if let Some(run_dir) = resumed_run {
        runs::refuse_fewer_epochs(run_dir, &checkpoint::latest(run_dir)?, epochs)?;
        let scheduled = options.warmup_steps > 0 || options.min_lr.is_some_and(|m| m != options.lr);
        if scheduled && epochs != options.epochs {
            eprintln!(
                "note: the learning-rate schedule now spans {epochs} epochs instead of {}; the \
                 rate continues on the new schedule from the current step",
                options.epochs
            );
        }
    }
    options.epochs = epochs;
    Ok(())
}

/// Runs the training loop with Ctrl-C handling, then draws `loss.png` from `metrics.jsonl`
/// and prints the last evaluation. `resume_command` (e.g. `ember pretrain --resume`) is what
/// an interruption tells the user to run.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_and_report<B: Batch, M: LossModel<B>>(
    model: M,
    optim: ModuleOptimizer,
    splits: Splits<'_, B>,
    options: &TrainOptions,
    run_dir: &Path,
    state: Option<TrainState>,
    observer: &mut dyn TrainObserver<M>,
    resume_command: &str,
) -> Result<M> {
    // Resuming a finished run (e.g. after a kill during the final report) trains nothing,
    // and says so; the plot and the last evaluation are still reported.
    if let Some(done) = state.as_ref().map(|s| s.epoch)
        && done >= options.epochs
    {
        eprintln!(
            "{} has already trained its {done} epoch(s): nothing to train (give --epochs N with N > {done} to train further)",
            run_dir.display()
        );
    }
    crate::interrupt::install();
    let started = std::time::Instant::now();
    let (model, final_state) = train(model, optim, splits, options, run_dir, state, observer)
        .map_err(|err| match err {
            TrainError::Interrupted { step } => anyhow::anyhow!(
                "interrupted after step {step}; its checkpoint is saved: continue with `{resume_command} {}`",
                run_dir.display()
            ),
            other => other.into(),
        })?;
    let steps_per_epoch = splits.train.num_batches();
    let tokens_seen = final_state.tokens_seen;
    let records = ember_train::lm::read_metrics(&run_dir.join("metrics.jsonl"))
        .map_err(anyhow::Error::msg)?;
    let plot_path = run_dir.join("loss.png");
    ember_train::plot::plot_losses(&records, steps_per_epoch, &plot_path)
        .map_err(anyhow::Error::msg)?;
    if let Some(last) = records.last() {
        println!(
            "step {}: train loss {:.3}, val loss {:.3} (perplexity {:.1}), {} tokens seen, {:.0} s",
            last.step,
            last.train_loss,
            last.val_loss,
            last.val_loss.exp(),
            tokens_seen,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(model)
}

/// The run description of a new run from the recipe and flags; with `--weights`, also the
/// pretrained model (loaded on `device`), whose config replaces the recipe's.
fn new_run_info(args: &PretrainArgs, device: &Device) -> Result<(RunInfo, Option<Gpt>)> {
    if args.objectives.is_some() || args.vocab_size.is_some() {
        bail!(
            "--objectives and --vocab-size are for --arch bert; a GPT run's vocabulary is its tokenizer's"
        );
    }
    let mut recipe: Recipe = models::load_recipe(
        models::RecipeKind::GptPretrain,
        args.recipe.as_deref(),
        DEFAULT_RECIPE,
    )?;
    if let Some(model) = &args.model_config {
        recipe.model = model.clone();
    }
    match args.corpus.as_slice() {
        [] => {}
        [corpus] => recipe.corpus = corpus.clone(),
        _ => bail!("GPT pretraining reads one --corpus; join the files into one text first"),
    }
    recipe.corpus = runs::recorded_source(&recipe.corpus);
    if let Some(lr) = args.lr {
        recipe.train.lr = lr;
    }
    if let Some(batch_size) = args.batch_size {
        recipe.train.batch_size = batch_size;
    }
    if let Some(seed) = args.seed {
        recipe.train.seed = seed;
    }
    if let Some(context_length) = args.context_length {
        recipe.context_length = Some(context_length);
    }
    if let Some(stride) = args.stride {
        recipe.stride = Some(stride);
    }
    if let Some(weights) = &args.weights {
        let loaded = runs::load_gpt(weights, device, recipe.context_length)?;
        let mut model = loaded.config.clone();
        // Only dropout can change without changing the function the weights compute.
        model.drop_rate = recipe.model_overrides.drop_rate.unwrap_or(model.drop_rate);
        model.validate()?;
        let mut pretrained = loaded.model;
        if model.drop_rate != loaded.config.drop_rate {
            pretrained = pretrained.with_drop_rate(model.drop_rate);
        }
        recipe.model = format!("weights from {}", weights.display());
        let tokenizer = loaded.tokenizer.map(|dir| runs::absolute(&dir));
        let info = RunInfo {
            model,
            tokenizer,
            source: Some(weights.display().to_string()),
            recipe: Some(recipe),
            instruct: None,
        };
        return Ok((info, Some(pretrained)));
    }
    let mut model = models::load_gpt_config(&recipe.model, args.recipe.as_deref())?;
    let overrides = &recipe.model_overrides;
    model.drop_rate = overrides.drop_rate.unwrap_or(model.drop_rate);
    model.qkv_bias = overrides.qkv_bias.unwrap_or(model.qkv_bias);
    model.tie_weights = overrides.tie_weights.unwrap_or(model.tie_weights);
    model.emb_init_std = overrides.emb_init_std.unwrap_or(model.emb_init_std);
    model.context_length = recipe.context_length.unwrap_or(model.context_length);
    model.validate()?;
    let tokenizer = match &args.tokenizer {
        Some(arg) => crate::tokenize::resolve_tokenizer_arg(arg)?.map(|dir| runs::absolute(&dir)),
        None => None,
    };
    Ok((
        RunInfo {
            model,
            tokenizer,
            source: None,
            recipe: Some(recipe),
            instruct: None,
        },
        None,
    ))
}

/// The GPT's per-epoch sample: the prompt and its greedy continuation.
pub(crate) struct GptSample<'a> {
    pub(crate) tokenizer: &'a BpeTokenizer,
    pub(crate) start_context: String,
    pub(crate) sample_tokens: usize,
    /// Samples stop at this token (instruction runs stop at end-of-text).
    pub(crate) eos_id: Option<u32>,
}

impl EpochSample<Gpt> for GptSample<'_> {
    fn sample(&mut self, model: &Gpt) -> Result<String, String> {
        let text = sample(
            model,
            self.tokenizer,
            &self.start_context,
            self.sample_tokens,
            self.eos_id,
        );
        Ok(format!("{}{}", self.start_context, text))
    }
}

/// Greedy continuation of `prompt` (the book's `generate_and_print_sample`).
fn sample(
    model: &Gpt,
    tokenizer: &BpeTokenizer,
    prompt: &str,
    tokens: usize,
    eos_id: Option<u32>,
) -> String {
    let options = GenerateOptions {
        max_new_tokens: tokens,
        sampling: SamplingConfig::default(),
        eos_id,
        seed: 0,
        use_cache: true,
        threads: crate::device::decode_threads(&model.device()),
        read_every: crate::device::decode_read_every(&model.device()),
        vocab_limit: Some(tokenizer.vocab_size()),
    };
    let prompt_ids = tokenizer.encode(prompt);
    match generate(model, &[prompt_ids], &options, |_, _| {}) {
        Ok(out) => tokenizer.decode(&out[0].tokens).unwrap_or_default(),
        Err(e) => format!("<no sample: {e}>"),
    }
}
