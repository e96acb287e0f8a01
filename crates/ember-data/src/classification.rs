//! Labelled texts for classification fine-tuning: the SMS Spam Collection and any CSV/TSV with
//! a text and a label column, the book's balanced 70/10/20 split, and padded token batches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::rng::SplitMix64;

/// A text and its class id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub label: usize,
}

/// Labelled examples and the names of their classes (`label` indexes `label_names`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledTexts {
    pub label_names: Vec<String>,
    pub examples: Vec<Example>,
}

/// The three parts of a classification dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSplits {
    pub label_names: Vec<String>,
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
}

/// A file of labelled texts that cannot be used; the message names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

fn file_error(path: &Path, message: impl ToString) -> TableError {
    TableError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Reads the SMS Spam Collection (`ham<TAB>text` / `spam<TAB>text` per line); ham is class 0,
/// spam class 1, as in the book.
pub fn read_sms_spam(path: &Path) -> Result<LabeledTexts, TableError> {
    let text = crate::read_text_file(path).map_err(|e| file_error(path, e.reason()))?;
    let mut examples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| TableError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let Some((label, message)) = line.split_once('\t') else {
            return Err(bad(
                "expected `ham` or `spam`, a tab, then the message".into()
            ));
        };
        let label = match label {
            "ham" => 0,
            "spam" => 1,
            other => {
                return Err(bad(format!(
                    "unknown label `{other}` (expected ham or spam)"
                )));
            }
        };
        examples.push(Example {
            text: message.to_string(),
            label,
        });
    }
    if examples.is_empty() {
        return Err(file_error(path, "no messages"));
    }
    Ok(LabeledTexts {
        label_names: vec!["ham".into(), "spam".into()],
        examples,
    })
}

/// Reads a CSV (`.csv`) or TSV (`.tsv`, `.txt`) file with a header row, taking the text and the
/// label from the named columns. Labels that are all integers 0..n keep their values; other
/// labels become classes in sorted order of their names.
pub fn read_table(
    path: &Path,
    text_column: &str,
    label_column: &str,
) -> Result<LabeledTexts, TableError> {
    let rows = read_rows(path, text_column, label_column)?;
    Ok(label_examples(
        rows.into_iter()
            .map(|(text, label, _)| (text, label))
            .collect(),
    ))
}

/// Reads train / validation / test tables that were split already. The classes are the
/// training file's; a validation or test label that does not occur there is an error naming
/// its file and line (it would otherwise get a class id of its own file's numbering).
pub fn read_split_tables(
    paths: [&Path; 3],
    text_column: &str,
    label_column: &str,
) -> Result<ClassSplits, TableError> {
    let train = read_table(paths[0], text_column, label_column)?;
    let ids: BTreeMap<&str, usize> = train
        .label_names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let mut others = Vec::new();
    for path in &paths[1..] {
        let rows = read_rows(path, text_column, label_column)?;
        let mut examples = Vec::with_capacity(rows.len());
        for (text, label, line) in rows {
            let Some(&id) = ids.get(label.as_str()) else {
                return Err(TableError::Line {
                    path: path.to_path_buf(),
                    line,
                    message: format!(
                        "label `{label}` does not occur in the training split {} (classes: {})",
                        paths[0].display(),
                        train.label_names.join(", ")
                    ),
                });
            };
            examples.push(Example { text, label: id });
        }
        others.push(examples);
    }
    let test = others.pop().unwrap_or_default();
    let validation = others.pop().unwrap_or_default();
    Ok(ClassSplits {
        label_names: train.label_names,
        train: train.examples,
        validation,
        test,
    })
}

/// The (text, label, line) rows of a CSV/TSV file with a header.
fn read_rows(
    path: &Path,
    text_column: &str,
    label_column: &str,
) -> Result<Vec<(String, String, usize)>, TableError> {
    let delimiter = match path.extension().and_then(|e| e.to_str()) {
        Some("tsv") | Some("txt") => b'\t',
        _ => b',',
    };
    if path.is_dir() {
        return Err(file_error(
            path,
            "is a directory, expected a CSV or TSV file",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    // The line of a record from its byte offset: the csv crate's own line count is one short
    // per CRLF line ending before it (and after a CRLF the offset is that of its `\n`, so line
    // endings at the offset are skipped first).
    let line_at = |position: Option<&csv::Position>| {
        position.map_or(0, |p| {
            let mut start = (p.byte() as usize).min(bytes.len());
            while bytes.get(start).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
                start += 1;
            }
            1 + bytes[..start].iter().filter(|&&b| b == b'\n').count()
        })
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(bytes.as_slice());
    let headers = reader.headers().map_err(|e| file_error(path, e))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                // A comma-separated file named .txt/.tsv reads as one tab-separated column.
                let hint =
                    match delimiter == b'\t' && headers.len() == 1 && headers[0].contains(',') {
                        true => {
                            "; the file is read as tab-separated (its extension): name a \
                             comma-separated file .csv"
                        }
                        false => "",
                    };
                file_error(
                    path,
                    format!(
                        "no column `{name}` in the header (columns: {}){hint}",
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
    };
    let (text_at, label_at) = (column(text_column)?, column(label_column)?);
    let mut raw: Vec<(String, String, usize)> = Vec::new();
    // The line of the last record when its last field spans lines: with the file not ending
    // in a quote, that field is a quote never closed, which swallowed every row after it.
    let mut last_field_open = None;
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = line_at(e.position());
            TableError::Line {
                path: path.to_path_buf(),
                line,
                message: e.to_string(),
            }
        })?;
        let line = line_at(record.position());
        if record.len() > headers.len() {
            // Most often an unquoted delimiter inside the text, which would cut it silently.
            return Err(TableError::Line {
                path: path.to_path_buf(),
                line,
                message: format!(
                    "{} fields but the header has {} (quote texts that contain the delimiter)",
                    record.len(),
                    headers.len()
                ),
            });
        }
        let field = |at: usize, name: &str| {
            record
                .get(at)
                .map(str::to_string)
                .ok_or_else(|| TableError::Line {
                    path: path.to_path_buf(),
                    line,
                    message: format!("has {} fields, no `{name}` column", record.len()),
                })
        };
        let label = field(label_at, label_column)?.trim().to_string();
        if label.is_empty() {
            return Err(TableError::Line {
                path: path.to_path_buf(),
                line,
                message: format!("empty `{label_column}`"),
            });
        }
        raw.push((field(text_at, text_column)?, label, line));
        last_field_open = record
            .iter()
            .next_back()
            .is_some_and(|f| f.contains('\n'))
            .then_some(line);
    }
    if let Some(line) = last_field_open
        && !bytes.trim_ascii_end().ends_with(b"\"")
    {
        return Err(TableError::Line {
            path: path.to_path_buf(),
            line,
            message: "a quoted field here is never closed: it runs to the end of the file".into(),
        });
    }
    if raw.is_empty() {
        return Err(file_error(path, "no rows after the header"));
    }
    Ok(raw)
}

/// Assigns class ids: integer labels 0..n keep their value, otherwise sorted names.
fn label_examples(raw: Vec<(String, String)>) -> LabeledTexts {
    let ints: Option<Vec<usize>> = raw.iter().map(|(_, l)| l.parse().ok()).collect();
    if let Some(ints) = ints {
        let n = ints.iter().max().map_or(0, |m| m + 1);
        // Small non-negative integers are class ids already (as in the book's CSVs).
        if n <= 1024 {
            return LabeledTexts {
                label_names: (0..n.max(2)).map(|i| i.to_string()).collect(),
                examples: raw
                    .into_iter()
                    .zip(ints)
                    .map(|((text, _), label)| Example { text, label })
                    .collect(),
            };
        }
    }
    let names: BTreeMap<String, usize> = raw
        .iter()
        .map(|(_, l)| (l.clone(), 0))
        .collect::<BTreeMap<_, _>>()
        .into_keys()
        .enumerate()
        .map(|(i, name)| (name, i))
        .collect();
    LabeledTexts {
        label_names: names.keys().cloned().collect(),
        examples: raw
            .into_iter()
            .map(|(text, label)| Example {
                label: names[&label],
                text,
            })
            .collect(),
    }
}

/// The book's split: every class undersampled to the size of the smallest (`balance`), then
/// shuffled with `seed` and cut 70/10/20 into train/validation/test.
pub fn split(data: &LabeledTexts, balance: bool, seed: u64) -> ClassSplits {
    let mut rng = SplitMix64::new(seed);
    let mut by_class: Vec<Vec<&Example>> = vec![Vec::new(); data.label_names.len()];
    for example in &data.examples {
        by_class[example.label].push(example);
    }
    let mut chosen: Vec<Example> = Vec::new();
    let smallest = by_class
        .iter()
        .map(Vec::len)
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(0);
    for mut members in by_class {
        if balance && members.len() > smallest {
            rng.shuffle(&mut members);
            members.truncate(smallest);
        }
        chosen.extend(members.into_iter().cloned());
    }
    rng.shuffle(&mut chosen);
    let n = chosen.len();
    let train_end = n * 7 / 10;
    let validation_end = train_end + n / 10;
    let test = chosen.split_off(validation_end);
    let validation = chosen.split_off(train_end);
    ClassSplits {
        label_names: data.label_names.clone(),
        train: chosen,
        validation,
        test,
    }
}

/// Writes `Label,Text` rows (numeric labels) as CSV, atomically.
pub fn write_csv(path: &Path, examples: &[Example]) -> Result<(), TableError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let write = |w: &mut csv::Writer<Vec<u8>>| -> csv::Result<()> {
        w.write_record(["Label", "Text"])?;
        for e in examples {
            w.write_record([e.label.to_string().as_str(), e.text.as_str()])?;
        }
        w.flush()?;
        Ok(())
    };
    write(&mut writer).map_err(|e| file_error(path, e))?;
    let bytes = writer
        .into_inner()
        .map_err(|e| file_error(path, e.error()))?;
    crate::write_atomically(path, &bytes).map_err(|e| file_error(path, e))
}

/// Token ids of labelled texts, each cut or padded to `length` with `pad_id` at the end (the
/// book pads with GPT-2's `<|endoftext|>`, 50256).
#[derive(Clone, Debug)]
pub struct ClassBatches {
    pub ids: Vec<Vec<u32>>,
    /// Tokens of each text before padding (at least 1, at most `length`).
    pub lengths: Vec<usize>,
    pub labels: Vec<usize>,
    pub length: usize,
}

impl ClassBatches {
    /// Encodes with `encode`; texts longer than `length` keep their first `length` tokens.
    pub fn new(
        examples: &[Example],
        encode: impl Fn(&str) -> Vec<u32>,
        length: usize,
        pad_id: u32,
    ) -> Self {
        let encoded = examples.iter().map(|e| encode(&e.text)).collect();
        let labels = examples.iter().map(|e| e.label).collect();
        Self::from_encoded(encoded, labels, length, pad_id)
    }

    /// Already-encoded texts (e.g. `[CLS] … [SEP]` cut by the tokenizer), cut or padded to
    /// `length`.
    pub fn from_encoded(
        encoded: Vec<Vec<u32>>,
        labels: Vec<usize>,
        length: usize,
        pad_id: u32,
    ) -> Self {
        let mut ids = Vec::with_capacity(encoded.len());
        let mut lengths = Vec::with_capacity(encoded.len());
        for mut tokens in encoded {
            tokens.truncate(length);
            if tokens.is_empty() {
                // An empty message still needs one position to classify from.
                tokens.push(pad_id);
            }
            lengths.push(tokens.len());
            tokens.resize(length, pad_id);
            ids.push(tokens);
        }
        Self {
            ids,
            lengths,
            labels,
            length,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Rows `rows` as tensors: ids `[n, length]`, lengths `[n]`, labels `[n]`.
    pub fn tensors(
        &self,
        rows: &[usize],
        device: &Device,
    ) -> (Tensor<2, Int>, Tensor<1, Int>, Tensor<1, Int>) {
        let n = rows.len();
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|&r| self.ids[r].iter().map(|&t| i64::from(t)))
            .collect();
        let lengths: Vec<i64> = rows.iter().map(|&r| self.lengths[r] as i64).collect();
        let labels: Vec<i64> = rows.iter().map(|&r| self.labels[r] as i64).collect();
        (
            Tensor::from_data(TensorData::new(ids, [n, self.length]), device),
            Tensor::from_data(TensorData::new(lengths, [n]), device),
            Tensor::from_data(TensorData::new(labels, [n]), device),
        )
    }

    /// Row indices in batches of `batch_size`; shuffled by `shuffle` (seed) when given; a last
    /// partial batch is dropped when `drop_last` (the book drops it for training).
    pub fn batches(
        &self,
        batch_size: usize,
        shuffle: Option<u64>,
        drop_last: bool,
    ) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if let Some(seed) = shuffle {
            SplitMix64::new(seed).shuffle(&mut order);
        }
        order
            .chunks(batch_size.max(1))
            .filter(|chunk| !drop_last || chunk.len() == batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line_with_either_line_ending() {
        let dir = tempfile::tempdir().unwrap();
        for ending in ["\n", "\r\n"] {
            let path = dir.path().join("table.csv");
            let rows = [
                "Label,Text",
                "ham,hello",
                "\"spam\",\"two\nlines\"",
                "spam,a,b",
            ];
            std::fs::write(&path, rows.join(ending) + ending).unwrap();
            // The quoted text spans lines 3 and 4, so the bad row is line 5.
            let err = read_table(&path, "Text", "Label").unwrap_err().to_string();
            assert!(err.contains(": line 5: 3 fields"), "{ending:?}: {err}");
        }
        // A quote never closed swallows the rows after it.
        let unclosed = dir.path().join("unclosed.csv");
        std::fs::write(
            &unclosed,
            "Label,Text\nham,hello\nspam,\"oops\nham,a\nham,b\n",
        )
        .unwrap();
        let err = read_table(&unclosed, "Text", "Label")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(": line 3: a quoted field here is never closed"),
            "{err}"
        );
        let txt = dir.path().join("table.txt");
        std::fs::write(&txt, "Label,Text\nham,hello\n").unwrap();
        let err = read_table(&txt, "Text", "Label").unwrap_err().to_string();
        assert!(err.contains("name a comma-separated file .csv"), "{err}");
    }

    #[test]
    fn labels_are_numbered_by_value_or_by_sorted_name() {
        let raw = |labels: &[&str]| {
            labels
                .iter()
                .map(|l| ("t".to_string(), l.to_string()))
                .collect::<Vec<_>>()
        };
        let ints = label_examples(raw(&["1", "0", "2"]));
        assert_eq!(ints.label_names, ["0", "1", "2"]);
        assert_eq!(ints.examples[0].label, 1);
        let names = label_examples(raw(&["pos", "neg", "pos"]));
        assert_eq!(names.label_names, ["neg", "pos"]);
        assert_eq!(
            names.examples.iter().map(|e| e.label).collect::<Vec<_>>(),
            [1, 0, 1]
        );
    }

    #[test]
    fn padding_truncation_and_batches() {
        let examples = vec![
            Example {
                text: "abc".into(),
                label: 1,
            },
            Example {
                text: "abcdefgh".into(),
                label: 0,
            },
            Example {
                text: String::new(),
                label: 0,
            },
        ];
        let encode = |s: &str| s.bytes().map(u32::from).collect();
        let data = ClassBatches::new(&examples, encode, 5, 9);
        assert_eq!(data.ids[0], [97, 98, 99, 9, 9]);
        assert_eq!(data.ids[1], [97, 98, 99, 100, 101]);
        assert_eq!(data.ids[2], [9, 9, 9, 9, 9]);
        assert_eq!(data.lengths, [3, 5, 1]);
        assert_eq!(data.batches(2, None, true), vec![vec![0, 1]]);
        assert_eq!(data.batches(2, None, false), vec![vec![0, 1], vec![2]]);
    }
}
