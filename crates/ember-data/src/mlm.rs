//! BERT's pretraining inputs (Devlin et al. 2019, §3.1): masked-LM corruption and
//! next-sentence pairs.
//!
//! Masked LM: every non-special token is chosen with probability 15%; a chosen token becomes
//! `[MASK]` 80% of the time, a random token 10% and stays itself 10%; the loss sees only the
//! chosen positions (label = the original id, -100 elsewhere). Next sentence: half the pairs
//! are a sentence and the one that follows it, half a sentence and a random one from another
//! document.

use crate::rng::SplitMix64;

/// The label of a position the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Masked-LM corruption rates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlmOptions {
    /// Chance that a non-special token is chosen for prediction (0.15).
    pub mask_prob: f64,
    /// Of the chosen tokens, the share replaced by `[MASK]` (0.8).
    pub mask_frac: f64,
    /// Of the chosen tokens, the share replaced by a random token (0.1); the rest stay.
    pub random_frac: f64,
}

impl Default for MlmOptions {
    fn default() -> Self {
        Self {
            mask_prob: 0.15,
            mask_frac: 0.8,
            random_frac: 0.1,
        }
    }
}

/// One corrupted sequence: what the model reads and what it must predict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedSequence {
    pub inputs: Vec<u32>,
    /// The original id at chosen positions, [`IGNORE`] elsewhere.
    pub labels: Vec<i64>,
}

/// Corrupts `ids` for masked-LM training. `special` ids (`[CLS]`, `[SEP]`, `[PAD]`, …) are
/// never chosen and never drawn as random replacements; random tokens are uniform over the
/// other ids below `vocab_size`.
pub fn mask_tokens(
    ids: &[u32],
    special: &[u32],
    mask_id: u32,
    vocab_size: usize,
    options: MlmOptions,
    rng: &mut SplitMix64,
) -> MaskedSequence {
    let mut inputs = ids.to_vec();
    let mut labels = vec![IGNORE; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        if special.contains(&id) || rng.next_f64() >= options.mask_prob {
            continue;
        }
        labels[i] = id as i64;
        let roll = rng.next_f64();
        if roll < options.mask_frac {
            inputs[i] = mask_id;
        } else if roll < options.mask_frac + options.random_frac {
            inputs[i] = random_token(special, vocab_size, rng);
        }
    }
    MaskedSequence { inputs, labels }
}

fn random_token(special: &[u32], vocab_size: usize, rng: &mut SplitMix64) -> u32 {
    loop {
        let id = rng.below(vocab_size as u64) as u32;
        if !special.contains(&id) {
            return id;
        }
    }
}

/// A sentence pair for next-sentence prediction (sentences as token ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentencePair {
    pub first: Vec<u32>,
    pub second: Vec<u32>,
    /// Whether `second` is the sentence that followed `first` (NSP label 0 in HF's convention).
    pub is_next: bool,
}

/// One pair per sentence that has a successor: with probability ½ that successor, otherwise a
/// random sentence from another document (from anywhere but the sentence and its successor
/// when no other document has sentences). `documents[d][s]` is sentence `s` of document `d`.
pub fn sentence_pairs(documents: &[Vec<Vec<u32>>], rng: &mut SplitMix64) -> Vec<SentencePair> {
    let all: Vec<(usize, usize)> = documents
        .iter()
        .enumerate()
        .flat_map(|(d, doc)| (0..doc.len()).map(move |s| (d, s)))
        .collect();
    let mut pairs = Vec::new();
    for (d, doc) in documents.iter().enumerate() {
        for s in 0..doc.len().saturating_sub(1) {
            let first = doc[s].clone();
            if rng.next_f64() < 0.5 || all.len() < 3 {
                pairs.push(SentencePair {
                    first,
                    second: doc[s + 1].clone(),
                    is_next: true,
                });
                continue;
            }
            let other_doc_exists = all.iter().any(|(rd, _)| *rd != d);
            let (rd, rs) = loop {
                let (rd, rs) = all[rng.below(all.len() as u64) as usize];
                let acceptable = if other_doc_exists {
                    rd != d
                } else {
                    rs != s + 1 && rs != s
                };
                if acceptable {
                    break (rd, rs);
                }
            };
            pairs.push(SentencePair {
                first,
                second: documents[rd][rs].clone(),
                is_next: false,
            });
        }
    }
    pairs
}
