//! Latency-by-percentile plots, the way HdrHistogram draws them: x = 1/(1−p) on a log
//! axis (so 90%, 99%, 99.9% … are evenly spaced), y = latency in µs (log), every target
//! on one chart. Written as SVG and PNG with the same drawing code.
//!
//! Text is laid out with DejaVu Sans, read once from the system (Debian
//! `fonts-dejavu-core`, installed by `scripts/setup --bench`); a missing font is an error
//! naming that package, never an empty plot.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Where Debian's fonts-dejavu-core puts the font.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One curve: a target's `[percent, ns]` points.
pub struct Curve<'a> {
    pub label: String,
    pub points: &'a [(f64, u64)],
}

fn ensure_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| {
            format!("cannot read {FONT} ({e}): install fonts-dejavu-core (scripts/setup --bench)")
        })?;
        // Leaked once per process: the plotting library keeps fonts for the process lifetime.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
];

/// x coordinate of a percentile: 1/(1−p), capped so 100% sits at the right edge.
pub fn x_of(percent: f64, x_max: f64) -> f64 {
    let rest = 1.0 - percent / 100.0;
    if rest <= 0.0 {
        x_max
    } else {
        (1.0 / rest).min(x_max)
    }
}

/// Axis label of an x coordinate: the percentile it stands for.
pub fn percent_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 1e-9 {
        return "0%".into();
    }
    // 90, 99, 99.9 …: print as many decimals as the nines need.
    let decimals = (x.log10().round() as i32 - 2).max(0) as usize;
    format!("{p:.decimals$}%")
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    curves: &[Curve],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e:?}");
    area.fill(&WHITE).map_err(err)?;
    let max_p = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .filter(|&p| p < 100.0)
        .fold(99.0, f64::max);
    // Right edge: the next power of ten beyond the deepest finite percentile.
    let x_max = 10f64.powf((1.0 / (1.0 - max_p / 100.0)).log10().ceil().max(2.0));
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for c in curves {
        for &(_, ns) in c.points {
            let us = ns as f64 / 1000.0;
            lo = lo.min(us);
            hi = hi.max(us);
        }
    }
    if !lo.is_finite() {
        lo = 1.0;
        hi = 10.0;
    }
    let (lo, hi) = ((lo * 0.8).max(0.01), hi * 1.25);
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .margin_right(40)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((1f64..x_max).log_scale(), (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| percent_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .map(|&(p, ns)| (x_of(p, x_max), ns as f64 / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(c.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}

/// Write `<stem>.svg` and `<stem>.png`.
pub fn write(stem: &Path, title: &str, curves: &[Curve]) -> anyhow::Result<()> {
    ensure_font()?;
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    draw(
        SVGBackend::new(&svg, (1000, 600)).into_drawing_area(),
        title,
        curves,
    )
    .with_context(|| format!("writing {}", svg.display()))?;
    draw(
        BitMapBackend::new(&png, (1000, 600)).into_drawing_area(),
        title,
        curves,
    )
    .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_maps_nines_to_decades() {
        assert_eq!(x_of(0.0, 1e5), 1.0);
        assert!((x_of(90.0, 1e5) - 10.0).abs() < 1e-9);
        assert!((x_of(99.9, 1e5) - 1000.0).abs() < 1e-6);
        assert_eq!(x_of(100.0, 1e5), 1e5);
        assert_eq!(percent_label(1.0), "0%");
        assert_eq!(percent_label(10.0), "90%");
        assert_eq!(percent_label(100.0), "99%");
        assert_eq!(percent_label(1000.0), "99.9%");
        assert_eq!(percent_label(100000.0), "99.999%");
    }

    #[test]
    fn writes_svg_and_png() {
        if std::fs::metadata(FONT).is_err() {
            eprintln!("SKIP: {FONT} missing (install fonts-dejavu-core)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let a = [
            (0.0, 10_000),
            (50.0, 12_000),
            (99.0, 30_000),
            (99.9, 80_000),
            (100.0, 120_000),
        ];
        let b = [
            (0.0, 30_000),
            (50.0, 38_000),
            (99.0, 90_000),
            (100.0, 400_000),
        ];
        let curves = [
            Curve {
                label: "direct".into(),
                points: &a,
            },
            Curve {
                label: "floor".into(),
                points: &b,
            },
        ];
        let stem = dir.path().join("latency-closed-1");
        write(&stem, "closed:1", &curves).unwrap();
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("direct") && svg.contains("99.9%"));
        let png = std::fs::read(stem.with_extension("png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
