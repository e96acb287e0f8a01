//! Datasets: the manifest in `datasets/manifest.toml` and a verified local cache.
//!
//! Third-party files never live in the repository. Each one is listed with its size and sha256;
//! fetching tries the offline mirror (`$EMBER_DATA_MIRROR`, same relative paths) first, then the
//! URLs in order. Bytes are hashed while they are written to a temporary file beside the
//! destination, and only a file whose size and checksum match is renamed into place, so an
//! interrupted or corrupt fetch never leaves a file that a later run would trust.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The manifest compiled into the binary, so `ember` knows its datasets from any directory.
const MANIFEST_TOML: &str = include_str!("../../../datasets/manifest.toml");

/// Errors of the dataset cache; each message is one line naming the dataset, file or source.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown dataset `{name}` (known: {known})")]
    UnknownDataset { name: String, known: String },
    #[error("dataset `{dataset}` has no file `{file}`")]
    UnknownFile { dataset: String, file: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "checksum mismatch for {file} from {source_name}: expected sha256 {expected}, found {found}"
    )]
    Checksum {
        file: String,
        source_name: String,
        expected: String,
        found: String,
    },
    #[error("could not fetch {file}: {reasons}")]
    AllSourcesFailed { file: String, reasons: String },
}

/// The list of datasets ember knows how to fetch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "dataset")]
    pub datasets: Vec<DatasetEntry>,
}

/// One dataset: a name users type and the files it consists of.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    pub name: String,
    pub description: String,
    pub license: String,
    pub files: Vec<FileEntry>,
}

/// One file: where it goes, where it comes from, and what it must hash to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the cache and inside a mirror.
    pub path: String,
    pub urls: Vec<String>,
    pub size: u64,
    pub sha256: String,
    /// `"zip"` when the URLs serve an archive holding the file as `member`.
    pub archive: Option<String>,
    pub member: Option<String>,
}

impl Manifest {
    /// The manifest shipped with this build.
    pub fn embedded() -> Self {
        toml::from_str(MANIFEST_TOML).expect("datasets/manifest.toml is valid (tested)")
    }

    pub fn get(&self, name: &str) -> Result<&DatasetEntry, DataError> {
        self.datasets
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| DataError::UnknownDataset {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    pub fn names(&self) -> Vec<&str> {
        self.datasets.iter().map(|d| d.name.as_str()).collect()
    }
}

/// Progress of a fetch, reported by the cache and drawn by the caller (the CLI uses a bar).
pub trait FetchProgress {
    fn start(&mut self, file: &str, source: &str, total: Option<u64>);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self);
}

/// Reports nothing.
pub struct NoProgress;

impl FetchProgress for NoProgress {
    fn start(&mut self, _: &str, _: &str, _: Option<u64>) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// What `ember data list` shows for one dataset.
#[derive(Debug, Clone)]
pub struct DatasetStatus {
    pub name: String,
    pub license: String,
    pub size: u64,
    pub state: CacheState,
}

/// Whether a dataset's files are in the cache and intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheState {
    /// Every file present with the right size and checksum.
    Cached,
    /// No file present.
    Missing,
    /// A file present with the wrong size or checksum, or only some files present: the next
    /// fetch replaces them.
    Incomplete,
}

impl CacheState {
    /// The word `ember data list` shows.
    pub fn label(self) -> &'static str {
        match self {
            CacheState::Cached => "cached",
            CacheState::Missing => "missing",
            CacheState::Incomplete => "damaged",
        }
    }
}

/// The local dataset cache (`$EMBER_HOME/datasets`) and the optional offline mirror.
#[derive(Debug, Clone)]
pub struct DataCache {
    root: PathBuf,
    mirror: Option<PathBuf>,
    manifest: Manifest,
}

/// `$EMBER_HOME`, default `~/.cache/ember`: where ember keeps datasets and downloads.
pub fn ember_home() -> PathBuf {
    // Set but empty counts as unset (else the cache would land in ./datasets).
    if let Some(home) = std::env::var_os("EMBER_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("ember")
}

impl DataCache {
    /// The cache under `$EMBER_HOME` with the mirror from `$EMBER_DATA_MIRROR`, if set.
    pub fn from_env() -> Self {
        let mirror = std::env::var_os("EMBER_DATA_MIRROR")
            .filter(|m| !m.is_empty())
            .map(PathBuf::from);
        Self::new(ember_home().join("datasets"), mirror)
    }

    pub fn new(root: PathBuf, mirror: Option<PathBuf>) -> Self {
        Self {
            root,
            mirror,
            manifest: Manifest::embedded(),
        }
    }

    /// Uses another manifest (tests, or a user's own list).
    pub fn with_manifest(mut self, manifest: Manifest) -> Self {
        self.manifest = manifest;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Makes every file of dataset `name` present and verified; returns their paths in
    /// manifest order.
    pub fn fetch(
        &self,
        name: &str,
        progress: &mut dyn FetchProgress,
    ) -> Result<Vec<PathBuf>, DataError> {
        let entry = self.manifest.get(name)?;
        entry
            .files
            .iter()
            .map(|file| self.fetch_file(file, progress))
            .collect()
    }

    /// The verified local path of one file of a dataset; the whole dataset is fetched if
    /// needed, since its files are used together (encoder.json with vocab.bpe).
    pub fn file(&self, name: &str, file: &str) -> Result<PathBuf, DataError> {
        let entry = self.manifest.get(name)?;
        let index = entry
            .files
            .iter()
            .position(|f| f.path == file)
            .ok_or_else(|| DataError::UnknownFile {
                dataset: name.to_string(),
                file: file.to_string(),
            })?;
        Ok(self.fetch(name, &mut NoProgress)?.swap_remove(index))
    }

    /// Cache state of every dataset, checking checksums.
    pub fn status(&self) -> Vec<DatasetStatus> {
        self.manifest
            .datasets
            .iter()
            .map(|d| DatasetStatus {
                name: d.name.clone(),
                license: d.license.clone(),
                size: d.files.iter().map(|f| f.size).sum(),
                state: if d.files.iter().all(|f| self.is_verified(f)) {
                    CacheState::Cached
                } else if d.files.iter().all(|f| !self.root.join(&f.path).exists()) {
                    CacheState::Missing
                } else {
                    CacheState::Incomplete
                },
            })
            .collect()
    }

    fn is_verified(&self, file: &FileEntry) -> bool {
        let path = self.root.join(&file.path);
        matches!(hash_file(&path), Ok((size, sha)) if size == file.size && sha == file.sha256)
    }

    fn fetch_file(
        &self,
        file: &FileEntry,
        progress: &mut dyn FetchProgress,
    ) -> Result<PathBuf, DataError> {
        let dest = self.root.join(&file.path);
        if self.is_verified(file) {
            return Ok(dest);
        }
        let dir = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        remove_stale_partials(&dest);

        let mut reasons = Vec::new();
        if let Some(mirror) = &self.mirror {
            let source = mirror.join(&file.path);
            if source.is_file() {
                let label = source.display().to_string();
                let reader = File::open(&source).map_err(|e| io_error(&source, e))?;
                // A corrupt mirror is the user's to fix: report it rather than hide it.
                return install(reader, file, &label, Some(file.size), &dest, progress);
            }
            reasons.push(format!("not in mirror {}", mirror.display()));
        }
        for url in &file.urls {
            match self.fetch_url(url, file, &dest, progress) {
                Ok(path) => return Ok(path),
                // Every error here already names its URL.
                Err(err) => reasons.push(err.to_string()),
            }
        }
        if file.urls.is_empty() {
            reasons.push("the manifest lists no URL".into());
        }
        Err(DataError::AllSourcesFailed {
            file: file.path.clone(),
            reasons: reasons.join("; "),
        })
    }

    fn fetch_url(
        &self,
        url: &str,
        file: &FileEntry,
        dest: &Path,
        progress: &mut dyn FetchProgress,
    ) -> Result<PathBuf, DataError> {
        let response = ureq::get(url)
            .call()
            .map_err(|e| io_error(Path::new(url), std::io::Error::other(e.to_string())))?;
        let total = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let reader = response.into_body().into_reader();
        match (file.archive.as_deref(), file.member.as_deref()) {
            (None, _) => install(reader, file, url, total, dest, progress),
            (Some("zip"), Some(member)) => {
                // Download the archive beside the destination, then extract and verify the member.
                let zip_path = partial_path(dest, "zip");
                let result = (|| {
                    let mut out = File::create(&zip_path).map_err(|e| io_error(&zip_path, e))?;
                    copy_with_progress(reader, &mut out, &zip_path, url, total, progress)?;
                    let archive = File::open(&zip_path).map_err(|e| io_error(&zip_path, e))?;
                    let mut zip = zip::ZipArchive::new(archive)
                        .map_err(|e| io_error(&zip_path, std::io::Error::other(e.to_string())))?;
                    let entry = zip.by_name(member).map_err(|e| {
                        io_error(&zip_path, std::io::Error::other(format!("{member}: {e}")))
                    })?;
                    install(entry, file, url, None, dest, &mut NoProgress)
                })();
                let _ = std::fs::remove_file(&zip_path);
                result
            }
            (Some(kind), member) => Err(io_error(
                Path::new(&file.path),
                std::io::Error::other(format!(
                    "unsupported archive {kind:?} (member {member:?}) in the manifest"
                )),
            )),
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `dir/.name.partial-<pid>-<n>.<tag>`: unique per process and call (fetches may run in
/// parallel), and never a name the cache reads as data.
fn partial_path(dest: &Path, tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.partial-{}-{n}.{tag}", std::process::id()))
}

/// A partial file untouched for this long belongs to a fetch that was killed.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Deletes temporary files that killed fetches of `dest` left behind. Recent ones may belong to
/// a fetch running right now in another process, so they are left alone (and never read).
fn remove_stale_partials(dest: &Path) {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return;
    };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale && entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Copies `reader` to `out`, reporting progress; returns (bytes, sha256 hex).
fn copy_with_progress(
    mut reader: impl Read,
    out: &mut File,
    out_path: &Path,
    source: &str,
    total: Option<u64>,
    progress: &mut dyn FetchProgress,
) -> Result<(u64, String), DataError> {
    let name = out_path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    progress.start(name.trim_start_matches('.'), source, total);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| io_error(Path::new(source), e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n])
            .map_err(|e| io_error(out_path, e))?;
        hasher.update(&buffer[..n]);
        written += n as u64;
        progress.advance(n as u64);
    }
    out.sync_all().map_err(|e| io_error(out_path, e))?;
    progress.finish();
    Ok((written, hex(&hasher.finalize())))
}

/// Streams `reader` into a temporary file, verifies size and sha256, then renames it to `dest`.
fn install(
    reader: impl Read,
    file: &FileEntry,
    source: &str,
    total: Option<u64>,
    dest: &Path,
    progress: &mut dyn FetchProgress,
) -> Result<PathBuf, DataError> {
    let tmp = partial_path(dest, "tmp");
    let result = (|| {
        let mut out = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
        let (size, sha) = copy_with_progress(reader, &mut out, &tmp, source, total, progress)?;
        if size != file.size || sha != file.sha256 {
            return Err(DataError::Checksum {
                file: file.path.clone(),
                source_name: source.to_string(),
                expected: format!("{} ({} bytes)", file.sha256, file.size),
                found: format!("{sha} ({size} bytes)"),
            });
        }
        std::fs::rename(&tmp, dest).map_err(|e| io_error(dest, e))?;
        Ok(dest.to_path_buf())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// (size, sha256 hex) of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((size, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_manifest_lists_the_four_datasets() {
        let manifest = Manifest::embedded();
        assert_eq!(
            manifest.names(),
            ["the-verdict", "sms-spam", "instruction-data", "gpt2-bpe"]
        );
        for file in manifest.datasets.iter().flat_map(|d| &d.files) {
            assert_eq!(file.sha256.len(), 64, "{}", file.path);
            assert!(!file.urls.is_empty(), "{}", file.path);
        }
        let err = manifest.get("nope").unwrap_err().to_string();
        assert!(err.contains("the-verdict, sms-spam"), "{err}");
    }
}
