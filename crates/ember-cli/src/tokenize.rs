//! `ember tokenize` and `ember tokenizer train`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ember_data::bpe::{BpeTokenizer, TokenId};
use ember_data::bpe_train;
use ember_data::tokenizer::Tokenizer;

use crate::data;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Text to encode (with --decode: token ids separated by spaces or commas) [default:
    /// standard input].
    #[arg(long, conflicts_with = "file")]
    text: Option<String>,
    /// Read the text (or the ids) from this file instead.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Decode token ids back to text.
    #[arg(long)]
    decode: bool,
    /// Tokenizer: a directory with encoder.json + vocab.bpe, tokenizer.json or vocab.txt, one
    /// of those files, or a run directory (its tokenizer) [default: GPT-2's, fetched on first
    /// use].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Print the token count and bytes per token instead of the ids.
    #[arg(long, conflicts_with = "decode")]
    stats: bool,
}

/// Loads the tokenizer in `dir`, or GPT-2's from the data cache.
pub fn load_tokenizer(dir: Option<&PathBuf>) -> Result<BpeTokenizer> {
    match dir {
        // One file of the pair stands for its directory.
        Some(file) if file.is_file() => match BpeTokenizer::pair_file_dir(file) {
            Some(dir) => Ok(BpeTokenizer::from_dir(dir)?),
            None => anyhow::bail!(
                "{}: a GPT tokenizer is a directory with encoder.json + vocab.bpe (or \
                 vocab.json + merges.txt), such as `ember tokenizer train` writes",
                file.display()
            ),
        },
        Some(dir) => Ok(BpeTokenizer::from_dir(dir)?),
        None => data::gpt2_tokenizer(),
    }
}

/// A `--tokenizer` argument as a tokenizer location: a GPT or classifier run directory
/// stands for the tokenizer it trained with (`None`: GPT-2's), anything else for itself (a
/// BERT run directory holds its `tokenizer.json`).
pub fn resolve_tokenizer_arg(path: &Path) -> Result<Option<PathBuf>> {
    if path.join("run.toml").is_file() && !crate::bert_pretrain::is_bert_run(path) {
        return Ok(crate::runs::read_run_info(path)?.tokenizer_dir(path));
    }
    if path.join("classifier.toml").is_file() {
        return crate::classify::tokenizer_location(path);
    }
    Ok(Some(path.to_path_buf()))
}

pub fn run_tokenize(args: TokenizeArgs) -> Result<()> {
    let tokenizer = match args
        .tokenizer
        .as_deref()
        .map(resolve_tokenizer_arg)
        .transpose()?
    {
        Some(Some(path)) => Tokenizer::open(&path)?,
        Some(None) | None => Tokenizer::Gpt2(data::gpt2_tokenizer()?),
    };
    let input = match (&args.text, &args.file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => ember_data::read_text_file(path)?,
        (None, None) => {
            let mut stdin = std::io::stdin();
            if std::io::IsTerminal::is_terminal(&stdin) {
                bail!("give the text with --text or --file, or pipe it to standard input");
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stdin, &mut text)
                .context("reading standard input (UTF-8 text)")?;
            text
        }
    };
    if args.decode {
        let ids = parse_ids(&input, tokenizer.vocab_size())?;
        // The text exactly as decoded (`> file` reproduces it), plus a newline on a terminal
        // so that the prompt does not continue on its last line.
        let text = tokenizer.decode(&ids)?;
        print!("{text}");
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) && !text.ends_with('\n') {
            println!();
        }
        return Ok(());
    }
    let ids = tokenizer.encode(&input)?;
    if args.stats {
        println!(
            "{} tokens, {} bytes, {:.3} bytes/token",
            ids.len(),
            input.len(),
            input.len() as f64 / ids.len().max(1) as f64
        );
    } else {
        let text: Vec<String> = ids.iter().map(ToString::to_string).collect();
        println!("{}", text.join(" "));
    }
    Ok(())
}

/// Parses ids separated by whitespace and/or commas (brackets allowed, as printed by Python).
fn parse_ids(input: &str, vocab_size: usize) -> Result<Vec<TokenId>> {
    input
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']'))
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            let id: TokenId = s
                .parse()
                .with_context(|| format!("id #{} `{s}` is not a token id", i + 1))?;
            if id as usize >= vocab_size {
                bail!(
                    "id #{} = {id} is outside the vocabulary (size {vocab_size})",
                    i + 1
                );
            }
            Ok(id)
        })
        .collect()
}

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE on text files; writes encoder.json + vocab.bpe (GPT-2's format).
    Train(TrainArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// Corpus text files (or dataset names such as the-verdict).
    #[arg(long, required = true, num_args = 1..)]
    corpus: Vec<String>,
    /// Vocabulary size, including the 256 byte tokens and <|endoftext|>.
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    /// Only merge pairs seen at least this often.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace a vocabulary already in --out.
    #[arg(long)]
    force: bool,
}

pub fn run_tokenizer(cmd: TokenizerCommand) -> Result<()> {
    let TokenizerCommand::Train(args) = cmd;
    crate::runs::refuse_to_replace(&args.out, &["encoder.json", "vocab.bpe"], args.force)?;
    let mut corpora = Vec::new();
    for source in &args.corpus {
        let path = data::resolve_text_source(source)?;
        let text = ember_data::read_text_file(&path)?;
        corpora.push((source.clone(), text));
    }
    if corpora.iter().all(|(_, text)| text.is_empty()) {
        bail!("the corpus is empty: {}", args.corpus.join(", "));
    }
    let target = args.vocab_size.saturating_sub(bpe_train::MIN_VOCAB_SIZE) as u64;
    let bar = crate::progress::count_bar(target, "merges");
    let trained = bpe_train::train(
        corpora.iter().map(|(_, text)| text.as_str()),
        args.vocab_size,
        args.min_frequency,
        |done, _| bar.set_position(done as u64),
    )
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    trained
        .save(&args.out)
        .with_context(|| format!("writing the vocabulary to {}", args.out.display()))?;
    // Load it back through the same path users take, so a bad save cannot go unnoticed.
    let tokenizer = BpeTokenizer::from_dir(&args.out)?;
    println!(
        "trained {} tokens ({} merges) → {}/encoder.json, vocab.bpe",
        tokenizer.vocab_size(),
        trained.merges.len(),
        args.out.display()
    );
    if tokenizer.vocab_size() < args.vocab_size {
        println!(
            "note: stopped at {} tokens: no pair occurs {} times or more",
            tokenizer.vocab_size(),
            args.min_frequency.max(1)
        );
    }
    let gpt2 = data::gpt2_tokenizer().ok();
    println!("compression (bytes per token, higher is better):");
    for (name, text) in &corpora {
        let ours = text.len() as f64 / tokenizer.encode(text).len().max(1) as f64;
        let theirs = gpt2.as_ref().map_or_else(
            || "n/a".to_string(),
            |g| {
                format!(
                    "{:.3}",
                    text.len() as f64 / g.encode(text).len().max(1) as f64
                )
            },
        );
        println!("  {name}: trained {ours:.3}, gpt2 {theirs}");
    }
    Ok(())
}
