//! FROC and ROC plots of an evaluation, as SVG and PNG (plotters).
//!
//! `froc.svg`/`froc.png`: sensitivity against false positives per scan on LUNA16's log₂ axis from
//! 1/8 to 8, the seven operating points marked and the CPM in the legend. `roc.svg`/`roc.png`: the
//! ROC of the nodule classifier over candidates, of the malignancy model and of the diameter
//! baseline over the same nodules, each with its AUC in the legend, and the chance diagonal.
//!
//! PNG text is drawn from a font embedded in the binary (Noto Mono, SIL OFL 1.1, in
//! `assets/fonts/`), so plots render the same on a machine without any font installed. A leaky
//! evaluation puts LEAKY in every title.

use super::metrics::{interpolate, Froc, Roc};
use super::Report;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The embedded font's family name for plotters.
const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/NotoMono-Regular.ttf");
/// Pixel size of every plot.
pub const SIZE: (u32, u32) = (900, 640);

/// A plot that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded font is not a valid TrueType font".to_string())
        })
        .clone()
}

type DrawResult = Result<(), String>;

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// `2^x` as the FROC axis labels show it: 1/8, 1/4, 1/2, 1, 2, 4, 8.
fn rate_label(log2: f64) -> String {
    let v = 2f64.powf(log2);
    if v < 1.0 {
        format!("1/{}", (1.0 / v).round())
    } else {
        format!("{}", v.round())
    }
}

fn title(report: &Report, what: &str) -> String {
    let base = format!("{what}: {} scans, {} nodules", report.scans, report.nodules);
    if report.leaky {
        format!("LEAKY - {base}")
    } else {
        base
    }
}

fn draw_froc<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    froc: &Froc,
    title: &str,
) -> DrawResult {
    root.fill(&WHITE).map_err(text)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(-3.2f64..3.2f64, 0f64..1.02f64)
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_labels(7)
        .x_label_formatter(&|x| rate_label(*x))
        .y_labels(11)
        .y_label_formatter(&|y| format!("{y:.1}"))
        .x_desc("False positives per scan (log scale)")
        .y_desc("Sensitivity")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(text)?;
    let xs = &froc.curve_fp_per_scan;
    let ys = &froc.curve_sensitivity;
    let curve: Vec<(f64, f64)> = (0..=320)
        .map(|k| {
            let log2 = -3.2 + 6.4 * f64::from(k) / 320.0;
            (log2, interpolate(xs, ys, 2f64.powf(log2)))
        })
        .collect();
    let colour = BLUE.stroke_width(3);
    chart
        .draw_series(LineSeries::new(curve, colour))
        .map_err(text)?
        .label(format!("FROC, CPM = {:.3}", froc.cpm))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour));
    chart
        .draw_series(
            froc.fp_rates
                .iter()
                .zip(&froc.sensitivity)
                .map(|(&r, &s)| Circle::new((r.log2(), s), 6, BLUE.filled())),
        )
        .map_err(text)?
        .label("LUNA16 operating points")
        .legend(|(x, y)| Circle::new((x + 12, y), 5, BLUE.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 17))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(text)?;
    root.present().map_err(text)
}

fn draw_roc<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[(&str, &Roc, RGBColor)],
    title: &str,
) -> DrawResult {
    root.fill(&WHITE).map_err(text)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
        .map_err(text)?;
    chart
        .configure_mesh()
        .x_labels(11)
        .y_labels(11)
        .x_label_formatter(&|x| format!("{x:.1}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .x_desc("False-positive rate")
        .y_desc("True-positive rate")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(text)?;
    let chance = BLACK.mix(0.4).stroke_width(1);
    chart
        .draw_series(LineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], chance))
        .map_err(text)?
        .label("chance (AUC 0.5)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], chance));
    for &(name, roc, colour) in curves {
        let style = colour.stroke_width(3);
        let points: Vec<(f64, f64)> = roc
            .fpr
            .iter()
            .copied()
            .zip(roc.tpr.iter().copied())
            .collect();
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(text)?
            .label(format!(
                "{name}: AUC {:.3} ({}+ / {}-)",
                roc.auc, roc.positives, roc.negatives
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 17))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(text)?;
    root.present().map_err(text)
}

/// Draws one plot as `dir/name.svg` and `dir/name.png`.
fn both(
    dir: &Path,
    name: &str,
    svg_draw: impl Fn(&DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult,
    png_draw: impl Fn(&DrawingArea<BitMapBackend<'_>, Shift>) -> DrawResult,
) -> Result<Vec<PathBuf>, PlotError> {
    let svg = dir.join(format!("{name}.svg"));
    let png = dir.join(format!("{name}.png"));
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |message| PlotError { path, message }
    };
    svg_draw(&SVGBackend::new(&svg, SIZE).into_drawing_area()).map_err(fail(&svg))?;
    png_draw(&BitMapBackend::new(&png, SIZE).into_drawing_area()).map_err(fail(&png))?;
    Ok(vec![svg, png])
}

/// Writes the FROC plot (when there is a FROC) and the ROC plot (when there is any ROC) into
/// `dir` (created if needed). Returns the files written.
pub fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let fail = |message: String| PlotError {
        path: dir.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    register_font().map_err(fail)?;
    let mut written = Vec::new();
    if let Some(froc) = &report.curves.froc {
        let t = title(report, "FROC");
        written.extend(both(
            dir,
            "froc",
            |area| draw_froc(area, froc, &t),
            |area| draw_froc(area, froc, &t),
        )?);
    }
    let mut curves: Vec<(&str, &Roc, RGBColor)> = Vec::new();
    if let Some(r) = &report.curves.roc_nodule {
        curves.push(("nodule classifier (candidates)", r, BLUE));
    }
    if let Some(r) = &report.curves.roc_malignancy {
        curves.push(("malignancy model (nodules)", r, RED));
    }
    if let Some(r) = &report.curves.roc_diameter_baseline {
        curves.push(("diameter baseline (same nodules)", r, RGBColor(0, 140, 0)));
    }
    if !curves.is_empty() {
        let t = title(report, "ROC");
        written.extend(both(
            dir,
            "roc",
            |area| draw_roc(area, &curves, &t),
            |area| draw_roc(area, &curves, &t),
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_luna16_rates() {
        let labels: Vec<String> = (-3..=3).map(|k| rate_label(f64::from(k))).collect();
        assert_eq!(labels, ["1/8", "1/4", "1/2", "1", "2", "4", "8"]);
    }
}
