//! Agent releases: `fleet-agent@VERSION`, one ELF binary per platform, stored in the fleet's
//! registry as an OCI artifact and signed by the server. Rolled out and pinned like
//! application releases (the rollout driver and pins tell them apart by their app name).
//!
//! Invariants: an agent release only goes forward (its version is newer, by semver, than every
//! agent release stored); every binary is an executable for exactly the platform it is given
//! for; nothing is stored unless every binary is in the registry.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use fleet_api::{AgentReleaseRequest, FieldProblem};
use fleet_oci::Platform;
use fleet_proto::{ReleaseId, UnixMillis};

use super::{blocking, Error, Fleet};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::releases::{AgentPusher, ReleaseRecord, AGENT_APP};
use crate::store::Store;

/// The largest binary taken (the agent is a few MB; the device refuses more than 128 MiB).
pub const MAX_BINARY_BYTES: usize = 64 << 20;
/// The most platforms one release carries.
pub const MAX_PLATFORMS: usize = 4;
/// The largest request body: every binary at its largest, base64, and the JSON around it.
pub const MAX_REQUEST_BYTES: usize = MAX_PLATFORMS * MAX_BINARY_BYTES / 3 * 4 + (64 << 10);
/// The trial deadline when the request names none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
const DEADLINES: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(3600);

const REFUSED: &str = "the agent release was refused; nothing was stored";

/// The checked request: version, binaries by platform, deadline in seconds.
type Checked = (String, Vec<(Platform, Vec<u8>)>, u64);

/// Checks `request` field by field (pure): every problem is named at once.
pub fn check(request: &AgentReleaseRequest) -> Result<Checked, Error> {
    let mut problems = Vec::new();
    let mut problem = |path: String, reason: String| problems.push(FieldProblem { path, reason });
    let version = request.version.trim().to_owned();
    if let Err(why) = fleet_proto::version::check(&version) {
        problem("version".into(), why);
    } else if fleet_proto::version::compare(&version, &version).is_none() {
        problem("version".into(), format!("{version:?} is not MAJOR.MINOR.PATCH[-PRE][+BUILD]"));
    }
    let deadline = match &request.deadline {
        None => DEFAULT_DEADLINE,
        Some(text) => match fleet_api::units::parse_duration(text) {
            Ok(d) if DEADLINES.contains(&d) => d,
            Ok(_) => {
                problem("deadline".into(), format!("{text}: give 10s to 1h"));
                DEFAULT_DEADLINE
            }
            Err(why) => {
                problem("deadline".into(), why);
                DEFAULT_DEADLINE
            }
        },
    };
    if request.binaries.is_empty() {
        problem("binaries".into(), "give at least one: --binary linux/arm64=PATH".into());
    }
    if request.binaries.len() > MAX_PLATFORMS {
        problem("binaries".into(), format!("at most {MAX_PLATFORMS} platforms"));
    }
    let mut seen = BTreeSet::new();
    let mut binaries = Vec::new();
    for (i, upload) in request.binaries.iter().enumerate() {
        let at = format!("binaries[{i}]");
        let platform = match upload.platform.parse::<Platform>() {
            Ok(p) => p,
            Err(why) => {
                problem(format!("{at}.platform"), why);
                continue;
            }
        };
        if !seen.insert(platform.to_string()) {
            problem(format!("{at}.platform"), format!("{platform} is given twice"));
            continue;
        }
        if upload.base64.len() > MAX_BINARY_BYTES / 3 * 4 + 4 {
            problem(at.clone(), format!("larger than {} MiB", MAX_BINARY_BYTES >> 20));
            continue;
        }
        let bytes = match base64::engine::general_purpose::STANDARD.decode(&upload.base64) {
            Ok(b) => b,
            Err(e) => {
                problem(format!("{at}.base64"), format!("not base64: {e}"));
                continue;
            }
        };
        match fleet_oci::elf::platform_of(&bytes) {
            Ok(built) if built == platform => binaries.push((platform, bytes)),
            Ok(built) => {
                problem(at.clone(), format!("an executable for {built}, given for {platform}"))
            }
            Err(why) => problem(at.clone(), format!("{why} (given for {platform})")),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid { summary: REFUSED.to_owned(), problems });
    }
    Ok((version, binaries, deadline.as_secs()))
}

/// The agent release that is newest now, by semver, if any is.
fn newest(store: &Store) -> Result<Option<String>, Error> {
    let mut newest: Option<String> = None;
    let mut after = format!("{AGENT_APP}@");
    loop {
        let page = store.releases_page(Some(&after), 1000)?;
        let mut ours = 0;
        for record in &page.items {
            let Some(version) =
                record.id().as_str().strip_prefix(AGENT_APP).and_then(|r| r.strip_prefix('@'))
            else {
                continue;
            };
            ours += 1;
            let newer = newest.as_deref().is_none_or(|n| {
                fleet_proto::version::compare(version, n) == Some(std::cmp::Ordering::Greater)
            });
            if newer {
                newest = Some(version.to_owned());
            }
        }
        match page.next {
            Some(next) if ours == page.items.len() => after = next,
            _ => return Ok(newest),
        }
    }
}

/// Refuses `version` unless it is newer than `newest`.
fn forward_only(version: &str, newest: Option<&str>) -> Result<(), Error> {
    match newest {
        Some(n)
            if fleet_proto::version::compare(version, n) != Some(std::cmp::Ordering::Greater) =>
        {
            Err(Error::conflict(format!(
                "{AGENT_APP}@{n} exists and {version} is not newer: agent releases only go forward (semver); give a version after {n}"
            )))
        }
        _ => Ok(()),
    }
}

/// Creates agent release `fleet-agent@VERSION` from `request`: checks every binary, pushes
/// them to the fleet's registry through `pusher`, then stores the signed release.
pub async fn create(
    fleet: &Fleet,
    pusher: &Arc<dyn AgentPusher>,
    caller: &Caller,
    request: AgentReleaseRequest,
    now: UnixMillis,
) -> Result<ReleaseRecord, Error> {
    let (version, binaries, deadline_secs) = check(&request)?;
    let id = ReleaseId::new(format!("{AGENT_APP}@{version}"))
        .map_err(|e| Error::field(REFUSED, "version", e.to_string()))?;
    // Checked before the upload (which takes a while), and again when storing.
    forward_only(&version, newest(&fleet.store)?.as_deref())?;
    let pushed = blocking({
        let (pusher, version) = (pusher.clone(), version.clone());
        move || pusher.push_agent(&version, &binaries, deadline_secs).map_err(Error::RegistryFailed)
    })
    .await?;
    let (fleet, caller) = (fleet.clone(), caller.clone());
    blocking(move || {
        fleet.store.update_durable(|tx| {
            if tx.release(id.as_str())?.is_some() {
                return Err(Error::conflict(format!(
                    "release {id} already exists; releases are immutable: give this one a new version"
                )));
            }
            forward_only(&version, newest(&fleet.store)?.as_deref())?;
            let platforms: Vec<String> = pushed
                .binaries
                .iter()
                .map(|b| format!("{} {} ({} B)", b.platform, b.digest, b.size))
                .collect();
            let record = ReleaseRecord::agent(pushed.clone(), fleet.pki.signing_key(), now, &caller.name)
                .map_err(|e| Error::field(REFUSED, "version", e.to_string()))?;
            tx.put_release(&record);
            tx.audit(AuditEntry::new(
                now,
                &caller.name,
                "release.create",
                id.to_string(),
                format!("agent binaries in {}: {}", pushed.repository, platforms.join(", ")),
            ));
            Ok(record)
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use fleet_api::AgentBinaryUpload;

    use super::*;

    fn elf(class: u8, machine: u16) -> String {
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(b"\x7fELF");
        head[4] = class;
        head[5] = 1;
        head[16] = 2;
        head[18..20].copy_from_slice(&machine.to_le_bytes());
        base64::engine::general_purpose::STANDARD.encode(head)
    }

    fn upload(platform: &str, base64: String) -> AgentBinaryUpload {
        AgentBinaryUpload { platform: platform.into(), base64 }
    }

    fn problems(request: &AgentReleaseRequest) -> Vec<(String, String)> {
        match check(request) {
            Err(Error::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| (p.path, p.reason)).collect()
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn binaries_for_their_platforms_pass_and_each_wrong_one_is_named() {
        let good = AgentReleaseRequest {
            version: "1.2.0".into(),
            binaries: vec![
                upload("linux/arm64", elf(2, 183)),
                upload("linux/arm/v7", elf(1, 40)),
                upload("linux/amd64", elf(2, 62)),
            ],
            deadline: None,
        };
        let (version, binaries, deadline) = check(&good).unwrap();
        assert_eq!((version.as_str(), binaries.len(), deadline), ("1.2.0", 3, 120));

        let bad = AgentReleaseRequest {
            version: "1.2".into(),
            binaries: vec![
                upload("linux/arm64", elf(2, 62)),
                upload(
                    "linux/amd64",
                    base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\n"),
                ),
                upload("linux/arm64", elf(2, 183)),
                upload("linux/riscv64", elf(2, 243)),
            ],
            deadline: Some("2 days".into()),
        };
        let found = problems(&bad);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "version",
                "deadline",
                "binaries[0]",
                "binaries[1]",
                "binaries[2].platform",
                "binaries[3].platform"
            ],
            "{found:?}"
        );
        assert!(
            found[2].1.contains("an executable for linux/amd64, given for linux/arm64"),
            "{found:?}"
        );
        assert!(found[3].1.contains("not an ELF executable"), "{found:?}");
        assert!(found[4].1.contains("given twice"), "{found:?}");
    }

    #[test]
    fn agent_releases_only_go_forward() {
        assert!(forward_only("1.0.0", None).is_ok());
        assert!(forward_only("1.10.0", Some("1.9.0")).is_ok());
        let err = forward_only("1.2.0", Some("1.2.0")).unwrap_err().to_string();
        assert!(err.contains("fleet-agent@1.2.0 exists and 1.2.0 is not newer"), "{err}");
        assert!(forward_only("1.2.0-rc.1", Some("1.2.0")).is_err());
    }
}
