//! Receives what devices publish and records it. One loop: poll the MQTT connection, decode,
//! check the message against its topic, update the store (status, reports, events) or hand a
//! command result to whoever waits for it.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{EventKind, Message, Severity, Topic, TopicKind, UnixMillis};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};

use crate::commands::Waiters;
use crate::devices::DeviceRecord;
use crate::store::Store;

/// The kinds of device message the server listens to.
const SUBSCRIBED: [TopicKind; 4] =
    [TopicKind::Status, TopicKind::Report, TopicKind::Events, TopicKind::CmdResult];

/// Polls the server's MQTT connection and records what devices send until the task is dropped.
/// `subscribed` fires once the first subscriptions are acknowledged, so callers can report
/// ready only when no device message can be missed.
pub async fn run(
    client: AsyncClient,
    mut events: EventLoop,
    store: Arc<dyn Store>,
    waiters: Waiters,
    subscribed: tokio::sync::oneshot::Sender<()>,
) {
    let mut subscribed = Some(subscribed);
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
            Ok(Event::Incoming(Packet::Publish(p))) => {
                handle(&*store, &waiters, &p.topic, &p.payload)
            }
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
fn handle(store: &dyn Store, waiters: &Waiters, topic: &str, payload: &[u8]) {
    let topic = match Topic::parse(topic) {
        Ok(t) => t,
        Err(e) => return tracing::warn!(error = %e, "dropping message on a foreign topic"),
    };
    let msg = match Message::decode(payload) {
        Ok(m) => m,
        Err(e) => return tracing::warn!(%topic, error = %e, "dropping undecodable message"),
    };
    if let Err(e) = msg.check_topic(&topic) {
        tracing::warn!(%topic, error = %e, "dropping message that does not match its topic");
        // Recorded against the topic's device (an enrolled one only: unknown ids must not
        // grow the store), so its operator sees that something publishes under its name.
        if store.device(&topic.device).ok().flatten().is_some_and(|d| d.refusal().is_none()) {
            let event = fleet_proto::Event {
                device: topic.device.clone(),
                at: UnixMillis::now(),
                severity: Severity::Warning,
                kind: EventKind::Rejected,
                message: format!("the server dropped a message on {topic}: {e}"),
                fields: [("source".to_owned(), "server".to_owned())].into(),
            };
            if let Err(e) = store.add_event(&event) {
                tracing::error!(%topic, error = %e, "cannot store event");
            }
        }
        return;
    }
    let previous = match store.device(&topic.device) {
        Ok(p) => p,
        Err(e) => return tracing::error!(%topic, error = %e, "cannot read device record"),
    };
    // Only enrolled, unrevoked devices are heard: on a broker without per-device
    // authentication this is what keeps an unknown or revoked client out of the registry.
    let refusal =
        previous.as_ref().map_or(Some("the device is not enrolled"), DeviceRecord::refusal);
    if let Some(reason) = refusal {
        return tracing::warn!(%topic, device = %topic.device, reason, "dropping message: {reason}");
    }
    match &msg {
        Message::Event(event) => {
            tracing::info!(device = %event.device, kind = ?event.kind, severity = ?event.severity, fields = ?event.fields, "device event: {}", event.message);
            if let Err(e) = store.add_event(event) {
                tracing::error!(%topic, error = %e, "cannot store device event");
            }
        }
        Message::CommandResult(result) => waiters.deliver(result.clone()),
        _ => {}
    }
    if let Some(record) = DeviceRecord::observe(previous, &msg) {
        if let Err(e) = store.put_device(&record) {
            tracing::error!(%topic, error = %e, "cannot store device record");
        }
    }
}
