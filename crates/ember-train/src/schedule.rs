//! Learning rate: linear warmup, then cosine decay to a floor (the book's appendix D).
//!
//! Written out rather than composed from Burn's schedulers because those require a non-zero
//! starting rate and keep internal state; this one is a pure function of the step, so a resumed
//! run gets exactly the rate an uninterrupted run would have had.

use serde::{Deserialize, Serialize};

/// `lr(step)` for `step` in `0..total_steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Rate at step 0 (the warmup starts here; 0 is allowed).
    pub initial_lr: f64,
    /// Rate reached at the end of the warmup.
    pub peak_lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// A constant rate: no warmup, no decay.
    pub fn constant(lr: f64, total_steps: usize) -> Self {
        Self {
            initial_lr: lr,
            peak_lr: lr,
            min_lr: lr,
            warmup_steps: 0,
            total_steps,
        }
    }

    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            let increment = (self.peak_lr - self.initial_lr) / self.warmup_steps as f64;
            return self.initial_lr + step as f64 * increment;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        self.min_lr
            + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let s = LrSchedule {
            initial_lr: 1e-5,
            peak_lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.lr(0), 1e-5);
        assert!((s.lr(5) - (1e-5 + 5.0 * 9.9e-5)).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        assert!((s.lr(60) - 5.5e-4).abs() < 1e-12); // halfway down the cosine
        assert!((s.lr(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr(500) - 1e-4).abs() < 1e-12);
        assert_eq!(LrSchedule::constant(4e-4, 10).lr(7), 4e-4);
    }
}
