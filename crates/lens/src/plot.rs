//! Figures as SVG and PNG: the token heatmap of the logit lens (layers
//! across, rank down, cells coloured by word group) and line charts of group
//! shares.
//!
//! Text in PNG files is drawn with `ab_glyph` from a TrueType file read at
//! run time (see [`FONT_CANDIDATES`]). SVG output needs the font too,
//! because plotters' chart layout measures text with it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, RGBColor};

use crate::words::Group;

/// The environment variable that names a TrueType font file to draw text with.
pub const FONT_ENV: &str = "IHS_FONT";

/// Font files tried in order when [`FONT_ENV`] is unset: `DejaVuSans.ttf` as
/// the `fonts-dejavu-core` package installs it on Debian and Ubuntu, then its
/// Fedora and Arch Linux locations.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// The family name text styles use; the font found is registered under it.
const FAMILY: &str = "sans-serif";

/// A figure that cannot be drawn or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlotError {
    #[error("no font file found to draw text with (tried {}); install one with `apt-get install fonts-dejavu-core`, or set {FONT_ENV} to a .ttf file", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    FontMissing { tried: Vec<PathBuf> },

    #[error("cannot use font file {}: {message}; set {FONT_ENV} to a valid .ttf file", path.display())]
    FontInvalid { path: PathBuf, message: String },

    #[error("cannot draw {}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
}

/// Registers the font under [`FAMILY`] once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), PlotError>> = OnceLock::new();
    REGISTERED.get_or_init(register_first_font).clone()
}

fn register_first_font() -> Result<(), PlotError> {
    let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
        Some(path) => vec![PathBuf::from(path)],
        None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    let Some(path) = candidates.iter().find(|path| path.is_file()) else {
        return Err(PlotError::FontMissing { tried: candidates });
    };
    let bytes = std::fs::read(path).map_err(|error| PlotError::FontInvalid {
        path: path.clone(),
        message: error.to_string(),
    })?;
    // plotters keeps registered fonts for the whole process and takes them
    // as 'static; this leaks one font file, once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| PlotError::FontInvalid {
        path: path.clone(),
        message: "not a TrueType or OpenType font".to_owned(),
    })
}

/// Returns the fill colour of a word group.
#[must_use]
pub fn group_color(group: Option<Group>) -> RGBColor {
    match group {
        Some(Group::Negative) => RGBColor(226, 87, 76),
        Some(Group::Positive) => RGBColor(76, 168, 88),
        Some(Group::Neutral) => RGBColor(92, 139, 214),
        None => RGBColor(190, 190, 190),
    }
}

fn draw_error(path: &Path, error: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// Something drawn the same way on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Draws `figure` once into an SVG and once into a PNG file: `stem.svg`
/// and `stem.png`. Returns the two paths.
fn write_both(
    stem: &Path,
    size: (u32, u32),
    figure: &impl Figure,
) -> Result<Vec<PathBuf>, PlotError> {
    ensure_font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    {
        let area = SVGBackend::new(&svg, size).into_drawing_area();
        figure
            .draw(&area)
            .map_err(|error| draw_error(&svg, error))?;
        area.present().map_err(|error| draw_error(&svg, error))?;
    }
    {
        let area = BitMapBackend::new(&png, size).into_drawing_area();
        figure
            .draw(&area)
            .map_err(|error| draw_error(&png, error))?;
        area.present().map_err(|error| draw_error(&png, error))?;
    }
    Ok(vec![svg, png])
}

/// Returns the width in pixels of `text` at `size` px, or `u32::MAX` when
/// it cannot be measured.
fn text_width(text: &str, size: u32) -> u32 {
    (FAMILY, size)
        .into_font()
        .box_size(text)
        .map_or(u32::MAX, |(width, _)| width)
}

/// One cell of a [`Heatmap`].
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapCell {
    /// Index into [`Heatmap::columns`].
    pub column: usize,
    /// 0-based row (rank).
    pub row: usize,
    pub text: String,
    pub group: Option<Group>,
    /// Colour strength in [0, 1], such as the share of prompts with the token.
    pub weight: f64,
}

/// A grid of token texts: one column per layer, one row per rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub title: String,
    /// Column labels, such as layer indices.
    pub columns: Vec<String>,
    pub rows: usize,
    pub cells: Vec<HeatmapCell>,
    /// A line under the title that explains the colours and numbers.
    pub note: String,
}

/// Sizes of a heatmap's parts, in pixels, chosen from its column count.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HeatmapLayout {
    font: u32,
    cell_width: u32,
    row_height: u32,
    left: u32,
    top: u32,
    bottom: u32,
    right: u32,
}

impl HeatmapLayout {
    /// Chooses sizes for `columns` columns whose widest text is `widest`
    /// pixels at 13 px. As the column count grows from 40 to 80, the font
    /// shrinks from 13 to 11 px and the maximum cell width from 110 to 76 px.
    fn new(columns: usize, widest: u32) -> Self {
        let font = match columns {
            0..=40 => 13,
            41..=60 => 12,
            _ => 11,
        };
        let max_width = match columns {
            0..=40 => 110,
            41..=60 => 90,
            _ => 76,
        };
        let scaled = widest * font / 13 + 8;
        Self {
            font,
            cell_width: scaled.clamp(34, max_width),
            row_height: font * 2,
            left: 56,
            top: 96,
            bottom: 52,
            right: 16,
        }
    }

    fn size(&self, columns: usize, rows: usize) -> (u32, u32) {
        (
            self.left + self.cell_width * columns as u32 + self.right,
            self.top + self.row_height * rows as u32 + self.bottom,
        )
    }
}

/// Shortens `text` with a trailing `…` until its width by `measure` fits in
/// `width` pixels.
fn fit_text(text: &str, width: u32, measure: impl Fn(&str) -> u32) -> String {
    if measure(text) <= width {
        return text.to_owned();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>() + "\u{2026}";
        if measure(&candidate) <= width {
            return candidate;
        }
    }
    "\u{2026}".to_owned()
}

/// Writes `heatmap` to `stem.svg` and `stem.png`.
pub fn write_heatmap(heatmap: &Heatmap, stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
    ensure_font()?;
    let widest = heatmap
        .cells
        .iter()
        .map(|cell| text_width(&cell.text, 13))
        .filter(|&width| width < u32::MAX)
        .max()
        .unwrap_or(0);
    let layout = HeatmapLayout::new(heatmap.columns.len(), widest);
    let size = layout.size(heatmap.columns.len(), heatmap.rows);
    write_both(stem, size, &HeatmapFigure { heatmap, layout })
}

struct HeatmapFigure<'a> {
    heatmap: &'a Heatmap,
    layout: HeatmapLayout,
}

impl Figure for HeatmapFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        draw_heatmap(area, self.heatmap, &self.layout)
    }
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    heatmap: &Heatmap,
    layout: &HeatmapLayout,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let font = layout.font as i32;
    let text = |size: i32| TextStyle::from((FAMILY, size).into_font()).color(&BLACK);
    let centered = |size: i32| text(size).pos(Pos::new(HPos::Center, VPos::Center));
    let left = layout.left as i32;
    let top = layout.top as i32;
    let cell_w = layout.cell_width as i32;
    let row_h = layout.row_height as i32;
    let grid_w = cell_w * heatmap.columns.len() as i32;
    let grid_h = row_h * heatmap.rows as i32;

    area.draw(&Text::new(heatmap.title.clone(), (left, 10), text(18)))?;
    area.draw(&Text::new(heatmap.note.clone(), (left, 36), text(font)))?;

    // Legend: one swatch per group.
    let mut x = left;
    for (name, group) in [
        ("negative", Some(Group::Negative)),
        ("positive", Some(Group::Positive)),
        ("neutral", Some(Group::Neutral)),
        ("other", None),
    ] {
        area.draw(&Rectangle::new(
            [(x, 58), (x + 14, 72)],
            group_color(group).mix(0.8).filled(),
        ))?;
        area.draw(&Text::new(
            name,
            (x + 20, 65),
            text(font).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += 110;
    }

    for cell in &heatmap.cells {
        let x0 = left + cell_w * cell.column as i32;
        let y0 = top + row_h * cell.row as i32;
        let strength = 0.2 + 0.7 * cell.weight.clamp(0.0, 1.0);
        area.draw(&Rectangle::new(
            [(x0, y0), (x0 + cell_w, y0 + row_h)],
            group_color(cell.group).mix(strength).filled(),
        ))?;
        let fitted = fit_text(
            &cell.text,
            layout.cell_width.saturating_sub(6),
            |candidate| text_width(candidate, layout.font),
        );
        area.draw(&Text::new(
            fitted,
            (x0 + cell_w / 2, y0 + row_h / 2),
            centered(font),
        ))?;
    }

    // Grid lines over the cells.
    let line = BLACK.mix(0.15);
    for column in 0..=heatmap.columns.len() as i32 {
        let x = left + cell_w * column;
        area.draw(&PathElement::new(vec![(x, top), (x, top + grid_h)], line))?;
    }
    for row in 0..=heatmap.rows as i32 {
        let y = top + row_h * row;
        area.draw(&PathElement::new(vec![(left, y), (left + grid_w, y)], line))?;
    }

    // Column labels above and below the grid, row labels on the left.
    for (column, label) in heatmap.columns.iter().enumerate() {
        let x = left + cell_w * column as i32 + cell_w / 2;
        area.draw(&Text::new(label.clone(), (x, top - 10), centered(font)))?;
        area.draw(&Text::new(
            label.clone(),
            (x, top + grid_h + 10),
            centered(font),
        ))?;
    }
    for row in 0..heatmap.rows {
        let y = top + row_h * row as i32 + row_h / 2;
        area.draw(&Text::new(
            row.to_string(),
            (left - 8, y),
            text(font).pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
    }
    area.draw(&Text::new(
        "layer (residual-stream index)",
        (left, top + grid_h + 26),
        text(font),
    ))?;
    area.draw(&Text::new(
        "rank",
        (8, top - 10),
        text(font).pos(Pos::new(HPos::Left, VPos::Center)),
    ))?;
    Ok(())
}

/// One line of a [`Panel`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    /// Dashed lines mark references such as an ungrafted baseline; solid
    /// lines get a dot at each point.
    pub dashed: bool,
}

/// One chart of a [`LineFigure`], with shares on a 0 to 1 axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// Charts in a grid, filled row by row, with shared axis labels. X values
/// are layer indices, so the x axis is labelled with integers.
#[derive(Debug, Clone, PartialEq)]
pub struct LineFigure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Panels per row of the grid.
    pub columns: usize,
    pub panels: Vec<Panel>,
}

impl LineFigure {
    fn grid(&self) -> (usize, usize) {
        let columns = self.columns.clamp(1, self.panels.len().max(1));
        (self.panels.len().max(1).div_ceil(columns), columns)
    }
}

/// Writes `figure` to `stem.svg` and `stem.png`.
pub fn write_lines(figure: &LineFigure, stem: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let (rows, columns) = figure.grid();
    let size = (40 + 620 * columns as u32, 40 + 460 * rows as u32);
    write_both(stem, size, figure)
}

impl Figure for LineFigure {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        draw_lines(area, self)
    }
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    figure: &LineFigure,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    area.fill(&WHITE)?;
    let area = area.titled(&figure.title, (FAMILY, 20))?;
    let panels = area.split_evenly(figure.grid());
    for (panel, panel_area) in figure.panels.iter().zip(&panels) {
        let (x_min, x_max) = panel
            .series
            .iter()
            .flat_map(|series| series.points.iter().map(|&(x, _)| x))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
        let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
            (x_min, x_max)
        } else if x_min.is_finite() {
            (x_min - 1.0, x_min + 1.0)
        } else {
            (0.0, 1.0)
        };
        let mut chart = ChartBuilder::on(panel_area)
            .caption(&panel.title, (FAMILY, 16))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .x_desc(figure.x_label.as_str())
            .y_desc(figure.y_label.as_str())
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .light_line_style(BLACK.mix(0.05))
            .draw()?;
        for series in &panel.series {
            let color = series.color;
            let style = color.stroke_width(2);
            let drawn = if series.dashed {
                chart.draw_series(DashedLineSeries::new(
                    series.points.iter().copied(),
                    8,
                    5,
                    style,
                ))?
            } else {
                chart.draw_series(
                    LineSeries::new(series.points.iter().copied(), style).point_size(3),
                )?
            };
            let dashed = series.dashed;
            drawn.label(series.name.clone()).legend(move |(x, y)| {
                let end = if dashed { x + 10 } else { x + 20 };
                PathElement::new(vec![(x, y), (end, y)], color.stroke_width(2))
            });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_shrinks_with_more_columns() {
        let narrow = HeatmapLayout::new(30, 200);
        let wide = HeatmapLayout::new(80, 200);
        assert_eq!(narrow.font, 13);
        assert_eq!(wide.font, 11);
        assert_eq!(narrow.cell_width, 110);
        assert_eq!(wide.cell_width, 76);
        // Short texts get narrow cells whatever the column count.
        assert_eq!(HeatmapLayout::new(30, 10).cell_width, 34);
        let (width, height) = wide.size(80, 10);
        assert_eq!(width, 56 + 76 * 80 + 16);
        assert_eq!(height, 96 + 22 * 10 + 52);
    }

    /// Writes an 80-layer heatmap of 10 ranks; with `IHS_TEST_FIGURES` set,
    /// into that folder so that it can be looked at.
    #[test]
    fn wide_heatmap_renders() {
        let words = [
            "Sorry",
            "sure",
            "the",
            "illegal",
            "Certainly",
            "\u{2423}",
            "assistance",
            "I",
        ];
        let groups = [
            Some(Group::Negative),
            Some(Group::Positive),
            Some(Group::Neutral),
            Some(Group::Negative),
            Some(Group::Positive),
            None,
            None,
            Some(Group::Neutral),
        ];
        let mut cells = Vec::new();
        for column in 0..80 {
            for row in 0..10 {
                let index = (column * 3 + row) % words.len();
                cells.push(HeatmapCell {
                    column,
                    row,
                    text: words[index].to_owned(),
                    group: groups[index],
                    weight: (row as f64 + 1.0) / 10.0,
                });
            }
        }
        let heatmap = Heatmap {
            title: "model: logit lens of `malicious` prompts".to_owned(),
            columns: (0..80).map(|layer| layer.to_string()).collect(),
            rows: 10,
            cells,
            note: "80 layers".to_owned(),
        };
        let temporary = tempfile::tempdir().unwrap();
        let dir = std::env::var_os("IHS_TEST_FIGURES")
            .map_or_else(|| temporary.path().to_owned(), PathBuf::from);
        std::fs::create_dir_all(&dir).unwrap();
        let files = write_heatmap(&heatmap, &dir.join("wide_heatmap")).unwrap();
        assert_eq!(files.len(), 2);
        let png = std::fs::read(&files[1]).unwrap();
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        // Cells fit "assistance" at 11 px, within the 34 to 76 px allowed
        // for 80 columns.
        assert!(
            (56 + 80 * 34 + 16..=56 + 80 * 76 + 16).contains(&width),
            "width {width}"
        );
        assert_eq!(height, 96 + 10 * 22 + 52);
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            svg.contains("\nillegal\n"),
            "cell text missing from the SVG"
        );
    }

    #[test]
    fn fit_text_truncates_with_ellipsis() {
        let measure = |text: &str| text.chars().count() as u32 * 10;
        assert_eq!(fit_text("sure", 40, measure), "sure");
        assert_eq!(fit_text("certainly", 50, measure), "cert\u{2026}");
        assert_eq!(fit_text("certainly", 5, measure), "\u{2026}");
    }
}
