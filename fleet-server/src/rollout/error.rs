//! Why a rollout's definition is refused. Its own file so the spec and the maintenance window,
//! which both report through it, do not import each other.

use fleet_proto::DeviceId;

/// Why a rollout's definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No waves given.
    #[error("no waves given: write them like 1,10%,50%,100%")]
    NoWaves,
    /// One wave does not parse or makes no sense.
    #[error("wave {wave:?}: {why}")]
    BadWave {
        /// The wave as written.
        wave: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A wave is not larger than the one before.
    #[error("waves are cumulative and must grow: {wave} after {previous} adds no device")]
    NotIncreasing {
        /// The wave before.
        previous: String,
        /// The wave that does not grow.
        wave: String,
    },
    /// The last wave does not reach every device.
    #[error("the last wave is {last}, but it must be 100% so the rollout reaches every device; end the list with 100%")]
    LastNotAll {
        /// The last wave as written.
        last: String,
    },
    /// A threshold does not parse.
    #[error("failure threshold {text:?}: {why}")]
    BadThreshold {
        /// The threshold as written.
        text: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// An `--on-failure` that is neither pause nor rollback.
    #[error("on failure {text:?}: expected pause or rollback")]
    BadOnFailure {
        /// As written.
        text: String,
    },
    /// A maintenance window does not parse.
    #[error("maintenance window {text:?}: {why}")]
    BadWindow {
        /// The window as written.
        text: String,
        /// Why it is refused.
        why: String,
    },
    /// `max_parallel` is zero: nothing would ever update.
    #[error(
        "max parallel is 0, so no device would ever update; give at least 1 or leave it unlimited"
    )]
    ZeroParallel,
    /// A deadline of zero would fail every device at once.
    #[error("the {what} is 0, which would fail every device at once")]
    ZeroDuration {
        /// Which duration.
        what: &'static str,
    },
    /// The target resolved to no device.
    #[error("the rollout targets no device")]
    NoTargets,
    /// Every target device is pinned.
    #[error("all {count} target devices are pinned, and a rollout never moves a pinned device")]
    AllPinned {
        /// How many targets there are.
        count: usize,
    },
    /// A device appears twice in the targets.
    #[error("device {device} appears twice in the targets")]
    DuplicateTarget {
        /// The device.
        device: DeviceId,
    },
}
