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
