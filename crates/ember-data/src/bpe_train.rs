//! Training a byte-level BPE vocabulary on a corpus, saved in GPT-2's two-file format.
//!
//! The corpus is split with GPT-2's pre-tokenizer, identical pieces are counted once with their
//! frequency, and the most frequent adjacent pair of tokens is merged until the vocabulary
//! reaches the requested size. Ties go to the pair with the smallest ids, so training is
//! deterministic. Ids: the 256 bytes in GPT-2's order, then one id per merge, then
//! `<|endoftext|>` last — the layout `BpeTokenizer::from_dir` checks when it loads the files back.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::Entry;
use std::path::Path;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::bpe::{BpeTokenizer, END_OF_TEXT, TokenId, bytes_to_token_string, bytes_to_unicode};
use crate::pretokenize::Pieces;
use crate::write_atomically;

/// Smallest vocabulary: the 256 bytes plus `<|endoftext|>`.
pub const MIN_VOCAB_SIZE: usize = 257;

/// A trained vocabulary: token bytes by id and the merges in priority order.
#[derive(Clone, Debug)]
pub struct TrainedBpe {
    /// `token_bytes[id]` for every mergeable token (bytes and merges; not the special token).
    pub token_bytes: Vec<Vec<u8>>,
    /// `(left, right)` ids of each merge; merge `k` created token `256 + k`.
    pub merges: Vec<(TokenId, TokenId)>,
}

type Pair = (TokenId, TokenId);

/// One distinct pre-tokenizer piece: its current tokens and how often it occurs.
struct Word {
    symbols: Vec<TokenId>,
    count: i64,
}

impl Word {
    fn pairs(&self) -> impl Iterator<Item = Pair> + '_ {
        self.symbols.windows(2).map(|w| (w[0], w[1]))
    }
}

/// Trains up to `vocab_size` tokens (including `<|endoftext|>`), merging only pairs seen at
/// least `min_frequency` times. Stops earlier when no such pair is left.
pub fn train<'t>(
    texts: impl IntoIterator<Item = &'t str>,
    vocab_size: usize,
    min_frequency: u64,
    mut on_merge: impl FnMut(usize, usize),
) -> Result<TrainedBpe, String> {
    if vocab_size < MIN_VOCAB_SIZE {
        return Err(format!(
            "vocab size must be at least {MIN_VOCAB_SIZE} (256 bytes + {END_OF_TEXT}), got {vocab_size}"
        ));
    }
    let table = bytes_to_unicode();
    // id of each byte: its rank in GPT-2's order (printable characters first).
    let mut byte_id = [0 as TokenId; 256];
    let mut order: Vec<u8> = (0..=255).collect();
    order.sort_by_key(|&b| table[b as usize] as u32);
    for (id, &b) in order.iter().enumerate() {
        byte_id[b as usize] = id as TokenId;
    }
    let mut token_bytes: Vec<Vec<u8>> = order.iter().map(|&b| vec![b]).collect();
    let mut known: FxHashSet<Vec<u8>> = token_bytes.iter().cloned().collect();

    let mut piece_counts: FxHashMap<&str, i64> = FxHashMap::default();
    for text in texts {
        for piece in Pieces::new(text) {
            *piece_counts.entry(piece).or_default() += 1;
        }
    }
    let mut pieces: Vec<(&str, i64)> = piece_counts.into_iter().collect();
    pieces.sort_unstable(); // deterministic word order
    let mut words: Vec<Word> = pieces
        .into_iter()
        .map(|(piece, count)| Word {
            symbols: piece.bytes().map(|b| byte_id[b as usize]).collect(),
            count,
        })
        .collect();

    let mut pair_counts: FxHashMap<Pair, i64> = FxHashMap::default();
    let mut pair_words: FxHashMap<Pair, FxHashSet<usize>> = FxHashMap::default();
    for (index, word) in words.iter().enumerate() {
        for pair in word.pairs() {
            *pair_counts.entry(pair).or_default() += word.count;
            pair_words.entry(pair).or_default().insert(index);
        }
    }
    // Max-heap of (count, smallest pair first); stale entries are skipped when popped.
    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> = pair_counts
        .iter()
        .map(|(&pair, &count)| (count, Reverse(pair)))
        .collect();

    let target_merges = vocab_size - MIN_VOCAB_SIZE;
    // Room for as many merges as the corpus has pairs to start with: a `vocab_size` far beyond
    // what the corpus can give (`--vocab-size 4294967296`) must not allocate for itself.
    let mut merges = Vec::with_capacity(target_merges.min(pair_counts.len()));
    while merges.len() < target_merges {
        let Some((count, Reverse(pair))) = heap.pop() else {
            break;
        };
        if pair_counts.get(&pair).copied() != Some(count) {
            continue; // stale
        }
        if (count as u64) < min_frequency.max(1) {
            break;
        }
        let mut merged = token_bytes[pair.0 as usize].clone();
        merged.extend_from_slice(&token_bytes[pair.1 as usize]);
        if !known.insert(merged.clone()) {
            // Another merge already spells these bytes; a second id would be ambiguous.
            pair_counts.remove(&pair);
            continue;
        }
        let new_id = token_bytes.len() as TokenId;
        token_bytes.push(merged);
        merges.push(pair);
        on_merge(merges.len(), target_merges);

        let mut touched: FxHashSet<Pair> = FxHashSet::default();
        let word_ids: Vec<usize> = pair_words.remove(&pair).into_iter().flatten().collect();
        for index in word_ids {
            let word = &mut words[index];
            if !word.pairs().any(|p| p == pair) {
                continue;
            }
            for p in word.pairs() {
                *pair_counts.entry(p).or_default() -= word.count;
                touched.insert(p);
            }
            let mut symbols = Vec::with_capacity(word.symbols.len());
            let mut i = 0;
            while i < word.symbols.len() {
                if i + 1 < word.symbols.len() && (word.symbols[i], word.symbols[i + 1]) == pair {
                    symbols.push(new_id);
                    i += 2;
                } else {
                    symbols.push(word.symbols[i]);
                    i += 1;
                }
            }
            word.symbols = symbols;
            for p in word.pairs() {
                *pair_counts.entry(p).or_default() += word.count;
                pair_words.entry(p).or_default().insert(index);
                touched.insert(p);
            }
        }
        pair_counts.remove(&pair);
        for p in touched {
            if let Entry::Occupied(entry) = pair_counts.entry(p) {
                if *entry.get() <= 0 {
                    entry.remove();
                } else {
                    heap.push((*entry.get(), Reverse(p)));
                }
            }
        }
    }
    Ok(TrainedBpe {
        token_bytes,
        merges,
    })
}

impl TrainedBpe {
    /// Total ids including `<|endoftext|>`.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len() + 1
    }

    /// The tokenizer for this vocabulary, with `<|endoftext|>` as the last id.
    pub fn tokenizer(&self) -> BpeTokenizer {
        let ranks = self
            .token_bytes
            .iter()
            .enumerate()
            .map(|(id, bytes)| (bytes.clone(), id as TokenId))
            .collect();
        let special = vec![(END_OF_TEXT.to_string(), self.token_bytes.len() as TokenId)];
        BpeTokenizer::from_ranks(ranks, special).expect("trained ids are dense")
    }

    /// Writes `encoder.json` and `vocab.bpe` into `dir` (created if missing). Each file is
    /// written to a temporary name and renamed, so an interrupted save never leaves a
    /// half-written vocabulary behind.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut encoder = String::from("{");
        let names = self
            .token_bytes
            .iter()
            .map(|b| bytes_to_token_string(b))
            .chain([END_OF_TEXT.to_string()]);
        for (id, name) in names.enumerate() {
            if id > 0 {
                encoder.push_str(", ");
            }
            encoder.push_str(&serde_json::to_string(&name).expect("a string serializes"));
            encoder.push_str(&format!(": {id}"));
        }
        encoder.push('}');

        let mut merges = String::from("#version: 0.2\n");
        for &(left, right) in &self.merges {
            merges.push_str(&bytes_to_token_string(&self.token_bytes[left as usize]));
            merges.push(' ');
            merges.push_str(&bytes_to_token_string(&self.token_bytes[right as usize]));
            merges.push('\n');
        }
        write_atomically(&dir.join("encoder.json"), encoder.as_bytes())?;
        write_atomically(&dir.join("vocab.bpe"), merges.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_the_most_frequent_pair_first() {
        let bpe = train(["low low low lower lowest"], 257 + 3, 2, |_, _| {}).unwrap();
        let tok = bpe.tokenizer();
        let spell = |id: TokenId| String::from_utf8(tok.token_bytes(id).unwrap().to_vec()).unwrap();
        let learned: Vec<String> = (256..259).map(spell).collect();
        // " l"+"o" style pairs: "lo" (×5 with the space variants counted per piece) comes first.
        assert_eq!(learned[0], "lo");
        assert_eq!(tok.special_id(END_OF_TEXT), Some(259));
        let text = "low lower";
        assert_eq!(tok.decode(&tok.encode(text)).unwrap(), text);
    }

    #[test]
    fn rejects_tiny_vocabularies() {
        assert!(train(["abc"], 256, 2, |_, _| {}).is_err());
    }
}
