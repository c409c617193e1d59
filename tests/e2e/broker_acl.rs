//! The shipped Mosquitto configuration (`packaging/mosquitto/`) with certificates from a real
//! fleet server: `fleet-server broker-files` writes the broker's TLS files, `fleetctl device
//! enroll` writes device bundles, and then
//! * each device connects with its bundle over mutual TLS;
//! * a device can neither read nor write another device's topics, nor write its own `desired`;
//! * after `fleetctl device revoke`, the broker refuses the device (CRL) and the server drops
//!   its messages.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fleet_e2e::{bin, eventually, free_port};
use fleet_proto::{samples, topic, DeviceId, Message, Status, TopicKind};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fleet server plus a Mosquitto configured from packaging/mosquitto/.
struct Fleet {
    dir: tempfile::TempDir,
    api: String,
    mqtt_port: u16,
    _server: Killed,
    mosquitto: Option<Killed>,
}

impl Fleet {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn broker_dir(&self) -> PathBuf {
        self.dir.path().join("broker")
    }

    fn fleetctl(&self, args: &[&str]) -> std::process::Output {
        let token = std::fs::read_to_string(self.data().join("admin-token")).unwrap();
        Command::new(bin("fleetctl"))
            .args(["--server", &self.api])
            .env("FLEET_TOKEN", token.trim())
            .args(args)
            .output()
            .unwrap()
    }

    /// Enrolls `id`; returns its bundle directory.
    fn enroll(&self, id: &str) -> PathBuf {
        let out = self.dir.path().join(id);
        let done = self.fleetctl(&["device", "enroll", id, "--out", out.to_str().unwrap()]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        out
    }

    /// (Re)starts Mosquitto with the shipped configuration, pointed at this test's files.
    async fn start_mosquitto(&mut self) {
        self.mosquitto = None;
        let conf = std::fs::read_to_string(repo().join("packaging/mosquitto/fleet.conf"))
            .unwrap()
            .replace("/etc/mosquitto/fleet", self.broker_dir().to_str().unwrap())
            .replace("listener 8883", &format!("listener {} 127.0.0.1", self.mqtt_port))
            + &format!("persistence_location {}/\n", self.dir.path().display())
            // Started as root, Mosquitto would drop to user mosquitto, which cannot read this
            // test's 0600 keys; production chowns the directory to mosquitto instead.
            + "user root\n";
        std::fs::copy(repo().join("packaging/mosquitto/acl"), self.broker_dir().join("acl")).unwrap();
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

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

async fn start_fleet() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = dir.path().join("broker");
    // The production order: broker files first (this creates the fleet CA), then the server.
    let files = Command::new(bin("fleet-server"))
        .arg("broker-files")
        .arg("--data")
        .arg(&data)
        .args(["--name", "127.0.0.1", "--name", "localhost", "--out"])
        .arg(&broker)
        .output()
        .unwrap();
    assert!(files.status.success(), "{}", String::from_utf8_lossy(&files.stderr));
    let (api_port, mqtt_port, embedded) = (free_port(), free_port(), free_port());
    let server = Command::new(bin("fleet-server"))
        .arg("--data")
        .arg(&data)
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .args(["--mqtt-listen", &format!("127.0.0.1:{embedded}")])
        .args(["--device-broker", &format!("mqtts://127.0.0.1:{mqtt_port}")])
        .arg("--broker-files")
        .arg(&broker)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{api_port}");
    let health = format!("{api}/healthz");
    eventually("fleet-server to answer", Duration::from_secs(30), || {
        let health = health.clone();
        async move {
            tokio::task::spawn_blocking(move || ureq::get(&health).call().ok().map(|_| ()))
                .await
                .unwrap()
        }
    })
    .await;
    let mut fleet =
        Fleet { dir, api, mqtt_port, _server: Killed(server), mosquitto: None };
    fleet.start_mosquitto().await;
    fleet
}

/// An MQTT client with a certificate, key and the fleet CA from `dir`.
fn client(id: &str, port: u16, ca: &Path, cert: &Path, key: &Path) -> (AsyncClient, EventLoop) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .unwrap();
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config))));
    AsyncClient::new(opts, 32)
}

fn device_client(bundle: &Path, id: &str, port: u16) -> (AsyncClient, EventLoop) {
    client(id, port, &bundle.join("ca.pem"), &bundle.join("device.pem"), &bundle.join("device.key"))
}

/// What a connection saw: publishes (topic, payload) and whether it connected or failed.
#[derive(Debug)]
enum Seen {
    Connected,
    Publish(String, Vec<u8>),
    Failed(String),
}

/// Polls the event loop in a task until it fails once; forwards what it sees.
fn watch(mut events: EventLoop) -> mpsc::UnboundedReceiver<Seen> {
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

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("connection ended waiting for {what}"))
}

async fn connected(rx: &mut mpsc::UnboundedReceiver<Seen>, who: &str) {
    match next(rx, &format!("{who} to connect")).await {
        Seen::Connected => {}
        other => panic!("{who} did not connect: {other:?}"),
    }
}

/// Waits for a publish on `topic`; fails on anything else arriving first.
async fn receive(rx: &mut mpsc::UnboundedReceiver<Seen>, topic: &str) -> Vec<u8> {
    match next(rx, topic).await {
        Seen::Publish(t, payload) if t == topic => payload,
        other => panic!("expected a message on {topic}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_confined_to_their_own_topics_and_revoked_devices_are_shut_out() {
    let mut fleet = start_fleet().await;
    let port = fleet.mqtt_port;
    let (a, b) = (fleet.enroll("robot-a"), fleet.enroll("robot-b"));
    let (id_a, id_b) = (DeviceId::new("robot-a").unwrap(), DeviceId::new("robot-b").unwrap());
    let broker = fleet.broker_dir();

    // The server's identity publishes each device a retained desired state (any bytes do).
    let (server, events) = client(
        "fleet-server-test",
        port,
        &broker.join("ca.pem"),
        &broker.join("server.pem"),
        &broker.join("server.key"),
    );
    let mut server_rx = watch(events);
    connected(&mut server_rx, "the server identity").await;
    for id in [&id_a, &id_b] {
        let payload = format!("desired for {id}").into_bytes();
        server.publish(topic(id, TopicKind::Desired), QoS::AtLeastOnce, true, payload).await.unwrap();
    }
    server.subscribe("fleet/v1/+/report", QoS::AtLeastOnce).await.unwrap();

    let (dev_a, events) = device_client(&a, "robot-a", port);
    let mut a_rx = watch(events);
    connected(&mut a_rx, "robot-a with its bundle").await;

    // Reading: B's desired state, a wildcard over every device, then A's own. Only A's own
    // arrives; QoS 1 from one broker session is in order, so anything let through by the
    // earlier subscriptions would have arrived before it.
    dev_a.subscribe(topic(&id_b, TopicKind::Desired), QoS::AtLeastOnce).await.unwrap();
    dev_a.subscribe("fleet/v1/+/desired", QoS::AtLeastOnce).await.unwrap();
    dev_a.subscribe("fleet/v1/#", QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    dev_a.subscribe(topic(&id_a, TopicKind::Desired), QoS::AtLeastOnce).await.unwrap();
    let own = receive(&mut a_rx, &topic(&id_a, TopicKind::Desired)).await;
    assert_eq!(own, b"desired for robot-a");
    // Also nothing later (a denied subscription that was merely slow).
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(seen) = a_rx.try_recv() {
        if let Seen::Publish(t, p) = &seen {
            // With an overlapping wildcard Mosquitto may deliver A's own message twice.
            assert_eq!(t, &topic(&id_a, TopicKind::Desired), "robot-a read {t}: {p:?}");
        }
    }

    // Writing: a forged report as B, a desired state for itself; then an honest report.
    let forged = Message::Status(Status { device: id_b.clone(), ..samples::status() }).encode();
    dev_a.publish(topic(&id_b, TopicKind::Report), QoS::AtLeastOnce, false, forged).await.unwrap();
    dev_a.publish(topic(&id_a, TopicKind::Desired), QoS::AtLeastOnce, true, b"self-made".to_vec()).await.unwrap();
    dev_a.publish(topic(&id_a, TopicKind::Report), QoS::AtLeastOnce, false, b"honest".to_vec()).await.unwrap();
    let honest = receive(&mut server_rx, &topic(&id_a, TopicKind::Report)).await;
    assert_eq!(honest, b"honest", "the forged report must not reach the server");
    // The retained desired state is still the server's.
    let (check, events) = device_client(&a, "robot-a-check", port);
    let mut check_rx = watch(events);
    connected(&mut check_rx, "a second robot-a session").await;
    check.subscribe(topic(&id_a, TopicKind::Desired), QoS::AtLeastOnce).await.unwrap();
    assert_eq!(receive(&mut check_rx, &topic(&id_a, TopicKind::Desired)).await, b"desired for robot-a");

    // B connects before its revocation...
    let (_dev_b, events) = device_client(&b, "robot-b", port);
    let mut b_rx = watch(events);
    connected(&mut b_rx, "robot-b before revocation").await;
    drop(b_rx);

    // ...and not after it, once the broker reloads the list the server keeps current.
    let revoked = fleet.fleetctl(&["device", "revoke", "robot-b"]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    fleet.start_mosquitto().await;
    let (_dev_b, events) = device_client(&b, "robot-b", port);
    let mut b_rx = watch(events);
    match next(&mut b_rx, "robot-b to be refused").await {
        Seen::Failed(reason) => eprintln!("revoked robot-b refused: {reason}"),
        other => panic!("a revoked device connected: {other:?}"),
    }
    let (_dev_a, events) = device_client(&a, "robot-a", port);
    let mut a_rx = watch(events);
    connected(&mut a_rx, "robot-a after robot-b's revocation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_fleet_certificate_is_refused() {
    let fleet = start_fleet().await;
    // Another fleet's bundle: a certificate from a CA this broker does not trust.
    let other = start_fleet().await;
    let stranger = other.enroll("robot-a");
    // It trusts this broker (our CA) but presents the other fleet's certificate.
    let (_c, events) = client(
        "robot-a",
        fleet.mqtt_port,
        &fleet.broker_dir().join("ca.pem"),
        &stranger.join("device.pem"),
        &stranger.join("device.key"),
    );
    let mut rx = watch(events);
    match next(&mut rx, "the stranger to be refused").await {
        Seen::Failed(reason) => eprintln!("stranger refused: {reason}"),
        other => panic!("a certificate from another fleet connected: {other:?}"),
    }
}
