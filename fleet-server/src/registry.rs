//! Image tags to digests, through each registry's HTTP API ([`fleet_oci`]), with the logins
//! from the server's configuration.

use std::time::Duration;

use fleet_oci::{Reference, RegistryClient, ResolvedImage};
use fleet_proto::RegistryCredential;

use crate::releases::ImageResolver;

/// How long one registry request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves through registries, logging in where a login is configured for the host.
pub struct RegistryResolver {
    client: RegistryClient,
    logins: Vec<RegistryCredential>,
}

impl std::fmt::Debug for RegistryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self.logins.iter().map(|l| l.registry.as_str()).collect();
        f.debug_struct("RegistryResolver").field("logins_for", &hosts).finish()
    }
}

impl RegistryResolver {
    /// A resolver with `logins` (by registry host).
    pub fn new(logins: Vec<RegistryCredential>) -> RegistryResolver {
        let client =
            RegistryClient::new(concat!("fleet-server/", env!("CARGO_PKG_VERSION")), TIMEOUT);
        RegistryResolver { client, logins }
    }
}

impl ImageResolver for RegistryResolver {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        let parsed = Reference::parse(reference).map_err(|e| e.to_string())?;
        let login = self.logins.iter().find(|l| l.registry == parsed.registry());
        self.client.resolve(&parsed, login).map_err(|e| fleet_proto::errors::chain(&e))
    }
}
