//! Records the store persists whose owners do I/O (the rollout driver, telemetry ingest). They
//! live here, below both the store and their owners, so [`crate::store`] never imports the
//! modules that use it. The other records sit with the pure modules that define how they
//! change ([`crate::devices`], [`crate::groups`], [`crate::releases`], [`crate::variables`],
//! [`crate::secrets`], [`crate::auth`], [`crate::audit`]); none of those imports the store either.

pub mod rollout;
pub mod telemetry;

pub use rollout::{RolloutRecord, Target};
pub use telemetry::{Latest, TelemetryState};
