//! The keys that become a service's [`ContainerOptions`]: `init`, `tty`, `stdin_open`,
//! `stop_signal`, `stop_grace_period`, `hostname`, `domainname`, `extra_hosts`, `dns`,
//! `dns_search`, `dns_opt`, `sysctls`, `cpu_period`, `cpu_quota`, `oom_score_adj`,
//! `blkio_config.weight` and `runtime`.
//!
//! Here each key's Compose forms are read (a string or a list, a list or a map); the values'
//! own rules (signal names, addresses, namespaced sysctls, ranges) are
//! [`fleet_proto::ReleaseSpec::validate`]'s, reported at the key they came from.

use fleet_proto::release::{ContainerOptions, HostEntry};

use crate::compose::read::{self, child, item, Problems};
use crate::compose::yaml::{Node, Value};

/// Reads `key` into `options` if it is one of these keys; `false` if it is not.
/// `sources` gets the spec field each key set and the Compose path it came from.
pub(super) fn option(
    p: &mut Problems,
    at: &str,
    key: &str,
    v: &Node,
    options: &mut ContainerOptions,
    sources: &mut Vec<(&'static str, String)>,
) -> bool {
    let field = match key {
        "init" => {
            options.init = read::boolean(p, at, v).unwrap_or(false);
            "options.init"
        }
        "tty" => {
            options.tty = read::boolean(p, at, v).unwrap_or(false);
            "options.tty"
        }
        "stdin_open" => {
            options.stdin_open = read::boolean(p, at, v).unwrap_or(false);
            "options.stdin_open"
        }
        "stop_signal" => {
            options.stop_signal = read::nonempty(p, at, v);
            "options.stop_signal"
        }
        "stop_grace_period" => {
            options.stop_grace = read::duration(p, at, v);
            "options.stop_grace"
        }
        "hostname" => {
            options.hostname = read::nonempty(p, at, v);
            "options.hostname"
        }
        "domainname" => {
            options.domainname = read::nonempty(p, at, v);
            "options.domainname"
        }
        "extra_hosts" => {
            options.extra_hosts = extra_hosts(p, at, v);
            "options.extra_hosts"
        }
        "dns" => {
            options.dns = one_or_many(p, at, v);
            "options.dns"
        }
        "dns_search" => {
            options.dns_search = one_or_many(p, at, v);
            "options.dns_search"
        }
        "dns_opt" => {
            options.dns_options = read::strings(p, at, v).unwrap_or_default();
            "options.dns_options"
        }
        "sysctls" => {
            options.sysctls = sysctls(p, at, v);
            "options.sysctls"
        }
        "cpu_period" => {
            options.cpu_period_us = read::number::<u32>(p, at, v, 0);
            "options.cpu_period_us"
        }
        "cpu_quota" => {
            options.cpu_quota_us = read::number::<u32>(p, at, v, 0);
            "options.cpu_quota_us"
        }
        "oom_score_adj" => {
            options.oom_score_adj = read::integer(p, at, v).and_then(|n| {
                let adj = i16::try_from(n).ok().filter(|a| (-1000..=1000).contains(a));
                if adj.is_none() {
                    p.add(at, Some(v), format!("{n} is outside -1000 to 1000"));
                }
                adj
            });
            "options.oom_score_adj"
        }
        "blkio_config" => {
            options.blkio_weight = blkio_weight(p, at, v);
            "options.blkio_weight"
        }
        "runtime" => {
            options.runtime = read::nonempty(p, at, v);
            "options.runtime"
        }
        _ => return false,
    };
    sources.push((field, at.to_owned()));
    true
}

/// A string or a list of strings.
fn one_or_many(p: &mut Problems, at: &str, v: &Node) -> Vec<String> {
    read::one_or_many(p, at, v).unwrap_or_default().into_iter().map(|(_, s)| s).collect()
}

/// `["plc:192.168.1.20", "db=10.0.0.5", "v6:[fd00::1]"]` or `{plc: 192.168.1.20}`.
fn extra_hosts(p: &mut Problems, at: &str, v: &Node) -> Vec<HostEntry> {
    let entry = |name: &str, address: &str| HostEntry {
        name: name.trim().to_owned(),
        address: address.trim().trim_start_matches('[').trim_end_matches(']').to_owned(),
    };
    match &v.value {
        Value::Map(entries) => entries
            .iter()
            .filter_map(|(name, address)| {
                let address = read::nonempty(p, &child(at, name), address)?;
                Some(entry(name, &address))
            })
            .collect(),
        _ => {
            let items = read::strings(p, at, v).unwrap_or_default();
            items
                .iter()
                .enumerate()
                .filter_map(|(i, text)| {
                    // A host name holds neither `=` nor `:`; an IPv6 address may hold `:`.
                    match text.split_once('=').or_else(|| text.split_once(':')) {
                        Some((name, address)) => Some(entry(name, address)),
                        None => {
                            p.add(
                                &item(at, i),
                                None,
                                format!("{text:?} is not HOST:IP or HOST=IP"),
                            );
                            None
                        }
                    }
                })
                .collect()
        }
    }
}

/// `{net.core.somaxconn: 1024}` or `["net.core.somaxconn=1024"]`.
fn sysctls(p: &mut Problems, at: &str, v: &Node) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    match &v.value {
        Value::Map(entries) => {
            for (key, value) in entries {
                let value = match &value.value {
                    Value::Int(n) => Some(n.to_string()),
                    _ => read::string(p, &child(at, key), value),
                };
                if let Some(value) = value {
                    out.insert(key.clone(), value);
                }
            }
        }
        _ => {
            for (i, text) in read::strings(p, at, v).unwrap_or_default().iter().enumerate() {
                match text.split_once('=') {
                    Some((key, value)) => {
                        out.insert(key.trim().to_owned(), value.trim().to_owned());
                    }
                    None => p.add(&item(at, i), None, format!("{text:?} is not NAME=VALUE")),
                }
            }
        }
    }
    out
}

/// `blkio_config: {weight: 300}`. Per-device weights and throttles name the device's own
/// disks, which a release for many devices cannot know.
fn blkio_weight(p: &mut Problems, at: &str, v: &Node) -> Option<u16> {
    let mut weight = None;
    for (key, value) in read::map(p, at, v)? {
        let kat = child(at, key);
        match key.as_str() {
            "weight" => weight = read::number::<u16>(p, &kat, value, 0),
            _ => p.add(&kat, Some(value), format!("blkio_config.{key} is not supported: it names the device's own disks; set weight only")),
        }
    }
    weight
}
