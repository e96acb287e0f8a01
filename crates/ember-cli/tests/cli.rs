//! The `ember` binary end to end: what users type, what they see, and clean one-line errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn ember(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.args(args).env_remove("EMBER_DEVICE");
    if std::env::var_os("EMBER_DATA_MIRROR").is_none() {
        let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets");
        if shared.is_dir() {
            cmd.env("EMBER_DATA_MIRROR", shared);
        }
    }
    cmd.output().expect("ember runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a failure with exactly one line on stderr that contains `needle` and no panic.
fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn tokenize_prints_gpt2_ids_and_decodes_them() {
    let text = "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace.";
    let out = ember(&["tokenize", "--text", text]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        "15496 11 466 345 588 8887 30 220 50256 554 262 4252 18250 8812 2114 1659 617 34680 27271 13"
    );
    let out = ember(&[
        "tokenize",
        "--decode",
        "--text",
        "[15496, 11, 466, 345, 588, 8887, 30]",
    ]);
    assert_eq!(stdout(&out), "Hello, do you like tea?");
    assert_one_line_error(
        &ember(&["tokenize", "--decode", "--text", "1 x"]),
        "id #2 `x`",
    );
    assert_one_line_error(
        &ember(&["tokenize", "--decode", "--text", "50257"]),
        "outside the vocabulary",
    );
}

#[test]
fn windows_reports_the_books_batches() {
    let out = ember(&["data", "windows", "--corpus", "the-verdict"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(
        text.contains("train: 18 windows, 9 batches of up to 2, 4608 tokens"),
        "{text}"
    );
    assert!(
        text.contains("validation: 2 windows, 1 batches of up to 2, 512 tokens"),
        "{text}"
    );
}

#[test]
fn tokenizer_train_writes_a_vocabulary_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("bpe");
    let out = ember(&[
        "tokenizer",
        "train",
        "--corpus",
        "the-verdict",
        "--vocab-size",
        "400",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("trained 400 tokens (143 merges)"), "{text}");
    assert!(text.contains("the-verdict: trained "), "{text}");
    let tokenizer = out_dir.to_str().unwrap();
    let out = ember(&[
        "tokenize",
        "--tokenizer",
        tokenizer,
        "--text",
        "the verdict",
    ]);
    let ids = stdout(&out);
    let out = ember(&[
        "tokenize",
        "--tokenizer",
        tokenizer,
        "--decode",
        "--text",
        &ids,
    ]);
    assert_eq!(stdout(&out), "the verdict");
}

#[test]
fn bad_input_is_one_clear_line() {
    assert_one_line_error(&ember(&["--device", "tpu", "info"]), "unknown device `tpu`");
    if !cfg!(feature = "cuda") {
        assert_one_line_error(&ember(&["--device", "cuda:0", "info"]), "--features cuda");
    }
    assert_one_line_error(&ember(&["data", "fetch", "nope"]), "unknown dataset `nope`");
    assert_one_line_error(
        &ember(&["tokenize", "--file", "/nonexistent/corpus.txt"]),
        "/nonexistent/corpus.txt",
    );
    assert_one_line_error(&ember(&["tokenize", "--file", "/"]), "is a directory");
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9").unwrap();
    assert_one_line_error(
        &ember(&["tokenize", "--file", latin1.to_str().unwrap()]),
        "not valid UTF-8 (first bad byte at offset 3)",
    );
    assert_one_line_error(
        &ember(&["data", "windows", "--stride", "0"]),
        "stride must be at least 1",
    );
    assert_one_line_error(
        &ember(&["data", "windows", "--max-length", "100000"]),
        "too short for one window",
    );
    assert_one_line_error(
        &ember(&[
            "tokenizer",
            "train",
            "--corpus",
            "no-such-corpus",
            "--out",
            "/tmp/x",
        ]),
        "no-such-corpus: no such file",
    );
}

#[test]
fn info_runs_a_computation_on_the_default_device() {
    let out = ember(&["info"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("ok (64×64 matmul checked)"));
}
