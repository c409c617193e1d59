//! The registry client reading a `401`'s `WWW-Authenticate` challenge: any header value is a
//! challenge it speaks or `None`, never a panic, and surrounding whitespace changes nothing.
#![no_main]

use fleet_oci::fuzzing::{parse_challenge, Challenge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    let challenge = parse_challenge(header);
    assert_eq!(parse_challenge(&format!("  {header}\t")), challenge);
    if let Some(Challenge::Bearer { realm, .. }) = &challenge {
        // A realm is where the credential goes next: it must come from the header.
        assert!(header.contains(realm.as_str()));
    }
});
