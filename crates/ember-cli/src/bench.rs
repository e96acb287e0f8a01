//! `ember bench …`: throughput figures printed next to a reference measured in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ember_data::datasets::DataCache;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// GPT-2 BPE encode throughput (MB/s, one thread) on the-verdict and the SMS corpus,
    /// next to Python tiktoken's when it is available.
    Tokenizer(TokenizerBenchArgs),
    /// Greedy decoding tokens/s with and without the key/value cache, on random weights of a
    /// model config (default gpt2-small), and the speed-up.
    Generate(GenerateBenchArgs),
    /// Tokens/s of a full training step (forward, backward, AdamW, global-norm clipping) for
    /// gpt-tiny (context 256, batch 8) and gpt2-small (context 256, batch 2 and 8), achieved
    /// GFLOP/s against a matmul probe, peak memory, next to PyTorch eager when available.
    Train(TrainBenchArgs),
}

#[derive(Args)]
pub struct TrainBenchArgs {
    /// Timed steps per case (after one untimed warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Python with torch for the reference [default: $EMBER_PYTHON, else
    /// scripts/.venv-hf/bin/python, created by scripts/setup_hf_venv.sh].
    #[arg(long)]
    python: Option<PathBuf>,
    /// Write the table as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only case N (0-based) and print its JSON line (the bench runs each case in its own
    /// process, so each peak memory is its own).
    #[arg(long, hide = true)]
    only: Option<usize>,
}

/// (name, model config, context, batch) of the train bench.
const TRAIN_CASES: [(&str, &str, usize, usize); 3] = [
    ("gpt-tiny ctx256 b8", "gpt-tiny", 256, 8),
    ("gpt2-small ctx256 b2", "gpt2-small", 256, 2),
    ("gpt2-small ctx256 b8", "gpt2-small", 256, 8),
];

#[derive(Args)]
pub struct GenerateBenchArgs {
    /// Model config: a built-in name or a TOML file.
    #[arg(long, default_value = "gpt2-small")]
    model: String,
    /// Tokens to generate per run.
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 4)]
    prompt_tokens: usize,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Args)]
pub struct TokenizerBenchArgs {
    /// Minimum measuring time per case, in seconds (the best repetition counts).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Python with tiktoken for the reference [default: $EMBER_PYTHON, else scripts/.venv/bin/python].
    #[arg(long)]
    python: Option<PathBuf>,
    /// The reference script.
    #[arg(long, default_value = "scripts/bench_tiktoken.py")]
    script: PathBuf,
}

/// One benchmark case: texts encoded one after the other.
struct Case {
    name: &'static str,
    texts: Vec<String>,
}

/// Best wall time of `work` over repetitions that last at least `min_total` together.
fn best_time(min_total: Duration, mut work: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    let started = Instant::now();
    let mut reps = 0;
    while reps < 3 || started.elapsed() < min_total {
        let t = Instant::now();
        work();
        best = best.min(t.elapsed());
        reps += 1;
    }
    best
}

pub fn run(cmd: BenchCommand, device_spec: &str) -> Result<()> {
    match cmd {
        BenchCommand::Tokenizer(args) => tokenizer_bench(args),
        BenchCommand::Generate(args) => generate_bench(args, device_spec),
        BenchCommand::Train(args) => train_bench(args, device_spec),
    }
}

/// Peak resident memory of this process (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One case in this process: tokens/s of `steps` training steps after a warm-up.
fn train_case(case: usize, steps: usize, device_spec: &str) -> Result<serde_json::Value> {
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use ember_model::loss::lm_loss;

    let (name, model_name, context, batch) = TRAIN_CASES[case];
    let device = crate::device::parse_device(device_spec)?.autodiff();
    let mut config = crate::models::load_gpt_config(model_name, None)?;
    config.context_length = context;
    config.drop_rate = 0.0;
    device.seed(0);
    let mut model = config.init(&device);
    let options = ember_train::lm::TrainOptions {
        epochs: 1,
        batch_size: batch,
        lr: 1e-4,
        initial_lr: 1e-4,
        min_lr: None,
        warmup_steps: 0,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        grad_clip: Some(1.0),
        eval_freq: 0,
        eval_iter: None,
        seed: 0,
        checkpoint_every: 0,
        keep_checkpoints: 1,
    };
    let mut optim = options.optimizer();
    let mut rng = ember_data::rng::SplitMix64::new(1);
    let ids: Vec<i64> = (0..batch * (context + 1))
        .map(|_| rng.below(config.vocab_size as u64) as i64)
        .collect();
    let all = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, context + 1]), &device);
    let inputs = all.clone().narrow(1, 0, context);
    let targets = all.narrow(1, 1, context);
    let mut step = || {
        let loss = lm_loss(model.forward(inputs.clone()), targets.clone());
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        ember_train::clip::clip_global_norm(&model, &mut grads, 1.0);
        model = optim.step(1e-4, model.clone(), grads);
    };
    step();
    let started = Instant::now();
    for _ in 0..steps {
        step();
    }
    // The last step's work is queued on lazy backends: read a value to finish it.
    let _ = model
        .forward(inputs.clone().narrow(0, 0, 1))
        .sum()
        .into_scalar::<f32>();
    let seconds = started.elapsed().as_secs_f64();
    let tokens_per_s = (batch * context * steps) as f64 / seconds;
    // 6 FLOPs per parameter per token (forward + backward), plus the attention matmuls
    // (QKᵀ and AV: 12 · layers · emb · context per token), as the issue counts them.
    let flops_per_token = 6.0 * config.num_params() as f64
        + 12.0 * (config.n_layers * config.emb_dim * context) as f64;
    Ok(serde_json::json!({
        "case": name,
        "params": config.num_params(),
        "tokens_per_s": tokens_per_s,
        "gflops": tokens_per_s * flops_per_token / 1e9,
        "peak_rss_mb": peak_rss_mb(),
        "emb": config.emb_dim, "layers": config.n_layers, "heads": config.n_heads,
        "vocab": config.vocab_size, "context": context, "batch": batch,
        "qkv_bias": config.qkv_bias, "tie": config.tie_weights,
    }))
}

/// GFLOP/s of a 2048² × 2048² matmul on the device (best of 3), the machine's practical peak.
fn sgemm_probe(device_spec: &str) -> Result<f64> {
    use burn::prelude::*;
    let device = crate::device::parse_device(device_spec)?;
    let n = 2048;
    let a = Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, &device);
    let b = Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, &device);
    let _ = a.clone().matmul(b.clone()).sum().into_scalar::<f32>();
    let best = best_time(Duration::from_secs(1), || {
        let _ = a.clone().matmul(b.clone()).sum().into_scalar::<f32>();
    });
    Ok(2.0 * (n as f64).powi(3) / best.as_secs_f64() / 1e9)
}

fn train_bench(args: TrainBenchArgs, device_spec: &str) -> Result<()> {
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
    if let Some(case) = args.only {
        anyhow::ensure!(case < TRAIN_CASES.len(), "no case {case}");
        println!("{}", train_case(case, args.steps, device_spec)?);
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peak = sgemm_probe(device_spec)?;
    println!("device {device_spec}, {threads} threads; SGEMM 2048² probe: {peak:.1} GFLOP/s");
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var_os("EMBER_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("scripts/.venv-hf/bin/python"));
    let script = PathBuf::from("scripts/bench_train_torch.py");
    let reference = python.exists() && script.exists();
    if !reference {
        println!(
            "(no PyTorch reference: run `bash scripts/setup_hf_venv.sh` from the repository root, or set EMBER_PYTHON to a Python with torch)"
        );
    }
    println!(
        "{:<22} {:>10} {:>8} {:>9} {:>10} {:>8} {:>7} {:>10}",
        "case", "tokens/s", "GFLOP/s", "of SGEMM", "torch t/s", "ratio", "MB", "torch MB"
    );
    let exe = std::env::current_exe().context("locating the ember binary")?;
    let mut rows = Vec::new();
    for (case, (name, ..)) in TRAIN_CASES.iter().enumerate() {
        let output = Command::new(&exe)
            .args(["--device", device_spec, "bench", "train", "--steps"])
            .arg(args.steps.to_string())
            .args(["--only", &case.to_string()])
            .output()
            .context("running a bench case")?;
        anyhow::ensure!(
            output.status.success(),
            "case {name}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let mut row: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("reading a bench case's JSON")?;
        let torch = if reference {
            let f = |k: &str| row[k].to_string();
            let mut cmd = Command::new(&python);
            cmd.arg(&script);
            for key in ["emb", "layers", "heads", "vocab", "context", "batch"] {
                cmd.arg(format!("--{key}")).arg(f(key));
            }
            cmd.args([
                "--steps",
                &args.steps.to_string(),
                "--threads",
                &threads.to_string(),
            ]);
            if row["qkv_bias"].as_bool() == Some(true) {
                cmd.arg("--qkv-bias");
            }
            if row["tie"].as_bool() == Some(true) {
                cmd.arg("--tie");
            }
            let out = cmd.output().context("running the PyTorch reference")?;
            anyhow::ensure!(
                out.status.success(),
                "PyTorch reference: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            Some(serde_json::from_slice::<serde_json::Value>(&out.stdout)?)
        } else {
            None
        };
        let ours = row["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let gflops = row["gflops"].as_f64().unwrap_or(f64::NAN);
        let (torch_rate, torch_mb) = torch.as_ref().map_or((f64::NAN, f64::NAN), |t| {
            (
                t["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                t["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            )
        });
        println!(
            "{:<22} {:>10.1} {:>8.1} {:>8.0}% {:>10.1} {:>7.2}× {:>7.0} {:>10.0}",
            name,
            ours,
            gflops,
            100.0 * gflops / peak,
            torch_rate,
            ours / torch_rate,
            row["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            torch_mb
        );
        row["sgemm_gflops"] = serde_json::json!(peak);
        row["torch"] = torch.unwrap_or(serde_json::Value::Null);
        rows.push(row);
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "train": rows }))? + "\n";
        ember_data::write_atomically(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn generate_bench(args: GenerateBenchArgs, device_spec: &str) -> Result<()> {
    use burn::prelude::*;
    use ember_model::generate::{GenerateOptions, generate};
    use ember_model::sampling::SamplingConfig;

    let device = crate::device::parse_device(device_spec)?;
    let config = crate::models::load_gpt_config(&args.model, None)?;
    anyhow::ensure!(
        args.prompt_tokens >= 1 && args.prompt_tokens + args.new_tokens <= config.context_length,
        "prompt + new tokens ({} + {}) must fit the context length {} (and the prompt be non-empty)",
        args.prompt_tokens,
        args.new_tokens,
        config.context_length
    );
    device.seed(args.seed);
    let model = config.init(&device);
    // Parameters are initialised lazily: a first forward pass materialises them untimed.
    let _ = model
        .forward(Tensor::<2, Int>::zeros([1, 1], &device))
        .into_data();
    let mut rng = ember_data::rng::SplitMix64::new(args.seed);
    let prompts: Vec<Vec<u32>> = (0..args.batch)
        .map(|_| {
            (0..args.prompt_tokens)
                .map(|_| rng.below(config.vocab_size as u64) as u32)
                .collect()
        })
        .collect();
    println!(
        "{}: {} parameters, {} prompt(s) of {} tokens, {} new tokens each, greedy, device {device_spec}",
        args.model,
        config.num_params(),
        args.batch,
        args.prompt_tokens,
        args.new_tokens
    );
    let timed = |use_cache: bool| -> Result<(Vec<Vec<u32>>, f64)> {
        let options = GenerateOptions {
            max_new_tokens: args.new_tokens,
            sampling: SamplingConfig::default(),
            eos_id: None,
            seed: 0,
            use_cache,
        };
        let bar = crate::progress::count_bar(
            (args.new_tokens * args.batch) as u64,
            if use_cache {
                "with cache"
            } else {
                "without cache"
            },
        );
        let started = Instant::now();
        let out =
            generate(&model, &prompts, &options, |_, _| bar.inc(1)).map_err(anyhow::Error::msg)?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let tokens: Vec<Vec<u32>> = out.into_iter().map(|g| g.tokens).collect();
        let rate = (args.new_tokens * args.batch) as f64 / seconds;
        println!(
            "{:>14}: {rate:8.1} tokens/s ({seconds:.1} s)",
            if use_cache { "KV cache" } else { "no cache" }
        );
        Ok((tokens, rate))
    };
    let (cached_tokens, cached) = timed(true)?;
    let (plain_tokens, plain) = timed(false)?;
    println!(
        "speed-up: {:.1}× (same tokens: {})",
        cached / plain,
        if cached_tokens == plain_tokens {
            "yes"
        } else {
            "NO"
        }
    );
    Ok(())
}

fn tokenizer_bench(args: TokenizerBenchArgs) -> Result<()> {
    let tokenizer = crate::data::gpt2_tokenizer()?;
    let cache = DataCache::from_env();
    let verdict = ember_data::read_text_file(&cache.file("the-verdict", "the-verdict.txt")?)?;
    let sms_path = cache.file("sms-spam", "sms_spam/SMSSpamCollection")?;
    let sms = ember_data::read_text_file(&sms_path)?;
    let messages: Vec<String> = sms
        .lines()
        .map(|line| {
            line.split_once('\t')
                .map_or(line, |(_, text)| text)
                .to_string()
        })
        .collect();
    let cases = [
        Case {
            name: "the-verdict",
            texts: vec![verdict],
        },
        Case {
            name: "sms-messages",
            texts: messages.clone(),
        },
        Case {
            name: "sms-joined",
            texts: vec![messages.join("\n")],
        },
    ];

    let reference = tiktoken_reference(&args, &cache);
    println!(
        "GPT-2 BPE encode, one thread, best of ≥{:.1} s per case",
        args.seconds
    );
    println!(
        "{:<14} {:>9} {:>8} {:>11} {:>13} {:>8}",
        "corpus", "bytes", "tokens", "ember MB/s", "tiktoken MB/s", "ratio"
    );
    for case in &cases {
        let bytes: usize = case.texts.iter().map(String::len).sum();
        let tokens: usize = case.texts.iter().map(|t| tokenizer.encode(t).len()).sum();
        let time = best_time(Duration::from_secs_f64(args.seconds), || {
            for text in &case.texts {
                std::hint::black_box(tokenizer.encode(text));
            }
        });
        let ours = bytes as f64 / 1e6 / time.as_secs_f64();
        let theirs = match &reference {
            Ok(results) => results
                .iter()
                .find(|r| r["corpus"] == case.name)
                .and_then(|r| r["mb_per_s"].as_f64()),
            Err(_) => None,
        };
        let (theirs_text, ratio_text) = match theirs {
            Some(t) => (format!("{t:.2}"), format!("{:.2}×", ours / t)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<14} {bytes:>9} {tokens:>8} {ours:>11.2} {theirs_text:>13} {ratio_text:>8}",
            case.name
        );
    }
    if let Err(why) = reference {
        println!("tiktoken reference not measured: {why:#}");
        println!(
            "  to enable it, run scripts/setup_venv.sh (makes scripts/.venv with tiktoken) from the repo root"
        );
    }
    Ok(())
}

/// Runs the tiktoken script and returns its `results` array.
fn tiktoken_reference(
    args: &TokenizerBenchArgs,
    cache: &DataCache,
) -> Result<Vec<serde_json::Value>> {
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var_os("EMBER_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("scripts/.venv/bin/python"));
    anyhow::ensure!(python.exists(), "no Python at {}", python.display());
    anyhow::ensure!(
        args.script.exists(),
        "no script at {}",
        args.script.display()
    );
    let output = Command::new(&python)
        .arg(&args.script)
        .arg("--data")
        .arg(cache.root())
        .arg("--seconds")
        .arg(args.seconds.to_string())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed: {}",
        args.script.display(),
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or("")
    );
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the reference's JSON output")?;
    json["results"]
        .as_array()
        .cloned()
        .context("the reference printed no `results` array")
}
