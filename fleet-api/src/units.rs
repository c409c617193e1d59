//! Durations, times and sizes as people write and read them (pure). One duration grammar
//! ([`parse_duration_as`], in Fleet's and in Compose's dialect) and one time parser
//! ([`parse_time`], on jiff's calendar) for every crate: the server reads `--bake` and the
//! Compose files' durations with the same code `fleetctl` checks its flags with.

use std::time::Duration;

use fleet_proto::UnixMillis;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A UTC time for people and logs: `2026-12-01 14:05:09Z`.
pub fn utc(at: UnixMillis) -> String {
    let at = i64::try_from(at.0)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(Timestamp::MAX);
    at.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Which duration dialect a text is written in. Both share one grammar — numbers (decimals
/// allowed) each followed by a unit, summed: `1h30m`, `1.5s` — and differ only in their units
/// and in what a number without a unit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationSyntax {
    /// Fleet's own fields (`--bake`, `--since`, `--expires`, the API's rollout durations):
    /// units `ms`, `s`, `m`, `h`, `d`; a bare number is seconds.
    Fleet,
    /// Go's `time.ParseDuration`, as Compose files use it: units `ns`, `us` (or `µs`), `ms`,
    /// `s`, `m`, `h`; a bare number other than `0` is refused, its unit would be a guess.
    Go,
}

impl DurationSyntax {
    /// Nanoseconds per `unit`, `None` when this dialect has no such unit.
    fn nanos_per(self, unit: &str) -> Option<u128> {
        const SECOND: u128 = 1_000_000_000;
        match (self, unit) {
            (Self::Go, "ns") => Some(1),
            (Self::Go, "us" | "µs") => Some(1_000),
            (_, "ms") => Some(1_000_000),
            (_, "s") => Some(SECOND),
            (_, "m") => Some(60 * SECOND),
            (_, "h") => Some(3_600 * SECOND),
            (Self::Fleet, "d") => Some(86_400 * SECOND),
            _ => None,
        }
    }

    /// Why `text` is not a duration, in this dialect's words.
    fn error(self, text: &str, problem: DurationProblem<'_>) -> String {
        match (self, problem) {
            (Self::Fleet, _) => format!(
                "duration {text:?}: expected a number with a unit, like 500ms, 90s, 10m, 1h30m or 2d"
            ),
            (Self::Go, DurationProblem::NoUnit(number)) => {
                format!("{text:?} has no unit; write it like {number}s (units: us, ms, s, m, h)")
            }
            (Self::Go, DurationProblem::UnknownUnit(unit)) => {
                format!("{text:?}: unknown duration unit {unit:?}; use us, ms, s, m or h")
            }
            (Self::Go, DurationProblem::Malformed) => {
                format!("{text:?} is not a duration; write it like 10s, 500ms, 1m30s or 2h45m")
            }
        }
    }
}

/// What was wrong with a duration, for [`DurationSyntax::error`].
#[derive(Debug, Clone, Copy)]
enum DurationProblem<'a> {
    NoUnit(&'a str),
    UnknownUnit(&'a str),
    Malformed,
}

/// Parses a duration in Fleet's syntax: `90s`, `10m`, `1h30m`, `1.5h`, `2d`, `500ms`, `1m30s`
/// (a bare number is seconds). The one grammar of every duration a user writes to Fleet.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_as(text, DurationSyntax::Fleet)
}

/// Parses a duration in the given dialect (see [`DurationSyntax`]); exact to the nanosecond.
pub fn parse_duration_as(text: &str, syntax: DurationSyntax) -> Result<Duration, String> {
    let fail = |problem| syntax.error(text, problem);
    let s = text.trim();
    if s.is_empty() {
        return Err(fail(DurationProblem::Malformed));
    }
    let bare_number = s.bytes().all(|b| b.is_ascii_digit());
    match syntax {
        DurationSyntax::Fleet if bare_number => {
            return s.parse().map(Duration::from_secs).map_err(|_| fail(DurationProblem::Malformed))
        }
        DurationSyntax::Go if s == "0" => return Ok(Duration::ZERO),
        _ => {}
    }
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        if number_len == 0 {
            return Err(fail(DurationProblem::Malformed));
        }
        let number = &rest[..number_len];
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per = match syntax.nanos_per(unit) {
            Some(n) => n,
            None if unit.is_empty() => return Err(fail(DurationProblem::NoUnit(number))),
            None => return Err(fail(DurationProblem::UnknownUnit(unit))),
        };
        let nanos =
            scaled_decimal(number, nanos_per).ok_or_else(|| fail(DurationProblem::Malformed))?;
        total_nanos = total_nanos.saturating_add(nanos);
    }
    let secs =
        u64::try_from(total_nanos / 1_000_000_000).map_err(|_| fail(DurationProblem::Malformed))?;
    // Below 10^9 by construction.
    let sub = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// `number * scale` for a decimal `number` like `1.5` or `.25`, rounded down; `None` when
/// malformed or absurdly large.
pub fn scaled_decimal(number: &str, scale: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        || frac.contains('.')
        || int.len() > 20
    {
        return None;
    }
    let int_part: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac = &frac[..frac.len().min(18)];
    let frac_part: u128 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    let frac_value = frac_part.checked_mul(scale)? / 10u128.pow(frac.len() as u32);
    int_part.checked_mul(scale)?.checked_add(frac_value)
}

/// Which way a duration given for a point in time counts from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromNow {
    /// `--since 2h`: two hours ago.
    Back,
    /// `--until 2d`, `--expires 90d`: two days from now.
    Ahead,
}

/// A point in time as a user writes it for `field` (a flag or field name, for the error): a
/// duration from `now` in Fleet's syntax (`2h`, `3d`), or a time: RFC 3339
/// (`2026-12-24T18:00:00+01:00`), with minutes only or a space instead of `T` allowed, and
/// without an offset taken as UTC (`2026-12-24 18:00`). Impossible dates (`2026-02-31`) are
/// refused, naming the field and the part that is out of range.
pub fn parse_time(
    field: &str,
    text: &str,
    now: UnixMillis,
    direction: FromNow,
) -> Result<UnixMillis, String> {
    let text = text.trim();
    if let Ok(d) = parse_duration(text) {
        let d = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        return Ok(UnixMillis(match direction {
            FromNow::Back => now.0.saturating_sub(d),
            FromNow::Ahead => now.0.saturating_add(d),
        }));
    }
    let at = text.parse::<Timestamp>().or_else(|with_offset| {
        // No offset: UTC. Keep the error that explains the most: a text with a `Z` or an offset
        // failed on its date or clock, not on a missing offset.
        text.parse::<jiff::civil::DateTime>()
            .and_then(|civil| civil.to_zoned(TimeZone::UTC))
            .map(|zoned| zoned.timestamp())
            .map_err(|civil| if has_offset(text) { with_offset } else { civil })
    });
    let at = at.map_err(|e| {
        // jiff's reason helps with a date gone wrong, not with a word like "tomorrow".
        let reason = if text.starts_with(|c: char| c.is_ascii_digit()) {
            format!("{e}; ")
        } else {
            String::new()
        };
        format!(
            "{field} {text:?}: {reason}give a duration like 2h or 3d, or a time like \
             2026-12-24T18:00Z (UTC) or 2026-12-24T18:00:00+01:00"
        )
    })?;
    u64::try_from(at.as_millisecond())
        .map(UnixMillis)
        .map_err(|_| format!("{field} {text:?}: before 1970 (times are counted from 1970-01-01)"))
}

/// Whether a time text ends in `Z` or a numeric UTC offset (after its clock).
fn has_offset(text: &str) -> bool {
    let Some((_, clock)) = text.split_once(['T', 't', ' ']) else { return false };
    clock.ends_with(['Z', 'z']) || clock.contains(['+', '-'])
}

/// A duration for people: `45s`, `10m`, `1h 30m`, `2d 3h`.
pub fn human_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let s = ms / 1000;
    let (big, small, units) = match s {
        0 => return format!("{ms}ms"),
        1..=59 => return format!("{s}s"),
        60..=3599 => (s / 60, s % 60, ("m", "s")),
        3600..=86_399 => (s / 3600, s % 3600 / 60, ("h", "m")),
        _ => (s / 86_400, s % 86_400 / 3600, ("d", "h")),
    };
    if small == 0 {
        format!("{big}{}", units.0)
    } else {
        format!("{big}{} {small}{}", units.0, units.1)
    }
}

/// Bytes for people: `1.5 GB`, `300 MB`, `12 KB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            let tenths = n * 10 / size;
            return if tenths % 10 == 0 || tenths >= 100 {
                format!("{} {unit}", n / size)
            } else {
                format!("{}.{} {unit}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_usual_form() {
        let ms = |t: &str| parse_duration(t).unwrap().as_millis();
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("90"), 90_000);
        assert_eq!(ms("90s"), 90_000);
        assert_eq!(ms("10m"), 600_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("1.5h"), 5_400_000);
        assert_eq!(ms("2d"), 172_800_000);
        assert_eq!(ms("1m30s"), 90_000);
        for bad in ["", "m", "10x", "-5s", "1h30", "s10"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations_keep_compose_rules() {
        let go = |t: &str| parse_duration_as(t, DurationSyntax::Go);
        assert_eq!(go("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(go("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(go("0").unwrap(), Duration::ZERO);
        assert!(go("30").unwrap_err().contains("no unit; write it like 30s"));
        assert!(go("3d").unwrap_err().contains("unknown duration unit \"d\""));
        assert!(parse_duration("250us").is_err(), "Fleet's dialect has no microseconds");
    }

    #[test]
    fn decimal_durations_are_exact() {
        assert_eq!(parse_duration("0.001s").unwrap(), Duration::from_millis(1));
        assert_eq!(parse_duration(".5m").unwrap(), Duration::from_secs(30));
        assert!(parse_duration(&format!("{}h", "9".repeat(30))).is_err(), "overflow");
    }

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    #[test]
    fn times_are_durations_from_now_or_utc_or_rfc3339() {
        let t = |text: &str| parse_time("--until", text, NOW, FromNow::Ahead).unwrap();
        assert_eq!(t("2h"), UnixMillis(NOW.0 + 7_200_000));
        assert_eq!(
            parse_time("--since", "2h", NOW, FromNow::Back).unwrap(),
            UnixMillis(NOW.0 - 7_200_000)
        );
        assert_eq!(utc(t("2026-12-24T18:00Z")), "2026-12-24 18:00:00Z");
        assert_eq!(utc(t("2026-12-24 18:00")), "2026-12-24 18:00:00Z");
        assert_eq!(utc(t("2026-12-24T18:00:30")), "2026-12-24 18:00:30Z");
        assert_eq!(utc(t("2026-12-24T19:00:00+01:00")), "2026-12-24 18:00:00Z");
        assert_eq!(utc(t("2026-12-24T18:00:00.250Z")), "2026-12-24 18:00:00Z");
        assert_eq!(t("1970-01-01 00:00:01"), UnixMillis(1000));
        assert_eq!(t("2028-02-29T00:00Z").0 + 86_400_000, t("2028-03-01T00:00Z").0);
    }

    #[test]
    fn impossible_dates_are_refused_naming_the_field() {
        for text in ["2026-02-31T00:00Z", "2026-02-31 10:00", "2026-02-31", "2026-02-29T00:00Z"] {
            let e = parse_time("--until", text, NOW, FromNow::Ahead).unwrap_err();
            assert!(e.starts_with(&format!("--until {text:?}: ")), "{e}");
            assert!(e.contains("day"), "names the day that is out of range: {e}");
        }
        for text in ["tomorrow", "2026-13-01T00:00Z", "2026-12-24T25:00Z", "1969-12-31T00:00Z"] {
            assert!(parse_time("--expires", text, NOW, FromNow::Ahead).is_err(), "{text}");
        }
    }

    #[test]
    fn utc_prints_seconds_and_zulu() {
        assert_eq!(utc(UnixMillis(0)), "1970-01-01 00:00:00Z");
        assert_eq!(utc(UnixMillis(1_798_761_599_999)), "2026-12-31 23:59:59Z");
    }

    #[test]
    fn durations_print_for_people() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(45)), "45s");
        assert_eq!(human_duration(Duration::from_secs(600)), "10m");
        assert_eq!(human_duration(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(human_duration(Duration::from_secs(86_400 * 2 + 3600 * 3)), "2d 3h");
    }

    #[test]
    fn byte_counts_read_like_a_person_wrote_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KB");
        assert_eq!(bytes(300 << 20), "300 MB");
        assert_eq!(bytes(3 << 30), "3 GB");
    }
}
