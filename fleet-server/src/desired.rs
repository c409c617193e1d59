//! Desired state: deciding what each device should run (inside a store change) and sending it
//! (after the change is on disk).
//!
//! A device runs its pin's release if it is pinned, otherwise its assigned release (set by
//! rollouts and by direct assignment). Whenever that changes, [`retarget`] gives the device a
//! new generation in the same store change; [`Publisher::send`] then signs and publishes the
//! retained desired state. The generation is on disk before anything is sent (the change is
//! durable), so a power cut can never make the server reuse one — an agent refuses a state
//! whose generation is not newer than the last it accepted.
//!
//! A state that could not be published (broker down) is not lost: the device's record says
//! what it should run, and [`Publisher::republish_unconfirmed`] sends it again at start and
//! whenever the driver finds devices behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{
    topic, DesiredState, DeviceId, Message, Pin, RegistryCredential, ReleaseSpec, TopicKind,
    UnixMillis,
};
use rumqttc::{AsyncClient, QoS};

use crate::devices::DeviceRecord;
use crate::pki::Pki;
use crate::store::{Store, StoreError, Tx};

/// A desired state decided in a store change, to be sent once it is on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The device.
    pub device: DeviceId,
    /// Its new generation.
    pub generation: u64,
    /// The release to run (`None`: none).
    pub release: Option<ReleaseSpec>,
    /// The pin that holds it there, if any.
    pub pin: Option<Pin>,
}

/// Why a desired state cannot be decided.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The wanted release is not in the store.
    #[error("release {release} is not known to the server (`fleetctl release ls`)")]
    UnknownRelease {
        /// The release.
        release: String,
    },
    /// The stored release does not verify.
    #[error(transparent)]
    Integrity(#[from] crate::releases::ReleaseIntegrityError),
}

/// Stored releases, verified once per change (a rollout targets thousands of devices with one
/// release: its signature is checked once, not thousands of times).
#[derive(Debug, Default)]
pub struct Releases {
    verified: HashMap<String, ReleaseSpec>,
}

impl Releases {
    /// The release `id` from the store, verified.
    pub fn get(&mut self, tx: &Tx<'_>, pki: &Pki, id: &str) -> Result<ReleaseSpec, DesiredError> {
        if let Some(spec) = self.verified.get(id) {
            return Ok(spec.clone());
        }
        let stored = tx
            .release(id)?
            .ok_or_else(|| DesiredError::UnknownRelease { release: id.to_owned() })?;
        let spec = stored.verify(&pki.trusted_keys())?.clone();
        self.verified.insert(id.to_owned(), spec.clone());
        Ok(spec)
    }
}

/// Brings `record`'s desired state in line with what the server wants at `now`. With `force`,
/// a new generation is issued even when the release is unchanged (a rollout wants the
/// device's verdict on a generation of its own). Updates `record` (the caller writes it) and
/// returns what to send, if anything.
pub fn retarget(
    tx: &Tx<'_>,
    pki: &Pki,
    releases: &mut Releases,
    record: &mut DeviceRecord,
    now: UnixMillis,
    force: bool,
) -> Result<Option<Outgoing>, DesiredError> {
    let wanted = record.wanted_release(now).map(str::to_owned);
    let pin = record.pin_at(now).map(wire_pin);
    let unchanged = wanted == record.desired_release && record.desired_generation > 0;
    let nothing_ever = wanted.is_none() && record.desired_generation == 0;
    if !force && (unchanged || nothing_ever) {
        return Ok(None);
    }
    let release = match &wanted {
        Some(id) => Some(releases.get(tx, pki, id)?),
        None => None,
    };
    // Never reused: the agent refuses anything not newer than what it accepted.
    record.desired_generation = record.desired_generation.max(record.accepted_generation) + 1;
    record.desired_release = wanted;
    Ok(Some(Outgoing {
        device: record.id.clone(),
        generation: record.desired_generation,
        release,
        pin,
    }))
}

/// The pin as the device sees it (so `fleet-agent status` can say why it is where it is).
fn wire_pin(p: &crate::devices::PinRecord) -> Pin {
    Pin {
        release: p.release.clone(),
        reason: p.reason.clone(),
        pinned_by: p.pinned_by.clone(),
        until: p.until,
    }
}

/// Signs and publishes desired states.
#[derive(Clone)]
pub struct Publisher {
    mqtt: AsyncClient,
    pki: Arc<Pki>,
    credentials: Arc<Vec<RegistryCredential>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// Why a desired state was not handed to the broker.
#[derive(Debug, thiserror::Error)]
#[error("cannot publish the desired state of {device} to the MQTT broker right now ({reason}); it is recorded and will be sent again")]
pub struct PublishError {
    /// The device.
    pub device: DeviceId,
    /// What the client said.
    pub reason: String,
}

impl Publisher {
    /// A publisher on the server's MQTT client; `credentials` go to devices with every state.
    pub fn new(
        mqtt: AsyncClient,
        pki: Arc<Pki>,
        credentials: Vec<RegistryCredential>,
    ) -> Publisher {
        Publisher { mqtt, pki, credentials: Arc::new(credentials) }
    }

    fn payload(&self, out: Outgoing, now: UnixMillis) -> (String, Vec<u8>) {
        let state = DesiredState {
            device: out.device,
            generation: out.generation,
            release: out.release,
            pin: out.pin,
            issued_at: now,
            registry_credentials: self.credentials.to_vec(),
        };
        let topic = topic(&state.device, TopicKind::Desired);
        (topic, Message::Desired(self.pki.signing_key().sign(&state)).encode())
    }

    /// Sends without waiting: for API requests, which must not hang on a full queue.
    pub fn send_now(&self, out: Outgoing, now: UnixMillis) -> Result<(), PublishError> {
        let device = out.device.clone();
        let (topic, payload) = self.payload(out, now);
        self.mqtt
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
            .map_err(|e| PublishError { device, reason: e.to_string() })
    }

    /// Sends every state, waiting for room in the client's queue (at most `patience` each): for
    /// rollouts, which push thousands at once. Returns the devices whose state was not sent.
    pub async fn send_all(
        &self,
        all: Vec<Outgoing>,
        now: UnixMillis,
        patience: Duration,
    ) -> Vec<DeviceId> {
        let mut unsent = Vec::new();
        for out in all {
            let device = out.device.clone();
            let (topic, payload) = self.payload(out, now);
            let sent = tokio::time::timeout(
                patience,
                self.mqtt.publish(topic, QoS::AtLeastOnce, true, payload),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                unsent.push(device);
            }
        }
        unsent
    }

    /// Sends the desired state of every device that has not accepted its latest generation
    /// yet, as its record says. Used at start (a state may have been recorded but not sent
    /// before the server stopped) and for devices whose send failed. Returns the devices whose
    /// state the broker still did not take.
    pub async fn republish_unconfirmed(
        &self,
        store: &Store,
        only: Option<&[DeviceId]>,
    ) -> Result<Vec<DeviceId>, DesiredError> {
        let now = UnixMillis::now();
        let records = match only {
            Some(ids) => ids
                .iter()
                .filter_map(|id| store.device(id).transpose())
                .collect::<Result<_, _>>()?,
            None => store.devices()?,
        };
        let mut outgoing = Vec::new();
        for record in records {
            if record.refusal().is_some() || record.desired_generation <= record.accepted_generation
            {
                continue;
            }
            let release = match &record.desired_release {
                Some(id) => match store.release(id)? {
                    Some(r) => Some(r.verify(&self.pki.trusted_keys())?.clone()),
                    None => return Err(DesiredError::UnknownRelease { release: id.clone() }),
                },
                None => None,
            };
            let pin = record.pin_at(now).map(wire_pin);
            outgoing.push(Outgoing {
                device: record.id.clone(),
                generation: record.desired_generation,
                release,
                pin,
            });
        }
        Ok(self.send_all(outgoing, now, Duration::from_secs(5)).await)
    }
}
