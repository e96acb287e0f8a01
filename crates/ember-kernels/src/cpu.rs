//! The kernels on plain `f32` slices, split across rayon's threads (the pool the flex backend's
//! own kernels use).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::AdamWStep;

/// Elements per parallel task: large enough that scheduling costs nothing, small enough that
/// two threads share a `[512, 3072]` activation evenly.
const CHUNK: usize = 1 << 14;

const GELU_A: f32 =
    (2.0 * core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2) as f32;
const GELU_B: f32 = GELU_A * 0.044715;

/// A vector of `len` values, each written once by `fill(start, chunk)` for the chunk of
/// indices `start..start + chunk.len()`; the chunks run in parallel.
fn par_collect(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, part)| fill(i * chunk, part));
    // SAFETY: `fill` wrote every element of the `len` spare slots (each chunk fully).
    unsafe { out.set_len(len) };
    out
}

/// `e^x` for `f32`, written so that loops over slices vectorise (no branches, no calls): the
/// libm `expf` the kernels used is a call per element, and the cross-entropy alone takes two
/// exponentials per logit (`[tokens, 50257]` per step: 12% of gpt-tiny's step in `expf`,
/// perf). Cephes' method: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-7 polynomial for
/// `e^r`, then `2^n` built from its exponent bits (in two halves, so that every `n` from −126
/// to 128 is a normal float). Relative error ≤ 2 ulp (tested against `f64::exp`); results
/// below the smallest normal float are 0 (exactly 0 for masked scores at `f32::MIN`), above
/// `f32::MAX` infinity, and NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOW: f32 = -87.336_54; // ln(f32::MIN_POSITIVE)
    const HIGH: f32 = 88.722_84; // ln(f32::MAX)
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    // Comparisons, not min/max, so that NaN passes through (measured a little faster than
    // `f32::clamp`, which does the same).
    #[allow(clippy::manual_clamp)]
    let z = if x < LOW {
        LOW
    } else if x > HIGH {
        HIGH
    } else {
        x
    };
    let rounded = z * core::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = z - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes' 5.0000001201e-1, which rounds to 0.5 in f32
    let e_r = p * r * r + r + 1.0;
    // The integer `n` read from the bits of `rounded` (`1.5·2²³ + n`, exact: one ulp there is
    // 1), not by `n as i32`: Rust's saturating float-to-int cast does not vectorise (LLVM
    // turned it into a scalar convert, compare and insert per element: a third of the
    // cross-entropy's time, perf). Wrapping arithmetic: for NaN the bits are meaningless, and
    // the result is NaN through `e_r` anyway.
    let n = (rounded.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = n >> 1;
    let scale = |k: i32| f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = e_r * scale(half) * scale(n - half);
    if x < LOW {
        0.0
    } else if x > HIGH {
        f32::INFINITY
    } else {
        y
    }
}

/// The largest value of `row` (−∞ for an empty row; NaN elements are skipped, as `f32::max`
/// does), in 16 independent lanes so that it vectorises.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// `Σ e^(v − shift)` over `row`, optionally writing each term to `out`, in 16 lanes.
#[inline(always)]
fn exp_sum(row: &[f32], shift: f32, mut out: Option<&mut [MaybeUninit<f32>]>) -> f32 {
    let mut lanes = [0.0f32; 16];
    let whole = row.len() / 16 * 16;
    for (c, chunk) in row[..whole].chunks_exact(16).enumerate() {
        let mut terms = [0.0f32; 16];
        for ((t, lane), &v) in terms.iter_mut().zip(lanes.iter_mut()).zip(chunk) {
            *t = exp(v - shift);
            *lane += *t;
        }
        if let Some(out) = out.as_deref_mut() {
            for (o, &t) in out[c * 16..c * 16 + 16].iter_mut().zip(&terms) {
                o.write(t);
            }
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for (i, &v) in row.iter().enumerate().skip(whole) {
        let t = exp(v - shift);
        sum += t;
        if let Some(out) = out.as_deref_mut() {
            out[i].write(t);
        }
    }
    sum
}

#[inline(always)]
fn sigmoid(u: f32) -> f32 {
    1.0 / (1.0 + exp(-u))
}

/// `x·σ(A·x + B·x³)` element-wise.
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    par_collect(x.len(), CHUNK, |start, out| {
        simd::dispatch(
            #[inline(always)]
            || {
                for (o, &x) in out.iter_mut().zip(&x[start..]) {
                    o.write(x * sigmoid(x * (GELU_A + GELU_B * x * x)));
                }
            },
        )
    })
}

/// The gradient of [`gelu_tanh`] at `x` times `grad`: with `s = σ(u)`, `u = A·x + B·x³`,
/// `d/dx [x·s] = s + x·s·(1 − s)·(A + 3B·x²)`.
pub fn gelu_tanh_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), grad.len(), "gelu_tanh_backward: shapes differ");
    par_collect(x.len(), CHUNK, |start, out| {
        let end = start + out.len();
        simd::dispatch(
            #[inline(always)]
            || {
                for ((o, &x), &g) in out.iter_mut().zip(&x[start..end]).zip(&grad[start..end]) {
                    let x2 = x * x;
                    let s = sigmoid(x * (GELU_A + GELU_B * x2));
                    o.write(g * s * (1.0 + x * (1.0 - s) * (GELU_A + 3.0 * GELU_B * x2)));
                }
            },
        )
    })
}

/// A dropout mask as a function of `(seed, element index)`, so that the backward pass
/// regenerates the forward's mask instead of keeping it: element `i` is kept when
/// [`dropout_bits`] of `i` is at least `threshold` (`⌊p·2³²⌉` for drop probability `p`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    pub seed: u64,
    pub threshold: u32,
    /// `1 / (1 − p)`: kept elements are scaled so the expected value is unchanged.
    pub scale: f32,
}

impl DropoutMask {
    /// The mask of drop probability `prob` (in `[0, 1)`) drawn with `seed`.
    pub fn new(seed: u64, prob: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&prob),
            "dropout probability {prob} is not in [0, 1)"
        );
        Self {
            seed,
            threshold: (prob * 4_294_967_296.0).round().min(u32::MAX as f64) as u32,
            scale: (1.0 / (1.0 - prob)) as f32,
        }
    }
}

/// murmur3's 32-bit finaliser: every input bit flips each output bit with probability ~½.
#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// 32 random bits for the element whose index has low half `low` in a block keyed by `key`:
/// two finaliser rounds over 32-bit words, which vectorise (8 elements per AVX2 instruction;
/// a 64-bit multiply does not), where a sequential generator would run on one thread.
#[inline(always)]
fn dropout_bits(low: u32, key: [u32; 2]) -> u32 {
    fmix32(fmix32(low.wrapping_mul(0x9e37_79b1) ^ key[0]) ^ key[1])
}

/// The key of the `2³²`-element block `high` (the index's high half) under `seed`.
fn dropout_key(seed: u64, high: u32) -> [u32; 2] {
    [
        seed as u32,
        fmix32((seed >> 32) as u32 ^ fmix32(high.wrapping_add(0x68e3_1da4))),
    ]
}

/// The factor of element `start + i` for `i` in a chunk starting at `start`: `scale` where the
/// mask keeps it, else 0. Dropped elements are multiplied by 0, as the composed form does (a
/// NaN stays NaN). Chunks of [`CHUNK`] never straddle a `2³²`-element block.
#[inline(always)]
fn dropout_factors(mask: DropoutMask, start: usize) -> impl Fn(usize) -> f32 {
    let key = dropout_key(mask.seed, (start as u64 >> 32) as u32);
    let low = start as u32;
    #[inline(always)]
    move |i| {
        let keep = dropout_bits(low.wrapping_add(i as u32), key) >= mask.threshold;
        if keep { mask.scale } else { 0.0 }
    }
}

/// Inverted dropout of `x` (its elements in row-major order) under `mask`. The backward pass is
/// the same function applied to the output's gradient.
pub fn dropout(x: &[f32], mask: DropoutMask) -> Vec<f32> {
    par_collect(x.len(), CHUNK, |start, out| {
        let values = &x[start..start + out.len()];
        simd::dispatch(
            #[inline(always)]
            || {
                let factor = dropout_factors(mask, start);
                for (i, (o, &v)) in out.iter_mut().zip(values).enumerate() {
                    o.write(v * factor(i));
                }
            },
        )
    })
}

/// [`dropout`] in place.
pub fn dropout_in_place(x: &mut [f32], mask: DropoutMask) {
    x.par_chunks_mut(CHUNK).enumerate().for_each(|(c, part)| {
        simd::dispatch(
            #[inline(always)]
            || {
                let factor = dropout_factors(mask, c * CHUNK);
                for (i, v) in part.iter_mut().enumerate() {
                    *v *= factor(i);
                }
            },
        )
    });
}

/// `Σ x²` in `f64` (a gradient's share of the global norm), the chunks on all threads.
pub fn squared_sum(x: &[f32]) -> f64 {
    let chunks: Vec<f64> = x
        .par_chunks(CHUNK)
        // f32 within a chunk, f64 across chunks.
        .map(|chunk| {
            simd::dispatch(
                #[inline(always)]
                || dot(chunk, chunk) as f64,
            )
        })
        .collect();
    // Added in chunk order: the same bits whatever the thread count.
    chunks.iter().sum()
}

/// `x · factor` in place.
pub fn scale_in_place(x: &mut [f32], factor: f32) {
    x.par_chunks_mut(CHUNK).for_each(|part| {
        simd::dispatch(
            #[inline(always)]
            || part.iter_mut().for_each(|v| *v *= factor),
        )
    });
}

/// Rows `ids` of `table` (rows of `width`), on all threads. Panics on an id outside the table.
pub fn gather_rows(table: &[f32], width: usize, ids: &[i64]) -> Vec<f32> {
    let rows = table.len() / width.max(1);
    par_collect(ids.len() * width, row_chunk(width), |start, out| {
        let first = start / width.max(1);
        for (i, out) in out.chunks_mut(width).enumerate() {
            let id = ids[first + i];
            let row = usize::try_from(id)
                .ok()
                .filter(|&r| r < rows)
                .unwrap_or_else(|| panic!("token id {id} is outside the embedding's {rows} rows"));
            for (o, &v) in out.iter_mut().zip(&table[row * width..(row + 1) * width]) {
                o.write(v);
            }
        }
    })
}

/// The gradient of [`gather_rows`]: a `[rows, width]` table of zeros (zeroed on all threads)
/// with each row of `grad` added into row `ids[i]`, in order (repeated ids accumulate).
pub fn scatter_add_rows(grad: &[f32], width: usize, ids: &[i64], rows: usize) -> Vec<f32> {
    let mut table = par_collect(rows * width, CHUNK, |_, out| {
        out.fill(MaybeUninit::new(0.0));
    });
    for (&id, g) in ids.iter().zip(grad.chunks(width.max(1))) {
        let row = id as usize; // checked by the forward pass
        for (t, &g) in table[row * width..(row + 1) * width].iter_mut().zip(g) {
            *t += g;
        }
    }
    table
}

/// LayerNorm of each row of `width`: `(x − μ)·r·γ + β` with the row's mean `μ` and
/// `r = 1/√(σ² + ε)` (biased variance, as PyTorch), on all threads. Returns the output and each
/// row's `[μ, r]`, which the backward pass reuses.
pub fn layer_norm_rows(
    x: &[f32],
    width: usize,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        gamma.len() == width && beta.len() == width,
        "layer_norm: γ/β of the wrong width"
    );
    let rows = x.len() / width.max(1);
    let chunk_rows = row_chunk(width) / width.max(1);
    let mut out: Vec<f32> = Vec::with_capacity(x.len());
    let mut stats = vec![0.0f32; 2 * rows];
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(row_chunk(width))
        .zip(stats.par_chunks_mut(2 * chunk_rows))
        .enumerate()
        .for_each(|(c, (out, stats))| {
            let first = c * chunk_rows * width;
            simd::dispatch(
                #[inline(always)]
                || {
                    let rows = out.chunks_mut(width).zip(stats.chunks_mut(2));
                    for (r, (out, stat)) in rows.enumerate() {
                        let row = &x[first + r * width..first + (r + 1) * width];
                        let mean = lane_sum(row, |v| v) / width as f32;
                        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / width as f32;
                        let rstd = 1.0 / (var + epsilon).sqrt();
                        for (((o, &v), &g), &b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
                            o.write((v - mean) * rstd * g + b);
                        }
                        stat.copy_from_slice(&[mean, rstd]);
                    }
                },
            )
        });
    // SAFETY: every row of every chunk was written just above.
    unsafe { out.set_len(x.len()) };
    (out, stats)
}

/// `Σ f(v)` over `row` in 16 lanes, so that it vectorises.
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let whole = row.chunks_exact(16);
    let tail: f32 = whole.remainder().iter().map(|&v| f(v)).sum();
    for part in whole {
        for (lane, &v) in lanes.iter_mut().zip(part) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The gradients `(dx, dγ, dβ)` of [`layer_norm_rows`] from the output's gradient `dy`, with
/// `x̂ = (x − μ)·r`: `dβ = Σ_rows dy`, `dγ = Σ_rows dy·x̂`, and per row with `g = dy·γ`:
/// `dx = r·(g − mean(g) − x̂·mean(g·x̂))`. The column sums are per chunk of rows, added in
/// chunk order (the same bits on any thread count).
pub fn layer_norm_rows_backward(
    x: &[f32],
    width: usize,
    gamma: &[f32],
    stats: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(
        x.len() == dy.len() && gamma.len() == width,
        "layer_norm_backward: shapes differ"
    );
    let chunk_rows = row_chunk(width) / width.max(1);
    let mut dx: Vec<f32> = Vec::with_capacity(x.len());
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(row_chunk(width))
        .enumerate()
        .map(|(c, dx)| {
            let first = c * chunk_rows;
            let (mut dgamma, mut dbeta) = (vec![0.0f32; width], vec![0.0f32; width]);
            simd::dispatch(
                #[inline(always)]
                || {
                    for (r, dx) in dx.chunks_mut(width).enumerate() {
                        let at = (first + r) * width;
                        let (row, dy) = (&x[at..at + width], &dy[at..at + width]);
                        let (mean, rstd) = (stats[2 * (first + r)], stats[2 * (first + r) + 1]);
                        let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
                        for j in 0..width {
                            let xhat = (row[j] - mean) * rstd;
                            let g = dy[j] * gamma[j];
                            sum_g += g;
                            sum_gx += g * xhat;
                            dgamma[j] += dy[j] * xhat;
                            dbeta[j] += dy[j];
                        }
                        let (mean_g, mean_gx) = (sum_g / width as f32, sum_gx / width as f32);
                        for (j, o) in dx.iter_mut().enumerate() {
                            let xhat = (row[j] - mean) * rstd;
                            o.write(rstd * (dy[j] * gamma[j] - mean_g - xhat * mean_gx));
                        }
                    }
                },
            );
            (dgamma, dbeta)
        })
        .collect();
    // SAFETY: every row of every chunk was written just above.
    unsafe { dx.set_len(x.len()) };
    let (mut dgamma, mut dbeta) = (vec![0.0f32; width], vec![0.0f32; width]);
    for (g, b) in &partials {
        dgamma.iter_mut().zip(g).for_each(|(t, v)| *t += v);
        dbeta.iter_mut().zip(b).for_each(|(t, v)| *t += v);
    }
    (dx, dgamma, dbeta)
}

/// Whole rows of `width` per parallel task, about [`CHUNK`] elements.
fn row_chunk(width: usize) -> usize {
    let width = width.max(1); // empty rows: any non-zero chunk (there is nothing to split)
    width * (CHUNK / width).max(1)
}

/// Softmax of each row of `width` values.
pub fn softmax_rows(x: &[f32], width: usize) -> Vec<f32> {
    par_collect(x.len(), row_chunk(width), |start, out| {
        let rows = x[start..start + out.len()].chunks(width);
        simd::dispatch(
            #[inline(always)]
            || {
                for (row, out) in rows.zip(out.chunks_mut(width)) {
                    let max = row_max(row);
                    let sum = exp_sum(row, max, Some(&mut *out));
                    let inv = 1.0 / sum;
                    for o in out.iter_mut() {
                        // SAFETY: written by `exp_sum` just above.
                        let e = unsafe { o.assume_init() };
                        o.write(e * inv);
                    }
                }
            },
        )
    })
}

/// The gradient of [`softmax_rows`] from its output `y` and the output's gradient:
/// `y·(grad − Σ grad·y)` row by row.
pub fn softmax_rows_backward(y: &[f32], grad: &[f32], width: usize) -> Vec<f32> {
    assert_eq!(y.len(), grad.len(), "softmax_rows_backward: shapes differ");
    par_collect(y.len(), row_chunk(width), |start, out| {
        let end = start + out.len();
        for ((y, g), out) in y[start..end]
            .chunks(width)
            .zip(grad[start..end].chunks(width))
            .zip(out.chunks_mut(width))
        {
            let y_dot_g = dot(y, g);
            for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
                o.write(y * (g - y_dot_g));
            }
        }
    })
}

/// Causal softmax in place of the rows of one head's `[seq, seq]` scores in `block` (whole
/// rows of `seq`, the first of them query `first`): query `i` keeps weights over keys `≤ i`
/// and zeros after them. The same arithmetic as [`softmax_rows`] over each query's visible keys.
pub fn softmax_causal_rows_in_place(block: &mut [f32], seq: usize, first: usize) {
    simd::dispatch(
        #[inline(always)]
        || {
            for (r, row) in block.chunks_mut(seq).enumerate() {
                let (seen, hidden) = row.split_at_mut(first + r + 1);
                let max = row_max(seen);
                let inv = 1.0 / exp_sum_in_place(seen, max);
                for v in seen.iter_mut() {
                    *v *= inv;
                }
                hidden.fill(0.0);
            }
        },
    )
}

/// [`exp_sum`] writing the terms over `row`.
#[inline(always)]
fn exp_sum_in_place(row: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (v, lane) in chunk.iter_mut().zip(lanes.iter_mut()) {
            *v = exp(*v - shift);
            *lane += *v;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        sum += *v;
    }
    sum
}

/// `row[j] ·= ` the factor of element `start + j` under `mask` (as [`dropout`] of a tensor
/// whose element `start` is `row[0]`), in pieces that do not straddle a `2³²`-element block.
#[inline(always)]
fn dropout_row_in_place(row: &mut [f32], mask: DropoutMask, start: usize) {
    let mut done = 0;
    while done < row.len() {
        let index = start + done;
        let left_in_block = (1u64 << 32) - (index as u64 & 0xffff_ffff);
        let len = left_in_block.min((row.len() - done) as u64) as usize;
        let factor = dropout_factors(mask, index);
        for (i, v) in row[done..done + len].iter_mut().enumerate() {
            *v *= factor(i);
        }
        done += len;
    }
}

/// The first `cols` values of each row of `src` (whole rows of `seq`) with dropout under
/// `mask` into the same places of `dst`, row `r`'s first value being element `index + r·seq`
/// of the tensor the mask is drawn over.
pub fn dropout_rows_into(
    src: &[f32],
    dst: &mut [f32],
    seq: usize,
    cols: usize,
    mask: DropoutMask,
    index: usize,
) {
    simd::dispatch(
        #[inline(always)]
        || {
            for (r, (src, dst)) in src.chunks(seq).zip(dst.chunks_mut(seq)).enumerate() {
                let dst = &mut dst[..cols];
                dst.copy_from_slice(&src[..cols]);
                dropout_row_in_place(dst, mask, index + r * seq);
            }
        },
    )
}

/// The scores' gradient from the weights' in place, for the rows of [`softmax_causal_rows_in_place`]
/// (query `first` first) whose gradient `grads` holds over keys `..end` (the block's last
/// query + 1): with `dropout = Some((mask, index))` the gradient first passes the forward's
/// dropout (row `r` at element `index + r·seq`), then `w·(g − Σ w·g)` over each query's
/// visible keys, and zeros over its hidden keys up to `end`.
pub fn softmax_causal_backward_rows_in_place(
    weights: &[f32],
    grads: &mut [f32],
    seq: usize,
    first: usize,
    end: usize,
    dropout: Option<(DropoutMask, usize)>,
) {
    simd::dispatch(
        #[inline(always)]
        || {
            for (r, (w, g)) in weights.chunks(seq).zip(grads.chunks_mut(seq)).enumerate() {
                let (g, hidden) = g[..end].split_at_mut(first + r + 1);
                let w = &w[..g.len()];
                if let Some((mask, index)) = dropout {
                    dropout_row_in_place(g, mask, index + r * seq);
                }
                let w_dot_g = dot(w, g);
                for (g, &w) in g.iter_mut().zip(w) {
                    *g = w * (*g - w_dot_g);
                }
                hidden.fill(0.0);
            }
        },
    )
}

/// `logsumexp` of one row, in two passes (max, then the shifted sum).
#[inline(always)]
fn logsumexp(row: &[f32]) -> f32 {
    let max = row_max(row);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + exp_sum(row, max, None).ln()
}

fn check_target(target: i64, classes: usize, row: usize) {
    assert!(
        target < classes as i64,
        "cross-entropy: target {target} of row {row} is not below the {classes} classes"
    );
}

/// Per-row `(nll, logsumexp)` of `logits: [rows, classes]` (row-major): `nll = lse − x[t]`,
/// 0 where the target is negative.
pub fn nll_rows(logits: &[f32], classes: usize, targets: &[i64]) -> (Vec<f32>, Vec<f32>) {
    assert!(classes > 0, "cross-entropy over zero classes");
    assert_eq!(
        logits.len(),
        classes * targets.len(),
        "nll_rows: shapes differ"
    );
    let pairs: Vec<(f32, f32)> = logits
        .par_chunks(classes)
        .zip(targets.par_iter())
        .enumerate()
        .map(|(i, (row, &t))| {
            let lse = simd::dispatch(
                #[inline(always)]
                || logsumexp(row),
            );
            if t < 0 {
                (0.0, lse)
            } else {
                check_target(t, classes, i);
                (lse - row[t as usize], lse)
            }
        })
        .collect();
    pairs.into_iter().unzip()
}

/// The gradient of [`nll_rows`] with respect to the logits, written over the logits
/// (`[rows, classes]`, which the backward pass holds for nothing else): `grad[i]·(softmax(row
/// i) − onehot(t_i))`, a zero row where the target is negative. In place because at
/// `[tokens, 50257]` a new buffer is hundreds of MB of fresh pages each step (half the page
/// faults of a gpt-tiny step, perf).
pub fn nll_rows_backward_in_place(
    logits: &mut [f32],
    classes: usize,
    targets: &[i64],
    lse: &[f32],
    grad: &[f32],
) {
    let rows = targets.len();
    assert!(classes > 0, "cross-entropy over zero classes");
    assert_eq!(
        logits.len(),
        classes * rows,
        "nll_rows_backward: shapes differ"
    );
    assert!(
        lse.len() == rows && grad.len() == rows,
        "nll_rows_backward: shapes differ"
    );
    let chunk = row_chunk(classes);
    logits
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(c, part)| {
            for (j, row) in part.chunks_mut(classes).enumerate() {
                let i = c * (chunk / classes) + j;
                let t = targets[i];
                if t < 0 {
                    row.fill(0.0);
                    continue;
                }
                check_target(t, classes, i);
                let t = t as usize;
                let (g, lse) = (grad[i], lse[i]);
                let at_target = g * (exp(row[t] - lse) - 1.0);
                simd::dispatch(
                    #[inline(always)]
                    || {
                        for v in row.iter_mut() {
                            *v = g * exp(*v - lse);
                        }
                    },
                );
                row[t] = at_target;
            }
        });
}

/// One AdamW step over `param`, `moment_1`, `moment_2` in place, in the same order of
/// operations as Burn's `AdamW` (so results agree to rounding).
pub fn adamw_update(
    param: &mut [f32],
    grad: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    step: AdamWStep,
) {
    let n = param.len();
    assert!(
        grad.len() == n && moment_1.len() == n && moment_2.len() == n,
        "adamw_update: shapes differ"
    );
    let time = step.time.min(i32::MAX as usize) as i32;
    let (b1, b2, eps) = (step.beta_1, step.beta_2, step.epsilon);
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    let bias_1 = 1.0 - b1.powi(time);
    let bias_2 = 1.0 - b2.powi(time);
    let decay = (1.0 - step.lr * step.weight_decay as f64) as f32;
    let lr = step.lr as f32;
    param
        .par_chunks_mut(CHUNK)
        .zip(moment_1.par_chunks_mut(CHUNK))
        .zip(moment_2.par_chunks_mut(CHUNK))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| {
            for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                *m = *m * b1 + g * f1;
                *v = *v * b2 + g * g * f2;
                let update = (*m / bias_1) / ((*v / bias_2).sqrt() + eps);
                *p = *p * decay - update * lr;
            }
        });
}

/// Runs one few-rows product (the kernels below; a decoding step runs ~70 parallel ones per
/// token), then leaves rayon's other workers spinning until the next one starts, for at most
/// [`SPIN_BETWEEN_PRODUCTS`]. Why: between two products a decoding step runs its element-wise
/// work on one thread, at times long enough for rayon's idle workers to fall asleep, and
/// waking them delays the next product. Measured on 2 cores: 768×3072 products with 30–100 µs
/// of work on one thread between them streamed 31.0–35.0 GB/s without this and 33.9–39.8 with
/// it (34–35 with no gap); gpt2-small decoding 51.4 → 54.1 tokens/s (medians of 7 alternated
/// pairs, 5 faster, 2 even). Training steps of real configs do not reach these kernels (their
/// products have more than 8 rows), only the sample decoded after an epoch. With more than two
/// threads, a worker waiting inside another parallel operation in the gap can take a spinning
/// job and be held up to the time limit.
fn keeping_workers_awake<R>(product: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static PRODUCTS: AtomicUsize = AtomicUsize::new(0);
    let this = PRODUCTS.fetch_add(1, Relaxed).wrapping_add(1);
    let out = product();
    let caller = rayon::current_thread_index();
    for _ in 1..rayon::current_num_threads() {
        // A worker that takes this job spins until the next product starts (it then returns
        // and finds that product's tasks at once) or the time is up; a job taken after the
        // next product started returns at once, and so does one that the calling thread
        // takes itself while it waits inside some other parallel operation (it would hold up
        // the next product it is to start).
        rayon::spawn(move || {
            if rayon::current_thread_index() == caller {
                return;
            }
            let started = std::time::Instant::now();
            while PRODUCTS.load(Relaxed) == this && started.elapsed() < SPIN_BETWEEN_PRODUCTS {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
        });
    }
    out
}

/// How long [`keeping_workers_awake`] keeps a worker spinning after a product: longer than the
/// gaps inside a decoding step, short enough that an idle process stops spinning at once.
const SPIN_BETWEEN_PRODUCTS: std::time::Duration = std::time::Duration::from_millis(1);

/// A weight value as the few-rows products read it: `f32`, or bf16 (the upper half of an
/// `f32`'s bits), which halves the bytes a decoding step streams. Widening is exact.
pub trait Weight: Copy + Send + Sync {
    fn widen(self) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Weight for burn::tensor::bf16 {
    /// A shift, which vectorises (`half`'s conversion also quietens NaNs, a branch per value).
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// Rows of the right operand per parallel task of [`matmul_few_rows`]: a fixed size, so every
/// output is summed in the same order whatever the thread count, and small enough that GPT-2's
/// weights (768 or 3072 rows) split evenly over 2, 3, 4, 6 or 12 threads.
const ROWS_PER_TASK: usize = 64;

/// `lhs: [m, k]` · `rhs: [k, n]` (both row-major) for `m` ≤ [`crate::SPLIT_MAX_ROWS`] (a
/// decoding step): `rhs` is cut into blocks of [`ROWS_PER_TASK`] consecutive rows, each task
/// streams its block once, four rows at a time, into `m` partial output rows, and the partial
/// outputs are added in block order. Why not gemm: with one row there is nothing to reuse, the
/// product only reads the weight, and gemm's packing and single thread for small products
/// reach about two thirds of this machine's read bandwidth; contiguous blocks per thread are
/// what the hardware prefetchers stream fastest (column slices per thread measured ~15% slower).
///
/// `rhs` may be stored in bf16 ([`Weight`]): each value is widened to `f32` as it is read, so
/// the sums are bit for bit those of the `f32` product of the widened weight, from half the
/// bytes.
pub fn matmul_few_rows<W: Weight>(
    lhs: &[f32],
    m: usize,
    rhs: &[W],
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert!(
        lhs.len() == m * k && rhs.len() == k * n,
        "matmul_few_rows: shapes differ"
    );
    if m * n == 0 {
        return Vec::new();
    }
    let partials: Vec<Vec<f32>> = keeping_workers_awake(|| {
        (0..k.div_ceil(ROWS_PER_TASK).max(1))
            .into_par_iter()
            .map(|block| {
                let rows = block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(k);
                let mut acc = vec![0.0f32; m * n];
                simd::dispatch(
                    #[inline(always)]
                    || accumulate_rows(lhs, m, k, rhs, n, n, rows.clone(), &mut acc),
                );
                acc
            })
            .collect()
    });
    let mut partials = partials.into_iter();
    let mut out = partials.next().expect("at least one block");
    for partial in partials {
        for (o, p) in out.iter_mut().zip(&partial) {
            *o += p;
        }
    }
    out
}

/// Columns per step of [`accumulate_rows`], between two batches of prefetches. Why prefetch:
/// reading a bf16 weight costs twice the instructions per cache line of an f32 one, so the
/// out-of-order window covered half as many lines ahead and the bf16 products read 16 GB/s
/// where f32 read 24; asking for the next four rows while these are multiplied brought them
/// to 25 GB/s (GPT-2's block products 7.0 → 4.5 ms per token), f32 about even. That was an
/// Intel Xeon; see [`prefetch_ahead`] for where it is not done.
const PREFETCH_COLUMNS: usize = 256;

/// Whether the few-rows products ask for the `W` weight rows they read next ([`prefetch`]):
/// always for bf16 weights, and for `f32` ones except on AMD CPUs. On an AMD EPYC (Zen 3) the
/// hardware prefetchers alone streamed `f32` weights faster: gpt2-small decoding 1.05–1.29×
/// (median 1.12×, each of 6 alternated pairs faster), the block products' layout 1.11× and the
/// tied head's 1.11× (medians of 8 alternated rounds, each of the 8 faster); its bf16 decoding
/// was even with and without (0.86–1.09×), so bf16 keeps them everywhere.
fn prefetch_ahead<W>() -> bool {
    static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    std::mem::size_of::<W>() < 4 || !*AMD.get_or_init(cpu_vendor_is_amd)
}

/// Whether CPUID names the maker "AuthenticAMD" (false off x86-64).
fn cpu_vendor_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect();
        vendor == b"AuthenticAMD"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Asks the CPU to bring the cache lines of `values` into its caches (a hint: no effect on
/// results, none at all off x86-64).
#[inline(always)]
fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let bytes = std::mem::size_of_val(values);
        let first = values.as_ptr() as *const i8;
        for offset in (0..bytes).step_by(64) {
            // SAFETY: a prefetch only hints; the address lies inside `values`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    first.add(offset),
                )
            };
        }
    }
}

/// `acc[r] += Σ_{i ∈ rows} lhs[r, i] · rhs[i, ..]` for every row `r` of `lhs`; row `i` of `rhs`
/// is the `n` values from `i · row_stride`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_rows<W: Weight>(
    lhs: &[f32],
    m: usize,
    k: usize,
    rhs: &[W],
    n: usize,
    row_stride: usize,
    rows: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    let row = |i: usize| &rhs[i * row_stride..i * row_stride + n];
    let ahead = prefetch_ahead::<W>();
    let mut i = rows.start;
    while i + 4 <= rows.end {
        let (w0, w1, w2, w3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
        let mut start = 0;
        while start < n {
            let end = (start + PREFETCH_COLUMNS).min(n);
            // The next four rows' same columns, requested now so that they are on their way
            // while these are multiplied.
            for next in (i + 4..(i + 8).min(k)).filter(|_| ahead) {
                prefetch(&rhs[next * row_stride + start..next * row_stride + end]);
            }
            for r in 0..m {
                let x = &lhs[r * k + i..r * k + i + 4];
                let (x0, x1, x2, x3) = (x[0], x[1], x[2], x[3]);
                let acc = &mut acc[r * n + start..r * n + end];
                let (w0, w1, w2, w3) = (
                    &w0[start..end],
                    &w1[start..end],
                    &w2[start..end],
                    &w3[start..end],
                );
                for ((((a, &v0), &v1), &v2), &v3) in acc.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3)
                {
                    *a += x0 * v0.widen() + x1 * v1.widen() + x2 * v2.widen() + x3 * v3.widen();
                }
            }
            start = end;
        }
        i += 4;
    }
    for i in i..rows.end {
        let w = row(i);
        for r in 0..m {
            let x = lhs[r * k + i];
            for (a, &v) in acc[r * n..(r + 1) * n].iter_mut().zip(w) {
                *a += x * v.widen();
            }
        }
    }
}

/// `a · b` over equal-length slices, in 16 independent lanes (vectorised), then summed; `b`
/// widened to `f32` as it is read.
#[inline(always)]
fn dot<W: Weight>(a: &[f32], b: &[W]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y.widen())
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l].widen();
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Rows of `rhs` per parallel task of [`matmul_nt_few_rows`] (96 KB of GPT-2's table).
const TABLE_ROWS_PER_TASK: usize = 32;

/// `lhs: [m, k]` · `rhsᵀ` for `rhs: [n, k]` (both row-major) for `m` ≤
/// [`crate::SPLIT_MAX_ROWS`]: one dot product per output, along contiguous rows of `rhs` (a
/// tied head's embedding table), blocks of rows of `rhs` split across threads.
/// `rhs` may be stored in bf16, as for [`matmul_few_rows`].
pub fn matmul_nt_few_rows<W: Weight>(
    lhs: &[f32],
    m: usize,
    rhs: &[W],
    n: usize,
    k: usize,
) -> Vec<f32> {
    assert!(
        lhs.len() == m * k && rhs.len() == n * k,
        "matmul_nt_few_rows: shapes differ"
    );
    if m * n == 0 {
        return Vec::new();
    }
    let ahead = prefetch_ahead::<W>();
    // `[n, m]`: each task writes whole groups of `m` outputs, one group per row of `rhs`.
    let transposed = keeping_workers_awake(|| {
        par_collect(n * m, TABLE_ROWS_PER_TASK * m, |start, out| {
            let first = start / m;
            simd::dispatch(
                #[inline(always)]
                || {
                    for (j, out) in out.chunks_mut(m).enumerate() {
                        let row = &rhs[(first + j) * k..(first + j + 1) * k];
                        // Two rows ahead, on their way while this one is read: the tied
                        // head 7.4–8.6 → 6.7–6.8 ms per token in f32, bf16 3.0–5.0 → 2.4–3.1
                        // on an Intel Xeon (see `prefetch_ahead`).
                        if ahead && first + j + 2 < n {
                            prefetch(&rhs[(first + j + 2) * k..(first + j + 3) * k]);
                        }
                        for (r, o) in out.iter_mut().enumerate() {
                            o.write(dot(&lhs[r * k..(r + 1) * k], row));
                        }
                    }
                },
            )
        })
    });
    if m == 1 {
        return transposed;
    }
    let mut out = vec![0.0f32; m * n];
    for (j, group) in transposed.chunks_exact(m).enumerate() {
        for (r, &v) in group.iter().enumerate() {
            out[r * n + j] = v;
        }
    }
    out
}

/// One operand of [`matmul_few_rows_batched`]: `rows` rows of `len` contiguous values,
/// `stride` apart, from the start of `values`.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub values: &'a [f32],
    pub rows: usize,
    pub len: usize,
    pub stride: usize,
}

impl Rows<'_> {
    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.stride..i * self.stride + self.len]
    }
}

/// One product per batch element `(lhs, rhs)`: `lhs: [m, k]` row-major times `rhs`, whose rows
/// are `[k, n]`'s, or `[n, k]`'s read as its transpose when `transposed`, for `m` ≤
/// [`crate::SPLIT_MAX_ROWS`] → `[batch, m, n]`: attention's products for one query per head
/// (`rhs` a head of the key/value cache, or of a projection's output read in place), one batch
/// element per task.
pub fn matmul_few_rows_batched(
    pairs: &[(&[f32], Rows<'_>)],
    [m, k, n]: [usize; 3],
    transposed: bool,
) -> Vec<f32> {
    let rhs_shape = if transposed { (n, k) } else { (k, n) };
    assert!(
        pairs.iter().all(|(lhs, rhs)| lhs.len() == m * k
            && (rhs.rows, rhs.len) == rhs_shape
            && rhs.stride >= rhs.len
            && rhs.values.len() >= rhs.rows.saturating_sub(1) * rhs.stride + rhs.len),
        "matmul_few_rows_batched: shapes differ"
    );
    if m * n == 0 {
        return Vec::new();
    }
    keeping_workers_awake(|| {
        par_collect(pairs.len() * m * n, m * n, |start, out| {
            let (lhs, rhs) = pairs[start / (m * n)];
            simd::dispatch(
                #[inline(always)]
                || {
                    if transposed {
                        for (r, out) in out.chunks_mut(n).enumerate() {
                            let row = &lhs[r * k..(r + 1) * k];
                            for (j, o) in out.iter_mut().enumerate() {
                                o.write(dot(row, rhs.row(j)));
                            }
                        }
                    } else {
                        let mut acc = vec![0.0f32; m * n];
                        accumulate_rows(lhs, m, k, rhs.values, n, rhs.stride, 0..k, &mut acc);
                        for (o, &v) in out.iter_mut().zip(&acc) {
                            o.write(v);
                        }
                    }
                },
            )
        })
    })
}

/// Runs a kernel compiled for AVX-512F or AVX2 when the CPU has it (16 or 8 floats per
/// instruction instead of SSE2's 4: ~5–10% more read bandwidth measured for the few-rows
/// products with AVX2). The kernels use no fused multiply-add, so every build gives the same
/// bits.
mod simd {
    /// Runs `kernel` compiled for AVX-512F or AVX2, the widest the CPU has. Only code inlined
    /// into `kernel` gets them: every closure passed here is `#[inline(always)]`, as is every
    /// function it calls, or LLVM may keep it as a separate baseline (SSE2) function behind a
    /// jump. AVX-512 pays for the exponentials (the cross-entropy's logsumexp over
    /// `[2048, 50257]` logits 80 → 48 ms, GELU over `[2048, 4096]` 15.5 → 12 ms on a Xeon);
    /// measured before `exp` vectorised, it did not.
    #[inline(always)]
    pub fn dispatch<R>(kernel: impl FnOnce() -> R) -> R {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { avx512(kernel) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { avx2(kernel) };
        }
        kernel()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2<R>(kernel: impl FnOnce() -> R) -> R {
        kernel()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<R>(kernel: impl FnOnce() -> R) -> R {
        kernel()
    }
}
