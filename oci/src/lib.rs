//! # fleet-oci — Fleet's OCI distribution client
//!
//! One client for the two questions Fleet asks registries, so agent and server speak the
//! protocol the same way without depending on each other:
//! * the agent: how many bytes pulling an image downloads on this device
//!   ([`RegistryClient::download_size`]), so an update that would fill the disk is refused up
//!   front ("needs 1.2 GB, 300 MB free") instead of failing half-way with the disk full;
//! * the server: which digest a tag names and what each platform of it downloads
//!   ([`RegistryClient::resolve`]), so releases pin images by digest (no floating tags on
//!   devices) and can be checked against a device's architecture and disk.
//!
//! With feature `push` (the server's only, so it stays out of the agent's binary) it also
//! uploads: blobs, manifests, and the builders for an artifact per platform under one index,
//! which is how the server keeps agent binaries in the fleet's registry.
//!
//! Layout: [`reference`] parses Docker-style references; [`manifest`] reads manifest formats
//! and checks digests; [`platform`] matches platforms; [`guard`] decides which registries and
//! addresses the server may reach; those four are pure and unit-tested without a network. [`client`] does the HTTP.
//!
//! Invariants:
//! * a resolved digest is the sha256 of the exact manifest bytes received, and content that
//!   disagrees with the registry's `Docker-Content-Digest`, the digest asked for, or the
//!   index or manifest pointing at it is refused ([`RegistryError::DigestMismatch`]);
//! * the digest of a multi-platform image is the index's, never one platform's;
//! * every body is read with a bound (manifests 4 MiB, image configs 1 MiB) and every request
//!   under the client's timeout;
//! * a credential is only ever sent to the registry it is for, and never along a redirect;
//! * the server's client ([`RegistryClient::guarded`]) connects only to public addresses or
//!   to hosts its configuration lists, checked on the resolved addresses it connects to
//!   ([`guard`]);
//! * blocking I/O and no async runtime: callers use `spawn_blocking`. TLS is rustls with the
//!   ring provider (it cross-compiles with plain gcc) against the system's CA bundle; registries
//!   on loopback are spoken to over plain HTTP, as the Docker engine does.

pub mod client;
pub mod elf;
pub mod error;
pub mod guard;
/// What the fuzz targets in `fuzz/` (`tests/fuzz`) reach that is otherwise private. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::client::{parse_challenge, Challenge};
}
pub mod manifest;
pub mod platform;
#[cfg(feature = "push")]
mod push;
pub mod reference;

pub use client::RegistryClient;
pub use error::RegistryError;
pub use manifest::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
pub use platform::{Platform, PlatformImage, ResolvedImage};
pub use reference::{Reference, ReferenceError};

#[cfg(feature = "push")]
pub use manifest::{artifact_manifest, platform_index, EMPTY_CONFIG, OCI_EMPTY};
#[cfg(feature = "push")]
pub use push::Pushed;
