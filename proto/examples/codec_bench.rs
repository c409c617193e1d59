//! Size and speed of Fleet's envelope codec against JSON of the same messages, side by side in
//! one run (ratios, since this machine's timings are noisy).
//!
//!     cargo run --release -p fleet-proto --example codec_bench

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use fleet_proto::{samples, Message, Point, TelemetryBatch, UnixMillis, Value};

fn telemetry_100() -> TelemetryBatch {
    let points = (0..100)
        .map(|i| Point {
            at: UnixMillis(1_790_000_000_000 + i * 1000),
            metric: "host.cpu.percent".into(),
            value: Value::F64(12.5 + i as f64),
            labels: BTreeMap::from([("core".to_owned(), (i % 4).to_string())]),
        })
        .collect();
    TelemetryBatch { points, ..samples::telemetry() }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median time per round trip (encode + decode) over 7 runs of `n`.
fn time(n: u32, mut f: impl FnMut()) -> Duration {
    median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..n {
                    f();
                }
                t.elapsed() / n
            })
            .collect(),
    )
}

fn main() {
    let desired = samples::desired();
    let report = samples::report();
    let telemetry = telemetry_100();
    println!("| message | envelope bytes | JSON bytes | size ratio | envelope round trip | JSON round trip | speed ratio |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let rows: Vec<(&str, Message, String)> = vec![
        (
            "desired state (2 services, signed)",
            Message::Desired(samples::server_key().sign(&desired)),
            serde_json::to_string(&desired).unwrap(),
        ),
        (
            "state report (with inventory)",
            Message::Report(report.clone()),
            serde_json::to_string(&report).unwrap(),
        ),
        (
            "telemetry batch (100 points)",
            Message::Telemetry(telemetry.clone()),
            serde_json::to_string(&telemetry).unwrap(),
        ),
    ];
    for (name, msg, json) in rows {
        let env = msg.encode();
        let t_env = time(2000, || {
            black_box(Message::decode(black_box(&msg.encode())).unwrap());
        });
        let t_json = match &msg {
            Message::Desired(_) => time(2000, || {
                let s = serde_json::to_vec(black_box(&desired)).unwrap();
                black_box(serde_json::from_slice::<fleet_proto::DesiredState>(&s).unwrap());
            }),
            Message::Report(_) => time(2000, || {
                let s = serde_json::to_vec(black_box(&report)).unwrap();
                black_box(serde_json::from_slice::<fleet_proto::StateReport>(&s).unwrap());
            }),
            _ => time(2000, || {
                let s = serde_json::to_vec(black_box(&telemetry)).unwrap();
                black_box(serde_json::from_slice::<TelemetryBatch>(&s).unwrap());
            }),
        };
        println!(
            "| {name} | {} | {} | {:.2}x smaller | {:.1} µs | {:.1} µs | {:.1}x faster |",
            env.len(),
            json.len(),
            json.len() as f64 / env.len() as f64,
            t_env.as_secs_f64() * 1e6,
            t_json.as_secs_f64() * 1e6,
            t_json.as_secs_f64() / t_env.as_secs_f64(),
        );
    }
}
