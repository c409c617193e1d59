//! What the server wants a device to run. Travels signed (see [`crate::sign`]) and retained on
//! `fleet/v1/{id}/desired`.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, ReleaseId};
use crate::release::ReleaseSpec;
use crate::time::UnixMillis;

/// The complete desired state of one device.
///
/// The agent accepts a desired state only if it is addressed to its own id, correctly signed,
/// and its `generation` is greater than the last one it accepted (so a replayed old state is
/// refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DesiredState {
    /// The device this state is for.
    pub device: DeviceId,
    /// Monotonically increasing per device; the server never reuses one.
    pub generation: u64,
    /// The release to run; `None` means run no application at all.
    pub release: Option<ReleaseSpec>,
    /// Set when an operator pinned this device, so the agent can show why it is where it is.
    pub pin: Option<Pin>,
    /// When the server issued this state.
    pub issued_at: UnixMillis,
    /// Credentials for private registries the release pulls from, in the clear: only for
    /// agents that have not reported a [`crate::SealKey`] yet (older builds). Newer agents get
    /// them in `sealed_registry_credentials` instead.
    pub registry_credentials: Vec<RegistryCredential>,
    /// The secrets this device's services declare, each sealed to the device
    /// ([`crate::seal`]). Appended: empty in bytes from older builds.
    pub secrets: Vec<SealedSecret>,
    /// The registry credentials as a postcard `Vec<RegistryCredential>` sealed to the device
    /// with [`crate::seal::registry_credentials_aad`]; empty: none. Appended.
    pub sealed_registry_credentials: Vec<u8>,
    /// The agent version this device should run and where its binary is. Appended: `None`
    /// from older servers and for devices no agent release targets (the agent stays as it is).
    #[serde(with = "crate::codec::extensible_opt")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<AgentTarget>"))]
    pub agent: Option<AgentTarget>,
}

/// An agent version for one device: the binary for its platform, by digest, so the signature
/// over the desired state covers the exact bytes the device will run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AgentTarget {
    /// The version (the agent release is `fleet-agent@VERSION`).
    pub version: String,
    /// Registry and repository holding the binary as a blob, e.g. `registry.example:5000/fleet/agent`.
    pub repository: String,
    /// The binary's digest, `sha256:<64 hex>`.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Seconds the new version has to commit on the device before it reverts by itself.
    pub deadline_secs: u64,
    /// Go back to the binary the device's package installed, whose version is `version`
    /// (a rollback to a version the fleet never released): nothing to download, so
    /// `repository`, `digest` and `size` are empty. Appended: false from older servers.
    pub installed: bool,
}

/// One secret's value, sealed to the device it is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SealedSecret {
    /// The secret's name (what [`crate::release::SecretMount::source`] refers to).
    pub name: String,
    /// Changes whenever the value does, and only then (a keyed digest: it says nothing about
    /// the value). The agent folds it into the config hash of each service that mounts the
    /// secret, so a rotation re-creates exactly those.
    pub digest: String,
    /// The value, sealed with [`crate::seal::secret_aad`]`(device, name, digest)`.
    pub sealed: Vec<u8>,
}

/// Why a device is held on a release (rollouts never move a pinned device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Pin {
    /// The release the device is pinned to.
    pub release: ReleaseId,
    /// The operator's reason, e.g. "bench debugging of lidar driver".
    pub reason: String,
    /// Who pinned it.
    pub pinned_by: String,
    /// When the pin lapses by itself, if ever.
    pub until: Option<UnixMillis>,
}

/// A login for one registry. Only sent inside signed desired state over mutual TLS.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RegistryCredential {
    /// Registry host and port, e.g. `registry.example.com:5000`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

// Never print a password, not even in debug logs.
impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_output_never_shows_registry_passwords() {
        let cred = super::RegistryCredential {
            registry: "r".into(),
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{cred:?}").contains("hunter2"));
    }
}
