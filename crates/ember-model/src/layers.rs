//! Building blocks shared by the model families: multi-head scaled dot-product attention and
//! the output head tied to a token embedding.

use burn::nn::{Dropout, Linear};
use burn::prelude::*;
use ember_kernels::{matmul_batched, softmax};

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
    let [batch, heads, queries, head_dim] = q.dims();
    let keys = k.dims()[2];
    let hide = hide.expand([batch, heads, queries, keys]);
    // Scaling the queries rather than the scores: the same product, one element-wise op on a
    // tensor head_dim/keys the size (4× smaller for GPT-2 at context 256).
    let scores = matmul_batched(q.div_scalar((head_dim as f32).sqrt()), k.swap_dims(2, 3))
        .mask_fill(hide, f32::MIN); // [batch, heads, queries, keys]
    let weights = dropout.forward(softmax(scores, 3));
    matmul_batched(weights, v) // [batch, heads, queries, head_dim]
        .swap_dims(1, 2)
        .reshape([batch, queries, heads * head_dim])
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
    let [batch, seq, d_in] = x.dims();
    let weight = linear.weight.val(); // [d_in, d_out]
    let d_out = weight.dims()[1];
    let rows = x.reshape([batch * seq, d_in]);
    let out = ember_kernels::matmul_split(rows, weight, threads);
    let out = match &linear.bias {
        Some(bias) => out + bias.val().reshape([1, d_out]),
        None => out,
    };
    out.reshape([batch, seq, d_out])
}

/// `linear.forward(x)` for `x: [batch, seq, d_in]` as one 2-D product ([`linear_split`] on one
/// thread): the form whose backward pass computes the weight gradient in a single product.
pub fn linear(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    linear_split(linear, x, 1)
}

#[cfg(test)]
mod tests {
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
}
