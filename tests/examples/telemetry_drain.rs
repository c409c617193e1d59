//! The real agent with a large offline backlog: how fast it takes points through its socket,
//! its RSS with them buffered, and how fast the backlog drains to the real server over
//! loopback MQTT (mutual TLS through Mosquitto) once the broker is back.
//!
//!     cargo build --release --bins
//!     cargo run --release -p fleet-e2e --example telemetry_drain -- [LINES] [STORE] [COMPRESSION]
//!
//! LINES default 1000000 (2 points a line); STORE `redb` (default) or `sled`; COMPRESSION
//! `deflate` (default) or `none`.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet_e2e::dir_size;
use fleet_e2e::fleet::{start_agent, start_fleet};

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn post(socket: &Path, body: &str) -> u16 {
    let mut s = UnixStream::connect(socket).unwrap();
    let head =
        format!("POST /write?precision=ms HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer[9..12].parse().unwrap()
}

async fn stored(fleet: &fleet_e2e::fleet::Fleet, id: &str) -> u64 {
    let (_, m) = fleet.api("GET", &format!("/api/v1/devices/{id}/metrics"), None).await;
    m["stored_total"].as_u64().unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args().nth(1).map_or(1_000_000, |a| a.parse().unwrap()); // lines
    let store = std::env::args().nth(2).unwrap_or_else(|| "redb".into());
    let compression = std::env::args().nth(3).unwrap_or_else(|| "deflate".into());
    println!("store {store}, compression {compression}");
    let mut fleet = start_fleet().await;
    let id = "drain-1";
    let bundle = fleet.enroll(id);
    let sock = bundle.join("tele");
    std::fs::create_dir_all(bundle.join("config.d")).unwrap();
    std::fs::write(
        bundle.join("config.d/10-bench.toml"),
        format!(
            "[locks]\ndir = \"{d}/locks\"\nsocket = \"{d}/locks.sock\"\n[update]\ndisk_reserve_mb = 1\n\
             [telemetry]\nstore = \"{store}\"\ncompression = \"{compression}\"\n\
             host_interval_secs = 0\ncontainer_interval_secs = 0\nsocket_dir = \"{s}\"\nbudget_mb = 512\n\
             service_points_per_sec = 10000000\nservice_burst_points = 10000000\n\
             drain_points_per_sec = 10000000\ndrain_burst_points = 10000000\nbatch_points = 2000\nmax_in_flight = 8\n",
            d = bundle.join("data").display(),
            s = sock.display()
        ),
    )
    .unwrap();
    fleet.stop_mosquitto();
    let agent = start_agent(&bundle, false);
    let socket = sock.join("telemetry.sock");
    while UnixStream::connect(&socket).is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.0.id();
    let idle = rss_kb(pid);
    // The same binary with telemetry off, idle beside it: what the buffer costs at rest.
    let plain = fleet.enroll("drain-plain");
    std::fs::create_dir_all(plain.join("config.d")).unwrap();
    std::fs::write(
        plain.join("config.d/10-bench.toml"),
        format!(
            "[locks]\ndir = \"{d}/locks\"\nsocket = \"{d}/locks.sock\"\n[telemetry]\nenabled = false\n",
            d = plain.join("data").display()
        ),
    )
    .unwrap();
    let off = start_agent(&plain, false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = idle.max(rss_kb(pid));
    println!(
        "idle RSS, same binary: telemetry on {:.1} MiB, off {:.1} MiB",
        idle as f64 / 1024.0,
        rss_kb(off.0.id()) as f64 / 1024.0
    );
    drop(off);
    let per = 5_000u64;
    let started = Instant::now();
    for c in 0..n / per {
        let body: String = (c * per..(c + 1) * per)
            .map(|i| {
                format!(
                    "robot,service=bench,joint=j{} temp={}.5,load={}i {}\n",
                    i % 6,
                    i % 90,
                    i % 1000,
                    1_767_225_600_000 + i * 100
                )
            })
            .collect();
        // Two fields a line: two points.
        assert_eq!(post(&socket, &body), 204);
    }
    let points = n / per * per * 2;
    let ingest = started.elapsed();
    let buffered = rss_kb(pid);
    let file = if store == "redb" { "data/telemetry.redb" } else { "data/telemetry" };
    let disk: u64 = dir_size(&bundle.join(file));
    println!("ingest through the socket: {points} points in {:.1} s = {:.0} points/s (each request acknowledged after a flush)", ingest.as_secs_f64(), points as f64 / ingest.as_secs_f64());
    println!("agent RSS: idle {:.1} MiB, with {points} points buffered {:.1} MiB; buffer on disk {:.1} MiB", idle as f64 / 1024.0, buffered as f64 / 1024.0, disk as f64 / 1048576.0);

    fleet.start_mosquitto().await;
    let started = Instant::now();
    loop {
        let s = stored(&fleet, id).await;
        if s >= points {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "drain stalled at {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain = started.elapsed();
    println!(
        "drain to the server over Mosquitto/mTLS: {points} points in {:.1} s = {:.0} points/s",
        drain.as_secs_f64(),
        points as f64 / drain.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("agent RSS after the drain: {:.1} MiB", rss_kb(pid) as f64 / 1024.0);
}
