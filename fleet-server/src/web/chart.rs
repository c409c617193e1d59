//! Telemetry charts as server-rendered SVG, each with its numbers in a table beside it (pure):
//! a device's points bucketed by time per series, averaged, drawn as a line.

use std::collections::BTreeMap;

use fleet_proto::telemetry::{Point, Value};
use fleet_proto::UnixMillis;
use maud::{html, Markup};

use super::layout::exact;

/// Buckets per chart: one every 30 s over an hour, every 12 min over a day.
pub const BUCKETS: usize = 120;
/// Series drawn per page (the host's first, then the apps' in name order).
pub const MAX_SERIES: usize = 12;
/// The host metrics every agent reports, in the order they are drawn.
const HOST_FIRST: [&str; 4] =
    ["host.cpu.percent", "host.mem.available_bytes", "host.disk.free_bytes", "host.temp.celsius"];

/// A window the device page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// As in the URL (`?range=`).
    pub name: &'static str,
    /// Its length.
    pub millis: u64,
}

/// The windows, shortest first; the middle one is the default.
pub const RANGES: [Range; 3] = [
    Range { name: "1h", millis: 3_600_000 },
    Range { name: "24h", millis: 86_400_000 },
    Range { name: "7d", millis: 7 * 86_400_000 },
];

/// The range called `name`, or 24 h.
pub fn range(name: &str) -> Range {
    RANGES.into_iter().find(|r| r.name == name).unwrap_or(RANGES[1])
}

/// One series, bucketed: the average of its numbers in each bucket, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `metric{k=v,...}`.
    pub key: String,
    /// Averages per bucket, oldest first.
    pub buckets: Vec<Option<f64>>,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::F64(x) if x.is_finite() => Some(*x),
        #[allow(clippy::cast_precision_loss)] // a chart, not an account
        Value::I64(x) => Some(*x as f64),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The numeric series among `points` in `[to - range, to)`, bucketed; host metrics first, at
/// most [`MAX_SERIES`].
pub fn bucket(points: &[Point], range: Range, to: UnixMillis) -> Vec<Series> {
    let from = to.0.saturating_sub(range.millis);
    let width = (range.millis / BUCKETS as u64).max(1);
    let mut sums: BTreeMap<String, Vec<(f64, u32)>> = BTreeMap::new();
    for p in points {
        let (Some(x), true) = (number(&p.value), (from..to.0).contains(&p.at.0)) else { continue };
        let key = crate::telemetry::series_key(p);
        let slot = usize::try_from((p.at.0 - from) / width).unwrap_or(BUCKETS - 1).min(BUCKETS - 1);
        let row = sums.entry(key).or_insert_with(|| vec![(0.0, 0); BUCKETS]);
        row[slot].0 += x;
        row[slot].1 += 1;
    }
    let rank = |key: &str| {
        HOST_FIRST
            .iter()
            .position(|m| key == *m || key.starts_with(&format!("{m}{{")))
            .unwrap_or(HOST_FIRST.len())
    };
    let mut series: Vec<Series> = sums
        .into_iter()
        .map(|(key, row)| Series {
            buckets: row.into_iter().map(|(s, n)| (n > 0).then(|| s / f64::from(n))).collect(),
            key,
        })
        .collect();
    series.sort_by(|a, b| rank(&a.key).cmp(&rank(&b.key)).then_with(|| a.key.cmp(&b.key)));
    series.truncate(MAX_SERIES);
    series
}

fn fmt(x: f64) -> String {
    if x.abs() >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x.abs() >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x.abs() >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.2}")
    }
}

/// One chart: the line, its range in words for screen readers, and the numbers in a table.
pub fn chart(series: &Series, range: Range, to: UnixMillis) -> Markup {
    let known: Vec<f64> = series.buckets.iter().flatten().copied().collect();
    let (min, max) =
        known.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    let span = if max > min { max - min } else { 1.0 };
    let last = known.last().copied().unwrap_or(0.0);
    // 600 × 100 units; y grows downwards.
    let mut path = String::new();
    let mut pen_down = false;
    for (i, b) in series.buckets.iter().enumerate() {
        match b {
            Some(x) => {
                let px = i * 600 / (BUCKETS - 1);
                let py = 95.0 - (x - min) / span * 90.0;
                path.push_str(&format!("{}{px},{py:.1} ", if pen_down { "L" } else { "M" }));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    let from = to.0.saturating_sub(range.millis);
    let width = range.millis / BUCKETS as u64;
    let summary = format!(
        "{}: from {} to {} over {}, last {}",
        series.key,
        fmt(min),
        fmt(max),
        range.name,
        fmt(last)
    );
    html! {
        figure.chart {
            figcaption { code { (series.key) } " — last " strong { (fmt(last)) } ", " (fmt(min)) "–" (fmt(max)) " over " (range.name) }
            svg role="img" aria-label=(summary) viewBox="0 0 600 100" preserveAspectRatio="none" {
                path d=(path) fill="none" stroke="currentColor" stroke-width="2" vector-effect="non-scaling-stroke" {}
            }
            details {
                summary { "The numbers" }
                table {
                    thead { tr { th scope="col" { "From" } th scope="col" .num { "Average" } } }
                    tbody {
                        @for (i, b) in series.buckets.iter().enumerate() {
                            @if let Some(x) = b {
                                tr { td { (exact(UnixMillis(from + i as u64 * width))) } td.num { (fmt(*x)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(metric: &str, at: u64, value: Value) -> Point {
        Point { at: UnixMillis(at), metric: metric.into(), value, labels: BTreeMap::new() }
    }

    #[test]
    fn points_average_per_bucket_within_the_window_host_metrics_first() {
        let hour = range("1h");
        let to = UnixMillis(10 * hour.millis);
        let start = to.0 - hour.millis;
        let points = vec![
            point("app.queue", start, Value::I64(4)),
            point("host.cpu.percent", start, Value::F64(10.0)),
            point("host.cpu.percent", start + 1, Value::F64(30.0)),
            point("host.cpu.percent", to.0 - 1, Value::F64(50.0)),
            point("host.cpu.percent", start - 1, Value::F64(99.0)), // before the window
            point("host.cpu.percent", to.0, Value::F64(99.0)),      // after it
            point("app.note", start, Value::Str("text is not charted".into())),
        ];
        let series = bucket(&points, hour, to);
        assert_eq!(
            series.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
            ["host.cpu.percent", "app.queue"]
        );
        let cpu = &series[0].buckets;
        assert_eq!(cpu.len(), BUCKETS);
        assert_eq!(cpu[0], Some(20.0));
        assert_eq!(cpu[BUCKETS - 1], Some(50.0));
        assert_eq!(cpu.iter().flatten().count(), 2);
        let svg = chart(&series[0], hour, to).into_string();
        assert!(
            svg.contains(
                "aria-label=\"host.cpu.percent: from 20.00 to 50.00 over 1h, last 50.00\""
            ),
            "{svg}"
        );
        assert_eq!(range("nonsense"), RANGES[1]);
    }
}
