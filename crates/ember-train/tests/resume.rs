//! A run resumed from a checkpoint replays exactly the steps of an uninterrupted run.

use std::path::Path;

use burn::prelude::*;
use ember_data::loader::{TokenWindows, WindowLoader};
use ember_model::gpt::GptConfig;
use ember_train::checkpoint;
use ember_train::lm::{Splits, TrainObserver, TrainOptions, read_metrics, train};

struct Quiet;
impl<M> TrainObserver<M> for Quiet {}

fn loaders() -> (WindowLoader, WindowLoader) {
    // A repetitive token stream a tiny model can learn something from.
    let tokens: Vec<u32> = (0..400u32).map(|i| (i * i + 3 * i) % 61).collect();
    let train = TokenWindows::new(tokens[..320].to_vec(), 16, 8, "train").unwrap();
    let val = TokenWindows::new(tokens[320..].to_vec(), 16, 16, "val").unwrap();
    (
        WindowLoader::new(train, 4, Some(123), true).unwrap(),
        WindowLoader::new(val, 4, None, false).unwrap(),
    )
}

fn config() -> GptConfig {
    GptConfig {
        vocab_size: 64,
        context_length: 16,
        emb_dim: 32,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.1, // dropout on: resuming must also replay the dropout masks
        qkv_bias: false,
        tie_weights: true,
        layer_norm_eps: 1e-5,
        emb_init_std: 1.0,
    }
}

fn options() -> TrainOptions {
    TrainOptions {
        epochs: 3,
        batch_size: 4,
        lr: 1e-3,
        initial_lr: 1e-5,
        min_lr: Some(1e-4),
        warmup_steps: 3,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        grad_clip: Some(1.0),
        eval_freq: 1,
        eval_iter: None,
        seed: 123,
        checkpoint_every: 4,
        keep_checkpoints: 100,
    }
}

fn run(run_dir: &Path, resume_from: Option<&Path>) -> Vec<(usize, f64, f64)> {
    let device = Device::flex().autodiff();
    device.seed(7);
    let (train_loader, val_loader) = loaders();
    let options = options();
    let mut model = config().init(&device);
    let mut optim = options.optimizer();
    let mut state = None;
    if let Some(dir) = resume_from {
        model = checkpoint::load_model(dir, model).unwrap();
        optim = checkpoint::load_optimizer(dir, optim).unwrap();
        state = Some(checkpoint::load_state(dir).unwrap());
    }
    train(
        model,
        optim,
        Splits {
            train: &train_loader,
            val: &val_loader,
        },
        &options,
        run_dir,
        state,
        &mut Quiet,
    )
    .unwrap();
    read_metrics(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| (r.step, r.train_loss, r.val_loss))
        .collect()
}

#[test]
fn resuming_gives_bit_identical_losses() {
    let full_dir = tempfile::tempdir().unwrap();
    let full = run(full_dir.path(), None);
    assert_eq!(full.len(), 3 * 9); // 37 windows → 9 batches of 4 per epoch, 3 epochs
    assert!(
        full.last().unwrap().1 < full[0].1,
        "training did not lower the loss: {full:?}"
    );

    // Resume from the step-8 checkpoint, in the middle of the first epoch (9 steps).
    let resumed_dir = tempfile::tempdir().unwrap();
    let checkpoint = full_dir.path().join("checkpoints/step-00000008");
    let state = checkpoint::load_state(&checkpoint).unwrap();
    assert_eq!((state.step, state.epoch, state.batch_in_epoch), (8, 0, 8));
    let resumed = run(resumed_dir.path(), Some(&checkpoint));
    assert_eq!(resumed, full[8..].to_vec());

    // The latest checkpoint is the final one and loads.
    let latest = checkpoint::latest(full_dir.path()).unwrap();
    assert!(latest.ends_with("step-00000027"), "{}", latest.display());
}
