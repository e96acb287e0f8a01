//! The sliding-window loader on the-verdict, with the numbers of the book's chapter 5.

mod common;

use burn::prelude::*;
use ember_data::loader::{Batch, TokenWindows, WindowLoader, split_text};

#[test]
fn the_verdict_gives_the_books_batches() {
    let text = common::text("the-verdict", "the-verdict.txt");
    let tokenizer = common::gpt2();
    let (train_text, val_text) = split_text(&text, 0.9).unwrap();
    assert_eq!(train_text.len(), 18_431); // int(0.9 * 20_479)
    let train = TokenWindows::new(tokenizer.encode(train_text), 256, 256, "train").unwrap();
    let val = TokenWindows::new(tokenizer.encode(val_text), 256, 256, "val").unwrap();
    let train = WindowLoader::new(train, 2, Some(123), true).unwrap();
    let val = WindowLoader::new(val, 2, None, false).unwrap();
    assert_eq!(train.num_batches(), 9);
    assert_eq!(val.num_batches(), 1);
    assert_eq!(train.num_tokens(), 4_608);
    assert_eq!(val.num_tokens(), 512);
    let batches: Vec<_> = train.batches(0).collect();
    assert_eq!(batches.len(), 9);
    assert_eq!(batches.iter().map(|b| b.num_tokens()).sum::<usize>(), 4_608);

    // Targets are the inputs shifted by one, in every row.
    let batch = &batches[0];
    let device = Device::flex();
    let (inputs, targets) = batch.to_tensors(&device);
    assert_eq!(inputs.dims(), [2, 256]);
    assert_eq!(targets.dims(), [2, 256]);
    let inputs: Vec<i64> = inputs.into_data().try_into_vec_as::<i64>().unwrap();
    let targets: Vec<i64> = targets.into_data().try_into_vec_as::<i64>().unwrap();
    for row in 0..2 {
        let r = row * 256;
        assert_eq!(inputs[r + 1..r + 256], targets[r..r + 255]);
    }
}

#[test]
fn a_text_shorter_than_one_window_is_a_clear_error() {
    let tokenizer = common::gpt2();
    let err =
        TokenWindows::new(tokenizer.encode("Too short."), 256, 256, "corpus.txt").unwrap_err();
    assert_eq!(
        err.to_string(),
        "corpus.txt has 3 tokens, too short for one window of max_length 256 (needs at least 257); \
         use a longer text or shorter windows (--context-length, or --max-length for data windows)"
    );
}
