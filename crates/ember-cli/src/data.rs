//! `ember data fetch|list`, and finding datasets for other commands.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ember_data::bpe::BpeTokenizer;
use ember_data::datasets::{DataCache, Manifest, NoProgress};
use ember_data::loader::{TokenWindows, WindowLoader, split_text};

use crate::progress::FetchBar;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download (or copy from $EMBER_DATA_MIRROR) and verify datasets into the cache.
    Fetch(FetchArgs),
    /// List the known datasets and whether each is cached and verified.
    List,
    /// Cut a corpus into sliding (input, target) windows and report the train/validation batches.
    Windows(WindowsArgs),
    /// Build a fine-tuning dataset's split files (`spam`: the book's balanced SMS split as
    /// train.csv / validation.csv / test.csv with columns Label,Text; ham = 0, spam = 1).
    Prepare(PrepareArgs),
    /// Generate a synthetic dataset (`dates`: human-written dates → ISO 8601, as
    /// train.tsv / val.tsv / test.tsv with `source<TAB>target` lines, 80/10/10).
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Which dataset: dates.
    name: String,
    /// Number of examples (all distinct).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(10..=2_000_000))]
    n: u64,
    /// Seed: the same seed gives the same files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "data/dates")]
    out: PathBuf,
    /// Replace the files of an earlier run of this command in --out.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Which dataset: spam.
    name: String,
    /// Output directory.
    #[arg(long, default_value = "data/spam")]
    out: PathBuf,
    /// Replace the files of an earlier run of this command in --out.
    #[arg(long)]
    force: bool,
    /// Seed of the undersampling and the shuffle.
    #[arg(long, default_value_t = 123)]
    seed: u64,
}

#[derive(Args)]
pub struct WindowsArgs {
    /// Corpus: a text file or a single-file dataset name.
    #[arg(long, default_value = "the-verdict")]
    corpus: String,
    /// Tokens per window (the model's context length).
    #[arg(long, default_value_t = 256)]
    max_length: usize,
    /// Distance between window starts [default: --max-length, windows that neither overlap
    /// nor skip tokens].
    #[arg(long)]
    stride: Option<usize>,
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Fraction of the text (by characters) used for training; the rest is validation.
    #[arg(long, default_value_t = 0.9)]
    train_ratio: f64,
    /// Tokenizer directory (encoder.json + vocab.bpe) or a GPT run directory [default:
    /// GPT-2's].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Also print the first N training windows: input ids, target ids (the inputs shifted
    /// by one) and the input text, as the book's chapter 2 shows its first batch.
    #[arg(long, default_value_t = 0)]
    show: usize,
}

#[derive(Args)]
pub struct FetchArgs {
    /// Dataset names (see `ember data list`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    names: Vec<String>,
    /// Fetch every dataset of the manifest.
    #[arg(long)]
    all: bool,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    let manifest = Manifest::embedded();
    let cache = DataCache::from_env();
    match cmd {
        DataCommand::Generate(args) => {
            if args.name != "dates" {
                bail!("unknown dataset to generate `{}` (known: dates)", args.name);
            }
            crate::runs::refuse_to_replace(
                &args.out,
                &["train.tsv", "val.tsv", "test.tsv"],
                args.force,
            )?;
            let examples = ember_data::dates::generate(args.n as usize, args.seed);
            let [train, val, test] = ember_data::dates::write_splits(&args.out, &examples)
                .with_context(|| format!("{}: cannot write", args.out.display()))?;
            println!(
                "{}: train.tsv {train}, val.tsv {val}, test.tsv {test} examples",
                args.out.display()
            );
        }
        DataCommand::Prepare(args) => {
            if !matches!(args.name.as_str(), "spam" | "sms-spam") {
                bail!("unknown dataset to prepare `{}` (known: spam)", args.name);
            }
            crate::runs::refuse_to_replace(
                &args.out,
                &["train.csv", "validation.csv", "test.csv"],
                args.force,
            )?;
            let path = cache.file("sms-spam", "sms_spam/SMSSpamCollection")?;
            let data = ember_data::classification::read_sms_spam(&path)?;
            let splits = ember_data::classification::split(&data, true, args.seed);
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            for (name, part) in [
                ("train", &splits.train),
                ("validation", &splits.validation),
                ("test", &splits.test),
            ] {
                let file = args.out.join(format!("{name}.csv"));
                ember_data::classification::write_csv(&file, part)?;
                let spam = part.iter().filter(|e| e.label == 1).count();
                println!(
                    "{}: {} rows ({} ham, {spam} spam)",
                    file.display(),
                    part.len(),
                    part.len() - spam
                );
            }
        }
        DataCommand::Fetch(args) => {
            let names: Vec<String> = if args.all {
                manifest.datasets.iter().map(|d| d.name.clone()).collect()
            } else {
                args.names
            };
            for name in &names {
                manifest.get(name)?; // unknown names fail before any download starts
            }
            for name in &names {
                let paths = cache.fetch(name, &mut FetchBar::default())?;
                for path in paths {
                    println!("{name}: {}", path.display());
                }
            }
        }
        DataCommand::List => {
            println!("cache: {}", cache.root().display());
            for status in cache.status() {
                println!(
                    "{:<18} {:>10} bytes  {:<9} {}",
                    status.name,
                    status.size,
                    status.state.label(),
                    status.license
                );
            }
        }
        DataCommand::Windows(args) => windows(args)?,
    }
    Ok(())
}

/// Reports what the pretraining loader makes of a corpus: the train split is shuffled-capable
/// and drops its short last batch, the validation split keeps it (as in the book).
fn windows(args: WindowsArgs) -> Result<()> {
    let tokenizer = match &args.tokenizer {
        Some(arg) => crate::tokenize::resolve_tokenizer_arg(arg)?,
        None => None,
    };
    let tokenizer = crate::tokenize::load_tokenizer(tokenizer.as_ref())?;
    let text = ember_data::read_text_file(&resolve_text_source(&args.corpus)?)?;
    let (train_text, val_text) = split_text(&text, args.train_ratio)?;
    let stride = args.stride.unwrap_or(args.max_length);
    let build = |part: &str, what: &str, drop_last: bool| -> Result<WindowLoader> {
        let windows = TokenWindows::new(tokenizer.encode(part), args.max_length, stride, what)?;
        Ok(WindowLoader::new(
            windows,
            args.batch_size,
            None,
            drop_last,
        )?)
    };
    let train = build(train_text, "the training split", true)?;
    let val = build(val_text, "the validation split", false)?;
    for (name, loader) in [("train", &train), ("validation", &val)] {
        println!(
            "{name}: {} windows, {} of up to {}, {} tokens",
            loader.windows().len(),
            crate::progress::batches(loader.num_batches()),
            loader.batch_size(),
            loader.num_tokens()
        );
    }
    let join = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    for index in 0..args.show.min(train.windows().len()) {
        let (inputs, targets) = train.windows().window(index);
        println!("window {index}:");
        println!("  inputs:  {}", join(inputs));
        println!("  targets: {}", join(targets));
        println!("  text:    {:?}", tokenizer.decode(inputs)?);
    }
    Ok(())
}

/// GPT-2's tokenizer from the data cache, fetched on first use.
pub fn gpt2_tokenizer() -> Result<BpeTokenizer> {
    Ok(BpeTokenizer::from_dir(&gpt2_vocabulary_dir()?)?)
}

/// The cache directory holding GPT-2's `encoder.json` and `vocab.bpe` (fetched if needed).
pub fn gpt2_vocabulary_dir() -> Result<PathBuf> {
    let encoder = DataCache::from_env().file("gpt2-bpe", "gpt2/encoder.json")?;
    let dir = encoder
        .parent()
        .context("encoder.json has no parent directory")?;
    Ok(dir.to_path_buf())
}

/// A text source given on the command line: an existing file, or the name of a dataset with a
/// single file (fetched on first use).
pub fn resolve_text_source(source: &str) -> Result<PathBuf> {
    let path = PathBuf::from(source);
    if path.exists() {
        return Ok(path);
    }
    let manifest = Manifest::embedded();
    match manifest.get(source) {
        Ok(entry) if entry.files.len() == 1 => {
            let mut paths = DataCache::from_env().fetch(source, &mut NoProgress)?;
            Ok(paths.remove(0))
        }
        _ => bail!(
            "{source}: no such file (nor a single-file dataset: {})",
            manifest
                .datasets
                .iter()
                .filter(|d| d.files.len() == 1)
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
