//! `ember finetune instruct`, `ember respond` and `ember judge`: the book's chapter 7.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ember_data::bpe::{BpeTokenizer, END_OF_TEXT};
use ember_data::datasets::DataCache;
use ember_data::instruct::{
    CollateOptions, EncodedExample, InstructionEntry, InstructionLoader, Template,
    read_instructions, split_instructions,
};
use ember_data::loader::{Batches, TokenBatch};
use ember_model::generate::{GenerateOptions, generate};
use ember_model::gpt::Gpt;
use ember_model::lora::LoraConfig;
use ember_model::sampling::SamplingConfig;
use ember_train::checkpoint;
use ember_train::lm::{Splits, TrainOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::classify::LoraArgs;
use crate::pretrain::{GptSample, resume_from, train_and_report};
use crate::progress::TrainProgress;
use crate::runs::{self, RunInfo, read_run_info, write_run_info};
use crate::{device, models};

/// The default recipe: the book's chapter-7 settings (AdamW lr 5e-5, weight decay 0.1,
/// 2 epochs, batch 8), for pretrained weights given with `--weights` or `--checkpoint`.
const DEFAULT_RECIPE: &str = "instruct";

/// An instruction fine-tuning recipe (`configs/finetune/*.toml`), kept in the run's `run.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructRecipe {
    /// Starting weights: a HuggingFace GPT-2 directory or model name in the HF cache, or a run
    /// directory. Absent: random weights of `model`.
    pub weights: Option<String>,
    /// Model config for random initialisation (a built-in name or a TOML path).
    pub model: Option<String>,
    /// `instruction-data` (the book's 1,100 entries) or an Alpaca-style JSON file.
    pub data: String,
    pub template: Template,
    /// Shuffle the entries with this seed before the 85/5/10 split; absent keeps the file order
    /// (the book's split of its already shuffled file).
    pub split_seed: Option<u64>,
    /// Ignore the targets of the instruction and input tokens (the book's exercise 7.2).
    #[serde(default)]
    pub mask_prompt: bool,
    /// Texts are cut to this many tokens [default: 1024; at most the context length].
    pub allowed_max_length: Option<usize>,
    /// Dropout while fine-tuning (the book uses 0 for pretrained weights).
    pub drop_rate: Option<f64>,
    /// Train LoRA adapters only (base weights frozen) when present.
    pub lora: Option<LoraConfig>,
    /// Tokens of the sample printed after each epoch (from the first validation entry).
    pub sample_tokens: usize,
    pub train: TrainOptions,
}

#[derive(Args)]
pub struct FinetuneInstructArgs {
    /// Recipe: a TOML file or a built-in name: instruct (the book's settings, for pretrained
    /// weights; the default), instruct-tiny (gpt-tiny from random weights, minutes on a CPU),
    /// instruct-gpt2-medium (the book's chapter 7 model).
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// `instruction-data` (the book's 1,100 entries, fetched) or an Alpaca-style JSON file:
    /// a list of {"instruction", "input" (optional), "output"} objects.
    #[arg(long)]
    data: Option<String>,
    /// Prompt template: alpaca (the book's) or phi3.
    #[arg(long)]
    template: Option<String>,
    /// Pretrained weights: a HuggingFace GPT-2 directory (or a model name in the HF cache,
    /// e.g. gpt2-medium) or a run directory.
    #[arg(long, conflicts_with_all = ["checkpoint", "random_init"])]
    weights: Option<PathBuf>,
    /// A pretraining run directory (its latest checkpoint).
    #[arg(long, conflicts_with = "random_init")]
    checkpoint: Option<PathBuf>,
    /// Start from random weights of --model-config.
    #[arg(long)]
    random_init: bool,
    /// Model config for --random-init: a built-in name or a TOML file [default: the recipe's].
    #[arg(long)]
    model_config: Option<String>,
    /// Also ignore the loss on the instruction and input tokens.
    #[arg(long)]
    mask_prompt: bool,
    /// Cut texts to this many tokens [default: the recipe's (instruct: 1024, instruct-tiny:
    /// 256), at most the context length].
    #[arg(long)]
    allowed_max_length: Option<usize>,
    /// Shuffle the entries with this seed before splitting 85/5/10 [default: the recipe's;
    /// the built-in recipe keeps the file order, the book's split].
    #[arg(long)]
    split_seed: Option<u64>,
    /// all (every weight) or lora (adapters only, base frozen).
    #[arg(long, default_value = "all")]
    trainable: String,
    #[command(flatten)]
    lora: LoraArgs,
    /// Passes over the training split [default: the recipe's]; with --resume, the new total.
    #[arg(long)]
    epochs: Option<usize>,
    /// Entries per optimizer step [default: the recipe's].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate of AdamW [default: the recipe's].
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the data order, dropout and (with --random-init) the weights [default: the
    /// recipe's].
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate the train/validation loss every N steps (0: only at the end).
    #[arg(long)]
    eval_freq: Option<usize>,
    /// Batches per evaluation.
    #[arg(long)]
    eval_iter: Option<usize>,
    /// Run directory for checkpoints, metrics, the loss plot and the data splits.
    #[arg(long, default_value = "runs/instruct")]
    out: PathBuf,
    /// Replace the run already in --out.
    #[arg(long)]
    overwrite: bool,
    /// Continue the run in this directory from its latest checkpoint, with its own settings
    /// (only --epochs may change).
    #[arg(long, conflicts_with_all = ["recipe", "data", "template", "weights", "checkpoint", "random_init", "model_config", "overwrite", "mask_prompt", "allowed_max_length", "split_seed", "trainable", "lora_rank", "lora_alpha", "lora_targets", "rslora", "batch_size", "lr", "seed", "eval_freq", "eval_iter", "out"])]
    resume: Option<PathBuf>,
}

/// Reads instruction entries from a dataset name or a JSON file.
fn read_data(source: &str) -> Result<Vec<InstructionEntry>> {
    let path = if Path::new(source).exists() || source.ends_with(".json") {
        PathBuf::from(source)
    } else {
        DataCache::from_env()
            .file(source, "instruction-data.json")
            .with_context(|| {
                format!("`{source}` is neither a JSON file nor an instruction dataset")
            })?
    };
    Ok(read_instructions(&path)?)
}

/// Applies the command-line flags to the recipe of a new run.
fn apply_flags(recipe: &mut InstructRecipe, args: &FinetuneInstructArgs) -> Result<()> {
    if let Some(data) = &args.data {
        recipe.data = data.clone();
    }
    recipe.data = crate::runs::recorded_source(&recipe.data);
    if let Some(template) = &args.template {
        recipe.template = Template::parse(template).map_err(anyhow::Error::msg)?;
    }
    if let Some(weights) = args.weights.as_ref().or(args.checkpoint.as_ref()) {
        recipe.weights = Some(weights.display().to_string());
        recipe.model = None;
    }
    if args.random_init {
        recipe.weights = None;
    }
    if let Some(model) = &args.model_config {
        recipe.model = Some(model.clone());
    }
    if recipe.weights.is_none() && recipe.model.is_none() {
        bail!(
            "no starting weights: give --weights DIR (HuggingFace GPT-2 or run directory), --checkpoint RUN_DIR, or --random-init with --model-config"
        );
    }
    recipe.mask_prompt |= args.mask_prompt;
    if args.allowed_max_length.is_some() {
        recipe.allowed_max_length = args.allowed_max_length;
    }
    if args.split_seed.is_some() {
        recipe.split_seed = args.split_seed;
    }
    match args.trainable.as_str() {
        "all" => args.lora.refuse_unused("all")?,
        "lora" => recipe.lora = Some(args.lora.config(false)?),
        other => bail!("--trainable {other}: expected all or lora"),
    }
    if let Some(batch_size) = args.batch_size {
        recipe.train.batch_size = batch_size;
    }
    if let Some(lr) = args.lr {
        recipe.train.lr = lr;
    }
    if let Some(seed) = args.seed {
        recipe.train.seed = seed;
    }
    if let Some(eval_freq) = args.eval_freq {
        recipe.train.eval_freq = eval_freq;
    }
    if args.eval_iter.is_some() {
        recipe.train.eval_iter = args.eval_iter;
    }
    Ok(())
}

pub fn run_finetune(args: FinetuneInstructArgs, device_spec: &str) -> Result<()> {
    let device = device::parse_device(device_spec)?.autodiff();
    let (mut info, run_dir, resume_dir, start) = match &args.resume {
        Some(run_dir) => {
            let info = read_run_info(run_dir)?;
            if info.instruct.is_none() {
                bail!(
                    "{} is not an instruction fine-tune (no [instruct] in run.toml)",
                    run_dir.display()
                );
            }
            let dir = checkpoint::latest(run_dir)?;
            (info, run_dir.clone(), Some(dir), None)
        }
        None => {
            runs::check_new_run_dir(&args.out, args.overwrite, true)?;
            let mut recipe: InstructRecipe = models::load_recipe(
                models::RecipeKind::Instruct,
                args.recipe.as_deref(),
                DEFAULT_RECIPE,
            )?;
            apply_flags(&mut recipe, &args)?;
            let (info, model) = start_model(recipe, args.recipe.as_deref(), &device)?;
            (info, args.out.clone(), None, Some(model))
        }
    };
    let recipe = info.instruct.as_mut().expect("an instruction run");
    crate::pretrain::set_epochs(
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
    let pad_id = tokenizer
        .special_id(END_OF_TEXT)
        .context("the tokenizer has no <|endoftext|> token to end and pad texts with")?;
    let entries = read_data(&recipe.data)?;
    let splits = split_instructions(&entries, recipe.split_seed);
    if splits.validation.is_empty() || splits.train.len() < recipe.train.batch_size {
        bail!(
            "{}: {} entries are too few to split 85/5/10 with a training batch of {} (train {}, validation {})",
            recipe.data,
            entries.len(),
            recipe.train.batch_size,
            splits.train.len(),
            splits.validation.len()
        );
    }
    let context = info.model.context_length;
    let max_length = recipe.allowed_max_length.unwrap_or(1024);
    if max_length == 0 {
        bail!("allowed_max_length must be at least 1");
    }
    let collate = CollateOptions {
        pad_id,
        allowed_max_length: Some(max_length.min(context)),
        mask_prompt: recipe.mask_prompt,
    };
    let encode = |text: &str| tokenizer.encode_ordinary(text);
    let encoded = |part: &[InstructionEntry]| -> Vec<EncodedExample> {
        part.iter()
            .map(|e| EncodedExample::new(e, recipe.template, &encode))
            .collect()
    };
    let batch_size = recipe.train.batch_size;
    let train_loader = InstructionLoader::new(
        encoded(&splits.train),
        batch_size,
        Some(recipe.train.seed),
        true,
        collate,
    )
    .map_err(anyhow::Error::msg)?;
    let val_loader = InstructionLoader::new(
        encoded(&splits.validation),
        batch_size,
        None,
        false,
        collate,
    )
    .map_err(anyhow::Error::msg)?;
    let longest = train_loader
        .examples()
        .iter()
        .map(|e| e.ids.len() + 1)
        .max()
        .unwrap_or(0);

    // The model before the run directory: a config too large for memory aborts here, with
    // the old run (or the empty directory) untouched.
    device.seed(recipe.train.seed);
    let model = match start {
        Some(model) => model,
        None => {
            crate::memory::check_model_fits(info.model.num_params(), true, &device)?;
            let mut model = info.model.init(&device);
            if let Some(lora) = &recipe.lora {
                model = model.add_lora(lora);
            }
            model
        }
    };
    // The checkpoint before the run file: a resume that fails on a damaged checkpoint leaves
    // the run's description (its epochs) as it was.
    let (mut model, optim, state) = resume_from::<ember_train::lm::EvalRecord, _>(
        resume_dir.as_deref(),
        &run_dir,
        model,
        recipe.train.optimizer(),
        Some(Batches::<TokenBatch>::num_batches(&train_loader)),
    )?;
    if resume_dir.is_none() {
        runs::prepare_new_run_dir(&run_dir, args.overwrite, true)?;
    }
    runs::keep_own_tokenizer(&run_dir, &mut info)?;
    write_run_info(&run_dir, &info)?;
    for (name, part) in [
        ("train.json", &splits.train),
        ("validation.json", &splits.validation),
        ("test.json", &splits.test),
    ] {
        write_entries(&run_dir.join(name), part, None)?;
    }

    if recipe.lora.is_some() {
        model = model.train_only_lora();
    }
    let (trainable, total) = ember_model::lora::param_counts(&model);
    eprintln!(
        "instructions: {} train / {} validation / {} test entries ({} template{}); longest text {} tokens{}",
        splits.train.len(),
        splits.validation.len(),
        splits.test.len(),
        recipe.template.name(),
        if recipe.mask_prompt {
            ", prompt masked"
        } else {
            ""
        },
        longest,
        if longest > max_length.min(context) {
            format!(" (cut to {})", max_length.min(context))
        } else {
            String::new()
        }
    );
    eprintln!(
        "model: {} parameters, {} trainable; {} steps per epoch of {} texts",
        total,
        trainable,
        Batches::<TokenBatch>::num_batches(&train_loader),
        batch_size
    );
    let first_val = &splits.validation[0];
    let mut observer = TrainProgress::new(GptSample {
        tokenizer: &tokenizer,
        start_context: recipe
            .template
            .query(&first_val.instruction, &first_val.input),
        sample_tokens: recipe.sample_tokens,
        eos_id: Some(pad_id),
    });
    if args.random_init && args.recipe.is_none() && args.lr.is_none() {
        eprintln!(
            "note: the built-in recipe `instruct` has the book's settings for pretrained weights \
             (lr 5e-5), slow to learn from random ones; `--recipe instruct-tiny` trains gpt-tiny \
             from scratch in minutes on a CPU"
        );
    }
    train_and_report(
        model,
        optim,
        Splits {
            train: &train_loader,
            val: &val_loader,
        },
        &recipe.train,
        &run_dir,
        state,
        &mut observer,
        "ember finetune instruct --resume",
    )?;
    if !observer.last_sample.is_empty() {
        println!("{}", observer.last_sample);
    }
    println!(
        "run directory: {} (metrics.jsonl, loss.png, checkpoints/, train/validation/test.json)",
        run_dir.display()
    );
    Ok(())
}

/// The run description and starting model of a new run.
fn start_model(
    recipe: InstructRecipe,
    recipe_path: Option<&Path>,
    device: &burn::prelude::Device,
) -> Result<(RunInfo, Gpt)> {
    let (mut config, model, tokenizer, source) = match &recipe.weights {
        Some(weights) => {
            let loaded = runs::load_gpt(Path::new(weights), device, None)?;
            let tokenizer = loaded.tokenizer.map(|dir| runs::absolute(&dir));
            (
                loaded.config,
                loaded.model,
                tokenizer,
                Some(weights.clone()),
            )
        }
        None => {
            let name = recipe.model.as_deref().expect("checked by apply_flags");
            let config = models::load_gpt_config(name, recipe_path)?;
            let model = config.init(device);
            (config, model, None, None)
        }
    };
    let mut model = model;
    if let Some(rate) = recipe.drop_rate {
        config.drop_rate = rate;
        model = model.with_drop_rate(rate);
    }
    config.validate()?;
    if let Some(lora) = &recipe.lora {
        model = model.add_lora(lora);
    }
    let info = RunInfo {
        model: config,
        tokenizer,
        source,
        recipe: None,
        instruct: Some(recipe),
    };
    Ok((info, model))
}

/// Writes entries (their original fields, plus `model_response` when given) as a JSON list,
/// atomically.
fn write_entries(
    path: &Path,
    entries: &[InstructionEntry],
    responses: Option<&[String]>,
) -> Result<()> {
    let list: Vec<Value> = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let mut fields = entry.fields.clone();
            if let Some(responses) = responses {
                fields.insert("model_response".into(), Value::String(responses[i].clone()));
            }
            Value::Object(fields)
        })
        .collect();
    write_json_list(path, &list)
}

/// Writes `list` as pretty JSON to `path`, atomically: the output files of respond and judge.
fn write_json_list(path: &Path, list: &[Value]) -> Result<()> {
    let text = serde_json::to_string_pretty(list).context("serializing entries")?;
    ember_data::write_atomically(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Generation settings shared by `generate --instruction` and `respond`.
pub struct Responder<'a> {
    pub model: &'a Gpt,
    pub tokenizer: &'a BpeTokenizer,
    pub template: Template,
    pub options: GenerateOptions,
}

impl Responder<'_> {
    /// The model's responses to `(instruction, input)` pairs, generated `batch` at a time: the
    /// text after the response header up to end-of-text, trimmed (the book's post-processing).
    pub fn respond(
        &self,
        queries: &[(String, String)],
        batch: usize,
        mut done: impl FnMut(usize),
    ) -> Result<Vec<String>> {
        let mut responses = Vec::with_capacity(queries.len());
        let mut cropped = 0;
        for chunk in queries.chunks(batch.max(1)) {
            let prompts: Vec<Vec<u32>> = chunk
                .iter()
                .map(|(instruction, input)| {
                    self.tokenizer
                        .encode_ordinary(&self.template.query(instruction, input))
                })
                .collect();
            let results = generate(self.model, &prompts, &self.options, |_, _| {})
                .map_err(anyhow::Error::msg)?;
            for result in results {
                cropped += usize::from(result.prompt_cropped);
                let text = self.tokenizer.decode(&result.tokens)?;
                responses.push(text.trim().to_string());
            }
            done(chunk.len());
        }
        if cropped > 0 {
            let context = self.model.context_length();
            eprintln!(
                "warning: {cropped} of {} prompt(s) had more than {context} tokens (the context \
                 length); only their last {context} were used, without the start of the instruction",
                queries.len()
            );
        }
        Ok(responses)
    }
}

#[derive(Args)]
pub struct RespondArgs {
    /// Instruction run directory (or other weights; then give --template).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Entries to answer: an Alpaca-style JSON file (e.g. RUN_DIR/test.json).
    #[arg(long)]
    data: PathBuf,
    /// Output JSON: the entries with `model_response` added.
    #[arg(long)]
    out: PathBuf,
    /// Prompt template [default: the run's, else alpaca].
    #[arg(long)]
    template: Option<String>,
    /// At most this many new tokens per response (the book: 256).
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Entries generated together (padded batch).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    weight_dtype: crate::generate::WeightDtypeArg,
}

/// Loads a model for answering instructions, with its template.
pub fn load_responder_parts(
    checkpoint: &Path,
    template: Option<&str>,
    device: &burn::prelude::Device,
) -> Result<(Gpt, BpeTokenizer, Template)> {
    let loaded = runs::load_gpt(checkpoint, device, None)?;
    let tokenizer = loaded.tokenizer()?;
    let template = match template {
        Some(name) => Template::parse(name).map_err(anyhow::Error::msg)?,
        None => loaded.template.unwrap_or_default(),
    };
    Ok((loaded.model, tokenizer, template))
}

/// Greedy decoding that stops at end-of-text, choosing only ids below `vocab_limit` (the
/// tokenizer's size).
pub fn response_options(
    max_new_tokens: usize,
    eos_id: Option<u32>,
    vocab_limit: usize,
    device: &burn::prelude::Device,
) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: SamplingConfig::default(),
        eos_id,
        seed: 123,
        use_cache: true,
        threads: device::decode_threads(device),
        read_every: device::decode_read_every(device),
        vocab_limit: Some(vocab_limit),
    }
}

pub fn run_respond(args: RespondArgs, device_spec: &str) -> Result<()> {
    crate::memory::huge_pages_from_now();
    crate::runs::check_output_file(&args.out, args.force)?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let entries = ember_data::instruct::read_queries(&args.data)?;
    let device = device::parse_device(device_spec)?;
    let (model, tokenizer, template) =
        load_responder_parts(&args.checkpoint, args.template.as_deref(), &device)?;
    let model = args.weight_dtype.apply(model, &device, device_spec)?;
    let responder = Responder {
        model: &model,
        tokenizer: &tokenizer,
        template,
        options: response_options(
            args.max_new_tokens,
            tokenizer.special_id(END_OF_TEXT),
            tokenizer.vocab_size(),
            &device,
        ),
    };
    let queries: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e.instruction.clone(), e.input.clone()))
        .collect();
    let bar = crate::progress::count_bar(entries.len() as u64, "responding");
    let started = Instant::now();
    let responses = responder.respond(&queries, args.batch_size, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    write_entries(&args.out, &entries, Some(&responses))?;
    println!(
        "{} responses written to {} ({:.0} s)",
        responses.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Args)]
pub struct JudgeArgs {
    /// Entries with `model_response` (the output of `ember respond`).
    #[arg(long)]
    responses: PathBuf,
    /// Ollama server.
    #[arg(long, default_value = "http://localhost:11434")]
    endpoint: String,
    /// Judge model name on that server (the book: llama3).
    #[arg(long, default_value = "llama3")]
    model: String,
    /// Write the entries with `judge_score` (and the judge's reply when it has no number) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Attempts per entry when the server fails or is unreachable.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    retries: u32,
    /// Seconds to wait for one answer.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

/// The book's judge prompt (section 7.8).
pub fn judge_prompt(entry: &InstructionEntry, response: &str) -> String {
    let input = Template::Alpaca.format_input(&entry.instruction, &entry.input);
    format!(
        "Given the input `{input}` and correct output `{}`, score the model response `{response}` \
         on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only.",
        entry.output
    )
}

/// The judge's score: the first number in its reply, when it is a whole number from 0 to 100
/// (`85`, `85.0`). The whole number is read, so `-5`, `.5`, `72.5` or `1e3` is no score
/// rather than 5, 5, 72 or 1.
pub fn parse_score(reply: &str) -> Option<u32> {
    let bytes = reply.as_bytes();
    let start = bytes.iter().position(u8::is_ascii_digit)?;
    let digits_from = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let end = digits_from(start);
    if start > 0 && matches!(bytes[start - 1], b'-' | b'.') {
        return None;
    }
    // A fraction belongs to the number only when digits follow the point ("40." ends a
    // sentence); it must be all zeros. An exponent makes it no plain score.
    let mut after = end;
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        after = digits_from(end + 1);
        if bytes[end + 1..after].iter().any(|&b| b != b'0') {
            return None;
        }
    }
    if matches!(bytes.get(after), Some(b'e' | b'E'))
        && bytes
            .get(after + 1)
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-'))
    {
        return None;
    }
    reply[start..end]
        .parse::<u32>()
        .ok()
        .filter(|score| *score <= 100)
}

/// Why a judge request failed, and whether asking again can help (not for a refusal such as
/// an unknown model, HTTP 4xx).
struct JudgeFailure {
    message: String,
    retry: bool,
}

impl From<String> for JudgeFailure {
    fn from(message: String) -> Self {
        Self {
            message,
            retry: true,
        }
    }
}

/// One chat request to an Ollama server (`POST /api/chat`), deterministic as in the book
/// (seed 123, temperature 0, num_ctx 2048). Accepts a single JSON answer or a stream of JSON
/// lines and joins their `message.content`.
fn ollama_chat(
    agent: &ureq::Agent,
    endpoint: &str,
    model: &str,
    prompt: &str,
) -> Result<String, JudgeFailure> {
    let url = format!("{}/api/chat", endpoint.trim_end_matches('/'));
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},
        "stream": false,
    });
    let mut response = agent
        .post(&url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| JudgeFailure::from(format!("{url}: {e}")))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| JudgeFailure::from(format!("{url}: reading the answer: {e}")))?;
    if !status.is_success() {
        // Ollama says what is wrong in the body (`{"error":"model \"x\" not found, try pulling it first"}`).
        let said = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        return Err(JudgeFailure {
            message: format!("{url}: HTTP {status}: {said}"),
            // A refusal stays one, except a timeout or a request to slow down.
            retry: !status.is_client_error() || matches!(status.as_u16(), 408 | 429),
        });
    }
    let mut content = String::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line).map_err(|e| {
            JudgeFailure::from(format!("{url}: the answer is not Ollama chat JSON: {e}"))
        })?;
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            return Err(format!("{url}: {error}").into());
        }
        match value.pointer("/message/content").and_then(Value::as_str) {
            Some(part) => content.push_str(part),
            None => return Err(format!("{url}: the answer has no message.content").into()),
        }
    }
    Ok(content)
}

pub fn run_judge(args: JudgeArgs) -> Result<()> {
    if let Some(out) = &args.out {
        crate::runs::check_output_file(out, args.force)?;
    }
    let entries = read_instructions(&args.responses)?;
    let mut responses = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match entry.fields.get("model_response") {
            Some(Value::String(text)) => responses.push(text.clone()),
            _ => bail!(
                "{}: entry {index}: missing string field `model_response` (create it with `ember respond`)",
                args.responses.display()
            ),
        }
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(args.timeout)))
        .http_status_as_error(false)
        .build()
        .into();
    let bar = crate::progress::count_bar(entries.len() as u64, "judging");
    let mut scored = Vec::with_capacity(entries.len());
    let mut scores = Vec::new();
    for (index, (entry, response)) in entries.iter().zip(&responses).enumerate() {
        let prompt = judge_prompt(entry, response);
        let mut attempt = 0;
        let reply = loop {
            attempt += 1;
            match ollama_chat(&agent, &args.endpoint, &args.model, &prompt) {
                Ok(reply) => break reply,
                Err(e) if attempt >= args.retries || !e.retry => {
                    bar.finish_and_clear();
                    // The scores so far are kept: the entries not reached are written as
                    // they were, without a judge_score.
                    let kept = match (&args.out, scored.is_empty()) {
                        (Some(out), false) => {
                            let mut partial = scored.clone();
                            partial.extend(
                                entries[index..]
                                    .iter()
                                    .map(|e| Value::Object(e.fields.clone())),
                            );
                            write_json_list(out, &partial)?;
                            match scored.len() {
                                1 => {
                                    format!(" (the entry scored before it is in {})", out.display())
                                }
                                n => format!(
                                    " (the {n} entries scored before it are in {})",
                                    out.display()
                                ),
                            }
                        }
                        _ => String::new(),
                    };
                    let times = match attempt {
                        1 => String::new(),
                        n => format!(" {n} times"),
                    };
                    bail!(
                        "entry {index}: the judge failed{times}: {}{kept}",
                        e.message
                    );
                }
                Err(e) => {
                    crate::progress::say_above(
                        Some(&bar),
                        &format!(
                            "entry {index}: attempt {attempt} failed ({}); retrying",
                            e.message
                        ),
                    );
                    std::thread::sleep(Duration::from_millis(250 << attempt.min(5)));
                }
            }
        };
        let mut fields = entry.fields.clone();
        match parse_score(&reply) {
            Some(score) => {
                scores.push(score);
                fields.insert("judge_score".into(), Value::from(score));
            }
            None => {
                crate::progress::say_above(
                    Some(&bar),
                    &format!("entry {index}: no score in the judge's reply {reply:?}"),
                );
                fields.insert("judge_score".into(), Value::Null);
                fields.insert("judge_reply".into(), Value::String(reply));
            }
        }
        scored.push(Value::Object(fields));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(out) = &args.out {
        write_json_list(out, &scored)?;
    }
    let unscored = entries.len() - scores.len();
    if scores.is_empty() {
        bail!(
            "the judge gave no score for any of the {} entries",
            entries.len()
        );
    }
    let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / scores.len() as f64;
    println!(
        "number of scores: {} of {}{}",
        scores.len(),
        entries.len(),
        if unscored > 0 {
            format!(" ({unscored} replies without a number, marked judge_score null)")
        } else {
            String::new()
        }
    );
    println!("average score: {mean:.2}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_the_first_integer_up_to_100() {
        assert_eq!(parse_score("85"), Some(85));
        assert_eq!(parse_score("Score: 40.\nBecause"), Some(40));
        assert_eq!(parse_score("I cannot score this."), None);
        assert_eq!(parse_score("1000"), None);
        assert_eq!(parse_score("-5"), None);
        assert_eq!(parse_score("1e3"), None);
        assert_eq!(parse_score("1E+1 points"), None);
        assert_eq!(parse_score("1e-400"), None);
        assert_eq!(parse_score(".5"), None);
        assert_eq!(parse_score("72.0"), Some(72));
        assert_eq!(parse_score("72.5"), None);
        assert_eq!(parse_score("99.99999999999999999"), None);
        assert_eq!(parse_score("100 excellent"), Some(100));
        assert_eq!(parse_score("Score - 60"), Some(60));
        assert_eq!(parse_score("99999999999999999999"), None);
    }
}
