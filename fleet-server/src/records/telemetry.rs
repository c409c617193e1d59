//! A device's telemetry counters and the latest value of each series
//! ([`crate::telemetry`] keeps them current).

use std::collections::BTreeMap;

use fleet_proto::telemetry::Value;
use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};

/// A device's telemetry counters and latest values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryState {
    /// One past the highest sequence number stored.
    pub high: u64,
    /// Oldest sequence number that may still be in the history: points below it were trimmed
    /// (and any copy of them arriving now is a duplicate).
    pub oldest_kept: u64,
    /// Points in the history.
    pub kept: u64,
    /// Distinct points ever stored.
    pub stored_total: u64,
    /// Copies of already stored points received (resends after lost acks or reconnects).
    pub duplicates_total: u64,
    /// Points the device dropped to stay within its buffer budget (as it reports).
    pub dropped_total: u64,
    /// When the last batch arrived.
    pub last_batch_at: Option<UnixMillis>,
    /// Latest value per series, by series key (`metric{k=v,...}`).
    pub latest: BTreeMap<String, Latest>,
}

/// The newest value of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    /// Metric name.
    pub metric: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it was measured.
    pub at: UnixMillis,
    /// The value.
    pub value: Value,
    /// Its sequence number.
    pub seq: u64,
}
