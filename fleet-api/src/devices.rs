//! Devices as the API shows them, and the requests that change them.

use std::collections::BTreeMap;

use fleet_proto::{
    CommandAction, DeviceId, Inventory, ReleaseId, ReleaseSpec, StateReport, UnixMillis,
};
use serde::{Deserialize, Serialize};

/// A device's client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Certificate {
    /// Serial number (hex).
    pub serial: String,
    /// End of validity.
    pub not_after: UnixMillis,
}

/// A revoked certificate of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RevokedCertificate {
    /// Serial number (hex).
    pub serial: String,
    /// When it was revoked.
    pub at: UnixMillis,
}

/// A pin: an operator holds a device on one release, with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Pin {
    /// The release it is held on.
    pub release: ReleaseId,
    /// Why, in the operator's words.
    pub reason: String,
    /// Which token pinned it.
    pub pinned_by: String,
    /// When.
    pub pinned_at: UnixMillis,
    /// When the pin lapses by itself, if ever.
    pub until: Option<UnixMillis>,
}

impl Pin {
    /// Whether the pin still holds at `now`.
    pub fn holds(&self, now: UnixMillis) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// One device (`GET /api/v1/devices`, and inside most device answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Device {
    /// The device id.
    pub id: DeviceId,
    /// Whether its retained status says online.
    pub online: bool,
    /// Agent version from its status.
    pub agent_version: Option<String>,
    /// When the server last heard from it (server clock).
    pub last_seen: UnixMillis,
    /// Highest desired-state generation the device accepted.
    pub accepted_generation: u64,
    /// The release in force on the device.
    pub release: Option<String>,
    /// When it was enrolled; `None` for a device the server never enrolled.
    #[serde(default)]
    pub enrolled_at: Option<UnixMillis>,
    /// Labels; groups select on them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its current client certificate.
    #[serde(default)]
    pub certificate: Option<Certificate>,
    /// When it was revoked; a revoked device's messages are dropped.
    #[serde(default)]
    pub revoked_at: Option<UnixMillis>,
    /// Every certificate of this device ever revoked.
    #[serde(default)]
    pub revoked_certificates: Vec<RevokedCertificate>,
    /// The generation of the last desired state the server published to it (0: none yet).
    #[serde(default)]
    pub desired_generation: u64,
    /// The release in that desired state.
    #[serde(default)]
    pub desired_release: Option<String>,
    /// Free-text notes (`fleetctl device note`).
    #[serde(default)]
    pub notes: String,
    /// The pin holding the device on a release, if any.
    #[serde(default)]
    pub pin: Option<Pin>,
    /// The release the fleet wants on this device when it is not pinned.
    #[serde(default)]
    pub assigned_release: Option<String>,
    /// The device's latest state report, without its inventory.
    #[serde(default)]
    pub last_report: Option<StateReport>,
    /// The device's public sealing key (X25519, hex); `None`: an agent that predates sealing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<String>,
    /// The agent version the fleet wants on it when its agent is not pinned (set by agent
    /// rollouts; `None`: it keeps what it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_agent: Option<String>,
    /// The pin holding its agent on an agent release, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_pin: Option<Pin>,
    /// The agent version in the last desired state sent to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_agent: Option<String>,
}

impl Device {
    /// The pin, if it holds at `now`.
    pub fn pin_at(&self, now: UnixMillis) -> Option<&Pin> {
        self.pin.as_ref().filter(|p| p.holds(now))
    }
}

/// One device as `device show` presents it (`GET /api/v1/devices/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceView {
    /// The device (its fields at the top level, as in the device list).
    #[serde(flatten)]
    pub device: Device,
    /// Its last reported inventory.
    pub inventory: Option<Inventory>,
    /// Groups whose selector matches it.
    pub groups: Vec<String>,
    /// The active rollout holding it, if any.
    pub rollout: Option<u64>,
}

/// What `PATCH /api/v1/devices/{id}` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceChanged {
    /// The device as stored now.
    #[serde(flatten)]
    pub device: Device,
    /// Devices that got a new desired state (this one, when its new labels changed its groups'
    /// variables or secrets for its release).
    #[serde(default)]
    pub retargeted: Vec<DeviceId>,
}

/// Changes to a device's labels and notes (`PATCH /api/v1/devices/{id}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DeviceChange {
    /// Labels to set; `null` removes the label.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("propertyNames" = {"pattern": crate::patterns::LABEL_KEY}, "additionalProperties" = {"type": ["string", "null"], "pattern": crate::patterns::LABEL_VALUE})))]
    pub labels: BTreeMap<String, Option<String>>,
    /// New notes, replacing the old ones.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(length(max = 4096)))]
    pub notes: Option<String>,
}

/// An enrollment request (`POST /api/v1/devices/{id}/enroll`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnrollRequest {
    /// The device's public key: an uncompressed P-256 point, hex.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::P256_POINT_HEX)))]
    pub public_key: String,
    /// Proof of possession: the device key's signature over
    /// [`crate::enroll::proof_message`], hex (ASN.1 DER ECDSA).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::DER_SIGNATURE_HEX)))]
    pub proof: String,
    /// Labels for the new device.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("propertyNames" = {"pattern": crate::patterns::LABEL_KEY}, "additionalProperties" = {"type": "string", "pattern": crate::patterns::LABEL_VALUE})))]
    pub labels: BTreeMap<String, String>,
    /// Certificate validity in days (default five years; at most
    /// [`crate::enroll::MAX_DEVICE_VALIDITY_DAYS`], which the fleet CA outlives).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = crate::enroll::MAX_DEVICE_VALIDITY_DAYS)))]
    pub valid_days: Option<u32>,
}

/// What enrollment returns: everything the bundle needs except the private key, which never
/// left the enrolling machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EnrollResponse {
    /// The device.
    pub device: Device,
    /// Its client certificate (PEM).
    pub certificate_pem: String,
    /// The fleet CA (PEM).
    pub ca_pem: String,
    /// The server's desired-state signing keys the device trusts (hex ed25519).
    pub server_keys: Vec<String>,
    /// The broker URL the device connects to.
    pub broker: String,
    /// The device's password on the server's embedded broker (its login name is its id);
    /// absent when devices connect to a broker that authenticates them by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_password: Option<String>,
}

/// A release given as JSON for one device (`PUT /api/v1/devices/{id}/desired`): stored as a
/// release if the server does not have it yet, then assigned to the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DesiredRequest {
    /// The release to run; `null` runs no application.
    pub release: Option<ReleaseSpec>,
}

/// What assigning a release returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DesiredResponse {
    /// The generation it was published under (unchanged if the device already had it).
    pub generation: u64,
    /// The device after publication.
    pub device: Device,
}

/// A command for a device (`POST /api/v1/devices/{id}/commands`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CommandRequest {
    /// What to do.
    pub action: CommandAction,
    /// How long to wait for the answer, and the command's deadline on the device (default 30 s).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 3600)))]
    pub timeout_secs: Option<u64>,
}

/// A pin (`PUT /api/v1/devices/{id}/pin`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PinRequest {
    /// The release to hold the device on.
    #[cfg_attr(feature = "schema", schemars(with = "fleet_proto::ReleaseId"))]
    pub release: String,
    /// Why (required: the next engineer needs to know).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "\\S")))]
    pub reason: String,
    /// When the pin lapses by itself (ms since epoch), if ever.
    #[serde(default)]
    pub until: Option<u64>,
    /// Pin even though pre-flight says the device cannot run the release.
    #[serde(default)]
    pub force: bool,
}

/// `?agent=true` of `DELETE /api/v1/devices/{id}/pin`: lift the agent pin instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UnpinQuery {
    /// Lift the agent pin (a pin to a `fleet-agent@VERSION` release), not the application's.
    #[serde(default)]
    pub agent: bool,
}

/// A device's telemetry at a glance (`GET /api/v1/devices/{id}/metrics`).
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MetricsView {
    /// The device.
    pub device: String,
    /// Distinct points stored since the device first sent telemetry.
    pub stored_total: u64,
    /// Copies received of points already stored (resends; removed).
    pub duplicates_total: u64,
    /// Points the device dropped to stay within its buffer budget.
    pub dropped_total: u64,
    /// One past the highest sequence number stored.
    pub next_seq: u64,
    /// Points in the server's bounded history.
    pub kept: u64,
    /// When the last batch arrived (Unix milliseconds).
    pub last_batch_at: Option<u64>,
    /// The latest value of every series, by metric then labels.
    pub latest: Vec<PointView>,
}

/// One telemetry point as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PointView {
    /// The device's sequence number.
    pub seq: u64,
    /// When it was measured (Unix milliseconds).
    pub at: u64,
    /// Metric name.
    pub metric: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The value: a number, boolean or string.
    pub value: serde_json::Value,
}
