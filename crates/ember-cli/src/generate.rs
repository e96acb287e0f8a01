//! `ember generate`: text from a trained run, streamed as it is produced.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::Device;
use clap::Args;
use ember_data::bpe::END_OF_TEXT;
use ember_model::generate::{GenerateOptions, generate};
use ember_model::gpt::Gpt;
use ember_model::sampling::SamplingConfig;

use crate::device;
use crate::instruct::Responder;
use crate::runs::load_gpt;
use ember_data::instruct::Template;

/// Sampling seed when --seed is not given.
const DEFAULT_SEED: u64 = 123;

#[derive(Args)]
pub struct GenerateArgs {
    /// Run directory written by `ember pretrain`, `ember import` or (for --instruction)
    /// `ember finetune instruct`: its latest checkpoint.
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    checkpoint: Option<PathBuf>,
    /// Pretrained weights: a HuggingFace GPT-2 directory (config.json + model.safetensors or
    /// pytorch_model.bin, or a `models--NAME` cache folder) or a run directory.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Prompt text; repeat for a batch (each sequence stops at its own end-of-text).
    #[arg(
        long,
        required_unless_present = "instruction",
        conflicts_with = "instruction"
    )]
    prompt: Vec<String>,
    /// An instruction for an instruction fine-tune: formatted with the run's template, and
    /// only the response is printed.
    #[arg(long)]
    instruction: Option<String>,
    /// The instruction's input (optional).
    // `conflicts_with` as well: clap lets a missing `requires` pass when that argument
    // conflicts with one present (here --prompt), so `requires` alone would ignore it.
    #[arg(long, requires = "instruction", conflicts_with = "prompt")]
    input: Option<String>,
    /// Prompt template for --instruction: alpaca or phi3 [default: the run's, else alpaca].
    #[arg(long, requires = "instruction", conflicts_with = "prompt")]
    template: Option<String>,
    /// Tokens to generate after the prompt (fewer when a sequence reaches end-of-text).
    #[arg(long, default_value_t = 50)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only within the smallest set of tokens whose probability reaches p.
    #[arg(long)]
    top_p: Option<f32>,
    /// > 1 makes tokens already in the text less likely.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampling (the same seed repeats the same text) [default: 123].
    #[arg(long)]
    seed: Option<u64>,
    /// Stop at this token id [default: the tokenizer's <|endoftext|>].
    #[arg(long, conflicts_with = "no_eos")]
    eos_id: Option<u32>,
    /// Never stop early: always generate max-new-tokens.
    #[arg(long)]
    no_eos: bool,
    /// Re-run the whole window for every token instead of using the key/value cache
    /// (same output, slower; for checking and benchmarking).
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    weight_dtype: WeightDtypeArg,
}

/// `--weight-dtype`: how a decoding command stores the model's weight matrices.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct WeightDtypeArg {
    /// Store the weight matrices in bf16 while decoding: half the memory, and half the bytes
    /// every token streams (CPU decoding runs at the machine's read bandwidth; gpt2-small
    /// decoded 1.4–1.7× faster on 2 cores). Activations and sums stay f32, so logits differ
    /// from f32's only by the weights' rounding (third significant digit), yet a long greedy
    /// text can part ways with f32's. CPU device only.
    #[arg(long, value_enum, default_value_t = WeightDtype::F32)]
    weight_dtype: WeightDtype,
}

impl WeightDtypeArg {
    /// See [`WeightDtype::apply`].
    pub fn apply(self, model: Gpt, device: &Device, device_spec: &str) -> Result<Gpt> {
        self.weight_dtype.apply(model, device, device_spec)
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    Bf16,
}

impl WeightDtype {
    /// `model` with its weights stored as asked; bf16 only where the backend's products read
    /// bf16 weights as stored (elsewhere every product would cast them back: slower, no gain).
    pub fn apply(self, model: Gpt, device: &Device, device_spec: &str) -> Result<Gpt> {
        match self {
            WeightDtype::F32 => Ok(model),
            WeightDtype::Bf16 => {
                use burn::tensor::DType;
                anyhow::ensure!(
                    ember_kernels::weight_dtype_read(DType::F32, DType::BF16, device),
                    "--weight-dtype bf16 is for the CPU device (its decoding products read bf16 \
                     weights as stored); on --device {device_spec} it would only add casts: use f32"
                );
                Ok(model.with_weight_dtype(DType::BF16))
            }
        }
    }
}

pub fn run(args: GenerateArgs, device_spec: &str) -> Result<()> {
    crate::memory::huge_pages_from_now();
    let device = device::parse_device(device_spec)?;
    let source = args
        .checkpoint
        .as_ref()
        .or(args.weights.as_ref())
        .expect("clap requires --checkpoint or --weights");
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
    };
    // Settings first: a typo should not wait for the weights to load.
    sampling.validate().map_err(anyhow::Error::msg)?;
    if let Some(i) = args.prompt.iter().position(String::is_empty) {
        bail!("prompt {} is empty", i + 1);
    }

    let loaded = load_gpt(source, &device, None)?;
    let tokenizer = loaded.tokenizer()?;
    let template = match &args.template {
        Some(name) => Some(Template::parse(name).map_err(anyhow::Error::msg)?),
        None => loaded.template,
    };
    let model = args
        .weight_dtype
        .apply(loaded.model, &device, device_spec)?;
    let eos_id = match (args.no_eos, args.eos_id) {
        (true, _) => None,
        (false, Some(id)) if (id as usize) < tokenizer.vocab_size() => Some(id),
        (false, Some(id)) => bail!(
            "--eos-id {id} is not a token id: the tokenizer has {} tokens",
            tokenizer.vocab_size()
        ),
        (false, None) => tokenizer.special_id(END_OF_TEXT),
    };
    let sampling_flags: Vec<&str> = [
        ("--top-k", sampling.top_k.is_some()),
        ("--top-p", sampling.top_p.is_some()),
        ("--seed", args.seed.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    if sampling.temperature == 0.0 && !sampling_flags.is_empty() {
        let (flags, verb) = match sampling_flags.len() {
            1 => (sampling_flags[0].to_string(), "matters"),
            _ => (sampling_flags.join(", "), "matter"),
        };
        eprintln!(
            "note: {flags} only {verb} when sampling; at --temperature 0 (the default) \
             decoding is greedy: give a temperature, e.g. 0.8, to sample"
        );
    }
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        eos_id,
        seed: args.seed.unwrap_or(DEFAULT_SEED),
        use_cache: !args.no_cache,
        threads: crate::device::decode_threads(&device),
        read_every: crate::device::decode_read_every(&device),
        vocab_limit: Some(tokenizer.vocab_size()),
    };
    if let Some(instruction) = &args.instruction {
        let responder = Responder {
            model: &model,
            tokenizer: &tokenizer,
            template: template.unwrap_or_default(),
            options: options.clone(),
        };
        let query = (instruction.clone(), args.input.clone().unwrap_or_default());
        let response = responder.respond(&[query], 1, |_| {})?;
        println!("{}", response[0]);
        return Ok(());
    }
    let context = model.context_length();
    let prompts: Vec<Vec<u32>> = args.prompt.iter().map(|p| tokenizer.encode(p)).collect();
    for (i, ids) in prompts.iter().enumerate() {
        if ids.is_empty() {
            bail!("prompt {} is empty", i + 1);
        }
        if ids.len() > context {
            eprintln!(
                "warning: prompt {} has {} tokens; only its last {context} (the context length) are used",
                i + 1,
                ids.len()
            );
        }
    }

    // One prompt streams token by token; a batch prints each text when it is done.
    let stream = prompts.len() == 1;
    let mut pending: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout();
    if stream {
        print!("{}", args.prompt[0]);
        let _ = stdout.flush();
    }
    let results = generate(&model, &prompts, &options, |_, id| {
        if !stream {
            return;
        }
        if let Some(bytes) = tokenizer.token_bytes(id) {
            pending.extend_from_slice(bytes);
        }
        // Print whatever forms complete UTF-8 characters; keep a split character for later.
        let valid = match std::str::from_utf8(&pending) {
            Ok(_) => pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => pending.len(),
        };
        let chunk: Vec<u8> = pending.drain(..valid).collect();
        print!("{}", String::from_utf8_lossy(&chunk));
        let _ = stdout.flush();
    })
    .map_err(anyhow::Error::msg)?;
    if stream {
        println!("{}", String::from_utf8_lossy(&pending));
    } else {
        for (prompt, result) in args.prompt.iter().zip(&results) {
            println!("{prompt}{}", tokenizer.decode(&result.tokens)?);
            println!("---");
        }
    }
    Ok(())
}
