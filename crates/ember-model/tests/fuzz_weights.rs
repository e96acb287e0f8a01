//! The weights reader on arbitrary and corrupted files: errors, never panics, and never an
//! attempt to allocate what a lying header claims.

use std::path::PathBuf;

use ember_model::weights::TensorSet;
use proptest::prelude::*;

fn fixture() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/tiny-gpt2/model.safetensors");
    std::fs::read(path).expect("the tiny-gpt2 fixture")
}

/// Opens `bytes` as a weights file and reads every tensor it lists.
fn open_and_read(bytes: &[u8], name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    if let Ok(set) = TensorSet::open(&path) {
        let names: Vec<String> = set.names().map(str::to_string).collect();
        for name in names {
            if let Ok(tensor) = set.read(&name) {
                let shape = set.shape(&name).unwrap();
                assert_eq!(tensor.data.len(), shape.iter().product::<usize>());
            }
        }
    }
}

/// Cases per property: 300 in the test suite; set `EMBER_FUZZ_CASES` for a longer search.
fn cases() -> u32 {
    std::env::var("EMBER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        open_and_read(&bytes, "model.safetensors");
        open_and_read(&bytes, "pytorch_model.bin");
    }

    #[test]
    fn arbitrary_header(header in "\\PC{0,200}", tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&tail);
        open_and_read(&bytes, "model.safetensors");
    }

    #[test]
    fn corrupted_header_of_a_real_file(
        edits in prop::collection::vec((0usize..2048, any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = fixture();
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (at, byte) in edits {
            let at = at % header_end;
            bytes[at] = byte;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        open_and_read(&bytes, "model.safetensors");
    }

    #[test]
    fn json_like_header_edits(digits in prop::collection::vec(prop::sample::select(b"0123456789,[]\"".to_vec()), 1..6), at in 0usize..4096) {
        // Digits and brackets land inside offsets, shapes and dtypes far more often than
        // random bytes, and the header stays valid JSON more often.
        let mut bytes = fixture();
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let at = 8 + at % (header_end - 8 - digits.len());
        bytes[at..at + digits.len()].copy_from_slice(&digits);
        open_and_read(&bytes, "model.safetensors");
    }
}
