//! Wall-clock timestamps on the wire.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC). Devices' clocks drift; the server treats these as the
/// device's claim, not as truth.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The current time from the system clock (0 if the clock is before 1970).
    pub fn now() -> Self {
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        UnixMillis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// This timestamp plus `d`, saturating.
    pub fn saturating_add(self, d: std::time::Duration) -> Self {
        UnixMillis(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}
