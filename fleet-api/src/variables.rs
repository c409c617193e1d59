//! Variables as the API takes and shows them.

use fleet_proto::{DeviceId, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::Page;

/// Where a variable is set: the fleet (neither group nor device), a group or a device, and
/// optionally one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VariableScope {
    /// The group it is set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The device it is set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only this service gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl std::fmt::Display for VariableScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.group, &self.device) {
            (_, Some(d)) => write!(f, "device {d}")?,
            (Some(g), None) => write!(f, "group {g}")?,
            (None, None) => f.write_str("fleet")?,
        }
        if let Some(s) = &self.service {
            write!(f, ", service {s}")?;
        }
        Ok(())
    }
}

/// A stored variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Variable {
    /// Its name (a POSIX environment variable name).
    pub name: String,
    /// Its value.
    pub value: String,
    /// Where it applies.
    #[serde(flatten)]
    pub scope: VariableScope,
    /// When it was last set.
    pub updated_at: UnixMillis,
    /// Which token set it.
    pub updated_by: String,
}

/// A variable's value for a device, where it came from and what it overrode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResolvedVariable {
    /// The name.
    pub name: String,
    /// The value in force.
    pub value: String,
    /// The scope it comes from.
    pub origin: VariableScope,
    /// Less specific scopes that set it too, least specific first.
    pub overridden: Vec<VariableScope>,
}

/// `PUT /api/v1/variables/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("not" = { "required": ["group", "device"] })))]
pub struct VariableRequest {
    /// The value.
    pub value: String,
    /// Set it for this group (default: the fleet).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::GROUP_NAME)))]
    pub group: Option<String>,
    /// Set it for this device.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<fleet_proto::DeviceId>"))]
    pub device: Option<String>,
    /// Only for this service.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<fleet_proto::ServiceName>"))]
    pub service: Option<String>,
}

/// What a set or unset did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VariableChange {
    /// The variable as stored now (`None` after an unset).
    pub variable: Option<Variable>,
    /// The scope changed.
    pub scope: VariableScope,
    /// Devices that got a new desired state (their rendered release changed).
    pub retargeted: Vec<DeviceId>,
    /// Covered devices whose rendered release stayed the same.
    pub unchanged: usize,
    /// Things worth knowing that did not stop the change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One row of `GET /api/v1/variables?device=`: a value in force on the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResolvedView {
    /// The service it is resolved for; `None`: every service without its own value.
    pub service: Option<String>,
    /// The resolution.
    #[serde(flatten)]
    pub resolved: ResolvedVariable,
}

/// The answer of `GET /api/v1/variables`: stored variables, or with `device=` the resolved
/// ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum VariableList {
    /// Stored variables of a scope (or all), paged.
    Stored(Page<Variable>),
    /// A device's resolved values.
    Resolved(Page<ResolvedView>),
}
