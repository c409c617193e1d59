//! # fleet-agent — keeps a device's containers equal to the release the server wants
//!
//! This crate grows module by module (reconciler, runtime, hardware, telemetry, link); the
//! binary in `main.rs` stays a thin shell over it. It speaks to the server only through
//! [`fleet_proto`].

/// The agent's version, reported in its status message.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The protocol version this agent writes (shown by `fleet-agent --version`).
pub fn version_line() -> String {
    format!("fleet-agent {AGENT_VERSION} (protocol v{})", fleet_proto::PROTOCOL_VERSION)
}
