//! `ports` (short and long syntax, ranges), `network_mode` and `networks`.

use std::collections::BTreeSet;

use fleet_proto::policy::Namespace;
use fleet_proto::release::{NetworkAttachment, NetworkMode, PortMapping, Protocol};

use super::MAX_PORTS_PER_SERVICE;
use crate::compose::read::{self, child, item, Problems};
use crate::compose::yaml::{Node, Value};

/// A port or a `low-high` range.
pub(super) fn port_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a >= 1 && a <= b).then_some((a, b))
}

pub(super) fn host_ip(p: &mut Problems, path: &str, node: &Node, ip: &str) -> Option<bool> {
    match ip.trim_start_matches('[').trim_end_matches(']') {
        "" | "0.0.0.0" => Some(false),
        "127.0.0.1" => Some(true),
        other => {
            p.add(path, Some(node), format!("host address {other:?} is not supported: publish on every interface (no address) or on loopback (127.0.0.1); device addresses differ from device to device"));
            None
        }
    }
}

pub(super) fn protocol(p: &mut Problems, path: &str, node: &Node, proto: &str) -> Option<Protocol> {
    match proto.to_ascii_lowercase().as_str() {
        "" | "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        other => {
            p.add(path, Some(node), format!("protocol {other:?} is not supported; use tcp or udp"));
            None
        }
    }
}

/// Expands `host` and `container` ranges of equal length into mappings.
pub(super) fn expand(
    p: &mut Problems,
    path: &str,
    node: &Node,
    (host, container): ((u16, u16), (u16, u16)),
    (protocol, loopback_only): (Protocol, bool),
    total: usize,
) -> Vec<PortMapping> {
    let (hn, cn) = (usize::from(host.1 - host.0) + 1, usize::from(container.1 - container.0) + 1);
    if hn != cn {
        let why = if cn == 1 {
            "a host port range for one container port picks a free port when the container starts; give one host port".to_owned()
        } else {
            format!("the host range has {hn} ports and the container range {cn}; they must match")
        };
        p.add(path, Some(node), why);
        return vec![];
    }
    if total + hn > MAX_PORTS_PER_SERVICE {
        p.add(
            path,
            Some(node),
            format!("{hn} ports would make more than {MAX_PORTS_PER_SERVICE} for this service"),
        );
        return vec![];
    }
    (0..hn)
        .map(|i| {
            // Below 65536: both ranges were parsed as u16 and have the same length.
            let off = i as u16;
            PortMapping {
                host_port: host.0 + off,
                container_port: container.0 + off,
                protocol,
                loopback_only,
            }
        })
        .collect()
}

pub(super) fn ports(p: &mut Problems, path: &str, node: &Node) -> Vec<(PortMapping, String)> {
    let Some(items) = node.as_seq() else {
        p.add(path, Some(node), format!("expected a list of ports, found {}", node.kind()));
        return vec![];
    };
    let mut out: Vec<(PortMapping, String)> = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let at = item(path, i);
        let mapped = if it.as_map().is_some() {
            long_port(p, &at, it, out.len())
        } else {
            short_port(p, &at, it, out.len())
        };
        out.extend(mapped.into_iter().map(|m| (m, at.clone())));
    }
    out
}

/// `[HOST_IP:]HOST:CONTAINER[/PROTOCOL]`, ports or ranges.
pub(super) fn short_port(
    p: &mut Problems,
    path: &str,
    node: &Node,
    total: usize,
) -> Vec<PortMapping> {
    let Some(text) = read::nonempty(p, path, node) else { return vec![] };
    let (spec, proto) = text.rsplit_once('/').unwrap_or((&text, ""));
    let Some(protocol) = protocol(p, path, node, proto) else { return vec![] };
    // An IPv6 address is bracketed: [::1]:8080:80.
    let (ip, rest) = match spec.strip_prefix('[').and_then(|s| s.split_once("]:")) {
        Some((ip, rest)) => (Some(ip), rest),
        None => (None, spec),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (ip, parts.as_slice()) {
        (_, [container]) => {
            p.add(path, Some(node), format!("{text:?} publishes container port {container} on a random host port, which differs per device; give a host port, e.g. \"{container}:{container}\""));
            return vec![];
        }
        (None, [host, container]) => ("", *host, *container),
        (None, [ip, host, container]) => (*ip, *host, *container),
        (Some(ip), [host, container]) => (ip, *host, *container),
        _ => {
            p.add(path, Some(node), format!("{text:?} is not [HOST_IP:]HOST:CONTAINER[/PROTOCOL]"));
            return vec![];
        }
    };
    let Some(loopback_only) = host_ip(p, path, node, ip) else { return vec![] };
    if host.is_empty() {
        p.add(path, Some(node), format!("{text:?} has no host port: it would get a random one, which differs per device; give a host port"));
        return vec![];
    }
    match (port_range(host), port_range(container)) {
        (Some(h), Some(c)) => expand(p, path, node, (h, c), (protocol, loopback_only), total),
        _ => {
            p.add(
                path,
                Some(node),
                format!("{text:?}: ports are numbers from 1 to 65535 (or ranges low-high)"),
            );
            vec![]
        }
    }
}

pub(super) fn long_port(
    p: &mut Problems,
    path: &str,
    node: &Node,
    total: usize,
) -> Vec<PortMapping> {
    let Some(entries) = node.as_map() else { return vec![] };
    let (mut target, mut published, mut proto, mut loopback_only) =
        (None, None, Protocol::Tcp, Some(false));
    for (key, v) in entries {
        let at = child(path, key);
        match key.as_str() {
            "target" => target = read::number::<u16>(p, &at, v, 1),
            "published" => {
                published = read::string(p, &at, v).and_then(|s| {
                    port_range(&s).or_else(|| {
                        p.add(&at, Some(v), format!("{s:?} is not a port or a range low-high"));
                        None
                    })
                })
            }
            "protocol" => {
                proto = read::string(p, &at, v)
                    .and_then(|s| protocol(p, &at, v, &s))
                    .unwrap_or(Protocol::Tcp)
            }
            "host_ip" => {
                loopback_only = read::string(p, &at, v).and_then(|s| host_ip(p, &at, v, &s))
            }
            // Informational in Compose outside Swarm.
            "mode" | "name" | "app_protocol" => {}
            other => p.add(
                &at,
                Some(v),
                format!("unknown port key {other:?}; use target, published, protocol and host_ip"),
            ),
        }
    }
    let Some(loopback_only) = loopback_only else { return vec![] };
    match (target, published) {
        (Some(t), Some(h)) => expand(p, path, node, (h, (t, t)), (proto, loopback_only), total),
        (Some(t), None) if !entries.iter().any(|(k, _)| k == "published") => {
            p.add(path, Some(node), format!("no published port: container port {t} would get a random host port, which differs per device; add published: {t}"));
            vec![]
        }
        (None, _) if !entries.iter().any(|(k, _)| k == "target") => {
            p.add(path, Some(node), "a port needs target (the container port)");
            vec![]
        }
        _ => vec![],
    }
}

pub(super) fn network_mode(p: &mut Problems, path: &str, node: &Node) -> Option<NetworkMode> {
    let mode = read::string(p, path, node)?;
    match mode.as_str() {
        "host" => Some(NetworkMode::Host),
        "none" => Some(NetworkMode::None),
        "bridge" | "default" => Some(NetworkMode::Release),
        m if m.starts_with("service:") || m.starts_with("container:") => {
            p.add(path, Some(node), "sharing another container's network namespace is not supported yet; use the release network (services reach each other by name) or host");
            None
        }
        other => {
            p.add(path, Some(node), format!("network_mode {other:?} is not supported; use host, none or bridge (the release network, the default)"));
            None
        }
    }
}

/// `pid`, `ipc` or `uts` (`key`): `host` shares the host's namespace, which the device's
/// `[policy] allow_host_namespaces` must allow (the agent judges, and `rollout plan` shows
/// it); `private` (ipc) is the default. Sharing another container's namespace is not
/// supported yet.
pub(super) fn host_namespace(
    p: &mut Problems,
    path: &str,
    key: &str,
    node: &Node,
) -> Option<Namespace> {
    let mode = read::string(p, path, node)?;
    match (key, mode.as_str()) {
        (_, "host") => key.parse().ok(),
        ("ipc", "private") => None,
        (_, m) if m.starts_with("service:") || m.starts_with("container:") => {
            p.add(path, Some(node), format!("sharing another container's {key} namespace is not supported yet; use host (if the device allows it) or leave {key} out"));
            None
        }
        (_, other) => {
            let allowed = if key == "ipc" { "host or private" } else { "host" };
            p.add(path, Some(node), format!("{key} {other:?} is not supported; use {allowed}, or leave {key} out for the container's own"));
            None
        }
    }
}

/// A service's `networks`: a list of declared network names, or a mapping of them to `{}` or
/// `{aliases: [...]}`.
pub(super) fn networks(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeSet<String>,
) -> Vec<NetworkAttachment> {
    let mut out: Vec<NetworkAttachment> = Vec::new();
    let mut add = |p: &mut Problems, at: &str, n: &Node, name: &str, aliases: Vec<String>| {
        if name != fleet_proto::release::DEFAULT_NETWORK && !declared.contains(name) {
            p.add(at, Some(n), format!("network {name:?} is not declared; add it under the top-level networks: ({name}: {{}})"));
        } else if out.iter().any(|a| a.name == name) {
            p.add(at, Some(n), format!("network {name:?} is listed twice"));
        } else {
            out.push(NetworkAttachment { name: name.to_owned(), aliases });
        }
    };
    match &node.value {
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = item(path, i);
                if let Some(name) = read::nonempty(p, &at, it) {
                    add(p, &at, it, &name, vec![]);
                }
            }
        }
        Value::Map(entries) => {
            for (name, value) in entries {
                let at = child(path, name);
                let mut aliases = vec![];
                if let Some(fields) = value.as_map() {
                    for (key, v) in fields {
                        let field_at = child(&at, key);
                        match key.as_str() {
                            "aliases" => {
                                for (a, alias) in read::strings(p, &field_at, v).unwrap_or_default().into_iter().enumerate() {
                                    if fleet_proto::release::is_dns_label(&alias) {
                                        aliases.push(alias);
                                    } else {
                                        p.add(&item(&field_at, a), Some(v), format!("{alias:?} is not a DNS name (letters, digits and -, at most 63)"));
                                    }
                                }
                            }
                            "ipv4_address" | "ipv6_address" | "link_local_ips" | "mac_address" | "priority" | "gw_priority" | "driver_opts" => p.add(&field_at, Some(v), "fixed addresses and endpoint options are not supported: services find each other by name on the release network"),
                            other => p.add(&field_at, Some(v), format!("unknown network attachment key {other:?}; use aliases")),
                        }
                    }
                } else if !value.is_null() {
                    p.add(
                        &at,
                        Some(value),
                        format!("expected {{}} or a mapping with aliases, found {}", value.kind()),
                    );
                }
                add(p, &at, value, name, aliases);
            }
        }
        _ => p.add(
            path,
            Some(node),
            format!("expected a list of network names or a mapping of them, found {}", node.kind()),
        ),
    }
    out
}
