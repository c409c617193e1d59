//! Reads the host's hardware from a root directory. The only I/O of the hardware module.
//!
//! Invariants:
//! * every path in the result is host-absolute (`/dev/ttyUSB0`), never `<root>/dev/ttyUSB0`;
//! * symlinks are resolved inside `root`, like `openat2(RESOLVE_IN_ROOT)`: an absolute target
//!   starts again at `root`, and `..` stops there; every file read and directory listed goes
//!   through that resolution (`Root::inside`), never the kernel's;
//! * `nodes` holds only what a walk of `/dev` finds (never following a symlinked directory),
//!   and a link is in `links` only if it ends at one of those nodes, so nothing outside `/dev`
//!   can be mapped through a link;
//! * what is missing or unreadable is empty: the scan never fails and never panics;
//! * every list is sorted (device paths and names in natural order: `ttyUSB2` before
//!   `ttyUSB10`), so two scans of the same host are equal.
//!
//! Device nodes: a character device gives its numbers from `rdev`. Fixture trees cannot hold
//! device nodes (git does not store them), so a *regular* file under `/dev` counts as a node
//! when sysfs names it: `/sys/dev/char/*/uevent` maps `DEVNAME` to `MAJOR`/`MINOR`. Real kernels
//! have the same files, so this is the kernel's own record, not fixture-only logic.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use fleet_proto::inventory::{
    Accelerator, CpuInfo, GpioChip, Gpu, I2cBus, OsInfo, SerialPort, SpiDevice, UsbIds, VideoDevice,
};
use fleet_proto::release::GpuKind;
use fleet_proto::Inventory;

use super::{DeviceNode, HostHardware};

/// How many symlinks a link under `/dev` may pass through (links to links) before it is
/// given up on.
const DEV_LINK_HOPS: usize = 8;

/// How many symlinks a sysfs path may pass through (the kernel's own `MAXSYMLINKS`).
const SYSFS_LINK_HOPS: usize = 40;

/// Directories of `/dev` that hold no device nodes worth walking (and may hold many files).
const SKIPPED_DEV_DIRS: [&str; 3] = ["shm", "mqueue", "hugepages"];

/// How deep the `/dev` walk goes (`/dev/nvgpu/igpu0/ctrl` is 3); a bound against odd trees.
const MAX_DEV_DEPTH: usize = 12;

/// More CPUs than this in one list is not a CPU list (and would cost memory to expand).
const MAX_CPUS: u32 = 1 << 16;

/// `type` of a CAN network interface in sysfs (`ARPHRD_CAN`).
const ARPHRD_CAN: &str = "280";

/// Scans `root` (`/` on a device) into the inventory and the node table. Parts that are
/// missing or unreadable are left empty: a host without GPIO simply has no GPIO chips.
/// `inventory.disks`, `inventory.engine` and `inventory.policy` are left for the caller
/// (statvfs, the engine, the configuration).
pub fn scan(root: &Path) -> HostHardware {
    let fs = Root { root, lstat: RefCell::default() };
    let (nodes, link_paths) = walk_dev(&fs);
    let links = resolve_links(&fs, &nodes, &link_paths);
    let drm = DrmDrivers::new(&fs, &nodes);
    let inventory = Inventory {
        arch: arch(&fs),
        os: os_info(&fs),
        kernel: fs.read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        engine: None,
        cpus: cpu_info(&fs),
        memory_bytes: memory_bytes(&fs),
        disks: Vec::new(),
        serial: serial_ports(&fs, &nodes, &links),
        gpio: gpio_chips(&fs, &nodes),
        i2c: i2c_buses(&fs, &nodes),
        spi: spi_devices(&nodes),
        video: video_devices(&fs, &nodes, &links),
        can: can_interfaces(&fs),
        gpus: gpus(&fs, &nodes, &drm),
        accelerators: accelerators(&nodes, &drm),
        policy: None,
    };
    let engine_rt_runtime_us = engine_rt_runtime(&fs);
    HostHardware { inventory, nodes, links, engine_rt_runtime_us }
}

/// The real-time budget of the engine's cgroup on a kernel with real-time group scheduling
/// (cgroup v1 `cpu` controller with `cpu.rt_runtime_us`). Unknown until the engine has made
/// its `docker` cgroup; cgroup v2 has no real-time group scheduling.
fn engine_rt_runtime(fs: &Root<'_>) -> Option<u64> {
    ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"].iter().find_map(|controller| {
        fs.read_trimmed(&format!("{controller}/cpu.rt_runtime_us"))?;
        fs.read_trimmed(&format!("{controller}/docker/cpu.rt_runtime_us"))?.parse().ok()
    })
}

/// Parses a kernel CPU list (`0-3,6,8-9`, as in `/sys/devices/system/cpu/online` or a
/// cpuset) into its CPUs, ascending. An empty list is no CPUs; anything that is not a CPU list
/// is `None`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let list = list.trim();
    let mut cpus = BTreeSet::new();
    if list.is_empty() {
        return Some(Vec::new());
    }
    for part in list.split(',') {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        if first > last || last >= MAX_CPUS {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus.into_iter().collect())
}

/// The root everything is read from; paths given to it are host-absolute (`/sys/...`).
struct Root<'a> {
    root: &'a Path,
    /// What [`Root::resolve`] found at each path it looked at, for this scan: sysfs paths of
    /// one bus share long prefixes, so most lookups are repeats.
    lstat: RefCell<HashMap<String, Entry>>,
}

/// A path as `lstat` and `readlink` found it.
#[derive(Clone)]
enum Entry {
    Missing,
    Link(String),
    Other,
}

impl Root<'_> {
    /// Where host path `host` is under the root.
    fn path(&self, host: &str) -> PathBuf {
        self.root.join(host.trim_start_matches('/'))
    }

    /// Where `host` is under the root with its symlinks resolved by [`Root::resolve`], so
    /// that the kernel, handed the path, follows none: it would follow links out of the root.
    fn inside(&self, host: &str) -> Option<PathBuf> {
        self.resolve(host, SYSFS_LINK_HOPS).map(|resolved| self.path(&resolved))
    }

    fn read(&self, host: &str) -> Option<String> {
        std::fs::read_to_string(self.inside(host)?).ok()
    }

    /// The file's text trimmed (device-tree strings end in NUL), `None` if missing or empty.
    fn read_trimmed(&self, host: &str) -> Option<String> {
        let text = self.read(host)?;
        let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        (!text.is_empty()).then(|| text.to_owned())
    }

    /// Names in directory `host`, sorted; those that are not UTF-8 are left out.
    fn names(&self, host: &str) -> Vec<String> {
        let Some(Ok(entries)) = self.inside(host).map(std::fs::read_dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> =
            entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        names
    }

    /// Whether `host` exists, not following a final symlink.
    fn exists(&self, host: &str) -> bool {
        let (parent, name) = host.rsplit_once('/').unwrap_or(("", host));
        self.inside(parent).is_some_and(|p| std::fs::symlink_metadata(p.join(name)).is_ok())
    }

    /// `host` with every symlink resolved inside the root (an absolute target starts again at
    /// the root, `..` stops there), after at most `max_links` symlinks; `None` if a part is
    /// missing or there are more links. Host-absolute and normalised.
    fn resolve(&self, host: &str, max_links: usize) -> Option<String> {
        let mut done: Vec<String> = Vec::new();
        let mut todo: Vec<String> = host.split('/').rev().map(str::to_owned).collect();
        let mut links = 0;
        while let Some(part) = todo.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => done.push(part),
            }
            let target = match self.entry(done.join("/")) {
                Entry::Missing => return None,
                Entry::Other => continue,
                Entry::Link(target) => target,
            };
            links += 1;
            if links > max_links {
                return None;
            }
            done.pop();
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(target.split('/').rev().map(str::to_owned));
        }
        Some(format!("/{}", done.join("/")))
    }

    /// What is at `rel` (relative to the root, no symlinks before its last part).
    fn entry(&self, rel: String) -> Entry {
        if let Some(found) = self.lstat.borrow().get(&rel) {
            return found.clone();
        }
        let here = self.root.join(&rel);
        let found = match std::fs::symlink_metadata(&here) {
            Err(_) => Entry::Missing,
            Ok(meta) if meta.file_type().is_symlink() => {
                match std::fs::read_link(&here).map(|t| t.into_os_string().into_string()) {
                    Ok(Ok(target)) => Entry::Link(target),
                    _ => Entry::Missing,
                }
            }
            Ok(_) => Entry::Other,
        };
        self.lstat.borrow_mut().insert(rel, found.clone());
        found
    }
}

/// Orders names with their numbers compared as numbers: `ttyUSB2` < `ttyUSB10`. Ties (`01` and
/// `1`) fall back to plain comparison, so the order is total.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> impl Iterator<Item = &str> {
        let mut rest = s;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digit = first.is_ascii_digit();
            let end = rest.find(|c: char| c.is_ascii_digit() != digit).unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            rest = tail;
            Some(run)
        })
    }
    let mut x = runs(a);
    let mut y = runs(b);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let numeric = p.starts_with(|c: char| c.is_ascii_digit())
                    && q.starts_with(|c: char| c.is_ascii_digit());
                let order = if numeric {
                    let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                    p.len().cmp(&q.len()).then_with(|| p.cmp(q))
                } else {
                    p.cmp(q)
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// Walks `/dev`: the character device nodes, and the paths of every symlink.
fn walk_dev(fs: &Root<'_>) -> (BTreeMap<String, DeviceNode>, Vec<String>) {
    let mut nodes = BTreeMap::new();
    let mut links = Vec::new();
    // Built on the first regular file only: on a real host /dev holds none, and reading every
    // uevent under /sys/dev/char would be wasted.
    let mut devnames: Option<HashMap<String, (u32, u32)>> = None;
    let mut dirs = vec![("/dev".to_owned(), 0usize)];
    while let Some((dir, depth)) = dirs.pop() {
        // Only `/dev` itself may be a link: the walk never descends into one below it.
        let Some(Ok(entries)) = fs.inside(&dir).map(std::fs::read_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let host = format!("{dir}/{name}");
            if kind.is_dir() {
                if depth < MAX_DEV_DEPTH && !(depth == 0 && SKIPPED_DEV_DIRS.contains(&&*name)) {
                    dirs.push((host, depth + 1));
                }
            } else if kind.is_symlink() {
                links.push(host);
            } else if kind.is_char_device() {
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                let rdev = meta.rdev();
                let (Ok(major), Ok(minor)) = (
                    u32::try_from(nix::sys::stat::major(rdev)),
                    u32::try_from(nix::sys::stat::minor(rdev)),
                ) else {
                    continue;
                };
                nodes.insert(host, DeviceNode { major, minor, gid: meta.gid() });
            } else if kind.is_file() {
                let devnames = devnames.get_or_insert_with(|| sysfs_devnames(fs));
                let devname = host.strip_prefix("/dev/").unwrap_or_default();
                let Some(&(major, minor)) = devnames.get(devname) else {
                    continue;
                };
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                nodes.insert(host, DeviceNode { major, minor, gid: meta.gid() });
            }
        }
    }
    (nodes, links)
}

/// `DEVNAME` → (`MAJOR`, `MINOR`) of every character device sysfs knows
/// (`/sys/dev/char/188:0/uevent`: `MAJOR=188`, `MINOR=0`, `DEVNAME=ttyUSB0`).
fn sysfs_devnames(fs: &Root<'_>) -> HashMap<String, (u32, u32)> {
    let mut map = HashMap::new();
    for entry in fs.names("/sys/dev/char") {
        let Some(uevent) = fs.read(&format!("/sys/dev/char/{entry}/uevent")) else {
            continue;
        };
        let (mut major, mut minor, mut devname) = (None, None, None);
        for line in uevent.lines() {
            match line.split_once('=') {
                Some(("MAJOR", v)) => major = v.trim().parse::<u32>().ok(),
                Some(("MINOR", v)) => minor = v.trim().parse::<u32>().ok(),
                Some(("DEVNAME", v)) => devname = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        // The entry's own name is `MAJOR:MINOR` too, for a uevent without the numbers.
        let from_name =
            entry.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
        let numbers = match (major, minor) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => from_name,
        };
        if let (Some(numbers), Some(devname)) = (numbers, devname) {
            map.insert(devname, numbers);
        }
    }
    map
}

/// Every link whose resolution ends at a node: link → node. Links that end outside `/dev`,
/// at anything that is not a node, or after too many hops are left out.
fn resolve_links(
    fs: &Root<'_>,
    nodes: &BTreeMap<String, DeviceNode>,
    link_paths: &[String],
) -> BTreeMap<String, String> {
    link_paths
        .iter()
        .filter_map(|link| {
            let target = fs.resolve(link, DEV_LINK_HOPS)?;
            (target.starts_with("/dev/") && nodes.contains_key(&target))
                .then(|| (link.clone(), target))
        })
        .collect()
}

/// Names of the links directly in `dir` (`/dev/serial/by-id`), by the node they point at.
fn link_names<'a>(
    links: &'a BTreeMap<String, String>,
    dir: &str,
) -> BTreeMap<&'a str, Vec<String>> {
    let mut by_node: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (link, node) in links {
        let Some(name) = link.strip_prefix(dir).and_then(|n| n.strip_prefix('/')) else {
            continue;
        };
        if !name.contains('/') {
            by_node.entry(node.as_str()).or_default().push(name.to_owned());
        }
    }
    for names in by_node.values_mut() {
        names.sort_by(|a, b| natural_cmp(a, b));
    }
    by_node
}

/// Nodes directly in `/dev` (or `/dev/<sub>`) named `<prefix><number>`, with the number.
fn numbered<'a>(
    nodes: &'a BTreeMap<String, DeviceNode>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, u32)> + 'a {
    nodes.keys().filter_map(move |path| {
        let n = path.strip_prefix(prefix)?;
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse().ok().map(|n| (path.as_str(), n)))
            .flatten()
    })
}

fn arch(fs: &Root<'_>) -> String {
    let raw = fs.read_trimmed("/proc/sys/kernel/arch");
    normalise_arch(raw.as_deref().unwrap_or(std::env::consts::ARCH))
}

/// The kernel's machine name (`uname -m`) as Rust names the architecture.
fn normalise_arch(machine: &str) -> String {
    match machine {
        "arm64" | "aarch64_be" => "aarch64",
        m if m.starts_with("armv") => "arm",
        "i386" | "i486" | "i586" | "i686" => "x86",
        "amd64" => "x86_64",
        m => m,
    }
    .to_owned()
}

fn os_info(fs: &Root<'_>) -> OsInfo {
    let text = fs.read("/etc/os-release").or_else(|| fs.read("/usr/lib/os-release"));
    let mut os = OsInfo::default();
    for line in text.as_deref().unwrap_or_default().lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key.trim() {
            "ID" => os.id = value,
            "VERSION_ID" => os.version = value,
            "PRETTY_NAME" => os.pretty_name = value,
            _ => {}
        }
    }
    os
}

/// An os-release value without its shell quoting (`"12"` → `12`).
fn unquote(value: &str) -> String {
    let quoted = |q: char| value.len() >= 2 && value.starts_with(q) && value.ends_with(q);
    if quoted('\'') {
        return value[1..value.len() - 1].to_owned();
    }
    if !quoted('"') {
        return value.to_owned();
    }
    let mut out = String::new();
    let mut chars = value[1..value.len() - 1].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

fn cpu_info(fs: &Root<'_>) -> CpuInfo {
    let cpuinfo = fs.read("/proc/cpuinfo").unwrap_or_default();
    let field = |line: &str, name: &str| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    };
    let online = fs.read_trimmed("/sys/devices/system/cpu/online").unwrap_or_default();
    let count = match parse_cpu_list(&online) {
        Some(cpus) if !cpus.is_empty() => cpus.len(),
        // No online list: the processors /proc/cpuinfo describes.
        _ => cpuinfo.lines().filter(|l| field(l, "processor").is_some()).count(),
    };
    let model = cpuinfo
        .lines()
        .find_map(|l| field(l, "model name"))
        .or_else(|| fs.read_trimmed("/proc/device-tree/model"))
        .unwrap_or_default();
    CpuInfo {
        count: u32::try_from(count).unwrap_or(u32::MAX),
        model,
        online,
        isolated: fs.read_trimmed("/sys/devices/system/cpu/isolated").unwrap_or_default(),
    }
}

fn memory_bytes(fs: &Root<'_>) -> u64 {
    let meminfo = fs.read("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb.saturating_mul(1024))
}

/// Serial ports: ttys sysfs gives a device (less the 8250 placeholders, `ttyS*` of `type` 0),
/// and any node a `/dev/serial/by-id` or `by-path` link names (a pseudo-terminal linked there
/// by a udev rule is a serial port to its users).
fn serial_ports(
    fs: &Root<'_>,
    nodes: &BTreeMap<String, DeviceNode>,
    links: &BTreeMap<String, String>,
) -> Vec<SerialPort> {
    let by_id = link_names(links, "/dev/serial/by-id");
    let by_path = link_names(links, "/dev/serial/by-path");
    let mut ports: BTreeSet<String> =
        by_id.keys().chain(by_path.keys()).map(|&n| n.to_owned()).collect();
    for name in fs.names("/sys/class/tty") {
        let dev = format!("/dev/{name}");
        let class = format!("/sys/class/tty/{name}");
        if !nodes.contains_key(&dev) || !fs.exists(&format!("{class}/device")) {
            continue;
        }
        if name.starts_with("ttyS")
            && fs.read_trimmed(&format!("{class}/type")).as_deref() == Some("0")
        {
            continue;
        }
        ports.insert(dev);
    }
    let mut ports: Vec<SerialPort> = ports
        .into_iter()
        .map(|dev| {
            let tty = dev.rsplit('/').next().unwrap_or_default();
            SerialPort {
                by_id: by_id.get(dev.as_str()).cloned().unwrap_or_default(),
                by_path: by_path.get(dev.as_str()).cloned().unwrap_or_default(),
                usb: usb_ids(fs, tty),
                dev_path: dev,
            }
        })
        .collect();
    ports.sort_by(|a, b| natural_cmp(&a.dev_path, &b.dev_path));
    ports
}

/// USB identity of tty `tty`: the first parent of its sysfs device with `idVendor` and
/// `idProduct` (the USB device; the tty's own device is the interface's port below it).
fn usb_ids(fs: &Root<'_>, tty: &str) -> Option<UsbIds> {
    if tty.is_empty() || tty.contains('.') {
        return None;
    }
    let mut dir = fs.resolve(&format!("/sys/class/tty/{tty}/device"), SYSFS_LINK_HOPS)?;
    loop {
        let attr = |name: &str| fs.read_trimmed(&format!("{dir}/{name}"));
        if let (Some(vendor), Some(product)) = (attr("idVendor"), attr("idProduct")) {
            return Some(UsbIds {
                vendor: vendor.to_ascii_lowercase(),
                product: product.to_ascii_lowercase(),
                serial: attr("serial"),
                manufacturer: attr("manufacturer"),
                product_name: attr("product"),
            });
        }
        let (parent, _) = dir.rsplit_once('/')?;
        if !parent.starts_with("/sys/") {
            return None;
        }
        dir = parent.to_owned();
    }
}

/// GPIO chips: `/dev/gpiochipN`. Label and line count are read from
/// `/sys/bus/gpio/devices/gpiochipN/{label,ngpio}` when there (fixture trees; some kernels),
/// else from the legacy sysfs class entry the kernel puts next to the chip, in the chip's
/// parent device: `<parent>/gpio/gpiochip<base>/{label,ngpio}` (kernels with
/// `CONFIG_GPIO_SYSFS`). A parent with several chips is ambiguous and gives neither.
fn gpio_chips(fs: &Root<'_>, nodes: &BTreeMap<String, DeviceNode>) -> Vec<GpioChip> {
    let mut chips: Vec<GpioChip> = numbered(nodes, "/dev/gpiochip")
        .map(|(path, _)| {
            let name = path.trim_start_matches("/dev/").to_owned();
            let (label, lines) = gpio_label(fs, &name).unwrap_or_default();
            GpioChip { name, label, lines }
        })
        .collect();
    chips.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    chips
}

fn gpio_label(fs: &Root<'_>, chip: &str) -> Option<(String, u32)> {
    let read = |dir: &str| {
        let label = fs.read_trimmed(&format!("{dir}/label"))?;
        let lines = fs.read_trimmed(&format!("{dir}/ngpio")).and_then(|n| n.parse().ok());
        Some((label, lines.unwrap_or(0)))
    };
    let bus = format!("/sys/bus/gpio/devices/{chip}");
    if let Some(found) = read(&bus) {
        return Some(found);
    }
    let device = fs.resolve(&bus, SYSFS_LINK_HOPS)?;
    let (parent, _) = device.rsplit_once('/')?;
    let legacy = format!("{parent}/gpio");
    match fs.names(&legacy).as_slice() {
        [only] if only.starts_with("gpiochip") => read(&format!("{legacy}/{only}")),
        _ => None,
    }
}

fn i2c_buses(fs: &Root<'_>, nodes: &BTreeMap<String, DeviceNode>) -> Vec<I2cBus> {
    let mut buses: Vec<I2cBus> = numbered(nodes, "/dev/i2c-")
        .map(|(_, bus)| {
            let name = fs
                .read_trimmed(&format!("/sys/class/i2c-dev/i2c-{bus}/name"))
                .or_else(|| fs.read_trimmed(&format!("/sys/bus/i2c/devices/i2c-{bus}/name")))
                .unwrap_or_default();
            I2cBus { bus, name }
        })
        .collect();
    buses.sort_by_key(|b| b.bus);
    buses
}

fn spi_devices(nodes: &BTreeMap<String, DeviceNode>) -> Vec<SpiDevice> {
    let mut devices: Vec<SpiDevice> = nodes
        .keys()
        .filter_map(|path| {
            let (bus, cs) = path.strip_prefix("/dev/spidev")?.split_once('.')?;
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(bus) || !digits(cs) {
                return None;
            }
            Some(SpiDevice { bus: bus.parse().ok()?, chip_select: cs.parse().ok()? })
        })
        .collect();
    devices.sort_by_key(|d| (d.bus, d.chip_select));
    devices
}

fn video_devices(
    fs: &Root<'_>,
    nodes: &BTreeMap<String, DeviceNode>,
    links: &BTreeMap<String, String>,
) -> Vec<VideoDevice> {
    let by_id = link_names(links, "/dev/v4l/by-id");
    let by_path = link_names(links, "/dev/v4l/by-path");
    let mut devices: Vec<(u32, VideoDevice)> = numbered(nodes, "/dev/video")
        .map(|(path, n)| {
            let device = VideoDevice {
                dev_path: path.to_owned(),
                name: fs
                    .read_trimmed(&format!("/sys/class/video4linux/video{n}/name"))
                    .unwrap_or_default(),
                by_id: by_id.get(path).cloned().unwrap_or_default(),
                by_path: by_path.get(path).cloned().unwrap_or_default(),
            };
            (n, device)
        })
        .collect();
    devices.sort_by_key(|(n, _)| *n);
    devices.into_iter().map(|(_, d)| d).collect()
}

fn can_interfaces(fs: &Root<'_>) -> Vec<String> {
    fs.names("/sys/class/net")
        .into_iter()
        .filter(|n| {
            fs.read_trimmed(&format!("/sys/class/net/{n}/type")).as_deref() == Some(ARPHRD_CAN)
        })
        .collect()
}

/// The DRM driver of each render node (`renderD128` → `i915`), from the basename of its
/// sysfs device's `driver` link.
struct DrmDrivers {
    render: Vec<(String, u32, String)>,
}

impl DrmDrivers {
    fn new(fs: &Root<'_>, nodes: &BTreeMap<String, DeviceNode>) -> DrmDrivers {
        let mut render: Vec<(String, u32, String)> = numbered(nodes, "/dev/dri/renderD")
            .map(|(path, n)| (path.to_owned(), n, drm_driver(fs, &format!("renderD{n}"))))
            .collect();
        render.sort_by_key(|(_, n, _)| *n);
        DrmDrivers { render }
    }
}

fn drm_driver(fs: &Root<'_>, name: &str) -> String {
    let Some(device) = fs.resolve(&format!("/sys/class/drm/{name}/device"), SYSFS_LINK_HOPS) else {
        return String::new();
    };
    std::fs::read_link(fs.path(&format!("{device}/driver")))
        .ok()
        .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .unwrap_or_default()
}

fn gpus(fs: &Root<'_>, nodes: &BTreeMap<String, DeviceNode>, drm: &DrmDrivers) -> Vec<Gpu> {
    let mut gpus = nvidia_gpus(fs, nodes);
    gpus.extend(jetson_gpu(fs, nodes));
    gpus.extend(drm.render.iter().map(|(path, n, driver)| Gpu {
        kind: GpuKind::Dri,
        id: format!("renderD{n}"),
        model: driver.clone(),
        dev_paths: vec![path.clone()],
        driver_version: None,
    }));
    gpus
}

/// Discrete NVIDIA GPUs, from the driver's `/proc/driver/nvidia`. `/dev/nvidia<minor>` is
/// listed even before it exists: `nvidia-modprobe` creates it on first use.
fn nvidia_gpus(fs: &Root<'_>, nodes: &BTreeMap<String, DeviceNode>) -> Vec<Gpu> {
    let Some(version) = fs.read("/proc/driver/nvidia/version") else {
        return Vec::new();
    };
    let driver = nvidia_driver_version(&version);
    let shared: Vec<&str> =
        ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
            .into_iter()
            .filter(|p| nodes.contains_key(*p))
            .collect();
    let mut gpus: Vec<(u32, Gpu)> = fs
        .names("/proc/driver/nvidia/gpus")
        .into_iter()
        .filter_map(|bus| {
            let info = fs.read(&format!("/proc/driver/nvidia/gpus/{bus}/information"))?;
            let field = |name: &str| {
                info.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == name).then(|| v.trim().to_owned())
                })
            };
            let minor: u32 = field("Device Minor")?.parse().ok()?;
            let mut dev_paths = vec![format!("/dev/nvidia{minor}")];
            dev_paths.extend(shared.iter().map(|p| (*p).to_owned()));
            dev_paths.sort();
            let gpu = Gpu {
                kind: GpuKind::Nvidia,
                id: minor.to_string(),
                model: field("Model").unwrap_or_default(),
                dev_paths,
                driver_version: driver.clone(),
            };
            Some((minor, gpu))
        })
        .collect();
    gpus.sort_by_key(|(minor, _)| *minor);
    gpus.into_iter().map(|(_, g)| g).collect()
}

/// The version on the `NVRM version:` line: the first token after `Kernel Module` that starts
/// with a digit (`... Kernel Module  535.104.05  Sat Aug ...`; the open modules say
/// `Kernel Module for x86_64  550.54.14 ...`).
fn nvidia_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.trim_start().starts_with("NVRM version:"))?;
    let (_, after) = line.split_once("Kernel Module")?;
    after
        .split_whitespace()
        .find(|t| t.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
}

/// A Jetson's integrated GPU, known by the L4T release file.
fn jetson_gpu(fs: &Root<'_>, nodes: &BTreeMap<String, DeviceNode>) -> Option<Gpu> {
    let release = fs.read("/etc/nv_tegra_release")?;
    let mut dev_paths: Vec<String> = nodes
        .keys()
        .filter(|p| {
            matches!(p.as_str(), "/dev/nvmap" | "/dev/nvhost-ctrl-gpu" | "/dev/nvhost-gpu")
                || p.starts_with("/dev/nvgpu/igpu0/")
        })
        .cloned()
        .collect();
    dev_paths.sort();
    Some(Gpu {
        kind: GpuKind::Jetson,
        id: "0".to_owned(),
        model: fs.read_trimmed("/proc/device-tree/model").unwrap_or_default(),
        dev_paths,
        driver_version: l4t_release(release.lines().next().unwrap_or_default()),
    })
}

/// `# R36 (release), REVISION: 3.0, GCID: ...` → `R36.3.0`.
fn l4t_release(line: &str) -> Option<String> {
    let major = line.trim_start_matches('#').split_whitespace().next()?;
    if !major.starts_with('R') {
        return None;
    }
    let revision = line
        .split(',')
        .find_map(|f| f.trim().strip_prefix("REVISION:"))
        .map(str::trim)
        .filter(|r| !r.is_empty());
    Some(match revision {
        Some(r) => format!("{major}.{r}"),
        None => major.to_owned(),
    })
}

/// AI accelerators, by their device nodes (and Rockchip NPUs by their DRM driver).
fn accelerators(nodes: &BTreeMap<String, DeviceNode>, drm: &DrmDrivers) -> Vec<Accelerator> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut found: Vec<Accelerator> = nodes
        .keys()
        .filter_map(|path| {
            let name = path.strip_prefix("/dev/")?;
            let kind = if name.strip_prefix("hailo").is_some_and(digits) {
                "hailo"
            } else if name.strip_prefix("apex_").is_some_and(digits) {
                "coral-edgetpu"
            } else if name.starts_with("rknpu") && !name.contains('/') {
                "rockchip-npu"
            } else if name.strip_prefix("accel/accel").is_some_and(digits) {
                "accel"
            } else {
                return None;
            };
            Some(Accelerator { kind: kind.to_owned(), dev_path: path.clone() })
        })
        .collect();
    found.extend(drm.render.iter().filter(|(_, _, driver)| driver == "rknpu").map(
        |(path, _, _)| Accelerator { kind: "rockchip-npu".to_owned(), dev_path: path.clone() },
    ));
    found.sort_by(|a, b| natural_cmp(&a.dev_path, &b.dev_path));
    found
}

/// The checked-in fixture tree of a device (`rpi5`, `jetson-orin`, `x86-nvidia`, `bare-vm`),
/// to scan in tests.
#[cfg(test)]
pub(crate) fn fixture_root(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hardware").join(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use super::*;

    /// A scratch root: stand-in nodes (empty files plus their sysfs uevent), files, links.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree { dir: tempfile::tempdir().unwrap() }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn file(&self, rel: &str, text: &str) -> &Tree {
            let path = self.root().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            self
        }

        fn node(&self, devname: &str, major: u32, minor: u32) -> &Tree {
            self.file(&format!("dev/{devname}"), "");
            self.file(
                &format!("sys/dev/char/{major}:{minor}/uevent"),
                &format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={devname}\n"),
            )
        }

        fn link(&self, rel: &str, target: &str) -> &Tree {
            let path = self.root().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            symlink(target, path).unwrap();
            self
        }
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    /// Found by the `hardware_scan` fuzz target (tests/fuzz): files and directories were read
    /// through the kernel's own symlink resolution, so a link in the tree (`online` here) led
    /// outside the root.
    #[test]
    fn links_out_of_the_root_are_not_followed_when_reading_files_or_listing_directories() {
        let tree = Tree::new();
        let outside = tempfile::tempdir().unwrap();
        let out = |rel: &str, text: &str| {
            let path = outside.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        out("online", "0-7");
        out("isolated", "3");
        out("os-release", "ID=escaped\n");
        out("net/can0/type", ARPHRD_CAN);
        out("dev/ttyOUT", "");
        let absolute = |rel: &str| outside.path().join(rel).to_str().unwrap().to_owned();
        // Up to the root's parent, where both temporary directories are.
        let up = |depth: usize, rel: &str| {
            let name = outside.path().file_name().unwrap().to_str().unwrap();
            format!("{}{name}/{rel}", "../".repeat(depth))
        };
        tree.link("sys/devices/system/cpu/online", &absolute("online"))
            .link("sys/devices/system/cpu/isolated", &up(5, "isolated"))
            .link("etc/os-release", &up(2, "os-release"))
            .link("sys/class/net", &absolute("net"))
            .link("dev", &absolute("dev"))
            // An absolute link inside the tree starts again at the root.
            .file("proc/meminfo.real", "MemTotal: 2048 kB\n")
            .link("proc/meminfo", "/proc/meminfo.real");

        // Not a vacuous test: the same links read from outside when followed by the kernel.
        let cpu = tree.root().join("sys/devices/system/cpu");
        assert_eq!(std::fs::read_to_string(cpu.join("isolated")).unwrap(), "3");
        let os = std::fs::read_to_string(tree.root().join("etc/os-release")).unwrap();
        assert_eq!(os, "ID=escaped\n");

        let hw = scan(tree.root());
        assert_eq!(
            (hw.inventory.cpus.online.as_str(), hw.inventory.cpus.isolated.as_str()),
            ("", "")
        );
        assert_eq!(hw.inventory.os.id, "");
        assert_eq!(hw.inventory.can, Vec::<String>::new());
        assert_eq!(hw.nodes, BTreeMap::new());
        assert_eq!(hw.inventory.memory_bytes, 2048 * 1024);
    }

    /// The node's numbers, and its gid being the fixture file's own.
    fn assert_node(hw: &HostHardware, root: &Path, path: &str, major: u32, minor: u32) {
        let node = hw.nodes.get(path).unwrap_or_else(|| panic!("no node {path}"));
        let gid = std::fs::metadata(root.join(path.trim_start_matches('/'))).unwrap().gid();
        assert_eq!(*node, DeviceNode { major, minor, gid }, "{path}");
    }

    const FTDI_BY_ID: &str = "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0";
    const CP2102_BY_ID: &str =
        "usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0";

    #[test]
    fn rpi5_fixture_scans_to_its_facts() {
        let root = fixture_root("rpi5");
        let hw = scan(&root);
        // The same facts the mapping tests use, in code (hardware::fixtures).
        let expected = super::super::fixtures::rpi5().inventory;
        assert_eq!(hw.inventory, expected);
        for (path, major, minor) in [
            ("/dev/ttyUSB0", 188, 0),
            ("/dev/ttyUSB1", 188, 1),
            ("/dev/ttyAMA10", 204, 74),
            ("/dev/ttyS0", 4, 64),
            ("/dev/gpiochip0", 254, 0),
            ("/dev/gpiochip10", 254, 10),
            ("/dev/i2c-1", 89, 1),
            ("/dev/spidev0.0", 153, 0),
            ("/dev/dri/renderD128", 226, 128),
        ] {
            assert_node(&hw, &root, path, major, minor);
        }
        assert_eq!(hw.nodes.len(), 9, "{:?}", hw.nodes.keys());
        // The `evil` links in the fixture point at /etc and are not here.
        let links: Vec<(&str, &str)> =
            hw.links.iter().map(|(l, n)| (l.as_str(), n.as_str())).collect();
        assert_eq!(
            links,
            [
                (&*format!("/dev/serial/by-id/{FTDI_BY_ID}"), "/dev/ttyUSB0"),
                (&*format!("/dev/serial/by-id/{CP2102_BY_ID}"), "/dev/ttyUSB1"),
                ("/dev/serial/by-path/platform-xhci-hcd.0-usb-0:1:1.0-port0", "/dev/ttyUSB0"),
                ("/dev/serial/by-path/platform-xhci-hcd.1-usb-0:2:1.0-port0", "/dev/ttyUSB1"),
            ]
        );
    }

    #[test]
    fn jetson_orin_fixture_scans_to_its_facts() {
        let root = fixture_root("jetson-orin");
        let hw = scan(&root);
        // The same facts the mapping tests use, in code (hardware::fixtures).
        let expected = super::super::fixtures::jetson_orin().inventory;
        assert_eq!(hw.inventory, expected);
        assert_node(&hw, &root, "/dev/nvmap", 10, 125);
        assert_node(&hw, &root, "/dev/nvhost-ctrl-gpu", 497, 1);
        assert_node(&hw, &root, "/dev/nvgpu/igpu0/ctrl", 498, 1);
        assert_node(&hw, &root, "/dev/video0", 81, 0);
        assert_eq!(hw.nodes.len(), 4);
        assert!(hw.links.is_empty());
    }

    #[test]
    fn x86_nvidia_fixture_scans_to_its_facts() {
        let root = fixture_root("x86-nvidia");
        let hw = scan(&root);
        // The same facts the mapping tests use, in code (hardware::fixtures).
        let expected = super::super::fixtures::x86_nvidia().inventory;
        assert_eq!(hw.inventory, expected);
        for (path, major, minor) in [
            ("/dev/nvidia0", 195, 0),
            ("/dev/nvidiactl", 195, 255),
            ("/dev/nvidia-uvm", 509, 0),
            ("/dev/nvidia-uvm-tools", 509, 1),
            ("/dev/nvidia-modeset", 195, 254),
            ("/dev/video0", 81, 0),
            ("/dev/dri/renderD128", 226, 128),
            ("/dev/hailo0", 511, 0),
        ] {
            assert_node(&hw, &root, path, major, minor);
        }
        assert_eq!(
            hw.links.get("/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920_8B2F7D4F-video-index0"),
            Some(&s("/dev/video0"))
        );
    }

    #[test]
    fn bare_vm_fixture_scans_to_its_facts() {
        let root = fixture_root("bare-vm");
        let hw = scan(&root);
        // The same facts the mapping tests use, in code (hardware::fixtures).
        let expected = super::super::fixtures::bare_vm().inventory;
        assert_eq!(hw.inventory, expected);
        // The 8250 placeholder is a node, only not a serial port.
        assert_node(&hw, &root, "/dev/ttyS0", 4, 64);
        assert_eq!(hw.nodes.len(), 1);
    }

    #[test]
    fn links_that_resolve_outside_dev_are_dropped() {
        let t = Tree::new();
        t.node("ttyUSB0", 188, 0)
            .file("etc/shadow", "root:*:19000::::::\n")
            .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
            // A uevent naming a file outside /dev does not make it a node.
            .file("sys/dev/char/1:99/uevent", "MAJOR=1\nMINOR=99\nDEVNAME=../etc/shadow\n")
            .link("dev/serial/by-id/evil", "../../../etc/shadow")
            .link("dev/serial/by-id/evil-absolute", "/etc/passwd")
            .link("dev/serial/by-id/evil-dir", "../../../etc")
            .link("dev/serial/by-id/good", "../../ttyUSB0")
            // `..` stops at the root and an absolute target starts at it: both stay inside.
            .link("dev/serial/by-path/deep", "../../../../../../../../dev/ttyUSB0")
            .link("dev/serial/by-path/absolute", "/dev/ttyUSB0");
        let hw = scan(t.root());
        assert_eq!(hw.nodes.keys().collect::<Vec<_>>(), ["/dev/ttyUSB0"]);
        for evil in ["evil", "evil-absolute", "evil-dir"] {
            assert!(!hw.links.contains_key(&format!("/dev/serial/by-id/{evil}")), "{evil}");
        }
        assert!(hw.links.values().all(|n| n == "/dev/ttyUSB0"));
        assert_eq!(hw.links.len(), 3, "{:?}", hw.links);
        assert_eq!(hw.inventory.serial.len(), 1);
        assert_eq!(hw.inventory.serial[0].by_id, [s("good")]);
        assert_eq!(hw.inventory.serial[0].by_path, [s("absolute"), s("deep")]);
    }

    #[test]
    fn link_chains_are_followed_for_eight_hops() {
        let t = Tree::new();
        t.node("ttyACM0", 166, 0);
        // hop8 -> hop7 -> ... -> hop1 -> ttyACM0: hop8 is eight links from the node.
        t.link("dev/hop1", "ttyACM0");
        for i in 2..=9 {
            t.link(&format!("dev/hop{i}"), &format!("hop{}", i - 1));
        }
        t.link("dev/serial/by-id/gps", "../../hop3");
        t.link("dev/loop-a", "loop-b").link("dev/loop-b", "loop-a");
        let hw = scan(t.root());
        for i in 1..=8 {
            assert_eq!(hw.links.get(&format!("/dev/hop{i}")), Some(&s("/dev/ttyACM0")), "hop{i}");
        }
        assert!(!hw.links.contains_key("/dev/hop9"));
        assert!(!hw.links.contains_key("/dev/loop-a"));
        assert_eq!(hw.links.get("/dev/serial/by-id/gps"), Some(&s("/dev/ttyACM0")));
        // A node only a by-id link names is a serial port (a pty linked there by a udev rule).
        assert_eq!(
            hw.inventory.serial,
            [SerialPort {
                dev_path: s("/dev/ttyACM0"),
                by_id: vec![s("gps")],
                by_path: vec![],
                usb: None
            }]
        );
    }

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("0-3,6,8-9\n").map(|c| c.len()), Some(7));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3,1-2,2"), Some(vec![1, 2, 3]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list(" \n"), Some(vec![]));
        for garbage in ["x", "0-", "-3", "3-1", "0,,1", "1-2-3", "0-4294967295", "0-7:2/4", "½"] {
            assert_eq!(parse_cpu_list(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn a_missing_root_scans_to_nothing() {
        let hw = scan(Path::new("/nonexistent/fleet-agent/root"));
        let expected =
            Inventory { arch: normalise_arch(std::env::consts::ARCH), ..Inventory::default() };
        assert_eq!(hw, HostHardware { inventory: expected, ..HostHardware::default() });
    }

    #[test]
    fn machine_names_become_rust_arch_names() {
        for (machine, arch) in [
            ("aarch64", "aarch64"),
            ("arm64", "aarch64"),
            ("armv7l", "arm"),
            ("armv6l", "arm"),
            ("x86_64", "x86_64"),
            ("riscv64", "riscv64"),
        ] {
            assert_eq!(normalise_arch(machine), arch);
        }
    }

    #[test]
    fn driver_versions_are_read_from_nvidia_and_l4t_files() {
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Feb 22 01:44:30 UTC 2024\n";
        assert_eq!(nvidia_driver_version(open).as_deref(), Some("550.54.14"));
        assert_eq!(nvidia_driver_version("GCC version: 12\n"), None);
        assert_eq!(
            l4t_release("# R35 (release), REVISION: 4.1, GCID: 33958178").as_deref(),
            Some("R35.4.1")
        );
        assert_eq!(l4t_release("garbage"), None);
    }

    #[test]
    fn os_release_values_lose_their_quotes() {
        let t = Tree::new();
        t.file(
            "usr/lib/os-release",
            "ID='alpine'\nVERSION_ID=3.20.1\nPRETTY_NAME=\"Alpine \\\"edge\\\"\"\n",
        );
        assert_eq!(
            scan(t.root()).inventory.os,
            OsInfo { id: s("alpine"), version: s("3.20.1"), pretty_name: s("Alpine \"edge\"") }
        );
    }

    #[test]
    fn real_character_devices_give_their_numbers() {
        // /dev/null is 1:3 on every Linux; the real root exercises the rdev path, which fixture
        // trees cannot (git holds no device nodes).
        let hw = scan(Path::new("/"));
        let null = hw.nodes.get("/dev/null").unwrap();
        assert_eq!((null.major, null.minor), (1, 3));
        assert!(hw.links.values().all(|n| n.starts_with("/dev/")));
    }

    #[test]
    fn names_sort_with_numbers_as_numbers() {
        let mut names = vec!["ttyUSB10", "ttyUSB2", "ttyAMA0", "ttyUSB1", "ttyUSB01"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["ttyAMA0", "ttyUSB01", "ttyUSB1", "ttyUSB2", "ttyUSB10"]);
    }
}
