//! Tokens, roles and the audit log as the API shows them.

use std::fmt;
use std::str::FromStr;

use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};

/// What a token may do. Ordered: each role includes the ones before it. The server's token
/// records keep the same enum: a role is part of the contract, not of the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also changes the fleet: releases, groups, labels, pins, rollouts, commands.
    Operator,
    /// Also enrolls and revokes devices, manages tokens, takes backups.
    Admin,
}

impl Role {
    /// The role's name as the CLI and API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role {other:?}: expected viewer, operator or admin")),
        }
    }
}

/// A token as the API lists it: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Token {
    /// Unique name; audit entries carry it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Which token created it.
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixMillis>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
}

/// A token to create (`POST /api/v1/tokens`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenRequest {
    /// Its name (audit entries carry it).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::TOKEN_NAME)))]
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it stops working (ms since epoch), if ever.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// A new token: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenResponse {
    /// The record the server keeps.
    pub record: Token,
    /// The token to use (`Authorization: Bearer ...`, `FLEET_TOKEN`).
    pub token: String,
}

/// The calling token (`GET /api/v1/whoami`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WhoAmI {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// One state change in the audit log (`GET /api/v1/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditEntry {
    /// When (server clock).
    pub at: UnixMillis,
    /// The token's name, or `system`.
    pub actor: String,
    /// What was done, `noun.verb`: `device.pin`, `rollout.create`, `rollout.wave`, ...
    pub action: String,
    /// What it was done to: a device id, `rollout 4`, a release id, a group name.
    pub target: String,
    /// The details in plain words.
    pub detail: String,
}
