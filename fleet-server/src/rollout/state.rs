//! Where a rollout and its devices stand, the [`Action`]s a step answers with, and the status
//! `rollout status` shows. Data only: the transitions are in the engine.

use std::fmt;

use fleet_proto::{DeviceId, ReleaseId, UnixMillis};
use serde::{Deserialize, Serialize};

use super::observe::{FailureReason, SkipReason};
use super::spec::RolloutId;

/// Why an updating device is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitCause {
    /// It is offline.
    Offline,
    /// It defers the update.
    Deferred,
}

/// The clock an updating device runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// Online and working on it since then (measured against the update deadline).
    Working {
        /// Since when.
        since: UnixMillis,
    },
    /// Offline or deferred since then (measured against the device timeout).
    Waiting {
        /// Since when.
        since: UnixMillis,
        /// Why.
        cause: WaitCause,
    },
}

/// Where one device stands in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// Not targeted yet.
    Pending,
    /// Targeted, neither healthy nor failed yet.
    Updating {
        /// When the rollout targeted it.
        targeted_at: UnixMillis,
        /// Its clock.
        progress: Progress,
    },
    /// Runs the release, healthy.
    Healthy {
        /// Since when.
        at: UnixMillis,
    },
    /// Counts as failed.
    Failed {
        /// Since when.
        at: UnixMillis,
        /// Why.
        reason: FailureReason,
    },
    /// Left out.
    Skipped {
        /// Why.
        reason: SkipReason,
    },
    /// Sent back to its previous release by the rollout's rollback.
    RolledBack {
        /// When.
        at: UnixMillis,
    },
}

/// Why a rollout paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// The failure threshold was crossed.
    Threshold {
        /// Devices failed so far.
        failed: usize,
        /// How many failures were tolerated.
        allowed: usize,
    },
    /// An operator paused it.
    Manual {
        /// Their reason.
        reason: String,
    },
}

// Said once, in the API's words: audit lines read like `rollout status`.
impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&fleet_api::PauseReason::from(self.clone()), f)
    }
}

/// Why a rollout rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RollbackReason {
    /// The failure threshold was crossed.
    Threshold {
        /// Devices failed so far.
        failed: usize,
        /// How many failures were tolerated.
        allowed: usize,
    },
    /// An operator asked for it.
    Manual,
}

impl fmt::Display for RollbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&fleet_api::RollbackReason::from(self.clone()), f)
    }
}

/// Where the rollout as a whole stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Moving (or waiting for a window, a bake, devices).
    Running,
    /// Stopped until resumed.
    Paused {
        /// Why.
        reason: PauseReason,
        /// Since when.
        at: UnixMillis,
    },
    /// Every wave ran and baked.
    Completed {
        /// When.
        at: UnixMillis,
    },
    /// Ended by an operator; devices keep what they run.
    Aborted {
        /// When.
        at: UnixMillis,
    },
    /// Ended by sending the targeted devices back to their previous releases.
    RolledBack {
        /// Why.
        reason: RollbackReason,
        /// When.
        at: UnixMillis,
    },
}

impl RunState {
    /// A one-word name, as `rollout status` shows it.
    pub fn name(&self) -> &'static str {
        fleet_api::RunState::from(self.clone()).name()
    }

    /// Running or paused: the rollout still holds its devices (one active rollout per device).
    pub fn is_active(&self) -> bool {
        matches!(self, RunState::Running | RunState::Paused { .. })
    }
}

/// What the I/O layer must do or record. Every action is also one audit-log line (`Display`).
/// Waves are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A wave started.
    WaveStarted {
        /// Which (from 1).
        wave: usize,
        /// Its devices.
        devices: usize,
    },
    /// Publish a desired state with `release` to `device`.
    Target {
        /// The device.
        device: DeviceId,
        /// The release.
        release: ReleaseId,
    },
    /// The device runs the release, healthy.
    DeviceHealthy {
        /// The device.
        device: DeviceId,
    },
    /// The device counts as failed.
    DeviceFailed {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: FailureReason,
    },
    /// The device is left out of the rollout.
    DeviceSkipped {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: SkipReason,
    },
    /// Every device of the wave is healthy, failed or skipped; the bake begins.
    WaveCompleted {
        /// Which (from 1).
        wave: usize,
        /// Healthy devices.
        healthy: usize,
        /// Failed devices.
        failed: usize,
        /// Skipped devices.
        skipped: usize,
    },
    /// The rollout paused.
    Paused {
        /// Why.
        reason: PauseReason,
    },
    /// The rollout resumed.
    Resumed,
    /// The rollout rolls back; [`Action::Rollback`]s follow.
    RollbackStarted {
        /// Why.
        reason: RollbackReason,
    },
    /// Publish a desired state with `to` (`None`: no release) to `device`.
    Rollback {
        /// The device.
        device: DeviceId,
        /// The release it ran before the rollout.
        to: Option<ReleaseId>,
    },
    /// Every wave ran and baked.
    Completed,
    /// An operator aborted the rollout.
    Aborted,
    /// An operator ended the current wave's bake early.
    Promoted {
        /// Which wave (from 1).
        wave: usize,
    },
    /// An operator gave the failed devices another try; their [`Action::Target`]s follow.
    Retried {
        /// How many.
        devices: usize,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::WaveStarted { wave, devices } => write!(f, "wave {wave} started ({devices} devices)"),
            Action::Target { device, release } => write!(f, "{device}: target release {release}"),
            Action::DeviceHealthy { device } => write!(f, "{device}: healthy on the release"),
            Action::DeviceFailed { device, reason } => write!(f, "{device}: failed: {reason}"),
            Action::DeviceSkipped { device, reason } => write!(f, "{device}: skipped: {reason}"),
            Action::WaveCompleted { wave, healthy, failed, skipped } => write!(
                f,
                "wave {wave} completed ({healthy} healthy, {failed} failed, {skipped} skipped); baking"
            ),
            Action::Paused { reason } => write!(f, "paused: {reason}"),
            Action::Resumed => f.write_str("resumed"),
            Action::RollbackStarted { reason } => write!(f, "rolling back: {reason}"),
            Action::Rollback { device, to: Some(to) } => write!(f, "{device}: roll back to release {to}"),
            Action::Rollback { device, to: None } => {
                write!(f, "{device}: roll back to no release (it ran none before)")
            }
            Action::Completed => f.write_str("completed"),
            Action::Aborted => f.write_str("aborted"),
            Action::Promoted { wave } => write!(f, "wave {wave} promoted: its bake ended early"),
            Action::Retried { devices } => write!(f, "retrying {devices} failed devices"),
        }
    }
}

/// A manual command that does not fit the rollout's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command} rollout {rollout}: it is {state}")]
pub struct CommandError {
    /// The rollout.
    pub rollout: RolloutId,
    /// The command (`pause`, `resume`, `abort`, `roll back`).
    pub command: String,
    /// The rollout's state name.
    pub state: String,
}

/// Device counts of one wave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Not targeted yet.
    pub pending: usize,
    /// Targeted, not yet healthy or failed.
    pub updating: usize,
    /// Healthy on the release.
    pub healthy: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped (pinned or gone when their turn came).
    pub skipped: usize,
    /// Sent back to their previous release.
    pub rolled_back: usize,
}

impl WaveCounts {
    pub(super) fn slot(&mut self, state: &DeviceState) -> &mut usize {
        match state {
            DeviceState::Pending => &mut self.pending,
            DeviceState::Updating { .. } => &mut self.updating,
            DeviceState::Healthy { .. } => &mut self.healthy,
            DeviceState::Failed { .. } => &mut self.failed,
            DeviceState::Skipped { .. } => &mut self.skipped,
            DeviceState::RolledBack { .. } => &mut self.rolled_back,
        }
    }

    /// All devices of the wave.
    pub fn total(&self) -> usize {
        self.pending + self.updating + self.healthy + self.failed + self.skipped + self.rolled_back
    }
}

/// Where a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WavePhase {
    /// Not started (a wave before it runs, or the window is closed).
    Waiting,
    /// Targeting its devices and waiting for their verdicts.
    Active {
        /// When it started.
        started_at: UnixMillis,
        /// When the current stretch of targeting began (stagger offsets count from it);
        /// `None` while the window is closed.
        stagger_base: Option<UnixMillis>,
    },
    /// All its devices have a verdict; baking.
    Baking {
        /// Since when.
        since: UnixMillis,
    },
    /// Baked; the rollout moved on.
    Done,
}

/// Per-wave progress, for `rollout status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// Which (from 1).
    pub wave: usize,
    /// Its devices.
    pub devices: usize,
    /// Where it stands.
    pub phase: WavePhase,
    /// Counts by device state.
    pub counts: WaveCounts,
}

/// A rollout's progress, for `rollout status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The rollout.
    pub id: RolloutId,
    /// Its release.
    pub release: ReleaseId,
    /// Where it stands.
    pub state: RunState,
    /// The wave in progress (from 1), if any.
    pub current_wave: Option<usize>,
    /// Every wave.
    pub waves: Vec<WaveStatus>,
    /// Devices left out at creation because they were pinned.
    pub skipped_pinned: Vec<DeviceId>,
    /// Devices failed so far.
    pub failed: usize,
    /// Failures tolerated before the threshold is crossed now.
    pub allowed_failures: usize,
    /// When the bake of the current wave ends, if it is baking.
    pub bake_until: Option<UnixMillis>,
}
