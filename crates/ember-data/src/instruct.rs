//! Instruction data (Alpaca-style JSON), prompt templates, the book's 85/5/10 split and the
//! instruction collate: end-of-text appended, padded per batch, targets shifted by one with
//! every padding target but the first set to -100 (and optionally the prompt's too).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::loader::{Batches, TokenBatch};
use crate::rng::SplitMix64;

/// PyTorch's `ignore_index`: a target the loss skips.
pub const IGNORE_INDEX: i64 = -100;

/// One instruction example. `fields` keeps the whole JSON object (with any extra keys) so that
/// `respond` can write it back with the model's answer added.
#[derive(Clone, Debug, PartialEq)]
pub struct InstructionEntry {
    pub instruction: String,
    /// Empty when the entry has no input.
    pub input: String,
    pub output: String,
    pub fields: Map<String, Value>,
}

/// Why an instruction file cannot be used; names the file and the entry (0-based, as in the
/// JSON list) and field.
#[derive(Debug, thiserror::Error)]
pub enum InstructError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: entry {index}: {message}")]
    Entry {
        path: PathBuf,
        index: usize,
        message: String,
    },
}

/// Reads an Alpaca-style JSON file: a list of objects with string fields `instruction`,
/// `output` and optionally `input`.
pub fn read_instructions(path: &Path) -> Result<Vec<InstructionEntry>, InstructError> {
    read_entries(path, true)
}

/// [`read_instructions`] for entries to answer, whose `output` (a reference answer, which new
/// instructions do not have) is optional: empty when absent.
pub fn read_queries(path: &Path) -> Result<Vec<InstructionEntry>, InstructError> {
    read_entries(path, false)
}

fn read_entries(
    path: &Path,
    output_required: bool,
) -> Result<Vec<InstructionEntry>, InstructError> {
    let file_error = |message: String| InstructError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = crate::read_text_file(path).map_err(|e| file_error(e.reason()))?;
    parse_entries(&text, output_required).map_err(|(index, message)| match index {
        Some(index) => InstructError::Entry {
            path: path.to_path_buf(),
            index,
            message,
        },
        None => file_error(message),
    })
}

/// Parses the JSON text of [`read_instructions`]; errors carry the entry index when one is at
/// fault.
pub fn parse_instructions(text: &str) -> Result<Vec<InstructionEntry>, (Option<usize>, String)> {
    parse_entries(text, true)
}

fn parse_entries(
    text: &str,
    output_required: bool,
) -> Result<Vec<InstructionEntry>, (Option<usize>, String)> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| (None, format!("invalid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err((
            None,
            "expected a JSON list of {\"instruction\", \"input\", \"output\"} objects".into(),
        ));
    };
    if items.is_empty() {
        return Err((None, "the list of entries is empty".into()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let Value::Object(fields) = item else {
                return Err((Some(index), "expected an object".into()));
            };
            let field = |name: &str, required: bool| match fields.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Null) | None if !required => Ok(String::new()),
                None => Err((Some(index), format!("missing field `{name}`"))),
                Some(other) => Err((
                    Some(index),
                    format!(
                        "field `{name}` must be a string, found {}",
                        json_kind(other)
                    ),
                )),
            };
            Ok(InstructionEntry {
                instruction: field("instruction", true)?,
                input: field("input", false)?,
                output: field("output", output_required)?,
                fields: fields.clone(),
            })
        })
        .collect()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// How an entry becomes text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The book's Alpaca prompt with `### Instruction:` / `### Input:` / `### Response:`.
    #[default]
    Alpaca,
    /// Phi-3 style `<|user|>` … `<|assistant|>:` (the book's exercise 7.1).
    Phi3,
}

impl Template {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "alpaca" => Ok(Self::Alpaca),
            "phi3" => Ok(Self::Phi3),
            other => Err(format!(
                "unknown template `{other}`: expected alpaca or phi3"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Alpaca => "alpaca",
            Self::Phi3 => "phi3",
        }
    }

    /// Instruction and input, without the response header (the book's `format_input`).
    pub fn format_input(self, instruction: &str, input: &str) -> String {
        match self {
            Self::Alpaca => {
                let mut text = format!(
                    "Below is an instruction that describes a task. Write a response that \
                     appropriately completes the request.\n\n### Instruction:\n{instruction}"
                );
                if !input.is_empty() {
                    text.push_str(&format!("\n\n### Input:\n{input}"));
                }
                text
            }
            Self::Phi3 => {
                let mut text = format!("<|user|>\n{instruction}");
                if !input.is_empty() {
                    text.push_str(&format!("\n{input}"));
                }
                text
            }
        }
    }

    /// What separates the prompt from the response.
    pub fn response_header(self) -> &'static str {
        match self {
            Self::Alpaca => "\n\n### Response:\n",
            Self::Phi3 => "\n<|assistant|>:\n",
        }
    }

    /// The text a model continues to answer: input + response header.
    pub fn query(self, instruction: &str, input: &str) -> String {
        self.format_input(instruction, input) + self.response_header()
    }

    /// The training text of an entry: query + expected output.
    pub fn full_text(self, entry: &InstructionEntry) -> String {
        self.query(&entry.instruction, &entry.input) + &entry.output
    }
}

/// Train, validation and test entries.
#[derive(Clone, Debug, PartialEq)]
pub struct InstructionSplits {
    pub train: Vec<InstructionEntry>,
    pub validation: Vec<InstructionEntry>,
    pub test: Vec<InstructionEntry>,
}

/// The book's split: 85% train, 10% test, the rest (5%) validation, with the sizes rounded down
/// as `int(n * 0.85)` and `int(n * 0.1)` (935 / 55 / 110 of 1,100). Entries are shuffled with
/// `seed` first; `None` keeps the file order, which is the book's exact split.
pub fn split_instructions(entries: &[InstructionEntry], seed: Option<u64>) -> InstructionSplits {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    if let Some(seed) = seed {
        SplitMix64::new(seed).shuffle(&mut order);
    }
    let n = entries.len();
    let train = n * 85 / 100;
    let test = n / 10;
    let take = |range: std::ops::Range<usize>| -> Vec<InstructionEntry> {
        order[range].iter().map(|&i| entries[i].clone()).collect()
    };
    InstructionSplits {
        train: take(0..train),
        test: take(train..train + test),
        validation: take(train + test..n),
    }
}

/// An encoded training text and how many of its first tokens are the prompt (instruction and
/// input, without the response header: the book's exercise 7.2 masks `targets[:len - 1]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedExample {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

impl EncodedExample {
    /// Encodes `entry` with `template`; special-token strings in the data stay plain text.
    pub fn new(
        entry: &InstructionEntry,
        template: Template,
        encode: &impl Fn(&str) -> Vec<u32>,
    ) -> Self {
        Self {
            ids: encode(&template.full_text(entry)),
            prompt_len: encode(&template.format_input(&entry.instruction, &entry.input)).len(),
        }
    }
}

/// Collate settings (the book's `custom_collate_fn` arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollateOptions {
    /// Appended to every text and used for padding (GPT-2's `<|endoftext|>`, 50256).
    pub pad_id: u32,
    /// Inputs and targets are cut to this many positions (the book: 1024, the context length).
    pub allowed_max_length: Option<usize>,
    /// Also ignore the targets that predict prompt tokens.
    pub mask_prompt: bool,
}

/// One batch exactly as the book's collate builds it: each text gets `pad_id` appended and is
/// padded with `pad_id` to the longest (+1) in the batch; inputs are all positions but the last,
/// targets all but the first; every target equal to `pad_id` except the first becomes -100.
pub fn collate(examples: &[&EncodedExample], options: &CollateOptions) -> TokenBatch {
    let longest = examples.iter().map(|e| e.ids.len() + 1).max().unwrap_or(1);
    let seq_len = options
        .allowed_max_length
        .map_or(longest - 1, |max| (longest - 1).min(max));
    let mut inputs = Vec::with_capacity(examples.len() * seq_len);
    let mut targets = Vec::with_capacity(examples.len() * seq_len);
    for example in examples {
        let mut padded = example.ids.clone();
        padded.resize(longest, options.pad_id);
        let mut row_targets: Vec<i64> = padded[1..].iter().map(|&t| i64::from(t)).collect();
        let pad = i64::from(options.pad_id);
        let mut seen_pad = false;
        for target in &mut row_targets {
            if *target == pad {
                if seen_pad {
                    *target = IGNORE_INDEX;
                }
                seen_pad = true;
            }
        }
        if options.mask_prompt {
            let masked = example.prompt_len.saturating_sub(1).min(row_targets.len());
            row_targets[..masked].fill(IGNORE_INDEX);
        }
        inputs.extend_from_slice(&padded[..seq_len]);
        targets.extend_from_slice(&row_targets[..seq_len]);
    }
    TokenBatch {
        inputs,
        targets,
        batch_size: examples.len(),
        seq_len,
    }
}

/// Batches of encoded instruction examples, collated per batch (so each batch is only as long
/// as its longest text), optionally shuffled per epoch and dropping a short last batch.
#[derive(Clone, Debug)]
pub struct InstructionLoader {
    examples: Vec<EncodedExample>,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    drop_last: bool,
    options: CollateOptions,
}

impl InstructionLoader {
    /// `batch_size` must be at least 1.
    pub fn new(
        examples: Vec<EncodedExample>,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        drop_last: bool,
        options: CollateOptions,
    ) -> Result<Self, String> {
        if batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        Ok(Self {
            examples,
            batch_size,
            shuffle_seed,
            drop_last,
            options,
        })
    }

    pub fn examples(&self) -> &[EncodedExample] {
        &self.examples
    }

    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            SplitMix64::new(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F)).shuffle(&mut order);
        }
        order
    }
}

impl Batches<TokenBatch> for InstructionLoader {
    fn num_examples(&self) -> usize {
        self.examples.len()
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn num_batches(&self) -> usize {
        match self.drop_last {
            true => self.examples.len() / self.batch_size,
            false => self.examples.len().div_ceil(self.batch_size),
        }
    }

    fn epoch_batches(&self, epoch: u64) -> Box<dyn Iterator<Item = TokenBatch> + '_> {
        let order = self.order(epoch);
        let num_batches = self.num_batches();
        Box::new((0..num_batches).map(move |b| {
            let rows = &order[b * self.batch_size..((b + 1) * self.batch_size).min(order.len())];
            let examples: Vec<&EncodedExample> = rows.iter().map(|&r| &self.examples[r]).collect();
            collate(&examples, &self.options)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(ids: &[u32], prompt_len: usize) -> EncodedExample {
        EncodedExample {
            ids: ids.to_vec(),
            prompt_len,
        }
    }

    const BOOK: CollateOptions = CollateOptions {
        pad_id: 50256,
        allowed_max_length: None,
        mask_prompt: false,
    };

    #[test]
    fn collate_matches_the_book() {
        // The book's section 7.3 example: custom_collate_fn on [0..4], [5, 6], [7, 8, 9].
        let (a, b, c) = (
            example(&[0, 1, 2, 3, 4], 0),
            example(&[5, 6], 0),
            example(&[7, 8, 9], 0),
        );
        let batch = collate(&[&a, &b, &c], &BOOK);
        assert_eq!(batch.seq_len, 5);
        assert_eq!(
            batch.inputs,
            [
                0, 1, 2, 3, 4, 5, 6, 50256, 50256, 50256, 7, 8, 9, 50256, 50256
            ]
        );
        assert_eq!(
            batch.targets,
            [
                1, 2, 3, 4, 50256, 6, 50256, -100, -100, -100, 8, 9, 50256, -100, -100
            ]
        );
        // allowed_max_length cuts inputs and targets alike.
        let cut = collate(
            &[&a, &b, &c],
            &CollateOptions {
                allowed_max_length: Some(3),
                ..BOOK
            },
        );
        assert_eq!(cut.inputs, [0, 1, 2, 5, 6, 50256, 7, 8, 9]);
        assert_eq!(cut.targets, [1, 2, 3, 6, 50256, -100, 8, 9, 50256]);
    }

    #[test]
    fn mask_prompt_ignores_the_instruction_targets() {
        // prompt_len 3: targets[:2] = -100 (the book's exercise 7.2).
        let a = example(&[0, 1, 2, 3, 4], 3);
        let b = example(&[5, 6], 1);
        let options = CollateOptions {
            mask_prompt: true,
            ..BOOK
        };
        let batch = collate(&[&a, &b], &options);
        assert_eq!(
            batch.targets,
            [-100, -100, 3, 4, 50256, 6, 50256, -100, -100, -100]
        );
    }

    #[test]
    fn split_sizes_are_the_books() {
        let entries: Vec<InstructionEntry> = (0..1100)
            .map(|i| InstructionEntry {
                instruction: i.to_string(),
                input: String::new(),
                output: String::new(),
                fields: Map::new(),
            })
            .collect();
        let books = split_instructions(&entries, None);
        assert_eq!(
            (books.train.len(), books.validation.len(), books.test.len()),
            (935, 55, 110)
        );
        // File order: test is entries 935..1045, validation 1045..1100.
        assert_eq!(books.test[0].instruction, "935");
        assert_eq!(books.validation[0].instruction, "1045");
        let shuffled = split_instructions(&entries, Some(123));
        assert_eq!(shuffled.train.len(), 935);
        assert_ne!(shuffled.train, books.train);
        assert_eq!(shuffled, split_instructions(&entries, Some(123)));
    }

    #[test]
    fn templates_follow_the_book() {
        let alpaca = Template::Alpaca;
        assert_eq!(
            alpaca.query("Name a color.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\n"
        );
        assert!(
            alpaca
                .format_input("Fix it.", "teh cat")
                .ends_with("### Instruction:\nFix it.\n\n### Input:\nteh cat")
        );
        assert_eq!(
            Template::Phi3.query("Fix it.", "teh cat"),
            "<|user|>\nFix it.\nteh cat\n<|assistant|>:\n"
        );
        assert!(Template::parse("chatml").is_err());
    }

    #[test]
    fn bad_entries_name_index_and_field() {
        let err = parse_instructions(
            r#"[{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "x"}]"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            (
                Some(1),
                "field `instruction` must be a string, found a number".into()
            )
        );
        let err = parse_instructions(r#"[{"instruction": "a"}]"#).unwrap_err();
        assert_eq!(err, (Some(0), "missing field `output`".into()));
        assert_eq!(parse_instructions("[1]").unwrap_err().0, Some(0));
        assert_eq!(parse_instructions("{}").unwrap_err().0, None);
        assert!(
            parse_instructions("[")
                .unwrap_err()
                .1
                .starts_with("invalid JSON")
        );
        let ok =
            parse_instructions(r#"[{"instruction": "a", "input": null, "output": "b", "id": 7}]"#)
                .unwrap();
        assert_eq!(ok[0].input, "");
        assert_eq!(ok[0].fields["id"], 7);
    }
}
