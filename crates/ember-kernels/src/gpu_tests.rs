//! The GPU kernels against Burn's composed ops on the same wgpu device. Built with the `wgpu`
//! feature (`cargo test -p ember-kernels --features wgpu gpu`); they need a wgpu adapter, which
//! Mesa's software renderer (llvmpipe) provides on a machine without a GPU.

use burn::tensor::{DeviceKind, Distribution};

use super::*;
use crate::tests::{Inputs, max_diff, rel_diff};

fn wgpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

#[test]
fn gpu_kernels_run_on_gpu_devices_outside_autodiff_only() {
    let device = wgpu();
    let f32_dtype = burn::tensor::DType::F32;
    assert!(gpu::runs_on(f32_dtype, &device));
    assert!(!gpu::runs_on(f32_dtype, &device.clone().autodiff()));
    assert!(!gpu::runs_on(burn::tensor::DType::F16, &device));
    assert!(!gpu::runs_on(f32_dtype, &Device::flex()));
}

#[test]
fn gpu_gelu_matches_the_composed_form() {
    let device = wgpu();
    let mut rng = Inputs::new(31);
    let x = rng.tensor::<3>([3, 7, 1000], Distribution::Normal(0.0, 4.0), &device);
    let diff = max_diff(gelu_tanh(x.clone()), gelu_tanh_composed(x.clone()));
    assert!(diff < 1e-5, "{diff}");
    // A transposed view: the kernel reads it made contiguous.
    let transposed = x.narrow(0, 0, 1).reshape([7, 1000]).swap_dims(0, 1);
    let diff = max_diff(
        gelu_tanh(transposed.clone()),
        gelu_tanh_composed(transposed),
    );
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn gpu_bias_gelu_and_bias_residual_match_the_composed_forms() {
    let device = wgpu();
    let mut rng = Inputs::new(35);
    let x = rng.tensor::<3>([2, 5, 300], Distribution::Normal(0.0, 3.0), &device);
    let residual = rng.tensor::<3>([2, 5, 300], Distribution::Normal(0.0, 3.0), &device);
    let bias = rng.tensor::<1>([300], Distribution::Normal(0.0, 2.0), &device);
    let composed_gelu = gelu_tanh_composed(x.clone() + bias.clone().reshape([1, 1, 300]));
    let diff = max_diff(bias_gelu_tanh(x.clone(), Some(bias.clone())), composed_gelu);
    assert!(diff < 1e-5, "{diff}");
    let composed_sum = residual.clone() + (x.clone() + bias.clone().reshape([1, 1, 300]));
    let ours = add_bias_residual(x.clone(), Some(bias.clone()), residual.clone());
    assert!(max_diff(ours, composed_sum) < 1e-5);
    // Transposed views of the branch and the shortcut: read made contiguous, the bias still
    // along the last dimension.
    let view = |t: Tensor<3>| t.narrow(0, 0, 1).reshape([5, 300]).swap_dims(0, 1);
    let bias5 = bias.narrow(0, 0, 5);
    let composed = view(residual.clone()) + (view(x.clone()) + bias5.clone().reshape([1, 5]));
    let ours = add_bias_residual(view(x.clone()), Some(bias5.clone()), view(residual));
    assert!(max_diff(ours, composed) < 1e-5);
    let composed = gelu_tanh_composed(view(x.clone()) + bias5.clone().reshape([1, 5]));
    assert!(max_diff(bias_gelu_tanh(view(x), Some(bias5)), composed) < 1e-5);
}

#[test]
fn gpu_bias_residual_layer_norm_writes_the_sum_and_its_norm() {
    let device = wgpu();
    let mut rng = Inputs::new(36);
    for (rows, width, offset) in [(6, 768, 0.0), (3, 50, 40.0), (2, 1000, -10.0)] {
        let normal = |rng: &mut Inputs, std| {
            rng.tensor::<2>([rows, width], Distribution::Normal(0.0, std), &device)
        };
        let branch = normal(&mut rng, 2.0);
        let residual = normal(&mut rng, 3.0) + offset;
        let vector = |rng: &mut Inputs, mean| {
            rng.tensor::<1>([width], Distribution::Normal(mean, 0.5), &device)
        };
        let (bias, gamma, beta) = (
            vector(&mut rng, 0.0),
            vector(&mut rng, 1.0),
            vector(&mut rng, 0.0),
        );
        let (sum, normed) = add_bias_residual_layer_norm(
            branch.clone(),
            bias.clone(),
            residual.clone(),
            gamma.clone(),
            beta.clone(),
            1e-5,
        );
        let composed_sum = residual + (branch + bias.reshape([1, width]));
        let composed = layer_norm_composed(composed_sum.clone(), gamma, beta, 1e-5);
        let sum_diff = max_diff(sum, composed_sum);
        assert!(
            sum_diff < 1e-5,
            "[{rows}, {width}] + {offset}: sum {sum_diff}"
        );
        let diff = rel_diff(normed, composed);
        assert!(diff < 1e-5, "[{rows}, {width}] + {offset}: {diff}");
    }
}

#[test]
fn gpu_softmax_matches_burns_for_rows_narrower_and_wider_than_a_cube() {
    let device = wgpu();
    let mut rng = Inputs::new(32);
    for shape in [[5, 3, 777], [2, 4, 10], [1, 1, 128]] {
        let x = rng.tensor::<3>(shape, Distribution::Normal(0.0, 5.0), &device);
        let ours = softmax(x.clone(), 2);
        let rows = ours.clone().sum_dim(2);
        let diff = max_diff(ours, burn::tensor::activation::softmax(x, 2));
        assert!(diff < 1e-5, "{shape:?}: {diff}");
        let ones = max_diff(rows.clone(), rows.ones_like());
        assert!(ones < 1e-5, "{shape:?}: rows sum to 1 within {ones}");
    }
}

#[test]
fn gpu_softmax_covers_more_rows_than_one_grid_axis_holds() {
    let device = wgpu();
    let mut rng = Inputs::new(33);
    // 33,000 rows: the launch grid continues along y past 32,768 cubes.
    let x = rng.tensor::<2>([33_000, 3], Distribution::Normal(0.0, 2.0), &device);
    let diff = max_diff(
        softmax(x.clone(), 1),
        burn::tensor::activation::softmax(x, 1),
    );
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn gpu_layer_norm_matches_burns_even_far_from_zero() {
    let device = wgpu();
    let mut rng = Inputs::new(34);
    for (rows, width, offset) in [(6, 768, 0.0), (4, 50, 100.0), (3, 1000, -30.0)] {
        let x = rng.tensor::<2>([rows, width], Distribution::Normal(0.0, 2.0), &device) + offset;
        let gamma = rng.tensor::<1>([width], Distribution::Normal(1.0, 0.5), &device);
        let beta = rng.tensor::<1>([width], Distribution::Normal(0.0, 0.5), &device);
        let ours = layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        let burns = layer_norm_composed(x, gamma, beta, 1e-5);
        let diff = rel_diff(ours, burns);
        assert!(diff < 1e-5, "[{rows}, {width}] + {offset}: {diff}");
    }
}

/// Attention from Burn's ops, as ember-model's `attention` composes it.
fn attention_composed(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    hide: Tensor<4, Bool>,
) -> Tensor<3> {
    let [batch, heads, queries, head_dim] = q.dims();
    let keys = k.dims()[2];
    let scores = q
        .div_scalar((head_dim as f32).sqrt())
        .matmul(k.swap_dims(2, 3));
    let hide = hide.expand([batch, heads, queries, keys]);
    let weights = burn::tensor::activation::softmax(scores.mask_fill(hide, f32::MIN), 3);
    weights
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([batch, queries, heads * head_dim])
}

#[test]
fn gpu_attention_matches_the_composed_chain_with_padding_and_strided_heads() {
    let device = wgpu();
    let mut rng = Inputs::new(35);
    // Keys below and above the cube's 256 units; one query (a decoding step) and several;
    // heads whose width divides the units, does not, and exceeds them.
    for (queries, keys, head_dim) in [(5, 37, 16), (1, 300, 64), (4, 4, 48), (2, 5, 300)] {
        let (batch, heads) = (2, 3);
        // Heads split out of [batch, seq, heads·head_dim] rows: strided views, as a model's.
        let split = |rows: usize, rng: &mut Inputs| {
            rng.tensor::<3>(
                [batch, rows, heads * head_dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .reshape([batch, rows, heads, head_dim])
            .swap_dims(1, 2)
        };
        let q = split(queries, &mut rng);
        let k = split(keys, &mut rng);
        let v = split(keys, &mut rng);
        // Causal over the last `queries` keys, the second sequence's first 3 keys padding, and
        // its first query sees padding only (its weights then average the values).
        let mut hidden = vec![false; batch * queries * keys];
        for seq in 0..batch {
            for query in 0..queries {
                for key in 0..keys {
                    let future = key > keys - queries + query;
                    let padding = seq == 1 && (key < 3 || query == 0 && queries > 1);
                    hidden[(seq * queries + query) * keys + key] = future || padding;
                }
            }
        }
        let hide = Tensor::<4, Bool>::from_data(
            TensorData::new(hidden, [batch, 1, queries, keys]),
            &device,
        );
        let ours = fused_attention(&q, &k, &v, &hide).expect("a GPU device takes the kernel");
        let diff = max_diff(ours, attention_composed(q, k, v, hide));
        assert!(
            diff < 1e-5,
            "{queries} queries × {keys} keys × {head_dim}: {diff}"
        );
    }
}

#[test]
fn gpu_attention_leaves_autodiff_and_long_rows_to_the_composed_chain() {
    let device = wgpu();
    let q = Tensor::<4>::zeros([1, 1, 1, 8], &device);
    let k = Tensor::<4>::zeros([1, 1, FUSED_ATTENTION_MAX_KEYS + 1, 8], &device);
    let visible =
        |shape: [usize; 4], device: &Device| Tensor::<4, Int>::zeros(shape, device).equal_elem(1);
    let hide = visible([1, 1, 1, FUSED_ATTENTION_MAX_KEYS + 1], &device);
    assert!(fused_attention(&q, &k, &k, &hide).is_none());
    let tracked = device.clone().autodiff();
    let (q, k) = (
        Tensor::<4>::zeros([1, 1, 1, 8], &tracked),
        Tensor::<4>::zeros([1, 1, 4, 8], &tracked),
    );
    let hide = visible([1, 1, 1, 4], &tracked);
    assert!(fused_attention(&q, &k, &k, &hide).is_none());
}

#[test]
fn gpu_causal_self_attention_matches_the_composed_form() {
    let device = wgpu();
    let mut rng = Inputs::new(36);
    let (heads, head_dim) = (4, 8);
    let qkv = rng.tensor::<3>(
        [2, 9, 3 * heads * head_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let diff = max_diff(
        causal_self_attention(qkv.clone(), heads, 0.0),
        causal_self_attention_composed(qkv, heads, 0.0),
    );
    assert!(diff < 1e-5, "{diff}");
}
