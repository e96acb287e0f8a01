//! Sliding-window pretraining data: a token stream cut into (input, target) windows.
//!
//! As in the book's `GPTDatasetV1`, window `k` starts at token `k · stride`, its input is
//! `max_length` tokens and its target is the same span shifted right by one, so every position
//! predicts the next token. Windows start while a full target still fits:
//! `start + max_length < n_tokens`.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::bpe::TokenId;
use crate::rng::SplitMix64;

/// Errors building windows or batches; each is one line that says what to change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoaderError {
    #[error("stride must be at least 1")]
    ZeroStride,
    #[error("max_length must be at least 1")]
    ZeroMaxLength,
    #[error("batch_size must be at least 1")]
    ZeroBatchSize,
    #[error(
        "{what} has {tokens} tokens, too short for one window of max_length {max_length} \
         (needs at least {needed}); use a longer text or shorter windows (--context-length, \
         or --max-length for data windows)"
    )]
    TooShort {
        what: String,
        tokens: usize,
        max_length: usize,
        needed: usize,
    },
    #[error("train ratio must be in (0, 1), got {0}")]
    BadRatio(f64),
}

/// Splits text at character `floor(ratio · n_chars)` into (train, validation), like the book
/// (which splits the text, then tokenizes each part). Splitting at a character keeps both
/// halves valid UTF-8.
pub fn split_text(text: &str, train_ratio: f64) -> Result<(&str, &str), LoaderError> {
    if !(train_ratio > 0.0 && train_ratio < 1.0) {
        return Err(LoaderError::BadRatio(train_ratio));
    }
    let n_chars = text.chars().count();
    let split_char = (train_ratio * n_chars as f64) as usize;
    let split_byte = text
        .char_indices()
        .nth(split_char)
        .map_or(text.len(), |(i, _)| i);
    Ok(text.split_at(split_byte))
}

/// All windows of one token stream.
#[derive(Clone, Debug)]
pub struct TokenWindows {
    tokens: Vec<TokenId>,
    starts: Vec<usize>,
    max_length: usize,
}

impl TokenWindows {
    /// Cuts `tokens` into windows; `what` names the data in the too-short error.
    pub fn new(
        tokens: Vec<TokenId>,
        max_length: usize,
        stride: usize,
        what: &str,
    ) -> Result<Self, LoaderError> {
        if max_length == 0 {
            return Err(LoaderError::ZeroMaxLength);
        }
        if stride == 0 {
            return Err(LoaderError::ZeroStride);
        }
        if tokens.len() <= max_length {
            return Err(LoaderError::TooShort {
                what: what.to_string(),
                tokens: tokens.len(),
                max_length,
                needed: max_length.saturating_add(1),
            });
        }
        let starts = (0..tokens.len() - max_length).step_by(stride).collect();
        Ok(Self {
            tokens,
            starts,
            max_length,
        })
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `(input, target)` of window `index`, each `max_length` tokens.
    pub fn window(&self, index: usize) -> (&[TokenId], &[TokenId]) {
        let start = self.starts[index];
        (
            &self.tokens[start..start + self.max_length],
            &self.tokens[start + 1..start + self.max_length + 1],
        )
    }
}

/// A batch of token sequences, row-major: `inputs` and `targets` are `[batch_size, seq_len]`.
/// Targets are signed so that collate functions can mark ignored positions with -100.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    pub inputs: Vec<TokenId>,
    pub targets: Vec<i64>,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// What the training loop needs to know of any batch.
pub trait Batch {
    /// Input tokens in the batch, for "tokens seen" and tokens/s.
    fn num_tokens(&self) -> usize;
}

impl Batch for TokenBatch {
    /// `batch_size · seq_len`: padding counts, as the model computes it.
    fn num_tokens(&self) -> usize {
        self.batch_size * self.seq_len
    }
}

impl TokenBatch {
    /// `(inputs, targets)` as `[batch, seq]` integer tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let shape = [self.batch_size, self.seq_len];
        let inputs: Vec<i64> = self.inputs.iter().map(|&id| i64::from(id)).collect();
        (
            Tensor::<2, Int>::from_data(TensorData::new(inputs, shape), device),
            Tensor::<2, Int>::from_data(TensorData::new(self.targets.clone(), shape), device),
        )
    }
}

/// A source of batches, epoch by epoch: windows of a corpus ([`WindowLoader`]), collated
/// instruction examples, masked-LM sequences. The training loop takes any of them.
pub trait Batches<B> {
    /// Windows or examples per epoch (for messages).
    fn num_examples(&self) -> usize;
    fn batch_size(&self) -> usize;
    /// Batches per epoch.
    fn num_batches(&self) -> usize;
    /// The batches of `epoch`, in order; the same epoch always gives the same batches.
    fn epoch_batches(&self, epoch: u64) -> Box<dyn Iterator<Item = B> + '_>;
}

impl Batches<TokenBatch> for WindowLoader {
    fn num_examples(&self) -> usize {
        self.windows.len()
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn num_batches(&self) -> usize {
        WindowLoader::num_batches(self)
    }

    fn epoch_batches(&self, epoch: u64) -> Box<dyn Iterator<Item = TokenBatch> + '_> {
        Box::new(self.batches(epoch))
    }
}

/// Batches over [`TokenWindows`], optionally shuffled with a seed and dropping a short last batch.
#[derive(Clone, Debug)]
pub struct WindowLoader {
    windows: TokenWindows,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    drop_last: bool,
}

impl WindowLoader {
    pub fn new(
        windows: TokenWindows,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        drop_last: bool,
    ) -> Result<Self, LoaderError> {
        if batch_size == 0 {
            return Err(LoaderError::ZeroBatchSize);
        }
        Ok(Self {
            windows,
            batch_size,
            shuffle_seed,
            drop_last,
        })
    }

    pub fn windows(&self) -> &TokenWindows {
        &self.windows
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.windows.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// Input tokens per epoch (what the batches hold, after `drop_last`).
    pub fn num_tokens(&self) -> usize {
        let windows = if self.drop_last {
            self.num_batches() * self.batch_size
        } else {
            self.windows.len()
        };
        windows * self.windows.max_length()
    }

    /// Window order for `epoch`: identity, or a permutation seeded by (seed, epoch) so each
    /// epoch differs and a resumed run sees the same order as an uninterrupted one.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.windows.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            let mut rng = SplitMix64::new(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
            rng.shuffle(&mut order);
        }
        order
    }

    /// The batches of one epoch, in order.
    pub fn batches(&self, epoch: u64) -> impl Iterator<Item = TokenBatch> + '_ {
        let order = self.order(epoch);
        let num_batches = self.num_batches();
        (0..num_batches).map(move |b| {
            let rows = &order[b * self.batch_size..((b + 1) * self.batch_size).min(order.len())];
            let seq_len = self.windows.max_length();
            let mut inputs = Vec::with_capacity(rows.len() * seq_len);
            let mut targets = Vec::with_capacity(rows.len() * seq_len);
            for &row in rows {
                let (input, target) = self.windows.window(row);
                inputs.extend_from_slice(input);
                targets.extend(target.iter().map(|&t| i64::from(t)));
            }
            TokenBatch {
                inputs,
                targets,
                batch_size: rows.len(),
                seq_len,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_book() {
        // GPTDatasetV1 with max_length 4, stride 1 over 0..10: starts 0..=5.
        let w = TokenWindows::new((0..10).collect(), 4, 1, "t").unwrap();
        assert_eq!(w.len(), 6);
        assert_eq!(w.window(0), (&[0, 1, 2, 3][..], &[1, 2, 3, 4][..]));
        assert_eq!(w.window(5), (&[5, 6, 7, 8][..], &[6, 7, 8, 9][..]));
        // stride 4: starts 0 and 4 (8 + 4 would need token 12).
        let w = TokenWindows::new((0..10).collect(), 4, 4, "t").unwrap();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!(
            TokenWindows::new(vec![1, 2, 3], 4, 1, "x").unwrap_err(),
            LoaderError::TooShort {
                what: "x".into(),
                tokens: 3,
                max_length: 4,
                needed: 5
            }
        );
        // Exactly max_length tokens: no room for the last target.
        assert!(TokenWindows::new(vec![1, 2, 3, 4], 4, 1, "x").is_err());
        assert!(TokenWindows::new(vec![1, 2, 3, 4, 5], 4, 1, "x").is_ok());
        assert_eq!(
            TokenWindows::new(vec![1; 10], 4, 0, "x").unwrap_err(),
            LoaderError::ZeroStride
        );
        let w = TokenWindows::new(vec![1; 10], 4, 1, "x").unwrap();
        assert_eq!(
            WindowLoader::new(w, 0, None, false).unwrap_err(),
            LoaderError::ZeroBatchSize
        );
        assert!(split_text("abc", 1.0).is_err());
    }

    #[test]
    fn batches_drop_last_and_shuffle() {
        let w = TokenWindows::new((0..11).collect(), 2, 2, "t").unwrap(); // 5 windows
        let keep = WindowLoader::new(w.clone(), 2, None, false).unwrap();
        let sizes: Vec<usize> = keep.batches(0).map(|b| b.batch_size).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let drop = WindowLoader::new(w.clone(), 2, None, true).unwrap();
        assert_eq!(drop.num_batches(), 2);
        assert_eq!(drop.num_tokens(), 8);
        let first = drop.batches(0).next().unwrap();
        assert_eq!(first.inputs, [0, 1, 2, 3]);
        assert_eq!(first.targets, [1, 2, 3, 4]);

        let shuffled = WindowLoader::new(w, 5, Some(123), false).unwrap();
        let epoch0 = shuffled.batches(0).next().unwrap();
        assert_eq!(epoch0, shuffled.batches(0).next().unwrap());
        assert_ne!(
            epoch0.inputs,
            first
                .inputs
                .iter()
                .chain(&[4, 5, 6, 7, 8, 9])
                .copied()
                .collect::<Vec<_>>()
        );
        let mut rows: Vec<u32> = epoch0.inputs.chunks(2).map(|r| r[0]).collect();
        rows.sort_unstable();
        assert_eq!(rows, [0, 2, 4, 6, 8]);
        assert_ne!(epoch0, shuffled.batches(1).next().unwrap());
    }

    #[test]
    fn split_is_at_a_character() {
        let (a, b) = split_text("ééééé", 0.5).unwrap();
        assert_eq!((a, b), ("éé", "ééé"));
    }
}
