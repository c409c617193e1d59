//! A whole fleet for end-to-end tests: `fleet-server` (its binary) using a real Mosquitto
//! configured with the shipped `packaging/mosquitto/` files, TLS files from `fleet-server
//! broker-files`, devices enrolled with `fleetctl device enroll`, and MQTT clients that
//! connect with those certificates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

use crate::{bin, eventually, free_port};

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes a device's containers whatever the test's outcome.
#[derive(Debug)]
pub struct Containers(pub String);

impl Drop for Containers {
    fn drop(&mut self) {
        crate::remove_device_objects(&self.0);
    }
}

/// Starts `fleet-agent run` on an enrollment bundle (its log on this process's stderr, or
/// discarded).
pub fn start_agent(bundle: &Path, log: bool) -> Killed {
    start_agent_with(bundle, if log { Stdio::inherit() } else { Stdio::null() })
}

/// [`start_agent`] with its log written to the file `log` (a test searches it).
pub fn start_agent_logging_to(bundle: &Path, log: &Path) -> Killed {
    start_agent_with(bundle, std::fs::File::create(log).unwrap().into())
}

fn start_agent_with(bundle: &Path, stderr: Stdio) -> Killed {
    Killed(
        Command::new(bin("fleet-agent"))
            .arg("--config")
            .arg(bundle.join("config.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    )
}

/// A fleet server plus a Mosquitto configured from packaging/mosquitto/.
#[derive(Debug)]
pub struct Fleet {
    /// Holds everything: data, broker files, bundles, logs.
    pub dir: tempfile::TempDir,
    /// The API's base URL.
    pub api: String,
    /// Mosquitto's TLS port.
    pub mqtt_port: u16,
    /// Held so the server is killed with the fleet.
    _server: Option<Killed>,
    mosquitto: Option<Killed>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // The processes go before their directory does (fields drop in declaration order, and
        // `dir` comes first): a server still writing into a deleted store logs errors.
        self._server.take();
        self.mosquitto.take();
    }
}

impl Fleet {
    /// The server's process id.
    pub fn server_pid(&self) -> Option<u32> {
        self._server.as_ref().map(|k| k.0.id())
    }

    /// Mosquitto's process id.
    pub fn mosquitto_pid(&self) -> Option<u32> {
        self.mosquitto.as_ref().map(|k| k.0.id())
    }

    /// The server's data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// What `broker-files` wrote.
    pub fn broker_dir(&self) -> PathBuf {
        self.dir.path().join("broker")
    }

    /// The certificate and key of [`TEST_SERVER_IDENTITY`], for a test client that acts as a
    /// server would without taking over the running server's session.
    pub fn server_identity_files(&self) -> (PathBuf, PathBuf) {
        let dir = self.broker_dir();
        (
            dir.join(format!("{TEST_SERVER_IDENTITY}.pem")),
            dir.join(format!("{TEST_SERVER_IDENTITY}.key")),
        )
    }

    /// Runs `fleetctl` against this server with its admin token.
    pub fn fleetctl(&self, args: &[&str]) -> std::process::Output {
        let token = std::fs::read_to_string(self.data().join("admin-token")).unwrap();
        Command::new(bin("fleetctl"))
            .args(["--server", &self.api])
            .env("FLEET_TOKEN", token.trim())
            .args(args)
            .output()
            .unwrap()
    }

    /// Enrolls `id`; returns its bundle directory. The agent's data directory is `data/`
    /// inside the bundle.
    pub fn enroll(&self, id: &str) -> PathBuf {
        let out = self.dir.path().join(id);
        let data = out.join("data");
        let done = self.fleetctl(&[
            "device",
            "enroll",
            id,
            "--out",
            out.to_str().unwrap(),
            "--agent-data-dir",
            data.to_str().unwrap(),
        ]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        out
    }

    /// Points device `id` at `spec` (a release's canonical JSON) through the API, asserting
    /// the server took it.
    pub async fn assign(&self, id: &str, spec: &serde_json::Value) {
        let (code, body) = self
            .api(
                "PUT",
                &format!("/api/v1/devices/{id}/desired"),
                Some(serde_json::json!({ "release": spec })),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }

    /// The server's API with its admin token: (status, JSON body).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let token =
            std::fs::read_to_string(self.data().join("admin-token")).unwrap().trim().to_owned();
        let client = fleet_api::client::ApiClient::new(&self.api, Some(token));
        let (method, path) = (method.to_owned(), path.to_owned());
        tokio::task::spawn_blocking(move || client.call(&method, &path, body.as_ref()).unwrap())
            .await
            .unwrap()
    }

    /// Stops Mosquitto (devices go offline; their messages wait on the devices).
    pub fn stop_mosquitto(&mut self) {
        self.mosquitto = None;
    }

    /// (Re)starts Mosquitto with the shipped configuration, pointed at this test's files.
    pub async fn start_mosquitto(&mut self) {
        self.mosquitto = None;
        let conf = std::fs::read_to_string(repo().join("packaging/mosquitto/fleet.conf"))
            .unwrap()
            .replace("/etc/mosquitto/fleet", self.broker_dir().to_str().unwrap())
            .replace("listener 8883", &format!("listener {} 127.0.0.1", self.mqtt_port))
            + &format!("persistence_location {}/\n", self.dir.path().display())
            // Started as root, Mosquitto would drop to user mosquitto, which cannot read this
            // test's 0600 keys; production chowns the directory to mosquitto instead.
            + "user root\n";
        let acl = std::fs::read_to_string(repo().join("packaging/mosquitto/acl")).unwrap()
            + &format!("\nuser {TEST_SERVER_IDENTITY}\ntopic readwrite fleet/v1/#\n");
        std::fs::write(self.broker_dir().join("acl"), acl).unwrap();
        let path = self.dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.mosquitto = Some(Killed(child));
        let port = self.mqtt_port;
        eventually("mosquitto to listen", Duration::from_secs(10), || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .await;
    }
}

/// The repository root.
/// Test pacing for an enrolled agent (short grace, stability and resync times, a tiny disk
/// reserve, locks inside its data directory); everything else stays the bundle as enrolled.
pub fn test_pacing(bundle: &Path) {
    std::fs::create_dir_all(bundle.join("config.d")).unwrap();
    std::fs::write(
        bundle.join("config.d/10-test.toml"),
        format!(
            "[update]\nstop_grace_secs = 1\nstable_for_secs = 1\nresync_secs = 5\ndisk_reserve_mb = 1\n[locks]\ndir = \"{d}/locks\"\nsocket = \"{d}/locks.sock\"\n[secrets]\ndir = \"{d}/secrets\"\n",
            d = bundle.join("data").display()
        ),
    )
    .unwrap();
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A second server identity, issued with the broker files and allowed what the server is:
/// test clients that read or forge traffic as a server would use it
/// ([`Fleet::server_identity_files`]).
pub const TEST_SERVER_IDENTITY: &str = "fleet-server-test";

/// Starts a fleet: broker files, the server using Mosquitto, Mosquitto.
pub async fn start_fleet() -> Fleet {
    start_fleet_with(false, None).await
}

/// [`start_fleet`]; with `log_to_file`, the server's log goes to `server.log` in the fleet's
/// directory instead of this process's stderr (a test searches it). `config` is the text of
/// a server configuration file, written as `server.toml` in the fleet's directory (relative
/// paths in it are relative to that directory).
pub async fn start_fleet_with(log_to_file: bool, config: Option<&str>) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = dir.path().join("broker");
    // The production order: broker files first (this creates the fleet CA), then the server.
    let files = Command::new(bin("fleet-server"))
        .arg("broker-files")
        .arg("--data")
        .arg(&data)
        .args(["--name", "127.0.0.1", "--name", "localhost"])
        // The identity test clients use to read and write as a server would: the server's own
        // would take over its session (the broker makes the identity the client id).
        .args(["--server-identity", TEST_SERVER_IDENTITY, "--out"])
        .arg(&broker)
        .output()
        .unwrap();
    assert!(files.status.success(), "{}", String::from_utf8_lossy(&files.stderr));
    let (api_port, mqtt_port) = (free_port(), free_port());
    let api = format!("http://127.0.0.1:{api_port}");
    let mut fleet = Fleet { dir, api, mqtt_port, _server: None, mosquitto: None };
    // The broker first: the server reports ready only once its subscriptions stand.
    fleet.start_mosquitto().await;
    let mut server = Command::new(bin("fleet-server"));
    // The test registry is on loopback, which the server reaches only when it is listed (this
    // replaces any `allowed_registries` of `config`).
    server.args(["--allowed-registry", &crate::TestEnv::load().registry]);
    if let Some(text) = config {
        let path = fleet.dir.path().join("server.toml");
        std::fs::write(&path, text).unwrap();
        server.arg("--config").arg(path);
    }
    let server = server
        .arg("--data")
        .arg(&data)
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .args(["--broker", &format!("mqtts://127.0.0.1:{mqtt_port}")])
        .arg("--broker-files")
        .arg(&broker)
        .stdout(Stdio::null())
        .stderr(if log_to_file {
            std::fs::File::create(fleet.dir.path().join("server.log")).unwrap().into()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .unwrap();
    fleet._server = Some(Killed(server));
    let health = format!("{}/healthz", fleet.api);
    let exited = std::sync::Mutex::new(fleet._server.take());
    eventually("fleet-server to answer", Duration::from_secs(30), || {
        // A server that stopped will never answer: say why at once.
        if let Some(status) = exited.lock().unwrap().as_mut().and_then(|k| k.0.try_wait().ok()?) {
            let log =
                std::fs::read_to_string(fleet.dir.path().join("server.log")).unwrap_or_default();
            panic!("fleet-server exited ({status}) before answering: {log}");
        }
        let health = health.clone();
        async move {
            tokio::task::spawn_blocking(move || ureq::get(&health).call().ok().map(|_| ()))
                .await
                .unwrap()
        }
    })
    .await;
    fleet._server = exited.into_inner().unwrap();
    fleet
}

/// An MQTT client with a certificate, key and the fleet CA from `dir`, 5 s keep-alive.
pub fn client(id: &str, port: u16, ca: &Path, cert: &Path, key: &Path) -> (AsyncClient, EventLoop) {
    client_with(id, port, ca, cert, key, Duration::from_secs(5))
}

/// [`client`] with another keep-alive and a persistent session, as agents use.
pub fn client_with(
    id: &str,
    port: u16,
    ca: &Path,
    cert: &Path,
    key: &Path,
    keep_alive: Duration,
) -> (AsyncClient, EventLoop) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(keep_alive);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config))));
    AsyncClient::new(opts, 32)
}

/// A client with a device's bundle.
pub fn device_client(bundle: &Path, id: &str, port: u16) -> (AsyncClient, EventLoop) {
    client(id, port, &bundle.join("ca.pem"), &bundle.join("device.pem"), &bundle.join("device.key"))
}

/// What a connection saw: publishes (topic, payload) and whether it connected or failed.
#[derive(Debug)]
pub enum Seen {
    /// A ConnAck.
    Connected,
    /// A publish: topic and payload.
    Publish(String, Vec<u8>),
    /// The connection failed (the first error ends the watch).
    Failed(String),
}

/// Polls the event loop in a task until it fails once; forwards what it sees.
pub fn watch(mut events: EventLoop) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = tx.send(Seen::Connected);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Seen::Publish(p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Seen::Failed(e.to_string()));
                    return;
                }
            }
        }
    });
    rx
}

/// The next thing seen, within 10 s.
pub async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("connection ended waiting for {what}"))
}

/// Asserts the next thing seen is a successful connection.
pub async fn connected(rx: &mut mpsc::UnboundedReceiver<Seen>, who: &str) {
    match next(rx, &format!("{who} to connect")).await {
        Seen::Connected => {}
        other => panic!("{who} did not connect: {other:?}"),
    }
}

/// Waits for a publish on `topic`; fails on anything else arriving first.
pub async fn receive(rx: &mut mpsc::UnboundedReceiver<Seen>, topic: &str) -> Vec<u8> {
    match next(rx, topic).await {
        Seen::Publish(t, payload) if t == topic => payload,
        other => panic!("expected a message on {topic}, got {other:?}"),
    }
}
