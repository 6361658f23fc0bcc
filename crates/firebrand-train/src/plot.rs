//! Pictures of a run: loss and accuracy curves ([`History::plot`]) and the
//! confusion-matrix heatmap ([`ClassificationMetrics::plot_confusion`]), as
//! PNG or SVG by the file's extension.
//!
//! Drawn with `plotters` and text through its pure-Rust `ab_glyph` feature
//! with a bundled DejaVu Sans (`assets/DejaVuSans.ttf`, from Debian's
//! `fonts-dejavu-core`; its licence is in `assets/DejaVuSans-LICENSE`), so
//! no system font library is needed.

use crate::{ClassificationMetrics, History};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// A picture that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {problem}")]
pub struct PlotError {
    /// The file asked for.
    pub path: PathBuf,
    /// What went wrong.
    pub problem: String,
}

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            unreachable!("the bundled DejaVu Sans parses");
        }
    });
}

enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> Result<Format, PlotError> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        other => Err(PlotError {
            path: path.to_path_buf(),
            problem: format!("unknown picture format {:?}; use a .png or .svg file name", other.unwrap_or("")),
        }),
    }
}

/// Draws on either backend; the drawing code is written once against `DrawingBackend`.
trait Canvas {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws `canvas` at `size` and writes it to `path` through a temporary
/// file and a rename, so a reader never sees half a picture.
fn write_picture(path: &Path, size: (u32, u32), canvas: &impl Canvas) -> Result<(), PlotError> {
    register_font();
    let err = |problem: String| PlotError { path: path.to_path_buf(), problem };
    let format = format_of(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    // A hidden sibling that keeps the extension (plotters' encoder goes by it).
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("plot");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let tmp = path.with_file_name(format!(".{name}.tmp{}.{ext}", std::process::id()));
    match format {
        Format::Png => {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            canvas.draw(&root).map_err(err)?;
            root.present().map_err(|e| err(e.to_string()))?;
        }
        Format::Svg => {
            let root = SVGBackend::new(&tmp, size).into_drawing_area();
            canvas.draw(&root).map_err(err)?;
            root.present().map_err(|e| err(e.to_string()))?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(format!("cannot write: {e}"))
    })
}

/// A named, coloured curve of `(x, y)` points.
type Curve<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One panel of curves against the epoch (or step).
fn curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    series: &[Curve<'_>],
    legend: SeriesLabelPosition,
) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let points = series.iter().flat_map(|s| s.2.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        if y.is_finite() {
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0f64..x1 * 1.02 + 0.2, (y0 - pad)..(y1 + pad))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_labels((x1 as usize + 1).clamp(2, 10))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|x| e(&x))?;
    for (name, colour, pts) in series {
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        let style = ShapeStyle::from(*colour).stroke_width(2);
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(|x| e(&x))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

/// A history's curves; `by_step`: each record's `epoch` field is a step number.
struct HistoryCanvas<'a> {
    history: &'a History,
    by_step: bool,
}

impl Canvas for HistoryCanvas<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(|x| x.to_string())?;
        let (h, by_step) = (self.history, self.by_step);
        let x_of = |r: &crate::EpochRecord| if by_step { r.epoch as f64 } else { (r.epoch + 1) as f64 };
        let x_label = if by_step { "step" } else { "epoch" };
        let pts = |f: &dyn Fn(&crate::EpochRecord) -> Option<f32>| -> Vec<(f64, f64)> {
            h.epochs.iter().filter_map(|r| f(r).map(|v| (x_of(r), v as f64))).collect()
        };
        let mut loss = vec![("train loss", TRAIN, pts(&|r| Some(r.loss)))];
        let val_loss = pts(&|r| r.val_loss);
        if !val_loss.is_empty() {
            loss.push(("validation loss", VAL, val_loss));
        }
        let mut acc = Vec::new();
        for (name, colour, p) in
            [("train accuracy", TRAIN, pts(&|r| r.accuracy)), ("validation accuracy", VAL, pts(&|r| r.val_accuracy))]
        {
            if !p.is_empty() {
                acc.push((name, colour, p));
            }
        }
        if acc.is_empty() {
            curves(root, "loss", x_label, &loss, SeriesLabelPosition::UpperRight)
        } else {
            // Losses fall and accuracies rise: their legends go where the curves are not.
            let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
            curves(&left, "loss", x_label, &loss, SeriesLabelPosition::UpperRight)?;
            curves(&right, "accuracy", x_label, &acc, SeriesLabelPosition::LowerRight)
        }
    }
}

impl History {
    /// Draws the loss and (for classifiers) accuracy curves, training and
    /// validation, against the epoch, to a PNG or SVG file by `path`'s
    /// extension. Non-finite values are left out of the curves.
    ///
    /// ```
    /// use firebrand_train::{EpochRecord, History};
    /// let record = |epoch, loss| EpochRecord {
    ///     epoch, loss, accuracy: Some(1.0 - loss), val_loss: Some(loss + 0.1), val_accuracy: Some(0.9 - loss),
    ///     train_seconds: 1.0, lr: 1e-3, skipped_batches: 0,
    /// };
    /// let h = History { epochs: vec![record(0, 0.6), record(1, 0.4), record(2, 0.3)] };
    /// let path = std::env::temp_dir().join(format!("fb_doc_history_{}.svg", std::process::id()));
    /// h.plot(&path).unwrap();
    /// assert!(std::fs::read_to_string(&path).unwrap().contains("validation loss"));
    /// assert!(h.plot("curves.jpg").is_err()); // PNG or SVG only
    /// # std::fs::remove_file(path).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the extension is neither `png` nor `svg`, or the file cannot be written.
    pub fn plot(&self, path: impl AsRef<Path>) -> Result<(), PlotError> {
        let path = path.as_ref();
        if self.epochs.is_empty() {
            return Err(PlotError { path: path.to_path_buf(), problem: "the history has no epochs".into() });
        }
        write_picture(path, (1200, 450), &HistoryCanvas { history: self, by_step: false })
    }

    /// [`History::plot`] for runs measured in steps rather than epochs (a
    /// language model's periodic evaluations): each record's `epoch` field
    /// holds its step, which the x axis shows.
    ///
    /// # Errors
    /// As [`History::plot`].
    pub fn plot_steps(&self, path: impl AsRef<Path>) -> Result<(), PlotError> {
        let path = path.as_ref();
        if self.epochs.is_empty() {
            return Err(PlotError { path: path.to_path_buf(), problem: "the history has no records".into() });
        }
        write_picture(path, (900, 450), &HistoryCanvas { history: self, by_step: true })
    }
}

struct ConfusionCanvas<'a> {
    metrics: &'a ClassificationMetrics,
    names: Vec<String>,
    label_width: u32,
}

/// Pixels a label of `chars` characters takes at the axis font size.
fn label_pixels(chars: usize) -> u32 {
    chars as u32 * 8 + 12
}

impl Canvas for ConfusionCanvas<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |x: &dyn std::fmt::Display| x.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let m = &self.metrics.confusion;
        let k = m.len();
        let mut chart = ChartBuilder::on(root)
            .caption(format!("confusion matrix (accuracy {:.2}%)", 100.0 * self.metrics.accuracy), ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(self.label_width + 30)
            // plotters' integer ranges are inclusive: 0..k-1 holds k segments.
            .build_cartesian_2d((0..k.saturating_sub(1)).into_segmented(), (0..k.saturating_sub(1)).into_segmented())
            .map_err(|x| e(&x))?;
        let names = &self.names;
        // Rows run top to bottom: true class t sits at y = k - 1 - t.
        let name_at = |v: &SegmentValue<usize>, flip: bool| match v {
            SegmentValue::CenterOf(i) if *i < k => names[if flip { k - 1 - i } else { *i }].clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(k)
            .y_labels(k)
            .x_label_formatter(&|v| name_at(v, false))
            .y_label_formatter(&|v| name_at(v, true))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|x| e(&x))?;
        // Each row is shaded by the fraction of that true class (recall-normalized).
        let cells = (0..k).flat_map(|t| (0..k).map(move |p| (t, p)));
        let share = |t: usize, p: usize| {
            let row: usize = m[t].iter().sum();
            if row == 0 { 0.0 } else { m[t][p] as f64 / row as f64 }
        };
        chart
            .draw_series(cells.clone().map(|(t, p)| {
                let shade = (255.0 * (1.0 - share(t, p))) as u8;
                let y = k - 1 - t;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(p), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(p + 1), SegmentValue::Exact(y + 1)),
                    ],
                    RGBColor(shade, shade, 255).filled(),
                )
            }))
            .map_err(|x| e(&x))?;
        let font_size = if k <= 12 { 14 } else { 10 };
        chart
            .draw_series(cells.map(|(t, p)| {
                let colour: &'static RGBColor = if share(t, p) > 0.5 { &WHITE } else { &BLACK };
                let style = TextStyle::from(("sans-serif", font_size).into_font()).color(colour).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ),
                );
                let at = (SegmentValue::CenterOf(p), SegmentValue::CenterOf(k - 1 - t));
                EmptyElement::at(at) + Text::new(m[t][p].to_string(), (0, 0), style)
            }))
            .map_err(|x| e(&x))?;
        Ok(())
    }
}

impl ClassificationMetrics {
    /// Draws the confusion matrix as a heatmap (rows: true class, columns:
    /// predicted; each row shaded by its share, counts written in the cells)
    /// to a PNG or SVG file. `class_names` label the axes (indices when `None`).
    ///
    /// ```
    /// use firebrand_train::ClassificationMetrics;
    /// let m = ClassificationMetrics::new(&[0, 1, 1, 2], &[0, 1, 2, 2], 3);
    /// let path = std::env::temp_dir().join(format!("fb_doc_confusion_{}.svg", std::process::id()));
    /// m.plot_confusion(&path, Some(&["cat", "dog", "bird"])).unwrap();
    /// assert!(std::fs::read_to_string(&path).unwrap().contains("bird"));
    /// # std::fs::remove_file(path).unwrap();
    /// ```
    ///
    /// # Errors
    /// When the extension is neither `png` nor `svg`, the names do not match
    /// the classes, or the file cannot be written.
    pub fn plot_confusion(&self, path: impl AsRef<Path>, class_names: Option<&[&str]>) -> Result<(), PlotError> {
        let path = path.as_ref();
        let k = self.confusion.len();
        let names: Vec<String> = match class_names {
            Some(n) if n.len() != k => {
                return Err(PlotError {
                    path: path.to_path_buf(),
                    problem: format!("{} class names for {k} classes", n.len()),
                });
            }
            Some(n) => n.iter().map(|s| s.to_string()).collect(),
            None => (0..k).map(|i| i.to_string()).collect(),
        };
        let label_width = label_pixels(names.iter().map(|n| n.chars().count()).max().unwrap_or(1));
        let (cell_w, cell_h) = (label_width.max(44), 36);
        let width = (label_width + 90 + cell_w * k as u32).min(4000);
        let height = (130 + cell_h * k as u32).min(4000);
        write_picture(path, (width, height), &ConfusionCanvas { metrics: self, names, label_width })
    }
}
