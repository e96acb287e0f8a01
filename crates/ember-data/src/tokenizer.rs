//! One tokenizer type for every model family: GPT-2's byte-level BPE (ember's own, exact) and
//! whatever HuggingFace's `tokenizers` crate reads: a `tokenizer.json`, or a bare WordPiece
//! `vocab.txt` as BERT checkpoints ship it.
//!
//! Encoder models (BERT) take `[CLS] A [SEP] B [SEP]` with token type ids 0 for A and 1 for
//! B; [`Tokenizer::encode_for_encoder`] builds that (with the tokenizer's own post-processor)
//! and truncates longest-first, and [`EncoderBatch::pad`] pads a batch to its longest row.

use std::path::{Path, PathBuf};

use tokenizers::models::TrainerWrapper;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::utils::truncation::{TruncationParams, TruncationStrategy, truncate_encodings};
use tokenizers::{AddedToken, PostProcessor};

use crate::bpe::{BpeError, BpeTokenizer, TokenId};

/// Why a tokenizer could not be loaded or could not encode; one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error(transparent)]
    Bpe(#[from] BpeError),
    #[error(transparent)]
    SideFile(#[from] crate::SideFileError),
    #[error("{0}")]
    Encode(String),
}

/// The special tokens of BERT's WordPiece vocabularies.
pub const BERT_SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A tokenizer of any kind ember reads.
pub enum Tokenizer {
    /// GPT-2's byte-level BPE (`encoder.json` + `vocab.bpe`).
    Gpt2(BpeTokenizer),
    /// A HuggingFace tokenizer (`tokenizer.json`, or WordPiece from `vocab.txt`).
    Hf(Box<tokenizers::Tokenizer>),
}

/// Token ids and segment ids of one encoder input, special tokens included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderInput {
    pub ids: Vec<TokenId>,
    /// 0 for the first text (and its `[CLS]`/`[SEP]`), 1 for the second.
    pub type_ids: Vec<u32>,
}

/// A padded batch of encoder inputs, row-major `[batch, seq]`, ready for tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderBatch {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding (HuggingFace's convention).
    pub attention_mask: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
}

impl EncoderBatch {
    /// Pads every row of `inputs` with `pad_id` (type id 0, mask 0) to the longest row.
    pub fn pad(inputs: &[EncoderInput], pad_id: TokenId) -> Self {
        let seq = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        let mut batch = Self {
            ids: Vec::with_capacity(inputs.len() * seq),
            type_ids: Vec::with_capacity(inputs.len() * seq),
            attention_mask: Vec::with_capacity(inputs.len() * seq),
            batch: inputs.len(),
            seq,
        };
        for input in inputs {
            let pad = seq - input.ids.len();
            batch.ids.extend(input.ids.iter().map(|&id| id as i64));
            batch.ids.extend(std::iter::repeat_n(pad_id as i64, pad));
            batch
                .type_ids
                .extend(input.type_ids.iter().map(|&t| t as i64));
            batch.type_ids.extend(std::iter::repeat_n(0, pad));
            batch
                .attention_mask
                .extend(std::iter::repeat_n(1, input.ids.len()));
            batch.attention_mask.extend(std::iter::repeat_n(0, pad));
        }
        batch
    }
}

fn load_error(path: &Path, message: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Load {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl Tokenizer {
    /// Opens the tokenizer at `path`: a `tokenizer.json` or `vocab.txt` file, or a directory
    /// holding `tokenizer.json`, `vocab.txt` or `encoder.json` + `vocab.bpe` (tried in that
    /// order).
    pub fn open(path: &Path) -> Result<Self, TokenizerError> {
        if path.is_file() {
            // One file of a byte-level BPE pair stands for the pair beside it.
            if let Some(dir) = BpeTokenizer::pair_file_dir(path) {
                return match BpeTokenizer::vocabulary_files(dir) {
                    Some(_) => Ok(Self::Gpt2(BpeTokenizer::from_dir(dir)?)),
                    None => Err(load_error(
                        path,
                        "a BPE vocabulary needs its pair beside it (encoder.json + vocab.bpe, \
                         or vocab.json + merges.txt)",
                    )),
                };
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            return if name.ends_with(".txt") {
                Self::wordpiece(path, lowercase_beside(path)?)
            } else {
                Self::from_tokenizer_json(path)
            };
        }
        if !path.is_dir() {
            return Err(load_error(path, "no such file or directory"));
        }
        let json = path.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        let vocab = path.join("vocab.txt");
        if vocab.is_file() {
            return Self::wordpiece(&vocab, lowercase_beside(&vocab)?);
        }
        if BpeTokenizer::vocabulary_files(path).is_some() {
            return Ok(Self::Gpt2(BpeTokenizer::from_dir(path)?));
        }
        Err(load_error(
            path,
            "no tokenizer.json, vocab.txt or encoder.json + vocab.bpe",
        ))
    }

    /// Reads a HuggingFace `tokenizer.json`. Its own padding and truncation settings are
    /// dropped: ember pads per batch and truncates per call.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TokenizerError> {
        let mut tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| load_error(path, format!("not a tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_error(path, e))?;
        Ok(Self::Hf(Box::new(tokenizer)))
    }

    /// BERT's WordPiece from a `vocab.txt` (one token per line, id = line number): BERT's
    /// normaliser (control characters removed, CJK split, accents stripped when lowercasing),
    /// its whitespace-and-punctuation pre-tokeniser, `##` continuations, and
    /// `[CLS] A [SEP] (B [SEP])` around the input.
    pub fn wordpiece(vocab: &Path, lowercase: bool) -> Result<Self, TokenizerError> {
        let text = crate::read_text_file(vocab).map_err(|e| load_error(vocab, e.reason()))?;
        let mut ids = std::collections::HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let token = line.trim_end_matches('\r');
            if token.is_empty() {
                return Err(load_error(vocab, format!("line {}: empty token", n + 1)));
            }
            if ids.insert(token.to_string(), n as u32).is_some() {
                return Err(load_error(
                    vocab,
                    format!("line {}: token `{token}` appears twice", n + 1),
                ));
            }
        }
        let id = |token: &str| {
            ids.get(token)
                .copied()
                .ok_or_else(|| load_error(vocab, format!("no `{token}` token in the vocabulary")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        id("[UNK]")?;
        let present: Vec<AddedToken> = BERT_SPECIAL_TOKENS
            .iter()
            .filter(|t| ids.contains_key(**t))
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let vocab_str = vocab
            .to_str()
            .ok_or_else(|| load_error(vocab, "path is not valid UTF-8"))?;
        let model = WordPiece::from_file(vocab_str)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| load_error(vocab, e))?;
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )))
            .with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        tokenizer.add_special_tokens(&present);
        Ok(Self::Hf(Box::new(tokenizer)))
    }

    /// Trains a BERT-style WordPiece vocabulary of at most `vocab_size` ids on `texts`
    /// (BERT's normaliser and pre-tokeniser; ids 0–4 are `[PAD] [UNK] [CLS] [SEP] [MASK]`), for
    /// models trained from scratch on a corpus no published vocabulary fits.
    pub fn train_wordpiece<S: AsRef<str> + Send>(
        texts: impl Iterator<Item = S> + Send,
        vocab_size: usize,
        lowercase: bool,
    ) -> Result<Self, TokenizerError> {
        let error = |e: Box<dyn std::error::Error + Send + Sync>| {
            TokenizerError::Encode(format!("training WordPiece: {e}"))
        };
        if vocab_size <= BERT_SPECIAL_TOKENS.len() {
            return Err(TokenizerError::Encode(format!(
                "a WordPiece vocabulary needs more than {} ids, got {vocab_size}",
                BERT_SPECIAL_TOKENS.len()
            )));
        }
        let specials: Vec<AddedToken> = BERT_SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let model = WordPiece::builder()
            .unk_token("[UNK]".into())
            .build()
            .map_err(error)?;
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .with_pre_tokenizer(Some(BertPreTokenizer));
        let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(1)
            .special_tokens(specials.clone())
            .show_progress(false)
            .build()
            .into();
        tokenizer.train(&mut trainer, texts).map_err(error)?;
        let id = |t: &str| tokenizer.token_to_id(t).expect("special tokens come first");
        let (cls, sep) = (id("[CLS]"), id("[SEP]"));
        tokenizer
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )))
            .with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        tokenizer.add_special_tokens(&specials);
        Ok(Self::Hf(Box::new(tokenizer)))
    }

    /// Writes a HuggingFace tokenizer as `tokenizer.json` at `path` (atomically); GPT-2's BPE
    /// is kept as its two vocabulary files and is not written here.
    pub fn save_json(&self, path: &Path) -> Result<(), TokenizerError> {
        match self {
            Self::Gpt2(_) => Err(load_error(
                path,
                "GPT-2's BPE is saved as encoder.json + vocab.bpe, not tokenizer.json",
            )),
            Self::Hf(hf) => {
                let json = hf.to_string(false).map_err(|e| load_error(path, e))?;
                crate::write_atomically(path, json.as_bytes()).map_err(|e| load_error(path, e))
            }
        }
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(bpe) => bpe.vocab_size(),
            Self::Hf(hf) => hf.get_vocab_size(true),
        }
    }

    /// The id of `token` (e.g. `"[MASK]"`, `"<|endoftext|>"`).
    pub fn token_id(&self, token: &str) -> Option<TokenId> {
        match self {
            Self::Gpt2(bpe) => bpe.special_id(token),
            Self::Hf(hf) => hf.token_to_id(token),
        }
    }

    /// The text of token `id` as the vocabulary writes it (`##ing`, `Ġthe`).
    pub fn token(&self, id: TokenId) -> Option<String> {
        match self {
            Self::Gpt2(bpe) => bpe.token_bytes(id).map(crate::bpe::bytes_to_token_string),
            Self::Hf(hf) => hf.id_to_token(id),
        }
    }

    /// The ids of `text`, without special tokens around it (special tokens written in the
    /// text, such as `[MASK]`, are still recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>, TokenizerError> {
        match self {
            Self::Gpt2(bpe) => Ok(bpe.encode(text)),
            Self::Hf(hf) => Ok(hf
                .encode(text, false)
                .map_err(|e| TokenizerError::Encode(e.to_string()))?
                .get_ids()
                .to_vec()),
        }
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[TokenId]) -> Result<String, TokenizerError> {
        match self {
            Self::Gpt2(bpe) => Ok(bpe.decode(ids)?),
            Self::Hf(hf) => hf
                .decode(ids, true)
                .map_err(|e| TokenizerError::Encode(e.to_string())),
        }
    }

    /// One encoder input: `first` (and `second`) with the tokenizer's special tokens, at most
    /// `max_len` ids, cut longest-first as HuggingFace does. GPT-2's BPE adds no special
    /// tokens; its pairs are the two texts' ids one after the other.
    pub fn encode_for_encoder(
        &self,
        first: &str,
        second: Option<&str>,
        max_len: usize,
    ) -> Result<EncoderInput, TokenizerError> {
        let error =
            |e: Box<dyn std::error::Error + Send + Sync>| TokenizerError::Encode(e.to_string());
        match self {
            Self::Gpt2(bpe) => {
                let mut a = bpe.encode(first);
                let mut b = second.map(|s| bpe.encode(s)).unwrap_or_default();
                while a.len() + b.len() > max_len {
                    if a.len() >= b.len() {
                        a.pop();
                    } else {
                        b.pop();
                    }
                }
                let type_ids = [vec![0; a.len()], vec![1; b.len()]].concat();
                a.extend(b);
                Ok(EncoderInput { ids: a, type_ids })
            }
            Self::Hf(hf) => {
                let a = hf.encode(first, false).map_err(error)?;
                let b = second
                    .map(|s| hf.encode(s, false))
                    .transpose()
                    .map_err(error)?;
                let added = hf
                    .get_post_processor()
                    .map_or(0, |p| p.added_tokens(b.is_some()));
                if max_len <= added {
                    return Err(TokenizerError::Encode(format!(
                        "max length {max_len} leaves no room beside the {added} special tokens"
                    )));
                }
                let params = TruncationParams {
                    max_length: max_len - added,
                    strategy: TruncationStrategy::LongestFirst,
                    ..Default::default()
                };
                let (a, b) = truncate_encodings(a, b, &params).map_err(error)?;
                let encoding = hf.post_process(a, b, true).map_err(error)?;
                Ok(EncoderInput {
                    ids: encoding.get_ids().to_vec(),
                    type_ids: encoding.get_type_ids().to_vec(),
                })
            }
        }
    }
}

/// `do_lower_case` from a `tokenizer_config.json` beside `vocab` (true when absent, as for
/// the uncased models most BERT checkpoints are). A malformed file is an error: guessing the
/// case would give a cased model lower-cased ids without a word.
fn lowercase_beside(vocab: &Path) -> Result<bool, TokenizerError> {
    let config = vocab.with_file_name("tokenizer_config.json");
    Ok(crate::optional_json_field::<bool>(&config, "do_lower_case")?.unwrap_or(true))
}
