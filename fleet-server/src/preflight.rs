//! Pre-flight checks (pure): can this device run this release? Run before a rollout or a pin
//! sends anything, so a fleet manager fixes the plan instead of discovering failures in wave 3.
//!
//! A device *cannot satisfy* a release when its architecture has no image, its inventory lacks
//! hardware a service requests, its `[policy]` refuses what a service asks (privileges, host
//! namespaces, device nodes, host paths: [`fleet_proto::policy`], the rule its agent applies),
//! the services' memory limits add up to more than it has, or the images do not fit its
//! engine's disk. Without an inventory (an agent that has not reported
//! one) only what is known is checked, and the gap is said.

use fleet_proto::{Inventory, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::devices::DeviceRecord;
use crate::releases::ReleaseRecord;
use crate::units::bytes;

/// What pre-flight found for one device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceCheck {
    /// Why the device cannot run the release; empty if it can (as far as is known).
    pub unsatisfiable: Vec<String>,
    /// What could not be checked.
    pub unchecked: Vec<String>,
}

impl DeviceCheck {
    /// Whether nothing known stands in the way.
    pub fn satisfiable(&self) -> bool {
        self.unsatisfiable.is_empty()
    }
}

/// Where the engine keeps images, to find the disk they land on.
const ENGINE_ROOT: &str = "/var/lib/docker";

/// An agent release: the device's platform needs a binary, and its agent must be one that
/// updates itself (it reports its agent versions).
fn check_agent(
    record: &DeviceRecord,
    inv: &Inventory,
    binaries: &crate::releases::AgentBinaries,
) -> DeviceCheck {
    let mut out = DeviceCheck::default();
    if crate::releases::agent_binary_for(binaries, &inv.arch).is_none() {
        let has: Vec<&str> = binaries.binaries.iter().map(|b| b.platform.as_str()).collect();
        out.unsatisfiable.push(format!(
            "no agent binary for its platform {} ({}); the release has {}",
            fleet_oci::Platform::for_rust_arch(&inv.arch),
            inv.arch,
            has.join(", ")
        ));
    }
    match record.agent_versions() {
        None if record.last_report.is_some() => out.unsatisfiable.push(format!(
            "its agent ({}) predates self-update: upgrade its package once",
            record.agent_version.as_deref().unwrap_or("unknown version")
        )),
        None => out.unchecked.push("it has not reported its agent versions yet".to_owned()),
        Some(_) => {}
    }
    out
}

/// A refusal by the device's `[policy]`, naming the service instead of its index:
/// `service tools: security.cap_add[0]: CAP_SYS_ADMIN is beyond ...`.
fn policy_refusal(spec: &fleet_proto::ReleaseSpec, e: &fleet_proto::SpecError) -> String {
    let named = e.path.strip_prefix("services[").and_then(|rest| {
        let (index, field) = rest.split_once("].")?;
        let svc = spec.services.get(index.parse::<usize>().ok()?)?;
        Some(format!("service {}: {field}", svc.name))
    });
    format!("{}: {}", named.unwrap_or_else(|| e.path.clone()), e.reason)
}

/// Checks `release` against what the server knows of the device.
pub fn check(
    record: &DeviceRecord,
    inventory: Option<&Inventory>,
    release: &ReleaseRecord,
    _now: UnixMillis,
) -> DeviceCheck {
    let mut out = DeviceCheck::default();
    let Some(inv) = inventory else {
        out.unchecked.push(format!(
            "{} has not reported its inventory yet: architecture, hardware, memory and disk are not checked",
            record.id
        ));
        return out;
    };
    if let Some(binaries) = &release.agent {
        return check_agent(record, inv, binaries);
    }
    let platform = fleet_oci::Platform::for_rust_arch(&inv.arch).to_string();
    if release.images.is_empty() && !release.spec.services.is_empty() {
        out.unchecked.push(
            "the release was given as JSON, so its images' platforms and sizes are unknown"
                .to_owned(),
        );
    }
    for image in &release.images {
        if image.resolved.platform_for(&inv.arch).is_none() {
            let offered: Vec<String> = image
                .resolved
                .platforms
                .iter()
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            out.unsatisfiable.push(format!(
                "service {}: image {} has no {platform} variant (it has {})",
                image.service,
                image.reference,
                offered.join(", ")
            ));
        }
    }
    for service in &release.spec.services {
        for request in &service.hardware {
            if let Some(why) = inv.unmet(request) {
                out.unsatisfiable.push(format!("service {}: {why}", service.name));
            }
        }
    }
    match &inv.policy {
        Some(policy) => out.unsatisfiable.extend(
            policy.refusals(&release.spec).iter().map(|e| policy_refusal(&release.spec, e)),
        ),
        None if release.spec.services.is_empty() => {}
        None => out.unchecked.push(
            "its agent does not report its [policy] (an older version): privileges, host namespaces, device nodes and host paths are judged on the device"
                .to_owned(),
        ),
    }
    let memory: u64 = release.spec.services.iter().filter_map(|s| s.resources.memory_bytes).sum();
    if inv.memory_bytes > 0 && memory > inv.memory_bytes {
        out.unsatisfiable.push(format!(
            "memory limits add up to {}, the device has {}",
            bytes(memory),
            bytes(inv.memory_bytes)
        ));
    }
    if let Some(needed) = release.download_bytes(&inv.arch) {
        let disk = inv
            .disks
            .iter()
            .filter(|d| ENGINE_ROOT.starts_with(d.mount.trim_end_matches('/')) || d.mount == "/")
            .max_by_key(|d| d.mount.len());
        match disk {
            Some(d) if needed > d.available_bytes => out.unsatisfiable.push(format!(
                "images need {} to download, {} is free on {}",
                bytes(needed),
                bytes(d.available_bytes),
                d.mount
            )),
            Some(_) => {}
            None => out.unchecked.push("no disk of the engine in the inventory".to_owned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fleet_proto::inventory::Disk;
    use fleet_proto::release::{GpuKind, GpuSelect, HardwareRequest};
    use fleet_proto::{samples, DeviceId, ServerKey};

    use super::*;
    use crate::devices::CertificateInfo;
    use crate::releases::{ImageInfo, PlatformImage, ResolvedImage};

    fn device() -> DeviceRecord {
        DeviceRecord::enrolled(
            DeviceId::new("robot-7").unwrap(),
            BTreeMap::new(),
            CertificateInfo { serial: "01".into(), not_after: UnixMillis(0) },
            UnixMillis(0),
        )
    }

    fn release(arches: &[&str], bytes_each: u64) -> ReleaseRecord {
        let mut spec = samples::release();
        spec.services.truncate(1);
        spec.services[0].resources.memory_bytes = Some(512 << 20);
        spec.services[0].hardware =
            vec![HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::Count(1) }];
        let images = vec![ImageInfo {
            service: spec.services[0].name.to_string(),
            reference: "registry/app:1".into(),
            resolved: ResolvedImage {
                image: spec.services[0].image.clone(),
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                platforms: arches
                    .iter()
                    .map(|a| PlatformImage {
                        os: "linux".into(),
                        architecture: (*a).into(),
                        variant: None,
                        digest: format!("sha256:{}", "1".repeat(64)),
                        download_bytes: bytes_each,
                    })
                    .collect(),
            },
        }];
        ReleaseRecord::new(spec, &ServerKey::from_seed(&[1; 32]), None, images, UnixMillis(0), "t")
    }

    fn inventory(arch: &str, memory: u64, free: u64) -> Inventory {
        Inventory {
            arch: arch.into(),
            memory_bytes: memory,
            disks: vec![
                Disk { mount: "/".into(), total_bytes: free * 2, available_bytes: free },
                Disk { mount: "/boot".into(), total_bytes: 1 << 30, available_bytes: 1 << 30 },
            ],
            policy: Some(fleet_proto::policy::DevicePolicy::default()),
            ..Inventory::default()
        }
    }

    #[test]
    fn every_reason_a_device_cannot_run_a_release_is_named() {
        let check = check(
            &device(),
            Some(&inventory("aarch64", 256 << 20, 10 << 20)),
            &release(&["amd64"], 100 << 20),
            UnixMillis(0),
        );
        assert_eq!(check.unsatisfiable.len(), 3, "{check:?}");
        assert!(check.unsatisfiable[0].contains("has no linux/arm64 variant (it has linux/amd64)"));
        assert!(check.unsatisfiable[1].contains("gpu nvidia x1 not present"));
        assert_eq!(check.unsatisfiable[2], "memory limits add up to 512 MB, the device has 256 MB");
        assert!(check.unchecked.is_empty(), "no size for arm64: the disk is not judged");
    }

    #[test]
    fn a_device_that_has_it_all_is_satisfiable_and_disk_is_judged_on_the_engines_mount() {
        let mut inv = inventory("aarch64", 8 << 30, 50 << 20);
        inv.gpus.push(fleet_proto::inventory::Gpu {
            kind: GpuKind::Nvidia,
            id: "0".into(),
            model: "x".into(),
            dev_paths: vec![],
            driver_version: None,
        });
        let ok = check(&device(), Some(&inv), &release(&["arm64"], 40 << 20), UnixMillis(0));
        assert!(ok.satisfiable(), "{ok:?}");
        let full = check(&device(), Some(&inv), &release(&["arm64"], 60 << 20), UnixMillis(0));
        assert_eq!(full.unsatisfiable, ["images need 60 MB to download, 50 MB is free on /"]);
    }

    #[test]
    fn an_agent_release_needs_a_binary_for_the_platform_and_an_agent_that_updates_itself() {
        let binaries = crate::releases::AgentBinaries {
            version: "2.0.0".into(),
            repository: "r/fleet/agent".into(),
            index: format!("sha256:{}", "0".repeat(64)),
            deadline_secs: 120,
            binaries: vec![crate::releases::AgentBinary {
                platform: "linux/arm64".into(),
                digest: format!("sha256:{}", "1".repeat(64)),
                size: 1,
            }],
        };
        let key = ServerKey::from_seed(&[1; 32]);
        let agent = ReleaseRecord::agent(binaries, &key, UnixMillis(0), "t").unwrap();
        let mut d = device();
        let inv = inventory("aarch64", 1 << 30, 1 << 30);
        let fresh = check(&d, Some(&inv), &agent, UnixMillis(0));
        assert!(fresh.satisfiable() && fresh.unchecked.len() == 1, "{fresh:?}");
        // An old agent: it reports, but no agent versions.
        d.last_report = Some(fleet_proto::StateReport { agent: None, ..samples::report() });
        d.agent_version = Some("0.0.9".into());
        let old = check(&d, Some(&inv), &agent, UnixMillis(0));
        assert_eq!(
            old.unsatisfiable,
            ["its agent (0.0.9) predates self-update: upgrade its package once"]
        );
        let armv7 = check(&d, Some(&inventory("arm", 1 << 30, 1 << 30)), &agent, UnixMillis(0));
        assert!(
            armv7.unsatisfiable[0].starts_with(
                "no agent binary for its platform linux/arm/v7 (arm); the release has linux/arm64"
            ),
            "{armv7:?}"
        );
    }

    #[test]
    fn the_devices_policy_is_applied_as_its_agent_will_and_named_by_service() {
        use fleet_proto::policy::{DevicePolicy, Namespace};
        let mut escaping = release(&["arm64"], 1);
        let svc = &mut escaping.spec.services[0];
        svc.hardware.clear();
        svc.security.cap_add = vec!["SYS_ADMIN".into()];
        svc.host_namespaces = vec![Namespace::Pid];
        let mut inv = inventory("aarch64", 8 << 30, 1 << 30);
        let refused = check(&device(), Some(&inv), &escaping, UnixMillis(0));
        let name = &escaping.spec.services[0].name;
        assert_eq!(refused.unsatisfiable.len(), 2, "{refused:?}");
        assert!(refused.unsatisfiable[0].starts_with(&format!(
            "service {name}: security.cap_add[0]: CAP_SYS_ADMIN is beyond Docker's default set"
        )));
        assert!(refused.unsatisfiable[1].contains("add \"pid\" to [policy] allow_host_namespaces"));
        inv.policy = Some(DevicePolicy {
            allowed_capabilities: vec!["SYS_ADMIN".into()],
            allow_host_namespaces: vec![Namespace::Pid],
            ..DevicePolicy::default()
        });
        assert!(check(&device(), Some(&inv), &escaping, UnixMillis(0)).satisfiable());
        // An agent from before [policy] reported: the device judges alone, and that is said.
        inv.policy = None;
        let old = check(&device(), Some(&inv), &escaping, UnixMillis(0));
        assert!(old.satisfiable() && old.unchecked[0].contains("does not report its [policy]"));
    }

    #[test]
    fn without_an_inventory_nothing_is_refused_and_the_gap_is_said() {
        let check = check(&device(), None, &release(&["amd64"], 1), UnixMillis(0));
        assert!(check.satisfiable());
        assert!(check.unchecked[0].contains("has not reported its inventory"));
    }
}
