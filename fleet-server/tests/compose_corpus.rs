//! The Compose corpus: realistic files (and hostile ones) under `tests/compose/`, each with an
//! expectation beside it (`name.expect`): `ok`, or the refused paths, one per line, in the
//! order reported.
//!
//! Every file must either convert (images resolved by a fake, deterministic resolver) or be
//! refused with problems that all carry a path; none may panic. A changed outcome fails the
//! test. New file: run with `FLEET_BLESS=1` to write its missing `.expect`, then read it.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_proto::ImageRef;
use fleet_server::compose::{Compose, ComposeProblem};
use proptest::prelude::*;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// What the registry resolver would hand back: a digest derived from the reference. A
/// reference no registry could hold (a mutation may make one, e.g. an upper-case repository)
/// is left unresolved, as the server's resolver leaves it, and conversion names it.
fn resolve(compose: &Compose) -> BTreeMap<String, ImageRef> {
    compose
        .images()
        .into_iter()
        .filter_map(|u| {
            let name = u.reference.split('@').next().unwrap();
            let slash = name.rfind('/').map_or(0, |i| i + 1);
            let repo = name[slash..].find(':').map_or(name, |i| &name[..slash + i]);
            let mut hex = String::new();
            for salt in 0..4u8 {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (salt, &u.reference).hash(&mut h);
                hex.push_str(&format!("{:016x}", h.finish()));
            }
            let image = ImageRef::parse(&format!("{repo}@sha256:{hex}")).ok()?;
            Some((u.reference, image))
        })
        .collect()
}

fn convert(bytes: &[u8]) -> Result<fleet_proto::ReleaseSpec, Vec<ComposeProblem>> {
    let compose = Compose::parse(bytes, &BTreeMap::new())?;
    let images = resolve(&compose);
    compose.into_release("corpus", "1.0.0", &images)
}

fn outcome(result: &Result<fleet_proto::ReleaseSpec, Vec<ComposeProblem>>) -> String {
    match result {
        Ok(_) => "ok\n".to_owned(),
        Err(problems) => problems.iter().map(|p| format!("{}\n", p.path)).collect(),
    }
}

#[test]
fn every_corpus_file_converts_or_is_refused_as_expected() {
    let bless = std::env::var_os("FLEET_BLESS").is_some();
    let mut failures = Vec::new();
    let files = corpus();
    assert!(files.len() >= 25, "the corpus has {} files", files.len());
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let result = convert(&bytes);
        if let Err(problems) = &result {
            for p in problems {
                assert!(!p.path.is_empty() && !p.reason.is_empty(), "{}: {p:?}", file.display());
            }
        }
        let got = outcome(&result);
        let expect_path = file.with_extension("expect");
        let expected = match std::fs::read_to_string(&expect_path) {
            Ok(e) => e,
            Err(_) if bless => {
                std::fs::write(&expect_path, &got).unwrap();
                got.clone()
            }
            Err(_) => String::from("(missing .expect; run with FLEET_BLESS=1)\n"),
        };
        if got != expected {
            let detail = match &result {
                Ok(_) => String::new(),
                Err(problems) => problems.iter().map(|p| format!("    {p}\n")).collect(),
            };
            failures.push(format!(
                "{}:\n  expected:\n{}  got:\n{}{detail}",
                file.display(),
                indent(&expected),
                indent(&got)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn converted_corpus_releases_validate_and_round_trip_through_json() {
    for file in corpus() {
        if let Ok(release) = convert(&std::fs::read(&file).unwrap()) {
            release.validate().unwrap();
            let json = serde_json::to_string(&release).unwrap();
            let back: fleet_proto::ReleaseSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(back, release, "{}", file.display());
        }
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_parsing() {
    let mut big = b"services:\n  s:\n    image: x\n".to_vec();
    big.resize(fleet_server::compose::MAX_COMPOSE_BYTES + 1, b' ');
    let err = Compose::parse(&big, &BTreeMap::new()).unwrap_err();
    assert_eq!(err[0].path, "(file)");
}

#[test]
fn invalid_utf8_is_refused() {
    let err =
        Compose::parse(b"services:\n  s:\n    image: \xc3\x28\n", &BTreeMap::new()).unwrap_err();
    assert!(err[0].reason.contains("UTF-8"), "{err:?}");
}

/// One mutation of a corpus file.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Duplicate { from: usize, len: usize, to: usize },
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = bytes.len().max(1);
    match m {
        Mutation::Flip { at, bit } => {
            if let Some(b) = bytes.get_mut(at % n) {
                *b ^= 1 << (bit % 8);
            }
        }
        Mutation::Truncate { at } => bytes.truncate(at % n),
        Mutation::Insert { at, bytes: ins } => {
            let at = at % n;
            bytes.splice(at.min(bytes.len())..at.min(bytes.len()), ins.iter().copied());
        }
        Mutation::Duplicate { from, len, to } => {
            let from = from % n;
            let end = (from + len).min(bytes.len());
            let chunk = bytes[from.min(end)..end].to_vec();
            let to = (to % n).min(bytes.len());
            bytes.splice(to..to, chunk);
        }
    }
    bytes
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // YAML's structural characters make the interesting insertions.
    let yamlish = proptest::collection::vec(
        prop_oneof![
            Just(b':'),
            Just(b'-'),
            Just(b'['),
            Just(b'{'),
            Just(b'&'),
            Just(b'*'),
            Just(b'<'),
            Just(b'$'),
            Just(b'\n'),
            Just(b' '),
            Just(b'\t'),
            Just(b'"'),
            any::<u8>()
        ],
        1..8,
    );
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), yamlish).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..200, any::<usize>())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_corpus_files_never_panic_and_finish_quickly(
        pick in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let files = corpus();
        let file = &files[pick % files.len()];
        let mut bytes = std::fs::read(file).unwrap();
        for m in &mutations {
            bytes = apply(bytes, m);
        }
        let started = Instant::now();
        let result = convert(&bytes);
        prop_assert!(started.elapsed() < Duration::from_secs(5), "{} took {:?}", file.display(), started.elapsed());
        if let Err(problems) = result {
            prop_assert!(!problems.is_empty());
            prop_assert!(problems.iter().all(|p| !p.path.is_empty()));
        }
    }
}
