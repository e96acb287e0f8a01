//! Property tests on arbitrary bytes: the loaders a user points at their own files never
//! panic; they return data or an error.

mod common;

use ember_data::classification::{read_sms_spam, read_table};
use ember_data::instruct::parse_instructions;
use proptest::prelude::*;

/// A valid instruction file, to mutate.
const INSTRUCTIONS: &str = r#"[{"instruction": "Name a color.", "input": "", "output": "Blue."},
 {"instruction": "Add", "input": "1, 2", "output": "3", "extra": [1, {"a": null}]}]"#;

fn mutate(base: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(at, byte) in edits {
        let at = at % bytes.len();
        bytes[at] = byte;
    }
    bytes.truncate(cut % (bytes.len() + 1));
    bytes
}

/// Cases per property: 400 in the test suite; set `EMBER_FUZZ_CASES` for a longer search.
fn cases() -> u32 {
    std::env::var("EMBER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn instruction_json_never_panics(text in any::<String>()) {
        let _ = parse_instructions(&text);
    }

    #[test]
    fn mutated_instruction_json_never_panics(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let bytes = mutate(INSTRUCTIONS.as_bytes(), &edits, cut);
        if let Ok(text) = std::str::from_utf8(&bytes)
            && let Ok(entries) = parse_instructions(text)
        {
            prop_assert!(!entries.is_empty());
        }
    }

    #[test]
    fn tables_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), tsv in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if tsv { "t.tsv" } else { "t.csv" });
        std::fs::write(&path, &bytes).unwrap();
        let _ = read_table(&path, "Text", "Label");
        let _ = read_sms_spam(&path);
    }

    #[test]
    fn mutated_tables_never_panic(
        edits in prop::collection::vec((any::<usize>(), prop::sample::select(b"\",\t\n\r0a\xff".to_vec())), 0..8),
        cut in any::<usize>(),
    ) {
        let base = b"Label,Text\n0,\"quoted, with comma\"\n1,plain text\nspam,\"multi\nline\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, mutate(base, &edits, cut)).unwrap();
        if let Ok(data) = read_table(&path, "Text", "Label") {
            prop_assert!(data.examples.iter().all(|e| e.label < data.label_names.len()));
        }
    }

    #[test]
    fn decoding_arbitrary_ids_never_panics(ids in prop::collection::vec(any::<u32>(), 0..64)) {
        let tokenizer = common::gpt2();
        if let Ok(text) = tokenizer.decode(&ids) {
            prop_assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()), "{}", text);
        }
    }
}
