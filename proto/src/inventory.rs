//! Facts about a device's host and hardware, as the agent found them.

use serde::{Deserialize, Serialize};

use crate::release::GpuKind;

/// Everything the agent knows about its host: what robotics engineers look at first on a new
/// robot, and what the server uses to check that a release's hardware requests can be met.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Inventory {
    /// CPU architecture as Rust names it (`aarch64`, `arm`, `x86_64`).
    pub arch: String,
    /// Operating system.
    pub os: OsInfo,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// The container engine, if one answered.
    pub engine: Option<EngineInfo>,
    /// Processors.
    pub cpus: CpuInfo,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Mounted filesystems that matter (root, data, engine storage).
    pub disks: Vec<Disk>,
    /// Serial ports.
    pub serial: Vec<SerialPort>,
    /// GPIO chips.
    pub gpio: Vec<GpioChip>,
    /// I2C buses.
    pub i2c: Vec<I2cBus>,
    /// SPI devices.
    pub spi: Vec<SpiDevice>,
    /// V4L2 video devices.
    pub video: Vec<VideoDevice>,
    /// CAN network interfaces.
    pub can: Vec<String>,
    /// GPUs.
    pub gpus: Vec<Gpu>,
    /// AI accelerators recognised by their device nodes (e.g. Hailo, Coral, NPU).
    pub accelerators: Vec<Accelerator>,
}

/// Operating system identity from `/etc/os-release`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OsInfo {
    /// `ID`, e.g. `debian`.
    pub id: String,
    /// `VERSION_ID`, e.g. `12`.
    pub version: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
}

/// The container engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EngineInfo {
    /// Engine name, e.g. `docker`.
    pub name: String,
    /// Engine version, e.g. `20.10.24`.
    pub version: String,
    /// API version in use, e.g. `1.41`.
    pub api_version: String,
}

/// Processors.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CpuInfo {
    /// Number of logical CPUs.
    pub count: u32,
    /// Model name.
    pub model: String,
    /// Online CPUs as a kernel CPU list, e.g. `0-3`.
    pub online: String,
    /// CPUs isolated from the scheduler (`isolcpus`), e.g. `2-3`; empty if none.
    pub isolated: String,
}

/// One filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Disk {
    /// Mount point.
    pub mount: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
}

/// A serial port and every stable name it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SerialPort {
    /// Kernel device node, e.g. `/dev/ttyUSB0` (changes across re-plugging).
    pub dev_path: String,
    /// Names under `/dev/serial/by-id/`.
    pub by_id: Vec<String>,
    /// Names under `/dev/serial/by-path/`.
    pub by_path: Vec<String>,
    /// USB identity, for USB adapters.
    pub usb: Option<UsbIds>,
}

/// USB identity of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UsbIds {
    /// Vendor id, 4 hex digits.
    pub vendor: String,
    /// Product id, 4 hex digits.
    pub product: String,
    /// Serial number string, if the device has one.
    pub serial: Option<String>,
    /// Manufacturer string.
    pub manufacturer: Option<String>,
    /// Product string.
    pub product_name: Option<String>,
}

/// A GPIO chip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct GpioChip {
    /// Chip name, e.g. `gpiochip0`.
    pub name: String,
    /// Driver label, e.g. `pinctrl-bcm2711`.
    pub label: String,
    /// Number of lines.
    pub lines: u32,
}

/// An I2C bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct I2cBus {
    /// Bus number.
    pub bus: u32,
    /// Adapter name from sysfs.
    pub name: String,
}

/// An SPI device node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SpiDevice {
    /// Bus number.
    pub bus: u32,
    /// Chip select.
    pub chip_select: u32,
}

/// A V4L2 video device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VideoDevice {
    /// Device node, e.g. `/dev/video0`.
    pub dev_path: String,
    /// Name from sysfs, e.g. `HD Pro Webcam C920`.
    pub name: String,
    /// Names under `/dev/v4l/by-id/`.
    pub by_id: Vec<String>,
    /// Names under `/dev/v4l/by-path/`.
    pub by_path: Vec<String>,
}

/// A GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Gpu {
    /// Kind of GPU.
    pub kind: GpuKind,
    /// Index or UUID, as a [`crate::release::GpuSelect::Ids`] entry would name it.
    pub id: String,
    /// Model, e.g. `Orin (nvgpu)` or `NVIDIA RTX A2000`.
    pub model: String,
    /// Device nodes a container needs for it.
    pub dev_paths: Vec<String>,
    /// Driver version (NVIDIA) or L4T release (Jetson), if known.
    pub driver_version: Option<String>,
}

/// An AI accelerator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Accelerator {
    /// What it is, e.g. `hailo`, `coral-edgetpu`, `rockchip-npu`.
    pub kind: String,
    /// Its device node.
    pub dev_path: String,
}
