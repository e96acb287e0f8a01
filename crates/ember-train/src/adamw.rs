//! AdamW whose per-parameter update is [`ember_kernels::adamw_update`]: on the CPU backend one
//! multi-threaded pass that updates the parameter and both moments in place, instead of Burn's
//! `AdamW`, a dozen single-threaded tensor ops that each allocate a parameter-sized tensor
//! (about half a second of every gpt2-small training step).
//!
//! Its per-parameter state is Burn's [`AdamWState`], so `optim.bpk` files are the same as those
//! written with Burn's `AdamW`: checkpoints from either resume with the other.

use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::prelude::*;
use ember_kernels::AdamWStep;

/// AdamW with PyTorch's conventions (decoupled weight decay on every parameter, bias-corrected
/// moments, `epsilon` added after the square root).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedAdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
}

impl FusedAdamW {
    /// The optimizer of a whole module.
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (time, moment_1, moment_2) = match state {
            Some(state) => (
                state.momentum.time + 1,
                state.momentum.moment_1,
                state.momentum.moment_2,
            ),
            // Zero moments make the first update Burn's and PyTorch's first update.
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let step = AdamWStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time,
        };
        let (tensor, moment_1, moment_2) =
            ember_kernels::adamw_update(tensor, grad, moment_1, moment_2, step);
        let momentum = AdaptiveMomentumState::new(time, moment_1, moment_2);
        (tensor, Some(AdamWState::new(momentum)))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamWConfig, GradientsParams};

    use super::*;

    const SETTINGS: FusedAdamW = FusedAdamW {
        beta_1: 0.9,
        beta_2: 0.95,
        epsilon: 1e-8,
        weight_decay: 0.1,
    };

    fn burns() -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(SETTINGS.beta_1)
            .with_beta_2(SETTINGS.beta_2)
            .with_epsilon(SETTINGS.epsilon)
            .with_weight_decay(SETTINGS.weight_decay)
            .init()
    }

    /// `steps` AdamW steps on a linear layer fitting fixed random data.
    fn train(mut layer: Linear, optim: &mut ModuleOptimizer, steps: usize) -> Linear {
        let device = layer.weight.device();
        for step in 0..steps {
            // Fixed inputs, not the device's generator: tests run side by side and share it.
            let values: Vec<f32> = (0..40).map(|i| ((i * 7 + step * 3) as f32).sin()).collect();
            let x = Tensor::<2>::from_data(TensorData::new(values, [8, 5]), &device);
            let loss = (layer.forward(x) - 0.5).powi_scalar(2).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optim.step(1e-2, layer, grads);
        }
        layer
    }

    fn weights(layer: &Linear) -> Vec<f32> {
        layer.weight.val().into_data().try_to_vec::<f32>().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    fn layer() -> Linear {
        let device = Device::flex().autodiff();
        let mut layer = LinearConfig::new(5, 3).init(&device);
        let values: Vec<f32> = (0..15).map(|i| (i as f32 * 0.37).cos() * 0.4).collect();
        let weight = Tensor::<2>::from_data(TensorData::new(values, [5, 3]), &device);
        layer.weight = burn::module::Param::from_tensor(weight);
        let bias = Tensor::<1>::from_floats([0.1, -0.2, 0.05], &device);
        layer.bias = Some(burn::module::Param::from_tensor(bias));
        layer
    }

    #[test]
    fn follows_burns_adamw_step_for_step() {
        let ours = train(layer(), &mut SETTINGS.init(), 4);
        let theirs = train(layer(), &mut burns(), 4);
        assert_close(&weights(&ours), &weights(&theirs));
        assert!(weights(&ours) != weights(&layer()), "the weights moved");
    }

    #[test]
    fn resumes_from_the_state_burns_adamw_saved() {
        // Two steps with Burn's AdamW, its state through the record format, then ours.
        let mut burn_optim = burns();
        let halfway = train(layer(), &mut burn_optim, 2);
        let record = burn_optim.to_record().into_bytes().unwrap();
        let mut resumed = SETTINGS.init().from_bytes(record).unwrap();
        let ours = train(halfway.clone(), &mut resumed, 2);
        let theirs = train(halfway, &mut burn_optim, 2);
        assert_close(&weights(&ours), &weights(&theirs));
    }
}
