//! What a device reports about itself on `fleet/v1/{id}/report`.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, ReleaseId, ServiceName};
use crate::inventory::Inventory;
use crate::time::UnixMillis;

/// A device's state: which release is in force, how each service is doing, how the current
/// update is going. Reports are coalesced: only the latest one matters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StateReport {
    /// The reporting device.
    pub device: DeviceId,
    /// When the report was made.
    pub reported_at: UnixMillis,
    /// The highest desired-state generation the agent accepted (0: none yet).
    pub accepted_generation: u64,
    /// The release running now, and where it came from.
    pub in_force: Option<InForce>,
    /// One entry per service of the release in force (and of a release being switched to).
    #[serde(with = "crate::codec::extensible_vec")]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<ServiceStatus>"))]
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::collection::vec(proptest::arbitrary::any::<ServiceStatus>(), 0..4)"
        )
    )]
    pub services: Vec<ServiceStatus>,
    /// The update in progress or the outcome of the last one.
    pub update: UpdateStatus,
    /// Hardware and host facts; sent on the first report and whenever they change.
    #[serde(with = "crate::codec::extensible_opt")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<Inventory>"))]
    pub inventory: Option<Inventory>,
    /// The public key secrets are sealed to ([`crate::seal`]); the agent makes it on first
    /// start. Appended: `None` from older agents, which get no secrets.
    pub seal_key: Option<crate::SealKey>,
    /// The agent's own versions on the device (its A/B slots). Appended: `None` from agents
    /// that do not update themselves.
    #[serde(with = "crate::codec::extensible_opt")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<AgentVersions>"))]
    pub agent: Option<AgentVersions>,
    /// The device's proof that `seal_key` is its own: the ECDSA P-256 SHA-256 signature (DER,
    /// hex) of [`crate::seal::seal_key_proof_message`] by the key of the device's certificate.
    /// A server that knows the device's public key takes a sealing key only with a valid
    /// proof, so a report forged on a broker that authenticates nobody cannot redirect the
    /// device's secrets. Appended: `None` from older agents and in local mode.
    #[serde(default)]
    pub seal_key_proof: Option<String>,
}

/// Which agent versions a device has: the one running, the one committed, one on trial, and
/// the last trial that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AgentVersions {
    /// The version running now.
    pub running: String,
    /// The version in force; `None`: the binary the device's package installed.
    pub committed: Option<String>,
    /// A version on trial (not committed yet).
    pub trial: Option<String>,
    /// The last trial that did not commit and was reverted.
    pub failed: Option<AgentUpdateFailure>,
    /// The last lines that failed trial logged (at most 20, oldest first); empty when it
    /// logged nothing (it could not start at all). Appended: empty from older agents.
    pub failed_log: Vec<String>,
    /// The version of the binary the device's package installed (the floor it falls back
    /// to; a rollback can return it there). Appended: `None` from older agents.
    pub installed: Option<String>,
}

/// An agent version that was tried and reverted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AgentUpdateFailure {
    /// The version.
    pub version: String,
    /// Why it was reverted, e.g. "it did not commit in 3 starts".
    pub reason: String,
    /// When.
    pub at: UnixMillis,
}

/// The release in force and its origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct InForce {
    /// The release id.
    pub release: ReleaseId,
    /// Who asked for it.
    pub source: ReleaseSource,
}

/// Where the release in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ReleaseSource {
    /// The server's desired state of this generation.
    Server {
        /// The desired-state generation.
        generation: u64,
    },
    /// `fleet-agent apply` on the device (local mode, no server).
    Local,
    /// The agent rolled back to the last release proven healthy.
    Rollback {
        /// The generation that failed.
        failed_generation: u64,
    },
}

/// The observed state of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ServiceStatus {
    /// Service name.
    pub name: ServiceName,
    /// The release this container belongs to.
    pub release: ReleaseId,
    /// Digest of the image it runs.
    pub image_digest: String,
    /// Engine container id, if a container exists.
    pub container_id: Option<String>,
    /// Container state.
    pub state: ContainerState,
    /// Health as last judged.
    pub health: Health,
    /// Restarts since the container was created.
    pub restarts: u32,
    /// Exit code of the last exit, if it exited.
    pub exit_code: Option<i32>,
    /// The last error the agent or engine saw for this service.
    pub last_error: Option<String>,
}

/// Container lifecycle state as the engine reports it, plus `Missing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ContainerState {
    /// No container exists for the service.
    Missing,
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// The engine is restarting it.
    Restarting,
    /// Exited.
    Exited,
    /// Dead (engine could not remove it cleanly).
    Dead,
}

/// Health of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Health {
    /// The service has no health check; running counts as healthy.
    NoCheck,
    /// Within its start period, not yet judged.
    Starting,
    /// Passing its check.
    Healthy,
    /// Failing its check.
    Unhealthy,
}

/// The state of the update machinery.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UpdateStatus {
    /// What the agent is doing now.
    pub phase: UpdatePhase,
    /// The generation being applied, if an update is in progress.
    pub target_generation: Option<u64>,
    /// Image download progress.
    pub pull: Option<PullProgress>,
    /// Why the update waits, if it does.
    pub deferred: Option<Deferred>,
    /// How the last finished update ended.
    pub last_outcome: Option<UpdateOutcome>,
}

/// Phase of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum UpdatePhase {
    /// Nothing to do: the release in force is the desired one.
    #[default]
    Idle,
    /// Downloading images.
    Pulling,
    /// Creating and starting new containers.
    Starting,
    /// Waiting for new containers to become healthy.
    WaitingHealthy,
    /// Moving traffic and stopping old containers.
    Switching,
    /// Going back to the previous release.
    RollingBack,
    /// Waiting for an update lock to be released.
    Deferred,
}

/// Download progress over all images of the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PullProgress {
    /// Bytes downloaded so far.
    pub bytes_done: u64,
    /// Total bytes to download, if known.
    pub bytes_total: Option<u64>,
}

/// Why an update waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Deferred {
    /// The lock holder (usually a service name).
    pub holder: String,
    /// When the holder's lease ends.
    pub until: UnixMillis,
}

/// How an update ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UpdateOutcome {
    /// The generation the update tried to apply.
    pub generation: u64,
    /// When it ended.
    pub finished_at: UnixMillis,
    /// The result.
    pub result: UpdateResult,
}

/// Result of an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum UpdateResult {
    /// The new release runs and is healthy.
    Applied,
    /// The new release failed; the previous one runs again.
    RolledBack {
        /// Why the update failed.
        reason: String,
        /// The service that failed, if one did.
        service: Option<ServiceName>,
        /// Its last log lines.
        log_tail: Vec<String>,
    },
    /// The update failed before anything changed (e.g. not enough disk, pull failed); the
    /// previous release never stopped.
    Failed {
        /// Why.
        reason: String,
    },
    /// The desired state was refused (bad signature, replay, invalid release).
    Rejected {
        /// Why.
        reason: String,
    },
}
