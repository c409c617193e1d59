//! Image tags to digests, through each registry's HTTP API ([`fleet_oci`]), with the logins
//! from the server's configuration; and agent releases' binaries pushed as OCI artifacts.
//!
//! An agent release in the registry: one artifact manifest per platform (artifact type
//! [`AGENT_ARTIFACT_TYPE`], the empty config, the binary as its one layer) and an index tagged
//! VERSION over them, so `crane manifest`, `oras` or a registry's UI show what a version holds.
//! Devices never read the manifests: their desired state names the binary's blob by digest.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_oci::guard::{Allowlist, Refusal};
use fleet_oci::manifest::{artifact_manifest, platform_index, EMPTY_CONFIG};
use fleet_oci::{Platform, Reference, RegistryClient, RegistryError, ResolvedImage};
use fleet_proto::RegistryCredential;

use crate::releases::{AgentBinaries, AgentBinary, AgentPusher, ImageResolver};

/// The artifact type of an agent binary's manifest.
pub const AGENT_ARTIFACT_TYPE: &str = "application/vnd.fleet.agent.v1";
/// The media type of the binary itself (the manifest's layer).
pub const AGENT_BINARY_MEDIA_TYPE: &str = "application/vnd.fleet.agent.binary.v1";

/// How long one registry request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The configuration key that lists the registries the server may reach.
pub const ALLOWED_REGISTRIES_KEY: &str = "allowed_registries";

/// Resolves through registries, logging in where a login is configured for the host. It reaches
/// only the registries `allowed_registries` allows, and only public addresses unless listed
/// ([`fleet_oci::guard`]).
pub struct RegistryResolver {
    client: RegistryClient,
    logins: Vec<RegistryCredential>,
    agent_repository: Option<String>,
    allowlist: Allowlist,
}

impl std::fmt::Debug for RegistryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self.logins.iter().map(|l| l.registry.as_str()).collect();
        f.debug_struct("RegistryResolver")
            .field("logins_for", &hosts)
            .field("allowlist", &self.allowlist)
            .finish()
    }
}

impl RegistryResolver {
    /// A resolver with `logins` (by registry host), reaching the registries `allowlist`
    /// allows, pushing agent releases to `agent_repository` (`registry/path`). The agents'
    /// registry is the server's own configuration, so it is reached whatever its address.
    pub fn new(
        logins: Vec<RegistryCredential>,
        agent_repository: Option<String>,
        allowlist: Allowlist,
    ) -> RegistryResolver {
        let allowlist = match &agent_repository {
            Some(repository) => allowlist.trusting(registry_of(repository)),
            None => allowlist,
        };
        let client = RegistryClient::guarded(
            concat!("fleet-server/", env!("CARGO_PKG_VERSION")),
            TIMEOUT,
            allowlist.clone(),
        );
        RegistryResolver { client, logins, agent_repository, allowlist }
    }
}

/// The registry of a repository `registry/path`.
fn registry_of(repository: &str) -> &str {
    repository.split_once('/').map_or(repository, |(r, _)| r)
}

impl ImageResolver for RegistryResolver {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        let parsed = Reference::parse(reference).map_err(|e| e.to_string())?;
        self.allowlist
            .check_registry(parsed.registry())
            .map_err(|refusal| refused(reference, &refusal))?;
        let login = self.logins.iter().find(|l| l.registry == parsed.registry());
        self.client.resolve(&parsed, login).map_err(|e| match &e {
            RegistryError::Refused { refusal, .. } => refused(reference, refusal),
            _ => fleet_proto::errors::chain(&e),
        })
    }
}

/// Why `image` is not resolved, and the configuration that would allow it.
fn refused(image: &str, refusal: &Refusal) -> String {
    let key = ALLOWED_REGISTRIES_KEY;
    let fix = match refusal {
        Refusal::NotAllowed { registry, .. } => format!("add \"{registry}\" to {key}"),
        Refusal::NonPublic { host, .. } => format!("list \"{host}\" in {key}"),
    };
    format!(
        "{image} is not resolved: {refusal}; to allow it, {fix} in the server's config.toml (or --allowed-registry) and restart it"
    )
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
        let login = self.logins.iter().find(|l| l.registry == registry_of(repository));
        let failed = |what: String| {
            move |e: RegistryError| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_image_names_the_registry_and_the_key_that_would_allow_it() {
        let allowlist = Allowlist::new(&["registry.example.com"]).unwrap();
        let resolver = RegistryResolver::new(Vec::new(), None, allowlist);
        let err = resolver.resolve("169.254.169.254/latest/meta-data:1").unwrap_err();
        assert_eq!(
            err,
            "169.254.169.254/latest/meta-data:1 is not resolved: registry 169.254.169.254 is not one of the allowed registries (registry.example.com); to allow it, add \"169.254.169.254\" to allowed_registries in the server's config.toml (or --allowed-registry) and restart it"
        );
        let err = resolver.resolve("busybox:1").unwrap_err();
        assert!(
            err.contains("registry docker.io is not one of") && err.contains("add \"docker.io\""),
            "{err}"
        );
    }

    #[test]
    fn without_a_list_a_registry_on_a_private_address_is_refused_before_any_request() {
        let resolver = RegistryResolver::new(Vec::new(), None, Allowlist::default());
        let err = resolver.resolve("10.0.0.5:5000/robots/lidar:1").unwrap_err();
        assert!(
            err.contains("10.0.0.5:5000 is a private address (10.0.0.5)")
                && err.contains("list \"10.0.0.5:5000\" in allowed_registries"),
            "{err}"
        );
        let err = resolver.resolve("[fd00:ec2::254]/x:1").unwrap_err();
        assert!(err.contains("cloud metadata"), "{err}");
    }

    /// `agent_repository` is the server's own configuration, so its registry is reached on
    /// loopback unlisted; another name for the same place is not.
    #[test]
    fn the_agents_registry_is_reached_on_loopback_without_being_listed() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let agents = format!("127.0.0.1:{port}");
        let resolver = RegistryResolver::new(
            Vec::new(),
            Some(format!("{agents}/fleet/agent")),
            Allowlist::default(),
        );
        // Nothing listens there: the error is that it is unreachable, not that it is refused.
        let err = resolver.resolve(&format!("{agents}/fleet/app:1")).unwrap_err();
        assert!(err.contains(&format!("registry {agents} is unreachable")), "{err}");
        let err = resolver.resolve(&format!("localhost:{port}/fleet/app:1")).unwrap_err();
        assert!(err.contains("loopback") && err.contains("allowed_registries"), "{err}");
    }
}
