//! Releases as the server keeps them: immutable, signed, with what the registry said about
//! their images (platforms and download sizes, for pre-flight checks).
//!
//! Invariants: a release id (`app@version`) is written once and never replaced; the stored
//! [`ReleaseSpec`] is exactly the one inside the server's signature ([`ReleaseRecord::verify`]
//! checks both), so a record edited in the store or a backup is refused before it reaches a
//! device; every image is pinned by digest (the spec's own validation).

pub use fleet_api::{AgentBinaries, AgentBinary, AGENT_APP};
use fleet_oci::Platform;
pub use fleet_oci::{PlatformImage, ResolvedImage};
use fleet_proto::{ReleaseId, ReleaseSpec, ServerKey, Signable, Signed, TrustedKeys, UnixMillis};
use serde::{Deserialize, Serialize};

/// What the server learned about one image of the release when it resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The service using it.
    pub service: String,
    /// The reference as the author wrote it (`registry/app:1.4`).
    pub reference: String,
    /// What the registry said: the digest (an index keeps its own) and every platform's
    /// download size.
    pub resolved: ResolvedImage,
}

/// Turns image references as written (`registry/app:1.4`) into digests: the registry's HTTP
/// API in the server ([`crate::registry`]), a table in tests. Blocking: called from a blocking
/// thread.
pub trait ImageResolver: Send + Sync + 'static {
    /// Resolves `reference`; the error says what is wrong and what to do.
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String>;
}

/// Stores an agent release's binaries where devices download them: the fleet's registry
/// ([`crate::registry`]), a map in tests. Blocking: called from a blocking thread.
pub trait AgentPusher: Send + Sync + 'static {
    /// Pushes `binaries` of agent `version` (each checked to be an executable for its
    /// platform) and says where they are; the error says what is wrong and what to do.
    fn push_agent(
        &self,
        version: &str,
        binaries: &[(Platform, Vec<u8>)],
        deadline_secs: u64,
    ) -> Result<AgentBinaries, String>;
}

/// What the server signs for an agent release: its id and its binaries, so a digest edited in
/// the store or a backup is refused like an edited spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SignedAgent {
    id: ReleaseId,
    binaries: AgentBinaries,
}

impl Signable for SignedAgent {
    const CONTEXT: &'static [u8] = b"fleet/v1 agent-release";
}

/// A stored release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The canonical release, readable.
    pub spec: ReleaseSpec,
    /// The server's signature over it (postcard payload inside).
    pub signed: Signed,
    /// The Compose file it was made from, as uploaded; `None` for a release given as JSON.
    pub compose: Option<String>,
    /// Per image: what it resolved to and its platforms.
    pub images: Vec<ImageInfo>,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Which token created it.
    pub created_by: String,
    /// An agent release's binaries (`None` for application releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentBinaries>,
    /// The server's signature over the id and [`ReleaseRecord::agent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_signed: Option<Signed>,
}

/// Why a stored release cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseIntegrityError {
    /// The signature does not verify.
    #[error("release {id}: the server's signature does not verify ({source}); the store or backup was altered")]
    Signature {
        /// The release.
        id: String,
        /// Why.
        #[source]
        source: fleet_proto::VerifyError,
    },
    /// The readable spec differs from the signed one.
    #[error("release {id}: the stored release differs from the one the server signed; the store or backup was altered")]
    Mismatch {
        /// The release.
        id: String,
    },
}

impl ReleaseRecord {
    /// A new record for `spec`, signed with `key`.
    pub fn new(
        spec: ReleaseSpec,
        key: &ServerKey,
        compose: Option<String>,
        images: Vec<ImageInfo>,
        created_at: UnixMillis,
        created_by: &str,
    ) -> ReleaseRecord {
        let signed = key.sign(&spec);
        ReleaseRecord {
            spec,
            signed,
            compose,
            images,
            created_at,
            created_by: created_by.into(),
            agent: None,
            agent_signed: None,
        }
    }

    /// A new agent release `fleet-agent@VERSION` for `binaries`, signed with `key`. Its spec
    /// has no services: a device never runs it as an application.
    pub fn agent(
        binaries: AgentBinaries,
        key: &ServerKey,
        created_at: UnixMillis,
        created_by: &str,
    ) -> Result<ReleaseRecord, fleet_proto::IdError> {
        let id = ReleaseId::new(format!("{AGENT_APP}@{}", binaries.version))?;
        let spec = ReleaseSpec {
            id: id.clone(),
            app: AGENT_APP.to_owned(),
            version: binaries.version.clone(),
            services: Vec::new(),
        };
        let signed_agent = key.sign(&SignedAgent { id, binaries: binaries.clone() });
        Ok(ReleaseRecord {
            agent: Some(binaries),
            agent_signed: Some(signed_agent),
            ..ReleaseRecord::new(spec, key, None, Vec::new(), created_at, created_by)
        })
    }

    /// Whether this is an agent release (`fleet-agent@VERSION`).
    pub fn is_agent(&self) -> bool {
        is_agent_release(&self.spec.id)
    }

    /// An agent release's binaries, after checking the signature over them (and the spec's).
    pub fn verify_agent(
        &self,
        trusted: &TrustedKeys,
    ) -> Result<Option<&AgentBinaries>, ReleaseIntegrityError> {
        self.verify(trusted)?;
        let id = self.spec.id.to_string();
        match (&self.agent, &self.agent_signed) {
            (None, None) if !self.is_agent() => Ok(None),
            (Some(binaries), Some(signed)) => {
                let opened: SignedAgent = signed.open(trusted).map_err(|source| {
                    ReleaseIntegrityError::Signature { id: id.clone(), source }
                })?;
                if opened.id != self.spec.id || &opened.binaries != binaries {
                    return Err(ReleaseIntegrityError::Mismatch { id });
                }
                Ok(Some(binaries))
            }
            _ => Err(ReleaseIntegrityError::Mismatch { id }),
        }
    }

    /// The release's id.
    pub fn id(&self) -> &ReleaseId {
        &self.spec.id
    }

    /// The release as signed, after checking the signature and that the readable copy agrees.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<&ReleaseSpec, ReleaseIntegrityError> {
        let id = self.spec.id.to_string();
        let signed: ReleaseSpec = self
            .signed
            .open(trusted)
            .map_err(|source| ReleaseIntegrityError::Signature { id: id.clone(), source })?;
        if signed != self.spec {
            return Err(ReleaseIntegrityError::Mismatch { id });
        }
        Ok(&self.spec)
    }

    /// Total download for a device of `arch`, if every image's size is known for it.
    pub fn download_bytes(&self, arch: &str) -> Option<u64> {
        self.images.iter().map(|i| i.resolved.platform_for(arch).map(|p| p.download_bytes)).sum()
    }
}

/// Whether `id` names an agent release (`fleet-agent@VERSION`).
pub fn is_agent_release(id: &ReleaseId) -> bool {
    id.as_str().strip_prefix(AGENT_APP).is_some_and(|rest| rest.starts_with('@'))
}

/// The binary of agent release `binaries` a device of Rust architecture `arch` (`x86_64`,
/// `aarch64`, `arm`, as inventories report it) runs, if the release has one.
pub fn agent_binary_for<'a>(binaries: &'a AgentBinaries, arch: &str) -> Option<&'a AgentBinary> {
    let wanted = Platform::for_rust_arch(arch);
    binaries.binaries.iter().find(|b| b.platform.parse::<Platform>().is_ok_and(|p| p == wanted))
}

#[cfg(test)]
mod tests {
    use fleet_proto::samples;

    use super::*;

    #[test]
    fn a_release_verifies_and_an_edited_one_does_not() {
        let key = ServerKey::from_seed(&[3; 32]);
        let trusted = TrustedKeys::new([key.public()]);
        let record =
            ReleaseRecord::new(samples::release(), &key, None, vec![], UnixMillis(1), "admin");
        assert_eq!(record.verify(&trusted).unwrap(), &samples::release());
        let mut edited = record.clone();
        edited.spec.version = "9.9.9".into();
        assert!(matches!(edited.verify(&trusted), Err(ReleaseIntegrityError::Mismatch { .. })));
        let other = TrustedKeys::new([ServerKey::from_seed(&[4; 32]).public()]);
        assert!(matches!(record.verify(&other), Err(ReleaseIntegrityError::Signature { .. })));
    }

    #[test]
    fn an_agent_release_verifies_and_an_edited_binary_does_not() {
        let key = ServerKey::from_seed(&[3; 32]);
        let trusted = TrustedKeys::new([key.public()]);
        let binaries = AgentBinaries {
            version: "1.1.0".into(),
            repository: "r.test/fleet/agent".into(),
            index: format!("sha256:{}", "0".repeat(64)),
            deadline_secs: 120,
            binaries: vec![AgentBinary {
                platform: "linux/amd64".into(),
                digest: format!("sha256:{}", "1".repeat(64)),
                size: 7,
            }],
        };
        let record = ReleaseRecord::agent(binaries.clone(), &key, UnixMillis(1), "admin").unwrap();
        assert!(record.is_agent() && record.spec.services.is_empty());
        assert_eq!(record.id().as_str(), "fleet-agent@1.1.0");
        assert_eq!(record.verify_agent(&trusted).unwrap(), Some(&binaries));
        assert_eq!(agent_binary_for(&binaries, "x86_64").map(|b| b.size), Some(7));
        assert!(agent_binary_for(&binaries, "aarch64").is_none());

        let mut edited = record.clone();
        edited.agent.as_mut().unwrap().binaries[0].digest = format!("sha256:{}", "2".repeat(64));
        assert!(matches!(
            edited.verify_agent(&trusted),
            Err(ReleaseIntegrityError::Mismatch { .. })
        ));
        let mut unsigned = record.clone();
        unsigned.agent_signed = None;
        assert!(unsigned.verify_agent(&trusted).is_err(), "an agent release must be signed");
        let app = ReleaseRecord::new(samples::release(), &key, None, vec![], UnixMillis(1), "t");
        assert_eq!(app.verify_agent(&trusted).unwrap(), None);
        assert!(!app.is_agent());
    }

    #[test]
    fn the_download_is_known_only_when_every_image_has_the_devices_platform() {
        let platform = |arch: &str, bytes| PlatformImage {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
            digest: format!("sha256:{}", "0".repeat(64)),
            download_bytes: bytes,
        };
        let info = ImageInfo {
            service: "web".into(),
            reference: "r/web:1".into(),
            resolved: ResolvedImage {
                image: samples::release().services[0].image.clone(),
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                platforms: vec![platform("amd64", 10), platform("arm64", 40)],
            },
        };
        let record = ReleaseRecord {
            images: vec![info.clone(), info],
            ..ReleaseRecord::new(
                samples::release(),
                &ServerKey::from_seed(&[1; 32]),
                None,
                vec![],
                UnixMillis(0),
                "t",
            )
        };
        assert_eq!(record.download_bytes("aarch64"), Some(80));
        assert_eq!(record.download_bytes("x86_64"), Some(20));
        assert_eq!(record.download_bytes("riscv64"), None);
    }
}
