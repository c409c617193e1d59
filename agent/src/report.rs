//! Builds the device's [`StateReport`] from the agent's state and what the engine shows: what
//! `fleet-agent status` prints and what the link sends to the server.

use fleet_proto::report::{InForce, ReleaseSource, ServiceStatus, UpdateStatus};
use fleet_proto::{DeviceId, ReleaseId, ServiceName, StateReport, UnixMillis};

use crate::runtime::{labels, ObservedContainer};
use crate::state::{AgentState, Origin, StateError};

/// The report for `device`, given its containers.
pub fn build(
    device: &DeviceId,
    state: &AgentState,
    observed: &[ObservedContainer],
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
                last_error: c
                    .oom_killed
                    .then(|| "killed for exceeding its memory limit".to_owned()),
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
        update: UpdateStatus { last_outcome: state.last_outcome()?, ..UpdateStatus::default() },
        inventory: None,
    })
}
