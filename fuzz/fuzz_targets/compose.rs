//! A Compose file as a user uploads it: `Compose::parse` (no variables) returns a checked file or
//! its problems, and a checked file, its images given digests, becomes a release or problems,
//! never a panic. Problems always say where and why.
#![no_main]

use std::collections::BTreeMap;

use fleet_proto::ImageRef;
use fleet_server::compose::{Compose, ComposeProblem};
use libfuzzer_sys::fuzz_target;

fn explained(problems: &[ComposeProblem]) {
    assert!(!problems.is_empty(), "refused without a problem");
    for p in problems {
        assert!(!p.path.is_empty() && !p.reason.is_empty(), "{p:?}");
    }
}

fuzz_target!(|bytes: &[u8]| {
    let compose = match Compose::parse(bytes, &BTreeMap::new()) {
        Ok(c) => c,
        Err(problems) => return explained(&problems),
    };
    // What the registry would answer: one digest for every reference (a reference that is not
    // a valid repository stays unresolved, which into_release must report).
    let digest = format!("sha256:{}", "ab".repeat(32));
    let images: BTreeMap<String, ImageRef> = compose
        .images()
        .into_iter()
        .filter_map(|u| {
            let repo =
                u.reference.split(['@', ':']).next().unwrap_or_default().to_ascii_lowercase();
            let image = ImageRef::parse(&format!("{repo}@{digest}")).ok()?;
            Some((u.reference, image))
        })
        .collect();
    if let Err(problems) = compose.into_release("app", "1.0", &images) {
        explained(&problems);
    }
});
