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
//! * SIGTERM/SIGINT → stop, leaving every application container running.
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

use tokio::time::{Instant, MissedTickBehavior};

use crate::admin::{self, Answer, Call, Request};
use crate::config::Config;
use crate::lock::UpdateLocks;
use crate::proxy::PortProxy;
use crate::reconcile::{check_release, ExecOptions, Reconciler, StepError};
use crate::report;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::sd_notify;
use crate::state::{AgentState, Origin, StateError};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state database cannot be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// The engine is unreachable at start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
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
    ExecOptions {
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

/// Runs the daemon until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let state = open_state_waiting(&config).await?;
    let runtime =
        Arc::new(DockerRuntime::connect(&config.engine_socket, config.engine_timeout).await?);
    let locks = UpdateLocks::new(&config.locks_dir, config.locks_default_ttl);
    let reconciler =
        Reconciler::new(runtime, config.device_id.clone(), state, exec_options(&config))
            .with_locks(locks.clone())
            .with_proxy(PortProxy::new());
    let mut reconciler = reconciler;
    reconciler.set_credentials(config.registries.clone());
    // Applications that prefer an API to a lock file use the socket; it lives as long as the
    // daemon. A failure to serve it is logged, not fatal: lock files keep working.
    let (stop_locks, locks_stopped) = tokio::sync::oneshot::channel::<()>();
    let socket = config.locks_socket.clone();
    let lock_server = tokio::spawn(async move {
        let stopped = async {
            let _ = locks_stopped.await;
        };
        if let Err(e) = locks.serve(socket.clone(), stopped).await {
            tracing::warn!(error = %e, socket = %socket.display(), "update lock socket not served; lock files still work");
        }
    });
    // `fleet-agent apply` hands local releases to the daemon here.
    let (calls, admin_calls) = tokio::sync::mpsc::channel::<Call>(4);
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_socket = admin::socket_path(&config.data_dir);
    let admin_server = tokio::spawn(async move {
        let stopped = async {
            let _ = admin_stopped.await;
        };
        if let Err(e) = admin::serve(admin_socket.clone(), calls, stopped).await {
            tracing::warn!(error = %e, socket = %admin_socket.display(), "admin socket not served; `fleet-agent apply` cannot reach the daemon");
        }
    });
    let result = Daemon { config, reconciler }.run(shutdown, admin_calls).await;
    let _ = stop_locks.send(());
    let _ = stop_admin.send(());
    let _ = lock_server.await;
    let _ = admin_server.await;
    result
}

struct Daemon<R> {
    config: Config,
    reconciler: Reconciler<R>,
}

impl<R: ContainerRuntime> Daemon<R> {
    async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        mut admin_calls: tokio::sync::mpsc::Receiver<Call>,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let device = self.config.device_id.clone();
        tracing::info!(%device, "fleet-agent {} started", crate::AGENT_VERSION);
        sd_notify::notify("READY=1");

        let mut events = self.reconciler.runtime().events(&device);
        let mut resync = tokio::time::interval(self.config.resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let watchdog = sd_notify::watchdog_interval().map(|every| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    sd_notify::notify("WATCHDOG=1");
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
                    pending = true;
                    debounce.as_mut().reset(Instant::now());
                }
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
            }
        }
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        sd_notify::notify("STOPPING=1");
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
        let answer = match check_release(&release) {
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

    /// Writes `status.json` atomically for `fleet-agent status`.
    async fn write_status(&self) {
        let observed =
            self.reconciler.runtime().list(&self.config.device_id).await.unwrap_or_default();
        let Ok(report) = report::build(
            &self.config.device_id,
            self.reconciler.state(),
            &observed,
            self.reconciler.status(),
        ) else {
            return;
        };
        if let Err(e) = write_atomic(
            &self.config.data_dir.join("status.json"),
            &serde_json::to_vec_pretty(&report).unwrap_or_default(),
        ) {
            tracing::warn!(error = %e, "cannot write status.json");
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// When to try again after a lease that ends at `until`: just after it.
fn lease_end(until: fleet_proto::UnixMillis) -> Instant {
    let left = until.0.saturating_sub(fleet_proto::UnixMillis::now().0);
    Instant::now() + Duration::from_millis(left + 100)
}
