//! The executor: carries out plans from [`crate::plan`] through a [`ContainerRuntime`], with
//! health gates, retries and automatic rollback.
//!
//! Invariants:
//! * The accepted desired state is on disk before any container changes, and every step is
//!   journalled before and after it runs; after a crash, [`Reconciler::converge`] re-plans from
//!   what the engine shows and ends in either the old or the new release, never neither
//!   (the planner removes old containers only after every new one is healthy).
//! * A release that fails its health gate is rolled back to the last release proven healthy and
//!   its origin is marked failed: it is not retried until a newer desired state arrives.
//! * A pull failure changes nothing (pulls come first); the device stays on its release.
//!
//! Layout: this file holds the executor (accept, converge, roll back; run a plan step by step
//! under the lock gate and the disk check); `steps.rs` carries out one step against the
//! engine (with retries) and builds its engine request; `health.rs` is the health gate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::report::{Deferred, UpdateOutcome, UpdatePhase, UpdateResult, UpdateStatus};
use fleet_proto::{DeviceId, ImageRef, RegistryCredential, ReleaseSpec, ServiceName, UnixMillis};

use crate::hardware::{HardwarePolicy, HostHardware};
use crate::lock::UpdateLocks;
use crate::plan::{self, Mappings, Step};
use crate::proxy::{ProxyClient, ProxyError};
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::state::{Accepted, AgentState, JournalEntry, Origin, Proven, StateError};

mod health;
mod levels;
mod steps;

/// Tunables of the executor.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Attempts for a step that fails with a transient engine error.
    pub attempts: u32,
    /// First retry delay; doubles per attempt.
    pub retry_delay: Duration,
    /// How often a health wait re-inspects the container.
    pub health_poll: Duration,
    /// A container without a health check must run this long without restarting to count as
    /// healthy (catches crash loops).
    pub stable_for: Duration,
    /// Restarts during a health wait that count as a crash loop.
    pub max_restarts: u32,
    /// Grace period when stopping a container.
    pub stop_grace: Duration,
    /// Free disk the engine must keep after an update's downloads; an update that would go
    /// below it fails before pulling, and the device stays on its release.
    pub disk_reserve: u64,
    /// Test-only fault hook: abort the process when about to run the step whose kind (or
    /// `kind:n`, the n-th such step, 1-based) matches. From `FLEET_AGENT_FAULT`; only in
    /// builds with the `fault-injection` feature (the tests' builds, never the shipped agent).
    #[cfg(feature = "fault-injection")]
    pub fault: Option<String>,
    /// The telemetry socket directory, mounted read-only at `/run/fleet` into services that
    /// send telemetry; `None`: telemetry ingestion is off.
    pub telemetry_dir: Option<std::path::PathBuf>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            attempts: 3,
            retry_delay: Duration::from_millis(500),
            health_poll: Duration::from_millis(50),
            stable_for: Duration::from_secs(2),
            max_restarts: 2,
            stop_grace: Duration::from_secs(10),
            disk_reserve: 500_000_000,
            #[cfg(feature = "fault-injection")]
            fault: std::env::var("FLEET_AGENT_FAULT").ok().filter(|f| !f.is_empty()),
            telemetry_dir: None,
        }
    }
}

/// Why an update step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The engine failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The service did not become healthy.
    #[error("service {service} {reason}")]
    Unhealthy {
        /// The service.
        service: ServiceName,
        /// What happened, e.g. "not healthy within 30s".
        reason: String,
        /// Its last log lines.
        log_tail: Vec<String>,
    },
    /// The agent's state could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// Not enough free disk to download the release and keep the reserve.
    #[error("not enough disk to download the release: needs {} MB free ({} MB of images + {} MB reserve), {} MB free", .needed / 1_000_000, .download / 1_000_000, .reserve / 1_000_000, .free / 1_000_000)]
    Disk {
        /// Bytes needed (reserve plus what is known of the downloads).
        needed: u64,
        /// Bytes the pulls download, as far as the registries tell.
        download: u64,
        /// The configured reserve.
        reserve: u64,
        /// Bytes free.
        free: u64,
    },
    /// The release cannot run on this device as it is now: hardware it needs is absent, or it
    /// does not pass admission control (memory, cpusets, privileges). Found before anything
    /// is stopped; retried when the hardware changes and on every resync.
    #[error("unsatisfiable on this device: {}", .problems.join("; "))]
    Unsatisfiable {
        /// Every problem, each naming its field.
        problems: Vec<String>,
    },
    /// The port proxy cannot take a service's host port, or does not answer.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A container to switch to does not publish a port the service needs.
    #[error("service {service}: container {name} does not publish every port of the service; it may have stopped")]
    NotPublished {
        /// The service.
        service: ServiceName,
        /// The container.
        name: String,
    },
    /// An update lock is held: the images are downloaded, the switch waits.
    #[error("deferred: locked by {holder} until {} (ms since epoch)", until.0)]
    Deferred {
        /// The lock holder whose lease ends last.
        holder: String,
        /// When that lease ends.
        until: UnixMillis,
    },
}
/// Drives one device's containers toward its accepted desired state.
#[derive(Debug)]
pub struct Reconciler<R> {
    runtime: Arc<R>,
    device: DeviceId,
    state: AgentState,
    opts: ExecOptions,
    credentials: Vec<RegistryCredential>,
    #[cfg(feature = "fault-injection")]
    fault_count: std::sync::atomic::AtomicU32,
    locks: Option<UpdateLocks>,
    proxy: Option<ProxyClient>,
    force: std::sync::atomic::AtomicBool,
    /// What the update machinery is doing now (phase, pull progress, deferral), for reports.
    status: tokio::sync::watch::Sender<UpdateStatus>,
    /// This host's hardware as last scanned; replaced on hot-plug.
    hardware: std::sync::RwLock<Arc<HostHardware>>,
    /// What this device's configuration allows.
    hardware_policy: HardwarePolicy,
}

impl<R: ContainerRuntime> Reconciler<R> {
    /// A reconciler for `device`.
    pub fn new(runtime: Arc<R>, device: DeviceId, state: AgentState, opts: ExecOptions) -> Self {
        Reconciler {
            runtime,
            device,
            state,
            opts,
            credentials: vec![],
            #[cfg(feature = "fault-injection")]
            fault_count: Default::default(),
            locks: None,
            proxy: None,
            force: Default::default(),
            status: tokio::sync::watch::Sender::new(UpdateStatus::default()),
            hardware: Default::default(),
            hardware_policy: HardwarePolicy::default(),
        }
    }

    /// Judge releases against this host's hardware and this policy. Without it the host has
    /// no hardware: a release asking for any is unsatisfiable.
    pub fn with_hardware(self, hardware: HostHardware, policy: HardwarePolicy) -> Self {
        self.set_hardware(hardware);
        Reconciler { hardware_policy: policy, ..self }
    }

    /// Replaces the host's hardware after a rescan (hot-plug); the next converge maps with it.
    pub fn set_hardware(&self, hardware: HostHardware) {
        if let Ok(mut hw) = self.hardware.write() {
            *hw = Arc::new(hardware);
        }
    }

    /// The host's hardware as last scanned.
    pub fn hardware(&self) -> Arc<HostHardware> {
        self.hardware.read().map(|hw| Arc::clone(&hw)).unwrap_or_default()
    }

    /// Each service's hardware mapped on this host, or why the release cannot run here.
    pub fn admit(&self, target: Option<&ReleaseSpec>) -> Result<Mappings, StepError> {
        let Some(release) = target else { return Ok(Mappings::new()) };
        let admitted =
            crate::hardware::admit::admit(release, &self.hardware(), &self.hardware_policy);
        let links =
            crate::binds::symlinked_binds(release, &self.hardware_policy.policy.allowed_host_paths);
        match admitted {
            Ok(mappings) if links.is_empty() => Ok(mappings),
            Ok(_) => Err(StepError::Unsatisfiable { problems: links }),
            Err(errors) => Err(StepError::Unsatisfiable {
                problems: errors.iter().map(ToString::to_string).chain(links).collect(),
            }),
        }
    }

    /// Refuses a release whose services need a runtime the engine lacks (asking the engine
    /// only when a service names one, or its hardware does).
    async fn admit_runtimes(
        &self,
        target: Option<&ReleaseSpec>,
        hardware: &Mappings,
    ) -> Result<(), StepError> {
        let Some(release) = target else { return Ok(()) };
        let wanted = release.services.iter().any(|s| s.options.runtime.is_some())
            || hardware.values().any(|m| m.runtime.is_some());
        if !wanted {
            return Ok(());
        }
        let available = self.runtime.runtimes().await?;
        let problems =
            crate::runtime::admit::runtime_problems(release, hardware, available.as_deref());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StepError::Unsatisfiable { problems })
        }
    }

    /// Honour update locks in this directory (see [`crate::lock`]).
    pub fn with_locks(mut self, locks: UpdateLocks) -> Self {
        self.locks = Some(locks);
        self
    }

    /// Publish the host ports of start-first services through this port proxy (blue/green
    /// switch). Without one, such services update stop-first.
    pub fn with_proxy(mut self, proxy: ProxyClient) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Like [`Self::apply`], but `force` switches even while update locks are held.
    pub async fn apply_forced(
        &self,
        origin: Origin,
        release: Option<ReleaseSpec>,
        force: bool,
    ) -> Result<UpdateOutcome, StepError> {
        self.force.store(force, std::sync::atomic::Ordering::SeqCst);
        let result = self.apply(origin, release).await;
        self.force.store(false, std::sync::atomic::Ordering::SeqCst);
        result
    }

    /// Defers the switch while a lease is in force, unless forced. A lock directory that
    /// cannot be read counts as locked: deferring is the safe side for a robot mid-mission.
    fn lock_gate(&self) -> Result<(), StepError> {
        let Some(locks) = &self.locks else { return Ok(()) };
        if self.force.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let now = UnixMillis::now();
        match locks.active(now) {
            Ok(leases) => match leases.first() {
                None => Ok(()),
                Some(l) => Err(StepError::Deferred { holder: l.holder.clone(), until: l.until }),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read update locks; deferring as if locked");
                Err(StepError::Deferred {
                    holder: format!("unreadable lock directory ({e})"),
                    until: now.saturating_add(Duration::from_secs(30)),
                })
            }
        }
    }

    /// What the update machinery is doing now; `last_outcome` is left to the state store.
    pub fn status(&self) -> UpdateStatus {
        self.status.borrow().clone()
    }

    /// Notified whenever [`Self::status`] changes (phase, pull progress).
    pub fn status_updates(&self) -> tokio::sync::watch::Receiver<UpdateStatus> {
        self.status.subscribe()
    }

    fn set_phase(&self, phase: UpdatePhase) {
        self.status.send_if_modified(|s| {
            let changed = s.phase != phase;
            s.phase = phase;
            if phase != UpdatePhase::Pulling {
                s.pull = None;
            }
            if phase != UpdatePhase::Deferred {
                s.deferred = None;
            }
            changed
        });
    }

    /// Registry credentials to use for pulls (from config and desired state).
    pub fn set_credentials(&mut self, credentials: Vec<RegistryCredential>) {
        self.credentials = credentials;
    }

    /// The state store.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<R> {
        &self.runtime
    }

    /// Accepts a new desired release (persisted first), then converges to it.
    pub async fn apply(
        &self,
        origin: Origin,
        release: Option<ReleaseSpec>,
    ) -> Result<UpdateOutcome, StepError> {
        self.state.set_desired(&Accepted { origin, release, accepted_at: UnixMillis::now() })?;
        Ok(self.converge().await?.unwrap_or_else(|| outcome(origin, UpdateResult::Applied)))
    }

    /// Converges to the accepted desired state (or, if that one was rolled back, to the proven
    /// release). Returns `None` when there was nothing to do.
    pub async fn converge(&self) -> Result<Option<UpdateOutcome>, StepError> {
        let result = self.converge_inner().await;
        self.status.send_modify(|s| {
            s.target_generation = None;
            s.pull = None;
            match &result {
                Err(StepError::Deferred { holder, until }) => {
                    s.phase = UpdatePhase::Deferred;
                    s.deferred = Some(Deferred { holder: holder.clone(), until: *until });
                }
                _ => {
                    s.phase = UpdatePhase::Idle;
                    s.deferred = None;
                }
            }
        });
        result
    }

    async fn converge_inner(&self) -> Result<Option<UpdateOutcome>, StepError> {
        let Some(desired) = self.state.desired()? else { return Ok(None) };
        let proven = self.state.proven()?;
        if self.state.failed()? == Some(desired.origin) {
            // Stay on the rollback target; repair it if a container vanished.
            let target = proven.as_ref().and_then(|p| p.release.clone());
            if self
                .run_plan_with(
                    &format!("{:?} (rolled back)", desired.origin),
                    target.as_ref(),
                    true,
                )
                .await
                .is_err()
            {
                tracing::warn!("could not restore every container of the rollback release; retrying on the next resync");
            }
            return Ok(None);
        }
        let update = format!("{:?}", desired.origin);
        if proven.as_ref().is_some_and(|p| p.origin == desired.origin) {
            // Steady state: recreate or restart what is missing or stopped, but a service that
            // is unhealthy or crash-looping after a proven update is reported, not rolled back.
            if let Err(e) = self
                .run_plan_with(&format!("{update} repair"), desired.release.as_ref(), true)
                .await
            {
                tracing::warn!(update, error = %e, "could not repair the release in force; retrying on the next resync");
            }
            return Ok(None);
        }
        if let Origin::Server { generation } = desired.origin {
            self.status.send_modify(|s| s.target_generation = Some(generation));
        }
        match self.run_plan(&update, desired.release.as_ref()).await {
            Ok(_) => {
                self.state.set_proven(&Proven {
                    origin: desired.origin,
                    release: desired.release.clone(),
                    proven_at: UnixMillis::now(),
                })?;
                self.prune_images().await;
                let done = outcome(desired.origin, UpdateResult::Applied);
                self.state.set_last_outcome(&done)?;
                tracing::info!(update, "update applied");
                Ok(Some(done))
            }
            Err(e @ (StepError::Disk { .. } | StepError::Unsatisfiable { .. })) => {
                // Nothing changed: checked before the first download. Retried on the next resync
                // (and, for hardware, when a device arrives).
                let done = outcome(desired.origin, UpdateResult::Failed { reason: e.to_string() });
                self.state.set_last_outcome(&done)?;
                tracing::warn!(update, reason = %e, "update failed before changing anything");
                Ok(Some(done))
            }
            Err(StepError::Runtime(RuntimeError::Pull { image, reason })) => {
                // Nothing changed yet: pulls come first. Retried on the next resync.
                let done = outcome(
                    desired.origin,
                    UpdateResult::Failed { reason: format!("pull of {image} failed: {reason}") },
                );
                self.state.set_last_outcome(&done)?;
                tracing::warn!(update, %image, %reason, "update failed before changing anything");
                Ok(Some(done))
            }
            // The engine went away mid-update (e.g. dockerd restarting): not the release's fault.
            // Nothing is rolled back or marked failed; the idempotent plan resumes on the next
            // resync from whatever the engine then shows.
            Err(
                e @ (StepError::State(_)
                | StepError::Deferred { .. }
                | StepError::Runtime(RuntimeError::Unreachable { .. })),
            ) => Err(e),
            Err(e) => {
                let (service, log_tail) = match &e {
                    StepError::Unhealthy { service, log_tail, .. } => {
                        (Some(service.clone()), log_tail.clone())
                    }
                    _ => (None, vec![]),
                };
                let reason = e.to_string();
                tracing::warn!(update, %reason, "update failed; rolling back to the last proven release");
                self.state.set_failed(Some(desired.origin))?;
                self.set_phase(UpdatePhase::RollingBack);
                let target = proven.as_ref().and_then(|p| p.release.clone());
                let result =
                    match self.run_plan(&format!("{update} rollback"), target.as_ref()).await {
                        Ok(_) => UpdateResult::RolledBack { reason, service, log_tail },
                        Err(rb) => UpdateResult::Failed {
                            reason: format!("{reason}; rollback also failed: {rb}"),
                        },
                    };
                let done = outcome(desired.origin, result);
                self.state.set_last_outcome(&done)?;
                Ok(Some(done))
            }
        }
    }

    /// Plans toward `target` and runs every step; returns how many steps ran.
    async fn run_plan(
        &self,
        update: &str,
        target: Option<&ReleaseSpec>,
    ) -> Result<usize, StepError> {
        self.run_plan_with(update, target, false).await
    }

    /// [`Self::run_plan`]; with `repair`, health waits are skipped (steady state).
    async fn run_plan_with(
        &self,
        update: &str,
        target: Option<&ReleaseSpec>,
        repair: bool,
    ) -> Result<usize, StepError> {
        let hardware = self.admit(target)?;
        self.admit_runtimes(target, &hardware).await?;
        let observed = self.runtime.list(&self.device).await?;
        let mut present = BTreeMap::new();
        for spec in target.map(|t| t.services.iter()).into_iter().flatten() {
            present.insert(spec.image.pull_ref(), self.runtime.has_image(&spec.image).await?);
        }
        let routes = match &self.proxy {
            Some(proxy) => Some(proxy_routes(proxy, target).await?),
            None => None,
        };
        let mut steps = plan::plan_with_hardware(
            &self.device,
            target,
            &observed,
            &|i: &ImageRef| present.get(&i.pull_ref()).copied().unwrap_or(false),
            routes.as_ref(),
            &hardware,
        );
        if repair {
            steps.retain(|s| !matches!(s, Step::WaitHealthy { .. }));
        }
        if let Some(t) = target.filter(|_| steps.iter().any(|s| s.kind() == "create")) {
            self.prepare_objects(t).await?;
        }
        let pulls: Vec<&ImageRef> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Pull { image } => Some(image),
                _ => None,
            })
            .collect();
        if !pulls.is_empty() {
            self.check_disk(&pulls).await?;
        }
        let mut gated = repair;
        let mut i = 0;
        // Pull progress over all the plan's downloads: bytes of finished pulls plus the current
        // one; the total is known once the last pull knows its own.
        let pulls = steps.iter().filter(|s| s.kind() == "pull").count();
        let mut pulled = (0usize, 0u64);
        while i < steps.len() {
            let step = &steps[i];
            if !gated && step.kind() != "pull" {
                gated = true;
                if let Err(e) = self.lock_gate() {
                    self.journal(update, step, &e.to_string())?;
                    return Err(e);
                }
            }
            // Services that do not depend on each other are created, started and judged
            // together, a level at a time (levels.rs).
            let (run, levels) = levels::concurrent_run(&steps[i..], target);
            if run > 0 {
                for level in &levels {
                    let chains = level.iter().map(|chain| {
                        let chain: Vec<&Step> = chain.iter().map(|&k| &steps[i + k]).collect();
                        self.run_chain(update, target, &hardware, chain, repair)
                    });
                    // The first failure fails the update at once: the level's other chains
                    // are dropped where they are (every runtime call is cancel-safe, and the
                    // rollback plans from what the engine then reports), so a crash is not
                    // held up by a sibling's health wait.
                    futures_util::future::try_join_all(chains).await?;
                }
                i += run;
                continue;
            }
            // Consecutive stops run together: each may wait out its grace period, and nothing
            // depends on the order in which old containers go down.
            let batch = if step.kind() == "stop" {
                steps[i..].iter().take_while(|s| s.kind() == "stop").count()
            } else {
                1
            };
            let batch = &steps[i..i + batch];
            if !repair && !update.ends_with("rollback") {
                self.set_phase(match step {
                    Step::Pull { .. } => UpdatePhase::Pulling,
                    Step::Create { .. } | Step::Start { .. } => UpdatePhase::Starting,
                    Step::WaitHealthy { .. } => UpdatePhase::WaitingHealthy,
                    Step::Unroute { .. }
                    | Step::Switch { .. }
                    | Step::Stop { .. }
                    | Step::Remove { .. } => UpdatePhase::Switching,
                });
            }
            for step in batch {
                self.journal(update, step, "begin")?;
                #[cfg(feature = "fault-injection")]
                self.fault_hook(step);
            }
            let results = futures_util::future::join_all(
                batch.iter().map(|step| self.run_step(target, &hardware, step, (pulls, pulled))),
            )
            .await;
            if step.kind() == "pull" {
                pulled.0 += 1;
                pulled.1 = self.status.borrow().pull.map_or(pulled.1, |p| p.bytes_done);
            }
            let mut first_error = None;
            for (step, result) in batch.iter().zip(results) {
                match result {
                    Ok(()) => self.journal(update, step, "done")?,
                    Err(e) => {
                        self.journal(update, step, &format!("failed: {e}"))?;
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            i += batch.len();
        }
        if !steps.is_empty() {
            self.remove_stale_networks(target).await;
        }
        Ok(steps.len())
    }

    /// Runs one service's steps of a concurrent level in order, each journaled; stops at the
    /// first that fails.
    async fn run_chain(
        &self,
        update: &str,
        target: Option<&ReleaseSpec>,
        hardware: &Mappings,
        chain: Vec<&Step>,
        repair: bool,
    ) -> Result<(), StepError> {
        for step in chain {
            if !repair && !update.ends_with("rollback") {
                self.set_phase(match step {
                    Step::WaitHealthy { .. } => UpdatePhase::WaitingHealthy,
                    _ => UpdatePhase::Starting,
                });
            }
            self.journal(update, step, "begin")?;
            #[cfg(feature = "fault-injection")]
            self.fault_hook(step);
            match self.run_step(target, hardware, step, (0, (0, 0))).await {
                Ok(()) => self.journal(update, step, "done")?,
                Err(e) => {
                    self.journal(update, step, &format!("failed: {e}"))?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Refuses to start downloading when the images (compressed, as the registries' manifests
    /// say) plus the reserve do not fit on the engine's disk. Sizes a registry does not tell
    /// count as zero: the reserve is still kept. Layers the engine already has are counted
    /// too, which errs on the side of the disk.
    async fn check_disk(&self, images: &[&ImageRef]) -> Result<(), StepError> {
        let reserve = self.opts.disk_reserve;
        let Some(free) = self.runtime.free_disk().await? else { return Ok(()) };
        let mut download = 0u64;
        for image in images {
            let size = self.runtime.download_size(image, self.credential_for(image)).await;
            download = download.saturating_add(size.unwrap_or(0));
        }
        let needed = download.saturating_add(reserve);
        if free < needed {
            return Err(StepError::Disk { needed, download, reserve, free });
        }
        tracing::debug!(download, free, reserve, "disk check passed");
        Ok(())
    }

    fn journal(&self, update: &str, step: &Step, phase: &str) -> Result<(), StateError> {
        self.state.journal(&JournalEntry {
            at: UnixMillis::now(),
            update: update.to_owned(),
            step: step.to_string(),
            phase: phase.to_owned(),
        })
    }

    /// Aborts the process at the configured step (crash-safety tests kill the agent this way).
    #[cfg(feature = "fault-injection")]
    fn fault_hook(&self, step: &Step) {
        let Some(fault) = &self.opts.fault else { return };
        let (kind, nth) = match fault.split_once(':') {
            Some((k, n)) => (k, n.parse::<u32>().unwrap_or(1)),
            None => (fault.as_str(), 1),
        };
        if kind == step.kind() || kind == "any" {
            let seen = self.fault_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if seen == nth {
                eprintln!("fleet-agent: FLEET_AGENT_FAULT={fault}: aborting before {step}");
                std::process::abort();
            }
        }
    }

    /// Deletes the volumes (and data) of apps this device runs no more: not those of the
    /// release in force, nor of one being updated to. Returns the volumes deleted; a volume a
    /// container still uses is refused by the engine and reported.
    pub async fn purge_volumes(&self) -> Result<Vec<String>, StepError> {
        let desired = self.state.desired()?.and_then(|d| d.release);
        let proven = self.state.proven()?.and_then(|p| p.release);
        let keep: Vec<&str> = desired.iter().chain(proven.iter()).map(|r| r.app.as_str()).collect();
        let volumes = self.runtime.volumes().await?;
        let mut removed = Vec::new();
        for name in crate::objects::purgeable_volumes(&self.device, &keep, &volumes) {
            self.runtime.remove_volume(name).await?;
            tracing::info!(volume = %name, "purged the volume of an app this device no longer runs");
            removed.push(name.to_owned());
        }
        Ok(removed)
    }

    /// The configured login for the registry `image` comes from, if any.
    fn credential_for(&self, image: &ImageRef) -> Option<&RegistryCredential> {
        image.registry().and_then(|r| self.credentials.iter().find(|c| c.registry == r))
    }

    /// Removes images this device no longer needs: neither the proven nor the previous release
    /// uses them. Only images of releases this agent ran are candidates; others on a shared
    /// engine are left alone.
    async fn prune_images(&self) {
        let releases = [self.state.proven(), self.state.previous()];
        let keep: Vec<String> = releases
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(Option::as_ref))
            .filter_map(|p| p.release.as_ref())
            .flat_map(|r| r.services.iter().map(|s| s.image.pull_ref()))
            .collect();
        let Ok(known) = self.state.known_images() else { return };
        for image in known.into_iter().filter(|i| !keep.contains(i)) {
            match self.runtime.remove_image(&image).await {
                Ok(()) => {
                    let _ = self.state.forget_image(&image);
                    tracing::info!(%image, "removed image no release on this device needs");
                }
                Err(e) => tracing::debug!(%image, error = %e, "image not removed"),
            }
        }
    }
}

fn outcome(origin: Origin, result: UpdateResult) -> UpdateOutcome {
    let generation = match origin {
        Origin::Server { generation } => generation,
        Origin::Local { .. } => 0,
    };
    UpdateOutcome { generation, finished_at: UnixMillis::now(), result }
}

/// The proxy's routes. A release that proxies a port starts the proxy if none runs; one that
/// proxies none only asks a proxy that runs already (its routes must be closed), so a device
/// without start-first ports never runs a proxy process.
async fn proxy_routes(
    proxy: &ProxyClient,
    target: Option<&ReleaseSpec>,
) -> Result<plan::Routes, ProxyError> {
    let needed = target.is_some_and(|t| t.services.iter().any(|s| plan::proxied(s, true)));
    if needed {
        return proxy.routes().await;
    }
    Ok(proxy.status_if_running().await.map(|s| s.routes()).unwrap_or_default())
}
