//! indicatif progress bars for long work (downloads, training, benchmarks).

use ember_data::datasets::FetchProgress;
use indicatif::{ProgressBar, ProgressStyle};

/// A byte-count bar for dataset fetches; hidden automatically when stderr is not a terminal.
#[derive(Default)]
pub struct FetchBar {
    bar: Option<ProgressBar>,
}

impl FetchProgress for FetchBar {
    fn start(&mut self, file: &str, source: &str, total: Option<u64>) {
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("{file} ← {source}"));
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `n` batches, in words: "1 batch", "9 batches".
pub fn batches(n: usize) -> String {
    match n {
        1 => "1 batch".into(),
        n => format!("{n} batches"),
    }
}

/// `line` above `bar`, or on stderr when there is no visible bar (not a terminal): a bar's own
/// `println` prints nothing while it is hidden.
pub fn say_above(bar: Option<&ProgressBar>, line: &str) {
    match bar {
        Some(bar) if !bar.is_hidden() => bar.println(line),
        _ => eprintln!("{line}"),
    }
}

/// Warns when some texts are longer than the `max_len` tokens a model reads. `lengths` are the
/// texts' token counts, each encoded up to one token past `max_len` (enough to tell); `limit`
/// names where `max_len` comes from ("the run's max_length").
pub fn warn_cut(
    lengths: impl Iterator<Item = anyhow::Result<usize>>,
    max_len: usize,
    limit: &str,
) -> anyhow::Result<()> {
    let (mut cut, mut total) = (0, 0);
    for len in lengths {
        cut += usize::from(len? > max_len);
        total += 1;
    }
    if cut > 0 {
        eprintln!(
            "warning: {cut} of {total} text(s) had more than {max_len} tokens ({limit}); they \
             were cut to it"
        );
    }
    Ok(())
}

/// A plain counter bar with a message.
pub fn count_bar(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// The bar of a training run: steps done, loss, learning rate and tokens/s; evaluation lines
/// are printed above it (or on stderr when it is hidden, e.g. not a terminal).
#[derive(Default)]
pub struct TrainBar {
    bar: Option<ProgressBar>,
}

impl TrainBar {
    pub fn start(&mut self, total_steps: usize, first_step: usize) {
        let bar = ProgressBar::new(total_steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps · {msg} · {elapsed_precise} eta {eta_precise}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(first_step as u64);
        self.bar = Some(bar);
    }

    pub fn step(&self, step: usize, loss: f64, lr: f64, tokens_per_s: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {loss:.3} · lr {lr:.2e} · {tokens_per_s:.0} tok/s"
            ));
        }
    }

    /// The line of an evaluation.
    pub fn eval(&self, r: &ember_train::lm::EvalRecord) {
        self.say(&format!(
            "ep {} (step {:06}): train loss {:.3}, val loss {:.3}",
            r.epoch + 1,
            r.step,
            r.train_loss,
            r.val_loss
        ));
    }

    /// A line above the bar, or on stderr when there is no visible bar.
    pub fn say(&self, line: &str) {
        say_above(self.bar.as_ref(), line);
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What a run shows after each epoch with the model in evaluation mode: a generated text,
/// fill-mask predictions, a translation.
pub trait EpochSample<M> {
    fn sample(&mut self, model: &M) -> Result<String, String>;
}

/// The observer of every training command: the bar, the evaluation lines, the per-epoch sample
/// and Ctrl-C.
pub struct TrainProgress<S> {
    bar: TrainBar,
    sampler: S,
    /// The sample after the last epoch, on one line.
    pub last_sample: String,
}

impl<S> TrainProgress<S> {
    pub fn new(sampler: S) -> Self {
        Self {
            bar: TrainBar::default(),
            sampler,
            last_sample: String::new(),
        }
    }
}

impl<M, S: EpochSample<M>> ember_train::lm::TrainObserver<M> for TrainProgress<S> {
    fn on_start(&mut self, total_steps: usize, first_step: usize) {
        self.bar.start(total_steps, first_step);
    }

    fn on_step(&mut self, step: usize, loss: f64, lr: f64, tokens_per_s: f64) {
        self.bar.step(step, loss, lr, tokens_per_s);
    }

    fn on_eval(&mut self, record: &ember_train::lm::EvalRecord) {
        self.bar.eval(record);
    }

    fn stop_requested(&self) -> bool {
        crate::interrupt::requested()
    }

    fn on_finish(&mut self) {
        self.bar.finish();
    }

    fn on_epoch_end(&mut self, epoch: usize, model: &M) {
        match self.sampler.sample(model) {
            Ok(text) => {
                // One line, as the book's generate_and_print_sample prints it: an early model
                // emits runs of newlines.
                let line = text.replace('\n', " ").trim_end().to_string();
                self.bar.say(&format!("ep {} sample: {line}", epoch + 1));
                self.last_sample = line;
            }
            Err(e) => self
                .bar
                .say(&format!("ep {} sample: <none: {e}>", epoch + 1)),
        }
    }
}
