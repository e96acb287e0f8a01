//! What the two encoder–decoders share: step-wise decoding behind one trait, greedy decoding
//! and beam search.

use burn::prelude::*;

use crate::lstm_seq2seq::{LstmSeq2Seq, LstmState};
use crate::transformer_seq2seq::{DecoderCache, TransformerSeq2Seq};

/// An encoder–decoder that decodes one position at a time from a state.
pub trait Seq2SeqModel {
    type State: Clone;
    /// Encodes `src: [batch, src]` into the decoder's starting state.
    fn start(&self, src: Tensor<2, Int>) -> Self::State;
    /// Feeds `tokens: [batch]` and returns the next-token logits `[batch, vocab]`.
    fn step(&self, tokens: Tensor<1, Int>, state: &mut Self::State) -> Tensor<2>;
    /// The state of rows `rows: [n]` (beam search keeps the rows of surviving hypotheses).
    fn select(&self, state: &Self::State, rows: Tensor<1, Int>) -> Self::State;
    /// The attention weights `[batch, src]` of the last step over the source, when known.
    fn last_attention(&self, state: &Self::State) -> Option<Tensor<2>>;
    fn device(&self) -> Device;
}

impl Seq2SeqModel for TransformerSeq2Seq {
    type State = DecoderCache;

    fn start(&self, src: Tensor<2, Int>) -> DecoderCache {
        let memory = self.encode(src.clone());
        self.start_decoding(memory, src)
    }

    fn step(&self, tokens: Tensor<1, Int>, state: &mut DecoderCache) -> Tensor<2> {
        self.decode_step(tokens, state)
    }

    fn select(&self, state: &DecoderCache, rows: Tensor<1, Int>) -> DecoderCache {
        state.select_rows(rows)
    }

    fn last_attention(&self, state: &DecoderCache) -> Option<Tensor<2>> {
        state.last_attention.clone()
    }

    fn device(&self) -> Device {
        TransformerSeq2Seq::device(self)
    }
}

impl Seq2SeqModel for LstmSeq2Seq {
    type State = LstmState;

    fn start(&self, src: Tensor<2, Int>) -> LstmState {
        LstmSeq2Seq::start(self, src)
    }

    fn step(&self, tokens: Tensor<1, Int>, state: &mut LstmState) -> Tensor<2> {
        self.decode_step(tokens, state)
    }

    fn select(&self, state: &LstmState, rows: Tensor<1, Int>) -> LstmState {
        state.select_rows(rows)
    }

    fn last_attention(&self, state: &LstmState) -> Option<Tensor<2>> {
        state.last_attention.clone()
    }

    fn device(&self) -> Device {
        LstmSeq2Seq::device(self)
    }
}

/// How to decode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeOptions {
    pub bos_id: u32,
    pub eos_id: u32,
    /// Most tokens generated (the end token included).
    pub max_len: usize,
    /// Hypotheses kept per step; 1 is greedy decoding.
    pub beam: usize,
    /// Finished hypotheses are ranked by `log p / length^length_penalty` (HF's convention;
    /// 0 ranks by probability alone, > 0 favours longer outputs).
    pub length_penalty: f64,
}

/// One decoded sequence: tokens without the begin and end tokens, its log-probability, and
/// per generated token the attention weights over the source (when the model has them).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub tokens: Vec<u32>,
    pub log_prob: f64,
    pub attention: Vec<Vec<f32>>,
}

fn one_row(tokens: &[u32], device: &Device) -> Tensor<1, Int> {
    let data: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(data, [tokens.len()]), device)
}

/// Host log-softmax of `[rows, vocab]` logits, in f64 so that ranking by it ranks exactly as
/// the logits do.
fn log_softmax_rows(logits: Tensor<2>) -> Vec<Vec<f64>> {
    let vocab = logits.dims()[1];
    let values: Vec<f32> = logits.into_data().try_into_vec_as().expect("f32 logits");
    values
        .chunks(vocab)
        .map(|row| {
            let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            row.iter().map(|&x| x as f64 - lse).collect()
        })
        .collect()
}

fn attention_rows<M: Seq2SeqModel>(model: &M, state: &M::State) -> Option<Vec<Vec<f32>>> {
    let weights = model.last_attention(state)?;
    let len = weights.dims()[1];
    let values: Vec<f32> = weights.into_data().try_into_vec_as().ok()?;
    Some(values.chunks(len).map(<[f32]>::to_vec).collect())
}

/// Greedy decoding of every row of `src: [batch, src]` at once (ties go to the lowest id).
pub fn greedy<M: Seq2SeqModel>(
    model: &M,
    src: Tensor<2, Int>,
    options: &DecodeOptions,
) -> Vec<Decoded> {
    let batch = src.dims()[0];
    let device = model.device();
    let mut state = model.start(src);
    let mut out = vec![
        Decoded {
            tokens: Vec::new(),
            log_prob: 0.0,
            attention: Vec::new(),
        };
        batch
    ];
    let mut done = vec![false; batch];
    let mut last = vec![options.bos_id; batch];
    for _ in 0..options.max_len {
        let rows = log_softmax_rows(model.step(one_row(&last, &device), &mut state));
        let attention = attention_rows(model, &state);
        for (r, row) in rows.iter().enumerate() {
            if done[r] {
                continue;
            }
            let (best, lp) = row
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
                );
            out[r].log_prob += lp;
            if let Some(attention) = &attention {
                out[r].attention.push(attention[r].clone());
            }
            if best as u32 == options.eos_id {
                done[r] = true;
            } else {
                out[r].tokens.push(best as u32);
            }
            last[r] = best as u32;
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    out
}

#[derive(Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    log_prob: f64,
    attention: Vec<Vec<f32>>,
}

/// Beam search for one source `src: [1, src]`: keeps the `beam` most likely continuations,
/// moves those that end to the finished list, and stops once `beam` have finished (or at
/// `max_len`, when the unfinished ones compete too). With `beam = 1` it is greedy decoding.
pub fn beam_search<M: Seq2SeqModel>(
    model: &M,
    src: Tensor<2, Int>,
    options: &DecodeOptions,
) -> Decoded {
    let device = model.device();
    let beam = options.beam.max(1);
    let mut state = model.start(src);
    let mut alive = vec![Hypothesis {
        tokens: Vec::new(),
        log_prob: 0.0,
        attention: Vec::new(),
    }];
    let mut finished: Vec<(f64, Hypothesis)> = Vec::new();
    let score =
        |h: &Hypothesis, len: usize| h.log_prob / (len.max(1) as f64).powf(options.length_penalty);
    for step in 0..options.max_len {
        let last: Vec<u32> = alive
            .iter()
            .map(|h| h.tokens.last().copied().unwrap_or(options.bos_id))
            .collect();
        let rows = log_softmax_rows(model.step(one_row(&last, &device), &mut state));
        let attention = attention_rows(model, &state);
        // Every (hypothesis, token) by log-probability, best first; ties to the lowest row and id.
        let mut candidates: Vec<(f64, usize, usize)> = rows
            .iter()
            .enumerate()
            .flat_map(|(r, row)| {
                let base = alive[r].log_prob;
                row.iter()
                    .enumerate()
                    .map(move |(t, &lp)| (base + lp, r, t))
            })
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut next = Vec::new();
        let mut parents = Vec::new();
        for &(log_prob, r, t) in &candidates {
            if next.len() == beam || finished.len() + next.len() >= 2 * beam {
                break;
            }
            let mut h = Hypothesis {
                tokens: alive[r].tokens.clone(),
                log_prob,
                attention: alive[r].attention.clone(),
            };
            if let Some(attention) = &attention {
                h.attention.push(attention[r].clone());
            }
            if t as u32 == options.eos_id {
                let len = h.tokens.len() + 1;
                finished.push((score(&h, len), h));
                if finished.len() >= beam {
                    break;
                }
            } else {
                h.tokens.push(t as u32);
                next.push(h);
                parents.push(r as i64);
            }
        }
        if finished.len() >= beam || next.is_empty() || step + 1 == options.max_len {
            for h in next {
                let len = h.tokens.len();
                finished.push((score(&h, len), h));
            }
            break;
        }
        let n = parents.len();
        state = model.select(
            &state,
            Tensor::from_data(TensorData::new(parents, [n]), &device),
        );
        alive = next;
    }
    let (_, best) = finished
        .into_iter()
        .enumerate()
        .max_by(|(i, a), (j, b)| a.0.total_cmp(&b.0).then(j.cmp(i)))
        .map(|(_, f)| f)
        .expect("at least one hypothesis");
    Decoded {
        tokens: best.tokens,
        log_prob: best.log_prob,
        attention: best.attention,
    }
}
