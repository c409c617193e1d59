//! The tasks that live as long as the daemon besides its loop: the update-lock socket, the
//! admin socket (`fleet-agent apply`), the telemetry buffer with its ingestion socket, and
//! the container metrics sampler. Started together by [`Tasks::start`]; [`Tasks::stop`]
//! cancels them all with one token, then waits (bounded) for each, the telemetry buffer
//! flushed before the link closes.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{Event, EventKind, Severity, UnixMillis};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Call};
use crate::config::Config;
use crate::link::{LinkHandle, Outgoing};
use crate::lock::UpdateLocks;
use crate::runtime::ContainerRuntime;
use crate::telemetry::{self, TelemetryHandle};

/// How long stopping waits for each task.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// The daemon's tasks; dropped without [`Tasks::stop`], the socket tasks run on detached.
#[derive(Debug)]
pub(super) struct Tasks {
    /// Cancelled once, to stop every socket server.
    cancel: CancellationToken,
    lock_server: Option<JoinHandle<()>>,
    admin_server: Option<JoinHandle<()>>,
    telemetry: Option<(TelemetryHandle, JoinHandle<()>)>,
    ingest: Option<JoinHandle<()>>,
    container_metrics: Option<JoinHandle<()>>,
}

impl Tasks {
    /// Starts the tasks. `sockets`: the update locks and the admin calls' sender, to serve
    /// their sockets; `None`: no local sockets. Telemetry runs only with a link and
    /// `[telemetry] enabled`; its ingestion socket only if `ingest_on` (its directory exists).
    pub(super) async fn start<R: ContainerRuntime>(
        config: &Config,
        runtime: Arc<R>,
        sockets: Option<(UpdateLocks, tokio::sync::mpsc::Sender<Call>)>,
        link: Option<&mut LinkHandle>,
        telemetry_store: Option<Box<dyn telemetry::store::TelemetryStore>>,
        ingest_on: bool,
    ) -> Tasks {
        let cancel = CancellationToken::new();
        let (lock_server, admin_server) = match sockets {
            Some((locks, calls)) => (
                Some(serve_locks(config, locks, cancel.clone())),
                Some(serve_admin(config, calls, cancel.clone())),
            ),
            None => (None, None),
        };
        let telemetry = match link {
            Some(link) if config.telemetry.enabled => {
                start_telemetry(config, link, telemetry_store).await
            }
            _ => None,
        };
        // Applications post through the socket while the daemon runs.
        let ingest = match (&telemetry, &config.telemetry.ingest) {
            (Some((handle, _)), Some(cfg)) if ingest_on => {
                let identity = Arc::new(telemetry::ingest::ContainerIdentity::new(
                    Arc::clone(&runtime),
                    config.device_id.clone(),
                    config.telemetry.root.clone(),
                ));
                let (cfg, handle) = (cfg.clone(), handle.clone());
                let counters = handle.ingest_counters();
                let stopped = cancel.clone().cancelled_owned();
                Some(tokio::spawn(async move {
                    if let Err(e) =
                        telemetry::ingest::serve(cfg, handle, identity, counters, stopped).await
                    {
                        tracing::warn!(error = %e, "telemetry ingestion socket not served; host metrics still flow");
                    }
                }))
            }
            _ => None,
        };
        // Container metrics and lifecycle events, on their own task and event subscription:
        // the daemon's loop is busy during updates, and events are points as they happen.
        let container_metrics = telemetry.as_ref().map(|(handle, _)| {
            telemetry::containers::spawn(
                runtime,
                config.device_id.clone(),
                handle.clone(),
                config.telemetry.container_interval,
            )
        });
        Tasks { cancel, lock_server, admin_server, telemetry, ingest, container_metrics }
    }

    /// Stops every task with one cancellation, then waits for them: ingestion first, then the
    /// telemetry buffer (closing its input flushes it) while `link` still delivers, then the
    /// link, then the sockets.
    pub(super) async fn stop(self, link: Option<LinkHandle>) {
        let Tasks { cancel, lock_server, admin_server, telemetry, ingest, container_metrics } =
            self;
        cancel.cancel();
        if let Some(sampler) = container_metrics {
            sampler.abort();
        }
        if let Some(ingest) = ingest {
            let _ = tokio::time::timeout(STOP_WAIT, ingest).await;
        }
        if let Some((handle, task)) = telemetry {
            // Closing its input ends the task, which flushes the buffer.
            drop(handle);
            let _ = tokio::time::timeout(STOP_WAIT, task).await;
        }
        if let Some(link) = link {
            if link.dropped() > 0 {
                tracing::warn!(
                    dropped = link.dropped(),
                    "messages to the server dropped while the link was busy or down"
                );
            }
            link.shutdown(STOP_WAIT).await;
        }
        for server in [lock_server, admin_server].into_iter().flatten() {
            let _ = server.await;
        }
    }
}

/// Applications that prefer an API to a lock file use the socket; it lives as long as the
/// daemon. A failure to serve it is logged, not fatal: lock files keep working.
fn serve_locks(config: &Config, locks: UpdateLocks, cancel: CancellationToken) -> JoinHandle<()> {
    let socket = config.locks_socket.clone();
    tokio::spawn(async move {
        if let Err(e) = locks.serve(socket.clone(), cancel.cancelled_owned()).await {
            tracing::warn!(error = %e, socket = %socket.display(), "update lock socket not served; lock files still work");
        }
    })
}

/// `fleet-agent apply` hands local releases to the daemon through this socket.
fn serve_admin(
    config: &Config,
    calls: tokio::sync::mpsc::Sender<Call>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let socket = admin::socket_path(&config.data_dir);
    tokio::spawn(async move {
        if let Err(e) = admin::serve(socket.clone(), calls, cancel.cancelled_owned()).await {
            tracing::warn!(error = %e, socket = %socket.display(), "admin socket not served; `fleet-agent apply` cannot reach the daemon");
        }
    })
}

/// Opens the telemetry buffer and starts the task that fills and drains it. A buffer that
/// cannot be opened costs telemetry, never the release: the agent runs on without it.
async fn start_telemetry(
    config: &Config,
    link: &mut LinkHandle,
    given: Option<Box<dyn telemetry::store::TelemetryStore>>,
) -> Option<(TelemetryHandle, JoinHandle<()>)> {
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
