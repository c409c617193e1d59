//! The audit log: one line per state change, with who made it. Entries are written in the same
//! atomic change as what they describe ([`crate::store::Tx::audit`]), so the log never claims a
//! change that did not happen nor misses one that did.

use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};

/// Who acts when no person does: the rollout engine, pin expiry.
pub const SYSTEM: &str = "system";

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (server clock).
    pub at: UnixMillis,
    /// The token's name, or [`SYSTEM`].
    pub actor: String,
    /// What was done, `noun.verb`: `device.pin`, `rollout.create`, `rollout.wave`, ...
    pub action: String,
    /// What it was done to: a device id, `rollout 4`, a release id, a group name.
    pub target: String,
    /// The details in plain words.
    pub detail: String,
}

impl AuditEntry {
    /// An entry at `at`.
    pub fn new(
        at: UnixMillis,
        actor: &str,
        action: &str,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> AuditEntry {
        AuditEntry {
            at,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.into(),
            detail: detail.into(),
        }
    }
}
