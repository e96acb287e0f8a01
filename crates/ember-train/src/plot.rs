//! The loss plot of a run: training and validation loss against epochs (bottom axis) and tokens
//! seen (top axis), like the book's figure 5.12. Drawn with plotters into a PNG with an embedded
//! DejaVu font, so no system fonts or libraries are needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::lm::EvalRecord;

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans is a valid TrueType font; registration cannot fail on it.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Writes `path` (PNG, 900×540) from the evaluation records of a run. `steps_per_epoch` maps
/// steps to (fractional) epochs. The file is written to a temporary name and renamed.
pub fn plot_losses(
    records: &[EvalRecord],
    steps_per_epoch: usize,
    path: &Path,
) -> Result<(), String> {
    if records.is_empty() {
        return Err("no evaluation records to plot".into());
    }
    register_fonts();
    let epochs = |r: &EvalRecord| r.step as f64 / steps_per_epoch.max(1) as f64;
    let finite = |x: f64| x.is_finite();
    let losses = records
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .filter(|x| finite(*x));
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (lo, hi) = if lo.is_finite() {
        (0f64.min(lo), hi * 1.05)
    } else {
        (0.0, 1.0)
    };
    let max_epoch = records.iter().map(epochs).fold(0.0, f64::max).max(1e-9);
    let max_tokens = records
        .iter()
        .map(|r| r.tokens_seen)
        .max()
        .unwrap_or(0)
        .max(1) as f64;

    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        let draw_err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .caption("Loss", ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(60)
            .top_x_label_area_size(45)
            .build_cartesian_2d(0f64..max_epoch, lo..hi)
            .map_err(|e| draw_err(&e))?
            .set_secondary_coord(0f64..max_tokens, lo..hi);
        chart
            .configure_mesh()
            .x_desc("Epochs")
            .y_desc("Loss")
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| draw_err(&e))?;
        chart
            .configure_secondary_axes()
            .x_desc("Tokens seen")
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| draw_err(&e))?;
        let series = [
            (
                "Training loss",
                BLUE,
                records.iter().map(|r| r.train_loss).collect::<Vec<_>>(),
            ),
            (
                "Validation loss",
                RED,
                records.iter().map(|r| r.val_loss).collect(),
            ),
        ];
        for (name, color, values) in series {
            let points: Vec<(f64, f64)> = records
                .iter()
                .zip(values)
                .filter(|(_, v)| v.is_finite())
                .map(|(r, v)| (epochs(r), v))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| draw_err(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| draw_err(&e))?;
        root.present().map_err(|e| draw_err(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
