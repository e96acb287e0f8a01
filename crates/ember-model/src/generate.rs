//! Autoregressive text generation for GPT models.
//!
//! Each step runs the model on the last `context_length` tokens of every unfinished sequence,
//! takes the logits of the last position and picks a token with [`crate::sampling`]. Sequences
//! of equal length share one forward pass; each stops at its own end-of-text token.

use std::collections::BTreeMap;

use burn::prelude::*;
use ember_data::rng::SplitMix64;

use crate::gpt::Gpt;
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
}

/// The new tokens of each prompt, and whether its prompt had to be cropped to the context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub prompt_cropped: bool,
}

/// Generates continuations for `prompts` (token ids, each non-empty). `on_token(index, id)` is
/// called as soon as sequence `index` gets a token, so callers can stream text.
pub fn generate(
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
    let mut sequences: Vec<Vec<u32>> = prompts.to_vec();
    let mut results: Vec<Generation> = prompts
        .iter()
        .map(|p| Generation {
            tokens: Vec::new(),
            prompt_cropped: p.len() > context,
        })
        .collect();
    let mut active: Vec<bool> = vec![true; prompts.len()];
    let mut rng = SplitMix64::new(options.seed);

    for _ in 0..options.max_new_tokens {
        // Group unfinished sequences by window length: one forward pass per group.
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (index, seq) in sequences.iter().enumerate() {
            if active[index] {
                groups
                    .entry(seq.len().min(context))
                    .or_default()
                    .push(index);
            }
        }
        if groups.is_empty() {
            break;
        }
        for (len, members) in groups {
            let ids: Vec<i64> = members
                .iter()
                .flat_map(|&i| {
                    sequences[i][sequences[i].len() - len..]
                        .iter()
                        .map(|&t| i64::from(t))
                })
                .collect();
            let batch = members.len();
            let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, len]), &device);
            let logits = model.forward(input); // [batch, len, vocab]
            let vocab = logits.dims()[2];
            let last = logits
                .slice(s![.., len - 1..len, ..])
                .reshape([batch, vocab])
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| format!("reading logits: {e:?}"))?;
            for (row, &index) in members.iter().enumerate() {
                let row_logits = last[row * vocab..(row + 1) * vocab].to_vec();
                let next = sample_next(row_logits, &sequences[index], &options.sampling, &mut rng);
                if options.eos_id == Some(next) {
                    active[index] = false;
                    continue;
                }
                sequences[index].push(next);
                results[index].tokens.push(next);
                on_token(index, next);
            }
        }
    }
    Ok(results)
}
