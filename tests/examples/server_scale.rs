//! The fleet server under N connected devices: its RSS and CPU idle and during a rollout, how
//! fast it pushes a wave to every device, and how fast it takes state reports.
//!
//!     cargo build --release --bins
//!     cargo run --release -p fleet-e2e --example server_scale -- 1000 [embedded|mosquitto]
//!     cargo run --release -p fleet-e2e --example server_scale -- 10000 mosquitto
//!
//! The server is the real `fleet-server` binary (target/release/fleet-server), measured from
//! /proc, either on its embedded broker (plain MQTT on loopback, the broker's memory inside the
//! server's) or on Mosquitto with the shipped mutual-TLS configuration (the production path:
//! every device connects with its own certificate; Mosquitto measured apart). The devices are
//! protocol-level simulations in this process, one MQTT session each: they publish their
//! retained status, verify each signed desired state against the server's key exactly as the
//! agent does, and report it applied. (The fleet simulator of the demo issue runs the real agent
//! logic; here the server is what is measured, so the devices are as cheap as they can be.)
//!
//! "Pushed" is the rollout's wave 1 (all N devices) from the API call to the last device
//! receiving its desired state; "healthy" until the server has judged every device healthy.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_e2e::free_port;
use fleet_e2e::simfleet::api_call;
use fleet_proto::report::{InForce, ReleaseSource, UpdateOutcome, UpdateResult, UpdateStatus};
use fleet_proto::{
    topic, DesiredState, DeviceId, Message, Presence, StateReport, Status, TopicKind, TrustedKey,
    TrustedKeys, UnixMillis,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

/// The server under test, and how devices reach its broker.
struct Server {
    api: String,
    token: String,
    pid: u32,
    /// Mosquitto's pid, when it is the broker.
    broker_pid: Option<u32>,
    broker: Broker,
    /// Where device certificates are written (Mosquitto mode).
    dir: PathBuf,
    _hold: Hold,
}

enum Broker {
    /// The embedded broker: plain MQTT on loopback.
    Embedded(SocketAddr),
    /// Mosquitto with the shipped configuration: mutual TLS on this port.
    Mosquitto(u16),
}

/// What keeps the server (and its files) alive until the measurement ends.
#[allow(dead_code)] // held, never read
enum Hold {
    Child(Child, tempfile::TempDir),
    Fleet(Box<fleet_e2e::fleet::Fleet>),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Hold::Child(child, _) = &mut self._hold {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (RSS in KiB, CPU ticks) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, ticks)
}

/// CPU of `pid` over `window`, in percent of one core (100 ticks a second on Linux).
async fn cpu_over(pid: u32, window: Duration) -> f64 {
    let (_, a) = usage(pid);
    tokio::time::sleep(window).await;
    let (_, b) = usage(pid);
    (b - a) as f64 / window.as_secs_f64()
}

async fn start_embedded() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let bin = fleet_e2e::bin("fleet-server");
    let (api_port, mqtt_port) = (free_port(), free_port());
    let child = Command::new(&bin)
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
        .env("FLEET_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release --bins)", bin.display()));
    let api = format!("http://127.0.0.1:{api_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("{api}/healthz")).call().is_err() {
        assert!(Instant::now() < deadline, "fleet-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token =
        std::fs::read_to_string(dir.path().join("data/admin-token")).unwrap().trim().to_owned();
    Server {
        api,
        token,
        pid: child.id(),
        broker_pid: None,
        broker: Broker::Embedded(SocketAddr::from(([127, 0, 0, 1], mqtt_port))),
        dir: dir.path().to_owned(),
        _hold: Hold::Child(child, dir),
    }
}

async fn start_mosquitto() -> Server {
    let fleet = fleet_e2e::fleet::start_fleet().await;
    let token =
        std::fs::read_to_string(fleet.data().join("admin-token")).unwrap().trim().to_owned();
    Server {
        api: fleet.api.clone(),
        token,
        pid: fleet.server_pid().unwrap(),
        broker_pid: fleet.mosquitto_pid(),
        broker: Broker::Mosquitto(fleet.mqtt_port),
        dir: fleet.dir.path().to_owned(),
        _hold: Hold::Fleet(Box::new(fleet)),
    }
}

/// Enrolls `n` devices, 8 requests at a time; returns the server's signing key.
fn enroll_all(server: &Server, n: usize) -> TrustedKey {
    let next = Arc::new(AtomicUsize::new(0));
    let key = Arc::new(std::sync::Mutex::new(None));
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (next, key) = (next.clone(), key.clone());
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let id = DeviceId::new(format!("sim-{i:05}")).unwrap();
                let (device_key, public_key, proof) = fleet_api::enroll::new_device_key(&id).unwrap();
                let body = json!({ "public_key": public_key, "proof": proof, "labels": { "fleet": "scale" } });
                let mut answer = ureq::post(&format!("{}/api/v1/devices/{id}/enroll", server.api))
                    .header("authorization", &format!("Bearer {}", server.token))
                    .send_json(body)
                    .unwrap();
                let v: serde_json::Value = answer.body_mut().read_json().unwrap();
                let dir = server.dir.join("devices").join(id.as_str());
                if let Some(password) = v["broker_password"].as_str() {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(dir.join("broker-password"), password).unwrap();
                }
                if matches!(server.broker, Broker::Mosquitto(_)) {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(dir.join("device.pem"), v["certificate_pem"].as_str().unwrap()).unwrap();
                    std::fs::write(dir.join("device.key"), device_key.serialize_pem()).unwrap();
                    std::fs::write(dir.join("ca.pem"), v["ca_pem"].as_str().unwrap()).unwrap();
                }
                let mut key = key.lock().unwrap();
                if key.is_none() {
                    *key = Some(TrustedKey::from_hex(v["server_keys"][0].as_str().unwrap()).unwrap());
                }
            });
        }
    });
    let key = key.lock().unwrap().take().unwrap();
    key
}

/// One simulated device: online status, then a report for every desired state it verifies.
fn spawn_device(
    id: DeviceId,
    server: &Server,
    trusted: TrustedKeys,
    received: Arc<AtomicUsize>,
    connected: Arc<AtomicUsize>,
) -> AsyncClient {
    let (client, mut events) = match &server.broker {
        Broker::Embedded(addr) => {
            let mut opts = MqttOptions::new(id.as_str(), addr.ip().to_string(), addr.port());
            // The embedded broker logs devices in with the password enrollment gave them.
            let password = server.dir.join("devices").join(id.as_str()).join("broker-password");
            opts.set_credentials(id.as_str(), std::fs::read_to_string(password).unwrap());
            opts.set_keep_alive(Duration::from_secs(60));
            opts.set_max_packet_size(256 << 10, 256 << 10);
            opts.set_clean_session(false);
            AsyncClient::new(opts, 16)
        }
        Broker::Mosquitto(port) => {
            let dir = server.dir.join("devices").join(id.as_str());
            fleet_e2e::fleet::client_with(
                id.as_str(),
                *port,
                &dir.join("ca.pem"),
                &dir.join("device.pem"),
                &dir.join("device.key"),
                Duration::from_secs(60),
            )
        }
    };
    let c = client.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    let _ = c.subscribe(topic(&id, TopicKind::Desired), QoS::AtLeastOnce).await;
                    let status = Status {
                        device: id.clone(),
                        presence: Presence::Online,
                        agent_version: "sim".into(),
                        since: UnixMillis::now(),
                    };
                    let _ = c
                        .publish(
                            topic(&id, TopicKind::Status),
                            QoS::AtLeastOnce,
                            true,
                            Message::Status(status).encode(),
                        )
                        .await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(Message::Desired(signed)) = Message::decode(&p.payload) else {
                        continue;
                    };
                    let Ok(desired) = signed.open::<DesiredState>(&trusted) else { continue };
                    if desired.device != id || desired.generation <= accepted {
                        continue;
                    }
                    accepted = desired.generation;
                    received.fetch_add(1, Ordering::Relaxed);
                    let report = applied(&id, &desired);
                    let _ = c
                        .publish(
                            topic(&id, TopicKind::Report),
                            QoS::AtLeastOnce,
                            false,
                            Message::Report(report).encode(),
                        )
                        .await;
                }
                Ok(_) => {}
                Err(e) => {
                    if std::env::var_os("SCALE_DEBUG").is_some() {
                        eprintln!("{id}: {e}");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    client
}

fn applied(id: &DeviceId, desired: &DesiredState) -> StateReport {
    StateReport {
        device: id.clone(),
        reported_at: UnixMillis::now(),
        accepted_generation: desired.generation,
        in_force: desired.release.as_ref().map(|r| InForce {
            release: r.id.clone(),
            source: ReleaseSource::Server { generation: desired.generation },
        }),
        services: Vec::new(),
        update: UpdateStatus {
            last_outcome: Some(UpdateOutcome {
                generation: desired.generation,
                finished_at: UnixMillis::now(),
                result: UpdateResult::Applied,
            }),
            ..UpdateStatus::default()
        },
        inventory: None,
        seal_key: None,
        agent: None,
        seal_key_proof: None,
    }
}

async fn online(server: &Server) -> usize {
    let mut n = 0;
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/devices?limit=1000&after={a}"),
            None => "/api/v1/devices?limit=1000".to_owned(),
        };
        let (_, page) = api_call(&server.api, &server.token, "GET", &path, None).await;
        n += page["items"].as_array().unwrap().iter().filter(|d| d["online"] == true).count();
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return n,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mode = std::env::args().nth(2).unwrap_or_else(|| "embedded".to_owned());
    let server = match mode.as_str() {
        "embedded" => start_embedded().await,
        "mosquitto" => start_mosquitto().await,
        other => panic!("broker {other:?}: expected embedded or mosquitto"),
    };
    let pid = server.pid;
    let (rss0, _) = usage(pid);
    let t = Instant::now();
    let key = tokio::task::block_in_place(|| enroll_all(&server, n));
    let enroll_s = t.elapsed().as_secs_f64();
    let trusted = TrustedKeys::new([key]);
    let received = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let clients: Vec<AsyncClient> = (0..n)
        .map(|i| {
            spawn_device(
                DeviceId::new(format!("sim-{i:05}")).unwrap(),
                &server,
                trusted.clone(),
                received.clone(),
                connected.clone(),
            )
        })
        .collect();
    loop {
        let up = online(&server).await;
        if up >= n {
            break;
        }
        if std::env::var_os("SCALE_DEBUG").is_some() && t.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(server.dir.join("mosquitto.log")).unwrap_or_default();
            let log = &log[log.len().saturating_sub(3000)..];
            panic!(
                "{up} online, {} connected; mosquitto log:\n{log}",
                connected.load(Ordering::Relaxed)
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "devices did not all come online: {up} online, {} connected",
            connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let connect_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let broker_idle = server.broker_pid.map(usage);
    let idle_cpu = cpu_over(pid, Duration::from_secs(20)).await;
    let (idle_rss, _) = usage(pid);
    let broker_idle_cpu = server.broker_pid.map(|b| {
        let (rss, ticks) = usage(b);
        (rss, (ticks - broker_idle.map_or(0, |u| u.1)) as f64 / 20.0)
    });

    // A release and one wave to every device.
    let spec = json!({
        "id": "scale@1", "app": "scale", "version": "1",
        "services": [serde_json::to_value(fleet_proto::ServiceSpec::new(
            fleet_proto::ServiceName::new("web").unwrap(),
            fleet_proto::ImageRef::parse(&format!("registry.example/scale@sha256:{}", "a".repeat(64))).unwrap(),
        )).unwrap()]
    });
    let (code, body) = api_call(
        &server.api,
        &server.token,
        "POST",
        "/api/v1/releases",
        Some(json!({ "app": "scale", "version": "1", "spec": spec })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (_, t0_ticks) = usage(pid);
    let t0 = Instant::now();
    let (code, body) = api_call(
        &server.api,
        &server.token,
        "POST",
        "/api/v1/rollouts",
        Some(
            json!({ "release": "scale@1", "target": "fleet=scale", "waves": "100%", "bake": "0s" }),
        ),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let created_s = t0.elapsed().as_secs_f64();
    let id = body["id"].as_u64().unwrap();
    let mut peak_rss = 0;
    let mut pushed_s = None;
    let healthy_s = loop {
        peak_rss = peak_rss.max(usage(pid).0);
        if pushed_s.is_none() && received.load(Ordering::Relaxed) >= n {
            pushed_s = Some(t0.elapsed().as_secs_f64());
        }
        let (_, view) =
            api_call(&server.api, &server.token, "GET", &format!("/api/v1/rollouts/{id}"), None)
                .await;
        if view["status"]["waves"][0]["counts"]["healthy"].as_u64() == Some(n as u64) {
            break t0.elapsed().as_secs_f64();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "rollout did not finish: {}",
            view["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pushed_s = pushed_s.unwrap_or(healthy_s);
    let (_, t1_ticks) = usage(pid);
    let wave_cpu_s = (t1_ticks - t0_ticks) as f64 / 100.0;

    // State reports: every device sends 5 more, as fast as it can.
    let reports = 5;
    let (_, r0) = usage(pid);
    let t = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        let id = DeviceId::new(format!("sim-{i:05}")).unwrap();
        for _ in 0..reports {
            let mut r = applied(
                &id,
                &DesiredState {
                    device: id.clone(),
                    generation: 1,
                    release: None,
                    pin: None,
                    issued_at: UnixMillis::now(),
                    registry_credentials: vec![],
                    secrets: vec![],
                    sealed_registry_credentials: vec![],
                    agent: None,
                },
            );
            r.accepted_generation = 0;
            let _ = c
                .publish(
                    topic(&id, TopicKind::Report),
                    QoS::AtLeastOnce,
                    false,
                    Message::Report(r).encode(),
                )
                .await;
        }
    }
    // Done when the last device's record shows its last report (reports of one device arrive
    // in order).
    let last = DeviceId::new(format!("sim-{:05}", n - 1)).unwrap();
    loop {
        let (_, d) =
            api_call(&server.api, &server.token, "GET", &format!("/api/v1/devices/{last}"), None)
                .await;
        if d["accepted_generation"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report_s = t.elapsed().as_secs_f64();
    let (_, r1) = usage(pid);

    let mut table = BTreeMap::new();
    table.insert("devices", format!("{n} on {mode}"));
    if let Some((rss, cpu)) = broker_idle_cpu {
        table.insert(
            "mosquitto idle (RSS, CPU)",
            format!("{:.1} MiB, {cpu:.2} % of a core", rss as f64 / 1024.0),
        );
    }
    table.insert("enroll", format!("{enroll_s:.1} s ({:.0}/s)", n as f64 / enroll_s));
    table.insert("all online after connect", format!("{connect_s:.1} s"));
    table.insert("server RSS before devices", format!("{:.1} MiB", rss0 as f64 / 1024.0));
    table.insert("server RSS idle", format!("{:.1} MiB", idle_rss as f64 / 1024.0));
    table.insert("server CPU idle", format!("{idle_cpu:.2} % of a core"));
    table.insert("rollout created (API answer, wave 1 targeted)", format!("{created_s:.2} s"));
    table.insert(
        "wave 1 pushed to every device",
        format!("{pushed_s:.2} s = {:.0} devices/min", n as f64 / pushed_s * 60.0),
    );
    table.insert("wave 1 healthy (server judged every device)", format!("{healthy_s:.2} s"));
    table.insert("server CPU during the wave", format!("{wave_cpu_s:.2} s"));
    table.insert("server RSS peak during the wave", format!("{:.1} MiB", peak_rss as f64 / 1024.0));
    table.insert(
        "state reports processed",
        format!(
            "{} in {report_s:.2} s = {:.0}/s, {:.0} µs CPU each",
            n * reports,
            (n * reports) as f64 / report_s,
            (r1 - r0) as f64 * 10_000.0 / (n * reports) as f64
        ),
    );
    for (k, v) in &table {
        println!("{k:<48} {v}");
    }
    drop(clients);
}
