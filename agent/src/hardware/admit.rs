//! Pure: whether a release may run on this device at all, decided before anything is stopped.
//!
//! [`admit`] maps every service's hardware ([`super::map::map_service`]) and applies the
//! device-level rules below, one small function each, returning every problem at once. What
//! [`ReleaseSpec::validate`] already checks (reservation ≤ limit, swap ≥ limit, CPU quota,
//! real-time priority range, cpuset syntax) is not checked again: the agent validates a
//! release before it admits it.

use std::collections::BTreeMap;
use std::fmt;

use fleet_proto::policy::{self, capability, DevicePolicy, CAPABILITIES};
use fleet_proto::release::{ReleaseSpec, ServiceSpec, SpecError};
use fleet_proto::ServiceName;

use super::{HardwareMapping, HardwarePolicy, HostHardware};

/// Admission control: every service's hardware maps, the memory limits fit, cpusets name
/// online CPUs, privileges, host namespaces and device nodes are allowed by `[policy]`
/// ([`fleet_proto::policy`], the rule the server's pre-flight check applies too). Returns each service's mapping, or every problem.
pub fn admit(
    release: &ReleaseSpec,
    hw: &HostHardware,
    policy: &HardwarePolicy,
) -> Result<BTreeMap<ServiceName, HardwareMapping>, Vec<SpecError>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, svc) in release.services.iter().enumerate() {
        let at = format!("services[{i}]");
        match super::map::map_service(svc, hw, &at) {
            Ok(m) => {
                out.insert(svc.name.clone(), m);
            }
            Err(e) => errors.extend(e),
        }
        errors.extend(memory_minimums(svc, &at));
        errors.extend(shm_fits(svc, hw, &at));
        errors.extend(cpuset_online(svc, hw, &at));
        errors.extend(realtime_allowed(svc, &policy.policy, &at));
        errors.extend(policy::privileges(svc, &policy.policy, &at));
        errors.extend(policy::host_namespaces(svc, &policy.policy, &at));
        errors.extend(devices_allowed(svc, hw, &policy.policy, &at));
        errors.extend(capability_names(svc, &at));
        errors.extend(ulimits_valid(svc, &policy.policy, &at));
        errors.extend(pids_limit(svc, &at));
        errors.extend(user_valid(svc, &at));
    }
    errors.extend(memory_fits(release, hw, policy));
    errors.extend(realtime_budget(release, hw, &mut out));
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Docker refuses memory limits and reservations below this (`linuxMinMemory`).
const DOCKER_MIN_MEMORY: u64 = 6 * MIB;

fn error(path: String, reason: String) -> SpecError {
    SpecError { path, reason }
}

/// The memory limits, plus the agent's reserve, fit the device. Services without a limit are
/// not counted: they take what is free.
fn memory_fits(
    release: &ReleaseSpec,
    hw: &HostHardware,
    policy: &HardwarePolicy,
) -> Option<SpecError> {
    let device = hw.inventory.memory_bytes;
    let limited: Vec<(&ServiceSpec, u64)> =
        release.services.iter().filter_map(|s| Some((s, s.resources.memory_bytes?))).collect();
    if device == 0 || limited.is_empty() {
        return None;
    }
    let total: u128 = limited.iter().map(|(_, m)| u128::from(*m)).sum();
    if total + u128::from(policy.memory_reserve_bytes) <= u128::from(device) {
        return None;
    }
    let each: Vec<String> = limited
        .iter()
        .map(|(s, m)| format!("{} {}", s.name.as_str(), Bytes(u128::from(*m))))
        .collect();
    Some(error(
        "services[*].resources.memory_bytes".to_owned(),
        format!(
            "memory limits total {} ({}) plus the agent's reserve of {} exceed this device's {}",
            Bytes(total),
            each.join(", "),
            Bytes(u128::from(policy.memory_reserve_bytes)),
            Bytes(u128::from(device)),
        ),
    ))
}

/// Docker's floor for memory limits and reservations.
fn memory_minimums(svc: &ServiceSpec, at: &str) -> Vec<SpecError> {
    let r = &svc.resources;
    [("memory_bytes", r.memory_bytes, "limit"), ("memory_reservation_bytes", r.memory_reservation_bytes, "reservation")]
        .into_iter()
        .filter_map(|(field, value, what)| {
            let v = value?;
            (v < DOCKER_MIN_MEMORY).then(|| {
                error(
                    format!("{at}.resources.{field}"),
                    format!(
                        "a memory {what} of {} is below the engine's minimum of {}; leave it out for no {what}",
                        Bytes(u128::from(v)),
                        Bytes(u128::from(DOCKER_MIN_MEMORY))
                    ),
                )
            })
        })
        .collect()
}

/// `/dev/shm` is memory: it cannot be larger than the device's.
fn shm_fits(svc: &ServiceSpec, hw: &HostHardware, at: &str) -> Option<SpecError> {
    let device = hw.inventory.memory_bytes;
    let shm = svc.resources.shm_bytes?;
    (device != 0 && shm > device).then(|| {
        error(
            format!("{at}.resources.shm_bytes"),
            format!(
                "a /dev/shm of {} is larger than this device's memory of {}",
                Bytes(u128::from(shm)),
                Bytes(u128::from(device))
            ),
        )
    })
}

/// Every CPU of the cpuset is online. Skipped when the online list is unknown, and when the
/// cpuset does not parse ([`ReleaseSpec::validate`] reports that).
fn cpuset_online(svc: &ServiceSpec, hw: &HostHardware, at: &str) -> Option<SpecError> {
    let wanted = CpuList::parse(svc.resources.cpuset.as_deref()?)?;
    let online = CpuList::parse(&hw.inventory.cpus.online)?;
    let missing = wanted.without(&online);
    if missing.is_empty() {
        return None;
    }
    let which = if missing.is_single() {
        format!("CPU {missing} is")
    } else {
        format!("CPUs {missing} are")
    };
    Some(error(
        format!("{at}.resources.cpuset"),
        format!("{which} not online on this device (online: {online})"),
    ))
}

const NOT_REALTIME: &str =
    "real-time scheduling is not allowed by this device's configuration ([policy] allow_realtime = false)";

/// Real-time priority, `SYS_NICE` or an `rtprio` ulimit only where the agent allows real-time.
fn realtime_allowed(svc: &ServiceSpec, policy: &DevicePolicy, at: &str) -> Vec<SpecError> {
    if policy.allow_realtime {
        return vec![];
    }
    let mut errors = Vec::new();
    if svc.resources.realtime_priority.is_some() {
        errors.push(error(format!("{at}.resources.realtime_priority"), NOT_REALTIME.to_owned()));
    }
    for (j, cap) in svc.security.cap_add.iter().enumerate() {
        if capability(cap) == "SYS_NICE" {
            errors.push(error(format!("{at}.security.cap_add[{j}]"), NOT_REALTIME.to_owned()));
        }
    }
    errors
}

/// On a kernel with real-time group scheduling, gives each real-time service an equal share of
/// the engine's real-time budget (the children of a cgroup may not exceed it), or refuses them
/// all when the engine has none: without it their SCHED_FIFO calls would fail with EPERM at
/// run time, on the robot, after the update was declared healthy.
fn realtime_budget(
    release: &ReleaseSpec,
    hw: &HostHardware,
    mappings: &mut BTreeMap<ServiceName, HardwareMapping>,
) -> Vec<SpecError> {
    let Some(budget) = hw.engine_rt_runtime_us else { return vec![] };
    let realtime: Vec<(usize, &ServiceSpec)> = release
        .services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.resources.realtime_priority.is_some())
        .collect();
    if realtime.is_empty() {
        return vec![];
    }
    if budget == 0 {
        return realtime
            .iter()
            .map(|(i, _)| {
                error(
                    format!("services[{i}].resources.realtime_priority"),
                    "this kernel schedules real-time tasks by cgroup and the container engine has no real-time CPU time to give (its cgroup's cpu.rt_runtime_us is 0); start dockerd with --cpu-rt-runtime=950000 (or \"cpu-rt-runtime\": 950000 in daemon.json)".to_owned(),
                )
            })
            .collect();
    }
    let share = budget / realtime.len() as u64;
    for (_, svc) in realtime {
        if let Some(m) = mappings.get_mut(&svc.name) {
            m.cpu_rt_runtime_us = i64::try_from(share).ok();
        }
    }
    vec![]
}

/// What a character device node gives a container, if it gives it the host: by major and
/// minor number (`devices.txt`), so a link or a renamed node cannot hide it.
fn host_granting(major: u32, minor: u32) -> Option<&'static str> {
    match (major, minor) {
        (1, 1) => Some("all physical memory (/dev/mem)"),
        (1, 2) => Some("kernel memory (/dev/kmem)"),
        (1, 4) => Some("the I/O ports (/dev/port)"),
        (1, 11) => Some("the kernel log, writable (/dev/kmsg)"),
        (90, _) => Some("raw flash (an MTD device)"),
        (4, 0..=63) => Some("a virtual console"),
        (5, _) => Some("the controlling terminal, the console or the pty multiplexer"),
        (136..=143, _) => Some("a pseudo-terminal"),
        _ => None,
    }
}

/// Device nodes asked for by path (`devices:` in Compose) that give a container the host,
/// only where `[policy] allowed_devices` lists them (or privileged containers are allowed).
/// Serial ports (`ttyS*`, `ttyUSB*`, ...) and what the inventory classifies are not among them.
fn devices_allowed(
    svc: &ServiceSpec,
    hw: &HostHardware,
    policy: &DevicePolicy,
    at: &str,
) -> Vec<SpecError> {
    // By number where the node exists, so a link or a new name cannot hide it; by name
    // otherwise, as the server judged it.
    policy::devices_judged(svc, policy, at, |host_path| {
        let node_path = hw.links.get(host_path).map_or(host_path, String::as_str);
        match hw.nodes.get(node_path) {
            Some(node) => host_granting(node.major, node.minor),
            None => policy::host_granting_path(host_path),
        }
    })
}

/// Every name in `cap_add` and `cap_drop` is a Linux capability (or `ALL`).
fn capability_names(svc: &ServiceSpec, at: &str) -> Vec<SpecError> {
    let lists = [("cap_add", &svc.security.cap_add), ("cap_drop", &svc.security.cap_drop)];
    let mut errors = Vec::new();
    for (field, list) in lists {
        for (j, name) in list.iter().enumerate() {
            let cap = capability(name);
            if cap != "ALL" && CAPABILITIES.binary_search(&cap.as_str()).is_err() {
                errors.push(error(
                    format!("{at}.security.{field}[{j}]"),
                    format!(
                        "{name:?} is not a Linux capability; write names like SYS_NICE or NET_ADMIN (see capabilities(7))"
                    ),
                ));
            }
        }
    }
    errors
}

/// `ulimit` resources the engine knows (`setrlimit(2)`).
const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// The highest real-time priority.
const MAX_RTPRIO: i64 = 99;

/// Known names, each once; -1 (unlimited) or more; soft ≤ hard; `rtprio` ≤ 99, and none at
/// all where real-time is not allowed (it lets a process take SCHED_FIFO without SYS_NICE).
fn ulimits_valid(svc: &ServiceSpec, policy: &DevicePolicy, at: &str) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (j, u) in svc.resources.ulimits.iter().enumerate() {
        let path = format!("{at}.resources.ulimits[{j}]");
        let mut err = |reason: String| errors.push(error(path.clone(), reason));
        if ULIMITS.binary_search(&u.name.as_str()).is_err() {
            err(format!("{:?} is not a ulimit; use one of {}", u.name, ULIMITS.join(", ")));
            continue;
        }
        if let Some(first) = seen.insert(u.name.as_str(), j) {
            err(format!("{} is set twice (also ulimits[{first}])", u.name));
        }
        if u.soft < -1 || u.hard < -1 {
            err(format!(
                "{}: limits are 0 or more, or -1 for unlimited (got soft {}, hard {})",
                u.name, u.soft, u.hard
            ));
            continue;
        }
        // -1 is unlimited, above every number.
        let above = |v: i64| if v == -1 { i128::MAX } else { i128::from(v) };
        if above(u.soft) > above(u.hard) {
            err(format!(
                "{}: the soft limit {} exceeds the hard limit {}",
                u.name,
                Limit(u.soft),
                Limit(u.hard)
            ));
        }
        if u.name == "rtprio" {
            if u.soft > MAX_RTPRIO || u.hard > MAX_RTPRIO {
                err(format!(
                    "rtprio {} exceeds {MAX_RTPRIO}, the highest real-time priority",
                    u.soft.max(u.hard)
                ));
            } else if !policy.allow_realtime && (u.soft != 0 || u.hard != 0) {
                err(NOT_REALTIME.to_owned());
            }
        }
    }
    errors
}

/// `pids: 0` would mean no limit at all to the engine.
fn pids_limit(svc: &ServiceSpec, at: &str) -> Option<SpecError> {
    (svc.resources.pids == Some(0)).then(|| {
        error(
            format!("{at}.resources.pids"),
            "a limit of 0 processes means no limit to the engine (it treats 0 or less as unlimited); set at least 1, or leave pids out for no limit".to_owned(),
        )
    })
}

/// `user` is `user` or `user:group`, neither part empty, no whitespace.
fn user_valid(svc: &ServiceSpec, at: &str) -> Option<SpecError> {
    let user = svc.security.user.as_deref()?;
    let reason = if user.is_empty() {
        "is empty; leave user out to run as the image's user, or give user[:group]".to_owned()
    } else if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!("{user:?} holds whitespace; give user[:group], e.g. 1000:1000")
    } else if user.split(':').count() > 2 {
        format!("{user:?} has more than one ':'; give user[:group], e.g. 1000:1000")
    } else if user.split(':').any(str::is_empty) {
        format!("{user:?} has an empty part; give user[:group], e.g. 1000:1000")
    } else {
        return None;
    };
    Some(error(format!("{at}.security.user"), reason))
}

/// A ulimit value, `unlimited` for -1.
struct Limit(i64);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            -1 => f.write_str("unlimited (-1)"),
            n => write!(f, "{n}"),
        }
    }
}

/// A byte count for people: `7.5 GiB`, `256 MiB`, `512 bytes`.
struct Bytes(u128);

impl fmt::Display for Bytes {
    #[allow(clippy::cast_precision_loss)] // one decimal shown
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let (unit, name) = if b >= u128::from(GIB) {
            return write!(f, "{:.1} GiB", b as f64 / GIB as f64);
        } else if b >= u128::from(MIB) {
            (MIB, "MiB")
        } else if b >= u128::from(KIB) {
            (KIB, "KiB")
        } else {
            return write!(f, "{b} bytes");
        };
        let unit = u128::from(unit);
        if b % unit == 0 {
            write!(f, "{} {name}", b / unit)
        } else {
            write!(f, "{:.1} {name}", b as f64 / unit as f64)
        }
    }
}

/// A kernel CPU list (`0-3,6`) as sorted, merged, inclusive ranges: `0-999999999` is one
/// range, never a billion entries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuList(Vec<(u32, u32)>);

impl CpuList {
    /// Parses the kernel's syntax; `None` if it is not a CPU list (a reversed range included).
    fn parse(s: &str) -> Option<CpuList> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?),
                None => {
                    let n = part.parse::<u32>().ok()?;
                    (n, n)
                }
            };
            if lo > hi {
                return None;
            }
            ranges.push((lo, hi));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Some(CpuList(merged))
    }

    /// The CPUs of `self` not in `other`.
    fn without(&self, other: &CpuList) -> CpuList {
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            // The part of lo..=hi not yet covered; None once all of it is.
            let mut rest = Some(lo);
            for &(olo, ohi) in &other.0 {
                let Some(from) = rest else { break };
                if ohi < from {
                    continue;
                }
                if olo > hi {
                    break;
                }
                if olo > from {
                    out.push((from, olo - 1));
                }
                rest = ohi.checked_add(1).filter(|next| *next <= hi);
            }
            if let Some(from) = rest {
                out.push((from, hi));
            }
        }
        CpuList(out)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn is_single(&self) -> bool {
        matches!(self.0.as_slice(), [(lo, hi)] if lo == hi)
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fleet_proto::release::{
        GpuKind, GpuSelect, HardwareRequest, ImageRef, NetworkMode, ResourceLimits,
        SecurityOptions, SerialSelector, Ulimit,
    };
    use fleet_proto::ReleaseId;
    use proptest::prelude::*;

    use super::super::fixtures::*;
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn svc(name: &str) -> ServiceSpec {
        ServiceSpec::new(
            ServiceName::new(name).unwrap(),
            ImageRef::parse(&format!("demo/{name}@sha256:{HEX}")).unwrap(),
        )
    }

    fn with_resources(name: &str, resources: ResourceLimits) -> ServiceSpec {
        ServiceSpec { resources, ..svc(name) }
    }

    fn with_security(name: &str, security: SecurityOptions) -> ServiceSpec {
        ServiceSpec { security, ..svc(name) }
    }

    fn release(services: Vec<ServiceSpec>) -> ReleaseSpec {
        ReleaseSpec {
            id: ReleaseId::new("robot@1").unwrap(),
            app: "robot".into(),
            version: "1".into(),
            services,
        }
    }

    fn policy() -> HardwarePolicy {
        HardwarePolicy::default()
    }

    /// The default configuration with `[policy]` changed.
    fn allowing(policy: DevicePolicy) -> HardwarePolicy {
        HardwarePolicy { policy, ..HardwarePolicy::default() }
    }

    /// The single error, asserting its path and that its reason holds `part`.
    #[track_caller]
    fn refused(
        result: Result<BTreeMap<ServiceName, HardwareMapping>, Vec<SpecError>>,
        path: &str,
        part: &str,
    ) -> String {
        let errors = result.unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, path, "{errors:?}");
        assert!(errors[0].reason.contains(part), "{:?} lacks {part:?}", errors[0].reason);
        errors[0].reason.clone()
    }

    #[test]
    fn realtime_services_share_the_engines_realtime_budget_or_are_refused_without_one() {
        let rt = |name: &str| {
            with_resources(
                name,
                ResourceLimits { realtime_priority: Some(80), ..ResourceLimits::default() },
            )
        };
        let two = release(vec![rt("ctl"), rt("imu"), svc("ui")]);
        // cgroup v2, or no real-time group scheduling: nothing to give.
        let plain = admit(&two, &rpi5(), &policy()).unwrap();
        assert!(plain.values().all(|m| m.cpu_rt_runtime_us.is_none()));
        // RT group scheduling with dockerd --cpu-rt-runtime=950000: half each, none for ui.
        let budget = HostHardware { engine_rt_runtime_us: Some(950_000), ..rpi5() };
        let shared = admit(&two, &budget, &policy()).unwrap();
        let share = |n: &str| shared[&ServiceName::new(n).unwrap()].cpu_rt_runtime_us;
        assert_eq!((share("ctl"), share("imu"), share("ui")), (Some(475_000), Some(475_000), None));
        // The engine has no real-time time: SCHED_FIFO would fail with EPERM on the robot.
        let none = HostHardware { engine_rt_runtime_us: Some(0), ..rpi5() };
        refused(
            admit(&release(vec![rt("ctl"), svc("ui")]), &none, &policy()),
            "services[0].resources.realtime_priority",
            "--cpu-rt-runtime=950000",
        );
        assert!(admit(&release(vec![svc("ui")]), &none, &policy()).is_ok());
    }

    fn cpuset(set: &str) -> ResourceLimits {
        ResourceLimits { cpuset: Some(set.into()), ..ResourceLimits::default() }
    }

    fn memory(bytes: u64) -> ResourceLimits {
        ResourceLimits { memory_bytes: Some(bytes), ..ResourceLimits::default() }
    }

    fn ulimit(name: &str, soft: i64, hard: i64) -> ResourceLimits {
        ResourceLimits {
            ulimits: vec![Ulimit { name: name.into(), soft, hard }],
            ..ResourceLimits::default()
        }
    }

    #[test]
    fn release_without_hardware_is_admitted_with_empty_mappings() {
        let r = release(vec![svc("web"), svc("db")]);
        for hw in [bare_vm(), rpi5(), jetson_orin(), x86_nvidia()] {
            let out = admit(&r, &hw, &policy()).unwrap();
            assert_eq!(out.len(), 2);
            assert!(out.values().all(HardwareMapping::is_empty), "{out:?}");
        }
    }

    #[test]
    fn mappings_are_returned_per_service() {
        let gps = ServiceSpec {
            hardware: vec![HardwareRequest::Serial {
                port: SerialSelector::ById(FTDI_BY_ID.into()),
                container_path: "/dev/gps".into(),
            }],
            ..svc("gps")
        };
        let out = admit(&release(vec![gps, svc("web")]), &rpi5(), &policy()).unwrap();
        assert_eq!(out[&ServiceName::new("gps").unwrap()].devices.len(), 1);
        assert!(out[&ServiceName::new("web").unwrap()].is_empty());
    }

    #[test]
    fn hardware_errors_name_the_service() {
        let cam = ServiceSpec {
            hardware: vec![HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::All }],
            ..svc("cam")
        };
        refused(
            admit(&release(vec![svc("web"), cam]), &rpi5(), &policy()),
            "services[1].hardware[0]",
            "gpu nvidia not present",
        );
    }

    #[test]
    fn cpus_outside_the_online_set_are_refused() {
        let reason = refused(
            admit(&release(vec![with_resources("rt", cpuset("0-999"))]), &rpi5(), &policy()),
            "services[0].resources.cpuset",
            "",
        );
        assert_eq!(reason, "CPUs 4-999 are not online on this device (online: 0-3)");
        refused(
            admit(&release(vec![with_resources("rt", cpuset("1,5,3"))]), &rpi5(), &policy()),
            "services[0].resources.cpuset",
            "CPU 5 is not online",
        );
        // The isolated CPU, as a real-time loop would pin to it.
        assert!(
            admit(&release(vec![with_resources("rt", cpuset("3"))]), &rpi5(), &policy()).is_ok()
        );
    }

    #[test]
    fn a_huge_cpuset_is_one_range_not_an_allocation() {
        refused(
            admit(&release(vec![with_resources("rt", cpuset("0-999999999"))]), &rpi5(), &policy()),
            "services[0].resources.cpuset",
            "CPUs 4-999999999 are not online",
        );
        refused(
            admit(&release(vec![with_resources("rt", cpuset("0-4294967295"))]), &rpi5(), &policy()),
            "services[0].resources.cpuset",
            "CPUs 4-4294967295",
        );
    }

    #[test]
    fn cpu_lists_parse_merge_and_subtract() {
        let l = |s: &str| CpuList::parse(s).unwrap();
        assert_eq!(l("3,0-1,2").to_string(), "0-3");
        assert_eq!(l(" 0-3,6 ").to_string(), "0-3,6");
        assert_eq!(l("0-3\n").to_string(), "0-3");
        for bad in ["", "a", "3-1", "1,", "-1", "1-", "0-3,,4"] {
            assert_eq!(CpuList::parse(bad), None, "{bad}");
        }
        assert_eq!(l("0-10").without(&l("2-3,5,9-20")).to_string(), "0-1,4,6-8");
        assert_eq!(l("0-3").without(&l("0-3")).to_string(), "");
        assert_eq!(l("4294967295").without(&l("0-4294967295")).to_string(), "");
        assert_eq!(l("7").without(&l("0-3")).to_string(), "7");
    }

    #[test]
    fn unknown_online_set_skips_the_check() {
        let mut hw = rpi5();
        hw.inventory.cpus.online = String::new();
        assert!(
            admit(&release(vec![with_resources("rt", cpuset("0-999"))]), &hw, &policy()).is_ok()
        );
    }

    #[test]
    fn memory_limits_must_fit_with_the_reserve() {
        let three = (0..3).map(|i| with_resources(&format!("s{i}"), memory(3 * GIB))).collect();
        let reason = refused(
            admit(&release(three), &rpi5(), &policy()),
            "services[*].resources.memory_bytes",
            "",
        );
        assert_eq!(
            reason,
            "memory limits total 9.0 GiB (s0 3.0 GiB, s1 3.0 GiB, s2 3.0 GiB) plus the agent's reserve of 256 MiB exceed this device's 8.0 GiB"
        );
        let two = (0..2).map(|i| with_resources(&format!("s{i}"), memory(3 * GIB))).collect();
        assert!(admit(&release(two), &rpi5(), &policy()).is_ok());
        // Exactly full fits; a byte more does not.
        let full = vec![with_resources("a", memory(8 * GIB - (256 << 20)))];
        assert!(admit(&release(full), &rpi5(), &policy()).is_ok());
        let over = vec![with_resources("a", memory(8 * GIB - (256 << 20) + 1))];
        assert!(admit(&release(over), &rpi5(), &policy()).is_err());
        // Unknown device memory: not judged.
        let mut hw = rpi5();
        hw.inventory.memory_bytes = 0;
        assert!(
            admit(&release(vec![with_resources("a", memory(64 * GIB))]), &hw, &policy()).is_ok()
        );
    }

    #[test]
    fn memory_below_the_engine_minimum_is_refused() {
        refused(
            admit(&release(vec![with_resources("tiny", memory(MIB))]), &rpi5(), &policy()),
            "services[0].resources.memory_bytes",
            "a memory limit of 1 MiB is below the engine's minimum of 6 MiB",
        );
        let reservation =
            ResourceLimits { memory_reservation_bytes: Some(4 * KIB), ..ResourceLimits::default() };
        refused(
            admit(&release(vec![with_resources("tiny", reservation)]), &rpi5(), &policy()),
            "services[0].resources.memory_reservation_bytes",
            "reservation of 4 KiB",
        );
        assert!(admit(&release(vec![with_resources("ok", memory(6 * MIB))]), &rpi5(), &policy())
            .is_ok());
    }

    #[test]
    fn shm_larger_than_memory_is_refused() {
        let shm = ResourceLimits { shm_bytes: Some(5 * GIB), ..ResourceLimits::default() };
        refused(
            admit(&release(vec![with_resources("ml", shm)]), &bare_vm(), &policy()),
            "services[0].resources.shm_bytes",
            "a /dev/shm of 5.0 GiB is larger than this device's memory of 4.0 GiB",
        );
    }

    #[test]
    fn realtime_is_refused_where_not_allowed() {
        let strict = allowing(DevicePolicy {
            allow_realtime: false,
            allowed_capabilities: vec!["NET_ADMIN".into()],
            ..DevicePolicy::default()
        });
        let rt = ResourceLimits { realtime_priority: Some(80), ..ResourceLimits::default() };
        let r = release(vec![with_resources("ctl", rt)]);
        refused(
            admit(&r, &rpi5(), &strict),
            "services[0].resources.realtime_priority",
            "real-time scheduling is not allowed by this device's configuration ([policy] allow_realtime = false)",
        );
        assert!(admit(&r, &rpi5(), &policy()).is_ok());
        for cap in ["SYS_NICE", "CAP_SYS_NICE", "cap_sys_nice"] {
            let nice = SecurityOptions {
                cap_add: vec!["NET_ADMIN".into(), cap.into()],
                ..Default::default()
            };
            refused(
                admit(&release(vec![with_security("ctl", nice)]), &rpi5(), &strict),
                "services[0].security.cap_add[1]",
                "allow_realtime = false",
            );
        }
        refused(
            admit(
                &release(vec![with_resources("ctl", ulimit("rtprio", 50, 50))]),
                &rpi5(),
                &strict,
            ),
            "services[0].resources.ulimits[0]",
            "allow_realtime = false",
        );
    }

    #[test]
    fn host_namespaces_need_the_policy_to_list_them() {
        use fleet_proto::policy::Namespace;
        use fleet_proto::release::NetworkMode;
        let sharing = |ns: Vec<Namespace>| {
            release(vec![ServiceSpec {
                host_namespaces: ns,
                network_mode: NetworkMode::Host,
                ..svc("tools")
            }])
        };
        // The host network by default (ROS 2 / DDS); pid, ipc and uts only when listed.
        assert!(admit(&sharing(vec![]), &rpi5(), &policy()).is_ok());
        refused(
            admit(&sharing(vec![Namespace::Pid]), &rpi5(), &policy()),
            "services[0].host_namespaces[0]",
            "add \"pid\" to [policy] allow_host_namespaces",
        );
        let no_network =
            allowing(DevicePolicy { allow_host_namespaces: vec![], ..DevicePolicy::default() });
        refused(
            admit(&sharing(vec![]), &rpi5(), &no_network),
            "services[0].network_mode",
            "\"network\"",
        );
        let pid = allowing(DevicePolicy {
            allow_host_namespaces: vec![Namespace::Network, Namespace::Pid],
            ..DevicePolicy::default()
        });
        assert!(admit(&sharing(vec![Namespace::Pid]), &rpi5(), &pid).is_ok());
        assert!(admit(&sharing(vec![Namespace::Ipc]), &rpi5(), &pid).is_err());
    }

    #[test]
    fn privileged_is_refused_where_not_allowed() {
        let privileged = SecurityOptions { privileged: true, ..Default::default() };
        let r = release(vec![with_security("root", privileged)]);
        refused(
            admit(&r, &rpi5(), &policy()),
            "services[0].security.privileged",
            "privileged containers are not allowed by this device's configuration ([policy] allow_privileged); request the hardware by name instead",
        );
        let lenient = allowing(DevicePolicy { allow_privileged: true, ..DevicePolicy::default() });
        assert!(admit(&r, &rpi5(), &lenient).is_ok());
        let all = SecurityOptions { cap_add: vec!["ALL".into()], ..Default::default() };
        let r = release(vec![with_security("root", all)]);
        refused(admit(&r, &rpi5(), &policy()), "services[0].security.cap_add[0]", "privileged");
        assert!(admit(&r, &rpi5(), &lenient).is_ok());
    }

    #[test]
    fn capability_names_are_checked() {
        let sec = SecurityOptions {
            cap_add: vec!["NET_ADMIN".into(), "CAP_SYS_RAWIO".into(), "SYS_NICENESS".into()],
            cap_drop: vec!["ALL".into(), "drop tables".into()],
            ..Default::default()
        };
        let allowing = allowing(DevicePolicy {
            allowed_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_RAWIO".into()],
            ..DevicePolicy::default()
        });
        let errors =
            admit(&release(vec![with_security("s", sec)]), &rpi5(), &allowing).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["services[0].security.cap_add[2]", "services[0].security.cap_drop[1]"]);
        assert!(errors[0].reason.contains("\"SYS_NICENESS\" is not a Linux capability"));
    }

    #[test]
    fn device_nodes_that_give_the_host_away_need_the_configuration_to_list_them() {
        let mut hw = rpi5();
        for (path, major, minor) in
            [("/dev/mem", 1, 1), ("/dev/kmsg", 1, 11), ("/dev/mtd0", 90, 0), ("/dev/tty1", 4, 1)]
        {
            hw.nodes.insert(path.into(), super::super::DeviceNode { major, minor, gid: 0 });
        }
        hw.nodes
            .insert("/dev/ttyS0".into(), super::super::DeviceNode { major: 4, minor: 64, gid: 20 });
        let asking = |path: &str| {
            let raw = HardwareRequest::Device {
                host_path: path.into(),
                container_path: String::new(),
                permissions: "rw".into(),
            };
            release(vec![ServiceSpec { hardware: vec![raw], ..svc("s") }])
        };
        for (path, what) in [
            ("/dev/mem", "all physical memory"),
            ("/dev/kmsg", "the kernel log"),
            ("/dev/mtd0", "raw flash"),
            ("/dev/tty1", "a virtual console"),
        ] {
            let reason =
                refused(admit(&asking(path), &hw, &policy()), "services[0].hardware[0]", what);
            assert!(
                reason.contains(&format!("[policy] allowed_devices lists \"{path}\"")),
                "{reason}"
            );
        }
        // A serial port on the same major is not a console; a listed node is mapped.
        assert!(admit(&asking("/dev/ttyS0"), &hw, &policy()).is_ok());
        assert!(admit(&asking("/dev/ttyUSB0"), &hw, &policy()).is_ok());
        let listing = allowing(DevicePolicy {
            allowed_devices: vec!["/dev/kmsg".into()],
            ..DevicePolicy::default()
        });
        assert!(admit(&asking("/dev/kmsg"), &hw, &listing).is_ok());
    }

    #[test]
    fn capabilities_beyond_dockers_default_set_need_the_configuration_to_allow_them() {
        let asking = |caps: &[&str]| {
            let sec = SecurityOptions {
                cap_add: caps.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            };
            release(vec![with_security("s", sec)])
        };
        // Each of these gives a container the host.
        for cap in ["SYS_ADMIN", "SYS_MODULE", "cap_dac_read_search", "SYS_RAWIO", "NET_ADMIN"] {
            let reason = refused(
                admit(&asking(&[cap]), &rpi5(), &policy()),
                "services[0].security.cap_add[0]",
                "[policy] allowed_capabilities",
            );
            assert!(reason.starts_with("CAP_"), "{reason}");
        }
        // Docker grants its default set anyway; the configuration and allow_privileged open the rest.
        assert!(
            admit(&asking(&["CHOWN", "NET_BIND_SERVICE", "cap_kill"]), &rpi5(), &policy()).is_ok()
        );
        let net_admin = allowing(DevicePolicy {
            allowed_capabilities: vec!["net_admin".into()],
            ..DevicePolicy::default()
        });
        assert!(admit(&asking(&["CAP_NET_ADMIN"]), &rpi5(), &net_admin).is_ok());
        assert!(admit(&asking(&["SYS_ADMIN"]), &rpi5(), &net_admin).is_err());
        let privileged =
            allowing(DevicePolicy { allow_privileged: true, ..DevicePolicy::default() });
        assert!(admit(&asking(&["SYS_ADMIN"]), &rpi5(), &privileged).is_ok());
    }

    #[test]
    fn capability_list_is_sorted_for_binary_search() {
        assert!(CAPABILITIES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(CAPABILITIES.len(), 41);
        assert!(ULIMITS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ulimits_are_checked() {
        let check = |limits: ResourceLimits, part: &str| {
            refused(
                admit(&release(vec![with_resources("s", limits)]), &rpi5(), &policy()),
                "services[0].resources.ulimits[0]",
                part,
            );
        };
        check(ulimit("nofiles", 1, 1), "\"nofiles\" is not a ulimit; use one of core, cpu");
        check(
            ulimit("nofile", 2048, 1024),
            "nofile: the soft limit 2048 exceeds the hard limit 1024",
        );
        check(
            ulimit("nofile", -1, 1024),
            "the soft limit unlimited (-1) exceeds the hard limit 1024",
        );
        check(ulimit("core", -2, 0), "limits are 0 or more, or -1 for unlimited");
        check(ulimit("rtprio", 120, 120), "rtprio 120 exceeds 99");
        for (soft, hard) in [(1024, 4096), (1024, -1), (-1, -1)] {
            let ok = release(vec![with_resources("s", ulimit("nofile", soft, hard))]);
            assert!(admit(&ok, &rpi5(), &policy()).is_ok(), "{soft} {hard}");
        }
        let twice = ResourceLimits {
            ulimits: vec![
                Ulimit { name: "nofile".into(), soft: 1, hard: 1 },
                Ulimit { name: "nofile".into(), soft: 2, hard: 2 },
            ],
            ..ResourceLimits::default()
        };
        refused(
            admit(&release(vec![with_resources("s", twice)]), &rpi5(), &policy()),
            "services[0].resources.ulimits[1]",
            "nofile is set twice (also ulimits[0])",
        );
    }

    #[test]
    fn pids_zero_is_refused() {
        let zero = ResourceLimits { pids: Some(0), ..ResourceLimits::default() };
        refused(
            admit(&release(vec![with_resources("s", zero)]), &rpi5(), &policy()),
            "services[0].resources.pids",
            "treats 0 or less as unlimited); set at least 1, or leave pids out",
        );
        let one = ResourceLimits { pids: Some(1), ..ResourceLimits::default() };
        assert!(admit(&release(vec![with_resources("s", one)]), &rpi5(), &policy()).is_ok());
    }

    #[test]
    fn user_is_checked() {
        for (user, part) in [
            ("", "is empty"),
            ("pi user", "whitespace"),
            ("1000:", "empty part"),
            (":20", "empty part"),
            ("a:b:c", "more than one ':'"),
        ] {
            let sec = SecurityOptions { user: Some(user.into()), ..Default::default() };
            refused(
                admit(&release(vec![with_security("s", sec)]), &rpi5(), &policy()),
                "services[0].security.user",
                part,
            );
        }
        for user in ["1000", "pi:dialout", "1000:20"] {
            let sec = SecurityOptions { user: Some(user.into()), ..Default::default() };
            assert!(admit(&release(vec![with_security("s", sec)]), &rpi5(), &policy()).is_ok());
        }
    }

    #[test]
    fn every_problem_of_a_release_is_returned_together() {
        let can = ServiceSpec {
            hardware: vec![HardwareRequest::Can { interface: "can0".into() }],
            network_mode: NetworkMode::Release,
            ..svc("can")
        };
        let r = release(vec![
            can,
            with_security("root", SecurityOptions { privileged: true, ..Default::default() }),
            with_resources("rt", cpuset("0-999")),
        ]);
        let errors = admit(&r, &jetson_orin(), &policy()).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "services[0].hardware[0]",
                "services[1].security.privileged",
                "services[2].resources.cpuset",
            ]
        );
        assert!(errors[2]
            .reason
            .contains("CPUs 12-999 are not online on this device (online: 0-11)"));
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(Bytes(u128::from(15 * GIB / 2)).to_string(), "7.5 GiB");
        assert_eq!(Bytes(u128::from(4 * GIB)).to_string(), "4.0 GiB");
        assert_eq!(Bytes(256 << 20).to_string(), "256 MiB");
        assert_eq!(Bytes(3 << 19).to_string(), "1.5 MiB");
        assert_eq!(Bytes(512).to_string(), "512 bytes");
    }

    proptest! {
        /// cpusets of any shape against each fixture: no panic, no huge allocation, and the
        /// same answer twice.
        #[test]
        fn admission_of_any_cpuset_never_panics(
            set in prop_oneof![
                any::<String>(),
                "[0-9]{1,10}(-[0-9]{1,10})?(,[0-9]{1,10}(-[0-9]{1,10})?){0,4}",
            ],
        ) {
            let r = release(vec![with_resources("s", cpuset(&set))]);
            for hw in [rpi5(), jetson_orin(), x86_nvidia(), bare_vm()] {
                prop_assert_eq!(admit(&r, &hw, &policy()), admit(&r, &hw, &policy()));
            }
        }
    }
}
