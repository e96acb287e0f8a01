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

/// One line of a plot: a name and (epoch, value) points.
pub struct Curve {
    pub name: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Axes of a plot: title, y label, and the label and maximum of the top axis (a second count
/// that grows with the epochs, e.g. tokens or examples seen).
pub struct Axes {
    pub title: &'static str,
    pub y_label: &'static str,
    pub top_label: &'static str,
    pub top_max: f64,
}

/// Writes `path` (PNG, 900×540) from the evaluation records of a run. `steps_per_epoch` maps
/// steps to (fractional) epochs. The file is written to a temporary name and renamed.
pub fn plot_losses(
    records: &[EvalRecord],
    steps_per_epoch: usize,
    path: &Path,
) -> Result<(), String> {
    let epochs = |r: &EvalRecord| r.step as f64 / steps_per_epoch.max(1) as f64;
    let curve = |name, value: fn(&EvalRecord) -> f64| Curve {
        name,
        points: records.iter().map(|r| (epochs(r), value(r))).collect(),
    };
    let axes = Axes {
        title: "Loss",
        y_label: "Loss",
        top_label: "Tokens seen",
        top_max: records.iter().map(|r| r.tokens_seen).max().unwrap_or(0) as f64,
    };
    plot_curves(
        &[
            curve("Training loss", |r| r.train_loss),
            curve("Validation loss", |r| r.val_loss),
        ],
        &axes,
        path,
    )
}

/// Draws `curves` against epochs into the PNG `path` (atomically). The y range starts at 0.
pub fn plot_curves(curves: &[Curve], axes: &Axes, path: &Path) -> Result<(), String> {
    let values = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    if values.clone().next().is_none() {
        return Err(format!("{}: nothing to plot", path.display()));
    }
    register_fonts();
    let hi = values
        .clone()
        .map(|p| p.1)
        .fold(f64::NEG_INFINITY, f64::max);
    let lo = values.clone().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let (lo, hi) = (0f64.min(lo), hi * 1.05 + 1e-9);
    let max_epoch = values.map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let top_max = axes.top_max.max(1.0);
    let colors = [BLUE, RED, GREEN, MAGENTA];

    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        let draw_err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .caption(axes.title, ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(60)
            .top_x_label_area_size(45)
            .build_cartesian_2d(0f64..max_epoch, lo..hi)
            .map_err(|e| draw_err(&e))?
            .set_secondary_coord(0f64..top_max, lo..hi);
        chart
            .configure_mesh()
            .x_desc("Epochs")
            .x_label_formatter(&|v| tick_label(*v))
            .y_desc(axes.y_label)
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| draw_err(&e))?;
        chart
            .configure_secondary_axes()
            .x_desc(axes.top_label)
            .x_label_formatter(&|v| tick_label(*v))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| draw_err(&e))?;
        for (curve, color) in curves.iter().zip(colors.iter().cycle()) {
            let color = *color;
            let points: Vec<(f64, f64)> = curve
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| draw_err(&e))?
                .label(curve.name)
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

/// A tick of a count axis as a reader writes it: `2000`, `1.5`, `250k`, `1.2M` (plotters'
/// default shows `2000.0` and `1250000.0`).
fn tick_label(value: f64) -> String {
    let (scaled, suffix) = match value.abs() {
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e4 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    let text = if text == "-0" { "0" } else { text };
    format!("{text}{suffix}")
}

/// Draws attention weights `weights[row][col]` (each output token's weights over the source
/// tokens) as a heatmap PNG at `path` (atomically): rows labelled `row_labels` top to bottom,
/// columns `col_labels` left to right, darker = more weight (relative to the row's largest).
pub fn plot_attention(
    weights: &[Vec<f32>],
    row_labels: &[String],
    col_labels: &[String],
    path: &Path,
) -> Result<(), String> {
    let rows = weights.len();
    let cols = weights.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 || row_labels.len() != rows || col_labels.len() != cols {
        return Err(format!(
            "{}: attention of {rows}×{cols} with {}×{} labels",
            path.display(),
            row_labels.len(),
            col_labels.len()
        ));
    }
    register_fonts();
    let cell = 28u32;
    let (width, height) = (120 + cell * cols as u32, 90 + cell * rows as u32);
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (width, height)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (x0, y0) = (100i32, 70i32);
        let font = ("sans-serif", 15).into_font();
        for (c, label) in col_labels.iter().enumerate() {
            let x = x0 + (c as i32) * cell as i32 + cell as i32 / 3;
            root.draw(&Text::new(label.clone(), (x, y0 - 24), font.clone()))
                .map_err(|e| err(&e))?;
        }
        for (r, row) in weights.iter().enumerate() {
            let y = y0 + (r as i32) * cell as i32;
            root.draw(&Text::new(
                row_labels[r].clone(),
                (10, y + cell as i32 / 4),
                font.clone(),
            ))
            .map_err(|e| err(&e))?;
            // Scaled to the row's largest weight, so diffuse rows still show their shape.
            let top = row.iter().fold(f32::MIN_POSITIVE, |m, &w| m.max(w));
            for (c, &w) in row.iter().enumerate() {
                let x = x0 + (c as i32) * cell as i32;
                let shade = (255.0 * (1.0 - (w / top).clamp(0.0, 1.0))) as u8;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32, y + cell as i32)],
                    RGBColor(shade, shade, 255).filled(),
                ))
                .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_ticks_read_as_written() {
        let cases = [
            (0.0, "0"),
            (2000.0, "2000"),
            (1.5, "1.5"),
            (0.25, "0.25"),
            (250_000.0, "250k"),
            (1_250_000.0, "1.25M"),
            (-0.0001, "0"),
        ];
        for (value, expected) in cases {
            assert_eq!(tick_label(value), expected, "{value}");
        }
    }

    #[test]
    fn a_loss_plot_is_a_png_and_an_empty_one_an_error() {
        let dir = std::env::temp_dir().join(format!("ember-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let record = |step, loss| EvalRecord {
            step,
            epoch: 0,
            tokens_seen: step as u64 * 2048,
            train_loss: loss,
            val_loss: loss + 0.5,
            lr: 1e-4,
            tokens_per_s: 100.0,
        };
        let path = dir.join("loss.png");
        plot_losses(&[record(0, 9.0), record(5, 6.0), record(10, 4.0)], 5, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let err = plot_losses(&[], 5, &dir.join("empty.png")).unwrap_err();
        assert!(err.contains("nothing to plot"), "{err}");
        assert!(!dir.join("empty.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
