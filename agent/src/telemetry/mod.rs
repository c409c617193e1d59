//! Telemetry: what the device measures, buffered on disk until the server has stored it.
//!
//! * [`store`] — the buffer ([`store::TelemetryStore`]: redb on devices, memory in simulations),
//!   its invariants, budget and durability window;
//! * [`delivery`] — pure: which points go out next, pacing, acks, resends;
//! * [`host`] — host metrics from `/proc` and `/sys`;
//! * [`containers`] — container metrics (one-shot engine stats) and lifecycle events;
//! * this module — the task that ties them together: one loop that samples, appends, sends
//!   batches through the link and deletes what the server acknowledged.
//!
//! Delivery is at least once end to end: a batch leaves the buffer only when the server's
//! `telemetry-ack` covers it (not the broker's PUBACK); the server removes duplicates by
//! (device, sequence).

pub mod containers;
pub mod delivery;
pub mod host;
pub mod ingest;
pub mod line_protocol;
pub mod redb_store;
#[cfg(feature = "sled")]
pub mod sled_store;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

use fleet_proto::telemetry::{Point, TelemetryAck, TelemetryBatch};
use fleet_proto::{DeviceId, UnixMillis};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::link::LinkState;
use delivery::{Delivery, DeliveryConfig};
use store::{StoreError, TelemetryStore};

/// The checked `[telemetry]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Collect and send telemetry at all.
    pub enabled: bool,
    /// The buffer's database.
    pub store: store::StoreKind,
    /// Most bytes the buffer holds before it drops the oldest points.
    pub budget_bytes: u64,
    /// Host metrics period; zero: no host metrics.
    pub host_interval: Duration,
    /// Container metrics period; zero: no container metrics (lifecycle events still flow).
    pub container_interval: Duration,
    /// How batches travel on the wire (the link applies it).
    pub compression: fleet_proto::Compression,
    /// Root of `/proc` and `/sys` (tests use fixture trees).
    pub root: PathBuf,
    /// Mounts whose free space is reported.
    pub mounts: Vec<PathBuf>,
    /// Batching, pacing and resends.
    pub delivery: DeliveryConfig,
    /// The application ingestion endpoint; `None`: off.
    pub ingest: Option<ingest::IngestConfig>,
}

/// Where the telemetry task sends batches: the link's outbox in the daemon, a channel in
/// tests. Returns `false` if the batch could not be queued (it is sent again later).
pub trait Sink: Send + 'static {
    /// Queues one batch.
    fn send(&mut self, batch: TelemetryBatch) -> bool;
}

impl<F: FnMut(TelemetryBatch) -> bool + Send + 'static> Sink for F {
    fn send(&mut self, batch: TelemetryBatch) -> bool {
        self(batch)
    }
}

/// Points for the buffer; `durable` is answered once they are on disk (or refused).
#[derive(Debug)]
struct Record {
    points: Vec<Point>,
    durable: Option<oneshot::Sender<Result<(), String>>>,
}

/// The daemon's handle on the telemetry task.
#[derive(Debug, Clone)]
pub struct TelemetryHandle {
    points: mpsc::Sender<Record>,
    counters: std::sync::Arc<ingest::IngestCounters>,
}

impl TelemetryHandle {
    /// Hands points to the buffer; `false` if the task is gone or its queue is full.
    pub fn record(&self, points: Vec<Point>) -> bool {
        self.points.try_send(Record { points, durable: None }).is_ok()
    }

    /// The ingestion endpoint's counters, reported by the task as `agent.ingest.*` points.
    pub fn ingest_counters(&self) -> std::sync::Arc<ingest::IngestCounters> {
        self.counters.clone()
    }

    /// Whether the telemetry task has ended.
    pub fn is_closed(&self) -> bool {
        self.points.is_closed()
    }

    /// Hands points to the buffer and waits until they are on disk: what an application is
    /// told "accepted" survives a crash or power cut from then on.
    pub async fn record_durable(&self, points: Vec<Point>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let stopped = || "the telemetry buffer has stopped".to_owned();
        self.points.send(Record { points, durable: Some(tx) }).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Status of the buffer, shared with `fleet-agent status` and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TelemetryStatus {
    /// What the buffer holds.
    pub stats: store::Stats,
    /// Batches sent again after an ack timeout or reconnect.
    pub resends: u64,
    /// Appends the buffer refused (too large, database errors).
    pub refused: u64,
}

/// Starts the telemetry task on the current runtime: it buffers what the handle records and
/// host metrics, sends batches to `sink` while `link` is connected, and deletes what `acks`
/// acknowledge. It ends (flushing the buffer) when every handle is dropped.
pub fn spawn(
    device: DeviceId,
    cfg: TelemetryConfig,
    store: Box<dyn TelemetryStore>,
    link: watch::Receiver<LinkState>,
    acks: mpsc::Receiver<TelemetryAck>,
    sink: impl Sink,
) -> (TelemetryHandle, watch::Receiver<TelemetryStatus>, tokio::task::JoinHandle<()>) {
    let (points_tx, points) = mpsc::channel(64);
    let (status_tx, status) =
        watch::channel(TelemetryStatus { stats: store.stats(), ..Default::default() });
    let counters = std::sync::Arc::new(ingest::IngestCounters::default());
    let task = Task {
        counters: counters.clone(),
        device,
        cfg,
        store,
        link,
        sink,
        points,
        acks,
        status: status_tx,
        refused: 0,
        dirty: false,
    };
    let join = tokio::spawn(task.run());
    (TelemetryHandle { points: points_tx, counters }, status, join)
}

struct Task<S> {
    device: DeviceId,
    cfg: TelemetryConfig,
    store: Box<dyn TelemetryStore>,
    link: watch::Receiver<LinkState>,
    sink: S,
    points: mpsc::Receiver<Record>,
    acks: mpsc::Receiver<TelemetryAck>,
    status: watch::Sender<TelemetryStatus>,
    refused: u64,
    /// Something was written since the last look: the flush timer starts.
    dirty: bool,
    counters: std::sync::Arc<ingest::IngestCounters>,
}

type Waiters = Vec<oneshot::Sender<Result<(), String>>>;

impl<S: Sink> Task<S> {
    async fn run(mut self) {
        let now = Instant::now().into_std();
        let mut delivery = Delivery::new(self.cfg.delivery, &self.store.stats(), now);
        let mut sampler = host::HostSampler::new(&self.cfg.root, self.cfg.mounts.clone());
        let host_on = !self.cfg.host_interval.is_zero();
        let mut host_tick =
            tokio::time::interval(self.cfg.host_interval.max(Duration::from_secs(1)));
        host_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut online = self.link.borrow().connected;
        let wake = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(wake);
        // Group commit: producers waiting for durability share one flush, run off the task's
        // thread; those who arrive during it wait for the next.
        let flusher = self.store.flusher();
        let mut waiting: Waiters = vec![];
        let mut flushing: Option<(tokio::task::JoinHandle<Result<(), String>>, Waiters)> = None;
        // Appends nobody waits for are flushed within FLUSH_EVERY_MS too (redb does not flush
        // by itself); the timer runs only while something is unflushed, so idle costs nothing.
        let flush_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(flush_timer);
        let mut unflushed = false;
        let mut flush_due = false;
        loop {
            // The one place a flush starts: for waiting producers, or because the timer ran out.
            if flushing.is_none() && (flush_due || !waiting.is_empty()) {
                unflushed = false;
                flush_due = false;
                let batch = std::mem::take(&mut waiting);
                match &flusher {
                    Some(f) => {
                        let f = f.clone();
                        flushing = Some((tokio::task::spawn_blocking(move || f.flush()), batch));
                    }
                    None => batch.into_iter().for_each(|w| {
                        let _ = w.send(Ok(()));
                    }),
                }
            }
            let wake_at = self.send_what_we_can(&mut delivery, online);
            wake.as_mut().reset(wake_at.unwrap_or_else(far_future));
            tokio::select! {
                record = self.points.recv() => match record {
                    Some(Record { points, durable }) => {
                        let appended = self.append(&points);
                        if let Some(done) = durable {
                            match appended {
                                Ok(()) => waiting.push(done),
                                Err(e) => {
                                    let _ = done.send(Err(e));
                                }
                            }
                        }
                    }
                    None => break,
                },
                flushed = async { (&mut flushing.as_mut().expect("guarded").0).await }, if flushing.is_some() => {
                    let (_, batch) = flushing.take().expect("guarded");
                    let result = flushed.unwrap_or_else(|e| Err(format!("flush task failed: {e}")));
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "telemetry buffer flush failed; producers are told to retry");
                    }
                    for w in batch {
                        let _ = w.send(result.clone());
                    }
                }
                Some(ack) = self.acks.recv() => {
                    if let Some(below) = delivery.on_ack(ack) {
                        self.dirty = true;
                        if let Err(e) = self.store.ack_through(below - 1) {
                            tracing::warn!(error = %e, "telemetry buffer cannot delete acknowledged points");
                        }
                    }
                }
                changed = self.link.changed() => {
                    if changed.is_err() {
                        // No link any more: keep buffering until the daemon stops.
                        online = false;
                        continue;
                    }
                    let now_online = self.link.borrow_and_update().connected;
                    if online && !now_online {
                        delivery.on_disconnect();
                    }
                    online = now_online;
                }
                _ = host_tick.tick(), if host_on => {
                    let now = UnixMillis::now();
                    let mut points = sampler.sample(now);
                    points.extend(self.self_points(now, &delivery));
                    let _ = self.append(&points);
                }
                () = &mut wake => {
                    delivery.on_tick(Instant::now().into_std());
                }
                () = &mut flush_timer, if unflushed && flushing.is_none() => flush_due = true,
            }
            if self.dirty && !unflushed {
                unflushed = true;
                flush_timer
                    .as_mut()
                    .reset(Instant::now() + Duration::from_millis(store::FLUSH_EVERY_MS));
            }
            self.dirty = false;
            self.status.send_replace(TelemetryStatus {
                stats: self.store.stats(),
                resends: delivery.resends,
                refused: self.refused,
            });
        }
        if let Some((flush, batch)) = flushing.take() {
            let result = flush.await.unwrap_or_else(|e| Err(e.to_string()));
            batch.into_iter().for_each(|w| {
                let _ = w.send(result.clone());
            });
        }
        let result = self.store.flush().map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::warn!(error = %e, "telemetry buffer flush at shutdown failed");
        }
        waiting.into_iter().for_each(|w| {
            let _ = w.send(result.clone());
        });
    }

    /// The agent's own telemetry, sampled with the host metrics: `agent.telemetry.*` (what the
    /// buffer holds, drops, resends, refusals) and `agent.ingest.*` (points accepted and
    /// requests rejected per `reason` by the ingestion endpoint).
    fn self_points(&self, at: UnixMillis, delivery: &Delivery) -> Vec<Point> {
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.store.stats();
        let c = &self.counters;
        let int = |v: u64| fleet_proto::telemetry::Value::I64(i64::try_from(v).unwrap_or(i64::MAX));
        let point = |metric: &str, v: u64, label: Option<(&str, &str)>| Point {
            at,
            metric: metric.to_owned(),
            value: int(v),
            labels: label.map(|(k, v)| (k.to_owned(), v.to_owned())).into_iter().collect(),
        };
        let mut out = vec![
            point("agent.telemetry.buffered_points", st.points, None),
            point("agent.telemetry.buffered_bytes", st.bytes, None),
            point("agent.telemetry.dropped_total", st.dropped_total, None),
            point("agent.telemetry.resends_total", delivery.resends, None),
            point("agent.telemetry.refused_total", self.refused, None),
            point("agent.ingest.accepted_points_total", c.accepted_points.load(Relaxed), None),
        ];
        for (reason, n) in [
            ("malformed", &c.malformed),
            ("too_large", &c.too_large),
            ("rate_limited", &c.rate_limited),
            ("unavailable", &c.unavailable),
        ] {
            out.push(point(
                "agent.ingest.rejected_total",
                n.load(Relaxed),
                Some(("reason", reason)),
            ));
        }
        out
    }

    fn append(&mut self, points: &[Point]) -> Result<(), String> {
        self.dirty = true;
        let before = self.store.stats().dropped_total;
        match self.store.append(points) {
            Ok(_) => {
                let dropped = self.store.stats().dropped_total;
                if dropped > before && (before == 0 || dropped.ilog2() > before.ilog2()) {
                    tracing::warn!(
                        dropped_total = dropped,
                        budget = self.cfg.budget_bytes,
                        "telemetry buffer full; oldest points dropped"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.refused += 1;
                tracing::warn!(error = %e, "telemetry points not buffered");
                Err(e.to_string())
            }
        }
    }

    /// Sends every batch delivery allows now; returns when to look again.
    fn send_what_we_can(&mut self, delivery: &mut Delivery, online: bool) -> Option<Instant> {
        loop {
            let now = Instant::now();
            let stats = self.store.stats();
            let Some(send) = delivery.next_send(now.into_std(), &stats, online) else {
                if !online {
                    return None;
                }
                if delivery.in_flight() > 0 {
                    // Ack timeouts are checked a second at a time.
                    let backlog = stats.next_seq > stats.oldest;
                    let pace = if backlog {
                        delivery.tokens_ready_in(self.cfg.delivery.max_points)
                    } else {
                        Duration::MAX
                    };
                    return Some(
                        now + pace.min(Duration::from_secs(1)).max(Duration::from_millis(5)),
                    );
                }
                if stats.next_seq > stats.oldest {
                    let pace = delivery.tokens_ready_in(self.cfg.delivery.max_points);
                    return Some(now + pace.max(Duration::from_millis(5)));
                }
                return None;
            };
            let run = match self.store.read(send.first, send.max_points) {
                Ok(run) => run,
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry buffer read failed; retrying in 1 s");
                    return Some(now + Duration::from_secs(1));
                }
            };
            if run.points.is_empty() {
                return None;
            }
            let first = run.first_seq;
            let mut batch = TelemetryBatch {
                device: self.device.clone(),
                first_seq: run.first_seq,
                dropped_total: stats.dropped_total,
                points: run.points,
            };
            // A batch must fit one MQTT message: halve it until it does (long string fields).
            while batch.points.len() > 1
                && postcard::to_allocvec(&batch).map_or(usize::MAX, |v| v.len())
                    > fleet_proto::MAX_MESSAGE_BYTES - 4096
            {
                batch.points.truncate(batch.points.len() / 2);
            }
            let last = batch.first_seq + batch.points.len() as u64 - 1;
            if !self.sink.send(batch) {
                return Some(now + Duration::from_secs(1));
            }
            delivery.sent(first, last, now.into_std());
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Opens the buffer of `kind` under `data_dir`; a damaged one is moved aside (the event
/// returned says where).
pub fn open_store(
    data_dir: &std::path::Path,
    kind: store::StoreKind,
    budget: u64,
) -> Result<(Box<dyn TelemetryStore>, Option<String>), StoreError> {
    let (s, opened) = store::open(kind, &kind.path_in(data_dir), budget)?;
    let note = match opened {
        store::Opened::Intact => None,
        store::Opened::Replaced { moved_to, reason } => Some(format!(
            "telemetry buffer could not be opened ({reason}); moved to {} and started empty",
            moved_to.display()
        )),
    };
    Ok((s, note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkState;

    #[tokio::test]
    async fn the_agent_reports_its_own_telemetry_with_the_host_metrics() {
        let root = tempfile::tempdir().unwrap();
        let cfg = TelemetryConfig {
            enabled: true,
            store: store::StoreKind::Redb,
            budget_bytes: 1 << 20,
            host_interval: Duration::from_millis(10),
            container_interval: Duration::ZERO,
            compression: fleet_proto::Compression::Deflate,
            root: root.path().to_path_buf(),
            mounts: vec![],
            delivery: DeliveryConfig::default(),
            ingest: None,
        };
        let (link_tx, link) = watch::channel(LinkState { connected: true, ..LinkState::default() });
        let (_acks_tx, acks) = mpsc::channel(4);
        let (sent_tx, mut sent) = mpsc::unbounded_channel();
        let sink = move |b: TelemetryBatch| sent_tx.send(b).is_ok();
        let store = Box::new(store::MemStore::new(1 << 20));
        let (handle, _status, task) =
            spawn(DeviceId::new("d").unwrap(), cfg, store, link, acks, sink);
        handle.ingest_counters().malformed.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let batch =
            tokio::time::timeout(Duration::from_secs(5), sent.recv()).await.unwrap().unwrap();
        let get = |metric: &str, reason: Option<&str>| {
            batch
                .points
                .iter()
                .find(|p| {
                    p.metric == metric && p.labels.get("reason").map(String::as_str) == reason
                })
                .map(|p| p.value.clone())
        };
        use fleet_proto::telemetry::Value;
        assert_eq!(get("agent.telemetry.dropped_total", None), Some(Value::I64(0)));
        assert_eq!(get("agent.ingest.rejected_total", Some("malformed")), Some(Value::I64(2)));
        assert_eq!(get("agent.ingest.rejected_total", Some("rate_limited")), Some(Value::I64(0)));
        assert!(get("agent.telemetry.buffered_points", None).is_some());
        drop(handle);
        drop(link_tx);
        task.await.unwrap();
    }
}
