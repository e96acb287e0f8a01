//! Parallel TSV pairs, the character vocabulary and teacher-forcing batches.

use ember_data::loader::{Batch, Batches};
use ember_data::seq2seq::{
    BOS, CharVocab, EOS, PAD, Pair, Seq2SeqLoader, Seq2SeqVocab, UNK, read_pairs,
};

fn pair(source: &str, target: &str) -> Pair {
    Pair {
        source: source.into(),
        target: target.into(),
    }
}

#[test]
fn tsv_pairs_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tsv");
    std::fs::write(
        &good,
        "3rd of March 1998\t1998-03-03\r\n\nMar 3, 98\t1998-03-03\n",
    )
    .unwrap();
    assert_eq!(
        read_pairs(&good).unwrap(),
        [
            pair("3rd of March 1998", "1998-03-03"),
            pair("Mar 3, 98", "1998-03-03")
        ]
    );
    for (text, needle) in [
        (
            "a\tb\nno tab here\n",
            "line 2: expected `source<TAB>target`",
        ),
        ("a\t\n", "line 1: empty source or target"),
        ("a\tb\tc\n", "line 1: more than one tab"),
        ("\n\n", "no pairs"),
    ] {
        let path = dir.path().join("bad.tsv");
        std::fs::write(&path, text).unwrap();
        let err = read_pairs(&path).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("bad.tsv"), "{err}");
    }
}

#[test]
fn characters_round_trip_and_unknown_ones_map_to_unk() {
    let vocab = CharVocab::build(&[pair("ba", "c-1"), pair("a", "b")]);
    // <pad> <bos> <eos> <unk>, then '-' '1' 'a' 'b' 'c' in code-point order.
    assert_eq!(vocab.len(), 9);
    assert_eq!(vocab.encode("-1abc"), [4, 5, 6, 7, 8]);
    assert_eq!(vocab.encode("az"), [6, UNK]);
    assert_eq!(vocab.decode(&[BOS, 8, 6, EOS, PAD]), "ca");
    assert_eq!(vocab.decode(&[UNK]), "\u{fffd}");
    assert_eq!(vocab.token(EOS), "<eos>");
    assert_eq!(CharVocab::from_chars(vocab.chars().to_vec()), vocab);
}

#[test]
fn batches_pad_shift_and_label_like_the_book() {
    let pairs = [pair("ab", "c"), pair("abab", "cc")];
    let vocab = CharVocab::build(&pairs);
    let (a, b, c) = (4i64, 5i64, 6i64);
    let loader = Seq2SeqLoader::new(&pairs, |t| vocab.encode(t), 8, 2, None, "t").unwrap();
    let batch = loader.collate(&[0, 1]);
    assert_eq!((batch.batch, batch.src_len, batch.tgt_len), (2, 4, 3));
    assert_eq!(batch.src, [a, b, 0, 0, a, b, a, b]);
    assert_eq!(batch.tgt_in, [1, c, 0, 1, c, c]);
    assert_eq!(batch.tgt_out, [c, 2, -100, c, c, 2]);
    // Real tokens: 2 + 4 source, 2 + 3 target outputs.
    assert_eq!(batch.num_tokens(), 11);
    assert_eq!(loader.num_batches(), 1);
    // Too long for the positions: an error naming the pair.
    let err = Seq2SeqLoader::new(&pairs, |t| vocab.encode(t), 3, 2, None, "train.tsv").unwrap_err();
    assert!(
        err.to_string()
            .contains("train.tsv: pair 2 is 4 tokens long"),
        "{err}"
    );
    // Shuffled epochs differ but repeat, and drop the short last batch.
    let many: Vec<Pair> = (0..10).map(|i| pair(&"a".repeat(i + 1), "b")).collect();
    let shuffled = Seq2SeqLoader::new(&many, |t| vocab.encode(t), 16, 3, Some(7), "t").unwrap();
    assert_eq!(shuffled.num_batches(), 3);
    let epoch = |e| shuffled.epoch_batches(e).collect::<Vec<_>>();
    assert_eq!(epoch(0), epoch(0));
    assert_ne!(epoch(0), epoch(1));
}

#[test]
fn bpe_vocabulary_round_trips_above_the_specials() {
    let pairs: Vec<Pair> = (1..60)
        .map(|d| {
            pair(
                &format!("{d} March 1998"),
                &format!("1998-03-{:02}", d % 28 + 1),
            )
        })
        .collect();
    let (vocab, trained) = Seq2SeqVocab::train_bpe(&pairs, 300).unwrap();
    assert_eq!(vocab.len(), 4 + trained.vocab_size());
    let ids = vocab.encode("17 March 1998");
    assert!(ids.iter().all(|&id| id >= 4), "{ids:?}");
    assert!(
        ids.len() < "17 March 1998".len(),
        "merges shorten the text: {ids:?}"
    );
    assert_eq!(
        vocab.decode(&[&[BOS][..], &ids, &[EOS, PAD]].concat()),
        "17 March 1998"
    );
    assert_eq!(vocab.token(EOS), "<eos>");
}
