//! What [`ReleaseSpec::validate`] checks that the types cannot, and the `depends_on` cycle
//! finder it shares with the agent's planner. Both the server (before storing) and the agent
//! (before accepting) run it.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    is_dns_label, is_object_name, options, NetworkMode, Protocol, ReleaseSpec, SpecError,
    VolumeSource,
};
use crate::ids::ServiceName;

impl ReleaseSpec {
    /// Checks what the types cannot: an app name that is safe as a path component and an
    /// object name (agents make directories, networks and volumes of it, as root), an id that
    /// is `app@version`, unique service names, no host-port clash, known dependencies,
    /// plausible limits. Returns every problem found, not just the first.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut err = |path: String, reason: String| errors.push(SpecError { path, reason });
        if !is_object_name(&self.app) {
            err(
                "app".to_owned(),
                format!(
                    "app name {:?}: 1 to 64 ASCII letters, digits, '_', '.' and '-', starting with a letter or digit",
                    self.app
                ),
            );
        }
        if self.version.is_empty() || self.id.as_str() != format!("{}@{}", self.app, self.version) {
            err(
                "id".to_owned(),
                format!(
                    "release id {} is not app@version ({}@{})",
                    self.id, self.app, self.version
                ),
            );
        }
        let names: BTreeSet<&ServiceName> = self.services.iter().map(|s| &s.name).collect();
        let mut seen_names = BTreeSet::new();
        let mut host_ports: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
        for (i, svc) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            for (j, ns) in svc.host_namespaces.iter().enumerate() {
                if *ns == crate::policy::Namespace::Network {
                    err(
                        format!("{at}.host_namespaces[{j}]"),
                        "the host network is network_mode Host, not a host namespace entry"
                            .to_owned(),
                    );
                } else if svc.host_namespaces[..j].contains(ns) {
                    err(format!("{at}.host_namespaces[{j}]"), format!("{ns} is listed twice"));
                }
            }
            if !seen_names.insert(&svc.name) {
                err(
                    format!("{at}.name"),
                    format!("service name {:?} is used twice", svc.name.as_str()),
                );
            }
            for (p, port) in svc.ports.iter().enumerate() {
                if port.host_port == 0 || port.container_port == 0 {
                    err(format!("{at}.ports[{p}]"), "port 0 is not a port".to_owned());
                }
                if let Some(other) = host_ports.insert((port.host_port, port.protocol), i) {
                    err(
                        format!("{at}.ports[{p}].host_port"),
                        format!(
                            "host port {} is already published by service {:?}",
                            port.host_port,
                            self.services[other].name.as_str()
                        ),
                    );
                }
                if svc.network_mode != NetworkMode::Release {
                    err(
                        format!("{at}.ports[{p}]"),
                        "ports can only be published from the release network (network_mode host already exposes every port)".to_owned(),
                    );
                }
            }
            let mut joined = BTreeSet::new();
            for (n, net) in svc.networks.iter().enumerate() {
                if svc.network_mode != NetworkMode::Release {
                    err(
                        format!("{at}.networks[{n}]"),
                        "release networks need network_mode release (host and none have no release network)".to_owned(),
                    );
                }
                if !is_object_name(&net.name) {
                    err(
                        format!("{at}.networks[{n}].name"),
                        format!("{:?} is not a network name (letters, digits, _, . and -, starting with a letter or digit, at most 64)", net.name),
                    );
                }
                if !joined.insert(net.name.as_str()) {
                    err(
                        format!("{at}.networks[{n}].name"),
                        format!("network {:?} is joined twice", net.name),
                    );
                }
                for (a, alias) in net.aliases.iter().enumerate() {
                    if !is_dns_label(alias) {
                        err(
                            format!("{at}.networks[{n}].aliases[{a}]"),
                            format!(
                                "{alias:?} is not a DNS name (letters, digits and -, at most 63)"
                            ),
                        );
                    }
                }
            }
            let mut targets = BTreeSet::new();
            for (k, secret) in svc.secrets.iter().enumerate() {
                if !is_object_name(&secret.source) {
                    err(
                        format!("{at}.secrets[{k}].source"),
                        format!(
                            "{:?} is not a secret name (letters, digits, _ . -, at most 64)",
                            secret.source
                        ),
                    );
                }
                let t = &secret.target;
                let bad_target = t.is_empty()
                    || t == "/"
                    || t.split('/').any(|c| c == ".." || c == ".")
                    || (!t.starts_with('/') && t.contains('/'))
                    || t.contains('\0');
                if bad_target {
                    err(
                        format!("{at}.secrets[{k}].target"),
                        format!("{t:?} is neither a file name (under /run/secrets) nor an absolute path without . or .."),
                    );
                }
                if secret.mode > 0o777 {
                    err(
                        format!("{at}.secrets[{k}].mode"),
                        format!("{:#o} is not a permission mode (at most 0777)", secret.mode),
                    );
                }
                if svc.volumes.iter().any(|v| v.target == secret.container_path()) {
                    err(
                        format!("{at}.secrets[{k}].target"),
                        format!("{} is already a volume's target", secret.container_path()),
                    );
                } else if !targets.insert(secret.container_path()) {
                    err(
                        format!("{at}.secrets[{k}].target"),
                        format!("{} is mounted twice", secret.container_path()),
                    );
                }
            }
            for (d, dep) in svc.depends_on.iter().enumerate() {
                if !names.contains(&dep.service) {
                    err(
                        format!("{at}.depends_on[{d}]"),
                        format!("no service named {:?} in this release", dep.service.as_str()),
                    );
                } else if dep.service == svc.name {
                    err(
                        format!("{at}.depends_on[{d}]"),
                        "a service cannot depend on itself".to_owned(),
                    );
                }
            }
            for (v, vol) in svc.volumes.iter().enumerate() {
                if !vol.target.starts_with('/') {
                    err(
                        format!("{at}.volumes[{v}].target"),
                        format!("{:?} is not an absolute path", vol.target),
                    );
                }
                if let VolumeSource::HostPath(p) = &vol.source {
                    if !p.starts_with('/') {
                        err(
                            format!("{at}.volumes[{v}].source"),
                            format!("host path {p:?} is not absolute"),
                        );
                    }
                }
            }
            options::check(svc, &at, &mut err);
            if svc.health_deadline.is_zero() {
                err(format!("{at}.health_deadline"), "must be longer than zero".to_owned());
            }
            let r = &svc.resources;
            if let (Some(res), Some(mem)) = (r.memory_reservation_bytes, r.memory_bytes) {
                if res > mem {
                    err(
                        format!("{at}.resources.memory_reservation_bytes"),
                        format!("reservation {res} exceeds the limit {mem}"),
                    );
                }
            }
            if let (Some(swap), Some(mem)) = (r.memory_swap_bytes, r.memory_bytes) {
                if swap < mem {
                    err(
                        format!("{at}.resources.memory_swap_bytes"),
                        format!("memory+swap {swap} is below the memory limit {mem}"),
                    );
                }
            }
            if r.cpu_millis == Some(0) {
                err(
                    format!("{at}.resources.cpu_millis"),
                    "a CPU quota of 0 would never run".to_owned(),
                );
            }
            if let Some(p) = r.realtime_priority {
                if !(1..=99).contains(&p) {
                    err(
                        format!("{at}.resources.realtime_priority"),
                        format!("{p} is outside 1..=99"),
                    );
                }
            }
            if let Some(cpuset) = &r.cpuset {
                if !is_cpu_list(cpuset) {
                    err(
                        format!("{at}.resources.cpuset"),
                        format!("{cpuset:?} is not a CPU list like 0-2,4"),
                    );
                }
            }
        }
        if let Some((i, cycle)) = self.dependency_cycle() {
            err(format!("services[{i}].depends_on"), format!("dependency cycle: {cycle}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The first `depends_on` cycle, if any: the index of the service it starts at and the
    /// cycle in words (`a → b → c → a`). No order could start such services, and the agent's
    /// planner relies on there being none. Dependencies on unknown services and on the service
    /// itself are left to [`ReleaseSpec::validate`]'s own messages.
    pub fn dependency_cycle(&self) -> Option<(usize, String)> {
        let index: BTreeMap<&ServiceName, usize> =
            self.services.iter().enumerate().map(|(i, s)| (&s.name, i)).collect();
        // 0: not visited, 1: on the current path, 2: done (no cycle through it).
        let mut mark = vec![0u8; self.services.len()];
        let mut path = Vec::new();
        fn visit(
            spec: &ReleaseSpec,
            index: &BTreeMap<&ServiceName, usize>,
            i: usize,
            mark: &mut [u8],
            path: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            mark[i] = 1;
            path.push(i);
            for dep in &spec.services[i].depends_on {
                let Some(&j) = index.get(&dep.service) else { continue };
                if j == i {
                    continue;
                }
                if mark[j] == 1 {
                    let from = path.iter().position(|&p| p == j).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(j);
                    return Some(cycle);
                }
                if mark[j] == 0 {
                    if let Some(cycle) = visit(spec, index, j, mark, path) {
                        return Some(cycle);
                    }
                }
            }
            path.pop();
            mark[i] = 2;
            None
        }
        (0..self.services.len()).find_map(|i| {
            if mark[i] != 0 {
                return None;
            }
            let cycle = visit(self, &index, i, &mut mark, &mut path)?;
            let names: Vec<&str> = cycle.iter().map(|&k| self.services[k].name.as_str()).collect();
            Some((cycle[0], names.join(" → ")))
        })
    }
}

/// `0`, `0-3`, `1,3-5`: the kernel's CPU list syntax.
pub(super) fn is_cpu_list(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|part| {
            let mut ends = part.splitn(2, '-').map(|n| n.parse::<u32>());
            match (ends.next(), ends.next()) {
                (Some(Ok(_)), None) => true,
                (Some(Ok(a)), Some(Ok(b))) => a <= b,
                _ => false,
            }
        })
}
