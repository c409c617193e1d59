//! The rollout engine: takes one release to a set of devices in waves, as a pure and
//! deterministic state machine.
//!
//! [`Rollout::step`] is given the time and a snapshot of every target device's observed state
//! and answers with [`Action`]s. It does no I/O, reads no clock and draws no randomness of its
//! own: wave membership and the stagger inside a wave come from the seed given to
//! [`Rollout::new`]. The I/O layer publishes the desired states the actions ask for, writes every
//! action to the audit log (each has a one-line `Display`), and persists the [`Rollout`] (it is
//! serde-serialisable) after every call that returned actions.
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use fleet_proto::report::{UpdatePhase, UpdateResult};
use fleet_proto::{DeviceId, ReleaseId, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::devices::DeviceRecord;

pub mod driver;

/// How many healthy devices of the current wave are re-checked per step (all of them at the
/// bake gate). Bounds a step's cost by `max_parallel` plus this, not by the wave's size.
pub const WATCH_PER_STEP: usize = 64;

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
    fn cumulative(self, eligible: usize) -> usize {
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

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// When updates may happen: some weekdays, from a start to an end time in a fixed UTC offset,
/// e.g. `Mon-Fri 22:00-05:00 Europe/Berlin` or `daily 01:00-04:00 +05:30`. A window that
/// crosses midnight belongs to the day it starts on (the first one runs from Monday 22:00 to
/// Saturday 05:00, with breaks in the daytime).
///
/// A named zone follows daylight saving time (the local clock decides, whatever the offset that
/// day); a fixed offset does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MaintenanceWindow {
    /// Bit 0 is Monday, bit 6 Sunday.
    days: u8,
    /// Minute of the day the window opens (0..1440).
    start: u16,
    /// Minute of the day the window closes (0..=1440); at or before `start`: the next day.
    end: u16,
    /// Whose clock.
    zone: Zone,
}

/// The clock a maintenance window is read on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Zone {
    /// A fixed offset from UTC, in minutes.
    Fixed(i16),
    /// An IANA zone, e.g. `Europe/Berlin` (checked to exist when parsed).
    Named(String),
}

impl Zone {
    /// The offset from UTC in minutes at `at`.
    fn offset_at(&self, at: UnixMillis) -> i64 {
        match self {
            Zone::Fixed(minutes) => i64::from(*minutes),
            Zone::Named(name) => {
                let tz = jiff::tz::TimeZone::get(name).unwrap_or(jiff::tz::TimeZone::UTC);
                let ts = jiff::Timestamp::from_millisecond(i64::try_from(at.0).unwrap_or(i64::MAX))
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                i64::from(tz.to_offset(ts).seconds()) / 60
            }
        }
    }
}

impl MaintenanceWindow {
    /// Parses `DAYS HH:MM-HH:MM OFFSET`: days as `Mon-Fri`, `Sat,Sun`, `Mon-Wed,Fri` or
    /// `daily`; the end may be `24:00`; the offset as `+01:00`, `-05:30`, `UTC` or `Z`.
    pub fn parse(text: &str) -> Result<MaintenanceWindow, SpecError> {
        let bad = |why: String| SpecError::BadWindow { text: text.to_owned(), why };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (days, times, zone) =
            match parts.as_slice() {
                [days, times, zone] => (*days, *times, *zone),
                [_, _] => {
                    return Err(bad(
                        "missing the UTC offset: write e.g. \"Mon-Fri 22:00-05:00 +01:00\"".into(),
                    ))
                }
                _ => return Err(bad(
                    "expected days, times and a UTC offset, e.g. \"Mon-Fri 22:00-05:00 +01:00\""
                        .into(),
                )),
            };
        let days = parse_days(days).map_err(bad)?;
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| bad(format!("times {times:?}: expected HH:MM-HH:MM")))?;
        let start = parse_hhmm(start, false).map_err(bad)?;
        let end = parse_hhmm(end, true).map_err(bad)?;
        if start == end {
            return Err(bad(format!(
                "times {times:?} make an empty window; for whole days write 00:00-24:00"
            )));
        }
        let zone = parse_zone(zone).map_err(bad)?;
        Ok(MaintenanceWindow { days, start, end, zone })
    }

    fn on(&self, weekday: i64) -> bool {
        self.days & (1 << weekday.rem_euclid(7)) != 0
    }

    fn local(&self, at: UnixMillis) -> i64 {
        i64::try_from(at.0).unwrap_or(i64::MAX) + self.zone.offset_at(at) * MINUTE_MS
    }

    /// Whether updates may happen at `at`.
    pub fn is_open(&self, at: UnixMillis) -> bool {
        let local = self.local(at);
        let day = local.div_euclid(DAY_MS);
        // 1970-01-01 was a Thursday; Monday is 0.
        let weekday = day + 3;
        let minute = local.rem_euclid(DAY_MS) / MINUTE_MS;
        let (start, end) = (i64::from(self.start), i64::from(self.end));
        if start < end {
            self.on(weekday) && (start..end).contains(&minute)
        } else {
            (self.on(weekday) && minute >= start) || (self.on(weekday - 1) && minute < end)
        }
    }

    /// `at` if the window is open then, otherwise when it next opens.
    pub fn next_open(&self, at: UnixMillis) -> UnixMillis {
        if self.is_open(at) {
            return at;
        }
        let local = self.local(at);
        let today = local.div_euclid(DAY_MS);
        for day in today..today + 8 {
            let opens = day * DAY_MS + i64::from(self.start) * MINUTE_MS;
            if self.on(day + 3) && opens > local {
                // The offset at the opening, not now: daylight saving time may start between.
                let guess = UnixMillis(
                    u64::try_from(opens - self.zone.offset_at(at) * MINUTE_MS).unwrap_or(0),
                );
                let utc = opens - self.zone.offset_at(guess) * MINUTE_MS;
                return UnixMillis(u64::try_from(utc).unwrap_or(0));
            }
        }
        // Unreachable: parsing refuses a window without days, so one opens within a week.
        at
    }
}

fn parse_days(text: &str) -> Result<u8, String> {
    let lower = text.to_ascii_lowercase();
    if lower == "daily" || lower == "*" {
        return Ok(0x7f);
    }
    let day = |name: &str| {
        DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(name)).ok_or_else(|| {
            format!("day {name:?}: expected one of Mon, Tue, Wed, Thu, Fri, Sat, Sun (or daily)")
        })
    };
    let mut days = 0u8;
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(item)?, day(item)?),
        };
        // A range may wrap around the week: Fri-Mon.
        let mut d = first;
        loop {
            days |= 1 << d;
            if d == last {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

fn parse_hhmm(text: &str, allow_24: bool) -> Result<u16, String> {
    let bad = || format!("time {text:?}: expected HH:MM from 00:00 to 23:59 (or 24:00 as an end)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if allow_24 => Ok(1440),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

fn parse_zone(text: &str) -> Result<Zone, String> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return Ok(Zone::Fixed(0));
    }
    let bad = || format!("UTC offset {text:?}: expected +HH:MM or -HH:MM, e.g. +01:00");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ if text.chars().any(|c| c.is_ascii_alphabetic()) => {
            return match jiff::tz::TimeZone::get(text) {
                Ok(_) => Ok(Zone::Named(text.to_owned())),
                Err(_) => Err(format!(
                    "time zone {text:?} is not in the tz database; give an IANA name such as Europe/Berlin or America/New_York, or a UTC offset such as +01:00"
                )),
            };
        }
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "00"));
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (i16, i16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 14 || m > 59 || (h == 14 && m > 0) {
        return Err(bad());
    }
    Ok(Zone::Fixed(sign * (h * 60 + m)))
}

impl FromStr for MaintenanceWindow {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Self, SpecError> {
        MaintenanceWindow::parse(text)
    }
}

impl TryFrom<String> for MaintenanceWindow {
    type Error = SpecError;
    fn try_from(text: String) -> Result<Self, SpecError> {
        MaintenanceWindow::parse(&text)
    }
}

impl From<MaintenanceWindow> for String {
    fn from(window: MaintenanceWindow) -> String {
        window.to_string()
    }
}

impl fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days == 0x7f {
            f.write_str("daily")?;
        } else {
            let mut runs = Vec::new();
            let mut d = 0;
            while d < 7 {
                if self.days & (1 << d) == 0 {
                    d += 1;
                    continue;
                }
                let first = d;
                while d + 1 < 7 && self.days & (1 << (d + 1)) != 0 {
                    d += 1;
                }
                runs.push(if first == d {
                    DAY_NAMES[first].to_owned()
                } else {
                    format!("{}-{}", DAY_NAMES[first], DAY_NAMES[d])
                });
                d += 1;
            }
            f.write_str(&runs.join(","))?;
        }
        write!(
            f,
            " {:02}:{:02}-{:02}:{:02} ",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60,
        )?;
        match &self.zone {
            Zone::Named(name) => f.write_str(name),
            Zone::Fixed(offset) => {
                let sign = if *offset < 0 { '-' } else { '+' };
                let offset = offset.unsigned_abs();
                write!(f, "{sign}{:02}:{:02}", offset / 60, offset % 60)
            }
        }
    }
}

/// Everything that defines a rollout, validated by [`Rollout::new`].
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

/// One device the rollout's target resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDevice {
    /// The device.
    pub id: DeviceId,
    /// Pinned now: the device is listed as skipped and in no wave.
    pub pinned: bool,
    /// The release it runs now, which a rollback returns it to (`None`: no release).
    pub previous_release: Option<ReleaseId>,
}

/// How a device's latest update (for the desired state the server last sent it) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The release applied and is healthy.
    Healthy,
    /// The update failed or was refused; the previous release kept running.
    Failed {
        /// Why, as the device said.
        reason: String,
    },
    /// The new release failed and the device went back to the previous one.
    RolledBack {
        /// Why, as the device said.
        reason: String,
    },
}

impl From<&UpdateResult> for Outcome {
    fn from(result: &UpdateResult) -> Outcome {
        match result {
            UpdateResult::Applied => Outcome::Healthy,
            UpdateResult::RolledBack { reason, .. } => {
                Outcome::RolledBack { reason: reason.clone() }
            }
            UpdateResult::Failed { reason } => Outcome::Failed { reason: reason.clone() },
            UpdateResult::Rejected { reason } => {
                Outcome::Failed { reason: format!("desired state refused: {reason}") }
            }
        }
    }
}

/// What the server observes about one device when it steps the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceObservation {
    /// Its retained status says online.
    pub online: bool,
    /// The release in force on the device.
    pub release: Option<ReleaseId>,
    /// The outcome of the update to the desired state the server last published to it; `None`
    /// while that update runs or has not started. Outcomes of older generations must not
    /// appear here (see [`DeviceObservation::from_record`]).
    pub outcome: Option<Outcome>,
    /// The agent defers the update (an application holds the update lock).
    pub deferred: bool,
    /// The device is pinned now.
    pub pinned: bool,
    /// When the server last heard from it.
    pub last_seen: UnixMillis,
}

impl DeviceObservation {
    /// The observation from the registry's record at `now`: its latest state report and its
    /// pin. An update outcome counts only if it is for the desired state the server last
    /// published (`record.desired_generation`), so the outcome of an earlier update is never
    /// taken for the rollout's.
    pub fn from_record(record: &DeviceRecord, now: UnixMillis) -> DeviceObservation {
        let report = record.last_report.as_ref();
        let update = report.map(|r| &r.update);
        DeviceObservation {
            online: record.online,
            release: report.and_then(|r| r.in_force.as_ref()).map(|f| f.release.clone()),
            outcome: update
                .and_then(|u| u.last_outcome.as_ref())
                .filter(|o| {
                    record.desired_generation > 0 && o.generation >= record.desired_generation
                })
                .map(|o| Outcome::from(&o.result)),
            deferred: update
                .is_some_and(|u| u.phase == UpdatePhase::Deferred || u.deferred.is_some()),
            pinned: record.pin_at(now).is_some(),
            last_seen: record.last_seen,
        }
    }
}

/// Where the engine looks up a device's observed state: a map in tests, the store in the
/// server. Only the devices a step needs are looked up (those updating, due, or re-checked), so
/// a step's cost does not grow with the fleet.
pub trait Observe {
    /// The device's state now; `None` if it is not known.
    fn observe(&self, device: &DeviceId) -> Option<DeviceObservation>;
}

impl Observe for BTreeMap<DeviceId, DeviceObservation> {
    fn observe(&self, device: &DeviceId) -> Option<DeviceObservation> {
        self.get(device).cloned()
    }
}

/// Why a device counts as failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// It reported a failed update.
    UpdateFailed {
        /// As the device said.
        reason: String,
    },
    /// It reported that it rolled back to its previous release.
    RolledBackOnDevice {
        /// As the device said.
        reason: String,
    },
    /// Online, but not healthy within the update deadline.
    Deadline {
        /// The deadline, in milliseconds.
        after_ms: u64,
    },
    /// Offline for longer than the device timeout.
    Offline {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// Deferred (update lock held) for longer than the device timeout.
    Deferred {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// It was healthy, then reported a failed or rolled-back update while its wave baked.
    Regressed {
        /// As the device said.
        reason: String,
    },
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::UpdateFailed { reason } => write!(f, "update failed: {reason}"),
            FailureReason::RolledBackOnDevice { reason } => {
                write!(f, "rolled back on the device: {reason}")
            }
            FailureReason::Deadline { after_ms } => {
                write!(f, "not healthy within {} of updating", human(*after_ms))
            }
            FailureReason::Offline { after_ms } => {
                write!(f, "offline for more than {}", human(*after_ms))
            }
            FailureReason::Deferred { after_ms } => {
                write!(f, "update deferred by a lock for more than {}", human(*after_ms))
            }
            FailureReason::Regressed { reason } => write!(f, "was healthy, then failed: {reason}"),
        }
    }
}

/// Why a device the rollout planned for is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// It was pinned when its turn came, or while it updated.
    Pinned,
    /// There was no observation of it when its turn came (it left the registry).
    Unknown,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Pinned => "pinned; a rollout never moves a pinned device",
            SkipReason::Unknown => "no longer known to the registry",
        })
    }
}

/// Why an updating device is waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitCause {
    /// It is offline.
    Offline,
    /// It defers the update.
    Deferred,
}

/// The clock an updating device runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// Online and working on it since then (measured against the update deadline).
    Working {
        /// Since when.
        since: UnixMillis,
    },
    /// Offline or deferred since then (measured against the device timeout).
    Waiting {
        /// Since when.
        since: UnixMillis,
        /// Why.
        cause: WaitCause,
    },
}

/// Where one device stands in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// Not targeted yet.
    Pending,
    /// Targeted, neither healthy nor failed yet.
    Updating {
        /// When the rollout targeted it.
        targeted_at: UnixMillis,
        /// Its clock.
        progress: Progress,
    },
    /// Runs the release, healthy.
    Healthy {
        /// Since when.
        at: UnixMillis,
    },
    /// Counts as failed.
    Failed {
        /// Since when.
        at: UnixMillis,
        /// Why.
        reason: FailureReason,
    },
    /// Left out.
    Skipped {
        /// Why.
        reason: SkipReason,
    },
    /// Sent back to its previous release by the rollout's rollback.
    RolledBack {
        /// When.
        at: UnixMillis,
    },
}

/// Why a rollout paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// The failure threshold was crossed.
    Threshold {
        /// Devices failed so far.
        failed: usize,
        /// How many failures were tolerated.
        allowed: usize,
    },
    /// An operator paused it.
    Manual {
        /// Their reason.
        reason: String,
    },
}

// Said once, in the API's words: audit lines read like `rollout status`.
impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&fleet_api::PauseReason::from(self.clone()), f)
    }
}

/// Why a rollout rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RollbackReason {
    /// The failure threshold was crossed.
    Threshold {
        /// Devices failed so far.
        failed: usize,
        /// How many failures were tolerated.
        allowed: usize,
    },
    /// An operator asked for it.
    Manual,
}

impl fmt::Display for RollbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&fleet_api::RollbackReason::from(self.clone()), f)
    }
}

/// Where the rollout as a whole stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Moving (or waiting for a window, a bake, devices).
    Running,
    /// Stopped until resumed.
    Paused {
        /// Why.
        reason: PauseReason,
        /// Since when.
        at: UnixMillis,
    },
    /// Every wave ran and baked.
    Completed {
        /// When.
        at: UnixMillis,
    },
    /// Ended by an operator; devices keep what they run.
    Aborted {
        /// When.
        at: UnixMillis,
    },
    /// Ended by sending the targeted devices back to their previous releases.
    RolledBack {
        /// Why.
        reason: RollbackReason,
        /// When.
        at: UnixMillis,
    },
}

impl RunState {
    /// A one-word name, as `rollout status` shows it.
    pub fn name(&self) -> &'static str {
        fleet_api::RunState::from(self.clone()).name()
    }

    /// Running or paused: the rollout still holds its devices (one active rollout per device).
    pub fn is_active(&self) -> bool {
        matches!(self, RunState::Running | RunState::Paused { .. })
    }
}

/// What the I/O layer must do or record. Every action is also one audit-log line (`Display`).
/// Waves are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A wave started.
    WaveStarted {
        /// Which (from 1).
        wave: usize,
        /// Its devices.
        devices: usize,
    },
    /// Publish a desired state with `release` to `device`.
    Target {
        /// The device.
        device: DeviceId,
        /// The release.
        release: ReleaseId,
    },
    /// The device runs the release, healthy.
    DeviceHealthy {
        /// The device.
        device: DeviceId,
    },
    /// The device counts as failed.
    DeviceFailed {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: FailureReason,
    },
    /// The device is left out of the rollout.
    DeviceSkipped {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: SkipReason,
    },
    /// Every device of the wave is healthy, failed or skipped; the bake begins.
    WaveCompleted {
        /// Which (from 1).
        wave: usize,
        /// Healthy devices.
        healthy: usize,
        /// Failed devices.
        failed: usize,
        /// Skipped devices.
        skipped: usize,
    },
    /// The rollout paused.
    Paused {
        /// Why.
        reason: PauseReason,
    },
    /// The rollout resumed.
    Resumed,
    /// The rollout rolls back; [`Action::Rollback`]s follow.
    RollbackStarted {
        /// Why.
        reason: RollbackReason,
    },
    /// Publish a desired state with `to` (`None`: no release) to `device`.
    Rollback {
        /// The device.
        device: DeviceId,
        /// The release it ran before the rollout.
        to: Option<ReleaseId>,
    },
    /// Every wave ran and baked.
    Completed,
    /// An operator aborted the rollout.
    Aborted,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::WaveStarted { wave, devices } => write!(f, "wave {wave} started ({devices} devices)"),
            Action::Target { device, release } => write!(f, "{device}: target release {release}"),
            Action::DeviceHealthy { device } => write!(f, "{device}: healthy on the release"),
            Action::DeviceFailed { device, reason } => write!(f, "{device}: failed: {reason}"),
            Action::DeviceSkipped { device, reason } => write!(f, "{device}: skipped: {reason}"),
            Action::WaveCompleted { wave, healthy, failed, skipped } => write!(
                f,
                "wave {wave} completed ({healthy} healthy, {failed} failed, {skipped} skipped); baking"
            ),
            Action::Paused { reason } => write!(f, "paused: {reason}"),
            Action::Resumed => f.write_str("resumed"),
            Action::RollbackStarted { reason } => write!(f, "rolling back: {reason}"),
            Action::Rollback { device, to: Some(to) } => write!(f, "{device}: roll back to release {to}"),
            Action::Rollback { device, to: None } => {
                write!(f, "{device}: roll back to no release (it ran none before)")
            }
            Action::Completed => f.write_str("completed"),
            Action::Aborted => f.write_str("aborted"),
        }
    }
}

/// A manual command that does not fit the rollout's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command} rollout {rollout}: it is {state}")]
pub struct CommandError {
    /// The rollout.
    pub rollout: RolloutId,
    /// The command (`pause`, `resume`, `abort`, `roll back`).
    pub command: String,
    /// The rollout's state name.
    pub state: String,
}

/// Device counts of one wave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Not targeted yet.
    pub pending: usize,
    /// Targeted, not yet healthy or failed.
    pub updating: usize,
    /// Healthy on the release.
    pub healthy: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped (pinned or gone when their turn came).
    pub skipped: usize,
    /// Sent back to their previous release.
    pub rolled_back: usize,
}

impl WaveCounts {
    fn slot(&mut self, state: &DeviceState) -> &mut usize {
        match state {
            DeviceState::Pending => &mut self.pending,
            DeviceState::Updating { .. } => &mut self.updating,
            DeviceState::Healthy { .. } => &mut self.healthy,
            DeviceState::Failed { .. } => &mut self.failed,
            DeviceState::Skipped { .. } => &mut self.skipped,
            DeviceState::RolledBack { .. } => &mut self.rolled_back,
        }
    }

    /// All devices of the wave.
    pub fn total(&self) -> usize {
        self.pending + self.updating + self.healthy + self.failed + self.skipped + self.rolled_back
    }
}

/// Where a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WavePhase {
    /// Not started (a wave before it runs, or the window is closed).
    Waiting,
    /// Targeting its devices and waiting for their verdicts.
    Active {
        /// When it started.
        started_at: UnixMillis,
        /// When the current stretch of targeting began (stagger offsets count from it);
        /// `None` while the window is closed.
        stagger_base: Option<UnixMillis>,
    },
    /// All its devices have a verdict; baking.
    Baking {
        /// Since when.
        since: UnixMillis,
    },
    /// Baked; the rollout moved on.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DeviceEntry {
    id: DeviceId,
    previous: Option<ReleaseId>,
    wave: usize,
    /// Stagger offset inside the wave.
    offset_ms: u64,
    /// As last observed.
    pinned: bool,
    state: DeviceState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Wave {
    /// Indices into `Rollout::devices`, in target order (stagger offset, then id).
    members: Vec<usize>,
    /// `members[..cursor]` have left `Pending`; the rest are pending.
    cursor: usize,
    /// Next position of the healthy re-check rotation.
    watch: usize,
    phase: WavePhase,
    counts: WaveCounts,
}

/// Per-wave progress, for `rollout status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// Which (from 1).
    pub wave: usize,
    /// Its devices.
    pub devices: usize,
    /// Where it stands.
    pub phase: WavePhase,
    /// Counts by device state.
    pub counts: WaveCounts,
}

/// A rollout's progress, for `rollout status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The rollout.
    pub id: RolloutId,
    /// Its release.
    pub release: ReleaseId,
    /// Where it stands.
    pub state: RunState,
    /// The wave in progress (from 1), if any.
    pub current_wave: Option<usize>,
    /// Every wave.
    pub waves: Vec<WaveStatus>,
    /// Devices left out at creation because they were pinned.
    pub skipped_pinned: Vec<DeviceId>,
    /// Devices failed so far.
    pub failed: usize,
    /// Failures tolerated before the threshold is crossed now.
    pub allowed_failures: usize,
    /// When the bake of the current wave ends, if it is baking.
    pub bake_until: Option<UnixMillis>,
}

/// One rollout: its plan and where every device stands. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    spec: RolloutSpec,
    seed: u64,
    created_at: UnixMillis,
    state: RunState,
    /// Eligible devices, sorted by id.
    devices: Vec<DeviceEntry>,
    skipped_pinned: Vec<DeviceId>,
    waves: Vec<Wave>,
    /// Index of the wave in progress; `waves.len()` when all are done.
    current: usize,
    /// Indices of devices in `Updating`.
    updating: BTreeSet<usize>,
    /// Devices that ever failed.
    failed: usize,
    /// Failures an operator accepted by resuming after a threshold pause.
    accepted_failures: usize,
}

impl Rollout {
    /// Plans a rollout of `spec` over `targets` (any order) at `now`. Pinned targets are listed
    /// as skipped; the others are shuffled by `seed` into the waves.
    pub fn new(
        spec: RolloutSpec,
        mut targets: Vec<TargetDevice>,
        now: UnixMillis,
        seed: u64,
    ) -> Result<Rollout, SpecError> {
        spec.validate()?;
        if targets.is_empty() {
            return Err(SpecError::NoTargets);
        }
        targets.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = targets.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(SpecError::DuplicateTarget { device: pair[0].id.clone() });
        }
        let count = targets.len();
        let (pinned, eligible): (Vec<_>, Vec<_>) = targets.into_iter().partition(|t| t.pinned);
        if eligible.is_empty() {
            return Err(SpecError::AllPinned { count });
        }
        let stagger_ms = millis(spec.stagger);
        let mut devices: Vec<DeviceEntry> = eligible
            .into_iter()
            .map(|t| DeviceEntry {
                offset_ms: if stagger_ms == 0 {
                    0
                } else {
                    splitmix64(seed ^ fnv1a(t.id.as_str())) % stagger_ms
                },
                id: t.id,
                previous: t.previous_release,
                wave: 0,
                pinned: false,
                state: DeviceState::Pending,
            })
            .collect();
        let mut order: Vec<usize> = (0..devices.len()).collect();
        let mut rng = seed;
        for i in (1..order.len()).rev() {
            rng = splitmix64(rng);
            let j = usize::try_from(rng % (i as u64 + 1)).unwrap_or(0);
            order.swap(i, j);
        }
        let n = devices.len();
        let mut waves = Vec::new();
        let mut done = 0;
        for (i, size) in spec.waves.iter().enumerate() {
            let upto = if i + 1 == spec.waves.len() { n } else { size.cumulative(n).max(done) };
            if upto == done {
                continue;
            }
            let mut members = order[done..upto].to_vec();
            members.sort_by_key(|&m| (devices[m].offset_ms, m));
            for &m in &members {
                devices[m].wave = waves.len();
            }
            let counts = WaveCounts { pending: members.len(), ..WaveCounts::default() };
            waves.push(Wave { members, cursor: 0, watch: 0, phase: WavePhase::Waiting, counts });
            done = upto;
        }
        Ok(Rollout {
            spec,
            seed,
            created_at: now,
            state: RunState::Running,
            devices,
            skipped_pinned: pinned.into_iter().map(|t| t.id).collect(),
            waves,
            current: 0,
            updating: BTreeSet::new(),
            failed: 0,
            accepted_failures: 0,
        })
    }

    /// The definition.
    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    /// Where the rollout stands.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The seed the plan came from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// When it was created.
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }

    /// The devices of each wave in the order they are targeted, for `rollout plan`.
    pub fn plan(&self) -> Vec<Vec<DeviceId>> {
        self.waves
            .iter()
            .map(|w| w.members.iter().map(|&m| self.devices[m].id.clone()).collect())
            .collect()
    }

    /// Every device in a wave (not those skipped as pinned at creation), sorted by id.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.devices.iter().map(|d| &d.id)
    }

    /// Where one device stands; `None` if it is in no wave.
    pub fn device_state(&self, id: &DeviceId) -> Option<&DeviceState> {
        self.index(id).map(|i| &self.devices[i].state)
    }

    /// Progress per wave, for `rollout status`.
    pub fn status(&self) -> RolloutStatus {
        let waves = self
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| WaveStatus {
                wave: i + 1,
                devices: w.members.len(),
                phase: w.phase,
                counts: w.counts,
            })
            .collect();
        let bake_until = match self.waves.get(self.current).map(|w| w.phase) {
            Some(WavePhase::Baking { since }) => Some(since.saturating_add(self.spec.bake)),
            _ => None,
        };
        RolloutStatus {
            id: self.spec.id,
            release: self.spec.release.clone(),
            state: self.state.clone(),
            current_wave: (self.current < self.waves.len()).then_some(self.current + 1),
            waves,
            skipped_pinned: self.skipped_pinned.clone(),
            failed: self.failed,
            allowed_failures: self.allowed_failures() + self.accepted_failures,
            bake_until,
        }
    }

    /// Advances the rollout to `now` given every target device's observed state.
    pub fn step(&mut self, now: UnixMillis, observed: &dyn Observe) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != RunState::Running {
            return out;
        }
        self.judge_updating(now, observed, &mut out);
        if let Some(wave) = self.waves.get(self.current) {
            if matches!(wave.phase, WavePhase::Active { .. } | WavePhase::Baking { .. }) {
                self.watch_healthy(now, observed, WATCH_PER_STEP, &mut out);
            }
        }
        if self.react_to_threshold(now, observed, &mut out) {
            return out;
        }
        self.advance(now, observed, &mut out);
        out
    }

    /// Pauses a running rollout.
    pub fn pause(&mut self, now: UnixMillis, reason: String) -> Result<Vec<Action>, CommandError> {
        if self.state != RunState::Running {
            return Err(self.refuse("pause"));
        }
        let reason = PauseReason::Manual { reason };
        self.state = RunState::Paused { reason: reason.clone(), at: now };
        Ok(vec![Action::Paused { reason }])
    }

    /// Resumes a paused rollout. The devices' timeouts start afresh, and after a threshold
    /// pause the failures so far count as accepted.
    pub fn resume(&mut self, now: UnixMillis) -> Result<Vec<Action>, CommandError> {
        let RunState::Paused { reason, .. } = &self.state else {
            return Err(self.refuse("resume"));
        };
        if matches!(reason, PauseReason::Threshold { .. }) {
            self.accepted_failures = self.failed;
        }
        let in_flight: Vec<usize> = self.updating.iter().copied().collect();
        for i in in_flight {
            if let DeviceState::Updating { progress, .. } = &mut self.devices[i].state {
                *progress = match *progress {
                    Progress::Working { .. } => Progress::Working { since: now },
                    Progress::Waiting { cause, .. } => Progress::Waiting { since: now, cause },
                };
            }
        }
        if let Some(WavePhase::Active { stagger_base, .. }) =
            self.waves.get_mut(self.current).map(|w| &mut w.phase)
        {
            *stagger_base = None;
        }
        self.state = RunState::Running;
        Ok(vec![Action::Resumed])
    }

    /// Ends a running or paused rollout where it stands.
    pub fn abort(&mut self, now: UnixMillis) -> Result<Vec<Action>, CommandError> {
        if !self.state.is_active() {
            return Err(self.refuse("abort"));
        }
        self.state = RunState::Aborted { at: now };
        Ok(vec![Action::Aborted])
    }

    /// Sends every device the rollout targeted, except pinned ones, back to its previous
    /// release; allowed in any state but rolled back (also after completion or abort).
    pub fn rollback(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
    ) -> Result<Vec<Action>, CommandError> {
        if matches!(self.state, RunState::RolledBack { .. }) {
            return Err(self.refuse("roll back"));
        }
        let mut out = Vec::new();
        self.roll_back(now, observed, RollbackReason::Manual, &mut out);
        Ok(out)
    }

    fn refuse(&self, command: &str) -> CommandError {
        CommandError {
            rollout: self.spec.id,
            command: command.to_owned(),
            state: self.state.name().to_owned(),
        }
    }

    fn index(&self, id: &DeviceId) -> Option<usize> {
        self.devices.binary_search_by(|d| d.id.cmp(id)).ok()
    }

    fn window_open(&self, now: UnixMillis) -> bool {
        self.spec.window.as_ref().is_none_or(|w| w.is_open(now))
    }

    /// Moves device `i` to `new`, keeping the counters in step.
    fn set_state(&mut self, i: usize, new: DeviceState) {
        let entry = &mut self.devices[i];
        let counts = &mut self.waves[entry.wave].counts;
        *counts.slot(&entry.state) -= 1;
        *counts.slot(&new) += 1;
        if matches!(new, DeviceState::Updating { .. }) {
            self.updating.insert(i);
        } else {
            self.updating.remove(&i);
        }
        if matches!(new, DeviceState::Failed { .. })
            && !matches!(entry.state, DeviceState::Failed { .. })
        {
            self.failed += 1;
        }
        entry.state = new;
    }

    fn fail(&mut self, i: usize, now: UnixMillis, reason: FailureReason, out: &mut Vec<Action>) {
        out.push(Action::DeviceFailed {
            device: self.devices[i].id.clone(),
            reason: reason.clone(),
        });
        self.set_state(i, DeviceState::Failed { at: now, reason });
    }

    fn skip(&mut self, i: usize, reason: SkipReason, out: &mut Vec<Action>) {
        out.push(Action::DeviceSkipped { device: self.devices[i].id.clone(), reason });
        self.set_state(i, DeviceState::Skipped { reason });
    }

    /// Gives every updating device its verdict, or moves its clock.
    fn judge_updating(&mut self, now: UnixMillis, observed: &dyn Observe, out: &mut Vec<Action>) {
        let deadline = millis(self.spec.update_deadline);
        let timeout = millis(self.spec.device_timeout);
        let in_flight: Vec<usize> = self.updating.iter().copied().collect();
        for i in in_flight {
            let DeviceState::Updating { targeted_at, progress } = self.devices[i].state else {
                continue;
            };
            let obs = observed.observe(&self.devices[i].id);
            if let Some(o) = &obs {
                self.devices[i].pinned = o.pinned;
                if o.pinned {
                    self.skip(i, SkipReason::Pinned, out);
                    continue;
                }
                match &o.outcome {
                    Some(Outcome::Healthy) if o.release.as_ref() == Some(&self.spec.release) => {
                        out.push(Action::DeviceHealthy { device: self.devices[i].id.clone() });
                        self.set_state(i, DeviceState::Healthy { at: now });
                        continue;
                    }
                    Some(Outcome::Failed { reason }) => {
                        self.fail(
                            i,
                            now,
                            FailureReason::UpdateFailed { reason: reason.clone() },
                            out,
                        );
                        continue;
                    }
                    Some(Outcome::RolledBack { reason }) => {
                        let reason = FailureReason::RolledBackOnDevice { reason: reason.clone() };
                        self.fail(i, now, reason, out);
                        continue;
                    }
                    _ => {}
                }
            }
            // No observation: the device is gone from view, which is as good as offline.
            let (online, deferred, last_seen) = obs
                .as_ref()
                .map_or((false, false, UnixMillis(0)), |o| (o.online, o.deferred, o.last_seen));
            let cause = match (online, deferred) {
                (false, _) => Some(WaitCause::Offline),
                (true, true) => Some(WaitCause::Deferred),
                (true, false) => None,
            };
            let progress = match (cause, progress) {
                (Some(cause), Progress::Working { since }) => {
                    // Offline counts from when it was last heard, if that was after targeting.
                    let since = match cause {
                        WaitCause::Offline => since.max(last_seen.min(now)),
                        WaitCause::Deferred => now,
                    };
                    Progress::Waiting { since, cause }
                }
                (Some(cause), Progress::Waiting { since, .. }) => {
                    Progress::Waiting { since, cause }
                }
                (None, Progress::Waiting { .. }) => Progress::Working { since: now },
                (None, working) => working,
            };
            let verdict = match progress {
                Progress::Working { since } if elapsed(now, since) > deadline => {
                    Some(FailureReason::Deadline { after_ms: deadline })
                }
                Progress::Waiting { since, cause } if elapsed(now, since) > timeout => {
                    Some(match cause {
                        WaitCause::Offline => FailureReason::Offline { after_ms: timeout },
                        WaitCause::Deferred => FailureReason::Deferred { after_ms: timeout },
                    })
                }
                _ => None,
            };
            match verdict {
                Some(reason) => self.fail(i, now, reason, out),
                None => self.devices[i].state = DeviceState::Updating { targeted_at, progress },
            }
        }
    }

    /// Re-checks up to `limit` targeted devices of the current wave, in rotation: a healthy one
    /// that now reports a failed or rolled-back update regressed.
    fn watch_healthy(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
        limit: usize,
        out: &mut Vec<Action>,
    ) {
        let w = self.current;
        let targeted = self.waves[w].cursor;
        for _ in 0..limit.min(targeted) {
            let position = self.waves[w].watch % targeted;
            self.waves[w].watch = (position + 1) % targeted;
            let i = self.waves[w].members[position];
            if !matches!(self.devices[i].state, DeviceState::Healthy { .. }) {
                continue;
            }
            let Some(o) = observed.observe(&self.devices[i].id) else { continue };
            self.devices[i].pinned = o.pinned;
            if o.pinned {
                // The operator holds it now; what it does next is not the release's doing.
                continue;
            }
            if let Some(Outcome::Failed { reason } | Outcome::RolledBack { reason }) = &o.outcome {
                self.fail(i, now, FailureReason::Regressed { reason: reason.clone() }, out);
            }
        }
    }

    /// Devices in the waves started so far, minus the skipped ones.
    fn started_devices(&self) -> usize {
        self.waves
            .iter()
            .filter(|w| w.phase != WavePhase::Waiting)
            .map(|w| w.members.len() - w.counts.skipped)
            .sum()
    }

    fn allowed_failures(&self) -> usize {
        match self.spec.failure_threshold {
            Threshold::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Threshold::Percent(p) => self.started_devices() * usize::from(p) / 100,
        }
    }

    /// Pauses or rolls back if the threshold is crossed; true if it was.
    fn react_to_threshold(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
        out: &mut Vec<Action>,
    ) -> bool {
        let allowed = self.allowed_failures().saturating_add(self.accepted_failures);
        if self.failed <= allowed {
            return false;
        }
        let failed = self.failed;
        match self.spec.on_failure {
            OnFailure::Pause => {
                let reason = PauseReason::Threshold { failed, allowed };
                self.state = RunState::Paused { reason: reason.clone(), at: now };
                out.push(Action::Paused { reason });
            }
            OnFailure::Rollback => {
                self.roll_back(now, observed, RollbackReason::Threshold { failed, allowed }, out)
            }
        }
        true
    }

    fn roll_back(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
        reason: RollbackReason,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::RollbackStarted { reason: reason.clone() });
        for i in 0..self.devices.len() {
            let targeted = matches!(
                self.devices[i].state,
                DeviceState::Updating { .. }
                    | DeviceState::Healthy { .. }
                    | DeviceState::Failed { .. }
            );
            if !targeted {
                continue;
            }
            if let Some(o) = observed.observe(&self.devices[i].id) {
                self.devices[i].pinned = o.pinned;
            }
            if self.devices[i].pinned {
                continue;
            }
            let device = &self.devices[i];
            out.push(Action::Rollback { device: device.id.clone(), to: device.previous.clone() });
            self.set_state(i, DeviceState::RolledBack { at: now });
        }
        self.state = RunState::RolledBack { reason, at: now };
    }

    /// Starts, targets, completes and bakes waves as far as `now` allows.
    fn advance(&mut self, now: UnixMillis, observed: &dyn Observe, out: &mut Vec<Action>) {
        while let Some(wave) = self.waves.get(self.current) {
            let w = self.current;
            match wave.phase {
                WavePhase::Waiting => {
                    if !self.window_open(now) {
                        return;
                    }
                    let wave = &mut self.waves[w];
                    wave.phase = WavePhase::Active { started_at: now, stagger_base: None };
                    out.push(Action::WaveStarted { wave: w + 1, devices: wave.members.len() });
                }
                WavePhase::Active { .. } => {
                    self.target_due(now, observed, out);
                    let wave = &mut self.waves[w];
                    let counts = wave.counts;
                    if counts.pending > 0 || counts.updating > 0 {
                        return;
                    }
                    wave.phase = WavePhase::Baking { since: now };
                    out.push(Action::WaveCompleted {
                        wave: w + 1,
                        healthy: counts.healthy,
                        failed: counts.failed,
                        skipped: counts.skipped,
                    });
                }
                WavePhase::Baking { since } => {
                    if now < since.saturating_add(self.spec.bake) {
                        return;
                    }
                    // The gate: every healthy device of the wave must still be healthy.
                    let targeted = wave.cursor;
                    self.watch_healthy(now, observed, targeted, out);
                    if self.react_to_threshold(now, observed, out) {
                        return;
                    }
                    self.waves[w].phase = WavePhase::Done;
                    self.current += 1;
                }
                WavePhase::Done => self.current += 1,
            }
        }
        self.state = RunState::Completed { at: now };
        out.push(Action::Completed);
    }

    /// Targets the current wave's devices that are due, while the window is open and slots
    /// are free.
    fn target_due(&mut self, now: UnixMillis, observed: &dyn Observe, out: &mut Vec<Action>) {
        let w = self.current;
        let open = self.window_open(now);
        let WavePhase::Active { stagger_base, .. } = &mut self.waves[w].phase else {
            return;
        };
        if !open {
            *stagger_base = None;
            return;
        }
        let base = *stagger_base.get_or_insert(now);
        let mut slots = self.spec.max_parallel.map_or(usize::MAX, |m| {
            usize::try_from(m).unwrap_or(usize::MAX).saturating_sub(self.updating.len())
        });
        while let Some(&i) = self.waves[w].members.get(self.waves[w].cursor) {
            let entry = &self.devices[i];
            if now.0 < base.0.saturating_add(entry.offset_ms) {
                break;
            }
            match observed.observe(&entry.id) {
                None => self.skip(i, SkipReason::Unknown, out),
                Some(o) if o.pinned => {
                    self.devices[i].pinned = true;
                    self.skip(i, SkipReason::Pinned, out);
                }
                Some(_) => {
                    if slots == 0 {
                        break;
                    }
                    slots -= 1;
                    out.push(Action::Target {
                        device: entry.id.clone(),
                        release: self.spec.release.clone(),
                    });
                    let progress = Progress::Working { since: now };
                    self.set_state(i, DeviceState::Updating { targeted_at: now, progress });
                }
            }
            self.waves[w].cursor += 1;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn elapsed(now: UnixMillis, since: UnixMillis) -> u64 {
    now.0.saturating_sub(since.0)
}

/// A duration in milliseconds for people: `45s`, `10m`, `1h 30m`.
fn human(ms: u64) -> String {
    crate::units::human_duration(Duration::from_millis(ms))
}

/// The splitmix64 finaliser: a good 64-bit mix, stable across platforms and Rust versions
/// (the plan must not change when the server is rebuilt).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::{BTreeSet, BinaryHeap};

    use super::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    /// 2024-01-01 00:00 UTC, a Monday.
    const MONDAY: u64 = 1_704_067_200_000;

    type Observed = BTreeMap<DeviceId, DeviceObservation>;

    fn id(n: usize) -> DeviceId {
        DeviceId::new(format!("d{n:05}")).unwrap()
    }

    fn index_of(device: &DeviceId) -> usize {
        device.as_str()[1..].parse().unwrap()
    }

    fn rel(s: &str) -> ReleaseId {
        ReleaseId::new(s).unwrap()
    }

    fn at(ms: u64) -> UnixMillis {
        UnixMillis(MONDAY + ms)
    }

    fn spec(waves: &str) -> RolloutSpec {
        RolloutSpec {
            id: RolloutId(1),
            release: rel("app@2"),
            waves: parse_waves(waves).unwrap(),
            bake: Duration::from_secs(600),
            max_parallel: None,
            failure_threshold: Threshold::Count(0),
            on_failure: OnFailure::Pause,
            device_timeout: Duration::from_secs(3600),
            update_deadline: Duration::from_secs(1800),
            window: None,
            stagger: Duration::ZERO,
        }
    }

    fn targets(n: usize) -> Vec<TargetDevice> {
        (0..n)
            .map(|i| TargetDevice {
                id: id(i),
                pinned: false,
                previous_release: Some(rel("app@1")),
            })
            .collect()
    }

    fn fleet(n: usize) -> Observed {
        (0..n)
            .map(|i| {
                let obs = DeviceObservation {
                    online: true,
                    release: Some(rel("app@1")),
                    outcome: None,
                    deferred: false,
                    pinned: false,
                    last_seen: at(0),
                };
                (id(i), obs)
            })
            .collect()
    }

    fn healthy(fleet: &mut Observed, device: &DeviceId) {
        let obs = fleet.get_mut(device).unwrap();
        obs.online = true;
        obs.release = Some(rel("app@2"));
        obs.outcome = Some(Outcome::Healthy);
    }

    fn targeted(actions: &[Action]) -> Vec<DeviceId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Target { device, .. } => Some(device.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every device the actions targeted reports the release applied and healthy.
    fn all_healthy(fleet: &mut Observed, actions: &[Action]) {
        for device in targeted(actions) {
            healthy(fleet, &device);
        }
    }

    fn updating_now(rollout: &Rollout) -> usize {
        rollout.status().waves.iter().map(|w| w.counts.updating).sum()
    }

    #[test]
    fn parse_waves_accepts_counts_and_percentages() {
        use WaveSize::{Count, Percent};
        assert_eq!(
            parse_waves("1,10%,50%,100%").unwrap(),
            vec![Count(1), Percent(10), Percent(50), Percent(100)]
        );
        assert_eq!(parse_waves(" 5 , 20 ,100% ").unwrap(), vec![Count(5), Count(20), Percent(100)]);
        assert_eq!(parse_waves("100%").unwrap(), vec![Percent(100)]);
    }

    #[test]
    fn parse_waves_refuses_bad_input_with_a_reason() {
        let refused = |text: &str| parse_waves(text).unwrap_err().to_string();
        assert_eq!(refused(""), "no waves given: write them like 1,10%,50%,100%");
        assert_eq!(refused("0,100%"), "wave \"0\": 0 devices would update no device");
        assert_eq!(refused("0%,100%"), "wave \"0%\": 0% would update no device");
        assert_eq!(refused("50%,101%"), "wave \"101%\": more than 100% of the devices");
        assert_eq!(
            refused("10%,5%,100%"),
            "waves are cumulative and must grow: 5% after 10% adds no device"
        );
        assert_eq!(
            refused("5,5,100%"),
            "waves are cumulative and must grow: 5 after 5 adds no device"
        );
        assert_eq!(
            refused("1,50%"),
            "the last wave is 50%, but it must be 100% so the rollout reaches every device; end the list with 100%"
        );
        assert!(refused("1,,100%").contains("empty entry"), "{}", refused("1,,100%"));
        assert!(refused("1,100%,").contains("trailing comma"));
        assert!(refused("one,100%").contains("a device count like 5 or a percentage like 10%"));
        assert!(refused("1.5%,100%").contains("whole number"));
    }

    #[test]
    fn thresholds_and_failure_policies_parse() {
        assert_eq!("5%".parse::<Threshold>().unwrap(), Threshold::Percent(5));
        assert_eq!("3".parse::<Threshold>().unwrap(), Threshold::Count(3));
        assert!("101%".parse::<Threshold>().unwrap_err().to_string().contains("more than 100%"));
        assert!("many".parse::<Threshold>().is_err());
        assert_eq!("Rollback".parse::<OnFailure>().unwrap(), OnFailure::Rollback);
        assert_eq!(
            "retry".parse::<OnFailure>().unwrap_err().to_string(),
            "on failure \"retry\": expected pause or rollback"
        );
    }

    #[test]
    fn windows_parse_and_print_back() {
        for (text, printed) in [
            ("Mon-Fri 22:00-05:00 +01:00", "Mon-Fri 22:00-05:00 +01:00"),
            ("daily 00:00-24:00 UTC", "daily 00:00-24:00 +00:00"),
            ("sat,SUN 10:00-12:30 -05:30", "Sat-Sun 10:00-12:30 -05:30"),
            ("Fri-Mon 01:00-02:00 Z", "Mon,Fri-Sun 01:00-02:00 +00:00"),
            ("Mon,Wed 08:00-09:00 +02", "Mon,Wed 08:00-09:00 +02:00"),
        ] {
            let window: MaintenanceWindow = text.parse().unwrap();
            assert_eq!(window.to_string(), printed);
            let json = serde_json::to_string(&window).unwrap();
            assert_eq!(json, format!("\"{printed}\""));
            assert_eq!(serde_json::from_str::<MaintenanceWindow>(&json).unwrap(), window);
        }
    }

    #[test]
    fn windows_refuse_unknown_zones_and_bad_input() {
        let refused = |text: &str| MaintenanceWindow::parse(text).unwrap_err().to_string();
        let named = refused("Mon-Fri 22:00-05:00 Europe/Atlantis");
        assert!(named.contains("not in the tz database"), "{named}");
        assert!(named.contains("such as Europe/Berlin"), "{named}");
        assert!(refused("Mon-Fri 22:00-05:00").contains("missing the UTC offset"));
        assert!(refused("Mon-Fry 22:00-05:00 +01:00").contains("day \"Fry\""));
        assert!(refused("Mon 25:00-05:00 +01:00").contains("time \"25:00\""));
        assert!(refused("Mon 24:00-05:00 +01:00").contains("time \"24:00\""));
        assert!(refused("Mon 10:00-10:00 +01:00").contains("empty window"));
        assert!(refused("Mon 10:00 +01:00").contains("expected HH:MM-HH:MM"));
        assert!(refused("Mon 10:00-11:00 +15:00").contains("UTC offset \"+15:00\""));
        assert!(refused("").contains("expected days, times and a UTC offset"));
        assert!(serde_json::from_str::<MaintenanceWindow>("\"Mon 10:00-10:00 Z\"").is_err());
    }

    #[test]
    fn a_named_zone_follows_daylight_saving_time() {
        let w = MaintenanceWindow::parse("Mon-Fri 22:00-05:00 Europe/Berlin").unwrap();
        assert_eq!(w.to_string(), "Mon-Fri 22:00-05:00 Europe/Berlin");
        let utc = |y: i16, mo: i8, d: i8, h: i8, mi: i8| {
            let ts = jiff::civil::datetime(y, mo, d, h, mi, 0, 0)
                .to_zoned(jiff::tz::TimeZone::UTC)
                .unwrap();
            UnixMillis(u64::try_from(ts.timestamp().as_millisecond()).unwrap())
        };
        // Winter (UTC+1): Monday 2026-01-05 22:00 in Berlin is 21:00 UTC.
        assert!(!w.is_open(utc(2026, 1, 5, 20, 59)));
        assert!(w.is_open(utc(2026, 1, 5, 21, 0)));
        // Summer (UTC+2): Monday 2026-07-06 22:00 in Berlin is 20:00 UTC.
        assert!(w.is_open(utc(2026, 7, 6, 20, 0)));
        assert!(!w.is_open(utc(2026, 7, 6, 19, 59)));
        assert!(!w.is_open(utc(2026, 7, 7, 3, 0)), "Tuesday 05:00 summer time");
        assert_eq!(w.next_open(utc(2026, 7, 6, 12, 0)), utc(2026, 7, 6, 20, 0));
        let back: MaintenanceWindow =
            serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(back, w);
    }

    #[test]
    fn a_window_crossing_midnight_belongs_to_the_day_it_starts() {
        // 22:00-05:00 at +01:00 is 21:00-04:00 UTC.
        let w = MaintenanceWindow::parse("Mon-Fri 22:00-05:00 +01:00").unwrap();
        assert!(!w.is_open(at(20 * HOUR + 59 * MIN)), "Monday 21:59 local");
        assert!(w.is_open(at(21 * HOUR)), "Monday 22:00 local");
        assert!(w.is_open(at(DAY + 3 * HOUR + 59 * MIN)), "Tuesday 04:59 local, Monday's window");
        assert!(!w.is_open(at(DAY + 4 * HOUR)), "Tuesday 05:00 local");
        assert!(!w.is_open(at(12 * HOUR)), "Monday noon");
        assert!(w.is_open(at(5 * DAY + 3 * HOUR)), "Saturday 04:00 local, Friday's window");
        assert!(!w.is_open(at(5 * DAY + 21 * HOUR)), "Saturday 22:00 local");
        assert!(!w.is_open(at(30 * MIN)), "Monday 01:30 local would be Sunday's window");
        assert!(!w.is_open(UnixMillis(MONDAY - 30 * MIN)), "Monday 00:30 local");
    }

    #[test]
    fn next_open_finds_the_next_start() {
        let w = MaintenanceWindow::parse("Mon-Fri 22:00-05:00 +01:00").unwrap();
        assert_eq!(w.next_open(at(12 * HOUR)), at(21 * HOUR));
        assert_eq!(w.next_open(at(22 * HOUR)), at(22 * HOUR), "open now");
        assert_eq!(
            w.next_open(at(5 * DAY + 12 * HOUR)),
            at(7 * DAY + 21 * HOUR),
            "Saturday → Monday"
        );
        let sunday = MaintenanceWindow::parse("Sun 10:00-11:00 -05:00").unwrap();
        assert_eq!(sunday.next_open(at(0)), at(6 * DAY + 15 * HOUR));
    }

    #[test]
    fn waves_are_planned_by_seed_and_pinned_devices_are_skipped_up_front() {
        let mut targets = targets(100);
        targets[0].pinned = true;
        targets[50].pinned = true;
        targets.reverse(); // any order in, the same plan out
        let rollout = Rollout::new(spec("1,10%,50%,100%"), targets.clone(), at(0), 7).unwrap();
        let plan = rollout.plan();
        // 98 eligible: 1, ceil(9.8) = 10, 49, 98 cumulative.
        assert_eq!(plan.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 9, 39, 49]);
        assert_eq!(rollout.status().skipped_pinned, vec![id(0), id(50)]);
        let planned: BTreeSet<DeviceId> = plan.iter().flatten().cloned().collect();
        assert_eq!(planned.len(), 98);
        assert!(!planned.contains(&id(0)) && !planned.contains(&id(50)));
        assert_eq!(
            Rollout::new(spec("1,10%,50%,100%"), targets.clone(), at(0), 7).unwrap().plan(),
            plan
        );
        assert_ne!(Rollout::new(spec("1,10%,50%,100%"), targets, at(0), 8).unwrap().plan(), plan);
    }

    #[test]
    fn waves_that_would_be_empty_for_a_small_fleet_are_dropped() {
        // 5 devices: 1, ceil(0.5) = 1, ceil(2.5) = 3, 5.
        let rollout = Rollout::new(spec("1,10%,50%,100%"), targets(5), at(0), 1).unwrap();
        assert_eq!(rollout.plan().iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2, 2]);
        let rollout = Rollout::new(spec("50,100%"), targets(5), at(0), 1).unwrap();
        assert_eq!(rollout.plan().iter().map(Vec::len).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn rollouts_that_cannot_run_are_refused() {
        let new = |spec, targets| Rollout::new(spec, targets, at(0), 1).unwrap_err();
        assert_eq!(new(spec("100%"), vec![]), SpecError::NoTargets);
        let mut pinned = targets(3);
        pinned.iter_mut().for_each(|t| t.pinned = true);
        assert_eq!(
            new(spec("100%"), pinned).to_string(),
            "all 3 target devices are pinned, and a rollout never moves a pinned device"
        );
        let mut twice = targets(3);
        twice.push(twice[1].clone());
        assert_eq!(new(spec("100%"), twice), SpecError::DuplicateTarget { device: id(1) });
        let mut zero = spec("100%");
        zero.max_parallel = Some(0);
        assert_eq!(new(zero, targets(3)), SpecError::ZeroParallel);
        let mut zero = spec("100%");
        zero.update_deadline = Duration::ZERO;
        assert_eq!(new(zero, targets(3)), SpecError::ZeroDuration { what: "update deadline" });
        let mut unparsed = spec("100%");
        unparsed.waves = vec![WaveSize::Count(3)];
        assert_eq!(new(unparsed, targets(3)), SpecError::LastNotAll { last: "3".into() });
    }

    #[test]
    fn waves_advance_only_after_the_bake() {
        let mut fleet = fleet(5);
        let mut rollout = Rollout::new(spec("1,100%"), targets(5), at(0), 3).unwrap();
        let actions = rollout.step(at(0), &fleet);
        assert_eq!(actions[0], Action::WaveStarted { wave: 1, devices: 1 });
        assert_eq!(targeted(&actions).len(), 1);
        all_healthy(&mut fleet, &actions);
        let actions = rollout.step(at(MIN), &fleet);
        assert_eq!(
            actions[1],
            Action::WaveCompleted { wave: 1, healthy: 1, failed: 0, skipped: 0 }
        );
        assert_eq!(rollout.status().bake_until, Some(at(11 * MIN)));
        assert_eq!(rollout.step(at(11 * MIN - 1), &fleet), vec![], "still baking");
        let actions = rollout.step(at(11 * MIN), &fleet);
        assert_eq!(actions[0], Action::WaveStarted { wave: 2, devices: 4 });
        assert_eq!(targeted(&actions).len(), 4);
        all_healthy(&mut fleet, &actions);
        let actions = rollout.step(at(12 * MIN), &fleet);
        assert!(actions.contains(&Action::WaveCompleted {
            wave: 2,
            healthy: 4,
            failed: 0,
            skipped: 0
        }));
        assert_eq!(rollout.step(at(22 * MIN - 1), &fleet), vec![], "the last wave bakes too");
        assert_eq!(rollout.step(at(22 * MIN), &fleet), vec![Action::Completed]);
        assert_eq!(rollout.state(), &RunState::Completed { at: at(22 * MIN) });
        assert_eq!(rollout.step(at(DAY), &fleet), vec![]);
    }

    #[test]
    fn crossing_the_threshold_pauses_and_a_paused_rollout_emits_nothing() {
        let mut fleet = fleet(10);
        let mut s = spec("2,100%");
        s.failure_threshold = Threshold::Count(1);
        let mut rollout = Rollout::new(s, targets(10), at(0), 3).unwrap();
        let wave1 = targeted(&rollout.step(at(0), &fleet));
        fleet.get_mut(&wave1[0]).unwrap().outcome =
            Some(Outcome::Failed { reason: "disk full".into() });
        let actions = rollout.step(at(MIN), &fleet);
        assert_eq!(
            actions,
            vec![Action::DeviceFailed {
                device: wave1[0].clone(),
                reason: FailureReason::UpdateFailed { reason: "disk full".into() }
            }],
            "one failure is within the threshold"
        );
        fleet.get_mut(&wave1[1]).unwrap().outcome =
            Some(Outcome::RolledBack { reason: "unhealthy".into() });
        let actions = rollout.step(at(2 * MIN), &fleet);
        let reason = PauseReason::Threshold { failed: 2, allowed: 1 };
        assert_eq!(actions.last(), Some(&Action::Paused { reason: reason.clone() }));
        assert_eq!(
            actions.last().unwrap().to_string(),
            "paused: 2 devices failed; the failure threshold allows 1"
        );
        assert_eq!(rollout.state(), &RunState::Paused { reason, at: at(2 * MIN) });
        let frozen = rollout.clone();
        assert_eq!(rollout.step(at(30 * DAY), &fleet), vec![]);
        assert_eq!(rollout, frozen, "a paused rollout does not change");
    }

    #[test]
    fn resuming_after_a_threshold_pause_accepts_the_failures_so_far() {
        let mut fleet = fleet(10);
        let mut rollout = Rollout::new(spec("100%"), targets(10), at(0), 3).unwrap();
        let all = targeted(&rollout.step(at(0), &fleet));
        assert_eq!(all.len(), 10);
        fleet.get_mut(&all[0]).unwrap().outcome = Some(Outcome::Failed { reason: "x".into() });
        assert!(matches!(rollout.step(at(MIN), &fleet).last(), Some(Action::Paused { .. })));
        assert_eq!(rollout.resume(at(2 * MIN)).unwrap(), vec![Action::Resumed]);
        assert_eq!(rollout.status().allowed_failures, 1);
        for device in &all[1..5] {
            healthy(&mut fleet, device);
        }
        let actions = rollout.step(at(3 * MIN), &fleet);
        assert_eq!(actions.iter().filter(|a| matches!(a, Action::DeviceHealthy { .. })).count(), 4);
        fleet.get_mut(&all[5]).unwrap().outcome = Some(Outcome::Failed { reason: "y".into() });
        let actions = rollout.step(at(4 * MIN), &fleet);
        assert_eq!(
            actions.last(),
            Some(&Action::Paused { reason: PauseReason::Threshold { failed: 2, allowed: 1 } })
        );
    }

    #[test]
    fn crossing_the_threshold_rolls_every_targeted_device_back_to_its_previous_release() {
        let mut s = spec("2,100%");
        s.on_failure = OnFailure::Rollback;
        let previous = |i: usize| match i % 3 {
            0 => Some(rel("app@1")),
            1 => Some(rel("app@0.9")),
            _ => None,
        };
        let targets: Vec<TargetDevice> = (0..6)
            .map(|i| TargetDevice { id: id(i), pinned: i == 5, previous_release: previous(i) })
            .collect();
        let mut fleet = fleet(6);
        fleet.get_mut(&id(5)).unwrap().pinned = true;
        let mut rollout = Rollout::new(s, targets, at(0), 11).unwrap();
        let wave1 = rollout.step(at(0), &fleet);
        all_healthy(&mut fleet, &wave1);
        rollout.step(at(MIN), &fleet);
        let wave2 = rollout.step(at(11 * MIN), &fleet);
        let wave2 = targeted(&wave2);
        assert_eq!(wave2.len(), 3);
        // One device of wave 1 is pinned meanwhile: it must not be moved back either.
        let pinned_meanwhile = targeted(&wave1)[0].clone();
        fleet.get_mut(&pinned_meanwhile).unwrap().pinned = true;
        healthy(&mut fleet, &wave2[0]);
        fleet.get_mut(&wave2[1]).unwrap().outcome =
            Some(Outcome::RolledBack { reason: "crash".into() });
        let actions = rollout.step(at(12 * MIN), &fleet);
        assert!(actions.contains(&Action::RollbackStarted {
            reason: RollbackReason::Threshold { failed: 1, allowed: 0 }
        }));
        let rolled: BTreeMap<DeviceId, Option<ReleaseId>> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Rollback { device, to } => Some((device.clone(), to.clone())),
                _ => None,
            })
            .collect();
        let expected: BTreeMap<DeviceId, Option<ReleaseId>> = (0..5)
            .map(id)
            .filter(|d| *d != pinned_meanwhile)
            .map(|d| {
                let i = index_of(&d);
                (d, previous(i))
            })
            .collect();
        assert_eq!(rolled, expected, "updating, healthy and failed devices all go back");
        assert!(matches!(rollout.state(), RunState::RolledBack { .. }));
        assert_eq!(rollout.step(at(DAY), &fleet), vec![]);
        let none = actions.iter().find(|a| matches!(a, Action::Rollback { to: None, .. })).unwrap();
        assert!(none.to_string().ends_with("roll back to no release (it ran none before)"));
    }

    #[test]
    fn an_offline_device_is_pending_then_times_out_into_failed() {
        let mut fleet = fleet(3);
        let mut s = spec("100%");
        s.failure_threshold = Threshold::Count(5);
        let mut rollout = Rollout::new(s, targets(3), at(0), 3).unwrap();
        // d0 has been offline for days; d1 goes offline after targeting; d2 comes back in time.
        for i in [0, 2] {
            let obs = fleet.get_mut(&id(i)).unwrap();
            obs.online = false;
            obs.last_seen = UnixMillis(MONDAY - 3 * DAY);
        }
        assert_eq!(
            targeted(&rollout.step(at(0), &fleet)).len(),
            3,
            "offline devices are targeted too"
        );
        let d1 = fleet.get_mut(&id(1)).unwrap();
        d1.online = false;
        d1.last_seen = at(10 * MIN);
        assert_eq!(rollout.step(at(50 * MIN), &fleet), vec![]);
        assert!(matches!(
            rollout.device_state(&id(0)),
            Some(DeviceState::Updating {
                progress: Progress::Waiting { cause: WaitCause::Offline, .. },
                ..
            })
        ));
        fleet.get_mut(&id(2)).unwrap().online = true;
        assert_eq!(rollout.step(at(55 * MIN), &fleet), vec![]);
        healthy(&mut fleet, &id(2));
        assert_eq!(
            rollout.step(at(60 * MIN), &fleet),
            vec![Action::DeviceHealthy { device: id(2) }]
        );
        let offline = FailureReason::Offline { after_ms: HOUR };
        assert_eq!(
            rollout.step(at(60 * MIN + 1), &fleet),
            vec![Action::DeviceFailed { device: id(0), reason: offline.clone() }],
            "offline since before targeting: the timeout counts from targeting"
        );
        assert_eq!(rollout.step(at(70 * MIN), &fleet), vec![]);
        let actions = rollout.step(at(70 * MIN + 1), &fleet);
        assert_eq!(
            actions[0],
            Action::DeviceFailed { device: id(1), reason: offline },
            "offline after targeting: the timeout counts from when it was last seen"
        );
        assert_eq!(actions[0].to_string(), "d00001: failed: offline for more than 1h");
    }

    #[test]
    fn a_deferred_device_is_pending_then_times_out_into_failed() {
        let mut fleet = fleet(2);
        let mut s = spec("100%");
        s.failure_threshold = Threshold::Count(5);
        let mut rollout = Rollout::new(s, targets(2), at(0), 3).unwrap();
        rollout.step(at(0), &fleet);
        for i in 0..2 {
            fleet.get_mut(&id(i)).unwrap().deferred = true;
        }
        assert_eq!(rollout.step(at(5 * MIN), &fleet), vec![]);
        // d1's lock is released after 50 minutes: its update deadline starts then.
        fleet.get_mut(&id(1)).unwrap().deferred = false;
        assert_eq!(rollout.step(at(50 * MIN), &fleet), vec![]);
        assert_eq!(
            rollout.step(at(65 * MIN + 1), &fleet),
            vec![Action::DeviceFailed {
                device: id(0),
                reason: FailureReason::Deferred { after_ms: HOUR }
            }]
        );
        healthy(&mut fleet, &id(1));
        assert_eq!(rollout.step(at(79 * MIN), &fleet)[0], Action::DeviceHealthy { device: id(1) });
    }

    #[test]
    fn an_online_device_not_healthy_before_its_deadline_fails() {
        let fleet = fleet(1);
        let mut rollout = Rollout::new(spec("100%"), targets(1), at(0), 3).unwrap();
        rollout.step(at(0), &fleet);
        assert_eq!(rollout.step(at(30 * MIN), &fleet), vec![]);
        let actions = rollout.step(at(30 * MIN + 1), &fleet);
        assert_eq!(
            actions[0],
            Action::DeviceFailed {
                device: id(0),
                reason: FailureReason::Deadline { after_ms: 30 * MIN }
            }
        );
        assert_eq!(actions[0].to_string(), "d00000: failed: not healthy within 30m of updating");
    }

    #[test]
    fn a_device_pinned_mid_rollout_is_never_targeted_nor_rolled_back() {
        let mut fleet = fleet(4);
        let mut s = spec("1,100%");
        s.bake = Duration::ZERO;
        let mut rollout = Rollout::new(s, targets(4), at(0), 5).unwrap();
        let plan = rollout.plan();
        let canary = rollout.step(at(0), &fleet);
        assert_eq!(targeted(&canary), plan[0]);
        // The canary is pinned while it updates; one device of wave 2 is pinned before its turn.
        fleet.get_mut(&plan[0][0]).unwrap().pinned = true;
        fleet.get_mut(&plan[1][1]).unwrap().pinned = true;
        let actions = rollout.step(at(MIN), &fleet);
        assert_eq!(
            actions[0],
            Action::DeviceSkipped { device: plan[0][0].clone(), reason: SkipReason::Pinned }
        );
        assert!(actions.contains(&Action::DeviceSkipped {
            device: plan[1][1].clone(),
            reason: SkipReason::Pinned
        }));
        let wave2 = targeted(&actions);
        assert_eq!(wave2, vec![plan[1][0].clone(), plan[1][2].clone()]);
        let status = rollout.status();
        assert_eq!(status.waves[0].counts.skipped, 1);
        assert_eq!(
            status.waves[1].counts,
            WaveCounts { skipped: 1, updating: 2, ..WaveCounts::default() }
        );
        let rollback = rollout.rollback(at(2 * MIN), &fleet).unwrap();
        let moved: Vec<&Action> =
            rollback.iter().filter(|a| matches!(a, Action::Rollback { .. })).collect();
        assert_eq!(moved.len(), 2);
        assert!(!rollback
            .iter()
            .any(|a| matches!(a, Action::Rollback { device, .. } if fleet[device].pinned)));
    }

    #[test]
    fn no_more_than_max_parallel_devices_update_at_once() {
        let mut fleet = fleet(20);
        let mut s = spec("100%");
        s.max_parallel = Some(3);
        let mut rollout = Rollout::new(s, targets(20), at(0), 5).unwrap();
        let mut all = BTreeSet::new();
        let mut minute = 0;
        while rollout.state() == &RunState::Running {
            let actions = rollout.step(at(minute * MIN), &fleet);
            let batch = targeted(&actions);
            assert!(batch.len() <= 3);
            assert!(updating_now(&rollout) <= 3);
            all.extend(batch.iter().cloned());
            // Only the first device of every batch finishes by the next step.
            if let Some(first) = batch.first() {
                healthy(&mut fleet, first);
            }
            if batch.is_empty() {
                for device in &all {
                    healthy(&mut fleet, device);
                }
            }
            minute += 1;
            assert!(minute < 200);
        }
        assert_eq!(all.len(), 20);
    }

    /// (device, minute it was targeted) for a 200-device wave with a 30-minute stagger.
    fn stagger_run(seed: u64) -> Vec<(DeviceId, u64)> {
        let mut fleet = fleet(200);
        let mut s = spec("100%");
        s.stagger = Duration::from_secs(30 * 60);
        let mut rollout = Rollout::new(s, targets(200), at(0), seed).unwrap();
        let mut times = Vec::new();
        for minute in 0..40 {
            let actions = rollout.step(at(minute * MIN), &fleet);
            times.extend(targeted(&actions).into_iter().map(|d| (d, minute)));
            all_healthy(&mut fleet, &actions);
        }
        times
    }

    #[test]
    fn stagger_spreads_target_times_within_the_bound_and_is_deterministic_per_seed() {
        let times = stagger_run(1);
        assert_eq!(times.len(), 200);
        // Steps come once a minute, so a device due at 29m59s goes out at the 30th.
        let minutes: BTreeSet<u64> = times.iter().map(|(_, m)| *m).collect();
        assert!(*minutes.last().unwrap() <= 30, "every device within the stagger: {minutes:?}");
        assert!(minutes.len() >= 25, "spread over the stagger: {minutes:?}");
        let busiest = minutes.iter().map(|m| times.iter().filter(|(_, t)| t == m).count()).max();
        assert!(busiest < Some(20), "{busiest:?} devices pulled at once");
        assert_eq!(stagger_run(1), times);
        assert_ne!(stagger_run(2), times);
    }

    #[test]
    fn manual_pause_resume_and_abort() {
        let mut fleet = fleet(4);
        let mut rollout = Rollout::new(spec("1,100%"), targets(4), at(0), 5).unwrap();
        rollout.step(at(0), &fleet);
        let paused = rollout.pause(at(MIN), "site visit".into()).unwrap();
        assert_eq!(paused[0].to_string(), "paused: paused by an operator: site visit");
        assert_eq!(
            rollout.pause(at(MIN), "again".into()).unwrap_err().to_string(),
            "cannot pause rollout 1: it is paused"
        );
        for device in rollout.plan()[0].clone() {
            healthy(&mut fleet, &device);
        }
        assert_eq!(rollout.step(at(5 * DAY), &fleet), vec![], "paused: not even verdicts");
        assert_eq!(rollout.resume(at(5 * DAY)).unwrap(), vec![Action::Resumed]);
        let actions = rollout.step(at(5 * DAY + MIN), &fleet);
        assert!(matches!(actions[0], Action::DeviceHealthy { .. }));
        assert!(matches!(actions[1], Action::WaveCompleted { wave: 1, .. }));
        assert_eq!(rollout.abort(at(5 * DAY + 2 * MIN)).unwrap(), vec![Action::Aborted]);
        assert_eq!(rollout.step(at(6 * DAY), &fleet), vec![]);
        assert_eq!(
            rollout.resume(at(6 * DAY)).unwrap_err().to_string(),
            "cannot resume rollout 1: it is aborted"
        );
        assert!(rollout.abort(at(6 * DAY)).is_err());
        assert!(rollout.pause(at(6 * DAY), "x".into()).is_err());
    }

    #[test]
    fn resuming_restarts_the_device_clocks() {
        let mut fleet = fleet(1);
        fleet.get_mut(&id(0)).unwrap().online = false;
        let mut rollout = Rollout::new(spec("100%"), targets(1), at(0), 5).unwrap();
        rollout.step(at(0), &fleet);
        rollout.step(at(MIN), &fleet);
        rollout.pause(at(2 * MIN), "weekend".into()).unwrap();
        rollout.resume(at(3 * DAY)).unwrap();
        assert_eq!(
            rollout.step(at(3 * DAY + 59 * MIN), &fleet),
            vec![],
            "a fresh hour after resuming"
        );
        assert!(matches!(
            rollout.step(at(3 * DAY + 61 * MIN), &fleet)[0],
            Action::DeviceFailed { .. }
        ));
    }

    #[test]
    fn manual_rollback_sends_targeted_devices_back_even_after_completion() {
        let mut fleet = fleet(3);
        let mut s = spec("100%");
        s.bake = Duration::ZERO;
        let mut rollout = Rollout::new(s, targets(3), at(0), 5).unwrap();
        let actions = rollout.step(at(0), &fleet);
        all_healthy(&mut fleet, &actions);
        assert_eq!(rollout.step(at(MIN), &fleet).last(), Some(&Action::Completed));
        let actions = rollout.rollback(at(DAY), &fleet).unwrap();
        assert_eq!(actions[0], Action::RollbackStarted { reason: RollbackReason::Manual });
        assert_eq!(
            actions[1..].to_vec(),
            (0..3)
                .map(|i| Action::Rollback { device: id(i), to: Some(rel("app@1")) })
                .collect::<Vec<_>>()
        );
        assert_eq!(rollout.status().waves[0].counts.rolled_back, 3);
        assert_eq!(
            rollout.rollback(at(DAY), &fleet).unwrap_err().to_string(),
            "cannot roll back rollout 1: it is rolled back"
        );
    }

    #[test]
    fn a_closed_window_waits_and_an_open_one_proceeds() {
        let mut fleet = fleet(3);
        let mut s = spec("100%");
        s.max_parallel = Some(1);
        s.window = Some(MaintenanceWindow::parse("Mon-Fri 22:00-05:00 +01:00").unwrap());
        let mut rollout = Rollout::new(s, targets(3), at(12 * HOUR), 5).unwrap();
        assert_eq!(rollout.step(at(12 * HOUR), &fleet), vec![]);
        assert_eq!(rollout.step(at(20 * HOUR + 59 * MIN), &fleet), vec![]);
        assert_eq!(rollout.status().waves[0].phase, WavePhase::Waiting);
        let actions = rollout.step(at(21 * HOUR), &fleet);
        assert_eq!(actions[0], Action::WaveStarted { wave: 1, devices: 3 });
        let first = targeted(&actions);
        assert_eq!(first.len(), 1);
        // The first device finishes only after the window closed (04:00 UTC): nothing new goes out.
        healthy(&mut fleet, &first[0]);
        let actions = rollout.step(at(DAY + 4 * HOUR + 10 * MIN), &fleet);
        assert_eq!(actions, vec![Action::DeviceHealthy { device: first[0].clone() }]);
        assert_eq!(rollout.step(at(DAY + 12 * HOUR), &fleet), vec![]);
        let actions = rollout.step(at(DAY + 21 * HOUR), &fleet);
        assert_eq!(targeted(&actions).len(), 1, "targeting resumes when the window opens");
    }

    #[test]
    fn a_healthy_device_that_fails_while_its_wave_bakes_counts_as_failed() {
        let mut fleet = fleet(3);
        let mut rollout = Rollout::new(spec("1,100%"), targets(3), at(0), 5).unwrap();
        let canary = targeted(&rollout.step(at(0), &fleet));
        healthy(&mut fleet, &canary[0]);
        rollout.step(at(MIN), &fleet);
        fleet.get_mut(&canary[0]).unwrap().outcome =
            Some(Outcome::RolledBack { reason: "oom".into() });
        let actions = rollout.step(at(5 * MIN), &fleet);
        assert_eq!(
            actions,
            vec![
                Action::DeviceFailed {
                    device: canary[0].clone(),
                    reason: FailureReason::Regressed { reason: "oom".into() }
                },
                Action::Paused { reason: PauseReason::Threshold { failed: 1, allowed: 0 } },
            ]
        );
    }

    #[test]
    fn the_bake_gate_rechecks_every_healthy_device_of_the_wave() {
        let n = WATCH_PER_STEP * 3;
        let mut fleet = fleet(n);
        let mut s = spec("100%");
        s.failure_threshold = Threshold::Count(0);
        let mut rollout = Rollout::new(s, targets(n), at(0), 5).unwrap();
        let actions = rollout.step(at(0), &fleet);
        all_healthy(&mut fleet, &actions);
        rollout.step(at(MIN), &fleet);
        // One device regresses; with no step in between, only the gate sees it.
        let last = rollout.plan()[0].last().unwrap().clone();
        fleet.get_mut(&last).unwrap().outcome = Some(Outcome::Failed { reason: "gone".into() });
        let actions = rollout.step(at(11 * MIN), &fleet);
        assert!(actions.contains(&Action::DeviceFailed {
            device: last,
            reason: FailureReason::Regressed { reason: "gone".into() }
        }));
        assert!(matches!(rollout.state(), RunState::Paused { .. }));
    }

    #[test]
    fn a_device_the_registry_no_longer_knows_is_skipped_at_its_turn() {
        let mut fleet = fleet(2);
        fleet.remove(&id(1));
        let mut rollout = Rollout::new(spec("100%"), targets(2), at(0), 5).unwrap();
        let actions = rollout.step(at(0), &fleet);
        assert!(
            actions.contains(&Action::DeviceSkipped { device: id(1), reason: SkipReason::Unknown })
        );
        assert_eq!(targeted(&actions), vec![id(0)]);
    }

    #[test]
    fn the_state_survives_serialisation_mid_rollout() {
        let mut fleet = fleet(30);
        let mut s = spec("1,10%,100%");
        s.stagger = Duration::from_secs(600);
        s.max_parallel = Some(4);
        s.window = Some("daily 00:00-24:00 +02:00".parse().unwrap());
        let mut rollout = Rollout::new(s, targets(30), at(0), 9).unwrap();
        for minute in 0..40 {
            let actions = rollout.step(at(minute * MIN), &fleet);
            all_healthy(&mut fleet, &actions);
        }
        let json = serde_json::to_string(&rollout).unwrap();
        let mut restored: Rollout = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, rollout);
        for minute in 40..200 {
            let actions = rollout.step(at(minute * MIN), &fleet);
            assert_eq!(restored.step(at(minute * MIN), &fleet), actions);
            all_healthy(&mut fleet, &actions);
        }
        assert!(matches!(rollout.state(), RunState::Completed { .. }));
    }

    #[test]
    fn status_counts_devices_per_wave() {
        let mut fleet = fleet(10);
        let mut targets = targets(10);
        targets[9].pinned = true;
        let mut s = spec("3,100%");
        s.failure_threshold = Threshold::Count(3);
        let mut rollout = Rollout::new(s, targets, at(0), 2).unwrap();
        let wave1 = targeted(&rollout.step(at(0), &fleet));
        healthy(&mut fleet, &wave1[0]);
        fleet.get_mut(&wave1[1]).unwrap().outcome = Some(Outcome::Failed { reason: "x".into() });
        rollout.step(at(MIN), &fleet);
        let status = rollout.status();
        assert_eq!(status.current_wave, Some(1));
        assert_eq!(status.skipped_pinned, vec![id(9)]);
        assert_eq!(status.failed, 1);
        assert_eq!(status.allowed_failures, 3);
        assert_eq!(
            status.waves[0].counts,
            WaveCounts { healthy: 1, failed: 1, updating: 1, ..WaveCounts::default() }
        );
        assert_eq!(status.waves[1].counts, WaveCounts { pending: 6, ..WaveCounts::default() });
        assert_eq!(status.waves[1].devices, 6);
        assert!(serde_json::to_string(&status).unwrap().contains("\"current_wave\":1"));
    }

    #[test]
    fn observations_ignore_outcomes_of_older_desired_states() {
        use fleet_proto::samples;
        let report = samples::report(); // last outcome: generation 2, rolled back
        let cert =
            crate::devices::CertificateInfo { serial: "01".into(), not_after: UnixMillis(0) };
        let mut record =
            DeviceRecord::enrolled(report.device.clone(), BTreeMap::new(), cert, at(0));
        record.online = true;
        record.desired_generation = 3;
        let silent = DeviceObservation::from_record(&record, at(0));
        assert_eq!((silent.release, silent.outcome), (None, None));
        record.last_report = Some(report.clone());
        let obs = DeviceObservation::from_record(&record, at(0));
        assert_eq!(obs.outcome, None, "generation 2 is not the rollout's update");
        assert_eq!(obs.release, report.in_force.as_ref().map(|f| f.release.clone()));
        assert!(obs.online && !obs.deferred && !obs.pinned);
        record.desired_generation = 2;
        record.pin = Some(crate::devices::PinRecord {
            release: rel("app@1"),
            reason: "bench".into(),
            pinned_by: "alice".into(),
            pinned_at: at(0),
            until: Some(at(10)),
        });
        let obs = DeviceObservation::from_record(&record, at(5));
        assert!(matches!(obs.outcome, Some(Outcome::RolledBack { .. })));
        assert!(obs.pinned);
        assert!(!DeviceObservation::from_record(&record, at(10)).pinned, "the pin lapsed");
        let mut deferred = report.clone();
        deferred.update.phase = UpdatePhase::Deferred;
        record.last_report = Some(deferred);
        assert!(DeviceObservation::from_record(&record, at(0)).deferred);
    }

    #[test]
    fn actions_read_as_audit_lines() {
        let lines: Vec<String> = [
            Action::WaveStarted { wave: 2, devices: 999 },
            Action::Target { device: id(7), release: rel("app@2") },
            Action::WaveCompleted { wave: 2, healthy: 990, failed: 9, skipped: 0 },
            Action::DeviceFailed {
                device: id(7),
                reason: FailureReason::Deferred { after_ms: 90 * MIN },
            },
            Action::DeviceSkipped { device: id(7), reason: SkipReason::Pinned },
            Action::Rollback { device: id(7), to: Some(rel("app@1")) },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            lines,
            [
                "wave 2 started (999 devices)",
                "d00007: target release app@2",
                "wave 2 completed (990 healthy, 9 failed, 0 skipped); baking",
                "d00007: failed: update deferred by a lock for more than 1h 30m",
                "d00007: skipped: pinned; a rollout never moves a pinned device",
                "d00007: roll back to release app@1",
            ]
        );
        assert_eq!(human(2 * DAY + 3 * HOUR), "2d 3h");
        assert_eq!(human(45_000), "45s");
    }

    /// A fleet of 10,000 simulated devices through four waves, nightly maintenance windows,
    /// 24-hour bakes, offline, deferred and failing devices: Monday noon to Saturday morning.
    #[test]
    fn a_week_long_rollout_to_10000_devices_simulates_in_well_under_a_second() {
        const N: usize = 10_000;
        // What each device does once targeted, by a hash of its index (per mille).
        let behaviour = |i: usize| splitmix64(i as u64) % 1000;
        const HEALTHY: u8 = 0;
        const FAIL: u8 = 1;
        const ONLINE: u8 = 2;
        const UNDEFER: u8 = 3;

        let clock = std::time::Instant::now();
        let mut s = spec("1,10%,50%,100%");
        s.bake = Duration::from_secs(24 * 3600);
        s.max_parallel = Some(500);
        s.stagger = Duration::from_secs(30 * 60);
        s.device_timeout = Duration::from_secs(4 * 3600);
        s.update_deadline = Duration::from_secs(3600);
        s.failure_threshold = Threshold::Percent(2);
        s.window = Some(MaintenanceWindow::parse("Mon-Fri 22:00-05:00 +01:00").unwrap());
        let ids: Vec<DeviceId> = (0..N).map(id).collect();
        let targets: Vec<TargetDevice> = (0..N)
            .map(|i| TargetDevice {
                id: ids[i].clone(),
                pinned: i % 500 == 250,
                previous_release: Some(rel("app@1")),
            })
            .collect();
        let start = at(12 * HOUR);
        let mut fleet = fleet(N);
        for (i, device) in ids.iter().enumerate() {
            let obs = fleet.get_mut(device).unwrap();
            obs.pinned = i % 500 == 250;
            obs.online = behaviour(i) >= 2;
            obs.last_seen = start;
        }
        let mut rollout = Rollout::new(s, targets, start, 42).unwrap();
        let mut events: BinaryHeap<Reverse<(u64, usize, u8)>> = BinaryHeap::new();
        let mut canary = None;
        let mut now = start;
        let mut steps = 0;
        let mut actions_seen = 0;
        let mut in_step = Duration::ZERO;
        while rollout.state() == &RunState::Running {
            now = UnixMillis(now.0 + 5 * MIN);
            steps += 1;
            assert!(
                now.0 < start.0 + 14 * DAY,
                "not done within two weeks: {:#?}",
                rollout.status()
            );
            while let Some(&Reverse((when, i, what))) = events.peek() {
                if when > now.0 {
                    break;
                }
                events.pop();
                let obs = fleet.get_mut(&ids[i]).unwrap();
                obs.last_seen = UnixMillis(when);
                match what {
                    HEALTHY => healthy(&mut fleet, &ids[i]),
                    FAIL => obs.outcome = Some(Outcome::Failed { reason: "pull failed".into() }),
                    ONLINE => {
                        obs.online = true;
                        events.push(Reverse((when + 5 * MIN, i, HEALTHY)));
                    }
                    _ => {
                        obs.deferred = false;
                        events.push(Reverse((when + 5 * MIN, i, HEALTHY)));
                    }
                }
            }
            let t = std::time::Instant::now();
            let actions = rollout.step(now, &fleet);
            in_step += t.elapsed();
            actions_seen += actions.len();
            for device in targeted(&actions) {
                let i = index_of(&device);
                let b = behaviour(i);
                let (delay, what) = match b {
                    _ if canary.is_none() => {
                        canary = Some(i);
                        (10 * MIN, HEALTHY)
                    }
                    0 => continue, // never comes back
                    1 => (2 * HOUR, ONLINE),
                    2..=4 => (10 * MIN, FAIL),
                    5..=14 => {
                        fleet.get_mut(&device).unwrap().deferred = true;
                        (30 * MIN, UNDEFER)
                    }
                    _ => ((3 + b % 17) * MIN, HEALTHY),
                };
                events.push(Reverse((now.0 + delay, i, what)));
            }
        }
        let elapsed = clock.elapsed();
        let status = rollout.status();
        assert_eq!(rollout.state(), &RunState::Completed { at: now }, "{status:#?}");
        let eligible: Vec<usize> = (0..N).filter(|i| i % 500 != 250).collect();
        let expected_failed = eligible
            .iter()
            .filter(|&&i| matches!(behaviour(i), 0 | 2..=4) && Some(i) != canary)
            .count();
        assert_eq!(status.failed, expected_failed);
        let healthy: usize = status.waves.iter().map(|w| w.counts.healthy).sum();
        assert_eq!(healthy + expected_failed, eligible.len());
        assert_eq!(status.skipped_pinned.len(), 20);
        println!(
            "simulated {:.1} days of a {N}-device rollout ({} waves, {steps} steps, {actions_seen} actions, {expected_failed} failed) in {elapsed:?}, {in_step:?} of it in Rollout::step",
            (now.0 - start.0) as f64 / DAY as f64,
            status.waves.len(),
        );
        // Generous: the point is milliseconds, but the build machine is shared.
        assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    }

    /// A tiny xorshift: the property scenarios must not depend on a crate's generator.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(1000) < percent * 10
        }
    }

    /// One random scenario, checking the invariants after every call; returns its audit log.
    fn random_scenario(seed: u64) -> Vec<String> {
        let mut rng = XorShift(splitmix64(seed) | 1);
        let n = 1 + rng.below(30) as usize;
        let waves =
            ["100%", "1,100%", "1,10%,50%,100%", "2,5,100%", "25%,50%,75%,100%", "3,40%,100%"];
        let windows =
            ["daily 22:00-05:00 +00:00", "Mon-Fri 08:00-17:00 +02:00", "Sat 00:00-24:00 Z"];
        let mut s = spec(waves[rng.below(waves.len() as u64) as usize]);
        s.max_parallel = rng.chance(60).then(|| 1 + rng.below(5) as u32);
        s.failure_threshold = if rng.chance(50) {
            Threshold::Count(rng.below(4) as u32)
        } else {
            Threshold::Percent(rng.below(60) as u8)
        };
        s.on_failure = if rng.chance(50) { OnFailure::Pause } else { OnFailure::Rollback };
        s.bake = Duration::from_millis(rng.below(30) * MIN);
        s.device_timeout = Duration::from_millis((10 + rng.below(50)) * MIN);
        s.update_deadline = Duration::from_millis((5 + rng.below(35)) * MIN);
        s.stagger = Duration::from_millis(rng.below(20) * MIN);
        s.window = rng
            .chance(30)
            .then(|| MaintenanceWindow::parse(windows[rng.below(3) as usize]).unwrap());
        let max_parallel = s.max_parallel.map_or(usize::MAX, |m| m as usize);
        let mut targets = targets(n);
        let mut fleet = fleet(n);
        for t in &mut targets {
            t.pinned = rng.chance(10);
            if rng.chance(30) {
                t.previous_release = None;
            }
            let obs = fleet.get_mut(&t.id).unwrap();
            obs.pinned = t.pinned;
            obs.online = rng.chance(90);
        }
        let pinned_up_front: BTreeSet<DeviceId> =
            targets.iter().filter(|t| t.pinned).map(|t| t.id.clone()).collect();
        let mut now = at(rng.below(7 * DAY));
        let mut rollout = match Rollout::new(s, targets, now, seed) {
            Ok(r) => r,
            Err(SpecError::AllPinned { .. }) => return vec!["final: all pinned".into()],
            Err(e) => panic!("seed {seed}: {e}"),
        };
        let mut log = Vec::new();
        let mut was_targeted = BTreeSet::new();
        let mut rolled_back = BTreeSet::new();
        for round in 0..400 {
            now = UnixMillis(now.0 + rng.below(15 * MIN) + 1);
            for (device, obs) in fleet.iter_mut() {
                if rng.chance(3) && !pinned_up_front.contains(device) {
                    obs.pinned = !obs.pinned;
                }
                if rng.chance(5) {
                    obs.online = !obs.online;
                }
                if obs.online {
                    obs.last_seen = now;
                }
                if rng.chance(4) {
                    obs.deferred = !obs.deferred;
                }
                if was_targeted.contains(device) {
                    match &obs.outcome {
                        None if rng.chance(15) => {
                            obs.release = Some(rel("app@2"));
                            obs.outcome = Some(Outcome::Healthy);
                        }
                        None if rng.chance(3) => {
                            obs.outcome = Some(Outcome::Failed { reason: "f".into() })
                        }
                        None if rng.chance(2) => {
                            obs.outcome = Some(Outcome::RolledBack { reason: "r".into() })
                        }
                        Some(Outcome::Healthy) if rng.chance(1) => {
                            obs.outcome = Some(Outcome::RolledBack { reason: "late".into() })
                        }
                        _ => {}
                    }
                }
            }
            let running_before = rollout.state() == &RunState::Running;
            let actions = match rng.below(10_000) {
                0..=199 => rollout.pause(now, "p".into()).unwrap_or_default(),
                200..=599 => rollout.resume(now).unwrap_or_default(),
                600..=604 => rollout.abort(now).unwrap_or_default(),
                605..=609 => rollout.rollback(now, &fleet).unwrap_or_default(),
                _ => {
                    let actions = rollout.step(now, &fleet);
                    assert!(
                        running_before || actions.is_empty(),
                        "seed {seed}: {actions:?} while not running"
                    );
                    actions
                }
            };
            for action in &actions {
                match action {
                    Action::Target { device, release } => {
                        assert_eq!(release, &rel("app@2"));
                        assert!(!fleet[device].pinned, "seed {seed}: pinned {device} targeted");
                        assert!(!pinned_up_front.contains(device));
                        assert!(
                            was_targeted.insert(device.clone()),
                            "seed {seed}: {device} targeted twice"
                        );
                    }
                    Action::Rollback { device, .. } => {
                        assert!(!fleet[device].pinned, "seed {seed}: pinned {device} rolled back");
                        assert!(
                            was_targeted.contains(device),
                            "seed {seed}: {device} never targeted"
                        );
                        assert!(
                            rolled_back.insert(device.clone()),
                            "seed {seed}: {device} rolled back twice"
                        );
                    }
                    _ => {}
                }
                log.push(format!("{} {action}", now.0));
            }
            let status = rollout.status();
            assert!(updating_now(&rollout) <= max_parallel, "seed {seed}: {status:#?}");
            for wave in &status.waves {
                assert_eq!(wave.counts.total(), wave.devices, "seed {seed}");
            }
            if matches!(rollout.state(), RunState::Completed { .. }) {
                assert!(status.waves.iter().all(|w| w.phase == WavePhase::Done));
                assert!(status.waves.iter().all(|w| w.counts.pending + w.counts.updating == 0));
            }
            if round == 100 {
                let json = serde_json::to_string(&rollout).unwrap();
                assert_eq!(serde_json::from_str::<Rollout>(&json).unwrap(), rollout);
            }
        }
        log.push(format!("final: {}", rollout.state().name()));
        log
    }

    #[test]
    fn random_scenarios_never_target_a_pinned_device_nor_any_device_twice() {
        let mut endings = BTreeMap::new();
        for seed in 0..300 {
            let log = random_scenario(seed);
            *endings.entry(log.last().cloned().unwrap_or_default()).or_insert(0) += 1;
            if seed % 50 == 0 {
                assert_eq!(random_scenario(seed), log, "seed {seed} is not deterministic");
            }
        }
        println!("random scenarios ended with: {endings:?}");
    }
}
