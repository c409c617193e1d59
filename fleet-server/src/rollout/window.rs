//! Maintenance windows: when a rollout may start waves and target devices, read on a fixed UTC
//! offset or a named IANA zone.

use std::fmt;
use std::str::FromStr;

use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};

use super::error::SpecError;

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// When updates may happen: some weekdays, from a start to an end time on a named zone's clock
/// or a fixed UTC offset, e.g. `Mon-Fri 22:00-05:00 Europe/Berlin` or `daily 01:00-04:00 +05:30`. A window that
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
#[derive(Debug, Clone)]
enum Zone {
    /// A fixed offset from UTC, in minutes.
    Fixed(i16),
    /// An IANA zone, e.g. `Europe/Berlin`: the name as written (for `Display` and serde) and
    /// the zone it resolved to when the window was parsed, so that evaluating a window, which
    /// the engine does at every step, never reads the host's tz database.
    Named {
        /// As written.
        name: String,
        /// Resolved once, in [`parse_zone`].
        tz: jiff::tz::TimeZone,
    },
}

// By hand because the name decides the zone: two windows parsed from the same text are equal
// whether or not their resolved `TimeZone`s compare equal.
impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        match (self, other) {
            (Zone::Fixed(a), Zone::Fixed(b)) => a == b,
            (Zone::Named { name: a, .. }, Zone::Named { name: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Zone {}

impl Zone {
    /// The offset from UTC in minutes at `at`.
    fn offset_at(&self, at: UnixMillis) -> i64 {
        match self {
            Zone::Fixed(minutes) => i64::from(*minutes),
            Zone::Named { tz, .. } => {
                let ts = jiff::Timestamp::from_millisecond(i64::try_from(at.0).unwrap_or(i64::MAX))
                    .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
                i64::from(tz.to_offset(ts).seconds()) / 60
            }
        }
    }
}

impl MaintenanceWindow {
    /// Parses `DAYS HH:MM-HH:MM ZONE`: days as `Mon-Fri`, `Sat,Sun`, `Mon-Wed,Fri` or
    /// `daily`; the end may be `24:00`; the zone as an IANA name (`Europe/Berlin`, resolved
    /// here, once) or an offset: `+01:00`, `-05:30`, `UTC` or `Z`.
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
                Ok(tz) => Ok(Zone::Named { name: text.to_owned(), tz }),
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
            Zone::Named { name, .. } => f.write_str(name),
            Zone::Fixed(offset) => {
                let sign = if *offset < 0 { '-' } else { '+' };
                let offset = offset.unsigned_abs();
                write!(f, "{sign}{:02}:{:02}", offset / 60, offset % 60)
            }
        }
    }
}
