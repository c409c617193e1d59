//! What the engine is told about devices: the targets it plans over and, at each step, how
//! every device was last seen ([`Observe`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use fleet_proto::report::{UpdatePhase, UpdateResult};
use fleet_proto::{DeviceId, ReleaseId, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::devices::DeviceRecord;

/// One device the rollout's target resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDevice {
    /// The device.
    pub id: DeviceId,
    /// Pinned now: the device is listed as skipped and in no wave.
    pub pinned: bool,
    /// The release it runs now, which a rollback returns it to (`None`: no release).
    pub previous_release: Option<ReleaseId>,
}

/// How a device's latest update (for the desired state the server last sent it) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The release applied and is healthy.
    Healthy,
    /// The update failed or was refused; the previous release kept running.
    Failed {
        /// Why, as the device said.
        reason: String,
    },
    /// The new release failed and the device went back to the previous one.
    RolledBack {
        /// Why, as the device said.
        reason: String,
    },
}

impl From<&UpdateResult> for Outcome {
    fn from(result: &UpdateResult) -> Outcome {
        match result {
            UpdateResult::Applied => Outcome::Healthy,
            UpdateResult::RolledBack { reason, .. } => {
                Outcome::RolledBack { reason: reason.clone() }
            }
            UpdateResult::Failed { reason } => Outcome::Failed { reason: reason.clone() },
            UpdateResult::Rejected { reason } => {
                Outcome::Failed { reason: format!("desired state refused: {reason}") }
            }
        }
    }
}

/// What the server observes about one device when it steps the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceObservation {
    /// Its retained status says online.
    pub online: bool,
    /// The release in force on the device.
    pub release: Option<ReleaseId>,
    /// The outcome of the update to the desired state the server last published to it; `None`
    /// while that update runs or has not started. Outcomes of older generations must not
    /// appear here (see [`DeviceObservation::from_record`]).
    pub outcome: Option<Outcome>,
    /// The agent defers the update (an application holds the update lock).
    pub deferred: bool,
    /// The device is pinned now.
    pub pinned: bool,
    /// When the server last heard from it.
    pub last_seen: UnixMillis,
}

impl DeviceObservation {
    /// The observation from the registry's record at `now`: its latest state report and its
    /// pin. An update outcome counts only if it is for the desired state the server last
    /// published (`record.desired_generation`), so the outcome of an earlier update is never
    /// taken for the rollout's.
    pub fn from_record(record: &DeviceRecord, now: UnixMillis) -> DeviceObservation {
        let report = record.last_report.as_ref();
        let update = report.map(|r| &r.update);
        DeviceObservation {
            online: record.online,
            release: report.and_then(|r| r.in_force.as_ref()).map(|f| f.release.clone()),
            outcome: update
                .and_then(|u| u.last_outcome.as_ref())
                .filter(|o| {
                    record.desired_generation > 0 && o.generation >= record.desired_generation
                })
                .map(|o| Outcome::from(&o.result)),
            deferred: update
                .is_some_and(|u| u.phase == UpdatePhase::Deferred || u.deferred.is_some()),
            pinned: record.pin_at(now).is_some(),
            last_seen: record.last_seen,
        }
    }
}

impl DeviceObservation {
    /// The observation for a rollout of agent `version`: the "release" in force is the agent
    /// version running, healthy once that version runs committed (it started, connected,
    /// converged), rolled back when the device reverted that version by itself, failed when
    /// the desired state naming it was refused. Pinned means the agent pin.
    pub fn for_agent(record: &DeviceRecord, version: &str, now: UnixMillis) -> DeviceObservation {
        let mut o = DeviceObservation::from_record(record, now);
        let agent = record.agent_versions();
        o.release = agent.and_then(|a| {
            ReleaseId::new(format!("{}@{}", crate::releases::AGENT_APP, a.running)).ok()
        });
        o.pinned = record.agent_pin_at(now).is_some();
        o.outcome = match (agent, o.outcome.take()) {
            (_, Some(failed @ Outcome::Failed { .. })) => Some(failed),
            (Some(a), _) => match &a.failed {
                Some(f) if f.version == version => {
                    // Its last log line usually says why (fleetctl device show has them all).
                    let last =
                        a.failed_log.last().map_or(String::new(), |l| format!("; it logged: {l}"));
                    Some(Outcome::RolledBack {
                        reason: format!("agent update failed: {}{last}", f.reason),
                    })
                }
                _ if a.running == version && a.committed.as_deref() == Some(version) => {
                    Some(Outcome::Healthy)
                }
                _ => None,
            },
            (None, _) => None,
        };
        o
    }
}

/// Where the engine looks up a device's observed state: a map in tests, the store in the
/// server. Only the devices a step needs are looked up (those updating, due, or re-checked), so
/// a step's cost does not grow with the fleet.
pub trait Observe {
    /// The device's state now; `None` if it is not known.
    fn observe(&self, device: &DeviceId) -> Option<DeviceObservation>;
}

impl Observe for BTreeMap<DeviceId, DeviceObservation> {
    fn observe(&self, device: &DeviceId) -> Option<DeviceObservation> {
        self.get(device).cloned()
    }
}

/// Why a device counts as failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// It reported a failed update.
    UpdateFailed {
        /// As the device said.
        reason: String,
    },
    /// It reported that it rolled back to its previous release.
    RolledBackOnDevice {
        /// As the device said.
        reason: String,
    },
    /// Online, but not healthy within the update deadline.
    Deadline {
        /// The deadline, in milliseconds.
        after_ms: u64,
    },
    /// Offline for longer than the device timeout.
    Offline {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// Deferred (update lock held) for longer than the device timeout.
    Deferred {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// It was healthy, then reported a failed or rolled-back update while its wave baked.
    Regressed {
        /// As the device said.
        reason: String,
    },
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::UpdateFailed { reason } => write!(f, "update failed: {reason}"),
            FailureReason::RolledBackOnDevice { reason } => {
                write!(f, "rolled back on the device: {reason}")
            }
            FailureReason::Deadline { after_ms } => {
                write!(f, "not healthy within {} of updating", human(*after_ms))
            }
            FailureReason::Offline { after_ms } => {
                write!(f, "offline for more than {}", human(*after_ms))
            }
            FailureReason::Deferred { after_ms } => {
                write!(f, "update deferred by a lock for more than {}", human(*after_ms))
            }
            FailureReason::Regressed { reason } => write!(f, "was healthy, then failed: {reason}"),
        }
    }
}

/// Why a device the rollout planned for is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// It was pinned when its turn came, or while it updated.
    Pinned,
    /// There was no observation of it when its turn came (it left the registry).
    Unknown,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Pinned => "pinned; a rollout never moves a pinned device",
            SkipReason::Unknown => "no longer known to the registry",
        })
    }
}

/// A duration in milliseconds for people: `45s`, `10m`, `1h 30m`.
pub(super) fn human(ms: u64) -> String {
    crate::units::human_duration(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fleet_proto::report::{AgentUpdateFailure, AgentVersions, UpdateOutcome};
    use fleet_proto::{samples, Message, StateReport};

    use super::*;

    fn reporting(agent: Option<AgentVersions>, result: UpdateResult) -> DeviceRecord {
        let report = StateReport {
            agent,
            update: fleet_proto::report::UpdateStatus {
                last_outcome: Some(UpdateOutcome {
                    generation: 5,
                    finished_at: UnixMillis(1),
                    result,
                }),
                ..fleet_proto::report::UpdateStatus::default()
            },
            ..samples::report()
        };
        let mut record =
            DeviceRecord::observe_at(None, &Message::Report(report), UnixMillis(1)).unwrap();
        record.desired_generation = 5;
        record
    }

    fn versions(running: &str, committed: Option<&str>, failed: Option<&str>) -> AgentVersions {
        AgentVersions {
            running: running.into(),
            committed: committed.map(str::to_owned),
            trial: None,
            failed: failed.map(|v| AgentUpdateFailure {
                version: v.into(),
                reason: "it did not commit in 3 starts".into(),
                at: UnixMillis(1),
            }),
            failed_log: Vec::new(),
            installed: Some("1.0.0".into()),
        }
    }

    #[test]
    fn an_agent_rollout_sees_the_agent_version_not_the_app_update() {
        let now = UnixMillis(2);
        let o =
            |agent, result| DeviceObservation::for_agent(&reporting(agent, result), "2.0.0", now);
        // The old agent applied the (unchanged) app release: not healthy for the agent yet.
        let waiting = o(Some(versions("1.0.0", None, None)), UpdateResult::Applied);
        assert_eq!(waiting.outcome, None);
        assert_eq!(waiting.release.unwrap().as_str(), "fleet-agent@1.0.0");
        // On trial: still waiting.
        let mut trial = versions("2.0.0", None, None);
        trial.trial = Some("2.0.0".into());
        assert_eq!(o(Some(trial), UpdateResult::Applied).outcome, None);
        // Committed: healthy, and the release in force is the agent release.
        let done = o(Some(versions("2.0.0", Some("2.0.0"), None)), UpdateResult::Applied);
        assert_eq!(done.outcome, Some(Outcome::Healthy));
        assert_eq!(done.release.unwrap().as_str(), "fleet-agent@2.0.0");
        // Reverted on the device: rolled back, with the device's reason and its last log line.
        let mut failed = versions("1.0.0", None, Some("2.0.0"));
        let reverted = o(Some(failed.clone()), UpdateResult::Applied);
        let Some(Outcome::RolledBack { reason }) = reverted.outcome else { panic!() };
        assert_eq!(reason, "agent update failed: it did not commit in 3 starts");
        failed.failed_log = vec!["INFO started".into(), "ERROR cannot connect: refused".into()];
        let logged = o(Some(failed), UpdateResult::Applied).outcome;
        let Some(Outcome::RolledBack { reason }) = logged else { panic!() };
        assert!(reason.ends_with("; it logged: ERROR cannot connect: refused"), "{reason}");
        // Another version's old failure is not this rollout's.
        let old = o(Some(versions("1.0.0", None, Some("1.5.0"))), UpdateResult::Applied);
        assert_eq!(old.outcome, None);
        // The desired state refused: failed.
        let refused = UpdateResult::Rejected { reason: "bad".into() };
        assert!(matches!(
            o(Some(versions("1.0.0", None, None)), refused).outcome,
            Some(Outcome::Failed { .. })
        ));
        // An agent that predates self-update never reports versions: never healthy.
        let old_agent = o(None, UpdateResult::Applied);
        assert_eq!((old_agent.outcome, old_agent.release), (None, None));
    }

    #[test]
    fn the_agent_pin_holds_a_device_out_of_agent_rollouts_only() {
        let mut record = reporting(Some(versions("1.0.0", None, None)), UpdateResult::Applied);
        record.agent_pin = Some(crate::devices::PinRecord {
            release: ReleaseId::new("fleet-agent@1.0.0").unwrap(),
            reason: "bench".into(),
            pinned_by: "t".into(),
            pinned_at: UnixMillis(1),
            until: None,
        });
        assert!(DeviceObservation::for_agent(&record, "2.0.0", UnixMillis(2)).pinned);
        assert!(!DeviceObservation::from_record(&record, UnixMillis(2)).pinned);
        assert_eq!(record.wanted_agent(UnixMillis(2)), Some("1.0.0"));
    }
}
