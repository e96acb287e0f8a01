//! GPT-2 BPE against tiktoken: ids computed by `scripts/tiktoken_reference.py` (tiktoken built
//! from the same encoder.json + vocab.bpe) are stored in `tests/data/tiktoken_reference.json`
//! — full ids for tricky strings, counts and a digest of the id stream for whole corpora.

mod common;

use ember_data::bpe::{BpeTokenizer, END_OF_TEXT, TokenId};
use proptest::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn reference() -> Value {
    serde_json::from_str(include_str!("data/tiktoken_reference.json")).unwrap()
}

/// The reference's digest: for each text, its ids as little-endian u32, then 0xFFFFFFFF.
fn digest<'a>(tokenizer: &BpeTokenizer, texts: impl IntoIterator<Item = &'a str>) -> (u64, String) {
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    for text in texts {
        let ids = tokenizer.encode(text);
        count += ids.len() as u64;
        for id in ids {
            hasher.update(id.to_le_bytes());
        }
        hasher.update(u32::MAX.to_le_bytes());
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (count, hex)
}

fn assert_corpus(reference: &Value, tokenizer: &BpeTokenizer, texts: &[&str]) {
    let (tokens, sha) = digest(tokenizer, texts.iter().copied());
    assert_eq!(tokens, reference["tokens"].as_u64().unwrap());
    assert_eq!(sha, reference["sha256"].as_str().unwrap());
}

#[test]
fn the_books_example_sentence() {
    let tokenizer = common::gpt2();
    let text = "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace.";
    let ids = tokenizer.encode(text);
    assert_eq!(
        ids,
        [
            15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
            1659, 617, 34680, 27271, 13
        ]
    );
    assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    assert_eq!(tokenizer.vocab_size(), 50_257);
    assert_eq!(tokenizer.special_id(END_OF_TEXT), Some(50_256));
}

#[test]
fn tricky_strings_match_tiktoken() {
    let tokenizer = common::gpt2();
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<TokenId> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as TokenId)
            .collect();
        assert_eq!(tokenizer.encode(text), expected, "text {text:?}");
        assert_eq!(tokenizer.decode(&expected).unwrap(), text);
    }
}

#[test]
fn the_verdict_matches_tiktoken() {
    let tokenizer = common::gpt2();
    let text = common::text("the-verdict", "the-verdict.txt");
    let reference = reference();
    assert_eq!(reference["the_verdict"]["tokens"], 5_145);
    assert_corpus(&reference["the_verdict"], tokenizer, &[&text]);
}

#[test]
fn every_sms_message_matches_tiktoken() {
    let tokenizer = common::gpt2();
    let text = common::text("sms-spam", "sms_spam/SMSSpamCollection");
    let messages: Vec<&str> = text
        .lines()
        .map(|line| line.split_once('\t').expect("label<TAB>text").1)
        .collect();
    let reference = reference();
    assert_eq!(
        messages.len() as u64,
        reference["sms_spam"]["messages"].as_u64().unwrap()
    );
    assert_corpus(&reference["sms_spam"], tokenizer, &messages);
}

#[test]
fn every_instruction_field_matches_tiktoken() {
    let tokenizer = common::gpt2();
    let json: Value =
        serde_json::from_str(&common::text("instruction-data", "instruction-data.json")).unwrap();
    let fields: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|entry| {
            ["instruction", "input", "output"].map(|key| entry[key].as_str().unwrap())
        })
        .collect();
    let reference = reference();
    assert_eq!(
        fields.len() as u64,
        reference["instruction_data"]["fields"].as_u64().unwrap()
    );
    assert_corpus(&reference["instruction_data"], tokenizer, &fields);
}

/// Characters that stress the pre-tokenizer: whitespace of every kind, apostrophes, digits,
/// letters from several scripts, combining marks, emoji, and pieces of the special token.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        Just(' '),
        Just('\n'),
        Just('\t'),
        Just('\r'),
        Just('\u{a0}'),
        Just('\u{3000}'),
        Just('\''),
        Just('<'),
        Just('|'),
        Just('>'),
        prop::char::range('a', 'z'),
        prop::char::range('0', '9'),
        prop::char::range('\u{300}', '\u{36f}'),
        prop::char::range('\u{4e00}', '\u{4e20}'),
        prop::char::range('\u{1f600}', '\u{1f64f}'),
        any::<char>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip_on_random_unicode(text in any::<String>()) {
        let tokenizer = common::gpt2();
        prop_assert_eq!(tokenizer.decode(&tokenizer.encode(&text)).unwrap(), text);
    }

    #[test]
    fn round_trip_on_tricky_text(chars in prop::collection::vec(tricky_char(), 0..64)) {
        let tokenizer = common::gpt2();
        let text: String = chars.into_iter().collect();
        prop_assert_eq!(tokenizer.decode(&tokenizer.encode(&text)).unwrap(), text.clone());
        prop_assert_eq!(tokenizer.decode(&tokenizer.encode_ordinary(&text)).unwrap(), text);
    }
}
