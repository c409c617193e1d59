//! Maintenance windows: the grammar, time zones, and when a window next opens.

use super::*;

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
        let ts =
            jiff::civil::datetime(y, mo, d, h, mi, 0, 0).to_zoned(jiff::tz::TimeZone::UTC).unwrap();
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
    assert_eq!(w.next_open(at(5 * DAY + 12 * HOUR)), at(7 * DAY + 21 * HOUR), "Saturday → Monday");
    let sunday = MaintenanceWindow::parse("Sun 10:00-11:00 -05:00").unwrap();
    assert_eq!(sunday.next_open(at(0)), at(6 * DAY + 15 * HOUR));
}
