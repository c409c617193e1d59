//! The agent's local sockets (update locks, telemetry ingestion) reading and parsing a request
//! head from a connection's first bytes. A request either is refused with a status the sockets
//! answer with, or comes out unambiguous: a bounded head ending in its blank line, a path, at
//! most one plain-digit Content-Length.
#![no_main]

use fleet_agent::fuzzing::{read_and_parse_request, RequestHead};
use libfuzzer_sys::fuzz_target;

/// The telemetry socket's bound (the update-lock socket's is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;

fuzz_target!(|input: &[u8]| {
    match read_and_parse_request(input, MAX_HEAD) {
        RequestHead::Closed => assert!(input.is_empty()),
        RequestHead::Refused(status) => {
            assert!([400, 431, 505].contains(&status), "refused with {status}")
        }
        RequestHead::Parsed { head, rest, method, path, query, headers } => {
            assert!(head.len() <= MAX_HEAD);
            assert!(head.ends_with(b"\n\n") || head.ends_with(b"\r\n\r\n"));
            assert!(input.starts_with(&head) && input[head.len()..].starts_with(&rest));
            assert!(!method.is_empty());
            assert!(path.starts_with('/') && !path.contains('?'), "path {path:?}");
            assert!(query.is_none_or(|q| !q.is_empty()));
            let lengths: Vec<_> = headers.iter().filter(|(k, _)| k == "content-length").collect();
            assert!(lengths.len() <= 1);
            for (name, value) in &headers {
                assert_eq!(name, &name.to_ascii_lowercase());
                if name == "content-length" {
                    assert!(!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()));
                }
            }
        }
    }
});
