//! What every benchmark hands over for `--csv FILE` and `--svg FILE`: its samples, and its rows
//! as pvm-against-baseline pairs, drawn the way a paper would show them.
//!
//! The CSV has one line per sample: `bench,row,side,round,sample,metric,value`, `metric` `us`
//! for one operation: a boot, a fork's pause or child start, a round trip (pVM IPC guests time
//! theirs with the TSC and print them after their summary in the format of `pvm_abi::samples`,
//! sorted; so do the library loads of `bench dynlink`), a Linux baseline's, an update pause, a
//! network round trip. Rows also have each run's `run_median_us`/`run_p99_us`, and rates and
//! amounts per round.
//!
//! The chart has one panel for latencies (log scale, lower is better) and one per rate unit
//! (linear, higher is better). Each row is a group: pvm's bar and the baseline's side by side;
//! the bar is the median, the whisker the p99, the dots the samples (or each round's figure).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use plotters::coord::Shift;
use plotters::prelude::*;

/// `--csv` and `--svg`, shared by every benchmark.
#[derive(Args, Clone, Debug, Default)]
pub struct FigureArgs {
    /// Also write every sample to FILE as CSV (`bench,row,side,round,sample,metric,value`).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also draw the results as an SVG chart in FILE: pvm and the baseline side by side, median
    /// bars, p99 whiskers, the samples as dots.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// Errors writing the CSV or the chart.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    /// The file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The chart cannot be drawn (plotters' error, as text: its type is generic over the
    /// backend).
    #[error("cannot draw the chart {path}: {detail}")]
    Draw {
        /// The SVG file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A time in microseconds: lower is better, drawn on a log scale.
    Latency,
    /// A rate in this unit ("GB/s", "requests/s"): higher is better, drawn linear.
    Rate(&'static str),
    /// An amount in this unit ("KiB"): lower is better, drawn linear.
    Amount(&'static str),
}

/// One side of a row: median, p99 (none for a rate), and the points behind them.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// The median.
    pub median: f64,
    /// The p99 (a whisker), if the row has one.
    pub p99: Option<f64>,
    /// The samples or per-round figures, drawn as dots.
    pub dots: Vec<f64>,
}

impl Bar {
    /// A latency bar from samples: median, nearest-rank p99, every sample a dot.
    pub fn of_samples(samples: &[Duration]) -> Bar {
        let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        let stats = crate::Stats::new(samples);
        Bar {
            median: stats.median_us,
            p99: Some(stats.p99_us),
            dots: us,
        }
    }

    /// A bar from single figures (each round's rate, one amount): their median, no whisker.
    pub fn of_figures(figures: &[f64]) -> Bar {
        Bar {
            median: crate::median(figures),
            p99: None,
            dots: figures.to_vec(),
        }
    }
}

/// One row of the chart: pvm and its baseline.
#[derive(Clone, Debug)]
pub struct Group {
    /// A short label (the x axis).
    pub label: String,
    /// What it measures.
    pub kind: Kind,
    /// pvm's side, if measured.
    pub pvm: Option<Bar>,
    /// The baseline's side, if there is one.
    pub baseline: Option<Bar>,
}

/// Samples of one row, side and round, for the CSV.
#[derive(Clone, Debug)]
pub struct Samples {
    /// The row, as the table names it.
    pub row: String,
    /// "pvm", or the baseline ("linux", "redis-server"...).
    pub side: &'static str,
    /// The round, from 1.
    pub round: u32,
    /// What a value is: `us` for one operation, `run_median_us`, `gb_per_s`...
    pub metric: &'static str,
    /// The values, in the order taken.
    pub values: Vec<f64>,
}

impl Samples {
    /// One operation per value, in microseconds.
    pub fn of_durations(row: impl Into<String>, side: &'static str, round: u32, d: &[Duration]) -> Samples {
        Samples {
            row: row.into(),
            side,
            round,
            metric: "us",
            values: d.iter().map(|d| d.as_secs_f64() * 1e6).collect(),
        }
    }
}

impl Samples {
    /// One figure per round (`per_round[0]` is round 1's): a run's median, a rate...
    pub fn per_round<'a>(
        row: &str,
        side: &'static str,
        metric: &'static str,
        per_round: &'a [f64],
    ) -> impl Iterator<Item = Samples> + 'a {
        let row = row.to_string();
        per_round.iter().enumerate().map(move |(i, &v)| Samples {
            row: row.clone(),
            side,
            round: i as u32 + 1,
            metric,
            values: vec![v],
        })
    }
}

/// A benchmark's figures.
#[derive(Clone, Debug)]
pub struct Figures {
    /// The benchmark ("ipc").
    pub bench: &'static str,
    /// The chart's title.
    pub title: String,
    /// The names of the two sides in the legend: ("pVM", "Linux").
    pub sides: (&'static str, &'static str),
    /// The chart's rows.
    pub groups: Vec<Group>,
    /// The CSV's samples.
    pub samples: Vec<Samples>,
}

/// pvm's colour and the baseline's.
const COLOURS: [RGBColor; 2] = [RGBColor(52, 101, 164), RGBColor(230, 126, 34)];
/// Above this many dots in a bar they are drawn smaller.
const MANY_DOTS: usize = 40;
/// Most dots drawn for a bar: a larger set is drawn as this many evenly spaced quantiles, which
/// keeps the shape of the distribution and leaves the bar readable.
const MAX_DOTS: usize = 200;
/// About how wide a character of the title is, in pixels.
const TITLE_CHAR_WIDTH: u32 = 8;
/// Chart width per group and the margins around them, in pixels.
const GROUP_WIDTH: u32 = 170;
const MIN_WIDTH: u32 = 900;
const PANEL_HEIGHT: u32 = 420;
const TITLE_HEIGHT: u32 = 50;

impl Figures {
    /// Writes what `args` asks for; says on stderr where each went.
    pub fn write(&self, args: &FigureArgs) -> Result<(), FigureError> {
        if let Some(path) = &args.csv {
            std::fs::write(path, self.csv()).map_err(|source| FigureError::Write {
                path: path.clone(),
                source,
            })?;
            eprintln!(
                "pvmctl bench {}: samples written to {}",
                self.bench,
                path.display()
            );
        }
        if let Some(path) = &args.svg {
            self.draw_svg(path).map_err(|detail| FigureError::Draw {
                path: path.clone(),
                detail,
            })?;
            eprintln!("pvmctl bench {}: chart written to {}", self.bench, path.display());
        }
        Ok(())
    }

    /// The CSV text: a header, then one line per value.
    pub fn csv(&self) -> String {
        let mut out = String::from("bench,row,side,round,sample,metric,value\n");
        for s in &self.samples {
            let row = s.row.trim().replace('"', "\"\"");
            for (i, v) in s.values.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{},\"{row}\",{},{},{},{},{v}",
                    self.bench,
                    s.side,
                    s.round,
                    i + 1,
                    s.metric
                );
            }
        }
        out
    }

    /// The panels: latencies first, then one per rate unit, each with its groups.
    fn panels(&self) -> Vec<(Kind, Vec<&Group>)> {
        let mut panels: Vec<(Kind, Vec<&Group>)> = Vec::new();
        for g in self
            .groups
            .iter()
            .filter(|g| g.pvm.is_some() || g.baseline.is_some())
        {
            match panels.iter_mut().find(|(k, _)| *k == g.kind) {
                Some((_, groups)) => groups.push(g),
                None => panels.push((g.kind, vec![g])),
            }
        }
        panels.sort_by_key(|(k, _)| !matches!(k, Kind::Latency));
        panels
    }

    /// Draws the chart at `path`.
    pub fn draw_svg(&self, path: &Path) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let panels = self.panels();
        if panels.is_empty() {
            return Err("nothing was measured".into());
        }
        let widest = panels.iter().map(|(_, g)| g.len()).max().unwrap_or(1) as u32;
        let (pvm, baseline) = self.sides;
        let sides = if self.groups.iter().any(|g| g.baseline.is_some()) {
            format!("{pvm} (blue) and {baseline} (orange)")
        } else {
            format!("{pvm} (blue)")
        };
        let title = format!(
            "{}: {sides}; bars: median, whiskers: p99, dots: samples",
            self.title
        );
        let width = (GROUP_WIDTH * widest + 120)
            .max(MIN_WIDTH)
            .max(TITLE_CHAR_WIDTH * title.len() as u32);
        let height = TITLE_HEIGHT + PANEL_HEIGHT * panels.len() as u32;
        let root = SVGBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root.titled(&title, ("sans-serif", 15)).map_err(|e| err(&e))?;
        let areas = root.split_evenly((panels.len(), 1));
        for (area, (kind, groups)) in areas.iter().zip(&panels) {
            let (caption, unit, log) = match kind {
                Kind::Latency => (
                    "latency (lower is better)".to_string(),
                    "microseconds (log scale)".to_string(),
                    true,
                ),
                Kind::Rate(unit) => (format!("{unit} (higher is better)"), unit.to_string(), false),
                Kind::Amount(unit) => (format!("{unit} (lower is better)"), unit.to_string(), false),
            };
            panel(area, groups, &caption, &unit, log)?;
        }
        root.present().map_err(|e| err(&e))
    }
}

/// One panel: for each group, pvm's bar and the baseline's, whiskers and dots.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    groups: &[&Group],
    caption: &str,
    unit: &str,
    log: bool,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let bars = |g: &Group| [g.pvm.clone(), g.baseline.clone()];
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| bars(g))
        .flatten()
        .flat_map(|b| {
            let mut v = b.dots.clone();
            v.push(b.median);
            v.extend(b.p99);
            v
        })
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let hi = values.iter().copied().fold(0f64, f64::max).max(1e-3) * if log { 2.0 } else { 1.15 };
    let lo = values.iter().copied().fold(f64::MAX, f64::min).clamp(1e-3, hi) / 2.0;
    let n = groups.len() as f64;
    let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
    let x_fmt = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-9 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    macro_rules! body {
        ($chart:expr, $base:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(groups.len() * 2 + 1)
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&|v: &f64| crate::sig3(*v))
                .y_desc(unit)
                .draw()
                .map_err(|e| err(&e))?;
            for (g, group) in groups.iter().enumerate() {
                let sides = bars(group);
                // A bar without its pair stands in the middle of its group.
                let alone = sides.iter().filter(|b| b.is_some()).count() == 1;
                for (k, bar) in sides.iter().enumerate() {
                    let Some(bar) = bar else { continue };
                    let x0 = if alone {
                        g as f64 - 0.17
                    } else {
                        g as f64 - 0.38 + 0.38 * k as f64
                    };
                    let x1 = x0 + 0.34;
                    chart
                        .draw_series([Rectangle::new(
                            [(x0, $base), (x1, bar.median)],
                            COLOURS[k].filled(),
                        )])
                        .map_err(|e| err(&e))?;
                    let mid = (x0 + x1) / 2.0;
                    if let Some(p99) = bar.p99.filter(|p| *p > bar.median) {
                        chart
                            .draw_series([
                                PathElement::new(vec![(mid, bar.median), (mid, p99)], BLACK.stroke_width(1)),
                                PathElement::new(
                                    vec![(mid - 0.06, p99), (mid + 0.06, p99)],
                                    BLACK.stroke_width(1),
                                ),
                            ])
                            .map_err(|e| err(&e))?;
                    }
                    let dots = quantiles(&bar.dots, MAX_DOTS);
                    let (radius, style) = if dots.len() > MANY_DOTS {
                        (1, BLACK.mix(0.5).filled())
                    } else {
                        (2, BLACK.filled())
                    };
                    let spread = dots.len().max(1) as f64;
                    chart
                        .draw_series(
                            dots.iter()
                                .enumerate()
                                .filter(|(_, d)| d.is_finite() && **d > 0.0)
                                .map(|(j, d)| {
                                    let x = x0 + 0.05 + (x1 - x0 - 0.1) * (j as f64 + 0.5) / spread;
                                    Circle::new((x, *d), radius, style)
                                }),
                        )
                        .map_err(|e| err(&e))?;
                }
            }
            Ok(())
        }};
    }
    if log {
        let chart = builder
            .build_cartesian_2d(-0.5f64..n - 0.5, (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        body!(chart, lo)
    } else {
        let chart = builder
            .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..hi)
            .map_err(|e| err(&e))?;
        body!(chart, 0.0)
    }
}

/// `values` as they are if there are at most `most`, else `most` evenly spaced quantiles of them
/// (the smallest and the largest included), in order.
fn quantiles(values: &[f64], most: usize) -> Vec<f64> {
    if values.len() <= most || most < 2 {
        return values.to_vec();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len() - 1;
    (0..most).map(|i| sorted[i * last / (most - 1)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        Figures {
            bench: "test",
            title: "a test".into(),
            sides: ("pVM", "Linux"),
            groups: vec![
                Group {
                    label: "round trip".into(),
                    kind: Kind::Latency,
                    pvm: Some(Bar::of_samples(&[
                        Duration::from_micros(3),
                        Duration::from_micros(5),
                    ])),
                    baseline: Some(Bar::of_samples(&[Duration::from_micros(7)])),
                },
                Group {
                    label: "stream".into(),
                    kind: Kind::Rate("GB/s"),
                    pvm: Some(Bar::of_figures(&[1.0, 2.0, 3.0])),
                    baseline: None,
                },
            ],
            samples: vec![Samples::of_durations(
                "a \"quoted\" row",
                "pvm",
                1,
                &[Duration::from_micros(3), Duration::from_micros(5)],
            )],
        }
    }

    #[test]
    fn csv_has_a_line_per_sample() {
        let csv = figures().csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "bench,row,side,round,sample,metric,value");
        assert_eq!(lines[1], "test,\"a \"\"quoted\"\" row\",pvm,1,1,us,3");
        assert_eq!(lines[2], "test,\"a \"\"quoted\"\" row\",pvm,1,2,us,5");
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn bars_summarise() {
        let b = Bar::of_figures(&[3.0, 1.0, 2.0]);
        assert_eq!((b.median, b.p99), (2.0, None));
        let b = Bar::of_samples(&[Duration::from_micros(3), Duration::from_micros(5)]);
        assert_eq!((b.median, b.p99), (4.0, Some(5.0)));
    }

    #[test]
    fn chart_has_both_panels_and_every_label() {
        let dir = std::env::temp_dir().join(format!("pvm-bench-figures-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("chart.svg");
        figures().draw_svg(&path).expect("draws");
        let svg = std::fs::read_to_string(&path).expect("read the chart");
        let _ = std::fs::remove_dir_all(&dir);
        for text in [
            "round trip",
            "stream",
            "GB/s (higher is better)",
            "latency (lower is better)",
        ] {
            assert!(svg.contains(text), "{text} missing from the chart");
        }
        // Three bars plus the background.
        assert!(svg.matches("<rect").count() >= 4);
    }

    #[test]
    fn large_sets_are_drawn_as_quantiles() {
        let values: Vec<f64> = (0..1000).rev().map(f64::from).collect();
        let q = quantiles(&values, 5);
        assert_eq!(q, [0.0, 249.0, 499.0, 749.0, 999.0]);
        assert_eq!(quantiles(&[3.0, 1.0], 5), [3.0, 1.0]);
    }

    #[test]
    fn nothing_measured_is_an_error() {
        let mut f = figures();
        f.groups.clear();
        assert!(f.draw_svg(Path::new("/nonexistent/x.svg")).is_err());
    }
}
