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
//! Secrets ([`crate::secrets`]) travel sealed to the device's own key ([`DeviceRecord::seal_key`]):
//! every secret the device's release mounts is resolved for the device and sealed in the
//! store change that decides the state. A mounted secret with no value for the device refuses
//! the state ([`DesiredError::MissingSecret`], handled wherever [`DesiredError::Render`] is); a
//! device that has not reported a key yet gets its state without secrets (its agent reports
//! the release unsatisfiable until the key arrives and ingest re-targets it). Registry logins
//! go sealed to devices with a key, in the clear (inside the signed state, over mutual TLS)
//! only to agents that predate sealing.
//!
//! Agent releases (`fleet-agent@VERSION`, [`crate::releases::ReleaseRecord::agent`]) ride in
//! the same desired state: a device's wanted agent version ([`DeviceRecord::wanted_agent`]:
//! its agent pin's, else the one a rollout assigned) becomes [`AgentTarget`], the binary for
//! the platform its inventory reports, by digest. A device whose platform has no binary is
//! refused like one whose variables do not fit ([`DesiredError::AgentBinary`]).
//!
//! A state that could not be published (broker down) is not lost: the device's record says
//! what it should run, and [`Publisher::republish_unconfirmed`] sends it again at start and
//! whenever the driver finds devices behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{
    topic, AgentTarget, DesiredState, DeviceId, Inventory, Message, Pin, RegistryCredential,
    ReleaseSpec, SealKey, SealedSecret, TopicKind, UnixMillis,
};
use rumqttc::{AsyncClient, QoS};

use crate::devices::DeviceRecord;
use crate::groups::Group;
use crate::pki::Pki;
use crate::releases::{agent_binary_for, ReleaseRecord, AGENT_APP};
use crate::secrets::{self, SecretError, SecretIndex, SecretRecord};
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
    /// The device's sealing key when the state was decided (registry logins are sealed to it).
    pub seal_key: Option<SealKey>,
    /// The secrets the release mounts, sealed to `seal_key` (empty without a key).
    pub secrets: Vec<SealedSecret>,
    /// The agent version to run (`None`: the agent stays as it is).
    pub agent: Option<AgentTarget>,
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
    /// The release mounts secrets that have no value for the device at any scope that applies
    /// to it.
    #[error("release {release} mounts secret(s) {} that have no value for device {device}; set them with `fleetctl secret set NAME < file` (for the fleet, a group of the device, or --device {device})", secrets.join(", "))]
    MissingSecret {
        /// The device.
        device: DeviceId,
        /// The release.
        release: String,
        /// The secrets without a value.
        secrets: Vec<String>,
    },
    /// A stored secret cannot be opened or sealed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The wanted agent release has no binary this device can run.
    #[error("agent release {release} cannot go to device {device}: {reason}")]
    AgentBinary {
        /// The device.
        device: DeviceId,
        /// The agent release.
        release: String,
        /// Why: its platform has no binary, or is not known yet.
        reason: String,
    },
}

impl DesiredError {
    /// Whether this is a decided refusal for one device (its variables or secrets do not fit
    /// its release), as opposed to a failure of the server: callers skip or refuse that
    /// device, they do not fail everything.
    pub fn refuses_device(&self) -> bool {
        matches!(
            self,
            DesiredError::Render { .. }
                | DesiredError::MissingSecret { .. }
                | DesiredError::AgentBinary { .. }
        )
    }

    /// The refusal's problems as (path, reason), for a problem+json answer.
    pub fn problems(&self) -> Vec<(String, String)> {
        match self {
            DesiredError::Render { problems, .. } => {
                problems.iter().map(|p| (p.path.clone(), p.reason.clone())).collect()
            }
            DesiredError::MissingSecret { device, secrets, .. } => secrets
                .iter()
                .map(|name| {
                    (
                        format!("secrets.{name}"),
                        format!(
                            "no value for device {device}: `fleetctl secret set {name} < file`"
                        ),
                    )
                })
                .collect(),
            DesiredError::AgentBinary { reason, .. } => vec![("agent".to_owned(), reason.clone())],
            _ => Vec::new(),
        }
    }
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
    /// Every secret (encrypted).
    fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError>;
    /// A device's inventory (its platform decides which agent binary it gets).
    fn inventory(&self, id: &DeviceId) -> Result<Option<Inventory>, StoreError>;
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
    fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        Tx::secrets(self)
    }
    fn inventory(&self, id: &DeviceId) -> Result<Option<Inventory>, StoreError> {
        Tx::inventory(self, id)
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
    fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        Store::secrets(self)
    }
    fn inventory(&self, id: &DeviceId) -> Result<Option<Inventory>, StoreError> {
        Store::inventory(self, id)
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
    /// The secrets in force; read from the source on first use.
    secrets: Option<Arc<SecretIndex>>,
}

impl Releases {
    /// The variables and secrets as `src` holds them now, kept for deciding releases after
    /// the change that follows has rewritten them (or the groups they resolve through): take
    /// it before the change writes, hand it to [`retarget_moved`] after.
    pub fn snapshot(src: &dyn Source) -> Result<Releases, DesiredError> {
        let groups = src.groups()?;
        Ok(Releases {
            index: Some(Arc::new(VarIndex::new(src.variables()?, &groups))),
            secrets: Some(Arc::new(SecretIndex::new(src.secrets()?, &groups))),
            ..Releases::default()
        })
    }

    /// The release `id` as `record`'s device runs it with the digest of each secret it
    /// mounts; refuses as [`Releases::for_device`] does, and if a mounted secret has no value.
    fn decide(
        &mut self,
        src: &dyn Source,
        pki: &Pki,
        id: &str,
        record: &DeviceRecord,
    ) -> Result<Decided, DesiredError> {
        let spec = self.for_device(src, pki, id, record)?;
        let names = secrets::mounted(&spec);
        let digests = if names.is_empty() {
            BTreeMap::new()
        } else {
            self.secret_index(src)?.digests(record.id.as_str(), &record.labels, &names)
        };
        let missing: Vec<String> =
            digests.iter().filter(|(_, d)| d.is_none()).map(|(n, _)| n.clone()).collect();
        if !missing.is_empty() {
            return Err(DesiredError::MissingSecret {
                device: record.id.clone(),
                release: id.to_owned(),
                secrets: missing,
            });
        }
        Ok(Decided { spec, digests })
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

    /// The secrets in force, indexed.
    pub fn secret_index(&mut self, src: &dyn Source) -> Result<Arc<SecretIndex>, DesiredError> {
        if let Some(i) = &self.secrets {
            return Ok(i.clone());
        }
        let index = Arc::new(SecretIndex::new(src.secrets()?, &src.groups()?));
        self.secrets = Some(index.clone());
        Ok(index)
    }

    /// The secrets `spec` (release `release`, as `record`'s device runs it) mounts, resolved
    /// for the device and sealed to its key. Refuses if one has no value for the device;
    /// empty (after that check) while the device has reported no key.
    pub fn sealed_secrets(
        &mut self,
        src: &dyn Source,
        pki: &Pki,
        release: &str,
        spec: &ReleaseSpec,
        record: &DeviceRecord,
    ) -> Result<Vec<SealedSecret>, DesiredError> {
        let names = secrets::mounted(spec);
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let index = self.secret_index(src)?;
        let id = record.id.as_str();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in &names {
            match index.resolve(id, &record.labels, name) {
                Some(r) => found.push(r),
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(DesiredError::MissingSecret {
                device: record.id.clone(),
                release: release.to_owned(),
                secrets: missing,
            });
        }
        let Some(key) = record.seal_key() else { return Ok(Vec::new()) };
        Ok(found
            .into_iter()
            .map(|r| pki.vault().seal_for(r, id, &key))
            .collect::<Result<_, _>>()?)
    }

    /// Agent `version` for `record`'s device: the binary of release `fleet-agent@VERSION` for
    /// the platform its inventory reports; or, when no such release exists and `version` is
    /// the one its package installed (a rollback past every release), that binary, which it
    /// has already. `None` for `None`.
    pub fn agent_target(
        &mut self,
        src: &dyn Source,
        pki: &Pki,
        version: Option<&str>,
        record: &DeviceRecord,
    ) -> Result<Option<AgentTarget>, DesiredError> {
        let Some(version) = version else { return Ok(None) };
        let id = format!("{AGENT_APP}@{version}");
        let installed = record.agent_versions().and_then(|a| a.installed.as_deref());
        if installed == Some(version) && src.release(&id)?.is_none() {
            return Ok(Some(AgentTarget {
                version: version.to_owned(),
                repository: String::new(),
                digest: String::new(),
                size: 0,
                deadline_secs: 0,
                installed: true,
            }));
        }
        let verified = self.verified(src, pki, &id)?;
        let refuse = |reason: String| DesiredError::AgentBinary {
            device: record.id.clone(),
            release: id.clone(),
            reason,
        };
        let binaries = verified
            .record
            .verify_agent(&pki.trusted_keys())?
            .ok_or_else(|| refuse(format!("{id} is not an agent release")))?;
        let inventory = src.inventory(&record.id)?.ok_or_else(|| {
            refuse("it has not reported its platform yet (no inventory)".to_owned())
        })?;
        let binary = agent_binary_for(binaries, &inventory.arch).ok_or_else(|| {
            let has: Vec<&str> = binaries.binaries.iter().map(|b| b.platform.as_str()).collect();
            refuse(format!(
                "it is {} ({}), the release has binaries for {} only",
                fleet_oci::Platform::for_rust_arch(&inventory.arch),
                inventory.arch,
                has.join(", ")
            ))
        })?;
        Ok(Some(AgentTarget {
            version: version.to_owned(),
            repository: binaries.repository.clone(),
            digest: binary.digest.clone(),
            size: binary.size,
            deadline_secs: binaries.deadline_secs,
            installed: false,
        }))
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

/// What a change of variables, secrets, labels or groups does to the devices it covers.
#[derive(Debug, Default)]
pub struct Changed {
    /// New desired states, to send once the change is durable.
    pub outgoing: Vec<Outgoing>,
    /// Devices whose release the change makes undecidable (the change must be refused).
    pub failures: Vec<DesiredError>,
    /// Devices covered whose rendered release and secret digests stay the same.
    pub unchanged: usize,
}

/// A device's release as one state of the store decides it: the render, and the digest of
/// every secret the render mounts. Two of these are equal exactly when the device would run
/// the same thing.
#[derive(Debug, PartialEq)]
struct Decided {
    spec: ReleaseSpec,
    digests: BTreeMap<String, Option<String>>,
}

/// One device across a change: its record as it was (its labels decided its groups) and as
/// the change leaves it.
#[derive(Debug, Clone)]
pub struct Moved {
    /// The record before the change.
    pub was: DeviceRecord,
    /// The record as the change leaves it (written if it is re-targeted).
    pub now: DeviceRecord,
}

impl Moved {
    /// A device the change does not touch itself (only the variables, secrets or groups
    /// around it change).
    pub fn same(record: DeviceRecord) -> Moved {
        Moved { was: record.clone(), now: record }
    }
}

/// For each of `devices`, decides its wanted release as `before` saw the store (see
/// [`Releases::snapshot`]) with the record as it was, and as `tx` stands now with the record
/// as it is; a device whose render or mounted secret digests differ gets a new generation
/// (its record is written), the others are left alone. A device that could be decided before
/// and no longer can is a failure (the caller refuses the change); one that could not be
/// decided before either is not this change's doing and is only logged, so an unrelated
/// change is never blocked by a device that was already broken. Devices without a release,
/// or refused, are skipped.
pub fn retarget_moved(
    tx: &mut Tx<'_>,
    pki: &Pki,
    mut before: Releases,
    devices: Vec<Moved>,
    now: UnixMillis,
) -> Result<Changed, DesiredError> {
    let mut new = Releases::default();
    let mut changed = Changed::default();
    for Moved { was: was_record, now: mut record } in devices {
        if record.refusal().is_some() {
            continue;
        }
        let Some(release) = record.wanted_release(now).cloned() else { continue };
        let was = match before.decide(&*tx, pki, release.as_str(), &was_record) {
            Ok(d) => Some(d),
            // Undecidable before (set under an older server) is "different" from anything.
            Err(e) if e.refuses_device() => None,
            Err(DesiredError::UnknownRelease { .. }) => continue,
            Err(e) => return Err(e),
        };
        let will = match new.decide(&*tx, pki, release.as_str(), &record) {
            Ok(d) => d,
            Err(e) if e.refuses_device() => {
                if was.is_some() {
                    changed.failures.push(e);
                } else {
                    tracing::warn!(device = %record.id, error = %e, "the device's release could not be decided before this change either; it is left as it is");
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if was.as_ref() == Some(&will) && record.desired_release.as_ref() == Some(&release) {
            changed.unchanged += 1;
            continue;
        }
        match retarget(tx, pki, &mut new, &mut record, now, true) {
            Ok(Some(out)) => {
                changed.outgoing.push(out);
                tx.put_device(&record);
            }
            Ok(None) => {}
            Err(e) if e.refuses_device() => changed.failures.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(changed)
}

/// [`retarget_moved`] for a change of variables: `devices` are the covered ones, unchanged
/// themselves.
pub fn retarget_changed(
    tx: &mut Tx<'_>,
    pki: &Pki,
    before: Releases,
    devices: Vec<DeviceRecord>,
    now: UnixMillis,
) -> Result<Changed, DesiredError> {
    retarget_moved(tx, pki, before, devices.into_iter().map(Moved::same).collect(), now)
}

/// [`retarget_moved`] for a change of secrets: only the covered devices whose release mounts
/// a secret are compared (and counted as unchanged), so a rotation reaches exactly the
/// devices that use the secret.
pub fn retarget_secrets_changed(
    tx: &mut Tx<'_>,
    pki: &Pki,
    before: Releases,
    devices: Vec<DeviceRecord>,
    now: UnixMillis,
) -> Result<Changed, DesiredError> {
    let mut releases = Releases::default();
    let mut mounting = Vec::new();
    for record in devices {
        let Some(release) = record.wanted_release(now) else { continue };
        match releases.get(&*tx, pki, release.as_str()) {
            Ok(spec) if !secrets::mounted(&spec).is_empty() => mounting.push(Moved::same(record)),
            Ok(_) | Err(DesiredError::UnknownRelease { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    retarget_moved(tx, pki, before, mounting, now)
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
    let wanted = record.wanted_release(now).cloned();
    let wanted_agent = record.wanted_agent(now).map(str::to_owned);
    let pin = record.pin_at(now).map(wire_pin);
    let unchanged = wanted == record.desired_release
        && wanted_agent == record.desired_agent
        && record.desired_generation > 0;
    let nothing_ever = wanted.is_none() && wanted_agent.is_none() && record.desired_generation == 0;
    if !force && (unchanged || nothing_ever) {
        return Ok(None);
    }
    let release = match &wanted {
        Some(id) => Some(releases.for_device(tx, pki, id.as_str(), record)?),
        None => None,
    };
    let secrets = match (&wanted, &release) {
        (Some(id), Some(spec)) => releases.sealed_secrets(tx, pki, id.as_str(), spec, record)?,
        _ => Vec::new(),
    };
    let agent = releases.agent_target(tx, pki, wanted_agent.as_deref(), record)?;
    // Never reused: the agent refuses anything not newer than what it accepted.
    // Saturating: `accepted_generation` is what a device reported.
    record.desired_generation =
        record.desired_generation.max(record.accepted_generation).saturating_add(1);
    record.desired_release = wanted;
    record.desired_agent = wanted_agent;
    Ok(Some(Outgoing {
        device: record.id.clone(),
        generation: record.desired_generation,
        release,
        pin,
        seal_key: record.seal_key(),
        secrets,
        agent,
    }))
}

/// The registries `release` and `agent` pull from (registry hosts as logins name them).
fn registries_used(
    release: Option<&ReleaseSpec>,
    agent: Option<&AgentTarget>,
) -> std::collections::BTreeSet<String> {
    let images = release.iter().flat_map(|r| r.services.iter()).map(|s| s.image.to_string());
    let agent = agent.filter(|a| !a.installed).map(|a| format!("{}@{}", a.repository, a.digest));
    images
        .chain(agent)
        .filter_map(|r| fleet_oci::Reference::parse(&r).ok().map(|r| r.registry().to_owned()))
        .collect()
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
    /// Devices already warned about getting registry logins in the clear (once each).
    warned_clear: Arc<std::sync::Mutex<std::collections::HashSet<DeviceId>>>,
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
        Publisher { mqtt, pki, credentials: Arc::new(credentials), warned_clear: Arc::default() }
    }

    fn payload(&self, out: Outgoing, now: UnixMillis) -> (String, Vec<u8>) {
        let used = registries_used(out.release.as_ref(), out.agent.as_ref());
        let (registry_credentials, sealed_registry_credentials) =
            self.credentials_for(&out.device, out.seal_key.as_ref(), &used);
        let state = DesiredState {
            device: out.device,
            generation: out.generation,
            release: out.release,
            pin: out.pin,
            issued_at: now,
            registry_credentials,
            secrets: out.secrets,
            sealed_registry_credentials,
            agent: out.agent,
        };
        let topic = topic(&state.device, TopicKind::Desired);
        (topic, Message::Desired(self.pki.signing_key().sign(&state)).encode())
    }

    /// The registry logins for `device`: (in the clear, sealed). Only the logins of `used`
    /// (the registries its release and agent version pull from), and only sealed to its key:
    /// never in the clear (the state is retained on the broker), so an agent that predates
    /// sealing gets none and pulls anonymously until it is upgraded. The first element stays
    /// for the wire format's sake and is always empty.
    fn credentials_for(
        &self,
        device: &DeviceId,
        key: Option<&SealKey>,
        used: &std::collections::BTreeSet<String>,
    ) -> (Vec<RegistryCredential>, Vec<u8>) {
        let wanted: Vec<&RegistryCredential> =
            self.credentials.iter().filter(|c| used.contains(&c.registry)).collect();
        if wanted.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let Some(key) = key else {
            let mut warned =
                self.warned_clear.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if warned.insert(device.clone()) {
                tracing::warn!(%device, "device reported no sealing key (an older agent): it gets no registry logins, never any in the clear; upgrade its fleet-agent");
            }
            return (Vec::new(), Vec::new());
        };
        let aad = fleet_proto::seal::registry_credentials_aad(device.as_str());
        let plain = postcard::to_allocvec(&wanted);
        match plain
            .map_err(|e| e.to_string())
            .and_then(|p| fleet_proto::seal::seal(key, &p, &aad).map_err(|e| e.to_string()))
        {
            Ok(sealed) => (Vec::new(), sealed),
            Err(e) => {
                // Never fall back to the clear for a device that can open sealed ones.
                tracing::error!(%device, error = %e, "cannot seal the registry logins; the state goes without them");
                (Vec::new(), Vec::new())
            }
        }
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
            let decided = match &record.desired_release {
                Some(id) => {
                    releases.for_device(store, &self.pki, id.as_str(), &record).and_then(|spec| {
                        let sealed = releases.sealed_secrets(
                            store,
                            &self.pki,
                            id.as_str(),
                            &spec,
                            &record,
                        )?;
                        Ok((Some(spec), sealed))
                    })
                }
                None => Ok((None, Vec::new())),
            };
            let decided = decided.and_then(|(release, secrets)| {
                let agent = releases.agent_target(
                    store,
                    &self.pki,
                    record.desired_agent.as_deref(),
                    &record,
                )?;
                Ok((release, secrets, agent))
            });
            let (release, secrets, agent) = match decided {
                Ok(d) => d,
                // One device's variables or secrets must not stop the others' states; it is
                // sent again once they fit its release.
                Err(e) if e.refuses_device() => {
                    tracing::error!(device = %record.id, error = %e, "desired state not sent");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let pin = record.pin_at(now).map(wire_pin);
            outgoing.push(Outgoing {
                device: record.id.clone(),
                generation: record.desired_generation,
                release,
                pin,
                seal_key: record.seal_key(),
                secrets,
                agent,
            });
        }
        Ok(self.send_all(outgoing, now, Duration::from_secs(5)).await)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use fleet_proto::{DeviceSealKey, SecretMount, ServiceSpec};

    use super::*;
    use crate::devices::CertificateInfo;
    use crate::secrets::SecretValue;
    use crate::variables::Scope;

    struct Setup {
        _dir: tempfile::TempDir,
        store: Store,
        pki: Pki,
    }

    /// A store with release `app@1` whose one service mounts `db` (if `mounts`), a device
    /// `r1` assigned to it, and `db` set fleet-wide (if `value`).
    fn setup(mounts: bool, value: Option<&[u8]>, key: Option<SealKey>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) =
            Pki::open_or_create(&dir.path().join("pki"), &dir.path().join("secrets.key")).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let mut spec = fleet_proto::samples::release();
        spec.id = fleet_proto::ReleaseId::new("app@1").unwrap();
        spec.app = "app".into();
        spec.version = "1".into();
        spec.services.truncate(1);
        let service: &mut ServiceSpec = &mut spec.services[0];
        service.secrets = if mounts {
            vec![SecretMount {
                source: "db".into(),
                target: "db".into(),
                uid: None,
                gid: None,
                mode: 0,
            }]
        } else {
            vec![]
        };
        let record = ReleaseRecord::new(spec, pki.signing_key(), None, vec![], UnixMillis(1), "t");
        let mut device = DeviceRecord::enrolled(
            DeviceId::new("r1").unwrap(),
            BTreeMap::new(),
            CertificateInfo { serial: "01".into(), not_after: UnixMillis(u64::MAX) },
            UnixMillis(1),
        );
        device.assigned_release = Some(fleet_proto::ReleaseId::new("app@1").unwrap());
        device.seal_key = key.map(|k| k.to_hex());
        let secret = value.map(|v| {
            pki.vault()
                .encrypt("db", &Scope::default(), &SecretValue::new(v.to_vec()), UnixMillis(1), "t")
                .unwrap()
        });
        store
            .update(|tx| {
                tx.put_release(&record);
                tx.put_device(&device);
                if let Some(s) = &secret {
                    tx.put_secret(s);
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        Setup { _dir: dir, store, pki }
    }

    fn decide(s: &Setup) -> Result<Option<Outgoing>, DesiredError> {
        s.store.update(|tx| {
            let mut record = tx.device(&DeviceId::new("r1").unwrap())?.unwrap();
            retarget(tx, &s.pki, &mut Releases::default(), &mut record, UnixMillis(2), true)
        })
    }

    /// Agent release `fleet-agent@2.0.0` with binaries for arm64 and amd64, stored in `s`.
    fn agent_release(s: &Setup) -> ReleaseRecord {
        let binary = |platform: &str, n: u8| crate::releases::AgentBinary {
            platform: platform.into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 1000 + u64::from(n),
        };
        let binaries = crate::releases::AgentBinaries {
            version: "2.0.0".into(),
            repository: "registry.test:5000/fleet/agent".into(),
            index: format!("sha256:{}", "00".repeat(32)),
            deadline_secs: 90,
            binaries: vec![binary("linux/arm64", 1), binary("linux/amd64", 2)],
        };
        let record =
            ReleaseRecord::agent(binaries, s.pki.signing_key(), UnixMillis(1), "t").unwrap();
        s.store
            .update(|tx| {
                tx.put_release(&record);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        record
    }

    fn set_agent(s: &Setup, version: Option<&str>, arch: Option<&str>) {
        s.store
            .update(|tx| {
                let id = DeviceId::new("r1").unwrap();
                let mut record = tx.device(&id)?.unwrap();
                record.assigned_agent = version.map(str::to_owned);
                tx.put_device(&record);
                if let Some(arch) = arch {
                    let inventory =
                        Inventory { arch: arch.into(), ..fleet_proto::samples::inventory() };
                    tx.put_inventory(&id, &inventory);
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    #[test]
    fn an_agent_version_goes_as_the_binary_for_the_platform_the_device_reported() {
        let s = setup(false, None, None);
        agent_release(&s);
        set_agent(&s, Some("2.0.0"), Some("aarch64"));
        let out = s
            .store
            .update(|tx| {
                let mut r = tx.device(&DeviceId::new("r1").unwrap())?.unwrap();
                let out =
                    retarget(tx, &s.pki, &mut Releases::default(), &mut r, UnixMillis(2), false);
                tx.put_device(&r);
                out
            })
            .unwrap()
            .unwrap();
        let target = out.agent.unwrap();
        assert_eq!(target.version, "2.0.0");
        assert_eq!(target.digest, format!("sha256:{}", "01".repeat(32)), "the arm64 binary");
        assert_eq!((target.size, target.deadline_secs), (1001, 90));
        assert_eq!(target.repository, "registry.test:5000/fleet/agent");
        assert!(out.release.is_some(), "the app release goes along unchanged");

        // Unchanged wants: no new generation. A new wanted version: one.
        let record = s.store.device(&DeviceId::new("r1").unwrap()).unwrap().unwrap();
        assert_eq!(record.desired_agent.as_deref(), Some("2.0.0"));
        let again = s
            .store
            .update(|tx| {
                let mut r = tx.device(&record.id)?.unwrap();
                retarget(tx, &s.pki, &mut Releases::default(), &mut r, UnixMillis(3), false)
            })
            .unwrap();
        assert!(again.is_none(), "nothing changed, nothing sent");
    }

    #[test]
    fn a_reported_generation_at_the_top_of_the_range_does_not_wrap() {
        let s = setup(false, None, None);
        s.store
            .update(|tx| {
                let mut r = tx.device(&DeviceId::new("r1").unwrap())?.unwrap();
                r.accepted_generation = u64::MAX;
                tx.put_device(&r);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(decide(&s).unwrap().unwrap().generation, u64::MAX, "saturated, not 0");
    }

    #[test]
    fn a_device_whose_platform_has_no_binary_or_is_unknown_is_refused_by_name() {
        let s = setup(false, None, None);
        agent_release(&s);
        set_agent(&s, Some("2.0.0"), None);
        let err = decide(&s).unwrap_err();
        assert!(err.refuses_device(), "{err}");
        assert!(err.to_string().contains("has not reported its platform yet"), "{err}");
        set_agent(&s, Some("2.0.0"), Some("arm"));
        let err = decide(&s).unwrap_err().to_string();
        assert!(err.contains("it is linux/arm/v7 (arm)"), "{err}");
        assert!(err.contains("binaries for linux/arm64, linux/amd64 only"), "{err}");
        set_agent(&s, Some("3.0.0"), Some("aarch64"));
        assert!(matches!(decide(&s), Err(DesiredError::UnknownRelease { .. })));
    }

    #[test]
    fn a_mounted_secret_is_sealed_to_the_device_and_opens_with_its_key() {
        let device_key = DeviceSealKey::generate().unwrap();
        let s = setup(true, Some(b"\x00pg-password\xff"), Some(device_key.public()));
        let out = decide(&s).unwrap().unwrap();
        assert_eq!(out.secrets.len(), 1);
        let sealed = &out.secrets[0];
        assert_eq!(sealed.name, "db");
        assert_eq!(sealed.digest, s.pki.vault().digest(b"\x00pg-password\xff"));
        let aad = fleet_proto::seal::secret_aad("r1", "db", &sealed.digest);
        assert_eq!(device_key.open(&sealed.sealed, &aad).unwrap(), b"\x00pg-password\xff");
        assert!(!format!("{out:?}").contains("pg-password"));
    }

    #[test]
    fn only_mounted_secrets_go_and_a_device_without_a_key_gets_none_yet() {
        let key = DeviceSealKey::generate().unwrap().public();
        assert!(decide(&setup(false, Some(b"v"), Some(key))).unwrap().unwrap().secrets.is_empty());
        let out = decide(&setup(true, Some(b"v"), None)).unwrap().unwrap();
        assert!(out.secrets.is_empty() && out.release.is_some(), "{out:?}");
    }

    #[test]
    fn a_mounted_secret_without_a_value_refuses_the_state_naming_device_release_and_secret() {
        let key = DeviceSealKey::generate().unwrap().public();
        let e = decide(&setup(true, None, Some(key))).unwrap_err();
        assert!(e.refuses_device());
        let text = e.to_string();
        assert!(text.contains("r1") && text.contains("app@1") && text.contains("db"), "{text}");
        assert_eq!(e.problems()[0].0, "secrets.db");
    }

    fn r1() -> DeviceId {
        DeviceId::new("r1").unwrap()
    }

    fn depot() -> Group {
        Group {
            name: "depot".into(),
            selector: crate::groups::Selector::parse("site=depot").unwrap(),
            description: String::new(),
            created_at: UnixMillis(1),
            created_by: "t".into(),
        }
    }

    fn depot_scope() -> Scope {
        Scope { group: Some("depot".into()), ..Scope::default() }
    }

    /// Stores the depot group and its value of `X`.
    fn depot_with_x(s: &Setup, value: &str) {
        let var = VariableRecord {
            name: "X".into(),
            value: value.into(),
            scope: depot_scope(),
            updated_at: UnixMillis(1),
            updated_by: "t".into(),
        };
        s.store
            .update(|tx| {
                tx.put_group(&depot());
                tx.put_variable(&var);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    /// Gives r1 `labels` in one change, as `PATCH /api/v1/devices/r1` does: what it did, and
    /// r1 afterwards.
    fn relabel(s: &Setup, labels: &[(&str, &str)]) -> (Changed, DeviceRecord) {
        s.store
            .update(|tx| {
                let was = tx.device(&r1())?.unwrap();
                let before = Releases::snapshot(&*tx)?;
                let mut now = was.clone();
                now.labels = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
                tx.put_device(&now);
                let changed =
                    retarget_moved(tx, &s.pki, before, vec![Moved { was, now }], UnixMillis(2))?;
                Ok::<_, DesiredError>((changed, tx.device(&r1())?.unwrap()))
            })
            .unwrap()
    }

    fn env_x(out: &Outgoing) -> Option<&str> {
        out.release.as_ref().unwrap().services[0].env.get("X").map(String::as_str)
    }

    #[test]
    fn a_relabel_into_a_group_with_variables_retargets_the_device_with_its_values() {
        let s = setup(false, None, None);
        depot_with_x(&s, "from-depot");
        let (changed, after) = relabel(&s, &[("site", "depot")]);
        assert!(changed.failures.is_empty(), "{:?}", changed.failures);
        assert_eq!(changed.outgoing.len(), 1);
        assert_eq!(env_x(&changed.outgoing[0]), Some("from-depot"));
        assert_eq!(after.desired_generation, changed.outgoing[0].generation, "written");
        assert_eq!(after.labels["site"], "depot");
        // Another label that changes no group: the render is the same, nobody re-targeted.
        let (changed, again) = relabel(&s, &[("site", "depot"), ("room", "2")]);
        assert!(changed.outgoing.is_empty());
        assert_eq!(changed.unchanged, 1);
        assert_eq!(again.desired_generation, after.desired_generation);
        // Out of the group again: back to the release as signed.
        let (changed, _) = relabel(&s, &[("room", "2")]);
        assert_eq!(env_x(&changed.outgoing[0]), None);
    }

    #[test]
    fn removing_a_group_retargets_its_devices_without_its_values() {
        let s = setup(false, None, None);
        depot_with_x(&s, "from-depot");
        relabel(&s, &[("site", "depot")]);
        let changed = s
            .store
            .update(|tx| {
                let before = Releases::snapshot(&*tx)?;
                tx.remove_group("depot");
                let devices = vec![Moved::same(tx.device(&r1())?.unwrap())];
                retarget_moved(tx, &s.pki, before, devices, UnixMillis(3))
            })
            .unwrap();
        assert_eq!(changed.outgoing.len(), 1);
        assert_eq!(env_x(&changed.outgoing[0]), None, "the group's value went with it");
    }

    #[test]
    fn leaving_the_group_that_holds_a_mounted_secret_is_a_failure_but_one_never_held_is_not() {
        let key = DeviceSealKey::generate().unwrap().public();
        // Never had a value: relabelling it is not what leaves it without one.
        let s = setup(true, None, Some(key));
        let (changed, _) = relabel(&s, &[("site", "lab")]);
        assert!(changed.failures.is_empty() && changed.outgoing.is_empty(), "{changed:?}");

        let s = setup(true, None, Some(key));
        let secret = s
            .pki
            .vault()
            .encrypt("db", &depot_scope(), &SecretValue::new(b"pw".to_vec()), UnixMillis(1), "t")
            .unwrap();
        s.store
            .update(|tx| {
                tx.put_group(&depot());
                tx.put_secret(&secret);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let (changed, _) = relabel(&s, &[("site", "depot")]);
        assert_eq!(changed.outgoing.len(), 1, "joining gives it the value: {changed:?}");
        assert_eq!(changed.outgoing[0].secrets[0].digest, secret.digest);
        let (changed, _) = relabel(&s, &[("site", "lab")]);
        assert!(changed.outgoing.is_empty());
        assert!(
            matches!(&changed.failures[..], [DesiredError::MissingSecret { secrets, .. }] if secrets == &["db"]),
            "{:?}",
            changed.failures
        );
    }

    fn publisher(pki: Pki, credentials: Vec<RegistryCredential>) -> Publisher {
        let (client, _events) = AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 1);
        Publisher::new(client, Arc::new(pki), credentials)
    }

    #[test]
    fn registry_logins_go_sealed_only_and_only_for_the_registries_the_device_pulls_from() {
        let s = setup(false, None, None);
        let login = |registry: &str| RegistryCredential {
            registry: registry.into(),
            username: "bot".into(),
            password: format!("pass-for-{registry}"),
        };
        let creds = vec![login("reg.example"), login("other.example:5000")];
        let p = publisher(s.pki, creds.clone());
        let device = DeviceId::new("r1").unwrap();
        let device_key = DeviceSealKey::generate().unwrap();
        let used: std::collections::BTreeSet<String> = ["reg.example".to_owned()].into();
        let (clear, sealed) = p.credentials_for(&device, Some(&device_key.public()), &used);
        assert!(clear.is_empty());
        let aad = fleet_proto::seal::registry_credentials_aad("r1");
        let opened: Vec<RegistryCredential> =
            postcard::from_bytes(&device_key.open(&sealed, &aad).unwrap()).unwrap();
        assert_eq!(opened, [creds[0].clone()], "only the registry its release uses");
        // Without a key: nothing at all, never the clear.
        assert_eq!(p.credentials_for(&device, None, &used), (Vec::new(), Vec::new()));
        // No registry used that has a login: nothing sealed either.
        assert_eq!(
            p.credentials_for(&device, Some(&device_key.public()), &Default::default()),
            (Vec::new(), Vec::new())
        );
    }

    #[test]
    fn the_registries_used_are_those_of_the_images_and_the_agent_binary() {
        let release = fleet_proto::samples::release();
        let agent = fleet_proto::samples::desired().agent.unwrap();
        let used = registries_used(Some(&release), Some(&agent));
        assert!(used.contains("registry.example.com"), "{used:?}");
        let back_home = AgentTarget { installed: true, ..agent };
        assert!(registries_used(None, Some(&back_home)).is_empty(), "nothing to pull");
    }
}
