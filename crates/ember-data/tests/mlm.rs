//! BERT pretraining inputs: the 15% / 80-10-10 masking rates and next-sentence pairs.

use ember_data::loader::{Batch, Batches};
use ember_data::mlm::{
    IGNORE, MlmBatch, MlmLoader, MlmLoaderOptions, MlmOptions, SpecialIds, mask_tokens,
    sentence_pairs, split_documents,
};
use ember_data::rng::SplitMix64;

#[test]
fn masking_rates_hold_on_200k_tokens() {
    let (vocab, mask_id) = (1000usize, 3u32);
    let special = [0u32, 1, 2, 3];
    let mut rng = SplitMix64::new(7);
    // Sentences of ordinary ids framed by [CLS]=1 … [SEP]=2.
    let mut ids = Vec::new();
    while ids.len() < 200_000 {
        ids.push(1);
        for _ in 0..62 {
            ids.push(4 + rng.below(vocab as u64 - 4) as u32);
        }
        ids.push(2);
    }
    let out = mask_tokens(
        &ids,
        &special,
        mask_id,
        vocab,
        MlmOptions::default(),
        &mut rng,
    );
    let ordinary = ids.iter().filter(|id| !special.contains(id)).count();
    let (mut chosen, mut masked, mut random, mut kept) = (0usize, 0usize, 0usize, 0usize);
    for ((&id, &input), &label) in ids.iter().zip(&out.inputs).zip(&out.labels) {
        if label == IGNORE {
            assert_eq!(input, id, "an unchosen position changed");
            continue;
        }
        assert!(!special.contains(&id), "special token {id} chosen");
        assert_eq!(label, id as i64);
        chosen += 1;
        if input == mask_id {
            masked += 1;
        } else if input == id {
            kept += 1; // (a random draw equal to the original counts here: p ≈ 0.1%)
        } else {
            assert!(
                !special.contains(&input),
                "random replacement {input} is special"
            );
            random += 1;
        }
    }
    let share = |n: usize, of: usize| n as f64 / of as f64;
    let checks = [
        ("chosen", share(chosen, ordinary), 0.15),
        ("[MASK]", share(masked, chosen), 0.80),
        ("random", share(random, chosen), 0.10),
        ("kept", share(kept, chosen), 0.10),
    ];
    for (what, got, want) in checks {
        assert!((got - want).abs() <= 0.01, "{what}: {got:.4} vs {want}");
    }
}

#[test]
fn half_the_pairs_are_the_next_sentence() {
    let mut rng = SplitMix64::new(3);
    // Sentence ids encode (document, sentence) so a pair tells where its second half came from.
    let documents: Vec<Vec<Vec<u32>>> = (0..50)
        .map(|d| (0..40).map(|s| vec![d * 100 + s, 7]).collect())
        .collect();
    let pairs = sentence_pairs(&documents, &mut rng);
    assert_eq!(pairs.len(), 50 * 39);
    let next = pairs.iter().filter(|p| p.is_next).count();
    let share = next as f64 / pairs.len() as f64;
    assert!((share - 0.5).abs() < 0.03, "{share}");
    for pair in &pairs {
        let (d, s) = (pair.first[0] / 100, pair.first[0] % 100);
        let (d2, s2) = (pair.second[0] / 100, pair.second[0] % 100);
        if pair.is_next {
            assert_eq!((d2, s2), (d, s + 1));
        } else {
            assert_ne!(
                d2, d,
                "a random second sentence came from the same document"
            );
        }
    }
    // One document: random sentences are neither the sentence itself nor its successor.
    let single = vec![(0..30).map(|s| vec![s]).collect::<Vec<_>>()];
    for pair in sentence_pairs(&single, &mut rng) {
        let (s, s2) = (pair.first[0], pair.second[0]);
        assert_eq!(pair.is_next, s2 == s + 1);
        assert_ne!(s2, s);
    }
}

#[test]
fn documents_split_at_blank_lines_and_sentence_ends() {
    let text = "I had always thought so. \"Really?\" she said!\nYes (quite.) Mr. Smith\n\n\n\nA new\r\ndocument here\n";
    let docs = split_documents(text);
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0],
        [
            "I had always thought so.",
            "\"Really?\"",
            "she said!",
            "Yes (quite.)",
            "Mr.",
            "Smith"
        ]
    );
    assert_eq!(docs[1], ["A new document here"]);
    assert!(split_documents("\n\n  \n").is_empty());
}

fn specials() -> SpecialIds {
    SpecialIds {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
    }
}

fn options(next_sentence: bool, shuffle: bool) -> MlmLoaderOptions {
    MlmLoaderOptions {
        specials: specials(),
        vocab_size: 100,
        masking: MlmOptions::default(),
        max_len: 12,
        batch_size: 3,
        next_sentence,
        seed: 5,
        shuffle,
        drop_last: false,
    }
}

/// Two documents of sentences with ids ≥ 10 that say where they come from: 10·(doc+1) + s.
fn documents() -> Vec<Vec<Vec<u32>>> {
    (0..2u32)
        .map(|d| {
            (0..5u32)
                .map(|s| vec![10 * (d + 1) + s; 3 + s as usize])
                .collect()
        })
        .collect()
}

#[test]
fn mlm_batches_frame_pad_and_label_like_hf() {
    let loader = MlmLoader::new(documents(), options(false, true), "test").unwrap();
    // Masked LM alone: each document (3+4+5+6+7 = 25 ids) in pieces of at most 10 ids.
    assert_eq!(loader.num_examples(), 6);
    assert_eq!(loader.num_batches(), 2);
    let batches: Vec<MlmBatch> = loader.batches(0).collect();
    let again: Vec<MlmBatch> = loader.batches(0).collect();
    assert_eq!(batches, again, "the same epoch gives the same batches");
    assert_ne!(
        batches,
        loader.batches(1).collect::<Vec<_>>(),
        "another epoch masks differently"
    );
    let mut real = 0;
    for batch in &batches {
        assert!(batch.next_labels.is_none());
        assert!(batch.seq <= 12);
        for row in 0..batch.batch {
            let at = |v: &Vec<i64>, i: usize| v[row * batch.seq + i];
            let len = (0..batch.seq)
                .filter(|&i| at(&batch.attention_mask, i) == 1)
                .count();
            assert_eq!(at(&batch.ids, 0), 2, "[CLS] first");
            assert_eq!(at(&batch.ids, len - 1), 3, "[SEP] last");
            assert!(
                (1..len - 1).any(|i| at(&batch.labels, i) != IGNORE),
                "every sequence predicts something"
            );
            for i in 0..batch.seq {
                let label = at(&batch.labels, i);
                if i >= len {
                    assert_eq!(at(&batch.ids, i), 0, "padding is [PAD]");
                    assert_eq!(label, IGNORE);
                } else if label != IGNORE {
                    assert!(label >= 10, "only ordinary tokens are predicted");
                } else {
                    assert!(at(&batch.ids, i) != 4, "[MASK] only where predicted");
                }
            }
            real += len;
        }
        assert_eq!(
            batch.num_tokens(),
            batch.attention_mask.iter().sum::<i64>() as usize
        );
    }
    // 50 ids + [CLS] and [SEP] around each of the 6 pieces.
    assert_eq!(real, 50 + 12);
}

#[test]
fn nsp_batches_pair_sentences_with_segment_ids() {
    let loader = MlmLoader::new(documents(), options(true, false), "test").unwrap();
    assert_eq!(
        loader.num_examples(),
        8,
        "one pair per sentence with a successor"
    );
    let mut next = 0;
    for batch in loader.batches(0) {
        let labels = batch.next_labels.as_ref().expect("NSP labels");
        for (row, &label) in labels.iter().enumerate() {
            let ids = &batch.ids[row * batch.seq..(row + 1) * batch.seq];
            let types = &batch.type_ids[row * batch.seq..(row + 1) * batch.seq];
            let len = batch.attention_mask[row * batch.seq..(row + 1) * batch.seq]
                .iter()
                .sum::<i64>() as usize;
            assert!(len <= 12);
            let seps: Vec<usize> = (0..len).filter(|&i| ids[i] == 3).collect();
            assert_eq!(seps.len(), 2, "[CLS] A [SEP] B [SEP]");
            assert_eq!(seps[1], len - 1);
            assert!(types[..=seps[0]].iter().all(|&t| t == 0));
            assert!(types[seps[0] + 1..len].iter().all(|&t| t == 1));
            // The sentence each segment came from, read off an unmasked id.
            let origin = |range: std::ops::Range<usize>| {
                range
                    .filter(|&i| batch.labels[row * batch.seq + i] == IGNORE)
                    .map(|i| ids[i])
                    .next()
            };
            if let (Some(a), Some(b)) = (origin(1..seps[0]), origin(seps[0] + 1..len - 1)) {
                if label == 0 {
                    assert_eq!(b, a + 1, "label 0: B is the sentence after A");
                    next += 1;
                } else {
                    assert_ne!(a / 10, b / 10, "label 1: B from the other document");
                }
            }
        }
    }
    assert!(next > 0);
}

#[test]
fn mlm_loader_errors_are_clear() {
    let err = MlmLoader::new(vec![vec![]], options(false, true), "corpus.txt").unwrap_err();
    assert_eq!(err.to_string(), "corpus.txt: no text to train on");
    let single = vec![vec![vec![10, 11]], vec![vec![12]]];
    let err = MlmLoader::new(single, options(true, true), "corpus.txt").unwrap_err();
    assert!(err.to_string().contains("at least two sentences"), "{err}");
    let mut short = options(false, true);
    short.max_len = 4;
    assert!(MlmLoader::new(documents(), short, "x").is_err());
}
