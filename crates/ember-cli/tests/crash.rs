//! kill -9 at random moments of a training run, including during checkpoint writes: the last
//! completed checkpoint always loads, and resuming from it gives bit-identical losses to an
//! uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ember(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.current_dir(dir)
        .env_remove("EMBER_DEVICE")
        .env("EMBER_HOME", dir.join("ember-home"));
    if std::env::var_os("EMBER_DATA_MIRROR").is_none() {
        let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets");
        if shared.is_dir() {
            cmd.env("EMBER_DATA_MIRROR", shared);
        }
    }
    cmd
}

/// Runs `command`, sends it SIGINT (Ctrl-C) once `run_dir/metrics.jsonl` has a line, and
/// returns its stderr after checking the exit status of an interruption, 130.
fn interrupt_after_first_metrics(command: &mut Command, run_dir: &Path) -> String {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(true, |t| t.is_empty()) {
        assert!(Instant::now() < deadline, "no metrics after 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    stderr
}

/// A tiny model on the-verdict with a checkpoint after every step, so that kills often land
/// inside a checkpoint write.
const RECIPE: &str = r#"
model = "micro.toml"
corpus = "the-verdict"
train_ratio = 0.9
context_length = 16
start_context = "Every effort"
sample_tokens = 3

[train]
epochs = 1
batch_size = 8
lr = 1e-3
weight_decay = 0.1
grad_clip = 1.0
eval_freq = 4
eval_iter = 2
seed = 7
checkpoint_every = 1
keep_checkpoints = 2
"#;

const MICRO: &str = "vocab_size = 50257\ncontext_length = 16\nemb_dim = 8\nn_heads = 2\n\
                     n_layers = 1\ndrop_rate = 0.1\nqkv_bias = false\ntie_weights = true\n\
                     emb_init_std = 0.02\n";

/// (step, train_loss, val_loss) of every evaluation in `metrics.jsonl`.
fn losses(run: &Path) -> Vec<(u64, String, String)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["train_loss"].to_string(),
                v["val_loss"].to_string(),
            )
        })
        .collect()
}

/// SplitMix64, for kill times that differ per trial but not per run of the test.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn kill_9_never_loses_the_last_checkpoint_and_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("micro.toml"), MICRO).unwrap();
    std::fs::write(dir.path().join("recipe.toml"), RECIPE).unwrap();

    // The uninterrupted reference run, timed to spread the kills over it.
    let started = Instant::now();
    let out = ember(dir.path())
        .args(["pretrain", "--recipe", "recipe.toml", "--out", "reference"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duration = started.elapsed();
    let reference = losses(&dir.path().join("reference"));
    assert!(reference.len() >= 5, "{reference:?}");

    let trials = 20;
    let mut rng = 2026;
    let mut killed_mid_run = 0;
    let mut killed_mid_write = 0;
    for trial in 0..trials {
        let run = format!("trial-{trial}");
        let run_dir = dir.path().join(&run);
        // Kill somewhere in the first 90% of a run (process start included).
        let delay = duration.mul_f64((next(&mut rng) % 900) as f64 / 1000.0);
        let mut child = ember(dir.path())
            .args(["pretrain", "--recipe", "recipe.toml", "--out", &run])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if trial % 2 == 0 {
            std::thread::sleep(delay);
        } else {
            // Odd trials aim at a checkpoint write: kill as soon as a temporary checkpoint
            // directory appears after the random delay (or at the end of the run).
            let start = Instant::now();
            let checkpoints = run_dir.join("checkpoints");
            loop {
                let writing = start.elapsed() >= delay
                    && std::fs::read_dir(&checkpoints).is_ok_and(|entries| {
                        entries
                            .flatten()
                            .any(|e| e.file_name().to_string_lossy().contains(".tmp"))
                    });
                if writing || child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        // SIGKILL: no chance to clean up.
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            continue; // finished before the kill
        }
        killed_mid_run += 1;
        if !run_dir.join("run.toml").exists() {
            continue; // killed before the run directory existed
        }
        // A temporary checkpoint directory left behind means the kill hit a checkpoint write.
        let mid_write = std::fs::read_dir(run_dir.join("checkpoints"))
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".tmp"))
            })
            .unwrap_or(false);
        killed_mid_write += usize::from(mid_write);
        // Resume: from the last complete checkpoint, or from scratch if none was written yet.
        let has_checkpoint = std::fs::read_dir(run_dir.join("checkpoints"))
            .map(|entries| {
                entries.flatten().any(|e| {
                    e.path().join("model.bpk").is_file() && e.path().join("state.json").is_file()
                })
            })
            .unwrap_or(false);
        let out = if has_checkpoint {
            ember(dir.path())
                .args(["pretrain", "--resume", &run])
                .output()
                .unwrap()
        } else {
            ember(dir.path())
                .args([
                    "pretrain",
                    "--recipe",
                    "recipe.toml",
                    "--out",
                    &run,
                    "--overwrite",
                ])
                .output()
                .unwrap()
        };
        assert!(
            out.status.success(),
            "trial {trial} (killed after {delay:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            losses(&run_dir),
            reference,
            "trial {trial} (killed after {delay:?}) resumed to different losses"
        );
    }
    eprintln!(
        "{killed_mid_run} of {trials} runs killed mid-run ({killed_mid_write} during a checkpoint write); all resumed bit-identically"
    );
    assert!(
        killed_mid_run >= trials / 2,
        "{killed_mid_run} kills landed"
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_exits_130_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("micro.toml"), MICRO).unwrap();
    std::fs::write(dir.path().join("recipe.toml"), RECIPE).unwrap();
    let out = ember(dir.path())
        .args(["pretrain", "--recipe", "recipe.toml", "--out", "reference"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = losses(&dir.path().join("reference"));

    let run_dir = dir.path().join("interrupted");
    // Interrupted once the first evaluation (step 4) is on disk.
    let stderr = interrupt_after_first_metrics(
        ember(dir.path()).args([
            "pretrain",
            "--recipe",
            "recipe.toml",
            "--out",
            "interrupted",
        ]),
        &run_dir,
    );
    assert!(stderr.contains("interrupted after step"), "{stderr}");
    assert!(
        stderr.contains("continue with `ember pretrain --resume interrupted`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let step: usize = stderr
        .split("interrupted after step ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        run_dir
            .join("checkpoints")
            .join(format!("step-{step:08}"))
            .join("model.bpk")
            .is_file(),
        "no checkpoint of step {step}"
    );
    let out = ember(dir.path())
        .args(["pretrain", "--resume", "interrupted"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(losses(&run_dir), reference);
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("micro.toml"), MICRO).unwrap();
    // No clipping and an absurd learning rate: the loss is NaN at step 2.
    std::fs::write(
        dir.path().join("recipe.toml"),
        RECIPE.replace("grad_clip = 1.0\n", ""),
    )
    .unwrap();
    let out = ember(dir.path())
        .args([
            "pretrain",
            "--recipe",
            "recipe.toml",
            "--lr",
            "1e30",
            "--out",
            "run",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let error = stderr.lines().last().unwrap();
    assert!(
        error.starts_with("error: step 2: loss is NaN — training diverged"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Step 1's checkpoint is intact and usable.
    assert_generates(dir.path());
}

/// `ember generate` from the run in `dir/run` succeeds: its latest checkpoint is complete.
fn assert_generates(dir: &Path) {
    let out = ember(dir)
        .args([
            "generate",
            "--checkpoint",
            "run",
            "--prompt",
            "Every",
            "--max-new-tokens",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ember args` with files limited to `max_bytes` each (RLIMIT_FSIZE, with SIGXFSZ
/// ignored so writes fail with EFBIG): a full disk, as far as the checkpoint writer sees.
fn ember_with_file_limit(dir: &Path, args: &[&str], max_bytes: u64) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = ember(dir);
    cmd.args(args);
    // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: max_bytes,
                rlim_max: max_bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn a_full_disk_during_a_checkpoint_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("micro.toml"), MICRO).unwrap();
    std::fs::write(dir.path().join("recipe.toml"), RECIPE).unwrap();
    let out = ember(dir.path())
        .args(["pretrain", "--recipe", "recipe.toml", "--out", "run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checkpoints = dir.path().join("run/checkpoints");
    let before: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let model_bytes = std::fs::read(checkpoints.join("step-00000036/model.bpk")).unwrap();
    let latest = std::fs::read(checkpoints.join("latest")).unwrap();

    // Another epoch with room for the model file but not the optimizer state (twice as big).
    let limit = model_bytes.len() as u64 + 4096;
    let out = ember_with_file_limit(
        dir.path(),
        &["pretrain", "--resume", "run", "--epochs", "2"],
        limit,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let error = stderr.lines().last().unwrap();
    assert!(
        error.starts_with("error: ") && error.contains("optim.bpk"),
        "{stderr}"
    );
    assert!(error.contains("File too large"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // No temporary directory left behind, the old checkpoints intact and still the latest.
    let after: Vec<_> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after);
    assert_eq!(std::fs::read(checkpoints.join("latest")).unwrap(), latest);
    assert_eq!(
        std::fs::read(checkpoints.join("step-00000036/model.bpk")).unwrap(),
        model_bytes
    );
    assert_generates(dir.path());
}

/// Ctrl-C during a classifier fine-tune saves a checkpoint of that step, and `--resume`
/// continues it to the same metrics and the same model as a run never interrupted (mid-epoch:
/// the epoch's remaining batches and dropout masks are the uninterrupted run's).
#[test]
fn ctrl_c_of_a_classifier_fine_tune_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("micro.toml"), MICRO).unwrap();
    let words = [
        "free", "prize", "call", "now", "see", "you", "later", "lunch",
    ];
    let csv = (0..400).fold(String::from("Label,Text\n"), |csv, i| {
        let label = ["ham", "spam"][i % 2];
        let text: Vec<&str> = (0..6)
            .map(|j| words[(i * 7 + j * (i % 2 + 1)) % 8])
            .collect();
        csv + &format!("{label},{} {i}\n", text.join(" "))
    });
    std::fs::write(dir.path().join("labelled.csv"), csv).unwrap();
    let finetune = |out: &str| {
        let mut cmd = ember(dir.path());
        cmd.args([
            "finetune",
            "classify",
            "--data",
            "labelled.csv",
            "--random-init",
            "--model-config",
            "micro.toml",
            "--max-length",
            "16",
            "--batch-size",
            "4",
            "--epochs",
            "30",
            "--lr",
            "1e-3",
            // An evaluation after every step: whichever step the interruption lands on, its
            // evaluation must be in the metrics exactly once.
            "--eval-freq",
            "1",
            "--eval-iter",
            "1",
            "--out",
            out,
        ]);
        cmd
    };
    let out = finetune("reference").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every metrics field but the wall-clock seconds.
    let metrics = |run: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(dir.path().join(run).join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|line| {
                let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect()
    };
    let reference = metrics("reference");

    let run_dir = dir.path().join("interrupted");
    let stderr = interrupt_after_first_metrics(&mut finetune("interrupted"), &run_dir);
    assert!(
        stderr.contains("continue with `ember finetune classify --resume interrupted`"),
        "{stderr}"
    );
    assert!(metrics("interrupted").len() < reference.len());
    let out = ember(dir.path())
        .args(["finetune", "classify", "--resume", "interrupted"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming interrupted from step"),
        "{stderr}"
    );
    assert_eq!(metrics("interrupted"), reference);
    let classify = |run: &str| {
        let out = ember(dir.path())
            .args([
                "classify",
                "--checkpoint",
                run,
                "free prize now",
                "see you later",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(classify("interrupted"), classify("reference"));
    assert!(classify("reference").contains('\t'));
}
