//! `timeline.svg`: usage, working set, the injector's memory and the limit over time, each OOM
//! kill a labelled marker, stages as shaded bands; below, memory PSI (some and full, a held
//! level drawn as its ±20 % band), then the reclaim rate. Drawn with
//! plotters' SVG backend, which needs no system fonts.

use plotters::{
    chart::{ChartContext, DualCoordChartContext},
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
};

use super::timeline::{CgroupSample, Mark, RunReport};

const MIB: f64 = 1_048_576.0;
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 960;

#[derive(Debug, thiserror::Error)]
#[error("drawing the timeline: {0}")]
pub struct PlotError(String);

fn err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError(format!("{e:?}"))
}

const USAGE: RGBColor = RGBColor(31, 119, 180);
const WORKING_SET: RGBColor = RGBColor(44, 160, 44);
const INJECTED: RGBColor = RGBColor(255, 127, 14);
const LIMIT: RGBColor = RGBColor(214, 39, 40);
const RECLAIM: RGBColor = RGBColor(148, 103, 189);
const APP_KILL: RGBColor = RGBColor(0, 0, 0);
const PASSES: RGBColor = RGBColor(140, 86, 75);
const PSI_SOME: RGBColor = RGBColor(23, 190, 207);
const PSI_FULL: RGBColor = RGBColor(188, 189, 34);

/// The timeline as an SVG document.
pub fn timeline_svg(r: &RunReport) -> Result<String, PlotError> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (upper, rest) = root.split_vertically(540);
        let (middle, lower) = rest.split_vertically(200);
        draw_memory(&upper, r)?;
        draw_psi(&middle, r)?;
        draw_reclaim(&lower, r)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

fn x_end(r: &RunReport) -> f64 {
    (r.end() * 1.02).max(1.0)
}

/// The memory panel's chart: seconds across, MiB up.
type MemoryChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn draw_memory<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    r: &RunReport,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let xmax = x_end(r);
    let top = r
        .samples
        .iter()
        .map(|s| {
            s.usage_bytes
                .max(s.injected_bytes)
                .max(s.limit_bytes.unwrap_or(0))
        })
        .chain(r.limit_bytes)
        .max()
        .unwrap_or(1 << 20) as f64
        / MIB;
    // Headroom above the limit for the legend and the stage names.
    let ymax = (top * 1.4).max(1.0);
    let title = format!(
        "oomlab run {}: cgroup {} ({}), kernel {}",
        r.experiment, r.cgroup, r.cgroup_version, r.kernel
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MiB")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    draw_stage_bands(&mut chart, r, ymax)?;
    draw_memory_lines(&mut chart, r)?;
    draw_kills(&mut chart, r)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::Coordinate(8, 24))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Stages: alternate light bands with their names on top.
fn draw_stage_bands<DB: DrawingBackend>(
    chart: &mut MemoryChart<'_, DB>,
    r: &RunReport,
    ymax: f64,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    for (i, s) in r.stages.iter().enumerate() {
        let shade = if i % 2 == 0 {
            RGBColor(235, 240, 248)
        } else {
            RGBColor(248, 244, 232)
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(s.start, 0.0), (s.end, ymax)],
                shade.filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}: {}", i + 1, s.name),
                (s.start + 0.05, ymax * 0.985),
                ("sans-serif", 12).into_font().color(&BLACK.mix(0.7)),
            )))
            .map_err(err)?;
    }
    Ok(())
}

/// Usage, working set, the workers' memory and the limit, each with a legend entry.
fn draw_memory_lines<DB: DrawingBackend>(
    chart: &mut MemoryChart<'_, DB>,
    r: &RunReport,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    type Value = fn(&CgroupSample) -> u64;
    let series = |f: Value| {
        r.samples
            .iter()
            .map(move |s| (s.t, f(s) as f64 / MIB))
            .collect::<Vec<_>>()
    };
    // (value, colour, line width, legend width, label) of the byte series in the top panel.
    let lines: [(Value, _, u32, u32, &str); 3] = [
        (|s| s.usage_bytes, USAGE, 4, 4, "usage"),
        (|s| s.working_set_bytes, WORKING_SET, 1, 2, "working set"),
        (
            |s| s.injected_bytes,
            INJECTED,
            2,
            2,
            "injected (workers' RSS)",
        ),
    ];
    for (value, colour, width, legend_width, label) in lines {
        chart
            .draw_series(LineSeries::new(series(value), colour.stroke_width(width)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(legend_width))
            });
    }
    let limit: Vec<(f64, f64)> = r
        .samples
        .iter()
        .filter_map(|s| s.limit_bytes.map(|l| (s.t, l as f64 / MIB)))
        .collect();
    if !limit.is_empty() {
        chart
            .draw_series(DashedLineSeries::new(limit, 8, 5, LIMIT.stroke_width(2)))
            .map_err(err)?
            .label("limit")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], LIMIT.stroke_width(2)));
    }
    Ok(())
}

/// OOM kills: a cross on the usage line at that moment. App kills are labelled, and so is the
/// first worker kill of each stage: a sawtooth of labels would hide the lines.
fn draw_kills<DB: DrawingBackend>(
    chart: &mut MemoryChart<'_, DB>,
    r: &RunReport,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let kills: Vec<&Mark> = r.marks.iter().filter(|m| m.kind == "oom_kill").collect();
    let usage_at = |t: f64| {
        r.samples
            .iter()
            .min_by(|a, b| (a.t - t).abs().total_cmp(&(b.t - t).abs()))
            .map_or(0.0, |s| s.usage_bytes as f64 / MIB)
    };
    let mut labelled_stages = Vec::new();
    for k in &kills {
        let is_app = k.role.as_deref().is_some_and(|r| r.starts_with("app"));
        let color = if is_app { APP_KILL } else { LIMIT };
        let label = is_app || !labelled_stages.contains(&k.stage);
        if !is_app {
            labelled_stages.push(k.stage);
        }
        let marker =
            EmptyElement::at((k.t, usage_at(k.t))) + Cross::new((0, 0), 6, color.stroke_width(3));
        if label {
            let dy = if is_app { 20 } else { -18 };
            let text = kill_label(k, &kills, is_app);
            chart
                .draw_series(std::iter::once(
                    marker + Text::new(text, (8, dy), ("sans-serif", 13).into_font().color(&color)),
                ))
                .map_err(err)?;
        } else {
            chart.draw_series(std::iter::once(marker)).map_err(err)?;
        }
    }
    if !kills.is_empty() {
        // A legend entry for the markers.
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(err)?
            .label("OOM kill (red: worker, black: app)")
            .legend(|(x, y)| Cross::new((x + 9, y), 5, LIMIT.stroke_width(3)));
    }
    Ok(())
}

/// "OOM kill: worker 443160 (1st of 3 in this stage)".
fn kill_label(k: &Mark, kills: &[&Mark], is_app: bool) -> String {
    let n = kills
        .iter()
        .filter(|o| o.stage == k.stage && o.role == k.role)
        .count();
    let more = if !is_app && n > 1 {
        format!(" (1st of {n} in this stage)")
    } else {
        String::new()
    };
    format!("OOM kill: {}{more}", k.label)
}

/// The PSI panel: some and full over the last second, percent of wall time; each stage that
/// held a level shows it as a band (±20 %, what counts as reached) over the stage's time.
fn draw_psi<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    r: &RunReport,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let xmax = x_end(r);
    let some: Vec<(f64, f64)> = r
        .samples
        .iter()
        .filter_map(|s| Some((s.t, s.psi_some_pct?)))
        .collect();
    let full: Vec<(f64, f64)> = r
        .samples
        .iter()
        .filter_map(|s| Some((s.t, s.psi_full_pct?)))
        .collect();
    let targets: Vec<(f64, f64, f64)> = r
        .stages
        .iter()
        .filter_map(|st| Some((st.start, st.end, st.pressure_target?.pct)))
        .collect();
    let top = some
        .iter()
        .chain(&full)
        .map(|p| p.1)
        .chain(targets.iter().map(|t| t.2 * 1.2))
        .fold(0.0, f64::max);
    let ymax = (top * 1.15).clamp(5.0, 100.0);
    let node = r
        .stages
        .iter()
        .filter_map(|st| st.pressure.as_ref()?.psi)
        .any(|p| p.scope == crate::cgroup::PsiScope::Node);
    let caption = match (some.is_empty(), node) {
        (true, _) => "memory PSI: not available (no PSI in this kernel)",
        (false, true) => "memory PSI of the whole node (cgroup v1 has no per-cgroup PSI): % of wall time stalled, last second",
        (false, false) => "memory PSI of the target: % of wall time stalled, last second",
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .y_desc("% stalled")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for &(a, b, pct) in &targets {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, pct * 0.8), (b, (pct * 1.2).min(ymax))],
                PSI_SOME.mix(0.15).filled(),
            )))
            .map_err(err)?;
    }
    if !targets.is_empty() {
        chart
            .draw_series(targets.iter().map(|&(a, b, pct)| {
                PathElement::new(vec![(a, pct), (b, pct)], PSI_SOME.mix(0.6).stroke_width(1))
            }))
            .map_err(err)?
            .label("target (band: ±20 %)")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 4), (x + 18, y + 4)], PSI_SOME.mix(0.2).filled())
            });
    }
    if !some.is_empty() {
        chart
            .draw_series(LineSeries::new(some, PSI_SOME.stroke_width(2)))
            .map_err(err)?
            .label("PSI some")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], PSI_SOME.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(full, PSI_FULL.stroke_width(2)))
            .map_err(err)?
            .label("PSI full")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], PSI_FULL.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// The reclaim panel's chart: MiB/s reclaimed on the left axis, passes/s on the right.
type ReclaimChart<'a, DB> = DualCoordChartContext<
    'a,
    DB,
    Cartesian2d<RangedCoordf64, RangedCoordf64>,
    Cartesian2d<RangedCoordf64, RangedCoordf64>,
>;

fn draw_reclaim<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    r: &RunReport,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let xmax = x_end(r);
    let points: Vec<(f64, f64)> = r
        .samples
        .iter()
        .filter_map(|s| {
            s.reclaim_pages_per_s
                .map(|p| (s.t, p * crate::sys::page_size() as f64 / MIB))
        })
        .collect();
    let passes: Vec<(f64, f64)> = r
        .samples
        .iter()
        .filter_map(|s| s.reclaim_passes_per_s.map(|p| (s.t, p)))
        .collect();
    let top = |v: &[(f64, f64)]| (v.iter().map(|p| p.1).fold(0.0, f64::max) * 1.15).max(1.0);
    let (ymax, pmax) = (top(&points), top(&passes));
    let caption = if points.is_empty() && passes.is_empty() {
        "reclaim: not available (no reclaim events from this kernel, cgroup v1 keeps no pgsteal)"
    } else {
        "reclaim in the target: MiB/s reclaimed (left), reclaim passes/s, the kernel trying (right)"
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?
        .set_secondary_coord(0f64..xmax, 0f64..pmax);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MiB/s reclaimed")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("reclaim passes/s")
        .draw()
        .map_err(err)?;
    draw_reclaim_series(&mut chart, r, ymax, points, passes)
}

/// A faint line at each OOM kill, then the two rates, and the legend when there is data.
fn draw_reclaim_series<'a, DB: DrawingBackend + 'a>(
    chart: &mut ReclaimChart<'a, DB>,
    r: &RunReport,
    ymax: f64,
    points: Vec<(f64, f64)>,
    passes: Vec<(f64, f64)>,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    for k in r.marks.iter().filter(|m| m.kind == "oom_kill") {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(k.t, 0.0), (k.t, ymax)],
                LIMIT.mix(0.2),
            )))
            .map_err(err)?;
    }
    if !passes.is_empty() {
        chart
            .draw_secondary_series(LineSeries::new(passes, PASSES.mix(0.6).stroke_width(1)))
            .map_err(err)?
            .label("reclaim passes/s (right axis)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], PASSES.stroke_width(2)));
    }
    if !points.is_empty() {
        chart
            .draw_series(LineSeries::new(points, RECLAIM.stroke_width(2)))
            .map_err(err)?
            .label("MiB/s reclaimed")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RECLAIM.stroke_width(2)));
    }
    if !r.samples.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{super::fixture, *};

    #[test]
    fn svg_has_the_series_and_the_markers() {
        let r = fixture::report();
        let svg = timeline_svg(&r).expect("draws");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for needle in [
            "usage",
            "working set",
            "injected (workers&apos; RSS)",
            "limit",
            "OOM kill: worker 443160",
            "OOM kill: node 441060",
            "MiB/s reclaimed",
            "reclaim passes/s (right axis)",
            "1: 4 workers, 200 MiB in total",
            "PSI some",
            "PSI full",
            "target (band: ±20 %)",
            "memory PSI of the whole node",
        ] {
            assert!(
                svg.contains(needle) || svg.contains(&needle.replace("&apos;", "'")),
                "{needle:?} missing from the SVG"
            );
        }
        assert!(
            svg.matches("<polyline").count() >= 4,
            "line series are polylines"
        );
    }

    #[test]
    fn empty_report_still_draws() {
        let mut r = fixture::report();
        r.samples.clear();
        r.marks.clear();
        r.stages.clear();
        let svg = timeline_svg(&r).expect("draws");
        assert!(svg.contains("not available"));
    }
}
