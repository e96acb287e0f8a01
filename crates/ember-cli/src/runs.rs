//! Run directories (`run.toml` + `checkpoints/`) and the other place GPT weights come from,
//! HuggingFace GPT-2 directories, behind one loader.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use ember_data::bpe::BpeTokenizer;
use ember_model::config::parse_toml;
use ember_model::gpt::{Gpt, GptConfig};
use ember_model::gpt_hf::{HfGpt2, gpt2_size_name};
use ember_train::checkpoint;
use serde::{Deserialize, Serialize};

use crate::instruct::InstructRecipe;
use crate::pretrain::Recipe;
use ember_data::instruct::Template;

/// What a run directory records about itself (`run.toml`), for resume, generate and export.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    pub model: GptConfig,
    /// Tokenizer directory (relative: inside the run directory), or absent for GPT-2's.
    pub tokenizer: Option<PathBuf>,
    /// Where the starting weights came from (`ember import`, `pretrain --weights`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The pretraining recipe; absent for imported weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
    /// The instruction fine-tuning recipe of a `finetune instruct` run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruct: Option<InstructRecipe>,
}

impl RunInfo {
    /// The tokenizer directory, resolved against `run_dir`; `None` means GPT-2's.
    pub fn tokenizer_dir(&self, run_dir: &Path) -> Option<PathBuf> {
        self.tokenizer.as_ref().map(|dir| match dir.is_relative() {
            true => run_dir.join(dir),
            false => dir.clone(),
        })
    }
}

/// The `arch` a run's `run.toml` names (`bert`), or `None` (GPT runs, which predate the
/// field, and directories without a readable `run.toml`).
pub fn run_arch(run_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(run_dir.join("run.toml")).ok()?;
    let value: toml::Table = toml::from_str(&text).ok()?;
    value.get("arch")?.as_str().map(str::to_string)
}

/// Reads `RUN_DIR/run.toml` of a GPT run.
pub fn read_run_info(run_dir: &Path) -> Result<RunInfo> {
    let path = run_dir.join("run.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is not an ember run directory", run_dir.display()))?;
    if let Some(arch) = run_arch(run_dir) {
        bail!(
            "{} is a {arch} run, not a GPT run; use it with `ember fill-mask --model`, `ember embed --model`, `ember finetune classify --arch {arch} --checkpoint` or `ember pretrain --resume`",
            run_dir.display()
        );
    }
    let info: RunInfo =
        parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    checked_run_file(&path, info, |info| {
        info.model.validate().map_err(|e| e.to_string())?;
        if let Some(recipe) = &info.recipe {
            recipe.train.validate()?;
        }
        if let Some(instruct) = &info.instruct {
            instruct.train.validate()?;
            if let Some(lora) = &instruct.lora {
                lora.validate()?;
            }
        }
        Ok(())
    })
}

/// `value`, read from the run file at `path`, if `check` passes. Why: a run file is written by
/// ember, but a value edited into it by hand (`n_heads = 0`) would otherwise fail deep inside a
/// tensor op; checked as a config file is, the error names the file.
pub fn checked_run_file<T>(
    path: &Path,
    value: T,
    check: impl FnOnce(&T) -> std::result::Result<(), String>,
) -> Result<T> {
    check(&value).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(value)
}

/// Writes `RUN_DIR/run.toml` atomically (creating the directory).
pub fn write_run_info(run_dir: &Path, info: &RunInfo) -> Result<()> {
    write_run_file(run_dir, "run.toml", info)
}

/// Refuses to write over any of `files` that exists, unless `force` (the `--force` of the
/// commands that write plain output files rather than runs).
pub fn refuse_to_replace(dir: &Path, files: &[&str], force: bool) -> Result<()> {
    files
        .iter()
        .try_for_each(|f| refuse_to_replace_file(&dir.join(f), force))
}

/// Checks an output file before the work that fills it: its directory exists (a mistyped one
/// would otherwise fail only after all the work), and an existing file is replaced only with
/// `force`.
pub fn check_output_file(path: &Path, force: bool) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "{}: the directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    refuse_to_replace_file(path, force)
}

/// Refuses to write over the file at `path` if it exists, unless `force`.
pub fn refuse_to_replace_file(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!(
            "{} already exists; choose another path or pass --force to replace it",
            path.display()
        );
    }
    Ok(())
}

/// Refuses to resume `run_dir` for fewer epochs in all than its checkpoint in
/// `checkpoint_dir` has already trained.
pub fn refuse_fewer_epochs(run_dir: &Path, checkpoint_dir: &Path, epochs: usize) -> Result<()> {
    let done = checkpoint::load_state(checkpoint_dir)?.epoch;
    if epochs < done {
        bail!(
            "--epochs {epochs}: {} has already trained {done} epoch(s); give at least {done}",
            run_dir.display()
        );
    }
    Ok(())
}

/// `path` made absolute against the working directory (unchanged if that cannot be read), for
/// paths a run records: the run may be used from another directory.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A data source as a new run records it: a file or directory that exists as its absolute
/// path, so that `--resume` from another working directory reads the same data (a relative
/// path would silently read another file of that name there); a dataset name as it is.
pub fn recorded_source(source: &str) -> String {
    match Path::new(source).exists() {
        true => absolute(Path::new(source)).display().to_string(),
        false => source.to_string(),
    }
}

/// Gives a new run its own copy of its vocabulary: a tokenizer directory outside `run_dir`
/// (`--tokenizer`, or the directory of the starting weights) is copied to
/// `run_dir/tokenizer`, and `info` records that relative path, so the run keeps working when
/// the source moves or changes (BERT runs likewise keep their `tokenizer.json`).
pub fn keep_own_tokenizer(run_dir: &Path, info: &mut RunInfo) -> Result<()> {
    let Some(source) = info.tokenizer.as_ref().filter(|dir| dir.is_absolute()) else {
        return Ok(());
    };
    let own = Path::new("tokenizer");
    copy_vocabulary(source, &run_dir.join(own), ("encoder.json", "vocab.bpe"))?;
    info.tokenizer = Some(own.to_path_buf());
    Ok(())
}

/// Copies the two vocabulary files found in `from` into `to` under `names` (each read whole,
/// then written atomically: `from` may be `to`).
pub fn copy_vocabulary(from: &Path, to: &Path, names: (&str, &str)) -> Result<()> {
    let Some((encoder, merges)) = BpeTokenizer::vocabulary_files(from) else {
        bail!(
            "{}: no vocabulary (encoder.json + vocab.bpe or vocab.json + merges.txt)",
            from.display()
        );
    };
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for (source, name) in [(encoder, names.0), (merges, names.1)] {
        let bytes =
            std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
        let target = to.join(name);
        ember_data::write_atomically(&target, &bytes)
            .with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}

/// Writes `value` as the TOML file `name` of a run directory, atomically (creating the
/// directory): the run description of every kind of run.
pub fn write_run_file<T: Serialize>(run_dir: &Path, name: &str, value: &T) -> Result<()> {
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    let text = toml::to_string(value).with_context(|| format!("serializing {name}"))?;
    let path = run_dir.join(name);
    ember_data::write_atomically(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The description file of each kind of run directory: GPT and BERT runs (`run.toml`),
/// classifiers (`classifier.toml`), seq2seq runs (`seq2seq.toml`).
pub const RUN_FILES: [&str; 3] = ["run.toml", "classifier.toml", "seq2seq.toml"];

/// Everything else a run of any kind writes into its directory: metrics, plots, the split
/// files of an instruction fine-tune, a test report; its checkpoints and best model. Tokenizer
/// files stay: a new run may have been given the old run's tokenizer (`--tokenizer`), and one
/// that trains its own writes it over the old.
const RUN_OUTPUT_FILES: [&str; 6] = [
    "metrics.jsonl",
    "loss.png",
    "accuracy.png",
    "train.json",
    "validation.json",
    "test.json",
];
const RUN_OUTPUT_DIRS: [&str; 2] = ["checkpoints", "best"];

/// What marks `dir` as holding a run already: its run file, or a `checkpoints/` directory (a
/// run whose description is gone). `None` for a new directory or one with other files only.
pub fn existing_run(dir: &Path) -> Option<PathBuf> {
    RUN_FILES
        .iter()
        .map(|name| dir.join(name))
        .chain([checkpoint::checkpoints_dir(dir)])
        .find(|path| path.exists())
}

/// Refuses `dir` as the `--out` of a command that never replaces a run (`import`, `lora
/// merge`) when it holds a run of any kind.
pub fn refuse_existing_run(dir: &Path) -> Result<()> {
    match existing_run(dir) {
        Some(found) => bail!(
            "{} already holds a run ({}); choose another --out",
            dir.display(),
            found.display()
        ),
        None => Ok(()),
    }
}

/// Refuses `dir` as a new run's `--out` when it holds a run of any kind, unless `overwrite`.
/// Training commands call it before their slow work, so that a user learns at once; the old
/// run itself is only removed by [`prepare_new_run_dir`], once everything else has been
/// checked. `resumable`: the command can continue that run (`--resume`), which the message
/// suggests.
pub fn check_new_run_dir(dir: &Path, overwrite: bool, resumable: bool) -> Result<()> {
    let Some(found) = existing_run(dir).filter(|_| !overwrite) else {
        return Ok(());
    };
    let resume = match resume_command(&found).filter(|_| resumable) {
        Some(command) => format!("continue it with `{command} {}`, ", dir.display()),
        None => String::new(),
    };
    bail!(
        "{} already holds a run ({}); {resume}replace it with --overwrite, or choose another --out",
        dir.display(),
        found.display()
    )
}

/// The command that continues the run whose file (or `checkpoints/`) is `found`: each kind of
/// run resumes with its own command. `None` for imported weights, which have nothing to resume.
fn resume_command(found: &Path) -> Option<&'static str> {
    match found.file_name()?.to_str()? {
        "classifier.toml" => Some("ember finetune classify --resume"),
        "seq2seq.toml" => Some("ember train seq2seq --resume"),
        "run.toml" => {
            let text = std::fs::read_to_string(found).ok()?;
            let table: toml::Table = toml::from_str(&text).ok()?;
            if table.contains_key("instruct") {
                Some("ember finetune instruct --resume")
            } else if table.contains_key("recipe") {
                Some("ember pretrain --resume")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Makes `dir` ready for a new run: refuses it as [`check_new_run_dir`] does, and with
/// `overwrite` removes the run it holds (the run file and every output listed in
/// `RUN_OUTPUT_FILES`/`RUN_OUTPUT_DIRS`, whatever kind of run wrote them; other files are left
/// alone). Called after every input of the new run has been checked and just before its first
/// write, so that a mistyped argument never costs the old run.
pub fn prepare_new_run_dir(dir: &Path, overwrite: bool, resumable: bool) -> Result<()> {
    check_new_run_dir(dir, overwrite, resumable)?;
    if existing_run(dir).is_none() {
        return Ok(());
    }
    for name in RUN_FILES.iter().chain(&RUN_OUTPUT_FILES) {
        remove_file_if_present(&dir.join(name))?;
    }
    for name in RUN_OUTPUT_DIRS {
        let path = dir.join(name);
        absent_is_removed(std::fs::remove_dir_all(&path), &path)?;
    }
    Ok(())
}

/// Removes the file at `path`; one that is not there is already what the caller wants.
pub fn remove_file_if_present(path: &Path) -> Result<()> {
    absent_is_removed(std::fs::remove_file(path), path)
}

/// The result of removing `path`, where a path that was not there counts as removed.
fn absent_is_removed(removed: std::io::Result<()>, path: &Path) -> Result<()> {
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// GPT weights ready to use, with what is needed to tokenize for them.
pub struct LoadedGpt {
    pub config: GptConfig,
    pub model: Gpt,
    /// Tokenizer directory; `None` means GPT-2's.
    pub tokenizer: Option<PathBuf>,
    /// The prompt template of an instruction fine-tune.
    pub template: Option<Template>,
}

impl LoadedGpt {
    /// The tokenizer, checked to fit the model's vocabulary.
    pub fn tokenizer(&self) -> Result<BpeTokenizer> {
        let tokenizer = crate::tokenize::load_tokenizer(self.tokenizer.as_ref())?;
        if tokenizer.vocab_size() > self.config.vocab_size {
            let hint = match &self.tokenizer {
                None => {
                    "; the weights came without a vocabulary (GPT-2's is assumed): put the \
                         model's vocab.json + merges.txt (or encoder.json + vocab.bpe) beside its \
                         HuggingFace config.json (and import it again)"
                }
                Some(_) => "",
            };
            bail!(
                "the tokenizer ({}) has {} tokens but the model's vocab_size is {}{hint}",
                self.tokenizer
                    .as_ref()
                    .map_or("GPT-2's".to_string(), |d| d.display().to_string()),
                tokenizer.vocab_size(),
                self.config.vocab_size
            );
        }
        Ok(tokenizer)
    }
}

/// For a bare model name that is not a path (`gpt2-medium`, `openai-community/gpt2`): its
/// folder in the HuggingFace cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or
/// `~/.cache/huggingface/hub`), when there is one.
pub fn hf_cache_dir(name: &Path) -> Option<PathBuf> {
    if name.exists() || name.is_absolute() {
        return None;
    }
    let name = name.to_str()?;
    let hub = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|home| PathBuf::from(home).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/huggingface/hub"))
        })?;
    let dir = hub.join(format!("models--{}", name.replace('/', "--")));
    dir.is_dir().then_some(dir)
}

/// Whether `path` looks like a HuggingFace model directory (or cache folder).
fn is_hf_dir(path: &Path) -> bool {
    path.join("config.json").is_file() || path.join("snapshots").is_dir()
}

/// Loads GPT weights from an ember run directory (its latest checkpoint) or a HuggingFace
/// GPT-2 directory. `context_length` may shorten a HF model's window (the first rows of its
/// position embedding are kept); a run's window is fixed.
pub fn load_gpt(path: &Path, device: &Device, context_length: Option<usize>) -> Result<LoadedGpt> {
    let cached = hf_cache_dir(path);
    let path = cached.as_deref().unwrap_or(path);
    if path.join("run.toml").is_file() {
        let info = read_run_info(path)?;
        if let Some(context) = context_length
            && context != info.model.context_length
        {
            bail!(
                "{}: the run's context length is {}; it cannot be changed to {context}",
                path.display(),
                info.model.context_length
            );
        }
        let dir = checkpoint::latest(path)?;
        let mut model = info.model.init(device);
        let lora = info.instruct.as_ref().and_then(|r| r.lora.as_ref());
        if let Some(lora) = lora {
            model = model.add_lora(lora);
        }
        // Adapters of a LoRA fine-tune are folded in: the same function, plain layers.
        let model = checkpoint::load_model(&dir, model)?.merge_lora();
        return Ok(LoadedGpt {
            tokenizer: info.tokenizer_dir(path),
            template: info.instruct.as_ref().map(|r| r.template),
            config: info.model,
            model,
        });
    }
    if path.is_dir() && !is_hf_dir(path) {
        if path.join("classifier.toml").is_file() {
            bail!(
                "{} is a classifier run, not a GPT run: classify texts with `ember classify --checkpoint {}`",
                path.display(),
                path.display()
            );
        }
        if path.join("seq2seq.toml").is_file() {
            bail!(
                "{} is an encoder–decoder run, not a GPT run: use it with `ember translate --checkpoint {}`",
                path.display(),
                path.display()
            );
        }
        let run_above = path
            .parent()
            .filter(|dir| dir.file_name().is_some_and(|name| name == "checkpoints"))
            .and_then(Path::parent);
        if let Some(run) = run_above.filter(|run| run.join("run.toml").is_file()) {
            bail!(
                "{} is a checkpoint inside the run {}: give the run directory (its latest checkpoint is used)",
                path.display(),
                run.display()
            );
        }
        bail!(
            "{}: neither an ember run directory (run.toml) nor a HuggingFace model directory (config.json)",
            path.display()
        );
    }
    let hf = HfGpt2::open(path)?;
    let unused = hf.unused_tensors();
    if !unused.is_empty() {
        eprintln!(
            "warning: {} tensors of {} are not used: {}",
            unused.len(),
            hf.dir.display(),
            unused.join(", ")
        );
    }
    let model = hf.load(device, context_length)?;
    let mut config = hf.config.clone();
    config.context_length = model.context_length();
    eprintln!(
        "loaded {} from {}",
        gpt2_size_name(&config).unwrap_or("a GPT-2 model"),
        hf.dir.display()
    );
    Ok(LoadedGpt {
        config,
        model,
        tokenizer: BpeTokenizer::vocabulary_files(&hf.dir).map(|_| hf.dir.clone()),
        template: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_records_files_by_absolute_path_and_datasets_by_name() {
        // Tests run in the crate's directory, which holds Cargo.toml.
        let recorded = recorded_source("Cargo.toml");
        assert!(Path::new(&recorded).is_absolute(), "{recorded}");
        assert!(Path::new(&recorded).is_file(), "{recorded}");
        assert_eq!(recorded_source("the-verdict"), "the-verdict");
    }
}
