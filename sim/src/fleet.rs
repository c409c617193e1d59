//! A whole fleet in one process: `fleet-server` on embedded defaults (its in-process MQTT
//! broker on a free loopback port, its store in a temporary directory) and any number of real
//! agents (`fleet_agent::daemon::run_with`) on the simulated container engine, each enrolled
//! through the API and connected over its own MQTT session. What runs is the product's code;
//! only the container engine is simulated.
//!
//! Every step has a fallible form (`try_*`) that says what went wrong and what to do; the short
//! forms (`start`, `enroll`, `start_agent`, `api`) panic with that message, for tests.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::runtime::sim::{ImageBehavior, SimRuntime};
use fleet_proto::{DeviceId, ImageRef};
use fleet_server::api::{EnrollRequest, EnrollResponse};
use serde_json::Value;
use tokio::sync::oneshot;

/// Why the simulated fleet could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be made.
    #[error("{what}: {source} (is the temporary directory writable? set TMPDIR to one that is)")]
    Io {
        /// What was being made.
        what: String,
        /// Why not.
        source: std::io::Error,
    },
    /// The server did not start.
    #[error("fleet-server did not start: {0}")]
    Server(String),
    /// The API could not be reached.
    #[error("{method} {url}: {reason}")]
    Unreachable {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The API refused a call.
    #[error("{call} answered {status}: {body}")]
    Refused {
        /// Method and path.
        call: String,
        /// The HTTP status.
        status: u16,
        /// The answer (a problem document).
        body: String,
    },
    /// An agent could not be configured.
    #[error("agent {device}: {reason}")]
    Agent {
        /// The device.
        device: String,
        /// Why.
        reason: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding a loopback port"))?;
    Ok(listener.local_addr().map_err(io("reading a loopback port"))?.port())
}

/// The server and its agents.
#[derive(Debug)]
pub struct SimFleet {
    /// Holds the server's data and every agent's.
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    /// The admin token.
    pub token: String,
    /// The embedded broker.
    pub mqtt: SocketAddr,
    /// The server's signing key (hex), for the agents' configs; learnt at the first enrollment.
    server_key: String,
    /// The agents, by device id.
    pub agents: BTreeMap<String, SimAgent>,
    /// Agents on a real Docker engine, by device id; [`SimFleet::stop`] removes what they ran.
    pub docker_agents: BTreeMap<String, DockerAgent>,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// One agent in this process.
#[derive(Debug)]
pub struct SimAgent {
    /// Its engine.
    pub runtime: Arc<SimRuntime>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// One agent in this process on a real Docker engine (`fleet_agent::daemon::run`).
#[derive(Debug)]
pub struct DockerAgent {
    /// The engine's endpoint (`unix:///var/run/docker.sock`).
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl SimFleet {
    /// Starts the server on embedded defaults in a temporary directory; panics if it cannot.
    pub async fn start() -> SimFleet {
        SimFleet::try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server on embedded defaults in a temporary directory.
    pub async fn try_start() -> Result<SimFleet, Error> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let opts = fleet_server::ServeOptions {
            data_dir: dir.path().join("server"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt_listen: mqtt,
            ..fleet_server::ServeOptions::default()
        };
        let (ready_tx, ready) = oneshot::channel();
        let (failed_tx, failed) = oneshot::channel::<String>();
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let served = fleet_server::serve(opts, shutdown, move |addr| {
                let _ = ready_tx.send(addr);
            })
            .await;
            if let Err(e) = served {
                let _ = failed_tx.send(format!("{e:#}"));
            }
        });
        let addr = tokio::select! {
            addr = ready => addr.ok(),
            e = failed => return Err(Error::Server(e.unwrap_or_else(|_| "it stopped".into()))),
            () = tokio::time::sleep(Duration::from_secs(30)) => None,
        };
        let Some(addr) = addr else {
            server.abort();
            return Err(Error::Server("not ready after 30 s".into()));
        };
        let token_file = dir.path().join("server/admin-token");
        let token = std::fs::read_to_string(&token_file)
            .map_err(io(format!("reading {}", token_file.display())))?
            .trim()
            .to_owned();
        Ok(SimFleet {
            dir,
            api: format!("http://{addr}"),
            token,
            mqtt,
            server_key: String::new(),
            agents: BTreeMap::new(),
            docker_agents: BTreeMap::new(),
            stop_server: Some(stop_server),
            server: Some(server),
        })
    }

    /// Calls the API with the admin token: (status, JSON body); panics if it is unreachable.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        api_call(&self.api, &self.token, method, path, body).await
    }

    /// Calls the API with the admin token and expects `want`: the JSON body.
    pub async fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value, Error> {
        let (status, body) = try_api_call(&self.api, &self.token, method, path, body).await?;
        if status != want {
            return Err(Error::Refused {
                call: format!("{method} {path}"),
                status,
                body: body.to_string(),
            });
        }
        Ok(body)
    }

    /// Enrolls `id` with `labels` through the API; panics if the server refuses.
    pub async fn enroll(&mut self, id: &str, labels: &[(&str, &str)]) {
        self.try_enroll(id, labels).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Enrolls `id` with `labels` through the API.
    pub async fn try_enroll(&mut self, id: &str, labels: &[(&str, &str)]) -> Result<(), Error> {
        let agent_err = |reason: String| Error::Agent { device: id.to_owned(), reason };
        let device = DeviceId::new(id).map_err(|e| agent_err(format!("not a device id: {e}")))?;
        let (_, public_key, proof) = fleet_server::pki::new_device_key(&device)
            .map_err(|e| agent_err(format!("cannot make a key: {e}")))?;
        let request = EnrollRequest {
            public_key,
            proof,
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            valid_days: None,
        };
        let request = serde_json::to_value(request).map_err(|e| agent_err(e.to_string()))?;
        let body = self
            .try_api("POST", &format!("/api/v1/devices/{id}/enroll"), Some(request), 201)
            .await?;
        let enrolled: EnrollResponse = serde_json::from_value(body)
            .map_err(|e| agent_err(format!("unexpected enrollment answer: {e}")))?;
        let key = enrolled.server_keys.first().ok_or_else(|| {
            agent_err("the enrollment answer names no server key to trust".into())
        })?;
        self.server_key.clone_from(key);
        Ok(())
    }

    /// Starts the agent of an enrolled device; its engine can pull `images`. Panics if its
    /// configuration cannot be written.
    pub fn start_agent(&mut self, id: &str, images: &[(ImageRef, ImageBehavior)]) {
        self.try_start_agent(id, images).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the agent of an enrolled device; its engine can pull `images`.
    pub fn try_start_agent(
        &mut self,
        id: &str,
        images: &[(ImageRef, ImageBehavior)],
    ) -> Result<(), Error> {
        let data = self.dir.path().join("agents").join(id);
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        let config = try_write_agent_config(
            &data,
            id,
            &format!("mqtt://{}", self.mqtt),
            &self.server_key,
            &data,
        )?;
        let config = Config::load(&config, true)
            .map_err(|e| Error::Agent { device: id.to_owned(), reason: e.to_string() })?;
        let runtime = Arc::new(SimRuntime::new());
        for (image, behavior) in images {
            runtime.publish_image(image, *behavior, 1 << 20);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let rt = runtime.clone();
        let device = id.to_owned();
        let task = tokio::spawn(async move {
            let ran = fleet_agent::daemon::run_with(config, rt, async {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = ran {
                // The device shows offline in the registry; say why here.
                eprintln!("agent {device} stopped: {e}");
            }
        });
        self.agents.insert(id.to_owned(), SimAgent { runtime, stop: Some(stop), task });
        Ok(())
    }

    /// Starts the agent of an enrolled device on the Docker engine at `endpoint` (a socket
    /// path or `unix://...`), as `fleet-agent run` does; its containers are real.
    pub async fn try_start_docker_agent(&mut self, id: &str, endpoint: &str) -> Result<(), Error> {
        let agent_err = |reason: String| Error::Agent { device: id.to_owned(), reason };
        // Fail here, with what to do, rather than in the agent's task.
        fleet_agent::runtime::docker::DockerRuntime::connect(endpoint, Duration::from_secs(10))
            .await
            .map_err(|e| {
                agent_err(format!(
                    "no Docker engine at {endpoint}: {e} (start Docker, or point DOCKER_HOST at it)"
                ))
            })?;
        let data = self.dir.path().join("agents").join(id);
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        let config = try_write_agent_config(
            &data,
            id,
            &format!("mqtt://{}", self.mqtt),
            &self.server_key,
            &data,
        )?;
        let mut text = std::fs::read_to_string(&config)
            .map_err(io(format!("reading {}", config.display())))?;
        text.push_str(&format!("[engine]\nsocket = \"{endpoint}\"\nrequest_timeout_secs = 120\n"));
        std::fs::write(&config, text).map_err(io(format!("writing {}", config.display())))?;
        let config = Config::load(&config, true).map_err(|e| agent_err(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let device = id.to_owned();
        let task = tokio::spawn(async move {
            let ran = fleet_agent::daemon::run(config, async {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = ran {
                eprintln!("agent {device} (Docker) stopped: {e}");
            }
        });
        self.docker_agents.insert(
            id.to_owned(),
            DockerAgent { endpoint: endpoint.to_owned(), stop: Some(stop), task },
        );
        Ok(())
    }

    /// Stops a Docker agent, then removes its containers and networks (the agent itself leaves
    /// them running when it stops, as on a device). Answers what could not be removed.
    async fn stop_docker_agent(&mut self, id: &str) -> Vec<String> {
        use fleet_agent::runtime::ContainerRuntime;
        let Some(mut agent) = self.docker_agents.remove(id) else { return Vec::new() };
        let _ = agent.stop.take().map(|s| s.send(()));
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut agent.task).await;
        let mut left = Vec::new();
        let docker = match fleet_agent::runtime::docker::DockerRuntime::connect(
            &agent.endpoint,
            Duration::from_secs(30),
        )
        .await
        {
            Ok(d) => d,
            Err(e) => return vec![format!("{id}'s containers: {e}")],
        };
        let Ok(device) = DeviceId::new(id) else { return left };
        match docker.list(&device).await {
            Ok(containers) => {
                for c in containers {
                    let _ = docker.stop(&c.id, Duration::from_secs(1)).await;
                    if let Err(e) = docker.remove(&c.id).await {
                        left.push(format!("container {}: {e}", c.name));
                    }
                }
            }
            Err(e) => left.push(format!("{id}'s containers: {e}")),
        }
        if let Ok(networks) = docker.networks().await {
            for n in networks.iter().filter(|n| n.name.starts_with(&format!("{id}_"))) {
                if let Err(e) = docker.remove_network(&n.name).await {
                    left.push(format!("network {}: {e}", n.name));
                }
            }
        }
        left
    }

    /// Stops one agent; its device goes offline (the agent publishes its offline status as it
    /// leaves).
    pub async fn stop_agent(&mut self, id: &str) {
        if let Some(mut agent) = self.agents.remove(id) {
            let _ = agent.stop.take().map(|s| s.send(()));
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut agent.task).await;
        }
    }

    /// Stops every agent (removing what Docker agents ran), then the server. Answers what
    /// could not be removed from Docker.
    pub async fn stop(mut self) -> Vec<String> {
        let ids: Vec<String> = self.agents.keys().cloned().collect();
        for id in ids {
            self.stop_agent(&id).await;
        }
        let mut left = Vec::new();
        let ids: Vec<String> = self.docker_agents.keys().cloned().collect();
        for id in ids {
            left.extend(self.stop_docker_agent(&id).await);
        }
        let _ = self.stop_server.take().map(|s| s.send(()));
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        left
    }

    /// The data directory of the server.
    pub fn server_data(&self) -> PathBuf {
        self.dir.path().join("server")
    }
}

/// One API call: (status, JSON body); panics if the server cannot be reached.
pub async fn api_call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    try_api_call(base, token, method, path, body).await.unwrap_or_else(|e| panic!("{e}"))
}

/// One API call: (status, JSON body; `null` when the answer is not JSON).
pub async fn try_api_call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), Error> {
    let url = format!("{base}{path}");
    let (method, token) = (method.to_owned(), token.to_owned());
    let (m, u) = (method.clone(), url.clone());
    let unreachable = move |reason: String| Error::Unreachable { method: m, url: u, reason };
    let called = tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let auth = format!("Bearer {token}");
        let sent = match (method.as_str(), body) {
            ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
            ("PUT", Some(b)) => agent.put(&url).header("authorization", &auth).send_json(b),
            ("PATCH", Some(b)) => agent.patch(&url).header("authorization", &auth).send_json(b),
            (_, Some(b)) => agent.post(&url).header("authorization", &auth).send_json(b),
            (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
        };
        sent.map(|mut response| {
            (response.status().as_u16(), response.body_mut().read_json().unwrap_or_default())
        })
        .map_err(|e| e.to_string())
    })
    .await;
    match called {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(reason)) => Err(unreachable(format!("{reason} (is the server still running?)"))),
        Err(e) => Err(unreachable(e.to_string())),
    }
}

/// Writes `<dir>/config.toml` for an agent of `device` on `broker`, trusting the server key
/// `key` (hex), its state in `data`, with test timings (short grace, stability and backoff).
/// Certificate paths stay relative to `dir`, as in an enrollment bundle. Panics if it cannot.
pub fn write_agent_config(
    dir: &Path,
    device: &str,
    broker: &str,
    key: &str,
    data: &Path,
) -> PathBuf {
    try_write_agent_config(dir, device, broker, key, data).unwrap_or_else(|e| panic!("{e}"))
}

/// [`write_agent_config`], with the error instead of a panic.
pub fn try_write_agent_config(
    dir: &Path,
    device: &str,
    broker: &str,
    key: &str,
    data: &Path,
) -> Result<PathBuf, Error> {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"{device}\"\ndata_dir = \"{data}\"\n\
             [update]\nstop_grace_secs = 1\nstable_for_secs = 1\nresync_secs = 30\ndisk_reserve_mb = 1\n\
             [locks]\ndir = \"{data}/locks\"\nsocket = \"{data}/locks.sock\"\n\
             [link]\nbroker = \"{broker}\"\nserver_keys = [\"{key}\"]\nkeep_alive_secs = 5\n\
             backoff_initial_ms = 200\nbackoff_max_secs = 2\n",
            data = data.display(),
        ),
    )
    .map_err(io(format!("writing {}", config.display())))?;
    Ok(config)
}
