//! `ember bench …`: throughput figures printed next to a reference measured in the same run,
//! with the ratio and the target ratio of issue 10, and written as JSON.
//!
//! References are Python scripts in `scripts/` run with the environment that
//! `scripts/setup-bench.sh` creates; without it each bench prints ember's figures alone and says
//! how to enable them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ember_data::datasets::DataCache;
use serde_json::{Value, json};

use crate::device::is_gpu_spec;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Every bench below, one after the other, and one JSON file with all of them.
    All(AllBenchArgs),
    /// GPT-2 BPE encode throughput (MB/s, one thread) on the-verdict and the SMS corpus, next to
    /// tiktoken's and HF tokenizers'.
    #[command(alias = "tokenizer")]
    Tokenize(TokenizeBenchArgs),
    /// Greedy decoding tokens/s (random weights, default gpt2-small, 16-token prompt, 256 new
    /// tokens) with and without the key/value cache, next to transformers' `generate`.
    Generate(GenerateBenchArgs),
    /// Tokens/s of a full training step (forward, backward, AdamW, global-norm clipping) for
    /// gpt-tiny (context 256, batch 8) and gpt2-small (context 256, batch 2 and 8), or the
    /// `--case`s given, achieved GFLOP/s against a matmul probe, peak memory, next to PyTorch
    /// eager (and `torch.compile` with `--torch-compile`).
    Train(TrainBenchArgs),
}

/// Where the references come from and where the table goes.
#[derive(Args, Clone)]
pub struct ReferenceArgs {
    /// Python of the reference environment: a path, or a name looked up on PATH such as `python3`
    /// [default: $EMBER_PYTHON, else scripts/.venv-hf/bin/python, which
    /// `bash scripts/setup-bench.sh` creates]. With
    /// `--device wgpu` or `cuda` the train and generate references run on PyTorch's CUDA device.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Measure ember alone, even when the reference environment exists.
    #[arg(long)]
    no_reference: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
pub struct AllBenchArgs {
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Timed training steps per train case.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Skip ember's generation without the cache (about 100 s for gpt2-small on 2 cores).
    #[arg(long)]
    skip_no_cache: bool,
    /// Rounds of ember and the reference in the generate and train benches, alternating which
    /// goes first; their tables show the medians (the JSON keeps every round). On a machine
    /// whose speed drifts (shared cores, thermal limits) 3 or 5 give steadier ratios than 1.
    /// Tokenize already reports the best of repeated runs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

#[derive(Args)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Timed steps per case (after one untimed warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Rounds of ember and the reference, alternating which goes first; the tables show the
    /// medians (the JSON keeps every round). On a machine whose speed drifts (shared cores,
    /// thermal limits) 3 or 5 give steadier ratios than 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// A case to run instead of the default three: a model config (built-in name or TOML
    /// file), its context length and batch size, e.g. `gpt2-small:1024:8`. Repeatable.
    #[arg(long = "case", value_name = "MODEL:CONTEXT:BATCH")]
    cases: Vec<TrainCase>,
    /// Also time the reference under `torch.compile` (compiling takes a minute or more).
    #[arg(long)]
    torch_compile: bool,
    /// Dropout probability on both sides (embeddings, attention weights, residual branches, as
    /// the book's model), replacing each config's drop_rate. 0 by default: the step's own
    /// work, without sampling masks.
    #[arg(long, default_value_t = 0.0, value_parser = parse_drop_rate)]
    drop_rate: f64,
    /// Run only this case and print its JSON line (the bench runs each case in its own
    /// process, so each peak memory is its own).
    #[arg(long, hide = true, value_name = "MODEL:CONTEXT:BATCH")]
    only: Option<TrainCase>,
}

/// One train bench case: a model config (a built-in name or a TOML file), context and batch.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainCase {
    model: String,
    context: usize,
    batch: usize,
}

/// The train bench's cases when none is given: issue 10's CPU cases.
const DEFAULT_TRAIN_CASES: [&str; 3] = ["gpt-tiny:256:8", "gpt2-small:256:2", "gpt2-small:256:8"];

impl TrainCase {
    fn defaults() -> Vec<TrainCase> {
        DEFAULT_TRAIN_CASES
            .iter()
            .map(|spec| spec.parse().expect("built-in train case"))
            .collect()
    }

    fn name(&self) -> String {
        format!("{} ctx{} b{}", self.model, self.context, self.batch)
    }

    fn spec(&self) -> String {
        format!("{}:{}:{}", self.model, self.context, self.batch)
    }

    /// Issue 10's target ratio: ≥ PyTorch's tokens/s on a GPU; on the CPU 1.2× for the GPT-2
    /// sizes, 1.5× for the small config (per-op overhead dominates it); none for other models.
    fn target(&self, on_gpu: bool) -> Option<f64> {
        if on_gpu {
            Some(TARGET_GPU)
        } else if self.model.starts_with("gpt2-") {
            Some(TARGET_TRAIN_GPT2)
        } else if self.model == "gpt-tiny" {
            Some(TARGET_TRAIN_SMALL)
        } else {
            None
        }
    }
}

impl std::str::FromStr for TrainCase {
    type Err = String;

    /// `MODEL:CONTEXT:BATCH`; the model may itself hold colons (a path), the last two fields
    /// are numbers of at least 1.
    fn from_str(spec: &str) -> Result<Self, String> {
        let mut fields = spec.rsplitn(3, ':');
        let (Some(batch), Some(context), Some(model)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!(
                "`{spec}`: expected MODEL:CONTEXT:BATCH, e.g. gpt2-small:1024:8"
            ));
        };
        let number = |field: &str, what: &str| match field.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "`{spec}`: {what} `{field}` is not a whole number of at least 1"
            )),
        };
        if model.is_empty() {
            return Err(format!("`{spec}`: the model name is empty"));
        }
        Ok(TrainCase {
            model: model.to_string(),
            context: number(context, "context")?,
            batch: number(batch, "batch")?,
        })
    }
}

/// The `--device` the reference scripts run on beside ember's `device_spec`: PyTorch's CUDA
/// device beside a GPU backend (where the CPU-only GEMV probe is skipped too).
fn reference_device(device_spec: &str) -> &'static str {
    if is_gpu_spec(device_spec) {
        "cuda"
    } else {
        "cpu"
    }
}

/// Issue 10's target ratios (ember ÷ reference).
const TARGET_TRAIN_SMALL: f64 = 1.5;
const TARGET_TRAIN_GPT2: f64 = 1.2;
/// On a GPU: at least PyTorch's own tokens/s, training and generating.
const TARGET_GPU: f64 = 1.0;
const TARGET_GENERATE: f64 = 2.0;
const TARGET_TOKENIZE: f64 = 2.0;

#[derive(Args)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Model config: a built-in name or a TOML file.
    #[arg(long, default_value = "gpt2-small")]
    model: String,
    /// Tokens to generate per run.
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    new_tokens: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Skip ember's generation without the cache.
    #[arg(long)]
    skip_no_cache: bool,
    /// Rounds of ember and the reference, alternating which goes first; the tables show the
    /// medians (the JSON keeps every round). On a machine whose speed drifts (shared cores,
    /// thermal limits) 3 or 5 give steadier ratios than 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

#[derive(Args)]
pub struct TokenizeBenchArgs {
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Minimum measuring time per case, in seconds (the best repetition counts).
    #[arg(long, default_value_t = 1.0, value_parser = measuring_seconds)]
    seconds: f64,
}

/// A count of at least 1.
fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A measuring time: positive and at most an hour (`inf` cannot be a duration).
fn measuring_seconds(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 3600.0 => Ok(s),
        Ok(_) => Err("must be more than 0 and at most 3600".into()),
        Err(e) => Err(e.to_string()),
    }
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
    if let BenchCommand::Train(args) = &cmd
        && let Some(case) = &args.only
    {
        println!(
            "{}",
            train_case(case, args.steps, args.drop_rate, device_spec)?
        );
        return Ok(());
    }
    if cfg!(debug_assertions) {
        println!(
            "note: a debug build (ember's own code unoptimised); `cargo run --release -- bench …` gives the real figures"
        );
    }
    let json_out = match &cmd {
        BenchCommand::All(args) => &args.reference.json,
        BenchCommand::Tokenize(args) => &args.reference.json,
        BenchCommand::Generate(args) => &args.reference.json,
        BenchCommand::Train(args) => &args.reference.json,
    };
    if let Some(path) = json_out {
        // The results file is replaced on purpose; its directory must exist before the work.
        crate::runs::check_output_file(path, true)?;
    }
    let mut report = machine(device_spec);
    let json_path = match cmd {
        BenchCommand::All(args) => {
            let reference = &args.reference;
            report["tokenize"] = tokenize_bench(reference, 1.0)?;
            println!();
            // Training before generation: the generate bench puts this process's heap on huge
            // pages (as `ember generate` does), which the train bench's SGEMM probe, run here,
            // would then measure on; its cases run in child processes either way.
            let train = TrainOptions {
                steps: args.steps,
                rounds: args.rounds,
                cases: TrainCase::defaults(),
                torch_compile: false,
                drop_rate: 0.0,
            };
            report["train"] = train_bench(reference, &train, device_spec)?;
            println!();
            let generate = GenerateBenchArgs {
                reference: reference.clone(),
                model: "gpt2-small".into(),
                new_tokens: 256,
                prompt_tokens: 16,
                batch: 1,
                seed: 7,
                skip_no_cache: args.skip_no_cache,
                rounds: args.rounds,
            };
            report["generate"] = generate_bench(&generate, device_spec)?;
            println!();
            print_summary(&report);
            args.reference.json
        }
        BenchCommand::Tokenize(args) => {
            report["tokenize"] = tokenize_bench(&args.reference, args.seconds)?;
            args.reference.json
        }
        BenchCommand::Generate(args) => {
            report["generate"] = generate_bench(&args, device_spec)?;
            args.reference.json
        }
        BenchCommand::Train(args) => {
            let train = TrainOptions {
                steps: args.steps,
                rounds: args.rounds,
                cases: if args.cases.is_empty() {
                    TrainCase::defaults()
                } else {
                    args.cases.clone()
                },
                torch_compile: args.torch_compile,
                drop_rate: args.drop_rate,
            };
            report["train"] = train_bench(&args.reference, &train, device_spec)?;
            args.reference.json
        }
    };
    if let Some(path) = json_path {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        ember_data::write_atomically(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

/// `"; tokens/s: median of N rounds"` for table headings, empty for one round.
/// A dropout probability in `[0, 1)`.
fn parse_drop_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("`{text}` is not a probability in [0, 1)")),
    }
}

fn rounds_note(rounds: u32) -> String {
    if rounds > 1 {
        format!("; tokens/s: median of {rounds} rounds")
    } else {
        String::new()
    }
}

/// `rounds` rounds of ember's measurement (`ours(round)`) and the reference's (`theirs`, given
/// ember's runs so far), alternating which goes first from round 1 on, so that a drift in the
/// machine's speed falls on both sides. Round 0 runs ember first.
fn alternate_rounds<T>(
    rounds: u32,
    mut ours: impl FnMut(u32) -> Result<T>,
    mut theirs: impl FnMut(&[T]) -> Option<Value>,
) -> Result<(Vec<T>, Vec<Option<Value>>)> {
    let (mut ours_runs, mut theirs_runs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 1 {
            theirs_runs.push(theirs(&ours_runs));
            ours_runs.push(ours(round)?);
        } else {
            ours_runs.push(ours(round)?);
            theirs_runs.push(theirs(&ours_runs));
        }
    }
    Ok((ours_runs, theirs_runs))
}

/// The median of `values` (the mean of the middle two for an even count); NaN for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One train case's rounds folded into one row: ember's run nearest the median tokens/s (its
/// phases as measured, its GFLOP/s scaled to the median), the reference's median tokens/s,
/// each side's largest peak memory, and every round under `"rounds"`. `ember_runs` is not
/// empty (round 0 always runs ember).
fn median_round(ember_runs: Vec<Value>, torch_runs: Vec<Option<Value>>) -> (Value, Option<Value>) {
    let rate = |run: &Value| run["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
    let ours: Vec<f64> = ember_runs.iter().map(rate).collect();
    assert!(!ember_runs.is_empty(), "median_round: no rounds");
    let ours_median = median(&ours);
    let nearest = (0..ours.len())
        .min_by(|&a, &b| {
            (ours[a] - ours_median)
                .abs()
                .total_cmp(&(ours[b] - ours_median).abs())
        })
        .unwrap_or_default();
    let mut row = ember_runs[nearest].clone();
    let scale = ours_median / ours[nearest];
    row["tokens_per_s"] = json!(ours_median);
    row["gflops"] = json!(row["gflops"].as_f64().unwrap_or(f64::NAN) * scale);
    row["peak_rss_mb"] = json!(largest_peak(ember_runs.iter()));
    row["rounds"] = rounds_json(&ours, &torch_runs);
    let torch = median_reference(&torch_runs);
    (row, torch)
}

/// The largest `peak_rss_mb` of `runs` (NaN for none).
fn largest_peak<'a>(runs: impl Iterator<Item = &'a Value>) -> f64 {
    runs.filter_map(|run| run["peak_rss_mb"].as_f64())
        .fold(f64::NAN, f64::max)
}

/// The reference's rounds that ran, as its first run with the median tokens/s (and median
/// `torch.compile` tokens/s) and the largest peak memory; `None` when none ran.
fn median_reference(runs: &[Option<Value>]) -> Option<Value> {
    let ran: Vec<&Value> = runs.iter().flatten().collect();
    let mut merged = (*ran.first()?).clone();
    for key in ["tokens_per_s", "compiled_tokens_per_s"] {
        let rates: Vec<f64> = ran.iter().filter_map(|run| run[key].as_f64()).collect();
        if !rates.is_empty() {
            merged[key] = json!(median(&rates));
        }
    }
    if ran.iter().any(|run| run["peak_rss_mb"].is_number()) {
        merged["peak_rss_mb"] = json!(largest_peak(ran.into_iter()));
    }
    Some(merged)
}

/// Says so when the reference ran in some rounds but not all: its median then stands on fewer
/// runs than ember's.
fn warn_missing_rounds(reference: &str, runs: &[Option<Value>]) {
    let ran = runs.iter().flatten().count();
    if ran > 0 && ran < runs.len() {
        println!("note: {reference} ran in {ran} of {} rounds", runs.len());
    }
}

/// Every round's tokens/s, ember's and the reference's (null where it did not run).
fn rounds_json(ours: &[f64], theirs: &[Option<Value>]) -> Value {
    json!(
        ours.iter()
            .zip(theirs)
            .map(|(ours, theirs)| json!({
                "tokens_per_s": ours,
                "reference_tokens_per_s": theirs.as_ref().and_then(|t| t["tokens_per_s"].as_f64()),
            }))
            .collect::<Vec<_>>()
    )
}

/// What the figures were measured on, the head of every JSON report.
fn machine(device_spec: &str) -> Value {
    // The GPU as its driver names it; null on CPU devices (and for a device that does not
    // start, which the benches that use it report themselves).
    let adapter = crate::device::parse_device(device_spec)
        .ok()
        .and_then(|device| crate::device::adapter(&device));
    json!({
        "ember_version": env!("CARGO_PKG_VERSION"),
        "device": device_spec,
        "adapter": adapter.map(|adapter| adapter.to_string()),
        "threads": crate::device::cpu_threads(),
        "release_build": !cfg!(debug_assertions),
    })
}

/// The Python environment the references run in, when there is one.
struct Reference {
    python: PathBuf,
    scripts: PathBuf,
}

impl ReferenceArgs {
    /// The reference environment, or `None` after saying why and how to enable it.
    fn reference(&self) -> Option<Reference> {
        if self.no_reference {
            return None;
        }
        let scripts = scripts_dir();
        let python = self
            .python
            .clone()
            .or_else(|| std::env::var_os("EMBER_PYTHON").map(PathBuf::from))
            .unwrap_or_else(|| scripts.join(".venv-hf/bin/python"));
        if let Some(python) = find_program(&python) {
            return Some(Reference { python, scripts });
        }
        println!(
            "(references not measured: no Python at {}; run `bash scripts/setup-bench.sh` from the repository root to create it with PyTorch, transformers, tiktoken and HF tokenizers, or pass --python / set EMBER_PYTHON)",
            python.display()
        );
        None
    }
}

/// `program` as given when it holds a `/`, or else the first file of that name on `PATH`, as a
/// shell would run it; either way only a file that can be executed.
fn find_program(program: &Path) -> Option<PathBuf> {
    let name = program.as_os_str();
    if name.is_empty() {
        return None;
    }
    if name.as_encoded_bytes().contains(&b'/') {
        return is_executable(program).then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// `scripts/` of the repository: the working directory's when run from the repository root,
/// else the one this binary was built from.
fn scripts_dir() -> PathBuf {
    let local = Path::new("scripts");
    if local.join("bench_train_torch.py").exists() {
        local.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
    }
}

impl Reference {
    /// Runs `scripts/<script> args…` and parses the JSON object it prints; a failure is reported
    /// on one line and gives `None`, so ember's figures still print.
    fn run(&self, script: &str, args: &[String]) -> Option<Value> {
        let result = (|| -> Result<Value> {
            let output = Command::new(&self.python)
                .arg(self.scripts.join(script))
                .args(args)
                .output()
                .with_context(|| format!("running {}", self.python.display()))?;
            anyhow::ensure!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("no message")
            );
            serde_json::from_slice(&output.stdout).context("reading its JSON output")
        })();
        result
            .map_err(|why| println!("(reference {script} failed: {why:#})"))
            .ok()
    }
}

/// `a / b` as JSON, null when either side is missing.
fn ratio(ours: f64, theirs: Option<f64>) -> Value {
    theirs.map_or(Value::Null, |t| json!(ours / t))
}

fn fmt_ratio(value: &Value) -> String {
    value.as_f64().map_or("-".into(), |r| format!("{r:.2}×"))
}

fn fmt_target(target: Option<f64>) -> String {
    target.map_or("-".into(), |t| format!("{t:.1}×"))
}

fn fmt_num(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
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
fn train_case(
    case: &TrainCase,
    steps: usize,
    drop_rate: f64,
    device_spec: &str,
) -> Result<serde_json::Value> {
    use burn::optim::GradientsParams;
    use burn::prelude::*;
    use ember_model::loss::lm_loss;

    let (context, batch) = (case.context, case.batch);
    let device = crate::device::parse_device(device_spec)?.autodiff();
    let mut config = crate::models::load_gpt_config(&case.model, None)?;
    config.context_length = context;
    config.drop_rate = drop_rate;
    config.validate()?;
    // The model's training state and the step's [batch·context, vocab] logits with their
    // gradient, a lower bound of the step's memory: an absurd case is refused, not aborted.
    let (state, what) = crate::memory::model_bytes(config.num_params(), true);
    let logits = 8 * (batch as u128) * (context as u128) * (config.vocab_size as u128);
    crate::memory::check_bytes_fit(
        state + logits,
        &format!("{what}, with the step's logits,"),
        &device,
    )?;
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
    // Seconds in each phase over the timed steps: where a step's time goes. Exact on the eager
    // CPU backends; on lazy (GPU) backends only the total is the time of the work.
    let mut phases = [0.0f64; 4];
    let mut step = |model: ember_model::gpt::Gpt, phases: &mut [f64; 4]| {
        let mut t = Instant::now();
        let mut lap = |phase: usize, t: &mut Instant| {
            phases[phase] += t.elapsed().as_secs_f64();
            *t = Instant::now();
        };
        let loss = lm_loss(model.forward(inputs.clone()), targets.clone());
        lap(0, &mut t);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        lap(1, &mut t);
        ember_train::clip::clip_global_norm(&model, &mut grads, 1.0);
        lap(2, &mut t);
        // By value, as the training loop does: the update can then reuse the parameters' memory.
        let model = optim.step(1e-4, model, grads);
        lap(3, &mut t);
        model
    };
    model = step(model, &mut [0.0; 4]);
    // On lazy (GPU) backends the warm-up's update is still queued: finish it before the clock.
    let finish = |model: &ember_model::gpt::Gpt| {
        let _ = model
            .forward(inputs.clone().narrow(0, 0, 1))
            .sum()
            .into_scalar::<f32>();
    };
    finish(&model);
    let started = Instant::now();
    for _ in 0..steps {
        model = step(model, &mut phases);
    }
    // The last step's work is queued on lazy backends: read a value to finish it.
    finish(&model);
    let seconds = started.elapsed().as_secs_f64();
    let tokens_per_s = (batch * context * steps) as f64 / seconds;
    // The count: 6 FLOPs per parameter per token (forward + backward) plus the
    // attention matmuls (QKᵀ and AV: 12 · layers · emb · context per token), with the
    // parameters taken as those that enter a product: not the position table, nor the token
    // table unless the output head is tied to it (a lookup multiplies nothing).
    let lookups = config.context_length * config.emb_dim
        + if config.tie_weights {
            0
        } else {
            config.vocab_size * config.emb_dim
        };
    let flops_per_token = 6.0 * (config.num_params() - lookups) as f64
        + 12.0 * (config.n_layers * config.emb_dim * context) as f64;
    Ok(serde_json::json!({
        "case": case.name(),
        "model": case.model,
        "params": config.num_params(),
        "tokens_per_s": tokens_per_s,
        "gflops": tokens_per_s * flops_per_token / 1e9,
        "peak_rss_mb": peak_rss_mb(),
        "phase_ms": {
            "forward_and_loss": 1e3 * phases[0] / steps as f64,
            "backward": 1e3 * phases[1] / steps as f64,
            "clip": 1e3 * phases[2] / steps as f64,
            "adamw": 1e3 * phases[3] / steps as f64,
        },
        "emb": config.emb_dim, "layers": config.n_layers, "heads": config.n_heads,
        "vocab": config.vocab_size, "context": context, "batch": batch,
        "qkv_bias": config.qkv_bias, "tie": config.tie_weights, "drop_rate": drop_rate,
    }))
}

/// GFLOP/s of 2048² × 2048² matmuls on the device (best of repetitions), the machine's
/// practical peak. Each repetition queues 8 products and reads one number back, so that on a GPU
/// the read-back's latency is not counted against every product. The products are
/// [`ember_kernels::matmul`], as the train step runs them: on the CPU it writes straight into
/// its output, where Burn's own product zero-fills, copies and page-faults a new 16 MB output
/// each time (the probe read a few percent low); elsewhere it is Burn's product.
fn sgemm_probe(device: &burn::prelude::Device) -> f64 {
    use burn::prelude::*;
    let (n, products) = (2048, 8);
    let a = Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, device);
    let run = || {
        let sums = (0..products).map(|_| ember_kernels::matmul(a.clone(), b.clone()).sum());
        let _ = Tensor::cat(sums.collect(), 0).sum().into_scalar::<f32>();
    };
    run();
    let best = best_time(Duration::from_secs(1), run);
    2.0 * (n as f64).powi(3) * products as f64 / best.as_secs_f64() / 1e9
}

/// What `train_bench` runs.
struct TrainOptions {
    steps: usize,
    rounds: u32,
    cases: Vec<TrainCase>,
    torch_compile: bool,
    drop_rate: f64,
}

/// Runs each train case in its own process (its own peak memory) and PyTorch eager beside it.
fn train_bench(
    reference: &ReferenceArgs,
    options: &TrainOptions,
    device_spec: &str,
) -> Result<Value> {
    let TrainOptions {
        steps,
        rounds,
        ref cases,
        torch_compile,
        drop_rate,
    } = *options;
    anyhow::ensure!(steps >= 1, "--steps must be at least 1");
    let threads = crate::device::cpu_threads();
    let device = crate::device::parse_device(device_spec)?;
    let label = crate::device::describe(device_spec, &device);
    let peak = sgemm_probe(&device);
    println!(
        "train step (forward, backward, AdamW, clipping{}), device {label}, {threads} threads; SGEMM 2048² probe: {peak:.1} GFLOP/s{}",
        if drop_rate > 0.0 {
            format!(", dropout {drop_rate}")
        } else {
            String::new()
        },
        rounds_note(rounds)
    );
    let reference = reference.reference();
    println!(
        "{:<22} {:>10} {:>8} {:>9} {:>10} {:>8} {:>7} {:>7} {:>10}",
        "case", "tokens/s", "GFLOP/s", "of SGEMM", "torch t/s", "ratio", "target", "MB", "torch MB"
    );
    let exe = std::env::current_exe().context("locating the ember binary")?;
    let mut rows = Vec::new();
    let gpu = is_gpu_spec(device_spec);
    for case in cases {
        let name = case.name();
        let run_ember = || -> Result<Value> {
            let output = Command::new(&exe)
                .args(["--device", device_spec, "bench", "train", "--steps"])
                .arg(steps.to_string())
                .args(["--only", &case.spec()])
                .args(["--drop-rate", &drop_rate.to_string()])
                .output()
                .context("running a bench case")?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            anyhow::ensure!(
                output.status.success(),
                "case {name}: {}",
                // The case's own one-line error, without a second `error: `.
                stderr.trim().trim_start_matches("error: ")
            );
            serde_json::from_slice(&output.stdout).context("reading a bench case's JSON")
        };
        let run_torch = |row: &Value| {
            reference.as_ref().and_then(|r| {
                let mut args = Vec::new();
                for key in ["emb", "layers", "heads", "vocab", "context", "batch"] {
                    args.push(format!("--{key}"));
                    args.push(row[key].to_string());
                }
                args.extend(["--steps".into(), steps.to_string()]);
                args.extend(["--threads".into(), threads.to_string()]);
                args.extend(["--device".into(), reference_device(device_spec).into()]);
                args.extend(["--drop-rate".into(), drop_rate.to_string()]);
                if torch_compile {
                    args.push("--compile".into());
                }
                if row["qkv_bias"].as_bool() == Some(true) {
                    args.push("--qkv-bias".into());
                }
                if row["tie"].as_bool() == Some(true) {
                    args.push("--tie".into());
                }
                r.run("bench_train_torch.py", &args)
            })
        };
        // Ember's first run's JSON names the model for the reference.
        let (ember_runs, torch_runs) = alternate_rounds(
            rounds,
            |_| run_ember(),
            |runs: &[Value]| run_torch(&runs[0]),
        )?;
        warn_missing_rounds(&format!("PyTorch, {name}"), &torch_runs);
        let (mut row, torch) = median_round(ember_runs, torch_runs);
        let ours = row["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let gflops = row["gflops"].as_f64().unwrap_or(f64::NAN);
        let torch_rate = torch.as_ref().and_then(|t| t["tokens_per_s"].as_f64());
        let torch_mb = torch.as_ref().and_then(|t| t["peak_rss_mb"].as_f64());
        let target = case.target(gpu);
        row["ratio"] = ratio(ours, torch_rate);
        row["target"] = json!(target);
        if torch_compile {
            let compiled = torch
                .as_ref()
                .and_then(|t| t["compiled_tokens_per_s"].as_f64());
            row["compiled_ratio"] = ratio(ours, compiled);
        }
        // Host memory on both sides: on a GPU that says nothing about the GPU's memory.
        row["memory_ratio"] = if gpu {
            Value::Null
        } else {
            ratio(row["peak_rss_mb"].as_f64().unwrap_or(f64::NAN), torch_mb)
        };
        row["sgemm_gflops"] = json!(peak);
        row["reference"] = torch.map_or(Value::Null, |mut t| {
            t["name"] = json!("PyTorch eager (scripts/bench_train_torch.py)");
            t
        });
        println!(
            "{:<22} {:>10.1} {:>8.1} {:>8.0}% {:>10} {:>8} {:>7} {:>7.0} {:>10}",
            name,
            ours,
            gflops,
            100.0 * gflops / peak,
            fmt_num(torch_rate, 1),
            fmt_ratio(&row["ratio"]),
            fmt_target(target),
            row["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            fmt_num(torch_mb, 0),
        );
        rows.push(row);
    }
    for row in rows.iter().filter(|_| torch_compile) {
        let name = row["case"].as_str().unwrap_or("?");
        let reference = &row["reference"];
        match reference["compile_error"].as_str() {
            Some(why) => println!("{name:<22} torch.compile failed: {why}"),
            None => println!(
                "{name:<22} torch.compile: {} tokens/s → ember {}",
                fmt_num(reference["compiled_tokens_per_s"].as_f64(), 1),
                fmt_ratio(&row["compiled_ratio"])
            ),
        }
    }
    if gpu {
        println!(
            "(references on PyTorch's CUDA device; on a GPU backend work is queued, so the phases below are launch times and only the total is the step's time)"
        );
    }
    println!("where a step's time goes (ms; matmuls are inside forward and backward):");
    for row in &rows {
        let phase = |key: &str| row["phase_ms"][key].as_f64().unwrap_or(f64::NAN);
        println!(
            "  {:<22} forward+loss {:>7.0}  backward {:>7.0}  clip {:>5.0}  AdamW {:>6.0}",
            row["case"].as_str().unwrap_or("?"),
            phase("forward_and_loss"),
            phase("backward"),
            phase("clip"),
            phase("adamw"),
        );
    }
    Ok(Value::Array(rows))
}

fn generate_bench(args: &GenerateBenchArgs, device_spec: &str) -> Result<Value> {
    use burn::prelude::*;
    use burn::tensor::DType;
    use ember_model::generate::{GenerateOptions, generate};
    use ember_model::sampling::SamplingConfig;

    // As `ember generate` decodes: weights (and the GEMV probe's) on huge pages.
    crate::memory::huge_pages_from_now();

    let device = crate::device::parse_device(device_spec)?;
    let config = crate::models::load_gpt_config(&args.model, None)?;
    anyhow::ensure!(
        args.prompt_tokens >= 1 && args.prompt_tokens + args.new_tokens <= config.context_length,
        "prompt + new tokens ({} + {}) must fit the context length {} (and the prompt be non-empty)",
        args.prompt_tokens,
        args.new_tokens,
        config.context_length
    );
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    crate::memory::check_model_fits(config.num_params(), false, &device)?;
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
    let threads = crate::device::cpu_threads();
    let decode_threads = crate::device::decode_threads(&device);
    let decode_read_every = crate::device::decode_read_every(&device);
    println!(
        "generate: {} ({} parameters, random weights), {} prompt(s) of {} tokens, {} new tokens each, greedy, device {}, {threads} threads",
        args.model,
        config.num_params(),
        args.batch,
        args.prompt_tokens,
        args.new_tokens,
        crate::device::describe(device_spec, &device),
    );
    let options = |use_cache: bool| GenerateOptions {
        max_new_tokens: args.new_tokens,
        sampling: SamplingConfig::default(),
        eos_id: None,
        seed: 0,
        use_cache,
        threads: decode_threads,
        read_every: decode_read_every,
        vocab_limit: None,
    };
    let gpu = is_gpu_spec(device_spec);
    if gpu {
        // GPU backends compile and tune kernels (and, with the `fusion` feature, fuse them) for
        // each new shape on first use, and every cached decoding step has a longer key/value
        // length: one untimed decode of the same length meets the shapes the timed ones will.
        let started = Instant::now();
        generate(&model, &prompts, &options(true), |_, _| {}).map_err(anyhow::Error::msg)?;
        println!(
            "{:>24}: {:.1} s (untimed; compiles the kernels)",
            "warm-up decode",
            started.elapsed().as_secs_f64()
        );
    }
    let timed_with = |model: &ember_model::gpt::Gpt,
                      options: &GenerateOptions,
                      label: &str|
     -> Result<(Vec<Vec<u32>>, f64)> {
        let bar = crate::progress::count_bar((args.new_tokens * args.batch) as u64, label);
        let started = Instant::now();
        let out =
            generate(model, &prompts, options, |_, _| bar.inc(1)).map_err(anyhow::Error::msg)?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let tokens: Vec<Vec<u32>> = out.into_iter().map(|g| g.tokens).collect();
        let rate = (args.new_tokens * args.batch) as f64 / seconds;
        println!("{label:>24}: {rate:8.1} tokens/s ({seconds:.1} s)");
        Ok((tokens, rate))
    };
    let timed = |use_cache: bool| {
        let label = if use_cache {
            "ember, KV cache"
        } else {
            "ember, no cache"
        };
        timed_with(&model, &options(use_cache), label)
    };
    let reference_args = {
        let mut list = Vec::new();
        for (key, value) in [
            ("emb", config.emb_dim),
            ("layers", config.n_layers),
            ("heads", config.n_heads),
            ("vocab", config.vocab_size),
            ("context", config.context_length),
            ("prompt", args.prompt_tokens),
            ("new-tokens", args.new_tokens),
            ("threads", threads),
            ("batch", args.batch),
        ] {
            list.push(format!("--{key}"));
            list.push(value.to_string());
        }
        list.extend(["--device".into(), reference_device(device_spec).into()]);
        list
    };
    let reference = args.reference.reference();
    let run_reference = || {
        reference.as_ref().and_then(|r| {
            let bar = crate::progress::count_bar(1, "transformers generate");
            let out = r.run("bench_generate_hf.py", &reference_args);
            bar.finish_and_clear();
            if let Some(rate) = out.as_ref().and_then(|o| o["tokens_per_s"].as_f64()) {
                println!("{:>24}: {rate:8.1} tokens/s", "transformers generate");
            }
            out
        })
    };
    let mut cached_tokens: Option<Vec<Vec<u32>>> = None;
    // Greedy decoding must give the same tokens every round.
    let (cached_runs, reference_runs) = alternate_rounds(
        args.rounds,
        |round| {
            let (tokens, rate) = timed(true)?;
            match &cached_tokens {
                Some(first) => anyhow::ensure!(
                    tokens == *first,
                    "round {round} decoded other tokens than round 0"
                ),
                None => cached_tokens = Some(tokens),
            }
            Ok(rate)
        },
        |_| run_reference(),
    )?;
    let cached_tokens = cached_tokens.unwrap_or_default();
    let cached = median(&cached_runs);
    if args.rounds > 1 {
        println!("{:>24}: {cached:8.1} tokens/s", "ember, median");
    }
    let gemv = if gpu {
        // The probe measures CPU kernels and the CPU's read bandwidth.
        Value::Null
    } else {
        let gemv = gemv_probe(&device, decode_threads);
        println!(
            "{:>24}: {:.1} GB/s as ember decodes on {} threads ({:.1} tied-head layout, {:.1} Burn's own product; [1, 768]·[768, 3072], {} MB of weights), plain read {:.1} GB/s",
            "GEMV probe",
            gemv["split_gb_s"].as_f64().unwrap_or(f64::NAN),
            gemv["threads"],
            gemv["transposed_gb_s"].as_f64().unwrap_or(f64::NAN),
            gemv["backend_gb_s"].as_f64().unwrap_or(f64::NAN),
            gemv["megabytes"],
            gemv["read_gb_s"].as_f64().unwrap_or(f64::NAN),
        );
        gemv
    };
    let weight_bytes = 4.0 * config.num_params() as f64;
    let mut row = json!({
        "case": format!("{} prompt{} new{} b{}", args.model, args.prompt_tokens, args.new_tokens, args.batch),
        "params": config.num_params(),
        "tokens_per_s": cached,
        // Every weight is read once per step (batch 1): the bandwidth decoding achieves.
        "weight_gb_s": cached / args.batch as f64 * weight_bytes / 1e9,
        "gemv_probe": gemv,
    });
    if !args.skip_no_cache {
        let (plain_tokens, plain) = timed(false)?;
        println!(
            "{:>24}: {:.1}× (same tokens: {})",
            "cache speed-up",
            cached / plain,
            if cached_tokens == plain_tokens {
                "yes"
            } else {
                "NO"
            }
        );
        row["no_cache_tokens_per_s"] = json!(plain);
        row["cache_tokens_agree"] = json!(cached_tokens == plain_tokens);
    }
    // Weights stored in bf16 (`--weight-dtype bf16`) where the backend reads them as stored:
    // half the bytes per token. Outside the target, which is for f32 weights on both sides.
    let bf16 = if ember_kernels::weight_dtype_read(DType::F32, DType::BF16, &device) {
        let model = model.clone().with_weight_dtype(DType::BF16);
        let (tokens, rate) = timed_with(&model, &options(true), "ember, bf16 weights")?;
        let agree = tokens
            .iter()
            .zip(&cached_tokens)
            .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
            .min()
            .unwrap_or(0);
        println!(
            "{:>24}: {:.2}× f32's tokens/s; the first {agree} of {} greedy tokens are f32's",
            "bf16 weights",
            rate / cached,
            args.new_tokens
        );
        json!({"tokens_per_s": rate, "tokens_agreeing_with_f32": agree})
    } else {
        Value::Null
    };
    row["bf16_weights"] = bf16;
    // On a GPU, the same decode with Burn's composed ops instead of ember's GPU kernels, in the
    // same run: what the kernels (fewer, larger launches per step) gain there.
    row["composed_ops"] = if ember_kernels::gpu_kernels_run_on(&device) {
        ember_kernels::set_gpu_kernels(false);
        let composed = generate(&model, &prompts, &options(true), |_, _| {})
            .map_err(anyhow::Error::msg)
            .and_then(|_warm_up| timed_with(&model, &options(true), "ember, Burn's ops"));
        ember_kernels::set_gpu_kernels(true);
        let (tokens, rate) = composed?;
        let same = tokens == cached_tokens;
        println!(
            "{:>24}: {:.2}× the composed ops' tokens/s (same tokens: {})",
            "ember's GPU kernels",
            cached / rate,
            if same { "yes" } else { "no" }
        );
        json!({"tokens_per_s": rate, "same_tokens": same})
    } else {
        Value::Null
    };
    // On a GPU, the same decode reading each token back as it is chosen: what keeping the
    // queue full between reads (`read_every`) gains there.
    row["read_every_token"] = if gpu && decode_read_every > 1 {
        let every_token = GenerateOptions {
            read_every: 1,
            ..options(true)
        };
        let (tokens, rate) = timed_with(&model, &every_token, "ember, read every token")?;
        let same = tokens == cached_tokens;
        println!(
            "{:>24}: {:.2}× the tokens/s of reading every token (same tokens: {})",
            format!("read every {decode_read_every}"),
            cached / rate,
            if same { "yes" } else { "no" }
        );
        json!({"tokens_per_s": rate, "same_tokens": same, "read_every": decode_read_every})
    } else {
        Value::Null
    };
    let reference = median_reference(&reference_runs);
    row["rounds"] = rounds_json(&cached_runs, &reference_runs);
    warn_missing_rounds("transformers generate", &reference_runs);
    let theirs = reference.as_ref().and_then(|r| r["tokens_per_s"].as_f64());
    row["ratio"] = ratio(cached, theirs);
    // On a GPU the aim is PyTorch's own speed; 2× is the CPU's bandwidth-derived target.
    let target = if gpu { TARGET_GPU } else { TARGET_GENERATE };
    row["target"] = json!(target);
    println!(
        "{:>24}: {:>8} tokens/s → ember with cache {} (target {target:.1}×){}",
        "transformers generate",
        fmt_num(theirs, 1),
        fmt_ratio(&row["ratio"]),
        rounds_note(args.rounds)
    );
    if let (Some(rate), Some(theirs)) = (row["bf16_weights"]["tokens_per_s"].as_f64(), theirs) {
        println!(
            "{:>24}: {:.2}× transformers' f32 tokens/s (no target: other weights)",
            "bf16 weights",
            rate / theirs
        );
    }
    row["reference"] = reference.map_or(Value::Null, |mut r| {
        r["name"] = json!("transformers GPT2LMHeadModel.generate, use_cache=True");
        r
    });
    Ok(Value::Array(vec![row]))
}

/// Read bandwidth of one-token matrix products, the whole cost of a decoding step: 32 weights
/// `[768, 3072]` (302 MB, more than any cache) multiplied by one row, as Burn's backend runs the
/// product, as ember's decoding runs it ([`ember_kernels::matmul_split`] over `threads`), and
/// with tables `[3072, 768]` as ember's tied head runs it ([`ember_kernels::matmul_nt_split`]);
/// next to the machine's plain read bandwidth: a sum over as many bytes on all threads.
fn gemv_probe(device: &burn::prelude::Device, threads: usize) -> Value {
    use burn::prelude::*;
    let (d_in, d_out, count) = (768, 3072, 32);
    device.seed(1);
    let random =
        |shape: [usize; 2]| Tensor::<2>::random(shape, burn::tensor::Distribution::Default, device);
    let weights: Vec<Tensor<2>> = (0..count).map(|_| random([d_in, d_out])).collect();
    let tables: Vec<Tensor<2>> = (0..count).map(|_| random([d_out, d_in])).collect();
    let x = random([1, d_in]);
    let bytes = (count * d_in * d_out * 4) as f64;
    let rate = |work: &dyn Fn() -> Vec<Tensor<2>>| {
        let finish = |outs: Vec<Tensor<2>>| {
            let _ = Tensor::cat(outs, 1).sum().into_scalar::<f32>();
        };
        finish(work());
        let best = best_time(Duration::from_millis(500), || finish(work()));
        bytes / best.as_secs_f64() / 1e9
    };
    let backend = rate(&|| {
        weights
            .iter()
            .map(|w| x.clone().matmul(w.clone()))
            .collect()
    });
    let split = rate(&|| {
        weights
            .iter()
            .map(|w| ember_kernels::matmul_split(x.clone(), w.clone(), threads))
            .collect()
    });
    let tied = rate(&|| {
        tables
            .iter()
            .map(|t| ember_kernels::matmul_nt_split(x.clone(), t.clone(), threads))
            .collect()
    });
    json!({
        "backend_gb_s": backend,
        "split_gb_s": split,
        "transposed_gb_s": tied,
        "read_gb_s": read_bandwidth(count * d_in * d_out),
        "threads": threads,
        "megabytes": (bytes / 1e6).round(),
    })
}

/// GB/s of summing `len` floats (more than any cache) on all of rayon's threads: the most any
/// weight-reading kernel can reach here.
fn read_bandwidth(len: usize) -> f64 {
    use rayon::prelude::*;
    let values: Vec<f32> = (0..len).into_par_iter().map(|i| (i % 7) as f32).collect();
    let sum = || {
        values
            .par_chunks(1 << 16)
            .map(|chunk| {
                // 16 independent lanes, so the sum vectorises.
                let mut lanes = [0.0f32; 16];
                for block in chunk.chunks_exact(16) {
                    for (lane, &v) in lanes.iter_mut().zip(block) {
                        *lane += v;
                    }
                }
                lanes.iter().sum::<f32>()
            })
            .sum::<f32>()
    };
    std::hint::black_box(sum());
    let best = best_time(Duration::from_millis(500), || {
        std::hint::black_box(sum());
    });
    (len * 4) as f64 / best.as_secs_f64() / 1e9
}

/// One tokenize case: texts encoded one after the other.
struct Case {
    name: &'static str,
    texts: Vec<String>,
}

fn tokenize_bench(reference: &ReferenceArgs, seconds: f64) -> Result<Value> {
    anyhow::ensure!(seconds > 0.0, "--seconds must be positive");
    let tokenizer = crate::data::gpt2_tokenizer()?;
    let cache = DataCache::from_env();
    let verdict = ember_data::read_text_file(&cache.file("the-verdict", "the-verdict.txt")?)?;
    let sms_path = cache.file("sms-spam", "sms_spam/SMSSpamCollection")?;
    let messages: Vec<String> = ember_data::classification::read_sms_spam(&sms_path)?
        .examples
        .into_iter()
        .map(|example| example.text)
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
    println!("GPT-2 BPE encode, one thread, best of ≥{seconds:.1} s per case");
    let reference = reference.reference().and_then(|r| {
        let bar = crate::progress::count_bar(1, "tiktoken and HF tokenizers");
        let out = r.run(
            "bench_tokenize.py",
            &[
                "--data".into(),
                cache.root().display().to_string(),
                "--seconds".into(),
                seconds.to_string(),
            ],
        );
        bar.finish_and_clear();
        out
    });
    println!(
        "{:<14} {:>8} {:>8} {:>10} {:>13} {:>8} {:>8} {:>8} {:>7}",
        "corpus",
        "bytes",
        "tokens",
        "ember MB/s",
        "tiktoken MB/s",
        "ratio",
        "target",
        "HF MB/s",
        "ratio"
    );
    let mut rows = Vec::new();
    for case in &cases {
        let bytes: usize = case.texts.iter().map(String::len).sum();
        let tokens: usize = case.texts.iter().map(|t| tokenizer.encode(t).len()).sum();
        let time = best_time(Duration::from_secs_f64(seconds), || {
            for text in &case.texts {
                std::hint::black_box(tokenizer.encode(text));
            }
        });
        let ours = bytes as f64 / 1e6 / time.as_secs_f64();
        let theirs = reference.as_ref().and_then(|r| {
            r["results"]
                .as_array()?
                .iter()
                .find(|row| row["corpus"] == case.name)
                .cloned()
        });
        let figure = |who: &str, key: &str| theirs.as_ref().and_then(|t| t[who][key].as_f64());
        let tiktoken = figure("tiktoken", "mb_per_s");
        let hf = figure("hf_tokenizers", "mb_per_s");
        // Every encoder must produce the same number of tokens, or the speeds compare nothing.
        for who in ["tiktoken", "hf_tokenizers"] {
            if let Some(n) = figure(who, "tokens") {
                anyhow::ensure!(
                    n as usize == tokens,
                    "{}: ember made {tokens} tokens, {who} {n}",
                    case.name
                );
            }
        }
        let row = json!({
            "corpus": case.name,
            "bytes": bytes,
            "tokens": tokens,
            "mb_per_s": ours,
            "ratio": ratio(ours, tiktoken),
            "target": TARGET_TOKENIZE,
            "ratio_hf_tokenizers": ratio(ours, hf),
            "reference": theirs.unwrap_or(Value::Null),
        });
        println!(
            "{:<14} {bytes:>8} {tokens:>8} {ours:>10.2} {:>13} {:>8} {:>7.1}× {:>8} {:>7}",
            case.name,
            fmt_num(tiktoken, 2),
            fmt_ratio(&row["ratio"]),
            TARGET_TOKENIZE,
            fmt_num(hf, 2),
            fmt_ratio(&row["ratio_hf_tokenizers"]),
        );
        rows.push(row);
    }
    Ok(Value::Array(rows))
}

/// The one-screen summary of `bench all`: every case's ratio against its target.
fn print_summary(report: &Value) {
    println!("summary (ember ÷ reference, same run)");
    println!("{:<56} {:>8} {:>8} {:>6}", "case", "ratio", "target", "met");
    let sections = [
        ("tokenize", "corpus", "vs tiktoken"),
        ("generate", "case", "vs transformers"),
        ("train", "case", "vs PyTorch"),
    ];
    for (section, key, against) in sections {
        for row in report[section].as_array().into_iter().flatten() {
            let name = format!("{section} {} {against}", row[key].as_str().unwrap_or("?"));
            let target = row["target"].as_f64();
            let met = match (row["ratio"].as_f64(), target) {
                (Some(r), Some(t)) if r >= t => "yes",
                (Some(_), Some(_)) => "no",
                _ => "-",
            };
            println!(
                "{name:<56} {:>8} {:>8} {met:>6}",
                fmt_ratio(&row["ratio"]),
                fmt_target(target)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_python_given_by_bare_name_is_found_on_path() {
        // `sh` is on every PATH this runs on; the bare name used to be read as a relative path.
        let sh = find_program(Path::new("sh")).expect("sh on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(find_program(Path::new("no-such-program-ember")), None);
        assert_eq!(find_program(&sh), Some(sh.clone()));
        assert_eq!(find_program(Path::new("")), None);
        let dir = tempfile::tempdir().unwrap();
        let python = dir.path().join("python");
        assert_eq!(find_program(&python), None);
        // A file that cannot be executed is not a Python to run.
        std::fs::write(&python, "#!/bin/sh\n").unwrap();
        assert_eq!(find_program(&python), None);
    }

    #[test]
    fn train_cases_parse_and_bad_ones_say_what_is_wrong() {
        let case: TrainCase = "gpt2-small:1024:8".parse().unwrap();
        assert_eq!(
            case,
            TrainCase {
                model: "gpt2-small".into(),
                context: 1024,
                batch: 8
            }
        );
        assert_eq!(case.name(), "gpt2-small ctx1024 b8");
        assert_eq!(case.spec().parse::<TrainCase>().unwrap(), case);
        let path: TrainCase = "C:/cfg/my:model.toml:128:4".parse().unwrap();
        assert_eq!(path.model, "C:/cfg/my:model.toml");
        assert_eq!((path.context, path.batch), (128, 4));
        for (spec, says) in [
            ("gpt2-small:1024", "expected MODEL:CONTEXT:BATCH"),
            ("gpt2-small:x:8", "context `x`"),
            ("gpt2-small:256:0", "batch `0`"),
            (":256:8", "model name is empty"),
        ] {
            let err = spec.parse::<TrainCase>().unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        }
        let tiny: TrainCase = "gpt-tiny:256:8".parse().unwrap();
        assert_eq!(tiny.target(false), Some(TARGET_TRAIN_SMALL));
        assert_eq!(case.target(false), Some(TARGET_TRAIN_GPT2));
        let own: TrainCase = "my.toml:256:8".parse().unwrap();
        assert_eq!(
            own.target(false),
            None,
            "no target for a model the issue does not name"
        );
    }

    #[test]
    fn medians_of_odd_even_and_nan_holding_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn rounds_fold_into_the_median_run_with_the_largest_peaks() {
        let run = |rate: f64, mb: f64, forward: f64| {
            json!({"tokens_per_s": rate, "gflops": rate / 10.0, "peak_rss_mb": mb,
                   "phase_ms": {"forward_and_loss": forward}, "emb": 64})
        };
        let torch = |rate: f64, mb: f64| Some(json!({"tokens_per_s": rate, "peak_rss_mb": mb}));
        let (row, theirs) = median_round(
            vec![
                run(100.0, 10.0, 1.0),
                run(120.0, 12.0, 2.0),
                run(90.0, 11.0, 3.0),
            ],
            vec![torch(50.0, 20.0), None, torch(70.0, 25.0)],
        );
        assert_eq!(row["tokens_per_s"], 100.0);
        assert_eq!(
            row["phase_ms"]["forward_and_loss"], 1.0,
            "the median run's phases"
        );
        assert_eq!(row["peak_rss_mb"], 12.0);
        assert_eq!(row["emb"], 64);
        assert_eq!(row["rounds"][1]["tokens_per_s"], 120.0);
        assert!(row["rounds"][1]["reference_tokens_per_s"].is_null());
        let theirs = theirs.unwrap();
        assert_eq!(
            theirs["tokens_per_s"], 60.0,
            "median of the rounds that ran"
        );
        assert_eq!(theirs["peak_rss_mb"], 25.0);

        // An even count: the median lies between two runs; GFLOP/s follow it.
        let (row, theirs) = median_round(
            vec![run(100.0, 10.0, 1.0), run(110.0, 10.0, 2.0)],
            vec![None, None],
        );
        assert_eq!(row["tokens_per_s"], 105.0);
        assert!((row["gflops"].as_f64().unwrap() - 10.5).abs() < 1e-9);
        assert!(theirs.is_none());
    }
}
