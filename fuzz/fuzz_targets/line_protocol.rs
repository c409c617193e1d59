//! What applications post to the agent's telemetry socket: line protocol (under its point
//! and label budget, in any precision) and the JSON form. Either is refused or gives points
//! within the limits every point keeps (`Point::problem`), never more than the budget allows.
#![no_main]

use fleet_agent::telemetry::line_protocol::{parse_json, parse_lines, Budget, Precision};
use fleet_proto::UnixMillis;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // First byte: precision and a budget small enough for the fuzzer to reach.
    let Some((&select, body)) = input.split_first() else { return };
    let precision = match select & 3 {
        0 => Precision::Nanos,
        1 => Precision::Micros,
        2 => Precision::Millis,
        _ => Precision::Secs,
    };
    let budget = Budget { max_points: usize::from(select >> 2) + 1, max_label_bytes: 4096 };
    let now = UnixMillis(1_700_000_000_000);
    if let Ok(text) = std::str::from_utf8(body) {
        match parse_lines(text, precision, now, budget) {
            Ok(points) => {
                assert!(
                    points.len() <= budget.max_points,
                    "{} points over the budget",
                    points.len()
                );
                let label_bytes: usize =
                    points.iter().flat_map(|p| &p.labels).map(|(k, v)| k.len() + v.len()).sum();
                assert!(label_bytes <= budget.max_label_bytes, "{label_bytes} label bytes");
                for p in &points {
                    assert_eq!(p.problem(), None, "line protocol accepted {p:?}");
                }
            }
            Err(refusal) => assert!(!refusal.message.is_empty()),
        }
    }
    if let Ok(points) = parse_json(body, now) {
        for p in &points {
            assert_eq!(p.problem(), None, "JSON accepted {p:?}");
        }
    }
});
