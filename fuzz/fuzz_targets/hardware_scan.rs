//! The agent's hardware scan on a small random tree of `/dev`, `/sys`, `/proc` and `/etc`
//! entries (files, directories, symlinks with any target, some aimed outside the root). The
//! scan must not panic or loop, and nothing outside the root may show in what it reports:
//! next to the root lies a decoy tree whose files all say `ESCAPED`.
#![no_main]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use fleet_agent::hardware::scan::scan;
use libfuzzer_sys::fuzz_target;

/// Directories the scanner reads, so short inputs land where it looks.
const DIRS: &[&str] = &[
    "dev",
    "dev/serial/by-id",
    "dev/v4l/by-id",
    "dev/dri",
    "dev/nvgpu/igpu0",
    "sys/dev/char",
    "sys/dev/char/188:0",
    "sys/class/tty",
    "sys/class/tty/ttyUSB0",
    "sys/class/net",
    "sys/class/net/can0",
    "sys/class/drm",
    "sys/class/drm/renderD128",
    "sys/class/video4linux/video0",
    "sys/class/i2c-dev/i2c-1",
    "sys/bus/i2c/devices/i2c-1",
    "sys/bus/gpio/devices",
    "sys/devices/system/cpu",
    "sys/fs/cgroup/cpu",
    "proc",
    "proc/sys/kernel",
    "proc/device-tree",
    "proc/driver/nvidia/gpus/0000:01:00.0",
    "etc",
    "usr/lib",
];

/// Names the scanner looks for.
const NAMES: &[&str] = &[
    "uevent",
    "name",
    "type",
    "device",
    "dev",
    "cpuinfo",
    "meminfo",
    "osrelease",
    "arch",
    "model",
    "os-release",
    "nv_tegra_release",
    "online",
    "isolated",
    "information",
    "version",
    "ttyUSB0",
    "ttyACM0",
    "video0",
    "gpiochip0",
    "i2c-1",
    "spidev0.0",
    "renderD128",
    "card0",
    "nvidia0",
    "nvidiactl",
    "hailo0",
    "188:0",
    "81:0",
    "226:128",
    "docker",
    "cpu.rt_runtime_us",
    "subsystem",
];

/// One tree entry: a directory of [`DIRS`], a name (of [`NAMES`] or the fuzzer's own), and what
/// it is.
#[derive(Debug, Arbitrary)]
struct Entry {
    dir: u8,
    name: Name,
    kind: Kind,
}

#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Own(String),
}

#[derive(Debug, Arbitrary)]
enum Kind {
    File(String),
    Dir,
    /// Any target, relative or absolute (absolute ones must start again at the root).
    Symlink(String),
    /// A target in the decoy tree, by its real absolute path or by enough `..` to reach it.
    Outside {
        absolute: bool,
        name: u8,
    },
}

fuzz_target!(|entries: Vec<Entry>| {
    if entries.len() > 24 {
        return;
    }
    let base = std::env::temp_dir().join(format!("fleet-fuzz-scan-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let root = base.join("root");
    let outside = base.join("outside");
    decoy(&outside);
    for e in &entries {
        add(&root, &outside, e);
    }
    fs::create_dir_all(&root).expect("root");
    let found = scan(&root);
    let _ = fs::remove_dir_all(&base);

    let text = format!("{found:?}");
    assert!(!text.contains("ESCAPED"), "read outside the root: {found:#?}");
    let base_text = base.to_string_lossy();
    assert!(!text.contains(base_text.as_ref()), "a path under the real root: {found:#?}");
    for (path, node) in &found.nodes {
        assert!(path.starts_with("/dev/"), "node {path} ({node:?})");
    }
    for (link, node) in &found.links {
        assert!(link.starts_with("/dev/"), "link {link}");
        assert!(found.nodes.contains_key(node), "link {link} to {node}, not a node");
    }
});

/// A tree outside the root that looks like what the scanner wants, every value `ESCAPED`.
fn decoy(outside: &Path) {
    fs::create_dir_all(outside.join("dir")).expect("decoy");
    let text = "ESCAPED\nDEVNAME=ESCAPED\nMAJOR=188\nMINOR=0\nNAME=ESCAPED\nID=ESCAPED\n\
                MemTotal: 12345 kB\nmodel name\t: ESCAPED\nprocessor\t: 0\n";
    for name in NAMES {
        let _ = fs::write(outside.join(name), text);
        let _ = fs::write(outside.join("dir").join(name), text);
    }
}

fn add(root: &Path, outside: &Path, e: &Entry) {
    let name = match &e.name {
        Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
        Name::Own(s) => clean(s).chars().filter(|c| *c != '/' && *c != '\0').take(32).collect(),
    };
    if name.is_empty() || name == "." || name == ".." {
        return;
    }
    let dir = root.join(DIRS[usize::from(e.dir) % DIRS.len()]);
    let _ = fs::create_dir_all(&dir);
    let path = dir.join(name);
    let _ = match &e.kind {
        Kind::File(content) => fs::write(&path, clean(content)),
        Kind::Dir => fs::create_dir_all(&path),
        Kind::Symlink(target) if !target.is_empty() && !target.contains('\0') => {
            symlink(clean(target), &path)
        }
        Kind::Symlink(_) => Ok(()),
        Kind::Outside { absolute, name } => {
            let leaf = NAMES[usize::from(*name) % NAMES.len()];
            let target: PathBuf = if *absolute {
                outside.join(leaf)
            } else {
                let depth = path.strip_prefix(root).map_or(0, |p| p.components().count());
                let mut t = PathBuf::new();
                for _ in 0..depth {
                    t.push("..");
                }
                t.join("outside").join(leaf)
            };
            symlink(target, &path)
        }
    };
}

/// The fuzzer's own text without the two markers the checks look for (it may learn them from
/// the comparisons), and short.
fn clean(text: &str) -> String {
    let short: String = text.chars().take(1024).collect();
    short.replace("ESCAPED", "escaped").replace("fleet-fuzz-scan", "fleet-fuzz")
}
