//! `ember pretrain --arch bert`: masked-LM (and next-sentence) pretraining of a BERT encoder
//! from a recipe (`configs/pretrain/bert-*.toml`), with the same loop, progress, metrics,
//! plot, checkpoints and resume as GPT pretraining. Without `--tokenizer`, a WordPiece
//! vocabulary is trained on the training split and saved in the run as `tokenizer.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use ember_data::loader::split_text;
use ember_data::mlm::{MlmLoader, MlmLoaderOptions, MlmOptions, SpecialIds, split_documents};
use ember_data::tokenizer::Tokenizer;
use ember_model::bert::{Bert, BertConfig, BertHeads};
use ember_model::config::parse_toml;
use ember_train::checkpoint;
use ember_train::lm::{Splits, TrainOptions};
use serde::{Deserialize, Serialize};

use crate::pretrain::{PretrainArgs, resume_from, train_and_report};
use crate::progress::{EpochSample, TrainProgress};
use crate::{data, device, models};

/// The default BERT recipe (built in).
const DEFAULT_RECIPE: &str = "bert-mini-verdict";

/// The `arch` a BERT run writes into its `run.toml`.
const ARCH: &str = "bert";

/// A BERT pretraining recipe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertRecipe {
    /// Model config: a built-in name (`bert-mini`, `bert-tiny`, `bert-base`) or a TOML path.
    pub model: String,
    /// Corpus: dataset names or text files (documents separated by blank lines); each is
    /// split into training and validation text by `train_ratio`. One name may be written
    /// without the list.
    #[serde(deserialize_with = "one_or_many")]
    pub corpus: Vec<String>,
    pub train_ratio: f64,
    /// Longest sequence in tokens, `[CLS]` and `[SEP]` included.
    pub max_length: usize,
    /// `["mlm"]` or `["mlm", "nsp"]`.
    pub objectives: Vec<String>,
    /// Size of the WordPiece vocabulary trained on the corpus when no tokenizer is given.
    pub vocab_size: usize,
    #[serde(default = "default_true")]
    pub lowercase: bool,
    /// Share of non-special tokens chosen for prediction.
    #[serde(default = "default_mask_prob")]
    pub mask_prob: f64,
    /// A text with `[MASK]` whose top predictions are printed after each epoch.
    pub sample: String,
    pub train: TrainOptions,
}

/// `"a"` or `["a", "b"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(name) => vec![name],
        OneOrMany::Many(names) => names,
    })
}

fn default_true() -> bool {
    true
}
fn default_mask_prob() -> f64 {
    0.15
}

impl BertRecipe {
    /// Whether next-sentence prediction is trained; errors on unknown objectives.
    fn next_sentence(&self) -> Result<bool> {
        let mut nsp = false;
        for objective in &self.objectives {
            match objective.as_str() {
                "mlm" => {}
                "nsp" => nsp = true,
                other => bail!("unknown objective `{other}` (expected mlm or nsp)"),
            }
        }
        if !self.objectives.iter().any(|o| o == "mlm") {
            bail!("the objectives must include mlm (nsp alone is not supported)");
        }
        Ok(nsp)
    }

    fn validate(&self) -> Result<()> {
        self.next_sentence()?;
        if !(self.mask_prob > 0.0 && self.mask_prob <= 1.0) {
            bail!("mask_prob must be in (0, 1], got {}", self.mask_prob);
        }
        if self.max_length < 5 {
            bail!("max_length must be at least 5, got {}", self.max_length);
        }
        self.train.validate().map_err(anyhow::Error::msg)
    }
}

/// What a BERT run directory records (`run.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertRunInfo {
    /// Always `bert`: tells GPT commands this is not theirs.
    pub arch: String,
    pub model: BertConfig,
    /// `tokenizer.json` inside the run (relative) or the tokenizer the user gave (absolute).
    pub tokenizer: PathBuf,
    pub recipe: BertRecipe,
}

impl BertRunInfo {
    fn tokenizer_path(&self, run_dir: &Path) -> PathBuf {
        if self.tokenizer.is_relative() {
            run_dir.join(&self.tokenizer)
        } else {
            self.tokenizer.clone()
        }
    }

    fn heads(&self) -> Result<BertHeads> {
        let nsp = self.recipe.next_sentence()?;
        Ok(BertHeads {
            pooler: nsp,
            mlm: true,
            nsp,
        })
    }
}

/// Whether `dir` holds a BERT run (its `run.toml` says `arch = "bert"`).
pub fn is_bert_run(dir: &Path) -> bool {
    crate::runs::run_arch(dir).as_deref() == Some(ARCH)
}

fn read_run(run_dir: &Path) -> Result<BertRunInfo> {
    let path = run_dir.join("run.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is not an ember run directory", run_dir.display()))?;
    let info: BertRunInfo =
        parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    crate::runs::checked_run_file(&path, info, |info| {
        info.model.validate().map_err(|e| e.to_string())?;
        info.recipe.validate().map_err(|e| e.to_string())?;
        info.recipe.train.validate()
    })
}

/// The tokenizer file of the BERT run in `run_dir`.
pub fn tokenizer_path(run_dir: &Path) -> Result<PathBuf> {
    Ok(read_run(run_dir)?.tokenizer_path(run_dir))
}

/// A trained BERT from a run directory (its latest checkpoint) with its tokenizer.
pub struct LoadedBertRun {
    pub config: BertConfig,
    pub model: Bert,
    pub tokenizer: Tokenizer,
}

/// Loads the latest checkpoint of the BERT run in `run_dir` onto `device`.
pub fn load_run(run_dir: &Path, device: &Device) -> Result<LoadedBertRun> {
    let info = read_run(run_dir)?;
    let dir = checkpoint::latest(run_dir)?;
    let model = checkpoint::load_model(&dir, info.model.init(info.heads()?, device))?;
    let tokenizer = Tokenizer::open(&info.tokenizer_path(run_dir))?;
    Ok(LoadedBertRun {
        config: info.model,
        model,
        tokenizer,
    })
}

/// The special ids masking needs, all of which a BERT vocabulary must have.
fn special_ids(tokenizer: &Tokenizer) -> Result<SpecialIds> {
    let id = |token: &str| {
        tokenizer.token_id(token).with_context(|| {
            format!(
                "the tokenizer has no `{token}` token; BERT pretraining needs [CLS] [SEP] [PAD] [MASK] [UNK]"
            )
        })
    };
    Ok(SpecialIds {
        cls: id("[CLS]")?,
        sep: id("[SEP]")?,
        pad: id("[PAD]")?,
        mask: id("[MASK]")?,
        unk: id("[UNK]")?,
    })
}

/// The recipe of a new run: the file given (or the built-in one), then the flags.
fn new_recipe(args: &PretrainArgs) -> Result<BertRecipe> {
    let mut recipe: BertRecipe = models::load_recipe(
        models::RecipeKind::BertPretrain,
        args.recipe.as_deref(),
        DEFAULT_RECIPE,
    )?;
    if let Some(model) = &args.model_config {
        recipe.model = model.clone();
    }
    if !args.corpus.is_empty() {
        recipe.corpus = args.corpus.clone();
    }
    for source in &mut recipe.corpus {
        *source = crate::runs::recorded_source(source);
    }
    if let Some(lr) = args.lr {
        recipe.train.lr = lr;
    }
    if let Some(batch_size) = args.batch_size {
        recipe.train.batch_size = batch_size;
    }
    if let Some(seed) = args.seed {
        recipe.train.seed = seed;
    }
    if let Some(max_length) = args.context_length {
        recipe.max_length = max_length;
    }
    if let Some(objectives) = &args.objectives {
        recipe.objectives = objectives
            .split(',')
            .map(|o| o.trim().to_string())
            .collect();
    }
    if let Some(vocab_size) = args.vocab_size {
        recipe.vocab_size = vocab_size;
    }
    Ok(recipe)
}

/// `ember pretrain --arch bert` (or `--resume` of a BERT run).
pub fn run(args: &PretrainArgs, device_spec: &str) -> Result<()> {
    let device = device::parse_device(device_spec)?.autodiff();
    if args.weights.is_some() {
        bail!(
            "--weights is for GPT runs; BERT pretraining starts from random weights (use `ember fill-mask`/`embed` for HuggingFace BERTs)"
        );
    }
    if args.stride.is_some() {
        bail!(
            "--stride is for GPT runs (windows over one token stream); BERT pretraining packs sentences up to --context-length"
        );
    }
    let previous = args.resume.as_deref().map(read_run).transpose()?;
    let resuming = previous.is_some();
    let run_dir = args.resume.clone().unwrap_or_else(|| args.out.clone());
    if !resuming {
        crate::runs::check_new_run_dir(&run_dir, args.overwrite, true)?;
    }
    let mut recipe = match &previous {
        Some(info) => info.recipe.clone(),
        None => new_recipe(args)?,
    };
    crate::pretrain::set_epochs(
        &mut recipe.train,
        args.epochs,
        previous.is_some().then_some(run_dir.as_path()),
    )?;
    recipe.validate()?;
    let next_sentence = recipe.next_sentence()?;

    if recipe.corpus.is_empty() {
        bail!("no corpus: give --corpus FILE… or `corpus = [..]` in the recipe");
    }
    let (mut train_parts, mut val_parts) = (Vec::new(), Vec::new());
    for source in &recipe.corpus {
        let path = data::resolve_text_source(source)?;
        let text = ember_data::read_text_file(&path)?;
        if text.trim().is_empty() {
            bail!("{}: the corpus is empty", path.display());
        }
        let (train, val) = split_text(&text, recipe.train_ratio)?;
        train_parts.push(train.to_string());
        val_parts.push(val.to_string());
    }
    // A blank line keeps the files' documents apart.
    let (train_text, val_text) = (train_parts.join("\n\n"), val_parts.join("\n\n"));
    let corpus_name = recipe.corpus.join(" + ");

    let (config, tokenizer, tokenizer_file) = if let Some(info) = previous {
        let tokenizer = Tokenizer::open(&info.tokenizer_path(&run_dir))?;
        (info.model, tokenizer, info.tokenizer)
    } else {
        let mut config = models::load_bert_config(&recipe.model, args.recipe.as_deref())?;
        let (tokenizer, file) = match &args.tokenizer {
            Some(path) => {
                let tokenizer = Tokenizer::open(path)?;
                if tokenizer.vocab_size() > config.vocab_size {
                    bail!(
                        "the tokenizer {} has {} tokens but the model's vocab_size is {}",
                        path.display(),
                        tokenizer.vocab_size(),
                        config.vocab_size
                    );
                }
                // The model starts from scratch: its embedding table and MLM output are sized
                // to the tokenizer, as with a vocabulary trained here (rows no id reaches would
                // only compete in the softmax).
                if tokenizer.vocab_size() < config.vocab_size {
                    eprintln!(
                        "note: vocab_size {} → {}, the size of the tokenizer {}",
                        config.vocab_size,
                        tokenizer.vocab_size(),
                        path.display()
                    );
                    config.vocab_size = tokenizer.vocab_size();
                }
                // The run keeps its own copy (saved with it, once all is checked), so it
                // does not depend on --tokenizer staying; GPT-2's BPE has no tokenizer.json
                // form and is recorded by path.
                let file = match tokenizer {
                    Tokenizer::Hf(_) => PathBuf::from("tokenizer.json"),
                    Tokenizer::Gpt2(_) => std::path::absolute(path)?,
                };
                (tokenizer, file)
            }
            None => {
                let sentences = split_documents(&train_text).into_iter().flatten();
                let tokenizer =
                    Tokenizer::train_wordpiece(sentences, recipe.vocab_size, recipe.lowercase)?;
                // The embedding table is sized to the vocabulary trained here.
                config.vocab_size = tokenizer.vocab_size();
                (tokenizer, PathBuf::from("tokenizer.json"))
            }
        };
        (config, tokenizer, file)
    };
    config.validate()?;
    if recipe.max_length > config.max_position_embeddings {
        bail!(
            "max_length {} exceeds the model's max_position_embeddings {}",
            recipe.max_length,
            config.max_position_embeddings
        );
    }
    let specials = special_ids(&tokenizer)?;

    let loader = |part: &str, what: &str, shuffle: bool| -> Result<MlmLoader> {
        let mut documents = Vec::new();
        for doc in split_documents(part) {
            let mut sentences = Vec::with_capacity(doc.len());
            for sentence in doc {
                sentences.push(tokenizer.encode(&sentence)?);
            }
            documents.push(sentences);
        }
        let options = MlmLoaderOptions {
            specials,
            vocab_size: tokenizer.vocab_size(),
            masking: MlmOptions {
                mask_prob: recipe.mask_prob,
                ..MlmOptions::default()
            },
            max_len: recipe.max_length,
            batch_size: recipe.train.batch_size,
            next_sentence,
            seed: recipe.train.seed,
            shuffle,
            drop_last: shuffle,
        };
        Ok(MlmLoader::new(documents, options, what)?)
    };
    let train_loader = loader(
        &train_text,
        &format!("the training split of {corpus_name}"),
        true,
    )?;
    let val_loader = loader(
        &val_text,
        &format!("the validation split of {corpus_name}"),
        false,
    )?;

    let splits = Splits {
        train: &train_loader,
        val: &val_loader,
    };
    splits.check()?;
    // The model before the run directory: a config too large for memory aborts here, with
    // the old run (or the empty directory) untouched.
    let info = BertRunInfo {
        arch: ARCH.into(),
        model: config.clone(),
        tokenizer: tokenizer_file,
        recipe: recipe.clone(),
    };
    let heads = info.heads()?;
    device.seed(recipe.train.seed);
    crate::memory::check_model_fits(config.num_params(heads), true, &device)?;
    let model = config.init(heads, &device);
    // The checkpoint before the run file: a resume that fails on a damaged checkpoint leaves
    // the run's description (its epochs) as it was.
    let resume_dir = if resuming {
        Some(checkpoint::latest(&run_dir)?)
    } else {
        None
    };
    let (model, optim, state) = resume_from::<ember_train::lm::EvalRecord, _>(
        resume_dir.as_deref(),
        &run_dir,
        model,
        recipe.train.optimizer(),
        Some(ember_data::loader::Batches::num_batches(&train_loader)),
    )?;
    // Everything is checked: now the run directory is written.
    if !resuming {
        crate::runs::prepare_new_run_dir(&run_dir, args.overwrite, true)?;
    }
    if !resuming && info.tokenizer.is_relative() {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        tokenizer.save_json(&run_dir.join(&info.tokenizer))?;
        if args.tokenizer.is_none() {
            eprintln!(
                "trained a WordPiece vocabulary of {} tokens on the training split (tokenizer.json)",
                tokenizer.vocab_size()
            );
        }
    }
    crate::runs::write_run_file(&run_dir, "run.toml", &info)?;
    use ember_data::loader::Batches;
    eprintln!(
        "model: {} parameters ({}); train: {} of {} sequences per epoch (≤ {} tokens); validation: {}",
        config.num_params(heads),
        recipe.objectives.join(" + "),
        crate::progress::batches(train_loader.num_batches()),
        recipe.train.batch_size,
        recipe.max_length,
        crate::progress::batches(val_loader.num_batches())
    );
    let mut observer = TrainProgress::new(MaskSample {
        tokenizer: &tokenizer,
        sample: recipe.sample.clone(),
        specials,
        max_len: recipe.max_length,
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
        "run directory: {} (run.toml, tokenizer, metrics.jsonl, loss.png, checkpoints/); try `ember fill-mask --model {} \"… [MASK] …\"`",
        run_dir.display(),
        run_dir.display()
    );
    Ok(())
}

/// The top predictions for the sample's first `[MASK]`.
struct MaskSample<'a> {
    tokenizer: &'a Tokenizer,
    sample: String,
    specials: SpecialIds,
    max_len: usize,
}

impl EpochSample<Bert> for MaskSample<'_> {
    /// "text → a 0.31 · b 0.12 · c 0.05".
    fn sample(&mut self, model: &Bert) -> Result<String, String> {
        let input = self
            .tokenizer
            .encode_for_encoder(&self.sample, None, self.max_len)
            .map_err(|e| e.to_string())?;
        let predictions = crate::bert::mask_predictions(
            model,
            std::slice::from_ref(&input),
            [self.specials.pad, self.specials.mask],
            self.tokenizer.vocab_size(),
            3,
            &model.device(),
        )
        .map_err(|e| e.to_string())?;
        let Some((_, ranked)) = predictions[0].first() else {
            return Err("the sample has no [MASK]".into());
        };
        let words: Vec<String> = ranked
            .iter()
            .map(|(id, p)| {
                let token = self.tokenizer.token(*id).unwrap_or_else(|| id.to_string());
                // An early model spreads its probability thin: 3.1e-3, not 0.00.
                match *p >= 0.01 {
                    true => format!("{token} {p:.2}"),
                    false => format!("{token} {p:.1e}"),
                }
            })
            .collect();
        Ok(format!("{} → {}", self.sample, words.join(" · ")))
    }
}
