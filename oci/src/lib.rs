//! # fleet-oci — Fleet's OCI distribution client
//!
//! The registry protocol in one place, so the agent and the server speak it the same way
//! without depending on each other. Today it answers the agent's question, how many bytes
//! pulling an image downloads on this device ([`RegistryClient::download_size`]); see
//! [`client`] for the protocol and its invariants. [`reference`] parses the Docker-style image
//! references people write (pure). Blocking, no async runtime: callers use `spawn_blocking`.

pub mod client;
pub mod reference;

pub use client::{Platform, RegistryClient, RegistryError};
pub use reference::{Reference, ReferenceError};
