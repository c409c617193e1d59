//! The Docker Engine (or Podman's Docker-compatible API) behind [`ContainerRuntime`].
//!
//! This module owns every call the agent makes to the Docker Engine API. This file holds the
//! connection, the mapping of engine errors, container lifecycle (start, stop, remove) and
//! engine objects (networks, volumes); the rest is by job:
//! * `engine.rs` — HTTP/1.1 over the unix socket, bounded in time and size;
//! * `model.rs` — the API's JSON, only the fields the agent sends or reads;
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
//!   to *answer* (minutes: a pull is answered only once the registry answers); streamed
//!   bodies (pull progress, events) are not cut by it. `stop` stretches it by the grace period.
//! * Errors keep the engine's HTTP status: a 404 is [`RuntimeError::NotFound`], never a message
//!   match; a dead socket is [`RuntimeError::Unreachable`].

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_proto::{DeviceId, ImageRef, RegistryCredential};
use tokio::sync::mpsc;

use self::engine::{encode_name, Engine, EngineError, Request};
use super::{
    ContainerRuntime, ContainerStats, CreateRequest, EngineObject, ObservedContainer, ProgressFn,
    RuntimeError, RuntimeEvent,
};

mod create;
mod engine;
mod model;
mod observe;
mod pull;

/// Extra time `stop` gives the engine beyond the grace period to answer: the engine replies only
/// after the container is gone, and killing it after the grace period takes a moment.
const STOP_SLACK: Duration = Duration::from_secs(30);

/// The newest API version the agent speaks; an older engine's own version is used instead.
const NEWEST_API: (u32, u32) = (1, 53);

/// The most bytes of an answer read whole (lists, inspects): far above any real one.
const ANSWER_LIMIT: usize = 16 << 20;

/// A Docker Engine reached over its unix socket.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    engine: Engine,
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
        let unversioned = Engine::new(path, request_timeout.max(Duration::from_secs(1)));
        let version: model::Version =
            unversioned.call(Request::get("/version"), ANSWER_LIMIT).await.map_err(|e| {
                if e.is_connection() {
                    RuntimeError::Unreachable { endpoint: endpoint.to_owned(), source: Box::new(e) }
                } else {
                    RuntimeError::Engine {
                        op: format!("negotiate the API version with {endpoint}"),
                        status: e.status(),
                        message: e.to_string(),
                    }
                }
            })?;
        let engine_api = version.api_version.as_deref().unwrap_or_default();
        let api = negotiate(engine_api).ok_or_else(|| RuntimeError::Engine {
            op: format!("negotiate the API version with {endpoint}"),
            status: None,
            message: format!("the engine's API version {engine_api:?} is not MAJOR.MINOR"),
        })?;
        tracing::info!(endpoint, %api, "connected to the Docker engine");
        Ok(DockerRuntime {
            engine: unversioned.at_version(api),
            endpoint: endpoint.to_owned(),
            request_timeout,
        })
    }

    /// The API version requests are made at (`1.41` on Docker 20.10): never newer than the
    /// engine's.
    pub fn api_version(&self) -> &str {
        self.engine.version()
    }

    /// The engine's version and API version, e.g. `("20.10.24", "1.41")`.
    pub async fn engine_info(&self) -> Result<(String, String), RuntimeError> {
        let v: model::Version = self
            .engine
            .call(Request::get("/version"), ANSWER_LIMIT)
            .await
            .map_err(|e| self.fail("read the version of", "engine", e))?;
        Ok((v.version.unwrap_or_default(), v.api_version.unwrap_or_default()))
    }

    /// Sends a request whose answer the caller needs whole, mapping failures to `op` on `what`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: Request<'_>,
        op: &str,
        what: &str,
    ) -> Result<T, RuntimeError> {
        self.engine.call(request, ANSWER_LIMIT).await.map_err(|e| self.fail(op, what, e))
    }

    /// Maps an engine error of operation `op` on `what` (e.g. `stop`, `container web`).
    fn fail(&self, op: &str, what: &str, err: EngineError) -> RuntimeError {
        match err {
            EngineError::Status { status: 404, .. } => {
                RuntimeError::NotFound { what: what.to_owned() }
            }
            EngineError::Status { status, message } => {
                RuntimeError::Engine { op: format!("{op} {what}"), status: Some(status), message }
            }
            e if e.is_connection() => {
                RuntimeError::Unreachable { endpoint: self.endpoint.clone(), source: Box::new(e) }
            }
            e => RuntimeError::Engine {
                op: format!("{op} {what}"),
                status: None,
                message: e.to_string(),
            },
        }
    }

    /// The time a stop or restart with `grace` may take to be answered: the engine answers only
    /// once the container has stopped, so a grace period longer than the request timeout must
    /// not turn a clean stop into a timeout.
    fn waiting_out(&self, grace: Duration) -> Duration {
        self.request_timeout.max(grace.saturating_add(STOP_SLACK))
    }
}

/// The API version to speak with an engine at `engine_api`: its own, or ours if it is newer.
fn negotiate(engine_api: &str) -> Option<String> {
    let (major, minor) = engine_api.split_once('.')?;
    let theirs: (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    let (major, minor) = theirs.min(NEWEST_API);
    Some(format!("{major}.{minor}"))
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
        let info: model::Info =
            self.call(Request::get("/info"), "read the info of", "engine").await?;
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

    async fn runtimes(&self) -> Result<Option<Vec<String>>, RuntimeError> {
        let info: model::Info =
            self.call(Request::get("/info"), "read the info of", "engine").await?;
        Ok(info.runtimes.map(|r| {
            let mut names: Vec<String> = r.into_keys().collect();
            names.sort();
            names
        }))
    }

    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        self.pulled_images().await
    }

    async fn create(&self, req: &CreateRequest) -> Result<String, RuntimeError> {
        self.create_container(req).await
    }

    async fn networks(&self) -> Result<Vec<EngineObject>, RuntimeError> {
        let found: Vec<model::NamedObject> =
            self.call(Request::get("/networks"), "list", "networks").await?;
        Ok(found.into_iter().filter_map(engine_object).collect())
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let body = model::NetworkCreate { name, driver: "bridge", check_duplicate: true, labels };
        let request = Request::post("/networks/create").json(&body);
        match self.engine.call::<serde::de::IgnoredAny>(request, ANSWER_LIMIT).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(409) => Ok(()),
            // Docker answers 404 when its address pools are exhausted ("could not find an
            // available, non-overlapping IPv4 address pool"): that message is the reason, not
            // "network not found".
            Err(EngineError::Status { status: 404, message }) => Err(RuntimeError::Engine {
                op: format!("create network {name}"),
                status: Some(404),
                message,
            }),
            Err(e) => Err(self.fail("create", &format!("network {name}"), e)),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        let request = Request::delete(format!("/networks/{}", encode_name(name)));
        match self.call::<()>(request, "remove", &format!("network {name}")).await {
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn volumes(&self) -> Result<Vec<EngineObject>, RuntimeError> {
        let found: model::VolumeList =
            self.call(Request::get("/volumes"), "list", "volumes").await?;
        Ok(found.volumes.unwrap_or_default().into_iter().filter_map(engine_object).collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let request = Request::delete(format!("/volumes/{}", encode_name(name)));
        match self.call::<()>(request, "remove", &format!("volume {name}")).await {
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        // 304 (already running) is a success.
        let request = Request::post(format!("/containers/{}/start", encode_name(id)));
        self.call(request, "start", &format!("container {id}")).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // 304 (not running) is a success.
        let request = Request::post(format!(
            "/containers/{}/stop?t={}",
            encode_name(id),
            whole_seconds(grace)
        ))
        .timeout(self.waiting_out(grace));
        self.call(request, "stop", &format!("container {id}")).await
    }

    async fn restart(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let request = Request::post(format!(
            "/containers/{}/restart?t={}",
            encode_name(id),
            whole_seconds(grace)
        ))
        .timeout(self.waiting_out(grace));
        self.call(request, "restart", &format!("container {id}")).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        // v=false: a named volume holds data that must outlive any one container.
        let request =
            Request::delete(format!("/containers/{}?force=true&v=false", encode_name(id)));
        match self.call::<()>(request, "remove", &format!("container {id}")).await {
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            other => other,
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

/// A network or volume by name with its labels; `None` for one without a name.
fn engine_object(o: model::NamedObject) -> Option<EngineObject> {
    Some(EngineObject { name: o.name?, labels: o.labels.unwrap_or_default().into_iter().collect() })
}

/// Seconds, rounded up: a grace of 1.5 s must not become 1 s.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_version_is_the_engines_unless_it_is_newer_than_ours() {
        assert_eq!(negotiate("1.41").as_deref(), Some("1.41"));
        assert_eq!(negotiate("1.53").as_deref(), Some("1.53"));
        assert_eq!(negotiate("1.60").as_deref(), Some("1.53"));
        assert_eq!(negotiate("2.0").as_deref(), Some("1.53"));
        assert_eq!(negotiate("1.9").as_deref(), Some("1.9"));
        assert_eq!(negotiate("latest"), None);
        assert_eq!(negotiate(""), None);
    }

    #[test]
    fn grace_periods_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}
