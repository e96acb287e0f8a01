//! GPT-2 byte-level BPE, exact to tiktoken's `gpt2` encoding.
//!
//! GPT-2 ships its vocabulary as two files: `encoder.json` (token string → id, where each byte
//! is spelled as a printable Unicode character by `bytes_to_unicode`) and `vocab.bpe` (the merge
//! list, in order of priority). Like tiktoken, ember works on raw bytes: a token's *rank* is its
//! id, the 256 single bytes come first and every merge line adds the next id. Encoding a
//! pre-tokenizer piece repeatedly merges the adjacent pair whose concatenation has the lowest
//! rank (leftmost on ties) — tiktoken's rule, which is why ids are identical to tiktoken's.

use std::fmt;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use crate::pretokenize::Pieces;

/// Token id type: GPT-2 has 50,257 tokens, far below `u32::MAX`.
pub type TokenId = u32;

/// GPT-2's end-of-text token string; its id is 50256 in GPT-2's vocabulary.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Errors loading or using a BPE vocabulary. Messages are one line and name the file and line.
#[derive(Debug, thiserror::Error)]
pub enum BpeError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("unknown token id {0}")]
    UnknownId(TokenId),
}

/// The byte ↔ printable-character table of GPT-2's `bytes_to_unicode`.
///
/// Printable Latin-1 bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68
/// bytes are mapped in order to U+0100, U+0101, … so that no token string contains whitespace or
/// control characters. Returns `table[byte] = char`.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            next_extra += 1;
            char::from_u32(255 + next_extra).expect("valid code point")
        };
    }
    table
}

/// The ranks of single bytes: printable bytes first in byte order, then the remapped ones.
fn byte_rank_order() -> Vec<u8> {
    let table = bytes_to_unicode();
    let mut order: Vec<u8> = (0..=255u8).collect();
    order.sort_by_key(|&b| table[b as usize] as u32);
    order
}

/// A byte-level BPE tokenizer (GPT-2's, or one trained by [`crate::bpe_train`]).
#[derive(Clone)]
pub struct BpeTokenizer {
    /// Token bytes → rank (= id) for every mergeable token.
    ranks: FxHashMap<Vec<u8>, TokenId>,
    /// id → token bytes, for decoding; special tokens included.
    id_to_bytes: Vec<Vec<u8>>,
    /// Special tokens recognised in [`BpeTokenizer::encode`], e.g. `<|endoftext|>`.
    special: Vec<(String, TokenId)>,
}

impl fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

impl BpeTokenizer {
    /// Loads GPT-2's two-file format from a directory holding `encoder.json` and `vocab.bpe`
    /// (OpenAI's names) or `vocab.json` and `merges.txt` (the same files as HuggingFace names
    /// them in a model directory).
    pub fn from_dir(dir: &Path) -> Result<Self, BpeError> {
        let (encoder, merges) = Self::vocabulary_files(dir)
            .unwrap_or_else(|| (dir.join("encoder.json"), dir.join("vocab.bpe")));
        Self::from_files(&encoder, &merges)
    }

    /// The `(encoder, merges)` files [`BpeTokenizer::from_dir`] would load from `dir`, if both
    /// exist under either naming.
    pub fn vocabulary_files(dir: &Path) -> Option<(PathBuf, PathBuf)> {
        [("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")]
            .iter()
            .map(|(e, m)| (dir.join(e), dir.join(m)))
            .find(|(e, m)| e.is_file() && m.is_file())
    }

    /// The directory that `file`, one file of a vocabulary pair (`encoder.json`, `vocab.bpe`,
    /// `vocab.json` or `merges.txt`), stands for: a user may name either file of the pair.
    /// `None` for any other file name.
    pub fn pair_file_dir(file: &Path) -> Option<&Path> {
        let name = file.file_name()?.to_str()?;
        let pair = ["encoder.json", "vocab.bpe", "vocab.json", "merges.txt"];
        pair.contains(&name).then(|| {
            file.parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
    }

    /// Loads `encoder.json` + `vocab.bpe` and checks that they agree: the ids in `encoder.json`
    /// must be exactly the ranks implied by the merge list (as tiktoken asserts), otherwise
    /// encoding would not match the vocabulary's training.
    pub fn from_files(encoder_json: &Path, vocab_bpe: &Path) -> Result<Self, BpeError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| BpeError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let encoder_text = read(encoder_json)?;
        let merges_text = read(vocab_bpe)?;
        let encoder: FxHashMap<String, TokenId> =
            serde_json::from_str(&encoder_text).map_err(|e| BpeError::Format {
                path: encoder_json.to_path_buf(),
                message: format!("not a JSON object of token → id: {e}"),
            })?;
        Self::from_parts(encoder, &merges_text, encoder_json, vocab_bpe)
    }

    fn from_parts(
        encoder: FxHashMap<String, TokenId>,
        merges_text: &str,
        encoder_path: &Path,
        merges_path: &Path,
    ) -> Result<Self, BpeError> {
        let table = bytes_to_unicode();
        let mut char_to_byte = FxHashMap::default();
        for (byte, &c) in table.iter().enumerate() {
            char_to_byte.insert(c, byte as u8);
        }
        let decode_token = |token: &str| -> Option<Vec<u8>> {
            token
                .chars()
                .map(|c| char_to_byte.get(&c).copied())
                .collect()
        };
        let merges_error = |line: usize, message: String| BpeError::Format {
            path: merges_path.to_path_buf(),
            message: format!("line {line}: {message}"),
        };

        // Ranks implied by the merge list: 256 bytes, then one token per merge line.
        let mut ranks: FxHashMap<Vec<u8>, TokenId> = FxHashMap::default();
        for (rank, byte) in byte_rank_order().into_iter().enumerate() {
            ranks.insert(vec![byte], rank as TokenId);
        }
        for (index, line) in merges_text.lines().enumerate() {
            let line_no = index + 1;
            if index == 0 && line.starts_with("#version") {
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(left), Some(right), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(merges_error(
                    line_no,
                    format!("expected two space-separated tokens, found {line:?}"),
                ));
            };
            let (Some(mut merged), Some(right)) = (decode_token(left), decode_token(right)) else {
                return Err(merges_error(
                    line_no,
                    format!("{line:?} has a character outside GPT-2's byte alphabet"),
                ));
            };
            merged.extend_from_slice(&right);
            let rank = ranks.len() as TokenId;
            if ranks.insert(merged, rank).is_some() {
                return Err(merges_error(
                    line_no,
                    format!("merge {line:?} produces a token that already exists"),
                ));
            }
        }

        // encoder.json must hold exactly these tokens at exactly these ids, plus special tokens.
        let encoder_error = |message: String| BpeError::Format {
            path: encoder_path.to_path_buf(),
            message,
        };
        let mut special = Vec::new();
        let mut seen = 0usize;
        for (token, &id) in &encoder {
            if token.starts_with("<|") && token.ends_with("|>") && token.len() > 4 {
                special.push((token.clone(), id));
                continue;
            }
            let bytes = decode_token(token).ok_or_else(|| {
                encoder_error(format!(
                    "token {token:?} has a character outside GPT-2's byte alphabet"
                ))
            })?;
            match ranks.get(&bytes) {
                Some(&rank) if rank == id => seen += 1,
                Some(&rank) => {
                    return Err(encoder_error(format!(
                        "token {token:?} has id {id} but {} gives it rank {rank}",
                        merges_path.display()
                    )));
                }
                None => {
                    return Err(encoder_error(format!(
                        "token {token:?} (id {id}) is not produced by the merges in {}",
                        merges_path.display()
                    )));
                }
            }
        }
        if seen != ranks.len() {
            return Err(encoder_error(format!(
                "has {seen} tokens but {} defines {} (256 bytes + merges)",
                merges_path.display(),
                ranks.len()
            )));
        }
        special.sort_by_key(|(_, id)| *id);
        Self::from_ranks(ranks, special).map_err(encoder_error)
    }

    /// Builds a tokenizer from mergeable ranks (token bytes → id) and special tokens.
    /// Ids must be dense: `0..ranks.len() + special.len()` each used once.
    pub fn from_ranks(
        ranks: FxHashMap<Vec<u8>, TokenId>,
        special: Vec<(String, TokenId)>,
    ) -> Result<Self, String> {
        if let Some(byte) = (0..=255u8).find(|&b| !ranks.contains_key(&[b][..])) {
            return Err(format!(
                "byte {byte:#04x} has no token; byte-level BPE needs all 256"
            ));
        }
        let vocab_size = ranks.len() + special.len();
        let mut id_to_bytes: Vec<Option<Vec<u8>>> = vec![None; vocab_size];
        let entries = ranks
            .iter()
            .map(|(bytes, &id)| (bytes.clone(), id))
            .chain(special.iter().map(|(s, id)| (s.as_bytes().to_vec(), *id)));
        for (bytes, id) in entries {
            let slot = id_to_bytes
                .get_mut(id as usize)
                .ok_or_else(|| format!("id {id} is out of range for {vocab_size} tokens"))?;
            if slot.replace(bytes).is_some() {
                return Err(format!("id {id} is used twice"));
            }
        }
        let id_to_bytes = id_to_bytes
            .into_iter()
            .map(|b| b.unwrap_or_default())
            .collect();
        Ok(Self {
            ranks,
            id_to_bytes,
            special,
        })
    }

    /// Number of token ids, special tokens included (50,257 for GPT-2).
    pub fn vocab_size(&self) -> usize {
        self.id_to_bytes.len()
    }

    /// Id of a special token such as [`END_OF_TEXT`].
    pub fn special_id(&self, token: &str) -> Option<TokenId> {
        self.special
            .iter()
            .find(|(s, _)| s == token)
            .map(|&(_, id)| id)
    }

    /// Encodes text, turning each occurrence of a special token (e.g. `<|endoftext|>`) into its
    /// id — tiktoken's `encode(text, allowed_special="all")`.
    pub fn encode(&self, text: &str) -> Vec<TokenId> {
        let mut ids = Vec::with_capacity(text.len() / 4 + 1);
        let mut rest = text;
        while let Some((start, token, id)) = self.next_special(rest) {
            self.encode_ordinary_into(&rest[..start], &mut ids);
            ids.push(id);
            rest = &rest[start + token.len()..];
        }
        self.encode_ordinary_into(rest, &mut ids);
        ids
    }

    /// Encodes text treating special-token strings as plain text (tiktoken's `encode_ordinary`).
    pub fn encode_ordinary(&self, text: &str) -> Vec<TokenId> {
        let mut ids = Vec::with_capacity(text.len() / 4 + 1);
        self.encode_ordinary_into(text, &mut ids);
        ids
    }

    /// The earliest special token in `text`: (byte offset, token, id).
    fn next_special<'s>(&'s self, text: &str) -> Option<(usize, &'s str, TokenId)> {
        if self.special.is_empty() || !text.contains("<|") {
            return None;
        }
        self.special
            .iter()
            .filter_map(|(token, id)| {
                text.find(token.as_str())
                    .map(|at| (at, token.as_str(), *id))
            })
            .min_by_key(|&(at, token, _)| (at, usize::MAX - token.len()))
    }

    fn encode_ordinary_into(&self, text: &str, ids: &mut Vec<TokenId>) {
        let mut parts = Vec::new();
        for piece in Pieces::new(text) {
            let bytes = piece.as_bytes();
            if let Some(&id) = self.ranks.get(bytes) {
                ids.push(id);
                continue;
            }
            self.byte_pair_merge(bytes, &mut parts);
            ids.extend(parts.windows(2).map(|w| self.ranks[&bytes[w[0].0..w[1].0]]));
        }
    }

    /// Rank of `piece[parts[i].0 .. parts[i + 3].0]`, the token that merging parts i, i+1 and
    /// i+2 (i.e. merging the pair at i+1 into its left neighbour's pair at i) would form.
    #[inline]
    fn rank_of(&self, piece: &[u8], parts: &[(usize, TokenId)], i: usize) -> TokenId {
        match parts.get(i + 3) {
            Some(&(end, _)) => self
                .ranks
                .get(&piece[parts[i].0..end])
                .copied()
                .unwrap_or(TokenId::MAX),
            None => TokenId::MAX,
        }
    }

    /// tiktoken's merge loop. `parts[k] = (start offset, rank of the pair starting at k)`;
    /// on return, consecutive starts delimit the tokens of `piece` (last entry = piece length).
    fn byte_pair_merge(&self, piece: &[u8], parts: &mut Vec<(usize, TokenId)>) {
        parts.clear();
        for i in 0..piece.len() - 1 {
            let rank = self.ranks.get(&piece[i..i + 2]).copied();
            parts.push((i, rank.unwrap_or(TokenId::MAX)));
        }
        parts.push((piece.len() - 1, TokenId::MAX));
        parts.push((piece.len(), TokenId::MAX));

        loop {
            // The pair with the lowest rank, leftmost on ties (the last entry never starts a pair).
            let mut best = (TokenId::MAX, 0);
            for (i, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
                if rank < best.0 {
                    best = (rank, i);
                }
            }
            if best.0 == TokenId::MAX {
                break;
            }
            let i = best.1;
            // Merge parts i and i+1: the pair at i now spans up to parts[i + 3].
            parts[i].1 = self.rank_of(piece, parts, i);
            if i > 0 {
                parts[i - 1].1 = self.rank_of(piece, parts, i - 1);
            }
            parts.remove(i + 1);
        }
    }

    /// The bytes of a sequence of ids (tokens may split UTF-8 characters).
    pub fn decode_bytes(&self, ids: &[TokenId]) -> Result<Vec<u8>, BpeError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let bytes = self
                .id_to_bytes
                .get(id as usize)
                .ok_or(BpeError::UnknownId(id))?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// Decodes ids to text; invalid UTF-8 (a character cut between tokens) becomes U+FFFD, as in
    /// tiktoken's `decode(errors="replace")`.
    pub fn decode(&self, ids: &[TokenId]) -> Result<String, BpeError> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    /// The bytes of one token (for display and for writing the vocabulary back out).
    pub fn token_bytes(&self, id: TokenId) -> Option<&[u8]> {
        self.id_to_bytes.get(id as usize).map(Vec::as_slice)
    }

    /// Whether `id` is a special token.
    pub fn is_special(&self, id: TokenId) -> bool {
        self.special.iter().any(|&(_, s)| s == id)
    }
}

/// Spells token bytes the way `encoder.json` and `vocab.bpe` store them.
pub fn bytes_to_token_string(bytes: &[u8]) -> String {
    let table = bytes_to_unicode();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let table = bytes_to_unicode();
        assert_eq!(table[b'A' as usize], 'A');
        assert_eq!(table[b' ' as usize], 'Ġ'); // U+0120: the famous "Ġ" prefix
        assert_eq!(table[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(table[0], 'Ā'); // U+0100
        let order = byte_rank_order();
        assert_eq!(order[0], b'!'); // id 0 is "!" in GPT-2's encoder.json
        assert_eq!(order[188], 0); // first remapped byte follows the 188 printable ones
    }
}
