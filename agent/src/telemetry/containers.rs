//! Container metrics and lifecycle events, as telemetry points.
//!
//! Metrics, per service (labels `service` and `release`; gauges unless named `_total`):
//! `container.cpu.percent` (share of one CPU since the previous sample: 200 is two cores busy),
//! `container.mem.bytes` (without reclaimable page cache, as `docker stats`),
//! `container.mem.limit_bytes`, `container.pids`, `container.net.rx_bytes_total`,
//! `container.net.tx_bytes_total`, `container.restarts_total`, `container.running` (bool) and
//! `container.health` (`healthy`, `unhealthy`, `starting` or `none`).
//!
//! Events, as they happen: `container.event` with the engine's action as a string value (`start`,
//! `die`, `oom`, `kill`, `stop`, `restart`, …; `die` carries an `exit_code` label), and health
//! changes as `container.health`.
//!
//! The engine is asked with one-shot stats once per period and container — never streaming
//! stats, which for many containers cost the engine a whole core. [`ContainerSampler::points`]
//! and [`event_point`] are pure; [`sample`] makes the engine calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::report::{ContainerState, Health};
use fleet_proto::telemetry::{Point, Value};
use fleet_proto::{DeviceId, UnixMillis};

use super::TelemetryHandle;
use crate::runtime::{labels, ContainerRuntime, ContainerStats, ObservedContainer, RuntimeEvent};

/// Engine actions worth a point; the others (attach, resize, copy, top, …) say nothing about
/// the service.
const LIFECYCLE: &[&str] =
    &["create", "start", "restart", "die", "stop", "kill", "oom", "pause", "unpause", "destroy"];

/// What the previous sample saw of each container's CPU time.
#[derive(Debug, Default)]
pub struct ContainerSampler {
    last_cpu: HashMap<String, (u64, Duration)>,
}

impl ContainerSampler {
    /// A sampler with no history: CPU shares start with the second sample.
    pub fn new() -> ContainerSampler {
        ContainerSampler::default()
    }

    /// Points for one sample. `clock` is a monotonic time (CPU shares are CPU time over elapsed
    /// time, immune to wall-clock jumps); `observed` are this device's containers, each with
    /// its stats if it runs and they could be read. A service without a running container is
    /// reported once, from its newest container, as not running.
    pub fn points(
        &mut self,
        at: UnixMillis,
        clock: Duration,
        observed: &[(ObservedContainer, Option<ContainerStats>)],
    ) -> Vec<Point> {
        let mut out = vec![];
        let mut seen = HashMap::new();
        // Per service: its running containers, or else the one container to report as stopped.
        let mut by_service: BTreeMap<&str, Vec<&(ObservedContainer, Option<ContainerStats>)>> =
            BTreeMap::new();
        for entry in observed {
            let Some(service) = entry.0.label(labels::SERVICE) else { continue };
            by_service.entry(service).or_default().push(entry);
        }
        for (service, entries) in by_service {
            let running: Vec<_> =
                entries.iter().filter(|(c, _)| c.state == ContainerState::Running).collect();
            let report: Vec<_> = if running.is_empty() {
                // Names carry no order; the highest engine id is as good as any and stable.
                entries.iter().max_by_key(|(c, _)| &c.id).into_iter().collect()
            } else {
                running
            };
            for (c, stats) in report {
                let mut labels = BTreeMap::from([("service".to_owned(), service.to_owned())]);
                if let Some(release) = c.label(labels::RELEASE) {
                    labels.insert("release".to_owned(), release.to_owned());
                }
                let mut push = |metric: &str, value: Value| {
                    out.push(Point {
                        at,
                        metric: metric.to_owned(),
                        value,
                        labels: labels.clone(),
                    });
                };
                let running = c.state == ContainerState::Running;
                push("container.running", Value::Bool(running));
                push("container.restarts_total", Value::I64(i64::from(c.restart_count)));
                push("container.health", Value::Str(health_name(c.health).to_owned()));
                let Some(s) = stats.filter(|_| running) else { continue };
                if let Some(cpu) = s.cpu_ns {
                    if let Some(&(cpu0, clock0)) = self.last_cpu.get(&c.id) {
                        let elapsed = clock.saturating_sub(clock0).as_nanos() as f64;
                        // A restarted container's counter starts again from zero: no share.
                        if elapsed > 0.0 && cpu >= cpu0 {
                            push(
                                "container.cpu.percent",
                                Value::F64(100.0 * (cpu - cpu0) as f64 / elapsed),
                            );
                        }
                    }
                    seen.insert(c.id.clone(), (cpu, clock));
                }
                let gauges = [
                    ("container.mem.bytes", s.memory_bytes),
                    ("container.mem.limit_bytes", s.memory_limit_bytes),
                    ("container.pids", s.pids),
                    ("container.net.rx_bytes_total", s.net_rx_bytes),
                    ("container.net.tx_bytes_total", s.net_tx_bytes),
                ];
                for (metric, v) in gauges {
                    if let Some(v) = v {
                        push(metric, Value::I64(i64::try_from(v).unwrap_or(i64::MAX)));
                    }
                }
            }
        }
        // Containers that are gone are forgotten.
        self.last_cpu = seen;
        out
    }
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::NoCheck => "none",
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

/// The point for one engine event, at the engine's time (else `received`); `None` for actions
/// that say nothing about the service, and containers without a service label.
pub fn event_point(received: UnixMillis, e: &RuntimeEvent) -> Option<Point> {
    let at = e.at.unwrap_or(received);
    let service = e.service.as_deref()?;
    let mut labels = BTreeMap::from([("service".to_owned(), service.to_owned())]);
    if let Some(release) = &e.release {
        labels.insert("release".to_owned(), release.clone());
    }
    let (metric, value) = if let Some(status) = e.action.strip_prefix("health_status:") {
        ("container.health", status.trim().to_owned())
    } else if LIFECYCLE.contains(&e.action.as_str()) {
        if let Some(code) = e.exit_code.filter(|_| e.action == "die") {
            labels.insert("exit_code".to_owned(), code.to_string());
        }
        ("container.event", e.action.clone())
    } else {
        return None;
    };
    Some(Point { at, metric: metric.to_owned(), value: Value::Str(value), labels })
}

/// One sample: lists this device's containers and reads the stats of the running ones. An
/// engine that does not answer gives no points (and a debug line), never an error.
pub async fn sample<R: ContainerRuntime>(
    runtime: &R,
    device: &DeviceId,
    sampler: &mut ContainerSampler,
    clock: Duration,
) -> Vec<Point> {
    let containers = match runtime.list(device).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "container metrics skipped: engine did not list");
            return vec![];
        }
    };
    let mut observed = Vec::with_capacity(containers.len());
    for c in containers {
        let stats = if c.state == ContainerState::Running {
            match runtime.stats(&c.id).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(container = %c.name, error = %e, "container stats not read");
                    None
                }
            }
        } else {
            None
        };
        observed.push((c, stats));
    }
    sampler.points(UnixMillis::now(), clock, &observed)
}

/// The container telemetry task: records lifecycle events as the engine sends them (on its own
/// event subscription) and samples the containers every `every` (zero: no samples), until the
/// telemetry task is gone.
pub fn spawn<R: ContainerRuntime>(
    runtime: Arc<R>,
    device: DeviceId,
    handle: TelemetryHandle,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut sampler = ContainerSampler::new();
        let sampling = !every.is_zero();
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = runtime.events(&device);
        loop {
            let points = tokio::select! {
                _ = tick.tick(), if sampling => {
                    sample(&*runtime, &device, &mut sampler, start.elapsed()).await
                }
                event = events.recv() => match event {
                    Some(e) => event_point(UnixMillis::now(), &e).into_iter().collect(),
                    None => {
                        // The daemon's loop logs the stream's end; resubscribe quietly.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        events = runtime.events(&device);
                        vec![]
                    }
                },
            };
            if !points.is_empty() && !handle.record(points) && handle.is_closed() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, service: &str, state: ContainerState) -> ObservedContainer {
        ObservedContainer {
            id: id.to_owned(),
            name: format!("fleet-{service}-{id}"),
            labels: BTreeMap::from([
                (labels::SERVICE.to_owned(), service.to_owned()),
                (labels::RELEASE.to_owned(), "r1".to_owned()),
            ]),
            image: "img@sha256:00".to_owned(),
            state,
            health: Health::Healthy,
            exit_code: None,
            restart_count: 2,
            oom_killed: false,
            ports: vec![],
            ip: None,
            stop_grace: None,
        }
    }

    fn stats(cpu_ns: u64) -> ContainerStats {
        ContainerStats {
            cpu_ns: Some(cpu_ns),
            memory_bytes: Some(10 << 20),
            memory_limit_bytes: Some(1 << 30),
            pids: Some(3),
            net_rx_bytes: Some(100),
            net_tx_bytes: Some(50),
        }
    }

    fn value<'a>(points: &'a [Point], metric: &str, service: &str) -> Option<&'a Value> {
        points
            .iter()
            .find(|p| p.metric == metric && p.labels["service"] == service)
            .map(|p| &p.value)
    }

    #[test]
    fn cpu_share_comes_from_two_samples_on_the_monotonic_clock() {
        let mut s = ContainerSampler::new();
        let web = container("a", "web", ContainerState::Running);
        let first =
            s.points(UnixMillis(1), Duration::from_secs(10), &[(web.clone(), Some(stats(0)))]);
        assert_eq!(value(&first, "container.cpu.percent", "web"), None, "no share from one sample");
        assert_eq!(value(&first, "container.mem.bytes", "web"), Some(&Value::I64(10 << 20)));
        assert_eq!(value(&first, "container.restarts_total", "web"), Some(&Value::I64(2)));
        assert_eq!(value(&first, "container.health", "web"), Some(&Value::Str("healthy".into())));
        assert_eq!(first[0].labels["release"], "r1");
        // 1.5 s of CPU in 1 s of wall time: one and a half cores.
        let second = s.points(
            UnixMillis(2),
            Duration::from_secs(11),
            &[(web.clone(), Some(stats(1_500_000_000)))],
        );
        assert_eq!(value(&second, "container.cpu.percent", "web"), Some(&Value::F64(150.0)));
        // The counter went backwards (the container restarted): no share, history restarts.
        let third = s.points(UnixMillis(3), Duration::from_secs(12), &[(web, Some(stats(10)))]);
        assert_eq!(value(&third, "container.cpu.percent", "web"), None);
    }

    #[test]
    fn a_stopped_service_is_reported_once_as_not_running_and_others_are_left_out() {
        let mut s = ContainerSampler::new();
        let old = container("a", "db", ContainerState::Exited);
        let older = container("0", "db", ContainerState::Exited);
        let mut unlabelled = container("x", "x", ContainerState::Running);
        unlabelled.labels.clear();
        let points = s.points(
            UnixMillis(1),
            Duration::ZERO,
            &[(old, None), (older, None), (unlabelled, Some(stats(1)))],
        );
        let running: Vec<_> = points.iter().filter(|p| p.metric == "container.running").collect();
        assert_eq!(running.len(), 1, "{points:?}");
        assert_eq!(running[0].value, Value::Bool(false));
        assert!(!points.iter().any(|p| p.metric == "container.mem.bytes"));
    }

    #[test]
    fn while_blue_and_green_run_both_are_reported() {
        let mut s = ContainerSampler::new();
        let blue = container("a", "web", ContainerState::Running);
        let green = container("b", "web", ContainerState::Running);
        let stale = container("c", "web", ContainerState::Exited);
        let points = s.points(
            UnixMillis(1),
            Duration::ZERO,
            &[(blue, Some(stats(1))), (green, Some(stats(1))), (stale, None)],
        );
        assert_eq!(points.iter().filter(|p| p.metric == "container.running").count(), 2);
    }

    #[test]
    fn events_become_points_with_the_exit_code_and_health() {
        let die = RuntimeEvent {
            service: Some("web".into()),
            release: Some("r1".into()),
            exit_code: Some(137),
            ..RuntimeEvent::new("a", "die")
        };
        let p = event_point(UnixMillis(5), &die).unwrap();
        assert_eq!((p.metric.as_str(), &p.value), ("container.event", &Value::Str("die".into())));
        assert_eq!(p.labels["exit_code"], "137");
        assert_eq!(p.labels["release"], "r1");
        let health = RuntimeEvent {
            service: Some("web".into()),
            ..RuntimeEvent::new("a", "health_status: unhealthy")
        };
        let p = event_point(UnixMillis(5), &health).unwrap();
        assert_eq!(p.metric, "container.health");
        assert_eq!(p.value, Value::Str("unhealthy".into()));
        let noise =
            RuntimeEvent { service: Some("web".into()), ..RuntimeEvent::new("a", "resize") };
        assert_eq!(event_point(UnixMillis(5), &noise), None);
        assert_eq!(event_point(UnixMillis(5), &RuntimeEvent::new("a", "start")), None);
    }

    #[tokio::test]
    async fn samples_the_simulated_engine() {
        use crate::runtime::sim::{ImageBehavior, SimRuntime};
        use crate::runtime::CreateRequest;
        let rt = SimRuntime::new();
        let device = DeviceId::new("dev-1").unwrap();
        let image =
            fleet_proto::ImageRef::parse(&format!("reg/app@sha256:{}", "a".repeat(64))).unwrap();
        rt.publish_image(&image, ImageBehavior::Healthy, 1);
        rt.pull(&image, None, &|_, _| {}).await.unwrap();
        let spec =
            fleet_proto::ServiceSpec::new(fleet_proto::ServiceName::new("web").unwrap(), image);
        let req = CreateRequest {
            name: "fleet-dev-1-web".into(),
            labels: BTreeMap::from([
                (labels::DEVICE.to_owned(), "dev-1".to_owned()),
                (labels::SERVICE.to_owned(), "web".to_owned()),
            ]),
            spec,
            port_override: None,
            hardware: Default::default(),
            networks: vec![],
        };
        let id = rt.create(&req).await.unwrap();
        rt.start(&id).await.unwrap();
        let mut s = ContainerSampler::new();
        sample(&rt, &device, &mut s, Duration::from_millis(0)).await;
        let points = sample(&rt, &device, &mut s, Duration::from_millis(100)).await;
        // 5 ms of simulated CPU per sample over 100 ms.
        assert_eq!(value(&points, "container.cpu.percent", "web"), Some(&Value::F64(5.0)));
    }
}
