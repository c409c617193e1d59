//! Secrets as the API shows them: names, scopes and digests, never a value.

use fleet_proto::{DeviceId, UnixMillis};
use serde::{Deserialize, Serialize};

/// Largest secret value, in bytes (a certificate chain fits; a model does not).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Which kind of scope a secret is set in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    /// The whole fleet.
    Fleet,
    /// A group's devices.
    Group,
    /// One device.
    Device,
}

/// A secret as the API shows it: everything but the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SecretView {
    /// Its name.
    pub name: String,
    /// `fleet`, `group` or `device`.
    pub scope: ScopeKind,
    /// The group, for a group secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The device, for a device secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The keyed digest of the value: changes when the value does.
    pub digest: String,
    /// The value's length.
    pub bytes: usize,
    /// When it was set.
    pub set_at: UnixMillis,
    /// Which token set it.
    pub set_by: String,
}

/// `GET /api/v1/secrets`: every stored secret, without values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SecretList {
    /// By scope (fleet, groups, devices), then name.
    pub secrets: Vec<SecretView>,
}

/// What a set or remove did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SecretChange {
    /// The secret as stored now (`None` after a remove).
    pub secret: Option<SecretView>,
    /// Devices that got a new desired state (the secret's value for them changed).
    pub retargeted: Vec<DeviceId>,
    /// Devices whose release mounts one of its secrets and whose values stayed the same.
    pub unchanged: usize,
}
