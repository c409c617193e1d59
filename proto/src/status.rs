//! Online/offline presence on `fleet/v1/{id}/status`: retained, with the offline message set as
//! the agent's MQTT last will.

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;
use crate::time::UnixMillis;

/// A device's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Status {
    /// The device.
    pub device: DeviceId,
    /// Online or offline.
    pub presence: Presence,
    /// The agent's version, e.g. `0.1.0`.
    pub agent_version: String,
    /// When the agent connected (for `Offline` sent as last will: when that connection began).
    pub since: UnixMillis,
}

/// Presence of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Presence {
    /// Connected.
    Online,
    /// Disconnected (cleanly or by last will).
    Offline,
}
