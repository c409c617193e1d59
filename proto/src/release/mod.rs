//! What a device should run: a release of one application, made of services.
//!
//! These are the canonical, validated forms the server stores and signs (the Compose subset is
//! converted into them before anything reaches a device). [`ReleaseSpec::validate`] checks what
//! the types alone cannot: unique names, no two services on one host port, sane limits. Both the
//! server (before storing) and the agent (before accepting) run it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{ReleaseId, ServiceName};

mod options;
mod validate;

pub use options::{ContainerOptions, HostEntry, MAX_STOP_GRACE};
#[cfg(test)]
use validate::is_cpu_list;

/// One release of one application: the complete set of services a device runs for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReleaseSpec {
    /// Unique id of this release, e.g. `robot-stack@1.4.2`.
    pub id: ReleaseId,
    /// The application this release belongs to.
    pub app: String,
    /// The human version, e.g. `1.4.2`.
    pub version: String,
    /// The services, in the order the author wrote them. Each is encoded extensibly so fields
    /// can be appended to [`ServiceSpec`] without breaking older bytes.
    #[serde(with = "crate::codec::extensible_vec")]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<ServiceSpec>"))]
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::collection::vec(proptest::arbitrary::any::<ServiceSpec>(), 0..3)"
        )
    )]
    pub services: Vec<ServiceSpec>,
}

/// One service (one container) within a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ServiceSpec {
    /// Name, unique within the release.
    pub name: ServiceName,
    /// The image, always pinned by digest.
    pub image: ImageRef,
    /// Overrides the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Overrides the image's command when non-empty.
    pub command: Vec<String>,
    /// Environment variables (sorted by name, so the config hash is stable).
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container.
    pub working_dir: Option<String>,
    /// Extra container labels (the agent adds its own `io.fleet.*` labels on top).
    pub labels: BTreeMap<String, String>,
    /// Volumes and bind mounts.
    pub volumes: Vec<VolumeMount>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Which network the container joins.
    pub network_mode: NetworkMode,
    /// How health is judged; `None` means "running is healthy".
    pub healthcheck: Option<HealthCheck>,
    /// What the engine does when the container exits.
    pub restart: RestartPolicy,
    /// How an update of this service is carried out.
    pub update: UpdateStrategy,
    /// How long a new container may take to become healthy before the update fails and the
    /// device rolls back.
    pub health_deadline: Duration,
    /// Hardware this service needs, by stable identity.
    pub hardware: Vec<HardwareRequest>,
    /// CPU, memory and process limits.
    pub resources: ResourceLimits,
    /// Privileges and identity.
    pub security: SecurityOptions,
    /// Services that must be started (or healthy) before this one.
    pub depends_on: Vec<Dependency>,
    /// Extra groups (names or numeric ids) the container's user joins, e.g. `dialout` for a
    /// serial port or `video` for a camera. Appended: empty in bytes from older builds.
    #[serde(default)]
    pub group_add: Vec<String>,
    /// Hardware mapped when the device has it; the service runs without it otherwise (a
    /// diagnostics port, an optional camera). Same forms as [`ServiceSpec::hardware`].
    /// Appended: empty in bytes from older builds.
    #[serde(default)]
    pub optional_hardware: Vec<HardwareRequest>,
    /// The service sends application telemetry: the agent mounts its ingestion socket at
    /// `/run/fleet/telemetry.sock` (InfluxDB line protocol or JSON over HTTP; points get the
    /// `service` label). Appended: false in bytes from older builds.
    #[serde(default)]
    pub telemetry: bool,
    /// The container's processes cannot gain privileges (setuid binaries, file capabilities):
    /// Docker's `no-new-privileges`. Appended: false in bytes from older builds.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Relative CPU weight against other containers when CPUs are contended (Docker's
    /// `cpu_shares`, default 1024), unlike `cpu_millis`, a hard quota. Appended: none in bytes
    /// from older builds.
    #[serde(default)]
    pub cpu_shares: Option<u32>,
    /// The release networks this service joins (network_mode `Release` only), each with extra
    /// DNS names; the service's own name is always one. Empty means the release's `default`
    /// network alone. The agent names each network `<device>_<app>_<name>` on the device. Appended:
    /// empty in bytes from older builds.
    #[serde(default)]
    pub networks: Vec<NetworkAttachment>,
    /// Secrets the service reads as files (Compose `secrets:`). The values never appear here:
    /// they reach the device sealed to it in [`crate::DesiredState::secrets`], and the agent
    /// mounts each read-only from a tmpfs. Appended: empty in bytes from older builds.
    #[serde(default)]
    pub secrets: Vec<SecretMount>,
    /// Host namespaces besides the network the service shares (Compose `pid: host`, `ipc:
    /// host`, `uts: host`; the host network is [`NetworkMode::Host`]). Each needs the device's
    /// `[policy] allow_host_namespaces` ([`crate::policy`]). Appended: empty in bytes from
    /// older builds.
    #[serde(default)]
    pub host_namespaces: Vec<crate::policy::Namespace>,
    /// Container options beyond the core spec: init, terminal, stop signal and grace, names
    /// and resolver, namespaced sysctls, finer CPU, I/O and OOM controls. Encoded extensibly
    /// so options can be appended. Appended: none set in bytes from older builds.
    #[serde(default, with = "crate::codec::extensible")]
    #[cfg_attr(feature = "schema", schemars(with = "ContainerOptions"))]
    pub options: ContainerOptions,
}

/// One secret a service reads, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SecretMount {
    /// The secret's name, as `fleetctl secret set` stored it.
    pub source: String,
    /// The file inside the container: a bare name under `/run/secrets/`, or an absolute path.
    pub target: String,
    /// The file's owner inside the container; `None`: root.
    pub uid: Option<u32>,
    /// The file's group inside the container; `None`: root.
    pub gid: Option<u32>,
    /// Permission bits; 0 means [`SecretMount::DEFAULT_MODE`] (as Compose: 0444).
    pub mode: u32,
}

impl SecretMount {
    /// The mode a secret file gets when the service names none (Compose's default).
    pub const DEFAULT_MODE: u32 = 0o444;

    /// The file's path inside the container.
    pub fn container_path(&self) -> String {
        if self.target.starts_with('/') {
            self.target.clone()
        } else {
            format!("/run/secrets/{}", self.target)
        }
    }

    /// The file's permission bits.
    pub fn file_mode(&self) -> u32 {
        if self.mode == 0 {
            Self::DEFAULT_MODE
        } else {
            self.mode
        }
    }
}

/// A release network a service joins, with the extra names it answers to there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct NetworkAttachment {
    /// The network's name within the release (`default`, `backend`).
    pub name: String,
    /// Extra DNS names of the service on this network (its name is always one).
    pub aliases: Vec<String>,
}

/// The network name every release-network service joins when it names none.
pub const DEFAULT_NETWORK: &str = "default";

impl ServiceSpec {
    /// The release networks this service joins: its own list, or `default` alone; none
    /// outside network_mode `Release`.
    pub fn release_networks(&self) -> Vec<NetworkAttachment> {
        if self.network_mode != NetworkMode::Release {
            return vec![];
        }
        if self.networks.is_empty() {
            return vec![NetworkAttachment { name: DEFAULT_NETWORK.to_owned(), aliases: vec![] }];
        }
        self.networks.clone()
    }
}

/// Whether `name` can name a network or volume: what Docker accepts (letters, digits, `_`, `.`,
/// `-`, starting with a letter or digit), at most 64 bytes so the names on the device stay
/// short.
pub fn is_object_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `name` is a DNS label a service can answer to (RFC 1123: letters, digits and `-`,
/// not at either end, at most 63 bytes).
pub fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl ServiceSpec {
    /// A service with its name and image and every other field at its neutral default: the
    /// image's own entrypoint, command and health check, the release network, no ports,
    /// volumes, hardware or limits, restart always, start-first with a 60 s health deadline.
    /// Override fields with struct update syntax.
    pub fn new(name: ServiceName, image: ImageRef) -> ServiceSpec {
        ServiceSpec {
            name,
            image,
            entrypoint: None,
            command: vec![],
            env: BTreeMap::new(),
            working_dir: None,
            labels: BTreeMap::new(),
            volumes: vec![],
            ports: vec![],
            network_mode: NetworkMode::Release,
            healthcheck: None,
            restart: RestartPolicy::Always,
            update: UpdateStrategy::StartFirst,
            health_deadline: Duration::from_secs(60),
            hardware: vec![],
            resources: ResourceLimits::default(),
            security: SecurityOptions::default(),
            depends_on: vec![],
            group_add: vec![],
            optional_hardware: vec![],
            telemetry: false,
            no_new_privileges: false,
            cpu_shares: None,
            networks: vec![],
            secrets: vec![],
            host_namespaces: vec![],
            options: ContainerOptions::default(),
        }
    }
}

/// A container image pinned to a content digest: `repository@sha256:<64 hex>`.
///
/// Devices never run floating tags: the same release is the same bytes on every device.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(try_from = "RawImageRef", into = "RawImageRef")]
pub struct ImageRef {
    repository: String,
    digest: String,
    tag: Option<String>,
}

/// Wire form of [`ImageRef`]; validated on the way in.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RawImageRef {
    repository: String,
    digest: String,
    tag: Option<String>,
}

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// No `@sha256:` digest: tags alone float and are refused on devices.
    #[error(
        "image {image:?} has no digest; devices run images by digest only (repository@sha256:...)"
    )]
    NoDigest {
        /// The reference as given.
        image: String,
    },
    /// The digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error(
        "image {image:?}: digest {digest:?} is not sha256: followed by 64 lowercase hex digits"
    )]
    BadDigest {
        /// The reference as given.
        image: String,
        /// The digest part.
        digest: String,
    },
    /// The repository part is empty or holds whitespace or uppercase letters.
    #[error("image {image:?}: repository {repository:?} is empty or holds whitespace, uppercase or control characters")]
    BadRepository {
        /// The reference as given.
        image: String,
        /// The repository part.
        repository: String,
    },
}

impl ImageRef {
    /// Parses `repository[:tag]@sha256:<hex>`. The tag, if present, is kept for display only.
    pub fn parse(image: &str) -> Result<Self, ImageRefError> {
        let Some((name, digest)) = image.rsplit_once('@') else {
            return Err(ImageRefError::NoDigest { image: image.to_owned() });
        };
        // A ':' after the last '/' separates a tag; one before it belongs to a registry port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last_slash..].find(':') {
            Some(i) => (&name[..last_slash + i], Some(name[last_slash + i + 1..].to_owned())),
            None => (name, None),
        };
        Self::from_parts(repository.to_owned(), digest.to_owned(), tag)
    }

    fn from_parts(
        repository: String,
        digest: String,
        tag: Option<String>,
    ) -> Result<Self, ImageRefError> {
        let image = || format!("{repository}@{digest}");
        if repository.is_empty()
            || repository
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c.is_ascii_uppercase() || c == '@')
        {
            return Err(ImageRefError::BadRepository {
                image: image(),
                repository: repository.clone(),
            });
        }
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ImageRefError::BadDigest { image: image(), digest: digest.clone() });
        }
        Ok(ImageRef { repository, digest, tag })
    }

    /// The repository, including the registry host, e.g. `127.0.0.1:5000/demo/app`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The content digest, e.g. `sha256:9f86…`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The tag the digest was resolved from, if known (informational).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The registry host (and port) to pull from, if the repository names one.
    ///
    /// Follows Docker's rule: the first path component is a registry when it contains a `.` or a
    /// `:`, or is `localhost`.
    pub fn registry(&self) -> Option<&str> {
        let (first, _) = self.repository.split_once('/')?;
        (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
    }

    /// The reference to pull: `repository@digest`.
    pub fn pull_ref(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TryFrom<RawImageRef> for ImageRef {
    type Error = ImageRefError;
    fn try_from(raw: RawImageRef) -> Result<Self, ImageRefError> {
        ImageRef::from_parts(raw.repository, raw.digest, raw.tag)
    }
}

impl From<ImageRef> for RawImageRef {
    fn from(i: ImageRef) -> Self {
        RawImageRef { repository: i.repository, digest: i.digest, tag: i.tag }
    }
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VolumeMount {
    /// Where the data comes from.
    pub source: VolumeSource,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The source of a [`VolumeMount`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum VolumeSource {
    /// A named volume owned by the agent; it survives updates and rollbacks.
    Named(String),
    /// A host path (allowed only under the agent's configured roots).
    HostPath(String),
    /// A tmpfs of at most this many bytes (0 = the engine's default).
    Tmpfs {
        /// Size limit in bytes.
        size_bytes: u64,
    },
}

/// A port published on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PortMapping {
    /// Port on the device.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Publish on loopback only (the default is all interfaces).
    pub loopback_only: bool,
}

/// Transport protocol of a [`PortMapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// The network a container joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum NetworkMode {
    /// The release's own bridge network; services reach each other by name.
    Release,
    /// The host's network stack (ROS 2 / DDS stacks need it).
    Host,
    /// No network at all.
    None,
}

/// How health is judged (Docker's HEALTHCHECK fields plus probes the agent runs itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HealthCheck {
    /// What is checked.
    pub probe: Probe,
    /// Time between checks.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive failures before the service counts as unhealthy.
    pub retries: u32,
    /// Failures during this initial period do not count.
    pub start_period: Duration,
}

/// The check behind a [`HealthCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Probe {
    /// Use the HEALTHCHECK baked into the image.
    Image,
    /// Docker `CMD`: run this argv inside the container; exit 0 is healthy.
    Cmd(Vec<String>),
    /// Docker `CMD-SHELL`: run this through the container's shell.
    CmdShell(String),
    /// The agent sends `GET path` to the container's port; any 2xx is healthy.
    Http {
        /// Container port.
        port: u16,
        /// Request path, e.g. `/health`.
        path: String,
    },
    /// The agent opens a TCP connection to the container's port.
    Tcp {
        /// Container port.
        port: u16,
    },
    /// No health check at all: the image's own HEALTHCHECK is switched off (Docker's
    /// `["NONE"]`) and a running container counts as healthy. Appended variant.
    Disabled,
}

/// What the engine does when the container exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Always restart (the usual choice on a device).
    Always,
    /// Restart after a non-zero exit, at most this many times (0 = unlimited).
    OnFailure {
        /// Restart limit.
        max_retries: u32,
    },
    /// Restart unless stopped by the agent.
    UnlessStopped,
}

/// How the agent replaces a running service with a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum UpdateStrategy {
    /// Start the new container beside the old, wait until healthy, then stop the old one.
    StartFirst,
    /// Stop the old container first: for services that own exclusive hardware.
    StopFirst,
}

/// Hardware a service needs, named by what it is rather than where it happened to enumerate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum HardwareRequest {
    /// A serial port, mapped to `container_path`.
    Serial {
        /// Which port.
        port: SerialSelector,
        /// Device path inside the container, e.g. `/dev/ttyUSB0`.
        container_path: String,
    },
    /// A GPIO chip (character device).
    Gpio {
        /// Chip name (`gpiochip0`) or label (`pinctrl-bcm2711`).
        chip: String,
    },
    /// An I2C bus.
    I2c {
        /// Bus number (`/dev/i2c-N`).
        bus: u32,
    },
    /// An SPI device.
    Spi {
        /// Bus number.
        bus: u32,
        /// Chip select (`/dev/spidevB.C`).
        chip_select: u32,
    },
    /// A V4L2 video device by name (as reported in the inventory) or stable path.
    Video {
        /// Device name, or a `/dev/v4l/by-id/...` / `by-path` name.
        device: String,
    },
    /// One or more GPUs.
    Gpu {
        /// Which kind of GPU.
        kind: GpuKind,
        /// How many or which ones.
        select: GpuSelect,
    },
    /// A CAN interface (host network interface name, e.g. `can0`).
    Can {
        /// Interface name.
        interface: String,
    },
    /// Any other character device, by host path.
    Device {
        /// Path on the host.
        host_path: String,
        /// Path inside the container (defaults to the host path when empty).
        container_path: String,
        /// cgroup permissions, e.g. `rwm`.
        permissions: String,
    },
}

/// How a serial port is identified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum SerialSelector {
    /// A name under `/dev/serial/by-id/`.
    ById(String),
    /// A name under `/dev/serial/by-path/` (a physical USB port).
    ByPath(String),
    /// USB vendor and product ids (hex, e.g. `0403`/`6001`), optionally the adapter's serial.
    Usb {
        /// USB vendor id.
        vendor: String,
        /// USB product id.
        product: String,
        /// USB serial number of the adapter.
        serial: Option<String>,
    },
}

/// Kind of GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum GpuKind {
    /// A discrete NVIDIA GPU (`/dev/nvidia*`).
    Nvidia,
    /// An NVIDIA Jetson's integrated GPU.
    Jetson,
    /// A DRM render node (Intel, AMD, Mali).
    Dri,
}

/// Which GPUs of a kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum GpuSelect {
    /// Every GPU of the kind.
    All,
    /// This many GPUs.
    Count(u32),
    /// These GPUs, by index or UUID.
    Ids(Vec<String>),
}

/// Resource limits. `None` means "no limit".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ResourceLimits {
    /// Hard memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Soft memory limit (reservation) in bytes.
    pub memory_reservation_bytes: Option<u64>,
    /// Memory plus swap in bytes; equal to `memory_bytes` disables swap.
    pub memory_swap_bytes: Option<u64>,
    /// CPU quota in thousandths of a CPU (1500 = one and a half CPUs).
    pub cpu_millis: Option<u32>,
    /// CPUs the service may run on, e.g. `2-3` (real-time loops pin to isolated CPUs).
    pub cpuset: Option<String>,
    /// Maximum number of processes.
    pub pids: Option<u32>,
    /// Per-process resource limits.
    pub ulimits: Vec<Ulimit>,
    /// Highest real-time (SCHED_FIFO/RR) priority the service may use, 1 to 99.
    pub realtime_priority: Option<u8>,
    /// Size of `/dev/shm` in bytes.
    pub shm_bytes: Option<u64>,
}

/// One `ulimit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Ulimit {
    /// Resource name, e.g. `nofile`, `memlock`, `rtprio`.
    pub name: String,
    /// Soft limit.
    pub soft: i64,
    /// Hard limit.
    pub hard: i64,
}

/// Privileges and identity of the container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SecurityOptions {
    /// Run privileged (all devices, all capabilities). Discouraged; named hardware is better.
    pub privileged: bool,
    /// Capabilities to add, e.g. `SYS_NICE`.
    pub cap_add: Vec<String>,
    /// Capabilities to drop.
    pub cap_drop: Vec<String>,
    /// Mount the root filesystem read-only.
    pub read_only_rootfs: bool,
    /// `user[:group]` to run as.
    pub user: Option<String>,
}

/// An ordering constraint between services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Dependency {
    /// The service waited for.
    pub service: ServiceName,
    /// What is waited for.
    pub condition: DependencyCondition,
}

/// What [`Dependency`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum DependencyCondition {
    /// The dependency's container has started.
    Started,
    /// The dependency is healthy.
    Healthy,
}

/// One inconsistency found by [`ReleaseSpec::validate`], with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SpecError {
    /// Where, e.g. `services[1].ports[0].host_port`.
    pub path: String,
    /// What is wrong and, where it helps, what to do.
    pub reason: String,
}

#[cfg(test)]
pub(crate) mod arbitrary_impls {
    use proptest::prelude::*;

    use super::*;

    impl Arbitrary for ImageRef {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with((): ()) -> Self::Strategy {
            (
                "[a-z0-9.:]{1,12}/[a-z0-9/_-]{1,20}",
                "[0-9a-f]{64}",
                proptest::option::of("[a-z0-9.]{1,8}"),
            )
                .prop_map(|(repo, hex, tag)| {
                    ImageRef::from_parts(repo, format!("sha256:{hex}"), tag).unwrap()
                })
                .boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn image_refs_parse_with_registry_port_and_tag() {
        let img = ImageRef::parse(&format!("127.0.0.1:5000/demo/app:1.2@sha256:{HEX}")).unwrap();
        assert_eq!(img.repository(), "127.0.0.1:5000/demo/app");
        assert_eq!(img.tag(), Some("1.2"));
        assert_eq!(img.registry(), Some("127.0.0.1:5000"));
        assert_eq!(img.pull_ref(), format!("127.0.0.1:5000/demo/app@sha256:{HEX}"));
        let plain = ImageRef::parse(&format!("library/busybox@sha256:{HEX}")).unwrap();
        assert_eq!(plain.registry(), None);
        assert_eq!(plain.tag(), None);
    }

    #[test]
    fn image_without_digest_is_refused() {
        assert!(matches!(
            ImageRef::parse("127.0.0.1:5000/demo/app:1"),
            Err(ImageRefError::NoDigest { .. })
        ));
        assert!(matches!(
            ImageRef::parse("demo/app@sha256:abc"),
            Err(ImageRefError::BadDigest { .. })
        ));
        assert!(matches!(
            ImageRef::parse(&format!("Demo/App@sha256:{HEX}")),
            Err(ImageRefError::BadRepository { .. })
        ));
    }

    #[test]
    fn cpu_lists() {
        for ok in ["0", "0-3", "1,3-5", "2-2"] {
            assert!(is_cpu_list(ok), "{ok}");
        }
        for bad in ["", "a", "3-1", "1,", "-1"] {
            assert!(!is_cpu_list(bad), "{bad}");
        }
    }

    #[test]
    fn secret_mounts_are_checked_with_their_paths() {
        let mut release = crate::samples::release();
        let mount = |source: &str, target: &str, mode: u32| SecretMount {
            source: source.to_owned(),
            target: target.to_owned(),
            uid: None,
            gid: None,
            mode,
        };
        release.services[1].secrets = vec![
            mount("db-password", "db", 0),
            mount("api token", "token", 0),
            mount("tls", "../etc/shadow", 0),
            mount("tls", "a/b", 0),
            mount("tls", "/etc/tls/key.pem", 0o1777),
            mount("other", "/run/secrets/db", 0o400),
            mount("maps", "/tmp", 0),
        ];
        release.services[1].volumes = crate::samples::release().services[0].volumes.clone();
        let errors = release.validate().unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "services[1].secrets[1].source",
                "services[1].secrets[2].target",
                "services[1].secrets[3].target",
                "services[1].secrets[4].mode",
                "services[1].secrets[5].target",
                "services[1].secrets[6].target",
            ],
            "{errors:?}"
        );
        assert_eq!(mount("a", "db", 0).container_path(), "/run/secrets/db");
        assert_eq!(mount("a", "db", 0).file_mode(), 0o444);
        assert_eq!(mount("a", "/etc/x", 0o400).container_path(), "/etc/x");
    }

    #[test]
    fn an_app_name_that_could_leave_its_directory_or_an_id_of_another_app_is_refused() {
        for app in ["../../etc", "a/b", "", ".hidden", "x y"] {
            let mut r = crate::samples::release();
            r.app = app.to_owned();
            r.id = ReleaseId::new(format!("x@{}", r.version)).unwrap();
            let errors = r.validate().unwrap_err();
            assert!(errors.iter().any(|e| e.path == "app"), "{app:?}: {errors:?}");
        }
        let mut r = crate::samples::release();
        r.id = ReleaseId::new("other-app@1.4.2").unwrap();
        let errors = r.validate().unwrap_err();
        assert_eq!(errors[0].path, "id", "{errors:?}");
        assert!(errors[0].reason.contains("is not app@version (robot-stack@1.4.2)"), "{errors:?}");
        assert!(crate::samples::release().validate().is_ok());
    }

    #[test]
    fn a_dependency_cycle_is_refused_and_named() {
        let mut release = crate::samples::release();
        let web = release.services[0].clone();
        let names = ["service1", "service2", "service3", "standalone"];
        release.services = names
            .iter()
            .map(|n| ServiceSpec {
                name: ServiceName::new(*n).unwrap(),
                depends_on: vec![],
                ..web.clone()
            })
            .collect();
        for s in &mut release.services {
            s.ports.clear();
            s.secrets.clear();
        }
        let on = |name: &str| Dependency {
            service: ServiceName::new(name).unwrap(),
            condition: DependencyCondition::Started,
        };
        release.services[0].depends_on.push(on("service2"));
        release.services[1].depends_on.push(on("service3"));
        assert_eq!(release.validate(), Ok(()), "a chain is fine");
        assert_eq!(release.dependency_cycle(), None);
        release.services[2].depends_on.push(on("service1"));
        release.services[3].depends_on.push(on("service1"));
        let errors = release.validate().unwrap_err();
        assert_eq!(
            errors,
            vec![SpecError {
                path: "services[0].depends_on".into(),
                reason: "dependency cycle: service1 → service2 → service3 → service1".into()
            }]
        );
    }

    #[test]
    fn validate_reports_every_problem_with_its_path() {
        let mut release = crate::samples::release();
        let mut dup = release.services[0].clone();
        dup.ports[0].container_port = 9;
        release.services.push(dup);
        release.services[1].depends_on.push(Dependency {
            service: ServiceName::new("ghost").unwrap(),
            condition: DependencyCondition::Healthy,
        });
        let errors = release.validate().unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"services[2].name"), "{errors:?}");
        assert!(paths.contains(&"services[2].ports[0].host_port"), "{errors:?}");
        assert!(paths.contains(&"services[1].depends_on[1]"), "{errors:?}");
        assert!(errors.iter().any(|e| e.reason.contains("already published by service \"web\"")));
    }

    #[test]
    fn sample_release_is_valid() {
        crate::samples::release().validate().unwrap();
    }
}
