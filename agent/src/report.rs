//! Builds the device's [`StateReport`] from the agent's state and what the engine shows: what
//! `fleet-agent status` prints and what the link sends to the server.

use fleet_proto::report::{ContainerState, InForce, ReleaseSource, ServiceStatus, UpdateStatus};
use fleet_proto::{DeviceId, ReleaseId, ServiceName, StateReport, UnixMillis};

use crate::runtime::{labels, ObservedContainer};
use crate::state::{AgentState, Origin, StateError};

/// The report for `device`, given its containers and what the update machinery is doing
/// (`update`, from the reconciler; its `last_outcome` comes from the state store).
pub fn build(
    device: &DeviceId,
    state: &AgentState,
    observed: &[ObservedContainer],
    update: UpdateStatus,
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
                last_error: last_error(c),
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
        inventory: None,
    })
}

/// What is wrong with a container, in words: out-of-memory kills and crash loops are reported,
/// not hidden behind an engine that keeps restarting the service.
fn last_error(c: &ObservedContainer) -> Option<String> {
    let code = c.exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
    if c.oom_killed {
        Some(format!("killed for exceeding its memory limit ({} restarts)", c.restart_count))
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
        }
    }

    #[test]
    fn crash_loops_and_failed_exits_are_named_with_their_restart_counts() {
        let looping = last_error(&container(ContainerState::Restarting, Some(1), 7)).unwrap();
        assert!(looping.contains("crash-looping") && looping.contains("7 restarts"), "{looping}");
        assert!(looping.contains("code 1"), "{looping}");
        let exited = last_error(&container(ContainerState::Exited, Some(2), 3)).unwrap();
        assert!(exited.contains("code 2") && exited.contains("3 restarts"), "{exited}");
        assert_eq!(last_error(&container(ContainerState::Exited, Some(0), 0)), None);
        assert_eq!(last_error(&container(ContainerState::Running, None, 0)), None);
        let mut oom = container(ContainerState::Exited, Some(137), 1);
        oom.oom_killed = true;
        assert!(last_error(&oom).unwrap().contains("memory limit"));
    }
}
