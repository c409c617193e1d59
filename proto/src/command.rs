//! One-off commands from the server (`cmd`, signed like desired state) and their results
//! (`cmd-result`, reported once).

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, ServiceName};
use crate::time::UnixMillis;

/// A command for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Command {
    /// Unique id; the result carries it back and a repeated id is not run twice.
    pub id: u64,
    /// The device it is for.
    pub device: DeviceId,
    /// When the server issued it.
    pub issued_at: UnixMillis,
    /// After this the agent refuses to run it (a queued reboot must not fire days later).
    pub deadline: UnixMillis,
    /// What to do.
    pub action: CommandAction,
}

/// What a [`Command`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum CommandAction {
    /// Restart one service's container.
    RestartService {
        /// The service.
        service: ServiceName,
    },
    /// Reboot the device through its init system (only if the agent's config allows it).
    Reboot,
    /// Send back the last lines of a service's log.
    FetchLogs {
        /// The service.
        service: ServiceName,
        /// How many lines, at most.
        tail: u32,
    },
    /// Re-read the hardware inventory and report it.
    RefreshInventory,
    /// Delete the named volumes (and their data) of apps this device no longer runs. Volumes
    /// of the release in force are never touched. Appended after `RefreshInventory`.
    PurgeVolumes,
}

/// The outcome of a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CommandResult {
    /// The command's id.
    pub id: u64,
    /// The device that ran it.
    pub device: DeviceId,
    /// When it finished.
    pub finished_at: UnixMillis,
    /// How it went.
    pub outcome: CommandOutcome,
}

/// How a [`Command`] went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum CommandOutcome {
    /// Done; `output` holds e.g. log lines.
    Done {
        /// Output lines.
        output: Vec<String>,
    },
    /// It ran and failed.
    Failed {
        /// Why.
        reason: String,
    },
    /// It was not run (bad signature, past deadline, not allowed by config, unknown service).
    Refused {
        /// Why.
        reason: String,
    },
}
