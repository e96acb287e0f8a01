//! `ember score`: how well a model predicts a text (loss per token, perplexity).

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use clap::Args;

use crate::device;
use crate::runs::load_gpt;

#[derive(Args)]
pub struct ScoreArgs {
    /// Run directory (latest checkpoint).
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    checkpoint: Option<PathBuf>,
    /// Pretrained weights: a HuggingFace GPT-2 directory or a run directory.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// The text to score.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    text: Option<String>,
    /// A UTF-8 file to score.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print JSON: token ids, each predicted token's negative log-likelihood, the mean.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ScoreArgs, device_spec: &str) -> Result<()> {
    let device = device::parse_device(device_spec)?;
    let source = args
        .checkpoint
        .as_ref()
        .or(args.weights.as_ref())
        .expect("clap requires --checkpoint or --weights");
    let loaded = load_gpt(source, &device, None)?;
    let tokenizer = loaded.tokenizer()?;
    let text = match (&args.text, &args.file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => ember_data::read_text_file(path)?,
        (None, None) => unreachable!("clap requires --text or --file"),
    };
    let ids = tokenizer.encode(&text);
    if ids.len() < 2 {
        bail!(
            "the text has {} token(s); scoring needs at least 2 (each token is predicted from those before it)",
            ids.len()
        );
    }
    let context = loaded.model.context_length();
    // Windows of context + 1 tokens overlapping by one: every token after the first is
    // predicted exactly once, from up to `context` tokens before it.
    let mut nll = Vec::with_capacity(ids.len() - 1);
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + context + 1).min(ids.len());
        let window = &ids[start..end];
        let n = window.len() - 1;
        let to_tensor = |slice: &[u32]| {
            let values: Vec<i64> = slice.iter().map(|&t| i64::from(t)).collect();
            Tensor::<2, Int>::from_data(TensorData::new(values, [1, slice.len()]), &device)
        };
        let log_probs = log_softmax(loaded.model.forward(to_tensor(&window[..n])), 2);
        let picked = log_probs.gather(2, to_tensor(&window[1..]).reshape([1, n, 1]));
        let values = picked
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading log-probabilities: {e:?}"))?;
        nll.extend(values.iter().map(|&lp| -f64::from(lp)));
        start = end - 1;
    }
    let loss = nll.iter().sum::<f64>() / nll.len() as f64;
    if args.json {
        let json = serde_json::json!({ "tokens": ids, "nll": nll, "loss": loss });
        println!("{json}");
    } else {
        println!(
            "{} tokens, {} predicted: loss {loss:.4} nats/token, perplexity {:.2}",
            ids.len(),
            nll.len(),
            loss.exp()
        );
    }
    Ok(())
}
