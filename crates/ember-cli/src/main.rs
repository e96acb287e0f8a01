//! `ember`: build, pretrain, fine-tune and run GPT-style models from first principles.

mod bench;
mod bert;
mod bert_pretrain;
mod classify;
mod data;
mod device;
mod generate;
mod hf;
mod instruct;
mod interrupt;
mod memory;
mod models;
mod pretrain;
mod progress;
mod runs;
mod score;
mod seq2seq;
mod tokenize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: memory::HugePages = memory::HugePages;

#[derive(Parser)]
#[command(name = "ember", version, about, long_about = None)]
/// ember — an LLM framework on Burn: data, tokenizers, GPT/BERT models, training and inference.
struct Cli {
    /// Compute device: cpu (pure-Rust flex backend), flex, ndarray, wgpu[:N] or cuda[:N].
    /// Backends other than flex must be compiled in with the cargo feature of the same name.
    #[arg(long, global = true, default_value = "cpu", env = "EMBER_DEVICE")]
    device: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch, verify and list datasets (cache: $EMBER_HOME, default ~/.cache/ember).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Encode text to token ids (or decode ids with --decode).
    Tokenize(tokenize::TokenizeArgs),
    /// Train a byte-level BPE vocabulary.
    #[command(subcommand)]
    Tokenizer(tokenize::TokenizerCommand),
    /// Pretrain a GPT (or with --arch bert a BERT) from a recipe (default: gpt-tiny on
    /// the-verdict, a few minutes on CPU).
    Pretrain(pretrain::PretrainArgs),
    /// Generate text from a trained run or pretrained weights.
    Generate(generate::GenerateArgs),
    /// Train an encoder–decoder (transformer or LSTM with attention) from a recipe.
    #[command(subcommand)]
    Train(seq2seq::TrainCommand),
    /// Translate texts with a trained encoder–decoder (greedy or --beam N).
    Translate(seq2seq::TranslateArgs),
    /// Fine-tune a GPT (or a BERT classifier) for a task.
    #[command(subcommand)]
    Finetune(classify::FinetuneCommand),
    /// Answer every entry of an instruction file with a fine-tuned model (adds model_response).
    Respond(instruct::RespondArgs),
    /// Score model responses 0–100 with a judge model served by Ollama.
    Judge(instruct::JudgeArgs),
    /// Predict the [MASK] tokens of texts with a BERT masked-LM.
    FillMask(bert::FillMaskArgs),
    /// Sentence embeddings (JSON lines) from a BERT encoder, e.g. a sentence-transformers model.
    Embed(bert::EmbedArgs),
    /// Classify texts with a fine-tuned classifier.
    Classify(classify::ClassifyArgs),
    /// LoRA adapters: merge them into the weights.
    #[command(subcommand)]
    Lora(classify::LoraCommand),
    /// Loss and perplexity of a text under a model.
    Score(score::ScoreArgs),
    /// Import pretrained weights (HuggingFace format) into a run directory.
    #[command(subcommand)]
    Import(hf::ImportCommand),
    /// Export a run's weights in HuggingFace format.
    #[command(subcommand)]
    Export(hf::ExportCommand),
    /// Benchmarks that print ratios against a reference measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Show the compiled backends and check the selected device with a small computation.
    Info,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    memory::keep_freed_memory();
    match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Tokenize(args) => tokenize::run_tokenize(args),
        Command::Tokenizer(cmd) => tokenize::run_tokenizer(cmd),
        Command::Pretrain(args) => pretrain::run(args, &cli.device),
        Command::Generate(args) => generate::run(args, &cli.device),
        Command::Train(cmd) => seq2seq::run_train(cmd, &cli.device),
        Command::Translate(args) => seq2seq::run_translate(args, &cli.device),
        Command::Finetune(cmd) => classify::run_finetune(cmd, &cli.device),
        Command::Respond(args) => instruct::run_respond(args, &cli.device),
        Command::Judge(args) => instruct::run_judge(args),
        Command::FillMask(args) => bert::run_fill_mask(args, &cli.device),
        Command::Embed(args) => bert::run_embed(args, &cli.device),
        Command::Classify(args) => classify::run_classify(args, &cli.device),
        Command::Lora(cmd) => classify::run_lora(cmd, &cli.device),
        Command::Score(args) => score::run(args, &cli.device),
        Command::Import(cmd) => hf::run_import(cmd, &cli.device),
        Command::Export(cmd) => hf::run_export(cmd, &cli.device),
        Command::Bench(cmd) => bench::run(cmd, &cli.device),
        Command::Info => info(&cli.device),
    }
}

fn info(device_spec: &str) -> anyhow::Result<()> {
    use burn::prelude::*;
    println!("ember {}", env!("CARGO_PKG_VERSION"));
    println!(
        "compiled backends: {}",
        device::compiled_backends().join(", ")
    );
    let device = device::parse_device(device_spec)?;
    // A 64×64 matmul whose every entry is 64: proves the backend runs, not only that it loads.
    let ones = Tensor::<2>::ones([64, 64], &device);
    let sum: f32 = ones.clone().matmul(ones).sum().into_scalar();
    anyhow::ensure!(
        sum == 64.0 * 64.0 * 64.0,
        "device {device_spec} computed a wrong matmul sum {sum}"
    );
    match device::adapter(&device) {
        Some(adapter) => {
            println!("device {device_spec}: {adapter} — ok (64×64 matmul checked)")
        }
        None => println!("device {device_spec}: {device:?} — ok (64×64 matmul checked)"),
    }
    Ok(())
}

/// Output that cannot be written ends ember like other command-line tools instead of with a
/// panic trace (`println!` panics when a write fails): a closed pipe (`ember tokenize … | head`)
/// ends it quietly, by the default SIGPIPE action, and another failure (a full disk) with a
/// one-line error.
fn quiet_output_failures() {
    #[cfg(unix)]
    // SAFETY: sets the default action of one signal, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if let Some(why) = message.strip_prefix("failed printing to stdout: ") {
            eprintln!("error: writing to standard output: {why}");
            std::process::exit(1);
        }
        default_hook(info);
    }));
}

fn main() -> ExitCode {
    quiet_output_failures();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if interrupt::requested() => {
            eprintln!("{err}");
            ExitCode::from(130)
        }
        Err(err) => {
            // One line: the error and its causes, outermost first.
            // (A cause that an outer message already quotes is not repeated.)
            let mut line = String::new();
            for cause in err.chain().map(|c| c.to_string()) {
                if line.is_empty() {
                    line = cause;
                } else if !line.contains(&cause) {
                    line = format!("{line}: {cause}");
                }
            }
            eprintln!("error: {}", line.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
