//! The fused kernels against the composed tensor ops (values and gradients), on flex.

use burn::tensor::Distribution;

use super::*;

/// Test inputs from a generator of the test's own (SplitMix64), not the flex device's: that one
/// is shared by the whole process, so with tests running in parallel each run would draw other
/// values and a bound that held locally could fail on CI.
pub(crate) struct Inputs(u64);

impl Inputs {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A tensor of `shape` drawn from `distribution` (Default: uniform [0, 1), as Burn's).
    pub(crate) fn tensor<const D: usize>(
        &mut self,
        shape: [usize; D],
        distribution: Distribution,
        device: &Device,
    ) -> Tensor<D> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| match distribution {
                Distribution::Default => self.uniform() as f32,
                Distribution::Uniform(low, high) => (low + (high - low) * self.uniform()) as f32,
                Distribution::Normal(mean, std) => {
                    // Box–Muller; 1 − u keeps the logarithm finite.
                    let (u, v) = (1.0 - self.uniform(), self.uniform());
                    let z = (-2.0 * u.ln()).sqrt() * (2.0 * core::f64::consts::PI * v).cos();
                    (mean + std * z) as f32
                }
                other => unimplemented!("test inputs from {other:?}"),
            })
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

pub(crate) fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// `max|a − b|` relative to `b`'s largest magnitude (at least 1): products of `k` uniform
/// [0, 1) terms reach ~k/4, where a few ulps of a different summation order are ~1e-6·k/4
/// absolute, so absolute bounds that hold for one draw can fail for the next.
pub(crate) fn rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
    max_diff(a, b) / scale
}

fn grad_of<const D: usize>(x: &Tensor<D>, loss: Tensor<1>) -> Tensor<D> {
    let grads = loss.backward();
    x.grad(&grads).expect("x has a gradient")
}

#[test]
fn the_fused_path_is_taken_on_flex_only_for_f32() {
    let device = Device::flex();
    let x = Tensor::<2>::zeros([2, 3], &device);
    let f64_dtype = burn::tensor::DType::F64;
    assert!(fused::runs_on(x.dtype(), &device));
    assert!(fused::runs_on(x.dtype(), &device.clone().autodiff()));
    assert!(!fused::runs_on(f64_dtype, &device));
}

#[test]
fn gelu_matches_the_composed_form_in_value_and_gradient() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(3);
    // A shape that is not a multiple of the parallel chunk, values well into both tails.
    let x = rng.tensor::<3>([3, 7, 1000], Distribution::Normal(0.0, 4.0), &device);
    let weights = rng.tensor::<3>([3, 7, 1000], Distribution::Default, &device);

    let x_fused = x.clone().require_grad();
    let y_fused = gelu_tanh(x_fused.clone());
    let x_composed = x.require_grad();
    let y_composed = gelu_tanh_composed(x_composed.clone());
    assert!(max_diff(y_fused.clone(), y_composed.clone()) < 1e-5);

    let g_fused = grad_of(&x_fused, (y_fused * weights.clone()).sum());
    let g_composed = grad_of(&x_composed, (y_composed * weights).sum());
    let diff = max_diff(g_fused, g_composed);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn gelu_reads_strided_inputs() {
    let device = Device::flex();
    let mut rng = Inputs::new(4);
    let x = rng.tensor::<2>([40, 30], Distribution::Normal(0.0, 2.0), &device);
    let transposed = x.swap_dims(0, 1); // a view with strides, not contiguous
    let diff = max_diff(
        gelu_tanh(transposed.clone()),
        gelu_tanh_composed(transposed),
    );
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn nll_matches_log_softmax_and_gather_with_ignored_rows() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(5);
    let logits = rng.tensor::<2>([6, 53], Distribution::Normal(0.0, 3.0), &device);
    let targets = Tensor::<1, Int>::from_data([3, -100, 52, 0, -100, 17], &device);
    let row_weights = Tensor::<1>::from_floats([0.5, 2.0, -1.0, 1.5, 3.0, 0.25], &device);

    let l_fused = logits.clone().require_grad();
    let nll_fused = nll_rows(l_fused.clone(), targets.clone());
    let l_composed = logits.require_grad();
    let nll_composed = nll_rows_composed(l_composed.clone(), targets);
    assert!(max_diff(nll_fused.clone(), nll_composed.clone()) < 1e-5);
    let ignored: Vec<f32> = nll_fused.clone().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!((ignored[1], ignored[4]), (0.0, 0.0));

    let g_fused = grad_of(&l_fused, (nll_fused * row_weights.clone()).sum());
    let g_composed = grad_of(&l_composed, (nll_composed * row_weights).sum());
    let diff = max_diff(g_fused.clone(), g_composed);
    assert!(diff < 1e-6, "{diff}");
    // Ignored rows get no gradient at all.
    let row_1 = g_fused.narrow(0, 1, 1).abs().sum().into_scalar::<f32>();
    assert_eq!(row_1, 0.0);
    // The logits the caller still holds are not overwritten by the gradient.
    assert_eq!(max_diff(l_fused, l_composed), 0.0);
}

#[test]
fn nll_gradient_over_logits_nobody_else_holds_matches_the_composed_one() {
    // The logits are an intermediate (`2·w`), so the backward writes the gradient over them;
    // 40 rows of 1000 span several parallel chunks, the last one partial.
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(6);
    let w = rng.tensor::<2>([40, 1000], Distribution::Normal(0.0, 2.0), &device);
    let targets: Vec<i64> = (0..40)
        .map(|i| if i % 7 == 3 { -100 } else { (i * 97) % 1000 })
        .collect();
    let targets = Tensor::<1, Int>::from_data(targets.as_slice(), &device);
    let row_weights = rng.tensor::<1>([40], Distribution::Default, &device);
    let grads = [true, false].map(|fused| {
        let w = w.clone().require_grad();
        let logits = w.clone() * 2.0;
        let nll = if fused {
            nll_rows(logits, targets.clone())
        } else {
            nll_rows_composed(logits, targets.clone())
        };
        grad_of(&w, (nll * row_weights.clone()).sum())
    });
    let [fused, composed] = grads;
    let diff = max_diff(fused.clone(), composed);
    assert!(diff < 1e-5, "{diff}"); // gradients up to 2 in size: a few f32 ulps
    let row_3 = fused.narrow(0, 3, 1).abs().sum().into_scalar::<f32>();
    assert_eq!(row_3, 0.0);
}

#[test]
fn nll_of_a_large_vocabulary_stays_finite() {
    // Logits far from zero: logsumexp must shift by the row maximum.
    let device = Device::flex();
    let logits = Tensor::<2>::from_floats(
        [[1000.0, 990.0, -1000.0], [-500.0, -501.0, -499.0]],
        &device,
    );
    let targets = Tensor::<1, Int>::from_data([1, 2], &device);
    let fused: Vec<f32> = nll_rows(logits.clone(), targets.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let composed: Vec<f32> = nll_rows_composed(logits, targets)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for (a, b) in fused.iter().zip(&composed) {
        assert!(
            a.is_finite() && (a - b).abs() < 1e-4,
            "{fused:?} vs {composed:?}"
        );
    }
}

#[test]
#[should_panic(expected = "target 7 of row 1 is not below the 5 classes")]
fn a_target_beyond_the_classes_is_refused() {
    let device = Device::flex();
    let logits = Tensor::<2>::zeros([2, 5], &device);
    let targets = Tensor::<1, Int>::from_data([0, 7], &device);
    let _ = nll_rows(logits, targets).into_data();
}

#[test]
fn adamw_matches_the_composed_update_and_leaves_shared_tensors_alone() {
    let device = Device::flex();
    let mut rng = Inputs::new(6);
    let shape = [37, 1001]; // not a multiple of the parallel chunk
    let param = rng.tensor::<2>(shape, Distribution::Normal(0.0, 1.0), &device);
    let kept = param.clone(); // shares storage: the fused update must not write into it
    let before: Vec<f32> = kept.clone().into_data().try_to_vec::<f32>().unwrap();
    let (mut fused, mut composed) = (
        (
            param.clone(),
            Tensor::zeros(shape, &device),
            Tensor::zeros(shape, &device),
        ),
        (
            param,
            Tensor::zeros(shape, &device),
            Tensor::zeros(shape, &device),
        ),
    );
    for time in 1..=3 {
        let grad = rng.tensor::<2>(shape, Distribution::Normal(0.0, 0.1), &device);
        let step = AdamWStep {
            lr: 1e-3,
            beta_1: 0.9,
            beta_2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.1,
            time,
        };
        fused = adamw_update(fused.0, grad.clone(), fused.1, fused.2, step);
        composed = adamw_update_composed(composed.0, grad, composed.1, composed.2, step);
    }
    assert!(max_diff(fused.0.clone(), composed.0) < 1e-6);
    assert!(max_diff(fused.1, composed.1) < 1e-7);
    assert!(max_diff(fused.2, composed.2) < 1e-7);
    // The parameters moved, and the tensor that shared the original storage did not.
    assert!(max_diff(fused.0, kept.clone()) > 1e-4);
    assert_eq!(kept.into_data().try_to_vec::<f32>().unwrap(), before);
}

#[test]
fn softmax_matches_burns_in_value_and_gradient_with_hidden_keys() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(8);
    let [b, h, q, k] = [2, 3, 9, 300];
    let scores = rng.tensor::<4>([b, h, q, k], Distribution::Normal(0.0, 3.0), &device);
    // Causal hiding as attention does, and one row with every key hidden (a padding query).
    let causal = Tensor::<1, Int>::arange(0..q as i64, &device).reshape([q, 1]);
    let keys = Tensor::<1, Int>::arange(0..k as i64, &device).reshape([1, k]);
    let mut hide = keys
        .greater(causal)
        .reshape([1, 1, q, k])
        .expand([b, h, q, k]);
    hide = hide.slice_fill([0..1, 0..1, 4..5, 0..k], true);
    let scores = scores.mask_fill(hide, f32::MIN);
    let weights = rng.tensor::<4>([b, h, q, k], Distribution::Default, &device);

    let x_fused = scores.clone().require_grad();
    let y_fused = softmax(x_fused.clone(), 3);
    let x_burn = scores.require_grad();
    let y_burn = burn::tensor::activation::softmax(x_burn.clone(), 3);
    assert!(max_diff(y_fused.clone(), y_burn.clone()) < 1e-6);
    let row: Vec<f32> = y_fused
        .clone()
        .slice([0..1, 0..1, 4..5, 0..k])
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(
        row.iter().all(|&p| (p - 1.0 / k as f32).abs() < 1e-7),
        "uniform"
    );

    let g_fused = grad_of(&x_fused, (y_fused * weights.clone()).sum());
    let g_burn = grad_of(&x_burn, (y_burn * weights).sum());
    let diff = max_diff(g_fused, g_burn);
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn causal_softmax_matches_masking_then_softmax_in_value_and_gradient() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(16);
    // Square (training) and more keys than queries (queries after cached positions); rows of
    // 300 keys span several 16-lane chunks and a tail.
    for [b, h, q, k] in [[2, 3, 9, 9], [2, 2, 5, 300], [1, 1, 1, 1]] {
        let scores = rng.tensor::<4>([b, h, q, k], Distribution::Normal(0.0, 3.0), &device);
        let weights = rng.tensor::<4>([b, h, q, k], Distribution::Default, &device);
        // Checked by hand: query i sees keys 0..=i + k − q.
        let queries = Tensor::<1, Int>::arange(0..q as i64, &device).reshape([q, 1]);
        let keys = Tensor::<1, Int>::arange(0..k as i64, &device).reshape([1, k]);
        let hide = keys
            .greater(queries.add_scalar((k - q) as i64))
            .reshape([1, 1, q, k])
            .expand([b, h, q, k]);
        let x_hand = scores.clone().require_grad();
        let by_hand =
            burn::tensor::activation::softmax(x_hand.clone().mask_fill(hide.clone(), f32::MIN), 3);
        let x_causal = scores.require_grad();
        let causal = softmax_causal(x_causal.clone());
        // Both sum the row's exponentials in their own order: a few ulps of p.
        assert!(max_diff(causal.clone(), by_hand.clone()) < 1e-6, "{q}×{k}");
        let hidden = causal.clone().mask_fill(hide.bool_not(), 0.0);
        assert_eq!(
            hidden.abs().max().into_scalar::<f32>(),
            0.0,
            "hidden weights"
        );
        let g_causal = grad_of(&x_causal, (causal * weights.clone()).sum());
        let g_hand = grad_of(&x_hand, (by_hand * weights).sum());
        assert!(max_diff(g_causal, g_hand) < 1e-6, "{q}×{k} gradient");
    }
}

#[test]
fn softmax_over_another_dimension_is_burns() {
    let device = Device::flex();
    let mut rng = Inputs::new(9);
    let x = rng.tensor::<3>([4, 5, 6], Distribution::Default, &device);
    for dim in 0..3 {
        let diff = max_diff(
            softmax(x.clone(), dim),
            burn::tensor::activation::softmax(x.clone(), dim),
        );
        assert!(diff < 1e-6, "dim {dim}: {diff}");
    }
}

#[test]
fn matmul_matches_burns_in_value_and_gradient_with_transposed_operands() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(10);
    // Large enough for the multi-threaded product; one operand a transposed view.
    let a = rng.tensor::<2>([300, 200], Distribution::Default, &device);
    let b_t = rng.tensor::<2>([250, 200], Distribution::Default, &device);
    let weights = rng.tensor::<2>([300, 250], Distribution::Default, &device);
    let (a1, b1) = (a.clone().require_grad(), b_t.clone().require_grad());
    let (a2, b2) = (a.require_grad(), b_t.require_grad());
    let ours = matmul(a1.clone(), b1.clone().transpose());
    let burns = a2.clone().matmul(b2.clone().transpose());
    assert!(rel_diff(ours.clone(), burns.clone()) < 1e-5);
    let grads_ours = (ours * weights.clone()).sum().backward();
    let grads_burn = (burns * weights).sum().backward();
    let da = rel_diff(a1.grad(&grads_ours).unwrap(), a2.grad(&grads_burn).unwrap());
    let db = rel_diff(b1.grad(&grads_ours).unwrap(), b2.grad(&grads_burn).unwrap());
    assert!(da < 1e-5 && db < 1e-5, "{da} {db}");
    // Small and empty products (one thread; k = 0 gives zeros).
    let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
    let y = Tensor::<2>::from_floats([[5.0], [6.0]], &device);
    let xy: Vec<f32> = matmul(x, y).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(xy, vec![17.0, 39.0]);
    let empty = matmul(
        Tensor::<2>::zeros([3, 0], &device),
        Tensor::<2>::zeros([0, 2], &device),
    );
    assert_eq!(empty.dims(), [3, 2]);
    assert_eq!(empty.abs().sum().into_scalar::<f32>(), 0.0);
}

#[test]
fn matmul_nt_matches_burns_and_gives_the_table_a_row_major_gradient() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(11);
    let hidden = rng.tensor::<2>([40, 24], Distribution::Default, &device);
    let table = rng.tensor::<2>([300, 24], Distribution::Default, &device);
    let weights = rng.tensor::<2>([40, 300], Distribution::Default, &device);
    let (h1, t1) = (hidden.clone().require_grad(), table.clone().require_grad());
    let (h2, t2) = (hidden.require_grad(), table.require_grad());
    let ours = matmul_nt(h1.clone(), t1.clone());
    let burns = h2.clone().matmul(t2.clone().transpose());
    assert!(rel_diff(ours.clone(), burns.clone()) < 1e-5);
    let grads_ours = (ours * weights.clone()).sum().backward();
    let grads_burn = (burns * weights).sum().backward();
    // The hidden rows' gradient sums 300 terms: values ~75, where 1e-5 is about one ulp.
    let dh = rel_diff(h1.grad(&grads_ours).unwrap(), h2.grad(&grads_burn).unwrap());
    let dt = rel_diff(t1.grad(&grads_ours).unwrap(), t2.grad(&grads_burn).unwrap());
    assert!(dh < 1e-5 && dt < 1e-5, "{dh} {dt}");
}

#[test]
fn softmax_of_empty_rows_is_empty() {
    let device = Device::flex();
    let x = Tensor::<3>::zeros([2, 3, 0], &device);
    assert_eq!(softmax(x, 2).dims(), [2, 3, 0]);
}

/// A tensor's values in row-major order.
fn values_of<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn few_row_products_match_burns_for_every_shape_and_layout() {
    let device = Device::flex();
    let mut rng = Inputs::new(12);
    // k not a multiple of 4 or of the 64-row blocks, n not a multiple of the vector width.
    for (k, n) in [(1, 1), (5, 7), (130, 33), (768, 40), (64, 3)] {
        for m in [1, 2, 3, 8] {
            let lhs = rng.tensor::<2>([m, k], Distribution::Normal(0.0, 1.0), &device);
            let rhs = rng.tensor::<2>([k, n], Distribution::Normal(0.0, 1.0), &device);
            let table = rng.tensor::<2>([n, k], Distribution::Normal(0.0, 1.0), &device);
            let tolerance = 1e-5 * (k as f32).sqrt().max(1.0);
            let burns = lhs.clone().matmul(rhs.clone());
            let diff = max_diff(matmul(lhs.clone(), rhs.clone()), burns);
            assert!(diff < tolerance, "[{m}, {k}]·[{k}, {n}]: {diff}");
            let burns = lhs.clone().matmul(table.clone().transpose());
            let diff = max_diff(matmul_nt(lhs.clone(), table.clone()), burns.clone());
            assert!(diff < tolerance, "[{m}, {k}]·[{n}, {k}]ᵀ: {diff}");
            // A transposed lhs view, and the composed split used off the CPU backend.
            let lhs_view = lhs.clone().transpose().transpose();
            let diff = max_diff(matmul_nt(lhs_view, table.clone()), burns);
            assert!(diff < tolerance, "strided lhs: {diff}");
            let split = matmul_split_composed(lhs.clone(), rhs.clone(), 3);
            let diff = max_diff(split, lhs.clone().matmul(rhs.clone()));
            assert!(diff < tolerance, "composed split: {diff}");
            let split = matmul_nt_split_composed(lhs.clone(), table.clone(), 3);
            let diff = max_diff(split, lhs.matmul(table.transpose()));
            assert!(diff < tolerance, "composed split, table: {diff}");
        }
    }
    // A column slice of a wider weight is neither layout the few-rows kernels read: gemm's case.
    let lhs = rng.tensor::<2>([2, 50], Distribution::Default, &device);
    let wide = rng.tensor::<2>([50, 90], Distribution::Default, &device);
    let slice = wide.narrow(1, 10, 40);
    let diff = rel_diff(matmul(lhs.clone(), slice.clone()), lhs.matmul(slice));
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn products_by_a_transposed_weight_split_across_threads_match_burns() {
    let device = Device::flex();
    let mut rng = Inputs::new(15);
    // Large enough to run on all threads; n splits into uneven slices (80 + 50 columns on two
    // threads); past the split's column limits gemm's own threading (1100 columns, and 40 on
    // all threads); a small product on one thread.
    for (m, k, n) in [
        (200, 300, 130),
        (64, 200, 1100),
        (300, 200, 16),
        (3000, 300, 40),
    ] {
        let lhs = rng.tensor::<2>([m, k], Distribution::Normal(0.0, 1.0), &device);
        let weight = rng.tensor::<2>([n, k], Distribution::Normal(0.0, 1.0), &device);
        let burns = lhs.clone().matmul(weight.clone().transpose());
        let tolerance = 1e-5 * (k as f32).sqrt();
        let diff = max_diff(
            matmul(lhs.clone(), weight.clone().transpose()),
            burns.clone(),
        );
        assert!(diff < tolerance, "[{m}, {k}]·[{n}, {k}]ᵀ: {diff}");
        let diff = max_diff(matmul_nt(lhs, weight), burns);
        assert!(diff < tolerance, "matmul_nt [{m}, {k}]·[{n}, {k}]ᵀ: {diff}");
    }
}

#[test]
fn bf16_weights_give_the_bits_of_their_f32_widening_in_every_product() {
    use burn::tensor::DType;
    let device = Device::flex();
    let mut rng = Inputs::new(14);
    assert!(weight_dtype_read(DType::F32, DType::BF16, &device));
    assert!(!weight_dtype_read(
        DType::F32,
        DType::BF16,
        &device.clone().autodiff()
    ));
    assert!(weight_dtype_read(DType::F32, DType::F32, &device));
    // Few rows (the kernels read bf16 as stored) and 12 rows (widened once, then gemm); k not a
    // multiple of the 16 lanes or the 4-row groups.
    for (m, k, n) in [(1, 130, 33), (3, 768, 40), (8, 67, 5), (12, 130, 33)] {
        let lhs = rng.tensor::<2>([m, k], Distribution::Normal(0.0, 1.0), &device);
        let rhs = rng.tensor::<2>([k, n], Distribution::Normal(0.0, 1.0), &device);
        let table = rng.tensor::<2>([n, k], Distribution::Normal(0.0, 1.0), &device);
        let (rhs_bf16, table_bf16) = (rhs.clone().cast(DType::BF16), table.cast(DType::BF16));
        let (rhs_wide, table_wide) = (
            rhs_bf16.clone().cast(DType::F32),
            table_bf16.clone().cast(DType::F32),
        );
        assert_eq!(
            values_of(matmul(lhs.clone(), rhs_bf16.clone())),
            values_of(matmul(lhs.clone(), rhs_wide.clone())),
            "[{m}, {k}]·[{k}, {n}]"
        );
        assert_eq!(
            values_of(matmul_nt(lhs.clone(), table_bf16.clone())),
            values_of(matmul_nt(lhs.clone(), table_wide.clone())),
            "[{m}, {k}]·[{n}, {k}]ᵀ"
        );
        // Under autodiff (training) the weight is cast back to f32 first: the same product.
        let tracked = device.clone().autodiff();
        let lhs_tracked = Tensor::<2>::from_data(lhs.to_data(), &tracked);
        let rhs_tracked = Tensor::<2>::from_data(rhs.to_data(), &tracked).cast(DType::BF16);
        assert_eq!(rhs_tracked.dtype(), DType::BF16);
        let product = matmul(lhs_tracked, rhs_tracked).into_data();
        let diff = max_diff(
            Tensor::<2>::from_data(product, &device),
            matmul(lhs, rhs_wide),
        );
        assert!(diff < 1e-5 * (k as f32).sqrt(), "autodiff: {diff}");
    }
}

#[test]
fn few_row_products_give_the_same_bits_on_any_number_of_threads() {
    let device = Device::flex();
    let mut rng = Inputs::new(13);
    let lhs = rng.tensor::<2>([3, 700], Distribution::Normal(0.0, 1.0), &device);
    let rhs = rng.tensor::<2>([700, 300], Distribution::Normal(0.0, 1.0), &device);
    let table = rng.tensor::<2>([300, 700], Distribution::Normal(0.0, 1.0), &device);
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            (
                values_of(matmul(lhs.clone(), rhs.clone())),
                values_of(matmul_nt(lhs.clone(), table.clone())),
            )
        })
    };
    let one = on(1);
    assert_eq!(one, on(3));
    assert_eq!(one, on(4));
}

#[test]
fn a_few_row_product_under_autodiff_has_burns_gradients() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(14);
    let x = rng.tensor::<2>([2, 70], Distribution::Default, &device);
    let w = rng.tensor::<2>([70, 30], Distribution::Default, &device);
    let weights = rng.tensor::<2>([2, 30], Distribution::Default, &device);
    let (x1, w1) = (x.clone().require_grad(), w.clone().require_grad());
    let (x2, w2) = (x.require_grad(), w.require_grad());
    let ours = matmul(x1.clone(), w1.clone());
    let burns = x2.clone().matmul(w2.clone());
    assert!(rel_diff(ours.clone(), burns.clone()) < 1e-5);
    let grads_ours = (ours * weights.clone()).sum().backward();
    let grads_burn = (burns * weights).sum().backward();
    let dx = rel_diff(x1.grad(&grads_ours).unwrap(), x2.grad(&grads_burn).unwrap());
    let dw = rel_diff(w1.grad(&grads_ours).unwrap(), w2.grad(&grads_burn).unwrap());
    assert!(dx < 1e-5 && dw < 1e-5, "{dx} {dw}");
}

#[test]
fn batched_products_read_cache_views_in_place_and_match_burns() {
    let device = Device::flex();
    let mut rng = Inputs::new(15);
    // A key/value buffer [batch, heads, capacity, head_dim] of which 37 positions are filled.
    let buffer = rng.tensor::<4>([2, 3, 64, 16], Distribution::Normal(0.0, 1.0), &device);
    let keys = buffer.narrow(2, 0, 37); // [2, 3, 37, 16], strided per head
    for queries in [1, 3, 8, 9] {
        let q = rng.tensor::<4>([2, 3, queries, 16], Distribution::Default, &device);
        let w = rng.tensor::<4>([2, 3, queries, 37], Distribution::Default, &device);
        let scores = matmul_batched(q.clone(), keys.clone().swap_dims(2, 3));
        let diff = max_diff(scores, q.matmul(keys.clone().swap_dims(2, 3)));
        assert!(diff < 1e-5, "q·kᵀ, {queries} queries: {diff}");
        let context = matmul_batched(w.clone(), keys.clone());
        let diff = max_diff(context, w.matmul(keys.clone()));
        assert!(diff < 1e-5, "w·v, {queries} queries: {diff}");
    }
    // Heads of a projection's output `[batch, seq, heads·head_dim]`: rows 48 values apart.
    let projected = rng
        .tensor::<3>([2, 37, 48], Distribution::Default, &device)
        .reshape([2, 37, 3, 16])
        .swap_dims(1, 2);
    let q = rng.tensor::<4>([2, 3, 1, 16], Distribution::Default, &device);
    let w = rng.tensor::<4>([2, 3, 1, 37], Distribution::Default, &device);
    let scores = matmul_batched(q.clone(), projected.clone().swap_dims(2, 3));
    let diff = max_diff(scores, q.matmul(projected.clone().swap_dims(2, 3)));
    assert!(diff < 1e-5, "projection heads, q·kᵀ: {diff}");
    let context = matmul_batched(w.clone(), projected.clone());
    assert!(max_diff(context, w.matmul(projected)) < 1e-5);
    // A batch dimension of size 1 broadcasts, as in Burn's product.
    let one = rng.tensor::<4>([1, 3, 1, 16], Distribution::Default, &device);
    let out = matmul_batched(one.clone(), keys.clone().swap_dims(2, 3));
    assert_eq!(out.dims(), [2, 3, 1, 37]);
    let diff = max_diff(out, one.matmul(keys.swap_dims(2, 3)));
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn a_batched_product_under_autodiff_has_burns_gradients() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(16);
    let q = rng
        .tensor::<4>([1, 2, 1, 8], Distribution::Default, &device)
        .require_grad();
    let k = rng
        .tensor::<4>([1, 2, 8, 5], Distribution::Default, &device)
        .require_grad();
    let weights = rng.tensor::<4>([1, 2, 1, 5], Distribution::Default, &device);
    let out = matmul_batched(q.clone(), k.clone());
    let grads = (out * weights.clone()).sum().backward();
    let (q2, k2) = (
        q.clone().detach().require_grad(),
        k.clone().detach().require_grad(),
    );
    let grads_burn = (q2.clone().matmul(k2.clone()) * weights).sum().backward();
    let dq = max_diff(q.grad(&grads).unwrap(), q2.grad(&grads_burn).unwrap());
    let dk = max_diff(k.grad(&grads).unwrap(), k2.grad(&grads_burn).unwrap());
    assert!(dq < 1e-6 && dk < 1e-6, "{dq} {dk}");
}

#[test]
fn the_vectorised_exp_is_within_two_ulp_of_f64_exp() {
    // Every 1009th float bit pattern between −87.3 and 88.7 (~2·10⁶ values), and the edges.
    let mut worst = 0.0f64;
    let mut x = -87.336_f32;
    while x < 88.72 {
        let want = (x as f64).exp();
        let got = cpu::exp(x) as f64;
        // One ulp of the true value.
        let ulp = (want as f32).to_bits();
        let ulp = (f32::from_bits(ulp + 1) - f32::from_bits(ulp)) as f64;
        worst = worst.max((got - want).abs() / ulp);
        x = f32::from_bits(if x < 0.0 {
            x.to_bits() - 1009
        } else {
            x.to_bits() + 1009
        });
        if x < 0.0 && x > -1e-30 {
            x = 0.0;
        }
    }
    assert!(worst <= 2.0, "worst error {worst} ulp");
    assert_eq!(cpu::exp(0.0), 1.0);
    assert_eq!(cpu::exp(f32::MIN), 0.0);
    assert_eq!(cpu::exp(-100.0), 0.0);
    assert_eq!(cpu::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(cpu::exp(100.0), f32::INFINITY);
    assert!(cpu::exp(f32::NAN).is_nan());
}

#[test]
fn dropout_drops_the_given_share_everywhere_and_scales_the_rest() {
    let device = Device::flex();
    let mut rng = Inputs::new(5);
    let n = 1 << 20; // 64 parallel chunks
    let x = rng.tensor::<1>([n], Distribution::Uniform(1.0, 2.0), &device);
    let xs = values_of(x.clone());
    for prob in [0.1, 0.5, 0.9] {
        let ys = values_of(dropout(x.clone(), prob));
        let scale = (1.0 / (1.0 - prob)) as f32;
        assert!(
            xs.iter()
                .zip(&ys)
                .all(|(x, y)| *y == 0.0 || *y == x * scale)
        );
        // The share dropped, over all elements (6 standard deviations: 0.003) and in each
        // block of 2¹⁴ (0.024): no position is favoured.
        let share = |ys: &[f32]| ys.iter().filter(|y| **y == 0.0).count() as f64 / ys.len() as f64;
        assert!((share(&ys) - prob).abs() < 0.003, "{prob}: {}", share(&ys));
        for block in ys.chunks(1 << 14) {
            assert!(
                (share(block) - prob).abs() < 0.024,
                "{prob}: {}",
                share(block)
            );
        }
        // Neighbours are independent: both dropped with probability p².
        let pairs = ys.windows(2).filter(|w| w[0] == 0.0 && w[1] == 0.0).count() as f64;
        let both = pairs / (n - 1) as f64;
        assert!((both - prob * prob).abs() < 0.003, "{prob}: {both}");
    }
    // Each call draws a new mask; two masks agree where both keep or both drop.
    let (a, b) = (
        values_of(dropout(x.clone(), 0.5)),
        values_of(dropout(x.clone(), 0.5)),
    );
    let same = a
        .iter()
        .zip(&b)
        .filter(|(a, b)| (**a == 0.0) == (**b == 0.0))
        .count();
    assert!((same as f64 / n as f64 - 0.5).abs() < 0.003, "{same}");
    // That the device's seed makes it repeatable is checked in ember-model's `seed` test binary,
    // which runs alone: here other tests seed and draw from the same generator concurrently.
}

#[test]
fn dropout_reads_strided_inputs() {
    let device = Device::flex();
    let mut rng = Inputs::new(6);
    let x = rng.tensor::<2>([300, 70], Distribution::Uniform(1.0, 2.0), &device);
    let transposed = x.swap_dims(0, 1); // a view with strides
    let (xs, ys) = (
        values_of(transposed.clone()),
        values_of(dropout(transposed, 0.25)),
    );
    let scale = (1.0f64 / 0.75) as f32;
    assert!(
        xs.iter()
            .zip(&ys)
            .all(|(x, y)| *y == 0.0 || *y == x * scale)
    );
    assert!(ys.contains(&0.0) && ys.iter().any(|y| *y != 0.0));
}

#[test]
fn dropouts_gradient_applies_the_forward_mask() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(7);
    let shape = [3, 50, 700];
    let x = rng
        .tensor::<3>(shape, Distribution::Uniform(1.0, 2.0), &device)
        .require_grad();
    let weights = rng.tensor::<3>(shape, Distribution::Normal(0.0, 1.0), &device);
    // A shared input (copied) and a product's own output (updated in place).
    for factor in [1.0f32, 2.0] {
        let input = if factor == 1.0 {
            x.clone()
        } else {
            x.clone() * factor
        };
        let y = dropout(input, 0.3);
        let ys = values_of(y.clone());
        let dx = values_of(grad_of(&x, (y * weights.clone()).sum()));
        let scale = factor / 0.7;
        for ((g, w), y) in dx.iter().zip(values_of(weights.clone())).zip(&ys) {
            let want = if *y == 0.0 { 0.0 } else { w * scale };
            assert!(
                (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{g} vs {want}"
            );
        }
        let dropped = ys.iter().filter(|y| **y == 0.0).count() as f64 / ys.len() as f64;
        assert!((dropped - 0.3).abs() < 0.01, "{dropped}");
    }
}

#[test]
fn squared_sum_and_scale_match_the_composed_ops() {
    let device = Device::flex();
    let mut rng = Inputs::new(9);
    // Not a multiple of the chunk or of 16 lanes; a strided view too.
    let x = rng.tensor::<2>([301, 117], Distribution::Normal(0.0, 3.0), &device);
    for x in [x.clone(), x.clone().swap_dims(0, 1)] {
        let want: f32 = x.clone().powi_scalar(2).sum().into_scalar();
        let got: f32 = squared_sum(x.clone()).into_scalar();
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
        let before = values_of(x.clone());
        // A shared tensor is copied, not scaled under its other owner's feet.
        let scaled = values_of(scale(x.clone(), 0.25));
        assert_eq!(values_of(x.clone()), before);
        assert!(scaled.iter().zip(&before).all(|(s, b)| *s == b * 0.25));
    }
    // An exclusive one is scaled in place, with the same values.
    let fresh = x.clone() * 1.0;
    let scaled = values_of(scale(fresh, -3.0));
    assert!(scaled.iter().zip(values_of(x)).all(|(s, b)| *s == b * -3.0));
    assert_eq!(
        squared_sum(Tensor::<1>::zeros([0], &device)).into_scalar::<f32>(),
        0.0
    );
}

#[test]
fn batched_gemm_products_read_strided_heads_and_match_burns() {
    let device = Device::flex();
    let mut rng = Inputs::new(17);
    // Attention in training: heads of projections [batch, seq, heads·head_dim] as queries and
    // keys (rows 48 values apart), the keys transposed; more batch elements than threads.
    let mut heads = |seq| {
        rng.tensor::<3>([2, seq, 48], Distribution::Default, &device)
            .reshape([2, seq, 3, 16])
            .swap_dims(1, 2)
    };
    let (q, k) = (heads(20), heads(20));
    let scores = matmul_batched(q.clone(), k.clone().swap_dims(2, 3));
    let diff = rel_diff(scores.clone(), q.clone().matmul(k.clone().swap_dims(2, 3)));
    assert!(diff < 1e-5, "q·kᵀ: {diff}");
    let context = matmul_batched(scores.clone(), k.clone());
    assert!(rel_diff(context, scores.matmul(k)) < 1e-5);
    // One large batch element (the product itself on all threads), 3-D, transposed lhs.
    let a = rng.tensor::<3>([1, 130, 260], Distribution::Default, &device);
    let b = rng.tensor::<3>([1, 130, 250], Distribution::Default, &device);
    let lhs = a.swap_dims(1, 2); // [1, 260, 130]
    let diff = rel_diff(matmul_batched(lhs.clone(), b.clone()), lhs.matmul(b));
    assert!(diff < 1e-5, "{diff}");
    // Empty inner and outer dimensions.
    let zero_k = matmul_batched(
        Tensor::<3>::zeros([3, 9, 0], &device),
        Tensor::<3>::zeros([3, 0, 10], &device),
    );
    assert_eq!(zero_k.dims(), [3, 9, 10]);
    assert_eq!(zero_k.abs().max().into_scalar::<f32>(), 0.0);
    let zero_n = matmul_batched(
        Tensor::<3>::ones([3, 9, 4], &device),
        Tensor::<3>::ones([3, 4, 0], &device),
    );
    assert_eq!(zero_n.dims(), [3, 9, 0]);
}

#[test]
fn a_batched_gemm_product_under_autodiff_has_burns_gradients() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(18);
    let q = rng
        .tensor::<4>([2, 3, 20, 16], Distribution::Default, &device)
        .require_grad();
    let k = rng
        .tensor::<4>([2, 3, 20, 16], Distribution::Default, &device)
        .require_grad();
    let weights = rng.tensor::<4>([2, 3, 20, 20], Distribution::Default, &device);
    // Through a transposed view, as attention's q·kᵀ.
    let out = matmul_batched(q.clone(), k.clone().swap_dims(2, 3));
    let grads = (out * weights.clone()).sum().backward();
    let (q2, k2) = (
        q.clone().detach().require_grad(),
        k.clone().detach().require_grad(),
    );
    let burns = q2.clone().matmul(k2.clone().swap_dims(2, 3));
    let grads_burn = (burns * weights).sum().backward();
    let dq = max_diff(q.grad(&grads).unwrap(), q2.grad(&grads_burn).unwrap());
    let dk = max_diff(k.grad(&grads).unwrap(), k2.grad(&grads_burn).unwrap());
    assert!(dq < 1e-5 && dk < 1e-5, "{dq} {dk}");
}

#[test]
fn embedding_lookups_match_burns_in_value_and_gradient() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(19);
    let table = rng.tensor::<2>([50, 24], Distribution::Default, &device);
    // Repeated ids accumulate into their row; rows never looked up get zero.
    let ids = Tensor::<2, Int>::from_data([[3, 7, 3, 49], [0, 3, 7, 12]], &device);
    let weights = rng.tensor::<3>([2, 4, 24], Distribution::Default, &device);
    let ours = table.clone().require_grad();
    let theirs = table.require_grad();
    let (a, b) = (
        embedding(ours.clone(), ids.clone()),
        burn::tensor::module::embedding(theirs.clone(), ids),
    );
    assert_eq!(a.dims(), [2, 4, 24]);
    assert_eq!(max_diff(a.clone(), b.clone()), 0.0);
    let grad_ours = grad_of(&ours, (a * weights.clone()).sum());
    let grad_theirs = grad_of(&theirs, (b * weights).sum());
    let diff = max_diff(grad_ours, grad_theirs);
    assert!(diff < 1e-6, "{diff}");
}

#[test]
#[should_panic(expected = "token id 50 is outside the embedding's 50 rows")]
fn an_embedding_id_outside_the_table_is_named() {
    let device = Device::flex();
    let table = Tensor::<2>::zeros([50, 4], &device);
    embedding(table, Tensor::<2, Int>::from_data([[1, 50]], &device));
}

#[test]
fn layer_norm_matches_burns_in_value_and_every_gradient() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(20);
    // Rows not a multiple of a parallel chunk, width not of 16 lanes, a large mean (the
    // variance is taken about it), and BERT's epsilon.
    let x = rng.tensor::<3>([5, 70, 37], Distribution::Normal(3.0, 2.0), &device);
    let gamma = rng.tensor::<1>([37], Distribution::Normal(1.0, 0.5), &device);
    let beta = rng.tensor::<1>([37], Distribution::Normal(0.0, 0.5), &device);
    let weights = rng.tensor::<3>([5, 70, 37], Distribution::Default, &device);
    for epsilon in [1e-5, 1e-12] {
        let leaves = || {
            (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            )
        };
        let (x1, g1, b1) = leaves();
        let (x2, g2, b2) = leaves();
        let ours = layer_norm(x1.clone(), g1.clone(), b1.clone(), epsilon);
        let theirs = layer_norm_composed(x2.clone(), g2.clone(), b2.clone(), epsilon);
        assert!(max_diff(ours.clone(), theirs.clone()) < 1e-5);
        let grads = (ours * weights.clone()).sum().backward();
        let grads_burn = (theirs * weights.clone()).sum().backward();
        let dx = max_diff(x1.grad(&grads).unwrap(), x2.grad(&grads_burn).unwrap());
        let dg = max_diff(g1.grad(&grads).unwrap(), g2.grad(&grads_burn).unwrap());
        let db = max_diff(b1.grad(&grads).unwrap(), b2.grad(&grads_burn).unwrap());
        // dγ and dβ are sums over 350 rows of magnitude ~100: f32 rounding of ~1e-6 relative.
        assert!(dx < 1e-5 && dg < 1e-3 && db < 1e-3, "{dx} {dg} {db}");
    }
}

/// Causal self-attention from Burn's own ops (its products, a `tril` mask filled with −∞, its
/// softmax), with this crate's dropout mask of `seed` (the one the fused kernel draws with it).
fn attention_from_burn_ops(qkv: Tensor<3>, heads: usize, drop_prob: f64, seed: u64) -> Tensor<3> {
    let [batch, seq, width] = qkv.dims();
    let (emb, device) = (width / 3, qkv.device());
    let head_dim = emb / heads;
    let part = |i: usize| {
        qkv.clone()
            .narrow(2, i * emb, emb)
            .reshape([batch, seq, heads, head_dim])
            .swap_dims(1, 2)
    };
    let scores = part(0).matmul(part(1).swap_dims(2, 3)) / (head_dim as f32).sqrt();
    let future = Tensor::<2, Bool>::tril_mask([seq, seq], 0, &device)
        .reshape([1, 1, seq, seq])
        .expand([batch, heads, seq, seq]);
    let mut weights =
        burn::tensor::activation::softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3);
    if drop_prob > 0.0 {
        weights = fused::dropout(weights, seed, drop_prob);
    }
    weights
        .matmul(part(2))
        .swap_dims(1, 2)
        .reshape([batch, seq, emb])
}

#[test]
fn fused_attention_matches_burns_ops_in_value_and_gradient() {
    let device = Device::flex().autodiff();
    let mut rng = Inputs::new(21);
    // Contexts below one block of queries, exactly two, and past two with a partial third;
    // head widths off the 16 lanes; with and without dropout on the weights. The dropout seed
    // is given, not drawn: tests share the device's generator.
    const SEED: u64 = 0x5eed_0fa7_7e00;
    for ([batch, seq, heads, head_dim], drop_prob) in [
        ([2, 5, 2, 4], 0.0),
        ([1, 128, 3, 8], 0.0),
        ([2, 150, 3, 7], 0.0),
        ([2, 150, 2, 8], 0.25),
        ([1, 1, 1, 3], 0.0),
    ] {
        let width = 3 * heads * head_dim;
        let qkv = rng.tensor::<3>([batch, seq, width], Distribution::Normal(0.0, 2.0), &device);
        let weights = rng.tensor::<3>(
            [batch, seq, heads * head_dim],
            Distribution::Default,
            &device,
        );
        let case = format!("{batch}×{seq}, {heads} heads of {head_dim}, dropout {drop_prob}");
        let run = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let x = qkv.clone().require_grad();
            let y = f(x.clone());
            let dx = grad_of(&x, (y.clone() * weights.clone()).sum());
            (y, dx)
        };
        let (y_fused, g_fused) = run(&|x| fused::causal_attention(x, heads, SEED, drop_prob));
        let (y_burn, g_burn) = run(&|x| attention_from_burn_ops(x, heads, drop_prob, SEED));
        // Relative to the largest value: scores reach ~15 with these inputs, where an ulp of a
        // differently rounded score moves a weight by ~1e-6 of itself.
        let diff = rel_diff(y_fused.clone(), y_burn.clone());
        assert!(diff < 1e-5, "{case}: output {diff}");
        let diff = rel_diff(g_fused, g_burn.clone());
        assert!(diff < 1e-4, "{case}: gradient {diff}");
        if drop_prob > 0.0 {
            // The mask dropped something: without it the output differs.
            let undropped = attention_from_burn_ops(qkv.clone(), heads, 0.0, SEED);
            assert!(max_diff(y_fused, undropped) > 0.1, "{case}");
        } else {
            let (y_composed, g_composed) =
                run(&|x| causal_self_attention_composed(x, heads, drop_prob));
            assert!(rel_diff(y_composed, y_burn) < 1e-5, "{case}: composed");
            assert!(
                rel_diff(g_composed, g_burn) < 1e-4,
                "{case}: composed gradient"
            );
            // The public function takes the fused path here.
            let public = causal_self_attention(qkv.clone(), heads, 0.0);
            assert!(max_diff(public, y_fused) == 0.0, "{case}: public");
        }
    }
}

#[test]
fn fused_attention_without_autodiff_keeps_no_weights_and_matches() {
    let device = Device::flex();
    let mut rng = Inputs::new(22);
    let qkv = rng.tensor::<3>([3, 70, 36], Distribution::Normal(0.0, 1.0), &device);
    let diff = max_diff(
        causal_self_attention(qkv.clone(), 4, 0.0),
        attention_from_burn_ops(qkv, 4, 0.0, 0),
    );
    assert!(diff < 1e-5, "{diff}");
}

#[test]
#[should_panic(expected = "does not hold queries, keys and values of 4 heads")]
fn a_projection_that_does_not_split_into_heads_is_refused() {
    let qkv = Tensor::<3>::zeros([1, 3, 30], &Device::flex());
    causal_self_attention(qkv, 4, 0.0);
}
