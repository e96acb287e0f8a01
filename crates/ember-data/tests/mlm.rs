//! BERT pretraining inputs: the 15% / 80-10-10 masking rates and next-sentence pairs.

use ember_data::mlm::{IGNORE, MlmOptions, mask_tokens, sentence_pairs};
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
