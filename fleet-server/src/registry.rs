//! Image tags to digests, through each registry's HTTP API ([`fleet_oci`]), with the logins
//! from the server's configuration; and agent releases' binaries pushed as OCI artifacts.
//!
//! An agent release in the registry: one artifact manifest per platform (artifact type
//! [`AGENT_ARTIFACT_TYPE`], the empty config, the binary as its one layer) and an index tagged
//! VERSION over them, so `crane manifest`, `oras` or a registry's UI show what a version holds.
//! Devices never read the manifests: their desired state names the binary's blob by digest.

use std::time::Duration;

use std::collections::BTreeMap;

use fleet_oci::manifest::{artifact_manifest, platform_index, EMPTY_CONFIG};
use fleet_oci::{Platform, Reference, RegistryClient, ResolvedImage};
use fleet_proto::RegistryCredential;

use crate::releases::{AgentBinaries, AgentBinary, AgentPusher, ImageResolver};

/// The artifact type of an agent binary's manifest.
pub const AGENT_ARTIFACT_TYPE: &str = "application/vnd.fleet.agent.v1";
/// The media type of the binary itself (the manifest's layer).
pub const AGENT_BINARY_MEDIA_TYPE: &str = "application/vnd.fleet.agent.binary.v1";

/// How long one registry request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves through registries, logging in where a login is configured for the host.
pub struct RegistryResolver {
    client: RegistryClient,
    logins: Vec<RegistryCredential>,
    agent_repository: Option<String>,
}

impl std::fmt::Debug for RegistryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self.logins.iter().map(|l| l.registry.as_str()).collect();
        f.debug_struct("RegistryResolver").field("logins_for", &hosts).finish()
    }
}

impl RegistryResolver {
    /// A resolver with `logins` (by registry host), pushing agent releases to
    /// `agent_repository` (`registry/path`).
    pub fn new(
        logins: Vec<RegistryCredential>,
        agent_repository: Option<String>,
    ) -> RegistryResolver {
        let client =
            RegistryClient::new(concat!("fleet-server/", env!("CARGO_PKG_VERSION")), TIMEOUT);
        RegistryResolver { client, logins, agent_repository }
    }
}

impl ImageResolver for RegistryResolver {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        let parsed = Reference::parse(reference).map_err(|e| e.to_string())?;
        let login = self.logins.iter().find(|l| l.registry == parsed.registry());
        self.client.resolve(&parsed, login).map_err(|e| fleet_proto::errors::chain(&e))
    }
}

impl AgentPusher for RegistryResolver {
    fn push_agent(
        &self,
        version: &str,
        binaries: &[(Platform, Vec<u8>)],
        deadline_secs: u64,
    ) -> Result<AgentBinaries, String> {
        let repository = self.agent_repository.as_deref().ok_or(
            "this server has no registry for agent binaries: set `agent_repository = \"REGISTRY/fleet/agent\"` in its config.toml (or --agent-repository) and restart it",
        )?;
        let registry = repository.split_once('/').map_or(repository, |(r, _)| r);
        let login = self.logins.iter().find(|l| l.registry == registry);
        let failed = |what: String| {
            move |e: fleet_oci::RegistryError| {
                format!("{what} to {repository}: {}", fleet_proto::errors::chain(&e))
            }
        };
        self.client
            .push_blob(repository, EMPTY_CONFIG, login)
            .map_err(failed("cannot push the empty config".to_owned()))?;
        let mut pushed = Vec::new();
        let mut entries = Vec::new();
        for (platform, bytes) in binaries {
            let blob = self
                .client
                .push_blob(repository, bytes, login)
                .map_err(failed(format!("cannot push the {platform} binary")))?;
            let annotations = BTreeMap::from([
                ("org.opencontainers.image.version".to_owned(), version.to_owned()),
                ("org.opencontainers.image.title".to_owned(), "fleet-agent".to_owned()),
            ]);
            let manifest = artifact_manifest(
                AGENT_ARTIFACT_TYPE,
                AGENT_BINARY_MEDIA_TYPE,
                &blob,
                &annotations,
            );
            let sha = ring::digest::digest(&ring::digest::SHA256, &manifest);
            let digest = format!("sha256:{}", fleet_proto::hex::encode(sha.as_ref()));
            let stored = self
                .client
                .push_manifest(repository, &digest, fleet_oci::OCI_MANIFEST, &manifest, login)
                .map_err(failed(format!("cannot push the {platform} manifest")))?;
            pushed.push(AgentBinary {
                platform: platform.to_string(),
                digest: blob.digest.clone(),
                size: blob.size,
            });
            entries.push((stored, platform.clone()));
        }
        let annotations =
            BTreeMap::from([("org.opencontainers.image.version".to_owned(), version.to_owned())]);
        let index = platform_index(&entries, &annotations);
        let index = self
            .client
            .push_manifest(repository, version, fleet_oci::OCI_INDEX, &index, login)
            .map_err(failed(format!("cannot tag {version}")))?;
        Ok(AgentBinaries {
            version: version.to_owned(),
            repository: repository.to_owned(),
            index: index.digest,
            deadline_secs,
            binaries: pushed,
        })
    }
}
