//! Notable things that happened on a device, on `fleet/v1/{id}/events`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;
use crate::time::UnixMillis;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Event {
    /// The device it happened on.
    pub device: DeviceId,
    /// When.
    pub at: UnixMillis,
    /// How bad.
    pub severity: Severity,
    /// What kind of thing happened (machine-readable).
    pub kind: EventKind,
    /// What happened, in plain words.
    pub message: String,
    /// Structured details, e.g. `service`, `generation`, `reason`.
    pub fields: BTreeMap<String, String>,
}

/// Severity of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Severity {
    /// For information.
    Info,
    /// Something degraded but the device copes.
    Warning,
    /// Something failed.
    Error,
    /// The device cannot do its job.
    Critical,
}

/// Machine-readable kind of an [`Event`]. New kinds are appended, never reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum EventKind {
    /// The agent started.
    AgentStarted,
    /// A desired state or command was refused (signature, replay, wrong device, invalid).
    Rejected,
    /// An update began.
    UpdateStarted,
    /// An update finished and the new release is healthy.
    UpdateApplied,
    /// An update failed and the previous release was restored.
    UpdateRolledBack,
    /// An update failed before changing anything.
    UpdateFailed,
    /// An update waits for a lock.
    UpdateDeferred,
    /// A service keeps crashing.
    CrashLoop,
    /// A service changed health.
    HealthChanged,
    /// Disk space is low.
    DiskLow,
    /// Telemetry was dropped because the buffer was full.
    TelemetryDropped,
    /// Hardware appeared or disappeared.
    HardwareChanged,
    /// Anything else; details in the message and fields.
    Other,
}
