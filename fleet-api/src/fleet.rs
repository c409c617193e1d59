//! Groups and releases as the API shows them, and the requests that make them.

use fleet_proto::{DeviceId, ImageRef, ReleaseId, ReleaseSpec, Signed, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::devices::Device;

/// A group: a named label selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Group {
    /// Unique name.
    pub name: String,
    /// Which devices belong: `k=v,k!=v,k,!k`.
    pub selector: String,
    /// What the group is for.
    #[serde(default)]
    pub description: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Which token created it.
    pub created_by: String,
}

/// A group to create or replace (`POST /api/v1/groups`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupRequest {
    /// Its name.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::GROUP_NAME)))]
    pub name: String,
    /// Its label selector, e.g. `site=depot,model=r2`.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = crate::patterns::GROUP_SELECTOR)))]
    pub selector: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

/// A group with how many devices it holds now (`GET /api/v1/groups`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupSummary {
    /// The group.
    #[serde(flatten)]
    pub group: Group,
    /// Devices matching it now.
    pub devices: usize,
}

/// What creating, replacing or removing a group did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupChange {
    /// The group as stored now (as it was, after a remove).
    #[serde(flatten)]
    pub group: Group,
    /// Devices that got a new desired state: joining or leaving the group changed the
    /// variables or secrets their release renders with.
    #[serde(default)]
    pub retargeted: Vec<DeviceId>,
}

/// A group and its devices (`GET /api/v1/groups/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupView {
    /// The group.
    #[serde(flatten)]
    pub group: Group,
    /// Its devices now, by id.
    pub devices: Vec<Device>,
}

/// One platform's image within a resolved image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PlatformImage {
    /// `linux`, as a rule.
    pub os: String,
    /// OCI architecture: `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// OCI variant (`v7`, `v8`), if the image names one.
    pub variant: Option<String>,
    /// Digest of this platform's image manifest.
    pub digest: String,
    /// Bytes a pull downloads: the configuration and the compressed layers.
    pub download_bytes: u64,
}

/// What the registry said about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResolvedImage {
    /// `repository@digest` (the tag kept for display).
    pub image: ImageRef,
    /// The media type of the manifest `image` names (an index or an image manifest).
    pub media_type: String,
    /// Its platform images.
    pub platforms: Vec<PlatformImage>,
}

/// One image of a release, as the server resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ImageInfo {
    /// The service using it.
    pub service: String,
    /// The reference as the author wrote it (`registry/app:1.4`).
    pub reference: String,
    /// What the registry said.
    pub resolved: ResolvedImage,
}

/// A release (`GET /api/v1/releases/{id}`): immutable and signed by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Release {
    /// The canonical release, readable.
    pub spec: ReleaseSpec,
    /// The server's signature over it.
    pub signed: Signed,
    /// The Compose file it was made from, as uploaded; `None` for a release given as JSON.
    pub compose: Option<String>,
    /// Per image: what it resolved to and its platforms.
    pub images: Vec<ImageInfo>,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Which token created it.
    pub created_by: String,
    /// For an agent release (`fleet-agent@VERSION`): its binaries, signed apart from the
    /// (empty) spec. Absent for application releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentBinaries>,
}

/// The app name of agent releases: `fleet-agent@VERSION` is a version of the agent itself,
/// rolled out and pinned like an application release, but never run as one.
pub const AGENT_APP: &str = "fleet-agent";

/// What an agent release holds: one binary per platform, stored as an OCI artifact in the
/// fleet's registry (an index tagged VERSION, one manifest per platform, the binary its
/// layer), each named by digest so the signed desired state covers the exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AgentBinaries {
    /// The agent version.
    pub version: String,
    /// Registry and repository holding the binaries, e.g. `registry.example:5000/fleet/agent`.
    pub repository: String,
    /// Digest of the index tagged VERSION there.
    pub index: String,
    /// Seconds a device has to commit the new version before it reverts by itself.
    pub deadline_secs: u64,
    /// One per platform.
    pub binaries: Vec<AgentBinary>,
}

/// One platform's agent binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AgentBinary {
    /// `linux/arm64`, `linux/arm/v7`, `linux/amd64`.
    pub platform: String,
    /// The binary's digest (`sha256:…`): the blob devices download.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An agent release to create (`POST /api/v1/agent-releases`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AgentReleaseRequest {
    /// The version; it must be newer (semver) than every agent release.
    pub version: String,
    /// The binaries, one per platform.
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 4)))]
    pub binaries: Vec<AgentBinaryUpload>,
    /// How long a device has to commit the new version, e.g. `120s` (the default).
    #[serde(default)]
    pub deadline: Option<String>,
}

/// One binary of an agent release to create.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AgentBinaryUpload {
    /// `linux/arm64`, `linux/arm/v7` or `linux/amd64`.
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = "^(linux/)?(amd64|arm64(/v8)?|arm/v7|386)$"))
    )]
    pub platform: String,
    /// The ELF executable, base64 (standard alphabet, padded).
    #[cfg_attr(feature = "schema", schemars(length(min = 28)))]
    pub base64: String,
}

impl Release {
    /// Its id (`app@version`).
    pub fn id(&self) -> &ReleaseId {
        &self.spec.id
    }
}

/// A release to create (`POST /api/v1/releases`): from a Compose file, or as the canonical
/// JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReleaseRequest {
    /// The application.
    pub app: String,
    /// Its version; the release id is `app@version`.
    pub version: String,
    /// The Compose file's text.
    #[serde(default)]
    pub compose: Option<String>,
    /// The canonical release (images by digest), instead of a Compose file.
    #[serde(default)]
    pub spec: Option<ReleaseSpec>,
    /// Compose profiles to run: services with a `profiles` key run only if one of theirs is
    /// here; services without one always run (`fleetctl release create --profile NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(
        feature = "schema",
        schemars(inner(regex(pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")))
    )]
    pub profiles: Vec<String>,
}
