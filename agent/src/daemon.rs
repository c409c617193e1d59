//! The agent daemon: one loop. Each branch calls one named method.
//!
//! * start: open state, connect to the engine, converge to the accepted desired state (after a
//!   reboot with no network this is what brings the device's software back);
//! * engine events for this device's containers → converge shortly after (debounced), which
//!   restarts or recreates what went missing — watching events instead of polling keeps the
//!   idle agent near 0 % CPU;
//! * a resync tick (default 60 s, no bursts after a stall) → converge, in case an event was lost;
//! * a release handed over on the admin socket (`fleet-agent apply` while the daemon runs) →
//!   apply it, answer with the outcome;
//! * with `[link].broker` set, a desired state from the server → verified and checked by
//!   [`crate::accept`], then applied like a local release (a refusal is logged and reported as
//!   a `Rejected` event; the running release stays); a signed command → run once, answered
//!   with exactly one result;
//! * SIGTERM/SIGINT → stop, leaving every application container running.
//!
//! With the link on, every state report written to `status.json` also goes to the link, which
//! publishes the latest one (see [`crate::link`]); the daemon never waits on the network.
//!
//! The systemd watchdog is pinged (`WATCHDOG=1`) from a task of its own, so an update that waits
//! minutes on a pull keeps pinging; what it proves is that the runtime's one thread is not
//! stuck, and every engine call is bounded by the engine timeout.
//!
//! The daemon owns the port proxy (see [`crate::proxy`]): host ports of start-first services
//! are the agent's, so updates of those services switch without refusing a connection.
//!
//! After each converge the daemon writes `status.json` into the data directory so
//! `fleet-agent status` can answer while the daemon holds the state database.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::report::UpdateResult;
use fleet_proto::{
    Command, CommandAction, CommandOutcome, CommandResult, DesiredState, Event, EventKind,
    ReleaseSpec, Severity, Signed, TrustedKeys, UnixMillis,
};
use sha2::{Digest, Sha256};
use tokio::time::{Instant, MissedTickBehavior};

use crate::accept::{
    self, accept, check_local_release, rejection_reason, verify_reason, Applied, CommandVerdict,
    Delivery, Recorded, Rejection,
};
use crate::admin::{self, Answer, Call, Request};
use crate::config::Config;
use crate::hardware::{self, HostHardware};
use crate::host::{Host, Notify, SystemHost};
use crate::link::{Inbound, Inbox, Link, LinkError, LinkHandle, Outgoing};
use crate::lock::UpdateLocks;
use crate::proxy::PortProxy;
use crate::reconcile::{ExecOptions, Reconciler, StepError};
use crate::report;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::state::{AgentState, Origin, StateError};
use crate::telemetry::{self, TelemetryHandle};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state database cannot be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// The engine is unreachable at start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The link to the server cannot be set up (unreadable certificate or key).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The key secrets are sealed to cannot be read or made.
    #[error(transparent)]
    SealKey(#[from] crate::secrets::KeyError),
    /// The data directory cannot be created.
    #[error("cannot create data directory {path}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Quiet period after an engine event before converging, so a burst of events (die, stop,
/// destroy) causes one converge.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(500);

/// Executor options from the configuration.
pub fn exec_options(config: &Config) -> ExecOptions {
    let telemetry = &config.telemetry;
    let telemetry_dir = match &telemetry.ingest {
        Some(ingest) if telemetry.enabled && config.link.is_some() => {
            Some(ingest.socket_dir.clone())
        }
        _ => None,
    };
    ExecOptions {
        telemetry_dir,
        stop_grace: config.stop_grace,
        stable_for: config.stable_for,
        max_restarts: config.max_restarts,
        disk_reserve: config.disk_reserve,
        ..ExecOptions::default()
    }
}

/// Opens the state database under the configured data directory.
pub fn open_state(config: &Config) -> Result<AgentState, DaemonError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| DaemonError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    Ok(AgentState::open(&config.data_dir.join("state"))?)
}

/// Opens the state database, waiting up to 10 s while another process holds it: a one-shot
/// `fleet-agent status` or `apply` started just before the daemon holds it for a moment.
async fn open_state_waiting(config: &Config) -> Result<AgentState, DaemonError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open_state(config) {
            Err(DaemonError::State(e)) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "state database busy; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Runs the daemon on the Docker engine until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let runtime =
        Arc::new(DockerRuntime::connect(&config.engine_socket, config.engine_timeout).await?);
    run_with(config, runtime, shutdown).await
}

/// Longest command log output sent back, in bytes: a result must fit an MQTT message.
const MAX_LOG_BYTES: usize = fleet_proto::MAX_MESSAGE_BYTES / 2;
/// How long a commanded reboot waits, so the link can publish the command's result first.
const REBOOT_DELAY: Duration = Duration::from_secs(3);
/// Most log lines a `FetchLogs` command returns.
const MAX_LOG_LINES: u32 = 1000;

/// What a simulated agent does differently from a device's agent, so that thousands fit in
/// one process: each choice replaces something that costs a thread, files or a page cache per
/// agent. The default is the device's agent.
#[derive(Default)]
pub struct RunOptions {
    /// The state database to use instead of redb under the data directory (a database on
    /// disk holds a file, a lock and a page cache).
    pub state: Option<AgentState>,
    /// The telemetry buffer to use instead of opening redb or sled under the data directory.
    pub telemetry_store: Option<Box<dyn telemetry::store::TelemetryStore>>,
    /// The hardware never changes: no hot-plug watch (a thread and an inotify descriptor) and
    /// no rescan on resync.
    pub fixed_hardware: bool,
    /// No admin socket (`fleet-agent apply` cannot reach this agent) and no update-lock socket
    /// (lock files still work): two listening descriptors and two tasks per agent.
    pub no_local_sockets: bool,
    /// The machine's service manager and reboot, instead of the real ones ([`SystemHost`]).
    pub host: Option<Arc<dyn Host>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("state", &self.state.as_ref().map(|_| "given"))
            .field("telemetry_store", &self.telemetry_store.as_ref().map(|_| "given"))
            .field("fixed_hardware", &self.fixed_hardware)
            .field("no_local_sockets", &self.no_local_sockets)
            .field("host", &self.host)
            .finish()
    }
}

/// Runs the daemon on `runtime` (the simulated engine in tests) until `shutdown` completes.
pub async fn run_with<R: ContainerRuntime>(
    config: Config,
    runtime: Arc<R>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_with_options(config, runtime, RunOptions::default(), shutdown).await
}

/// Runs the daemon on `runtime` with `options` (see [`RunOptions`]) until `shutdown` completes.
pub async fn run_with_options<R: ContainerRuntime>(
    config: Config,
    runtime: Arc<R>,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let RunOptions { state, telemetry_store, fixed_hardware, no_local_sockets, host } = options;
    let host = host.unwrap_or_else(|| Arc::new(SystemHost));
    // Certificate problems are reported before anything else starts.
    let link = match &config.link {
        Some(cfg) => {
            let (handle, inbox) = Link::start(cfg)?;
            tracing::info!(broker = %cfg.broker, "link to the fleet server starting");
            Some((handle, inbox, cfg.server_keys.clone()))
        }
        None => None,
    };
    let state = match state {
        Some(state) => state,
        None => open_state_waiting(&config).await?,
    };
    let locks = UpdateLocks::new(&config.locks_dir, config.locks_default_ttl);
    let mut options = exec_options(&config);
    // The socket directory must exist before a container mounts it (a missing bind source
    // fails the container); without it, services run without the mount.
    if let Some(dir) = &options.telemetry_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!(error = %e, dir = %dir.display(), "cannot create the telemetry socket directory; application telemetry is off");
            options.telemetry_dir = None;
        }
    }
    let identity = Arc::new(telemetry::ingest::ContainerIdentity::new(
        runtime.clone(),
        config.device_id.clone(),
        config.telemetry.root.clone(),
    ));
    let ingest_dir = options.telemetry_dir.clone();
    let engine = runtime.clone();
    let hardware = scan_hardware(&config, &*runtime).await;
    tracing::info!(
        serial = hardware.inventory.serial.len(),
        gpus = hardware.inventory.gpus.len(),
        video = hardware.inventory.video.len(),
        "hardware inventory read"
    );
    // Device arrival and removal; without inotify the inventory is re-read on every resync.
    let watch = (!fixed_hardware)
        .then(|| hardware::watch::spawn(&config.hardware.root, config.hardware_settle));
    let hotplug = match watch {
        None => None,
        Some(Ok(rx)) => Some(rx),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot watch /dev for hot-plug; devices are rescanned on resync only");
            None
        }
    };
    let reconciler = Reconciler::new(runtime, config.device_id.clone(), state, options)
        .with_locks(locks.clone())
        .with_proxy(PortProxy::new())
        .with_hardware(hardware, config.hardware.clone());
    let mut reconciler = reconciler;
    reconciler.set_credentials(config.registries.clone());
    // Applications that prefer an API to a lock file use the socket; it lives as long as the
    // daemon. A failure to serve it is logged, not fatal: lock files keep working.
    let (stop_locks, locks_stopped) = tokio::sync::oneshot::channel::<()>();
    let socket = config.locks_socket.clone();
    let lock_server = (!no_local_sockets).then(|| {
        tokio::spawn(async move {
            let stopped = async {
                let _ = locks_stopped.await;
            };
            if let Err(e) = locks.serve(socket.clone(), stopped).await {
                tracing::warn!(error = %e, socket = %socket.display(), "update lock socket not served; lock files still work");
            }
        })
    });
    // `fleet-agent apply` hands local releases to the daemon here.
    let (calls, admin_calls) = tokio::sync::mpsc::channel::<Call>(4);
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_socket = admin::socket_path(&config.data_dir);
    // Without the socket `calls` is dropped here and the loop's admin branch never fires.
    let admin_server = (!no_local_sockets).then(|| {
        tokio::spawn(async move {
            let stopped = async {
                let _ = admin_stopped.await;
            };
            if let Err(e) = admin::serve(admin_socket.clone(), calls, stopped).await {
                tracing::warn!(error = %e, socket = %admin_socket.display(), "admin socket not served; `fleet-agent apply` cannot reach the daemon");
            }
        })
    });
    let (mut link, inbox, trusted) = match link {
        Some((h, i, t)) => (Some(h), Some(i), t),
        None => (None, None, TrustedKeys::default()),
    };
    let telemetry = match &mut link {
        Some(link) if config.telemetry.enabled => {
            start_telemetry(&config, link, telemetry_store).await
        }
        _ => None,
    };
    // Applications post through the socket while the daemon runs.
    let (stop_ingest, ingest_stopped) = tokio::sync::oneshot::channel::<()>();
    let ingest = match (&telemetry, &config.telemetry.ingest, ingest_dir) {
        (Some((handle, _)), Some(cfg), Some(_)) => {
            let (cfg, handle) = (cfg.clone(), handle.clone());
            let counters = handle.ingest_counters();
            Some(tokio::spawn(async move {
                let stopped = async {
                    let _ = ingest_stopped.await;
                };
                if let Err(e) =
                    telemetry::ingest::serve(cfg, handle, identity, counters, stopped).await
                {
                    tracing::warn!(error = %e, "telemetry ingestion socket not served; host metrics still flow");
                }
            }))
        }
        _ => None,
    };
    // Container metrics and lifecycle events, on their own task and event subscription: the
    // daemon's loop is busy during updates, and events are points as they happen.
    let container_metrics = telemetry.as_ref().map(|(handle, _)| {
        telemetry::containers::spawn(
            engine,
            config.device_id.clone(),
            handle.clone(),
            config.telemetry.container_interval,
        )
    });
    let rescan_on_resync = hotplug.is_none() && !fixed_hardware;
    let seal_key =
        crate::secrets::load_or_create_key(&config.data_dir.join(crate::secrets::KEY_FILE))?;
    let mut daemon = Daemon { config, reconciler, link, trusted, rescan_on_resync, seal_key, host };
    let result = daemon.run(shutdown, admin_calls, inbox, hotplug).await;
    if let Some(sampler) = container_metrics {
        sampler.abort();
    }
    let _ = stop_ingest.send(());
    if let Some(ingest) = ingest {
        let _ = tokio::time::timeout(Duration::from_secs(3), ingest).await;
    }
    if let Some((handle, task)) = telemetry {
        // Closing its input ends the task, which flushes the buffer.
        drop(handle);
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    if let Some(link) = daemon.link.take() {
        if link.dropped() > 0 {
            tracing::warn!(
                dropped = link.dropped(),
                "messages to the server dropped while the link was busy or down"
            );
        }
        link.shutdown(Duration::from_secs(3)).await;
    }
    let _ = stop_locks.send(());
    let _ = stop_admin.send(());
    if let Some(server) = lock_server {
        let _ = server.await;
    }
    if let Some(server) = admin_server {
        let _ = server.await;
    }
    result
}

/// Opens the telemetry buffer and starts the task that fills and drains it. A buffer that
/// cannot be opened costs telemetry, never the release: the agent runs on without it.
async fn start_telemetry(
    config: &Config,
    link: &mut LinkHandle,
    given: Option<Box<dyn telemetry::store::TelemetryStore>>,
) -> Option<(TelemetryHandle, tokio::task::JoinHandle<()>)> {
    let dir = config.data_dir.clone();
    let budget = config.telemetry.budget_bytes;
    let kind = config.telemetry.store;
    let opened = match given {
        Some(store) => Ok(Ok((store, None))),
        None => {
            tokio::task::spawn_blocking(move || telemetry::open_store(&dir, kind, budget)).await
        }
    };
    let (store, note) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "telemetry buffer cannot be opened; running without telemetry");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "telemetry buffer open panicked; running without telemetry");
            return None;
        }
    };
    let device = config.device_id.clone();
    if let Some(note) = note {
        tracing::warn!("{note}");
        link.send(Outgoing::Event(Event {
            device: device.clone(),
            at: UnixMillis::now(),
            severity: Severity::Warning,
            kind: EventKind::TelemetryDropped,
            message: note,
            fields: Default::default(),
        }));
    }
    let acks = link.take_telemetry_acks()?;
    let outbox = link.outbox();
    let sink = move |batch| outbox.try_send(Outgoing::Telemetry(batch)).is_ok();
    let stats = store.stats();
    tracing::info!(
        store = ?kind,
        buffered = stats.points,
        dropped_total = stats.dropped_total,
        "telemetry buffer open"
    );
    let (handle, _status, task) =
        telemetry::spawn(device, config.telemetry.clone(), store, link.state(), acks, sink);
    Some((handle, task))
}

struct Daemon<R> {
    config: Config,
    reconciler: Reconciler<R>,
    link: Option<LinkHandle>,
    trusted: TrustedKeys,
    /// No hot-plug watch: the inventory is re-read on every resync instead.
    rescan_on_resync: bool,
    /// What the server seals this device's secrets to; its public half goes in every report.
    seal_key: fleet_proto::DeviceSealKey,
    /// systemd's notifications and the reboot.
    host: Arc<dyn Host>,
}

/// Reads the host's hardware (blocking file reads, off the runtime's threads) and adds what
/// only the agent knows: the engine and the disks that matter.
pub async fn scan_hardware<R: ContainerRuntime>(config: &Config, runtime: &R) -> HostHardware {
    let root = config.hardware.root.clone();
    let mut hw =
        tokio::task::spawn_blocking(move || hardware::scan::scan(&root)).await.unwrap_or_default();
    hw.inventory.engine = runtime.engine().await;
    hw.inventory.disks = hardware::disks(&[Path::new("/"), &config.data_dir]);
    hw
}

/// The next hot-plug notice, or never without a watch.
async fn next_hotplug(hotplug: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match hotplug {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next message from the server, or never without a link.
async fn next_inbound(inbox: &mut Option<Inbox>) -> Option<Inbound> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

impl<R: ContainerRuntime> Daemon<R> {
    async fn run(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut admin_calls: tokio::sync::mpsc::Receiver<Call>,
        mut inbox: Option<Inbox>,
        mut hotplug: Option<tokio::sync::mpsc::Receiver<()>>,
    ) -> Result<(), DaemonError> {
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

        // The first resync tick fires at once: that is the converge at start.
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // Every converge goes through the debounce timer below, so there is one place
                // that converges and a burst of events right after a tick causes one converge.
                _ = resync.tick() => {
                    if self.rescan_on_resync {
                        self.rescan_hardware().await;
                    }
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
                        () = &mut shutdown => break,
                        retry = self.converge() => if let Some(at) = retry {
                            pending = true;
                            debounce.as_mut().reset(at);
                        },
                    }
                }
                Some(call) = admin_calls.recv() => {
                    tokio::select! {
                        () = &mut shutdown => break,
                        retry = self.admin(call) => if let Some(at) = retry {
                            pending = true;
                            debounce.as_mut().reset(at);
                        },
                    }
                }
                inbound = next_inbound(&mut inbox) => match inbound {
                    Some(message) => {
                        tokio::select! {
                            () = &mut shutdown => break,
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
        }
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        self.host.notify(Notify::Stopping);
        tracing::info!("fleet-agent stopping; application containers keep running");
        Ok(())
    }

    /// Converges and records the outcome; errors are logged, never fatal. Returns when to try
    /// again if the update is deferred by a lock (right after the lease ends).
    async fn converge(&self) -> Option<Instant> {
        let result = self.with_live_status(self.reconciler.converge()).await;
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
        let Request::Apply { release, force } = call.request;
        let mut retry = None;
        let answer = match check_local_release(&release, &self.config.allowed_host_paths) {
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

    /// Runs `work` (an update) while keeping `status.json` current with its phase and pull
    /// progress, at most twice a second.
    async fn with_live_status<T>(&self, work: impl Future<Output = T>) -> T {
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
    async fn rescan_hardware(&self) -> bool {
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
    async fn write_status(&self) {
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
    fn event(
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

    /// A desired state from the server: verified and checked, then applied; refused states
    /// change nothing. Returns when to converge again if an update lock defers the switch.
    async fn desired(&mut self, signed: Signed) -> Option<Instant> {
        let state = self.reconciler.state();
        let digest = digest(&signed);
        let accepted = match (state.server_desired(), state.desired()) {
            (Ok(server), Ok(desired)) => {
                let applied = match desired.map(|d| d.origin) {
                    None => Applied::Nothing,
                    Some(Origin::Local { .. }) => Applied::Local,
                    Some(Origin::Server { generation }) => Applied::Server(generation),
                };
                let recorded = server.as_ref().map(|s| (s.generation, s.digest.as_str()));
                match accept::delivery(&digest, recorded, applied) {
                    Delivery::Unchanged => {
                        tracing::debug!("desired state unchanged");
                        return None;
                    }
                    Delivery::Check { accepted } => accepted,
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot read the accepted generation; desired state ignored until the next delivery");
                return None;
            }
        };
        let accepted_state = accept(
            &signed,
            &self.trusted,
            &self.config.device_id,
            accepted,
            &self.config.allowed_host_paths,
        )
        .and_then(|d| self.materialize_secrets(d));
        let (desired, delivered, effective) = match accepted_state {
            Ok(d) => d,
            Err(rejection) => {
                let reason = rejection_reason(&rejection);
                tracing::warn!(reason, error = %rejection, "desired state from the server refused; the running release stays");
                let mut fields = vec![("reason", reason.to_owned())];
                if let Some(a) = accepted {
                    fields.push(("accepted_generation", a.to_string()));
                }
                self.event(Severity::Warning, EventKind::Rejected, rejection.to_string(), &fields);
                self.write_status().await;
                return None;
            }
        };
        let generation = desired.generation;
        // Persisted before anything runs: after a crash mid-update, this state is not new.
        if let Err(e) =
            state.set_server_desired(&crate::state::ServerDesired { generation, digest })
        {
            tracing::error!(error = %e, "cannot record the accepted desired state; not applying it");
            return None;
        }
        let mut credentials = self.config.registries.clone();
        credentials.extend(desired.registry_credentials.iter().cloned());
        credentials.extend(delivered.registry_credentials);
        self.reconciler.set_credentials(credentials);
        let release =
            desired.release.as_ref().map(|r| r.id.to_string()).unwrap_or_else(|| "none".into());
        tracing::info!(generation, %release, "desired state from the server accepted");
        self.event(
            Severity::Info,
            EventKind::UpdateStarted,
            format!("applying generation {generation} (release {release})"),
            &[("generation", generation.to_string()), ("release", release.clone())],
        );
        let apply = self.reconciler.apply(Origin::Server { generation }, effective);
        let mut retry = None;
        let gen_field = ("generation", generation.to_string());
        match self.with_live_status(apply).await {
            Ok(outcome) => {
                let (severity, kind, message) = match &outcome.result {
                    UpdateResult::Applied => (
                        Severity::Info,
                        EventKind::UpdateApplied,
                        format!("release {release} applied"),
                    ),
                    UpdateResult::RolledBack { reason, .. } => (
                        Severity::Error,
                        EventKind::UpdateRolledBack,
                        format!("release {release} rolled back: {reason}"),
                    ),
                    UpdateResult::Failed { reason } => (
                        Severity::Error,
                        EventKind::UpdateFailed,
                        format!("release {release} failed: {reason}"),
                    ),
                    other => (
                        Severity::Warning,
                        EventKind::Other,
                        format!("release {release}: {other:?}"),
                    ),
                };
                tracing::info!(generation, result = ?outcome.result, "update finished");
                self.event(severity, kind, message, &[gen_field]);
            }
            Err(StepError::Deferred { holder, until }) => {
                tracing::info!(%holder, until = until.0, "update deferred by an update lock");
                self.event(
                    Severity::Info,
                    EventKind::UpdateDeferred,
                    format!("update deferred by {holder}"),
                    &[gen_field, ("holder", holder.clone())],
                );
                retry = Some(lease_end(until));
            }
            Err(e) => {
                tracing::error!(error = %e, "update failed; retrying on the next resync");
                self.event(Severity::Error, EventKind::UpdateFailed, e.to_string(), &[gen_field]);
            }
        }
        self.collect_secret_files();
        self.write_status().await;
        retry
    }

    /// Opens the secrets `desired` carries and writes the files its release mounts; returns
    /// the release as the engine runs it (secret mounts as read-only binds of those files).
    /// Nothing is written unless every secret opened.
    fn materialize_secrets(
        &self,
        desired: DesiredState,
    ) -> Result<(DesiredState, crate::secrets::Delivered, Option<ReleaseSpec>), Rejection> {
        let delivered = crate::secrets::deliver(&self.seal_key, &self.config.device_id, &desired)
            .map_err(Rejection::Secrets)?;
        let Some(release) = &desired.release else { return Ok((desired, delivered, None)) };
        let dir = &self.config.secrets_dir;
        let (effective, files) =
            crate::secrets::effective_release(dir, release, &crate::secrets::digests(&delivered));
        let cannot = |what: String| Rejection::Secrets(vec![what]);
        // Recorded (sealed) before anything is written: after a reboot the files come back
        // from these records.
        if !files.is_empty() {
            let state = self.reconciler.state();
            let kept = state.secret_records().map_err(|e| cannot(e.to_string()))?;
            let all = crate::secrets::merge(kept, crate::secrets::records(&files, &desired));
            state.set_secret_records(&all).map_err(|e| cannot(e.to_string()))?;
        }
        crate::secrets::write_files(dir, &files, &delivered).map_err(|e| {
            cannot(format!("cannot write the secret files under {}: {e}", dir.display()))
        })?;
        Ok((desired, delivered, Some(effective)))
    }

    /// Writes the secret files a reboot took away (the secrets directory is a tmpfs), from
    /// their sealed records, before the first converge starts the services that read them.
    fn restore_secret_files(&self) {
        let records = match self.reconciler.state().secret_records() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the secret files' records; services that read secrets may not start");
                return;
            }
        };
        let (written, problems) = crate::secrets::restore(
            &self.config.secrets_dir,
            &self.seal_key,
            &self.config.device_id,
            &records,
        );
        if written > 0 {
            tracing::info!(written, dir = %self.config.secrets_dir.display(), "secret files written again");
        }
        for p in problems {
            tracing::error!(problem = %p, "a secret file cannot be written again");
        }
    }

    /// Removes secret files (and their records) no stored release (the one wanted, the one
    /// proven, the one before) binds any more.
    fn collect_secret_files(&self) {
        let state = self.reconciler.state();
        // Never delete on a read error: a rollback may need the files.
        let (Ok(desired), Ok(proven), Ok(previous), Ok(records)) =
            (state.desired(), state.proven(), state.previous(), state.secret_records())
        else {
            return;
        };
        let keep: Vec<&ReleaseSpec> = [
            desired.as_ref().and_then(|d| d.release.as_ref()),
            proven.as_ref().and_then(|p| p.release.as_ref()),
            previous.as_ref().and_then(|p| p.release.as_ref()),
        ]
        .into_iter()
        .flatten()
        .collect();
        let dir = &self.config.secrets_dir;
        let used = crate::secrets::in_use(dir, &keep);
        let kept: Vec<_> =
            records.iter().filter(|r| used.contains(&r.file.path)).cloned().collect();
        if kept.len() != records.len() {
            if let Err(e) = state.set_secret_records(&kept) {
                tracing::warn!(error = %e, "cannot forget unused secret files; kept for now");
                return;
            }
        }
        let removed = crate::secrets::collect_garbage(dir, &keep);
        if removed > 0 {
            tracing::info!(removed, "removed secret files no release uses any more");
        }
    }

    /// A command from the server: verified, run at most once, answered with one result.
    /// Commands that cannot be verified get no result (their id cannot be trusted), only a
    /// `Rejected` event.
    async fn command(&self, signed: Signed) {
        let command: Command = match signed.open(&self.trusted) {
            Ok(c) => c,
            Err(e) => {
                let reason = verify_reason(&e);
                tracing::warn!(reason, error = %e, "command from the server refused");
                self.event(
                    Severity::Warning,
                    EventKind::Rejected,
                    format!("command refused: {e}"),
                    &[("reason", reason.to_owned())],
                );
                return;
            }
        };
        let id = command.id;
        let outcome = match accept::screen_command(
            &command,
            &self.config.device_id,
            UnixMillis::now(),
        ) {
            Err(reason) => refused(reason),
            Ok(()) => {
                let recorded = match self.reconciler.state().remember_command(id) {
                    Ok(true) => Recorded::First,
                    Ok(false) => Recorded::Again,
                    Err(e) => Recorded::Failed(e.to_string()),
                };
                match accept::command_verdict(&command.action, recorded, self.config.allow_reboot) {
                    CommandVerdict::Redelivery => {
                        tracing::info!(id, "command already run; ignoring the redelivery");
                        return;
                    }
                    CommandVerdict::Refuse(reason) => refused(reason),
                    CommandVerdict::Fail(reason) => CommandOutcome::Failed { reason },
                    CommandVerdict::Run => {
                        tracing::info!(id, action = ?command.action, "running command from the server");
                        self.run_command(&command.action).await
                    }
                }
            }
        };
        tracing::info!(id, outcome = outcome_name(&outcome), "command finished");
        let reboot = matches!(command.action, CommandAction::Reboot)
            && matches!(outcome, CommandOutcome::Done { .. });
        if let Some(link) = &self.link {
            link.send(Outgoing::CommandResult(CommandResult {
                id,
                device: self.config.device_id.clone(),
                finished_at: UnixMillis::now(),
                outcome,
            }));
        }
        if reboot {
            // Give the link a moment to publish the result before the system goes down.
            let host = Arc::clone(&self.host);
            tokio::spawn(async move {
                tokio::time::sleep(REBOOT_DELAY).await;
                tracing::warn!("rebooting the device as commanded");
                match tokio::task::spawn_blocking(move || host.reboot()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "reboot failed"),
                    Err(e) => tracing::error!(error = %e, "reboot task failed"),
                }
            });
        }
    }

    async fn run_command(&self, action: &CommandAction) -> CommandOutcome {
        match action {
            // Allowed: judged by accept::command_verdict.
            CommandAction::Reboot => CommandOutcome::Done { output: vec!["rebooting".to_owned()] },
            CommandAction::RefreshInventory => {
                let changed = self.rescan_hardware().await;
                let inv = &self.reconciler.hardware().inventory;
                let summary = format!(
                    "inventory re-read{}: {} serial, {} gpio, {} i2c, {} spi, {} video, {} can, {} gpu, {} accelerator",
                    if changed { " (changed; the release is mapped again on the next converge)" } else { ", unchanged" },
                    inv.serial.len(), inv.gpio.len(), inv.i2c.len(), inv.spi.len(),
                    inv.video.len(), inv.can.len(), inv.gpus.len(), inv.accelerators.len(),
                );
                if !changed {
                    // A refresh is also a request to hear the inventory again.
                    self.write_status().await;
                }
                CommandOutcome::Done { output: vec![summary] }
            }
            CommandAction::PurgeVolumes => match self.reconciler.purge_volumes().await {
                Ok(removed) if removed.is_empty() => CommandOutcome::Done {
                    output: vec!["no volumes to purge: every Fleet volume on this device belongs to the release in force".to_owned()],
                },
                Ok(removed) => CommandOutcome::Done {
                    output: std::iter::once(format!("purged {} volume(s) of apps this device no longer runs", removed.len()))
                        .chain(removed)
                        .collect(),
                },
                Err(e) => CommandOutcome::Failed { reason: e.to_string() },
            },
            CommandAction::RestartService { service } => {
                match self.service_container(service).await {
                    Err(outcome) => outcome,
                    Ok(id) => {
                        match self.reconciler.runtime().restart(&id, self.config.stop_grace).await {
                            Ok(()) => CommandOutcome::Done {
                                output: vec![format!("restarted {service}")],
                            },
                            Err(e) => CommandOutcome::Failed { reason: e.to_string() },
                        }
                    }
                }
            }
            CommandAction::FetchLogs { service, tail } => {
                match self.service_container(service).await {
                    Err(outcome) => outcome,
                    Ok(id) => {
                        let tail = (*tail).min(MAX_LOG_LINES) as usize;
                        match self.reconciler.runtime().logs(&id, tail).await {
                            Ok(lines) => {
                                CommandOutcome::Done { output: cap_lines(lines, MAX_LOG_BYTES) }
                            }
                            Err(e) => CommandOutcome::Failed { reason: e.to_string() },
                        }
                    }
                }
            }
        }
    }

    /// The container of `service` in the release in force (a running one preferred).
    async fn service_container(
        &self,
        service: &fleet_proto::ServiceName,
    ) -> Result<String, CommandOutcome> {
        let observed = self
            .reconciler
            .runtime()
            .list(&self.config.device_id)
            .await
            .map_err(|e| CommandOutcome::Failed { reason: e.to_string() })?;
        let proven = self
            .reconciler
            .state()
            .proven()
            .ok()
            .flatten()
            .and_then(|p| p.release)
            .map(|r| r.id.to_string());
        let mut candidates: Vec<_> = observed
            .iter()
            .filter(|c| c.label(crate::runtime::labels::SERVICE) == Some(service.as_str()))
            .collect();
        candidates.sort_by_key(|c| {
            (
                c.label(crate::runtime::labels::RELEASE).map(str::to_owned) != proven,
                c.state != fleet_proto::report::ContainerState::Running,
            )
        });
        candidates
            .first()
            .map(|c| c.id.clone())
            .ok_or_else(|| refused(format!("no container for service {service} on this device")))
    }
}

fn refused(reason: String) -> CommandOutcome {
    CommandOutcome::Refused { reason }
}

fn outcome_name(o: &CommandOutcome) -> &'static str {
    match o {
        CommandOutcome::Done { .. } => "done",
        CommandOutcome::Failed { .. } => "failed",
        CommandOutcome::Refused { .. } => "refused",
    }
}

/// Keeps the last lines that fit in `max` bytes.
fn cap_lines(lines: Vec<String>, max: usize) -> Vec<String> {
    let mut total = 0;
    let mut keep = lines.len();
    for (i, l) in lines.iter().enumerate().rev() {
        total += l.len() + 8;
        if total > max {
            break;
        }
        keep = i;
    }
    lines.into_iter().skip(keep).collect()
}

/// SHA-256 of the signed bytes and signature, hex: how the agent recognises the broker's
/// retained copy of a desired state it already recorded.
pub fn digest(signed: &Signed) -> String {
    let mut h = Sha256::new();
    h.update(&signed.payload);
    h.update(&signed.signature);
    fleet_proto::hex::encode(&h.finalize())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// When to try again after a lease that ends at `until`: just after it.
fn lease_end(until: UnixMillis) -> Instant {
    let left = until.0.saturating_sub(UnixMillis::now().0);
    Instant::now() + Duration::from_millis(left + 100)
}

#[cfg(test)]
mod tests {
    use fleet_proto::{samples, Command, CommandAction, DeviceSealKey, TrustedKeys, UnixMillis};

    use super::*;
    use crate::host::{HostCall, RecordingHost};
    use crate::runtime::sim::SimRuntime;

    fn daemon(
        allow_reboot: bool,
        host: Arc<RecordingHost>,
    ) -> (Daemon<SimRuntime>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(&format!(
            "device_id = \"{}\"\ndata_dir = {:?}\n[commands]\nallow_reboot = {allow_reboot}\n",
            samples::device(),
            dir.path().display().to_string(),
        ))
        .unwrap();
        let reconciler = Reconciler::new(
            Arc::new(SimRuntime::new()),
            config.device_id.clone(),
            AgentState::in_memory(),
            exec_options(&config),
        );
        let daemon = Daemon {
            config,
            reconciler,
            link: None,
            trusted: TrustedKeys::new([samples::server_key().public()]),
            rescan_on_resync: false,
            seal_key: DeviceSealKey::generate().unwrap(),
            host,
        };
        (daemon, dir)
    }

    fn reboot_command(id: u64) -> Signed {
        samples::server_key().sign(&Command {
            id,
            device: samples::device(),
            issued_at: UnixMillis::now(),
            deadline: UnixMillis::now().saturating_add(Duration::from_secs(3600)),
            action: CommandAction::Reboot,
        })
    }

    /// Lets the delayed reboot task (and its blocking call) finish.
    async fn settle(host: &RecordingHost, reboots: usize) {
        tokio::time::sleep(REBOOT_DELAY * 2).await;
        for _ in 0..100 {
            if host.reboots() >= reboots {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reboot_command_reboots_once_even_when_redelivered() {
        let host = Arc::new(RecordingHost::default());
        let (daemon, _dir) = daemon(true, Arc::clone(&host));
        daemon.command(reboot_command(1)).await;
        daemon.command(reboot_command(1)).await;
        settle(&host, 1).await;
        assert_eq!(host.calls(), vec![HostCall::Reboot]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reboot_command_does_not_reboot_where_reboots_are_not_allowed() {
        let host = Arc::new(RecordingHost::default());
        let (daemon, _dir) = daemon(false, Arc::clone(&host));
        daemon.command(reboot_command(1)).await;
        settle(&host, 1).await;
        assert_eq!(host.reboots(), 0);
    }
}
