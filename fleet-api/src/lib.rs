//! Fleet's REST contract: the JSON that `fleet-server`'s API takes and answers, as types.
//!
//! These are the wire types, kept apart from the server's store records: the server converts
//! its records into them in its handlers, so a change to how the server stores something is
//! not a change to what clients see, and clients (`fleetctl`, `fleet-sim`, the e2e tests) build
//! without the server. Invariants: field names and optional-field omission are the API's and
//! only ever extended; identifiers that name devices and releases are `fleet-proto` ids.
//!
//! Beside the types: the small helpers both ends must agree on (duration and size grammar in
//! [`units`], rollout defaults, enrollment proofs) and, behind the `client` feature, the one API
//! client ([`client::ApiClient`]).

pub mod admin;
#[cfg(feature = "enroll")]
pub mod agent_config;
pub mod devices;
pub mod enroll;
pub mod fleet;
pub mod patterns;
pub mod rollouts;
pub mod secrets;
pub mod units;
pub mod variables;

#[cfg(feature = "client")]
pub mod client;

use serde::{Deserialize, Serialize};

pub use admin::{AuditEntry, Role, Token, TokenRequest, TokenResponse, WhoAmI};
pub use devices::{
    Certificate, CommandRequest, DesiredRequest, DesiredResponse, Device, DeviceChange,
    DeviceChanged, DeviceView, EnrollRequest, EnrollResponse, MetricsView, Pin, PinRequest,
    PointView, RevokedCertificate, UnpinQuery,
};
pub use fleet::{
    AgentBinaries, AgentBinary, AgentBinaryUpload, AgentReleaseRequest, Group, GroupChange,
    GroupRequest, GroupSummary, GroupView, ImageInfo, PlatformImage, Release, ReleaseRequest,
    ResolvedImage, AGENT_APP,
};
pub use rollouts::{
    CommandReason, PauseReason, Plan, RollbackReason, RolloutRequest, RolloutStatus, RolloutView,
    RunState, Target, WaveCounts, WavePhase, WaveStatus,
};
pub use secrets::{ScopeKind, SecretChange, SecretList, SecretView};
pub use variables::{
    ResolvedVariable, ResolvedView, Variable, VariableChange, VariableList, VariableRequest,
    VariableScope,
};

/// A page of a list (`?limit=&after=`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// One field's problem in a refused request (an entry of a problem details' `errors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FieldProblem {
    /// Where, e.g. `services.web.ports[0]`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}
