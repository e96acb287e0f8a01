//! Classification fine-tuning (the book's `train_classifier_simple`): cross-entropy on the
//! pooled position, AdamW, loss evaluations every `eval_freq` steps, accuracies on the three
//! splits after every epoch, and the checkpoint with the best validation accuracy kept.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use ember_data::classification::ClassBatches;
use ember_model::bert::BertClassifier;
use ember_model::classifier::GptClassifier;
use ember_model::loss::cross_entropy;
use serde::{Deserialize, Serialize};

use crate::adamw::FusedAdamW;
use crate::checkpoint::{self, TrainState};
use crate::clip::clip_global_norm;
use crate::lm::TrainError;
use crate::metrics::MetricsFile;

/// Settings of a classification fine-tune (defaults: the book's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Train/validation loss over `eval_iter` batches every this many steps (0: never).
    pub eval_freq: usize,
    pub eval_iter: usize,
    /// Batches of each split used for the accuracies after each epoch (None: all). The best
    /// checkpoint is always measured on every example at the end.
    pub eval_batches: Option<usize>,
    pub grad_clip: Option<f64>,
    pub seed: u64,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 8,
            lr: 5e-5,
            weight_decay: 0.1,
            eval_freq: 50,
            eval_iter: 5,
            eval_batches: None,
            grad_clip: None,
            seed: 123,
        }
    }
}

impl ClassifyOptions {
    pub fn validate(&self) -> Result<(), String> {
        crate::lm::check_settings(
            self.epochs,
            self.batch_size,
            self.lr,
            self.weight_decay,
            self.grad_clip,
        )?;
        if self.eval_freq > 0 && self.eval_iter == 0 {
            return Err("eval_iter must be at least 1 when eval_freq is not 0".into());
        }
        if self.eval_batches == Some(0) {
            return Err(
                "eval_batches must be at least 1 (leave it out to measure every batch)".into(),
            );
        }
        Ok(())
    }

    /// AdamW with PyTorch's defaults besides lr and weight decay (as the book's
    /// `torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)`).
    pub fn optimizer(&self) -> ModuleOptimizer {
        FusedAdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: self.weight_decay as f32,
        }
        .init()
    }
}

/// A model that maps padded token ids to class logits: a GPT or a BERT classifier.
pub trait ClassifierModel: Module {
    /// `[batch, num_classes]` logits of `ids: [batch, seq]` with real lengths `[batch]`.
    fn logits(&self, ids: Tensor<2, Int>, lengths: Tensor<1, Int>) -> Tensor<2>;
    /// The device the weights live on.
    fn device(&self) -> Device;
}

impl ClassifierModel for GptClassifier {
    fn logits(&self, ids: Tensor<2, Int>, lengths: Tensor<1, Int>) -> Tensor<2> {
        self.forward(ids, lengths)
    }

    fn device(&self) -> Device {
        self.gpt.device()
    }
}

impl ClassifierModel for BertClassifier {
    fn logits(&self, ids: Tensor<2, Int>, lengths: Tensor<1, Int>) -> Tensor<2> {
        self.forward(ids, lengths)
    }

    fn device(&self) -> Device {
        self.bert.device()
    }
}

/// The three splits, tokenized and padded.
#[derive(Clone, Copy)]
pub struct ClassData<'a> {
    pub train: &'a ClassBatches,
    pub validation: &'a ClassBatches,
    pub test: &'a ClassBatches,
}

/// One line of `metrics.jsonl`: a loss evaluation (`kind = "loss"`) or the end of an epoch
/// (`kind = "epoch"`, with accuracies).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassRecord {
    pub kind: String,
    pub step: usize,
    pub epoch: usize,
    pub examples_seen: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_acc: Option<f64>,
    pub seconds: f64,
}

/// What the loop reports as it goes.
pub trait ClassifyObserver {
    fn on_start(&mut self, _total_steps: usize) {}
    fn on_step(&mut self, _step: usize, _loss: f64) {}
    fn on_record(&mut self, _record: &ClassRecord) {}
    /// Asked after every step: true stops with a checkpoint of the step just finished, to
    /// resume from (the best model so far stays in `best/`).
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Final accuracies of the best checkpoint on every example of each split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifySummary {
    pub best_epoch: usize,
    pub train_acc: f64,
    pub val_acc: f64,
    pub test_acc: f64,
    pub seconds: f64,
}

/// Mean loss and accuracy of `model` over the first `max_batches` batches of `data` (all when
/// None), in evaluation mode.
pub fn evaluate<M: ClassifierModel>(
    model: &M,
    data: &ClassBatches,
    batch_size: usize,
    max_batches: Option<usize>,
) -> (f64, f64) {
    let model = model.valid();
    let device = model.device();
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
    for rows in data
        .batches(batch_size, None, false)
        .into_iter()
        .take(max_batches.unwrap_or(usize::MAX))
    {
        let (ids, lengths, labels) = data.tensors(&rows, &device);
        let logits = model.logits(ids, lengths);
        let loss: f32 = cross_entropy(logits.clone(), labels.clone()).into_scalar();
        let predicted = logits.argmax(1).reshape([rows.len()]);
        let hits: i64 = predicted.equal(labels).int().sum().into_scalar();
        loss_sum += f64::from(loss) * rows.len() as f64;
        correct += hits as usize;
        seen += rows.len();
    }
    if seen == 0 {
        return (f64::NAN, f64::NAN);
    }
    (loss_sum / seen as f64, correct as f64 / seen as f64)
}

/// Fine-tunes `model` (on an autodiff device, trainable weights already chosen). Writes
/// `metrics.jsonl`, a checkpoint (model, optimizer, state; the newest one kept) after every
/// epoch and when stopped, and the best model by validation accuracy as `best/model.bpk`;
/// returns the best model and its accuracies.
///
/// With `resume` (a checkpoint's state, its model and optimizer already loaded), training
/// continues where it stopped: the same batches and dropout masks as an uninterrupted run,
/// `metrics.jsonl` cut back to that step, and the best epoch so far read from it.
pub fn finetune<M: ClassifierModel>(
    mut model: M,
    mut optim: ModuleOptimizer,
    data: ClassData<'_>,
    options: &ClassifyOptions,
    run_dir: &Path,
    resume: Option<TrainState>,
    observer: &mut dyn ClassifyObserver,
) -> Result<(M, ClassifySummary), TrainError> {
    options.validate().map_err(TrainError::Invalid)?;
    let steps_per_epoch = data.train.batches(options.batch_size, None, true).len();
    if steps_per_epoch == 0 {
        return Err(TrainError::Invalid(format!(
            "the training split has {} examples, fewer than one batch of {}",
            data.train.len(),
            options.batch_size
        )));
    }
    let resume_step = resume.as_ref().map(|state| state.step);
    let mut state =
        TrainState::resume_or_start(resume, steps_per_epoch).map_err(TrainError::Invalid)?;
    let device = model.device();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let best_path = best_model_path(run_dir);
    std::fs::create_dir_all(run_dir.join("best")).map_err(io(run_dir))?;
    // On resume: the records up to the checkpoint's step, the best finished epoch among them
    // (its model is in best/), and the seconds already spent.
    let (mut metrics, kept) = MetricsFile::open(
        &run_dir.join("metrics.jsonl"),
        resume_step,
        |r: &ClassRecord| r.step,
    )?;
    let mut best: Option<(f64, f64, usize)> = None; // (val_acc, -val_loss, epoch)
    for record in kept.iter().filter(|r| r.kind == "epoch") {
        let key = (
            record.val_acc.unwrap_or(f64::NAN),
            -record.val_loss,
            record.epoch,
        );
        if best.is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
            best = Some(key);
        }
    }
    let seconds_before = kept.last().map_or(0.0, |r| r.seconds);
    let started = Instant::now();
    let seconds = move || seconds_before + started.elapsed().as_secs_f64();
    let mut write = |record: &ClassRecord, observer: &mut dyn ClassifyObserver| {
        observer.on_record(record);
        metrics.append(record)
    };

    observer.on_start(steps_per_epoch.saturating_mul(options.epochs));
    for epoch in state.epoch..options.epochs {
        let epoch_seed = options.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for rows in data
            .train
            .batches(options.batch_size, Some(epoch_seed), true)
            .into_iter()
            .skip(state.batch_in_epoch)
        {
            device.seed(epoch_seed.wrapping_add(state.step as u64));
            let (ids, lengths, labels) = data.train.tensors(&rows, &device);
            let loss = cross_entropy(model.logits(ids, lengths), labels);
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
            model = optim.step(options.lr, model, grads);
            state.step += 1;
            state.batch_in_epoch += 1;
            state.tokens_seen += rows.len() as u64;
            observer.on_step(state.step, loss_value);
            if options.eval_freq > 0 && state.step.is_multiple_of(options.eval_freq) {
                let eval = Some(options.eval_iter);
                let record = ClassRecord {
                    kind: "loss".into(),
                    step: state.step,
                    epoch,
                    examples_seen: state.tokens_seen,
                    train_loss: evaluate(&model, data.train, options.batch_size, eval).0,
                    val_loss: evaluate(&model, data.validation, options.batch_size, eval).0,
                    train_acc: None,
                    val_acc: None,
                    test_acc: None,
                    seconds: seconds(),
                };
                write(&record, observer)?;
            }
            // After the step's evaluation: a resumed run starts with the next step.
            if observer.stop_requested() {
                checkpoint::save(run_dir, &model, Some(&optim), &state, 1)?;
                return Err(TrainError::Interrupted { step: state.step });
            }
        }
        state.epoch = epoch + 1;
        state.batch_in_epoch = 0;
        let limit = options.eval_batches;
        let (train_loss, train_acc) = evaluate(&model, data.train, options.batch_size, limit);
        let (val_loss, val_acc) = evaluate(&model, data.validation, options.batch_size, limit);
        let (_, test_acc) = evaluate(&model, data.test, options.batch_size, limit);
        let record = ClassRecord {
            kind: "epoch".into(),
            step: state.step,
            epoch,
            examples_seen: state.tokens_seen,
            train_loss,
            val_loss,
            train_acc: Some(train_acc),
            val_acc: Some(val_acc),
            test_acc: Some(test_acc),
            seconds: seconds(),
        };
        write(&record, observer)?;
        let key = (val_acc, -val_loss, epoch);
        if best.is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
            best = Some(key);
            model.valid().save_file(&best_path).map_err(|e| {
                TrainError::Invalid(format!(
                    "{}: {}",
                    best_path.display(),
                    checkpoint::record_error(e)
                ))
            })?;
        }
        checkpoint::save(run_dir, &model, Some(&optim), &state, 1)?;
    }
    let best_epoch = best.map_or(0, |b| b.2);
    let model = model.valid().try_load_file(&best_path).map_err(|e| {
        TrainError::Invalid(format!(
            "{}: {}",
            best_path.display(),
            checkpoint::record_error(e)
        ))
    })?;
    let accuracy = |split: &ClassBatches| evaluate(&model, split, options.batch_size, None).1;
    let summary = ClassifySummary {
        best_epoch,
        train_acc: accuracy(data.train),
        val_acc: accuracy(data.validation),
        test_acc: accuracy(data.test),
        seconds: seconds(),
    };
    Ok((model, summary))
}

/// Reads the `kind = "epoch"` and `"loss"` lines of a fine-tune's `metrics.jsonl`.
pub fn read_class_metrics(path: &Path) -> Result<Vec<ClassRecord>, String> {
    crate::metrics::read_records(path)
}

/// Where a fine-tune keeps its best model.
pub fn best_model_path(run_dir: &Path) -> PathBuf {
    run_dir.join("best").join("model.bpk")
}
