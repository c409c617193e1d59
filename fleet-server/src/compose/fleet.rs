//! `x-fleet`: Fleet's own keys, at the top level (defaults for every service) and per service.
//!
//! It is our namespace, so unknown keys are refused rather than ignored: a typo must not
//! silently drop a hardware request.

use std::time::Duration;

use fleet_proto::release::{
    GpuKind, GpuSelect, HardwareRequest, Probe, SerialSelector, UpdateStrategy,
};

use super::read::{self, child, item, Problems, Sourced};
use super::yaml::{Node, Value};

/// What one `x-fleet` block says.
#[derive(Debug, Default)]
pub(crate) struct FleetKeys {
    pub(crate) update: Option<Sourced<UpdateStrategy>>,
    pub(crate) health_deadline: Option<Sourced<Duration>>,
    pub(crate) hardware: Vec<Sourced<HardwareRequest>>,
    pub(crate) optional_hardware: Vec<Sourced<HardwareRequest>>,
    pub(crate) health: Option<Sourced<Probe>>,
    pub(crate) realtime_priority: Option<Sourced<u8>>,
    pub(crate) telemetry: bool,
}

/// Reads an `x-fleet` block. At the top level only defaults that make sense for every
/// service are allowed.
pub(crate) fn fleet_keys(p: &mut Problems, path: &str, node: &Node, top_level: bool) -> FleetKeys {
    let mut keys = FleetKeys::default();
    if node.is_null() {
        return keys;
    }
    let Some(entries) = read::map(p, path, node) else { return keys };
    for (key, value) in entries {
        let at = child(path, key);
        match key.as_str() {
            "update" => {
                keys.update = read::string(p, &at, value).and_then(|s| match s.as_str() {
                    "start-first" => Some(Sourced::new(UpdateStrategy::StartFirst, &at, value)),
                    "stop-first" => Some(Sourced::new(UpdateStrategy::StopFirst, &at, value)),
                    other => {
                        p.add(&at, Some(value), format!("{other:?} is not an update strategy; use start-first (new beside old, then switch) or stop-first (for exclusive hardware)"));
                        None
                    }
                })
            }
            "health_deadline" => {
                keys.health_deadline = read::duration(p, &at, value).and_then(|d| {
                    if d.is_zero() {
                        p.add(&at, Some(value), "must be longer than zero");
                        None
                    } else {
                        Some(Sourced::new(d, &at, value))
                    }
                })
            }
            "hardware" | "optional_hardware" | "health" | "realtime_priority" | "telemetry" if top_level => {
                p.add(&at, Some(value), format!("{key} belongs to the service that uses it: move it under services.<name>.x-fleet (top-level x-fleet holds defaults: update, health_deadline)"));
            }
            "hardware" => keys.hardware = hardware_list(p, &at, value),
            "optional_hardware" => keys.optional_hardware = hardware_list(p, &at, value),
            "health" => keys.health = health(p, &at, value),
            "telemetry" => keys.telemetry = read::boolean(p, &at, value).unwrap_or(false),
            "realtime_priority" => {
                keys.realtime_priority = read::integer(p, &at, value).and_then(|n| {
                    match u8::try_from(n).ok().filter(|n| (1..=99).contains(n)) {
                        Some(n) => Some(Sourced::new(n, &at, value)),
                        None => {
                            p.add(&at, Some(value), format!("{n} is outside the real-time priorities 1..=99"));
                            None
                        }
                    }
                })
            }
            other => p.add(&at, Some(value), format!("unknown x-fleet key {other:?}; x-fleet takes update, health_deadline, hardware, optional_hardware, health, realtime_priority and telemetry (see COMPOSE.md)")),
        }
    }
    keys
}

/// `health: { http: { port, path } }` or `health: { tcp: { port } }`.
fn health(p: &mut Problems, path: &str, node: &Node) -> Option<Sourced<Probe>> {
    let entries = read::map(p, path, node)?;
    let [(kind, spec)] = entries else {
        p.add(path, Some(node), "give exactly one probe: http: { port, path } or tcp: { port }");
        return None;
    };
    let at = child(path, kind);
    let fields = read::map(p, &at, spec)?;
    let mut port = None;
    let mut http_path = None;
    for (key, value) in fields {
        let field_at = child(&at, key);
        match (kind.as_str(), key.as_str()) {
            (_, "port") => port = read::number::<u16>(p, &field_at, value, 1),
            ("http", "path") => {
                http_path = read::string(p, &field_at, value).filter(|s| {
                    let ok = s.starts_with('/');
                    if !ok {
                        p.add(&field_at, Some(value), format!("{s:?} must start with /"));
                    }
                    ok
                })
            }
            _ => p.add(&field_at, Some(value), format!("unknown key {key:?} for a {kind} probe")),
        }
    }
    let Some(port) = port else {
        if !fields.iter().any(|(k, _)| k == "port") {
            p.add(&at, Some(spec), "the probe needs the container port: port: 8080");
        }
        return None;
    };
    let probe = match kind.as_str() {
        "http" => Probe::Http { port, path: http_path.unwrap_or_else(|| "/".to_owned()) },
        "tcp" => Probe::Tcp { port },
        other => {
            p.add(&at, Some(spec), format!("unknown probe {other:?}; use http or tcp"));
            return None;
        }
    };
    Some(Sourced::new(probe, path, node))
}

fn hardware_list(p: &mut Problems, path: &str, node: &Node) -> Vec<Sourced<HardwareRequest>> {
    let Some(items) = node.as_seq() else {
        p.add(
            path,
            Some(node),
            format!("expected a list of hardware requests, found {}", node.kind()),
        );
        return vec![];
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| {
            let at = item(path, i);
            hardware(p, &at, it).map(|h| Sourced::new(h, &at, it))
        })
        .collect()
}

const KINDS: &str = "serial, gpio, i2c, spi, video, gpu, can or device";

/// One hardware request: a mapping with one kind key (plus `path`, and `permissions` for a
/// device).
fn hardware(p: &mut Problems, path: &str, node: &Node) -> Option<HardwareRequest> {
    let entries = read::map(p, path, node)?;
    let mut kind: Option<(&str, &Node)> = None;
    let mut container_path: Option<(String, &Node)> = None;
    let mut permissions: Option<String> = None;
    let mut unknown = false;
    for (key, value) in entries {
        let at = child(path, key);
        match key.as_str() {
            "serial" | "gpio" | "i2c" | "spi" | "video" | "gpu" | "can" | "device" => {
                if let Some((first, _)) = kind {
                    p.add(
                        &at,
                        Some(value),
                        format!("one request per list item: {first} and {key} are both here"),
                    );
                    return None;
                }
                kind = Some((key, value));
            }
            "path" => {
                container_path = read::string(p, &at, value).and_then(|s| {
                    if s.starts_with('/') {
                        Some((s, value))
                    } else {
                        p.add(&at, Some(value), format!("{s:?} is not an absolute path"));
                        None
                    }
                })
            }
            "permissions" => {
                permissions = read::string(p, &at, value).filter(|s| {
                    let ok = !s.is_empty() && s.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
                    if !ok {
                        p.add(
                            &at,
                            Some(value),
                            format!("{s:?} is not a permission set of r, w and m"),
                        );
                    }
                    ok
                })
            }
            other => {
                unknown = true;
                p.add(
                    &at,
                    Some(value),
                    format!("unknown key {other:?}; a hardware request is one of {KINDS}"),
                );
            }
        }
    }
    let Some((kind, value)) = kind else {
        // An unknown key was most likely meant as the kind: it is reported already.
        if !unknown {
            p.add(path, Some(node), format!("no hardware kind; use one of {KINDS}"));
        }
        return None;
    };
    let at = child(path, kind);
    let only_for = |p: &mut Problems, what: &str, allowed: bool| {
        if !allowed {
            p.add(
                &child(path, what),
                Some(node),
                format!("{what} applies to serial and device requests only"),
            );
        }
    };
    only_for(p, "path", container_path.is_none() || matches!(kind, "serial" | "device"));
    only_for(p, "permissions", permissions.is_none() || kind == "device");
    match kind {
        "serial" => {
            let port = serial(p, &at, value)?;
            let Some((container_path, _)) = container_path else {
                p.add(path, Some(node), "a serial port needs the path the service opens inside the container, e.g. path: /dev/ttyUSB0");
                return None;
            };
            Some(HardwareRequest::Serial { port, container_path })
        }
        "gpio" => read::nonempty(p, &at, value).map(|chip| HardwareRequest::Gpio { chip }),
        "i2c" => {
            let text = read::string(p, &at, value)?;
            let bus = text.strip_prefix("/dev/i2c-").unwrap_or(&text).parse::<u32>();
            bus.map(|bus| HardwareRequest::I2c { bus })
                .map_err(|_| {
                    p.add(
                        &at,
                        Some(value),
                        format!("{text:?} is not an I2C bus number (1 for /dev/i2c-1)"),
                    )
                })
                .ok()
        }
        "spi" => spi(p, &at, value),
        "video" => video(p, &at, value),
        "gpu" => gpu(p, &at, value),
        "can" => {
            let name = read::nonempty(p, &at, value)?;
            let ok = name.len() <= 15
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !ok {
                p.add(
                    &at,
                    Some(value),
                    format!("{name:?} is not a network interface name like can0"),
                );
                return None;
            }
            Some(HardwareRequest::Can { interface: name })
        }
        "device" => {
            let host_path = read::string(p, &at, value)?;
            if !host_path.starts_with("/dev/") {
                p.add(&at, Some(value), format!("{host_path:?} is not a device node under /dev/"));
                return None;
            }
            Some(HardwareRequest::Device {
                host_path,
                container_path: container_path.map(|(c, _)| c).unwrap_or_default(),
                permissions: permissions.unwrap_or_default(),
            })
        }
        _ => None,
    }
}

fn serial(p: &mut Problems, path: &str, node: &Node) -> Option<SerialSelector> {
    if let Some(text) = node.as_str() {
        if let Some(id) = text.strip_prefix("/dev/serial/by-id/").filter(|s| !s.is_empty()) {
            return Some(SerialSelector::ById(id.to_owned()));
        }
        if let Some(pth) = text.strip_prefix("/dev/serial/by-path/").filter(|s| !s.is_empty()) {
            return Some(SerialSelector::ByPath(pth.to_owned()));
        }
        p.add(path, Some(node), format!("{text:?} does not name a port by a stable identity; use {{ by-id: ... }}, {{ by-path: ... }}, {{ usb: \"0403:6001\" }} or a /dev/serial/by-id/ path (a /dev/ttyUSB0 number changes with plug order)"));
        return None;
    }
    let entries = read::map(p, path, node)?;
    let [(how, value)] = entries else {
        p.add(path, Some(node), "give exactly one of by-id, by-path or usb");
        return None;
    };
    let at = child(path, how);
    let text = read::nonempty(p, &at, value)?;
    match how.as_str() {
        "by-id" => {
            Some(SerialSelector::ById(text.trim_start_matches("/dev/serial/by-id/").to_owned()))
        }
        "by-path" => {
            Some(SerialSelector::ByPath(text.trim_start_matches("/dev/serial/by-path/").to_owned()))
        }
        "usb" => {
            let mut parts = text.splitn(3, ':');
            let hex4 = |s: Option<&str>| {
                s.filter(|s| s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(str::to_ascii_lowercase)
            };
            match (hex4(parts.next()), hex4(parts.next()), parts.next()) {
                (Some(vendor), Some(product), serial) => Some(SerialSelector::Usb {
                    vendor,
                    product,
                    serial: serial.filter(|s| !s.is_empty()).map(str::to_owned),
                }),
                _ => {
                    p.add(
                        &at,
                        Some(value),
                        format!(
                            "{text:?} is not VENDOR:PRODUCT[:SERIAL] in hex, e.g. \"0403:6001\""
                        ),
                    );
                    None
                }
            }
        }
        other => {
            p.add(
                &at,
                Some(value),
                format!("unknown selector {other:?}; use by-id, by-path or usb"),
            );
            None
        }
    }
}

fn spi(p: &mut Problems, path: &str, node: &Node) -> Option<HardwareRequest> {
    let parse = |s: &str| {
        let s = s.strip_prefix("/dev/spidev").unwrap_or(s);
        let (b, c) = s.split_once('.')?;
        Some(HardwareRequest::Spi { bus: b.parse().ok()?, chip_select: c.parse().ok()? })
    };
    match &node.value {
        Value::Str(s) => parse(s).or_else(|| {
            p.add(
                path,
                Some(node),
                format!("{s:?} is not BUS.CHIP_SELECT like \"0.1\" (/dev/spidev0.1)"),
            );
            None
        }),
        Value::Float(_) => {
            p.add(path, Some(node), "quote the bus and chip select, e.g. spi: \"0.1\": YAML reads an unquoted 0.10 as the number 0.1");
            None
        }
        Value::Map(entries) => {
            let (mut bus, mut chip_select) = (None, None);
            for (key, value) in entries {
                let at = child(path, key);
                match key.as_str() {
                    "bus" => bus = read::number::<u32>(p, &at, value, 0),
                    "chip_select" => chip_select = read::number::<u32>(p, &at, value, 0),
                    other => p.add(
                        &at,
                        Some(value),
                        format!("unknown key {other:?}; use bus and chip_select"),
                    ),
                }
            }
            match (bus, chip_select) {
                (Some(bus), Some(chip_select)) => Some(HardwareRequest::Spi { bus, chip_select }),
                _ => {
                    p.add(path, Some(node), "an SPI request needs bus and chip_select");
                    None
                }
            }
        }
        _ => {
            p.add(path, Some(node), format!("expected \"BUS.CHIP_SELECT\", found {}", node.kind()));
            None
        }
    }
}

fn video(p: &mut Problems, path: &str, node: &Node) -> Option<HardwareRequest> {
    if node.as_map().is_none() {
        return read::nonempty(p, path, node).map(|device| HardwareRequest::Video { device });
    }
    let entries = read::map(p, path, node)?;
    let [(how, value)] = entries else {
        p.add(path, Some(node), "give exactly one of name, by-id or by-path");
        return None;
    };
    let at = child(path, how);
    let text = read::nonempty(p, &at, value)?;
    let device = match how.as_str() {
        "name" => text,
        "by-id" => format!("/dev/v4l/by-id/{}", text.trim_start_matches("/dev/v4l/by-id/")),
        "by-path" => format!("/dev/v4l/by-path/{}", text.trim_start_matches("/dev/v4l/by-path/")),
        other => {
            p.add(
                &at,
                Some(value),
                format!("unknown selector {other:?}; use name, by-id or by-path"),
            );
            return None;
        }
    };
    Some(HardwareRequest::Video { device })
}

fn gpu_kind(p: &mut Problems, path: &str, node: &Node, name: &str) -> Option<GpuKind> {
    match name {
        "nvidia" => Some(GpuKind::Nvidia),
        "jetson" => Some(GpuKind::Jetson),
        "dri" => Some(GpuKind::Dri),
        other => {
            p.add(
                path,
                Some(node),
                format!("unknown GPU kind {other:?}; use nvidia, jetson or dri"),
            );
            None
        }
    }
}

fn gpu(p: &mut Problems, path: &str, node: &Node) -> Option<HardwareRequest> {
    if let Some(name) = node.as_str() {
        let kind = gpu_kind(p, path, node, name)?;
        return Some(HardwareRequest::Gpu { kind, select: GpuSelect::All });
    }
    let entries = read::map(p, path, node)?;
    let [(name, spec)] = entries else {
        p.add(path, Some(node), "give exactly one GPU kind: nvidia, jetson or dri");
        return None;
    };
    let at = child(path, name);
    let kind = gpu_kind(p, &at, spec, name)?;
    let select = gpu_select(p, &at, spec)?;
    Some(HardwareRequest::Gpu { kind, select })
}

/// `{}` / null (all), `{ count: 1 }`, `{ count: all }` or `{ ids: [...] }`.
pub(crate) fn gpu_select(p: &mut Problems, path: &str, node: &Node) -> Option<GpuSelect> {
    if node.is_null() {
        return Some(GpuSelect::All);
    }
    let entries = read::map(p, path, node)?;
    match entries {
        [] => Some(GpuSelect::All),
        [(key, value)] if key == "count" => count(p, &child(path, key), value),
        [(key, value)] if key == "ids" => {
            let at = child(path, key);
            let ids = read::strings(p, &at, value)?;
            if ids.is_empty() {
                p.add(&at, Some(value), "list at least one GPU index or UUID");
                return None;
            }
            Some(GpuSelect::Ids(ids))
        }
        _ => {
            p.add(path, Some(node), "give count or ids (not both), or nothing for every GPU");
            None
        }
    }
}

/// A GPU count: a positive number or `all`.
pub(crate) fn count(p: &mut Problems, path: &str, node: &Node) -> Option<GpuSelect> {
    if node.as_str() == Some("all") {
        return Some(GpuSelect::All);
    }
    read::number::<u32>(p, path, node, 1).map(GpuSelect::Count)
}
