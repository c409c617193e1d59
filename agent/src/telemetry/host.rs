//! Host metrics, read from `/proc` and `/sys` under a configurable root (tests point it at
//! fixture trees). Parsing is pure; [`HostSampler::sample`] is the only I/O.
//!
//! Metrics (all gauges unless named `_total`):
//! `host.cpu.percent` (busy share of all CPUs since the previous sample), `host.load1|5|15`,
//! `host.mem.total_bytes`, `host.mem.available_bytes`, `host.disk.free_bytes` and
//! `host.disk.total_bytes` per `mount`, `host.temp.celsius` per thermal `zone`,
//! `host.net.rx_bytes_total` and `host.net.tx_bytes_total` per `iface` (loopback left out),
//! `host.uptime.secs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_proto::telemetry::{Point, Value};
use fleet_proto::UnixMillis;

/// Busy and total jiffies from the `cpu` line of `/proc/stat`.
pub fn parse_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 =
            line[name.len()..].trim_start_matches(':').split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// Received and sent bytes per interface of `/proc/net/dev`, loopback left out.
pub fn parse_net_dev(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (name != "lo" && v.len() >= 9).then(|| (name.to_owned(), v[0], v[8]))
        })
        .collect()
}

/// Seconds since boot from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Reads host metrics; keeps the previous CPU counters for the busy share.
#[derive(Debug)]
pub struct HostSampler {
    root: PathBuf,
    mounts: Vec<PathBuf>,
    last_cpu: Option<(u64, u64)>,
}

impl HostSampler {
    /// Reads below `root` (`/` on a device); reports free space of `mounts` (paths as the
    /// device sees them; they are not prefixed with `root`).
    pub fn new(root: &Path, mounts: Vec<PathBuf>) -> HostSampler {
        HostSampler { root: root.to_path_buf(), mounts, last_cpu: None }
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    /// One sample of every metric that can be read; what cannot be read is left out.
    pub fn sample(&mut self, at: UnixMillis) -> Vec<Point> {
        let mut out = vec![];
        let mut push = |metric: &str, value: Value, labels: &[(&str, &str)]| {
            out.push(Point {
                at,
                metric: metric.to_owned(),
                value,
                labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            });
        };
        if let Some(cpu) = self.read("proc/stat").as_deref().and_then(parse_cpu) {
            if let Some((busy0, total0)) = self.last_cpu {
                let (db, dt) = (cpu.0.saturating_sub(busy0), cpu.1.saturating_sub(total0));
                if dt > 0 {
                    push("host.cpu.percent", Value::F64(100.0 * db as f64 / dt as f64), &[]);
                }
            }
            self.last_cpu = Some(cpu);
        }
        if let Some([a, b, c]) = self.read("proc/loadavg").as_deref().and_then(parse_loadavg) {
            push("host.load1", Value::F64(a), &[]);
            push("host.load5", Value::F64(b), &[]);
            push("host.load15", Value::F64(c), &[]);
        }
        if let Some((total, avail)) = self.read("proc/meminfo").as_deref().and_then(parse_meminfo) {
            push("host.mem.total_bytes", Value::I64(total as i64), &[]);
            push("host.mem.available_bytes", Value::I64(avail as i64), &[]);
        }
        for m in &self.mounts {
            // The field types are 32-bit on armv7 and 64-bit elsewhere.
            #[allow(clippy::useless_conversion)]
            if let Ok(st) = nix::sys::statvfs::statvfs(m.as_path()) {
                let frag = u64::from(st.fragment_size());
                let mount = m.display().to_string();
                let free = u64::from(st.blocks_available()) * frag;
                push("host.disk.free_bytes", Value::I64(free as i64), &[("mount", &mount)]);
                let total = u64::from(st.blocks()) * frag;
                push("host.disk.total_bytes", Value::I64(total as i64), &[("mount", &mount)]);
            }
        }
        let mut zones = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(self.root.join("sys/class/thermal")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("thermal_zone") {
                    continue;
                }
                let temp = std::fs::read_to_string(e.path().join("temp")).ok();
                let kind = std::fs::read_to_string(e.path().join("type")).ok();
                if let Some(milli) = temp.and_then(|t| t.trim().parse::<i64>().ok()) {
                    let zone = kind.map_or(name, |k| k.trim().to_owned());
                    zones.insert(zone, milli as f64 / 1000.0);
                }
            }
        }
        for (zone, c) in zones {
            push("host.temp.celsius", Value::F64(c), &[("zone", &zone)]);
        }
        for (iface, rx, tx) in
            self.read("proc/net/dev").as_deref().map(parse_net_dev).unwrap_or_default()
        {
            push("host.net.rx_bytes_total", Value::I64(rx as i64), &[("iface", &iface)]);
            push("host.net.tx_bytes_total", Value::I64(tx as i64), &[("iface", &iface)]);
        }
        if let Some(up) = self.read("proc/uptime").as_deref().and_then(parse_uptime) {
            push("host.uptime.secs", Value::F64(up), &[]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_files() {
        assert_eq!(parse_cpu("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2 3 4\n"), Some((20, 100)));
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/389 12345\n"), Some([0.52, 0.58, 0.59]));
        let mem = "MemTotal:        2048 kB\nMemFree:  1 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(parse_meminfo(mem), Some((2048 * 1024, 1024 * 1024)));
        let net = "Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 5000 10 0 0 0 0 0 0 7000 12 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(net), vec![("eth0".to_owned(), 5000, 7000)]);
        assert_eq!(parse_uptime("3600.25 7000.00\n"), Some(3600.25));
        assert_eq!(parse_cpu("garbage"), None);
        assert_eq!(parse_loadavg("x y z"), None);
    }

    #[test]
    fn samples_a_fixture_root_and_computes_cpu_between_samples() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        std::fs::create_dir_all(p.join("proc")).unwrap();
        std::fs::create_dir_all(p.join("sys/class/thermal/thermal_zone0")).unwrap();
        std::fs::write(p.join("proc/stat"), "cpu  0 0 0 100 0 0 0 0\n").unwrap();
        std::fs::write(p.join("proc/loadavg"), "1.0 2.0 3.0 1/1 1\n").unwrap();
        std::fs::write(p.join("sys/class/thermal/thermal_zone0/temp"), "48500\n").unwrap();
        std::fs::write(p.join("sys/class/thermal/thermal_zone0/type"), "cpu-thermal\n").unwrap();
        let mut s = HostSampler::new(p, vec![p.to_path_buf()]);
        let first = s.sample(UnixMillis(1));
        assert!(!first.iter().any(|x| x.metric == "host.cpu.percent"), "no rate from one sample");
        std::fs::write(p.join("proc/stat"), "cpu  25 0 25 150 0 0 0 0\n").unwrap();
        let second = s.sample(UnixMillis(2));
        let get = |m: &str| second.iter().find(|x| x.metric == m).map(|x| x.value.clone());
        assert_eq!(get("host.cpu.percent"), Some(Value::F64(50.0)));
        assert_eq!(get("host.load5"), Some(Value::F64(2.0)));
        let temp = second.iter().find(|x| x.metric == "host.temp.celsius").unwrap();
        assert_eq!(temp.value, Value::F64(48.5));
        assert_eq!(temp.labels["zone"], "cpu-thermal");
        assert!(second.iter().any(|x| x.metric == "host.disk.free_bytes"));
    }
}
