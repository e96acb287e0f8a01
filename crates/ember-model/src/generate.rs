//! Autoregressive text generation for GPT models.
//!
//! Prompts of different lengths run as one batch: each row is left-padded to the longest,
//! padding is hidden from attention and position ids count only a row's real tokens, so every
//! row computes what it would alone. With the key/value cache, the prompt is encoded once
//! (prefill) and each later step feeds one position per row. When a sequence reaches the
//! context length the window slides: each further step re-encodes the last `context_length`
//! tokens from position 0, exactly as the cache-free loop does (so it is no faster than it
//! from then on). Each row stops at its own end-of-text token and leaves the batch.
//!
//! Sampling reads each step's logits back to the host. Greedy decoding on a GPU instead picks
//! the tokens on the device and reads them every few steps ([`GenerateOptions::read_every`]),
//! since every read drains the GPU's queue.

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
    /// Cached greedy steps between reads of the chosen tokens back to the host. Above 1, greedy
    /// decoding (no repetition penalty) picks each token on the device and feeds it straight
    /// into the next step, so a GPU runs ahead through its queue instead of draining it for
    /// every token; end-of-text is then noticed at the next read, and the steps a row decoded
    /// past its end are dropped, so the tokens are the same as with 1, delivered `read_every`
    /// at a time. 1 on CPU backends, which compute each op as it is called.
    pub read_every: usize,
    /// Ids from this one on are never chosen: a tokenizer with fewer tokens than the model's
    /// vocabulary cannot turn them into text (`None`: every id of the vocabulary).
    pub vocab_limit: Option<usize>,
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
    if options.vocab_limit == Some(0) {
        return Err("vocab_limit must be at least 1".into());
    }
    let context = model.context_length();
    let device = model.device();
    let sampling = &options.sampling;
    let on_device = options.read_every > 1 && sampling.picks_argmax();
    let mut state = Decoding {
        results: prompts
            .iter()
            .map(|p| Generation {
                tokens: Vec::new(),
                prompt_cropped: p.len() > context,
            })
            .collect(),
        sequences: prompts.to_vec(),
        rows: (0..prompts.len()).collect(),
        cache: KvCache::with_threads(options.threads),
        eos_id: options.eos_id,
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    // Tokens picked on the device and not read yet: one `[batch, 1]` tensor per step, every
    // row of `state.rows` included.
    let mut pending: Vec<Tensor<2, Int>> = Vec::new();
    let mut rng = SplitMix64::new(options.seed);

    // Each step adds a column: row r occupies the last `sequences[r].len() + pending.len()` of
    // `width` columns, the columns before are padding.
    for width in longest..longest.saturating_add(options.max_new_tokens) {
        let incremental = options.use_cache
            && width <= context
            && !state.cache.is_empty()
            && state.cache.len() + 1 == width;
        if !incremental && !pending.is_empty() {
            // Encoding from scratch (a sliding window, or no cache) reads the tokens on the host.
            state.accept_pending(&mut pending, &mut on_token)?;
        }
        if state.rows.is_empty() {
            break;
        }
        let rows = &state.rows;
        let sequences = &state.sequences;
        let batch = rows.len();
        let length = |r: usize| sequences[r].len() + pending.len();
        let pad = |r: usize| width - length(r);
        let hidden = if incremental {
            // One new column; its position is the row's length so far.
            let ids = match pending.last() {
                Some(ids) => ids.clone(),
                None => {
                    let ids: Vec<i64> = rows
                        .iter()
                        .map(|&r| i64::from(*sequences[r].last().expect("non-empty")))
                        .collect();
                    Tensor::from_data(TensorData::new(ids, [batch, 1]), &device)
                }
            };
            let positions: Vec<i64> = rows.iter().map(|&r| length(r) as i64 - 1).collect();
            let hide: Vec<bool> = rows
                .iter()
                .flat_map(|&r| (0..width).map(move |col| col < pad(r)))
                .collect();
            model.forward_cached(
                ids,
                Tensor::from_data(TensorData::new(positions, [batch, 1]), &device),
                Tensor::from_data(TensorData::new(hide, [batch, 1, 1, width]), &device),
                &mut state.cache,
            )
        } else {
            // Encode the last `window` columns from scratch (prefill, slide, or no cache).
            let window = width.min(context);
            let first = width - window;
            let mut ids = Vec::with_capacity(batch * window);
            let mut positions = Vec::with_capacity(batch * window);
            let mut hide = Vec::with_capacity(batch * window * window);
            for &r in rows {
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
            state.cache.clear();
            model.forward_cached(
                Tensor::from_data(TensorData::new(ids, [batch, window]), &device),
                Tensor::from_data(TensorData::new(positions, [batch, window]), &device),
                Tensor::from_data(TensorData::new(hide, [batch, 1, window, window]), &device),
                &mut state.cache,
            )
        };
        let [_, new, emb] = hidden.dims();
        let mut logits = model.head_split(
            hidden
                .slice(s![.., new - 1..new, ..])
                .reshape([batch, 1, emb]),
            options.threads,
        );
        if let Some(limit) = options.vocab_limit.filter(|&l| l < logits.dims()[2]) {
            logits = logits.slice(s![.., .., ..limit]);
        }
        if on_device {
            pending.push(logits.argmax(2).reshape([batch, 1]));
            if pending.len() == options.read_every {
                state.accept_pending(&mut pending, &mut on_token)?;
            }
            continue;
        }
        let vocab = logits.dims()[2];
        let logits = logits
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| format!("reading logits: {e:?}"))?;
        let chosen: Vec<u32> = rows
            .iter()
            .enumerate()
            .map(|(row, &r)| {
                let row_logits = logits[row * vocab..(row + 1) * vocab].to_vec();
                sample_next(row_logits, &sequences[r], sampling, &mut rng)
            })
            .collect();
        state.accept(&chosen, 1, &mut on_token);
    }
    if !pending.is_empty() {
        state.accept_pending(&mut pending, &mut on_token)?;
    }
    Ok(state.results)
}

/// The host's side of a batch being decoded.
struct Decoding {
    results: Vec<Generation>,
    /// Every row's tokens so far (prompt and accepted new tokens).
    sequences: Vec<Vec<u32>>,
    /// Original indices of the rows still generating, in batch order.
    rows: Vec<usize>,
    cache: KvCache,
    eos_id: Option<u32>,
}

impl Decoding {
    /// Reads the tokens picked on the device since the last read and accepts them.
    fn accept_pending(
        &mut self,
        pending: &mut Vec<Tensor<2, Int>>,
        on_token: &mut impl FnMut(usize, u32),
    ) -> Result<(), String> {
        let steps = pending.len();
        let chosen: Vec<u32> = Tensor::cat(std::mem::take(pending), 1)
            .into_data()
            .try_into_vec_as::<i64>()
            .map_err(|e| format!("reading the chosen tokens: {e:?}"))?
            .into_iter()
            .map(|id| id as u32)
            .collect();
        self.accept(&chosen, steps, on_token);
        Ok(())
    }

    /// Takes `steps` tokens per row (`chosen[row * steps + step]`, rows in batch order) in
    /// step order, as they were decoded. A row that meets its end-of-text token leaves the
    /// batch there, and whatever it decoded after it is dropped.
    fn accept(&mut self, chosen: &[u32], steps: usize, on_token: &mut impl FnMut(usize, u32)) {
        let batch = self.rows.len();
        let mut ended = vec![false; batch];
        for step in 0..steps {
            for (row, &r) in self.rows.iter().enumerate() {
                if ended[row] {
                    continue;
                }
                let next = chosen[row * steps + step];
                if self.eos_id == Some(next) {
                    ended[row] = true;
                    continue;
                }
                self.sequences[r].push(next);
                self.results[r].tokens.push(next);
                on_token(r, next);
            }
        }
        let keep: Vec<usize> = (0..batch).filter(|&row| !ended[row]).collect();
        if keep.is_empty() {
            self.rows.clear();
        } else if keep.len() < batch {
            self.cache.retain_rows(&keep);
            self.rows = keep.iter().map(|&row| self.rows[row]).collect();
        }
    }
}
