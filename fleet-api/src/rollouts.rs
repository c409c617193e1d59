//! Rollouts as the API takes and shows them: requests with text fields as an operator types
//! them (and their defaults), pre-flight plans, and progress per wave.

use std::fmt;

use fleet_proto::{DeviceId, ReleaseId, UnixMillis};
use serde::{Deserialize, Serialize};

/// The waves a request without `waves` gets.
pub const DEFAULT_WAVES: &str = "1,10%,50%,100%";
/// Default bake time.
pub const DEFAULT_BAKE: &str = "10m";
/// Default device timeout.
pub const DEFAULT_DEVICE_TIMEOUT: &str = "6h";
/// Default update deadline.
pub const DEFAULT_UPDATE_DEADLINE: &str = "30m";

/// A rollout request (`POST /api/v1/rollouts`, `POST /api/v1/rollouts/plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RolloutRequest {
    /// The release (`app@version`).
    #[cfg_attr(feature = "schema", schemars(with = "fleet_proto::ReleaseId"))]
    pub release: String,
    /// `group:NAME`, `selector:k=v,...`, `devices:a,b,c`; a bare `k=v,...` is a selector and a
    /// bare name a group.
    pub target: String,
    /// Cumulative waves (default [`DEFAULT_WAVES`]).
    #[serde(default)]
    pub waves: Option<String>,
    /// Bake time after each wave (default [`DEFAULT_BAKE`]).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::DURATION)))]
    pub bake: Option<String>,
    /// Most devices updating at once (default: no limit).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Failures tolerated, `3` or `5%` (default `0`: the first failure stops it).
    #[serde(default)]
    pub failure_threshold: Option<String>,
    /// `pause` (default) or `rollback`.
    #[serde(default)]
    pub on_failure: Option<String>,
    /// Maintenance window, e.g. `Mon-Fri 22:00-05:00 Europe/Berlin` (default: always).
    #[serde(default)]
    pub window: Option<String>,
    /// An offline or deferred device fails after this long (default [`DEFAULT_DEVICE_TIMEOUT`]).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::DURATION)))]
    pub device_timeout: Option<String>,
    /// An online device fails if not healthy this long after targeting (default
    /// [`DEFAULT_UPDATE_DEADLINE`]).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::DURATION)))]
    pub update_deadline: Option<String>,
    /// Spread of targeting inside a wave (default `0s`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::DURATION)))]
    pub stagger: Option<String>,
    /// Leave out devices that cannot satisfy the release instead of refusing the rollout.
    #[serde(default)]
    pub exclude_unsatisfiable: bool,
    /// Seed of the wave plan (default: random; give one to get the plan `rollout plan` showed).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// What a rollout goes to, as resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The devices of a group (as the group's selector matched them at creation).
    Group {
        /// The group.
        name: String,
    },
    /// The devices whose labels match.
    Selector {
        /// The selector, `k=v,k!=v,k,!k`.
        selector: String,
    },
    /// These devices.
    Devices {
        /// Their ids.
        ids: Vec<DeviceId>,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Group { name } => write!(f, "group:{name}"),
            Target::Selector { selector } => write!(f, "selector:{selector}"),
            Target::Devices { ids } => {
                let ids: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
                write!(f, "devices:{}", ids.join(","))
            }
        }
    }
}

/// A pre-flight plan (`POST /api/v1/rollouts/plan`): what a rollout would do; nothing sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Plan {
    /// The release.
    pub release: ReleaseId,
    /// The target as resolved.
    pub target: Target,
    /// The seed the waves come from (pass it to `create` to get exactly these waves).
    pub seed: u64,
    /// Devices of each wave, in the order they are targeted.
    pub waves: Vec<Vec<DeviceId>>,
    /// Target devices left out because they are pinned: device, its pinned release, why.
    pub pinned: Vec<(DeviceId, String, String)>,
    /// Target devices offline now (they stay in their waves; they update when they return).
    pub offline: Vec<DeviceId>,
    /// Devices that cannot run the release, and why (left out with `exclude_unsatisfiable`).
    pub unsatisfiable: Vec<(DeviceId, Vec<String>)>,
    /// What pre-flight could not check, per device.
    pub unchecked: Vec<(DeviceId, Vec<String>)>,
    /// Devices already in another active rollout, and its id.
    pub busy: Vec<(DeviceId, u64)>,
}

/// A rollout as `rollout status` shows it (`GET /api/v1/rollouts/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RolloutView {
    /// Its id.
    pub id: u64,
    /// The target as given.
    pub target: Target,
    /// Which token created it.
    pub created_by: String,
    /// When.
    pub created_at: UnixMillis,
    /// The seed of its wave plan.
    pub seed: u64,
    /// Devices left out at creation because they could not run the release.
    pub excluded: Vec<(DeviceId, Vec<String>)>,
    /// Progress per wave and overall.
    pub status: RolloutStatus,
}

/// A reason for a pause (`POST /api/v1/rollouts/{id}/pause`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CommandReason {
    /// Why, in the operator's words.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A rollout's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RolloutStatus {
    /// The rollout.
    pub id: u64,
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

/// Where a rollout as a whole stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
        match self {
            RunState::Running => "running",
            RunState::Paused { .. } => "paused",
            RunState::Completed { .. } => "completed",
            RunState::Aborted { .. } => "aborted",
            RunState::RolledBack { .. } => "rolled back",
        }
    }

    /// Running or paused: the rollout still holds its devices (one active rollout per device).
    pub fn is_active(&self) -> bool {
        matches!(self, RunState::Running | RunState::Paused { .. })
    }
}

/// Why a rollout paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseReason::Threshold { failed, allowed } => {
                write!(f, "{failed} devices failed; the failure threshold allows {allowed}")
            }
            PauseReason::Manual { reason } => write!(f, "paused by an operator: {reason}"),
        }
    }
}

/// Why a rollout rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
        match self {
            RollbackReason::Threshold { failed, allowed } => {
                write!(f, "{failed} devices failed; the failure threshold allows {allowed}")
            }
            RollbackReason::Manual => f.write_str("requested by an operator"),
        }
    }
}

/// Device counts of one wave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// All devices of the wave.
    pub fn total(&self) -> usize {
        self.pending + self.updating + self.healthy + self.failed + self.skipped + self.rolled_back
    }
}

/// Where a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum WavePhase {
    /// Not started (a wave before it runs, or the window is closed).
    Waiting,
    /// Targeting its devices and waiting for their verdicts.
    Active {
        /// When it started.
        started_at: UnixMillis,
        /// When the current stretch of targeting began; `None` while the window is closed.
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

/// Per-wave progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
