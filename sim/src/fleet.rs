//! A whole fleet in one process: `fleet-server` on embedded defaults (its in-process MQTT
//! broker on a free loopback port, its store in a temporary directory) and any number of real
//! agents (`fleet_agent::daemon::run_with`) on the simulated container engine, each enrolled
//! through the API and connected over its own MQTT session. What runs is the product's code;
//! only the container engine is simulated.
//!
//! The server runs in this process by default ([`Topology::InProcess`]). For fleets of
//! thousands, [`Topology::Process`] runs the `fleet-server` binary as its own process (each
//! process then holds one end of every device's connection, half the descriptors, and the
//! server's memory and CPU are measured apart from the agents'), and [`Topology::Mosquitto`]
//! puts Mosquitto with the shipped mutual-TLS configuration between them, as in production.
//!
//! Every step has a fallible form (`try_*`) that says what went wrong and what to do; the short
//! forms (`start`, `enroll`, `start_agent`, `api`) panic with that message, for tests.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::daemon::RunOptions;
use fleet_agent::runtime::docker::DockerRuntime;
use fleet_agent::runtime::sim::{ImageBehavior, SimRuntime};
use fleet_api::agent_config::{AgentConfig, AgentEngine, AgentLink, AgentLocks, AgentUpdate};
use fleet_api::client::{ApiClient, ApiError};
use fleet_api::{EnrollRequest, EnrollResponse};
use fleet_proto::{DeviceId, ImageRef};
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

/// Where the server and its broker run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// fleet-server in this process, on its embedded broker (plain MQTT on loopback).
    #[default]
    InProcess,
    /// The `fleet-server` binary as a child process, on its embedded broker.
    Process,
    /// The `fleet-server` binary and Mosquitto (the shipped `fleet.conf`: mutual TLS, ACLs,
    /// a certificate per device from its enrollment), each its own process.
    Mosquitto,
}

/// The shipped Mosquitto configuration and ACL, built in so an installed `fleet-sim` needs no
/// checkout.
const MOSQUITTO_CONF: &str = include_str!("../../packaging/mosquitto/fleet.conf");
const MOSQUITTO_ACL: &str = include_str!("../../packaging/mosquitto/acl");

/// How the server runs, and how to stop it.
#[derive(Debug)]
enum ServerHandle {
    Task { stop: oneshot::Sender<()>, task: tokio::task::JoinHandle<()> },
    Processes { server: Child, mosquitto: Option<Child> },
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
    /// The broker's address (the embedded one's, or Mosquitto's TLS listener).
    pub mqtt: SocketAddr,
    /// How agents dial it: `mqtt://ADDR`, or `mqtts://ADDR` on Mosquitto.
    pub broker: String,
    /// The server's signing key (hex), for the agents' configs; learnt at the first enrollment.
    server_key: String,
    /// The agents, by device id.
    pub agents: BTreeMap<String, SimAgent>,
    /// Agents on a real Docker engine, by device id; [`SimFleet::stop`] removes what they ran.
    pub docker_agents: BTreeMap<String, DockerAgent>,
    server: Option<ServerHandle>,
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

    /// Starts the server on embedded defaults in a temporary directory, in this process.
    pub async fn try_start() -> Result<SimFleet, Error> {
        SimFleet::try_start_as(Topology::InProcess).await
    }

    /// Starts the server (and Mosquitto) as `topology` says, in a temporary directory.
    pub async fn try_start_as(topology: Topology) -> Result<SimFleet, Error> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (api, server) = match topology {
            Topology::InProcess => start_in_process(dir.path(), mqtt).await?,
            Topology::Process | Topology::Mosquitto => {
                start_processes(dir.path(), mqtt, topology == Topology::Mosquitto).await?
            }
        };
        let token_file = dir.path().join("server/admin-token");
        let token = std::fs::read_to_string(&token_file)
            .map_err(io(format!("reading {}", token_file.display())))?
            .trim()
            .to_owned();
        let scheme = if topology == Topology::Mosquitto { "mqtts" } else { "mqtt" };
        Ok(SimFleet {
            dir,
            api,
            token,
            mqtt,
            broker: format!("{scheme}://{mqtt}"),
            server_key: String::new(),
            agents: BTreeMap::new(),
            docker_agents: BTreeMap::new(),
            server: Some(server),
        })
    }

    /// The server's process id, when it runs as its own process.
    pub fn server_pid(&self) -> Option<u32> {
        match &self.server {
            Some(ServerHandle::Processes { server, .. }) => Some(server.id()),
            _ => None,
        }
    }

    /// Mosquitto's process id, when it is the broker.
    pub fn mosquitto_pid(&self) -> Option<u32> {
        match &self.server {
            Some(ServerHandle::Processes { mosquitto: Some(m), .. }) => Some(m.id()),
            _ => None,
        }
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

    /// Enrolls `id` with `labels` through the API; its key, certificate and the fleet CA go
    /// in its agent directory ([`SimFleet::agent_dir`]), as `fleetctl device enroll` writes them.
    pub async fn try_enroll(&mut self, id: &str, labels: &[(&str, &str)]) -> Result<(), Error> {
        let labels: Vec<(String, String)> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let key = self.try_enroll_device(id, &labels).await?;
        self.server_key = key;
        Ok(())
    }

    /// [`SimFleet::try_enroll`] without `&mut`: answers the server key to trust (hex).
    pub async fn try_enroll_device(
        &self,
        id: &str,
        labels: &[(String, String)],
    ) -> Result<String, Error> {
        let agent_err = |reason: String| Error::Agent { device: id.to_owned(), reason };
        let device = DeviceId::new(id).map_err(|e| agent_err(format!("not a device id: {e}")))?;
        let (device_key, public_key, proof) =
            fleet_api::enroll::new_device_key(&device).map_err(|e| {
                agent_err(format!("cannot make a key: certificate generation failed: {e}"))
            })?;
        let request = EnrollRequest {
            public_key,
            proof,
            labels: labels.iter().cloned().collect(),
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
        let dir = self.agent_dir(id);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let pem = device_key.serialize_pem();
        for (name, text, mode) in [
            ("device.key", pem.as_str(), 0o600),
            ("device.pem", enrolled.certificate_pem.as_str(), 0o644),
            ("ca.pem", enrolled.ca_pem.as_str(), 0o644),
        ] {
            let path = dir.join(name);
            fleet_api::enroll::write_file(&path, text.as_bytes(), mode)
                .map_err(|e| agent_err(format!("writing {}: {e}", path.display())))?;
        }
        if let Some(password) = &enrolled.broker_password {
            let path = dir.join("broker-password");
            fleet_api::enroll::write_file(&path, password.as_bytes(), 0o600)
                .map_err(|e| agent_err(format!("writing {}: {e}", path.display())))?;
        }
        Ok(key.clone())
    }

    /// A login on the embedded broker with the server's rights: (user name, password), for a
    /// test client that reads what only the server may. Its client id must begin with
    /// `fleet-server`.
    pub fn server_login(&self) -> (String, String) {
        let data = self.dir.path().join("server");
        let logins = fleet_server::broker::BrokerLogins::open(&data)
            .unwrap_or_else(|e| panic!("the server's broker logins in {}: {e}", data.display()));
        let server = fleet_server::pki::SERVER_IDENTITY;
        (server.to_owned(), logins.password_for(server))
    }

    /// Where the agent of `id` keeps its configuration, certificate and data.
    pub fn agent_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("agents").join(id)
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
        let data = self.agent_dir(id);
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        let config = try_write_agent_config(&data, id, &self.broker, &self.server_key, &data)?;
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
            let options = RunOptions {
                host: Some(simulated_host()),
                proxy_in_process: true,
                ..Default::default()
            };
            let ran = fleet_agent::daemon::run_with_options(config, rt, options, async {
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
        DockerRuntime::connect(endpoint, Duration::from_secs(10)).await.map_err(|e| {
            agent_err(format!(
                "no Docker engine at {endpoint}: {e} (start Docker, or point DOCKER_HOST at it)"
            ))
        })?;
        let data = self.agent_dir(id);
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        let mut config = test_agent_config(id, &self.broker, &self.server_key, &data);
        config.engine =
            Some(AgentEngine { socket: endpoint.to_owned(), request_timeout_secs: Some(120) });
        let config = write_config_file(&data, &config)?;
        let config = Config::load(&config, true).map_err(|e| agent_err(e.to_string()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let device = id.to_owned();
        let task = tokio::spawn(async move {
            let ran = async {
                let rt =
                    DockerRuntime::connect(&config.engine_socket, config.engine_timeout).await?;
                let options = RunOptions {
                    host: Some(simulated_host()),
                    proxy_in_process: true,
                    ..Default::default()
                };
                fleet_agent::daemon::run_with_options(config, Arc::new(rt), options, async {
                    let _ = stopped.await;
                })
                .await
            }
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
        let docker = match DockerRuntime::connect(&agent.endpoint, Duration::from_secs(30)).await {
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
        match self.server.take() {
            Some(ServerHandle::Task { stop, task }) => {
                let _ = stop.send(());
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            }
            Some(ServerHandle::Processes { server, mosquitto }) => {
                // The server first: it publishes its own offline status on the way out.
                terminate(server).await;
                if let Some(m) = mosquitto {
                    terminate(m).await;
                }
            }
            None => {}
        }
        left
    }

    /// The data directory of the server.
    pub fn server_data(&self) -> PathBuf {
        self.dir.path().join("server")
    }
}

impl Drop for SimFleet {
    /// A fleet dropped without [`SimFleet::stop`] (a panic, an early error) leaves no server
    /// or broker process behind.
    fn drop(&mut self) {
        if let Some(ServerHandle::Processes { mut server, mosquitto }) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
            if let Some(mut m) = mosquitto {
                let _ = m.kill();
                let _ = m.wait();
            }
        }
    }
}

/// The local registry `tests/env/up` starts (on `FLEET_TEST_REGISTRY_PORT`, 5000 unless set),
/// which holds the demo's and the tests' images. The server is told to allow it: a registry on
/// loopback is reached only when it is listed.
pub fn test_registry() -> String {
    let port = std::env::var("FLEET_TEST_REGISTRY_PORT").unwrap_or_else(|_| "5000".to_owned());
    format!("127.0.0.1:{port}")
}

/// fleet-server as a task of this process; answers its API base URL.
async fn start_in_process(dir: &Path, mqtt: SocketAddr) -> Result<(String, ServerHandle), Error> {
    let registry = test_registry();
    let allowed_registries = fleet_oci::guard::Allowlist::new(&[&registry])
        .map_err(|e| Error::Server(format!("FLEET_TEST_REGISTRY_PORT: {e}")))?;
    let opts = fleet_server::ServeOptions {
        data_dir: dir.join("server"),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        mqtt_listen: mqtt,
        allowed_registries,
        ..fleet_server::ServeOptions::default()
    };
    let (ready_tx, ready) = oneshot::channel();
    let (failed_tx, failed) = oneshot::channel::<String>();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
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
        task.abort();
        return Err(Error::Server("not ready after 30 s".into()));
    };
    Ok((format!("http://{addr}"), ServerHandle::Task { stop, task }))
}

/// The host of a simulated device: it records reboots and readiness instead of rebooting this
/// machine or notifying its systemd (a simulated agent may be allowed to reboot its device).
pub fn simulated_host() -> Arc<dyn fleet_agent::host::Host> {
    Arc::new(fleet_agent::host::RecordingHost::default())
}

/// A program installed next to this one (`target/release/fleet-server` beside
/// `target/release/fleet-sim`; a test binary sits one level deeper, in `deps/`), else `PATH`.
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dirs = exe.iter().flat_map(|e| e.ancestors().skip(1).take(2));
    dirs.map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(name))
}

/// Mosquitto: on `PATH`, else where Debian installs it (`/usr/sbin`, not on a user's `PATH`).
fn mosquitto_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    on_path
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

/// Starts `command` with stderr into `log`; `fix` says how to get the program.
fn spawn(command: &mut Command, log: &Path, fix: &str) -> Result<Child, Error> {
    let log_file = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    command.stdout(Stdio::null()).stderr(log_file).spawn().map_err(|e| {
        Error::Server(format!(
            "cannot run {}: {e} ({fix})",
            command.get_program().to_string_lossy()
        ))
    })
}

/// Why a child that stopped stopped: its exit status and the end of its log.
fn exited(child: &mut Child, what: &str, log: &Path) -> Option<Error> {
    let status = child.try_wait().ok()??;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(10).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Some(Error::Server(format!("{what} exited ({status}): {}", tail.join("\n"))))
}

/// The `fleet-server` binary, and with `mosquitto` Mosquitto before it (broker files first,
/// as in production: they create the fleet CA), each logging into `dir`.
async fn start_processes(
    dir: &Path,
    mqtt: SocketAddr,
    mosquitto: bool,
) -> Result<(String, ServerHandle), Error> {
    let bin = sibling_binary("fleet-server");
    let data = dir.join("server");
    let api_port = free_port()?;
    let mut server = Command::new(&bin);
    server.arg("--data").arg(&data).args(["--api-listen", &format!("127.0.0.1:{api_port}")]);
    server.args(["--allowed-registry", &test_registry()]);
    let broker = if mosquitto {
        let files = dir.join("broker");
        let made = Command::new(&bin)
            .arg("broker-files")
            .arg("--data")
            .arg(&data)
            .args(["--name", "127.0.0.1", "--out"])
            .arg(&files)
            .output()
            .map_err(|e| Error::Server(format!("cannot run {}: {e}", bin.display())))?;
        if !made.status.success() {
            return Err(Error::Server(format!(
                "fleet-server broker-files: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            )));
        }
        std::fs::write(files.join("acl"), MOSQUITTO_ACL).map_err(io("writing the broker's ACL"))?;
        let conf = MOSQUITTO_CONF
            .replace("/etc/mosquitto/fleet", &files.display().to_string())
            .replace("listener 8883", &format!("listener {} {}", mqtt.port(), mqtt.ip()))
            + &format!("persistence_location {}/\n", dir.display())
            // As root Mosquitto drops to user mosquitto, which cannot read these 0600 keys
            // (a device installation chowns the directory instead); otherwise it is ignored.
            + "user root\n";
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).map_err(io("writing mosquitto.conf"))?;
        let log = dir.join("mosquitto.log");
        let mut child = spawn(
            Command::new(mosquitto_binary()).arg("-c").arg(&conf_path),
            &log,
            "install it: apt-get install mosquitto, or tests/env/up",
        )?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(mqtt).is_err() {
            if let Some(e) = exited(&mut child, "mosquitto", &log) {
                return Err(e);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(Error::Server(format!("mosquitto not listening on {mqtt} after 10 s")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.args(["--broker", &format!("mqtts://{mqtt}")]).arg("--broker-files").arg(&files);
        Some(child)
    } else {
        server.args(["--mqtt-listen", &mqtt.to_string()]);
        None
    };
    let log = dir.join("server.log");
    server.env("FLEET_LOG", std::env::var("FLEET_LOG").unwrap_or_else(|_| "warn".into()));
    let mut child =
        spawn(&mut server, &log, "build it next to fleet-sim: cargo build --release --bins")?;
    let api = format!("http://127.0.0.1:{api_port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let client = ApiClient::new(&api, None);
        let healthy = move || client.call("GET", "/healthz", None).is_ok_and(|(s, _)| s == 200);
        let up = tokio::task::spawn_blocking(healthy).await.unwrap_or(false);
        if up {
            break;
        }
        let failed = exited(&mut child, "fleet-server", &log);
        if failed.is_some() || std::time::Instant::now() > deadline {
            let _ = child.kill();
            if let Some(mut m) = broker {
                let _ = m.kill();
            }
            return Err(failed.unwrap_or_else(|| Error::Server("not answering after 30 s".into())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((api, ServerHandle::Processes { server: child, mosquitto: broker }))
}

/// SIGTERM, up to 10 s to stop, then SIGKILL.
async fn terminate(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
    }
    for _ in 0..200 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
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
    let client = ApiClient::new(base, Some(token.to_owned()));
    let (m, u) = (method.to_owned(), format!("{}{path}", client.base()));
    let unreachable = move |reason: String| Error::Unreachable { method: m, url: u, reason };
    let (method, path) = (method.to_owned(), path.to_owned());
    let called =
        tokio::task::spawn_blocking(move || client.call(&method, &path, body.as_ref())).await;
    match called {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(ApiError::Unreachable { reason, .. })) => {
            Err(unreachable(format!("{reason} (is the server still running?)")))
        }
        Ok(Err(e)) => Err(unreachable(e.to_string())),
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

/// The agent configuration [`write_agent_config`] writes: test timings (short grace and
/// stability), locks in `data`, and link timings of a 5 s keep-alive and reconnects within
/// 2 s, so tests see a broker restart at once. `fleet-sim run` takes the link timings out
/// again: thousands of agents retrying every 2 s keep a busy broker busy (the agent's defaults
/// are a 30 s keep-alive and reconnects spread over up to 60 s).
pub fn test_agent_config(device: &str, broker: &str, key: &str, data: &Path) -> AgentConfig {
    // The embedded broker's login, where enrollment wrote one next to the key.
    let password = data.join("broker-password");
    let link = AgentLink {
        broker: broker.to_owned(),
        password_file: password.exists().then_some(password),
        server_keys: vec![key.to_owned()],
        keep_alive_secs: Some(5),
        backoff_initial_ms: Some(200),
        backoff_max_secs: Some(2),
        ..AgentLink::default()
    };
    let mut config = AgentConfig::new(device, data);
    config.link = Some(link);
    config.update = Some(AgentUpdate {
        stop_grace_secs: 1,
        stable_for_secs: 1,
        resync_secs: 30,
        disk_reserve_mb: 1,
    });
    config.locks = Some(AgentLocks { dir: data.join("locks"), socket: data.join("locks.sock") });
    config
}

/// [`write_agent_config`], with the error instead of a panic.
pub fn try_write_agent_config(
    dir: &Path,
    device: &str,
    broker: &str,
    key: &str,
    data: &Path,
) -> Result<PathBuf, Error> {
    write_config_file(dir, &test_agent_config(device, broker, key, data))
}

/// Writes `config` to `<dir>/config.toml`.
pub fn write_config_file(dir: &Path, config: &AgentConfig) -> Result<PathBuf, Error> {
    let path = dir.join("config.toml");
    let text = config
        .to_toml("written by fleet-sim")
        .map_err(|e| Error::Agent { device: config.device_id.clone(), reason: e.to_string() })?;
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}
