//! Language-model training (the book's `train_model_simple`, grown up): AdamW, warmup + cosine
//! learning rate, global-norm clipping, periodic evaluation, metrics, checkpoints and resume.
//!
//! Reproducibility: the data order of epoch `e` is a function of (seed, e) and the dropout
//! masks of step `s` come from the device seeded with (seed, s), so a run resumed from a
//! checkpoint replays exactly the steps an uninterrupted run would take.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use ember_data::loader::{Batch, Batches, TokenBatch};
use ember_data::mlm::MlmBatch;
use ember_data::seq2seq::Seq2SeqBatch;
use ember_model::bert::{Bert, PretrainingInputs};
use ember_model::gpt::Gpt;
use ember_model::loss::lm_loss;
use ember_model::lstm_seq2seq::LstmSeq2Seq;
use ember_model::transformer_seq2seq::TransformerSeq2Seq;
use serde::{Deserialize, Serialize};

use crate::adamw::FusedAdamW;
use crate::checkpoint::{self, CheckpointError, TrainState};
use crate::clip::clip_global_norm;
use crate::metrics::MetricsFile;
use crate::schedule::LrSchedule;

/// Optimizer and loop settings (the `[train]` table of a pretraining recipe).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at step 0 when warming up.
    #[serde(default)]
    pub initial_lr: f64,
    /// Floor of the cosine decay; equal to `lr` (the default) for a constant rate.
    pub min_lr: Option<f64>,
    #[serde(default)]
    pub warmup_steps: usize,
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip gradients to this global L2 norm.
    pub grad_clip: Option<f64>,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_freq: usize,
    /// Batches per evaluation (None: the whole split).
    pub eval_iter: Option<usize>,
    pub seed: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_keep() -> usize {
    2
}

/// Most epochs a run may ask for.
pub const MAX_EPOCHS: usize = 1_000_000;

/// The checks every training loop makes of its optimizer settings (`grad_clip`: when given).
pub(crate) fn check_settings(
    epochs: usize,
    batch_size: usize,
    lr: f64,
    weight_decay: f64,
    grad_clip: Option<f64>,
) -> Result<(), String> {
    if epochs == 0 {
        return Err("epochs must be at least 1".into());
    }
    // A bound no run comes near, so that epochs × batches (the schedule's length) cannot
    // overflow: a mistyped count is an error, not a schedule 4 steps long.
    if epochs > MAX_EPOCHS {
        return Err(format!("epochs must be at most {MAX_EPOCHS}, got {epochs}"));
    }
    if batch_size == 0 {
        return Err("batch_size must be at least 1".into());
    }
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(format!("lr must be positive and finite, got {lr}"));
    }
    if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
        return Err(format!(
            "weight_decay must be ≥ 0 and finite, got {weight_decay}"
        ));
    }
    if let Some(clip) = grad_clip.filter(|c| !(*c > 0.0 && c.is_finite())) {
        return Err(format!("grad_clip must be positive and finite, got {clip}"));
    }
    Ok(())
}

impl TrainOptions {
    pub fn validate(&self) -> Result<(), String> {
        check_settings(
            self.epochs,
            self.batch_size,
            self.lr,
            self.weight_decay,
            self.grad_clip,
        )?;
        if self.eval_iter == Some(0) {
            return Err(
                "eval_iter must be at least 1 (leave it out to evaluate on the whole split)".into(),
            );
        }
        Ok(())
    }

    /// The rate schedule for `total_steps` optimizer steps.
    pub fn schedule(&self, total_steps: usize) -> LrSchedule {
        LrSchedule {
            initial_lr: if self.warmup_steps > 0 {
                self.initial_lr
            } else {
                self.lr
            },
            peak_lr: self.lr,
            min_lr: self.min_lr.unwrap_or(self.lr),
            warmup_steps: self.warmup_steps,
            total_steps,
        }
    }

    /// AdamW with PyTorch's conventions (decoupled weight decay on every parameter), fused on
    /// the CPU backend ([`FusedAdamW`]).
    pub fn optimizer(&self) -> ModuleOptimizer {
        FusedAdamW {
            beta_1: self.beta1 as f32,
            beta_2: self.beta2 as f32,
            epsilon: self.eps as f32,
            weight_decay: self.weight_decay as f32,
        }
        .init()
    }
}

/// One line of `metrics.jsonl`, written at every evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub epoch: usize,
    pub tokens_seen: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
}

/// A model the loop can train on batches of type `B`: GPT on token windows, BERT on masked
/// sequences.
pub trait LossModel<B>: Module {
    /// The mean loss of `batch` (a one-element tensor), with gradients when the model is on an
    /// autodiff device.
    fn batch_loss(&self, batch: &B) -> Tensor<1>;
    /// The device the weights live on (batches are moved there).
    fn device(&self) -> Device;
}

impl LossModel<TokenBatch> for Gpt {
    /// Next-token cross-entropy over every position whose target is not -100.
    fn batch_loss(&self, batch: &TokenBatch) -> Tensor<1> {
        let (inputs, targets) = batch.to_tensors(&Gpt::device(self));
        lm_loss(self.forward(inputs), targets)
    }

    fn device(&self) -> Device {
        Gpt::device(self)
    }
}

impl LossModel<MlmBatch> for Bert {
    /// Masked-LM cross-entropy over the chosen positions (+ next-sentence cross-entropy).
    fn batch_loss(&self, batch: &MlmBatch) -> Tensor<1> {
        let device = Bert::device(self);
        let shape = [batch.batch, batch.seq];
        let int2 =
            |v: &[i64]| Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), shape), &device);
        let int1 = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        let (chosen, labels): (Vec<i64>, Vec<i64>) = batch
            .labels
            .iter()
            .enumerate()
            .filter(|(_, l)| **l >= 0)
            .map(|(i, l)| (i as i64, *l))
            .unzip();
        self.pretraining_loss(PretrainingInputs {
            ids: int2(&batch.ids),
            token_types: int2(&batch.type_ids),
            attention_mask: int2(&batch.attention_mask),
            chosen: int1(chosen),
            chosen_labels: int1(labels),
            next_labels: batch.next_labels.clone().map(int1),
        })
    }

    fn device(&self) -> Device {
        Bert::device(self)
    }
}

/// Teacher-forced cross-entropy of an encoder–decoder over the real target positions.
fn seq2seq_loss(
    batch: &Seq2SeqBatch,
    device: &Device,
    forward: impl Fn(Tensor<2, Int>, Tensor<2, Int>) -> Tensor<3>,
) -> Tensor<1> {
    let int = |v: &[i64], len: usize| {
        Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), [batch.batch, len]), device)
    };
    let logits = forward(
        int(&batch.src, batch.src_len),
        int(&batch.tgt_in, batch.tgt_len),
    );
    lm_loss(logits, int(&batch.tgt_out, batch.tgt_len))
}

impl LossModel<Seq2SeqBatch> for TransformerSeq2Seq {
    fn batch_loss(&self, batch: &Seq2SeqBatch) -> Tensor<1> {
        seq2seq_loss(batch, &TransformerSeq2Seq::device(self), |src, tgt| {
            self.forward(src, tgt)
        })
    }

    fn device(&self) -> Device {
        TransformerSeq2Seq::device(self)
    }
}

impl LossModel<Seq2SeqBatch> for LstmSeq2Seq {
    fn batch_loss(&self, batch: &Seq2SeqBatch) -> Tensor<1> {
        seq2seq_loss(batch, &LstmSeq2Seq::device(self), |src, tgt| {
            self.forward(src, tgt)
        })
    }

    fn device(&self) -> Device {
        LstmSeq2Seq::device(self)
    }
}

/// What the loop reports as it goes (the CLI draws a progress bar and prints samples).
pub trait TrainObserver<M> {
    /// Before the first step; `first_step > 0` when resuming.
    fn on_start(&mut self, _total_steps: usize, _first_step: usize) {}
    /// After every optimizer step.
    fn on_step(&mut self, _step: usize, _loss: f64, _lr: f64, _tokens_per_s: f64) {}
    fn on_eval(&mut self, _record: &EvalRecord) {}
    /// At the end of each epoch, with the model in evaluation mode (for a sample generation).
    fn on_epoch_end(&mut self, _epoch: usize, _model: &M) {}
    /// Asked after every step: true stops the run cleanly (e.g. after Ctrl-C) with a
    /// checkpoint of the step just finished.
    fn stop_requested(&self) -> bool {
        false
    }
    /// When the loop returns, whether it finished or failed (to close a progress bar).
    fn on_finish(&mut self) {}
}

/// Errors that stop training; the message names the step or the file.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "step {step}: loss is {loss} — training diverged (lower the learning rate or enable grad_clip)"
    )]
    NonFinite { step: usize, loss: f64 },
    #[error("interrupted after step {step}; its checkpoint is saved in checkpoints/")]
    Interrupted { step: usize },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Mean loss over the first `max_batches` batches (all when None) of `loader`, without
/// gradients or dropout. Returns NaN for an empty loader, as the book does.
pub fn evaluate<B, M: LossModel<B>>(
    model: &M,
    loader: &dyn Batches<B>,
    max_batches: Option<usize>,
) -> f64 {
    let model = model.valid();
    let limit = max_batches.unwrap_or(usize::MAX);
    let (mut total, mut count) = (0.0, 0usize);
    for batch in loader.epoch_batches(0).take(limit) {
        let loss: f32 = model.batch_loss(&batch).into_scalar();
        total += f64::from(loss);
        count += 1;
    }
    if count == 0 {
        f64::NAN
    } else {
        total / count as f64
    }
}

/// The training and validation batches of a run (corpus windows, instruction examples,
/// masked sequences).
pub struct Splits<'a, B> {
    pub train: &'a dyn Batches<B>,
    pub val: &'a dyn Batches<B>,
}

impl<B> Splits<'_, B> {
    /// What training needs of the splits, checked before anything is written (commands call
    /// it before preparing the run directory): at least one full training batch.
    pub fn check(&self) -> Result<(), TrainError> {
        if self.train.num_batches() == 0 {
            return Err(TrainError::Invalid(format!(
                "the training split has {} examples, fewer than one batch of {}",
                self.train.num_examples(),
                self.train.batch_size()
            )));
        }
        Ok(())
    }
}

impl<B> Clone for Splits<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for Splits<'_, B> {}

fn step_seed(seed: u64, step: usize) -> u64 {
    seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Trains `model` (on an autodiff device) and returns it with its final state. With `resume`,
/// `model` and `optim` must already hold the checkpoint's weights and optimizer state.
pub fn train<B: Batch, M: LossModel<B>>(
    model: M,
    optim: ModuleOptimizer,
    splits: Splits<'_, B>,
    options: &TrainOptions,
    run_dir: &Path,
    resume: Option<TrainState>,
    observer: &mut dyn TrainObserver<M>,
) -> Result<(M, TrainState), TrainError> {
    let result = train_steps(model, optim, splits, options, run_dir, resume, observer);
    observer.on_finish();
    result
}

fn train_steps<B: Batch, M: LossModel<B>>(
    mut model: M,
    mut optim: ModuleOptimizer,
    splits: Splits<'_, B>,
    options: &TrainOptions,
    run_dir: &Path,
    resume: Option<TrainState>,
    observer: &mut dyn TrainObserver<M>,
) -> Result<(M, TrainState), TrainError> {
    options.validate().map_err(TrainError::Invalid)?;
    splits.check()?;
    let Splits {
        train: train_loader,
        val: val_loader,
    } = splits;
    let steps_per_epoch = train_loader.num_batches();
    let total_steps = steps_per_epoch.saturating_mul(options.epochs);
    let schedule = options.schedule(total_steps);
    let device = model.device();
    let resume_step = resume.as_ref().map(|state| state.step);
    let mut state =
        TrainState::resume_or_start(resume, steps_per_epoch).map_err(TrainError::Invalid)?;
    let (mut metrics, _) = MetricsFile::open(
        &run_dir.join("metrics.jsonl"),
        resume_step,
        |r: &EvalRecord| r.step,
    )?;
    observer.on_start(total_steps, state.step);

    let mut window_start = Instant::now();
    let mut window_tokens = 0u64;
    while state.epoch < options.epochs {
        let epoch = state.epoch;
        for batch in train_loader
            .epoch_batches(epoch as u64)
            .skip(state.batch_in_epoch)
        {
            let lr = schedule.lr(state.step);
            device.seed(step_seed(options.seed, state.step));
            let loss = model.batch_loss(&batch);
            let loss_value = f64::from(loss.clone().into_scalar::<f32>());
            if !loss_value.is_finite() {
                return Err(TrainError::NonFinite {
                    step: state.step + 1,
                    loss: loss_value,
                });
            }
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if let Some(max_norm) = options.grad_clip {
                clip_global_norm(&model, &mut grads, max_norm);
            }
            model = optim.step(lr, model, grads);

            state.step += 1;
            state.batch_in_epoch += 1;
            state.tokens_seen += batch.num_tokens() as u64;
            window_tokens += batch.num_tokens() as u64;
            let tokens_per_s = window_tokens as f64 / window_start.elapsed().as_secs_f64();
            observer.on_step(state.step, loss_value, lr, tokens_per_s);

            let last_step = state.step == total_steps;
            if (options.eval_freq > 0 && state.step.is_multiple_of(options.eval_freq)) || last_step
            {
                let record = EvalRecord {
                    step: state.step,
                    epoch,
                    tokens_seen: state.tokens_seen,
                    train_loss: evaluate(&model, train_loader, options.eval_iter),
                    val_loss: evaluate(&model, val_loader, options.eval_iter),
                    lr,
                    tokens_per_s,
                };
                metrics.append(&record)?;
                observer.on_eval(&record);
                window_start = Instant::now();
                window_tokens = 0;
            }
            if state.batch_in_epoch == steps_per_epoch {
                state.epoch += 1;
                state.batch_in_epoch = 0;
            }
            let periodic =
                options.checkpoint_every > 0 && state.step.is_multiple_of(options.checkpoint_every);
            let stop = !last_step && observer.stop_requested();
            if periodic || last_step || stop {
                checkpoint::save(
                    run_dir,
                    &model,
                    Some(&optim),
                    &state,
                    options.keep_checkpoints,
                )?;
            }
            if stop {
                return Err(TrainError::Interrupted { step: state.step });
            }
        }
        // The loop above ends each epoch by moving `state` to the next one.
        observer.on_epoch_end(epoch, &model.valid());
    }
    Ok((model, state))
}

/// Reads `metrics.jsonl` (for plots and reports).
pub fn read_metrics(path: &Path) -> Result<Vec<EvalRecord>, String> {
    crate::metrics::read_records(path)
}
