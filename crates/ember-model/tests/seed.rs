//! The device's seed makes a run repeatable: the same seed builds the same model and draws the
//! same dropout masks. A binary of one test, because the flex device has one random generator
//! for the whole process: in a binary of several tests another test seeding or drawing between
//! this test's seed and its draws would change them.

use burn::prelude::*;
use burn::tensor::Distribution;

mod common;
use common::tiny;

#[test]
fn a_device_seed_repeats_the_model_and_the_dropout_masks() {
    let device = Device::flex();
    let config = tiny(20, 8);
    let ids = Tensor::<2, Int>::from_data([[1, 2, 3, 4]], &device);
    let model_of = |seed| {
        device.seed(seed);
        config.init(&device).forward(ids.clone()).into_data()
    };
    assert_eq!(model_of(123), model_of(123));
    assert_ne!(model_of(123), model_of(124));

    let x = Tensor::<1>::random([1 << 16], Distribution::Uniform(1.0, 2.0), &device);
    let mask_of = |seed| {
        device.seed(seed);
        ember_kernels::dropout(x.clone(), 0.2).into_data()
    };
    assert_eq!(mask_of(11), mask_of(11));
    assert_ne!(mask_of(11), mask_of(12));
}
