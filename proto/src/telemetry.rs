//! Telemetry batches and their acknowledgements: at-least-once delivery end to end.
//!
//! The agent numbers every point with a per-device sequence number and deletes points from its
//! disk buffer only after a [`TelemetryAck`] covering them; the server de-duplicates by
//! (device, sequence).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;
use crate::time::UnixMillis;

/// Consecutive points from one device. Point `i` has sequence number `first_seq + i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TelemetryBatch {
    /// The producing device.
    pub device: DeviceId,
    /// Sequence number of the first point.
    pub first_seq: u64,
    /// Points dropped on the device (buffer full, drop-oldest) since it started counting.
    pub dropped_total: u64,
    /// The points.
    pub points: Vec<Point>,
}

impl TelemetryBatch {
    /// The inclusive sequence range this batch covers, `None` if it is empty.
    pub fn seq_range(&self) -> Option<(u64, u64)> {
        let n = u64::try_from(self.points.len()).ok()?.checked_sub(1)?;
        Some((self.first_seq, self.first_seq.checked_add(n)?))
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Point {
    /// When it was measured.
    pub at: UnixMillis,
    /// Metric name, e.g. `host.cpu.percent` or `app.motor.temp`.
    pub metric: String,
    /// The value.
    pub value: Value,
    /// Labels, e.g. `service=planner`, `mount=/`.
    pub labels: BTreeMap<String, String>,
}

/// Longest metric name (measurement plus field).
pub const MAX_METRIC: usize = 200;
/// Most labels on one point.
pub const MAX_LABELS: usize = 32;
/// Longest label key or value, or string value.
pub const MAX_TEXT: usize = 4096;

impl Point {
    /// Why this point is beyond the limits every point must keep (the agent refuses such a
    /// point where an application posts it; the server drops one that arrives anyway).
    pub fn problem(&self) -> Option<String> {
        if self.metric.is_empty() || self.metric.len() > MAX_METRIC {
            return Some(format!("metric name of {} bytes (1 to {MAX_METRIC})", self.metric.len()));
        }
        if self.labels.len() > MAX_LABELS {
            return Some(format!("{} labels, more than {MAX_LABELS}", self.labels.len()));
        }
        let long = self.labels.iter().flat_map(|(k, v)| [k, v]).find(|t| t.len() > MAX_TEXT);
        if let Some(text) = long {
            return Some(format!("a label of {} bytes, more than {MAX_TEXT}", text.len()));
        }
        match &self.value {
            Value::Str(s) if s.len() > MAX_TEXT => {
                Some(format!("a string value of {} bytes, more than {MAX_TEXT}", s.len()))
            }
            _ => None,
        }
    }
}

/// A measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Value {
    /// A float.
    F64(f64),
    /// An integer.
    I64(i64),
    /// A boolean.
    Bool(bool),
    /// A string (InfluxDB string fields).
    Str(String),
}

/// The server has stored the points with sequence numbers `first..=last`; the agent may delete
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TelemetryAck {
    /// First acknowledged sequence number.
    pub first: u64,
    /// Last acknowledged sequence number (inclusive).
    pub last: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_range_is_inclusive_and_empty_batches_have_none() {
        let mut batch = TelemetryBatch {
            device: DeviceId::new("d").unwrap(),
            first_seq: 10,
            dropped_total: 0,
            points: vec![],
        };
        assert_eq!(batch.seq_range(), None);
        let p = Point {
            at: UnixMillis(1),
            metric: "m".into(),
            value: Value::I64(1),
            labels: BTreeMap::new(),
        };
        batch.points = vec![p.clone(), p.clone(), p];
        assert_eq!(batch.seq_range(), Some((10, 12)));
    }
}
