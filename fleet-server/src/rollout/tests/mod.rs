//! The engine's tests, one file per part of the engine they test; the shared fixtures (a
//! fleet of observed devices, specs, clock constants) are here.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_proto::{DeviceId, ReleaseId, UnixMillis};

use super::*;

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
/// 2024-01-01 00:00 UTC, a Monday.
const MONDAY: u64 = 1_704_067_200_000;

type Observed = BTreeMap<DeviceId, DeviceObservation>;

fn id(n: usize) -> DeviceId {
    DeviceId::new(format!("d{n:05}")).unwrap()
}

fn index_of(device: &DeviceId) -> usize {
    device.as_str()[1..].parse().unwrap()
}

fn rel(s: &str) -> ReleaseId {
    ReleaseId::new(s).unwrap()
}

fn at(ms: u64) -> UnixMillis {
    UnixMillis(MONDAY + ms)
}

fn spec(waves: &str) -> RolloutSpec {
    RolloutSpec {
        id: RolloutId(1),
        release: rel("app@2"),
        waves: parse_waves(waves).unwrap(),
        bake: Duration::from_secs(600),
        max_parallel: None,
        failure_threshold: Threshold::Count(0),
        on_failure: OnFailure::Pause,
        device_timeout: Duration::from_secs(3600),
        update_deadline: Duration::from_secs(1800),
        window: None,
        stagger: Duration::ZERO,
    }
}

fn targets(n: usize) -> Vec<TargetDevice> {
    (0..n)
        .map(|i| TargetDevice { id: id(i), pinned: false, previous_release: Some(rel("app@1")) })
        .collect()
}

fn fleet(n: usize) -> Observed {
    (0..n)
        .map(|i| {
            let obs = DeviceObservation {
                online: true,
                release: Some(rel("app@1")),
                outcome: None,
                deferred: false,
                pinned: false,
                last_seen: at(0),
            };
            (id(i), obs)
        })
        .collect()
}

fn healthy(fleet: &mut Observed, device: &DeviceId) {
    let obs = fleet.get_mut(device).unwrap();
    obs.online = true;
    obs.release = Some(rel("app@2"));
    obs.outcome = Some(Outcome::Healthy);
}

fn targeted(actions: &[Action]) -> Vec<DeviceId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Target { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect()
}

/// Every device the actions targeted reports the release applied and healthy.
fn all_healthy(fleet: &mut Observed, actions: &[Action]) {
    for device in targeted(actions) {
        healthy(fleet, &device);
    }
}

fn updating_now(rollout: &Rollout) -> usize {
    rollout.status().waves.iter().map(|w| w.counts.updating).sum()
}

mod engine;
mod observe;
mod simulation;
mod spec;
mod state;
mod window;
