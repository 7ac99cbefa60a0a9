//! `--svg FILE`: the run over time in three panels sharing the time axis: alive streams (and
//! streams started), per-event added latency p50/p99 per second, and the RSS of each sampled
//! process. Drawn with plotters' SVG backend, which writes text as `<text>` elements (no fonts
//! needed).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::Report;

const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 300;
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// One line of a panel.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
}

/// Renders the chart as an SVG document.
pub fn render_svg(report: &Report) -> Result<String, String> {
    let timeline = &report.timeline;
    let t_max = timeline
        .iter()
        .map(|s| s.t_s)
        .fold(report.elapsed_s, f64::max)
        .max(1.0);
    let streams = vec![
        Line {
            label: "alive".into(),
            points: timeline.iter().map(|s| (s.t_s, s.alive as f64)).collect(),
        },
        Line {
            label: "started".into(),
            points: timeline.iter().map(|s| (s.t_s, s.started as f64)).collect(),
        },
    ];
    let latency = |label: &str, pick: fn(&super::report::Sample) -> Option<u64>| Line {
        label: label.into(),
        points: timeline
            .iter()
            .filter_map(|s| pick(s).map(|us| (s.t_s, us as f64 / 1e3)))
            .collect(),
    };
    let latencies = vec![
        latency("p50", |s| s.latency_p50_us),
        latency("p99", |s| s.latency_p99_us),
    ];
    let rss: Vec<Line> = report
        .processes
        .iter()
        .map(|p| Line {
            label: format!("{} (pid {})", p.name, p.pid),
            points: timeline
                .iter()
                .filter_map(|s| {
                    s.processes
                        .get(&p.name)
                        .map(|point| (s.t_s, point.rss_kib as f64 / 1024.0))
                })
                .collect(),
        })
        .collect();

    let title = format!(
        "tidegate bench: {} streams over {} to {}",
        report.args.streams,
        report.args.protocol.name(),
        report.args.url
    );
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, PANEL_HEIGHT * 3 + 40)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root
            .titled(&title, ("sans-serif", 20))
            .map_err(draw_error)?;
        let panels = root.split_evenly((3, 1));
        panel(
            &panels[0],
            "streams",
            "streams",
            t_max,
            &streams,
            SeriesLabelPosition::LowerMiddle,
        )?;
        panel(
            &panels[1],
            "per-event added latency, per second (receive time - sent_us)",
            "ms",
            t_max,
            &latencies,
            SeriesLabelPosition::UpperRight,
        )?;
        panel(
            &panels[2],
            "resident memory (VmRSS)",
            "MiB",
            t_max,
            &rss,
            SeriesLabelPosition::LowerMiddle,
        )?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

fn draw_error(e: impl std::fmt::Debug) -> String {
    format!("cannot draw the chart: {e:?}")
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    unit: &str,
    t_max: f64,
    lines: &[Line],
    legend: SeriesLabelPosition,
) -> Result<(), String> {
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(unit)
        .draw()
        .map_err(draw_error)?;
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(draw_error)?
            .label(line.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    Ok(())
}

/// Writes the chart to `path`.
pub fn write_svg(path: &Path, report: &Report) -> Result<(), String> {
    let svg = render_svg(report)?;
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
