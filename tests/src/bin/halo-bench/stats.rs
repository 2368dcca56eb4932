//! Summaries of measured durations, and how the bench writes them.

use std::time::Duration;

/// Order statistics of a sample, by the nearest-rank method: the p-th
/// percentile is the smallest value with at least p % of the sample at or
/// below it, so every figure is one that was measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// The summary of `sample`; `None` when it is empty.
    pub fn of(sample: &[Duration]) -> Option<Self> {
        let mut sorted = sample.to_vec();
        sorted.sort();
        let rank = |percent: usize| {
            let rank = (percent * sorted.len()).div_ceil(100).max(1);
            sorted[rank - 1]
        };
        Some(Summary {
            count: sorted.len(),
            min: *sorted.first()?,
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: *sorted.last()?,
        })
    }
}

/// A duration in milliseconds with one decimal, `503.4`.
pub fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

/// `duration` as a multiple of `unit`, `1.07`.
pub fn ratio(duration: Duration, unit: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() / unit.as_secs_f64())
}

/// A short human form of a setting's duration: `100ms`, `60s`, `10m`.
pub fn human(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        m if m >= 60_000 && m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m >= 1000 && m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`: `250ms`, `60s`,
/// `10m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: add a unit (ms, s, m or h), e.g. `60s`"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number before the unit"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_sample(values: &[u64]) -> Vec<Duration> {
        values.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn percentiles_are_measured_values_by_nearest_rank() {
        let sample = ms_sample(&(1..=200).rev().collect::<Vec<_>>());
        let summary = Summary::of(&sample).unwrap();
        assert_eq!(summary.count, 200);
        assert_eq!(summary.min, Duration::from_millis(1));
        assert_eq!(summary.p50, Duration::from_millis(100));
        assert_eq!(summary.p90, Duration::from_millis(180));
        assert_eq!(summary.p99, Duration::from_millis(198));
        assert_eq!(summary.max, Duration::from_millis(200));
    }

    #[test]
    fn one_value_is_every_percentile_and_none_is_no_summary() {
        let summary = Summary::of(&ms_sample(&[7])).unwrap();
        assert_eq!(
            (summary.min, summary.p50, summary.p99, summary.max),
            (summary.p90, summary.p90, summary.p90, summary.p90)
        );
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn durations_parse_with_their_unit_and_print_back() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }
}
