//! A whole fleet in one process: `fleet-server` on embedded defaults (its in-process MQTT
//! broker on a free loopback port, its store in a temporary directory) and any number of real
//! agents (`fleet_agent::daemon::run_with`) on the simulated container engine, each enrolled
//! through the API and connected over its own MQTT session. What runs is the product's code;
//! only the container engine is simulated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::Config;
use fleet_agent::runtime::sim::{ImageBehavior, SimRuntime};
use fleet_proto::{DeviceId, ImageRef};
use fleet_server::api::{EnrollRequest, EnrollResponse};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::free_port;

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

impl SimFleet {
    /// Starts the server on embedded defaults in a temporary directory.
    pub async fn start() -> SimFleet {
        let dir = tempfile::tempdir().unwrap();
        let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let opts = fleet_server::ServeOptions {
            data_dir: dir.path().join("server"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt_listen: mqtt,
            ..fleet_server::ServeOptions::default()
        };
        let (ready_tx, ready) = oneshot::channel();
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            fleet_server::serve(opts, shutdown, move |addr| {
                let _ = ready_tx.send(addr);
            })
            .await
            .unwrap();
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("fleet-server to start")
            .unwrap();
        let token = std::fs::read_to_string(dir.path().join("server/admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        SimFleet {
            dir,
            api: format!("http://{addr}"),
            token,
            mqtt,
            server_key: String::new(),
            agents: BTreeMap::new(),
            stop_server: Some(stop_server),
            server: Some(server),
        }
    }

    /// Calls the API with the admin token: (status, JSON body).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        api_call(&self.api, &self.token, method, path, body).await
    }

    /// Enrolls `id` with `labels` through the API.
    pub async fn enroll(&mut self, id: &str, labels: &[(&str, &str)]) {
        let device = DeviceId::new(id).unwrap();
        let (_, public_key, proof) = fleet_server::pki::new_device_key(&device).unwrap();
        let request = EnrollRequest {
            public_key,
            proof,
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            valid_days: None,
        };
        let (code, body) = self
            .api(
                "POST",
                &format!("/api/v1/devices/{id}/enroll"),
                Some(serde_json::to_value(request).unwrap()),
            )
            .await;
        assert_eq!(code, 201, "{body}");
        let enrolled: EnrollResponse = serde_json::from_value(body).unwrap();
        self.server_key.clone_from(&enrolled.server_keys[0]);
    }

    /// Starts the agent of an enrolled device; its engine can pull `images`.
    pub fn start_agent(&mut self, id: &str, images: &[(ImageRef, ImageBehavior)]) {
        let data = self.dir.path().join("agents").join(id);
        std::fs::create_dir_all(&data).unwrap();
        let config = write_agent_config(
            &data,
            id,
            &format!("mqtt://{}", self.mqtt),
            &self.server_key,
            &data,
        );
        let config = Config::load(&config, true).unwrap();
        let runtime = Arc::new(SimRuntime::new());
        for (image, behavior) in images {
            runtime.publish_image(image, *behavior, 1 << 20);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let rt = runtime.clone();
        let task = tokio::spawn(async move {
            fleet_agent::daemon::run_with(config, rt, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        self.agents.insert(id.to_owned(), SimAgent { runtime, stop: Some(stop), task });
    }

    /// Stops one agent; its device goes offline (the agent publishes its offline status as it
    /// leaves).
    pub async fn stop_agent(&mut self, id: &str) {
        if let Some(mut agent) = self.agents.remove(id) {
            let _ = agent.stop.take().map(|s| s.send(()));
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut agent.task).await;
        }
    }

    /// Stops every agent, then the server.
    pub async fn stop(mut self) {
        let ids: Vec<String> = self.agents.keys().cloned().collect();
        for id in ids {
            self.stop_agent(&id).await;
        }
        let _ = self.stop_server.take().map(|s| s.send(()));
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }

    /// The data directory of the server.
    pub fn server_data(&self) -> PathBuf {
        self.dir.path().join("server")
    }
}

/// One API call: (status, JSON body).
pub async fn api_call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{base}{path}");
    let (method, token) = (method.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || {
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
        let mut response = sent.unwrap();
        (response.status().as_u16(), response.body_mut().read_json().unwrap_or_default())
    })
    .await
    .unwrap()
}

/// Writes `<dir>/config.toml` for an agent of `device` on `broker`, trusting the server key
/// `key` (hex), its state in `data`, with test timings (short grace, stability and backoff).
/// Certificate paths stay relative to `dir`, as in an enrollment bundle.
pub fn write_agent_config(
    dir: &Path,
    device: &str,
    broker: &str,
    key: &str,
    data: &Path,
) -> PathBuf {
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
    .unwrap();
    config
}
