//! Shared by the integration tests: the data cache, with `../shared/datasets` as the offline
//! mirror when `EMBER_DATA_MIRROR` is not set (as in CI and in a developer checkout).
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::OnceLock;

use ember_data::bpe::BpeTokenizer;
use ember_data::datasets::DataCache;

/// `$EMBER_DATA_MIRROR`, else `../shared/datasets` beside the checkout (it may not exist).
pub fn mirror() -> PathBuf {
    std::env::var_os("EMBER_DATA_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets")
        })
}

pub fn cache() -> DataCache {
    let cache = DataCache::from_env();
    let mirror = mirror();
    match mirror.is_dir() {
        true => DataCache::new(cache.root().to_path_buf(), Some(mirror)),
        false => cache,
    }
}

pub fn text(name: &str, file: &str) -> String {
    let path = cache().file(name, file).expect("dataset available");
    ember_data::read_text_file(&path).expect("UTF-8 text")
}

/// GPT-2's tokenizer, loaded once per test binary.
pub fn gpt2() -> &'static BpeTokenizer {
    static GPT2: OnceLock<BpeTokenizer> = OnceLock::new();
    GPT2.get_or_init(|| {
        let encoder = cache()
            .file("gpt2-bpe", "gpt2/encoder.json")
            .expect("gpt2-bpe");
        BpeTokenizer::from_dir(encoder.parent().unwrap()).expect("valid GPT-2 vocabulary")
    })
}
