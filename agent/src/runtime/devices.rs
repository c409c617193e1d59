//! The host devices a container gets, as the engine's create options need them: device
//! nodes, pseudo-terminal binds, cgroup rules, GPUs, an OCI runtime, groups. Produced from a
//! service's hardware requests by [`crate::hardware::map`]; carried to the engine in a
//! [`super::CreateRequest`].

use std::collections::BTreeMap;

use serde::Serialize;

/// One host device node mapped into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceMapping {
    /// Path on the host, e.g. `/dev/serial/by-id/usb-FTDI…` resolved to `/dev/ttyUSB0`.
    pub host_path: String,
    /// Path inside the container.
    pub container_path: String,
    /// cgroup permissions, e.g. `rwm`.
    pub permissions: String,
}

/// Everything one service's hardware becomes in the engine's create options. Part of the
/// container's configuration hash: a device that comes back under a new node or number gives
/// a new mapping, so the planner re-creates the container with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HardwareMapping {
    /// Nodes mapped with the engine's `devices` option (node created in the container and
    /// allowed in its device cgroup).
    pub devices: Vec<DeviceMapping>,
    /// Nodes bind-mounted and allowed by a cgroup rule instead: pseudo-terminals, which
    /// `devices` cannot map (the container gets its own devpts).
    pub binds: Vec<DeviceBind>,
    /// Device cgroup rules, e.g. `c 136:3 rwm`.
    pub cgroup_rules: Vec<String>,
    /// NVIDIA GPUs through the container toolkit's device requests.
    pub gpus: Option<GpuRequest>,
    /// OCI runtime to use (`nvidia` on Jetson), `None` for the engine's default.
    pub runtime: Option<String>,
    /// Numeric groups to add, so a non-root user may open the nodes.
    pub group_add: Vec<String>,
    /// Environment the mapping needs (e.g. `NVIDIA_VISIBLE_DEVICES` on Jetson).
    pub env: BTreeMap<String, String>,
    /// The container's share of the engine's real-time CPU time, for a service with a
    /// real-time priority on a kernel with real-time group scheduling.
    pub cpu_rt_runtime_us: Option<i64>,
    /// Optional hardware that is absent now, described (`serial by-id usb-…`): the service
    /// runs without it and is re-created when it arrives.
    pub absent_optional: Vec<String>,
}

impl HardwareMapping {
    /// Whether the mapping adds nothing to the container.
    pub fn is_empty(&self) -> bool {
        self == &HardwareMapping::default()
    }
}

/// A device node bind-mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceBind {
    /// Node on the host.
    pub host_path: String,
    /// Path inside the container.
    pub container_path: String,
}

/// GPUs requested from the NVIDIA container toolkit (`--gpus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuRequest {
    /// `-1` for all, else how many; ignored when `device_ids` is set.
    pub count: i64,
    /// GPU indexes or UUIDs.
    pub device_ids: Vec<String>,
    /// Capabilities, e.g. `gpu`, `compute`, `utility`.
    pub capabilities: Vec<String>,
}
