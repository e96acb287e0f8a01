//! Building blocks shared by the model families: multi-head scaled dot-product attention, the
//! output head tied to a token embedding, and Burn's `Dropout`, `Embedding` and `LayerNorm`
//! modules applied through ember's fused CPU kernels.

use burn::nn::{Dropout, Embedding, LayerNorm, Linear};
use burn::prelude::*;
use ember_kernels::{matmul_batched, softmax};

/// Burn's `Dropout` module applied by [`ember_kernels::dropout`]: the module's switch (active
/// only in training: on an autodiff device, the module not set to evaluation, a non-zero
/// probability), with the kernel's fused mask on the CPU backend. Any shape.
pub fn dropout<const D: usize>(module: &Dropout, x: Tensor<D>) -> Tensor<D> {
    match drop_prob(module, &x.device()) {
        0.0 => x,
        prob => ember_kernels::dropout(x, prob),
    }
}

/// The probability [`dropout`] applies on `device`: the module's in training, else 0.
pub fn drop_prob(module: &Dropout, device: &Device) -> f64 {
    match module.training.is_enabled() && device.is_autodiff() {
        true => module.prob,
        false => 0.0,
    }
}

/// Burn's `Embedding` module's lookup `ids: [batch, seq]` → `[batch, seq, emb]` by
/// [`ember_kernels::embedding`], whose gradient on the CPU backend skips two single-threaded
/// passes over the whole table.
pub fn lookup(module: &Embedding, ids: Tensor<2, Int>) -> Tensor<3> {
    ember_kernels::embedding(module.weight.val(), ids)
}

/// Burn's `LayerNorm` module applied by [`ember_kernels::layer_norm`] (one pass forward and
/// one backward on the CPU backend, instead of about ten single-threaded ops each way under
/// autodiff). The module keeps its epsilon private; it is read from the module's display
/// (Rust prints an `f64` as the shortest decimal that parses back to it). A module without a
/// shift or whose display does not say, and inputs other than `f32` (which Burn's forward
/// normalises in a wider type), take Burn's own forward.
pub fn layer_norm<const D: usize>(module: &LayerNorm, x: Tensor<D>) -> Tensor<D> {
    match kernel_layer_norm(module, x.dtype()) {
        Some((gamma, beta, epsilon)) => ember_kernels::layer_norm(x, gamma, beta, epsilon),
        None => module.forward(x),
    }
}

/// `(gamma, beta, epsilon)` of a `LayerNorm` that ember's kernels apply to inputs of `dtype`
/// (see [`layer_norm`]); `None` where Burn's own forward runs.
fn kernel_layer_norm(
    module: &LayerNorm,
    dtype: burn::tensor::DType,
) -> Option<(Tensor<1>, Tensor<1>, f64)> {
    match (&module.beta, layer_norm_epsilon(module)) {
        (Some(beta), Some(epsilon)) if dtype == burn::tensor::DType::F32 => {
            Some((module.gamma.val(), beta.val(), epsilon))
        }
        _ => None,
    }
}

/// `(sum, layer_norm(module, sum))` for `sum = residual + (branch + bias)`: a shortcut sum and
/// the LayerNorm that reads it, one GPU kernel in inference
/// ([`ember_kernels::add_bias_residual_layer_norm`]); the sum and [`layer_norm`] elsewhere.
pub fn add_bias_residual_layer_norm(
    module: &LayerNorm,
    branch: Tensor<3>,
    bias: Option<Tensor<1>>,
    residual: Tensor<3>,
) -> (Tensor<3>, Tensor<3>) {
    match (kernel_layer_norm(module, branch.dtype()), bias) {
        (Some((gamma, beta, epsilon)), Some(bias)) => ember_kernels::add_bias_residual_layer_norm(
            branch, bias, residual, gamma, beta, epsilon,
        ),
        (_, bias) => {
            let sum = ember_kernels::add_bias_residual(branch, bias, residual);
            (sum.clone(), layer_norm(module, sum))
        }
    }
}

/// The epsilon of a `LayerNorm`, from its display `LayerNorm {d_model: 6, epsilon: 0.00001, …}`.
fn layer_norm_epsilon(module: &LayerNorm) -> Option<f64> {
    let shown = module.to_string();
    let rest = &shown[shown.find("epsilon: ")? + "epsilon: ".len()..];
    rest[..rest.find([',', '}'])?].trim().parse().ok()
}

/// `[batch, seq, heads·head_dim]` → `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
        .swap_dims(1, 2)
}

/// softmax(q·kᵀ/√head_dim, hidden keys excluded)·v with the heads merged back:
/// `q: [batch, heads, queries, head_dim]`, `k`, `v: [batch, heads, keys, head_dim]`,
/// `hide` broadcastable to `[batch, heads, queries, keys]` (true = do not attend) →
/// `[batch, queries, heads·head_dim]`. `dropout` acts on the attention weights.
///
/// Hidden scores get `f32::MIN` rather than -∞ (as HuggingFace does), so a row with every key
/// hidden (a padding query) averages instead of producing NaN that would leak through 0·NaN.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    hide: Tensor<4, Bool>,
    dropout: &Dropout,
) -> Tensor<3> {
    attention_keeping_weights(q, k, v, hide, dropout, false).0
}

/// [`attention`] that also returns its weights `[batch, heads, queries, keys]` (before dropout)
/// when `keep_weights`, for a caller that shows them (the seq2seq decoder's attention map)
/// without computing them twice. They are kept only when asked: a second handle on them would
/// stop dropout from working in place in training.
pub fn attention_keeping_weights(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    hide: Tensor<4, Bool>,
    dropout: &Dropout,
    keep_weights: bool,
) -> (Tensor<3>, Option<Tensor<4>>) {
    // Outside autodiff (so without dropout) on a GPU: one kernel for the whole chain below.
    if !keep_weights && let Some(out) = ember_kernels::fused_attention(&q, &k, &v, &hide) {
        return (out, None);
    }
    let [batch, heads, queries, head_dim] = q.dims();
    let keys = k.dims()[2];
    // Scaling the queries rather than the scores: the same product, one element-wise op on a
    // tensor head_dim/keys the size (4× smaller for GPT-2 at context 256).
    let scores = matmul_batched(q.div_scalar((head_dim as f32).sqrt()), k.swap_dims(2, 3));
    let hide = hide.expand([batch, heads, queries, keys]);
    let weights = softmax(scores.mask_fill(hide, f32::MIN), 3); // [batch, heads, queries, keys]
    let kept = keep_weights.then(|| weights.clone());
    let out = matmul_batched(self::dropout(dropout, weights), v) // [batch, heads, queries, head_dim]
        .swap_dims(1, 2)
        .reshape([batch, queries, heads * head_dim]);
    (out, kept)
}

/// `[batch, keys]` attention mask in HuggingFace's convention (1 = real token, 0 = padding) →
/// `[batch, 1, 1, keys]`, true at the padded keys, for [`attention`].
pub fn padding_hide(attention_mask: Tensor<2, Int>) -> Tensor<4, Bool> {
    let [batch, keys] = attention_mask.dims();
    attention_mask.equal_elem(0).reshape([batch, 1, 1, keys])
}

/// Logits `[batch, seq, vocab]` = hidden `[batch, seq, emb]` · embeddingᵀ, for a head tied to
/// an embedding table `[vocab, emb]`, through [`ember_kernels::matmul_nt`] (which never copies
/// the table).
pub fn tied_logits(hidden: Tensor<3>, table: Tensor<2>) -> Tensor<3> {
    tied_logits_split(hidden, table, 1)
}

/// [`tied_logits`] with a product of few rows (decoding) shared by `threads`
/// ([`ember_kernels::matmul_nt_split`]).
pub fn tied_logits_split(hidden: Tensor<3>, table: Tensor<2>, threads: usize) -> Tensor<3> {
    let [batch, seq, emb] = hidden.dims();
    let vocab = table.dims()[0];
    let rows = hidden.reshape([batch * seq, emb]);
    ember_kernels::matmul_nt_split(rows, table, threads).reshape([batch, seq, vocab])
}

/// GPT-2's GELU, the tanh approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). Why not
/// Burn's `gelu_approximate`: that is eight single-threaded element-wise ops keeping two
/// `[batch, seq, 4·emb]` tensors per layer for the backward pass; on the CPU backend this is one
/// fused multi-threaded kernel with a hand-written backward that keeps only the input
/// ([`ember_kernels::gelu_tanh`]), elsewhere six composed ops.
pub use ember_kernels::gelu_tanh;

/// `linear.forward(x)` for `x: [batch, seq, d_in]`, as one 2-D product of the `batch·seq` rows.
/// Why not `linear.forward`: it multiplies the 3-D input by the weight broadcast to
/// `[batch, d_in, d_out]`, so its backward pass computes one weight gradient per batch element
/// and then sums them (a `[batch, d_in, d_out]` tensor and a reduction per layer); the 2-D
/// product's weight gradient is a single product over all rows.
///
/// With few rows (decoding), the product is shared by `threads`
/// ([`ember_kernels::matmul_split`]).
pub fn linear_split(linear: &Linear, x: Tensor<3>, threads: usize) -> Tensor<3> {
    with_bias(product_split(linear, x, threads), bias(linear))
}

/// `x + bias` over the last dimension where there is a bias ([`ember_kernels::add_bias`]).
pub fn with_bias<const D: usize>(x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match bias {
        Some(bias) => ember_kernels::add_bias(x, bias),
        None => x,
    }
}

/// [`linear_split`] without the bias, `x · weight`: for a caller that adds the bias together
/// with the next op ([`ember_kernels::bias_gelu_tanh`], [`ember_kernels::add_bias_residual`]),
/// one GPU kernel fewer each.
pub fn product_split(linear: &Linear, x: Tensor<3>, threads: usize) -> Tensor<3> {
    let [batch, seq, d_in] = x.dims();
    let weight = linear.weight.val(); // [d_in, d_out]
    let d_out = weight.dims()[1];
    let rows = x.reshape([batch * seq, d_in]);
    ember_kernels::matmul_split(rows, weight, threads).reshape([batch, seq, d_out])
}

/// `linear`'s bias `[d_out]`, if it has one.
pub fn bias(linear: &Linear) -> Option<Tensor<1>> {
    linear.bias.as_ref().map(|bias| bias.val())
}

/// `linear.forward(x)` for `x: [batch, seq, d_in]` as one 2-D product ([`linear_split`] on one
/// thread): the form whose backward pass computes the weight gradient in a single product.
pub fn linear(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    linear_split(linear, x, 1)
}

/// One layer's cached keys and values: buffers `[batch, heads, capacity, head_dim]` whose first
/// `len` positions are filled. Why buffers: appending by concatenation copies every cached
/// position on every decoding step (7% of a gpt2-small step at 256 positions, measured); a
/// write into a buffer that the cache alone holds happens in place on the CPU backend, and the
/// attention reads the filled part as a view. Capacity grows by doubling.
#[derive(Clone, Debug)]
pub struct LayerCache {
    keys: Tensor<4>,
    values: Tensor<4>,
    len: usize,
}

impl LayerCache {
    /// `past` with `keys`, `values: [batch, heads, new, head_dim]` appended.
    fn append(past: Option<Self>, keys: Tensor<4>, values: Tensor<4>) -> Self {
        let [batch, heads, new, head_dim] = keys.dims();
        let (len, capacity) = match &past {
            Some(past) => (past.len, past.keys.dims()[2]),
            None => (0, 0),
        };
        let needed = len + new;
        let cache = match past {
            Some(past) if needed <= capacity => past,
            past => {
                let capacity = needed.next_power_of_two().max(32);
                let device = keys.device();
                let empty = || Tensor::<4>::zeros([batch, heads, capacity, head_dim], &device);
                let mut grown = Self {
                    keys: empty(),
                    values: empty(),
                    len: 0,
                };
                if let Some(past) = past {
                    let (keys, values) = past.filled();
                    grown = grown.write(keys, values);
                }
                grown
            }
        };
        cache.write(keys, values)
    }

    /// Writes `keys`, `values` at positions `len..len + new` (capacity checked by the caller).
    fn write(self, keys: Tensor<4>, values: Tensor<4>) -> Self {
        let [batch, heads, new, head_dim] = keys.dims();
        let at = [0..batch, 0..heads, self.len..self.len + new, 0..head_dim];
        Self {
            keys: self.keys.slice_assign(at.clone(), keys),
            values: self.values.slice_assign(at, values),
            len: self.len + new,
        }
    }

    /// Appends `keys`, `values: [batch, heads, new, head_dim]` to the cache in `slot` (made on
    /// the first call) and returns views of all its positions `[batch, heads, len, head_dim]`.
    /// The cache is taken out of `slot` while it is written, so that its buffers have one owner
    /// and the write happens in place.
    pub fn extend(
        slot: &mut Option<Self>,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let cache = Self::append(slot.take(), keys, values);
        let filled = cache.filled();
        *slot = Some(cache);
        filled
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn device(&self) -> Device {
        self.keys.device()
    }

    /// The cache of batch rows `rows: [n]`, in that order (beam search, finished sequences).
    pub fn select_rows(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            keys: self.keys.clone().select(0, rows.clone()),
            values: self.values.clone().select(0, rows),
            len: self.len,
        }
    }

    /// Views of the filled positions: keys and values `[batch, heads, len, head_dim]`.
    fn filled(&self) -> (Tensor<4>, Tensor<4>) {
        (
            self.keys.clone().narrow(2, 0, self.len),
            self.values.clone().narrow(2, 0, self.len),
        )
    }
}

#[cfg(test)]
mod tests {
    /// The fused LayerNorm reads the module's epsilon: the same output as Burn's forward for
    /// GPT-2's and BERT's values and a non-round one.
    #[test]
    fn layer_norm_reads_the_modules_epsilon() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data([[1.0, 1.0 + 1e-3, 1.0 - 1e-3, 1.0]], &device);
        for epsilon in [1e-5, 1e-12, 3.7e-6, 0.25] {
            let module = burn::nn::LayerNormConfig::new(4)
                .with_epsilon(epsilon)
                .init(&device);
            assert_eq!(super::layer_norm_epsilon(&module), Some(epsilon));
            let diff: f32 = (layer_norm(&module, x.clone()) - module.forward(x.clone()))
                .abs()
                .max()
                .into_scalar();
            assert!(diff < 1e-4, "{epsilon}: {diff}");
        }
    }

    use super::*;
    use burn::nn::LinearConfig;

    fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn gelu_tanh_is_burns_tanh_approximation() {
        let device = Device::flex();
        let x = Tensor::<1>::from_floats(
            [
                -12.0, -5.0, -3.0, -1.5, -0.7, -1e-3, 0.0, 2e-3, 0.4, 1.0, 2.5, 4.0, 9.0, 30.0,
            ],
            &device,
        );
        let ours = gelu_tanh(x.clone());
        let burns = burn::tensor::activation::gelu_approximate(x);
        let diff = (ours - burns).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn split_products_equal_the_whole_ones() {
        let device = Device::flex();
        device.seed(5);
        let x = Tensor::<3>::random([2, 3, 24], burn::tensor::Distribution::Default, &device);
        // 100 output columns: slices of 48 + 48 + 4, 16 + 16 + … for more threads.
        for bias in [true, false] {
            let linear = LinearConfig::new(24, 100).with_bias(bias).init(&device);
            for threads in [2, 3, 7] {
                let whole = linear.forward(x.clone());
                let split = linear_split(&linear, x.clone(), threads);
                let diff = max_diff(whole, split);
                assert!(diff < 1e-5, "bias {bias}, threads {threads}: {diff}");
            }
        }
        let table = Tensor::<2>::random([70, 24], burn::tensor::Distribution::Default, &device);
        for threads in [2, 5] {
            let whole = tied_logits(x.clone(), table.clone());
            let split = tied_logits_split(x.clone(), table.clone(), threads);
            // Outputs near 6: a different kernel per slice may round the last bit differently.
            let diff = max_diff(whole, split);
            assert!(diff < 1e-5, "threads {threads}: {diff}");
        }
        // Too many rows: one product over all of them, bit for bit the plain product.
        let long = Tensor::<3>::random([3, 3, 24], burn::tensor::Distribution::Default, &device);
        let linear = LinearConfig::new(24, 100).init(&device);
        assert_eq!(
            linear_split(&linear, long.clone(), 4).into_data(),
            linear.forward(long).into_data()
        );
    }

    #[test]
    fn attention_weights_are_the_softmax_of_the_visible_scores() {
        // Under autodiff, where dropout acts: the weights returned are those before it.
        for (device, drop_rate) in [(Device::flex(), 0.0), (Device::flex().autodiff(), 0.5)] {
            device.seed(11);
            let random = |shape: [usize; 4]| {
                Tensor::<4>::random(shape, burn::tensor::Distribution::Default, &device)
            };
            // Two queries against five keys: a transposed result would not broadcast back.
            let (q, k, v) = (
                random([2, 3, 2, 8]),
                random([2, 3, 5, 8]),
                random([2, 3, 5, 8]),
            );
            // Row 1 hides its last two keys.
            let hide = Tensor::<4, Bool>::from_data(
                TensorData::new(
                    vec![
                        false, false, false, false, false, false, false, false, true, true,
                    ],
                    [2, 1, 1, 5],
                ),
                &device,
            );
            let dropout = burn::nn::DropoutConfig::new(drop_rate).init();
            let (out, weights) = attention_keeping_weights(
                q.clone(),
                k.clone(),
                v.clone(),
                hide.clone(),
                &dropout,
                true,
            );
            let weights = weights.expect("weights asked for");
            // Burn's own ops, one at a time.
            let scores = q
                .clone()
                .matmul(k.clone().swap_dims(2, 3))
                .div_scalar(8f32.sqrt())
                .mask_fill(hide.clone().expand([2, 3, 2, 5]), f32::NEG_INFINITY);
            let want = burn::tensor::activation::softmax(scores, 3);
            let diff = (weights.clone() - want.clone())
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(diff < 1e-6, "weights, dropout {drop_rate}: {diff}");
            let hidden: Vec<f32> = weights
                .slice([1..2, 0..3, 0..2, 3..5])
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert!(hidden.iter().all(|&w| w == 0.0), "{hidden:?}");
            if drop_rate == 0.0 {
                let want_out = want.matmul(v.clone()).swap_dims(1, 2).reshape([2, 2, 24]);
                assert!(max_diff(out.clone(), want_out) < 1e-6);
                let plain = attention(q, k, v, hide, &dropout);
                assert_eq!(plain.into_data(), out.into_data());
            }
        }
    }

    #[test]
    fn layer_cache_holds_what_concatenation_would() {
        let device = Device::flex();
        device.seed(12);
        let random = |new: usize| {
            Tensor::<4>::random([3, 2, new, 4], burn::tensor::Distribution::Default, &device)
        };
        let (mut all_keys, mut all_values) = (random(5), random(5));
        let mut cache = LayerCache::append(None, all_keys.clone(), all_values.clone());
        // One position at a time past the first capacity (32), so the buffer grows once.
        for _ in 0..30 {
            let (keys, values) = (random(1), random(1));
            cache = LayerCache::append(Some(cache), keys.clone(), values.clone());
            all_keys = Tensor::cat(vec![all_keys, keys], 2);
            all_values = Tensor::cat(vec![all_values, values], 2);
        }
        assert_eq!(cache.len(), 35);
        let (keys, values) = cache.filled();
        assert_eq!(keys.into_data(), all_keys.clone().into_data());
        assert_eq!(values.into_data(), all_values.clone().into_data());
        let rows = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), &device);
        let picked = cache.select_rows(rows.clone());
        assert_eq!(picked.len(), 35);
        let (keys, values) = picked.filled();
        assert_eq!(
            keys.into_data(),
            all_keys.select(0, rows.clone()).into_data()
        );
        assert_eq!(values.into_data(), all_values.select(0, rows).into_data());
    }
}
