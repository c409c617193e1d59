//! Exponential backoff, the one the agent uses wherever it waits before trying again.
//!
//! The window before retry `attempt` (0-based) is `min(max, initial·2^attempt)`, computed
//! without overflow for any attempt. Callers either wait the whole window ([`Backoff::delay`]:
//! the executor retrying one engine call, where nobody else is competing) or a delay drawn
//! uniformly from `[0, window]` ([`Backoff::jittered`], "full jitter": the link reconnecting,
//! so a fleet that lost its broker at once does not come back in lock-step). Pure: the caller
//! owns the attempt counter, the random source and the sleeping.

use std::time::Duration;

/// Doubling delays from `initial`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Windows doubling from `initial` up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// Windows doubling from `initial` without a cap (until `Duration::MAX`): for a few
    /// attempts bounded by their count, not by time.
    pub const fn uncapped(initial: Duration) -> Backoff {
        Backoff::new(initial, Duration::MAX)
    }

    /// The whole window before retry `attempt` (0-based): `min(max, initial·2^attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// A delay drawn uniformly from `[0, delay(attempt)]` in whole milliseconds (full jitter).
    pub fn jittered(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let millis = u64::try_from(self.delay(attempt).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.u64(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The link's defaults: `backoff_initial_ms = 500`, `backoff_max_secs = 60`.
    const LINK: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));

    #[test]
    fn backoff_window_doubles_up_to_the_maximum() {
        let m = Duration::from_secs(60);
        assert_eq!(LINK.delay(0), 500 * MS);
        assert_eq!(LINK.delay(1), 1000 * MS);
        assert_eq!(LINK.delay(3), 4000 * MS);
        assert_eq!(LINK.delay(7), m, "64 s capped at 60 s");
        assert_eq!(LINK.delay(40), m, "no overflow for large attempts");
        assert_eq!(LINK.delay(u32::MAX), m);
    }

    #[test]
    fn retry_delays_double_from_the_first_without_jitter() {
        // The executor's defaults: 500 ms, then 1 s, 2 s, ... as before the shared type.
        let b = Backoff::uncapped(500 * MS);
        assert_eq!([b.delay(0), b.delay(1), b.delay(2)], [500 * MS, 1000 * MS, 2000 * MS]);
        assert_eq!(b.delay(u32::MAX), b.delay(31), "no overflow: the factor stops at 2^31");
    }

    #[test]
    fn backoff_delays_stay_within_the_window() {
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 0..50 {
            let window = LINK.delay(attempt);
            for _ in 0..200 {
                let d = LINK.jittered(attempt, &mut rng);
                assert!(d <= window, "attempt {attempt}: {d:?} > {window:?}");
            }
        }
    }

    #[test]
    fn backoff_delays_spread_over_the_whole_window() {
        // A thousand devices reconnecting after the same outage: full jitter spreads them over
        // the window instead of synchronising them at its end.
        let mut rng = fastrand::Rng::with_seed(42);
        let window = Duration::from_secs(8);
        let delays: Vec<u128> = (0..1000).map(|_| LINK.jittered(4, &mut rng).as_millis()).collect();
        let min = *delays.iter().min().unwrap();
        let max = *delays.iter().max().unwrap();
        assert!(min < window.as_millis() / 20, "some reconnect almost at once: {min}");
        assert!(max > window.as_millis() * 19 / 20, "some wait almost the whole window: {max}");
        let mean = delays.iter().sum::<u128>() / delays.len() as u128;
        assert!((3600..=4400).contains(&mean), "mean near half the window: {mean}");
        let mut buckets = [0u32; 8];
        for d in &delays {
            buckets[(*d as usize * 8 / 8001).min(7)] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 80), "roughly uniform: {buckets:?}");
    }
}
