//! Summaries and formatting shared by the benchmarks: medians, nearest-rank p99, 3 significant digits.
use std::time::Duration;

/// Summary of one row, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stats {
    pub(crate) median_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) min_us: f64,
    pub(crate) mean_us: f64,
}

impl Stats {
    /// `samples` must not be empty.
    pub(crate) fn new(samples: &[Duration]) -> Stats {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let n = us.len();
        if n == 0 {
            return Stats {
                median_us: f64::NAN,
                p99_us: f64::NAN,
                min_us: f64::NAN,
                mean_us: f64::NAN,
            };
        }
        let median_us = if n % 2 == 1 {
            us[n / 2]
        } else {
            (us[n / 2 - 1] + us[n / 2]) / 2.0
        };
        // Nearest rank: the smallest value with at least 99% of the samples at or below it.
        let rank = (n * 99).div_ceil(100).max(1);
        Stats {
            median_us,
            p99_us: us[rank - 1],
            min_us: us[0],
            mean_us: us.iter().sum::<f64>() / n as f64,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); NaN if empty.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `value` with 3 significant digits.
pub(crate) fn sig3(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 {
        return format!("{value}");
    }
    let decimals = |v: f64| (2 - v.log10().floor() as i32).max(0) as usize;
    let d = decimals(value);
    let rounded: f64 = format!("{value:.d$}").parse().unwrap_or(value);
    // Rounding can add a digit (9.996 -> 10.00).
    let d = decimals(rounded);
    format!("{rounded:.d$}")
}

/// "1 round", "5 rounds".
pub(crate) fn rounds_text(n: u32) -> String {
    if n == 1 {
        "1 round".into()
    } else {
        format!("{n} rounds")
    }
}

/// `value` rounded to 3 decimals (nanoseconds, for microsecond values).
pub(crate) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// A duration given in microseconds, in us, ms or s with 3 significant digits.
pub(crate) fn format_us(us: f64) -> String {
    if us >= 999_500.0 {
        format!("{} s", sig3(us / 1e6))
    } else if us >= 999.5 {
        format!("{} ms", sig3(us / 1e3))
    } else {
        format!("{} us", sig3(us))
    }
}

/// A count of iterations, at least `min` (a command-line error otherwise).
pub(crate) fn parse_at_least(text: &str, min: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        Ok(n) => Err(format!(
            "{n} is too few: at least {min} are needed for a meaningful p99"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// How a benchmark reports a target.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// Appends the "targets" section of a benchmark report: one aligned line per
/// (target, measured value, met).
pub(crate) fn write_targets(out: &mut String, targets: &[(String, String, bool)], value_width: usize) {
    use std::fmt::Write as _;
    *out += "\ntargets:\n";
    let width = targets.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
    for (name, value, met) in targets {
        let _ = writeln!(out, "  {name:width$}  {value:>value_width$}  {}", verdict(*met));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = Stats::new(&samples);
        assert_eq!(s.median_us, 50.5);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.min_us, 1.0);
        assert_eq!(s.mean_us, 50.5);
        let s = Stats::new(&samples[..51]);
        assert_eq!(s.median_us, 75.0);
        assert_eq!(s.p99_us, 100.0);
    }

    #[test]
    fn formatting() {
        assert_eq!(format_us(587.4), "587 us");
        assert_eq!(format_us(58.74), "58.7 us");
        assert_eq!(format_us(5.874), "5.87 us");
        assert_eq!(format_us(999.7), "1.00 ms");
        assert_eq!(format_us(1234.0), "1.23 ms");
        assert_eq!(format_us(9996.0), "10.0 ms");
        assert_eq!(format_us(123_456.0), "123 ms");
        assert_eq!(format_us(2_500_000.0), "2.50 s");
        assert_eq!(sig3(3.456), "3.46");
    }
}
