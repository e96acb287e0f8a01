//! ember-data: everything between raw files and batches of token ids.
//!
//! - [`datasets`]: the dataset manifest, a verified local cache and fetching (mirror first, then URLs).
//! - [`bpe`]: GPT-2 byte-level BPE that encodes exactly like tiktoken's `gpt2` encoding.
//! - [`bpe_train`]: training a byte-level BPE vocabulary in the same two-file format.
//! - [`loader`]: sliding-window (input, target) pretraining batches.
//! - [`instruct`]: Alpaca-style instruction data, prompt templates and the instruction collate.
//! - [`tokenizer`]: one type over GPT-2's BPE and HuggingFace tokenizers (tokenizer.json, WordPiece).
//! - [`dates`]: the date-normalisation task for seq2seq models (generated, reproducible).
//! - [`seq2seq`]: parallel TSV pairs, a character vocabulary and teacher-forcing batches.
//! - [`mlm`]: BERT pretraining inputs: masked-LM corruption and next-sentence pairs.
//! - [`classification`]: labelled texts (SMS spam, CSV/TSV), balanced splits, padded batches.

pub mod bpe;
pub mod bpe_train;
pub mod classification;
pub mod datasets;
pub mod dates;
pub mod instruct;
pub mod loader;
pub mod mlm;
mod pretokenize;
pub mod rng;
pub mod seq2seq;
pub mod tokenizer;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a text file could not be read; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TextFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: is a directory, expected a text file")]
    IsDirectory { path: PathBuf },
    #[error("{path}: not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
}

impl TextFileError {
    /// What is wrong, without the path: for an error type of a caller that names the file
    /// itself (`train.tsv: not valid UTF-8`, not `train.tsv: train.tsv: not valid UTF-8`).
    pub fn reason(&self) -> String {
        match self {
            Self::Io { source, .. } => source.to_string(),
            Self::IsDirectory { .. } => "is a directory, expected a text file".into(),
            Self::NotUtf8 { offset, .. } => {
                format!("not valid UTF-8 (first bad byte at offset {offset})")
            }
        }
    }
}

/// Reads a whole UTF-8 text file, with errors that say which file and what is wrong with it.
pub fn read_text_file(path: &Path) -> Result<String, TextFileError> {
    if path.is_dir() {
        return Err(TextFileError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| TextFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| TextFileError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Why an optional JSON side file (a tokenizer or pooling config beside the weights) could
/// not be used; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SideFileError {
    pub path: PathBuf,
    pub message: String,
}

/// An optional JSON side file: `None` when absent; an error when it cannot be read or is not
/// JSON, rather than silently running with the defaults it was meant to replace.
pub fn read_optional_json(path: &Path) -> Result<Option<serde_json::Value>, SideFileError> {
    let error = |message: String| SideFileError {
        path: path.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(e.to_string())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| error(format!("not valid JSON: {e}")))
}

/// Field `key` of the optional JSON side file `path`, read as `T`: `None` when the file or
/// the field is absent (or null); an error naming the field when its value has another type.
pub fn optional_json_field<T: serde::de::DeserializeOwned>(
    path: &Path,
    key: &str,
) -> Result<Option<T>, SideFileError> {
    let value = read_optional_json(path)?
        .and_then(|mut json| json.get_mut(key).map(serde_json::Value::take))
        .unwrap_or(serde_json::Value::Null);
    if value.is_null() {
        return Ok(None);
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| SideFileError {
            path: path.to_path_buf(),
            message: format!("field `{key}`: {e}"),
        })
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .map_or_else(|| "out".into(), |name| name.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
