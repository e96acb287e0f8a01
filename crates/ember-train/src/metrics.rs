//! `metrics.jsonl`: one JSON record a line, appended as a run trains and cut back on resume.
//!
//! The language-model and classification loops write different records but keep the file the
//! same way, so the reading, the cut and the appending live here once.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::lm::TrainError;

/// Reads a metrics file's records (for plots, reports and resume). Blank lines are skipped, and
/// a last line with no newline whose JSON ends early is dropped: that is a write the process was
/// killed in. Any other line that does not parse is an error naming the file and line.
pub fn read_records<R: DeserializeOwned>(path: &Path) -> Result<Vec<R>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(e) if torn_tail && i + 1 == lines.len() && e.is_eof() => {}
            Err(e) => return Err(format!("{} line {}: {e}", path.display(), i + 1)),
        }
    }
    Ok(records)
}

/// A run's `metrics.jsonl`, open for appending.
pub(crate) struct MetricsFile {
    file: File,
    path: PathBuf,
}

impl MetricsFile {
    /// Opens `path` for a run. A new run starts it empty; a resumed one keeps the records at or
    /// before the checkpoint's step (`resume_step`) and drops the later ones, which the run is
    /// about to repeat. Returns the kept records too (the classifier reads its best epoch and
    /// time spent from them). The file is rewritten atomically, so a failure leaves it whole.
    pub(crate) fn open<R: Serialize + DeserializeOwned>(
        path: &Path,
        resume_step: Option<usize>,
        step_of: impl Fn(&R) -> usize,
    ) -> Result<(Self, Vec<R>), TrainError> {
        let io = |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        };
        let kept: Vec<R> = match resume_step {
            Some(step) if path.exists() => read_records(path)
                .map_err(TrainError::Invalid)?
                .into_iter()
                .filter(|record| step_of(record) <= step)
                .collect(),
            _ => Vec::new(),
        };
        let text: String = kept.iter().map(record_line).collect();
        ember_data::write_atomically(path, text.as_bytes()).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io)?;
        let path = path.to_path_buf();
        Ok((Self { file, path }, kept))
    }

    /// Appends one record as one line, in one write, and flushes it.
    pub(crate) fn append<R: Serialize>(&mut self, record: &R) -> Result<(), TrainError> {
        self.file
            .write_all(record_line(record).as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn record_line<R: Serialize>(record: &R) -> String {
    let mut line = serde_json::to_string(record).expect("metrics records serialize");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Record {
        step: usize,
        loss: f64,
    }

    fn record(step: usize) -> Record {
        Record {
            step,
            loss: step as f64 / 10.0,
        }
    }

    #[test]
    fn a_resume_keeps_the_records_up_to_its_step_and_appends_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let (mut file, kept) = MetricsFile::open::<Record>(&path, None, |r| r.step).unwrap();
        assert!(kept.is_empty());
        for step in [5, 10, 15] {
            file.append(&record(step)).unwrap();
        }
        drop(file);
        let (mut file, kept) = MetricsFile::open::<Record>(&path, Some(10), |r| r.step).unwrap();
        assert_eq!(kept, vec![record(5), record(10)]);
        file.append(&record(12)).unwrap();
        let all: Vec<Record> = read_records(&path).unwrap();
        assert_eq!(all, vec![record(5), record(10), record(12)]);
        // A new run in the same place starts the file empty.
        let (_, kept) = MetricsFile::open::<Record>(&path, None, |r| r.step).unwrap();
        assert!(kept.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_line_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        // Killed in the middle of writing the third record.
        std::fs::write(
            &path,
            "{\"step\":5,\"loss\":0.5}\n\n{\"step\":10,\"loss\":1.0}\n{\"st",
        )
        .unwrap();
        let records: Vec<Record> = read_records(&path).unwrap();
        assert_eq!(records, vec![record(5), record(10)]);
        let (_, kept) = MetricsFile::open::<Record>(&path, Some(10), |r| r.step).unwrap();
        assert_eq!(kept.len(), 2);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\n"));
        // The same bad text followed by a newline was written whole: that is damage, not a
        // torn write, and resuming must not drop it silently.
        std::fs::write(
            &path,
            "{\"step\":5,\"loss\":0.5}\n{\"st\n{\"step\":10,\"loss\":1.0}\n",
        )
        .unwrap();
        let err = read_records::<Record>(&path).unwrap_err();
        assert!(err.contains("metrics.jsonl line 2"), "{err}");
        // A whole last line of the wrong shape is no torn write either, newline or not.
        std::fs::write(&path, "{\"step\":5,\"loss\":0.5}\n{\"step\":10}").unwrap();
        let err = read_records::<Record>(&path).unwrap_err();
        assert!(err.contains("line 2: missing field `loss`"), "{err}");
        let before = std::fs::read(&path).unwrap();
        assert!(MetricsFile::open::<Record>(&path, Some(10), |r| r.step).is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "a refused resume left the file as it was"
        );
    }
}
