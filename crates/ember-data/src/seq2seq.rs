//! Parallel text for encoder–decoders: `source<TAB>target` TSV files, a character vocabulary
//! and padded teacher-forcing batches.
//!
//! A batch holds the source ids, the target input (`<bos>` + target) and the target output
//! (target + `<eos>`), each padded with `<pad>`; padded outputs are labelled -100 so the loss
//! skips them.

use std::path::{Path, PathBuf};

use crate::bpe::BpeTokenizer;
use crate::bpe_train::TrainedBpe;
use crate::classification::TableError;
use crate::loader::{Batch, Batches};
use crate::rng::SplitMix64;

/// The reserved ids of a [`CharVocab`].
pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
const SPECIALS: [&str; 4] = ["<pad>", "<bos>", "<eos>", "<unk>"];

/// One source–target pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub source: String,
    pub target: String,
}

/// Reads a TSV of `source<TAB>target` lines (empty lines skipped); a line without a tab, or
/// with an empty side, is an error naming the line.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>, TableError> {
    let text = crate::read_text_file(path).map_err(|e| TableError::File {
        path: path.to_path_buf(),
        message: e.reason(),
    })?;
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: &str| TableError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            message: message.to_string(),
        };
        let Some((source, target)) = line.split_once('\t') else {
            return Err(bad("expected `source<TAB>target`, found no tab"));
        };
        if source.is_empty() || target.is_empty() {
            return Err(bad("empty source or target"));
        }
        if target.contains('\t') {
            return Err(bad("more than one tab"));
        }
        pairs.push(Pair {
            source: source.to_string(),
            target: target.to_string(),
        });
    }
    if pairs.is_empty() {
        return Err(TableError::File {
            path: path.to_path_buf(),
            message: "no pairs".into(),
        });
    }
    Ok(pairs)
}

/// A character vocabulary shared by source and target: the four specials, then every
/// character of the training pairs in code-point order. Unknown characters map to `<unk>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharVocab {
    chars: Vec<char>,
}

impl CharVocab {
    /// The characters of `pairs` (both sides).
    pub fn build(pairs: &[Pair]) -> Self {
        let mut chars: Vec<char> = pairs
            .iter()
            .flat_map(|p| p.source.chars().chain(p.target.chars()))
            .collect();
        chars.sort_unstable();
        chars.dedup();
        Self { chars }
    }

    /// From the characters of `vocab.json` (specials not included).
    pub fn from_chars(chars: Vec<char>) -> Self {
        Self { chars }
    }

    /// The characters (for `vocab.json`).
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    pub fn len(&self) -> usize {
        SPECIALS.len() + self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.chars()
            .map(|c| match self.chars.binary_search(&c) {
                Ok(i) => (SPECIALS.len() + i) as u32,
                Err(_) => UNK,
            })
            .collect()
    }

    /// The text of `ids`; specials are dropped, except `<unk>` written as `�`.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter_map(|&id| match id {
                UNK => Some('\u{fffd}'),
                id if (id as usize) < SPECIALS.len() => None,
                id => self.chars.get(id as usize - SPECIALS.len()).copied(),
            })
            .collect()
    }

    /// The printable token of `id` (for attention plots).
    pub fn token(&self, id: u32) -> String {
        match SPECIALS.get(id as usize) {
            Some(special) => special.to_string(),
            None => self
                .chars
                .get(id as usize - SPECIALS.len())
                .map_or_else(|| format!("<{id}>"), char::to_string),
        }
    }
}

/// The vocabulary of a seq2seq run: characters, or a byte-level BPE trained on the training
/// pairs whose ids follow the four specials (BPE id `i` is id `4 + i`).
#[derive(Clone, Debug)]
pub enum Seq2SeqVocab {
    Chars(CharVocab),
    Bpe(BpeTokenizer),
}

impl Seq2SeqVocab {
    /// A BPE of at most `vocab_size` tokens trained on both sides of `pairs`.
    pub fn train_bpe(pairs: &[Pair], vocab_size: usize) -> Result<(Self, TrainedBpe), String> {
        let texts = pairs
            .iter()
            .flat_map(|p| [p.source.as_str(), p.target.as_str()]);
        let trained = crate::bpe_train::train(texts, vocab_size, 2, |_, _| {})?;
        Ok((Self::Bpe(trained.tokenizer()), trained))
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Chars(chars) => chars.len(),
            Self::Bpe(bpe) => SPECIALS.len() + bpe.vocab_size(),
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Self::Chars(chars) => chars.encode(text),
            Self::Bpe(bpe) => bpe
                .encode_ordinary(text)
                .into_iter()
                .map(|id| id + SPECIALS.len() as u32)
                .collect(),
        }
    }

    /// The text of `ids`, specials dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Self::Chars(chars) => chars.decode(ids),
            Self::Bpe(bpe) => {
                let inner: Vec<u32> = ids
                    .iter()
                    .filter(|&&id| id as usize >= SPECIALS.len())
                    .map(|&id| id - SPECIALS.len() as u32)
                    .collect();
                String::from_utf8_lossy(&bpe.decode_bytes(&inner).unwrap_or_default()).into_owned()
            }
        }
    }

    /// The printable token of `id`.
    pub fn token(&self, id: u32) -> String {
        match (self, SPECIALS.get(id as usize)) {
            (_, Some(special)) => special.to_string(),
            (Self::Chars(chars), None) => chars.token(id),
            (Self::Bpe(bpe), None) => bpe.token_bytes(id - SPECIALS.len() as u32).map_or_else(
                || format!("<{id}>"),
                |b| String::from_utf8_lossy(b).into_owned(),
            ),
        }
    }
}

/// A padded teacher-forcing batch, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seq2SeqBatch {
    /// `[batch, src_len]`, padded with `<pad>`.
    pub src: Vec<i64>,
    /// `[batch, tgt_len]`: `<bos>` + target, padded with `<pad>`.
    pub tgt_in: Vec<i64>,
    /// `[batch, tgt_len]`: target + `<eos>`, -100 at padding.
    pub tgt_out: Vec<i64>,
    pub batch: usize,
    pub src_len: usize,
    pub tgt_len: usize,
}

impl Batch for Seq2SeqBatch {
    /// Real source and target tokens.
    fn num_tokens(&self) -> usize {
        self.src.iter().filter(|&&t| t != i64::from(PAD)).count()
            + self.tgt_out.iter().filter(|&&t| t >= 0).count()
    }
}

/// Encoded pairs in batches, shuffled per epoch from (seed, epoch).
#[derive(Clone, Debug)]
pub struct Seq2SeqLoader {
    examples: Vec<(Vec<u32>, Vec<u32>)>,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    drop_last: bool,
}

/// Why pairs cannot be batched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Seq2SeqDataError {
    #[error(
        "{what}: pair {index} is {len} tokens long (with its end token); the model's max_len is {max_len}"
    )]
    TooLong {
        what: String,
        index: usize,
        len: usize,
        max_len: usize,
    },
    #[error("batch size must be at least 1")]
    ZeroBatchSize,
}

impl Seq2SeqLoader {
    /// Encodes `pairs` with `encode` (ids above the four specials); sources and targets (with
    /// `<bos>`/`<eos>`) must fit in `max_len` positions.
    pub fn new(
        pairs: &[Pair],
        encode: impl Fn(&str) -> Vec<u32>,
        max_len: usize,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        what: &str,
    ) -> Result<Self, Seq2SeqDataError> {
        if batch_size == 0 {
            return Err(Seq2SeqDataError::ZeroBatchSize);
        }
        let mut examples = Vec::with_capacity(pairs.len());
        for (index, pair) in pairs.iter().enumerate() {
            let (src, tgt) = (encode(&pair.source), encode(&pair.target));
            let len = src.len().max(tgt.len() + 1);
            if len > max_len {
                return Err(Seq2SeqDataError::TooLong {
                    what: what.to_string(),
                    index: index + 1,
                    len,
                    max_len,
                });
            }
            examples.push((src, tgt));
        }
        Ok(Self {
            examples,
            batch_size,
            drop_last: shuffle_seed.is_some(),
            shuffle_seed,
        })
    }

    /// The batch of `rows` (indices into the pairs).
    pub fn collate(&self, rows: &[usize]) -> Seq2SeqBatch {
        let src_len = rows
            .iter()
            .map(|&r| self.examples[r].0.len())
            .max()
            .unwrap_or(0);
        let tgt_len = rows
            .iter()
            .map(|&r| self.examples[r].1.len() + 1)
            .max()
            .unwrap_or(0);
        let mut batch = Seq2SeqBatch {
            src: Vec::with_capacity(rows.len() * src_len),
            tgt_in: Vec::with_capacity(rows.len() * tgt_len),
            tgt_out: Vec::with_capacity(rows.len() * tgt_len),
            batch: rows.len(),
            src_len,
            tgt_len,
        };
        let pad = i64::from(PAD);
        for &r in rows {
            let (src, tgt) = &self.examples[r];
            batch.src.extend(src.iter().map(|&t| i64::from(t)));
            batch
                .src
                .extend(std::iter::repeat_n(pad, src_len - src.len()));
            batch.tgt_in.push(i64::from(BOS));
            batch.tgt_in.extend(tgt.iter().map(|&t| i64::from(t)));
            batch.tgt_out.extend(tgt.iter().map(|&t| i64::from(t)));
            batch.tgt_out.push(i64::from(EOS));
            let fill = tgt_len - tgt.len() - 1;
            batch.tgt_in.extend(std::iter::repeat_n(pad, fill));
            batch.tgt_out.extend(std::iter::repeat_n(-100, fill));
        }
        batch
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The source ids of example `index`.
    pub fn source(&self, index: usize) -> &[u32] {
        &self.examples[index].0
    }

    /// The target ids of example `index`.
    pub fn target(&self, index: usize) -> &[u32] {
        &self.examples[index].1
    }

    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            SplitMix64::new(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F)).shuffle(&mut order);
        }
        order
    }
}

impl Batches<Seq2SeqBatch> for Seq2SeqLoader {
    fn num_examples(&self) -> usize {
        self.examples.len()
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn num_batches(&self) -> usize {
        if self.drop_last {
            self.examples.len() / self.batch_size
        } else {
            self.examples.len().div_ceil(self.batch_size)
        }
    }

    fn epoch_batches(&self, epoch: u64) -> Box<dyn Iterator<Item = Seq2SeqBatch> + '_> {
        let order = self.order(epoch);
        let n = Batches::num_batches(self);
        Box::new((0..n).map(move |b| {
            let end = ((b + 1) * self.batch_size).min(order.len());
            self.collate(&order[b * self.batch_size..end])
        }))
    }
}

/// `train.tsv`, `val.tsv` and `test.tsv` of a directory (as `ember data generate dates`
/// writes them).
pub fn split_files(dir: &Path) -> [PathBuf; 3] {
    ["train.tsv", "val.tsv", "test.tsv"].map(|name| dir.join(name))
}
