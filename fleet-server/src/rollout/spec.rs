//! What defines a rollout: its id, waves, failure threshold and what to do on failure, checked
//! once by [`RolloutSpec::validate`] so the engine only ever sees a spec that makes sense.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use fleet_proto::ReleaseId;
use serde::{Deserialize, Serialize};

use super::error::SpecError;
use super::window::MaintenanceWindow;

/// A rollout's identity, assigned by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RolloutId(pub u64);

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How far a wave takes the rollout, cumulatively: `Count(1)` then `Percent(10)` means one
/// device, then up to 10% of the eligible devices in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaveSize {
    /// This many devices in total (at most the whole fleet).
    Count(u32),
    /// This percentage (1 to 100) of the eligible devices in total, rounded up.
    Percent(u8),
}

impl WaveSize {
    /// The number of devices this wave brings the rollout to, out of `eligible`.
    pub(super) fn cumulative(self, eligible: usize) -> usize {
        match self {
            WaveSize::Count(n) => usize::try_from(n).unwrap_or(usize::MAX).min(eligible),
            WaveSize::Percent(p) => (eligible * usize::from(p)).div_ceil(100),
        }
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Count(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parses a wave list such as `1,10%,50%,100%`: device counts and percentages, growing, the
/// last one 100%.
pub fn parse_waves(text: &str) -> Result<Vec<WaveSize>, SpecError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SpecError::NoWaves);
    }
    let waves =
        text.split(',').map(|item| parse_wave(item.trim())).collect::<Result<Vec<_>, _>>()?;
    validate_waves(&waves)?;
    Ok(waves)
}

fn parse_wave(item: &str) -> Result<WaveSize, SpecError> {
    let bad = |why| SpecError::BadWave { wave: item.to_owned(), why };
    if item.is_empty() {
        return Err(bad("empty entry (two commas in a row, or a trailing comma?)"));
    }
    if let Some(number) = item.strip_suffix('%') {
        let p: u32 = number
            .trim()
            .parse()
            .map_err(|_| bad("a percentage is a whole number from 1 to 100, like 10%"))?;
        return match u8::try_from(p) {
            Ok(p) if (1..=100).contains(&p) => Ok(WaveSize::Percent(p)),
            _ if p == 0 => Err(bad("0% would update no device")),
            _ => Err(bad("more than 100% of the devices")),
        };
    }
    match item.parse::<u32>() {
        Ok(0) => Err(bad("0 devices would update no device")),
        Ok(n) => Ok(WaveSize::Count(n)),
        Err(_) => Err(bad("a wave is a device count like 5 or a percentage like 10%")),
    }
}

fn validate_waves(waves: &[WaveSize]) -> Result<(), SpecError> {
    let Some(last) = waves.last() else {
        return Err(SpecError::NoWaves);
    };
    for wave in waves {
        let why = match *wave {
            WaveSize::Count(0) => "0 devices would update no device",
            WaveSize::Percent(0) => "0% would update no device",
            WaveSize::Percent(p) if p > 100 => "more than 100% of the devices",
            _ => continue,
        };
        return Err(SpecError::BadWave { wave: wave.to_string(), why });
    }
    for pair in waves.windows(2) {
        // A count and a percentage compare only against a known fleet; the plan clamps them.
        let grows = match (pair[0], pair[1]) {
            (WaveSize::Count(a), WaveSize::Count(b)) => b > a,
            (WaveSize::Percent(a), WaveSize::Percent(b)) => b > a,
            _ => true,
        };
        if !grows {
            return Err(SpecError::NotIncreasing {
                previous: pair[0].to_string(),
                wave: pair[1].to_string(),
            });
        }
    }
    if *last != WaveSize::Percent(100) {
        return Err(SpecError::LastNotAll { last: last.to_string() });
    }
    Ok(())
}

/// How many failed devices the rollout tolerates; cumulative over the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Threshold {
    /// Crossed when more than this many devices failed.
    Count(u32),
    /// Crossed when more than this percentage (0 to 100, rounded down) of the devices of the
    /// waves started so far failed.
    Percent(u8),
}

impl FromStr for Threshold {
    type Err = SpecError;
    /// `5%` or `3`.
    fn from_str(text: &str) -> Result<Self, SpecError> {
        let text = text.trim();
        let bad = |why| SpecError::BadThreshold { text: text.to_owned(), why };
        if let Some(number) = text.strip_suffix('%') {
            let p: u8 = number
                .trim()
                .parse()
                .map_err(|_| bad("a percentage is a whole number from 0 to 100, like 5%"))?;
            if p > 100 {
                return Err(bad("more than 100%"));
            }
            return Ok(Threshold::Percent(p));
        }
        text.parse()
            .map(Threshold::Count)
            .map_err(|_| bad("a threshold is a device count like 3 or a percentage like 5%"))
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What happens when the failure threshold is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnFailure {
    /// Stop targeting and wait for an operator.
    Pause,
    /// Re-target every device the rollout targeted to its previous release, and end.
    Rollback,
}

impl FromStr for OnFailure {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Self, SpecError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "pause" => Ok(OnFailure::Pause),
            "rollback" => Ok(OnFailure::Rollback),
            _ => Err(SpecError::BadOnFailure { text: text.to_owned() }),
        }
    }
}

/// Everything that defines a rollout, validated by [`Rollout::new`](super::Rollout::new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// The rollout's id.
    pub id: RolloutId,
    /// The release it takes the devices to.
    pub release: ReleaseId,
    /// Cumulative wave sizes; see [`parse_waves`].
    pub waves: Vec<WaveSize>,
    /// How long a completed wave must stay healthy before the next one starts.
    pub bake: Duration,
    /// At most this many devices updating at once; `None`: no limit.
    pub max_parallel: Option<u32>,
    /// How many failures the rollout tolerates (cumulative).
    pub failure_threshold: Threshold,
    /// What happens when the threshold is crossed.
    pub on_failure: OnFailure,
    /// An offline or deferred device fails after being so this long.
    pub device_timeout: Duration,
    /// An online device fails when it is not healthy this long after targeting.
    pub update_deadline: Duration,
    /// When waves may start and devices may be targeted; `None`: always.
    pub window: Option<MaintenanceWindow>,
    /// The spread of target times inside a wave (`0`: all at once, within `max_parallel`).
    pub stagger: Duration,
}

impl RolloutSpec {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_waves(&self.waves)?;
        if self.max_parallel == Some(0) {
            return Err(SpecError::ZeroParallel);
        }
        if let Threshold::Percent(p) = self.failure_threshold {
            if p > 100 {
                return Err(SpecError::BadThreshold {
                    text: self.failure_threshold.to_string(),
                    why: "more than 100%",
                });
            }
        }
        for (what, d) in
            [("update deadline", self.update_deadline), ("device timeout", self.device_timeout)]
        {
            if d.is_zero() {
                return Err(SpecError::ZeroDuration { what });
            }
        }
        Ok(())
    }
}
