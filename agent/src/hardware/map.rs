//! Pure: one service's hardware requests against the host become engine device options.
//!
//! Invariants:
//! * Nothing outside `/dev` is ever mapped: every host path comes from the scanned node table
//!   ([`HostHardware::nodes`]) or through a link the scanner kept because it resolves to one.
//! * A container path holds at most one host node; the same node asked for twice at the same
//!   container path is mapped once (permissions joined).
//! * The output is sorted and deduplicated, so equal hardware gives an equal mapping (it is
//!   hashed into the container's configuration).
//! * "Not present" is worded by [`Inventory::unmet`], the rule the server also applies.

use std::collections::{BTreeMap, BTreeSet};

use fleet_proto::inventory::{describe, Gpu, SerialPort};
use fleet_proto::release::{
    GpuKind, GpuSelect, HardwareRequest, NetworkMode, SerialSelector, ServiceSpec, SpecError,
};
use fleet_proto::Inventory;

use super::{DeviceBind, DeviceNode, GpuRequest, HardwareMapping, HostHardware};
use crate::runtime::DeviceMapping;

/// Capabilities asked of the NVIDIA container toolkit: what CUDA and `nvidia-smi` need
/// (Docker's `--gpus` asks for `gpu` alone, which mounts no libraries).
const NVIDIA_CAPABILITIES: [&str; 3] = ["gpu", "compute", "utility"];

/// Maps `spec`'s hardware (`hardware` required, `optional_hardware` when present) onto `hw`.
/// `at` is the service's path in the release (`services[1]`), so errors name the field.
pub fn map_service(
    spec: &ServiceSpec,
    hw: &HostHardware,
    at: &str,
) -> Result<HardwareMapping, Vec<SpecError>> {
    let mut mapper = Mapper::new(spec, hw);
    for (i, req) in spec.hardware.iter().enumerate() {
        mapper.request(req, &format!("{at}.hardware[{i}]"), Need::Required);
    }
    for (i, req) in spec.optional_hardware.iter().enumerate() {
        mapper.request(req, &format!("{at}.optional_hardware[{i}]"), Need::Optional);
    }
    mapper.finish()
}

/// Whether a request's absence refuses the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    Optional,
}

/// Device cgroup permissions: a non-empty subset of read, write, mknod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Perms {
    read: bool,
    write: bool,
    mknod: bool,
}

impl Perms {
    const ALL: Perms = Perms { read: true, write: true, mknod: true };

    /// Parses `rwm`-style permissions; empty means all three.
    fn parse(s: &str) -> Result<Perms, String> {
        if s.is_empty() {
            return Ok(Perms::ALL);
        }
        let mut p = Perms { read: false, write: false, mknod: false };
        for c in s.chars() {
            let flag = match c {
                'r' => &mut p.read,
                'w' => &mut p.write,
                'm' => &mut p.mknod,
                other => {
                    return Err(format!(
                        "{s:?}: {other:?} is not a device permission; use r (read), w (write) and m (mknod), e.g. rwm"
                    ))
                }
            };
            if *flag {
                return Err(format!("{s:?}: {c:?} is given twice; name each of r, w, m once"));
            }
            *flag = true;
        }
        Ok(p)
    }

    fn union(self, other: Perms) -> Perms {
        Perms {
            read: self.read || other.read,
            write: self.write || other.write,
            mknod: self.mknod || other.mknod,
        }
    }

    /// Canonical form, always in `rwm` order.
    fn render(self) -> String {
        [(self.read, 'r'), (self.write, 'w'), (self.mknod, 'm')]
            .iter()
            .filter_map(|&(on, c)| on.then_some(c))
            .collect()
    }
}

/// One node placed at a container path.
#[derive(Debug, Clone)]
struct Placed {
    host_path: String,
    node: DeviceNode,
    perms: Perms,
    /// The request that placed it first, for conflict messages.
    by: String,
}

#[derive(Debug)]
struct Mapper<'a> {
    spec: &'a ServiceSpec,
    hw: &'a HostHardware,
    /// Container path → what is mapped there.
    placed: BTreeMap<String, Placed>,
    /// The NVIDIA request, if present.
    gpus: Option<GpuRequest>,
    /// The path of the NVIDIA request, present or not: a service makes at most one.
    nvidia_by: Option<String>,
    runtime: Option<String>,
    env: BTreeMap<String, String>,
    groups: BTreeSet<u32>,
    absent: BTreeSet<String>,
    errors: Vec<SpecError>,
}

impl<'a> Mapper<'a> {
    fn new(spec: &'a ServiceSpec, hw: &'a HostHardware) -> Self {
        Mapper {
            spec,
            hw,
            placed: BTreeMap::new(),
            gpus: None,
            nvidia_by: None,
            runtime: None,
            env: BTreeMap::new(),
            groups: BTreeSet::new(),
            absent: BTreeSet::new(),
            errors: Vec::new(),
        }
    }

    fn inv(&self) -> &'a Inventory {
        &self.hw.inventory
    }

    fn refuse(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(SpecError { path: path.into(), reason: reason.into() });
    }

    /// `req` is not on this host: refused if required, noted if optional. `detail` words it
    /// when the inventory has it but the node is missing (the shared rule then says present).
    fn absent(&mut self, req: &HardwareRequest, path: &str, need: Need, detail: Option<String>) {
        match need {
            Need::Required => {
                let reason = self
                    .inv()
                    .unmet(req)
                    .or(detail)
                    .unwrap_or_else(|| format!("{} not present", describe(req)));
                self.refuse(path, reason);
            }
            Need::Optional => {
                self.absent.insert(describe(req));
            }
        }
    }

    /// The node at `host_path`, or the reason it is missing.
    fn node(&self, req: &HardwareRequest, host_path: &str) -> Result<DeviceNode, String> {
        self.hw.nodes.get(host_path).copied().ok_or_else(|| {
            format!("{} not present (its device node {host_path} is missing)", describe(req))
        })
    }

    fn request(&mut self, req: &HardwareRequest, path: &str, need: Need) {
        match req {
            HardwareRequest::Serial { port, container_path } => {
                self.serial(req, port, container_path, path, need);
            }
            HardwareRequest::Gpio { chip } => self.gpio(req, chip, path, need),
            HardwareRequest::I2c { bus } => {
                let present = self.inv().i2c.iter().any(|b| b.bus == *bus);
                self.same_path_node(req, present, &format!("/dev/i2c-{bus}"), path, need);
            }
            HardwareRequest::Spi { bus, chip_select } => {
                let present =
                    self.inv().spi.iter().any(|d| d.bus == *bus && d.chip_select == *chip_select);
                self.same_path_node(
                    req,
                    present,
                    &format!("/dev/spidev{bus}.{chip_select}"),
                    path,
                    need,
                );
            }
            HardwareRequest::Video { device } => self.video(req, device, path, need),
            HardwareRequest::Gpu { kind, select } => self.gpu(req, *kind, select, path, need),
            HardwareRequest::Can { interface } => self.can(req, interface, path, need),
            HardwareRequest::Device { host_path, container_path, permissions } => {
                self.device(req, host_path, container_path, permissions, path, need);
            }
        }
    }

    fn serial(
        &mut self,
        req: &HardwareRequest,
        port: &SerialSelector,
        container_path: &str,
        path: &str,
        need: Need,
    ) {
        let container_ok = match check_container_path(container_path) {
            Ok(()) => true,
            Err(reason) => {
                self.refuse(format!("{path}.container_path"), reason);
                false
            }
        };
        let matches = serial_matches(self.inv(), port);
        let found = match matches.as_slice() {
            [] => None,
            [one] => Some(*one),
            many => {
                let paths: Vec<&str> = many.iter().map(|p| p.dev_path.as_str()).collect();
                let hint = match port {
                    SerialSelector::Usb { serial: None, .. } => "add the adapter's serial number",
                    SerialSelector::Usb { serial: Some(_), .. } => {
                        "the adapters report the same serial number; select the port by by-path (the USB socket it is plugged into) instead"
                    }
                    SerialSelector::ById(_) | SerialSelector::ByPath(_) => {
                        "select the port by its USB vendor, product and serial number instead"
                    }
                };
                self.refuse(
                    path,
                    format!(
                        "ambiguous: {} ports match {} ({}); {hint}",
                        many.len(),
                        describe(req),
                        paths.join(", ")
                    ),
                );
                return;
            }
        };
        let Some(port) = found else {
            self.absent(req, path, need, None);
            return;
        };
        match self.node(req, &port.dev_path) {
            Ok(node) if container_ok => {
                self.place(path, &port.dev_path, container_path, node, Perms::ALL);
            }
            Ok(_) => {}
            Err(detail) => self.absent(req, path, need, Some(detail)),
        }
    }

    fn gpio(&mut self, req: &HardwareRequest, chip: &str, path: &str, need: Need) {
        let gpio = &self.inv().gpio;
        // A name is unique; a label is not always (two expanders of one kind share it).
        let by_name: Vec<_> = gpio.iter().filter(|c| c.name == chip).collect();
        let matches = if by_name.is_empty() {
            gpio.iter().filter(|c| c.label == chip).collect()
        } else {
            by_name
        };
        match matches.as_slice() {
            [] => self.absent(req, path, need, None),
            [one] => {
                let dev = format!("/dev/{}", one.name);
                self.same_path_node(req, true, &dev, path, need);
            }
            many => {
                let names: Vec<&str> = many.iter().map(|c| c.name.as_str()).collect();
                self.refuse(
                    path,
                    format!(
                        "ambiguous: {} GPIO chips are labelled {chip:?} ({}); name the chip instead",
                        many.len(),
                        names.join(", ")
                    ),
                );
            }
        }
    }

    fn video(&mut self, req: &HardwareRequest, device: &str, path: &str, need: Need) {
        let by_id = device.strip_prefix("/dev/v4l/by-id/").unwrap_or(device);
        let by_path = device.strip_prefix("/dev/v4l/by-path/").unwrap_or(device);
        // Several nodes can share a name (a UVC camera's capture and metadata nodes): a request
        // by name gets them all; by-id and by-path names pick one.
        let dev_paths: BTreeSet<&str> = self
            .inv()
            .video
            .iter()
            .filter(|v| {
                v.name == device
                    || v.dev_path == device
                    || v.by_id.iter().any(|n| n == by_id)
                    || v.by_path.iter().any(|n| n == by_path)
            })
            .map(|v| v.dev_path.as_str())
            .collect();
        if dev_paths.is_empty() {
            self.absent(req, path, need, None);
            return;
        }
        self.nodes_at_same_paths(req, dev_paths, path, need);
    }

    fn gpu(
        &mut self,
        req: &HardwareRequest,
        kind: GpuKind,
        select: &GpuSelect,
        path: &str,
        need: Need,
    ) {
        match select {
            GpuSelect::Count(0) => {
                return self.refuse(
                    path,
                    "a count of 0 GPUs asks for nothing; ask for at least 1, or all",
                );
            }
            GpuSelect::Ids(ids) if ids.is_empty() => {
                return self.refuse(path, "no GPU ids given; name at least one, or ask for all");
            }
            _ => {}
        }
        if kind == GpuKind::Nvidia {
            if let Some(first) = &self.nvidia_by {
                let reason = format!(
                    "a service makes one NVIDIA GPU request and {first} already makes it; combine the two"
                );
                return self.refuse(path, reason);
            }
            self.nvidia_by = Some(path.to_owned());
        }
        if self.inv().unmet(req).is_some() {
            return self.absent(req, path, need, None);
        }
        let of_kind: Vec<&Gpu> = {
            let mut g: Vec<&Gpu> = self.inv().gpus.iter().filter(|g| g.kind == kind).collect();
            g.sort_by(|a, b| a.id.cmp(&b.id));
            g.dedup_by(|a, b| a.id == b.id);
            g
        };
        match kind {
            GpuKind::Nvidia => {
                // The container toolkit creates the nodes and mounts the driver itself.
                let (count, device_ids) = match select {
                    GpuSelect::All => (-1, vec![]),
                    GpuSelect::Count(n) => (i64::from(*n), vec![]),
                    GpuSelect::Ids(ids) => (0, sorted_unique(ids.iter().cloned())),
                };
                let capabilities = NVIDIA_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
                self.gpus = Some(GpuRequest { count, device_ids, capabilities });
            }
            GpuKind::Jetson => {
                // On L4T `--runtime nvidia` mounts the iGPU's nodes and libraries (its CSV
                // lists); the nodes belong to `video`, which a non-root user must join.
                self.runtime = Some("nvidia".to_owned());
                self.env.insert("NVIDIA_VISIBLE_DEVICES".to_owned(), "all".to_owned());
                self.env.insert("NVIDIA_DRIVER_CAPABILITIES".to_owned(), "all".to_owned());
                let gids: Vec<u32> = of_kind
                    .iter()
                    .flat_map(|g| &g.dev_paths)
                    .filter_map(|p| self.hw.nodes.get(p))
                    .map(|n| n.gid)
                    .filter(|gid| *gid != 0)
                    .collect();
                self.groups.extend(gids);
            }
            GpuKind::Dri => {
                let chosen: Vec<&Gpu> = match select {
                    GpuSelect::All => of_kind,
                    GpuSelect::Count(n) => of_kind
                        .into_iter()
                        .take(usize::try_from(*n).unwrap_or(usize::MAX))
                        .collect(),
                    GpuSelect::Ids(ids) => {
                        of_kind.into_iter().filter(|g| ids.contains(&g.id)).collect()
                    }
                };
                let dev_paths: BTreeSet<&str> =
                    chosen.iter().flat_map(|g| &g.dev_paths).map(String::as_str).collect();
                self.nodes_at_same_paths(req, dev_paths, path, need);
            }
        }
    }

    fn can(&mut self, req: &HardwareRequest, interface: &str, path: &str, need: Need) {
        // A network interface, not a node: only the host's network namespace has it.
        if self.spec.network_mode != NetworkMode::Host {
            return self.refuse(
                path,
                format!(
                    "{interface} is a network interface; the service needs network_mode: host to use it"
                ),
            );
        }
        if self.inv().unmet(req).is_some() {
            self.absent(req, path, need, None);
        }
    }

    fn device(
        &mut self,
        req: &HardwareRequest,
        host_path: &str,
        container_path: &str,
        permissions: &str,
        path: &str,
        need: Need,
    ) {
        let mut ok = true;
        if let Err(reason) = check_host_path(host_path) {
            self.refuse(format!("{path}.host_path"), reason);
            ok = false;
        }
        // Empty: the host path as written, already checked.
        let container_path = if container_path.is_empty() {
            host_path
        } else {
            if let Err(reason) = check_container_path(container_path) {
                self.refuse(format!("{path}.container_path"), reason);
                ok = false;
            }
            container_path
        };
        let perms = match Perms::parse(permissions) {
            Ok(p) => p,
            Err(reason) => {
                self.refuse(format!("{path}.permissions"), reason);
                ok = false;
                Perms::ALL
            }
        };
        if !ok {
            return;
        }
        // The node itself, or the node a kept link (one resolving inside /dev) points at.
        let node_path = if self.hw.nodes.contains_key(host_path) {
            Some(host_path)
        } else {
            self.hw.links.get(host_path).map(String::as_str)
        };
        match node_path.and_then(|p| Some((p, *self.hw.nodes.get(p)?))) {
            Some((node_path, node)) => {
                let node_path = node_path.to_owned();
                self.place(path, &node_path, container_path, node, perms);
            }
            None => self.absent(
                req,
                path,
                need,
                Some(format!(
                    "{} not present (no character device under /dev by that name)",
                    describe(req)
                )),
            ),
        }
    }

    /// A node the inventory knows (`present`) mapped at its own path.
    fn same_path_node(
        &mut self,
        req: &HardwareRequest,
        present: bool,
        dev: &str,
        path: &str,
        need: Need,
    ) {
        if !present {
            return self.absent(req, path, need, None);
        }
        self.nodes_at_same_paths(req, BTreeSet::from([dev]), path, need);
    }

    /// Every node of `dev_paths` at its own path, or none of them if one is missing.
    fn nodes_at_same_paths(
        &mut self,
        req: &HardwareRequest,
        dev_paths: BTreeSet<&str>,
        path: &str,
        need: Need,
    ) {
        let mut found = Vec::new();
        for dev in dev_paths {
            match self.node(req, dev) {
                Ok(node) => found.push((dev, node)),
                Err(detail) => return self.absent(req, path, need, Some(detail)),
            }
        }
        for (dev, node) in found {
            self.place(path, dev, dev, node, Perms::ALL);
        }
    }

    /// Maps `host_path` (a node in the table) at `container_path`.
    fn place(
        &mut self,
        path: &str,
        host_path: &str,
        container_path: &str,
        node: DeviceNode,
        perms: Perms,
    ) {
        match self.placed.get_mut(container_path) {
            Some(there) if there.host_path == host_path => {
                there.perms = there.perms.union(perms);
            }
            Some(there) => {
                let reason = format!(
                    "container path {container_path} is already taken by {} ({}); this request maps {host_path} there; give each its own container_path",
                    there.by, there.host_path
                );
                self.refuse(path, reason);
            }
            None => {
                self.placed.insert(
                    container_path.to_owned(),
                    Placed { host_path: host_path.to_owned(), node, perms, by: path.to_owned() },
                );
            }
        }
    }

    fn finish(self) -> Result<HardwareMapping, Vec<SpecError>> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let mut devices = Vec::new();
        let mut binds = Vec::new();
        let mut rules: BTreeMap<(u32, u32), Perms> = BTreeMap::new();
        let mut groups = self.groups;
        for (container_path, p) in self.placed {
            if p.node.gid != 0 {
                groups.insert(p.node.gid);
            }
            if is_pty(p.node) {
                // `devices` would create the node in the container's own devpts, where it does
                // not exist: bind the host's node and allow it by number instead.
                rules
                    .entry((p.node.major, p.node.minor))
                    .and_modify(|r| *r = r.union(p.perms))
                    .or_insert(p.perms);
                binds.push(DeviceBind { host_path: p.host_path, container_path });
            } else {
                devices.push(DeviceMapping {
                    host_path: p.host_path,
                    container_path,
                    permissions: p.perms.render(),
                });
            }
        }
        devices.sort_by(|a, b| {
            (&a.host_path, &a.container_path, &a.permissions).cmp(&(
                &b.host_path,
                &b.container_path,
                &b.permissions,
            ))
        });
        binds.sort_by(|a, b| {
            (&a.host_path, &a.container_path).cmp(&(&b.host_path, &b.container_path))
        });
        Ok(HardwareMapping {
            devices,
            binds,
            cgroup_rules: rules
                .into_iter()
                .map(|((major, minor), perms)| format!("c {major}:{minor} {}", perms.render()))
                .collect(),
            gpus: self.gpus,
            runtime: self.runtime,
            group_add: groups.into_iter().map(|g| g.to_string()).collect(),
            env: self.env,
            // Decided per release, by admission control (the budget is shared).
            cpu_rt_runtime_us: None,
            absent_optional: self.absent.into_iter().collect(),
        })
    }
}

/// Unix98 pseudo-terminal slaves (`/dev/pts/N`).
fn is_pty(node: DeviceNode) -> bool {
    (136..=143).contains(&node.major)
}

fn sorted_unique(items: impl IntoIterator<Item = String>) -> Vec<String> {
    items.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// The ports `sel` names, by the same matching rules as [`Inventory::unmet`], one per node.
fn serial_matches<'a>(inv: &'a Inventory, sel: &SerialSelector) -> Vec<&'a SerialPort> {
    let mut found: Vec<&SerialPort> = inv
        .serial
        .iter()
        .filter(|p| match sel {
            SerialSelector::ById(name) => {
                let name = name.strip_prefix("/dev/serial/by-id/").unwrap_or(name);
                p.by_id.iter().any(|n| n == name)
            }
            SerialSelector::ByPath(name) => {
                let name = name.strip_prefix("/dev/serial/by-path/").unwrap_or(name);
                p.by_path.iter().any(|n| n == name)
            }
            SerialSelector::Usb { vendor, product, serial } => p.usb.as_ref().is_some_and(|u| {
                u.vendor.eq_ignore_ascii_case(vendor)
                    && u.product.eq_ignore_ascii_case(product)
                    && serial.as_ref().is_none_or(|s| u.serial.as_ref() == Some(s))
            }),
        })
        .collect();
    found.sort_by(|a, b| a.dev_path.cmp(&b.dev_path));
    found.dedup_by(|a, b| a.dev_path == b.dev_path);
    found
}

/// Why `path` is not an absolute, lexically normalised path, if it is not.
fn check_normalised(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is empty; give an absolute path, e.g. /dev/ttyUSB0".to_owned());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "{path:?} is not an absolute path; write it from /, e.g. /dev/ttyUSB0"
        ));
    };
    if path.chars().any(char::is_control) {
        return Err(format!("{path:?} holds control characters"));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.contains(&"..") {
        return Err(format!("{path:?} has a \"..\" component; name the device path itself"));
    }
    if parts.iter().any(|p| p.is_empty() || *p == ".") {
        return Err(format!(
            "{path:?} is not a normalised path (empty or \".\" components); write it without //, /./ or a trailing /"
        ));
    }
    Ok(())
}

fn check_container_path(path: &str) -> Result<(), String> {
    check_normalised(path)
}

fn check_host_path(path: &str) -> Result<(), String> {
    check_normalised(path)?;
    if !path.starts_with("/dev/") {
        return Err(format!(
            "{path:?} is outside /dev; only device nodes under /dev can be mapped"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fleet_proto::inventory::{SerialPort, UsbIds};
    use fleet_proto::release::ImageRef;
    use fleet_proto::ServiceName;
    use proptest::prelude::*;

    use super::super::fixtures::*;
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn svc(hardware: Vec<HardwareRequest>) -> ServiceSpec {
        ServiceSpec {
            hardware,
            ..ServiceSpec::new(
                ServiceName::new("robot").unwrap(),
                ImageRef::parse(&format!("demo/robot@sha256:{HEX}")).unwrap(),
            )
        }
    }

    fn map(
        hw: &HostHardware,
        hardware: Vec<HardwareRequest>,
    ) -> Result<HardwareMapping, Vec<SpecError>> {
        map_service(&svc(hardware), hw, "services[0]")
    }

    fn serial(port: SerialSelector, container_path: &str) -> HardwareRequest {
        HardwareRequest::Serial { port, container_path: container_path.into() }
    }

    fn usb(vendor: &str, product: &str, serial: Option<&str>) -> SerialSelector {
        SerialSelector::Usb {
            vendor: vendor.into(),
            product: product.into(),
            serial: serial.map(Into::into),
        }
    }

    fn raw(host_path: &str, container_path: &str, permissions: &str) -> HardwareRequest {
        HardwareRequest::Device {
            host_path: host_path.into(),
            container_path: container_path.into(),
            permissions: permissions.into(),
        }
    }

    fn dev(host: &str, container: &str, perms: &str) -> DeviceMapping {
        DeviceMapping {
            host_path: host.into(),
            container_path: container.into(),
            permissions: perms.into(),
        }
    }

    fn gpu(kind: GpuKind, select: GpuSelect) -> HardwareRequest {
        HardwareRequest::Gpu { kind, select }
    }

    /// The single error, asserting its path and that its reason holds `part`.
    #[track_caller]
    fn refused(result: Result<HardwareMapping, Vec<SpecError>>, path: &str, part: &str) -> String {
        let errors = result.unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, path, "{errors:?}");
        assert!(errors[0].reason.contains(part), "{:?} lacks {part:?}", errors[0].reason);
        errors[0].reason.clone()
    }

    #[test]
    fn pi_serial_port_is_found_by_every_stable_name() {
        let hw = rpi5();
        for port in [
            SerialSelector::ById(FTDI_BY_ID.into()),
            SerialSelector::ById(format!("/dev/serial/by-id/{FTDI_BY_ID}")),
            SerialSelector::ByPath(FTDI_BY_PATH.into()),
            SerialSelector::ByPath(format!("/dev/serial/by-path/{FTDI_BY_PATH}")),
            usb("0403", "6001", None),
            usb("0403", "6001", Some("A50285BI")),
        ] {
            let m = map(&hw, vec![serial(port.clone(), "/dev/gps")]).unwrap();
            assert_eq!(
                m,
                HardwareMapping {
                    devices: vec![dev("/dev/ttyUSB0", "/dev/gps", "rwm")],
                    group_add: vec!["20".into()],
                    ..HardwareMapping::default()
                },
                "{port:?}"
            );
        }
    }

    #[test]
    fn usb_ids_match_whatever_the_hex_case() {
        let m = map(&rpi5(), vec![serial(usb("10C4", "EA60", None), "/dev/ttyUSB0")]).unwrap();
        assert_eq!(m.devices, vec![dev("/dev/ttyUSB1", "/dev/ttyUSB0", "rwm")]);
    }

    #[test]
    fn two_adapters_map_at_their_own_container_paths() {
        let m = map(
            &rpi5(),
            vec![
                serial(usb("10c4", "ea60", None), "/dev/lidar"),
                serial(SerialSelector::ById(FTDI_BY_ID.into()), "/dev/gps"),
            ],
        )
        .unwrap();
        assert_eq!(
            m.devices,
            vec![dev("/dev/ttyUSB0", "/dev/gps", "rwm"), dev("/dev/ttyUSB1", "/dev/lidar", "rwm")]
        );
        assert_eq!(m.group_add, vec!["20"]);
        assert!(m.binds.is_empty() && m.cgroup_rules.is_empty());
    }

    #[test]
    fn two_ports_at_one_container_path_are_refused_naming_both() {
        let reason = refused(
            map(
                &rpi5(),
                vec![
                    serial(usb("10c4", "ea60", None), "/dev/ttyUSB0"),
                    serial(SerialSelector::ById(FTDI_BY_ID.into()), "/dev/ttyUSB0"),
                ],
            ),
            "services[0].hardware[1]",
            "already taken by services[0].hardware[0] (/dev/ttyUSB1)",
        );
        assert!(reason.contains("maps /dev/ttyUSB0 there"), "{reason}");
    }

    #[test]
    fn the_same_node_asked_twice_maps_once() {
        let m = map(
            &rpi5(),
            vec![
                serial(usb("0403", "6001", None), "/dev/ttyUSB0"),
                serial(SerialSelector::ById(FTDI_BY_ID.into()), "/dev/ttyUSB0"),
                raw("/dev/ttyUSB0", "", "r"),
            ],
        )
        .unwrap();
        assert_eq!(m.devices, vec![dev("/dev/ttyUSB0", "/dev/ttyUSB0", "rwm")]);
    }

    #[test]
    fn pi_gpio_by_label_and_by_name_i2c_and_spi() {
        let hw = rpi5();
        let m = map(
            &hw,
            vec![
                HardwareRequest::Gpio { chip: "pinctrl-rp1".into() },
                HardwareRequest::Gpio { chip: "gpiochip10".into() },
                HardwareRequest::I2c { bus: 1 },
                HardwareRequest::Spi { bus: 0, chip_select: 0 },
            ],
        )
        .unwrap();
        assert_eq!(
            m.devices,
            vec![
                dev("/dev/gpiochip0", "/dev/gpiochip0", "rwm"),
                dev("/dev/gpiochip10", "/dev/gpiochip10", "rwm"),
                dev("/dev/i2c-1", "/dev/i2c-1", "rwm"),
                dev("/dev/spidev0.0", "/dev/spidev0.0", "rwm"),
            ]
        );
        assert_eq!(m.group_add, vec!["993", "998", "999"]);
        refused(
            map(&hw, vec![HardwareRequest::I2c { bus: 3 }]),
            "services[0].hardware[0]",
            "i2c bus 3 not present",
        );
        refused(
            map(&hw, vec![HardwareRequest::Spi { bus: 0, chip_select: 1 }]),
            "services[0].hardware[0]",
            "spi 0.1 not present",
        );
    }

    #[test]
    fn pi_render_node_by_id() {
        let m = map(&rpi5(), vec![gpu(GpuKind::Dri, GpuSelect::Ids(vec!["renderD128".into()]))])
            .unwrap();
        assert_eq!(m.devices, vec![dev("/dev/dri/renderD128", "/dev/dri/renderD128", "rwm")]);
        assert_eq!(m.group_add, vec!["992"]);
    }

    #[test]
    fn ambiguous_usb_ids_are_refused_naming_both_ports() {
        let mut hw = rpi5();
        hw.inventory.serial.push(SerialPort {
            dev_path: "/dev/ttyUSB2".into(),
            by_id: vec![],
            by_path: vec![],
            usb: Some(UsbIds {
                vendor: "10c4".into(),
                product: "ea60".into(),
                serial: Some("0002".into()),
                manufacturer: None,
                product_name: None,
            }),
        });
        hw.nodes.insert("/dev/ttyUSB2".into(), DeviceNode { major: 188, minor: 2, gid: 20 });
        let reason = refused(
            map(&hw, vec![serial(usb("10c4", "ea60", None), "/dev/ttyUSB0")]),
            "services[0].hardware[0]",
            "",
        );
        assert_eq!(
            reason,
            "ambiguous: 2 ports match serial usb 10c4:ea60 (/dev/ttyUSB1, /dev/ttyUSB2); add the adapter's serial number"
        );
        // The serial number picks one.
        let m = map(&hw, vec![serial(usb("10c4", "ea60", Some("0002")), "/dev/ttyUSB0")]).unwrap();
        assert_eq!(m.devices, vec![dev("/dev/ttyUSB2", "/dev/ttyUSB0", "rwm")]);
    }

    #[test]
    fn missing_adapter_is_refused_when_required_and_noted_when_optional() {
        let hw = rpi5();
        let ch340 = serial(usb("1a86", "7523", None), "/dev/ttyUSB0");
        let reason = refused(map(&hw, vec![ch340.clone()]), "services[0].hardware[0]", "");
        assert_eq!(reason, "serial usb 1a86:7523 not present");
        let spec = ServiceSpec { optional_hardware: vec![ch340], ..svc(vec![]) };
        let m = map_service(&spec, &hw, "services[0]").unwrap();
        assert_eq!(
            m,
            HardwareMapping {
                absent_optional: vec!["serial usb 1a86:7523".into()],
                ..HardwareMapping::default()
            }
        );
    }

    #[test]
    fn optional_hardware_that_is_present_is_mapped() {
        let spec = ServiceSpec {
            optional_hardware: vec![serial(SerialSelector::ById(FTDI_BY_ID.into()), "/dev/gps")],
            ..svc(vec![])
        };
        let m = map_service(&spec, &rpi5(), "services[2]").unwrap();
        assert_eq!(m.devices, vec![dev("/dev/ttyUSB0", "/dev/gps", "rwm")]);
        assert!(m.absent_optional.is_empty());
    }

    #[test]
    fn port_without_its_node_is_not_present() {
        let mut hw = rpi5();
        hw.nodes.remove("/dev/ttyUSB0");
        refused(
            map(&hw, vec![serial(SerialSelector::ById(FTDI_BY_ID.into()), "/dev/gps")]),
            "services[0].hardware[0]",
            "not present (its device node /dev/ttyUSB0 is missing)",
        );
    }

    #[test]
    fn pty_is_bound_and_allowed_by_number() {
        let hw = with_pty(rpi5(), "usb-Fake_GPS_1234-if00", 7);
        let m = map(
            &hw,
            vec![serial(SerialSelector::ById("usb-Fake_GPS_1234-if00".into()), "/dev/ttyGPS")],
        )
        .unwrap();
        assert_eq!(
            m,
            HardwareMapping {
                binds: vec![DeviceBind {
                    host_path: "/dev/pts/7".into(),
                    container_path: "/dev/ttyGPS".into()
                }],
                cgroup_rules: vec!["c 136:7 rwm".into()],
                group_add: vec!["5".into()],
                ..HardwareMapping::default()
            }
        );
        // A raw request for the pty follows the same rule, with its own permissions.
        let m = map(&hw, vec![raw("/dev/pts/7", "", "rw")]).unwrap();
        assert!(m.devices.is_empty());
        assert_eq!(m.cgroup_rules, vec!["c 136:7 rw"]);
    }

    #[test]
    fn bad_serial_container_paths_are_refused() {
        let hw = rpi5();
        let by_id = || SerialSelector::ById(FTDI_BY_ID.into());
        for (cp, part) in [
            ("../x", "not an absolute path"),
            ("", "is empty"),
            ("/dev/../etc/x", "\"..\" component"),
            ("/dev//gps", "not a normalised path"),
            ("/dev/./gps", "not a normalised path"),
            ("/dev/gps/", "not a normalised path"),
        ] {
            refused(
                map(&hw, vec![serial(by_id(), cp)]),
                "services[0].hardware[0].container_path",
                part,
            );
        }
    }

    #[test]
    fn jetson_gpu_uses_the_nvidia_runtime() {
        let m = map(&jetson_orin(), vec![gpu(GpuKind::Jetson, GpuSelect::All)]).unwrap();
        assert_eq!(m.runtime.as_deref(), Some("nvidia"));
        assert_eq!(
            m.env,
            BTreeMap::from([
                ("NVIDIA_DRIVER_CAPABILITIES".to_owned(), "all".to_owned()),
                ("NVIDIA_VISIBLE_DEVICES".to_owned(), "all".to_owned()),
            ])
        );
        assert!(m.devices.is_empty() && m.gpus.is_none());
        assert_eq!(m.group_add, vec!["44"]);
        // And the CSI camera, by its sysfs name.
        let m = map(
            &jetson_orin(),
            vec![HardwareRequest::Video { device: "vi-output, imx219 9-0010".into() }],
        )
        .unwrap();
        assert_eq!(m.devices, vec![dev("/dev/video0", "/dev/video0", "rwm")]);
    }

    #[test]
    fn can_needs_the_host_network() {
        let can = HardwareRequest::Can { interface: "can0".into() };
        let host = ServiceSpec { network_mode: NetworkMode::Host, ..svc(vec![can.clone()]) };
        let m = map_service(&host, &jetson_orin(), "services[0]").unwrap();
        assert!(m.is_empty(), "{m:?}");
        let reason = refused(map(&jetson_orin(), vec![can]), "services[0].hardware[0]", "");
        assert_eq!(
            reason,
            "can0 is a network interface; the service needs network_mode: host to use it"
        );
    }

    #[test]
    fn nvidia_gpus_by_all_count_and_id() {
        let hw = x86_nvidia();
        let caps = vec!["gpu".to_owned(), "compute".to_owned(), "utility".to_owned()];
        for (select, count, ids) in [
            (GpuSelect::All, -1, vec![]),
            (GpuSelect::Count(1), 1, vec![]),
            (GpuSelect::Ids(vec!["0".into()]), 0, vec!["0".to_owned()]),
        ] {
            let m = map(&hw, vec![gpu(GpuKind::Nvidia, select)]).unwrap();
            assert_eq!(
                m,
                HardwareMapping {
                    gpus: Some(GpuRequest { count, device_ids: ids, capabilities: caps.clone() }),
                    ..HardwareMapping::default()
                }
            );
        }
        let reason = refused(
            map(&hw, vec![gpu(GpuKind::Nvidia, GpuSelect::Count(2))]),
            "services[0].hardware[0]",
            "",
        );
        assert_eq!(reason, "gpu nvidia x2 not present");
        refused(
            map(&hw, vec![gpu(GpuKind::Nvidia, GpuSelect::Ids(vec!["1".into()]))]),
            "services[0].hardware[0]",
            "gpu nvidia 1 not present",
        );
    }

    #[test]
    fn two_nvidia_requests_in_one_service_are_refused() {
        let spec = ServiceSpec {
            optional_hardware: vec![gpu(GpuKind::Nvidia, GpuSelect::Count(1))],
            ..svc(vec![gpu(GpuKind::Nvidia, GpuSelect::All)])
        };
        let errors = map_service(&spec, &x86_nvidia(), "services[0]").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "services[0].optional_hardware[0]");
        assert!(errors[0].reason.contains("services[0].hardware[0] already makes it"));
    }

    #[test]
    fn gpu_selections_of_nothing_are_refused() {
        refused(
            map(&x86_nvidia(), vec![gpu(GpuKind::Nvidia, GpuSelect::Count(0))]),
            "services[0].hardware[0]",
            "asks for nothing",
        );
        refused(
            map(&x86_nvidia(), vec![gpu(GpuKind::Dri, GpuSelect::Ids(vec![]))]),
            "services[0].hardware[0]",
            "no GPU ids given",
        );
    }

    #[test]
    fn webcam_by_name_and_by_stable_names() {
        let hw = x86_nvidia();
        for device in [
            "HD Pro Webcam C920".to_owned(),
            "/dev/video0".to_owned(),
            C920_BY_ID.to_owned(),
            format!("/dev/v4l/by-id/{C920_BY_ID}"),
            format!("/dev/v4l/by-path/{C920_BY_PATH}"),
        ] {
            let m = map(&hw, vec![HardwareRequest::Video { device: device.clone() }]).unwrap();
            assert_eq!(m.devices, vec![dev("/dev/video0", "/dev/video0", "rwm")], "{device}");
            assert_eq!(m.group_add, vec!["44"]);
        }
    }

    #[test]
    fn x86_render_node_and_hailo_by_path() {
        let m = map(
            &x86_nvidia(),
            vec![gpu(GpuKind::Dri, GpuSelect::Count(1)), raw("/dev/hailo0", "", "")],
        )
        .unwrap();
        assert_eq!(
            m.devices,
            vec![
                dev("/dev/dri/renderD128", "/dev/dri/renderD128", "rwm"),
                dev("/dev/hailo0", "/dev/hailo0", "rwm"),
            ]
        );
        // Hailo's node belongs to root (gid 0): nothing to join for it.
        assert_eq!(m.group_add, vec!["109"]);
    }

    #[test]
    fn raw_device_through_a_kept_link_maps_the_node() {
        let m = map(&x86_nvidia(), vec![raw(&format!("/dev/v4l/by-id/{C920_BY_ID}"), "", "rw")])
            .unwrap();
        assert_eq!(
            m.devices,
            vec![dev("/dev/video0", &format!("/dev/v4l/by-id/{C920_BY_ID}"), "rw")]
        );
    }

    #[test]
    fn bare_vm_refuses_every_kind_with_its_reason() {
        let hw = bare_vm();
        let cases = [
            (
                serial(SerialSelector::ById("usb-x".into()), "/dev/ttyUSB0"),
                "serial by-id usb-x not present",
            ),
            (
                serial(SerialSelector::ByPath("pci-0".into()), "/dev/ttyUSB0"),
                "serial by-path pci-0 not present",
            ),
            (
                serial(usb("0403", "6001", Some("A1")), "/dev/ttyUSB0"),
                "serial usb 0403:6001:A1 not present",
            ),
            (HardwareRequest::Gpio { chip: "gpiochip0".into() }, "gpio gpiochip0 not present"),
            (HardwareRequest::I2c { bus: 1 }, "i2c bus 1 not present"),
            (HardwareRequest::Spi { bus: 0, chip_select: 0 }, "spi 0.0 not present"),
            (
                HardwareRequest::Video { device: "/dev/video0".into() },
                "video /dev/video0 not present",
            ),
            (gpu(GpuKind::Nvidia, GpuSelect::All), "gpu nvidia not present"),
            (gpu(GpuKind::Jetson, GpuSelect::Count(1)), "gpu jetson x1 not present"),
            (
                gpu(GpuKind::Dri, GpuSelect::Ids(vec!["renderD128".into()])),
                "gpu dri renderD128 not present",
            ),
            (
                raw("/dev/ttyUSB0", "", ""),
                "device /dev/ttyUSB0 not present (no character device under /dev by that name)",
            ),
        ];
        for (req, reason) in cases {
            let got = refused(map(&hw, vec![req.clone()]), "services[0].hardware[0]", "");
            assert_eq!(got, reason, "{req:?}");
        }
        let can = ServiceSpec {
            network_mode: NetworkMode::Host,
            ..svc(vec![HardwareRequest::Can { interface: "can0".into() }])
        };
        refused(
            map_service(&can, &hw, "services[0]"),
            "services[0].hardware[0]",
            "can can0 not present",
        );
        assert!(map(&hw, vec![]).unwrap().is_empty());
    }

    #[test]
    fn raw_device_paths_outside_dev_are_refused() {
        let hw = rpi5();
        let host = "services[0].hardware[0].host_path";
        for (path, part) in [
            (
                "/etc/shadow",
                "\"/etc/shadow\" is outside /dev; only device nodes under /dev can be mapped",
            ),
            ("/dev/../etc/shadow", "\"..\" component"),
            ("dev/ttyUSB0", "not an absolute path"),
            ("/dev", "outside /dev"),
            ("/dev//ttyUSB0", "not a normalised path"),
            ("", "is empty"),
        ] {
            refused(map(&hw, vec![raw(path, "", "")]), host, part);
        }
        // Resolved outside /dev, so the scanner left the link out.
        refused(
            map(&hw, vec![raw("/dev/serial/by-id/evil", "", "")]),
            "services[0].hardware[0]",
            "device /dev/serial/by-id/evil not present (no character device under /dev by that name)",
        );
        // Optional changes nothing for a bad path.
        let spec =
            ServiceSpec { optional_hardware: vec![raw("/etc/shadow", "", "")], ..svc(vec![]) };
        refused(
            map_service(&spec, &hw, "services[0]"),
            "services[0].optional_hardware[0].host_path",
            "outside /dev",
        );
    }

    #[test]
    fn raw_device_container_path_and_permissions_are_checked() {
        let hw = rpi5();
        refused(
            map(&hw, vec![raw("/dev/ttyUSB0", "../x", "")]),
            "services[0].hardware[0].container_path",
            "not an absolute path",
        );
        refused(
            map(&hw, vec![raw("/dev/ttyUSB0", "", "rwx")]),
            "services[0].hardware[0].permissions",
            "'x' is not a device permission",
        );
        refused(
            map(&hw, vec![raw("/dev/ttyUSB0", "", "rr")]),
            "services[0].hardware[0].permissions",
            "'r' is given twice",
        );
        let m = map(&hw, vec![raw("/dev/ttyUSB0", "/dev/modem", "mr")]).unwrap();
        assert_eq!(m.devices, vec![dev("/dev/ttyUSB0", "/dev/modem", "rm")]);
    }

    #[test]
    fn every_problem_of_a_service_is_returned() {
        let errors = map(
            &rpi5(),
            vec![
                raw("/etc/shadow", "", "rwx"),
                serial(usb("1a86", "7523", None), "relative"),
                HardwareRequest::Gpio { chip: "nope".into() },
            ],
        )
        .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "services[0].hardware[0].host_path",
                "services[0].hardware[0].permissions",
                "services[0].hardware[1].container_path",
                "services[0].hardware[1]",
                "services[0].hardware[2]",
            ]
        );
    }

    fn path_like() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "(/|\\.\\.|\\.|dev|serial|by-id|by-path|v4l|pts|ttyUSB0|video0|[a-z0-9]{0,3}|//){0,8}",
            proptest::sample::select(vec![
                "/dev/ttyUSB0".to_owned(),
                "/dev/pts/7".to_owned(),
                format!("/dev/serial/by-id/{FTDI_BY_ID}"),
                format!("/dev/v4l/by-id/{C920_BY_ID}"),
                "/dev/video0".to_owned(),
                String::new(),
            ]),
        ]
    }

    fn request() -> impl Strategy<Value = HardwareRequest> {
        prop_oneof![
            (path_like(), path_like(), "[rwmx]{0,4}|.{0,4}").prop_map(|(h, c, p)| {
                HardwareRequest::Device { host_path: h, container_path: c, permissions: p }
            }),
            (path_like(), path_like()).prop_map(|(n, c)| serial(SerialSelector::ById(n), &c)),
            (path_like(), path_like()).prop_map(|(n, c)| serial(SerialSelector::ByPath(n), &c)),
            ("[0-9a-fA-F]{0,4}", "[0-9a-fA-F]{0,4}", proptest::option::of(".{0,8}"), path_like())
                .prop_map(|(v, p, s, c)| serial(
                    SerialSelector::Usb { vendor: v, product: p, serial: s },
                    &c
                )),
            path_like().prop_map(|device| HardwareRequest::Video { device }),
            path_like().prop_map(|chip| HardwareRequest::Gpio { chip }),
            (0u32..3).prop_map(|bus| HardwareRequest::I2c { bus }),
            ".{0,6}".prop_map(|interface| HardwareRequest::Can { interface }),
            (
                proptest::sample::select(vec![GpuKind::Nvidia, GpuKind::Jetson, GpuKind::Dri]),
                prop_oneof![
                    Just(GpuSelect::All),
                    (0u32..4).prop_map(GpuSelect::Count),
                    proptest::collection::vec(".{0,10}", 0..3).prop_map(GpuSelect::Ids),
                ]
            )
                .prop_map(|(kind, select)| HardwareRequest::Gpu { kind, select }),
        ]
    }

    fn is_sorted<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> bool {
        items.windows(2).all(|w| key(&w[0]) <= key(&w[1]))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever is asked, mapping does not panic, gives the same answer twice, and a
        /// mapping is sorted and names only nodes of the host's table.
        #[test]
        fn mapping_never_panics_and_is_deterministic(
            hardware in proptest::collection::vec(request(), 0..5),
            optional in proptest::collection::vec(request(), 0..3),
            host_network in any::<bool>(),
        ) {
            let spec = ServiceSpec {
                optional_hardware: optional,
                network_mode: if host_network { NetworkMode::Host } else { NetworkMode::Release },
                ..svc(hardware)
            };
            let pty = with_pty(rpi5(), "usb-Fake_GPS_1234-if00", 7);
            for hw in [rpi5(), pty, jetson_orin(), x86_nvidia(), bare_vm()] {
                let first = map_service(&spec, &hw, "services[0]");
                prop_assert_eq!(&first, &map_service(&spec, &hw, "services[0]"));
                if let Ok(m) = first {
                    prop_assert!(is_sorted(&m.devices, |d| (d.host_path.clone(), d.container_path.clone())));
                    prop_assert!(is_sorted(&m.binds, |d| (d.host_path.clone(), d.container_path.clone())));
                    prop_assert!(is_sorted(&m.group_add, |g| g.parse::<u32>().unwrap()));
                    prop_assert!(is_sorted(&m.absent_optional, Clone::clone));
                    for d in &m.devices {
                        prop_assert!(hw.nodes.contains_key(&d.host_path), "{d:?}");
                    }
                    for b in &m.binds {
                        prop_assert!(hw.nodes.contains_key(&b.host_path), "{b:?}");
                    }
                }
            }
        }
    }
}
