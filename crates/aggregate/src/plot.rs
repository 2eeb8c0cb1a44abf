//! Line charts of probe accuracy, written as SVG and PNG.
//!
//! plotters draws text through `ab_glyph` from a TrueType file that is read
//! at run time, found through [`FONT_ENV`] or [`FONT_CANDIDATES`]. Both
//! formats need it, because the chart layout measures text with that font.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// The environment variable that names a TrueType font file to draw text with.
pub const FONT_ENV: &str = "IHS_FONT";

/// Font files tried in order when [`FONT_ENV`] is unset: `DejaVuSans.ttf` where
/// Debian and Ubuntu (`fonts-dejavu-core`), Fedora and Arch Linux install it.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// The family name that text styles use; the font found is registered
/// under it.
const FAMILY: &str = "sans-serif";

/// Chart size in pixels.
const SIZE: (u32, u32) = (960, 600);

/// Line colours: the ten colours of matplotlib's `tab10` cycle, so that the
/// notebook's redrawn charts use the same colour for each model.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A chart that cannot be drawn or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlotError {
    #[error("no font file found to draw chart text with (tried {}); install one with `apt-get install fonts-dejavu-core`, or set {FONT_ENV} to a .ttf file", list_paths(tried))]
    FontMissing { tried: Vec<PathBuf> },

    #[error("cannot use font file {}: {message}; set {FONT_ENV} to a valid .ttf file", path.display())]
    FontInvalid { path: PathBuf, message: String },

    #[error("cannot draw {}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
}

fn list_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    names.join(", ")
}

/// Registers the font under [`FAMILY`], once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), PlotError>> = OnceLock::new();
    REGISTERED.get_or_init(register_font_file).clone()
}

fn register_font_file() -> Result<(), PlotError> {
    let tried: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
        Some(path) => vec![PathBuf::from(path)],
        None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    let Some(path) = tried.iter().find(|path| path.is_file()).cloned() else {
        return Err(PlotError::FontMissing { tried });
    };
    let bytes = std::fs::read(&path).map_err(|error| PlotError::FontInvalid {
        path: path.clone(),
        message: error.to_string(),
    })?;
    // plotters keeps registered fonts for the life of the process and
    // requires 'static bytes, so the file is leaked once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| PlotError::FontInvalid {
        path,
        message: "not a TrueType or OpenType font".to_owned(),
    })
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    /// Index into the colour cycle; curves of the same model share it.
    pub color: usize,
    pub dashed: bool,
    /// `(x, accuracy)` points, sorted by x.
    pub points: Vec<(f64, f64)>,
}

/// The quantity on the x axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum XAxis {
    /// Layer indices from 0 to the given max layer.
    Layer { max: i32 },
    /// Depth (layer / blocks) from 0 to 1.
    Depth,
}

/// An accuracy chart: y from 0 to 1, an optional threshold line and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyChart {
    pub title: String,
    pub x_axis: XAxis,
    pub y_label: String,
    pub curves: Vec<Curve>,
    /// Drawn as a grey dashed horizontal line when set.
    pub threshold: Option<f64>,
}

impl AccuracyChart {
    fn x_range(&self) -> Range<f64> {
        match self.x_axis {
            XAxis::Layer { max } => 0.0..f64::from(max.max(1)),
            XAxis::Depth => 0.0..1.0,
        }
    }

    fn x_label(&self) -> &'static str {
        match self.x_axis {
            XAxis::Layer { .. } => "layer (0 = embeddings)",
            XAxis::Depth => "depth (layer / blocks)",
        }
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        area.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, (FAMILY, 24).into_font())
            .margin(20)
            .x_label_area_size(56)
            .y_label_area_size(72)
            .build_cartesian_2d(self.x_range(), 0.0..1.0_f64)?;

        let is_layer = matches!(self.x_axis, XAxis::Layer { .. });
        let x_format = move |x: &f64| {
            if is_layer {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        };
        let x_labels = match self.x_axis {
            // One label per layer up to 16 layers, then about 16 labels.
            XAxis::Layer { max } => (max.max(1) as usize + 1).min(17),
            XAxis::Depth => 11,
        };
        chart
            .configure_mesh()
            .x_desc(self.x_label())
            .y_desc(&self.y_label)
            .x_labels(x_labels)
            .y_labels(11)
            .x_label_formatter(&x_format)
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 18))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(TRANSPARENT)
            .draw()?;

        if let Some(threshold) = self.threshold {
            let (x_start, x_end) = (self.x_range().start, self.x_range().end);
            let grey = RGBColor(110, 110, 110);
            chart
                .draw_series(DashedLineSeries::new(
                    [(x_start, threshold), (x_end, threshold)],
                    6,
                    4,
                    grey.stroke_width(1),
                ))?
                .label(format!("threshold {threshold}"))
                .legend(move |(x, y)| dashed_legend((x, y), grey.stroke_width(1)));
        }

        for curve in &self.curves {
            let color = PALETTE[curve.color % PALETTE.len()];
            let style = color.stroke_width(2);
            let points = curve.points.iter().copied();
            if curve.dashed {
                chart
                    .draw_series(DashedLineSeries::new(points, 8, 5, style))?
                    .label(curve.label.clone())
                    .legend(move |(x, y)| dashed_legend((x, y), style));
            } else {
                chart
                    .draw_series(LineSeries::new(points, style).point_size(3))?
                    .label(curve.label.clone())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
            }
        }

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 16))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        Ok(())
    }
}

/// Two line segments drawn relative to one backend pixel.
type Dashes<DB> = ComposedElement<(i32, i32), DB, PathElement<(i32, i32)>, PathElement<(i32, i32)>>;

/// Returns a legend sample of a dashed line: two 10-pixel dashes.
fn dashed_legend<DB: DrawingBackend>((x, y): (i32, i32), style: ShapeStyle) -> Dashes<DB> {
    EmptyElement::at((x, y))
        + PathElement::new([(0, 0), (10, 0)], style)
        + PathElement::new([(14, 0), (24, 0)], style)
}

fn draw_error(path: &Path, error: &impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// Draws `chart` into `dir/name.svg` and `dir/name.png` and returns the
/// two paths.
pub fn write_chart(
    dir: &Path,
    name: &str,
    chart: &AccuracyChart,
) -> Result<[PathBuf; 2], PlotError> {
    ensure_font()?;
    let svg = dir.join(format!("{name}.svg"));
    let png = dir.join(format!("{name}.png"));
    {
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        chart
            .draw(&area)
            .map_err(|error| draw_error(&svg, &error))?;
        area.present().map_err(|error| draw_error(&svg, &error))?;
    }
    {
        let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
        chart
            .draw(&area)
            .map_err(|error| draw_error(&png, &error))?;
        area.present().map_err(|error| draw_error(&png, &error))?;
    }
    Ok([svg, png])
}
