//! Fleet's protocol over a real Mosquitto: envelopes and topics survive the broker, retained
//! signed desired state reaches a device that subscribes later and verifies.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fleet_e2e::TestEnv;
use fleet_proto::{samples, topic, DesiredState, Message, Topic, TopicKind, TrustedKeys};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

fn client(env: &TestEnv, id: &str) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(id, env.mqtt_host.clone(), env.mqtt_port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(
        fleet_proto::MAX_MESSAGE_BYTES + 1024,
        fleet_proto::MAX_MESSAGE_BYTES + 1024,
    );
    AsyncClient::new(opts, 10)
}

/// Drives `events` until a publish arrives (subscribing after the ConnAck) and returns it.
async fn next_publish(
    client: &AsyncClient,
    events: &mut EventLoop,
    filter: &str,
) -> (String, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.poll().await.unwrap() {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap()
                }
                Event::Incoming(Packet::Publish(p)) => return (p.topic, p.payload.to_vec()),
                _ => {}
            }
        }
    })
    .await
    .expect("no message within 20 s")
}

/// Waits until the subscription on `filter` is acknowledged.
async fn subscribed(client: &AsyncClient, events: &mut EventLoop, filter: &str) {
    loop {
        match events.poll().await.unwrap() {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe(filter, QoS::AtLeastOnce).await.unwrap()
            }
            Event::Incoming(Packet::SubAck(_)) => return,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_report_crosses_mosquitto_and_matches_its_topic() {
    let env = TestEnv::load();
    let run = std::process::id();
    let device = fleet_proto::DeviceId::new(format!("e2e-report-{run}")).unwrap();
    let (server, mut server_events) = client(&env, &format!("e2e-server-{run}"));
    subscribed(&server, &mut server_events, &TopicKind::Report.all_devices_filter()).await;

    let (dev, mut dev_events) = client(&env, device.as_str());
    tokio::spawn(async move { while dev_events.poll().await.is_ok() {} });
    let report = fleet_proto::StateReport { device: device.clone(), ..samples::report() };
    dev.publish(
        topic(&device, TopicKind::Report),
        QoS::AtLeastOnce,
        false,
        Message::Report(report.clone()).encode(),
    )
    .await
    .unwrap();

    let (t, payload) = next_publish(&server, &mut server_events, "unused").await;
    let topic = Topic::parse(&t).unwrap();
    let msg = Message::decode(&payload).unwrap();
    msg.check_topic(&topic).unwrap();
    assert_eq!(msg, Message::Report(report));
}

#[tokio::test]
async fn retained_signed_desired_state_reaches_a_device_that_connects_later() {
    let env = TestEnv::load();
    let run = std::process::id();
    let device = fleet_proto::DeviceId::new(format!("e2e-desired-{run}")).unwrap();
    let key = samples::server_key();
    let desired = DesiredState { device: device.clone(), ..samples::desired() };
    let desired_topic = topic(&device, TopicKind::Desired);

    let (server, mut server_events) = client(&env, &format!("e2e-server-d-{run}"));
    let payload = Message::Desired(key.sign(&desired)).encode();
    server.publish(desired_topic.clone(), QoS::AtLeastOnce, true, payload).await.unwrap();
    // Drive the server's connection until the broker acknowledged the retained publish.
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = server_events.poll().await.unwrap() {
            break;
        }
    }

    let (dev, mut dev_events) = client(&env, device.as_str());
    let (t, bytes) = next_publish(&dev, &mut dev_events, &desired_topic).await;
    assert_eq!(t, desired_topic);
    let Message::Desired(signed) = Message::decode(&bytes).unwrap() else {
        panic!("not a desired state")
    };
    let trusted = TrustedKeys::new([key.public()]);
    assert_eq!(signed.open::<DesiredState>(&trusted).unwrap(), desired);

    // Clear the retained message so reruns start clean.
    server.publish(desired_topic, QoS::AtLeastOnce, true, Vec::new()).await.unwrap();
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = server_events.poll().await.unwrap() {
            break;
        }
    }
}
