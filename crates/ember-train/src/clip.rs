//! Gradient clipping by the global norm of all gradients, as `torch.nn.utils.clip_grad_norm_`.
//!
//! Burn's `GradientClippingConfig::Norm` clips each parameter tensor on its own, which changes
//! the direction of the update; the book (and GPT-2 practice) scales all gradients together.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

/// Sum of squares of every gradient of `module`'s float parameters.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let squares = ember_kernels::squared_sum(grad);
            self.total = Some(match self.total.take() {
                Some(total) => total + squares,
                None => squares,
            });
        }
    }
}

/// Multiplies every gradient by `factor`.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads
                .register(param.id, ember_kernels::scale(grad, self.factor as f32));
        }
    }
}

/// The global L2 norm of the gradients.
pub fn global_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut visitor = SquaredNorm { grads, total: None };
    module.visit(&mut visitor);
    visitor
        .total
        .map_or(0.0, |t| f64::from(t.into_scalar::<f32>()).sqrt())
}

/// Scales all gradients so their global norm is at most `max_norm`; returns the norm before
/// clipping (useful to log, and NaN/inf tells that the step went bad).
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_norm(module, grads);
    // PyTorch's clip_coef = max_norm / (norm + 1e-6), applied only when it is below 1.
    let factor = max_norm / (norm + 1e-6);
    if norm.is_finite() && factor < 1.0 {
        module.visit(&mut Scale { grads, factor });
    }
    norm
}
