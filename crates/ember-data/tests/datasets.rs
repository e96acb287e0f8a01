//! The dataset cache: mirror first, URLs next, checksums always, and never a half-written file.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use ember_data::datasets::{DataCache, DataError, Manifest, NoProgress, hash_file};

/// Every file under `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Serves each body once per connection on loopback, in order; returns the base URL.
fn serve(bodies: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for body in bodies {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

fn manifest(files_toml: &str) -> Manifest {
    toml::from_str(&format!(
        "[[dataset]]\nname = \"demo\"\ndescription = \"test\"\nlicense = \"test\"\n{files_toml}"
    ))
    .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn fetches_every_dataset_from_the_mirror_then_from_the_cache() {
    let mirror = common::mirror();
    if !mirror.is_dir() {
        eprintln!("skipped: no mirror at {}", mirror.display());
        return;
    }
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = DataCache::new(cache_dir.path().to_path_buf(), Some(mirror));
    assert!(
        cache
            .status()
            .iter()
            .all(|s| s.state == ember_data::datasets::CacheState::Missing)
    );
    for name in cache.manifest().names() {
        let paths = cache.fetch(name, &mut NoProgress).unwrap();
        let entry = cache.manifest().get(name).unwrap();
        for (path, file) in paths.iter().zip(&entry.files) {
            assert_eq!(hash_file(path).unwrap(), (file.size, file.sha256.clone()));
        }
    }
    assert!(
        cache
            .status()
            .iter()
            .all(|s| s.state == ember_data::datasets::CacheState::Cached)
    );
    // Without a mirror (and with unreachable URLs) the cache alone must serve them.
    let offline = DataCache::new(cache_dir.path().to_path_buf(), None);
    let path = offline.file("gpt2-bpe", "gpt2/vocab.bpe").unwrap();
    assert!(path.ends_with("gpt2/vocab.bpe"));
    // No temporary files are left behind.
    assert!(
        files_under(cache_dir.path())
            .iter()
            .all(|f| !f.contains(".partial-"))
    );
}

#[test]
fn a_corrupt_mirror_is_a_checksum_error_and_leaves_nothing() {
    let mirror = tempfile::tempdir().unwrap();
    std::fs::write(mirror.path().join("the-verdict.txt"), b"not the verdict").unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = DataCache::new(cache_dir.path().to_path_buf(), Some(mirror.path().into()));
    let err = cache.fetch("the-verdict", &mut NoProgress).unwrap_err();
    assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("the-verdict.txt") && message.contains("checksum mismatch"));
    assert!(!message.contains('\n'));
    assert_eq!(files_under(cache_dir.path()), Vec::<String>::new());
}

#[test]
fn a_corrupted_cached_file_or_stale_partial_is_not_trusted() {
    // (Parallel fetches of the same file into one cache are exercised by the CLI tests, which
    // start several `ember` processes at once on a fresh cache in CI.)
    let body = b"hello ember\n".to_vec();
    let mirror = tempfile::tempdir().unwrap();
    std::fs::write(mirror.path().join("hello.txt"), &body).unwrap();
    let files = format!(
        "[[dataset.files]]\npath = \"hello.txt\"\nurls = []\nsize = {}\nsha256 = \"{}\"\n",
        body.len(),
        sha256_hex(&body)
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = DataCache::new(cache_dir.path().to_path_buf(), Some(mirror.path().into()))
        .with_manifest(manifest(&files));
    let path = cache.file("demo", "hello.txt").unwrap();
    // Damage the cached copy and leave a partial file from a "killed" fetch.
    std::fs::write(&path, b"hello emBer\n").unwrap();
    let stale = cache_dir.path().join(".hello.txt.partial-99999-0.tmp");
    std::fs::write(&stale, &body[..3]).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    // A recent partial may be another process's fetch in progress: kept, and not trusted.
    let recent = cache_dir.path().join(".hello.txt.partial-99998-0.tmp");
    std::fs::write(&recent, &body[..3]).unwrap();
    assert_eq!(
        cache.status()[0].state,
        ember_data::datasets::CacheState::Incomplete
    );
    let again = cache.file("demo", "hello.txt").unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), body);
    assert!(!stale.exists());
    std::fs::remove_file(&recent).unwrap();
    assert_eq!(files_under(cache_dir.path()), ["hello.txt"]);
}

#[test]
fn unreachable_urls_give_one_error_listing_each_source() {
    let files = "[[dataset.files]]\npath = \"x.txt\"\n\
                 urls = [\"http://127.0.0.1:9/a\", \"http://127.0.0.1:9/b\"]\n\
                 size = 1\nsha256 = \"00\"\n";
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = DataCache::new(cache_dir.path().to_path_buf(), None).with_manifest(manifest(files));
    let err = cache
        .fetch("demo", &mut NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("could not fetch x.txt: "), "{err}");
    assert!(
        err.contains("127.0.0.1:9/a") && err.contains("127.0.0.1:9/b"),
        "{err}"
    );
    assert_eq!(files_under(cache_dir.path()), Vec::<String>::new());
}

#[test]
fn downloads_verify_and_fall_back_to_the_next_url_and_unpack_zips() {
    let body = b"label\ttext\nham\thello\n".to_vec();
    let mut zip_bytes = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut zip_bytes));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("readme", options).unwrap();
        zip.write_all(b"not this one").unwrap();
        zip.start_file("Collection", options).unwrap();
        zip.write_all(&body).unwrap();
        zip.finish().unwrap();
    }
    // The first server sends something that is not the archive, the second the real one.
    let bad = serve(vec![b"garbage".to_vec()]);
    let good = serve(vec![zip_bytes]);
    let files = format!(
        "[[dataset.files]]\npath = \"sms/Collection\"\nurls = [\"{bad}/x.zip\", \"{good}/x.zip\"]\n\
         archive = \"zip\"\nmember = \"Collection\"\nsize = {}\nsha256 = \"{}\"\n",
        body.len(),
        sha256_hex(&body)
    );
    let cache_dir = tempfile::tempdir().unwrap();
    let cache =
        DataCache::new(cache_dir.path().to_path_buf(), None).with_manifest(manifest(&files));
    let paths = cache.fetch("demo", &mut NoProgress).unwrap();
    assert_eq!(std::fs::read(&paths[0]).unwrap(), body);
    assert_eq!(files_under(cache_dir.path()), ["sms/Collection"]);
}

#[test]
fn parallel_fetches_into_one_cache_all_succeed() {
    let mirror = common::mirror();
    if !mirror.is_dir() {
        eprintln!("skipped: no mirror at {}", mirror.display());
        return;
    }
    let cache_dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let cache = DataCache::new(cache_dir.path().to_path_buf(), Some(mirror.clone()));
            std::thread::spawn(move || cache.fetch("gpt2-bpe", &mut NoProgress))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    assert_eq!(
        files_under(cache_dir.path()),
        ["gpt2/encoder.json", "gpt2/vocab.bpe"]
    );
}
