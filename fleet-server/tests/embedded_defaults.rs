//! The server on embedded defaults, for real: its in-process broker accepts a device's status,
//! the registry records it, the API serves it.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use fleet_proto::{samples, topic, Message, Presence, Status, TopicKind};
use fleet_server::devices::DeviceRecord;
use fleet_server::ServeOptions;
use rumqttc::{AsyncClient, MqttOptions, QoS};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_server(data: &std::path::Path) -> (SocketAddr, SocketAddr) {
    let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let opts = ServeOptions {
        data_dir: data.to_owned(),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        mqtt_listen: mqtt,
        device_broker: None,
        broker_files: None,
        external_broker: None,
        registries: Vec::new(),
        agent_repository: None,
        allowed_registries: Default::default(),
        ..ServeOptions::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        fleet_server::serve(opts, std::future::pending(), move |api| {
            let _ = tx.send(api);
        })
        .await
        .unwrap();
    });
    (rx.await.unwrap(), mqtt)
}

fn token(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned()
}

async fn devices(api: SocketAddr, token: String) -> Vec<DeviceRecord> {
    tokio::task::spawn_blocking(move || {
        let page: fleet_server::store::Page<DeviceRecord> =
            ureq::get(&format!("http://{api}/api/v1/devices"))
                .header("authorization", &format!("Bearer {token}"))
                .call()
                .unwrap()
                .body_mut()
                .read_json()
                .unwrap();
        page.items
    })
    .await
    .unwrap()
}

/// POSTs to the API; returns the status code and the JSON body.
async fn post(
    api: SocketAddr,
    token: String,
    path: String,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
        let mut response = agent
            .post(&format!("http://{api}{path}"))
            .header("authorization", &format!("Bearer {token}"))
            .send_json(body)
            .unwrap();
        (response.status().as_u16(), response.body_mut().read_json().unwrap_or_default())
    })
    .await
    .unwrap()
}

fn enroll_request(id: &str) -> serde_json::Value {
    let device = fleet_proto::DeviceId::new(id).unwrap();
    let (_key, public_key, proof) = fleet_api::enroll::new_device_key(&device).unwrap();
    serde_json::json!({ "public_key": public_key, "proof": proof, "labels": { "site": "depot" } })
}

async fn enroll(api: SocketAddr, token: &str, id: &str) -> (u16, serde_json::Value) {
    post(api, token.to_owned(), format!("/api/v1/devices/{id}/enroll"), enroll_request(id)).await
}

/// A client logged in to the embedded broker with the server's rights (it may publish under
/// any device's topics, as only the server could): these tests check what the server itself
/// drops, behind the broker's logins.
fn privileged_client(data: &std::path::Path, mqtt: SocketAddr, name: &str) -> AsyncClient {
    let logins = fleet_server::broker::BrokerLogins::open(data).unwrap();
    let server = fleet_server::pki::SERVER_IDENTITY;
    let mut opts =
        MqttOptions::new(format!("{server}-test-{name}"), mqtt.ip().to_string(), mqtt.port());
    opts.set_credentials(server, logins.password_for(server));
    let (client, mut events) = AsyncClient::new(opts, 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
}

/// Whether the embedded broker accepts a connection with these settings.
async fn connects(opts: MqttOptions) -> bool {
    let (_client, mut events) = AsyncClient::new(opts, 10);
    matches!(
        tokio::time::timeout(Duration::from_secs(10), events.poll()).await,
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_status_published_to_the_embedded_broker_shows_up_in_the_api() {
    let data = tempfile::tempdir().unwrap();
    let (api, mqtt) = start_server(data.path()).await;
    let token = token(data.path());
    let (code, enrolled) = enroll(api, &token, "robot-7").await;
    assert_eq!(code, 201, "{enrolled}");
    // The enrollment answer carries the device's login on the embedded broker.
    let password = enrolled["broker_password"].as_str().unwrap().to_owned();

    let mut opts = MqttOptions::new("robot-7", mqtt.ip().to_string(), mqtt.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_credentials("robot-7", password);
    let (client, mut events) = AsyncClient::new(opts, 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let status = Message::Status(Status { presence: Presence::Online, ..samples::status() });
    client
        .publish(
            topic(&samples::device(), TopicKind::Status),
            QoS::AtLeastOnce,
            true,
            status.encode(),
        )
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = devices(api, token.clone()).await;
        if let Some(d) = list.iter().find(|d| d.id == samples::device() && d.online) {
            assert_eq!(d.agent_version.as_deref(), Some("0.1.0"));
            break;
        }
        assert!(Instant::now() < deadline, "device never appeared; registry holds {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_lie_about_their_device_are_dropped() {
    let data = tempfile::tempdir().unwrap();
    let (api, mqtt) = start_server(data.path()).await;
    let token = token(data.path());
    for id in ["victim", "honest"] {
        assert_eq!(enroll(api, &token, id).await.0, 201);
    }
    let client = privileged_client(data.path(), mqtt, "liar");
    // robot-7's status on another device's topic: must not create or change either record.
    let other = fleet_proto::DeviceId::new("victim").unwrap();
    client
        .publish(
            topic(&other, TopicKind::Status),
            QoS::AtLeastOnce,
            true,
            Message::Status(samples::status()).encode(),
        )
        .await
        .unwrap();
    // Garbage on a valid topic must not stop the ingest loop either.
    client
        .publish(topic(&other, TopicKind::Report), QoS::AtLeastOnce, false, vec![1, 2, 3])
        .await
        .unwrap();
    // A proper message afterwards proves the loop is still alive.
    let honest = fleet_proto::DeviceId::new("honest").unwrap();
    let status = Message::Status(Status { device: honest.clone(), ..samples::status() });
    client
        .publish(topic(&honest, TopicKind::Status), QoS::AtLeastOnce, false, status.encode())
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = devices(api, token.clone()).await;
        if list.iter().any(|d| d.id == honest && d.online) {
            let victim = list.iter().find(|d| d.id == other).unwrap();
            assert!(
                !victim.online && victim.agent_version.is_none(),
                "forged message was recorded: {list:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "honest device never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_refuses_to_listen_beyond_loopback() {
    let data = tempfile::tempdir().unwrap();
    let opts = ServeOptions {
        data_dir: data.path().to_owned(),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        mqtt_listen: SocketAddr::from(([0, 0, 0, 0], free_port())),
        device_broker: None,
        broker_files: None,
        external_broker: None,
        registries: Vec::new(),
        agent_repository: None,
        allowed_registries: Default::default(),
        ..ServeOptions::default()
    };
    let err = fleet_server::serve(opts, std::future::pending(), |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("only listens on loopback"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unenrolled_and_revoked_devices_are_not_heard() {
    let data = tempfile::tempdir().unwrap();
    let (api, mqtt) = start_server(data.path()).await;
    let token = token(data.path());
    assert_eq!(enroll(api, &token, "revoked-1").await.0, 201);
    let (code, revoked) =
        post(api, token.clone(), "/api/v1/devices/revoked-1/revoke".into(), serde_json::json!({}))
            .await;
    assert_eq!(code, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_u64(), "{revoked}");
    let crl = std::fs::read_to_string(data.path().join("pki/crl.pem")).unwrap();
    assert!(crl.contains("BEGIN X509 CRL"));

    // The broker itself admits neither a client without a login nor a revoked device's.
    assert!(!connects(MqttOptions::new("anyone", mqtt.ip().to_string(), mqtt.port())).await);
    let logins = fleet_server::broker::BrokerLogins::open(data.path()).unwrap();
    let mut revoked_login = MqttOptions::new("revoked-1", mqtt.ip().to_string(), mqtt.port());
    revoked_login.set_credentials("revoked-1", logins.password_for("revoked-1"));
    assert!(!connects(revoked_login).await, "a revoked device logged in");
    // What the server drops if such messages come anyway (through a broker that let them).
    let client = privileged_client(data.path(), mqtt, "anyone");
    for id in ["stranger", "revoked-1"] {
        let device = fleet_proto::DeviceId::new(id).unwrap();
        let status = Message::Status(Status { device: device.clone(), ..samples::status() });
        client
            .publish(topic(&device, TopicKind::Status), QoS::AtLeastOnce, false, status.encode())
            .await
            .unwrap();
    }
    // An enrolled device published last proves the earlier messages were processed.
    assert_eq!(enroll(api, &token, "honest").await.0, 201);
    let honest = fleet_proto::DeviceId::new("honest").unwrap();
    let status = Message::Status(Status { device: honest.clone(), ..samples::status() });
    client
        .publish(topic(&honest, TopicKind::Status), QoS::AtLeastOnce, false, status.encode())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = devices(api, token.clone()).await;
        if list.iter().any(|d| d.id == honest && d.online) {
            assert!(list.iter().all(|d| d.id.as_str() != "stranger"), "{list:?}");
            let revoked = list.iter().find(|d| d.id.as_str() == "revoked-1").unwrap();
            assert!(!revoked.online, "a revoked device was heard: {revoked:?}");
            break;
        }
        assert!(Instant::now() < deadline, "honest device never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_refusals_name_the_problem() {
    let data = tempfile::tempdir().unwrap();
    let (api, _mqtt) = start_server(data.path()).await;
    let token = token(data.path());

    let (code, body) = enroll(api, "wrong-token", "robot-1").await;
    assert_eq!(code, 401, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("FLEET_TOKEN"), "{body}");

    assert_eq!(enroll(api, &token, "robot-1").await.0, 201);
    let (code, body) = enroll(api, &token, "robot-1").await;
    assert_eq!(code, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("revoke it first"), "{body}");

    for reserved in ["fleet-server", "fleet-server-2"] {
        let (code, body) = enroll(api, &token, reserved).await;
        assert_eq!(code, 400, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("reserved"), "{body}");
    }

    // A proof made for another id (someone replaying robot-2's request as robot-3).
    let (code, body) = post(
        api,
        token.clone(),
        "/api/v1/devices/robot-3/enroll".into(),
        enroll_request("robot-2"),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("proof does not verify"), "{body}");

    // After a revocation the id can be enrolled again, and the old serial stays revoked.
    let (code, _) =
        post(api, token.clone(), "/api/v1/devices/robot-1/revoke".into(), serde_json::json!({}))
            .await;
    assert_eq!(code, 200);
    let (code, body) = enroll(api, &token, "robot-1").await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["device"]["revoked_certificates"].as_array().unwrap().len(), 1, "{body}");
    assert!(body["certificate_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert_eq!(body["server_keys"].as_array().unwrap().len(), 1);
    assert!(body["broker"].as_str().unwrap().starts_with("mqtt://127.0.0.1:"));
}
