//! Facts about a device's host and hardware, as the agent found them.

use serde::{Deserialize, Serialize};

use crate::release::{GpuKind, GpuSelect, HardwareRequest, SerialSelector};

/// Everything the agent knows about its host: what robotics engineers look at first on a new
/// robot, and what the server uses to check that a release's hardware requests can be met.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
    /// What the device lets a release do beyond an ordinary container (its agent's `[policy]`),
    /// so `rollout plan` judges a release as the device will. Appended: `None` from older
    /// agents.
    #[serde(default, with = "crate::codec::extensible_opt")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<crate::policy::DevicePolicy>"))]
    pub policy: Option<crate::policy::DevicePolicy>,
}

impl Inventory {
    /// Why `request` cannot be met on this host, in words an operator can act on
    /// (`serial usb 0403:6001 not present`), or `None` if the hardware is there. Both the server
    /// (pre-flight checks) and the agent judge by this one rule.
    pub fn unmet(&self, request: &HardwareRequest) -> Option<String> {
        let present = match request {
            HardwareRequest::Serial { port, .. } => match port {
                SerialSelector::ById(name) => {
                    let name = name.trim_start_matches("/dev/serial/by-id/");
                    self.serial.iter().any(|p| p.by_id.iter().any(|n| n == name))
                }
                SerialSelector::ByPath(name) => {
                    let name = name.trim_start_matches("/dev/serial/by-path/");
                    self.serial.iter().any(|p| p.by_path.iter().any(|n| n == name))
                }
                SerialSelector::Usb { vendor, product, serial } => self.serial.iter().any(|p| {
                    p.usb.as_ref().is_some_and(|u| {
                        u.vendor.eq_ignore_ascii_case(vendor)
                            && u.product.eq_ignore_ascii_case(product)
                            && serial.as_ref().is_none_or(|s| u.serial.as_ref() == Some(s))
                    })
                }),
            },
            HardwareRequest::Gpio { chip } => {
                self.gpio.iter().any(|c| &c.name == chip || &c.label == chip)
            }
            HardwareRequest::I2c { bus } => self.i2c.iter().any(|b| b.bus == *bus),
            HardwareRequest::Spi { bus, chip_select } => {
                self.spi.iter().any(|d| d.bus == *bus && d.chip_select == *chip_select)
            }
            HardwareRequest::Video { device } => self.video.iter().any(|v| {
                &v.name == device
                    || &v.dev_path == device
                    || v.by_id.iter().chain(&v.by_path).any(|n| device.ends_with(n.as_str()))
            }),
            HardwareRequest::Gpu { kind, select } => {
                let of_kind: Vec<&Gpu> = self.gpus.iter().filter(|g| g.kind == *kind).collect();
                match select {
                    GpuSelect::All => !of_kind.is_empty(),
                    GpuSelect::Count(n) => {
                        of_kind.len() >= usize::try_from(*n).unwrap_or(usize::MAX)
                    }
                    GpuSelect::Ids(ids) => ids.iter().all(|id| of_kind.iter().any(|g| &g.id == id)),
                }
            }
            HardwareRequest::Can { interface } => self.can.iter().any(|c| c == interface),
            // Plain device nodes are not inventoried; the agent checks the path itself.
            HardwareRequest::Device { .. } => true,
        };
        (!present).then(|| describe(request) + " not present")
    }
}

/// A hardware request in a few words, for reasons: `serial usb 0403:6001`, `gpu nvidia x2`.
pub fn describe(request: &HardwareRequest) -> String {
    match request {
        HardwareRequest::Serial { port: SerialSelector::ById(n), .. } => {
            format!("serial by-id {n}")
        }
        HardwareRequest::Serial { port: SerialSelector::ByPath(n), .. } => {
            format!("serial by-path {n}")
        }
        HardwareRequest::Serial {
            port: SerialSelector::Usb { vendor, product, serial }, ..
        } => match serial {
            Some(s) => format!("serial usb {vendor}:{product}:{s}"),
            None => format!("serial usb {vendor}:{product}"),
        },
        HardwareRequest::Gpio { chip } => format!("gpio {chip}"),
        HardwareRequest::I2c { bus } => format!("i2c bus {bus}"),
        HardwareRequest::Spi { bus, chip_select } => format!("spi {bus}.{chip_select}"),
        HardwareRequest::Video { device } => format!("video {device}"),
        HardwareRequest::Gpu { kind, select } => {
            let kind = match kind {
                GpuKind::Nvidia => "nvidia",
                GpuKind::Jetson => "jetson",
                GpuKind::Dri => "dri",
            };
            match select {
                GpuSelect::All => format!("gpu {kind}"),
                GpuSelect::Count(n) => format!("gpu {kind} x{n}"),
                GpuSelect::Ids(ids) => format!("gpu {kind} {}", ids.join(",")),
            }
        }
        HardwareRequest::Can { interface } => format!("can {interface}"),
        HardwareRequest::Device { host_path, .. } => format!("device {host_path}"),
    }
}

/// Operating system identity from `/etc/os-release`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct I2cBus {
    /// Bus number.
    pub bus: u32,
    /// Adapter name from sysfs.
    pub name: String,
}

/// An SPI device node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SpiDevice {
    /// Bus number.
    pub bus: u32,
    /// Chip select.
    pub chip_select: u32,
}

/// A V4L2 video device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Accelerator {
    /// What it is, e.g. `hailo`, `coral-edgetpu`, `rockchip-npu`.
    pub kind: String,
    /// Its device node.
    pub dev_path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn robot() -> Inventory {
        Inventory {
            serial: vec![SerialPort {
                dev_path: "/dev/ttyUSB3".into(),
                by_id: vec!["usb-FTDI_FT232R_A50285BI-if00-port0".into()],
                by_path: vec!["platform-xhci-usb-0:1.2:1.0-port0".into()],
                usb: Some(UsbIds {
                    vendor: "0403".into(),
                    product: "6001".into(),
                    serial: Some("A50285BI".into()),
                    manufacturer: None,
                    product_name: None,
                }),
            }],
            gpio: vec![GpioChip {
                name: "gpiochip0".into(),
                label: "pinctrl-bcm2711".into(),
                lines: 58,
            }],
            i2c: vec![I2cBus { bus: 1, name: "bcm2835 (i2c@7e804000)".into() }],
            gpus: vec![Gpu {
                kind: GpuKind::Nvidia,
                id: "0".into(),
                model: "RTX A2000".into(),
                dev_paths: vec!["/dev/nvidia0".into()],
                driver_version: Some("535.104".into()),
            }],
            ..Inventory::default()
        }
    }

    #[test]
    fn present_hardware_is_met_by_stable_identity() {
        let inv = robot();
        let serial = |port| HardwareRequest::Serial { port, container_path: "/dev/ttyUSB0".into() };
        for req in [
            serial(SerialSelector::ById("usb-FTDI_FT232R_A50285BI-if00-port0".into())),
            serial(SerialSelector::Usb {
                vendor: "0403".into(),
                product: "6001".into(),
                serial: None,
            }),
            serial(SerialSelector::Usb {
                vendor: "0403".into(),
                product: "6001".into(),
                serial: Some("A50285BI".into()),
            }),
            HardwareRequest::Gpio { chip: "pinctrl-bcm2711".into() },
            HardwareRequest::I2c { bus: 1 },
            HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::Count(1) },
        ] {
            assert_eq!(inv.unmet(&req), None, "{req:?}");
        }
    }

    #[test]
    fn missing_hardware_is_named_precisely() {
        let inv = robot();
        let usb = HardwareRequest::Serial {
            port: SerialSelector::Usb {
                vendor: "10c4".into(),
                product: "ea60".into(),
                serial: None,
            },
            container_path: "/dev/ttyUSB0".into(),
        };
        assert_eq!(inv.unmet(&usb).as_deref(), Some("serial usb 10c4:ea60 not present"));
        let two = HardwareRequest::Gpu { kind: GpuKind::Nvidia, select: GpuSelect::Count(2) };
        assert_eq!(inv.unmet(&two).as_deref(), Some("gpu nvidia x2 not present"));
        assert!(inv.unmet(&HardwareRequest::Can { interface: "can0".into() }).is_some());
    }
}
