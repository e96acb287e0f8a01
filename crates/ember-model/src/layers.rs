//! Building blocks shared by the model families: multi-head scaled dot-product attention and
//! the output head tied to a token embedding.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::activation::softmax;

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
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .div_scalar((head_dim as f32).sqrt())
        .mask_fill(hide, f32::MIN); // [batch, heads, queries, keys]
    let weights = dropout.forward(softmax(scores, 3));
    weights
        .matmul(v) // [batch, heads, queries, head_dim]
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
/// an embedding table `[vocab, emb]`. Computed as (table · hiddenᵀ)ᵀ: multiplying by the
/// transposed table makes the CPU backend copy all of it (150 MB for GPT-2, 100 ms) on every
/// call, while transposing hidden and the result is cheap.
pub fn tied_logits(hidden: Tensor<3>, table: Tensor<2>) -> Tensor<3> {
    let [batch, seq, emb] = hidden.dims();
    let vocab = table.dims()[0];
    table
        .matmul(hidden.reshape([batch * seq, emb]).transpose()) // [vocab, batch·seq]
        .transpose()
        .reshape([batch, seq, vocab])
}
