//! Fused kernels for the element-wise work that dominates a CPU training step once the matrix
//! products are fast: the GELU of every feed-forward block, the attention softmax, LayerNorm,
//! dropout, the embedding lookup's gradient, the cross-entropy over `[tokens, vocab]` logits,
//! the gradient norm for clipping and the AdamW update of every parameter; GPT's causal
//! self-attention over its fused q/k/v projection, one kernel per head; the 2-D and batched
//! matrix products themselves, whose outputs Burn's CPU backend zero-fills and copies once
//! more on one thread before the product starts; and the products of a decoding step (one row
//! per sequence, attention over one query per head), which only read weights and the key/value
//! cache and so run as passes at the machine's read bandwidth on every thread.
//!
//! Composed from Burn's tensor ops these are chains of 5–12 single-threaded passes over large
//! tensors, each allocating its output, and the autodiff graph keeps several intermediates alive
//! for the backward pass. Here each is one multi-threaded pass (rayon), the backward passes are
//! written by hand and keep one tensor (the input, or the softmax's output), and AdamW updates
//! the parameter and its moments in place.
//!
//! The kernels run on the pure-Rust `flex` backend (plain or under autodiff) with `f32` tensors,
//! through a Burn backend extension. On every other device and dtype the same functions fall back
//! to the composed tensor ops, so callers never check which path runs; the composed forms are
//! also the reference the tests compare the kernels with.
//!
//! With the `cube` feature, inference on the GPU backends (outside autodiff) takes CubeCL kernels
//! for LayerNorm, the GELU, bias and shortcut sums, the softmax and attention
//! ([`fused_attention`]), where a decoding step's time goes to launching the composed ops' many
//! small kernels (`gpu`).

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{log_softmax, sigmoid};

#[cfg(feature = "flex")]
mod attention;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "flex")]
mod fused;
#[cfg(feature = "cube")]
mod gpu;

/// GELU with the tanh approximation (GPT-2's), `x·σ(A·x + B·x³)`, equal to
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`. Any shape.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if fused::runs_on(x.dtype(), &x.device()) {
        return fused::gelu_tanh(x);
    }
    #[cfg(feature = "cube")]
    if gpu::runs_on(x.dtype(), &x.device()) {
        return gpu::gelu_tanh(x);
    }
    gelu_tanh_composed(x)
}

/// `gelu_tanh(x + bias)`, `bias: [width]` along `x`'s last dimension (none: [`gelu_tanh`]).
/// Why: a feed-forward layer's up-projection is a product, its bias and the GELU; on a GPU
/// (inference) the bias and the GELU are one kernel instead of two. Elsewhere the bias is
/// added as a linear layer adds it, then [`gelu_tanh`].
pub fn bias_gelu_tanh<const D: usize>(x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let Some(bias) = bias else {
        return gelu_tanh(x);
    };
    #[cfg(feature = "cube")]
    if gpu::all_run_on(&[&x], &[&bias]) {
        return gpu::bias_gelu_tanh(x, bias);
    }
    gelu_tanh(add_bias(x, bias))
}

/// `residual + (branch + bias)`, `bias: [width]` along the last dimension (none: the plain
/// sum): a residual branch's output projection before its bias, added to the shortcut. On a
/// GPU (inference) one kernel instead of two; elsewhere the bias is added as a linear layer
/// adds it, then the shortcut.
pub fn add_bias_residual<const D: usize>(
    branch: Tensor<D>,
    bias: Option<Tensor<1>>,
    residual: Tensor<D>,
) -> Tensor<D> {
    let Some(bias) = bias else {
        return residual + branch;
    };
    #[cfg(feature = "cube")]
    if gpu::all_run_on(&[&branch, &residual], &[&bias]) {
        return gpu::add_bias_residual(branch, bias, residual);
    }
    residual + add_bias(branch, bias)
}

/// `x + bias` over `x`'s last dimension, as one `[rows, width] + [1, width]` sum (the form of
/// a linear layer's bias, whose gradient is then one column sum).
pub fn add_bias<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    let dims = x.dims();
    let width = dims[D - 1];
    let rows = dims.iter().product::<usize>() / width.max(1);
    (x.reshape([rows, width]) + bias.reshape([1, width])).reshape(dims)
}

/// [`gelu_tanh`] from Burn's tensor ops: the path of devices without the fused kernel.
pub fn gelu_tanh_composed<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const A: f64 = 2.0 * core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
    const B: f64 = A * 0.044715;
    let u = x.clone() * A + x.clone().powi_scalar(3) * B;
    x * sigmoid(u)
}

/// `lhs: [m, k]` · `rhs: [k, n]` → `[m, n]`. On the CPU backend the product writes straight into
/// its output (Burn's flex zero-fills the output and copies it once more to realign it, on one
/// thread, before the product starts), transposed operands are read in place, and a product of
/// at most [`SPLIT_MAX_ROWS`] rows (a decoding step) is one pass over `rhs` on every thread.
pub fn matmul(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    matmul_split(lhs, rhs, 1)
}

/// `lhs: [m, k]` · `rhsᵀ` for `rhs: [n, k]` → `[m, n]`: a product with a table stored row by
/// row, such as a tied output head's embedding `[vocab, emb]`. Like [`matmul`] on the CPU
/// backend, and the table's gradient comes out in the table's own layout, so adding it to the
/// embedding lookup's gradient is a plain contiguous sum (a transposed one is a strided,
/// cache-missing pass over the whole table). Elsewhere computed as `(rhs · lhsᵀ)ᵀ`: Burn's
/// product by a transposed `rhs` copies all of it (150 MB for GPT-2's table) on every call,
/// while transposing `lhs` and the result is cheap.
pub fn matmul_nt(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    matmul_nt_split(lhs, rhs, 1)
}

/// Most rows for which [`matmul_split`] and [`matmul_nt_split`] share a product between threads
/// themselves; larger products are split across threads by the backend.
pub const SPLIT_MAX_ROWS: usize = 8;

/// [`matmul`] with a product of at most [`SPLIT_MAX_ROWS`] rows shared by `threads`. Why: a
/// one-token decoding step (`[1, 768]·[768, 3072]` …) is all weight reading, and Burn's CPU
/// backends run products below 192³ multiply-adds on one thread, i.e. at one core's bandwidth.
/// On the flex backend [`matmul`] already reads such a product's weight on all of rayon's
/// threads; elsewhere (ndarray) [`matmul_split_composed`].
///
/// `rhs` may be a weight stored in another dtype than `lhs` (bf16 weights for decoding, see
/// [`weight_dtype_read`]): the flex backend reads it as it is stored; elsewhere it is cast to
/// `lhs`'s dtype first (Burn's cast returns a tensor already in that dtype as it is).
pub fn matmul_split(lhs: Tensor<2>, rhs: Tensor<2>, threads: usize) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if fused::reads_weight(lhs.dtype(), rhs.dtype(), &lhs.device()) {
        return fused::matmul_2d(lhs, rhs);
    }
    let rhs = rhs.cast(lhs.dtype());
    matmul_split_composed(lhs, rhs, threads)
}

/// Whether [`matmul_split`] and [`matmul_nt_split`] read a weight of `weight` dtype as it is
/// stored when multiplying `activations`-dtype rows on `device`, rather than casting it on
/// every call: `f32` or bf16 weights times `f32` rows on the CPU backend outside autodiff.
/// What storing decoding weights in bf16 saves is bytes streamed per token; where this is
/// false it would only add casts.
pub fn weight_dtype_read(
    activations: burn::tensor::DType,
    weight: burn::tensor::DType,
    device: &Device,
) -> bool {
    #[cfg(feature = "flex")]
    if fused::reads_weight(activations, weight, device) {
        return true;
    }
    let _ = device;
    activations == weight
}

/// [`matmul_split`] from Burn's products: for few rows and `threads` > 1, the output columns
/// cut into `threads` slices, each a single-threaded product reading its slice of `rhs` in
/// place (`split_columns`).
pub fn matmul_split_composed(lhs: Tensor<2>, rhs: Tensor<2>, threads: usize) -> Tensor<2> {
    if !splits(lhs.dims()[0], threads) {
        return lhs.matmul(rhs);
    }
    split_columns(rhs.dims()[1], threads, |start, len| {
        lhs.clone().matmul(rhs.clone().narrow(1, start, len)) // [m, len]
    })
}

/// [`matmul_nt`] with a product of at most [`SPLIT_MAX_ROWS`] rows shared by `threads`, as
/// [`matmul_split`]: on flex [`matmul_nt`], elsewhere [`matmul_nt_split_composed`].
pub fn matmul_nt_split(lhs: Tensor<2>, rhs: Tensor<2>, threads: usize) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if fused::reads_weight(lhs.dtype(), rhs.dtype(), &lhs.device()) {
        return fused::matmul_2d_nt(lhs, rhs);
    }
    let rhs = rhs.cast(lhs.dtype());
    matmul_nt_split_composed(lhs, rhs, threads)
}

/// [`matmul_nt_split`] from Burn's products: `(rhs · lhsᵀ)ᵀ`, for few rows and `threads` > 1
/// per slice of `rhs`'s rows (`split_columns`).
pub fn matmul_nt_split_composed(lhs: Tensor<2>, rhs: Tensor<2>, threads: usize) -> Tensor<2> {
    let lhs_t = lhs.transpose(); // [k, m]
    if !splits(lhs_t.dims()[1], threads) {
        return rhs.matmul(lhs_t).transpose();
    }
    split_columns(rhs.dims()[0], threads, |start, len| {
        rhs.clone()
            .narrow(0, start, len)
            .matmul(lhs_t.clone())
            .transpose() // [m, len]
    })
}

/// Whether a product of `rows` rows is split over `threads` by the composed split products.
fn splits(rows: usize, threads: usize) -> bool {
    threads > 1 && rows <= SPLIT_MAX_ROWS
}

/// `[rows, width]` assembled from `slice(start, len) → [rows, len]` over `threads` consecutive
/// column ranges, computed on rayon's thread pool. The slices are views of the weight (no
/// copy), each a single-threaded product of its own.
fn split_columns(
    width: usize,
    threads: usize,
    slice: impl Fn(usize, usize) -> Tensor<2> + Sync,
) -> Tensor<2> {
    use rayon::prelude::*;
    // Slices of whole cache lines (16 floats) keep every thread's rows aligned alike.
    let chunk = width.div_ceil(threads.max(1)).next_multiple_of(16).max(16);
    let parts: Vec<Tensor<2>> = (0..width.div_ceil(chunk))
        .into_par_iter()
        .map(|i| {
            let start = i * chunk;
            slice(start, chunk.min(width - start))
        })
        .collect();
    Tensor::cat(parts, 1)
}

/// `lhs: [.., m, k]` · `rhs: [.., k, n]` → `[.., m, n]` for operands with the same batch
/// dimensions (attention's heads). On the CPU backend, with at most [`SPLIT_MAX_ROWS`] rows
/// (one query per head while decoding), the batch elements run side by side on every thread
/// and a strided view of a key/value cache is read in place; Burn's batched product runs such
/// small products one after the other on one thread. Otherwise, and under autodiff, Burn's.
pub fn matmul_batched<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if fused::runs_on(lhs.dtype(), &lhs.device()) && fused::runs_on(rhs.dtype(), &rhs.device()) {
        return fused::matmul_batched(lhs, rhs);
    }
    lhs.matmul(rhs)
}

/// Softmax along `dim`. On the CPU backend, along the last dimension (attention weights), one
/// fused pass per row whose backward keeps only the output.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if dim == D - 1 && fused::runs_on(x.dtype(), &x.device()) {
        return fused::softmax_last(x);
    }
    #[cfg(feature = "cube")]
    if dim == D - 1 && gpu::runs_on(x.dtype(), &x.device()) {
        return gpu::softmax_last(x);
    }
    burn::tensor::activation::softmax(x, dim)
}

/// Attention, `softmax(q·kᵀ/√head_dim)·v` over the keys that `hide` leaves visible, with the
/// heads merged, as one kernel where the device has one: `q: [batch, heads, queries, head_dim]`,
/// `k`, `v: [batch, heads, keys, head_dim]`, `hide` broadcastable to
/// `[batch, heads, queries, keys]` → `[batch, queries, heads·head_dim]`. Hidden scores count as
/// `f32::MIN`, so a row with every key hidden averages the values.
///
/// On GPU devices outside autodiff (inference), with up to [`FUSED_ATTENTION_MAX_KEYS`] keys;
/// `None` elsewhere, where the caller composes the chain (ember-model's `attention`, which
/// the kernel's tests compare it with). The composed chain launches ~10 kernels.
pub fn fused_attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    hide: &Tensor<4, Bool>,
) -> Option<Tensor<3>> {
    #[cfg(feature = "cube")]
    if gpu::attention_runs_on(q, k.dims()[2]) && gpu::runs_on(k.dtype(), &k.device()) {
        let (q, k, v, hide) = (q.clone(), k.clone(), v.clone(), hide.clone());
        return Some(gpu::attention(q, k, v, hide));
    }
    #[cfg(not(feature = "cube"))]
    let _ = (q, k, v, hide);
    None
}

/// Whether ember's GPU kernels (LayerNorm, GELU, bias and shortcut sums, softmax, attention)
/// serve `f32` inference on `device`: a GPU device outside autodiff, with the kernels compiled
/// in (`cube`) and switched on ([`set_gpu_kernels`]).
pub fn gpu_kernels_run_on(device: &Device) -> bool {
    #[cfg(feature = "cube")]
    return gpu::runs_on(burn::tensor::DType::F32, device);
    #[cfg(not(feature = "cube"))]
    {
        let _ = device;
        false
    }
}

/// Switches ember's GPU kernels on (the default) or off, for the whole process: off, the GPU
/// backends compose Burn's tensor ops as the other backends do. For a benchmark that measures
/// both in one run (`ember bench generate` on a GPU).
pub fn set_gpu_kernels(enabled: bool) {
    GPU_KERNELS.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// See [`set_gpu_kernels`].
pub(crate) static GPU_KERNELS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// The most keys [`fused_attention`] takes: its scores stay in the GPU's shared memory (4 bytes
/// each, within the 16 KiB every WebGPU device has).
pub const FUSED_ATTENTION_MAX_KEYS: usize = 2048;

/// Softmax over the last dimension of `x: [.., queries, keys]` (`keys ≥ queries`) with query
/// `i` attending to keys ≤ `i + keys − queries` (a causal mask), from Burn's ops: the hidden
/// scores set to `f32::MIN` (so that their weights are exactly 0), then a softmax over every
/// key. The composed attention's ([`causal_self_attention_composed`]); on the CPU backend
/// [`causal_self_attention`]'s kernel applies the mask inside its own softmax.
pub fn softmax_causal<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let (queries, keys) = (dims[D - 2], dims[D - 1]);
    assert!(
        keys >= queries,
        "causal softmax: {queries} queries over {keys} keys"
    );
    let future = future_mask(queries, keys, &x.device());
    let mut shape = [1; D];
    shape[D - 2] = queries;
    shape[D - 1] = keys;
    let future = future.reshape(shape).expand(dims);
    burn::tensor::activation::softmax(x.mask_fill(future, f32::MIN), D - 1)
}

/// `[queries, keys]`, true where query `i` must not see key `j`: `j > i + keys − queries`, the
/// future of queries that come after `keys − queries` earlier (cached) positions.
pub(crate) fn future_mask(queries: usize, keys: usize, device: &Device) -> Tensor<2, Bool> {
    Tensor::<2, Bool>::tril_mask([queries, keys], (keys - queries) as i64, device)
}

/// Head `part` (0 queries, 1 keys, 2 values) of a fused projection `qkv: [batch, seq, 3·emb]`
/// as a view `[batch, heads, seq, head_dim]`.
pub(crate) fn qkv_heads(qkv: &Tensor<3>, heads: usize, part: usize) -> Tensor<4> {
    let [batch, seq, width] = qkv.dims();
    let emb = width / 3;
    qkv.clone()
        .narrow(2, part * emb, emb)
        .reshape([batch, seq, heads, emb / heads])
        .swap_dims(1, 2)
}

/// Causal self-attention of a fused projection, as GPT computes it: `qkv: [batch, seq, 3·emb]`
/// holds the queries, keys and values side by side (each `emb = heads·head_dim` wide, head
/// after head) → `[batch, seq, emb]`, the heads merged: `softmax(q·kᵀ/√head_dim)` with query
/// `i` seeing keys `≤ i`, dropout of probability `drop_prob` on the weights (0 outside
/// training), times `v`.
///
/// On the CPU backend one kernel per (sequence, head) reads the heads where the projection put
/// them and writes the output's and, backward, the projection's gradient in one piece each,
/// skipping most of the hidden keys' products; the composed form
/// ([`causal_self_attention_composed`], used elsewhere) copies the heads out and back and
/// builds the projection's gradient from three zero-filled thirds added together, on one
/// thread. The dropout mask is [`dropout`]'s over the `[batch, heads, seq, seq]` weights.
pub fn causal_self_attention(qkv: Tensor<3>, heads: usize, drop_prob: f64) -> Tensor<3> {
    check_projection_width(qkv.dims()[2], heads);
    assert!(
        (0.0..1.0).contains(&drop_prob),
        "dropout probability {drop_prob} is not in [0, 1)"
    );
    #[cfg(feature = "flex")]
    if fused::runs_on(qkv.dtype(), &qkv.device()) {
        let seed = match drop_prob > 0.0 {
            true => draw_seed(&qkv.device()),
            false => 0,
        };
        return fused::causal_attention(qkv, heads, seed, drop_prob);
    }
    #[cfg(feature = "cube")]
    if drop_prob == 0.0 && gpu::attention_runs_on(&qkv, qkv.dims()[1]) {
        return gpu::causal_attention(qkv, heads);
    }
    causal_self_attention_composed(qkv, heads, drop_prob)
}

/// Panics unless a projection `width` wide holds queries, keys and values of `heads` heads.
pub(crate) fn check_projection_width(width: usize, heads: usize) {
    assert!(
        heads > 0 && width.is_multiple_of(3 * heads),
        "attention: a projection {width} wide does not hold queries, keys and values of {heads} heads"
    );
}

/// [`causal_self_attention`] from tensor ops: the heads narrowed out of the projection, a
/// batched product for the scores, [`softmax_causal`], [`dropout`], a batched product with the
/// values, the heads merged back.
pub fn causal_self_attention_composed(qkv: Tensor<3>, heads: usize, drop_prob: f64) -> Tensor<3> {
    let [batch, seq, width] = qkv.dims();
    let emb = width / 3;
    let head_dim = emb / heads;
    let part = |i: usize| qkv_heads(&qkv, heads, i); // [batch, heads, seq, head_dim]
    let scores = matmul_batched(
        part(0).div_scalar((head_dim as f32).sqrt()),
        part(1).swap_dims(2, 3),
    );
    let weights = dropout(softmax_causal(scores), drop_prob);
    matmul_batched(weights, part(2))
        .swap_dims(1, 2)
        .reshape([batch, seq, emb])
}

/// Inverted dropout: each element zeroed with probability `prob` (in `[0, 1)`), the others
/// scaled by `1 / (1 − prob)`. Any shape. On the CPU backend one multi-threaded pass whose
/// mask is a hash of the element's index and a seed drawn from the device's generator (so
/// `device.seed(..)` makes it repeatable), and whose backward regenerates the mask instead of
/// keeping it; Burn's `Dropout` samples the mask on one thread (15% of a gpt2-small training
/// step at `drop_rate` 0.1) and keeps it as a float tensor for the backward pass. Elsewhere
/// [`dropout_composed`].
pub fn dropout<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    assert!(
        (0.0..1.0).contains(&prob),
        "dropout probability {prob} is not in [0, 1)"
    );
    if prob == 0.0 {
        return x;
    }
    #[cfg(feature = "flex")]
    if fused::runs_on(x.dtype(), &x.device()) {
        let seed = draw_seed(&x.device());
        return fused::dropout(x, seed, prob);
    }
    dropout_composed(x, prob)
}

/// [`dropout`] from Burn's tensor ops, as Burn's `Dropout` computes it: a Bernoulli mask.
pub fn dropout_composed<const D: usize>(x: Tensor<D>, prob: f64) -> Tensor<D> {
    let keep = 1.0 - prob;
    let mask = x.random_like(Distribution::Bernoulli(keep));
    x * mask * (1.0 / keep)
}

/// 64 random bits from the device's generator: four uniform draws of 16 bits each.
#[cfg(feature = "flex")]
fn draw_seed(device: &Device) -> u64 {
    let draws = Tensor::<1>::random([4], Distribution::Default, device).into_data();
    draws
        .iter::<f32>()
        .fold(0u64, |seed, u| (seed << 16) | (u * 65536.0) as u64 & 0xffff)
}

/// `[1]`: the sum of the squares of all elements of `x`, as gradient clipping needs per
/// gradient. On the CPU backend one pass on all threads, without the squared copy that
/// `x.powi_scalar(2).sum()` allocates. Not differentiable.
pub fn squared_sum<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    #[cfg(feature = "flex")]
    if fused::runs_on(x.dtype(), &x.device()) {
        return fused::squared_sum(x);
    }
    x.powi_scalar(2).sum()
}

/// `x · factor`. On the CPU backend on all threads, in place where `x`'s storage is its own
/// (as a gradient's is). Not differentiable.
pub fn scale<const D: usize>(x: Tensor<D>, factor: f32) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if fused::runs_on(x.dtype(), &x.device()) {
        return fused::scale(x, factor);
    }
    x.mul_scalar(factor)
}

/// Rows of `table: [vocab, emb]` at `ids: [batch, seq]` → `[batch, seq, emb]`: an embedding
/// lookup. On the CPU backend the rows are copied on all threads and the table's gradient is
/// built by zeroing it on all threads and adding the output's gradient into the looked-up rows;
/// Burn's backward zero-fills the table and copies it once more to realign it, on one thread
/// (150 MB per step for GPT-2's vocabulary). Ids must lie in `0..vocab`.
pub fn embedding(table: Tensor<2>, ids: Tensor<2, Int>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if fused::runs_on(table.dtype(), &table.device()) {
        return fused::embedding(table, ids);
    }
    burn::tensor::module::embedding(table, ids)
}

/// LayerNorm over the last dimension (biased variance, `epsilon` inside the square root, as
/// PyTorch and Burn): `(x − mean)/√(var + ε)·gamma + beta`, `gamma`, `beta: [width]`. On the CPU
/// backend one pass over the rows on all threads whose backward gives `dx`, `dγ` and `dβ` in one
/// more; Burn's, under autodiff, is about ten single-threaded tensor ops forward and more
/// backward, each allocating an activation-sized tensor. Elsewhere [`layer_norm_composed`].
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if fused::runs_on(x.dtype(), &x.device()) {
        return fused::layer_norm(x, gamma, beta, epsilon);
    }
    #[cfg(feature = "cube")]
    if gpu::runs_on(x.dtype(), &x.device()) {
        return gpu::layer_norm(x, gamma, beta, epsilon);
    }
    layer_norm_composed(x, gamma, beta, epsilon)
}

/// `(sum, layer_norm(sum))` for `sum = residual + (branch + bias)`, `bias`, `gamma`, `beta:
/// [width]` along the last dimension: a transformer block's shortcut sum and the LayerNorm
/// that reads it next. On a GPU (inference) one kernel instead of two, which also writes the
/// sum for the next shortcut; elsewhere [`add_bias_residual`] then [`layer_norm`].
pub fn add_bias_residual_layer_norm<const D: usize>(
    branch: Tensor<D>,
    bias: Tensor<1>,
    residual: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<D>, Tensor<D>) {
    #[cfg(feature = "cube")]
    if gpu::all_run_on(&[&branch, &residual], &[&bias, &gamma, &beta]) {
        return gpu::add_bias_residual_layer_norm(branch, bias, residual, gamma, beta, epsilon);
    }
    let sum = add_bias_residual(branch, Some(bias), residual);
    (sum.clone(), layer_norm(sum, gamma, beta, epsilon))
}

/// [`layer_norm`] by Burn's op.
pub fn layer_norm_composed<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    burn::tensor::module::layer_norm(x, gamma, Some(beta), epsilon)
}

/// Negative log-likelihood of each row's target class: `logits: [n, classes]`, `targets: [n]`
/// → `[n]`, `logsumexp(row) − row[target]`, and 0 for rows whose target is negative (PyTorch's
/// `ignore_index = -100` convention). Targets must be below `classes`.
pub fn nll_rows(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    #[cfg(feature = "flex")]
    if fused::runs_on(logits.dtype(), &logits.device()) {
        return fused::nll_rows(logits, targets);
    }
    nll_rows_composed(logits, targets)
}

/// [`nll_rows`] from Burn's tensor ops (log-softmax and gather).
pub fn nll_rows_composed(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [n, _classes] = logits.dims();
    let keep = targets.clone().greater_equal_elem(0); // [n]
    let safe_targets = targets
        .mask_fill(keep.clone().bool_not(), 0)
        .reshape([n, 1]);
    let picked = log_softmax(logits, 1).gather(1, safe_targets).reshape([n]); // log p(target)
    picked.neg() * keep.float()
}

/// Settings of one AdamW step (PyTorch's `AdamW`: decoupled weight decay, bias-corrected
/// moments, `eps` added after the square root).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// Steps taken including this one (1 on the first), for the bias corrections.
    pub time: usize,
}

/// One AdamW update: `(param, moment_1, moment_2)` after the step. On the CPU backend one fused
/// pass, in place where the tensors are not shared; elsewhere [`adamw_update_composed`].
pub fn adamw_update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    #[cfg(feature = "flex")]
    if fused::runs_on(param.dtype(), &param.device()) {
        return fused::adamw_update(param, grad, moment_1, moment_2, step);
    }
    adamw_update_composed(param, grad, moment_1, moment_2, step)
}

/// [`adamw_update`] from Burn's tensor ops, in the order of operations of Burn's `AdamW`.
pub fn adamw_update_composed<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let time = step.time.min(i32::MAX as usize) as i32;
    let moment_1 = moment_1 * step.beta_1 + grad.clone() * (1.0 - step.beta_1);
    let moment_2 = moment_2 * step.beta_2 + grad.square() * (1.0 - step.beta_2);
    let corrected_1 = moment_1.clone() / (1.0 - step.beta_1.powi(time));
    let corrected_2 = moment_2.clone() / (1.0 - step.beta_2.powi(time));
    let update = corrected_1 / (corrected_2.sqrt() + step.epsilon);
    let decayed = param * (1.0 - step.lr * step.weight_decay as f64);
    (decayed - update * step.lr, moment_1, moment_2)
}

#[cfg(all(test, feature = "wgpu"))]
mod gpu_tests;
#[cfg(test)]
mod tests;
