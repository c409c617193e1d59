//! The machine the agent runs on, beyond its containers: systemd's notifications (readiness,
//! watchdog, stopping) and a reboot. Behind [`Host`] so the daemon is tested without a service
//! manager and without going down: [`SystemHost`] is the real machine, [`RecordingHost`] only
//! records what it was asked.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::sd_notify;

/// What the daemon asks of the machine it runs on.
pub trait Host: std::fmt::Debug + Send + Sync {
    /// Tells the service manager how the agent is; nothing happens without one.
    fn notify(&self, state: Notify);
    /// How often to ping the service manager's watchdog; `None`: nothing watches the agent.
    fn watchdog_interval(&self) -> Option<Duration>;
    /// Reboots the machine through its init system. Blocks until the init system took the
    /// request; the machine goes down after.
    fn reboot(&self) -> Result<(), RebootError>;
}

/// A notification to the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// Started: `READY=1`.
    Ready,
    /// Alive: `WATCHDOG=1`.
    Watchdog,
    /// Shutting down: `STOPPING=1`.
    Stopping,
}

impl Notify {
    /// The `sd_notify` assignment.
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Ready => "READY=1",
            Notify::Watchdog => "WATCHDOG=1",
            Notify::Stopping => "STOPPING=1",
        }
    }
}

/// Why a reboot did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    /// `systemctl` cannot be run.
    #[error("cannot run systemctl reboot")]
    Spawn(#[source] std::io::Error),
    /// `systemctl reboot` ran and failed.
    #[error("systemctl reboot failed: {0}")]
    Failed(std::process::ExitStatus),
}

/// The machine the agent runs on: `sd_notify` to systemd and `systemctl reboot`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemHost;

impl Host for SystemHost {
    fn notify(&self, state: Notify) {
        sd_notify::notify(state.as_str());
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        sd_notify::watchdog_interval()
    }

    fn reboot(&self) -> Result<(), RebootError> {
        let status = std::process::Command::new("systemctl")
            .arg("reboot")
            .status()
            .map_err(RebootError::Spawn)?;
        if status.success() {
            Ok(())
        } else {
            Err(RebootError::Failed(status))
        }
    }
}

/// What a [`RecordingHost`] was asked, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCall {
    /// [`Host::notify`].
    Notify(Notify),
    /// [`Host::reboot`].
    Reboot,
}

/// A host that records what it is asked and does nothing: for tests and simulations.
#[derive(Debug, Default)]
pub struct RecordingHost {
    calls: Mutex<Vec<HostCall>>,
    watchdog: Option<Duration>,
}

impl RecordingHost {
    /// A recording host whose watchdog asks for a ping this often.
    pub fn with_watchdog(every: Duration) -> Self {
        RecordingHost { watchdog: Some(every), ..RecordingHost::default() }
    }

    /// Everything asked so far, in order.
    pub fn calls(&self) -> Vec<HostCall> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many reboots were asked for.
    pub fn reboots(&self) -> usize {
        self.calls().iter().filter(|c| **c == HostCall::Reboot).count()
    }

    fn record(&self, call: HostCall) {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
    }
}

impl Host for RecordingHost {
    fn notify(&self, state: Notify) {
        self.record(HostCall::Notify(state));
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn reboot(&self) -> Result<(), RebootError> {
        self.record(HostCall::Reboot);
        Ok(())
    }
}
