//! `ember import gpt2` and `ember export gpt2`: HuggingFace GPT-2 directories ⇄ run directories.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ember_data::bpe::END_OF_TEXT;
use ember_model::gpt_hf::{export_gpt2, gpt2_size_name};
use ember_train::checkpoint::{self, TrainState};

use crate::device;
use crate::runs::{self, RunInfo, load_gpt, write_run_info};

#[derive(Subcommand)]
pub enum ImportCommand {
    /// A HuggingFace GPT-2 model (config.json + model.safetensors or pytorch_model.bin, or a
    /// `models--NAME` folder of the HF cache) into a new run directory.
    Gpt2(ImportArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// The HuggingFace model directory.
    #[arg(long)]
    from: PathBuf,
    /// The run directory to create (must not hold a run yet).
    #[arg(long)]
    out: PathBuf,
    /// Keep only the first N positions of the position embedding (shorter window).
    #[arg(long)]
    context_length: Option<usize>,
}

#[derive(Subcommand)]
pub enum ExportCommand {
    /// A run's latest weights as a HuggingFace GPT-2 directory (config.json, model.safetensors,
    /// and the tokenizer as vocab.json + merges.txt), loadable by
    /// `GPT2LMHeadModel.from_pretrained(DIR)`.
    Gpt2(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Run directory (written by `ember pretrain` or `ember import`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace config.json / model.safetensors already in --out.
    #[arg(long)]
    force: bool,
}

pub fn run_import(command: ImportCommand, device_spec: &str) -> Result<()> {
    let ImportCommand::Gpt2(args) = command;
    let device = device::parse_device(device_spec)?;
    runs::refuse_existing_run(&args.out)?;
    let loaded = load_gpt(&args.from, &device, args.context_length)?;
    if let Err(err) = loaded.tokenizer() {
        eprintln!("warning: {err:#}; text commands will not work with this run");
    }
    // Imported weights have trained no batches of ember's (nothing to resume).
    let state = TrainState {
        batches_per_epoch: None,
        ..TrainState::start(0)
    };
    let mut info = RunInfo {
        model: loaded.config.clone(),
        tokenizer: loaded.tokenizer.as_deref().map(runs::absolute),
        source: Some(format!("imported from {}", args.from.display())),
        recipe: None,
        instruct: None,
    };
    // The run keeps its own copy of the vocabulary, so it does not depend on --from staying;
    // copied first, as a failed copy leaves no checkpoint that makes --out look taken.
    runs::keep_own_tokenizer(&args.out, &mut info)?;
    checkpoint::save(&args.out, &loaded.model, None, &state, 1)?;
    write_run_info(&args.out, &info)?;
    println!(
        "imported {} ({} parameters, context {}) into {}",
        gpt2_size_name(&info.model).unwrap_or("a GPT-2 model"),
        info.model.num_params(),
        info.model.context_length,
        args.out.display()
    );
    Ok(())
}

pub fn run_export(command: ExportCommand, device_spec: &str) -> Result<()> {
    let ExportCommand::Gpt2(args) = command;
    let device = device::parse_device(device_spec)?;
    runs::refuse_to_replace(&args.out, &["config.json", "model.safetensors"], args.force)?;
    let loaded = load_gpt(&args.checkpoint, &device, None)?;
    // Weights without a fitting vocabulary (e.g. a test model) export without one.
    let tokenizer = loaded
        .tokenizer()
        .map_err(|err| eprintln!("warning: {err:#}; exporting the weights without a vocabulary"))
        .ok();
    // Every file is written into a staging directory inside --out first and moved into place
    // once all are written: a failure part-way (a full disk, a file name taken by a
    // directory) leaves a model being replaced whole, never new weights beside an old config.
    const FILES: [&str; 4] = [
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
    ];
    if let Some(taken) = FILES.iter().map(|f| args.out.join(f)).find(|p| p.is_dir()) {
        bail!(
            "{} is a directory; the export writes a file there",
            taken.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".export-")
        .tempdir_in(&args.out)
        .with_context(|| format!("creating a staging directory in {}", args.out.display()))?;
    export_gpt2(
        &loaded.model,
        &loaded.config,
        tokenizer.as_ref().and_then(|t| t.special_id(END_OF_TEXT)),
        staging.path(),
    )?;
    let mut written = "config.json, model.safetensors";
    if tokenizer.is_some() {
        let vocab_dir = match &loaded.tokenizer {
            Some(dir) => dir.clone(),
            None => crate::data::gpt2_vocabulary_dir()?,
        };
        runs::copy_vocabulary(&vocab_dir, staging.path(), ("vocab.json", "merges.txt"))?;
        written = "config.json, model.safetensors, vocab.json, merges.txt";
    }
    for file in FILES {
        let (staged, target) = (staging.path().join(file), args.out.join(file));
        if staged.exists() {
            std::fs::rename(&staged, &target)
                .with_context(|| format!("moving {} into place", target.display()))?;
        } else if args.force {
            // The vocabulary of the model this export replaces would not fit these weights.
            runs::remove_file_if_present(&target)?;
        }
    }
    println!(
        "exported {} to {} ({written})",
        args.checkpoint.display(),
        args.out.display()
    );
    Ok(())
}
