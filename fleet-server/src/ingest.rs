//! Receives what devices publish and records it. One loop: poll the MQTT connection, decode,
//! check the message against its topic, update the store (status, reports, events, telemetry)
//! or hand a command result to whoever waits for it. Telemetry acknowledgements go out in
//! groups, after one flush makes the group's points durable.
//!
//! When a device's sealing key appears or changes (first report of a new agent, a
//! re-installed device) and what it was sent is sealed (its release mounts secrets, or the
//! server has registry logins), the device gets a new generation in a durable change and its
//! state is sent again, sealed to the new key.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::telemetry::TelemetryAck;
use fleet_proto::{DeviceId, EventKind, Message, Severity, Topic, TopicKind, UnixMillis};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};

use crate::commands::Waiters;
use crate::devices::DeviceRecord;
use crate::store::{Store, StoreError};

/// The kinds of device message the server listens to.
const SUBSCRIBED: [TopicKind; 5] = [
    TopicKind::Status,
    TopicKind::Report,
    TopicKind::Events,
    TopicKind::CmdResult,
    TopicKind::Telemetry,
];

/// The largest inventory the server records, as stored (JSON). A robot with every kind of
/// hardware reports a few KiB; a report may be a MiB, and the record is read by every plan.
pub const MAX_INVENTORY_BYTES: usize = 64 << 10;

/// Whether `inventory` is small enough to record.
fn inventory_fits(inventory: &fleet_proto::Inventory) -> bool {
    serde_json::to_vec(inventory).is_ok_and(|json| json.len() <= MAX_INVENTORY_BYTES)
}

/// How long telemetry acks wait for more batches to share their flush.
const ACK_GROUP: Duration = Duration::from_millis(20);

/// Polls the server's MQTT connection and records what devices send until the task is dropped.
/// `subscribed` fires once the first subscriptions are acknowledged, so callers can report
/// ready only when no device message can be missed. `reported` is called after each report,
/// with the device when its desired state must be sent again (its sealing key changed);
/// `sealed_credentials`: the server sends registry logins (sealed to the key).
pub async fn run(
    client: AsyncClient,
    mut events: EventLoop,
    store: Arc<Store>,
    waiters: Waiters,
    subscribed: tokio::sync::oneshot::Sender<()>,
    sealed_credentials: bool,
    reported: impl Fn(Option<DeviceId>) + Send + 'static,
) {
    let mut subscribed = Some(subscribed);
    let mut backoff = Duration::from_millis(100);
    let mut pending_acks = SUBSCRIBED.len();
    let mut ever_connected = false;
    let mut acks: Vec<(DeviceId, TelemetryAck)> = vec![];
    let ack_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_timer);
    let mut budgets = crate::telemetry::ByteBudgets::new(
        crate::telemetry::DEVICE_BYTES_PER_SEC,
        crate::telemetry::DEVICE_BURST_BYTES,
    );
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            () = &mut ack_timer, if !acks.is_empty() => {
                send_acks(&client, &store, &mut acks);
                continue;
            }
        };
        match event {
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
                if let Some(device) = over_budget(&mut budgets, &p.topic, p.payload.len()) {
                    // Not stored and not acknowledged: the device sends it again later.
                    tracing::debug!(%device, bytes = p.payload.len(), "telemetry over the device's byte budget; left for a resend");
                    continue;
                }
                match handle(&store, &waiters, &p.topic, &p.payload) {
                    Heard::Report => reported(None),
                    Heard::Rekeyed(device) => match rekey(&store, &device, sealed_credentials) {
                        Ok(true) => reported(Some(device)),
                        Ok(false) => reported(None),
                        Err(e) => {
                            tracing::error!(%device, error = %e, "cannot re-target the device for its new sealing key");
                            reported(None);
                        }
                    },
                    Heard::Telemetry(device, ack) => {
                        if acks.is_empty() {
                            ack_timer.as_mut().reset(tokio::time::Instant::now() + ACK_GROUP);
                        }
                        acks.push((device, ack));
                    }
                    Heard::Other => {}
                }
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

/// The device of a telemetry publish that is over its byte budget, if it is.
fn over_budget(
    budgets: &mut crate::telemetry::ByteBudgets,
    topic: &str,
    bytes: usize,
) -> Option<DeviceId> {
    let topic = Topic::parse(topic).ok().filter(|t| t.kind == TopicKind::Telemetry)?;
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    (!budgets.take(&topic.device, bytes, std::time::Instant::now())).then_some(topic.device)
}

/// Makes the stored telemetry durable, then acknowledges it. If the flush fails nothing is
/// acknowledged: the devices keep the points and send them again.
fn send_acks(client: &AsyncClient, store: &Store, acks: &mut Vec<(DeviceId, TelemetryAck)>) {
    if let Err(e) = store.backend().flush() {
        tracing::error!(error = %e, batches = acks.len(), "cannot flush telemetry; not acknowledging it (devices resend)");
        acks.clear();
        return;
    }
    for (device, ack) in acks.drain(..) {
        let topic = fleet_proto::topic(&device, TopicKind::TelemetryAck);
        let payload = Message::TelemetryAck(ack).encode();
        if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
            tracing::warn!(%device, error = %e, "telemetry ack not queued; the device resends");
        }
    }
}

/// What a publish was, for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    /// A state report (rollouts may move).
    Report,
    /// A state report with a sealing key other than the one recorded.
    Rekeyed(DeviceId),
    /// Telemetry stored (in the store's write buffer): acknowledge after a flush.
    Telemetry(DeviceId, TelemetryAck),
    /// Anything else, or dropped.
    Other,
}

/// Handles one publish. Bad input is logged with the topic and dropped; it never stops the loop.
fn handle(store: &Store, waiters: &Waiters, topic: &str, payload: &[u8]) -> Heard {
    let topic = match Topic::parse(topic) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "dropping message on a foreign topic");
            return Heard::Other;
        }
    };
    let msg = match Message::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%topic, error = %e, "dropping undecodable message");
            return Heard::Other;
        }
    };
    if let Err(e) = msg.check_topic(&topic) {
        tracing::warn!(%topic, error = %e, "dropping message that does not match its topic");
        // Recorded against the topic's device (an enrolled one only: unknown ids must not
        // grow the store), so its operator sees that something publishes under its name.
        let event = fleet_proto::Event {
            device: topic.device.clone(),
            at: UnixMillis::now(),
            severity: Severity::Warning,
            kind: EventKind::Rejected,
            message: format!("the server dropped a message on {topic}: {e}"),
            fields: [("source".to_owned(), "server".to_owned())].into(),
        };
        let recorded = store.update(|tx| {
            if tx.device(&topic.device)?.is_some_and(|d| d.refusal().is_none()) {
                tx.add_event(&event)?;
            }
            Ok::<_, StoreError>(())
        });
        if let Err(e) = recorded {
            tracing::error!(%topic, error = %e, "cannot store event");
        }
        return Heard::Other;
    }
    if let Message::CommandResult(result) = &msg {
        waiters.deliver(result.clone());
    }
    let now = UnixMillis::now();
    let recorded = store.update(|tx| {
        let previous = tx.device(&topic.device)?;
        // Only enrolled, unrevoked devices are heard: on a broker without per-device
        // authentication this is what keeps an unknown or revoked client out of the registry.
        let refusal =
            previous.as_ref().map_or(Some("the device is not enrolled"), DeviceRecord::refusal);
        if let Some(reason) = refusal {
            tracing::warn!(%topic, device = %topic.device, reason, "dropping message: {reason}");
            return Ok(Heard::Other);
        }
        match &msg {
            Message::Event(event) => {
                tracing::info!(device = %event.device, kind = ?event.kind, severity = ?event.severity, fields = ?event.fields, "device event: {}", event.message);
                tx.add_event(event)?;
            }
            Message::Report(report) => {
                match &report.inventory {
                    Some(inventory) if !inventory_fits(inventory) => {
                        tracing::warn!(device = %topic.device, max = MAX_INVENTORY_BYTES, "reported inventory larger than any real host's; the recorded one is kept");
                    }
                    Some(inventory) => tx.put_inventory(&topic.device, inventory),
                    None => {}
                }
            }
            Message::Telemetry(batch) => {
                let ingested = crate::telemetry::ingest(tx, batch, now)?;
                if let Some(i) = ingested {
                    if i.duplicates > 0 {
                        tracing::debug!(device = %batch.device, duplicates = i.duplicates, "telemetry resend de-duplicated");
                    }
                    return Ok(Heard::Telemetry(batch.device.clone(), i.ack));
                }
                return Ok(Heard::Other);
            }
            _ => {}
        }
        let old_key = previous.as_ref().and_then(|p| p.seal_key.clone());
        let mut heard = if matches!(msg, Message::Report(_)) { Heard::Report } else { Heard::Other };
        if let Some(record) = DeviceRecord::observe_at(previous, &msg, now) {
            if heard == Heard::Report && record.seal_key != old_key {
                tracing::info!(device = %record.id, key = record.seal_key.as_deref().unwrap_or("none"), "device sealing key changed");
                heard = Heard::Rekeyed(record.id.clone());
            }
            tx.put_device(&record);
        }
        Ok::<_, StoreError>(heard)
    });
    recorded.unwrap_or_else(|e| {
        tracing::error!(%topic, error = %e, "cannot store what the device sent");
        Heard::Other
    })
}

/// Gives `device` a new generation (durably, before anything is sent) when what its desired
/// state holds is sealed to its key: its release mounts secrets, or registry logins go with
/// every state. Returns whether it did; the caller has the state sent again.
fn rekey(store: &Store, device: &DeviceId, sealed_credentials: bool) -> Result<bool, StoreError> {
    store.update_durable(|tx| {
        let Some(mut record) = tx.device(device)? else { return Ok(false) };
        if record.refusal().is_some() || record.desired_generation == 0 {
            return Ok(false);
        }
        let mounts = match &record.desired_release {
            Some(id) => tx
                .release(id.as_str())?
                .is_some_and(|r| !crate::secrets::mounted(&r.spec).is_empty()),
            None => false,
        };
        if !mounts && !sealed_credentials {
            return Ok(false);
        }
        // Never reused: the agent refuses anything not newer than what it accepted.
        // Saturating: `accepted_generation` is what the device reported.
        record.desired_generation =
            record.desired_generation.max(record.accepted_generation).saturating_add(1);
        tx.put_device(&record);
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_inventory_fits_and_a_padded_one_does_not() {
        let mut inventory = fleet_proto::samples::inventory();
        assert!(inventory_fits(&inventory));
        inventory.kernel = "x".repeat(MAX_INVENTORY_BYTES);
        assert!(!inventory_fits(&inventory));
    }
}
