//! The Docker Engine behind [`ContainerRuntime`], over bollard.
//!
//! This module owns every call the agent makes to the Docker Engine API. This file holds the
//! connection, the mapping of engine errors, container lifecycle (start, stop, remove) and
//! engine objects (networks, volumes); the rest is by job:
//! * `create.rs` — a [`CreateRequest`] (a planned service) becomes the engine's container config;
//! * `observe.rs` — inspect, list, stats, logs and events become what runs
//!   ([`ObservedContainer`], [`RuntimeEvent`]);
//! * `pull.rs` — image pulls by digest and their progress, local images, download sizes.
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

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use fleet_proto::{DeviceId, ImageRef, RegistryCredential};
use tokio::sync::mpsc;

use super::{
    ContainerRuntime, ContainerStats, CreateRequest, EngineObject, ObservedContainer, ProgressFn,
    RuntimeError, RuntimeEvent,
};

mod create;
mod observe;
mod pull;

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
}

impl DockerRuntime {
    /// The engine client for a stop or restart with `grace`: the engine answers only once the
    /// container has stopped, so a grace period longer than the request timeout must not turn a
    /// clean stop into a timeout.
    fn waiting_out(&self, grace: Duration) -> Docker {
        let needed = grace.saturating_add(STOP_SLACK);
        if needed > self.request_timeout {
            self.docker.clone().with_timeout(needed)
        } else {
            self.docker.clone()
        }
    }
}

/// The trait's calls, each answered by the file that owns its job.
impl ContainerRuntime for DockerRuntime {
    async fn list(&self, device: &DeviceId) -> Result<Vec<ObservedContainer>, RuntimeError> {
        self.list_containers(device).await
    }

    async fn inspect(&self, id: &str) -> Result<ObservedContainer, RuntimeError> {
        self.inspect_container(id).await
    }

    async fn has_image(&self, image: &ImageRef) -> Result<bool, RuntimeError> {
        self.image_present(image).await
    }

    async fn pull(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
        progress: ProgressFn<'_>,
    ) -> Result<(), RuntimeError> {
        self.pull_image(image, credential, progress).await
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.remove_local_image(image).await
    }

    async fn download_size(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
    ) -> Option<u64> {
        self.image_download_size(image, credential).await
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
        self.pulled_images().await
    }

    async fn create(&self, req: &CreateRequest) -> Result<String, RuntimeError> {
        self.create_container(req).await
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
            // Docker answers 404 when its address pools are exhausted ("could not find an
            // available, non-overlapping IPv4 address pool"): that message is the reason, not
            // "network not found".
            Err(BollardError::DockerResponseServerError { status_code: 404, message }) => {
                Err(RuntimeError::Engine {
                    op: format!("create network {name}"),
                    status: Some(404),
                    message,
                })
            }
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
        let docker = self.waiting_out(grace);
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
        self.waiting_out(grace)
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
        self.container_stats(id).await
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>, RuntimeError> {
        self.container_logs(id, tail).await
    }

    fn events(&self, device: &DeviceId) -> mpsc::Receiver<RuntimeEvent> {
        self.watch_events(device)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}
