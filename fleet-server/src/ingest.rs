//! Receives what devices publish and records it. One loop: poll the MQTT connection, decode,
//! check the message against its topic, update the store.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{Message, Topic, TopicKind, MAX_MESSAGE_BYTES};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::devices::DeviceRecord;
use crate::store::Store;

/// The kinds of device message the registry listens to.
const SUBSCRIBED: [TopicKind; 2] = [TopicKind::Status, TopicKind::Report];

/// Connects to the broker and records device status and reports until the task is dropped.
/// `subscribed` fires once the first subscriptions are acknowledged, so callers can report
/// ready only when no device message can be missed.
pub async fn run(
    broker_host: String,
    broker_port: u16,
    store: Arc<dyn Store>,
    subscribed: tokio::sync::oneshot::Sender<()>,
) {
    let mut subscribed = Some(subscribed);
    // Each server replica needs its own client id, or replicas disconnect each other.
    let client_id = format!("fleet-server-{}", std::process::id());
    let mut options = MqttOptions::new(client_id, broker_host, broker_port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(MAX_MESSAGE_BYTES + 1024, MAX_MESSAGE_BYTES + 1024);
    let (client, mut events) = AsyncClient::new(options, 64);
    let mut backoff = Duration::from_millis(100);
    let mut pending_acks = SUBSCRIBED.len();
    let mut ever_connected = false;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                pending_acks = SUBSCRIBED.len();
                ever_connected = true;
                // Re-subscribe on every connection: a clean session forgets subscriptions.
                for kind in SUBSCRIBED {
                    if let Err(e) =
                        client.try_subscribe(kind.all_devices_filter(), QoS::AtLeastOnce)
                    {
                        tracing::error!(error = %e, "cannot queue subscription");
                    }
                }
                tracing::info!("connected to MQTT broker");
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                // One subscribe request per kind; the last acknowledgement completes the set.
                pending_acks = pending_acks.saturating_sub(1);
                if pending_acks == 0 {
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => handle(&*store, &p.topic, &p.payload),
            Ok(_) => {}
            Err(e) => {
                // Before the first connection the embedded broker may still be starting up.
                if ever_connected {
                    tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection lost");
                } else {
                    tracing::debug!(error = %e, retry_in = ?backoff, "MQTT broker not reachable yet");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Handles one publish. Bad input is logged with the topic and dropped; it never stops the loop.
fn handle(store: &dyn Store, topic: &str, payload: &[u8]) {
    let topic = match Topic::parse(topic) {
        Ok(t) => t,
        Err(e) => return tracing::warn!(error = %e, "dropping message on a foreign topic"),
    };
    let msg = match Message::decode(payload) {
        Ok(m) => m,
        Err(e) => return tracing::warn!(%topic, error = %e, "dropping undecodable message"),
    };
    if let Err(e) = msg.check_topic(&topic) {
        return tracing::warn!(%topic, error = %e, "dropping message that does not match its topic");
    }
    let previous = match store.device(&topic.device) {
        Ok(p) => p,
        Err(e) => return tracing::error!(%topic, error = %e, "cannot read device record"),
    };
    // Only enrolled, unrevoked devices are heard: on a broker without per-device
    // authentication this is what keeps an unknown or revoked client out of the registry.
    let refusal = previous.as_ref().map_or(Some("the device is not enrolled"), DeviceRecord::refusal);
    if let Some(reason) = refusal {
        return tracing::warn!(%topic, device = %topic.device, reason, "dropping message: {reason}");
    }
    if let Some(record) = DeviceRecord::observe(previous, &msg) {
        if let Err(e) = store.put_device(&record) {
            tracing::error!(%topic, error = %e, "cannot store device record");
        }
    }
}
