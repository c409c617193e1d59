//! The Docker Engine behind [`ContainerRuntime`], over bollard.
//!
//! This module owns every call the agent makes to the Docker Engine API: translating a
//! [`CreateRequest`] into a container config, reading containers back as
//! [`ObservedContainer`]s, pulling images by digest with progress, and forwarding engine events.
//!
//! Invariants:
//! * Only this device's containers are seen: `list` and `events` filter on the `io.fleet.device`
//!   label on the engine side, so several agents (or other software) can share one engine, and
//!   the agent acts only on ids it got from them.
//! * Volumes survive container removal: `remove` never passes `v=true`, so named volumes keep
//!   their data across updates and rollbacks. Deleting a volume is a separate, explicit act.
//! * The API version is negotiated at `connect` and never assumed newer than the engine's (the
//!   oldest engine tested is Docker 20.10, API 1.41); nothing here relies on a newer field.
//! * Every request has one long timeout, set at `connect`, bounding how long the engine may take
//!   to *answer* (bollard's 120 s default is too short for slow links); streamed bodies (pull
//!   progress, events) are not cut by it. `stop` stretches it by the grace period.
//! * Errors keep the engine's HTTP status: a 404 is [`RuntimeError::NotFound`], never a message
//!   match; a dead socket is [`RuntimeError::Unreachable`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, CreateImageInfo,
    DeviceMapping as EngineDevice, DeviceRequest, EndpointSettings, HealthConfig, HealthStatusEnum,
    HostConfig, Mount, MountTmpfsOptions, MountType, MountVolumeOptions, NetworkConnectRequest,
    NetworkCreateRequest, NetworkingConfig, PortBinding as EngineBinding, PortMap,
    ResourcesUlimits, RestartPolicy as EngineRestart, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptions,
    RestartContainerOptionsBuilder, StartContainerOptions, StatsOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use fleet_oci::{Platform, RegistryClient};
use fleet_proto::release::{
    NetworkMode, Probe, Protocol, RestartPolicy, VolumeMount, VolumeSource,
};
use fleet_proto::report::{ContainerState, Health};
use fleet_proto::{DeviceId, ImageRef, RegistryCredential};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::lock::error_chain;
use crate::objects::EngineObject;

use super::{
    labels, ContainerRuntime, ContainerStats, CreateRequest, NetworkJoin, ObservedContainer,
    PortBinding, ProgressFn, RuntimeError, RuntimeEvent,
};

/// Events buffered between the engine stream and the agent's loop; the loop re-inspects on
/// each, so a short burst (a crash loop) fits and a stuck loop applies back-pressure.
const EVENT_BUFFER: usize = 256;

/// Extra time `stop` gives the engine beyond the grace period to answer: the engine replies only
/// after the container is gone, and killing it after the grace period takes a moment.
const STOP_SLACK: Duration = Duration::from_secs(30);

/// A Docker Engine reached over its unix socket.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    request_timeout: Duration,
}

/// How long one registry request for a manifest may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(15);

/// How the agent names itself to registries.
const USER_AGENT: &str = concat!("fleet-agent/", env!("CARGO_PKG_VERSION"));

impl DockerRuntime {
    /// Connects to the engine at `endpoint` (a socket path or `unix://` URL) and negotiates the
    /// API version. `request_timeout` bounds how long the engine may take to answer a request;
    /// make it long (minutes), as the engine answers a pull only once the registry does.
    pub async fn connect(
        endpoint: &str,
        request_timeout: Duration,
    ) -> Result<DockerRuntime, RuntimeError> {
        let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
        if path.contains("://") {
            return Err(RuntimeError::Engine {
                op: format!("connect to {endpoint}"),
                status: None,
                message: "only unix sockets are supported (a path or unix:///path)".to_owned(),
            });
        }
        let unreachable = |source: BollardError| RuntimeError::Unreachable {
            endpoint: endpoint.to_owned(),
            source: Box::new(source),
        };
        let docker = Docker::connect_with_unix(
            path,
            whole_seconds(request_timeout).max(1),
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(unreachable)?;
        // Downgrades the client to the engine's API version when the engine is older, so URLs
        // are `/v1.41/...` on Docker 20.10.
        let docker = docker.negotiate_version().await.map_err(|e| match e {
            e if is_connection_error(&e) => unreachable(e),
            e => RuntimeError::Engine {
                op: format!("negotiate the API version with {endpoint}"),
                status: status_of(&e),
                message: e.to_string(),
            },
        })?;
        let version = docker.client_version();
        tracing::info!(endpoint, api = %version, "connected to the Docker engine");
        Ok(DockerRuntime { docker, endpoint: endpoint.to_owned(), request_timeout })
    }

    /// The engine's version and API version, e.g. `("20.10.24", "1.41")`.
    pub async fn engine_info(&self) -> Result<(String, String), RuntimeError> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| self.fail("read the version of", "engine", e))?;
        Ok((v.version.unwrap_or_default(), v.api_version.unwrap_or_default()))
    }

    /// The bollard client, for what the trait does not cover (tests, diagnostics).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Maps a bollard error of operation `op` on `what` (e.g. `stop`, `container web`).
    fn fail(&self, op: &str, what: &str, err: BollardError) -> RuntimeError {
        match err {
            BollardError::DockerResponseServerError { status_code: 404, .. } => {
                RuntimeError::NotFound { what: what.to_owned() }
            }
            BollardError::DockerResponseServerError { status_code, message } => {
                RuntimeError::Engine {
                    op: format!("{op} {what}"),
                    status: Some(status_code),
                    message,
                }
            }
            e if is_connection_error(&e) => {
                RuntimeError::Unreachable { endpoint: self.endpoint.clone(), source: Box::new(e) }
            }
            e => RuntimeError::Engine {
                op: format!("{op} {what}"),
                status: None,
                message: e.to_string(),
            },
        }
    }

    /// Maps an error of a pull: everything the engine or registry says is a [`RuntimeError::Pull`]
    /// (a 404 here is the registry's "manifest unknown", not a missing local object).
    fn pull_failed(&self, image: &str, err: BollardError) -> RuntimeError {
        match err {
            e if is_connection_error(&e) => {
                RuntimeError::Unreachable { endpoint: self.endpoint.clone(), source: Box::new(e) }
            }
            BollardError::DockerStreamError { error } => {
                RuntimeError::Pull { image: image.to_owned(), reason: error }
            }
            BollardError::DockerResponseServerError { message, .. } => {
                RuntimeError::Pull { image: image.to_owned(), reason: message }
            }
            e => RuntimeError::Pull { image: image.to_owned(), reason: e.to_string() },
        }
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn list(&self, device: &DeviceId) -> Result<Vec<ObservedContainer>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{}={}", labels::DEVICE, device.as_str())],
        )]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.fail("list containers of", &format!("device {device:?}"), e))?;
        let mut observed = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            match self.inspect(&id).await {
                Ok(c) => observed.push(c),
                // Removed between the list and the inspect: it is gone, which is what `list`
                // should then say.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(observed)
    }

    async fn inspect(&self, id: &str) -> Result<ObservedContainer, RuntimeError> {
        let resp = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.fail("inspect", &format!("container {id}"), e))?;
        Ok(observed_from(resp))
    }

    async fn has_image(&self, image: &ImageRef) -> Result<bool, RuntimeError> {
        let reference = image.pull_ref();
        match self.docker.inspect_image(&reference).await {
            Ok(_) => Ok(true),
            Err(e) => match self.fail("inspect", &format!("image {reference}"), e) {
                RuntimeError::NotFound { .. } => Ok(false),
                e => Err(e),
            },
        }
    }

    async fn pull(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
        progress: ProgressFn<'_>,
    ) -> Result<(), RuntimeError> {
        let reference = image.pull_ref();
        let credentials = match credential {
            // The engine sends X-Registry-Auth to whichever registry the image names: refuse to
            // hand one registry's password to another.
            Some(c) if image.registry().is_some_and(|r| r != c.registry) => {
                return Err(RuntimeError::Pull {
                    image: reference,
                    reason: format!(
                        "the credential is for registry {}, the image is from {}",
                        c.registry,
                        image.registry().unwrap_or_default()
                    ),
                });
            }
            Some(c) => Some(DockerCredentials {
                username: Some(c.username.clone()),
                password: Some(c.password.clone()),
                serveraddress: Some(c.registry.clone()),
                ..Default::default()
            }),
            None => None,
        };
        let opts = CreateImageOptionsBuilder::default().from_image(&reference).build();
        let mut stream = self.docker.create_image(Some(opts), None, credentials);
        let mut tally = PullTally::default();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.pull_failed(&reference, e))?;
            if let Some((done, total)) = tally.update(&info) {
                progress(done, total);
            }
        }
        let total = tally.finish();
        progress(total, Some(total));
        tracing::debug!(image = %reference, bytes = total, "pulled");
        Ok(())
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_image(image, None::<RemoveImageOptions>, None).await {
            Ok(_) => Ok(()),
            Err(e) => match self.fail("remove", &format!("image {image}"), e) {
                RuntimeError::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn download_size(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
    ) -> Option<u64> {
        let (image_owned, credential) = (image.clone(), credential.cloned());
        // A client per lookup: updates are rare, and an idle agent should not keep the
        // system's CA bundle in memory.
        let size = tokio::task::spawn_blocking(move || {
            let client = RegistryClient::new(USER_AGENT, REGISTRY_TIMEOUT);
            client.download_size(&image_owned, &Platform::current(), credential.as_ref())
        })
        .await;
        match size {
            Ok(Ok(bytes)) => Some(bytes),
            Ok(Err(e)) => {
                // The pull itself reports a real problem with its own reason; the disk check
                // then falls back to the reserve alone.
                tracing::warn!(image = %image, error = %error_chain(&e), "download size unknown");
                None
            }
            Err(e) => {
                tracing::warn!(image = %image, error = %e, "download size lookup failed");
                None
            }
        }
    }

    async fn engine(&self) -> Option<fleet_proto::inventory::EngineInfo> {
        let (version, api_version) = self.engine_info().await.ok()?;
        Some(fleet_proto::inventory::EngineInfo { name: "docker".to_owned(), version, api_version })
    }

    async fn free_disk(&self) -> Result<Option<u64>, RuntimeError> {
        let info =
            self.docker.info().await.map_err(|e| self.fail("read the info of", "engine", e))?;
        let Some(root) = info.docker_root_dir else { return Ok(None) };
        // The engine may run in another mount namespace (a remote socket): then the path is not
        // ours to measure, and the check is skipped rather than guessed.
        // Block counts are 32-bit on armv7, 64-bit elsewhere.
        #[allow(clippy::useless_conversion)]
        match nix::sys::statvfs::statvfs(root.as_str()) {
            Ok(st) => Ok(Some(
                u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())),
            )),
            Err(e) => {
                tracing::debug!(%root, error = %e, "cannot measure the engine's free disk");
                Ok(None)
            }
        }
    }

    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        let opts = ListImagesOptionsBuilder::default().build();
        let images = self
            .docker
            .list_images(Some(opts))
            .await
            .map_err(|e| self.fail("list", "images", e))?;
        let digests: BTreeSet<String> = images
            .into_iter()
            .flat_map(|i| i.repo_digests)
            // Docker 20.10 lists `<none>@<none>` for images it lost the registry name of.
            .filter(|d| !d.starts_with("<none>"))
            .collect();
        Ok(digests.into_iter().collect())
    }

    async fn create(&self, req: &CreateRequest) -> Result<String, RuntimeError> {
        let opts = CreateContainerOptionsBuilder::default().name(&req.name).build();
        let image = req.spec.image.pull_ref();
        let created = self.docker.create_container(Some(opts), container_body(req)).await.map_err(
            |e| match e {
                // The only object a create refers to that can be missing is the image (named
                // volumes are created on demand): say which, so the caller pulls it again.
                BollardError::DockerResponseServerError { status_code: 404, .. } => {
                    RuntimeError::NotFound { what: format!("image {image}") }
                }
                e => self.fail("create", &format!("container {}", req.name), e),
            },
        )?;
        for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
            tracing::warn!(container = %req.name, %warning, "engine warned on create");
        }
        // Engine API 1.41 (Docker 20.10) joins one network at create; the others are joined
        // before the container starts, so it never runs with only part of its networks.
        for join in req.networks.iter().skip(1) {
            let connect = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(endpoint(join)),
            };
            if let Err(e) = self.docker.connect_network(&join.network, connect).await {
                let _ = self.remove(&created.id).await;
                return Err(self.fail(
                    "connect",
                    &format!("container {} to network {}", req.name, join.network),
                    e,
                ));
            }
        }
        Ok(created.id)
    }

    async fn networks(&self) -> Result<Vec<EngineObject>, RuntimeError> {
        let found =
            self.docker.list_networks(None).await.map_err(|e| self.fail("list", "networks", e))?;
        Ok(found
            .into_iter()
            .filter_map(|n| {
                Some(EngineObject {
                    name: n.name?,
                    labels: n.labels.unwrap_or_default().into_iter().collect(),
                })
            })
            .collect())
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let req = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(self.fail("create", &format!("network {name}"), e)),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.fail("remove", &format!("network {name}"), e)),
        }
    }

    async fn volumes(&self) -> Result<Vec<EngineObject>, RuntimeError> {
        let found = self
            .docker
            .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
            .await
            .map_err(|e| self.fail("list", "volumes", e))?;
        Ok(found
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| EngineObject { name: v.name, labels: v.labels.into_iter().collect() })
            .collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.fail("remove", &format!("volume {name}"), e)),
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        // 304 (already running) is a success for bollard.
        self.docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.fail("start", &format!("container {id}"), e))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let grace_secs = whole_seconds(grace);
        let opts = StopContainerOptionsBuilder::default()
            .t(i32::try_from(grace_secs).unwrap_or(i32::MAX))
            .build();
        // The engine answers only once the container has stopped, so a grace period longer than
        // the request timeout must not turn a clean stop into a timeout.
        let needed = grace.saturating_add(STOP_SLACK);
        let docker = if needed > self.request_timeout {
            self.docker.clone().with_timeout(needed)
        } else {
            self.docker.clone()
        };
        // 304 (not running) is a success for bollard.
        docker
            .stop_container(id, Some(opts))
            .await
            .map_err(|e| self.fail("stop", &format!("container {id}"), e))
    }

    async fn restart(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let opts = RestartContainerOptionsBuilder::default()
            .t(i32::try_from(whole_seconds(grace)).unwrap_or(i32::MAX))
            .build();
        // Like stop: the engine answers once the container has stopped and started again.
        let needed = grace.saturating_add(STOP_SLACK);
        let docker = if needed > self.request_timeout {
            self.docker.clone().with_timeout(needed)
        } else {
            self.docker.clone()
        };
        docker
            .restart_container(id, Some(opts))
            .await
            .map_err(|e| self.fail("restart", &format!("container {id}"), e))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        // v=false: a named volume holds data that must outlive any one container.
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(false).build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.fail("remove", &format!("container {id}"), e) {
                RuntimeError::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        // `one-shot` (API 1.41) answers at once instead of sampling for a second to fill
        // `precpu_stats`; CPU shares are computed from consecutive samples by the caller.
        let opts = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
        let mut stream = self.docker.stats(id, Some(opts));
        match stream.next().await {
            Some(Ok(resp)) => Ok(stats_from(resp)),
            Some(Err(e)) => Err(self.fail("read the stats of", &format!("container {id}"), e)),
            None => Err(RuntimeError::Engine {
                op: format!("read the stats of container {id}"),
                status: None,
                message: "the engine sent no stats".to_owned(),
            }),
        }
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>, RuntimeError> {
        if tail == 0 {
            return Ok(Vec::new());
        }
        let opts =
            LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&tail.to_string()).build();
        let mut stream = self.docker.logs(id, Some(opts));
        // Frames of stdout and stderr arrive interleaved in order; a long line may span frames.
        let mut bytes = Vec::new();
        while let Some(frame) = stream.next().await {
            let frame =
                frame.map_err(|e| self.fail("read the logs of", &format!("container {id}"), e))?;
            bytes.extend_from_slice(frame.as_ref());
        }
        Ok(log_lines(&bytes, tail))
    }

    fn events(&self, device: &DeviceId) -> mpsc::Receiver<RuntimeEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let docker = self.docker.clone();
        let device = device.as_str().to_owned();
        // Events from this instant on: the engine replays those that happen before the stream is
        // established, so a container started right after `events` returns is not missed.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| format!("{}.{:09}", t.as_secs(), t.subsec_nanos()))
            .ok();
        tokio::spawn(async move {
            let filters = HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                ("label".to_owned(), vec![format!("{}={device}", labels::DEVICE)]),
            ]);
            let mut opts = EventsOptionsBuilder::default().filters(&filters);
            if let Some(since) = &since {
                opts = opts.since(since);
            }
            let mut stream = docker.events(Some(opts.build()));
            loop {
                let item = tokio::select! {
                    // Nobody listens any more: end now, not at the next event.
                    () = tx.closed() => break,
                    item = stream.next() => item,
                };
                let message = match item {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::warn!(%device, error = %e, "engine event stream failed");
                        break;
                    }
                    None => {
                        tracing::info!(%device, "engine event stream ended");
                        break;
                    }
                };
                let Some(event) = event_from(message) else {
                    continue;
                };
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// An engine event as the agent sees it; `None` for events without an actor and for exec events
/// (every health check is an exec: create, start, die, three events per check per container,
/// and they say nothing about the container's state).
fn event_from(message: bollard::models::EventMessage) -> Option<RuntimeEvent> {
    let action = message.action?;
    let actor = message.actor?;
    let id = actor.id?;
    if action.starts_with("exec_") {
        return None;
    }
    // The engine sends the container's labels (and `exitCode` on `die`) as attributes.
    let mut attributes = actor.attributes.unwrap_or_default();
    Some(RuntimeEvent {
        service: attributes.remove(labels::SERVICE),
        release: attributes.remove(labels::RELEASE),
        exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        at: message
            .time_nano
            .and_then(|ns| u64::try_from(ns / 1_000_000).ok())
            .map(fleet_proto::UnixMillis),
        ..RuntimeEvent::new(id, action)
    })
}

/// The agent's view of one stats answer. Memory is usage minus the reclaimable file cache, as
/// `docker stats` computes it (`total_inactive_file` on cgroup v1, where `inactive_file` is not
/// hierarchical; `inactive_file` on v2).
fn stats_from(resp: bollard::models::ContainerStatsResponse) -> ContainerStats {
    let memory = resp.memory_stats.as_ref();
    let cache = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|s| s.get("total_inactive_file").or_else(|| s.get("inactive_file")).copied());
    let memory_bytes = memory.and_then(|m| m.usage).map(|u| u.saturating_sub(cache.unwrap_or(0)));
    let networks = resp.networks.as_ref();
    let sum = |f: fn(&bollard::models::ContainerNetworkStats) -> Option<u64>| {
        networks.map(|n| n.values().filter_map(f).sum::<u64>())
    };
    ContainerStats {
        cpu_ns: resp.cpu_stats.as_ref().and_then(|c| c.cpu_usage.as_ref()?.total_usage),
        memory_bytes,
        memory_limit_bytes: memory.and_then(|m| m.limit),
        pids: resp.pids_stats.as_ref().and_then(|p| p.current),
        net_rx_bytes: sum(|n| n.rx_bytes),
        net_tx_bytes: sum(|n| n.tx_bytes),
    }
}

/// Connection-level failures: the engine did not answer at all.
fn is_connection_error(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::IOError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::SocketNotFoundError(_)
    )
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Seconds, rounded up: a grace of 1.5 s must not become 1 s.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn bytes_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The last `tail` lines of a log, without their line endings.
fn log_lines(bytes: &[u8], tail: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<String> = text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
        .collect();
    if text.is_empty() {
        return Vec::new();
    }
    let skip = lines.len().saturating_sub(tail);
    lines.into_iter().skip(skip).collect()
}

/// Aggregates the per-layer pull progress the engine streams into one byte count.
///
/// Layers that already exist locally are not counted (nothing is downloaded for them). The total
/// is reported only while every announced layer's size is known: layers wait in a queue (three
/// download at a time) before the engine tells their size, and a total that grows as they start
/// would make a progress bar run backwards.
#[derive(Debug, Default)]
struct PullTally {
    layers: BTreeMap<String, LayerProgress>,
    last: Option<(u64, Option<u64>)>,
}

#[derive(Debug, Default)]
struct LayerProgress {
    done: u64,
    total: Option<u64>,
    complete: bool,
}

impl PullTally {
    /// Folds in one stream item; returns the new `(done, total)` when it changed.
    fn update(&mut self, info: &CreateImageInfo) -> Option<(u64, Option<u64>)> {
        let (Some(id), Some(status)) = (info.id.as_deref(), info.status.as_deref()) else {
            return None;
        };
        match status {
            "Pulling fs layer" | "Waiting" => {
                self.layers.entry(id.to_owned()).or_default();
            }
            "Downloading" => {
                let layer = self.layers.entry(id.to_owned()).or_default();
                let detail = info.progress_detail.as_ref();
                let total = detail.and_then(|d| d.total).and_then(|t| u64::try_from(t).ok());
                let current = detail.and_then(|d| d.current).and_then(|c| u64::try_from(c).ok());
                if let Some(total) = total.filter(|t| *t > 0) {
                    layer.total = Some(total);
                    layer.done = current.unwrap_or(0).min(total);
                }
            }
            "Verifying Checksum" | "Download complete" | "Extracting" | "Pull complete" => {
                let layer = self.layers.entry(id.to_owned()).or_default();
                layer.complete = true;
                if let Some(total) = layer.total {
                    layer.done = total;
                }
            }
            "Already exists" => {
                self.layers.remove(id);
            }
            // "Pulling from …", "Digest: …", "Status: …": about the image, not a layer.
            _ => return None,
        }
        // Layers that already exist say nothing until one needs downloading ("0 of 0" first,
        // then "0 of unknown", would be noise); `pull` always makes a final call.
        if self.layers.is_empty() {
            return None;
        }
        let now = self.current();
        (self.last != Some(now)).then(|| {
            self.last = Some(now);
            now
        })
    }

    fn current(&self) -> (u64, Option<u64>) {
        let done = self.layers.values().map(|l| l.done).sum();
        let known = self.layers.values().all(|l| l.total.is_some() || l.complete);
        let total = self.layers.values().map(|l| l.total.unwrap_or(l.done)).sum();
        (done, known.then_some(total))
    }

    /// Bytes downloaded in all, once the stream ended without error.
    fn finish(&self) -> u64 {
        self.layers.values().map(|l| l.total.unwrap_or(l.done)).sum()
    }
}

/// The engine's view of a container, as the agent sees it.
fn observed_from(resp: ContainerInspectResponse) -> ObservedContainer {
    let state = resp.state.unwrap_or_default();
    let container_state = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        // Newer engines only: still running until the stop completes.
        Some(ContainerStateStatusEnum::STOPPING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        // On its way out: no longer running, and about to be gone.
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::REMOVING) => {
            ContainerState::Exited
        }
        Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
        Some(ContainerStateStatusEnum::EMPTY) | None => {
            if state.restarting == Some(true) {
                ContainerState::Restarting
            } else if state.paused == Some(true) {
                ContainerState::Paused
            } else if state.running == Some(true) {
                ContainerState::Running
            } else if state.dead == Some(true) {
                ContainerState::Dead
            } else if state.started_at.as_deref().is_some_and(|s| !s.starts_with("0001-")) {
                ContainerState::Exited
            } else {
                ContainerState::Created
            }
        }
    };
    let health = match state.health.as_ref().and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => Health::NoCheck,
    };
    // The engine resets ExitCode to 0 when a container starts, so it means "last exit" only once
    // the container has exited (or is being restarted after an exit).
    let exit_code = match container_state {
        ContainerState::Exited | ContainerState::Dead | ContainerState::Restarting => {
            state.exit_code.map(|c| i32::try_from(c).unwrap_or(i32::MAX))
        }
        _ => None,
    };
    let config = resp.config.unwrap_or_default();
    // The first network's address: the release network, or the default bridge.
    let ip = resp.network_settings.as_ref().and_then(|n| n.networks.as_ref()).and_then(|nets| {
        nets.values()
            .filter_map(|e| e.ip_address.as_deref())
            .find(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
    });
    let mut ports: Vec<PortBinding> = resp
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, bindings)| {
            let container_port = key.split('/').next()?.parse::<u16>().ok()?;
            Some((container_port, bindings?))
        })
        .flat_map(|(container_port, bindings)| {
            bindings.into_iter().filter_map(move |b| {
                let host_port = b.host_port.as_deref()?.parse::<u16>().ok()?;
                let host_ip = b
                    .host_ip
                    .as_deref()
                    .and_then(|ip| ip.parse().ok())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                Some(PortBinding { container_port, host_ip, host_port })
            })
        })
        .collect();
    ports.sort_by_key(|p| (p.container_port, p.host_ip, p.host_port));
    ports.dedup();
    ObservedContainer {
        id: resp.id.unwrap_or_default(),
        name: resp.name.unwrap_or_default().trim_start_matches('/').to_owned(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        // The reference given at create (`repo@sha256:…`), not the local image id.
        image: config.image.or(resp.image).unwrap_or_default(),
        state: container_state,
        health,
        exit_code,
        restart_count: resp
            .restart_count
            .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
        oom_killed: state.oom_killed.unwrap_or(false),
        ports,
        ip,
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Port bindings by `port/proto`, from the override when given, else from the spec.
fn port_map(req: &CreateRequest) -> BTreeMap<String, Vec<EngineBinding>> {
    let binding = |ip: Option<IpAddr>, port: u16| EngineBinding {
        host_ip: ip.map(|ip| ip.to_string()),
        // No host port: the engine picks a free one.
        host_port: (port != 0).then(|| port.to_string()),
    };
    let mut map: BTreeMap<String, Vec<EngineBinding>> = BTreeMap::new();
    match &req.port_override {
        Some(overrides) => {
            for o in overrides {
                // A PortBinding has no protocol: publish each protocol the spec uses for this
                // container port (TCP when the spec does not publish it at all).
                let mut protocols: BTreeSet<Protocol> = req
                    .spec
                    .ports
                    .iter()
                    .filter(|p| p.container_port == o.container_port)
                    .map(|p| p.protocol)
                    .collect();
                if protocols.is_empty() {
                    protocols.insert(Protocol::Tcp);
                }
                for proto in protocols {
                    map.entry(format!("{}/{}", o.container_port, protocol_name(proto)))
                        .or_default()
                        .push(binding(Some(o.host_ip), o.host_port));
                }
            }
        }
        None => {
            for p in &req.spec.ports {
                let ip = p.loopback_only.then_some(IpAddr::V4(Ipv4Addr::LOCALHOST));
                map.entry(format!("{}/{}", p.container_port, protocol_name(p.protocol)))
                    .or_default()
                    .push(binding(ip, p.host_port));
            }
        }
    }
    map
}

/// The endpoint of a container on one network: the names it answers to there.
fn endpoint(join: &NetworkJoin) -> EndpointSettings {
    EndpointSettings { aliases: Some(join.aliases.clone()), ..Default::default() }
}

fn mount(v: &VolumeMount, req: &CreateRequest) -> Mount {
    let base = Mount {
        target: Some(v.target.clone()),
        read_only: Some(v.read_only),
        ..Default::default()
    };
    match &v.source {
        VolumeSource::Named(name) => Mount {
            typ: Some(MountType::VOLUME),
            source: Some(name.clone()),
            // Applied only when the engine creates the volume: marks it as the agent's, the
            // app's and the device's, which purges and clash checks read.
            volume_options: Some(MountVolumeOptions {
                labels: Some(super::volume_labels(req, name).into_iter().collect()),
                ..Default::default()
            }),
            ..base
        },
        // A mount (not a `Binds` entry): a missing host path is an error instead of an empty
        // root-owned directory the engine would create in its place.
        VolumeSource::HostPath(path) => {
            Mount { typ: Some(MountType::BIND), source: Some(path.clone()), ..base }
        }
        VolumeSource::Tmpfs { size_bytes } => Mount {
            typ: Some(MountType::TMPFS),
            tmpfs_options: (*size_bytes > 0).then(|| MountTmpfsOptions {
                size_bytes: Some(bytes_i64(*size_bytes)),
                ..Default::default()
            }),
            ..base
        },
    }
}

/// The engine's create body for a request. Pure, so the mapping is unit-tested.
fn container_body(req: &CreateRequest) -> ContainerCreateBody {
    let spec = &req.spec;
    let res = &spec.resources;
    let sec = &spec.security;
    let hw = &req.hardware;

    let ports = port_map(req);
    let exposed: Vec<String> = ports.keys().cloned().collect();
    let port_bindings: PortMap = ports.into_iter().map(|(k, v)| (k, Some(v))).collect();

    let mut mounts: Vec<Mount> = spec.volumes.iter().map(|v| mount(v, req)).collect();
    // Pseudo-terminals cannot be mapped with `devices` (the container gets its own devpts):
    // the node is bind-mounted and allowed by a cgroup rule instead.
    mounts.extend(hw.binds.iter().map(|b| Mount {
        target: Some(b.container_path.clone()),
        source: Some(b.host_path.clone()),
        typ: Some(MountType::BIND),
        ..Default::default()
    }));
    // Real-time control loops need CAP_SYS_NICE besides the rtprio ulimit to switch to
    // SCHED_FIFO/RR; admission control has already checked that the device allows it.
    let mut cap_add = sec.cap_add.clone();
    if res.realtime_priority.is_some()
        && !cap_add.iter().any(|c| c.trim_start_matches("CAP_") == "SYS_NICE")
    {
        cap_add.push("SYS_NICE".to_owned());
    }
    let mut group_add = spec.group_add.clone();
    for g in &hw.group_add {
        if !group_add.contains(g) {
            group_add.push(g.clone());
        }
    }
    let device_requests: Option<Vec<DeviceRequest>> = hw.gpus.as_ref().map(|g| {
        vec![DeviceRequest {
            driver: Some("nvidia".to_owned()),
            count: g.device_ids.is_empty().then_some(g.count),
            device_ids: (!g.device_ids.is_empty()).then(|| g.device_ids.clone()),
            capabilities: Some(vec![g.capabilities.clone()]),
            options: None,
        }]
    });
    let mut env = spec.env.clone();
    env.extend(hw.env.iter().map(|(k, v)| (k.clone(), v.clone())));

    let healthcheck = spec.healthcheck.as_ref().and_then(|h| {
        let test = match &h.probe {
            // Keep the image's HEALTHCHECK exactly as built.
            Probe::Image => return None,
            Probe::Cmd(argv) => {
                std::iter::once("CMD".to_owned()).chain(argv.iter().cloned()).collect()
            }
            Probe::CmdShell(line) => vec!["CMD-SHELL".to_owned(), line.clone()],
            // The agent probes these itself; the image's own check is switched off so that one
            // judge, not two, decides the service's health.
            // Disabled: the image's check is off too, and running counts as healthy.
            Probe::Http { .. } | Probe::Tcp { .. } | Probe::Disabled => {
                return Some(HealthConfig {
                    test: Some(vec!["NONE".to_owned()]),
                    ..Default::default()
                })
            }
        };
        Some(HealthConfig {
            test: Some(test),
            interval: Some(nanos(h.interval)),
            timeout: Some(nanos(h.timeout)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(nanos(h.start_period)),
            ..Default::default()
        })
    });

    let restart_policy = match spec.restart {
        RestartPolicy::No => {
            EngineRestart { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }
        }
        RestartPolicy::Always => {
            EngineRestart { name: Some(RestartPolicyNameEnum::ALWAYS), maximum_retry_count: None }
        }
        RestartPolicy::OnFailure { max_retries } => EngineRestart {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(i64::from(max_retries)),
        },
        RestartPolicy::UnlessStopped => EngineRestart {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
    };

    let mut ulimits: Vec<ResourcesUlimits> = res
        .ulimits
        .iter()
        // realtime_priority is the dedicated field for rtprio; it wins over a stray ulimit.
        .filter(|u| !(res.realtime_priority.is_some() && u.name == "rtprio"))
        .map(|u| ResourcesUlimits {
            name: Some(u.name.clone()),
            soft: Some(u.soft),
            hard: Some(u.hard),
        })
        .collect();
    if let Some(p) = res.realtime_priority {
        ulimits.push(ResourcesUlimits {
            name: Some("rtprio".to_owned()),
            soft: Some(i64::from(p)),
            hard: Some(i64::from(p)),
        });
    }

    let devices: Vec<EngineDevice> = hw
        .devices
        .iter()
        .map(|d| EngineDevice {
            path_on_host: Some(d.host_path.clone()),
            path_in_container: Some(d.container_path.clone()),
            cgroup_permissions: Some(d.permissions.clone()),
        })
        .collect();

    let network_mode = match (spec.network_mode, req.networks.first()) {
        (NetworkMode::Release, Some(first)) => first.network.as_str(),
        // A request built without its networks (never by the reconciler): the engine's bridge.
        (NetworkMode::Release, None) => "bridge",
        (NetworkMode::Host, _) => "host",
        (NetworkMode::None, _) => "none",
    };
    let networking_config = req.networks.first().map(|first| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(first.network.clone(), endpoint(first))])),
    });

    let host_config = HostConfig {
        network_mode: Some(network_mode.to_owned()),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        restart_policy: Some(restart_policy),
        memory: res.memory_bytes.map(bytes_i64),
        memory_reservation: res.memory_reservation_bytes.map(bytes_i64),
        memory_swap: res.memory_swap_bytes.map(bytes_i64),
        nano_cpus: res.cpu_millis.map(|m| i64::from(m) * 1_000_000),
        cpuset_cpus: res.cpuset.clone(),
        pids_limit: res.pids.map(i64::from),
        ulimits: (!ulimits.is_empty()).then_some(ulimits),
        shm_size: res.shm_bytes.map(bytes_i64),
        privileged: Some(sec.privileged),
        cap_add: (!cap_add.is_empty()).then_some(cap_add),
        cap_drop: (!sec.cap_drop.is_empty()).then(|| sec.cap_drop.clone()),
        readonly_rootfs: Some(sec.read_only_rootfs),
        security_opt: spec.no_new_privileges.then(|| vec!["no-new-privileges".to_owned()]),
        cpu_shares: spec.cpu_shares.map(i64::from),
        devices: (!devices.is_empty()).then_some(devices),
        device_cgroup_rules: (!hw.cgroup_rules.is_empty()).then(|| hw.cgroup_rules.clone()),
        device_requests,
        runtime: hw.runtime.clone(),
        cpu_realtime_runtime: hw.cpu_rt_runtime_us,
        group_add: (!group_add.is_empty()).then_some(group_add),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(spec.image.pull_ref()),
        labels: Some(req.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        entrypoint: spec.entrypoint.clone(),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: (!env.is_empty()).then(|| env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: spec.working_dir.clone(),
        user: sec.user.clone(),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck,
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use bollard::models::{
        ContainerConfig, ContainerState as EngineState, NetworkSettings, ProgressDetail,
    };
    use fleet_proto::release::{HealthCheck, PortMapping, ResourceLimits, Ulimit};

    use super::super::DeviceMapping;
    use super::*;

    #[test]
    fn stats_subtract_the_page_cache_per_cgroup_version_and_sum_networks() {
        use bollard::models::{
            ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerNetworkStats,
            ContainerStatsResponse,
        };
        let resp = |stats: &[(&str, u64)]| ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage { total_usage: Some(42), ..Default::default() }),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(1000),
                limit: Some(4096),
                stats: Some(stats.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
                ..Default::default()
            }),
            networks: Some(HashMap::from([
                (
                    "eth0".to_owned(),
                    ContainerNetworkStats {
                        rx_bytes: Some(10),
                        tx_bytes: Some(1),
                        ..Default::default()
                    },
                ),
                (
                    "eth1".to_owned(),
                    ContainerNetworkStats {
                        rx_bytes: Some(5),
                        tx_bytes: Some(2),
                        ..Default::default()
                    },
                ),
            ])),
            ..Default::default()
        };
        let v2 = stats_from(resp(&[("inactive_file", 100)]));
        assert_eq!(v2.memory_bytes, Some(900));
        assert_eq!((v2.cpu_ns, v2.memory_limit_bytes), (Some(42), Some(4096)));
        assert_eq!((v2.net_rx_bytes, v2.net_tx_bytes), (Some(15), Some(3)));
        let v1 = stats_from(resp(&[("inactive_file", 100), ("total_inactive_file", 300)]));
        assert_eq!(v1.memory_bytes, Some(700));
        assert_eq!(stats_from(ContainerStatsResponse::default()), ContainerStats::default());
    }

    fn request() -> CreateRequest {
        let mut spec = fleet_proto::samples::release().services[0].clone();
        spec.hardware.clear();
        CreateRequest {
            name: "fleet-robot-7-web-abc".to_owned(),
            labels: BTreeMap::from([
                (labels::DEVICE.to_owned(), "robot-7".to_owned()),
                (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
            ]),
            spec,
            port_override: None,
            hardware: Default::default(),
            networks: vec![],
        }
    }

    #[test]
    fn a_container_joins_its_first_release_network_at_create_under_its_names() {
        let mut req = request();
        req.labels.insert(labels::APP.to_owned(), "robot-stack".to_owned());
        req.networks = vec![
            NetworkJoin {
                network: "robot-7_robot-stack_default".to_owned(),
                aliases: vec!["web".to_owned(), "ui".to_owned()],
            },
            NetworkJoin {
                network: "robot-7_robot-stack_backend".to_owned(),
                aliases: vec!["web".to_owned()],
            },
        ];
        let body = container_body(&req);
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("robot-7_robot-stack_default"));
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        // One network at create (API 1.41); the second is connected before the start.
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            endpoints["robot-7_robot-stack_default"].aliases.as_deref(),
            Some(&["web".to_owned(), "ui".to_owned()][..])
        );
        // The engine creates the named volume with the app's and the volume's labels.
        let mounts = host.mounts.unwrap();
        let vol = mounts[0].volume_options.as_ref().unwrap().labels.clone().unwrap();
        assert_eq!(vol[labels::APP], "robot-stack");
        assert_eq!(vol[labels::VOLUME], "maps");
    }

    /// The engine options each fixture robot's hardware becomes: what `docker run` flags a
    /// robotics engineer would have written by hand.
    #[test]
    fn hardware_mappings_become_the_exact_engine_create_options() {
        use crate::hardware::{fixtures, map::map_service};
        use fleet_proto::release::{GpuKind, GpuSelect, HardwareRequest, SerialSelector};
        let body_for = |hw: &crate::hardware::HostHardware, requests: Vec<HardwareRequest>| {
            let mut req = request();
            req.spec.hardware = requests;
            req.spec.group_add = vec!["audio".to_owned()];
            req.hardware = map_service(&req.spec, hw, "services[0]").unwrap();
            container_body(&req)
        };
        // x86 with an NVIDIA card: `--gpus all` / `--gpus 1` / `--gpus device=0`.
        let x86 = fixtures::x86_nvidia();
        let gpu = |select| vec![HardwareRequest::Gpu { kind: GpuKind::Nvidia, select }];
        let all = body_for(&x86, gpu(GpuSelect::All)).host_config.unwrap();
        let caps = Some(vec![vec!["gpu".to_owned(), "compute".to_owned(), "utility".to_owned()]]);
        assert_eq!(
            all.device_requests,
            Some(vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                count: Some(-1),
                device_ids: None,
                capabilities: caps.clone(),
                options: None,
            }])
        );
        assert_eq!(all.devices, None, "the toolkit maps the nodes itself");
        assert_eq!(all.runtime, None);
        let by_id = body_for(&x86, gpu(GpuSelect::Ids(vec!["0".to_owned()]))).host_config.unwrap();
        assert_eq!(
            by_id.device_requests,
            Some(vec![DeviceRequest {
                driver: Some("nvidia".to_owned()),
                count: None,
                device_ids: Some(vec!["0".to_owned()]),
                capabilities: caps,
                options: None,
            }])
        );
        // Jetson: `--runtime nvidia` and the toolkit's variables.
        let jetson = body_for(
            &fixtures::jetson_orin(),
            vec![HardwareRequest::Gpu { kind: GpuKind::Jetson, select: GpuSelect::All }],
        );
        assert_eq!(jetson.host_config.as_ref().unwrap().runtime.as_deref(), Some("nvidia"));
        assert_eq!(jetson.host_config.as_ref().unwrap().device_requests, None);
        let env = jetson.env.unwrap();
        assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=all".to_owned()), "{env:?}");
        assert!(env.contains(&"NVIDIA_DRIVER_CAPABILITIES=all".to_owned()), "{env:?}");
        // A Pi's FTDI adapter by its stable name: `--device /dev/ttyUSB0:/dev/lidar:rwm
        // --group-add 20`, the spec's own groups kept.
        let pi = body_for(
            &fixtures::rpi5(),
            vec![HardwareRequest::Serial {
                port: SerialSelector::ById(fixtures::FTDI_BY_ID.to_owned()),
                container_path: "/dev/lidar".to_owned(),
            }],
        )
        .host_config
        .unwrap();
        assert_eq!(
            pi.devices,
            Some(vec![EngineDevice {
                path_on_host: Some("/dev/ttyUSB0".to_owned()),
                path_in_container: Some("/dev/lidar".to_owned()),
                cgroup_permissions: Some("rwm".to_owned()),
            }])
        );
        assert_eq!(pi.group_add, Some(vec!["audio".to_owned(), "20".to_owned()]));
        assert_eq!(pi.device_cgroup_rules, None);
        // A pseudo-terminal: bind mount plus cgroup rule, never `devices`.
        let pty = body_for(
            &fixtures::with_pty(fixtures::bare_vm(), "usb-Fake_GPS_1234-if00", 7),
            vec![HardwareRequest::Serial {
                port: SerialSelector::ById("usb-Fake_GPS_1234-if00".to_owned()),
                container_path: "/dev/ttyUSB0".to_owned(),
            }],
        )
        .host_config
        .unwrap();
        assert_eq!(pty.devices, None);
        assert_eq!(pty.device_cgroup_rules, Some(vec!["c 136:7 rwm".to_owned()]));
        let bind =
            pty.mounts.unwrap().into_iter().find(|m| m.typ == Some(MountType::BIND)).unwrap();
        assert_eq!(bind.source.as_deref(), Some("/dev/pts/7"));
        assert_eq!(bind.target.as_deref(), Some("/dev/ttyUSB0"));
    }

    #[test]
    fn realtime_hardening_and_cpu_weight_reach_the_engine() {
        let mut req = request();
        req.spec.resources.realtime_priority = Some(80);
        req.spec.resources.cpuset = Some("3".to_owned());
        req.spec.no_new_privileges = true;
        req.spec.cpu_shares = Some(2048);
        let host = container_body(&req).host_config.unwrap();
        assert_eq!(
            host.cap_add,
            Some(vec!["SYS_NICE".to_owned()]),
            "rtprio alone cannot switch to SCHED_FIFO"
        );
        let rtprio =
            host.ulimits.unwrap().into_iter().find(|u| u.name.as_deref() == Some("rtprio"));
        assert_eq!(rtprio.map(|u| (u.soft, u.hard)), Some((Some(80), Some(80))));
        assert_eq!(host.cpuset_cpus.as_deref(), Some("3"));
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!(host.cpu_shares, Some(2048));
        assert_eq!(
            host.cpu_realtime_runtime, None,
            "no real-time budget without RT group scheduling"
        );
        req.hardware.cpu_rt_runtime_us = Some(475_000);
        assert_eq!(container_body(&req).host_config.unwrap().cpu_realtime_runtime, Some(475_000));
    }

    #[test]
    fn create_body_carries_the_spec_onto_the_engine_fields() {
        let mut req = request();
        req.spec.entrypoint = Some(vec!["/bin/sh".to_owned()]);
        req.hardware.devices.push(DeviceMapping {
            host_path: "/dev/ttyUSB0".to_owned(),
            container_path: "/dev/lidar".to_owned(),
            permissions: "rwm".to_owned(),
        });
        let body = container_body(&req);
        let host = body.host_config.clone().unwrap();
        assert_eq!(body.image.as_deref(), Some(req.spec.image.pull_ref().as_str()));
        assert_eq!(body.cmd, Some(vec!["httpd".to_owned(), "-f".to_owned()]));
        assert_eq!(body.entrypoint, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(body.env, Some(vec!["PORT=8080".to_owned(), "RUST_LOG=info".to_owned()]));
        assert_eq!(body.working_dir.as_deref(), Some("/srv"));
        assert_eq!(body.labels.unwrap()[labels::DEVICE], "robot-7");
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.memory_reservation, Some(128 << 20));
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.pids_limit, Some(200));
        assert_eq!(host.shm_size, Some(64 << 20));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(host.restart_policy.unwrap().name, Some(RestartPolicyNameEnum::ALWAYS));
        let dev = &host.devices.unwrap()[0];
        assert_eq!(dev.path_on_host.as_deref(), Some("/dev/ttyUSB0"));
        assert_eq!(dev.path_in_container.as_deref(), Some("/dev/lidar"));
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].source.as_deref(), Some("maps"));
        let vol_labels = mounts[0].volume_options.as_ref().unwrap().labels.clone().unwrap();
        assert_eq!(vol_labels[labels::DEVICE], "robot-7");
        assert_eq!(mounts[1].typ, Some(MountType::TMPFS));
        assert_eq!(mounts[1].tmpfs_options.as_ref().unwrap().size_bytes, Some(16 << 20));
        let bindings = host.port_bindings.unwrap();
        let b = bindings["8080/tcp"].as_ref().unwrap();
        assert_eq!(b[0].host_port.as_deref(), Some("8080"));
        assert_eq!(b[0].host_ip, None, "published on all interfaces");
        assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_owned()]));
    }

    #[test]
    fn port_override_replaces_the_spec_ports_and_keeps_their_protocol() {
        let mut req = request();
        req.spec.ports = vec![PortMapping {
            host_port: 53,
            container_port: 5353,
            protocol: Protocol::Udp,
            loopback_only: false,
        }];
        req.port_override = Some(vec![PortBinding {
            container_port: 5353,
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host_port: 0,
        }]);
        let bindings = container_body(&req).host_config.unwrap().port_bindings.unwrap();
        assert_eq!(bindings.len(), 1);
        let b = bindings["5353/udp"].as_ref().unwrap();
        assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b[0].host_port, None, "port 0 lets the engine choose");
    }

    #[test]
    fn loopback_only_ports_bind_to_127_0_0_1() {
        let mut req = request();
        req.spec.ports[0].loopback_only = true;
        let bindings = container_body(&req).host_config.unwrap().port_bindings.unwrap();
        assert_eq!(bindings["8080/tcp"].as_ref().unwrap()[0].host_ip.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn health_probes_map_to_docker_healthchecks_or_none() {
        let mut req = request();
        let check = |probe| HealthCheck {
            probe,
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            retries: 4,
            start_period: Duration::from_secs(1),
        };
        req.spec.healthcheck = Some(check(Probe::Cmd(vec!["probe".to_owned(), "-q".to_owned()])));
        let hc = container_body(&req).healthcheck.unwrap();
        assert_eq!(hc.test, Some(vec!["CMD".to_owned(), "probe".to_owned(), "-q".to_owned()]));
        assert_eq!(hc.interval, Some(2_000_000_000));
        assert_eq!(hc.timeout, Some(500_000_000));
        assert_eq!(hc.retries, Some(4));
        assert_eq!(hc.start_period, Some(1_000_000_000));

        req.spec.healthcheck = Some(check(Probe::CmdShell("curl -f localhost".to_owned())));
        let hc = container_body(&req).healthcheck.unwrap();
        assert_eq!(hc.test, Some(vec!["CMD-SHELL".to_owned(), "curl -f localhost".to_owned()]));

        req.spec.healthcheck = Some(check(Probe::Image));
        assert_eq!(container_body(&req).healthcheck, None, "the image's HEALTHCHECK stays");

        req.spec.healthcheck = Some(check(Probe::Tcp { port: 80 }));
        assert_eq!(
            container_body(&req).healthcheck.unwrap().test,
            Some(vec!["NONE".to_owned()]),
            "the agent probes TCP itself"
        );

        req.spec.healthcheck = Some(check(Probe::Disabled));
        assert_eq!(
            container_body(&req).healthcheck.unwrap().test,
            Some(vec!["NONE".to_owned()]),
            "a disabled check switches the image's HEALTHCHECK off"
        );
    }

    #[test]
    fn extra_groups_join_the_container_user() {
        let mut req = request();
        assert_eq!(container_body(&req).host_config.unwrap().group_add, None);
        req.spec.group_add = vec!["dialout".to_owned(), "44".to_owned()];
        assert_eq!(
            container_body(&req).host_config.unwrap().group_add,
            Some(vec!["dialout".to_owned(), "44".to_owned()])
        );
    }

    #[test]
    fn restart_policies_and_realtime_priority_map_to_engine_names() {
        let mut req = request();
        req.spec.restart = RestartPolicy::OnFailure { max_retries: 5 };
        req.spec.resources = ResourceLimits {
            realtime_priority: Some(80),
            ulimits: vec![
                Ulimit { name: "rtprio".to_owned(), soft: 1, hard: 1 },
                Ulimit { name: "memlock".to_owned(), soft: -1, hard: -1 },
            ],
            ..Default::default()
        };
        let host = container_body(&req).host_config.unwrap();
        let policy = host.restart_policy.unwrap();
        assert_eq!(policy.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(policy.maximum_retry_count, Some(5));
        let ulimits = host.ulimits.unwrap();
        let rtprio: Vec<_> =
            ulimits.iter().filter(|u| u.name.as_deref() == Some("rtprio")).collect();
        assert_eq!(rtprio.len(), 1, "{ulimits:?}");
        assert_eq!((rtprio[0].soft, rtprio[0].hard), (Some(80), Some(80)));
        assert_eq!(host.memory, None, "no limit means no limit");
    }

    fn inspected(status: ContainerStateStatusEnum, exit: i64) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("abc".to_owned()),
            name: Some("/web".to_owned()),
            image: Some("sha256:local-id".to_owned()),
            restart_count: Some(2),
            state: Some(EngineState {
                status: Some(status),
                exit_code: Some(exit),
                oom_killed: Some(true),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                image: Some("reg/web@sha256:x".to_owned()),
                labels: Some(HashMap::from([(labels::DEVICE.to_owned(), "d".to_owned())])),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(HashMap::from([
                    (
                        "8080/tcp".to_owned(),
                        Some(vec![EngineBinding {
                            host_ip: Some("127.0.0.1".to_owned()),
                            host_port: Some("49153".to_owned()),
                        }]),
                    ),
                    ("9090/tcp".to_owned(), None),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inspect_maps_state_exit_code_and_published_ports() {
        let c = observed_from(inspected(ContainerStateStatusEnum::EXITED, 137));
        assert_eq!(c.name, "web");
        assert_eq!(c.image, "reg/web@sha256:x");
        assert_eq!(c.state, ContainerState::Exited);
        assert_eq!(c.health, Health::NoCheck);
        assert_eq!(c.exit_code, Some(137));
        assert_eq!(c.restart_count, 2);
        assert!(c.oom_killed);
        assert_eq!(c.label(labels::DEVICE), Some("d"));
        assert_eq!(
            c.ports,
            vec![PortBinding {
                container_port: 8080,
                host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                host_port: 49153
            }]
        );
        let running = observed_from(inspected(ContainerStateStatusEnum::RUNNING, 0));
        assert_eq!(running.state, ContainerState::Running);
        assert_eq!(running.exit_code, None, "a running container has not exited");
    }

    fn info(id: &str, status: &str, progress: Option<(i64, i64)>) -> CreateImageInfo {
        CreateImageInfo {
            id: Some(id.to_owned()),
            status: Some(status.to_owned()),
            progress_detail: progress.map(|(current, total)| ProgressDetail {
                current: Some(current),
                total: Some(total),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pull_progress_sums_layers_and_reports_a_total_only_once_all_sizes_are_known() {
        let mut t = PullTally::default();
        assert_eq!(t.update(&info("sha256:img", "Pulling from fleet-test/web", None)), None);
        assert_eq!(t.update(&info("base", "Already exists", None)), None);
        assert_eq!(t.update(&info("a", "Pulling fs layer", None)), Some((0, None)));
        t.update(&info("b", "Waiting", None));
        assert_eq!(t.update(&info("a", "Downloading", Some((100, 1000)))), Some((100, None)));
        assert_eq!(t.update(&info("b", "Downloading", Some((50, 500)))), Some((150, Some(1500))));
        assert_eq!(t.update(&info("b", "Download complete", None)), Some((600, Some(1500))));
        assert_eq!(t.update(&info("b", "Extracting", Some((10, 500)))), None, "unchanged");
        assert_eq!(t.update(&info("a", "Pull complete", None)), Some((1500, Some(1500))));
        assert_eq!(t.finish(), 1500);
    }

    #[test]
    fn log_lines_drop_line_endings_and_keep_the_tail() {
        assert_eq!(log_lines(b"a\nb\r\nc\n", 2), vec!["b", "c"]);
        assert_eq!(log_lines(b"", 5), Vec::<String>::new());
        assert_eq!(log_lines(b"partial", 5), vec!["partial"]);
    }

    #[test]
    fn grace_periods_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}
