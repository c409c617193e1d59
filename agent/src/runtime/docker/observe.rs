//! What runs, as the engine tells it: inspect and list become [`ObservedContainer`]s, one-shot
//! stats become [`ContainerStats`], log frames become lines, and engine events become
//! [`RuntimeEvent`]s. The conversions are pure and unit-tested; the calls are thin.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use fleet_proto::report::{ContainerState, Health};
use fleet_proto::DeviceId;
use tokio::sync::mpsc;

use super::engine::{encode, encode_name, Request};
use super::model::{ContainerInspect, ContainerStatsResponse, ContainerSummary, EventMessage};
use super::{DockerRuntime, ANSWER_LIMIT};
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
        let filters =
            serde_json::json!({ "label": [format!("{}={}", labels::DEVICE, device.as_str())] });
        let request = Request::get(format!(
            "/containers/json?all=true&filters={}",
            encode(&filters.to_string())
        ));
        let summaries: Vec<ContainerSummary> =
            self.call(request, "list containers of", &format!("device {device:?}")).await?;
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
        let request = Request::get(format!("/containers/{}/json", encode_name(id)));
        let resp: ContainerInspect =
            self.call(request, "inspect", &format!("container {id}")).await?;
        Ok(observed_from(resp))
    }

    pub(super) async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        // `one-shot` (API 1.41) answers at once instead of sampling for a second to fill
        // `precpu_stats`; CPU shares are computed from consecutive samples by the caller.
        let request = Request::get(format!(
            "/containers/{}/stats?stream=false&one-shot=true",
            encode_name(id)
        ));
        let resp: ContainerStatsResponse =
            self.call(request, "read the stats of", &format!("container {id}")).await?;
        Ok(stats_from(resp))
    }

    pub(super) async fn container_logs(
        &self,
        id: &str,
        tail: usize,
    ) -> Result<Vec<String>, RuntimeError> {
        if tail == 0 {
            return Ok(Vec::new());
        }
        let request = Request::get(format!(
            "/containers/{}/logs?stdout=true&stderr=true&tail={tail}",
            encode_name(id)
        ));
        let fail = |e| self.fail("read the logs of", &format!("container {id}"), e);
        let mut answer = self.engine.stream(request).await.map_err(fail)?;
        let bytes = answer.body.read_to_end(ANSWER_LIMIT).await.map_err(fail)?;
        // A container without a terminal has its stdout and stderr framed (multiplexed); one with
        // a terminal sends them raw.
        let raw = answer.content_type.as_deref() == Some("application/vnd.docker.raw-stream")
            && !looks_multiplexed(&bytes);
        let text = if raw { bytes } else { demultiplex(&bytes) };
        Ok(log_lines(&text, tail))
    }

    pub(super) fn watch_events(&self, device: &DeviceId) -> mpsc::Receiver<RuntimeEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let engine = self.engine.clone();
        let device = device.as_str().to_owned();
        // Events from this instant on: the engine replays those that happen before the stream is
        // established, so a container started right after `events` returns is not missed.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| format!("&since={}.{:09}", t.as_secs(), t.subsec_nanos()))
            .unwrap_or_default();
        let filters = serde_json::json!({
            "type": ["container"],
            "label": [format!("{}={device}", labels::DEVICE)],
        });
        let path = format!("/events?filters={}{since}", encode(&filters.to_string()));
        tokio::spawn(async move {
            let mut stream = match engine.stream(Request::get(path)).await {
                Ok(answer) => answer.body.json_values::<EventMessage>(),
                Err(e) => {
                    tracing::warn!(%device, error = %e, "engine event stream failed");
                    return;
                }
            };
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
fn event_from(message: EventMessage) -> Option<RuntimeEvent> {
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
fn stats_from(resp: ContainerStatsResponse) -> ContainerStats {
    let memory = resp.memory_stats.as_ref();
    let cache = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|s| s.get("total_inactive_file").or_else(|| s.get("inactive_file")).copied());
    let memory_bytes = memory.and_then(|m| m.usage).map(|u| u.saturating_sub(cache.unwrap_or(0)));
    let networks = resp.networks.as_ref();
    let sum = |f: fn(&super::model::NetworkStats) -> Option<u64>| {
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

/// Whether `bytes` begin with a multiplexed frame header: stream 0, 1 or 2, three zero bytes,
/// a length. (Engines before API 1.42 label framed logs as raw too.)
fn looks_multiplexed(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0] <= 2 && bytes[1..4] == [0, 0, 0]
}

/// The payloads of multiplexed log frames (8-byte header: stream, 3 zero bytes, big-endian
/// length), in order; bytes that are not a frame are kept as they are.
fn demultiplex(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    while looks_multiplexed(bytes) {
        let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        let end = (8 + len).min(bytes.len());
        out.extend_from_slice(&bytes[8..end]);
        bytes = &bytes[end..];
    }
    out.extend_from_slice(bytes);
    out
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
fn observed_from(resp: ContainerInspect) -> ObservedContainer {
    let state = resp.state.unwrap_or_default();
    let container_state = match state.status.as_deref() {
        Some("created") => ContainerState::Created,
        // `stopping` (newer engines): still running until the stop completes.
        Some("running" | "stopping") => ContainerState::Running,
        Some("paused") => ContainerState::Paused,
        Some("restarting") => ContainerState::Restarting,
        // On its way out: no longer running, and about to be gone.
        Some("exited" | "removing") => ContainerState::Exited,
        Some("dead") => ContainerState::Dead,
        // Old engines, and anything new: the booleans say it.
        _ => {
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
    let health = match state.health.as_ref().and_then(|h| h.status.as_deref()) {
        Some("starting") => Health::Starting,
        Some("healthy") => Health::Healthy,
        Some("unhealthy") => Health::Unhealthy,
        _ => Health::NoCheck,
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
        stop_grace: config
            .stop_timeout
            .and_then(|s| u64::try_from(s).ok())
            .map(std::time::Duration::from_secs),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::super::model::{
        ContainerConfigView, ContainerStateView, CpuStats, CpuUsage, MemoryStats, NetworkSettings,
        NetworkStats, PortBinding as EngineBinding,
    };
    use super::*;

    #[test]
    fn stats_subtract_the_page_cache_per_cgroup_version_and_sum_networks() {
        let resp = |stats: &[(&str, u64)]| ContainerStatsResponse {
            cpu_stats: Some(CpuStats { cpu_usage: Some(CpuUsage { total_usage: Some(42) }) }),
            memory_stats: Some(MemoryStats {
                usage: Some(1000),
                limit: Some(4096),
                stats: Some(stats.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
            }),
            networks: Some(HashMap::from([
                ("eth0".to_owned(), NetworkStats { rx_bytes: Some(10), tx_bytes: Some(1) }),
                ("eth1".to_owned(), NetworkStats { rx_bytes: Some(5), tx_bytes: Some(2) }),
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

    fn inspected(status: &str, exit: i64) -> ContainerInspect {
        ContainerInspect {
            id: Some("abc".to_owned()),
            name: Some("/web".to_owned()),
            image: Some("sha256:local-id".to_owned()),
            restart_count: Some(2),
            state: Some(ContainerStateView {
                status: Some(status.to_owned()),
                exit_code: Some(exit),
                oom_killed: Some(true),
                ..Default::default()
            }),
            config: Some(ContainerConfigView {
                image: Some("reg/web@sha256:x".to_owned()),
                labels: Some(HashMap::from([(labels::DEVICE.to_owned(), "d".to_owned())])),
                stop_timeout: Some(20),
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
        }
    }

    #[test]
    fn inspect_maps_state_exit_code_and_published_ports() {
        let c = observed_from(inspected("exited", 137));
        assert_eq!(c.name, "web");
        assert_eq!(c.image, "reg/web@sha256:x");
        assert_eq!(c.state, ContainerState::Exited);
        assert_eq!(c.health, Health::NoCheck);
        assert_eq!(c.exit_code, Some(137));
        assert_eq!(c.restart_count, 2);
        assert!(c.oom_killed);
        assert_eq!(c.stop_grace, Some(std::time::Duration::from_secs(20)));
        assert_eq!(c.label(labels::DEVICE), Some("d"));
        assert_eq!(
            c.ports,
            vec![PortBinding {
                container_port: 8080,
                host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                host_port: 49153
            }]
        );
        let running = observed_from(inspected("running", 0));
        assert_eq!(running.state, ContainerState::Running);
        assert_eq!(running.exit_code, None, "a running container has not exited");
    }

    #[test]
    fn multiplexed_log_frames_are_joined_in_order_and_raw_text_kept() {
        let frame = |stream: u8, text: &str| {
            let mut f = vec![stream, 0, 0, 0];
            f.extend_from_slice(&(text.len() as u32).to_be_bytes());
            f.extend_from_slice(text.as_bytes());
            f
        };
        let framed = [frame(1, "out 1\nout "), frame(2, "err\n"), frame(1, "2\n")].concat();
        assert!(looks_multiplexed(&framed));
        assert_eq!(demultiplex(&framed), b"out 1\nout err\n2\n");
        assert!(!looks_multiplexed(b"plain text\n"));
        assert_eq!(demultiplex(b"plain text\n"), b"plain text\n");
        // A frame cut short keeps what arrived.
        assert_eq!(demultiplex(&frame(1, "abcdef")[..10]), b"ab");
    }

    #[test]
    fn a_state_old_engines_leave_empty_is_read_from_the_booleans() {
        let mut c = inspected("", 0);
        c.state.as_mut().unwrap().restarting = Some(true);
        assert_eq!(observed_from(c).state, ContainerState::Restarting);
        let c = inspected("", 0);
        assert_eq!(observed_from(c).state, ContainerState::Created);
    }

    #[test]
    fn log_lines_drop_line_endings_and_keep_the_tail() {
        assert_eq!(log_lines(b"a\nb\r\nc\n", 2), vec!["b", "c"]);
        assert_eq!(log_lines(b"", 5), Vec::<String>::new());
        assert_eq!(log_lines(b"partial", 5), vec!["partial"]);
    }
}
