//! Builds the device's [`StateReport`] from the agent's state and what the engine shows: what
//! `fleet-agent status` prints and what the link sends to the server.

use fleet_proto::report::{ContainerState, InForce, ReleaseSource, ServiceStatus, UpdateStatus};
use fleet_proto::{DeviceId, Inventory, ReleaseId, ServiceName, StateReport, UnixMillis};

use crate::runtime::{labels, ObservedContainer};
use crate::state::{AgentState, Origin, StateError};

/// The report for `device`, given its containers, what the update machinery is doing
/// (`update`, from the reconciler; its `last_outcome` comes from the state store) and the
/// host's inventory.
pub fn build(
    device: &DeviceId,
    state: &AgentState,
    observed: &[ObservedContainer],
    update: UpdateStatus,
    inventory: Option<Inventory>,
) -> Result<StateReport, StateError> {
    let desired = state.desired()?;
    let proven = state.proven()?;
    let failed = state.failed()?;
    let accepted_generation = match desired.as_ref().map(|d| d.origin) {
        Some(Origin::Server { generation }) => generation,
        _ => 0,
    };
    let in_force = proven.as_ref().and_then(|p| {
        let release = p.release.as_ref()?.id.clone();
        let source = match (p.origin, desired.as_ref().map(|d| d.origin)) {
            (_, Some(d)) if failed == Some(d) => ReleaseSource::Rollback {
                failed_generation: match d {
                    Origin::Server { generation } => generation,
                    Origin::Local { .. } => 0,
                },
            },
            (Origin::Server { generation }, _) => ReleaseSource::Server { generation },
            (Origin::Local { .. }, _) => ReleaseSource::Local,
        };
        Some(InForce { release, source })
    });
    // The limit an out-of-memory kill is reported with: the service's, in the release its
    // container belongs to.
    let releases: Vec<&fleet_proto::ReleaseSpec> = [
        proven.as_ref().and_then(|p| p.release.as_ref()),
        desired.as_ref().and_then(|d| d.release.as_ref()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let memory_limit = |c: &ObservedContainer| {
        let release = releases.iter().find(|r| Some(r.id.as_str()) == c.label(labels::RELEASE))?;
        let service = c.label(labels::SERVICE)?;
        release.services.iter().find(|s| s.name.as_str() == service)?.resources.memory_bytes
    };
    let mut services: Vec<ServiceStatus> = observed
        .iter()
        .filter_map(|c| {
            Some(ServiceStatus {
                name: ServiceName::new(c.label(labels::SERVICE)?).ok()?,
                release: ReleaseId::new(c.label(labels::RELEASE)?).ok()?,
                image_digest: c
                    .image
                    .rsplit_once('@')
                    .map_or(c.image.clone(), |(_, d)| d.to_owned()),
                container_id: Some(c.id.chars().take(12).collect()),
                state: c.state,
                health: c.health,
                restarts: c.restart_count,
                exit_code: c.exit_code,
                last_error: last_error(c, memory_limit(c)),
            })
        })
        .collect();
    services.sort_by(|a, b| {
        (a.name.as_str(), a.release.as_str()).cmp(&(b.name.as_str(), b.release.as_str()))
    });
    Ok(StateReport {
        device: device.clone(),
        reported_at: UnixMillis::now(),
        accepted_generation,
        in_force,
        services,
        update: UpdateStatus { last_outcome: state.last_outcome()?, ..update },
        inventory,
        seal_key: None,
        agent: None,
        seal_key_proof: None,
    })
}

/// How long a device goes without publishing a full report when nothing changes. The server
/// takes reports on a clean MQTT session, so one published while the server's own connection
/// was down is gone; this bounds how long such a loss stays unhealed (measured in the fleet
/// simulator: 10,000 devices connecting at once through Mosquitto cost the server's session a
/// keep-alive, and 567 first reports with it). 48 full reports a day, 36 KB, instead of the
/// 1,440 of a report per converge.
pub const REPORT_REFRESH_MS: u64 = 30 * 60 * 1000;

/// What to publish of `report` given the last report published on this connection (pure):
/// nothing when nothing but the time changed (the agent builds a report on every converge,
/// once a minute when idle; sending each would cost a cellular device megabytes a day for no
/// news), and the report without its inventory when the inventory is the one already sent
/// (the server keeps it; see [`StateReport::inventory`]). Every [`REPORT_REFRESH_MS`] the
/// whole report goes again, inventory included, as on a new connection.
pub fn to_publish(report: &StateReport, last: Option<&StateReport>) -> Option<StateReport> {
    let Some(last) = last else { return Some(report.clone()) };
    if report.reported_at.0.saturating_sub(last.reported_at.0) >= REPORT_REFRESH_MS {
        return Some(report.clone());
    }
    if (StateReport { reported_at: last.reported_at, ..report.clone() }) == *last {
        return None;
    }
    let mut out = report.clone();
    if out.inventory == last.inventory {
        out.inventory = None;
    }
    Some(out)
}

/// What is wrong with a container, in words: out-of-memory kills and crash loops are reported,
/// not hidden behind an engine that keeps restarting the service.
fn last_error(c: &ObservedContainer, memory_limit: Option<u64>) -> Option<String> {
    let code = c.exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
    if c.oom_killed {
        let limit = memory_limit.map_or_else(String::new, |l| format!(" of {}", mib(l)));
        Some(format!("oom-killed: exceeded its memory limit{limit} ({} restarts)", c.restart_count))
    } else if c.state == ContainerState::Restarting {
        Some(format!(
            "crash-looping: exited with code {code}, {} restarts; the engine waits longer before each restart",
            c.restart_count
        ))
    } else if matches!(c.state, ContainerState::Exited | ContainerState::Dead)
        && c.exit_code != Some(0)
    {
        Some(format!("exited with code {code} after {} restarts", c.restart_count))
    } else {
        None
    }
}

/// Bytes as an operator reads a limit: `64 MiB`, `1.5 GiB`.
pub fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fleet_proto::report::Health;

    use super::*;

    fn container(
        state: ContainerState,
        exit_code: Option<i32>,
        restarts: u32,
    ) -> ObservedContainer {
        ObservedContainer {
            id: "id".into(),
            name: "c".into(),
            labels: BTreeMap::new(),
            image: "img".into(),
            state,
            health: Health::NoCheck,
            exit_code,
            restart_count: restarts,
            oom_killed: false,
            ports: vec![],
            ip: None,
            stop_grace: None,
        }
    }

    #[test]
    fn crash_loops_and_failed_exits_are_named_with_their_restart_counts() {
        let looping = last_error(&container(ContainerState::Restarting, Some(1), 7), None).unwrap();
        assert!(looping.contains("crash-looping") && looping.contains("7 restarts"), "{looping}");
        assert!(looping.contains("code 1"), "{looping}");
        let exited = last_error(&container(ContainerState::Exited, Some(2), 3), None).unwrap();
        assert!(exited.contains("code 2") && exited.contains("3 restarts"), "{exited}");
        assert_eq!(last_error(&container(ContainerState::Exited, Some(0), 0), None), None);
        assert_eq!(last_error(&container(ContainerState::Running, None, 0), None), None);
        let mut oom = container(ContainerState::Exited, Some(137), 1);
        oom.oom_killed = true;
        assert!(last_error(&oom, None)
            .unwrap()
            .starts_with("oom-killed: exceeded its memory limit ("));
        assert_eq!(
            last_error(&oom, Some(64 << 20)).unwrap(),
            format!(
                "oom-killed: exceeded its memory limit of 64 MiB ({} restarts)",
                oom.restart_count
            )
        );
    }

    #[test]
    fn only_news_is_published_and_the_inventory_only_when_it_changed() {
        let first = fleet_proto::samples::report();
        assert_eq!(to_publish(&first, None), Some(first.clone()), "a new connection: all of it");
        let later =
            StateReport { reported_at: UnixMillis(first.reported_at.0 + 60_000), ..first.clone() };
        assert_eq!(to_publish(&later, Some(&first)), None, "only the time changed");
        let mut changed = later.clone();
        changed.accepted_generation += 1;
        let sent = to_publish(&changed, Some(&first)).unwrap();
        assert_eq!(sent.accepted_generation, changed.accepted_generation);
        assert_eq!(sent.inventory, None, "the server has this inventory already");
        let mut moved = changed.clone();
        moved.inventory.as_mut().unwrap().kernel = "6.6.0".into();
        assert_eq!(to_publish(&moved, Some(&changed)).unwrap().inventory, moved.inventory);
    }

    #[test]
    fn a_device_with_no_news_still_sends_everything_every_half_hour() {
        let first = fleet_proto::samples::report();
        let at = |ms: u64| StateReport {
            reported_at: UnixMillis(first.reported_at.0 + ms),
            ..first.clone()
        };
        assert_eq!(to_publish(&at(REPORT_REFRESH_MS - 1), Some(&first)), None);
        let refresh = at(REPORT_REFRESH_MS);
        assert_eq!(to_publish(&refresh, Some(&first)), Some(refresh.clone()), "inventory included");
        // A clock that stepped back sends nothing extra (and never panics).
        let earlier =
            StateReport { reported_at: UnixMillis(first.reported_at.0 - 1), ..first.clone() };
        assert_eq!(to_publish(&earlier, Some(&first)), None);
    }
}
