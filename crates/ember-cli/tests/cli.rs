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
    // Without --text or --file, the text comes from standard input.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.arg("tokenize")
        .env_remove("EMBER_DEVICE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    if std::env::var_os("EMBER_DATA_MIRROR").is_none() {
        let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets");
        cmd.env("EMBER_DATA_MIRROR", shared);
    }
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"Hello, do you like tea?")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out).trim(), "15496 11 466 345 588 8887 30");
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
        text.contains("validation: 2 windows, 1 batch of up to 2, 512 tokens"),
        "{text}"
    );
    // The book's first two windows of length 4 with stride 1 (section 2.6).
    let out = ember(&[
        "data",
        "windows",
        "--max-length",
        "4",
        "--stride",
        "1",
        "--show",
        "2",
    ]);
    let text = stdout(&out);
    for line in [
        "  inputs:  40 367 2885 1464\n  targets: 367 2885 1464 1807\n  text:    \"I HAD always\"",
        "  inputs:  367 2885 1464 1807\n  targets: 2885 1464 1807 3619\n",
    ] {
        assert!(text.contains(line), "{text}");
    }
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
    // A second training into the same directory needs --force.
    let train_again = |extra: &[&str]| {
        let mut args = vec![
            "tokenizer",
            "train",
            "--corpus",
            "the-verdict",
            "--vocab-size",
            "300",
            "--out",
            tokenizer,
        ];
        args.extend_from_slice(extra);
        ember(&args)
    };
    // A GPT run directory as --tokenizer stands for its own vocabulary (ids unlike GPT-2's).
    let fake_run = dir.path().join("run-with-bpe");
    std::fs::create_dir_all(fake_run.join("tokenizer")).unwrap();
    for file in ["encoder.json", "vocab.bpe"] {
        std::fs::copy(out_dir.join(file), fake_run.join("tokenizer").join(file)).unwrap();
    }
    std::fs::write(
        fake_run.join("run.toml"),
        "tokenizer = \"tokenizer\"\n\n[model]\nvocab_size = 400\ncontext_length = 16\n\
         emb_dim = 8\nn_heads = 2\nn_layers = 1\ndrop_rate = 0.0\nqkv_bias = false\n\
         tie_weights = true\n",
    )
    .unwrap();
    let out = ember(&[
        "tokenize",
        "--tokenizer",
        fake_run.to_str().unwrap(),
        "--text",
        "the verdict",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), ids);
    assert_ne!(ids.trim(), "1169 15593");
    let before = std::fs::read(out_dir.join("vocab.bpe")).unwrap();
    assert_one_line_error(&train_again(&[]), "pass --force to replace it");
    assert_eq!(std::fs::read(out_dir.join("vocab.bpe")).unwrap(), before);
    let out = train_again(&["--force"]);
    assert!(
        stdout(&out).contains("trained 300 tokens"),
        "{}",
        stdout(&out)
    );
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
    // Flags a resumed run cannot honour (it keeps its own settings) are refused, not ignored.
    for (command, flag) in [
        (&["pretrain"][..], ["--lr", "0.5"]),
        (&["pretrain"], ["--batch-size", "7"]),
        (&["pretrain"], ["--out", "elsewhere"]),
        (&["finetune", "instruct"], ["--trainable", "lora"]),
        (&["finetune", "instruct"], ["--lr", "0.5"]),
        (&["finetune", "classify"], ["--lr", "0.5"]),
        (&["finetune", "classify"], ["--data", "x.csv"]),
    ] {
        let args = [command, &["--resume", "some-run"], &flag].concat();
        let out = ember(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("cannot be used with"),
            "{args:?}: {stderr}"
        );
    }
}

/// Output that cannot be written ends ember without a panic: quietly when the reader of a
/// pipe has gone (as `| head` does), with one error line when the disk is full.
#[test]
fn unwritable_output_is_not_a_panic() {
    use std::io::Read;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("long.txt");
    std::fs::write(&text, "Every effort moves you. ".repeat(20_000)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["tokenize", "--file", text.to_str().unwrap()])
        .env_remove("EMBER_DEVICE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the ids (~100k) cannot all have fit the pipe"
    );
    assert_ne!(status.code(), Some(101), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    if std::path::Path::new("/dev/full").exists() {
        let out = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["tokenize", "--text", "Every effort moves you"])
            .env_remove("EMBER_DEVICE")
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_one_line_error(&out, "writing to standard output");
    }
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

#[test]
fn pretrain_then_generate_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("micro.toml");
    std::fs::write(
        &model,
        "vocab_size = 50257\ncontext_length = 32\nemb_dim = 32\nn_heads = 2\nn_layers = 1\n\
         drop_rate = 0.0\nqkv_bias = false\ntie_weights = true\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    let run_str = run.to_str().unwrap();
    let out = ember(&[
        "pretrain",
        "--model-config",
        model.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        run_str,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = stdout(&out);
    assert!(text.contains("step 9: train loss"), "{text}"); // 144 windows / 16 = 9 steps
    assert!(text.contains("Every effort moves you"), "{text}");
    for file in [
        "run.toml",
        "metrics.jsonl",
        "loss.png",
        "checkpoints/latest",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let png = std::fs::read(run.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // Greedy text with the weights in f32 and stored in bf16 for decoding.
    for weight_dtype in ["f32", "bf16"] {
        let out = ember(&[
            "generate",
            "--checkpoint",
            run_str,
            "--prompt",
            "Every effort moves you",
            "--max-new-tokens",
            "5",
            "--no-eos",
            "--weight-dtype",
            weight_dtype,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{weight_dtype}: {stderr}");
        assert!(stdout(&out).starts_with("Every effort moves you"));
    }
    // Sampling with a seed repeats itself.
    let sampled = |seed: &str| {
        stdout(&ember(&[
            "generate",
            "--checkpoint",
            run_str,
            "--prompt",
            "I",
            "--max-new-tokens",
            "8",
            "--temperature",
            "1.5",
            "--top-k",
            "50",
            "--seed",
            seed,
            "--no-eos",
        ]))
    };
    assert_eq!(sampled("1"), sampled("1"));

    // A copy of the run with a damaged checkpoint: the resume fails naming the file, and the
    // run's description keeps its epochs (it is written only once the checkpoint has loaded).
    let damaged = dir.path().join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    std::fs::copy(run.join("run.toml"), damaged.join("run.toml")).unwrap();
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let step_dir = format!("checkpoints/{}", latest.trim());
    std::fs::create_dir_all(damaged.join(&step_dir)).unwrap();
    for entry in std::fs::read_dir(run.join(&step_dir)).unwrap().flatten() {
        std::fs::copy(
            entry.path(),
            damaged.join(&step_dir).join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::copy(
        run.join("checkpoints/latest"),
        damaged.join("checkpoints/latest"),
    )
    .unwrap();
    let model_bpk = damaged.join(&step_dir).join("model.bpk");
    let bytes = std::fs::read(&model_bpk).unwrap();
    std::fs::write(&model_bpk, &bytes[..bytes.len() / 2]).unwrap();
    let damaged_str = damaged.to_str().unwrap();
    let run_toml = std::fs::read_to_string(damaged.join("run.toml")).unwrap();
    // A resume with one more epoch that fails with an error naming `needle` (after a note on
    // the schedule) and leaves the run file as it was.
    let assert_resume_refused = |needle: &str| {
        let out = ember(&["pretrain", "--resume", damaged_str, "--epochs", "2"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(damaged.join("run.toml")).unwrap(),
            run_toml
        );
    };
    assert_resume_refused("model.bpk");
    // A value edited into the run file by hand is refused naming the file, not a panic.
    std::fs::write(
        damaged.join("run.toml"),
        run_toml.replace("n_heads = 2", "n_heads = 0"),
    )
    .unwrap();
    assert_one_line_error(
        &ember(&["generate", "--checkpoint", damaged_str, "--prompt", "a"]),
        "run.toml: n_heads must be at least 1",
    );
    // Resuming on other data (5 batches an epoch, not 9) is refused: it would stop mid-epoch.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "hello world. ".repeat(1000)).unwrap();
    let corpus_line = run_toml
        .lines()
        .find(|l| l.starts_with("corpus = "))
        .unwrap();
    std::fs::write(
        damaged.join("run.toml"),
        run_toml.replace(
            corpus_line,
            &format!("corpus = {:?}", short.to_str().unwrap()),
        ),
    )
    .unwrap();
    assert_one_line_error(
        &ember(&["pretrain", "--resume", damaged_str]),
        "the training data changed since the checkpoint of step 9: 9 batches per epoch then, 5 now",
    );
    // A damaged metrics line (not a torn last one) is refused before the run file is written.
    std::fs::write(damaged.join("run.toml"), &run_toml).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    std::fs::write(
        damaged.join("metrics.jsonl"),
        format!("{{\"step\n{metrics}"),
    )
    .unwrap();
    assert_resume_refused("metrics.jsonl line 1: ");

    // Resume with one more epoch: continues from step 9 to 18, on a schedule that now spans
    // two epochs (and says so).
    let out = ember(&["pretrain", "--resume", run_str, "--epochs", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(
        stderr.contains("schedule now spans 2 epochs instead of 1"),
        "{stderr}"
    );
    assert!(
        stdout(&out).contains("step 18: train loss"),
        "{}",
        stdout(&out)
    );
    // Resuming a finished run trains nothing and says so.
    let out = ember(&["pretrain", "--resume", run_str]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("has already trained its 2 epoch(s): nothing to train"),
        "{stderr}"
    );
    assert_one_line_error(
        &ember(&["pretrain", "--resume", run_str, "--epochs", "1"]),
        "has already trained 2 epoch(s); give at least 2",
    );
    // --top-k at the default temperature 0 decodes greedily, and says so.
    let out = ember(&[
        "generate",
        "--checkpoint",
        run_str,
        "--prompt",
        "I",
        "--max-new-tokens",
        "2",
        "--top-k",
        "5",
        "--seed",
        "7",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("note: --top-k, --seed only matter when sampling")
            && stderr.contains("decoding is greedy"),
        "{stderr}"
    );
    // A checkpoint inside the run instead of the run.
    let step_dir = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .unwrap()
        .path();
    assert_one_line_error(
        &ember(&[
            "generate",
            "--checkpoint",
            step_dir.to_str().unwrap(),
            "--prompt",
            "a",
        ]),
        "is a checkpoint inside the run",
    );

    // A second run into the same directory is refused unless asked to replace it.
    let rerun = [
        "pretrain",
        "--model-config",
        model.to_str().unwrap(),
        "--out",
        run_str,
    ];
    assert_one_line_error(&ember(&rerun), "already holds a run");

    // Export to HF format; the exported directory generates the same greedy text, and can
    // be trained further with --weights.
    let exported = dir.path().join("hf");
    let out = ember(&[
        "export",
        "gpt2",
        "--checkpoint",
        run_str,
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
    ] {
        assert!(exported.join(file).is_file(), "{file} missing");
    }
    let greedy = |flag: &str, path: &str| {
        let out = ember(&[
            "generate",
            flag,
            path,
            "--prompt",
            "Every effort",
            "--prompt",
            "I had always",
            "--max-new-tokens",
            "12",
            "--no-eos",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };
    let from_run = greedy("--checkpoint", run_str);
    assert_eq!(from_run, greedy("--weights", exported.to_str().unwrap()));
    // --no-cache recomputes every step and must agree.
    let out = ember(&[
        "generate",
        "--checkpoint",
        run_str,
        "--prompt",
        "Every effort",
        "--prompt",
        "I had always",
        "--max-new-tokens",
        "12",
        "--no-eos",
        "--no-cache",
    ]);
    assert_eq!(stdout(&out), from_run);
    let tuned = dir.path().join("tuned");
    let out = ember(&[
        "pretrain",
        "--weights",
        exported.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        tuned.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("step 9: train loss"),
        "{}",
        stdout(&out)
    );
    // The tuned run keeps its own copy of the exported vocabulary: it still generates when
    // the directory it started from loses its vocabulary files.
    let tuned_str = tuned.to_str().unwrap();
    let tuned_toml = std::fs::read_to_string(tuned.join("run.toml")).unwrap();
    assert!(
        tuned_toml.contains("tokenizer = \"tokenizer\""),
        "{tuned_toml}"
    );
    for file in ["vocab.json", "merges.txt"] {
        std::fs::remove_file(exported.join(file)).unwrap();
    }
    let out = ember(&[
        "generate",
        "--checkpoint",
        tuned_str,
        "--prompt",
        "Every effort",
        "--max-new-tokens",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_one_line_error(
        &ember(&[
            "generate",
            "--checkpoint",
            tuned_str,
            "--prompt",
            "a",
            "--eos-id",
            "50257",
        ]),
        "--eos-id 50257 is not a token id",
    );

    // A classifier with that body copies the vocabulary too.
    let labelled = dir.path().join("labelled.csv");
    std::fs::write(
        &labelled,
        (0..40).fold(String::from("Label,Text\n"), |csv, i| {
            csv + &format!("{},message number {i}\n", ["ham", "spam"][i % 2])
        }),
    )
    .unwrap();
    let classifier = dir.path().join("cls");
    let out = ember(&[
        "finetune",
        "classify",
        "--data",
        labelled.to_str().unwrap(),
        "--checkpoint",
        tuned_str,
        "--epochs",
        "1",
        "--trainable",
        "lora",
        "--lora-rank",
        "2",
        "--out",
        classifier.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = std::fs::read_to_string(classifier.join("classifier.toml")).unwrap();
    assert!(recorded.contains("tokenizer = \"tokenizer\""), "{recorded}");
    assert_eq!(
        std::fs::read(classifier.join("tokenizer/vocab.bpe")).unwrap(),
        std::fs::read(tuned.join("tokenizer/vocab.bpe")).unwrap()
    );
    // Merging its adapters gives a run with its own copy as well.
    let merged = dir.path().join("cls-merged");
    let out = ember(&[
        "lora",
        "merge",
        "--checkpoint",
        classifier.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let classify = |run: &std::path::Path| {
        let out = ember(&[
            "classify",
            "--checkpoint",
            run.to_str().unwrap(),
            "message 3",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };
    assert_eq!(classify(&merged), classify(&classifier));
    assert_one_line_error(
        &ember(&[
            "generate",
            "--checkpoint",
            classifier.to_str().unwrap(),
            "--prompt",
            "a",
        ]),
        "is a classifier run, not a GPT run",
    );
    // A classifier run whose fine-tuning never finished an epoch holds no model.
    let unfinished = dir.path().join("cls-unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::copy(
        classifier.join("classifier.toml"),
        unfinished.join("classifier.toml"),
    )
    .unwrap();
    assert_one_line_error(
        &ember(&[
            "classify",
            "--checkpoint",
            unfinished.to_str().unwrap(),
            "hi",
        ]),
        "holds no trained classifier",
    );
    // --input and --template go with --instruction; with --prompt they are refused, not
    // ignored.
    for flag in ["--input", "--template"] {
        let out = ember(&[
            "generate",
            "--checkpoint",
            tuned_str,
            "--prompt",
            "a",
            flag,
            "x",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("cannot be used with"),
            "{flag}: {stderr}"
        );
    }
    assert_one_line_error(
        &ember(&[
            "export",
            "gpt2",
            "--checkpoint",
            run_str,
            "--out",
            exported.to_str().unwrap(),
        ]),
        "pass --force to replace it",
    );

    assert_one_line_error(
        &ember(&[
            "generate",
            "--checkpoint",
            dir.path().to_str().unwrap(),
            "--prompt",
            "x",
        ]),
        "neither an ember run directory",
    );
    assert_one_line_error(
        &ember(&[
            "pretrain",
            "--model-config",
            "no-such-model",
            "--out",
            dir.path().join("new-run").to_str().unwrap(),
        ]),
        "model config `no-such-model`",
    );
}

fn fixtures() -> PathBuf {
    std::env::var_os("EMBER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        })
}

#[test]
fn import_then_export_gives_back_the_huggingface_tensors() {
    use ember_model::weights::TensorSet;

    let source = fixtures().join("tiny-gpt2");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = ember(&[
        "import",
        "gpt2",
        "--from",
        source.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("60288 parameters, context 64"),
        "{}",
        stdout(&out)
    );
    let exported = dir.path().join("hf");
    let out = ember(&[
        "export",
        "gpt2",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let original = TensorSet::open(&source.join("model.safetensors")).unwrap();
    let back = TensorSet::open(&exported.join("model.safetensors")).unwrap();
    assert_eq!(
        original.names().collect::<Vec<_>>(),
        back.names().collect::<Vec<_>>()
    );
    for name in original.names() {
        assert_eq!(
            original.read(name).unwrap(),
            back.read(name).unwrap(),
            "{name}"
        );
    }

    // Replacing an export (--force) with weights that have no vocabulary removes the old
    // model's vocabulary files instead of leaving them beside weights they do not fit.
    std::fs::write(exported.join("vocab.json"), "{}").unwrap();
    std::fs::write(exported.join("merges.txt"), "#version: 0.2\n").unwrap();
    let out = ember(&[
        "export",
        "gpt2",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!exported.join("vocab.json").exists() && !exported.join("merges.txt").exists());
    assert!(exported.join("model.safetensors").is_file());

    // An export that cannot write one of its files changes none (and leaves no staging
    // directory): here a directory holds merges.txt's name.
    std::fs::create_dir(exported.join("merges.txt")).unwrap();
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let (names, weights) = (
        listing(&exported),
        std::fs::read(exported.join("model.safetensors")).unwrap(),
    );
    let out = ember(&[
        "export",
        "gpt2",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
        "--force",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("merges.txt is a directory"),
        "{stderr}"
    );
    assert_eq!(listing(&exported), names);
    assert!(
        !names.iter().any(|n| n.starts_with(".export-")),
        "{names:?}"
    );
    assert_eq!(
        std::fs::read(exported.join("model.safetensors")).unwrap(),
        weights
    );
    std::fs::remove_dir(exported.join("merges.txt")).unwrap();

    // The fixture has a 1,024-token vocabulary and no vocabulary files: text commands say so.
    assert_one_line_error(
        &ember(&[
            "generate",
            "--checkpoint",
            run.to_str().unwrap(),
            "--prompt",
            "x",
        ]),
        "has 50257 tokens but the model's vocab_size is 1024",
    );
    assert_one_line_error(
        &ember(&[
            "import",
            "gpt2",
            "--from",
            source.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ]),
        "already holds a run",
    );
    assert_one_line_error(
        &ember(&["pretrain", "--resume", run.to_str().unwrap()]),
        "holds imported weights, not a training run",
    );
    assert_one_line_error(
        &ember(&[
            "import",
            "gpt2",
            "--from",
            dir.path().join("nope").to_str().unwrap(),
            "--out",
            dir.path().join("r2").to_str().unwrap(),
        ]),
        "no such directory",
    );
    assert_one_line_error(
        &ember(&[
            "import",
            "gpt2",
            "--from",
            source.to_str().unwrap(),
            "--out",
            dir.path().join("r3").to_str().unwrap(),
            "--context-length",
            "65",
        ]),
        "context length 65 must be between 1 and the checkpoint's n_positions 64",
    );
}

#[test]
fn prepare_finetune_classify_lora_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("spam");
    let out = ember(&["data", "prepare", "spam", "--out", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    for rows in ["1045 rows", "149 rows", "300 rows"] {
        assert!(text.contains(rows), "{text}");
    }
    let header = std::fs::read_to_string(data.join("train.csv")).unwrap();
    assert!(header.starts_with("Label,Text\n"));

    let model = dir.path().join("micro.toml");
    std::fs::write(
        &model,
        "vocab_size = 50257\ncontext_length = 64\nemb_dim = 16\nn_heads = 2\nn_layers = 1\n\
         drop_rate = 0.0\nqkv_bias = true\ntie_weights = true\nemb_init_std = 0.02\n",
    )
    .unwrap();
    let run = dir.path().join("cls");
    let finetune = |extra: &[&str], out_dir: &std::path::Path| {
        let mut args = vec![
            "finetune",
            "classify",
            "--data",
            data.to_str().unwrap(),
            "--random-init",
            "--model-config",
            model.to_str().unwrap(),
            "--epochs",
            "1",
            "--eval-freq",
            "0",
            "--max-length",
            "48",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ember(&args)
    };
    let out = finetune(&["--trainable", "all", "--lr", "2e-3"], &run);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("808482 parameters, 808482 trainable (all)"),
        "{stderr}"
    );
    let summary = stdout(&out);
    assert!(
        summary.contains("best epoch 1: train accuracy"),
        "{summary}"
    );
    // A learnt spam filter, even this small one, beats the 50% of a balanced coin.
    let test_acc: f64 = summary
        .split("test ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(test_acc > 75.0, "{summary}");
    for file in [
        "classifier.toml",
        "metrics.jsonl",
        "loss.png",
        "accuracy.png",
        "best/model.bpk",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let out = ember(&[
        "classify",
        "--checkpoint",
        run.to_str().unwrap(),
        "URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM to 81010",
        "Ok lar... Joking wif u oni...",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("1\t") && lines[1].starts_with("0\t"),
        "{lines:?}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A text longer than the run's max_length (48 tokens) is classified from its start, and
    // the user is told.
    let long = "Ok lar... ".repeat(30);
    let out = ember(&["classify", "--checkpoint", run.to_str().unwrap(), &long]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: 1 of 1 text(s) had more than 48 tokens"),
        "{stderr}"
    );
    assert_one_line_error(
        &finetune(&["--trainable", "all"], &run),
        "already holds a run",
    );

    // LoRA: only the adapters train; merging them keeps every prediction.
    let lora_run = dir.path().join("lora");
    let out = finetune(
        &["--trainable", "lora", "--lora-rank", "4", "--lr", "5e-3"],
        &lora_run,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("trainable (lora)"), "{stderr}");
    assert!(lora_run.join("best/adapter_model.safetensors").is_file());
    assert!(lora_run.join("best/adapter_config.json").is_file());
    let merged = dir.path().join("merged");
    let out = ember(&[
        "lora",
        "merge",
        "--checkpoint",
        lora_run.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let texts = data.join("test.csv");
    let classify = |run: &std::path::Path| {
        stdout(&ember(&[
            "classify",
            "--checkpoint",
            run.to_str().unwrap(),
            "--file",
            texts.to_str().unwrap(),
        ]))
    };
    assert_eq!(classify(&lora_run), classify(&merged));

    assert_one_line_error(
        &finetune(&["--trainable", "some"], &dir.path().join("x")),
        "unknown --trainable `some`",
    );
    assert_one_line_error(
        &ember(&[
            "finetune",
            "classify",
            "--data",
            data.to_str().unwrap(),
            "--out",
            dir.path().join("y").to_str().unwrap(),
        ]),
        "--weights DIR, --checkpoint RUN_DIR or --random-init",
    );
    let bad = dir.path().join("bad.csv");
    let finetune_on = |csv: &str| {
        std::fs::write(&bad, csv).unwrap();
        ember(&[
            "finetune",
            "classify",
            "--data",
            bad.to_str().unwrap(),
            "--random-init",
            "--model-config",
            model.to_str().unwrap(),
            "--out",
            dir.path().join("z").to_str().unwrap(),
        ])
    };
    assert_one_line_error(
        &finetune_on("Message,Category\nhi,0\n"),
        "no column `Text` in the header (columns: Message, Category)",
    );
    assert_one_line_error(
        &finetune_on("Text,Label\nhello,0\nlonely\n"),
        "bad.csv: line 3: has 1 fields, no `Label` column",
    );
    assert_one_line_error(
        &finetune_on("Text,Label\nhello,0\nbye,\n"),
        "line 3: empty `Label`",
    );
    assert_one_line_error(
        &ember(&[
            "classify",
            "--checkpoint",
            dir.path().to_str().unwrap(),
            "x",
        ]),
        "is not a classifier run directory",
    );
}

/// A one-thread HTTP server on 127.0.0.1 that answers Ollama chat requests with `replies`, in
/// order (status, body), and returns the prompts it received.
fn fake_ollama(replies: Vec<(u16, String)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut prompts = Vec::new();
        for (status, body) in replies {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(
                request_line.starts_with("POST /api/chat "),
                "{request_line}"
            );
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut request = vec![0u8; length];
            reader.read_exact(&mut request).unwrap();
            let request: serde_json::Value = serde_json::from_slice(&request).unwrap();
            prompts.push(
                request["messages"][0]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
        prompts
    });
    (url, handle)
}

#[test]
fn finetune_instruct_generate_respond_and_judge() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("micro.toml");
    std::fs::write(
        &model,
        "vocab_size = 50257\ncontext_length = 64\nemb_dim = 16\nn_heads = 2\nn_layers = 1\n\
         drop_rate = 0.0\nqkv_bias = true\ntie_weights = true\nemb_init_std = 0.02\n",
    )
    .unwrap();
    // The first 200 entries of the book's data: split 170 / 10 / 20.
    let out = ember(&["data", "fetch", "instruction-data"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched = stdout(&out);
    let path = fetched
        .trim()
        .strip_prefix("instruction-data: ")
        .unwrap_or_else(|| panic!("{fetched}"));
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let data = dir.path().join("data.json");
    std::fs::write(
        &data,
        serde_json::to_string(&all.as_array().unwrap()[..200]).unwrap(),
    )
    .unwrap();
    let run = dir.path().join("instruct");
    let finetune = |extra: &[&str], out_dir: &std::path::Path| {
        let mut args = vec![
            "finetune",
            "instruct",
            "--data",
            data.to_str().unwrap(),
            "--random-init",
            "--model-config",
            model.to_str().unwrap(),
            "--epochs",
            "2",
            "--lr",
            "1e-2",
            "--eval-freq",
            "10",
            "--eval-iter",
            "2",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ember(&args)
    };
    let out = finetune(&[], &run);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("170 train / 10 validation / 20 test entries (alpaca template)"),
        "{stderr}"
    );
    assert!(stderr.contains("21 steps per epoch of 8 texts"), "{stderr}");
    for file in ["run.toml", "metrics.jsonl", "loss.png", "test.json"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    // The loss falls from ln(50257) ≈ 10.8 (uniform) as the model learns the template.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let val_loss = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).unwrap()["val_loss"]
            .as_f64()
            .unwrap()
    };
    let lines: Vec<&str> = metrics.lines().collect();
    let (first, last) = (val_loss(lines[0]), val_loss(lines[lines.len() - 1]));
    assert!(last < first && last < 6.0, "{first} → {last}");
    let test: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("test.json")).unwrap()).unwrap();
    assert_eq!(test.as_array().unwrap().len(), 20);
    assert_eq!(test[0]["instruction"], all[170]["instruction"]);

    let out = ember(&[
        "generate",
        "--checkpoint",
        run.to_str().unwrap(),
        "--instruction",
        "Rewrite the sentence using a simile.",
        "--input",
        "The car is very fast.",
        "--max-new-tokens",
        "8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout(&out).contains("### "), "{}", stdout(&out));
    // New instructions have no reference `output`: respond answers them all the same.
    let queries = dir.path().join("queries.json");
    std::fs::write(&queries, r#"[{"instruction": "Name a color."}]"#).unwrap();
    let answered = dir.path().join("answered.json");
    let out = ember(&[
        "respond",
        "--checkpoint",
        run.to_str().unwrap(),
        "--data",
        queries.to_str().unwrap(),
        "--out",
        answered.to_str().unwrap(),
        "--max-new-tokens",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answered: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&answered).unwrap()).unwrap();
    assert!(answered[0]["model_response"].is_string(), "{answered}");
    // An instruction longer than the context (64 tokens) is answered from its end, with a
    // warning that its start was dropped.
    let long = "Rewrite the sentence. ".repeat(20);
    let out = ember(&[
        "generate",
        "--checkpoint",
        run.to_str().unwrap(),
        "--instruction",
        &long,
        "--max-new-tokens",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: 1 of 1 prompt(s) had more than 64 tokens"),
        "{stderr}"
    );

    // respond: every test entry gets a model_response, other fields kept.
    let responses = dir.path().join("responses.json");
    let respond = || {
        ember(&[
            "respond",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            run.join("test.json").to_str().unwrap(),
            "--out",
            responses.to_str().unwrap(),
            "--max-new-tokens",
            "4",
        ])
    };
    let out = respond();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answered: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&responses).unwrap()).unwrap();
    let answered = answered.as_array().unwrap();
    assert_eq!(answered.len(), 20);
    assert_eq!(answered[0]["instruction"], test[0]["instruction"]);
    assert!(answered.iter().all(|e| e["model_response"].is_string()));
    let before = std::fs::read(&responses).unwrap();
    assert_one_line_error(&respond(), "exists");
    assert_eq!(std::fs::read(&responses).unwrap(), before);

    // judge: three entries against a local Ollama-like server that first fails once, then
    // scores 80 and 60, and once answers without a number.
    let three = dir.path().join("three.json");
    std::fs::write(
        &three,
        serde_json::to_string(&answered[..3].to_vec()).unwrap(),
    )
    .unwrap();
    let reply = |content: &str| {
        serde_json::json!({"model": "llama3", "message": {"role": "assistant", "content": content}, "done": true})
            .to_string()
    };
    let (url, server) = fake_ollama(vec![
        (500, "{\"error\": \"busy\"}".into()),
        (200, reply("80")),
        (200, reply("I would say 60.")),
        (200, reply("No idea.")),
    ]);
    let scores = dir.path().join("scores.json");
    let out = ember(&[
        "judge",
        "--responses",
        three.to_str().unwrap(),
        "--endpoint",
        &url,
        "--model",
        "llama3",
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prompts = server.join().unwrap();
    assert_eq!(prompts.len(), 4);
    assert!(prompts[1].starts_with("Given the input `Below is an instruction"));
    assert!(prompts[1].contains("score the model response `"));
    let text = stdout(&out);
    assert!(text.contains("number of scores: 2 of 3"), "{text}");
    assert!(text.contains("average score: 70.00"), "{text}");
    let scored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&scores).unwrap()).unwrap();
    assert_eq!(scored[0]["judge_score"], 80);
    assert!(scored[2]["judge_score"].is_null());
    assert_eq!(scored[2]["judge_reply"], "No idea.");

    // The judge unreachable: one clear line.
    assert_one_line_error(
        &ember(&[
            "judge",
            "--responses",
            three.to_str().unwrap(),
            "--endpoint",
            "http://127.0.0.1:9",
            "--retries",
            "1",
        ]),
        "entry 0: the judge failed: http://127.0.0.1:9/api/chat",
    );
    // A refusal (an unknown model: HTTP 404) is shown as Ollama words it, not retried, and
    // the scores before it are kept.
    let (url, server) = fake_ollama(vec![
        (200, reply("90")),
        (
            404,
            "{\"error\": \"model \\\"llama3\\\" not found, try pulling it first\"}".into(),
        ),
    ]);
    let partial = dir.path().join("partial.json");
    assert_one_line_error(
        &ember(&[
            "judge",
            "--responses",
            three.to_str().unwrap(),
            "--endpoint",
            &url,
            "--out",
            partial.to_str().unwrap(),
        ]),
        "404 Not Found: model \"llama3\" not found, try pulling it first (the entry scored before it is in",
    );
    assert_eq!(server.join().unwrap().len(), 2);
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&partial).unwrap()).unwrap();
    assert_eq!(kept.as_array().unwrap().len(), 3);
    assert_eq!(kept[0]["judge_score"], 90);
    assert!(kept[1].get("judge_score").is_none(), "{kept}");

    // LoRA: only the adapters train (q, k, v, out: 4 × (16·4 + 4·16); ff: 2 × (16·4 + 4·64)).
    let lora_run = dir.path().join("lora");
    let out = finetune(&["--trainable", "lora", "--lora-rank", "4"], &lora_run);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(", 1152 trainable;"), "{stderr}");
    let out = ember(&[
        "generate",
        "--checkpoint",
        lora_run.to_str().unwrap(),
        "--instruction",
        "Name a color.",
        "--max-new-tokens",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad data: the entry and field at fault.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 7}]"#,
    )
    .unwrap();
    let bad_run = dir.path().join("bad");
    assert_one_line_error(
        &ember(&[
            "finetune",
            "instruct",
            "--data",
            bad.to_str().unwrap(),
            "--random-init",
            "--model-config",
            model.to_str().unwrap(),
            "--out",
            bad_run.to_str().unwrap(),
        ]),
        "entry 1: field `output` must be a string, found a number",
    );
    assert!(!bad_run.exists());
    assert_one_line_error(
        &ember(&[
            "finetune",
            "instruct",
            "--out",
            dir.path().join("x").to_str().unwrap(),
        ]),
        "no starting weights",
    );
}

/// tiny-bert with a vocab.txt whose ids are the fixture's conventions: [PAD] 0, [CLS] 1,
/// [SEP] 2, [MASK] 3, [UNK] 4, then `w5` … `w511` (so "w45" is id 45).
fn tiny_bert_with_vocab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("tiny-bert");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let mut vocab: Vec<String> = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
        .map(String::from)
        .to_vec();
    vocab.extend((5..512).map(|i| format!("w{i}")));
    std::fs::write(dir.path().join("vocab.txt"), vocab.join("\n")).unwrap();
    dir
}

#[test]
fn fill_mask_ranks_the_tokens_transformers_ranks() {
    let model = tiny_bert_with_vocab();
    let model_arg = model.path().to_str().unwrap();
    // The fixture's row 0: [CLS] 45 300 [MASK] [SEP] 77 501 [MASK] 12 [SEP], types 0×5 1×5.
    let out = ember(&[
        "fill-mask",
        "--model",
        model_arg,
        "--top-k",
        "3",
        "w45 w300 [MASK]",
        "--pair",
        "w77 w501 [MASK] w12",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);

    // Expected: softmax of transformers' logits at positions 3 and 7.
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-bert/reference.json")).unwrap(),
    )
    .unwrap();
    let logits: Vec<f64> = reference["mlm_logits"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mut expected = Vec::new();
    for pos in [3usize, 7] {
        let row = &logits[pos * 512..(pos + 1) * 512];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let total: f64 = row.iter().map(|l| (l - max).exp()).sum();
        let mut ranked: Vec<(usize, f64)> = row
            .iter()
            .map(|l| (l - max).exp() / total)
            .enumerate()
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        expected.push(format!("  [MASK] at token {pos}:"));
        for (id, p) in ranked.into_iter().take(3) {
            let token = match id {
                0..5 => ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"][id].to_string(),
                _ => format!("w{id}"),
            };
            expected.push(format!("    {p:.4}  {token}  (id {id})"));
        }
    }
    let got: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(got, expected, "{text}");

    // The same vocabulary through `ember tokenize`.
    let out = ember(&[
        "tokenize",
        "--tokenizer",
        model_arg,
        "--text",
        "W45 [MASK] w9x",
    ]);
    assert_eq!(stdout(&out).trim(), "45 3 4");

    let no_mask = ember(&["fill-mask", "--model", model_arg, "w45 w300"]);
    assert_one_line_error(&no_mask, "text 1: no [MASK] token");
}

#[test]
fn embed_writes_unit_vectors_that_do_not_depend_on_padding() {
    let model = tiny_bert_with_vocab();
    let model_arg = model.path().to_str().unwrap();
    let texts = ["w45 w300 w17", "w9", "w100 w200 w300 w400 w500 w7"];
    let run = |extra: &[&str]| -> Vec<Vec<f64>> {
        let mut args = vec!["embed", "--model", model_arg];
        args.extend_from_slice(extra);
        args.extend_from_slice(&texts);
        let out = ember(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
            .lines()
            .zip(texts)
            .map(|(line, text)| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(value["text"], text);
                value["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let together = run(&[]);
    let alone = run(&["--batch-size", "1"]);
    let cls = run(&["--pooling", "cls"]);
    assert_eq!(together.len(), 3);
    for ((a, b), c) in together.iter().zip(&alone).zip(&cls) {
        assert_eq!(a.len(), 32);
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        // Padding to the longest sentence of the batch changes nothing.
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-5, "batch vs alone: {diff}");
        let diff = a
            .iter()
            .zip(c)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff > 1e-3, "mean and cls pooling gave the same vector");
    }
    assert_one_line_error(
        &ember(&["embed", "--model", "/nonexistent/bert", "hello"]),
        "/nonexistent/bert",
    );
    // A text past the model's 64 positions is embedded from its start, with a warning.
    let long = "w45 ".repeat(100);
    let out = ember(&["embed", "--model", model_arg, &long]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: 1 of 1 text(s) had more than 64 tokens"),
        "{stderr}"
    );
    // A sentence-transformers pooling ember does not have is refused unless --pooling says
    // which to use instead.
    std::fs::create_dir_all(model.path().join("1_Pooling")).unwrap();
    std::fs::write(
        model.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_max_tokens": true}"#,
    )
    .unwrap();
    assert_one_line_error(
        &ember(&["embed", "--model", model_arg, "w45"]),
        "pooling_mode_max_tokens is not supported",
    );
    let out = ember(&["embed", "--model", model_arg, "--pooling", "mean", "w45"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn data_generate_dates_writes_reproducible_splits() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for name in ["a", "b"] {
        let run = ember(&[
            "data",
            "generate",
            "dates",
            "--n",
            "200",
            "--seed",
            "5",
            "--out",
            &out(name),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(stdout(&run).contains("train.tsv 160, val.tsv 20, test.tsv 20"));
    }
    for file in ["train.tsv", "val.tsv", "test.tsv"] {
        let a = std::fs::read(dir.path().join("a").join(file)).unwrap();
        assert_eq!(
            a,
            std::fs::read(dir.path().join("b").join(file)).unwrap(),
            "{file}"
        );
    }
    assert_one_line_error(
        &ember(&["data", "generate", "years", "--out", &out("c")]),
        "unknown dataset to generate `years`",
    );
}

/// The last `metrics.jsonl` record's train loss and step.
fn last_metrics(run: &std::path::Path) -> (f64, u64) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    (
        last["train_loss"].as_f64().unwrap(),
        last["step"].as_u64().unwrap(),
    )
}

#[test]
fn bert_pretrain_fill_mask_resume_and_classify() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bert-micro.toml");
    std::fs::write(
        &model,
        "vocab_size = 1000\nhidden_size = 32\nnum_hidden_layers = 2\nnum_attention_heads = 2\n\
         intermediate_size = 64\nmax_position_embeddings = 64\n",
    )
    .unwrap();
    let run = dir.path().join("bert");
    let extra = dir.path().join("extra.txt");
    std::fs::write(
        &extra,
        "The painter sat down. He looked at the picture.\n\nIt was late. The studio was dark.\n",
    )
    .unwrap();
    let out = ember(&[
        "pretrain",
        "--arch",
        "bert",
        "--corpus",
        "the-verdict",
        extra.to_str().unwrap(),
        "--model-config",
        model.to_str().unwrap(),
        "--vocab-size",
        "600",
        "--context-length",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "4",
        "--lr",
        "3e-3",
        "--out",
        run.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("(mlm + nsp)"), "{stderr}");
    for file in ["run.toml", "tokenizer.json", "metrics.jsonl", "loss.png"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let vocab = ember_data::tokenizer::Tokenizer::open(&run.join("tokenizer.json"))
        .unwrap()
        .vocab_size();
    assert!(vocab <= 600);
    // A fresh model predicts uniformly: ln(vocab) for the masked LM + ln 2 for NSP.
    let uniform = (vocab as f64).ln() + 2f64.ln();
    let (loss, step) = last_metrics(&run);
    assert!(loss < uniform - 0.7, "loss {loss} vs uniform {uniform}");

    let out = ember(&[
        "fill-mask",
        "--model",
        run.to_str().unwrap(),
        "--top-k",
        "2",
        "it was the [MASK] of the picture.",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("[MASK] at token 4:"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");

    let out = ember(&[
        "pretrain",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "6",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("from step {step}")), "{stderr}");
    let (_, resumed_step) = last_metrics(&run);
    assert_eq!(resumed_step, step / 4 * 6);
    assert_one_line_error(
        &ember(&[
            "generate",
            "--checkpoint",
            run.to_str().unwrap(),
            "--prompt",
            "hi",
        ]),
        "is a bert run, not a GPT run",
    );

    // Classification: a BERT from random init with a WordPiece vocabulary of the training split.
    let data = dir.path().join("spam");
    let out = ember(&["data", "prepare", "spam", "--out", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let classify_run = dir.path().join("cls");
    let finetune = |source: &[&str], out_dir: &std::path::Path| {
        let mut args = vec![
            "finetune",
            "classify",
            "--arch",
            "bert",
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--eval-freq",
            "0",
            "--max-length",
            "48",
            "--lr",
            "2e-3",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(source);
        ember(&args)
    };
    let out = finetune(
        &[
            "--random-init",
            "--model-config",
            model.to_str().unwrap(),
            "--vocab-size",
            "2000",
        ],
        &classify_run,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("trainable (all)"), "{stderr}");
    let summary = stdout(&out);
    let test_acc: f64 = summary
        .split("test ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(test_acc > 75.0, "{summary}");
    let out = ember(&[
        "classify",
        "--checkpoint",
        classify_run.to_str().unwrap(),
        "URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM to 81010",
        "Ok lar... Joking wif u oni...",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert!(
        lines[0].starts_with("1\t") && lines[1].starts_with("0\t"),
        "{lines:?}"
    );
    // The pretrained run as the body (its tokenizer comes along); LoRA is GPT's.
    let out = finetune(
        &[
            "--checkpoint",
            run.to_str().unwrap(),
            "--trainable",
            "last-block",
        ],
        &dir.path().join("cls-pretrained"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_one_line_error(
        &finetune(
            &["--checkpoint", run.to_str().unwrap(), "--trainable", "lora"],
            &dir.path().join("cls-lora"),
        ),
        "--trainable lora is supported for GPT classifiers",
    );
    // The classifier keeps its own copy of the pretraining run's tokenizer: it still
    // classifies when that run's tokenizer.json is gone.
    let pretrained_run = dir.path().join("cls-pretrained");
    let recorded = std::fs::read_to_string(pretrained_run.join("classifier.toml")).unwrap();
    assert!(
        recorded.contains("tokenizer = \"tokenizer.json\""),
        "{recorded}"
    );
    // So does a BERT pretraining run given that tokenizer.
    let given = dir.path().join("bert-given-tokenizer");
    let out = ember(&[
        "pretrain",
        "--arch",
        "bert",
        "--corpus",
        "the-verdict",
        "--objectives",
        "mlm",
        "--model-config",
        model.to_str().unwrap(),
        "--tokenizer",
        run.join("tokenizer.json").to_str().unwrap(),
        "--context-length",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--out",
        given.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The tokenizer is smaller than the config's vocab_size: the new model's table is sized
    // to it (a 1000-row table would rank rows no token reaches).
    assert!(
        stderr.contains(&format!("note: vocab_size 1000 → {vocab}")),
        "{stderr}"
    );
    let run_toml = std::fs::read_to_string(given.join("run.toml")).unwrap();
    assert!(
        run_toml.contains(&format!("vocab_size = {vocab}\n")),
        "{run_toml}"
    );
    std::fs::remove_file(run.join("tokenizer.json")).unwrap();
    let out = ember(&[
        "fill-mask",
        "--model",
        given.to_str().unwrap(),
        "it was the [MASK] of the picture.",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ember(&[
        "classify",
        "--checkpoint",
        pretrained_run.to_str().unwrap(),
        "Ok lar... Joking wif u oni...",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn train_seq2seq_then_translate_with_beam_and_attention() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dates");
    let recipe = dir.path().join("tiny.toml");
    for (arch, model) in [
        (
            "transformer",
            "arch = \"transformer\"\nd_model = 32\nn_heads = 2\nn_encoder_layers = 1\n\
             n_decoder_layers = 1\nff_dim = 64\nmax_len = 48\nshared_embeddings = true\n",
        ),
        (
            "transformer-bpe",
            "arch = \"transformer\"\nd_model = 32\nn_heads = 2\nn_encoder_layers = 1\n\
             n_decoder_layers = 1\nff_dim = 64\nmax_len = 48\n",
        ),
        (
            "lstm",
            "arch = \"lstm\"\nemb_dim = 16\nhidden = 32\nn_layers = 1\nbidirectional = true\n\
             attention = true\n",
        ),
    ] {
        std::fs::write(
            &recipe,
            format!(
                "data = \"{}\"\ngenerate_dates = {{ n = 400, seed = 5 }}\n{}\n[model]\n{model}\n\
                 [train]\nepochs = 2\nbatch_size = 32\nlr = 3e-3\nweight_decay = 0.0\n\
                 eval_freq = 5\neval_iter = 2\nseed = 1\n",
                data.display(),
                if arch.ends_with("bpe") {
                    "tokens = \"bpe\"\nbpe_vocab_size = 320\n"
                } else {
                    ""
                }
            ),
        )
        .unwrap();
        let run = dir.path().join(arch);
        let out = ember(&[
            "train",
            "seq2seq",
            "--config",
            recipe.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{arch}: {stderr}");
        let text = stdout(&out);
        assert!(text.contains("test exact match: "), "{text}");
        for file in ["seq2seq.toml", "metrics.jsonl", "loss.png", "test.json"] {
            assert!(run.join(file).is_file(), "{arch}: {file} missing");
        }
        assert_eq!(
            run.join("encoder.json").is_file(),
            arch.ends_with("bpe"),
            "{arch}: the BPE vocabulary is kept in the run"
        );
        // Training lowers the loss from the uniform guess over the characters.
        let first = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let losses: Vec<f64> = first
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert!(
            losses.last().unwrap() < &(losses[0] - 0.3),
            "{arch}: {losses:?}"
        );

        if arch == "transformer" {
            // One more epoch from the last checkpoint.
            let steps = |run: &std::path::Path| last_metrics(run).1;
            let before = steps(&run);
            let out = ember(&[
                "train",
                "seq2seq",
                "--resume",
                run.to_str().unwrap(),
                "--epochs",
                "3",
            ]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            assert!(stderr.contains(&format!("from step {before}")), "{stderr}");
            assert_eq!(steps(&run), before / 2 * 3);
        }
        for beam in ["1", "3"] {
            let png = dir.path().join(format!("{arch}-beam{beam}.png"));
            let out = ember(&[
                "translate",
                "--checkpoint",
                run.to_str().unwrap(),
                "--beam",
                beam,
                "--attention-png",
                png.to_str().unwrap(),
                "3rd of March 1998",
            ]);
            assert!(
                out.status.success(),
                "{arch}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(stdout(&out).lines().count(), 1);
            assert!(std::fs::metadata(&png).unwrap().len() > 1000);
        }
        // An existing picture is replaced only with --force.
        let png = dir.path().join(format!("{arch}-beam1.png"));
        let draw = |force: &[&str]| {
            let args = [
                &[
                    "translate",
                    "--checkpoint",
                    run.to_str().unwrap(),
                    "--attention-png",
                    png.to_str().unwrap(),
                    "3rd of March 1998",
                ],
                force,
            ]
            .concat();
            ember(&args)
        };
        assert_one_line_error(&draw(&[]), "pass --force to replace it");
        let out = draw(&["--force"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_one_line_error(
            &ember(&[
                "translate",
                "--checkpoint",
                run.to_str().unwrap(),
                "a",
                "b",
                "--attention-png",
                "x.png",
            ]),
            "give exactly one text",
        );
    }
    // The data was generated once, into the recipe's directory.
    assert!(data.join("train.tsv").is_file() && data.join("test.tsv").is_file());
    assert_one_line_error(
        &ember(&["translate", "--checkpoint", data.to_str().unwrap(), "x"]),
        "is not a seq2seq run directory",
    );
}

#[test]
fn bench_prints_and_writes_json_without_the_reference_environment() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("tokenize.json");
    let missing_python = dir.path().join("no-python");
    let out = ember(&[
        "bench",
        "tokenize",
        "--seconds",
        "0.01",
        "--python",
        missing_python.to_str().unwrap(),
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    // It says how to get the references, and measures ember alone.
    assert!(text.contains("scripts/setup-bench.sh"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let rows = report["tokenize"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    // Token counts of tiktoken's GPT-2 encoding (crates/ember-data/tests/data).
    assert_eq!(rows[0]["corpus"], "the-verdict");
    assert_eq!(rows[0]["tokens"], 5145);
    assert!(rows[0]["mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["ratio"].is_null());

    let json_path = dir.path().join("generate.json");
    let out = ember(&[
        "bench",
        "generate",
        "--model",
        "gpt-tiny",
        "--prompt-tokens",
        "3",
        "--new-tokens",
        "6",
        "--no-reference",
        "--rounds",
        "3",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let row = &report["generate"][0];
    // Three rounds (the same tokens each, or the bench fails); the table's figure is their median.
    let mut rates: Vec<f64> = (0..3)
        .map(|i| row["rounds"][i]["tokens_per_s"].as_f64().unwrap())
        .collect();
    rates.sort_by(f64::total_cmp);
    assert_eq!(row["tokens_per_s"].as_f64().unwrap(), rates[1], "{row}");
    assert!(row["rounds"][0]["reference_tokens_per_s"].is_null());
    // Split products (2+ threads on the CPU) and the cache-free loop give the same tokens.
    assert_eq!(row["cache_tokens_agree"], true, "{row}");
    assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(row["gemv_probe"]["split_gb_s"].as_f64().unwrap() > 0.0);

    // One training case in its own process: its JSON line.
    let out = ember(&["bench", "train", "--steps", "1", "--only", "gpt-tiny:256:8"]);
    assert!(out.status.success());
    let case: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(case["case"], "gpt-tiny ctx256 b8");
    assert_eq!(case["params"], 28_953_600);
    assert!(case["peak_rss_mb"].as_f64().unwrap() > 0.0);

    // `--case` replaces the default cases, reaches the per-case process and the JSON report.
    let out = ember(&[
        "bench",
        "train",
        "--case",
        "gpt-tiny:32:1",
        "--steps",
        "1",
        "--drop-rate",
        "0.1",
        "--no-reference",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let rows = report["train"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["case"], "gpt-tiny ctx32 b1");
    assert_eq!(
        (rows[0]["context"].as_u64(), rows[0]["batch"].as_u64()),
        (Some(32), Some(1))
    );
    assert_eq!(rows[0]["drop_rate"].as_f64(), Some(0.1), "{report}");
    // A case far beyond memory is refused in one line, not aborted with a trace.
    #[cfg(target_os = "linux")]
    assert_one_line_error(
        &ember(&[
            "bench",
            "train",
            "--steps",
            "1",
            "--only",
            "gpt-tiny:4294967296:1",
        ]),
        "more than this machine's",
    );
    // A results file in a directory that does not exist is refused before the work.
    let nowhere = dir.path().join("no-dir").join("x.json");
    assert_one_line_error(
        &ember(&[
            "bench",
            "tokenize",
            "--no-reference",
            "--json",
            nowhere.to_str().unwrap(),
        ]),
        "no-dir does not exist",
    );
    let bad = ember(&["bench", "train", "--case", "gpt-tiny:32"]);
    let why = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(why.contains("expected MODEL:CONTEXT:BATCH"), "{why}");
    let bad = ember(&["bench", "train", "--drop-rate", "1"]);
    let why = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(why.contains("not a probability in [0, 1)"), "{why}");
}
