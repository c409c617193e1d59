//! Output for people: aligned tables and times.

pub use fleet_api::units::utc;
use fleet_api::units::{self, human_duration, FromNow};
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

/// A point in time from the command line for `flag`: a duration from now (`2h`, `3d`), or a
/// time (RFC 3339, or UTC `YYYY-MM-DD HH:MM[:SS]`); see [`fleet_api::units::parse_time`].
pub fn parse_time(flag: &str, text: &str, direction: FromNow) -> Result<UnixMillis, String> {
    units::parse_time(flag, text, UnixMillis::now(), direction)
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
        let t = parse_time("--until", "2026-12-24T18:00Z", FromNow::Ahead).unwrap();
        assert_eq!(utc(t), "2026-12-24 18:00:00Z");
        let epoch = parse_time("--until", "1970-01-01 00:00:01", FromNow::Ahead).unwrap();
        assert_eq!(epoch, UnixMillis(1000));
        assert!(parse_time("--until", "tomorrow", FromNow::Ahead).is_err());
        let later = parse_time("--until", "2h", FromNow::Ahead).unwrap().0;
        assert!(later > UnixMillis::now().0 + 7_000_000);
    }
}
