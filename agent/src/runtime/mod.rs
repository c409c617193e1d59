//! The container engine, behind [`ContainerRuntime`].
//!
//! The agent only ever sees containers through this trait: the Docker implementation
//! ([`docker::DockerRuntime`], over the engine's unix socket) for devices, and an in-memory simulation
//! ([`sim::SimRuntime`]) for the fleet simulator and fast tests.
//!
//! Invariants every implementation keeps:
//! * Every container the agent creates carries the labels in [`labels`]; `list` returns only
//!   containers labelled with the given device id, so several agents can share one engine and
//!   the agent never touches a container it does not own.
//! * Images are referenced by digest (`repo@sha256:…`) only.
//! * Errors keep their structure: "not found" is [`RuntimeError::NotFound`], never a string.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fleet_proto::report::{ContainerState, Health};
use fleet_proto::{DeviceId, ImageRef, RegistryCredential, ServiceSpec};

pub mod admit;
mod devices;
pub mod docker;
pub mod sim;

pub use devices::{DeviceBind, DeviceMapping, GpuRequest, HardwareMapping};

/// Label keys the agent puts on every container it creates.
pub mod labels {
    /// Always `fleet-agent`.
    pub const MANAGED_BY: &str = "io.fleet.managed-by";
    /// The owning device's id.
    pub const DEVICE: &str = "io.fleet.device";
    /// The release the container belongs to.
    pub const RELEASE: &str = "io.fleet.release";
    /// The service name within the release.
    pub const SERVICE: &str = "io.fleet.service";
    /// Hash of the service's full configuration: equal hash, equal container.
    pub const CONFIG_HASH: &str = "io.fleet.config-hash";
    /// The value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "fleet-agent";
    /// The app a network or volume belongs to (the release's `app`).
    pub const APP: &str = "io.fleet.app";
    /// A network's name within its app's release (`default`, `backend`).
    pub const NETWORK: &str = "io.fleet.network";
    /// A volume's name, on the volumes the agent has the engine create.
    pub const VOLUME: &str = "io.fleet.volume";
}

/// What to create: the service as the release describes it, plus the agent's decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// Container name, unique per device, service and configuration.
    pub name: String,
    /// All labels, the agent's `io.fleet.*` ones included.
    pub labels: BTreeMap<String, String>,
    /// The service.
    pub spec: ServiceSpec,
    /// Host ports to publish, overriding `spec.ports` host ports (the agent's blue/green proxy
    /// publishes containers on ephemeral loopback ports and owns the real host port itself).
    /// `None`: publish as the spec says.
    pub port_override: Option<Vec<PortBinding>>,
    /// The service's hardware, already resolved against this host by
    /// [`crate::hardware::map`]: device nodes, cgroup rules, GPUs, runtime, groups.
    pub hardware: HardwareMapping,
    /// The release networks to join (engine names), the first at create, with the DNS names
    /// the container answers to on each (its service name first). Empty outside network_mode
    /// `Release`.
    pub networks: Vec<NetworkJoin>,
}

/// The labels a named volume gets when the engine creates it for `req`'s container: the
/// agent's, the device's and the app's (from the container's labels), and its own name.
pub fn volume_labels(req: &CreateRequest, volume: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = [labels::MANAGED_BY, labels::DEVICE, labels::APP]
        .into_iter()
        .filter_map(|k| req.labels.get(k).map(|v| (k.to_owned(), v.clone())))
        .collect();
    out.insert(labels::VOLUME.to_owned(), volume.to_owned());
    out
}

/// A network a new container joins, and the names it answers to there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkJoin {
    /// The network's engine name (`<device>_<app>_<name>`).
    pub network: String,
    /// DNS names on it: the service name, then the service's aliases.
    pub aliases: Vec<String>,
}

/// A network or volume as the engine shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineObject {
    /// Its name on the engine.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

impl EngineObject {
    /// A label's value.
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Whether the agent made it.
    pub(crate) fn is_fleets(&self) -> bool {
        self.label(labels::MANAGED_BY) == Some(labels::MANAGED_BY_VALUE)
    }
}

/// One published port as the engine bound it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBinding {
    /// Port inside the container.
    pub container_port: u16,
    /// Host IP it is bound to.
    pub host_ip: std::net::IpAddr,
    /// Host port (0 in a request: the engine picks one).
    pub host_port: u16,
}

/// A container as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedContainer {
    /// Engine id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The image reference it was created from.
    pub image: String,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Health as the engine judges it (`NoCheck` if the image/spec has no HEALTHCHECK).
    pub health: Health,
    /// Exit code of the last exit.
    pub exit_code: Option<i32>,
    /// Restarts by the engine's restart policy.
    pub restart_count: u32,
    /// Whether the kernel OOM-killed it.
    pub oom_killed: bool,
    /// Published ports as bound.
    pub ports: Vec<PortBinding>,
    /// The container's address on its network (none on the host network or when stopped).
    pub ip: Option<std::net::IpAddr>,
    /// How long a stop waits before SIGKILL by the container's own configuration (Compose
    /// `stop_grace_period`, the engine's `StopTimeout`); `None`: the agent's default.
    pub stop_grace: Option<Duration>,
}

impl ObservedContainer {
    /// The grace period a stop of this container gives it: its own, else `default`.
    pub fn stop_grace_or(&self, default: Duration) -> Duration {
        self.stop_grace.unwrap_or(default)
    }

    /// A label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Something changed for a container of this device: re-inspect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// Container id.
    pub id: String,
    /// Engine action, e.g. `start`, `die`, `health_status: healthy`.
    pub action: String,
    /// The container's `io.fleet.service` label, as the engine sent it with the event.
    pub service: Option<String>,
    /// The container's `io.fleet.release` label.
    pub release: Option<String>,
    /// Exit code, on `die`.
    pub exit_code: Option<i64>,
    /// When it happened, as the engine says.
    pub at: Option<fleet_proto::UnixMillis>,
}

impl RuntimeEvent {
    /// An event with only an id and action (the labels unknown).
    pub fn new(id: impl Into<String>, action: impl Into<String>) -> RuntimeEvent {
        RuntimeEvent {
            id: id.into(),
            action: action.into(),
            service: None,
            release: None,
            exit_code: None,
            at: None,
        }
    }
}

/// A container's resource use at one instant, from the engine's one-shot stats (streaming
/// stats for every container would cost the engine a core; one-shot reads are cheap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerStats {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory in use without the reclaimable page cache (what `docker stats` shows).
    pub memory_bytes: Option<u64>,
    /// The memory limit (the host's memory when unlimited).
    pub memory_limit_bytes: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// Bytes received over all its networks.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent over all its networks.
    pub net_tx_bytes: Option<u64>,
}

/// Pull progress callback: bytes done, bytes total if known.
pub type ProgressFn<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

/// Why a runtime call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container or image does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The engine cannot be reached.
    #[error("container engine unreachable at {endpoint}")]
    Unreachable {
        /// Socket or URL.
        endpoint: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Pulling an image failed (registry unreachable, wrong credentials, unknown digest).
    #[error("pull of {image} failed: {reason}")]
    Pull {
        /// The image.
        image: String,
        /// Why, as the registry or engine said.
        reason: String,
    },
    /// The engine refused or failed an operation.
    #[error("engine failed to {op}: {message}")]
    Engine {
        /// The operation, e.g. `create container web`.
        op: String,
        /// HTTP status from the engine, if any.
        status: Option<u16>,
        /// The engine's message.
        message: String,
    },
}

/// A container engine. All methods are cancel-safe in the sense that dropping the future
/// leaves the engine in a state `list` reports truthfully.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Containers labelled with this device id, running or not.
    fn list(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Vec<ObservedContainer>, RuntimeError>> + Send;
    /// One container by id or name.
    fn inspect(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<ObservedContainer, RuntimeError>> + Send;
    /// Whether the image is present locally.
    fn has_image(
        &self,
        image: &ImageRef,
    ) -> impl Future<Output = Result<bool, RuntimeError>> + Send;
    /// Pulls the image by digest, reporting progress.
    fn pull(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
        progress: ProgressFn<'_>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a local image (ignores "not found"; refuses if a container uses it).
    fn remove_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Image references present locally that were pulled by digest (`repo@sha256:…`).
    fn images(&self) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;
    /// Bytes a pull of `image` downloads (config and compressed layers), read from the
    /// registry's manifest before pulling; `None` if the registry does not tell.
    fn download_size(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
    ) -> impl Future<Output = Option<u64>> + Send;
    /// Bytes available on the filesystem that holds the engine's images, if known.
    fn free_disk(&self) -> impl Future<Output = Result<Option<u64>, RuntimeError>> + Send;
    /// The runtimes the engine can run containers with (`runc`, `nvidia`, …); `None` if it
    /// does not say.
    fn runtimes(&self) -> impl Future<Output = Result<Option<Vec<String>>, RuntimeError>> + Send;
    /// The engine's name and versions for the inventory; `None` if it does not answer.
    fn engine(&self) -> impl Future<Output = Option<fleet_proto::inventory::EngineInfo>> + Send;
    /// Creates a container; returns its id.
    fn create(
        &self,
        req: &CreateRequest,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Starts a container (no-op if running).
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Stops a container, killing it after `grace` (no-op if stopped).
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Restarts a container: stops it (killing it after `grace`), then starts it. The default
    /// does exactly that with [`Self::stop`] and [`Self::start`].
    fn restart(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        async move {
            self.stop(id, grace).await?;
            self.start(id).await
        }
    }
    /// Removes a container, stopping it first if needed (ignores "not found").
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// The last `tail` lines of a container's output.
    fn logs(
        &self,
        id: &str,
        tail: usize,
    ) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;
    /// One sample of a running container's resource use (one request, no stream).
    fn stats(&self, id: &str) -> impl Future<Output = Result<ContainerStats, RuntimeError>> + Send;
    /// Container events of this device (start, die, health changes, ...), forwarded by a task
    /// the implementation spawns on the current tokio runtime. The channel closes when the
    /// engine's event stream ends; the caller then resyncs with `list` and subscribes again.
    /// Watching events is how the agent stays idle without polling the engine.
    fn events(&self, device: &DeviceId) -> tokio::sync::mpsc::Receiver<RuntimeEvent>;
    /// Every network on the engine (a clash can come from anything of the same name).
    fn networks(&self) -> impl Future<Output = Result<Vec<EngineObject>, RuntimeError>> + Send;
    /// Creates a bridge network with these labels. One of that name existing already is not
    /// an error (the caller checked whose it is).
    fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a network; one that is gone already is not an error.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Every volume on the engine.
    fn volumes(&self) -> impl Future<Output = Result<Vec<EngineObject>, RuntimeError>> + Send;
    /// Deletes a volume and its data; one that is gone already is not an error. A volume a
    /// container still uses is refused by the engine.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}
