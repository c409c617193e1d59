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

async fn devices(api: SocketAddr) -> Vec<DeviceRecord> {
    tokio::task::spawn_blocking(move || {
        ureq::get(&format!("http://{api}/api/v1/devices"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_status_published_to_the_embedded_broker_shows_up_in_the_api() {
    let data = tempfile::tempdir().unwrap();
    let (api, mqtt) = start_server(data.path()).await;

    let mut opts = MqttOptions::new("robot-7", mqtt.ip().to_string(), mqtt.port());
    opts.set_keep_alive(Duration::from_secs(5));
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
        let list = devices(api).await;
        if let Some(d) = list.iter().find(|d| d.id == samples::device()) {
            assert!(d.online);
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
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("intruder", mqtt.ip().to_string(), mqtt.port()), 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
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
        let list = devices(api).await;
        if list.iter().any(|d| d.id == honest) {
            assert!(list.iter().all(|d| d.id == honest), "forged message was recorded: {list:?}");
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
    };
    let err = fleet_server::serve(opts, std::future::pending(), |_| {}).await.unwrap_err();
    assert!(err.to_string().contains("only listens on loopback"), "{err}");
}
