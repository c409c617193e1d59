//! Four hosts, in code, for the pure mapping and admission tests: a Raspberry Pi 5 with two USB
//! serial adapters, GPIO, I2C and SPI; a Jetson AGX Orin with a CSI camera and CAN; an x86 box
//! with an NVIDIA card, a webcam, an Intel render node and a Hailo; and a bare VM with nothing.
//!
//! The scanner's fixture trees describe the same hosts: the facts here (paths, device numbers,
//! groups, USB identities, stable names) are the ones the trees hold.

use std::collections::BTreeMap;

use fleet_proto::inventory::{
    Accelerator, CpuInfo, GpioChip, Gpu, I2cBus, OsInfo, SerialPort, SpiDevice, UsbIds, VideoDevice,
};
use fleet_proto::release::GpuKind;
use fleet_proto::Inventory;

use super::{DeviceNode, HostHardware};

const GIB: u64 = 1 << 30;

fn s(v: &str) -> String {
    v.to_owned()
}

fn node(major: u32, minor: u32, gid: u32) -> DeviceNode {
    DeviceNode { major, minor, gid }
}

fn nodes(list: &[(&str, DeviceNode)]) -> BTreeMap<String, DeviceNode> {
    list.iter().map(|(p, n)| (s(p), *n)).collect()
}

fn links(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter().map(|(l, t)| (s(l), s(t))).collect()
}

fn os(id: &str, version: &str, pretty_name: &str) -> OsInfo {
    OsInfo { id: s(id), version: s(version), pretty_name: s(pretty_name) }
}

fn cpus(count: u32, model: &str, online: &str, isolated: &str) -> CpuInfo {
    CpuInfo { count, model: s(model), online: s(online), isolated: s(isolated) }
}

fn usb(vendor: &str, product: &str, serial: &str, manufacturer: &str, name: &str) -> UsbIds {
    UsbIds {
        vendor: s(vendor),
        product: s(product),
        serial: Some(s(serial)),
        manufacturer: Some(s(manufacturer)),
        product_name: Some(s(name)),
    }
}

/// FTDI adapter's by-id name on the Pi.
pub(crate) const FTDI_BY_ID: &str = "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0";
/// FTDI adapter's by-path name on the Pi.
pub(crate) const FTDI_BY_PATH: &str = "platform-xhci-hcd.0-usb-0:1:1.0-port0";
/// CP2102 adapter's by-id name on the Pi.
pub(crate) const CP2102_BY_ID: &str =
    "usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0";
/// CP2102 adapter's by-path name on the Pi.
pub(crate) const CP2102_BY_PATH: &str = "platform-xhci-hcd.1-usb-0:2:1.0-port0";
/// The C920 webcam's by-id name on the x86 host.
pub(crate) const C920_BY_ID: &str = "usb-046d_HD_Pro_Webcam_C920_8B2F7D4F-video-index0";
/// The C920 webcam's by-path name on the x86 host.
pub(crate) const C920_BY_PATH: &str = "pci-0000:00:14.0-usb-0:3:1.0-video-index0";

/// Raspberry Pi 5, 8 GiB, Raspberry Pi OS (Debian 12), CPU 3 isolated for a control loop.
pub(crate) fn rpi5() -> HostHardware {
    HostHardware {
        inventory: Inventory {
            arch: s("aarch64"),
            os: os("debian", "12", "Debian GNU/Linux 12 (bookworm)"),
            kernel: s("6.6.31+rpt-rpi-2712"),
            engine: None,
            cpus: cpus(4, "Raspberry Pi 5 Model B Rev 1.0", "0-3", "3"),
            memory_bytes: 8 * GIB,
            disks: vec![],
            serial: vec![
                SerialPort {
                    dev_path: s("/dev/ttyAMA10"),
                    by_id: vec![],
                    by_path: vec![],
                    usb: None,
                },
                SerialPort {
                    dev_path: s("/dev/ttyUSB0"),
                    by_id: vec![s(FTDI_BY_ID)],
                    by_path: vec![s(FTDI_BY_PATH)],
                    usb: Some(usb("0403", "6001", "A50285BI", "FTDI", "FT232R USB UART")),
                },
                SerialPort {
                    dev_path: s("/dev/ttyUSB1"),
                    by_id: vec![s(CP2102_BY_ID)],
                    by_path: vec![s(CP2102_BY_PATH)],
                    usb: Some(usb(
                        "10c4",
                        "ea60",
                        "0001",
                        "Silicon Labs",
                        "CP2102 USB to UART Bridge Controller",
                    )),
                },
            ],
            gpio: vec![
                GpioChip { name: s("gpiochip0"), label: s("pinctrl-rp1"), lines: 54 },
                GpioChip { name: s("gpiochip10"), label: s("gpio-brcmstb@107d508500"), lines: 32 },
            ],
            i2c: vec![I2cBus { bus: 1, name: s("Synopsys DesignWare I2C adapter") }],
            spi: vec![SpiDevice { bus: 0, chip_select: 0 }],
            video: vec![],
            can: vec![],
            gpus: vec![Gpu {
                kind: GpuKind::Dri,
                id: s("renderD128"),
                model: s("v3d"),
                dev_paths: vec![s("/dev/dri/renderD128")],
                driver_version: None,
            }],
            accelerators: vec![],
            policy: None,
        },
        nodes: nodes(&[
            ("/dev/dri/renderD128", node(226, 128, 992)),
            ("/dev/gpiochip0", node(254, 0, 993)),
            ("/dev/gpiochip10", node(254, 10, 993)),
            ("/dev/i2c-1", node(89, 1, 998)),
            ("/dev/spidev0.0", node(153, 0, 999)),
            ("/dev/ttyAMA10", node(204, 74, 20)),
            ("/dev/ttyUSB0", node(188, 0, 20)),
            ("/dev/ttyUSB1", node(188, 1, 20)),
        ]),
        links: links(&[
            (&format!("/dev/serial/by-id/{FTDI_BY_ID}"), "/dev/ttyUSB0"),
            (&format!("/dev/serial/by-id/{CP2102_BY_ID}"), "/dev/ttyUSB1"),
            (&format!("/dev/serial/by-path/{FTDI_BY_PATH}"), "/dev/ttyUSB0"),
            (&format!("/dev/serial/by-path/{CP2102_BY_PATH}"), "/dev/ttyUSB1"),
        ]),
        engine_rt_runtime_us: None,
    }
}

/// NVIDIA Jetson AGX Orin developer kit, 32 GiB, L4T R36.3 (Ubuntu 22.04), an IMX219 CSI
/// camera and a CAN interface.
pub(crate) fn jetson_orin() -> HostHardware {
    HostHardware {
        inventory: Inventory {
            arch: s("aarch64"),
            os: os("ubuntu", "22.04", "Ubuntu 22.04.4 LTS"),
            kernel: s("5.15.136-tegra"),
            engine: None,
            cpus: cpus(12, "NVIDIA Jetson AGX Orin Developer Kit", "0-11", ""),
            memory_bytes: 32 * GIB,
            disks: vec![],
            serial: vec![],
            gpio: vec![],
            i2c: vec![],
            spi: vec![],
            video: vec![VideoDevice {
                dev_path: s("/dev/video0"),
                name: s("vi-output, imx219 9-0010"),
                by_id: vec![],
                by_path: vec![],
            }],
            can: vec![s("can0")],
            gpus: vec![Gpu {
                kind: GpuKind::Jetson,
                id: s("0"),
                model: s("NVIDIA Jetson AGX Orin Developer Kit"),
                dev_paths: vec![
                    s("/dev/nvgpu/igpu0/ctrl"),
                    s("/dev/nvhost-ctrl-gpu"),
                    s("/dev/nvmap"),
                ],
                driver_version: Some(s("R36.3.0")),
            }],
            accelerators: vec![],
            policy: None,
        },
        nodes: nodes(&[
            ("/dev/nvgpu/igpu0/ctrl", node(498, 1, 44)),
            ("/dev/nvhost-ctrl-gpu", node(497, 1, 44)),
            ("/dev/nvmap", node(10, 125, 44)),
            ("/dev/video0", node(81, 0, 44)),
        ]),
        links: BTreeMap::new(),
        engine_rt_runtime_us: None,
    }
}

/// An x86 workstation, 32 GiB, Ubuntu 22.04: NVIDIA RTX A2000, Logitech C920, Intel iGPU
/// render node, Hailo-8 accelerator.
pub(crate) fn x86_nvidia() -> HostHardware {
    HostHardware {
        inventory: Inventory {
            arch: s("x86_64"),
            os: os("ubuntu", "22.04", "Ubuntu 22.04.4 LTS"),
            kernel: s("6.5.0-41-generic"),
            engine: None,
            cpus: cpus(8, "Intel(R) Core(TM) i7-9700 CPU @ 3.00GHz", "0-7", ""),
            memory_bytes: 32 * GIB,
            disks: vec![],
            serial: vec![],
            gpio: vec![],
            i2c: vec![],
            spi: vec![],
            video: vec![VideoDevice {
                dev_path: s("/dev/video0"),
                name: s("HD Pro Webcam C920"),
                by_id: vec![s(C920_BY_ID)],
                by_path: vec![s(C920_BY_PATH)],
            }],
            can: vec![],
            gpus: vec![
                Gpu {
                    kind: GpuKind::Nvidia,
                    id: s("0"),
                    model: s("NVIDIA RTX A2000"),
                    dev_paths: vec![
                        s("/dev/nvidia-modeset"),
                        s("/dev/nvidia-uvm"),
                        s("/dev/nvidia-uvm-tools"),
                        s("/dev/nvidia0"),
                        s("/dev/nvidiactl"),
                    ],
                    driver_version: Some(s("535.104.05")),
                },
                Gpu {
                    kind: GpuKind::Dri,
                    id: s("renderD128"),
                    model: s("i915"),
                    dev_paths: vec![s("/dev/dri/renderD128")],
                    driver_version: None,
                },
            ],
            accelerators: vec![Accelerator { kind: s("hailo"), dev_path: s("/dev/hailo0") }],
            policy: None,
        },
        nodes: nodes(&[
            ("/dev/dri/renderD128", node(226, 128, 109)),
            ("/dev/hailo0", node(511, 0, 0)),
            ("/dev/nvidia-modeset", node(195, 254, 0)),
            ("/dev/nvidia-uvm", node(509, 0, 0)),
            ("/dev/nvidia-uvm-tools", node(509, 1, 0)),
            ("/dev/nvidia0", node(195, 0, 0)),
            ("/dev/nvidiactl", node(195, 255, 0)),
            ("/dev/video0", node(81, 0, 44)),
        ]),
        links: links(&[
            (&format!("/dev/v4l/by-id/{C920_BY_ID}"), "/dev/video0"),
            (&format!("/dev/v4l/by-path/{C920_BY_PATH}"), "/dev/video0"),
        ]),
        engine_rt_runtime_us: None,
    }
}

/// A 2-CPU, 4 GiB Debian 12 VM with no hardware at all.
pub(crate) fn bare_vm() -> HostHardware {
    HostHardware {
        inventory: Inventory {
            arch: s("x86_64"),
            os: os("debian", "12", "Debian GNU/Linux 12 (bookworm)"),
            kernel: s("6.1.0-28-amd64"),
            cpus: cpus(2, "QEMU Virtual CPU version 2.5+", "0-1", ""),
            memory_bytes: 4 * GIB,
            ..Inventory::default()
        },
        nodes: BTreeMap::new(),
        links: BTreeMap::new(),
        engine_rt_runtime_us: None,
    }
}

/// `hw` plus a serial port on the pseudo-terminal slave `/dev/pts/<pts_number>` (group `tty`,
/// 5), linked as `/dev/serial/by-id/<by_id_name>`: what the end-to-end test builds around a
/// real pty standing in for a USB adapter.
pub(crate) fn with_pty(mut hw: HostHardware, by_id_name: &str, pts_number: u32) -> HostHardware {
    let dev_path = format!("/dev/pts/{pts_number}");
    // Unix98 pty slaves use majors 136..=143, 256 minors each.
    let pty = node(136 + pts_number / 256, pts_number % 256, 5);
    hw.inventory.serial.push(SerialPort {
        dev_path: dev_path.clone(),
        by_id: vec![s(by_id_name)],
        by_path: vec![],
        usb: None,
    });
    hw.inventory.serial.sort_by(|a, b| a.dev_path.cmp(&b.dev_path));
    hw.nodes.insert(dev_path.clone(), pty);
    hw.links.insert(format!("/dev/serial/by-id/{by_id_name}"), dev_path);
    hw
}
