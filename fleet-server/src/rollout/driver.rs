//! Rollouts as the server runs them: targets resolved to devices, pre-flight plans, and the
//! driver that steps the pure engine ([`crate::rollout`]) on a clock and carries out what it
//! asks for.
//!
//! Every step happens inside one durable store change: the engine's new state, the devices'
//! new assignments and generations, and the audit lines are written together, then the desired
//! states are published. A crash between the two leaves devices whose generation is ahead of
//! what they accepted; [`crate::desired::Publisher::republish_unconfirmed`] sends those at the
//! next start.
//!
//! Invariants: a device is in at most one active rollout (checked at creation, under the store's
//! writer lock); pinned devices are never targeted (the engine's own invariant, fed with the
//! pins as they are at each step).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{DeviceId, Inventory, ReleaseId, UnixMillis};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::audit::{AuditEntry, SYSTEM};
use crate::desired::{self, DesiredError, Outgoing, Publisher, Releases};
use crate::devices::DeviceRecord;
use crate::groups::Group;
use crate::pki::Pki;
use crate::preflight::{self, DeviceCheck};
use crate::records::{RolloutRecord, Target};
use crate::releases::ReleaseRecord;
use crate::rollout::{
    self, Action, DeviceObservation, MaintenanceWindow, Observe, OnFailure, Rollout, RolloutId,
    RolloutSpec, TargetDevice, Threshold,
};
use crate::store::{Store, StoreError, Tx};
use crate::units::parse_duration;

// The request and its defaults are the API's: fleetctl shows the same defaults in `--help`.
pub use fleet_api::rollouts::{
    RolloutRequest, DEFAULT_BAKE, DEFAULT_DEVICE_TIMEOUT, DEFAULT_UPDATE_DEADLINE, DEFAULT_WAVES,
};

/// Why a rollout cannot be planned or created; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A field does not parse or makes no sense.
    #[error("{field}: {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The release does not exist.
    #[error("release {release} is not known; create it with `fleetctl release create` (`fleetctl release ls` lists them)")]
    UnknownRelease {
        /// The release.
        release: String,
    },
    /// The group does not exist.
    #[error("group {name} does not exist (`fleetctl group ls` lists them)")]
    UnknownGroup {
        /// The group.
        name: String,
    },
    /// Listed devices are not enrolled.
    #[error("unknown or revoked devices in the target: {}", .devices.join(", "))]
    UnknownDevices {
        /// Their ids.
        devices: Vec<String>,
    },
    /// The target matches no device.
    #[error("the target {target} matches no enrolled device")]
    NoDevices {
        /// The target as given.
        target: String,
    },
    /// Devices are in another active rollout.
    #[error("{} target devices are already in active rollouts ({}); one active rollout per device: wait for it, or abort it with `fleetctl rollout abort ID`", .devices.len(), describe_busy(.devices))]
    Busy {
        /// Device and the rollout holding it.
        devices: Vec<(DeviceId, RolloutId)>,
    },
    /// Devices cannot run the release.
    #[error("{} target devices cannot run {release}: {}; fix them or pass --exclude-unsatisfiable", .devices.len(), describe_unsatisfiable(.devices))]
    Unsatisfiable {
        /// The release.
        release: String,
        /// Device and why.
        devices: Vec<(DeviceId, Vec<String>)>,
    },
    /// The engine refused the definition.
    #[error(transparent)]
    Spec(#[from] rollout::SpecError),
}

fn describe_busy(devices: &[(DeviceId, RolloutId)]) -> String {
    let shown: Vec<String> =
        devices.iter().take(5).map(|(d, r)| format!("{d} in rollout {r}")).collect();
    let more = devices.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn describe_unsatisfiable(devices: &[(DeviceId, Vec<String>)]) -> String {
    let shown: Vec<String> =
        devices.iter().take(5).map(|(d, why)| format!("{d}: {}", why.join("; "))).collect();
    let more = devices.len().saturating_sub(5);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// What `rollout plan` shows, and what `rollout create` stores beside the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The release.
    pub release: ReleaseId,
    /// The target as resolved.
    pub target: Target,
    /// The seed the waves come from (pass it to `create` to get exactly these waves).
    pub seed: u64,
    /// Devices of each wave, in the order they are targeted.
    pub waves: Vec<Vec<DeviceId>>,
    /// Target devices left out because they are pinned: device, its pinned release, why.
    pub pinned: Vec<(DeviceId, String, String)>,
    /// Target devices offline now (they stay in their waves; they update when they return).
    pub offline: Vec<DeviceId>,
    /// Devices that cannot run the release, and why (left out with `exclude_unsatisfiable`).
    pub unsatisfiable: Vec<(DeviceId, Vec<String>)>,
    /// What pre-flight could not check, per device.
    pub unchecked: Vec<(DeviceId, Vec<String>)>,
    /// Devices already in another active rollout.
    pub busy: Vec<(DeviceId, RolloutId)>,
}

fn field(field: &'static str) -> impl Fn(String) -> PlanError {
    move |reason| PlanError::Field { field, reason }
}

/// Turns a request's text fields into an engine spec.
pub fn spec_of(request: &RolloutRequest, id: RolloutId) -> Result<RolloutSpec, PlanError> {
    let release = ReleaseId::new(request.release.clone())
        .map_err(|e| PlanError::Field { field: "release", reason: e.to_string() })?;
    let text = |v: &Option<String>, default: &str| v.clone().unwrap_or_else(|| default.to_owned());
    let waves = rollout::parse_waves(&text(&request.waves, DEFAULT_WAVES))?;
    let bake = parse_duration(&text(&request.bake, DEFAULT_BAKE)).map_err(field("bake"))?;
    let failure_threshold: Threshold = text(&request.failure_threshold, "0").parse()?;
    let on_failure: OnFailure = text(&request.on_failure, "pause").parse()?;
    let window = request.window.as_deref().map(MaintenanceWindow::parse).transpose()?;
    let device_timeout = parse_duration(&text(&request.device_timeout, DEFAULT_DEVICE_TIMEOUT))
        .map_err(field("device_timeout"))?;
    let update_deadline = parse_duration(&text(&request.update_deadline, DEFAULT_UPDATE_DEADLINE))
        .map_err(field("update_deadline"))?;
    let stagger = parse_duration(&text(&request.stagger, "0s")).map_err(field("stagger"))?;
    let spec = RolloutSpec {
        id,
        release,
        waves,
        bake,
        max_parallel: request.max_parallel,
        failure_threshold,
        on_failure,
        device_timeout,
        update_deadline,
        window,
        stagger,
    };
    spec.validate()?;
    Ok(spec)
}

/// Everything planning reads, gathered from the store.
#[derive(Debug)]
pub struct PlanInputs<'a> {
    /// Every device.
    pub devices: &'a [DeviceRecord],
    /// Inventories by device.
    pub inventories: &'a BTreeMap<DeviceId, Inventory>,
    /// Every group.
    pub groups: &'a [Group],
    /// Devices held by active rollouts.
    pub busy: &'a BTreeMap<DeviceId, RolloutId>,
    /// Ids of every stored release (a rollback can only return a device to one of them).
    pub releases: &'a BTreeSet<String>,
}

/// Resolves the target and runs pre-flight: which devices, in which waves, which pinned,
/// offline, busy or unable to run the release (pure).
pub fn plan(
    spec: &RolloutSpec,
    target: &Target,
    release: &ReleaseRecord,
    inputs: &PlanInputs<'_>,
    exclude_unsatisfiable: bool,
    seed: u64,
    now: UnixMillis,
) -> Result<(Rollout, Plan), PlanError> {
    let active = |d: &&DeviceRecord| d.refusal().is_none();
    let chosen: Vec<&DeviceRecord> = match target {
        Target::Group { name } => {
            let group = inputs
                .groups
                .iter()
                .find(|g| &g.name == name)
                .ok_or_else(|| PlanError::UnknownGroup { name: name.clone() })?;
            inputs
                .devices
                .iter()
                .filter(active)
                .filter(|d| group.selector.matches(&d.labels))
                .collect()
        }
        Target::Selector { selector } => {
            inputs.devices.iter().filter(active).filter(|d| selector.matches(&d.labels)).collect()
        }
        Target::Devices { ids } => {
            let wanted: BTreeSet<&DeviceId> = ids.iter().collect();
            let found: Vec<&DeviceRecord> =
                inputs.devices.iter().filter(active).filter(|d| wanted.contains(&d.id)).collect();
            if found.len() < wanted.len() {
                let known: BTreeSet<&DeviceId> = found.iter().map(|d| &d.id).collect();
                let devices = wanted
                    .iter()
                    .filter(|id| !known.contains(*id))
                    .map(|id| id.to_string())
                    .collect();
                return Err(PlanError::UnknownDevices { devices });
            }
            found
        }
    };
    if chosen.is_empty() {
        return Err(PlanError::NoDevices { target: target.to_string() });
    }
    let agent = release.is_agent();
    let mut pinned = Vec::new();
    let mut offline = Vec::new();
    let mut unsatisfiable = Vec::new();
    let mut unchecked = Vec::new();
    let mut busy = Vec::new();
    let mut targets = Vec::new();
    for d in chosen {
        if let Some(rollout) = inputs.busy.get(&d.id) {
            busy.push((d.id.clone(), *rollout));
        }
        // An agent rollout moves agents: the agent pin holds a device out of it.
        let pin = if agent { d.agent_pin_at(now) } else { d.pin_at(now) };
        if let Some(pin) = pin {
            pinned.push((d.id.clone(), pin.release.to_string(), pin.reason.clone()));
        } else {
            let DeviceCheck { unsatisfiable: why, unchecked: gaps } =
                preflight::check(d, inputs.inventories.get(&d.id), release, now);
            if !gaps.is_empty() {
                unchecked.push((d.id.clone(), gaps));
            }
            if !why.is_empty() {
                unsatisfiable.push((d.id.clone(), why));
                if exclude_unsatisfiable {
                    continue;
                }
            }
            if !d.online {
                offline.push(d.id.clone());
            }
        }
        targets.push(TargetDevice {
            id: d.id.clone(),
            pinned: pin.is_some(),
            previous_release: if agent {
                previous_agent_release(d, inputs.releases)
            } else {
                previous_release(d, inputs.releases)
            },
        });
    }
    let rollout = Rollout::new(spec.clone(), targets, now, seed)?;
    let plan = Plan {
        release: spec.release.clone(),
        target: target.clone(),
        seed,
        waves: rollout.plan(),
        pinned,
        offline,
        unsatisfiable,
        unchecked,
        busy,
    };
    Ok((rollout, plan))
}

/// Where a rollback returns a device: the release it runs now if the server has it (a release
/// applied locally on a bench robot is not the server's to restore), else the one it was
/// assigned before (`None`: none, or unknown).
fn previous_release(d: &DeviceRecord, known: &BTreeSet<String>) -> Option<ReleaseId> {
    [&d.release, &d.assigned_release]
        .into_iter()
        .flatten()
        .find(|r| known.contains(r.as_str()))
        .cloned()
}

/// Where a rollback of an agent rollout returns a device: the agent version it runs now, if
/// the server has its release or it is the version the device's package installed (the
/// device has that binary already; [`crate::desired::Releases::agent_target`]). `None`: it
/// keeps the version it has.
fn previous_agent_release(d: &DeviceRecord, known: &BTreeSet<String>) -> Option<ReleaseId> {
    let versions = d.agent_versions()?;
    let running = &versions.running;
    let id = format!("{}@{running}", crate::releases::AGENT_APP);
    let returnable = known.contains(&id) || versions.installed.as_ref() == Some(running);
    returnable.then(|| ReleaseId::new(id).ok()).flatten()
}

/// Which devices active rollouts hold.
pub fn busy_devices(rollouts: &[RolloutRecord]) -> BTreeMap<DeviceId, RolloutId> {
    let mut busy = BTreeMap::new();
    for r in rollouts.iter().filter(|r| r.rollout.state().is_active()) {
        for d in r.rollout.devices() {
            busy.insert(d.clone(), r.rollout.spec().id);
        }
    }
    busy
}

/// The engine's view of devices inside a store change.
pub struct TxObserver<'t, 'a> {
    /// The change.
    pub tx: &'t Tx<'a>,
    /// The time of the step.
    pub now: UnixMillis,
    /// The agent version the rollout installs, for a rollout of an agent release.
    pub agent: Option<&'t str>,
}

impl<'t, 'a> TxObserver<'t, 'a> {
    /// The view for a rollout of `release`.
    pub fn new(tx: &'t Tx<'a>, now: UnixMillis, release: &'t ReleaseId) -> TxObserver<'t, 'a> {
        let agent = agent_version(release);
        TxObserver { tx, now, agent }
    }
}

/// The version an agent release installs (`fleet-agent@1.2.0`: `1.2.0`); `None` for an
/// application release.
pub fn agent_version(release: &ReleaseId) -> Option<&str> {
    crate::releases::is_agent_release(release)
        .then(|| release.as_str().split_once('@').map(|(_, v)| v))
        .flatten()
}

impl std::fmt::Debug for TxObserver<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxObserver").field("now", &self.now).finish_non_exhaustive()
    }
}

impl Observe for TxObserver<'_, '_> {
    fn observe(&self, device: &DeviceId) -> Option<DeviceObservation> {
        match self.tx.device(device) {
            Ok(Some(record)) if record.refusal().is_none() => Some(match self.agent {
                Some(version) => DeviceObservation::for_agent(&record, version, self.now),
                None => DeviceObservation::from_record(&record, self.now),
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(%device, error = %e, "cannot read device record for the rollout");
                None
            }
        }
    }
}

/// Carries out the engine's actions inside the change that produced them: new assignments and
/// generations for targeted and rolled-back devices, an audit line for each action. Returns the
/// desired states to send.
pub fn carry_out(
    tx: &mut Tx<'_>,
    pki: &Pki,
    rollout: RolloutId,
    agent: Option<&str>,
    actions: &[Action],
    actor: &str,
    now: UnixMillis,
) -> Result<Vec<Outgoing>, DesiredError> {
    let mut releases = Releases::default();
    let mut outgoing = Vec::new();
    let agent_rollout = agent.is_some();
    for action in actions {
        let (device, assign, force) = match action {
            Action::Target { device, release } => (Some(device), Some(Some(release)), true),
            Action::Rollback { device, to } => (Some(device), Some(to.as_ref()), false),
            Action::DeviceHealthy { device }
            | Action::DeviceFailed { device, .. }
            | Action::DeviceSkipped { device, .. } => (Some(device), None, false),
            _ => (None, None, false),
        };
        let target = device.map_or_else(|| format!("rollout {rollout}"), |d| d.to_string());
        let verb = match action {
            Action::WaveStarted { .. } | Action::WaveCompleted { .. } => "rollout.wave",
            Action::Target { .. } => "rollout.target",
            Action::DeviceHealthy { .. } => "rollout.healthy",
            Action::DeviceFailed { .. } => "rollout.failed",
            Action::DeviceSkipped { .. } => "rollout.skipped",
            Action::Paused { .. } => "rollout.pause",
            Action::Resumed => "rollout.resume",
            Action::RollbackStarted { .. } | Action::Rollback { .. } => "rollout.rollback",
            Action::Completed => "rollout.complete",
            Action::Aborted => "rollout.abort",
            Action::Promoted { .. } => "rollout.promote",
            Action::Retried { .. } => "rollout.retry",
        };
        tx.audit(AuditEntry::new(now, actor, verb, target, format!("rollout {rollout}: {action}")));
        let (Some(device), Some(release)) = (device, assign) else { continue };
        let Some(mut record) = tx.device(device)? else { continue };
        let before = record.clone();
        match release {
            Some(r) if crate::releases::is_agent_release(r) => {
                record.assigned_agent = agent_version(r).map(str::to_owned);
            }
            // A rollback to "no agent release": the device keeps the version it runs.
            None if agent_rollout => record.assigned_agent = None,
            _ => record.assigned_release = release.cloned(),
        }
        match desired::retarget(tx, pki, &mut releases, &mut record, now, force) {
            Ok(Some(out)) => outgoing.push(out),
            Ok(None) => {}
            // A release deleted from under a rollback must not wedge the whole rollout: this
            // device keeps what it has, and the log says so.
            Err(DesiredError::UnknownRelease { release }) => {
                tx.audit(AuditEntry::new(
                    now,
                    actor,
                    "rollout.error",
                    device.to_string(),
                    format!("rollout {rollout}: release {release} is not stored; {device} keeps its desired state"),
                ));
                record = before;
            }
            // Nor must one device whose variables or secrets do not fit the release.
            Err(e) if e.refuses_device() => {
                let fix = match e {
                    DesiredError::Render { .. } => {
                        format!(" (fix its variables: `fleetctl var ls --device {device}`)")
                    }
                    _ => String::new(),
                };
                tx.audit(AuditEntry::new(
                    now,
                    actor,
                    "rollout.error",
                    device.to_string(),
                    format!("rollout {rollout}: {e}; {device} keeps its desired state{fix}"),
                ));
                record = before;
            }
            Err(e) => return Err(e),
        }
        tx.put_device(&record);
    }
    Ok(outgoing)
}

/// A manual command on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutCommand {
    /// Stop until resumed.
    Pause,
    /// Carry on.
    Resume,
    /// End where it stands.
    Abort,
    /// Send its devices back to their previous releases.
    Rollback,
    /// End the current wave's bake now.
    Promote,
    /// Target the failed devices again, in place.
    RetryFailed,
}

/// Why a command on a rollout did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such rollout.
    #[error("no rollout {0} (`fleetctl rollout ls` lists them)")]
    NotFound(u64),
    /// The rollout's state does not allow it.
    #[error(transparent)]
    State(#[from] rollout::CommandError),
    /// Desired states could not be decided.
    #[error(transparent)]
    Desired(#[from] DesiredError),
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> CommandError {
        CommandError::Desired(DesiredError::Store(e))
    }
}

/// Runs rollouts: steps each active one every second (and at once when woken), and carries out
/// what it asks for.
#[derive(Clone)]
pub struct Driver {
    store: Arc<Store>,
    pki: Arc<Pki>,
    publisher: Publisher,
    wake: Arc<Notify>,
    /// Devices whose desired state the broker did not take; sent again on the next tick.
    resend: Arc<std::sync::Mutex<BTreeSet<DeviceId>>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

/// How often rollouts step when nothing wakes them.
const TICK: Duration = Duration::from_secs(1);
/// The shortest time between two steps, however often reports wake the driver.
const MIN_STEP_GAP: Duration = Duration::from_millis(200);
/// How often expired pins are looked for.
const PIN_SWEEP: Duration = Duration::from_secs(30);
/// How long a send may wait for room in the MQTT client's queue.
const SEND_PATIENCE: Duration = Duration::from_secs(10);

impl Driver {
    /// A driver over the store, publishing through `publisher`.
    pub fn new(store: Arc<Store>, pki: Arc<Pki>, publisher: Publisher) -> Driver {
        Driver { store, pki, publisher, wake: Arc::new(Notify::new()), resend: Arc::default() }
    }

    /// Sends `device`'s recorded desired state again on the next tick (the broker did not take
    /// it).
    pub fn resend_later(&self, device: DeviceId) {
        self.queue_resend([device]);
        self.wake();
    }

    fn queue_resend(&self, devices: impl IntoIterator<Item = DeviceId>) {
        self.resend.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(devices);
    }

    /// Makes the driver step now (after a rollout was created or resumed, or a device
    /// reported).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Steps rollouts until the task is dropped.
    pub async fn run(self) {
        match self.publisher.republish_unconfirmed(&self.store, None).await {
            Ok(unsent) => self.queue_resend(unsent),
            Err(e) => tracing::error!(error = %e, "cannot resend unconfirmed desired states"),
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(PIN_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_step = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
                _ = sweep.tick() => {
                    self.expire_pins(UnixMillis::now()).await;
                    continue;
                }
            }
            // Reports wake the driver; a fleet reporting at once must not make it step
            // back to back, so steps are at least this far apart.
            tokio::time::sleep_until(last_step + MIN_STEP_GAP).await;
            last_step = tokio::time::Instant::now();
            let ids: Vec<DeviceId> = std::mem::take(
                &mut *self.resend.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            )
            .into_iter()
            .collect();
            if !ids.is_empty() {
                // Not woken again for these: the next tick retries them, at most once a second.
                match self.publisher.republish_unconfirmed(&self.store, Some(&ids)).await {
                    Ok(unsent) => self.queue_resend(unsent),
                    Err(e) => tracing::warn!(error = %e, "cannot resend desired states"),
                }
            }
            let unsent = self.step_all(UnixMillis::now()).await;
            self.queue_resend(unsent);
        }
    }

    /// Steps every active rollout once at `now`; returns the devices whose state could not be
    /// sent.
    pub async fn step_all(&self, now: UnixMillis) -> Vec<DeviceId> {
        let ids: Vec<u64> = match self.store.rollouts() {
            Ok(all) => all
                .iter()
                .filter(|r| r.rollout.state().is_active())
                .map(RolloutRecord::id)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read rollouts");
                return Vec::new();
            }
        };
        let mut unsent = Vec::new();
        for id in ids {
            match self.step_one(id, now) {
                Ok(outgoing) if !outgoing.is_empty() => {
                    unsent.extend(self.publisher.send_all(outgoing, now, SEND_PATIENCE).await);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(rollout = id, error = %e, "rollout step failed"),
            }
        }
        unsent
    }

    fn step_one(&self, id: u64, now: UnixMillis) -> Result<Vec<Outgoing>, DesiredError> {
        self.store.update_durable(|tx| {
            let Some(mut record) = tx.rollout(id)? else { return Ok(Vec::new()) };
            let release = record.rollout.spec().release.clone();
            let actions = record.rollout.step(now, &TxObserver::new(tx, now, &release));
            if actions.is_empty() {
                return Ok(Vec::new());
            }
            for a in &actions {
                tracing::info!(rollout = id, "{a}");
            }
            let rollout_id = record.rollout.spec().id;
            let agent = agent_version(&release);
            let outgoing = carry_out(tx, &self.pki, rollout_id, agent, &actions, SYSTEM, now)?;
            tx.put_rollout(&record);
            Ok(outgoing)
        })
    }

    /// Applies an operator's command; returns the rollout after it.
    pub async fn command(
        &self,
        id: u64,
        command: RolloutCommand,
        reason: Option<String>,
        actor: &str,
    ) -> Result<RolloutRecord, CommandError> {
        let now = UnixMillis::now();
        let (record, outgoing) = self.store.update_durable(|tx| {
            let mut record = tx.rollout(id)?.ok_or(CommandError::NotFound(id))?;
            let release = record.rollout.spec().release.clone();
            let actions = match command {
                RolloutCommand::Pause => record
                    .rollout
                    .pause(now, reason.clone().unwrap_or_else(|| "no reason given".to_owned()))?,
                RolloutCommand::Resume => record.rollout.resume(now)?,
                RolloutCommand::Abort => record.rollout.abort(now)?,
                RolloutCommand::Rollback => {
                    record.rollout.rollback(now, &TxObserver::new(tx, now, &release))?
                }
                RolloutCommand::Promote => record.rollout.promote(now)?,
                RolloutCommand::RetryFailed => {
                    record.rollout.retry_failed(now, &TxObserver::new(tx, now, &release))?
                }
            };
            let (rollout_id, agent) = (record.rollout.spec().id, agent_version(&release));
            let outgoing = carry_out(tx, &self.pki, rollout_id, agent, &actions, actor, now)?;
            tx.put_rollout(&record);
            Ok::<_, CommandError>((record, outgoing))
        })?;
        let unsent = self.publisher.send_all(outgoing, now, SEND_PATIENCE).await;
        if !unsent.is_empty() {
            tracing::warn!(
                rollout = id,
                unsent = unsent.len(),
                "some desired states wait for the broker; they are sent again"
            );
        }
        self.wake();
        Ok(record)
    }

    /// Returns devices whose pin lapsed to their assigned release.
    pub async fn expire_pins(&self, now: UnixMillis) {
        // Summaries: the pins without the reports (a sweep of 10,000 devices in a third of the
        // time whole records take).
        let lapsed: Vec<DeviceId> = match self.store.device_summaries() {
            Ok(all) => all
                .into_iter()
                .filter(|d| [&d.pin, &d.agent_pin].into_iter().flatten().any(|p| !p.holds(now)))
                .map(|d| d.id)
                .collect(),
            Err(e) => return tracing::error!(error = %e, "cannot read devices for pin expiry"),
        };
        if lapsed.is_empty() {
            return;
        }
        let result = self.store.update_durable(|tx| {
            let mut releases = Releases::default();
            let mut outgoing = Vec::new();
            for id in &lapsed {
                let Some(mut record) = tx.device(id)? else { continue };
                let mut lapsed_any = false;
                for held in [&mut record.pin, &mut record.agent_pin] {
                    let Some(pin) = held.take_if(|p| !p.holds(now)) else { continue };
                    lapsed_any = true;
                    tx.audit(AuditEntry::new(
                        now,
                        SYSTEM,
                        "device.unpin",
                        id.to_string(),
                        format!(
                            "pin to {} by {} expired (reason was: {})",
                            pin.release, pin.pinned_by, pin.reason
                        ),
                    ));
                }
                if !lapsed_any {
                    continue;
                }
                if let Some(out) =
                    desired::retarget(tx, &self.pki, &mut releases, &mut record, now, false)?
                {
                    outgoing.push(out);
                }
                tx.put_device(&record);
            }
            Ok::<_, DesiredError>(outgoing)
        });
        match result {
            Ok(outgoing) => {
                self.publisher.send_all(outgoing, now, SEND_PATIENCE).await;
            }
            Err(e) => tracing::error!(error = %e, "cannot expire pins"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_and_without_a_prefix() {
        assert_eq!(Target::parse("depot").unwrap(), Target::Group { name: "depot".into() });
        assert_eq!(Target::parse("group:depot").unwrap(), Target::Group { name: "depot".into() });
        assert!(matches!(Target::parse("site=depot,model=r2").unwrap(), Target::Selector { .. }));
        assert!(matches!(Target::parse("selector:gpu").unwrap(), Target::Selector { .. }));
        let Target::Devices { ids } = Target::parse("devices:robot-1, robot-2").unwrap() else {
            panic!("a device list")
        };
        assert_eq!(ids.len(), 2);
        assert!(Target::parse("devices:robot 1").is_err());
        assert!(Target::parse("").is_err());
        for text in ["group:depot", "selector:site=depot", "devices:a,b"] {
            assert_eq!(Target::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn a_request_with_defaults_becomes_a_valid_spec_and_bad_fields_are_named() {
        let request = RolloutRequest {
            release: "app@2".into(),
            target: "depot".into(),
            waves: None,
            bake: None,
            max_parallel: None,
            failure_threshold: None,
            on_failure: None,
            window: None,
            device_timeout: None,
            update_deadline: None,
            stagger: None,
            exclude_unsatisfiable: false,
            seed: None,
        };
        let spec = spec_of(&request, RolloutId(1)).unwrap();
        assert_eq!(spec.waves.len(), 4);
        assert_eq!(spec.bake, Duration::from_secs(600));
        let bad = RolloutRequest { bake: Some("ten minutes".into()), ..request.clone() };
        let err = spec_of(&bad, RolloutId(1)).unwrap_err().to_string();
        assert!(err.starts_with("bake: duration \"ten minutes\""), "{err}");
        let bad = RolloutRequest { waves: Some("50%,10%".into()), ..request };
        assert!(spec_of(&bad, RolloutId(1)).is_err());
    }

    #[tokio::test]
    async fn the_sweep_lifts_lapsed_pins_of_both_kinds_and_leaves_holding_ones() {
        let h = crate::test_support::harness();
        h.put_release();
        for id in ["app-lapsed", "agent-lapsed", "holding"] {
            h.put_device(id, &[]);
        }
        let now = UnixMillis::now();
        let release = fleet_proto::samples::release_id();
        let pin = |until: u64| crate::devices::PinRecord {
            release: release.clone(),
            reason: "bench".into(),
            pinned_by: "alice".into(),
            pinned_at: UnixMillis(0),
            until: Some(UnixMillis(until)),
        };
        h.api
            .store
            .update(|tx| -> Result<(), StoreError> {
                let mut d = tx.device(&DeviceId::new("app-lapsed").unwrap())?.unwrap();
                d.pin = Some(pin(now.0 - 1));
                tx.put_device(&d);
                // Only its agent pin: the sweep must see agent pins too.
                let mut d = tx.device(&DeviceId::new("agent-lapsed").unwrap())?.unwrap();
                d.agent_pin = Some(pin(now.0 - 1));
                tx.put_device(&d);
                let mut d = tx.device(&DeviceId::new("holding").unwrap())?.unwrap();
                d.pin = Some(pin(now.0 + 3_600_000));
                tx.put_device(&d);
                Ok(())
            })
            .unwrap();
        h.api.driver.expire_pins(now).await;
        assert!(h.device("app-lapsed").pin.is_none());
        assert!(h.device("agent-lapsed").agent_pin.is_none());
        assert!(h.device("holding").pin.is_some());
        let audit = h.api.store.audit(UnixMillis(0), 10).unwrap();
        assert!(audit.iter().any(|e| e.target == "agent-lapsed"), "{audit:?}");
    }
}
