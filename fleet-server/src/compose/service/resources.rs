//! Hardware and limits: `devices`, GPU reservations, `pids_limit`, `ulimits`.

use fleet_proto::release::{GpuKind, GpuSelect, HardwareRequest, Ulimit};

use crate::compose::fleet;
use crate::compose::read::{self, child, item, Problems, Sourced};
use crate::compose::yaml::Node;

/// `/dev/x[:/dev/y[:rwm]]` → a device request by host path.
pub(super) fn devices(p: &mut Problems, path: &str, node: &Node) -> Vec<Sourced<HardwareRequest>> {
    let Some(items) = read::strings(p, path, node) else { return vec![] };
    let seq = node.as_seq().unwrap_or_default();
    let mut out = Vec::new();
    for (i, text) in items.iter().enumerate() {
        let at = item(path, i);
        let it = &seq[i];
        let parts: Vec<&str> = text.split(':').collect();
        let (host, container, perms) = match parts.as_slice() {
            [h] => (*h, "", ""),
            [h, c] if c.starts_with('/') => (*h, *c, ""),
            [h, perms] => (*h, "", *perms),
            [h, c, perms] => (*h, *c, *perms),
            _ => ("", "", ""),
        };
        if !host.starts_with('/') {
            let why = if text.contains('=') {
                "CDI device names are not supported; give the device node's host path (/dev/...)"
                    .to_owned()
            } else {
                format!(
                    "{text:?} is not HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]] with absolute paths"
                )
            };
            p.add(&at, Some(it), why);
            continue;
        }
        if !container.is_empty() && !container.starts_with('/')
            || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
        {
            p.add(&at, Some(it), format!("{text:?} is not HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]] (permissions of r, w and m)"));
            continue;
        }
        out.push(Sourced::new(
            HardwareRequest::Device {
                host_path: host.to_owned(),
                container_path: container.to_owned(),
                permissions: perms.to_owned(),
            },
            &at,
            it,
        ));
    }
    out
}

/// `deploy.resources.reservations.devices`: NVIDIA GPUs only.
pub(super) fn reserved_devices(
    p: &mut Problems,
    path: &str,
    node: &Node,
) -> Vec<Sourced<HardwareRequest>> {
    let Some(items) = node.as_seq() else {
        p.add(
            path,
            Some(node),
            format!("expected a list of device reservations, found {}", node.kind()),
        );
        return vec![];
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let at = item(path, i);
        let Some(fields) = read::map(p, &at, it) else { continue };
        let (mut gpu, mut select, mut ok) = (false, None::<(GpuSelect, String)>, true);
        for (key, v) in fields {
            let fat = child(&at, key);
            match key.as_str() {
                "capabilities" => {
                    let caps = read::strings(p, &fat, v).unwrap_or_default();
                    gpu = caps.iter().any(|c| c == "gpu");
                    if !gpu {
                        p.add(&fat, Some(v), "only GPU reservations (capabilities: [gpu]) are supported; request other hardware under x-fleet.hardware");
                        ok = false;
                    }
                }
                "driver" => {
                    if read::string(p, &fat, v).is_some_and(|d| d != "nvidia") {
                        p.add(&fat, Some(v), "only the nvidia driver is supported here; for Jetson or DRI GPUs use x-fleet.hardware (gpu: jetson / gpu: dri)");
                        ok = false;
                    }
                }
                "count" | "device_ids" => {
                    if let Some((_, first)) = &select {
                        p.add(
                            &fat,
                            Some(v),
                            format!("count and device_ids exclude each other ({first} is set)"),
                        );
                        ok = false;
                        continue;
                    }
                    let s = if key == "count" {
                        fleet::count(p, &fat, v)
                    } else {
                        read::strings(p, &fat, v).map(GpuSelect::Ids)
                    };
                    match s {
                        Some(s) => select = Some((s, fat)),
                        None => ok = false,
                    }
                }
                "options" => {
                    p.add(&fat, Some(v), "driver options are not supported");
                    ok = false;
                }
                other => {
                    p.add(
                        &fat,
                        Some(v),
                        format!(
                            "unknown key {other:?}; use capabilities, driver, count and device_ids"
                        ),
                    );
                    ok = false;
                }
            }
        }
        if !gpu && ok {
            p.add(&at, Some(it), "a device reservation needs capabilities: [gpu]");
            ok = false;
        }
        if ok {
            // No count and no ids: every GPU, as Docker does.
            let select = select.map_or(GpuSelect::All, |(s, _)| s);
            out.push(Sourced::new(HardwareRequest::Gpu { kind: GpuKind::Nvidia, select }, &at, it));
        }
    }
    out
}

/// `pids_limit: 100`; `-1` or `0` mean no limit.
pub(super) fn pids(p: &mut Problems, path: &str, node: &Node) -> Option<Sourced<Option<u32>>> {
    let n = read::integer(p, path, node)?;
    match n {
        -1 | 0 => Some(Sourced::new(None, path, node)),
        n => match u32::try_from(n) {
            Ok(n) => Some(Sourced::new(Some(n), path, node)),
            Err(_) => {
                p.add(path, Some(node), format!("{n} is not a process limit"));
                None
            }
        },
    }
}

/// `nofile: 1024` or `nofile: { soft, hard }`.
pub(super) fn ulimits(p: &mut Problems, path: &str, node: &Node) -> Vec<Ulimit> {
    let Some(entries) = read::map(p, path, node) else { return vec![] };
    let mut out = Vec::new();
    for (name, v) in entries {
        let at = child(path, name);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
            p.add(&at, Some(v), format!("{name:?} is not a ulimit name like nofile or memlock"));
            continue;
        }
        let limits = if let Some(fields) = v.as_map() {
            let (mut soft, mut hard) = (None, None);
            for (key, fv) in fields {
                let fat = child(&at, key);
                match key.as_str() {
                    "soft" => soft = read::number::<i64>(p, &fat, fv, -1),
                    "hard" => hard = read::number::<i64>(p, &fat, fv, -1),
                    other => {
                        p.add(&fat, Some(fv), format!("unknown key {other:?}; use soft and hard"))
                    }
                }
            }
            match (soft, hard) {
                (Some(s), Some(h)) => Some((s, h)),
                _ => {
                    if !fields.iter().any(|(k, _)| k == "soft")
                        || !fields.iter().any(|(k, _)| k == "hard")
                    {
                        p.add(&at, Some(v), "give both soft and hard");
                    }
                    None
                }
            }
        } else {
            read::number::<i64>(p, &at, v, -1).map(|n| (n, n))
        };
        let Some((soft, hard)) = limits else { continue };
        // -1 is "unlimited" for both.
        if hard != -1 && (soft == -1 || soft > hard) {
            p.add(&at, Some(v), format!("soft limit {soft} is above the hard limit {hard}"));
            continue;
        }
        out.push(Ulimit { name: name.clone(), soft, hard });
    }
    out
}
