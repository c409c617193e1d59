//! sled against redb as the telemetry buffer, the same workload side by side (BENCHMARKS.md):
//! ingest throughput, bytes on disk per point (space amplification over the raw postcard
//! payload), memory with the points buffered, and a drain (read + acknowledge) rate.
//!
//!   cargo run --release -p fleet-agent --features sled --example telemetry_stores [POINTS]
//!
//! Each store runs in its own process (this program re-runs itself), so each RSS is its own.

#![allow(clippy::unwrap_used)] // a benchmark: fail loudly

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use fleet_agent::telemetry::redb_store::RedbStore;
use fleet_agent::telemetry::sled_store::SledStore;
use fleet_agent::telemetry::store::{MemStore, TelemetryStore};
use fleet_proto::telemetry::{Point, Value};
use fleet_proto::UnixMillis;

/// Points per append: a host sample is ~20, an application post often 100s.
const CHUNK: usize = 100;

fn point(i: u64) -> Point {
    let metrics =
        ["host.cpu.percent", "host.mem.available_bytes", "app.motor.temp", "app.lidar.rate"];
    Point {
        at: UnixMillis(1_767_225_600_000 + i * 100),
        metric: metrics[(i % 4) as usize].to_owned(),
        value: if i % 2 == 0 { Value::F64(i as f64 * 0.25) } else { Value::I64(i as i64) },
        labels: BTreeMap::from([("service".to_owned(), "planner".to_owned())]),
    }
}

fn dir_size(p: &Path) -> u64 {
    let m = std::fs::metadata(p).unwrap();
    if m.is_file() {
        return m.len();
    }
    std::fs::read_dir(p).unwrap().flatten().map(|e| dir_size(&e.path())).sum()
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn run(kind: &str, n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let budget = 1 << 30;
    let rss_before = status_kb("VmRSS:");
    let (mut store, path): (Box<dyn TelemetryStore>, _) = match kind {
        "sled" => {
            let p = dir.path().join("sled");
            (Box::new(SledStore::open(&p, budget).unwrap().0), p)
        }
        "redb" => {
            let p = dir.path().join("buffer.redb");
            (Box::new(RedbStore::open(&p, budget).unwrap().0), p)
        }
        other => panic!("unknown store {other}"),
    };
    // Points are made chunk by chunk (never all in memory), so RSS growth is the store's.
    let chunk_at =
        |c: u64| -> Vec<Point> { (0..CHUNK as u64).map(|i| point(c * CHUNK as u64 + i)).collect() };
    let chunks = n / CHUNK as u64;
    let raw: u64 = (0..chunks.min(100))
        .map(|c| {
            chunk_at(c).iter().map(|p| postcard::to_allocvec(p).unwrap().len() as u64).sum::<u64>()
        })
        .sum::<u64>()
        * (chunks / chunks.min(100));
    let t = Instant::now();
    for c in 0..chunks {
        store.append(&chunk_at(c)).unwrap();
    }
    store.flush().unwrap();
    let ingest = t.elapsed();
    let rss = status_kb("VmRSS:");
    let hwm = status_kb("VmHWM:");
    // The contract, checked against the model on a prefix.
    let mut model = MemStore::new(budget);
    for c in 0..chunks {
        model.append(&chunk_at(c)).unwrap();
        if c == 1000 {
            break;
        }
    }
    assert_eq!(store.stats().points, n, "{kind} holds every point");
    assert_eq!(
        store.read(0, 1000).unwrap(),
        model.read(0, 1000).unwrap(),
        "{kind} reads back what was appended"
    );
    drop(model);
    let disk = dir_size(&path);
    // Drain: read batches of 500 in order, acknowledge each.
    let t = Instant::now();
    let mut from = 0;
    loop {
        let run = store.read(from, 500).unwrap();
        let Some(last) = run.last_seq() else { break };
        store.ack_through(last).unwrap();
        from = last + 1;
    }
    store.flush().unwrap();
    let drain = t.elapsed();
    assert_eq!(store.stats().points, 0);
    let disk_after = dir_size(&path);
    println!(
        "{kind}\t{n}\t{:.0}\t{:.1}\t{:.1}\t{:.2}\t{}\t{}\t{:.0}\t{}",
        n as f64 / ingest.as_secs_f64(),
        raw as f64 / n as f64,
        disk as f64 / n as f64,
        disk as f64 / raw as f64,
        rss.saturating_sub(rss_before) / 1024,
        hwm / 1024,
        n as f64 / drain.as_secs_f64(),
        disk_after / 1024,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if let Some(kind @ ("sled" | "redb")) = first.as_deref() {
        let n = args.next().map_or(1_000_000, |a| a.parse().unwrap());
        run(kind, n);
        return;
    }
    let n: u64 = first.map_or(1_000_000, |a| a.parse().unwrap());
    println!("store\tpoints\tingest pts/s\traw B/pt\tdisk B/pt\tamplification\tRSS growth MiB\tpeak RSS MiB (ingest)\tdrain pts/s\tdisk after drain KiB");
    for kind in ["sled", "redb"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([kind, &n.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
