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
}

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
    }
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
