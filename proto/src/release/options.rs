//! A service's container options beyond the core spec: how its process starts and stops, the
//! names it resolves, its namespaced kernel parameters, and finer CPU, block I/O and OOM
//! controls (Compose's `init`, `tty`, `stdin_open`, `stop_signal`, `stop_grace_period`,
//! `hostname`, `domainname`, `extra_hosts`, `dns`, `dns_search`, `dns_opt`, `sysctls`,
//! `cpu_period`, `cpu_quota`, `oom_score_adj`, `blkio_config.weight`, `runtime`).
//!
//! [`check`] holds their rules; [`super::ReleaseSpec::validate`] calls it for every service.
//! Every value is bounded here, before it reaches a device: names and addresses by their
//! grammar, lists by count, durations and weights by the range the kernel accepts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{is_dns_label, NetworkMode, ServiceSpec};
use crate::policy::Namespace;

/// The longest stop grace period: an hour (the agent waits it out at every update).
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);
/// The most entries in each list (extra hosts, DNS servers, search domains, options, sysctls).
pub const MAX_ENTRIES: usize = 64;
/// The longest sysctl value.
pub const MAX_SYSCTL_VALUE: usize = 256;

/// Container options beyond the core spec. Each field's zero value means "the engine's
/// default", so bytes from builds before these options read as none set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(default)]
pub struct ContainerOptions {
    /// Run an init process as PID 1 that reaps zombies and forwards signals (`init: true`).
    pub init: bool,
    /// Give the container a terminal (`tty: true`): some tools buffer or colour by it.
    pub tty: bool,
    /// Keep its standard input open (`stdin_open: true`).
    pub stdin_open: bool,
    /// The signal that stops it (`SIGINT`, `SIGUSR1`, `15`), instead of the image's or
    /// SIGTERM; the agent's stops and the engine's own use it.
    pub stop_signal: Option<String>,
    /// How long a stop waits after the signal before SIGKILL, instead of the agent's
    /// `[update] stop_grace_secs`.
    pub stop_grace: Option<Duration>,
    /// The container's host name.
    pub hostname: Option<String>,
    /// The container's NIS domain name.
    pub domainname: Option<String>,
    /// Extra `/etc/hosts` lines.
    pub extra_hosts: Vec<HostEntry>,
    /// DNS servers, instead of the engine's.
    pub dns: Vec<String>,
    /// DNS search domains.
    pub dns_search: Vec<String>,
    /// resolv.conf options (`ndots:2`, `edns0`).
    pub dns_options: Vec<String>,
    /// Namespaced kernel parameters (`net.*`, `kernel.shm*`, `kernel.msg*`, `kernel.sem`,
    /// `fs.mqueue.*`): they change the container's own namespaces only.
    pub sysctls: BTreeMap<String, String>,
    /// The CFS period in microseconds, with `cpu_quota_us` (1,000 to 1,000,000).
    pub cpu_period_us: Option<u32>,
    /// CPU time per period in microseconds (at least 1,000); instead of `cpu_millis`.
    pub cpu_quota_us: Option<u32>,
    /// The OOM killer's preference, -1000 (never) to 1000 (first). Below zero needs the
    /// device's `allow_privileged`: it makes the kernel kill others, the agent included, first.
    pub oom_score_adj: Option<i16>,
    /// Relative block I/O weight, 10 to 1000.
    pub blkio_weight: Option<u16>,
    /// The engine's runtime for the container (`nvidia` on a Jetson, `runsc`), instead of its
    /// default. The device admits it only if its engine has that runtime.
    pub runtime: Option<String>,
}

/// One extra `/etc/hosts` line: a name and its address (or `host-gateway`, the engine's
/// address on the host's side of the bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HostEntry {
    /// The host name.
    pub name: String,
    /// An IPv4 or IPv6 address, or `host-gateway`.
    pub address: String,
}

/// The signal names `stop_signal` takes, without `SIG`.
const SIGNALS: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "KILL", "PIPE",
    "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU",
    "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
];

/// Whether `s` names a signal: a name with or without `SIG` (`RTMIN+3` too), or 1 to 64.
pub fn is_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u8>() {
        return (1..=64).contains(&n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    if SIGNALS.contains(&name) {
        return true;
    }
    let offset = |rest: &str, sign: char| {
        rest.is_empty()
            || rest.strip_prefix(sign).and_then(|n| n.parse::<u8>().ok()).is_some_and(|n| n <= 30)
    };
    name.strip_prefix("RTMIN").is_some_and(|rest| offset(rest, '+'))
        || name.strip_prefix("RTMAX").is_some_and(|rest| offset(rest, '-'))
}

/// Whether `s` is a host or domain name: DNS labels joined by dots, at most 253 bytes.
pub fn is_host_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Which namespace a sysctl belongs to, or why it is refused.
fn sysctl_namespace(key: &str) -> Result<Namespace, String> {
    let grammar = !key.is_empty()
        && key.len() <= 128
        && key.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        });
    if !grammar {
        return Err(format!(
            "{key:?} is not a sysctl name (dot-separated words, like net.core.somaxconn)"
        ));
    }
    if key.starts_with("net.") {
        Ok(Namespace::Network)
    } else if ["kernel.shmmax", "kernel.shmall", "kernel.shmmni", "kernel.shm_rmid_forced"]
        .contains(&key)
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.")
    {
        Ok(Namespace::Ipc)
    } else {
        Err(format!(
            "{key} is not namespaced: it would change the whole device; only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* are a container's own"
        ))
    }
}

/// Every problem with `svc.options`, each with its path under `at` (`services[2]`).
pub(super) fn check(svc: &ServiceSpec, at: &str, err: &mut impl FnMut(String, String)) {
    let o = &svc.options;
    let at = format!("{at}.options");
    if let Some(signal) = &o.stop_signal {
        if !is_signal(signal) {
            err(format!("{at}.stop_signal"), format!("{signal:?} is not a signal (SIGTERM, SIGINT, SIGUSR1, RTMIN+3 or a number 1-64)"));
        }
    }
    if let Some(grace) = o.stop_grace {
        if grace > MAX_STOP_GRACE {
            err(
                format!("{at}.stop_grace"),
                format!(
                    "{} s is longer than the most, {} s",
                    grace.as_secs(),
                    MAX_STOP_GRACE.as_secs()
                ),
            );
        }
    }
    for (field, value) in [("hostname", &o.hostname), ("domainname", &o.domainname)] {
        if let Some(name) = value {
            if !is_host_name(name) {
                err(format!("{at}.{field}"), format!("{name:?} is not a host name (DNS labels: letters, digits and -, joined by dots)"));
            }
        }
    }
    if o.hostname.is_some() && svc.network_mode == NetworkMode::Host {
        err(
            format!("{at}.hostname"),
            "a service on the host's network has the host's name".to_owned(),
        );
    }
    let lists = [
        ("extra_hosts", o.extra_hosts.len()),
        ("dns", o.dns.len()),
        ("dns_search", o.dns_search.len()),
        ("dns_options", o.dns_options.len()),
        ("sysctls", o.sysctls.len()),
    ];
    for (field, len) in lists {
        if len > MAX_ENTRIES {
            err(format!("{at}.{field}"), format!("{len} entries; at most {MAX_ENTRIES}"));
        }
    }
    for (i, h) in o.extra_hosts.iter().enumerate() {
        if !is_host_name(&h.name) {
            err(format!("{at}.extra_hosts[{i}].name"), format!("{:?} is not a host name", h.name));
        }
        if h.address != "host-gateway" && h.address.parse::<IpAddr>().is_err() {
            err(
                format!("{at}.extra_hosts[{i}].address"),
                format!("{:?} is not an IP address or host-gateway", h.address),
            );
        }
    }
    for (i, server) in o.dns.iter().enumerate() {
        if server.parse::<IpAddr>().is_err() {
            err(format!("{at}.dns[{i}]"), format!("{server:?} is not an IP address"));
        }
    }
    for (i, domain) in o.dns_search.iter().enumerate() {
        if !is_host_name(domain) {
            err(format!("{at}.dns_search[{i}]"), format!("{domain:?} is not a domain name"));
        }
    }
    for (i, option) in o.dns_options.iter().enumerate() {
        let ok = (1..=64).contains(&option.len())
            && option
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
        if !ok {
            err(
                format!("{at}.dns_options[{i}]"),
                format!("{option:?} is not a resolver option (like ndots:2 or edns0)"),
            );
        }
    }
    for (key, value) in &o.sysctls {
        let path = format!("{at}.sysctls.{key}");
        match sysctl_namespace(key) {
            Err(reason) => err(path.clone(), reason),
            Ok(Namespace::Network) if svc.network_mode == NetworkMode::Host => {
                err(
                    path.clone(),
                    format!(
                        "{key} would change the host's network: this service uses the host network"
                    ),
                );
            }
            Ok(Namespace::Ipc) if svc.host_namespaces.contains(&Namespace::Ipc) => {
                err(path.clone(), format!("{key} would change the host's IPC limits: this service shares the host's IPC namespace"));
            }
            Ok(_) => {}
        }
        if value.is_empty() || value.len() > MAX_SYSCTL_VALUE || value.chars().any(char::is_control)
        {
            err(path, format!("the value must be 1 to {MAX_SYSCTL_VALUE} printable characters"));
        }
    }
    if let Some(period) = o.cpu_period_us {
        if !(1_000..=1_000_000).contains(&period) {
            err(format!("{at}.cpu_period_us"), format!("{period} µs is outside 1000 to 1000000"));
        }
    }
    if let Some(quota) = o.cpu_quota_us {
        if quota < 1_000 {
            err(format!("{at}.cpu_quota_us"), format!("{quota} µs is below the least, 1000"));
        }
    }
    if (o.cpu_period_us.is_some() || o.cpu_quota_us.is_some()) && svc.resources.cpu_millis.is_some()
    {
        err(format!("{at}.cpu_quota_us"), "cpu_quota and cpu_period cannot be set with cpus (resources.cpu_millis): choose one way to cap CPU".to_owned());
    }
    if let Some(adj) = o.oom_score_adj {
        if !(-1000..=1000).contains(&adj) {
            err(format!("{at}.oom_score_adj"), format!("{adj} is outside -1000 to 1000"));
        }
    }
    if let Some(runtime) = &o.runtime {
        let ok = (1..=64).contains(&runtime.len())
            && runtime
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            err(format!("{at}.runtime"), format!("{runtime:?} is not a runtime name (letters, digits, '.', '_' and '-', like nvidia or io.containerd.runc.v2)"));
        }
    }
    if let Some(weight) = o.blkio_weight {
        if !(10..=1000).contains(&weight) {
            err(format!("{at}.blkio_weight"), format!("{weight} is outside 10 to 1000"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_with_or_without_sig_real_time_offsets_and_numbers() {
        for ok in
            ["SIGTERM", "TERM", "SIGINT", "SIGUSR1", "9", "64", "SIGRTMIN", "RTMIN+3", "SIGRTMAX-2"]
        {
            assert!(is_signal(ok), "{ok}");
        }
        for bad in ["", "0", "65", "SIGFOO", "sigterm", "RTMIN-1", "RTMIN+31", "SIG"] {
            assert!(!is_signal(bad), "{bad}");
        }
    }

    fn problems(options: ContainerOptions, edit: impl FnOnce(&mut ServiceSpec)) -> Vec<String> {
        let mut release = crate::samples::release();
        release.services[0].options = options;
        edit(&mut release.services[0]);
        match release.validate() {
            Ok(()) => vec![],
            Err(errors) => {
                errors.into_iter().map(|e| format!("{}: {}", e.path, e.reason)).collect()
            }
        }
    }

    #[test]
    fn good_options_pass_and_each_bad_one_is_named_with_its_path() {
        let good = ContainerOptions {
            init: true,
            tty: true,
            stdin_open: true,
            stop_signal: Some("SIGINT".into()),
            stop_grace: Some(Duration::from_secs(45)),
            hostname: Some("robot-7".into()),
            domainname: Some("fleet.example".into()),
            extra_hosts: vec![
                HostEntry { name: "plc".into(), address: "192.168.1.20".into() },
                HostEntry { name: "host.docker.internal".into(), address: "host-gateway".into() },
            ],
            dns: vec!["10.0.0.53".into(), "fd00::53".into()],
            dns_search: vec!["lab.example".into()],
            dns_options: vec!["ndots:2".into(), "edns0".into()],
            sysctls: BTreeMap::from([("net.core.somaxconn".into(), "1024".into())]),
            cpu_period_us: Some(100_000),
            cpu_quota_us: Some(50_000),
            oom_score_adj: Some(500),
            blkio_weight: Some(300),
            runtime: Some("io.containerd.runc.v2".into()),
        };
        assert_eq!(problems(good.clone(), |s| s.resources.cpu_millis = None), Vec::<String>::new());
        let bad = ContainerOptions {
            stop_signal: Some("SIGNOPE".into()),
            stop_grace: Some(Duration::from_secs(7200)),
            hostname: Some("-bad".into()),
            extra_hosts: vec![HostEntry { name: "plc".into(), address: "not-an-ip".into() }],
            dns: vec!["8.8.8".into()],
            sysctls: BTreeMap::from([("vm.swappiness".into(), "10".into())]),
            cpu_period_us: Some(10),
            oom_score_adj: Some(2000),
            blkio_weight: Some(5),
            runtime: Some("nvidia --debug".into()),
            ..ContainerOptions::default()
        };
        let got = problems(bad, |_| {});
        let expect = [
            "options.stop_signal: \"SIGNOPE\" is not a signal",
            "options.stop_grace: 7200 s is longer",
            "options.hostname: \"-bad\" is not a host name",
            "options.extra_hosts[0].address: \"not-an-ip\"",
            "options.dns[0]: \"8.8.8\" is not an IP address",
            "options.sysctls.vm.swappiness: vm.swappiness is not namespaced",
            "options.cpu_period_us: 10 µs is outside",
            "options.cpu_quota_us: cpu_quota and cpu_period cannot be set with cpus",
            "options.oom_score_adj: 2000 is outside",
            "options.blkio_weight: 5 is outside",
            "options.runtime: \"nvidia --debug\" is not a runtime name",
        ];
        for words in expect {
            assert!(got.iter().any(|g| g.contains(words)), "{words:?} not in {got:#?}");
        }
        assert_eq!(got.len(), expect.len(), "{got:#?}");
    }

    #[test]
    fn oversized_lists_and_values_are_refused() {
        let huge = ContainerOptions {
            dns: vec!["10.0.0.53".into(); MAX_ENTRIES + 1],
            sysctls: BTreeMap::from([(
                "net.core.somaxconn".into(),
                "9".repeat(MAX_SYSCTL_VALUE + 1),
            )]),
            hostname: Some("a".repeat(300)),
            stop_signal: Some("SIG".to_owned() + &"X".repeat(10_000)),
            ..ContainerOptions::default()
        };
        let got = problems(huge, |_| {});
        for words in [
            "options.dns: 65 entries; at most 64",
            "options.sysctls.net.core.somaxconn: the value must be 1 to 256",
            "options.hostname",
            "options.stop_signal",
        ] {
            assert!(got.iter().any(|g| g.contains(words)), "{words:?} not in {got:#?}");
        }
    }

    #[test]
    fn a_sysctl_of_a_namespace_shared_with_the_host_is_refused() {
        let opts = |key: &str| ContainerOptions {
            sysctls: BTreeMap::from([(key.to_owned(), "1".to_owned())]),
            ..ContainerOptions::default()
        };
        let got = problems(opts("net.ipv4.ip_forward"), |s| {
            s.network_mode = NetworkMode::Host;
            s.ports.clear();
            s.networks.clear();
        });
        assert!(got.len() == 1 && got[0].contains("uses the host network"), "{got:?}");
        let got = problems(opts("kernel.shmmax"), |s| s.host_namespaces = vec![Namespace::Ipc]);
        assert!(got.len() == 1 && got[0].contains("shares the host's IPC"), "{got:?}");
        assert_eq!(problems(opts("kernel.shmmax"), |_| {}), Vec::<String>::new());
    }

    #[test]
    fn only_namespaced_sysctls_are_a_containers_own() {
        assert_eq!(sysctl_namespace("net.core.somaxconn"), Ok(Namespace::Network));
        assert_eq!(sysctl_namespace("net.ipv4.ip_unprivileged_port_start"), Ok(Namespace::Network));
        assert_eq!(sysctl_namespace("kernel.shmmax"), Ok(Namespace::Ipc));
        assert_eq!(sysctl_namespace("kernel.msgmax"), Ok(Namespace::Ipc));
        assert_eq!(sysctl_namespace("fs.mqueue.msg_max"), Ok(Namespace::Ipc));
        for host_wide in ["vm.swappiness", "kernel.panic", "fs.file-max", "kernel.shmfoo"] {
            let reason = sysctl_namespace(host_wide).unwrap_err();
            assert!(reason.contains("not namespaced"), "{host_wide}: {reason}");
        }
        for bad in ["", "net..x", "net.core.x y", "net/core"] {
            assert!(sysctl_namespace(bad).unwrap_err().contains("not a sysctl name"), "{bad}");
        }
    }
}
