//! Autoregressive text generation for GPT models.
//!
//! Prompts of different lengths run as one batch: each row is left-padded to the longest,
//! padding is hidden from attention and position ids count only a row's real tokens, so every
//! row computes what it would alone. With the key/value cache, the prompt is encoded once
//! (prefill) and each later step feeds one position per row. When a sequence reaches the
//! context length the window slides: each further step re-encodes the last `context_length`
//! tokens from position 0, exactly as the cache-free loop does (so it is no faster than it
//! from then on). Each row stops at its own end-of-text token and leaves the batch.

use burn::prelude::*;
use ember_data::rng::SplitMix64;

use crate::gpt::{Gpt, KvCache};
use crate::sampling::{SamplingConfig, sample_next};

/// What to generate and how.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Stop a sequence when it produces this token (not included in the output).
    pub eos_id: Option<u32>,
    /// Seed of the sampling random numbers; the same seed repeats the same text.
    pub seed: u64,
    /// Decode with a key/value cache (one position per step) instead of re-running the
    /// whole window every step. Both give the same tokens.
    pub use_cache: bool,
    /// Threads that share each cached step's matrix products ([`crate::layers::linear_split`]):
    /// the CPU thread count on CPU backends, 1 on GPUs (the backend parallelises itself).
    pub threads: usize,
}

/// The new tokens of each prompt, and whether its prompt had to be cropped to the context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub prompt_cropped: bool,
}

/// Generates continuations for `prompts` (token ids, each non-empty). `on_token(index, id)` is
/// called as soon as sequence `index` gets a token, so callers can stream text (from a thread
/// of rayon's pool when `options.threads > 1`).
pub fn generate(
    model: &Gpt,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    on_token: impl FnMut(usize, u32) + Send,
) -> Result<Vec<Generation>, String> {
    if options.threads > 1 {
        // Decoding on a worker of rayon's pool: a split product then hands its other slices to
        // workers still spinning from the last product instead of waking them from outside the
        // pool, 49 times per gpt2-small token (measured +2–7% tokens/s on 2 cores).
        rayon::scope(|_| generate_here(model, prompts, options, on_token))
    } else {
        generate_here(model, prompts, options, on_token)
    }
}

fn generate_here(
    model: &Gpt,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>, String> {
    options.sampling.validate()?;
    if let Some(index) = prompts.iter().position(Vec::is_empty) {
        return Err(format!(
            "prompt {} is empty: give at least one token",
            index + 1
        ));
    }
    let context = model.context_length();
    let device = model.device();
    let mut results: Vec<Generation> = prompts
        .iter()
        .map(|p| Generation {
            tokens: Vec::new(),
            prompt_cropped: p.len() > context,
        })
        .collect();
    // Every row's tokens so far; row r occupies the last `sequences[r].len()` of `width`
    // columns, the columns before are padding.
    let mut sequences: Vec<Vec<u32>> = prompts.to_vec();
    let mut width = sequences.iter().map(Vec::len).max().unwrap_or(0);
    // Original indices of the rows still generating, in batch order.
    let mut rows: Vec<usize> = (0..prompts.len()).collect();
    let mut cache = KvCache::with_threads(options.threads);
    let mut rng = SplitMix64::new(options.seed);

    for _ in 0..options.max_new_tokens {
        if rows.is_empty() {
            break;
        }
        let batch = rows.len();
        let pad = |r: usize| width - sequences[r].len();
        let incremental =
            options.use_cache && width <= context && !cache.is_empty() && cache.len() + 1 == width;
        let hidden = if incremental {
            // One new column; its position is the row's length so far.
            let ids: Vec<i64> = rows
                .iter()
                .map(|&r| i64::from(*sequences[r].last().expect("non-empty")))
                .collect();
            let positions: Vec<i64> = rows
                .iter()
                .map(|&r| sequences[r].len() as i64 - 1)
                .collect();
            let hide: Vec<bool> = rows
                .iter()
                .flat_map(|&r| (0..width).map(move |col| col < pad(r)))
                .collect();
            model.forward_cached(
                Tensor::from_data(TensorData::new(ids, [batch, 1]), &device),
                Tensor::from_data(TensorData::new(positions, [batch, 1]), &device),
                Tensor::from_data(TensorData::new(hide, [batch, 1, 1, width]), &device),
                &mut cache,
            )
        } else {
            // Encode the last `window` columns from scratch (prefill, slide, or no cache).
            let window = width.min(context);
            let first = width - window;
            let mut ids = Vec::with_capacity(batch * window);
            let mut positions = Vec::with_capacity(batch * window);
            let mut hide = Vec::with_capacity(batch * window * window);
            for &r in &rows {
                let mut real = 0i64;
                let mut is_pad = Vec::with_capacity(window);
                for col in first..width {
                    let padding = col < pad(r);
                    is_pad.push(padding);
                    if padding {
                        ids.push(0);
                    } else {
                        ids.push(i64::from(sequences[r][col - pad(r)]));
                        real += 1;
                    }
                    positions.push((real - 1).max(0));
                }
                for query in 0..window {
                    hide.extend((0..window).map(|key| key > query || is_pad[key]));
                }
            }
            cache.clear();
            model.forward_cached(
                Tensor::from_data(TensorData::new(ids, [batch, window]), &device),
                Tensor::from_data(TensorData::new(positions, [batch, window]), &device),
                Tensor::from_data(TensorData::new(hide, [batch, 1, window, window]), &device),
                &mut cache,
            )
        };
        let [_, new, emb] = hidden.dims();
        let logits = model.head_split(
            hidden
                .slice(s![.., new - 1..new, ..])
                .reshape([batch, 1, emb]),
            options.threads,
        );
        let vocab = logits.dims()[2];
        let logits = logits
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| format!("reading logits: {e:?}"))?;
        let mut keep = Vec::with_capacity(batch);
        for (row, &r) in rows.iter().enumerate() {
            let row_logits = logits[row * vocab..(row + 1) * vocab].to_vec();
            let next = sample_next(row_logits, &sequences[r], &options.sampling, &mut rng);
            if options.eos_id == Some(next) {
                continue;
            }
            sequences[r].push(next);
            results[r].tokens.push(next);
            on_token(r, next);
            keep.push(row);
        }
        width += 1;
        if keep.len() < batch && !keep.is_empty() {
            cache.retain_rows(&keep);
            rows = keep.iter().map(|&row| rows[row]).collect();
        } else if keep.is_empty() {
            rows.clear();
        }
    }
    Ok(results)
}
