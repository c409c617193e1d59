//! The shipped Mosquitto configuration (`packaging/mosquitto/`) with certificates from a real
//! fleet server: `fleet-server broker-files` writes the broker's TLS files, `fleetctl device
//! enroll` writes device bundles, and then
//! * each device connects with its bundle over mutual TLS;
//! * a device can neither read nor write another device's topics, nor write its own `desired`;
//! * after `fleetctl device revoke`, the broker refuses the device (CRL) and the server drops
//!   its messages.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleet_e2e::fleet::{client, connected, device_client, next, receive, start_fleet, watch, Seen};
use fleet_proto::{samples, topic, DeviceId, Message, Status, TopicKind};
use rumqttc::QoS;

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
        &fleet.server_identity_files().0,
        &fleet.server_identity_files().1,
    );
    let mut server_rx = watch(events);
    connected(&mut server_rx, "the server identity").await;
    for id in [&id_a, &id_b] {
        let payload = format!("desired for {id}").into_bytes();
        server
            .publish(topic(id, TopicKind::Desired), QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
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
    dev_a
        .publish(topic(&id_a, TopicKind::Desired), QoS::AtLeastOnce, true, b"self-made".to_vec())
        .await
        .unwrap();
    dev_a
        .publish(topic(&id_a, TopicKind::Report), QoS::AtLeastOnce, false, b"honest".to_vec())
        .await
        .unwrap();
    let honest = receive(&mut server_rx, &topic(&id_a, TopicKind::Report)).await;
    assert_eq!(honest, b"honest", "the forged report must not reach the server");
    // The retained desired state is still the server's.
    let (check, events) = device_client(&a, "robot-a-check", port);
    let mut check_rx = watch(events);
    connected(&mut check_rx, "a second robot-a session").await;
    check.subscribe(topic(&id_a, TopicKind::Desired), QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        receive(&mut check_rx, &topic(&id_a, TopicKind::Desired)).await,
        b"desired for robot-a"
    );

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

/// The broker takes a client's id from its certificate (`use_username_as_clientid`), so a
/// device that connects under another device's client id, or the server's, takes over nobody's
/// session: it is itself, and only its own earlier session is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_take_over_another_devices_or_the_servers_session() {
    let fleet = start_fleet().await;
    let port = fleet.mqtt_port;
    let (a, b) = (fleet.enroll("robot-a"), fleet.enroll("robot-b"));
    let (_dev_a, events) = device_client(&a, "robot-a", port);
    let mut a_rx = watch(events);
    connected(&mut a_rx, "robot-a").await;
    let mut thieves = Vec::new();
    for stolen in ["robot-a", "fleet-server"] {
        let (thief, events) = device_client(&b, stolen, port);
        let mut rx = watch(events);
        connected(&mut rx, &format!("robot-b under the client id {stolen}")).await;
        thieves.push((thief, rx));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(seen) = a_rx.try_recv() {
        assert!(!matches!(seen, Seen::Failed(_)), "robot-a was knocked off: {seen:?}");
    }
    let log = std::fs::read_to_string(fleet.dir.path().join("mosquitto.log")).unwrap();
    for victim in ["robot-a", "fleet-server"] {
        let taken = format!("Client {victim} already connected, closing old connection");
        assert!(!log.contains(&taken), "{taken}:\n{log}");
    }
    // The second robot-b connection replaced the first: both were robot-b.
    assert!(log.contains("Client robot-b already connected, closing old connection"), "{log}");
    // The server still answers through its session: robot-a's enrollment shows it online.
    let online = fleet.fleetctl(&["--json", "device", "show", "robot-a"]);
    assert!(online.status.success(), "{online:?}");
}
