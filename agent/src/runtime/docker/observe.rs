//! What runs, as the engine tells it: inspect and list become [`ObservedContainer`]s, one-shot
//! stats become [`ContainerStats`], log frames become lines, and engine events become
//! [`RuntimeEvent`]s. The conversions are pure and unit-tested; the calls are thin.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, StatsOptionsBuilder,
};
use fleet_proto::report::{ContainerState, Health};
use fleet_proto::DeviceId;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::DockerRuntime;
use crate::runtime::{
    labels, ContainerStats, ObservedContainer, PortBinding, RuntimeError, RuntimeEvent,
};

/// Events buffered between the engine stream and the agent's loop; the loop re-inspects on
/// each, so a short burst (a crash loop) fits and a stuck loop applies back-pressure.
const EVENT_BUFFER: usize = 256;

impl DockerRuntime {
    pub(super) async fn list_containers(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<ObservedContainer>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{}={}", labels::DEVICE, device.as_str())],
        )]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.fail("list containers of", &format!("device {device:?}"), e))?;
        let mut observed = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            match self.inspect_container(&id).await {
                Ok(c) => observed.push(c),
                // Removed between the list and the inspect: it is gone, which is what `list`
                // should then say.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(observed)
    }

    pub(super) async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<ObservedContainer, RuntimeError> {
        let resp = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.fail("inspect", &format!("container {id}"), e))?;
        Ok(observed_from(resp))
    }

    pub(super) async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        // `one-shot` (API 1.41) answers at once instead of sampling for a second to fill
        // `precpu_stats`; CPU shares are computed from consecutive samples by the caller.
        let opts = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
        let mut stream = self.docker.stats(id, Some(opts));
        match stream.next().await {
            Some(Ok(resp)) => Ok(stats_from(resp)),
            Some(Err(e)) => Err(self.fail("read the stats of", &format!("container {id}"), e)),
            None => Err(RuntimeError::Engine {
                op: format!("read the stats of container {id}"),
                status: None,
                message: "the engine sent no stats".to_owned(),
            }),
        }
    }

    pub(super) async fn container_logs(
        &self,
        id: &str,
        tail: usize,
    ) -> Result<Vec<String>, RuntimeError> {
        if tail == 0 {
            return Ok(Vec::new());
        }
        let opts =
            LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&tail.to_string()).build();
        let mut stream = self.docker.logs(id, Some(opts));
        // Frames of stdout and stderr arrive interleaved in order; a long line may span frames.
        let mut bytes = Vec::new();
        while let Some(frame) = stream.next().await {
            let frame =
                frame.map_err(|e| self.fail("read the logs of", &format!("container {id}"), e))?;
            bytes.extend_from_slice(frame.as_ref());
        }
        Ok(log_lines(&bytes, tail))
    }

    pub(super) fn watch_events(&self, device: &DeviceId) -> mpsc::Receiver<RuntimeEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let docker = self.docker.clone();
        let device = device.as_str().to_owned();
        // Events from this instant on: the engine replays those that happen before the stream is
        // established, so a container started right after `events` returns is not missed.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| format!("{}.{:09}", t.as_secs(), t.subsec_nanos()))
            .ok();
        tokio::spawn(async move {
            let filters = HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                ("label".to_owned(), vec![format!("{}={device}", labels::DEVICE)]),
            ]);
            let mut opts = EventsOptionsBuilder::default().filters(&filters);
            if let Some(since) = &since {
                opts = opts.since(since);
            }
            let mut stream = docker.events(Some(opts.build()));
            loop {
                let item = tokio::select! {
                    // Nobody listens any more: end now, not at the next event.
                    () = tx.closed() => break,
                    item = stream.next() => item,
                };
                let message = match item {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::warn!(%device, error = %e, "engine event stream failed");
                        break;
                    }
                    None => {
                        tracing::info!(%device, "engine event stream ended");
                        break;
                    }
                };
                let Some(event) = event_from(message) else {
                    continue;
                };
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// An engine event as the agent sees it; `None` for events without an actor and for exec events
/// (every health check is an exec: create, start, die, three events per check per container,
/// and they say nothing about the container's state).
fn event_from(message: bollard::models::EventMessage) -> Option<RuntimeEvent> {
    let action = message.action?;
    let actor = message.actor?;
    let id = actor.id?;
    if action.starts_with("exec_") {
        return None;
    }
    // The engine sends the container's labels (and `exitCode` on `die`) as attributes.
    let mut attributes = actor.attributes.unwrap_or_default();
    Some(RuntimeEvent {
        service: attributes.remove(labels::SERVICE),
        release: attributes.remove(labels::RELEASE),
        exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        at: message
            .time_nano
            .and_then(|ns| u64::try_from(ns / 1_000_000).ok())
            .map(fleet_proto::UnixMillis),
        ..RuntimeEvent::new(id, action)
    })
}

/// The agent's view of one stats answer. Memory is usage minus the reclaimable file cache, as
/// `docker stats` computes it (`total_inactive_file` on cgroup v1, where `inactive_file` is not
/// hierarchical; `inactive_file` on v2).
fn stats_from(resp: bollard::models::ContainerStatsResponse) -> ContainerStats {
    let memory = resp.memory_stats.as_ref();
    let cache = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|s| s.get("total_inactive_file").or_else(|| s.get("inactive_file")).copied());
    let memory_bytes = memory.and_then(|m| m.usage).map(|u| u.saturating_sub(cache.unwrap_or(0)));
    let networks = resp.networks.as_ref();
    let sum = |f: fn(&bollard::models::ContainerNetworkStats) -> Option<u64>| {
        networks.map(|n| n.values().filter_map(f).sum::<u64>())
    };
    ContainerStats {
        cpu_ns: resp.cpu_stats.as_ref().and_then(|c| c.cpu_usage.as_ref()?.total_usage),
        memory_bytes,
        memory_limit_bytes: memory.and_then(|m| m.limit),
        pids: resp.pids_stats.as_ref().and_then(|p| p.current),
        net_rx_bytes: sum(|n| n.rx_bytes),
        net_tx_bytes: sum(|n| n.tx_bytes),
    }
}

/// The last `tail` lines of a log, without their line endings.
fn log_lines(bytes: &[u8], tail: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<String> = text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
        .collect();
    if text.is_empty() {
        return Vec::new();
    }
    let skip = lines.len().saturating_sub(tail);
    lines.into_iter().skip(skip).collect()
}

/// The engine's view of a container, as the agent sees it.
fn observed_from(resp: ContainerInspectResponse) -> ObservedContainer {
    let state = resp.state.unwrap_or_default();
    let container_state = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        // Newer engines only: still running until the stop completes.
        Some(ContainerStateStatusEnum::STOPPING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        // On its way out: no longer running, and about to be gone.
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::REMOVING) => {
            ContainerState::Exited
        }
        Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
        Some(ContainerStateStatusEnum::EMPTY) | None => {
            if state.restarting == Some(true) {
                ContainerState::Restarting
            } else if state.paused == Some(true) {
                ContainerState::Paused
            } else if state.running == Some(true) {
                ContainerState::Running
            } else if state.dead == Some(true) {
                ContainerState::Dead
            } else if state.started_at.as_deref().is_some_and(|s| !s.starts_with("0001-")) {
                ContainerState::Exited
            } else {
                ContainerState::Created
            }
        }
    };
    let health = match state.health.as_ref().and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => Health::NoCheck,
    };
    // The engine resets ExitCode to 0 when a container starts, so it means "last exit" only once
    // the container has exited (or is being restarted after an exit).
    let exit_code = match container_state {
        ContainerState::Exited | ContainerState::Dead | ContainerState::Restarting => {
            state.exit_code.map(|c| i32::try_from(c).unwrap_or(i32::MAX))
        }
        _ => None,
    };
    let config = resp.config.unwrap_or_default();
    // The first network's address: the release network, or the default bridge.
    let ip = resp.network_settings.as_ref().and_then(|n| n.networks.as_ref()).and_then(|nets| {
        nets.values()
            .filter_map(|e| e.ip_address.as_deref())
            .find(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
    });
    let mut ports: Vec<PortBinding> = resp
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, bindings)| {
            let container_port = key.split('/').next()?.parse::<u16>().ok()?;
            Some((container_port, bindings?))
        })
        .flat_map(|(container_port, bindings)| {
            bindings.into_iter().filter_map(move |b| {
                let host_port = b.host_port.as_deref()?.parse::<u16>().ok()?;
                let host_ip = b
                    .host_ip
                    .as_deref()
                    .and_then(|ip| ip.parse().ok())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                Some(PortBinding { container_port, host_ip, host_port })
            })
        })
        .collect();
    ports.sort_by_key(|p| (p.container_port, p.host_ip, p.host_port));
    ports.dedup();
    ObservedContainer {
        id: resp.id.unwrap_or_default(),
        name: resp.name.unwrap_or_default().trim_start_matches('/').to_owned(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        // The reference given at create (`repo@sha256:…`), not the local image id.
        image: config.image.or(resp.image).unwrap_or_default(),
        state: container_state,
        health,
        exit_code,
        restart_count: resp
            .restart_count
            .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
        oom_killed: state.oom_killed.unwrap_or(false),
        ports,
        ip,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bollard::models::{
        ContainerConfig, ContainerState as EngineState, NetworkSettings,
        PortBinding as EngineBinding,
    };

    use super::*;

    #[test]
    fn stats_subtract_the_page_cache_per_cgroup_version_and_sum_networks() {
        use bollard::models::{
            ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerNetworkStats,
            ContainerStatsResponse,
        };
        let resp = |stats: &[(&str, u64)]| ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage { total_usage: Some(42), ..Default::default() }),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(1000),
                limit: Some(4096),
                stats: Some(stats.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
                ..Default::default()
            }),
            networks: Some(HashMap::from([
                (
                    "eth0".to_owned(),
                    ContainerNetworkStats {
                        rx_bytes: Some(10),
                        tx_bytes: Some(1),
                        ..Default::default()
                    },
                ),
                (
                    "eth1".to_owned(),
                    ContainerNetworkStats {
                        rx_bytes: Some(5),
                        tx_bytes: Some(2),
                        ..Default::default()
                    },
                ),
            ])),
            ..Default::default()
        };
        let v2 = stats_from(resp(&[("inactive_file", 100)]));
        assert_eq!(v2.memory_bytes, Some(900));
        assert_eq!((v2.cpu_ns, v2.memory_limit_bytes), (Some(42), Some(4096)));
        assert_eq!((v2.net_rx_bytes, v2.net_tx_bytes), (Some(15), Some(3)));
        let v1 = stats_from(resp(&[("inactive_file", 100), ("total_inactive_file", 300)]));
        assert_eq!(v1.memory_bytes, Some(700));
        assert_eq!(stats_from(ContainerStatsResponse::default()), ContainerStats::default());
    }

    fn inspected(status: ContainerStateStatusEnum, exit: i64) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("abc".to_owned()),
            name: Some("/web".to_owned()),
            image: Some("sha256:local-id".to_owned()),
            restart_count: Some(2),
            state: Some(EngineState {
                status: Some(status),
                exit_code: Some(exit),
                oom_killed: Some(true),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                image: Some("reg/web@sha256:x".to_owned()),
                labels: Some(HashMap::from([(labels::DEVICE.to_owned(), "d".to_owned())])),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(HashMap::from([
                    (
                        "8080/tcp".to_owned(),
                        Some(vec![EngineBinding {
                            host_ip: Some("127.0.0.1".to_owned()),
                            host_port: Some("49153".to_owned()),
                        }]),
                    ),
                    ("9090/tcp".to_owned(), None),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inspect_maps_state_exit_code_and_published_ports() {
        let c = observed_from(inspected(ContainerStateStatusEnum::EXITED, 137));
        assert_eq!(c.name, "web");
        assert_eq!(c.image, "reg/web@sha256:x");
        assert_eq!(c.state, ContainerState::Exited);
        assert_eq!(c.health, Health::NoCheck);
        assert_eq!(c.exit_code, Some(137));
        assert_eq!(c.restart_count, 2);
        assert!(c.oom_killed);
        assert_eq!(c.label(labels::DEVICE), Some("d"));
        assert_eq!(
            c.ports,
            vec![PortBinding {
                container_port: 8080,
                host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                host_port: 49153
            }]
        );
        let running = observed_from(inspected(ContainerStateStatusEnum::RUNNING, 0));
        assert_eq!(running.state, ContainerState::Running);
        assert_eq!(running.exit_code, None, "a running container has not exited");
    }

    #[test]
    fn log_lines_drop_line_endings_and_keep_the_tail() {
        assert_eq!(log_lines(b"a\nb\r\nc\n", 2), vec!["b", "c"]);
        assert_eq!(log_lines(b"", 5), Vec::<String>::new());
        assert_eq!(log_lines(b"partial", 5), vec!["partial"]);
    }
}
