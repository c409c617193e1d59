//! Use cases: what an operator can do to the fleet, independent of the transport that asks.
//!
//! Each operation is a plain function taking the shared state it needs, the [`Caller`]
//! (for audit lines and authorship) and typed input, and answers with a typed result or an
//! [`Error`] that carries data. Validation, the store transaction, its audit entry and what
//! is sent afterwards all happen here; the REST handlers in [`crate::api`] (and later the
//! dashboard) only turn requests into calls and results into answers.
//!
//! Invariants:
//! - An operation that is refused changes nothing (the store transaction is all or nothing).
//! - Work that blocks (sled flushes, certificate and key generation, backups) runs on the
//!   blocking pool ([`blocking`]), never on an async worker.
//!
//! [`Caller`]: crate::auth::Caller

use std::sync::Arc;

use fleet_api::FieldProblem;

use crate::desired::Publisher;
use crate::pki::Pki;
use crate::rollout::driver::{CommandError, Driver, PlanError};
use crate::store::{Store, StoreError};

pub mod admin;
pub mod agent_releases;
pub mod bulk;
pub mod device_query;
pub mod devices;
pub mod groups;
pub mod publish;
pub mod releases;
pub mod rollouts;
pub mod secrets;
pub mod tokens;
pub mod variables;

/// What operations that change desired state share: cheap to clone, so an operation can move
/// a copy onto the blocking pool.
#[derive(Clone)]
pub struct Fleet {
    /// The registry.
    pub store: Arc<Store>,
    /// The fleet CA and signing key.
    pub pki: Arc<Pki>,
    /// Sends desired states.
    pub publisher: Publisher,
    /// Runs rollouts (and resends what the broker could not take).
    pub driver: Driver,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

/// Why an operation was refused or failed. Every variant maps to one kind of answer; the
/// texts are what operators read, so they say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the operation names does not exist.
    #[error("no {what} {id} ({hint})")]
    NotFound {
        /// The kind of thing (`token`, `group`, ...).
        what: &'static str,
        /// Its name or id.
        id: String,
        /// Where to look instead.
        hint: String,
    },
    /// The device is not known.
    #[error("no device {id}; `fleetctl device ls` lists known devices")]
    UnknownDevice {
        /// Its id.
        id: fleet_proto::DeviceId,
    },
    /// A release named is not stored.
    #[error("release {release} is not known (`fleetctl release ls`)")]
    UnknownRelease {
        /// Its id.
        release: fleet_proto::ReleaseId,
    },
    /// One device's desired state cannot be decided (an unknown release, variables that do not
    /// render, a secret without a value), or its store failed.
    #[error(transparent)]
    Desired(#[from] crate::desired::DesiredError),
    /// A variable or secret is not set at the scope named.
    #[error("{name} is not set for the {scope} (`fleetctl {command} ls` lists what is)")]
    NotSet {
        /// Its name.
        name: String,
        /// The scope, as operators read it (`fleet`, `group depot`, ...).
        scope: String,
        /// The fleetctl noun that lists them (`var`, `secret`).
        command: &'static str,
    },
    /// The MQTT broker does not take a message now.
    #[error("cannot publish to the MQTT broker right now ({reason}); try again")]
    BrokerUnavailable {
        /// What the client said.
        reason: String,
    },
    /// A registry the operation needs refused or failed (storing an agent release's
    /// binaries).
    #[error("{0}")]
    RegistryFailed(String),
    /// A device did not answer a command in time.
    #[error("device {device} did not answer command {command} within {secs} s (it went offline or is busy: `fleetctl device show {device}`); it will not run it after that")]
    NoAnswer {
        /// The device.
        device: fleet_proto::DeviceId,
        /// The command's id.
        command: u64,
        /// How long the server waited.
        secs: u64,
    },
    /// The request itself is malformed (not one of its fields' values).
    #[error("{0}")]
    BadRequest(String),
    /// The operation conflicts with the fleet's state.
    #[error("{detail}")]
    Conflict {
        /// What conflicts and how to resolve it.
        detail: String,
        /// The fields (per device) behind it, if any.
        problems: Vec<FieldProblem>,
    },
    /// The input was refused; `problems` names every field at fault.
    #[error("{summary}")]
    Invalid {
        /// One line: what was refused.
        summary: String,
        /// Each field and why.
        problems: Vec<FieldProblem>,
    },
    /// The input is larger than the server takes.
    #[error("{what} is {size} bytes; at most {max} are accepted")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A rollout cannot be planned or created.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A rollout command was refused or failed.
    #[error(transparent)]
    RolloutCommand(#[from] CommandError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server itself failed (the random source, a blocking task, writing a file).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// One refused field.
    pub fn field(summary: &str, path: &str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            summary: summary.to_owned(),
            problems: vec![FieldProblem { path: path.to_owned(), reason: reason.into() }],
        }
    }

    /// A conflict with the fleet's state, said in `detail`.
    pub fn conflict(detail: impl Into<String>) -> Error {
        Error::Conflict { detail: detail.into(), problems: Vec::new() }
    }

    /// The server's own failure, as its message.
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }
}

/// Runs blocking work (sled flushes, key generation, file I/O) on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.map_err(Error::internal)?
}
