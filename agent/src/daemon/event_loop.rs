//! The daemon's loop: one `select!` over shutdown, the resync tick, hot-plug, engine events,
//! the admin socket and the link; each branch calls one named method. Also what those
//! methods share: keeping `status.json` (and the server) informed, and events.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{Event, EventKind, Severity, UnixMillis};
use tokio::time::{Instant, MissedTickBehavior};

use super::{lease_end, scan_hardware, AgentFetch, Daemon, DaemonError, Stopped};
use crate::accept::check_local_release;
use crate::admin::{Answer, Call, Request};
use crate::hardware;
use crate::host::Notify;
use crate::link::{Inbound, Inbox, Outgoing};
use crate::reconcile::StepError;
use crate::report;
use crate::runtime::ContainerRuntime;
use crate::slots;
use crate::state::Origin;

/// Quiet period after an engine event before converging, so a burst of events (die, stop,
/// destroy) causes one converge.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(500);

/// The next hot-plug notice, or never without a watch.
async fn next_hotplug(hotplug: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match hotplug {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The end of the agent download in progress, or never without one.
async fn next_fetch(
    fetch: &mut Option<tokio::task::JoinHandle<AgentFetch>>,
) -> Result<AgentFetch, tokio::task::JoinError> {
    let Some(handle) = fetch else { return std::future::pending().await };
    let done = handle.await;
    *fetch = None;
    done
}

/// The next message from the server, or never without a link.
async fn next_inbound(inbox: &mut Option<Inbox>) -> Option<Inbound> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

impl<R: ContainerRuntime> Daemon<R> {
    pub(super) async fn run(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut admin_calls: tokio::sync::mpsc::Receiver<Call>,
        mut inbox: Option<Inbox>,
        mut hotplug: Option<tokio::sync::mpsc::Receiver<()>>,
    ) -> Result<Stopped, DaemonError> {
        tokio::pin!(shutdown);
        let device = self.config.device_id.clone();
        tracing::info!(%device, "fleet-agent {} started", crate::AGENT_VERSION);
        // Before the first converge: it starts the services whose secret files a reboot took.
        self.restore_secret_files();
        self.host.notify(Notify::Ready);

        let mut events = self.reconciler.runtime().events(&device);
        let mut resync = tokio::time::interval(self.config.resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let watchdog = self.host.watchdog_interval().map(|every| {
            let host = Arc::clone(&self.host);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    host.notify(Notify::Watchdog);
                }
            })
        });
        let debounce = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(debounce);
        let mut pending = false;

        // A version on trial checks every second whether it may commit, or must give up.
        let mut trial_tick = tokio::time::interval(Duration::from_secs(1));
        trial_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

        // The first resync tick fires at once: that is the converge at start.
        let stopped = loop {
            tokio::select! {
                () = &mut shutdown => break Stopped::Signal,
                _ = trial_tick.tick(), if self.trial.is_some() => {
                    if let Some(e) = self.check_trial().await {
                        if let Some(watchdog) = &watchdog {
                            watchdog.abort();
                        }
                        return Err(e);
                    }
                }
                // Every converge goes through the debounce timer below, so there is one place
                // that converges and a burst of events right after a tick causes one converge.
                _ = resync.tick() => {
                    if self.rescan_on_resync {
                        self.rescan_hardware().await;
                    }
                    // A download the server asked for that failed or was cut off by a restart.
                    self.start_agent_fetch();
                    pending = true;
                    debounce.as_mut().reset(Instant::now());
                }
                notice = next_hotplug(&mut hotplug) => match notice {
                    // Hardware a release waits for may have arrived, or a mapped device came
                    // back under a new node: converge at once.
                    Some(()) => if self.rescan_hardware().await {
                        pending = true;
                        debounce.as_mut().reset(Instant::now());
                    },
                    None => {
                        tracing::warn!("hot-plug watch ended; devices are rescanned on resync only");
                        hotplug = None;
                        self.rescan_on_resync = true;
                    }
                },
                event = events.recv() => match event {
                    Some(e) => {
                        tracing::debug!(container = %e.id, action = %e.action, "engine event");
                        pending = true;
                        debounce.as_mut().reset(Instant::now() + EVENT_DEBOUNCE);
                    }
                    None => {
                        tracing::warn!("engine event stream ended; resubscribing");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        events = self.reconciler.runtime().events(&device);
                        pending = true;
                    }
                },
                () = &mut debounce, if pending => {
                    pending = false;
                    tokio::select! {
                        () = &mut shutdown => break Stopped::Signal,
                        retry = self.converge() => if let Some(at) = retry {
                            pending = true;
                            debounce.as_mut().reset(at);
                        },
                    }
                }
                fetched = next_fetch(&mut self.agent_fetch) => {
                    if self.agent_fetched(fetched) {
                        break Stopped::Relaunch;
                    }
                }
                Some(call) = admin_calls.recv() => {
                    tokio::select! {
                        () = &mut shutdown => break Stopped::Signal,
                        retry = self.admin(call) => if let Some(at) = retry {
                            pending = true;
                            debounce.as_mut().reset(at);
                        },
                    }
                    if self.relaunch.load(Ordering::SeqCst) {
                        break Stopped::Relaunch;
                    }
                }
                inbound = next_inbound(&mut inbox) => match inbound {
                    Some(message) => {
                        tokio::select! {
                            () = &mut shutdown => break Stopped::Signal,
                            retry = self.inbound(message) => if let Some(at) = retry {
                                pending = true;
                                debounce.as_mut().reset(at);
                            },
                        }
                    }
                    None => {
                        tracing::error!("link task ended; running on without the server");
                        inbox = None;
                    }
                },
            }
        };
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        if stopped == Stopped::Signal {
            self.host.notify(Notify::Stopping);
        }
        tracing::info!("fleet-agent stopping; application containers keep running");
        Ok(stopped)
    }

    /// Converges and records the outcome; errors are logged, never fatal. Returns when to try
    /// again if the update is deferred by a lock (right after the lease ends).
    async fn converge(&self) -> Option<Instant> {
        let result = self.with_live_status(self.reconciler.converge()).await;
        self.converged_ok.store(result.is_ok(), Ordering::SeqCst);
        let retry = match result {
            Ok(Some(outcome)) => {
                tracing::info!(result = ?outcome.result, "update finished");
                None
            }
            Ok(None) => None,
            Err(StepError::Deferred { holder, until }) => {
                tracing::info!(%holder, until = until.0, "update deferred by an update lock");
                Some(lease_end(until))
            }
            Err(e) => {
                tracing::error!(error = %e, "converge failed; retrying on the next resync");
                None
            }
        };
        self.write_status().await;
        retry
    }

    /// Carries out a request from the admin socket and answers it. Returns when to converge
    /// again if an update lock defers the switch.
    async fn admin(&self, call: Call) -> Option<Instant> {
        let (release, force) = match call.request {
            Request::Apply { release, force } => (release, force),
            Request::SelfUpdate { file, version, deadline_secs, allow_downgrade } => {
                let answer = self.self_update(file, version, deadline_secs, allow_downgrade).await;
                let _ = call.reply.send(answer);
                return None;
            }
        };
        let mut retry = None;
        let answer = match check_local_release(
            &release,
            &self.config.hardware.policy.allowed_host_paths,
        ) {
            Err(refused) => Answer::Refused { problems: refused.problems },
            Ok(()) => match self.reconciler.state().next_local_seq() {
                Err(e) => Answer::Error { message: e.to_string() },
                Ok(seq) => {
                    tracing::info!(release = %release.id, force, "local release handed over by fleet-agent apply");
                    let apply =
                        self.reconciler.apply_forced(Origin::Local { seq }, Some(release), force);
                    match self.with_live_status(apply).await {
                        Ok(outcome) => Answer::Outcome(outcome),
                        Err(StepError::Deferred { holder, until }) => {
                            retry = Some(lease_end(until));
                            Answer::Deferred { holder, until }
                        }
                        Err(e) => Answer::Error { message: e.to_string() },
                    }
                }
            },
        };
        self.write_status().await;
        let _ = call.reply.send(answer);
        retry
    }

    /// Installs another agent version in its slot (see [`crate::slots`]); on success the loop
    /// stops and the process replaces itself with that version, on trial.
    async fn self_update(
        &self,
        file: std::path::PathBuf,
        version: String,
        deadline_secs: u64,
        allow_downgrade: bool,
    ) -> Answer {
        let data_dir = self.config.data_dir.clone();
        let deadline = Duration::from_secs(deadline_secs);
        let v = version.clone();
        let installed = tokio::task::spawn_blocking(move || {
            slots::install(&data_dir, &file, &v, deadline, allow_downgrade)
        })
        .await;
        match installed {
            Ok(Ok(_)) => {
                tracing::info!(%version, "agent update: relaunching into the new version");
                self.relaunch.store(true, Ordering::SeqCst);
                Answer::Relaunching { version }
            }
            Ok(Err(e)) => Answer::Refused { problems: vec![e.to_string()] },
            Err(e) => Answer::Error { message: format!("the install task failed: {e}") },
        }
    }

    /// Starts downloading the agent version the server wants, if this device should try it
    /// and no download runs.
    pub(super) fn start_agent_fetch(&mut self) {
        if self.agent_fetch.is_some() || self.trial.is_some() {
            return;
        }
        let data_dir = self.config.data_dir.clone();
        let Ok(slots) = slots::load(&data_dir) else { return };
        if slots.to_return() {
            // Back to the installed binary (a rollback past every release): nothing to fetch.
            let version = slots.target.map(|t| t.version).unwrap_or_default();
            self.agent_fetch = Some(tokio::task::spawn_blocking(move || {
                let done = slots::return_to_installed(&data_dir).map(|_| ());
                (version, true, done)
            }));
            return;
        }
        let Some(target) = slots.to_fetch(&slots::running_version()).cloned() else { return };
        let registry = target.repository.split('/').next().unwrap_or_default().to_owned();
        let credential = self.config.registries.iter().find(|c| c.registry == registry).cloned();
        self.agent_fetch = Some(tokio::task::spawn_blocking(move || {
            let done = slots::fetch_and_install(&data_dir, &target, credential.as_ref());
            (target.version, false, done)
        }));
    }

    /// A download ended: true when the new version is installed and the process should
    /// relaunch into it; a failure is reported and retried on the next resync, except one
    /// that would fail the same way again.
    fn agent_fetched(&self, fetched: Result<AgentFetch, tokio::task::JoinError>) -> bool {
        let (version, returning, done) = match fetched {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "the agent download task failed");
                return false;
            }
        };
        match done {
            Ok(()) if returning => {
                tracing::info!(%version, "going back to the agent the package installed; relaunching into it");
                self.event(
                    Severity::Info,
                    EventKind::UpdateStarted,
                    format!("agent back to {version}, the version its package installed"),
                    &[("agent_version", version.clone())],
                );
                true
            }
            Ok(()) => {
                tracing::info!(%version, "agent version downloaded and verified; relaunching into it on trial");
                self.event(
                    Severity::Info,
                    EventKind::UpdateStarted,
                    format!("agent {version} downloaded; starting it on trial"),
                    &[("agent_version", version.clone())],
                );
                true
            }
            Err(e) => {
                let message = format!(
                    "agent {version} cannot be installed: {}",
                    fleet_proto::errors::report(&e)
                );
                let permanent = matches!(
                    e,
                    slots::SlotError::NotForThisDevice { .. } | slots::SlotError::BadVersion(_)
                );
                if permanent {
                    let _ = slots::record_failure(&self.config.data_dir, &version, e.to_string());
                }
                tracing::warn!(%version, error = %e, permanent, "agent download failed");
                self.event(
                    Severity::Warning,
                    EventKind::UpdateFailed,
                    message,
                    &[("agent_version", version)],
                );
                false
            }
        }
    }

    /// On trial: commits once converged (and connected, with a link); past the deadline, the
    /// error that stops this version so the next start reverts it.
    async fn check_trial(&mut self) -> Option<DaemonError> {
        let (version, deadline) = self.trial.clone()?;
        let connected = self.link.as_ref().is_none_or(|l| l.state().borrow().connected);
        let converged = self.converged_ok.load(Ordering::SeqCst);
        if converged && connected {
            match slots::commit(&self.config.data_dir, &version) {
                Ok(()) => {
                    tracing::info!(%version, "agent update committed");
                    self.trial = None;
                    // The server learns it from the next report.
                    self.write_status().await;
                }
                Err(e) => {
                    tracing::error!(%version, error = %e, "cannot commit the agent update; retrying")
                }
            }
            return None;
        }
        if UnixMillis::now() < deadline {
            return None;
        }
        let why =
            if converged { "it did not connect to the server" } else { "it did not converge" };
        Some(DaemonError::TrialExpired { version, why })
    }

    /// Runs `work` (an update) while keeping `status.json` current with its phase and pull
    /// progress, at most twice a second.
    pub(super) async fn with_live_status<T>(&self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut updates = self.reconciler.status_updates();
        let mut last_write: Option<Instant> = None;
        loop {
            tokio::select! {
                done = &mut work => return done,
                Ok(()) = updates.changed() => {
                    if last_write.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
                        last_write = Some(Instant::now());
                        self.write_status().await;
                    }
                }
            }
        }
    }

    /// Re-reads the hardware; if a device came or went, maps with the new inventory from now
    /// on, tells the server (an event per device, naming the services that use it, and a state
    /// report with the inventory) and returns true so the daemon converges.
    pub(super) async fn rescan_hardware(&self) -> bool {
        let old = self.reconciler.hardware();
        let new = scan_hardware(&self.config, &**self.reconciler.runtime()).await;
        let changes = hardware::watch::changes(&old.inventory, &new.inventory);
        if changes.is_empty() && old.nodes == new.nodes && old.links == new.links {
            return false;
        }
        self.reconciler.set_hardware(new);
        let release = self.reconciler.state().desired().ok().flatten().and_then(|d| d.release);
        for change in &changes {
            let users: Vec<String> = release
                .iter()
                .flat_map(|r| &r.services)
                .filter(|s| {
                    s.hardware
                        .iter()
                        .chain(&s.optional_hardware)
                        .any(|h| hardware::watch::touches(h, change))
                })
                .map(|s| s.name.to_string())
                .collect();
            let (verb, severity) = if change.added {
                ("appeared", Severity::Info)
            } else if users.is_empty() {
                ("disappeared", Severity::Info)
            } else {
                ("disappeared", Severity::Warning)
            };
            tracing::info!(device = %change.device, services = ?users, "hardware {verb}");
            self.event(
                severity,
                EventKind::HardwareChanged,
                format!("{} {verb}", change.device),
                &[
                    ("change", if change.added { "added" } else { "removed" }.to_owned()),
                    ("device", change.device.clone()),
                    ("services", users.join(",")),
                ],
            );
        }
        self.write_status().await;
        true
    }

    /// Writes `status.json` atomically for `fleet-agent status`.
    pub(super) async fn write_status(&self) {
        let observed =
            self.reconciler.runtime().list(&self.config.device_id).await.unwrap_or_default();
        let Ok(mut report) = report::build(
            &self.config.device_id,
            self.reconciler.state(),
            &observed,
            self.reconciler.status(),
            Some(self.reconciler.hardware().inventory.clone()),
        ) else {
            return;
        };
        report.seal_key = Some(self.seal_key.public());
        report.seal_key_proof.clone_from(&self.seal_key_proof);
        report.agent = Some(slots::versions(&self.config.data_dir, slots::running_version()));
        if let Err(e) = write_atomic(
            &self.config.data_dir.join("status.json"),
            &serde_json::to_vec_pretty(&report).unwrap_or_default(),
        ) {
            tracing::warn!(error = %e, "cannot write status.json");
        }
        if let Some(link) = &self.link {
            link.report(report);
        }
    }

    /// Hands an event to the link (dropped and counted if its queue is full).
    pub(super) fn event(
        &self,
        severity: Severity,
        kind: EventKind,
        message: String,
        fields: &[(&str, String)],
    ) {
        if let Some(link) = &self.link {
            link.send(Outgoing::Event(Event {
                device: self.config.device_id.clone(),
                at: UnixMillis::now(),
                severity,
                kind,
                message,
                fields: fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            }));
        }
    }

    async fn inbound(&mut self, message: Inbound) -> Option<Instant> {
        match message {
            Inbound::Desired(signed) => self.desired(signed).await,
            Inbound::Command(signed) => {
                self.command(signed).await;
                None
            }
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}
