//! The PNG plots: a series over the drill's time with each fault a shaded band, drawn with
//! plotters' bitmap backend in a TrueType font found on the machine and encoded as PNG.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;

use crate::Span;

/// Where Debian and Ubuntu put a sans-serif TrueType font (packages fonts-dejavu-core,
/// fonts-liberation).
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Longest time between two points of a series drawn as one line, in seconds.
pub(crate) const GAP: f64 = 5.0;

/// Size of each plot, in pixels.
pub(crate) const WIDTH: u32 = 1000;
pub(crate) const HEIGHT: u32 = 340;

pub(crate) fn register_font() -> anyhow::Result<()> {
    let path = std::env::var_os("MYSTIRA_DRILL_FONT")
        .map(PathBuf::from)
        .or_else(|| {
            FONT_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            anyhow!(
                "no TrueType font found (looked at {}): set MYSTIRA_DRILL_FONT to a .ttf file \
                 (Debian: apt-get install fonts-dejavu-core)",
                FONT_CANDIDATES.join(", ")
            )
        })?;
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    // plotters keeps a registered font for the life of the process
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow!("{} is not a font plotters can read", path.display()))
}

/// A phase line drawn as steps: each value holds until the next sample.
pub(crate) fn step_line(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, &(x, y)) in points.iter().enumerate() {
        if i > 0 {
            out.push((x, points[i - 1].1));
        }
        out.push((x, y));
    }
    out
}

/// A series cut where no point was recorded for more than `GAP` seconds (while PostgreSQL is
/// down `status` cannot answer): a line drawn across would invent the values in between.
pub(crate) fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    for &p in points {
        match out.last_mut() {
            Some(last) if last.last().is_some_and(|q| p.0 - q.0 <= GAP) => last.push(p),
            _ => out.push(vec![p]),
        }
    }
    out
}

pub(crate) type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One PNG: the series over time, each fault a shaded band with its name.
pub(crate) fn plot(
    path: &Path,
    title: &str,
    y_desc: &str,
    x_max: f64,
    y_max: Option<f64>,
    faults: &[Span],
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    let y_max = y_max.unwrap_or_else(|| {
        let m = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(0.0, f64::max);
        (m * 1.15).max(1.0)
    });
    let mut buffer = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the drill began")
            .y_desc(y_desc)
            // the fine grid only blurs the curves (and triples the PNG's size)
            .light_line_style(TRANSPARENT)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(plot_error)?;
        let band = RGBColor(255, 170, 120).mix(0.35).filled();
        for (i, f) in faults.iter().enumerate() {
            let end = f.end.max(f.start + 0.5);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(f.start, 0.0), (end, y_max)],
                    band,
                )))
                .map_err(plot_error)?;
            // staggered, so that names of faults close in time do not overlap
            let y = y_max * (0.97 - 0.08 * (i % 4) as f64);
            chart
                .draw_series(std::iter::once(Text::new(
                    f.name.clone(),
                    (f.start, y),
                    ("sans-serif", 12).into_font().color(&RGBColor(150, 60, 0)),
                )))
                .map_err(plot_error)?;
        }
        for (name, color, points) in series {
            let color = *color;
            for (i, segment) in segments(points).into_iter().enumerate() {
                let drawn = chart
                    .draw_series(LineSeries::new(segment, color.stroke_width(2)))
                    .map_err(plot_error)?;
                if i == 0 {
                    drawn
                        .label(*name)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    write_png(path, &buffer)
}

/// The RGB buffer as a PNG, at the best compression.
fn write_png(path: &Path, rgb: &[u8]) -> anyhow::Result<()> {
    let file =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(rgb)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_cut_where_samples_are_missing() {
        let cut = segments(&[(0.0, 1.0), (1.0, 1.0), (9.0, 2.0), (10.0, 2.0)]);
        assert_eq!(
            cut,
            vec![vec![(0.0, 1.0), (1.0, 1.0)], vec![(9.0, 2.0), (10.0, 2.0)]]
        );
    }

    #[test]
    fn a_phase_line_holds_each_value_until_the_next_sample() {
        assert_eq!(
            step_line(&[(0.0, 0.0), (2.0, 1.0)]),
            vec![(0.0, 0.0), (2.0, 0.0), (2.0, 1.0)]
        );
    }
}
