//! Telemetry from devices: de-duplicated by (device, sequence), stored, acknowledged.
//!
//! Devices send every point at least once and delete it only after the server's
//! `telemetry-ack`; after a reconnect or a lost ack they send some again. Here a point is
//! stored only if its sequence number is new, so the server's view has each point exactly once.
//! Per device the server keeps a bounded history ([`TELEMETRY_KEPT`] newest points, for
//! `fleetctl device metrics` and dashboards; long-term storage belongs in a time-series
//! database fed from here) and the latest value of every series (metric + labels).
//!
//! A batch is acknowledged only after the store change that holds its points is on disk (the
//! ingest loop flushes a group of batches, then sends their acks).

use fleet_proto::telemetry::{Point, TelemetryAck, TelemetryBatch, Value};
use fleet_proto::{DeviceId, UnixMillis};

use crate::records::Latest;
use crate::store::{StoreError, Tx};

/// Points kept per device; older ones are trimmed.
pub const TELEMETRY_KEPT: u64 = 20_000;
/// Series (metric + labels) whose latest value is kept per device; a device inventing label
/// values without end cannot grow its record beyond this.
pub const SERIES_KEPT: usize = 1_000;

/// `metric{k=v,...}`: the key of a series.
pub fn series_key(p: &Point) -> String {
    if p.labels.is_empty() {
        return p.metric.clone();
    }
    let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}{{{}}}", p.metric, labels.join(","))
}

/// What one batch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// The acknowledgement to send (the whole batch: new and duplicate points alike).
    pub ack: TelemetryAck,
    /// Points stored now.
    pub stored: u64,
    /// Points that were already stored.
    pub duplicates: u64,
    /// Points beyond the limits every point keeps ([`Point::problem`]): dropped, acknowledged
    /// (so the device does not send them again), counted.
    pub rejected: u64,
}

/// Stores the new points of `batch` in `tx`. `None` for an empty batch (nothing to ack).
pub fn ingest(
    tx: &mut Tx<'_>,
    batch: &TelemetryBatch,
    now: UnixMillis,
) -> Result<Option<Ingested>, StoreError> {
    let Some((first, last)) = batch.seq_range() else { return Ok(None) };
    let id = &batch.device;
    let mut st = tx.telemetry_state(id)?.unwrap_or_default();
    let (mut stored, mut duplicates, mut rejected) = (0, 0, 0);
    for (i, p) in batch.points.iter().enumerate() {
        let seq = first + i as u64;
        if let Some(why) = p.problem() {
            // An agent keeps these limits where points enter; a point past them was not
            // sent by one, so it is not stored (its labels would be copied into the series).
            if rejected == 0 {
                tracing::warn!(device = %id, seq, why, "telemetry point beyond the limits dropped");
            }
            rejected += 1;
            continue;
        }
        let dup = seq < st.oldest_kept || (seq < st.high && tx.has_point(id, seq)?);
        if dup {
            duplicates += 1;
            continue;
        }
        tx.put_point(id, seq, p);
        stored += 1;
        st.high = st.high.max(seq + 1);
        let key = series_key(p);
        let newer = st.latest.get(&key).is_none_or(|l| seq > l.seq);
        if newer && (st.latest.contains_key(&key) || st.latest.len() < SERIES_KEPT) {
            st.latest.insert(
                key,
                Latest {
                    metric: p.metric.clone(),
                    labels: p.labels.clone(),
                    at: p.at,
                    value: p.value.clone(),
                    seq,
                },
            );
        }
    }
    st.kept += stored;
    st.stored_total += stored;
    st.duplicates_total += duplicates;
    st.dropped_total = st.dropped_total.max(batch.dropped_total);
    st.last_batch_at = Some(now);
    if st.kept > TELEMETRY_KEPT {
        let excess = (st.kept - TELEMETRY_KEPT) as usize;
        if let Some(oldest) = tx.trim_points(id, excess)? {
            st.oldest_kept = st.oldest_kept.max(oldest);
        }
        st.kept = TELEMETRY_KEPT;
    }
    tx.put_telemetry_state(id, &st);
    Ok(Some(Ingested { ack: TelemetryAck { first, last }, stored, duplicates, rejected }))
}

/// Telemetry bytes one device may send per second, sustained. An honest agent drains a backlog
/// at `drain_points_per_sec` (1,000 by default), a few tens of KiB/s; this is several times that.
pub const DEVICE_BYTES_PER_SEC: u64 = 256 << 10;
/// Telemetry bytes one device may send at once, above the sustained rate.
pub const DEVICE_BURST_BYTES: u64 = 8 << 20;
/// Devices whose budgets are tracked at once; past it, the budgets of devices that have been
/// quiet long enough to be full again are forgotten (a full budget is the default anyway).
const BUDGETS_TRACKED: usize = 65_536;

/// Per-device token buckets on telemetry bytes, so one device (or a client publishing under
/// its name) cannot make the server store and flush without end. A batch over budget is
/// neither stored nor acknowledged: the device keeps it and sends it again later, so an honest
/// device that bursts loses nothing. Pure: the caller passes the clock.
#[derive(Debug)]
pub struct ByteBudgets {
    rate: u64,
    burst: u64,
    buckets: std::collections::HashMap<DeviceId, (u64, std::time::Instant)>,
}

impl ByteBudgets {
    /// Budgets of `rate` bytes per second with bursts of `burst` bytes.
    pub fn new(rate: u64, burst: u64) -> Self {
        ByteBudgets { rate, burst, buckets: std::collections::HashMap::new() }
    }

    /// Whether `device` may send `bytes` now; if so they are taken from its budget.
    pub fn take(&mut self, device: &DeviceId, bytes: u64, now: std::time::Instant) -> bool {
        if self.buckets.len() >= BUDGETS_TRACKED && !self.buckets.contains_key(device) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, b| refill(*b, now, rate, burst) < burst);
        }
        let bucket = self.buckets.entry(device.clone()).or_insert((self.burst, now));
        let tokens = refill(*bucket, now, self.rate, self.burst);
        if bytes > tokens {
            *bucket = (tokens, now);
            return false;
        }
        *bucket = (tokens - bytes, now);
        true
    }
}

/// The tokens of a bucket that held `tokens` at `at`, refilled at `rate` per second up to
/// `burst`.
fn refill(
    (tokens, at): (u64, std::time::Instant),
    now: std::time::Instant,
    rate: u64,
    burst: u64,
) -> u64 {
    let earned =
        now.saturating_duration_since(at).as_millis().saturating_mul(u128::from(rate)) / 1000;
    u64::try_from(u128::from(tokens).saturating_add(earned)).unwrap_or(u64::MAX).min(burst)
}

/// A value as JSON: numbers, booleans and strings as themselves.
pub fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::F64(x) => {
            serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into)
        }
        Value::I64(x) => (*x).into(),
        Value::Bool(x) => (*x).into(),
        Value::Str(x) => x.clone().into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::Store;

    #[test]
    fn a_devices_telemetry_bytes_are_budgeted_and_the_budget_refills() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let (a, b) = (DeviceId::new("robot-a").unwrap(), DeviceId::new("robot-b").unwrap());
        let mut budgets = ByteBudgets::new(1_000, 10_000);
        // The burst goes at once; one byte more waits.
        assert!(budgets.take(&a, 10_000, t0));
        assert!(!budgets.take(&a, 1, t0));
        // Another device has its own budget.
        assert!(budgets.take(&b, 10_000, t0));
        // Half a second earns 500 bytes: 500 fit, 501 do not.
        assert!(!budgets.take(&a, 501, t0 + Duration::from_millis(500)));
        assert!(budgets.take(&a, 500, t0 + Duration::from_millis(500)));
        // A long pause refills to the burst, not beyond; a batch larger than the burst never fits.
        let later = t0 + Duration::from_secs(3600);
        assert!(!budgets.take(&a, 10_001, later));
        assert!(budgets.take(&a, 10_000, later));
        // Time that runs backwards (another thread's Instant) earns nothing and panics nowhere.
        assert!(!budgets.take(&a, 1, t0));
    }

    #[test]
    fn budgets_of_quiet_devices_are_forgotten_past_the_tracking_bound() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut budgets = ByteBudgets::new(1_000, 1_000);
        for i in 0..BUDGETS_TRACKED {
            let id = DeviceId::new(format!("d-{i}")).unwrap();
            assert!(budgets.take(&id, 1_000, t0));
        }
        assert_eq!(budgets.buckets.len(), BUDGETS_TRACKED);
        // Still empty at t0: nothing is forgotten, the map grows by one.
        assert!(budgets.take(&DeviceId::new("late").unwrap(), 1, t0));
        assert_eq!(budgets.buckets.len(), BUDGETS_TRACKED + 1);
        // A second later every earlier bucket is full again: they go.
        assert!(budgets.take(&DeviceId::new("later").unwrap(), 1, t0 + Duration::from_secs(1)));
        assert!(budgets.buckets.len() <= 3, "{}", budgets.buckets.len());
    }

    fn batch(first_seq: u64, n: u64) -> TelemetryBatch {
        TelemetryBatch {
            device: DeviceId::new("robot-1").unwrap(),
            first_seq,
            dropped_total: 0,
            points: (first_seq..first_seq + n)
                .map(|i| Point {
                    at: UnixMillis(i),
                    metric: "m".into(),
                    value: Value::I64(i as i64),
                    labels: BTreeMap::from([("k".into(), "v".into())]),
                })
                .collect(),
        }
    }

    #[test]
    fn duplicates_are_counted_not_stored_and_still_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = DeviceId::new("robot-1").unwrap();
        let ingest_one =
            |b: &TelemetryBatch| store.update(|tx| ingest(tx, b, UnixMillis(1))).unwrap().unwrap();
        let a = ingest_one(&batch(0, 10));
        assert_eq!((a.stored, a.duplicates, a.ack), (10, 0, TelemetryAck { first: 0, last: 9 }));
        // A resend overlapping the first batch.
        let b = ingest_one(&batch(5, 10));
        assert_eq!((b.stored, b.duplicates), (5, 5));
        // Out of order: a gap filled late.
        ingest_one(&batch(20, 5));
        let c = ingest_one(&batch(15, 5));
        assert_eq!((c.stored, c.duplicates), (5, 0));
        let st = store.telemetry_state(&id).unwrap().unwrap();
        assert_eq!((st.stored_total, st.duplicates_total, st.high), (25, 5, 25));
        let points = store.telemetry_points(&id, None, 100).unwrap();
        let seqs: Vec<u64> = points.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (0..25).collect::<Vec<_>>());
        assert_eq!(st.latest["m{k=v}"].value, Value::I64(24));
        // Paging from a cursor.
        let tail = store.telemetry_points(&id, Some(22), 100).unwrap();
        assert_eq!(tail.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![23, 24]);
    }

    #[test]
    fn points_beyond_the_limits_are_dropped_but_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = batch(0, 3);
        b.points[1].labels = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
        b.points[2].value = Value::Str("x".repeat(5000));
        let got = store.update(|tx| ingest(tx, &b, UnixMillis(1))).unwrap().unwrap();
        assert_eq!((got.stored, got.rejected), (1, 2));
        assert_eq!(got.ack, TelemetryAck { first: 0, last: 2 }, "the device may forget them");
        let id = DeviceId::new("robot-1").unwrap();
        assert_eq!(store.telemetry_points(&id, None, 100).unwrap().len(), 1);
    }

    #[test]
    fn the_history_is_bounded_and_trimmed_points_count_as_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = DeviceId::new("robot-1").unwrap();
        let per = 5_000;
        for i in 0..5 {
            store.update(|tx| ingest(tx, &batch(i * per, per), UnixMillis(1))).unwrap();
        }
        let st = store.telemetry_state(&id).unwrap().unwrap();
        assert_eq!(st.kept, TELEMETRY_KEPT);
        assert_eq!(st.oldest_kept, 5 * per - TELEMETRY_KEPT);
        let again = store.update(|tx| ingest(tx, &batch(0, 10), UnixMillis(1))).unwrap().unwrap();
        assert_eq!((again.stored, again.duplicates), (0, 10));
    }
}
