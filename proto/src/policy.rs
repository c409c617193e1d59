//! What a device lets a release do beyond an ordinary container: the agent's `[policy]`.
//!
//! One rule, two judges. The agent enforces it when it admits a release, before anything stops;
//! it reports its policy with its inventory, and the server's `rollout plan` runs the same
//! functions so a fleet manager sees a refusal before the first wave instead of after it.
//!
//! What only the device can know is judged there alone: whether a bind's host path passes
//! through a symbolic link a container planted, and what a device node is by its major and
//! minor numbers (here it is judged by its name, [`host_granting_path`]).
//!
//! Every refusal names the field and the `[policy]` key that would allow it.

use serde::{Deserialize, Serialize};

use crate::release::{HardwareRequest, NetworkMode, ServiceSpec, SpecError, VolumeSource};
use crate::ReleaseSpec;

/// A Linux namespace a container may share with the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// The host's network stack (`network_mode: host`; ROS 2 and DDS discovery need it).
    Network,
    /// The host's process ids: the container sees and can signal every host process.
    Pid,
    /// The host's System V IPC and POSIX message queues and shared memory.
    Ipc,
    /// The host's hostname and domain name.
    Uts,
}

impl Namespace {
    /// Its name in Compose and in `[policy] allow_host_namespaces`.
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Network => "network",
            Namespace::Pid => "pid",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
        }
    }

    /// Every namespace, in order.
    pub const ALL: [Namespace; 4] =
        [Namespace::Network, Namespace::Pid, Namespace::Ipc, Namespace::Uts];
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Namespace {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Namespace::ALL.into_iter().find(|n| n.as_str() == s).ok_or_else(|| {
            format!("{s:?} is not a namespace a container can share: network, pid, ipc or uts")
        })
    }
}

/// A device's `[policy]`, as its agent enforces it and reports it in its inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DevicePolicy {
    /// Services may run privileged, or with any capability.
    pub allow_privileged: bool,
    /// Capabilities services may add beyond Docker's default set, with or without `CAP_`.
    pub allowed_capabilities: Vec<String>,
    /// Host paths of device nodes that give a container the host, mapped anyway.
    pub allowed_devices: Vec<String>,
    /// Services may use real-time scheduling (`realtime_priority`, `CAP_SYS_NICE`).
    pub allow_realtime: bool,
    /// Host namespaces services may share.
    pub allow_host_namespaces: Vec<Namespace>,
    /// Host directories services may bind-mount, each with everything under it.
    pub allowed_host_paths: Vec<String>,
}

impl Default for DevicePolicy {
    /// What a device allows unless its configuration says more: the host's network (ROS 2 and
    /// DDS need it) and real-time scheduling for control loops; nothing else.
    fn default() -> Self {
        DevicePolicy {
            allow_privileged: false,
            allowed_capabilities: Vec::new(),
            allowed_devices: Vec::new(),
            allow_realtime: true,
            allow_host_namespaces: vec![Namespace::Network],
            allowed_host_paths: Vec::new(),
        }
    }
}

impl DevicePolicy {
    /// Everything in `release` this policy refuses that the release's text shows: privileges
    /// and capabilities, host namespaces, device nodes by name and host paths. The server's
    /// pre-flight check; the agent calls the parts one by one (it judges device nodes by
    /// number and binds on the filesystem as well).
    pub fn refusals(&self, release: &ReleaseSpec) -> Vec<SpecError> {
        let mut errors = Vec::new();
        for (i, svc) in release.services.iter().enumerate() {
            let at = format!("services[{i}]");
            errors.extend(privileges(svc, self, &at));
            errors.extend(host_namespaces(svc, self, &at));
            errors.extend(device_names(svc, self, &at));
            errors.extend(host_paths(svc, &self.allowed_host_paths, &at));
        }
        errors
    }
}

fn error(path: String, reason: String) -> SpecError {
    SpecError { path, reason }
}

const NOT_PRIVILEGED: &str =
    "privileged containers are not allowed by this device's configuration ([policy] allow_privileged); request the hardware by name instead";

/// The capabilities Docker grants every container (moby's default set): adding one of them
/// changes nothing.
pub const DOCKER_DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Linux capabilities (`capabilities(7)`, up to `CAP_CHECKPOINT_RESTORE`, Linux 5.9), sorted.
pub const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// A capability as the engine reads it: upper-cased, without `CAP_`.
pub fn capability(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    match upper.strip_prefix("CAP_") {
        Some(rest) => rest.to_owned(),
        None => upper,
    }
}

/// `privileged`, `cap_add: [ALL]` (the same in all but name), and any capability beyond
/// Docker's default set, only where allowed: `SYS_ADMIN`, `SYS_MODULE`, `SYS_RAWIO`,
/// `DAC_READ_SEARCH` and the like each give a container the host. `SYS_NICE` is judged with
/// real-time scheduling, and unknown names are the agent's to refuse as such. A negative
/// `oom_score_adj` is judged here too: it puts the host's processes before the container.
pub fn privileges(svc: &ServiceSpec, policy: &DevicePolicy, at: &str) -> Vec<SpecError> {
    if policy.allow_privileged {
        return vec![];
    }
    let mut errors = Vec::new();
    if svc.security.privileged {
        errors.push(error(format!("{at}.security.privileged"), NOT_PRIVILEGED.to_owned()));
    }
    if let Some(adj) = svc.options.oom_score_adj.filter(|a| *a < 0) {
        errors.push(error(
            format!("{at}.options.oom_score_adj"),
            format!("{adj} makes the kernel kill other processes, the agent included, before this one when memory runs out; this device's configuration does not allow it ([policy] allow_privileged). Use 0 or more")),
        );
    }
    let allowed: Vec<String> = policy.allowed_capabilities.iter().map(|c| capability(c)).collect();
    for (j, cap) in svc.security.cap_add.iter().enumerate() {
        let name = capability(cap);
        let name = name.as_str();
        if name == "ALL" {
            errors.push(error(
                format!("{at}.security.cap_add[{j}]"),
                format!("ALL grants every capability, as privileged does: {NOT_PRIVILEGED}"),
            ));
        } else if name != "SYS_NICE"
            && !DOCKER_DEFAULT_CAPABILITIES.contains(&name)
            && !allowed.iter().any(|a| a == name)
            && CAPABILITIES.contains(&name)
        {
            errors.push(error(
                format!("{at}.security.cap_add[{j}]"),
                format!(
                    "CAP_{name} is beyond Docker's default set and this device's configuration does not allow it; add \"{name}\" to [policy] allowed_capabilities on the devices that need it (or allow_privileged)"
                ),
            ));
        }
    }
    errors
}

/// Host namespaces only where `[policy] allow_host_namespaces` lists them (or the device
/// allows privileged containers, which have the host anyway).
pub fn host_namespaces(svc: &ServiceSpec, policy: &DevicePolicy, at: &str) -> Vec<SpecError> {
    if policy.allow_privileged {
        return vec![];
    }
    let mut asked: Vec<(String, Namespace)> = Vec::new();
    if svc.network_mode == NetworkMode::Host {
        asked.push((format!("{at}.network_mode"), Namespace::Network));
    }
    for (j, ns) in svc.host_namespaces.iter().enumerate() {
        asked.push((format!("{at}.host_namespaces[{j}]"), *ns));
    }
    asked
        .into_iter()
        .filter(|(_, ns)| !policy.allow_host_namespaces.contains(ns))
        .map(|(path, ns)| {
            error(
                path,
                format!(
                    "the host's {ns} namespace is not shared with containers by this device's configuration; add \"{ns}\" to [policy] allow_host_namespaces on the devices that need it"
                ),
            )
        })
        .collect()
}

/// What a device node gives a container, if it gives it the host, judged by its path: what the
/// server can know. The agent judges by major and minor number where the node exists, so a
/// link or a renamed node cannot hide one there.
pub fn host_granting_path(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix("/dev/")?;
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let block = ["sd", "hd", "vd", "xvd", "nvme", "mmcblk", "loop", "dm-", "md", "nbd", "sr"];
    Some(match name {
        "mem" => "all physical memory (/dev/mem)",
        "kmem" => "kernel memory (/dev/kmem)",
        "port" => "the I/O ports (/dev/port)",
        "kmsg" => "the kernel log, writable (/dev/kmsg)",
        "tty" | "console" | "ptmx" => {
            "the controlling terminal, the console or the pty multiplexer"
        }
        _ if name.starts_with("pts/") => "a pseudo-terminal",
        _ if numbered("tty") => "a virtual console",
        _ if name.starts_with("mtd") => "raw flash (an MTD device)",
        _ if block.iter().any(|b| {
            name.strip_prefix(b)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
        }) =>
        {
            "a block device (a whole disk or partition)"
        }
        _ => return None,
    })
}

/// Device nodes asked for by path that give a container the host, judged by name, only where
/// `[policy] allowed_devices` lists them.
pub fn device_names(svc: &ServiceSpec, policy: &DevicePolicy, at: &str) -> Vec<SpecError> {
    devices_judged(svc, policy, at, host_granting_path)
}

/// Device nodes asked for by path (`hardware` and `optional_hardware`) that `grants` says give a
/// container the host, refused unless `[policy] allowed_devices` lists them or privileged
/// containers are allowed. The server judges by name ([`device_names`]); the agent by the
/// node's numbers where it exists.
pub fn devices_judged(
    svc: &ServiceSpec,
    policy: &DevicePolicy,
    at: &str,
    grants: impl Fn(&str) -> Option<&'static str>,
) -> Vec<SpecError> {
    if policy.allow_privileged {
        return vec![];
    }
    let lists = [("hardware", &svc.hardware), ("optional_hardware", &svc.optional_hardware)];
    let mut errors = Vec::new();
    for (field, list) in lists {
        for (i, req) in list.iter().enumerate() {
            let HardwareRequest::Device { host_path, .. } = req else { continue };
            if policy.allowed_devices.iter().any(|d| d == host_path) {
                continue;
            }
            if let Some(what) = grants(host_path) {
                errors.push(device_refusal(format!("{at}.{field}[{i}]"), host_path, what));
            }
        }
    }
    errors
}

/// The refusal of device node `host_path`, which gives a container `what`.
fn device_refusal(path: String, host_path: &str, what: &str) -> SpecError {
    error(
        path,
        format!(
            "{host_path} is {what}, which gives a container the host; refused unless [policy] allowed_devices lists \"{host_path}\" on this device"
        ),
    )
}

/// Whether `path` is one of `allowed` or under one, compared by components. A path with `.`,
/// `..` or an empty component is never allowed: `/srv/maps/../../etc` must not pass as being
/// under `/srv/maps`.
pub fn bind_allowed(path: &str, allowed: &[String]) -> bool {
    fn parts(p: &str) -> Option<Vec<&str>> {
        let rest = p.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
        parts.iter().all(|c| *c != "." && *c != "..").then_some(parts)
    }
    let Some(path) = parts(path) else { return false };
    allowed.iter().filter_map(|a| parts(a)).any(|root| !root.is_empty() && path.starts_with(&root))
}

/// Bind mounts of host paths no allowed directory covers, each naming the field and the path.
pub fn host_paths(svc: &ServiceSpec, allowed: &[String], at: &str) -> Vec<SpecError> {
    let mut errors = Vec::new();
    for (v, vol) in svc.volumes.iter().enumerate() {
        let VolumeSource::HostPath(p) = &vol.source else { continue };
        if bind_allowed(p, allowed) {
            continue;
        }
        let hint = if allowed.is_empty() {
            "this device allows no host paths ([policy] allowed_host_paths is empty); use a named volume, or add the directory to allowed_host_paths".to_owned()
        } else {
            format!("it is not under {} ([policy] allowed_host_paths)", allowed.join(", "))
        };
        errors.push(error(
            format!("{at}.volumes[{v}].source"),
            format!("bind mount of host path {p:?} is not allowed: {hint}"),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{VolumeMount, VolumeSource};
    use crate::samples;

    fn service() -> ServiceSpec {
        let mut s = samples::release().services.remove(0);
        s.network_mode = NetworkMode::Release;
        s.volumes.clear();
        s.hardware.clear();
        s.optional_hardware.clear();
        s.security = Default::default();
        s
    }

    fn reasons(errors: &[SpecError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_default_allows_an_ordinary_container_and_the_host_network() {
        let mut svc = service();
        svc.network_mode = NetworkMode::Host;
        svc.security.cap_add =
            vec!["NET_BIND_SERVICE".into(), "CAP_KILL".into(), "SYS_NICE".into()];
        let release = ReleaseSpec { services: vec![svc], ..samples::release() };
        assert_eq!(DevicePolicy::default().refusals(&release), vec![]);
    }

    #[test]
    fn each_escape_is_refused_naming_its_field_and_the_key_that_allows_it() {
        let mut svc = service();
        svc.security.privileged = true;
        svc.security.cap_add = vec!["sys_admin".into(), "ALL".into()];
        svc.options.oom_score_adj = Some(-900);
        svc.host_namespaces = vec![Namespace::Pid];
        svc.hardware = vec![HardwareRequest::Device {
            host_path: "/dev/mem".into(),
            container_path: "/dev/mem".into(),
            permissions: "rw".into(),
        }];
        svc.volumes = vec![VolumeMount {
            source: VolumeSource::HostPath("/".into()),
            target: "/host".into(),
            read_only: false,
        }];
        let release = ReleaseSpec { services: vec![svc], ..samples::release() };
        let got = reasons(&DevicePolicy::default().refusals(&release));
        let expect = [
            ("services[0].security.privileged", "[policy] allow_privileged"),
            ("services[0].options.oom_score_adj", "the agent included"),
            (
                "services[0].security.cap_add[0]",
                "add \"SYS_ADMIN\" to [policy] allowed_capabilities",
            ),
            ("services[0].security.cap_add[1]", "ALL grants every capability"),
            ("services[0].host_namespaces[0]", "add \"pid\" to [policy] allow_host_namespaces"),
            ("services[0].hardware[0]", "all physical memory (/dev/mem)"),
            ("services[0].volumes[0].source", "[policy] allowed_host_paths is empty"),
        ];
        assert_eq!(got.len(), expect.len(), "{got:#?}");
        for ((path, words), line) in expect.iter().zip(&got) {
            assert!(line.starts_with(path) && line.contains(words), "{line}");
        }
    }

    #[test]
    fn what_the_policy_lists_is_allowed() {
        let mut svc = service();
        svc.security.cap_add = vec!["NET_ADMIN".into()];
        svc.network_mode = NetworkMode::Host;
        svc.host_namespaces = vec![Namespace::Ipc];
        svc.hardware = vec![HardwareRequest::Device {
            host_path: "/dev/mtd0".into(),
            container_path: "/dev/mtd0".into(),
            permissions: "r".into(),
        }];
        svc.volumes = vec![VolumeMount {
            source: VolumeSource::HostPath("/srv/maps/today".into()),
            target: "/maps".into(),
            read_only: true,
        }];
        let release = ReleaseSpec { services: vec![svc], ..samples::release() };
        let strict = DevicePolicy { allow_host_namespaces: vec![], ..DevicePolicy::default() };
        assert_eq!(strict.refusals(&release).len(), 5);
        let open = DevicePolicy {
            allowed_capabilities: vec!["CAP_NET_ADMIN".into()],
            allowed_devices: vec!["/dev/mtd0".into()],
            allow_host_namespaces: vec![Namespace::Network, Namespace::Ipc],
            allowed_host_paths: vec!["/srv/maps".into()],
            ..DevicePolicy::default()
        };
        assert_eq!(open.refusals(&release), vec![]);
        let privileged = DevicePolicy { allow_privileged: true, ..strict };
        assert_eq!(reasons(&privileged.refusals(&release)).len(), 1, "host paths stay judged");
    }

    #[test]
    fn device_nodes_are_judged_by_name() {
        for path in [
            "/dev/mem",
            "/dev/kmem",
            "/dev/port",
            "/dev/kmsg",
            "/dev/mtd0",
            "/dev/mtdblock2",
            "/dev/tty1",
            "/dev/tty",
            "/dev/console",
            "/dev/ptmx",
            "/dev/pts/3",
            "/dev/sda",
            "/dev/sda1",
            "/dev/nvme0n1",
            "/dev/mmcblk0p2",
            "/dev/vdb",
            "/dev/loop0",
            "/dev/dm-0",
        ] {
            assert!(host_granting_path(path).is_some(), "{path}");
        }
        for path in [
            "/dev/ttyUSB0",
            "/dev/ttyACM0",
            "/dev/ttyS0",
            "/dev/ttyAMA0",
            "/dev/video0",
            "/dev/i2c-1",
            "/dev/gpiochip0",
            "/dev/spidev0.0",
            "/dev/null",
            "/dev/dri/renderD128",
            "/dev/serial/by-id/usb-FTDI",
            "/dev/sd",
            "/dev/md",
            "/dev/media0",
            "kmsg",
        ] {
            assert_eq!(host_granting_path(path), None, "{path}");
        }
    }

    #[test]
    fn binds_are_compared_by_component() {
        let allowed = vec!["/srv/maps".to_owned()];
        assert!(bind_allowed("/srv/maps", &allowed));
        assert!(bind_allowed("/srv/maps/", &allowed));
        assert!(bind_allowed("/srv/maps/a/b", &allowed));
        assert!(bind_allowed("//srv//maps/a", &allowed));
        assert!(!bind_allowed("/srv/mapsx", &allowed));
        assert!(!bind_allowed("/srv/maps/../../etc", &allowed));
        assert!(!bind_allowed("/srv/maps/./a", &allowed));
        assert!(!bind_allowed("srv/maps", &allowed));
        assert!(!bind_allowed("/", &allowed));
        assert!(!bind_allowed("/anything", &["/".to_owned()]), "/ itself allows nothing");
    }

    #[test]
    fn namespaces_parse_by_their_compose_names() {
        for ns in Namespace::ALL {
            assert_eq!(ns.as_str().parse::<Namespace>(), Ok(ns));
        }
        assert!("user".parse::<Namespace>().unwrap_err().contains("network, pid, ipc or uts"));
    }
}
