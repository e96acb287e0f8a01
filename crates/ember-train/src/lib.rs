//! ember-train: what turns a model and batches into a trained model.
//!
//! - [`adamw`]: AdamW with the fused in-place update of `ember-kernels`.
//! - [`schedule`]: linear warmup + cosine decay, a pure function of the step.
//! - [`clip`]: gradient clipping by the global norm (Burn's built-in clips per tensor).
//! - [`lm`]: the language-model training loop with evaluation and metrics.
//! - [`classify`]: classification fine-tuning with per-epoch accuracies.
//! - [`checkpoint`]: atomic checkpoints and resume.
//! - [`metrics`]: `metrics.jsonl`, read, cut back on resume and appended to.
//! - [`plot`]: the loss plot PNG.

pub mod adamw;
pub mod checkpoint;
pub mod classify;
pub mod clip;
pub mod lm;
pub mod metrics;
pub mod plot;
pub mod schedule;

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::prelude::*;

    use crate::clip::{clip_global_norm, global_norm};

    #[test]
    fn clipping_scales_all_gradients_together() {
        let device = Device::flex().autodiff();
        device.seed(1);
        let layer: Linear = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<2>::from_data([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]], &device);
        let loss = layer.forward(x).powi_scalar(2).sum().mul_scalar(10.0);
        let mut grads = GradientsParams::from_grads(loss.backward(), &layer);
        // By hand: the square root of the sum of squares of both gradient tensors.
        let w: Vec<f32> = grads
            .get::<2>(layer.weight.id)
            .unwrap()
            .into_data()
            .try_into_vec_as()
            .unwrap();
        let b: Vec<f32> = grads
            .get::<1>(layer.bias.as_ref().unwrap().id)
            .unwrap()
            .into_data()
            .try_into_vec_as()
            .unwrap();
        let expected = w
            .iter()
            .chain(&b)
            .map(|g| f64::from(*g).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = global_norm(&layer, &grads);
        assert!(
            (norm - expected).abs() < 1e-3 * expected,
            "{norm} vs {expected}"
        );
        assert!(norm > 1.0);

        let before = clip_global_norm(&layer, &mut grads, 1.0);
        assert_eq!(before, norm);
        let after = global_norm(&layer, &grads);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        // Direction is kept: the weight gradient is a scaled copy.
        let w2: Vec<f32> = grads
            .get::<2>(layer.weight.id)
            .unwrap()
            .into_data()
            .try_into_vec_as()
            .unwrap();
        let scale = w2[0] / w[0];
        for (a, b) in w.iter().zip(&w2) {
            assert!((a * scale - b).abs() < 1e-5);
        }
    }
}
