//! Checkpoints: model, optimizer state and training state, written so a crash never leaves one
//! half-written.
//!
//! Each checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding `model.bpk`, `state.json`
//! and, for training runs, `optim.bpk` (imported weights have no optimizer state). It is written under a temporary name and renamed when complete, then the
//! small file `checkpoints/latest` (itself written atomically) names it. Loading follows
//! `latest`, or falls back to the newest complete directory, so a kill at any moment leaves the
//! previous checkpoint usable.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use ember_data::write_atomically;

/// Where a training run stands: enough to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Epoch of the next batch.
    pub epoch: usize,
    /// Batches of `epoch` already used.
    pub batch_in_epoch: usize,
    /// Input tokens processed so far.
    pub tokens_seen: u64,
    /// Training batches per epoch when the checkpoint was saved (absent from checkpoints of
    /// earlier versions): resuming on data of another size would stop mid-epoch or run past
    /// the schedule, so [`TrainState::check_batches_per_epoch`] refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches_per_epoch: Option<usize>,
}

impl TrainState {
    /// The state of a run that has not trained yet, on `batches_per_epoch` batches an epoch.
    pub fn start(batches_per_epoch: usize) -> Self {
        Self {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            tokens_seen: 0,
            batches_per_epoch: Some(batches_per_epoch),
        }
    }

    /// The state a training loop continues from on `batches_per_epoch` batches an epoch: the
    /// checkpoint's (`resumed`), refused when it was saved with another count, else a start.
    pub fn resume_or_start(
        resumed: Option<Self>,
        batches_per_epoch: usize,
    ) -> Result<Self, String> {
        match resumed {
            Some(state) => {
                state.check_batches_per_epoch(batches_per_epoch)?;
                Ok(Self {
                    batches_per_epoch: Some(batches_per_epoch),
                    ..state
                })
            }
            None => Ok(Self::start(batches_per_epoch)),
        }
    }

    /// Refuses to continue on `batches` training batches per epoch when the checkpoint was
    /// saved with another count: the training data changed since.
    pub fn check_batches_per_epoch(&self, batches: usize) -> Result<(), String> {
        match self.batches_per_epoch {
            Some(saved) if saved != batches => Err(format!(
                "the training data changed since the checkpoint of step {}: {saved} batches per \
                 epoch then, {batches} now (restore the data, or start a new run)",
                self.step
            )),
            _ => Ok(()),
        }
    }
}

/// Errors reading or writing checkpoints; messages name the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(
        "{0}: no complete checkpoint found (expected checkpoints/step-*/ with model.bpk and state.json)"
    )]
    NotFound(PathBuf),
}

fn io(path: &Path, message: impl ToString) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

const MODEL_FILE: &str = "model.bpk";
const OPTIM_FILE: &str = "optim.bpk";
const STATE_FILE: &str = "state.json";

/// `run_dir/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes a checkpoint and keeps the newest `keep` of them; returns its directory. `optim` is
/// `None` for weights that were not trained here (an import).
pub fn save<M: Module>(
    run_dir: &Path,
    model: &M,
    optim: Option<&ModuleOptimizer>,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let root = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let final_dir = root.join(&name);
    let tmp_dir = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::create_dir_all(&tmp_dir).map_err(|e| io(&tmp_dir, e))?;
    let result = (|| {
        let model_path = tmp_dir.join(MODEL_FILE);
        model
            .clone()
            .save_file(&model_path)
            .map_err(|e| io(&model_path, record_error(e)))?;
        if let Some(optim) = optim {
            let optim_path = tmp_dir.join(OPTIM_FILE);
            optim
                .save(&optim_path)
                .map_err(|e| io(&optim_path, record_error(e)))?;
        }
        let state_path = tmp_dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomically(&state_path, &json).map_err(|e| io(&state_path, e))?;
        if final_dir.exists() {
            // Same step saved again (e.g. the final save right after a periodic one).
            std::fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, e))?;
        }
        std::fs::rename(&tmp_dir, &final_dir).map_err(|e| io(&final_dir, e))?;
        let latest = root.join("latest");
        write_atomically(&latest, name.as_bytes()).map_err(|e| io(&latest, e))
    })();
    if let Err(err) = result {
        let _ = std::fs::remove_dir_all(&tmp_dir);
        return Err(err);
    }
    // Prune old checkpoints (never the one just written).
    let mut all = complete_checkpoints(&root);
    all.retain(|(step, _)| *step != state.step);
    let excess = (all.len() + 1).saturating_sub(keep.max(1));
    for (_, dir) in all.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(final_dir)
}

/// Complete checkpoint directories, oldest first.
fn complete_checkpoints(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if [MODEL_FILE, STATE_FILE]
            .iter()
            .all(|f| dir.join(f).is_file())
        {
            found.push((step, dir));
        }
    }
    found.sort();
    found
}

/// The directory of the checkpoint to resume from: the one `latest` names, or else the newest
/// complete one.
pub fn latest(run_dir: &Path) -> Result<PathBuf, CheckpointError> {
    let root = checkpoints_dir(run_dir);
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let dir = root.join(name.trim());
        if dir.join(STATE_FILE).is_file() && dir.join(MODEL_FILE).is_file() {
            return Ok(dir);
        }
    }
    complete_checkpoints(&root)
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| CheckpointError::NotFound(run_dir.to_path_buf()))
}

/// Reads `state.json` of a checkpoint directory.
pub fn load_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| io(&path, e))
}

/// A Burn record error as one readable line: its message (not the `Io("…")` Debug form), and
/// a long one cut after 400 characters: a checkpoint of another model config lists every
/// tensor that does not fit.
pub fn record_error(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    match text.char_indices().nth(400) {
        Some((cut, _)) => format!(
            "{}… ({} more characters; written for another model config?)",
            &text[..cut],
            text.len() - cut
        ),
        None => text,
    }
}

/// Loads the model weights of a checkpoint into `model` (built from the run's config).
pub fn load_model<M: Module>(dir: &Path, model: M) -> Result<M, CheckpointError> {
    let path = dir.join(MODEL_FILE);
    model
        .try_load_file(&path)
        .map_err(|e| io(&path, record_error(e)))
}

/// Loads the optimizer state of a checkpoint.
pub fn load_optimizer(
    dir: &Path,
    optim: ModuleOptimizer,
) -> Result<ModuleOptimizer, CheckpointError> {
    let path = dir.join(OPTIM_FILE);
    if !path.is_file() {
        return Err(io(
            &path,
            "no optimizer state: this checkpoint holds imported weights, not a training run to resume",
        ));
    }
    optim.load(&path).map_err(|e| io(&path, record_error(e)))
}
