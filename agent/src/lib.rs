//! # fleet-agent — keeps a device's containers equal to the release the server wants
//!
//! Layout, decisions first:
//! * [`plan`] — pure: what steps take the observed containers to the target release;
//! * [`reconcile`] — carries plans out with health gates, retries and rollback;
//! * [`runtime`] — the container engine behind a trait (Docker, and a simulation); image
//!   download sizes for its disk check come from the registry through [`fleet_oci`];
//! * [`objects`] — pure: the networks and volumes a release needs, and whose they are;
//! * [`probe`] — agent-side HTTP and TCP health probes;
//! * [`proxy`] — the blue/green port proxy that switches a service's host port to the new
//!   container once it is healthy;
//! * [`state`] — durable state in redb (accepted desired state, proven release, journal);
//! * [`lock`] — update locks: leases applications hold while they must not be interrupted;
//! * [`secrets`] — the device's sealing key and secret files for services;
//! * [`accept`] — pure: whether a release, a desired state or a command may be acted on;
//! * [`report`] — the device's state report;
//! * [`hardware`] — inventory, device mapping by stable identity, admission control, hot-plug;
//! * [`telemetry`] — host, container and application metrics, buffered on disk (redb) and
//!   delivered at least once;
//! * [`link`] — the MQTT link to the fleet server (mutual TLS, backoff, presence);
//! * [`backoff`] — the one exponential backoff (capped, optionally jittered) the agent retries
//!   with;
//! * [`host`] — the machine beyond its containers (systemd notifications, reboot), behind a
//!   trait;
//! * [`config`], [`daemon`], [`admin`], [`cli`], [`sd_notify`] — the process around it.
//!
//! Modules import only modules below them, never in a circle (`tests/module_graph.rs` checks
//! it): a type two modules need lives in the lower one. The binary in `main.rs` only calls
//! [`cli::main`]. The agent speaks to the server only through [`fleet_proto`].

pub mod accept;
pub mod admin;
pub mod backoff;
pub mod binds;
pub mod cli;
pub mod config;
pub mod daemon;
#[doc(hidden)]
pub mod fuzzing;
pub mod hardware;
pub mod host;
pub(crate) mod http1;
pub mod link;
pub mod lock;
pub mod objects;
pub mod plan;
pub mod probe;
pub mod proxy;
pub mod reconcile;
pub mod report;
pub mod runtime;
pub mod sd_notify;
pub mod secrets;
pub mod slots;
pub mod state;
pub mod telemetry;

/// The agent's version, reported in its status message: `FLEET_AGENT_VERSION` at build time
/// if set (a packager's own version, or the second build the e2e tests roll out), else the
/// crate's.
pub const AGENT_VERSION: &str = match option_env!("FLEET_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
