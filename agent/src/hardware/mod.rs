//! Hardware: what the host has, how a service's requests map onto it, and whether a release
//! fits the device at all.
//!
//! * [`scan`] — the I/O edge: reads a root (`/dev`, `/sys`, `/proc`, `/etc`; tests point it at
//!   fixture trees) into a [`HostHardware`];
//! * [`map`] — pure: one service's hardware requests against a [`HostHardware`] become the
//!   engine's device options ([`HardwareMapping`]), or a precise reason they cannot;
//! * [`admit`] — pure: release-level admission control (memory, cpusets, real-time, privileges)
//!   before anything is stopped;
//! * [`watch`] — hot-plug: notices device arrival and removal so mappings are redone.

use std::collections::BTreeMap;

use fleet_proto::Inventory;
use serde::Serialize;

pub mod admit;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod map;
pub mod render;
pub mod scan;
pub mod watch;

/// What the agent knows of its host's hardware: the inventory it reports to the server, plus
/// what mapping needs and the server does not (device numbers, owning groups, links).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostHardware {
    /// The inventory, as reported.
    pub inventory: Inventory,
    /// Every character device node under `/dev`, by host path (`/dev/ttyUSB0`, `/dev/pts/3`).
    pub nodes: BTreeMap<String, DeviceNode>,
    /// Every symlink under `/dev` whose target is a node in `nodes`: link path → node path
    /// (`/dev/serial/by-id/usb-FTDI…` → `/dev/ttyUSB0`). Links that resolve outside `/dev`
    /// are left out, so nothing can be mapped through them.
    pub links: BTreeMap<String, String>,
    /// Real-time CPU time (µs per period) the engine's containers may share, on kernels with
    /// real-time group scheduling (cgroup v1 `cpu.rt_runtime_us` of the engine's `docker`
    /// cgroup). There a container gets no real-time time unless given some, and SCHED_FIFO fails
    /// even with CAP_SYS_NICE. `None`: no such scheduling (or not known yet: the engine makes
    /// its cgroup with its first container), so CAP_SYS_NICE and the rtprio ulimit suffice.
    pub engine_rt_runtime_us: Option<u64>,
}

/// A character device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceNode {
    /// Major device number.
    pub major: u32,
    /// Minor device number.
    pub minor: u32,
    /// Group owning the node (`dialout`, `video`, `render` …), numeric.
    pub gid: u32,
}

// The mapping's types are the engine request's: they live in the runtime (below this module,
// which maps onto them) and are named here too, where `map` produces them.
pub use crate::runtime::{DeviceBind, GpuRequest, HardwareMapping};

/// What this device's configuration allows (`[hardware]` and `[policy]` in the agent's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwarePolicy {
    /// Where `/dev`, `/sys`, `/proc` and `/etc` are read from (`/`; tests use fixture trees).
    pub root: std::path::PathBuf,
    /// Memory kept for the OS and the agent: the sum of the release's memory limits plus this
    /// must fit the device's memory.
    pub memory_reserve_bytes: u64,
    /// What a release may do beyond an ordinary container (`[policy]`, see
    /// [`fleet_proto::policy`]): judged at admission, and reported with the inventory.
    pub policy: fleet_proto::policy::DevicePolicy,
}

impl Default for HardwarePolicy {
    fn default() -> Self {
        HardwarePolicy {
            root: "/".into(),
            memory_reserve_bytes: 256 << 20,
            policy: fleet_proto::policy::DevicePolicy::default(),
        }
    }
}

/// Size and free space of the filesystems holding `paths`, one entry per filesystem (the first
/// path naming it wins). Unreadable paths are left out.
pub fn disks(paths: &[&std::path::Path]) -> Vec<fleet_proto::inventory::Disk> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for path in paths {
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let Ok(fs) = nix::sys::statvfs::statvfs(*path) else { continue };
        if !seen.insert(meta.dev()) {
            continue;
        }
        // Block counts and sizes are 32-bit on armv7, 64-bit elsewhere.
        #[allow(clippy::useless_conversion)]
        let (frsize, blocks, avail) = (
            u64::try_from(fs.fragment_size()).unwrap_or(0),
            u64::from(fs.blocks()),
            u64::from(fs.blocks_available()),
        );
        out.push(fleet_proto::inventory::Disk {
            mount: path.display().to_string(),
            total_bytes: blocks.saturating_mul(frsize),
            available_bytes: avail.saturating_mul(frsize),
        });
    }
    out
}
