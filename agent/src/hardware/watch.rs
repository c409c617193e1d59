//! Hot-plug: device arrival and removal under `/dev`.
//!
//! udev creates and removes device nodes and their stable links (`/dev/serial/by-id/…`) under
//! `/dev`; inotify on `/dev` and its directories sees both without polling. A burst of changes
//! (one USB adapter makes a node and two links) is answered by one rescan after the tree has
//! been quiet for the settle time. What changed is worked out by [`changes`], a pure diff of
//! two inventories; the daemon maps with the new inventory, so a device back under a new node
//! gives its service a new configuration hash and the planner re-creates it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::inventory::describe;
use fleet_proto::release::{GpuSelect, HardwareRequest, SerialSelector};
use fleet_proto::Inventory;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;

/// Directories under `/dev` that change for reasons other than hardware: every terminal
/// session makes a pseudo-terminal, and shared memory and queues are files, not devices.
const IGNORED: &[&str] = &["pts", "shm", "mqueue", "hugepages", "fd"];

/// One device that came or went, as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Whether it appeared (`true`) or disappeared.
    pub added: bool,
    /// The device, e.g. `serial /dev/ttyUSB0 (usb 0403:6001 A50285BI)`.
    pub device: String,
}

/// What differs between two inventories, device by device (host facts such as memory are
/// not hot-plugged and are not compared).
pub fn changes(old: &Inventory, new: &Inventory) -> Vec<Change> {
    let before = devices(old);
    let after = devices(new);
    let gone = before.difference(&after).map(|d| Change { added: false, device: d.clone() });
    let came = after.difference(&before).map(|d| Change { added: true, device: d.clone() });
    gone.chain(came).collect()
}

/// Every hot-pluggable device of an inventory in words, node path included so a device back
/// under another node counts as changed.
fn devices(inv: &Inventory) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in &inv.serial {
        let usb = p.usb.as_ref().map(|u| {
            let serial = u.serial.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
            format!(" (usb {}:{}{serial})", u.vendor, u.product)
        });
        let name = p.by_id.first().map(|n| format!(" {n}")).unwrap_or_default();
        out.insert(format!("serial {}{name}{}", p.dev_path, usb.unwrap_or_default()));
    }
    for c in &inv.gpio {
        out.insert(format!("gpio {} ({})", c.name, c.label));
    }
    for b in &inv.i2c {
        out.insert(format!("i2c bus {}", b.bus));
    }
    for d in &inv.spi {
        out.insert(format!("spi {}.{}", d.bus, d.chip_select));
    }
    for v in &inv.video {
        out.insert(format!("video {} ({})", v.dev_path, v.name));
    }
    for c in &inv.can {
        out.insert(describe(&HardwareRequest::Can { interface: c.clone() }));
    }
    for g in &inv.gpus {
        let req = HardwareRequest::Gpu { kind: g.kind, select: GpuSelect::Ids(vec![g.id.clone()]) };
        out.insert(describe(&req));
    }
    for a in &inv.accelerators {
        out.insert(format!("{} {}", a.kind, a.dev_path));
    }
    out
}

/// Whether a request names hardware that a change touches: the services to tell about it.
pub fn touches(request: &HardwareRequest, change: &Change) -> bool {
    let needle = match request {
        HardwareRequest::Serial { port: SerialSelector::ById(n), .. }
        | HardwareRequest::Serial { port: SerialSelector::ByPath(n), .. } => {
            n.rsplit('/').next().unwrap_or(n).to_owned()
        }
        HardwareRequest::Serial { port: SerialSelector::Usb { vendor, product, .. }, .. } => {
            format!("usb {vendor}:{product}")
        }
        HardwareRequest::Gpio { chip } => chip.clone(),
        HardwareRequest::Video { device } => device.rsplit('/').next().unwrap_or(device).to_owned(),
        other => describe(other),
    };
    change.device.to_ascii_lowercase().contains(&needle.to_ascii_lowercase())
}

/// Watches `root/dev` and sends `()` once the tree has been quiet for `settle` after a change.
/// Fails only if inotify cannot be set up; the agent then works on without hot-plug and says
/// so. A small thread blocks on the inotify descriptor (no polling); the debounce is async.
pub fn spawn(root: &Path, settle: Duration) -> std::io::Result<mpsc::Receiver<()>> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    let dev = root.join("dev");
    add_watches(&inotify, &dev);
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    std::thread::Builder::new().name("fleet-hotplug".into()).stack_size(64 << 10).spawn(
        move || loop {
            match inotify.read_events() {
                Ok(_) => {
                    // New directories (the first serial adapter creates /dev/serial/by-id)
                    // get watches at once; re-adding an existing watch is harmless.
                    add_watches(&inotify, &dev);
                    if raw_tx.send(()).is_err() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "hot-plug watch failed; devices are rescanned on resync only");
                    return;
                }
            }
        },
    )?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Settle: udev makes a node and its links in several steps.
            loop {
                match tokio::time::timeout(settle, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn add_watches(inotify: &Inotify, dir: &Path) {
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if inotify.add_watch(&d, flags).is_err() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            let ignored = d == dir && IGNORED.iter().any(|i| e.file_name() == *i);
            if is_dir && !ignored {
                stack.push(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fleet_proto::inventory::{SerialPort, UsbIds};

    use super::*;

    fn port(dev: &str) -> SerialPort {
        SerialPort {
            dev_path: dev.to_owned(),
            by_id: vec!["usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0".to_owned()],
            by_path: vec![],
            usb: Some(UsbIds {
                vendor: "0403".into(),
                product: "6001".into(),
                serial: Some("A50285BI".into()),
                manufacturer: None,
                product_name: None,
            }),
        }
    }

    #[test]
    fn a_replugged_adapter_under_a_new_node_is_one_removal_and_one_arrival() {
        let before = Inventory { serial: vec![port("/dev/ttyUSB0")], ..Inventory::default() };
        let after = Inventory { serial: vec![port("/dev/ttyUSB1")], ..Inventory::default() };
        let c = changes(&before, &after);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(!c[0].added && c[0].device.contains("/dev/ttyUSB0"), "{c:?}");
        assert!(c[1].added && c[1].device.contains("/dev/ttyUSB1 usb-FTDI"), "{c:?}");
        assert!(changes(&after, &after).is_empty());
        let by_usb = HardwareRequest::Serial {
            port: SerialSelector::Usb {
                vendor: "0403".into(),
                product: "6001".into(),
                serial: None,
            },
            container_path: "/dev/ttyUSB0".into(),
        };
        let by_id = HardwareRequest::Serial {
            port: SerialSelector::ById(
                "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0".into(),
            ),
            container_path: "/dev/ttyUSB0".into(),
        };
        assert!(touches(&by_usb, &c[1]) && touches(&by_id, &c[0]));
        assert!(!touches(&HardwareRequest::I2c { bus: 1 }, &c[0]));
    }

    #[tokio::test]
    async fn node_and_link_creation_under_dev_is_noticed_once_after_settling() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev/pts")).unwrap();
        let mut rx = spawn(root.path(), Duration::from_millis(100)).unwrap();
        // A directory that did not exist at start, then a node and its link in it.
        std::fs::create_dir_all(root.path().join("dev/serial/by-id")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(root.path().join("dev/ttyUSB0"), b"").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(first.unwrap(), Some(()));
        // The new directory is watched from now on.
        std::os::unix::fs::symlink("../../ttyUSB0", root.path().join("dev/serial/by-id/x"))
            .unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(second.unwrap(), Some(()));
        // Pseudo-terminals come and go with every terminal session: ignored.
        std::fs::write(root.path().join("dev/pts/9"), b"").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
        assert!(quiet.is_err(), "a new pseudo-terminal is not hardware");
    }
}
