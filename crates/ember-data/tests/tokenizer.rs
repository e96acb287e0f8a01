//! The one `Tokenizer` type: BERT WordPiece from vocab.txt and tokenizer.json, and GPT-2's BPE.
//! Expected ids are worked out by hand from the tiny vocabulary below (id = line number).

use std::path::Path;

use ember_data::tokenizer::{EncoderBatch, EncoderInput, Tokenizer};

mod common;

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", // 0..4
    "the", "capital", "of", "france", "is", ".", // 5..10
    "un", "##aff", "##able", "paris", "?", "cafe", // 11..16
];

fn write_vocab(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("vocab.txt");
    std::fs::write(&path, VOCAB.join("\n") + "\n").unwrap();
    path
}

fn ids(tokenizer: &Tokenizer, first: &str, second: Option<&str>, max: usize) -> EncoderInput {
    tokenizer.encode_for_encoder(first, second, max).unwrap()
}

fn check_wordpiece(tokenizer: &Tokenizer) {
    assert_eq!(tokenizer.vocab_size(), VOCAB.len());
    assert_eq!(tokenizer.token_id("[MASK]"), Some(4));
    assert_eq!(tokenizer.token(12).as_deref(), Some("##aff"));
    // Lowercased, [MASK] kept whole, punctuation split off, [CLS]/[SEP] around.
    let single = ids(tokenizer, "The capital of France is [MASK].", None, 64);
    assert_eq!(single.ids, [2, 5, 6, 7, 8, 9, 4, 10, 3]);
    assert_eq!(single.type_ids, [0; 9]);
    // Continuations, accents stripped, unknown words.
    assert_eq!(
        tokenizer.encode("unaffable Café zebra").unwrap(),
        [11, 12, 13, 16, 1]
    );
    // Sentence pairs: segment 1 covers B and its [SEP].
    let pair = ids(tokenizer, "the capital of france", Some("is paris?"), 64);
    assert_eq!(pair.ids, [2, 5, 6, 7, 8, 3, 9, 14, 15, 3]);
    assert_eq!(pair.type_ids, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]);
    // 7 ids: 3 special + 4, cut from the longer text first (4+3 → 3+3 → 2+3 → 2+2).
    let cut = ids(tokenizer, "the capital of france", Some("is paris?"), 7);
    assert_eq!(cut.ids, [2, 5, 6, 3, 9, 14, 3]);
    assert_eq!(cut.type_ids, [0, 0, 0, 0, 1, 1, 1]);
    let cut = ids(tokenizer, "the capital of france is paris", None, 4);
    assert_eq!(cut.ids, [2, 5, 6, 3]);
    assert!(tokenizer.encode_for_encoder("the", None, 2).is_err());
    assert_eq!(
        tokenizer.decode(&[2, 11, 12, 13, 7, 8, 3]).unwrap(),
        "unaffable of france"
    );
}

#[test]
fn wordpiece_from_vocab_txt() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = write_vocab(dir.path());
    check_wordpiece(&Tokenizer::open(dir.path()).unwrap());
    check_wordpiece(&Tokenizer::open(&vocab).unwrap());
}

#[test]
fn tokenizer_json_round_trip_encodes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = write_vocab(dir.path());
    let Tokenizer::Hf(hf) = Tokenizer::wordpiece(&vocab, true).unwrap() else {
        panic!("WordPiece is a HuggingFace tokenizer");
    };
    let json_dir = dir.path().join("json");
    std::fs::create_dir(&json_dir).unwrap();
    hf.save(json_dir.join("tokenizer.json"), false).unwrap();
    check_wordpiece(&Tokenizer::open(&json_dir).unwrap());
}

#[test]
fn cased_vocabularies_keep_case_when_the_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write_vocab(dir.path());
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"do_lower_case": false}"#,
    )
    .unwrap();
    let tokenizer = Tokenizer::open(dir.path()).unwrap();
    assert_eq!(tokenizer.encode("The the").unwrap(), [1, 5]);
}

#[test]
fn bad_vocabularies_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.txt");
    for (text, expected) in [
        (
            "[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\nthe\n",
            "line 6: token `the` appears twice",
        ),
        ("[PAD]\n[UNK]\n\n[SEP]\n", "line 3: empty token"),
        ("[PAD]\n[UNK]\n[SEP]\n", "no `[CLS]` token"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = Tokenizer::open(&path).err().unwrap().to_string();
        assert!(err.contains("vocab.txt") && err.contains(expected), "{err}");
    }
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let err = Tokenizer::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer.json") && !err.contains('\n'),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let err = Tokenizer::open(empty.path()).err().unwrap().to_string();
    assert!(err.contains("no tokenizer.json, vocab.txt"), "{err}");
}

#[test]
fn gpt2_bpe_behind_the_same_type() {
    let encoder = common::cache()
        .file("gpt2-bpe", "gpt2/encoder.json")
        .unwrap();
    let tokenizer = Tokenizer::open(encoder.parent().unwrap()).unwrap();
    let text = "Hello, world. Is this-- a test?";
    assert_eq!(tokenizer.encode(text).unwrap(), common::gpt2().encode(text));
    // Either file of the pair stands for the pair (merges.txt is not a WordPiece vocab.txt).
    for file in ["encoder.json", "vocab.bpe"] {
        let one = Tokenizer::open(&encoder.with_file_name(file)).unwrap();
        assert_eq!(
            one.encode(text).unwrap(),
            common::gpt2().encode(text),
            "{file}"
        );
    }
    let lone = tempfile::tempdir().unwrap();
    std::fs::write(lone.path().join("merges.txt"), "#version: 0.2\n").unwrap();
    let err = Tokenizer::open(&lone.path().join("merges.txt"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("needs its pair beside it"), "{err}");
    assert_eq!(tokenizer.vocab_size(), 50257);
    assert_eq!(tokenizer.token_id("<|endoftext|>"), Some(50256));
    assert_eq!(tokenizer.token(15496).as_deref(), Some("Hello"));
    let ids = tokenizer.encode(text).unwrap();
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    let pair = tokenizer
        .encode_for_encoder("Hello", Some("world"), 8)
        .unwrap();
    assert_eq!(pair.ids, [15496, 6894]);
    assert_eq!(pair.type_ids, [0, 1]);
}

#[test]
fn batches_pad_to_the_longest_row() {
    let rows = [
        EncoderInput {
            ids: vec![2, 5, 3],
            type_ids: vec![0, 0, 0],
        },
        EncoderInput {
            ids: vec![2, 5, 3, 9, 3],
            type_ids: vec![0, 0, 0, 1, 1],
        },
    ];
    let batch = EncoderBatch::pad(&rows, 0);
    assert_eq!((batch.batch, batch.seq), (2, 5));
    assert_eq!(batch.ids, [2, 5, 3, 0, 0, 2, 5, 3, 9, 3]);
    assert_eq!(batch.type_ids, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    assert_eq!(batch.attention_mask, [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
}

#[test]
fn wordpiece_trained_on_a_corpus_round_trips() {
    let corpus = [
        "The painter painted paintings.",
        "Painting is what the painter does; paintings are what he makes!",
        "A villa on the Riviera, painted white.",
    ];
    let tokenizer = Tokenizer::train_wordpiece(corpus.iter(), 120, true).unwrap();
    for (id, token) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .enumerate()
    {
        assert_eq!(tokenizer.token_id(token), Some(id as u32), "{token}");
    }
    assert!(tokenizer.vocab_size() <= 120);
    let text = "The painter painted a villa.";
    let input = tokenizer.encode_for_encoder(text, None, 64).unwrap();
    assert_eq!(input.ids.first(), Some(&2));
    assert_eq!(input.ids.last(), Some(&3));
    assert!(
        !input.ids.contains(&1),
        "every word of the corpus is covered"
    );
    assert_eq!(tokenizer.decode(&input.ids).unwrap(), text.to_lowercase());
    // A word never seen is spelled from pieces (characters at worst), not [UNK].
    let unseen = tokenizer.encode("villas").unwrap();
    assert!(unseen.len() > 1 && !unseen.contains(&1), "{unseen:?}");

    // Saved as tokenizer.json and read back: the same ids.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tokenizer.save_json(&path).unwrap();
    let reread = Tokenizer::open(&path).unwrap();
    assert_eq!(reread.encode_for_encoder(text, None, 64).unwrap(), input);
    assert!(Tokenizer::train_wordpiece(corpus.iter(), 5, true).is_err());
}
