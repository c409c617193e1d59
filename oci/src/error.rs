//! What can go wrong talking to a registry, with the names involved and what to do next.

/// Why a registry request failed. Each variant carries the registry and repository (or the
/// image) it concerns; the messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer: the connection failed, timed out, or TLS did not verify.
    #[error("registry {registry} is unreachable: check its address, the network and that it runs")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// The transport's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The registry answered outside the protocol (an unexpected status, an oversized body).
    #[error("registry {registry}: {reason}")]
    Protocol {
        /// Registry host.
        registry: String,
        /// What it did.
        reason: String,
    },
    /// The registry refused the credentials, or needs some and none were given.
    #[error("registry {registry} refused access to {repository}: {reason}; configure a login for {registry} that may pull {repository} (or check that the repository exists)")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// What it said.
        reason: String,
    },
    /// The credential given belongs to another registry; it is not sent.
    #[error("the login given is for registry {credential_registry}, the image is on {registry}: refusing to send one registry's password to another")]
    WrongCredential {
        /// Registry host of the image.
        registry: String,
        /// Registry host the credential is for.
        credential_registry: String,
    },
    /// The repository exists, the tag does not.
    #[error("tag {tag} not found in {registry}/{repository}: push it or check the spelling")]
    UnknownTag {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// The tag asked for.
        tag: String,
    },
    /// The repository exists, no manifest has this digest.
    #[error("manifest unknown: {digest} is not in {registry}/{repository}: check the digest, or push the image again")]
    UnknownDigest {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// The digest asked for.
        digest: String,
    },
    /// The registry, or a host it sent the client to (its token service, a redirect), is one
    /// this client may not contact ([`RegistryClient::guarded`](crate::RegistryClient::guarded)).
    #[error("registry {registry} is not contacted")]
    Refused {
        /// Registry host of the image.
        registry: String,
        /// Which host, and why.
        #[source]
        refusal: crate::guard::Refusal,
    },
    /// The registry has no such repository.
    #[error("repository {repository} not found in {registry}: push the image or check the name")]
    UnknownRepository {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
    },
    /// The content is not a container image this client understands.
    #[error("{image} is not a usable image: {reason}")]
    NotAManifest {
        /// The image (reference or `repository@digest`).
        image: String,
        /// What it is instead.
        reason: String,
    },
    /// An index without an image for the platform asked for.
    #[error("{image} has no image for {platform} among its {count} platforms")]
    NoPlatform {
        /// The image.
        image: String,
        /// The platform asked for, e.g. `linux/arm/v7`.
        platform: String,
        /// How many entries the index has.
        count: usize,
    },
    /// Content does not hash to the digest it should have: a broken or tampering proxy, or a
    /// damaged registry. Never used.
    #[error("digest mismatch for {image}: {expected_by} says {expected}, the content received is {actual}; refusing it (a broken or tampering proxy, or a damaged registry)")]
    DigestMismatch {
        /// The image or blob.
        image: String,
        /// The digest it should have.
        expected: String,
        /// The digest of what arrived.
        actual: String,
        /// Who said what it should be.
        expected_by: &'static str,
    },
    /// A downloaded blob cannot be written or read back.
    #[error("cannot write the download {}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image's name is outside Docker's reference grammar, so no registry can be named.
    #[error("image {image} cannot be pulled: {source}")]
    BadImage {
        /// The image as given.
        image: String,
        /// Which rule it broke.
        #[source]
        source: crate::reference::ReferenceError,
    },
}
