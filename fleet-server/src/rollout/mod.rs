//! The rollout engine: takes one release to a set of devices in waves, as a pure and
//! deterministic state machine.
//!
//! [`Rollout::step`] is given the time and a snapshot of every target device's observed state
//! and answers with [`Action`]s. It does no I/O, reads no clock and draws no randomness of its
//! own: wave membership and the stagger inside a wave come from the seed given to
//! [`Rollout::new`]. The I/O layer publishes the desired states the actions ask for, writes every
//! action to the audit log (each has a one-line `Display`), and persists the [`Rollout`] (it is
//! serde-serialisable) after every call that returned actions; that layer is [`driver`].
//!
//! Files: `spec` (what defines a rollout), `window` (maintenance windows), `observe` (what the
//! engine is told about devices), `state` (where a rollout and its devices stand, and the
//! actions), `engine` ([`Rollout`] itself), `tests`; [`driver`] steps the stored rollouts on a
//! clock and carries out their actions.
//!
//! Invariants:
//! - A device pinned when the rollout is created is in no wave. A device observed pinned when
//!   its turn comes is skipped, one observed pinned while updating leaves the rollout, and a
//!   device observed pinned is never rolled back: a rollout never moves a pinned device.
//! - [`Action::Target`] is emitted at most once per device per rollout. After it only the
//!   rollback of the whole rollout ([`Action::Rollback`], at most once per device) addresses
//!   that device again.
//! - At most `max_parallel` devices are updating (targeted, neither healthy nor failed) at once.
//! - Only the current wave has devices in flight: the next wave starts only once every device of
//!   the current one is healthy, failed or skipped, the failures are within the threshold, the
//!   bake time has passed, and the wave's healthy devices are still healthy.
//! - Waves start and devices are targeted only while the maintenance window is open.
//! - A paused, completed, aborted or rolled-back rollout emits nothing from `step`.
//! - The same spec, targets, seed and sequence of inputs give the same actions.
//!
//! Semantics where the requirements leave room (each is a choice, stated once here):
//! - **Waves** are cumulative (`1,10%,50%,100%`: 1 device, then up to 10% of the eligible, not
//!   pinned, devices, ...). Percentages round up; a count never exceeds the fleet; a wave that
//!   would be empty for this fleet (`1,10%` of 5 devices) is dropped. Membership is a
//!   Fisher–Yates shuffle of the id-sorted eligible devices keyed by the seed, so the canary is
//!   not always the alphabetically first robot, and `rollout plan` shows exactly what runs.
//! - **Stagger**: each device gets a fixed offset in `[0, stagger)` from a hash of the seed and
//!   its id, and is due that long after the wave's targeting began. Targeting "begins" when the
//!   wave starts, and again whenever it resumes after a pause or after the window was closed, so
//!   a site does not pull at once after a gap either. Due devices go out in offset order while
//!   fewer than `max_parallel` are updating.
//! - **Updating** devices count against `max_parallel` whether online or not: a targeted device
//!   that is offline picks up its retained desired state the moment it reconnects.
//! - **Failure threshold** is cumulative over the rollout: it is crossed when more devices have
//!   failed than `Count(n)` = n, or `Percent(p)` = floor(p% of the devices of the waves started
//!   so far). So `5%` stops at a failed canary (5% of 1 is 0). Resuming after a threshold pause
//!   accepts the failures so far: it pauses again only when new failures exceed the allowance.
//! - **Timeouts** (measured from targeting): a device that is online and not deferred fails
//!   after `update_deadline` without becoming healthy; one that is offline or deferred is
//!   pending, and fails when it stays so for longer than `device_timeout` (offline counts from
//!   when it was last seen, if that is after targeting). Coming back online restarts the update
//!   deadline; resuming a paused rollout restarts both clocks.
//! - **Health**: a device is healthy when it reports the rollout's release in force and its
//!   update outcome healthy. While its wave runs and bakes, healthy devices are re-checked in
//!   rotation ([`WATCH_PER_STEP`] per step) and all at once when the bake ends; one that now
//!   reports a failed or rolled-back update counts as failed (it regressed).
//! - **The last wave bakes too**: `Completed` means every wave ran and proved itself.
//! - **Window** closing mid-wave stops targeting; devices already targeted carry on, and their
//!   timeouts keep running.
//! - **Pause** stops everything: no targeting, no verdicts, no timeouts, nothing emitted.
//!   **Abort** ends the rollout where it stands (devices keep what they run). **Rollback** (on
//!   the threshold, or by hand from any state but rolled back) re-targets every device the
//!   rollout targeted to the release it ran before (`None`: no release) and ends the rollout;
//!   the engine does not follow the rollback's progress, the devices' reports show it.
//! - Devices already on the release are targeted like any other (it costs one idle desired
//!   state and makes the server's desired state agree with the device).
//! - A device missing from the observations is treated as offline while updating, and skipped
//!   ("no longer known") when its turn comes.

mod engine;
mod error;
mod observe;
mod spec;
mod state;
mod window;

pub mod driver;

#[cfg(test)]
mod tests;

pub use engine::{Rollout, WATCH_PER_STEP};
pub use error::SpecError;
pub use observe::{DeviceObservation, FailureReason, Observe, Outcome, SkipReason, TargetDevice};
pub use spec::{parse_waves, OnFailure, RolloutId, RolloutSpec, Threshold, WaveSize};
pub use state::{
    Action, CommandError, DeviceState, PauseReason, Progress, RollbackReason, RolloutStatus,
    RunState, WaitCause, WaveCounts, WavePhase, WaveStatus,
};
pub use window::MaintenanceWindow;
