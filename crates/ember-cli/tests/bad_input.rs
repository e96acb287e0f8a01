//! Bad input to the real `ember` binary: every case must fail with a non-zero exit, one line
//! on stderr that names the file / line / field / tensor at fault, no panic, and no change to
//! any file that existed before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ember_in(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("EMBER_DEVICE")
        .env("EMBER_HOME", dir.join("ember-home"))
        .env("RUST_BACKTRACE", "1");
    if std::env::var_os("EMBER_DATA_MIRROR").is_none() {
        let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets");
        if shared.is_dir() {
            cmd.env("EMBER_DATA_MIRROR", shared);
        }
    }
    cmd.output().expect("ember runs")
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.insert(path, bytes);
            }
        }
    }
    files
}

/// The bad-input cases and a directory holding the files they use.
struct Cases {
    dir: tempfile::TempDir,
    count: usize,
}

impl Cases {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            count: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        self.p(name)
    }

    /// Runs `args` and checks the failure: exit ≠ 0, exactly one `error:` line naming
    /// `needle`, no panic or backtrace, every file unchanged (new files may appear only in
    /// run directories the case names as outputs, which must not exist before).
    fn fails(&mut self, what: &str, args: &[&str], needle: &str) {
        let before = snapshot(self.dir.path());
        let out = ember_in(self.dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: expected failure, got success"
        );
        assert_ne!(out.status.code(), Some(101), "{what}: panicked: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: not one line: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{what}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{what}: {stderr:?} lacks {needle:?}"
        );
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!stderr.contains(bad), "{what}: {stderr}");
        }
        let after = snapshot(self.dir.path());
        for (path, bytes) in &before {
            assert!(
                after.get(path) == Some(bytes),
                "{what}: {} changed or vanished",
                path.display()
            );
        }
        eprintln!("{what}: {}", stderr.trim_end());
        self.count += 1;
    }
}

const MICRO: &str = "vocab_size = 50257\ncontext_length = 16\nemb_dim = 8\nn_heads = 2\n\
                     n_layers = 1\ndrop_rate = 0.0\nqkv_bias = false\ntie_weights = true\n";

#[test]
fn bad_input_fails_cleanly_and_changes_nothing() {
    let mut c = Cases::new();

    // Files and directories.
    c.fails(
        "missing file",
        &["tokenize", "--file", "nope.txt"],
        "nope.txt",
    );
    std::fs::create_dir_all(c.path("adir")).unwrap();
    c.fails(
        "directory instead of file",
        &["pretrain", "--corpus", "adir", "--out", "r-dir"],
        "adir: is a directory",
    );
    let empty = c.write("empty.txt", "");
    c.fails(
        "empty corpus",
        &["pretrain", "--corpus", &empty, "--out", "r-empty"],
        "empty.txt",
    );
    let short = c.write("short.txt", "Too short for a window.");
    c.fails(
        "corpus shorter than one window",
        &["pretrain", "--corpus", &short, "--out", "r-short"],
        "short.txt",
    );
    let latin1 = c.write("latin1.txt", b"caf\xe9 au lait".repeat(200));
    c.fails(
        "non-UTF-8 text",
        &["pretrain", "--corpus", &latin1, "--out", "r-latin1"],
        "latin1.txt: not valid UTF-8 (first bad byte at offset 3)",
    );
    c.fails(
        "non-UTF-8 tokenize input",
        &["tokenize", "--file", &latin1],
        "latin1.txt",
    );

    // Instruction JSON.
    let micro = c.write("micro.toml", MICRO);
    let instruct = |c: &mut Cases, what: &str, json: &str, needle: &str| {
        let file = c.write(&format!("{what}.json"), json);
        let out = c.p(&format!("r-{what}"));
        c.fails(
            what,
            &[
                "finetune",
                "instruct",
                "--data",
                &file,
                "--random-init",
                "--model-config",
                &micro,
                "--out",
                &out,
            ],
            needle,
        );
    };
    // The file is named once (its reader's error named it, and the instruction error again).
    let latin1_json = c.write("latin1.json", b"[{\"instruction\": \"caf\xe9\"}]");
    c.fails(
        "non-UTF-8 instruction file",
        &[
            "finetune",
            "instruct",
            "--data",
            &latin1_json,
            "--random-init",
            "--model-config",
            &micro,
            "--out",
            "r-latin1-json",
        ],
        &format!("error: {latin1_json}: not valid UTF-8"),
    );
    instruct(
        &mut c,
        "malformed-json",
        "[{\"instruction\": \"a\",",
        "malformed-json.json: invalid JSON",
    );
    instruct(
        &mut c,
        "missing-field",
        r#"[{"instruction": "a", "output": "b"}, {"instruction": "c"}]"#,
        "entry 1: missing field `output`",
    );
    instruct(
        &mut c,
        "mistyped-field",
        r#"[{"instruction": ["a"], "output": "b"}]"#,
        "entry 0: field `instruction` must be a string, found a list",
    );
    instruct(
        &mut c,
        "not-a-list",
        r#"{"instruction": "a", "output": "b"}"#,
        "expected a JSON list",
    );
    instruct(
        &mut c,
        "too-few-entries",
        r#"[{"instruction": "a", "output": "b"}]"#,
        "too few to split",
    );
    let respond_data = c.write("respond.json", r#"[{"instruction": "a", "output": "b"}]"#);
    c.fails(
        "judge without model_response",
        &[
            "judge",
            "--responses",
            &respond_data,
            "--endpoint",
            "http://127.0.0.1:9",
        ],
        "entry 0: missing string field `model_response`",
    );
    let responded = c.write(
        "responded.json",
        r#"[{"instruction": "a", "output": "b", "model_response": "c"}]"#,
    );
    c.fails(
        "judge endpoint down",
        &[
            "judge",
            "--responses",
            &responded,
            "--endpoint",
            "http://127.0.0.1:9",
            "--retries",
            "1",
        ],
        "127.0.0.1:9",
    );
    // With retries, each failed attempt is reported on stderr, also when it is not a terminal
    // (a hidden progress bar prints nothing), then the one error line.
    let out = ember_in(
        c.dir.path(),
        &[
            "judge",
            "--responses",
            &responded,
            "--endpoint",
            "http://127.0.0.1:9",
            "--retries",
            "2",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        lines.len() == 2
            && lines[0].starts_with("entry 0: attempt 1 failed")
            && lines[1].starts_with("error: entry 0: the judge failed 2 times"),
        "{stderr}"
    );

    // CSV / TSV for classification.
    let classify = |c: &mut Cases, what: &str, csv: &str, extra: &[&str], needle: &str| {
        let file = c.write(&format!("{what}.csv"), csv);
        let out = c.p(&format!("r-{what}"));
        let mut args = vec![
            "finetune",
            "classify",
            "--data",
            &file,
            "--random-init",
            "--model-config",
            &micro,
            "--out",
            &out,
        ];
        args.extend_from_slice(extra);
        c.fails(what, &args, needle);
    };
    classify(
        &mut c,
        "csv-bad-row",
        "Label,Text\n0,fine\n1,one,field too many\n",
        &[],
        "csv-bad-row.csv: line 3",
    );
    classify(
        &mut c,
        "csv-missing-column",
        "Label,Message\n0,a\n1,b\n",
        &[],
        "Text",
    );
    classify(
        &mut c,
        "csv-short-row",
        "Label,Text\n0,a\n1\n",
        &[],
        "line 3",
    );
    std::fs::create_dir_all(c.path("split")).unwrap();
    c.write("split/train.csv", "Label,Text\n0,a\n1,b\n");
    c.write("split/validation.csv", "Label,Text\n0,a\n1,b\n");
    c.write("split/test.csv", "Label,Text\n0,a\n7,b\n");
    c.fails(
        "unknown label in the test split",
        &[
            "finetune",
            "classify",
            "--data",
            &c.p("split"),
            "--random-init",
            "--model-config",
            &micro,
            "--batch-size",
            "2",
            "--out",
            "r-split",
        ],
        "test.csv: line 3: label `7` does not occur in the training split",
    );

    // TOML recipes and model configs.
    let recipe = |c: &mut Cases, what: &str, toml: &str, needle: &str| {
        let file = c.write(&format!("{what}.toml"), toml);
        let out = c.p(&format!("r-{what}"));
        c.fails(
            what,
            &["pretrain", "--recipe", &file, "--out", &out],
            needle,
        );
    };
    let good_recipe = "model = \"gpt-tiny\"\ncorpus = \"the-verdict\"\ntrain_ratio = 0.9\n\
                       start_context = \"a\"\nsample_tokens = 5\n\n[train]\nepochs = 1\n\
                       batch_size = 2\nlr = 1e-3\nweight_decay = 0.1\neval_freq = 5\n\
                       eval_iter = 1\nseed = 1\n";
    recipe(
        &mut c,
        "invalid-toml",
        "model = \"gpt-tiny\n",
        "invalid-toml.toml",
    );
    recipe(
        &mut c,
        "unknown-key",
        &good_recipe.replace("eval_iter = 1", "eval_iter = 1\nlearning_rate = 3"),
        "unknown field `learning_rate`",
    );
    recipe(
        &mut c,
        "mistyped-key",
        &good_recipe.replace("epochs = 1", "epochs = \"ten\""),
        "epochs",
    );
    recipe(
        &mut c,
        "zero-epochs",
        &good_recipe.replace("epochs = 1", "epochs = 0"),
        "epochs must be at least 1",
    );
    let model = |c: &mut Cases, what: &str, toml: &str, needle: &str| {
        let file = c.write(&format!("{what}.toml"), toml);
        let out = c.p(&format!("r-{what}"));
        c.fails(
            what,
            &["pretrain", "--model-config", &file, "--out", &out],
            needle,
        );
    };
    model(
        &mut c,
        "heads-not-dividing",
        &MICRO.replace("n_heads = 2", "n_heads = 3"),
        "n_heads",
    );
    model(
        &mut c,
        "zero-layers",
        &MICRO.replace("n_layers = 1", "n_layers = 0"),
        "n_layers",
    );
    model(
        &mut c,
        "negative-size",
        &MICRO.replace("emb_dim = 8", "emb_dim = -8"),
        "emb_dim",
    );
    model(
        &mut c,
        "zero-context",
        &MICRO.replace("context_length = 16", "context_length = 0"),
        "context_length",
    );
    model(
        &mut c,
        "unknown-model-key",
        &format!("{MICRO}n_embd = 8\n"),
        "unknown field `n_embd`",
    );
    c.fails(
        "unknown built-in model",
        &["pretrain", "--model-config", "gpt5", "--out", "r-gpt5"],
        "gpt5",
    );
    c.fails(
        "stride 0",
        &["pretrain", "--stride", "0", "--out", "r-stride"],
        "stride must be at least 1",
    );
    c.fails(
        "batch size 0",
        &["pretrain", "--batch-size", "0", "--out", "r-batch"],
        "batch_size must be at least 1",
    );
    c.fails(
        "negative learning rate",
        &["pretrain", "--lr=-0.1", "--out", "r-lr"],
        "lr must be positive",
    );
    c.fails(
        "epochs whose schedule would overflow",
        &[
            "pretrain",
            "--epochs",
            "1844674407370955162",
            "--out",
            "r-epochs",
        ],
        "epochs must be at most",
    );
    // A size far beyond memory: refused before anything is allocated or written (the check
    // reads /proc/meminfo).
    #[cfg(target_os = "linux")]
    model(
        &mut c,
        "model-larger-than-memory",
        &MICRO.replace("emb_dim = 8", "emb_dim = 1000000"),
        "more than this machine's",
    );

    // Devices.
    c.fails(
        "unknown device",
        &[
            "--device",
            "tpu",
            "generate",
            "--checkpoint",
            "x",
            "--prompt",
            "a",
        ],
        "unknown device `tpu`",
    );
    // A device set in the environment is named as such.
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .arg("info")
        .current_dir(c.dir.path())
        .env("EMBER_DEVICE", "tpu")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: EMBER_DEVICE: unknown device `tpu`"),
        "{stderr}"
    );
    #[cfg(not(feature = "wgpu"))]
    c.fails(
        "device not compiled in",
        &["--device", "wgpu", "pretrain", "--out", "r-wgpu"],
        "built without",
    );

    // Weights: safetensors and checkpoints.
    let tiny = fixtures().join("tiny-gpt2");
    let hf = |c: &mut Cases, name: &str, safetensors: Vec<u8>, config: Option<String>| {
        let dir = c.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config =
            config.unwrap_or_else(|| std::fs::read_to_string(tiny.join("config.json")).unwrap());
        std::fs::write(dir.join("config.json"), config).unwrap();
        std::fs::write(dir.join("model.safetensors"), safetensors).unwrap();
        c.p(name)
    };
    let weights = std::fs::read(tiny.join("model.safetensors")).unwrap();
    let truncated = hf(
        &mut c,
        "truncated",
        weights[..weights.len() / 2].to_vec(),
        None,
    );
    c.fails(
        "truncated safetensors",
        &["import", "gpt2", "--from", &truncated, "--out", "r-trunc"],
        "model.safetensors",
    );
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(weights[8..8 + header_len].to_vec()).unwrap();
    // Move the first tensor's end offset far past the end of the file (same header length).
    let first_offsets = header.find("\"data_offsets\":[").unwrap() + "\"data_offsets\":[".len();
    let close = first_offsets + header[first_offsets..].find(']').unwrap();
    let offsets = &header[first_offsets..close];
    let start = offsets.split(',').next().unwrap();
    let lying = format!("{start},99999999");
    let mut lying_header = header.clone();
    lying_header.replace_range(first_offsets..close, &lying);
    let mut lying_bytes = (lying_header.len() as u64).to_le_bytes().to_vec();
    lying_bytes.extend_from_slice(lying_header.as_bytes());
    lying_bytes.extend_from_slice(&weights[8 + header_len..]);
    let lying_dir = hf(&mut c, "lying", lying_bytes, None);
    c.fails(
        "safetensors header with offsets beyond the file",
        &["import", "gpt2", "--from", &lying_dir, "--out", "r-lying"],
        "model.safetensors",
    );
    // A NaN as the first value of the first tensor (transformer.h.0.attn.c_attn.bias).
    let mut nan_bytes = weights.clone();
    let first_value = 8 + header_len + start.parse::<usize>().unwrap();
    nan_bytes[first_value..first_value + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan_dir = hf(&mut c, "nan", nan_bytes, None);
    c.fails(
        "NaN in the weights",
        &["import", "gpt2", "--from", &nan_dir, "--out", "r-nan"],
        "transformer.h.0.attn.c_attn.bias holds 1 NaN or infinite value(s)",
    );
    let mut absurd = u64::MAX.to_le_bytes().to_vec();
    absurd.extend_from_slice(&weights[8..]);
    let absurd_dir = hf(&mut c, "absurd", absurd, None);
    c.fails(
        "safetensors header with an absurd size",
        &["import", "gpt2", "--from", &absurd_dir, "--out", "r-absurd"],
        "model.safetensors",
    );
    let config = std::fs::read_to_string(tiny.join("config.json")).unwrap();
    let wide = config.replace("\"n_embd\": 32", "\"n_embd\": 64");
    assert_ne!(wide, config, "the fixture's n_embd is 32");
    let mismatch = hf(&mut c, "mismatch", weights.clone(), Some(wide));
    c.fails(
        "tensor shape mismatch",
        &["import", "gpt2", "--from", &mismatch, "--out", "r-mismatch"],
        "expected",
    );
    let broken_config = hf(
        &mut c,
        "broken-config",
        weights.clone(),
        Some("{\"n_embd\": ".into()),
    );
    c.fails(
        "malformed config.json",
        &[
            "import",
            "gpt2",
            "--from",
            &broken_config,
            "--out",
            "r-config",
        ],
        "config.json",
    );
    let mistyped = hf(
        &mut c,
        "mistyped-config",
        weights.clone(),
        Some(config.replace("\"vocab_size\": 1024", "\"vocab_size\": \"1024\"")),
    );
    c.fails(
        "config.json field of the wrong type",
        &["import", "gpt2", "--from", &mistyped, "--out", "r-mistyped"],
        "config.json: `vocab_size`: invalid type: string \"1024\"",
    );
    c.fails(
        "neither a run nor a HF directory",
        &["generate", "--checkpoint", "adir", "--prompt", "a"],
        "adir",
    );
    c.fails(
        "checkpoint that does not exist",
        &["generate", "--checkpoint", "no-such-run", "--prompt", "a"],
        "no-such-run",
    );

    // An imported run (vocab 1,024: not GPT-2's tokenizer) to break in various ways.
    let out = ember_in(
        c.dir.path(),
        &[
            "import",
            "gpt2",
            "--from",
            tiny.to_str().unwrap(),
            "--out",
            "run",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.fails(
        "wrong vocab size between tokenizer and model",
        &["generate", "--checkpoint", "run", "--prompt", "a"],
        "vocab_size is 1024",
    );
    c.fails(
        "context length exceeded on import",
        &[
            "import",
            "gpt2",
            "--from",
            tiny.to_str().unwrap(),
            "--out",
            "r-ctx",
            "--context-length",
            "5000",
        ],
        "n_positions 64",
    );
    c.fails(
        "import over an existing run",
        &[
            "import",
            "gpt2",
            "--from",
            tiny.to_str().unwrap(),
            "--out",
            "run",
        ],
        "run",
    );
    // A run already in --out: no kind of training replaces it without --overwrite, and with
    // --overwrite, arguments found bad at any point before training starts leave it whole
    // (its files are in each case's before-and-after comparison).
    let labelled = c.write(
        "labelled.csv",
        (0..40).fold(String::from("Label,Text\n"), |csv, i| {
            csv + &format!("{},message number {i}\n", ["ham", "spam"][i % 2])
        }),
    );
    for (what, extra, needle) in [
        (
            "classifier over a GPT run",
            vec!["--random-init", "--model-config", micro.as_str()],
            "already holds a run",
        ),
        (
            "classify --overwrite with a mistyped checkpoint",
            vec!["--checkpoint", "no-such-run", "--overwrite"],
            "no-such-run",
        ),
        (
            "classify --overwrite with too long a --max-length",
            vec![
                "--random-init",
                "--model-config",
                micro.as_str(),
                "--max-length",
                "99",
                "--overwrite",
            ],
            "--max-length 99 exceeds",
        ),
        (
            "BERT classify --overwrite with too long a --max-length",
            vec![
                "--arch",
                "bert",
                "--random-init",
                "--max-length",
                "9999",
                "--overwrite",
            ],
            "--max-length 9999 exceeds",
        ),
        (
            "classify with no batches to evaluate on",
            vec![
                "--random-init",
                "--model-config",
                micro.as_str(),
                "--eval-batches",
                "0",
                "--overwrite",
            ],
            "eval_batches must be at least 1",
        ),
    ] {
        let mut args = vec!["finetune", "classify", "--data", &labelled, "--out", "run"];
        args.extend(extra);
        c.fails(what, &args, needle);
    }
    let seq2seq_config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/seq2seq/dates-transformer.toml"
    );
    for split in ["train", "val", "test"] {
        c.write(
            &format!("pairs/{split}.tsv"),
            "3 March 1998\t1998-03-03\n".repeat(20),
        );
    }
    let pairs = c.p("pairs");
    let seq2seq = |extra: &[&str]| -> Vec<String> {
        [
            "train",
            "seq2seq",
            "--config",
            seq2seq_config,
            "--data",
            &pairs,
            "--out",
            "run",
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    let run_args = |c: &mut Cases, what: &str, args: Vec<String>, needle: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.fails(what, &args, needle);
    };
    run_args(
        &mut c,
        "seq2seq over a GPT run",
        seq2seq(&[]),
        "already holds a run",
    );
    c.fails(
        "pretrain --overwrite with a batch larger than the corpus",
        &[
            "pretrain",
            "--model-config",
            &micro,
            "--batch-size",
            "100000",
            "--out",
            "run",
            "--overwrite",
        ],
        "fewer than one batch of 100000",
    );
    run_args(
        &mut c,
        "seq2seq --overwrite with a batch larger than the data",
        seq2seq(&["--batch-size", "100000", "--overwrite"]),
        "fewer than one batch of 100000",
    );

    let entries = c.write(
        "entries.json",
        format!(
            "[{}]",
            vec![r#"{"instruction": "Say hi.", "output": "Hi."}"#; 40].join(", ")
        ),
    );
    // Instruction fine-tunes: no batches per evaluation, and (below, with the other flags
    // that do not apply) a LoRA flag without --trainable lora.
    let instruct = |c: &mut Cases, what: &str, extra: &[&str], needle: &str| {
        let mut args = vec![
            "finetune",
            "instruct",
            "--data",
            &entries,
            "--random-init",
            "--model-config",
            &micro,
            "--out",
            "run",
            "--overwrite",
        ];
        args.extend_from_slice(extra);
        c.fails(what, &args, needle);
    };
    instruct(
        &mut c,
        "instruct with no batches per evaluation",
        &["--eval-iter", "0"],
        "eval_iter must be at least 1",
    );
    // Flags that do not apply to the run asked for are refused, not silently ignored.
    for (what, extra, needle) in [
        (
            "LoRA flag without --trainable lora",
            vec![
                "--random-init",
                "--model-config",
                micro.as_str(),
                "--lora-rank",
                "4",
            ],
            "--lora-rank needs --trainable lora",
        ),
        (
            "more last blocks than the model has",
            vec![
                "--random-init",
                "--model-config",
                micro.as_str(),
                "--trainable",
                "last-blocks:3",
            ],
            "the model has 1 block(s)",
        ),
        (
            "--pooling for a BERT classifier",
            vec!["--arch", "bert", "--random-init", "--pooling", "last"],
            "--pooling is for GPT classifiers",
        ),
        (
            "--drop-rate for a BERT classifier",
            vec!["--arch", "bert", "--random-init", "--drop-rate", "0.1"],
            "--drop-rate is for GPT classifiers",
        ),
        (
            "--vocab-size for a GPT classifier",
            vec![
                "--random-init",
                "--model-config",
                micro.as_str(),
                "--vocab-size",
                "100",
            ],
            "--vocab-size sizes the WordPiece vocabulary",
        ),
    ] {
        let mut args = vec![
            "finetune",
            "classify",
            "--data",
            &labelled,
            "--out",
            "run",
            "--overwrite",
        ];
        args.extend(extra);
        c.fails(what, &args, needle);
    }
    for split in ["train", "validation", "test"] {
        c.write(
            &format!("split/{split}.csv"),
            "Label,Text\nham,hello\nspam,win\n",
        );
    }
    c.fails(
        "--balance with data split already",
        &[
            "finetune",
            "classify",
            "--data",
            &c.p("split"),
            "--balance",
            "--random-init",
            "--model-config",
            &micro,
            "--out",
            "run",
            "--overwrite",
        ],
        "is split already",
    );
    instruct(
        &mut c,
        "instruct LoRA flag without --trainable lora",
        &["--rslora"],
        "--rslora needs --trainable lora",
    );
    c.fails(
        "--stride for BERT pretraining",
        &[
            "pretrain",
            "--arch",
            "bert",
            "--stride",
            "4",
            "--out",
            "run",
            "--overwrite",
        ],
        "--stride is for GPT runs",
    );
    c.fails(
        "--vocab-size for GPT pretraining",
        &[
            "pretrain",
            "--model-config",
            &micro,
            "--vocab-size",
            "100",
            "--out",
            "run",
            "--overwrite",
        ],
        "are for --arch bert",
    );

    let run_toml = std::fs::read_to_string(c.path("run/run.toml")).unwrap();
    let step = std::fs::read_dir(c.path("run/checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let step_name = step.file_name().unwrap().to_str().unwrap().to_string();
    let bpk = std::fs::read(step.join("model.bpk")).unwrap();
    let broken_run = |c: &mut Cases, name: &str, toml: &str, model: &[u8]| {
        let checkpoint = c.path(name).join("checkpoints").join(&step_name);
        std::fs::create_dir_all(&checkpoint).unwrap();
        std::fs::write(c.path(name).join("run.toml"), toml).unwrap();
        std::fs::write(checkpoint.join("model.bpk"), model).unwrap();
        std::fs::copy(step.join("state.json"), checkpoint.join("state.json")).unwrap();
        c.p(name)
    };
    let corrupt = broken_run(&mut c, "corrupt-run", &run_toml, &bpk[..bpk.len() / 3]);
    c.fails(
        "corrupt checkpoint",
        &[
            "export",
            "gpt2",
            "--checkpoint",
            &corrupt,
            "--out",
            "r-export",
        ],
        "model.bpk",
    );
    let deeper = run_toml.replace("n_layers = 2", "n_layers = 3");
    assert_ne!(deeper, run_toml);
    let other = broken_run(&mut c, "other-arch", &deeper, &bpk);
    c.fails(
        "checkpoint from another architecture",
        &[
            "export",
            "gpt2",
            "--checkpoint",
            &other,
            "--out",
            "r-export2",
        ],
        "model.bpk",
    );
    let bad_toml = broken_run(&mut c, "bad-run-toml", "model = 3\n", &bpk);
    c.fails(
        "malformed run.toml",
        &[
            "export",
            "gpt2",
            "--checkpoint",
            &bad_toml,
            "--out",
            "r-export3",
        ],
        "run.toml",
    );
    std::fs::create_dir_all(c.path("no-checkpoints")).unwrap();
    std::fs::write(c.path("no-checkpoints/run.toml"), &run_toml).unwrap();
    c.fails(
        "run without checkpoints",
        &[
            "export",
            "gpt2",
            "--checkpoint",
            "no-checkpoints",
            "--out",
            "r-export4",
        ],
        "no-checkpoints",
    );
    c.fails(
        "export over an existing model",
        &["export", "gpt2", "--checkpoint", "run", "--out", "mismatch"],
        "mismatch",
    );
    c.fails(
        "classify with a non-classifier run",
        &["classify", "--checkpoint", "run", "text"],
        "run",
    );
    c.fails(
        "lora merge of a run without adapters",
        &["lora", "merge", "--checkpoint", "run", "--out", "r-merge"],
        "run",
    );

    // Outputs that cannot be written.
    let file = c.write("a-file", "x");
    c.fails(
        "output directory under a file",
        &["data", "prepare", "spam", "--out", &format!("{file}/spam")],
        "a-file",
    );
    c.fails(
        "respond over an existing file",
        &[
            "respond",
            "--checkpoint",
            "run",
            "--data",
            &responded,
            "--out",
            &file,
        ],
        "exists",
    );

    // Sampling settings and token ids.
    c.fails(
        "top-p outside (0, 1]",
        &[
            "generate",
            "--checkpoint",
            "run",
            "--prompt",
            "a",
            "--top-p",
            "1.5",
        ],
        "top-p must be in (0, 1], got 1.5",
    );
    c.fails(
        "negative temperature",
        &[
            "generate",
            "--checkpoint",
            "run",
            "--prompt",
            "a",
            "--temperature=-1",
        ],
        "temperature",
    );
    c.fails(
        "token id outside the vocabulary",
        &["tokenize", "--decode", "--text", "60000"],
        "outside the vocabulary",
    );

    // BERT: fill-mask / embed on wrong models, broken vocabularies and tokenizers.
    let bert = fixtures().join("tiny-bert");
    let vocab: Vec<String> = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
        .into_iter()
        .map(String::from)
        .chain((5..512).map(|i| format!("w{i}")))
        .collect();
    for file in ["config.json", "model.safetensors"] {
        c.write(
            &format!("bert/{file}"),
            std::fs::read(bert.join(file)).unwrap(),
        );
        c.write(
            &format!("bert-dup/{file}"),
            std::fs::read(bert.join(file)).unwrap(),
        );
        c.write(
            &format!("bert-json/{file}"),
            std::fs::read(bert.join(file)).unwrap(),
        );
    }
    let bert_dir = c.write("bert/vocab.txt", vocab.join("\n"));
    let bert_dir = bert_dir.trim_end_matches("/vocab.txt").to_string();
    let mut dup = vocab.clone();
    dup[9] = "w7".into();
    c.write("bert-dup/vocab.txt", dup.join("\n"));
    c.write(
        "bert-json/tokenizer.json",
        "{\"version\": \"1.0\", \"model\": 3}",
    );
    let gpt_dir = c.p("gpt-as-bert");
    for file in ["config.json", "model.safetensors"] {
        c.write(
            &format!("gpt-as-bert/{file}"),
            std::fs::read(fixtures().join("tiny-gpt2").join(file)).unwrap(),
        );
    }
    c.fails(
        "import of a BERT as GPT-2",
        &[
            "import",
            "gpt2",
            "--from",
            bert.to_str().unwrap(),
            "--out",
            "r-bert-as-gpt",
        ],
        "model_type is \"bert\", expected \"gpt2\"",
    );
    c.fails(
        "fill-mask on a GPT-2 checkpoint",
        &["fill-mask", "--model", &gpt_dir, "a [MASK]"],
        "model_type is \"gpt2\", expected \"bert\"",
    );
    c.fails(
        "fill-mask text without a mask",
        &["fill-mask", "--model", &bert_dir, "w5 w6"],
        "text 1: no [MASK] token",
    );
    c.fails(
        "fill-mask --pair with two texts",
        &[
            "fill-mask",
            "--model",
            &bert_dir,
            "--pair",
            "w5",
            "[MASK]",
            "[MASK] w6",
        ],
        "--pair goes with exactly one text",
    );
    c.fails(
        "vocab.txt with a token twice",
        &["embed", "--model", &c.p("bert-dup"), "w5"],
        "line 10: token `w7` appears twice",
    );
    c.fails(
        "broken tokenizer.json",
        &["embed", "--model", &c.p("bert-json"), "w5"],
        "tokenizer.json",
    );
    // Side files beside the weights that are there but unusable: an error naming them, not
    // a silent fall-back to the defaults they were meant to replace.
    for (name, side_file, contents, needle) in [
        (
            "bert-case",
            "tokenizer_config.json",
            "{\"do_lower_case\": fals",
            "tokenizer_config.json: not valid JSON",
        ),
        (
            "bert-pool",
            "1_Pooling/config.json",
            "{\"pooling_mode_cls_token\": \"yes\"}",
            "field `pooling_mode_cls_token`",
        ),
    ] {
        for file in ["config.json", "model.safetensors"] {
            c.write(
                &format!("{name}/{file}"),
                std::fs::read(bert.join(file)).unwrap(),
            );
        }
        c.write(&format!("{name}/vocab.txt"), vocab.join("\n"));
        c.write(&format!("{name}/{side_file}"), contents);
        c.fails(
            &format!("malformed {side_file}"),
            &["embed", "--model", &c.p(name), "w5"],
            needle,
        );
    }
    c.fails(
        "embed --max-length beyond the positions",
        &["embed", "--model", &bert_dir, "--max-length", "100", "w5"],
        "--max-length 100",
    );
    c.fails(
        "embed of an empty file",
        &[
            "embed",
            "--model",
            &bert_dir,
            "--file",
            &c.write("empty.txt", "\n\n"),
        ],
        "empty.txt: no text to embed",
    );
    c.fails(
        "tokenizer path that does not exist",
        &[
            "tokenize",
            "--tokenizer",
            &c.p("no-such-tokenizer"),
            "--text",
            "hi",
        ],
        "no-such-tokenizer",
    );

    // BERT pretraining and classification.
    c.fails(
        "pretrain --arch bert with an unknown objective",
        &[
            "pretrain",
            "--arch",
            "bert",
            "--objectives",
            "mlm,sop",
            "--out",
            &c.p("bert-run-1"),
        ],
        "unknown objective `sop`",
    );
    let one_sentence = c.write(
        "one-sentence.txt",
        "Only one sentence here\n\nAnd one there\n",
    );
    c.fails(
        "next-sentence prediction on documents of one sentence",
        &[
            "pretrain",
            "--arch",
            "bert",
            "--corpus",
            &one_sentence,
            "--out",
            &c.p("bert-run-2"),
        ],
        "needs documents of at least two sentences",
    );
    c.fails(
        "pretrain --arch bert longer than the position table",
        &[
            "pretrain",
            "--arch",
            "bert",
            "--context-length",
            "600",
            "--out",
            &c.p("bert-run-3"),
        ],
        "max_length 600 exceeds the model's max_position_embeddings 512",
    );
    c.fails(
        "finetune classify --arch bert with LoRA",
        &[
            "finetune",
            "classify",
            "--arch",
            "bert",
            "--random-init",
            "--trainable",
            "lora",
            "--out",
            &c.p("bert-cls"),
        ],
        "--trainable lora is supported for GPT classifiers",
    );

    // Seq2seq: malformed pairs, missing data, a text too long for the model.
    let recipe = |name: &str, data: &str| {
        c.write(
            name,
            format!(
                "data = \"{data}\"\n[model]\narch = \"transformer\"\nd_model = 8\nn_heads = 2\n\
                 n_encoder_layers = 1\nn_decoder_layers = 1\nff_dim = 8\nmax_len = 16\n\
                 [train]\nepochs = 1\nbatch_size = 2\nlr = 1e-3\nweight_decay = 0.0\n\
                 eval_freq = 0\nseed = 1\n"
            ),
        )
    };
    let bad_recipe = recipe("s2s-bad.toml", &c.p("pairs"));
    let missing_recipe = recipe("s2s-missing.toml", &c.p("no-pairs"));
    let long_recipe = recipe("s2s-long.toml", &c.p("long"));
    let good_recipe = recipe("s2s-good.toml", &c.p("good-pairs"));
    for split in ["train", "val", "test"] {
        c.write(&format!("good-pairs/{split}.tsv"), "a\tb\n");
    }
    c.write("pairs/train.tsv", "a\tb\nno tab\n");
    c.write("pairs/val.tsv", "a\tb\n");
    c.write("pairs/test.tsv", "a\tb\n");
    c.fails(
        "seq2seq pair without a tab",
        &[
            "train",
            "seq2seq",
            "--config",
            &bad_recipe,
            "--out",
            &c.p("s2s-run-1"),
        ],
        "train.tsv: line 2: expected `source<TAB>target`",
    );
    c.fails(
        "seq2seq data directory without files",
        &[
            "train",
            "seq2seq",
            "--config",
            &missing_recipe,
            "--out",
            &c.p("s2s-run-2"),
        ],
        "no-pairs/train.tsv: no such file",
    );
    c.write("long/train.tsv", "ab\tc\n");
    c.write("long/val.tsv", "ab\tc\n");
    c.write("long/test.tsv", "abababababababababab\tc\n");
    c.fails(
        "seq2seq pair longer than max_len",
        &[
            "train",
            "seq2seq",
            "--config",
            &long_recipe,
            "--out",
            &c.p("s2s-run-3"),
        ],
        "test.tsv: pair 1 is 20 tokens long",
    );
    let s2s_model = |c: &mut Cases, what: &str, from: &str, to: &str, needle: &str| {
        let text = std::fs::read_to_string(&good_recipe).unwrap();
        assert!(text.contains(from), "{from}");
        let file = c.write(&format!("{what}.toml"), text.replace(from, to));
        let out = c.p(&format!("r-{what}"));
        c.fails(
            what,
            &["train", "seq2seq", "--config", &file, "--out", &out],
            needle,
        );
    };
    s2s_model(
        &mut c,
        "s2s-mistyped",
        "d_model = 8",
        "d_model = \"x\"",
        "s2s-mistyped.toml: line 2: `[model]`: invalid type: string \"x\", expected usize in `d_model`",
    );
    s2s_model(
        &mut c,
        "s2s-zero-width",
        "d_model = 8",
        "d_model = 0",
        "s2s-zero-width.toml: d_model must be at least 1",
    );
    c.fails(
        "translate with a broken recipe",
        &[
            "train",
            "seq2seq",
            "--config",
            &c.write(
                "s2s-arch.toml",
                "data = \"x\"\n[model]\narch = \"gru\"\n[train]\n",
            ),
        ],
        "s2s-arch.toml",
    );

    // Datasets: unknown names and checksum mismatches in the mirror.
    c.fails(
        "unknown dataset",
        &["data", "fetch", "nope"],
        "unknown dataset `nope`",
    );
    let mirror = c.path("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    std::fs::write(mirror.join("the-verdict.txt"), "not the verdict").unwrap();
    let before = snapshot(c.dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["data", "fetch", "the-verdict"])
        .current_dir(c.dir.path())
        .env("EMBER_HOME", c.path("fresh-home"))
        .env("EMBER_DATA_MIRROR", &mirror)
        .env("EMBER_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("sha256") || stderr.contains("checksum"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(snapshot(c.dir.path()).len(), before.len(), "{stderr}");
    c.count += 1;

    eprintln!("{} bad-input cases covered", c.count);
    assert!(c.count >= 40, "{} cases", c.count);
}
