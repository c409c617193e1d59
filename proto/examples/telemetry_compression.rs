//! Which codec for telemetry batches: size on the wire and speed of the pure-Rust candidates
//! (deflate via miniz_oxide, LZ4 via lz4_flex, zstd via ruzstd), on batches shaped like a
//! device's real traffic. Run with
//!
//! ```text
//! cargo run --release -p fleet-proto --example telemetry_compression
//! ```
//!
//! The batch mixes what an agent buffers: host metrics every 30 s, container metrics of five
//! services, and application points (line protocol from a robot: joint temperatures and
//! currents at 10 Hz). Values vary like real sensors (a slow walk plus noise), so floats are
//! not all alike.

#![allow(clippy::unwrap_used)] // a benchmark: any failure is fatal

use std::collections::BTreeMap;
use std::time::Instant;

use fleet_proto::telemetry::{Point, TelemetryBatch, Value};
use fleet_proto::{DeviceId, UnixMillis};

/// A small deterministic generator: the same batches on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// `n` points as the agent would buffer them, starting at `t0`.
fn points(n: usize, rng: &mut Rng) -> Vec<Point> {
    let t0 = 1_796_000_000_000u64;
    let mut out = Vec::with_capacity(n);
    let mut t = t0;
    let mut temp = [41.0f64; 6];
    while out.len() < n {
        t += 100;
        // Application: six joints, temperature (one decimal, as sensors report) and current.
        for (j, temp) in temp.iter_mut().enumerate() {
            *temp += (rng.next() - 0.5) * 0.2;
            let joint = j.to_string();
            out.push(Point {
                at: UnixMillis(t),
                metric: "robot.joint.temp".into(),
                value: Value::F64((*temp * 10.0).round() / 10.0),
                labels: labels(&[("joint", &joint), ("service", "controller")]),
            });
            out.push(Point {
                at: UnixMillis(t),
                metric: "robot.joint.current".into(),
                value: Value::F64(1.2 + rng.next()),
                labels: labels(&[("joint", &joint), ("service", "controller")]),
            });
        }
        // Every 30 s of points: a host sample and the five services' container metrics.
        if (t - t0) % 30_000 == 0 {
            for (m, v) in [
                ("host.cpu.percent", Value::F64(rng.next() * 60.0)),
                ("host.load1", Value::F64((rng.next() * 300.0).round() / 100.0)),
                ("host.mem.available_bytes", Value::I64(3_000_000_000 + (rng.next() * 1e8) as i64)),
                ("host.temp.celsius", Value::F64(48.0 + rng.next() * 5.0)),
                ("host.uptime.secs", Value::F64((t - t0) as f64 / 1000.0)),
            ] {
                out.push(Point {
                    at: UnixMillis(t),
                    metric: m.into(),
                    value: v,
                    labels: labels(&[]),
                });
            }
            for service in ["controller", "planner", "perception", "gateway", "mqtt"] {
                let l = labels(&[("service", service), ("release", "robot@4.2.0")]);
                for (m, v) in [
                    ("container.cpu.percent", Value::F64(rng.next() * 90.0)),
                    ("container.mem.bytes", Value::I64(40_000_000 + (rng.next() * 1e7) as i64)),
                    ("container.running", Value::Bool(true)),
                    ("container.health", Value::Str("healthy".into())),
                    ("container.restarts_total", Value::I64(0)),
                ] {
                    out.push(Point {
                        at: UnixMillis(t),
                        metric: m.into(),
                        value: v,
                        labels: l.clone(),
                    });
                }
            }
        }
    }
    out.truncate(n);
    out
}

struct Codec {
    name: &'static str,
    compress: fn(&[u8]) -> Vec<u8>,
    decompress: fn(&[u8], usize) -> Vec<u8>,
}

const CODECS: &[Codec] = &[
    Codec {
        name: "deflate-1 (miniz_oxide)",
        compress: |b| miniz_oxide::deflate::compress_to_vec(b, 1),
        decompress: |b, n| miniz_oxide::inflate::decompress_to_vec_with_limit(b, n).unwrap(),
    },
    Codec {
        name: "deflate-6 (miniz_oxide)",
        compress: |b| miniz_oxide::deflate::compress_to_vec(b, 6),
        decompress: |b, n| miniz_oxide::inflate::decompress_to_vec_with_limit(b, n).unwrap(),
    },
    Codec {
        name: "lz4 (lz4_flex)",
        compress: lz4_flex::block::compress,
        decompress: |b, n| lz4_flex::block::decompress(b, n).unwrap(),
    },
    Codec {
        name: "zstd-fastest (ruzstd)",
        compress: |b| {
            ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
        },
        decompress: |b, _| {
            let mut out = vec![];
            let mut d = ruzstd::decoding::StreamingDecoder::new(b).unwrap();
            std::io::Read::read_to_end(&mut d, &mut out).unwrap();
            out
        },
    },
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let device = DeviceId::new("robot-0042").unwrap();
    println!("| batch | codec | bytes (raw postcard → compressed) | ratio | compress MB/s | decompress MB/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for n in [100usize, 500, 2000] {
        let mut rng = Rng(42);
        let batch = TelemetryBatch {
            device: device.clone(),
            first_seq: 1_000_000,
            dropped_total: 0,
            points: points(n, &mut rng),
        };
        let raw = postcard::to_allocvec(&batch).unwrap();
        let rounds = (4_000_000 / raw.len()).max(20);
        for c in CODECS {
            let packed = (c.compress)(&raw);
            assert_eq!((c.decompress)(&packed, raw.len()), raw, "{} round trip", c.name);
            // Medians of 7 timed runs of `rounds` iterations each.
            let mut comp = vec![];
            let mut decomp = vec![];
            for _ in 0..7 {
                let t = Instant::now();
                for _ in 0..rounds {
                    std::hint::black_box((c.compress)(std::hint::black_box(&raw)));
                }
                comp.push((raw.len() * rounds) as f64 / t.elapsed().as_secs_f64() / 1e6);
                let t = Instant::now();
                for _ in 0..rounds {
                    std::hint::black_box((c.decompress)(std::hint::black_box(&packed), raw.len()));
                }
                decomp.push((raw.len() * rounds) as f64 / t.elapsed().as_secs_f64() / 1e6);
            }
            println!(
                "| {n} points | {} | {} → {} | {:.2}× | {:.0} | {:.0} |",
                c.name,
                raw.len(),
                packed.len(),
                raw.len() as f64 / packed.len() as f64,
                median(comp),
                median(decomp),
            );
        }
    }
}
