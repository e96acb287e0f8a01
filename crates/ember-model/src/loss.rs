//! Cross-entropy that skips ignored targets.
//!
//! Collate functions mark positions that must not count (padding after the first end-of-text,
//! masked prompts) with the target `-100`, PyTorch's `ignore_index`. Burn's own
//! `CrossEntropyLoss` has no ignore index, so ember computes it per row
//! ([`ember_kernels::nll_rows`]: one fused pass over the `[tokens, vocab]` logits on the CPU
//! backend, `log_softmax` and `gather` elsewhere).

use burn::prelude::*;
use ember_kernels::nll_rows;

/// PyTorch's default `ignore_index`.
pub const IGNORE_INDEX: i64 = -100;

/// Mean negative log-likelihood over the targets that are not [`IGNORE_INDEX`] (any negative
/// target is ignored).
///
/// `logits: [n, vocab]`, `targets: [n]` → a one-element tensor. When every target is ignored the
/// result is NaN (0/0), as in PyTorch.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let count = targets.clone().greater_equal_elem(0).float().sum();
    nll_rows(logits, targets).sum() / count
}

/// Language-model loss for logits `[batch, seq, vocab]` and targets `[batch, seq]`.
pub fn lm_loss(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [batch, seq, vocab] = logits.dims();
    cross_entropy(
        logits.reshape([batch * seq, vocab]),
        targets.reshape([batch * seq]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_hand_computation_and_ignores_minus_100() {
        let device = Device::flex();
        let rows = [[2.0f32, 1.0, 0.1], [0.5, 2.5, -1.0], [0.0, 0.0, 3.0]];
        let logits = Tensor::<2>::from_data(rows, &device);
        let targets = Tensor::<1, Int>::from_data([0, -100, 2], &device);
        let loss: f32 = cross_entropy(logits, targets).into_scalar();
        // By hand: -log softmax(row)[target] for rows 0 and 2, averaged; row 1 is ignored.
        let nll = |row: [f32; 3], t: usize| {
            let lse = row.iter().map(|x| (*x as f64).exp()).sum::<f64>().ln();
            lse - row[t] as f64
        };
        let expected = (nll(rows[0], 0) + nll(rows[2], 2)) / 2.0;
        assert!(
            (loss as f64 - expected).abs() < 1e-6,
            "{loss} vs {expected}"
        );
        // The same numbers from Python's math module: (0.417030 + 0.094923) / 2.
        assert!((expected - 0.255_976).abs() < 1e-5);
    }

    #[test]
    fn all_ignored_is_nan() {
        let device = Device::flex();
        let logits = Tensor::<2>::zeros([2, 4], &device);
        let targets = Tensor::<1, Int>::from_data([-100, -100], &device);
        assert!(cross_entropy(logits, targets).into_scalar::<f32>().is_nan());
    }
}
