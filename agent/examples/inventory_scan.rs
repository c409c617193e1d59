//! How long a hardware scan takes and what it costs in memory, on a large robot-like tree: 64
//! USB serial ports (each with by-id and by-path links and its USB device in sysfs), 8 cameras
//! with by-id links, 4 GPIO chips and 2 I2C buses, built in a temporary directory. Then the real
//! `/` once. The agent rescans on every hot-plug event, so this is its per-event cost.
//!
//!   cargo run --release -p fleet-agent --example inventory_scan [SCANS]   (default 200)
//!   cargo run --release -p fleet-agent --example inventory_scan -- --tree DIR
//!       only builds the tree in DIR (to point an agent's `[hardware] root` at it)

#![allow(clippy::unwrap_used)] // a benchmark: fail loudly

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_agent::hardware::scan::scan;

const SERIAL_PORTS: u32 = 64;
const CAMERAS: u32 = 8;
const GPIO_CHIPS: u32 = 4;
const I2C_BUSES: u32 = 2;

fn file(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

/// A stand-in node: the empty file `dev/<devname>`, its sysfs device dir `sysdir` with its
/// uevent, and `/sys/dev/char/M:m` pointing there (as the kernel has it).
fn node(root: &Path, devname: &str, major: u32, minor: u32, sysdir: &str) {
    file(root, &format!("dev/{devname}"), "");
    file(
        root,
        &format!("{sysdir}/uevent"),
        &format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={devname}\n"),
    );
    link(root, &format!("sys/dev/char/{major}:{minor}"), &format!("../../../{sysdir}"));
}

fn build(root: &Path) {
    file(root, "proc/sys/kernel/arch", "aarch64\n");
    file(root, "proc/sys/kernel/osrelease", "6.6.31+rpt-rpi-2712\n");
    file(root, "etc/os-release", "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian 12\"\n");
    file(root, "sys/devices/system/cpu/online", "0-3\n");
    file(root, "proc/meminfo", "MemTotal:        8388608 kB\n");
    for n in 0..SERIAL_PORTS {
        // Four 16-port hubs.
        let (hub, port) = (n / 16 + 1, n % 16 + 1);
        let usb = format!("sys/devices/platform/axi/xhci-hcd.0/usb1/1-{hub}/1-{hub}.{port}");
        file(root, &format!("{usb}/idVendor"), "0403\n");
        file(root, &format!("{usb}/idProduct"), "6001\n");
        file(root, &format!("{usb}/serial"), &format!("A5{n:06}\n"));
        file(root, &format!("{usb}/manufacturer"), "FTDI\n");
        file(root, &format!("{usb}/product"), "FT232R USB UART\n");
        let iface = format!("{usb}/1-{hub}.{port}:1.0");
        let tty = format!("{iface}/ttyUSB{n}/tty/ttyUSB{n}");
        node(root, &format!("ttyUSB{n}"), 188, n, &tty);
        link(root, &format!("{tty}/device"), &format!("../../../ttyUSB{n}"));
        link(root, &format!("sys/class/tty/ttyUSB{n}"), &format!("../../../{tty}"));
        link(
            root,
            &format!("dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A5{n:06}-if00-port0"),
            &format!("../../ttyUSB{n}"),
        );
        link(
            root,
            &format!("dev/serial/by-path/platform-xhci-hcd.0-usb-0:{hub}.{port}:1.0-port0"),
            &format!("../../ttyUSB{n}"),
        );
    }
    for n in 0..CAMERAS {
        let dir = format!(
            "sys/devices/platform/axi/xhci-hcd.1/usb3/3-{n}/3-{n}:1.0/video4linux/video{n}"
        );
        node(root, &format!("video{n}"), 81, n, &dir);
        file(root, &format!("{dir}/name"), &format!("USB Camera {n}\n"));
        link(root, &format!("sys/class/video4linux/video{n}"), &format!("../../../{dir}"));
        link(
            root,
            &format!("dev/v4l/by-id/usb-Arducam_USB_Camera_SN{n:04}-video-index0"),
            &format!("../../video{n}"),
        );
    }
    for n in 0..GPIO_CHIPS {
        let dir = format!("sys/bus/gpio/devices/gpiochip{n}");
        node(root, &format!("gpiochip{n}"), 254, n, &dir);
        file(root, &format!("{dir}/label"), &format!("gpio-expander-{n}\n"));
        file(root, &format!("{dir}/ngpio"), "16\n");
    }
    for n in 1..=I2C_BUSES {
        let dir = format!("sys/class/i2c-dev/i2c-{n}");
        node(root, &format!("i2c-{n}"), 89, n, &dir);
        file(root, &format!("{dir}/name"), "Synopsys DesignWare I2C adapter\n");
    }
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn memory(when: &str) {
    println!(
        "{when:<14} VmRSS {:>6} kB   VmHWM {:>6} kB",
        status_kb("VmRSS:"),
        status_kb("VmHWM:")
    );
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--tree") {
        let dir = std::env::args().nth(2).expect("--tree DIR");
        build(Path::new(&dir));
        println!("built {dir}");
        return;
    }
    let scans: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    memory("before scans");

    let first = scan(dir.path());
    let inv = &first.inventory;
    assert_eq!(inv.serial.len(), SERIAL_PORTS as usize);
    assert!(inv
        .serial
        .iter()
        .all(|p| p.usb.is_some() && p.by_id.len() == 1 && p.by_path.len() == 1));
    assert_eq!(inv.video.len(), CAMERAS as usize);
    assert!(inv.video.iter().all(|v| v.by_id.len() == 1 && !v.name.is_empty()));
    assert_eq!(inv.gpio.len(), GPIO_CHIPS as usize);
    assert_eq!(inv.i2c.len(), I2C_BUSES as usize);
    println!(
        "tree: {} nodes, {} links; {} serial ports, {} cameras, {} gpio chips, {} i2c buses",
        first.nodes.len(),
        first.links.len(),
        inv.serial.len(),
        inv.video.len(),
        inv.gpio.len(),
        inv.i2c.len()
    );

    let mut times: Vec<Duration> = (0..scans)
        .map(|_| {
            let start = Instant::now();
            let hw = scan(dir.path());
            let took = start.elapsed();
            assert_eq!(hw, first);
            took
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{scans} scans: median {}, p90 {}, min {}, max {}",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
    memory("after scans");

    let start = Instant::now();
    let real = scan(Path::new("/"));
    let took = start.elapsed();
    println!(
        "real /: {} in one scan ({} nodes, {} links, {} serial, {} video, {} gpus)",
        ms(took),
        real.nodes.len(),
        real.links.len(),
        real.inventory.serial.len(),
        real.inventory.video.len(),
        real.inventory.gpus.len()
    );
    memory("after real /");
}
