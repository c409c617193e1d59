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
//! The daemon steers the port proxy (see [`crate::proxy`]), a process of its own that holds the
//! host ports of start-first services: updates of those services switch without refusing a
//! connection, and the ports keep serving while the daemon is down.
//!
//! After each converge the daemon writes `status.json` into the data directory so
//! `fleet-agent status` can answer while the daemon holds the state database.
//!
//! Files: `event_loop` the loop and what its branches do; `tasks` the tasks that live as long
//! as the daemon (sockets, telemetry), started together and stopped with one call; `desired`
//! desired states from the server; `commands` commands from the server; `secret_files` the
//! secret files releases mount.

mod commands;
mod desired;
mod event_loop;
mod secret_files;
mod tasks;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{TrustedKeys, UnixMillis};
use tokio::time::Instant;

use crate::admin::Call;
use crate::config::Config;
use crate::hardware::{self, HostHardware};
use crate::host::{Host, SystemHost};
use crate::link::{Link, LinkError, LinkHandle};
use crate::lock::UpdateLocks;
use crate::proxy::{ProxyClient, StartWith};
use crate::reconcile::{ExecOptions, Reconciler};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::state::{AgentState, StateError};
use crate::telemetry;

/// Kept at its old path for the end-to-end tests.
pub use crate::accept::digest;
use tasks::Tasks;

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
    /// This agent version was on trial and did not commit in time; the next start reverts it.
    #[error("agent {version} on trial did not commit before its deadline: {why}; the next start reverts to the previous version")]
    TrialExpired {
        /// The version on trial.
        version: String,
        /// What it did not do.
        why: &'static str,
    },
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

/// Why the daemon's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown signal.
    Signal,
    /// Another agent version was installed: the process replaces itself with it
    /// ([`crate::slots::relaunch`]).
    Relaunch,
}

/// Runs the daemon on the Docker engine until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, DaemonError> {
    let runtime =
        Arc::new(DockerRuntime::connect(&config.engine_socket, config.engine_timeout).await?);
    run_with(config, runtime, shutdown).await
}

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
    /// Run the port proxy, when a release needs one, as a task of this process instead of a
    /// process of its own (whose program would be this executable, not `fleet-agent`).
    pub proxy_in_process: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("state", &self.state.as_ref().map(|_| "given"))
            .field("telemetry_store", &self.telemetry_store.as_ref().map(|_| "given"))
            .field("fixed_hardware", &self.fixed_hardware)
            .field("no_local_sockets", &self.no_local_sockets)
            .field("host", &self.host)
            .field("proxy_in_process", &self.proxy_in_process)
            .finish()
    }
}

/// Runs the daemon on `runtime` (the simulated engine in tests) until `shutdown` completes.
pub async fn run_with<R: ContainerRuntime>(
    config: Config,
    runtime: Arc<R>,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, DaemonError> {
    run_with_options(config, runtime, RunOptions::default(), shutdown).await
}

/// Runs the daemon on `runtime` with `options` (see [`RunOptions`]) until `shutdown` completes.
pub async fn run_with_options<R: ContainerRuntime>(
    config: Config,
    runtime: Arc<R>,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, DaemonError> {
    let RunOptions {
        state,
        telemetry_store,
        fixed_hardware,
        no_local_sockets,
        host,
        proxy_in_process,
    } = options;
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
    let ingest_on = options.telemetry_dir.is_some();
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
    let mut reconciler =
        Reconciler::new(Arc::clone(&runtime), config.device_id.clone(), state, options)
            .with_locks(locks.clone())
            .with_proxy(if proxy_in_process {
                ProxyClient::new(&config.data_dir, StartWith::Task)
            } else {
                ProxyClient::for_daemon(&config.data_dir)
            })
            .with_hardware(hardware, config.hardware.clone());
    reconciler.set_credentials(config.registries.clone());
    // `fleet-agent apply` hands local releases to the daemon here; without the admin socket
    // `calls` is dropped and the loop's admin branch never fires.
    let (calls, admin_calls) = tokio::sync::mpsc::channel::<Call>(4);
    let (mut link, inbox, trusted) = match link {
        Some((h, i, t)) => (Some(h), Some(i), t),
        None => (None, None, TrustedKeys::default()),
    };
    let sockets = (!no_local_sockets).then_some((locks, calls));
    let tasks =
        Tasks::start(&config, runtime, sockets, link.as_mut(), telemetry_store, ingest_on).await;
    let rescan_on_resync = hotplug.is_none() && !fixed_hardware;
    let seal_key =
        crate::secrets::load_or_create_key(&config.data_dir.join(crate::secrets::KEY_FILE))?;
    // Made once: the sealing key and the certificate's key do not change while this runs.
    let seal_key_proof = config.link.as_ref().and_then(|l| {
        crate::secrets::seal_key_proof(&l.key_file, &l.device, &seal_key.public())
            .map_err(|e| tracing::warn!(error = %e, "no proof of the sealing key: a server that checks proofs seals nothing to this device"))
            .ok()
    });
    // Set by `slots::launch` when this process is a version on trial.
    let trial = crate::slots::this_trial(&config.data_dir);
    if let Some((version, _)) = &trial {
        tracing::info!(%version, "this agent version is on trial");
    }
    let mut daemon = Daemon {
        config,
        reconciler,
        link,
        trusted,
        rescan_on_resync,
        seal_key,
        seal_key_proof,
        host,
        trial,
        converged_ok: AtomicBool::new(false),
        relaunch: AtomicBool::new(false),
        agent_fetch: None,
    };
    let result = daemon.run(shutdown, admin_calls, inbox, hotplug).await;
    tasks.stop(daemon.link.take()).await;
    result
}

/// What the loop and its branches work with; the tasks around it are in [`Tasks`].
struct Daemon<R> {
    config: Config,
    reconciler: Reconciler<R>,
    link: Option<LinkHandle>,
    trusted: TrustedKeys,
    /// No hot-plug watch: the inventory is re-read on every resync instead.
    rescan_on_resync: bool,
    /// What the server seals this device's secrets to; its public half goes in every report.
    seal_key: fleet_proto::DeviceSealKey,
    /// The certificate key's signature of the sealing key, sent with it (`None` in local mode,
    /// or when the key file cannot sign).
    seal_key_proof: Option<String>,
    /// systemd's notifications and the reboot.
    host: Arc<dyn Host>,
    /// This process's version and its deadline, while it is on trial.
    trial: Option<(String, UnixMillis)>,
    /// Whether the last converge succeeded (a trial commits after one).
    converged_ok: AtomicBool,
    /// A self-update was installed: the loop ends and the process relaunches.
    relaunch: AtomicBool,
    /// The download of an agent version the server wants, while it runs.
    agent_fetch: Option<tokio::task::JoinHandle<AgentFetch>>,
}

/// How a download of an agent version ended: its version, whether it was the return to the
/// installed binary (nothing downloaded), and the outcome.
type AgentFetch = (String, bool, Result<(), crate::slots::SlotError>);

/// Reads the host's hardware (blocking file reads, off the runtime's threads) and adds what
/// only the agent knows: the engine, the disks that matter and its `[policy]`.
pub async fn scan_hardware<R: ContainerRuntime>(config: &Config, runtime: &R) -> HostHardware {
    let root = config.hardware.root.clone();
    let mut hw =
        tokio::task::spawn_blocking(move || hardware::scan::scan(&root)).await.unwrap_or_default();
    hw.inventory.engine = runtime.engine().await;
    hw.inventory.disks = hardware::disks(&[Path::new("/"), &config.data_dir]);
    hw.inventory.policy = Some(config.hardware.policy.clone());
    hw
}

/// When to try again after a lease that ends at `until`: just after it.
fn lease_end(until: UnixMillis) -> Instant {
    let left = until.0.saturating_sub(UnixMillis::now().0);
    Instant::now() + Duration::from_millis(left + 100)
}
