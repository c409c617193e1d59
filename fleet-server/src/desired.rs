//! Desired state: deciding what each device should run (inside a store change) and sending it
//! (after the change is on disk).
//!
//! A device runs its pin's release if it is pinned, otherwise its assigned release (set by
//! rollouts and by direct assignment), rendered with the device's variables
//! ([`crate::variables`]): the release id is the same on every device, the spec may differ,
//! and the desired state is signed as a whole. Whenever that changes, [`retarget`] gives the device a
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
use crate::groups::Group;
use crate::pki::Pki;
use crate::releases::ReleaseRecord;
use crate::store::{Store, StoreError, Tx};
use crate::variables::{self, DeviceVars, VarIndex, VariableRecord};

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
    /// The device's variables make the release invalid for it.
    #[error("release {release} cannot be rendered for device {device} with its variables: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Render {
        /// The device.
        device: DeviceId,
        /// The release.
        release: String,
        /// What is wrong, with Compose paths.
        problems: Vec<variables::RenderProblem>,
    },
}

/// Where releases and the variables that render them are read: a store change ([`Tx`]) or
/// the store as it stands ([`Store`]).
pub trait Source {
    /// A stored release.
    fn release(&self, id: &str) -> Result<Option<ReleaseRecord>, StoreError>;
    /// Every variable.
    fn variables(&self) -> Result<Vec<VariableRecord>, StoreError>;
    /// Every group.
    fn groups(&self) -> Result<Vec<Group>, StoreError>;
}

impl Source for Tx<'_> {
    fn release(&self, id: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        Tx::release(self, id)
    }
    fn variables(&self) -> Result<Vec<VariableRecord>, StoreError> {
        Tx::variables(self)
    }
    fn groups(&self) -> Result<Vec<Group>, StoreError> {
        Tx::groups(self)
    }
}

impl Source for Store {
    fn release(&self, id: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        Store::release(self, id)
    }
    fn variables(&self) -> Result<Vec<VariableRecord>, StoreError> {
        Store::variables(self)
    }
    fn groups(&self) -> Result<Vec<Group>, StoreError> {
        Store::groups(self)
    }
}

/// A stored release whose signature checked out, and whether its Compose file interpolates.
#[derive(Debug)]
struct Verified {
    spec: ReleaseSpec,
    record: ReleaseRecord,
    interpolates: bool,
}

/// Stored releases, verified once per change (a rollout targets thousands of devices with one
/// release: its signature is checked once, not thousands of times), and their renders per
/// device variables, computed once per distinct variable set.
#[derive(Debug, Default)]
pub struct Releases {
    verified: HashMap<String, Arc<Verified>>,
    /// The variables in force; read from the source on first use unless given.
    index: Option<Arc<VarIndex>>,
    renders: HashMap<(String, DeviceVars), ReleaseSpec>,
}

impl Releases {
    /// Renders with `index` instead of the variables in the source (to see a device's release
    /// as it was before a change).
    pub fn with_index(index: VarIndex) -> Releases {
        Releases { index: Some(Arc::new(index)), ..Releases::default() }
    }

    fn verified(
        &mut self,
        src: &dyn Source,
        pki: &Pki,
        id: &str,
    ) -> Result<Arc<Verified>, DesiredError> {
        if let Some(v) = self.verified.get(id) {
            return Ok(v.clone());
        }
        let record = src
            .release(id)?
            .ok_or_else(|| DesiredError::UnknownRelease { release: id.to_owned() })?;
        let spec = record.verify(&pki.trusted_keys())?.clone();
        let interpolates = variables::interpolates(record.compose.as_deref());
        let v = Arc::new(Verified { spec, record, interpolates });
        self.verified.insert(id.to_owned(), v.clone());
        Ok(v)
    }

    /// The release `id` from the store, verified, as signed (no device's variables).
    pub fn get(
        &mut self,
        src: &dyn Source,
        pki: &Pki,
        id: &str,
    ) -> Result<ReleaseSpec, DesiredError> {
        Ok(self.verified(src, pki, id)?.spec.clone())
    }

    /// The variables in force, indexed.
    pub fn index(&mut self, src: &dyn Source) -> Result<Arc<VarIndex>, DesiredError> {
        if let Some(i) = &self.index {
            return Ok(i.clone());
        }
        let index = Arc::new(VarIndex::new(src.variables()?, &src.groups()?));
        self.index = Some(index.clone());
        Ok(index)
    }

    /// The release `id` as `record`'s device runs it: rendered with its variables
    /// ([`variables::render`]).
    pub fn for_device(
        &mut self,
        src: &dyn Source,
        pki: &Pki,
        id: &str,
        record: &DeviceRecord,
    ) -> Result<ReleaseSpec, DesiredError> {
        let verified = self.verified(src, pki, id)?;
        let vars = self.index(src)?.device_vars(record.id.as_str(), &record.labels);
        // The common case at fleet scale: nothing to render, the signed release as is.
        if vars.is_empty() && !verified.interpolates {
            return Ok(verified.spec.clone());
        }
        let key = (id.to_owned(), vars);
        if let Some(spec) = self.renders.get(&key) {
            return Ok(spec.clone());
        }
        let spec = variables::render(
            &verified.spec,
            verified.record.compose.as_deref(),
            &verified.record.images,
            &key.1,
        )
        .map_err(|problems| DesiredError::Render {
            device: record.id.clone(),
            release: id.to_owned(),
            problems,
        })?;
        self.renders.insert(key, spec.clone());
        Ok(spec)
    }
}

/// What a variable change does to the devices it covers.
#[derive(Debug, Default)]
pub struct Changed {
    /// New desired states, to send once the change is durable.
    pub outgoing: Vec<Outgoing>,
    /// Devices whose release the change makes unrenderable (the change must be refused).
    pub failures: Vec<DesiredError>,
    /// Devices covered whose rendered release stays the same.
    pub unchanged: usize,
}

/// For each of `devices` (records as this change sees them), renders its wanted release with
/// the variables `before` and with those in force in `tx` now; a device whose render differs
/// gets a new generation (its record is written), the others are left alone. Devices without
/// a release, or refused, are skipped.
pub fn retarget_changed(
    tx: &mut Tx<'_>,
    pki: &Pki,
    before: VarIndex,
    devices: Vec<DeviceRecord>,
    now: UnixMillis,
) -> Result<Changed, DesiredError> {
    let mut old = Releases::with_index(before);
    let mut new = Releases::default();
    let mut changed = Changed::default();
    for mut record in devices {
        if record.refusal().is_some() {
            continue;
        }
        let Some(release) = record.wanted_release(now).map(str::to_owned) else { continue };
        let was = match old.for_device(tx, pki, &release, &record) {
            Ok(spec) => Some(spec),
            // Unrenderable before (set under an older server) is "different" from anything.
            Err(DesiredError::Render { .. }) => None,
            Err(DesiredError::UnknownRelease { .. }) => continue,
            Err(e) => return Err(e),
        };
        let will = match new.for_device(tx, pki, &release, &record) {
            Ok(spec) => spec,
            Err(e @ DesiredError::Render { .. }) => {
                changed.failures.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if was.as_ref() == Some(&will) && record.desired_release.as_deref() == Some(&release) {
            changed.unchanged += 1;
            continue;
        }
        if let Some(out) = retarget(tx, pki, &mut new, &mut record, now, true)? {
            changed.outgoing.push(out);
            tx.put_device(&record);
        }
    }
    Ok(changed)
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
        Some(id) => Some(releases.for_device(tx, pki, id, record)?),
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
            secrets: vec![],
            sealed_registry_credentials: vec![],
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
        let mut releases = Releases::default();
        for record in records {
            if record.refusal().is_some() || record.desired_generation <= record.accepted_generation
            {
                continue;
            }
            let release = match &record.desired_release {
                Some(id) => match releases.for_device(store, &self.pki, id, &record) {
                    Ok(spec) => Some(spec),
                    // One device's variables must not stop the others' states; it is sent
                    // again once its variables render.
                    Err(e @ DesiredError::Render { .. }) => {
                        tracing::error!(device = %record.id, error = %e, "desired state not sent");
                        continue;
                    }
                    Err(e) => return Err(e),
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
