//! BERT's pretraining inputs (Devlin et al. 2019, §3.1): masked-LM corruption and
//! next-sentence pairs.
//!
//! Masked LM: every non-special token is chosen with probability 15%; a chosen token becomes
//! `[MASK]` 80% of the time, a random token 10% and stays itself 10%; the loss sees only the
//! chosen positions (label = the original id, -100 elsewhere). Next sentence: half the pairs
//! are a sentence and the one that follows it, half a sentence and a random one from another
//! document.

use crate::loader::{Batch, Batches};
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

/// Documents and sentences of plain text: documents are separated by blank lines, and a
/// sentence ends at `.`, `!` or `?` (and any closing quotes or brackets after it) followed by
/// white space. Line breaks inside a document are spaces. `documents[d][s]` is sentence `s` of
/// document `d`; empty documents are dropped.
pub fn split_documents(text: &str) -> Vec<Vec<String>> {
    let mut documents = Vec::new();
    for paragraph in text.replace("\r\n", "\n").split("\n\n") {
        let joined = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        if joined.is_empty() {
            continue;
        }
        let mut sentences = Vec::new();
        let mut current = String::new();
        let mut chars = joined.chars().peekable();
        while let Some(c) = chars.next() {
            current.push(c);
            if matches!(c, '.' | '!' | '?') {
                while let Some(&close) = chars.peek() {
                    if matches!(close, '"' | '\'' | ')' | ']' | '\u{201d}' | '\u{2019}') {
                        current.push(close);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if chars.peek() == Some(&' ') {
                    chars.next();
                    sentences.push(std::mem::take(&mut current));
                }
            }
        }
        if !current.trim().is_empty() {
            sentences.push(current.trim().to_string());
        }
        documents.push(sentences);
    }
    documents
}

/// The ids a BERT vocabulary reserves, which masking leaves alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
    pub mask: u32,
    pub unk: u32,
}

impl SpecialIds {
    fn all(&self) -> [u32; 5] {
        [self.cls, self.sep, self.pad, self.mask, self.unk]
    }
}

/// A padded batch of corrupted sequences, row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlmBatch {
    pub ids: Vec<i64>,
    /// 0 for sentence A (with `[CLS]` and its `[SEP]`), 1 for sentence B.
    pub type_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// The original id at chosen positions, [`IGNORE`] elsewhere (padding included).
    pub labels: Vec<i64>,
    /// `[batch]` next-sentence labels with HF's convention (0: B follows A, 1: random B);
    /// `None` when training masked LM alone.
    pub next_labels: Option<Vec<i64>>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch for MlmBatch {
    /// Real tokens (padding does not count).
    fn num_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m == 1).count()
    }
}

/// What the model reads: one sequence per example, before masking.
#[derive(Clone, Debug)]
enum Examples {
    /// Masked LM alone: each document cut into `[CLS] piece [SEP]` of at most `max_len` ids.
    Pieces(Vec<Vec<u32>>),
    /// With next-sentence prediction: documents of sentences, paired anew every epoch.
    Documents(Vec<Vec<Vec<u32>>>),
}

/// Masked-LM (and NSP) batches over a tokenized corpus. Masks are drawn when a batch is made,
/// from a seed that is a function of (seed, epoch, batch), so every epoch masks differently
/// (RoBERTa's dynamic masking) while a resumed run replays exactly the same batches.
#[derive(Clone, Debug)]
pub struct MlmLoader {
    examples: Examples,
    specials: SpecialIds,
    vocab_size: usize,
    options: MlmOptions,
    max_len: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    drop_last: bool,
}

/// Why MLM batches cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MlmError {
    #[error("{what}: no text to train on")]
    Empty { what: String },
    #[error(
        "{what}: next-sentence prediction needs documents of at least two sentences; there are none"
    )]
    NoPairs { what: String },
    #[error("max length {0} is too short: a pair needs at least 5 ids ([CLS] A [SEP] B [SEP])")]
    TooShort(usize),
    #[error("batch size must be at least 1")]
    ZeroBatchSize,
}

/// Settings of an [`MlmLoader`].
#[derive(Clone, Copy, Debug)]
pub struct MlmLoaderOptions {
    pub specials: SpecialIds,
    pub vocab_size: usize,
    pub masking: MlmOptions,
    /// Longest sequence, special tokens included.
    pub max_len: usize,
    pub batch_size: usize,
    /// Also train next-sentence prediction (sentence pairs instead of document pieces).
    pub next_sentence: bool,
    pub seed: u64,
    /// Shuffle the examples every epoch (training); validation keeps their order.
    pub shuffle: bool,
    pub drop_last: bool,
}

impl MlmLoader {
    /// Batches over `documents[d][s]` (sentence `s` of document `d`, as token ids without
    /// special tokens); `what` names the data in errors.
    pub fn new(
        documents: Vec<Vec<Vec<u32>>>,
        options: MlmLoaderOptions,
        what: &str,
    ) -> Result<Self, MlmError> {
        if options.batch_size == 0 {
            return Err(MlmError::ZeroBatchSize);
        }
        if options.max_len < 5 {
            return Err(MlmError::TooShort(options.max_len));
        }
        let documents: Vec<Vec<Vec<u32>>> = documents
            .into_iter()
            .map(|doc| {
                doc.into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            })
            .filter(|doc| !doc.is_empty())
            .collect();
        if documents.is_empty() {
            return Err(MlmError::Empty { what: what.into() });
        }
        let examples = if options.next_sentence {
            if documents.iter().all(|d| d.len() < 2) {
                return Err(MlmError::NoPairs { what: what.into() });
            }
            Examples::Documents(documents)
        } else {
            let room = options.max_len - 2;
            let mut pieces = Vec::new();
            for doc in &documents {
                let ids: Vec<u32> = doc.concat();
                for chunk in ids.chunks(room) {
                    let mut piece = Vec::with_capacity(chunk.len() + 2);
                    piece.push(options.specials.cls);
                    piece.extend_from_slice(chunk);
                    piece.push(options.specials.sep);
                    pieces.push(piece);
                }
            }
            Examples::Pieces(pieces)
        };
        Ok(Self {
            examples,
            specials: options.specials,
            vocab_size: options.vocab_size,
            options: options.masking,
            max_len: options.max_len,
            batch_size: options.batch_size,
            seed: options.seed,
            shuffle: options.shuffle,
            drop_last: options.drop_last,
        })
    }

    fn epoch_seed(&self, epoch: u64) -> u64 {
        self.seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F)
    }

    /// The unmasked sequences of `epoch` with their type ids and NSP labels, in order.
    fn sequences(&self, epoch: u64) -> Vec<(Vec<u32>, Vec<i64>, Option<i64>)> {
        let mut rng = SplitMix64::new(self.epoch_seed(epoch));
        let mut sequences: Vec<_> = match &self.examples {
            Examples::Pieces(pieces) => pieces
                .iter()
                .map(|p| (p.clone(), vec![0; p.len()], None))
                .collect(),
            Examples::Documents(documents) => sentence_pairs(documents, &mut rng)
                .into_iter()
                .map(|pair| {
                    let (mut a, mut b) = (pair.first, pair.second);
                    // Longest first, as HF's truncation, leaving room for 3 special tokens.
                    while a.len() + b.len() > self.max_len - 3 {
                        if a.len() >= b.len() {
                            a.pop();
                        } else {
                            b.pop();
                        }
                    }
                    let s = self.specials;
                    let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
                    ids.push(s.cls);
                    ids.extend_from_slice(&a);
                    ids.push(s.sep);
                    let first_len = ids.len();
                    ids.extend_from_slice(&b);
                    ids.push(s.sep);
                    let mut types = vec![0; first_len];
                    types.resize(ids.len(), 1);
                    (ids, types, Some(i64::from(!pair.is_next)))
                })
                .collect(),
        };
        if self.shuffle {
            rng.shuffle(&mut sequences);
        }
        sequences
    }

    /// Examples per epoch.
    pub fn num_examples(&self) -> usize {
        match &self.examples {
            Examples::Pieces(pieces) => pieces.len(),
            Examples::Documents(documents) => {
                documents.iter().map(|d| d.len().saturating_sub(1)).sum()
            }
        }
    }

    /// The batches of `epoch`, masked.
    pub fn batches(&self, epoch: u64) -> impl Iterator<Item = MlmBatch> + '_ {
        let sequences = self.sequences(epoch);
        let num_batches = Batches::num_batches(self);
        let epoch_seed = self.epoch_seed(epoch);
        (0..num_batches).map(move |b| {
            let rows =
                &sequences[b * self.batch_size..((b + 1) * self.batch_size).min(sequences.len())];
            let mut rng =
                SplitMix64::new(epoch_seed ^ (b as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            self.collate(rows, &mut rng)
        })
    }

    fn collate(
        &self,
        rows: &[(Vec<u32>, Vec<i64>, Option<i64>)],
        rng: &mut SplitMix64,
    ) -> MlmBatch {
        let seq = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let n = rows.len();
        let s = self.specials;
        let special = s.all();
        let mut batch = MlmBatch {
            ids: Vec::with_capacity(n * seq),
            type_ids: Vec::with_capacity(n * seq),
            attention_mask: Vec::with_capacity(n * seq),
            labels: Vec::with_capacity(n * seq),
            next_labels: rows[0]
                .2
                .map(|_| rows.iter().map(|r| r.2.unwrap_or(0)).collect()),
            batch: n,
            seq,
        };
        for (ids, types, _) in rows {
            let mut masked = mask_tokens(ids, &special, s.mask, self.vocab_size, self.options, rng);
            // A sequence with nothing chosen would teach nothing and could leave a batch with
            // no loss at all: choose one real token then.
            if masked.labels.iter().all(|&l| l == IGNORE) {
                let real: Vec<usize> = (0..ids.len())
                    .filter(|&i| !special.contains(&ids[i]))
                    .collect();
                if !real.is_empty() {
                    let i = real[rng.below(real.len() as u64) as usize];
                    masked.labels[i] = i64::from(ids[i]);
                    masked.inputs[i] = s.mask;
                }
            }
            let pad = seq - ids.len();
            batch
                .ids
                .extend(masked.inputs.iter().map(|&id| i64::from(id)));
            batch.ids.extend(std::iter::repeat_n(i64::from(s.pad), pad));
            batch.type_ids.extend_from_slice(types);
            batch.type_ids.extend(std::iter::repeat_n(0, pad));
            batch
                .attention_mask
                .extend(std::iter::repeat_n(1, ids.len()));
            batch.attention_mask.extend(std::iter::repeat_n(0, pad));
            batch.labels.extend_from_slice(&masked.labels);
            batch.labels.extend(std::iter::repeat_n(IGNORE, pad));
        }
        batch
    }
}

impl Batches<MlmBatch> for MlmLoader {
    fn num_examples(&self) -> usize {
        MlmLoader::num_examples(self)
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn num_batches(&self) -> usize {
        let n = MlmLoader::num_examples(self);
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    fn epoch_batches(&self, epoch: u64) -> Box<dyn Iterator<Item = MlmBatch> + '_> {
        Box::new(self.batches(epoch))
    }
}
