//! Output for people: aligned tables and times.

pub use fleet_api::units::utc;
use fleet_api::units::{days_from_civil, human_duration, parse_duration};
use fleet_proto::UnixMillis;

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `3m ago`, `in 2h`, or `-`.
pub fn ago(at: UnixMillis) -> String {
    if at.0 == 0 {
        return "-".to_owned();
    }
    let now = UnixMillis::now().0;
    if at.0 <= now {
        format!("{} ago", human_duration(std::time::Duration::from_millis(now - at.0)))
    } else {
        format!("in {}", human_duration(std::time::Duration::from_millis(at.0 - now)))
    }
}

/// A point in time from the command line: a duration from now (`2h`, `3d`), or a UTC time
/// `YYYY-MM-DDTHH:MM[:SS]Z` (also with a space instead of `T`).
pub fn parse_time(text: &str, past: bool) -> Result<UnixMillis, String> {
    if let Ok(d) = parse_duration(text) {
        let now = UnixMillis::now().0;
        let d = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        return Ok(UnixMillis(if past { now.saturating_sub(d) } else { now.saturating_add(d) }));
    }
    let bad = || {
        format!(
            "time {text:?}: give a duration like 2h or 3d, or a UTC time like 2026-12-24T18:00Z"
        )
    };
    let t = text.trim().trim_end_matches('Z').replace(' ', "T");
    let (date, clock) = t.split_once('T').ok_or_else(bad)?;
    let mut date = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d)), None) =
        (date.next(), date.next(), date.next(), date.next())
    else {
        return Err(bad());
    };
    let clock: Vec<i64> =
        clock.split(':').map(|p| p.parse()).collect::<Result<_, _>>().map_err(|_| bad())?;
    let (h, min, s) = match clock.as_slice() {
        [h, min] => (*h, *min, 0),
        [h, min, s] => (*h, *min, *s),
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || min > 59 || s > 60 {
        return Err(bad());
    }
    let secs = days_from_civil(y, m, d) * 86_400 + h * 3600 + min * 60 + s;
    Ok(UnixMillis(u64::try_from(secs).map_err(|_| bad())? * 1000))
}

/// `1 device`, `3 devices`.
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_round_trip() {
        let t = parse_time("2026-12-24T18:00Z", false).unwrap();
        assert_eq!(utc(t), "2026-12-24 18:00:00Z");
        assert_eq!(parse_time("1970-01-01 00:00:01", false).unwrap(), UnixMillis(1000));
        assert!(parse_time("tomorrow", false).is_err());
        let later = parse_time("2h", false).unwrap().0;
        assert!(later > UnixMillis::now().0 + 7_000_000);
    }
}
