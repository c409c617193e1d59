//! What each dashboard page costs the server at fleet scale: a benchmark, not a timed test.
//!
//! ```sh
//! cargo test --release -p fleet-server --lib web::bench -- --ignored --nocapture
//! ```
//!
//! For 1,000 and 10,000 devices (each with a state report and three labels) and 100 rollouts,
//! it answers every page through the router in-process (the session check, the store reads and
//! the rendering: everything but the socket) and prints the median and the slowest of 15
//! answers per page with the HTML's size. BENCHMARKS.md keeps the figures.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use fleet_api::Role;
use fleet_proto::{DeviceId, UnixMillis};
use tower::ServiceExt;

use crate::auth::Caller;
use crate::devices::DeviceRecord;
use crate::test_support::{harness, Harness};

const RUNS: usize = 15;

fn fill(h: &Harness, devices: usize) {
    let now = UnixMillis::now();
    let report = fleet_proto::samples::report();
    h.api
        .store
        .update(|tx| -> Result<(), crate::store::StoreError> {
            for i in 0..devices {
                let id = DeviceId::new(format!("robot-{i:05}")).unwrap();
                let mut d = DeviceRecord::bare(
                    id.clone(),
                    UnixMillis(now.0 - (i as u64 * 7_919) % 90_000_000),
                );
                d.enrolled_at = Some(UnixMillis(0));
                d.online = i % 10 != 0;
                d.agent_version = Some(if i % 3 == 0 { "0.1.0" } else { "0.1.1" }.to_owned());
                d.release = Some(fleet_proto::samples::release_id());
                d.labels = [
                    ("site".to_owned(), format!("site-{}", i % 20)),
                    ("model".to_owned(), if i % 2 == 0 { "ur5" } else { "mir100" }.to_owned()),
                    ("batch".to_owned(), format!("{}", i % 100)),
                ]
                .into_iter()
                .collect();
                let mut r = report.clone();
                r.device = id;
                d.last_report = Some(r);
                tx.put_device(&d);
            }
            Ok(())
        })
        .unwrap();
    // One device with a full telemetry history: the most the server keeps, 20,000 points
    // (five series, a point every 12 s, the last 66 hours).
    let series = [
        "host.cpu.percent",
        "host.mem.available_bytes",
        "host.disk.free_bytes",
        "host.temp.celsius",
        "app.queue",
    ];
    let points: Vec<fleet_proto::telemetry::Point> = (0..20_000u64)
        .map(|i| fleet_proto::telemetry::Point {
            at: UnixMillis(now.0 - (20_000 - i) * 12_000),
            metric: series[(i % 5) as usize].to_owned(),
            value: fleet_proto::telemetry::Value::F64((i % 100) as f64),
            labels: std::collections::BTreeMap::new(),
        })
        .collect();
    let batch = fleet_proto::telemetry::TelemetryBatch {
        device: DeviceId::new("robot-00042").unwrap(),
        first_seq: 1,
        dropped_total: 0,
        points,
    };
    h.api.store.update(|tx| crate::telemetry::ingest(tx, &batch, now).map(drop)).unwrap();
}

async fn rollouts(h: &Harness, n: usize) {
    let admin = Caller { name: "admin".into(), role: Role::Admin };
    for batch in 0..n {
        let request =
            crate::test_support::rollout_request(&format!("selector:batch={batch}"), "1,10%,100%");
        crate::ops::rollouts::create(&h.api.fleet(), &admin, request, UnixMillis::now())
            .await
            .unwrap();
    }
}

async fn time_page(h: &Harness, cookie: &str, path: &str) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(RUNS);
    let mut size = 0;
    for _ in 0..RUNS {
        let request =
            Request::get(path).header(header::COOKIE, cookie).body(Body::empty()).unwrap();
        let started = Instant::now();
        let response = h.router().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 26).await.unwrap();
        times.push(started.elapsed());
        size = body.len();
    }
    times.sort();
    (times[RUNS / 2], times[RUNS - 1], size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it with --ignored --nocapture (release build)"]
async fn dashboard_pages_at_fleet_scale() {
    for devices in [1_000, 10_000] {
        let h = harness();
        h.put_release();
        fill(&h, devices);
        rollouts(&h, 100).await;
        let cookie = h.login(&h.admin_token).await;
        println!("\n{devices} devices, 100 rollouts: page, median, slowest of {RUNS}, HTML bytes");
        for path in [
            "/",
            "/devices",
            "/devices?state=offline&sort=last-seen&dir=desc",
            "/devices?selector=model%3Dur5&q=robot-0&page=3",
            "/devices/robot-00042",
            "/devices/robot-00042?range=7d",
            "/rollouts",
            "/rollouts/50",
            "/releases",
            "/groups",
            "/audit",
        ] {
            let (median, slowest, size) = time_page(&h, &cookie, path).await;
            println!(
                "  {path:<50} {:>8.1} ms {:>8.1} ms {size:>9}",
                median.as_secs_f64() * 1e3,
                slowest.as_secs_f64() * 1e3
            );
        }
    }
}

/// This process's CPU time so far (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// `pages` open rollout pages on one rollout of 10,000 devices for `secs`, the rollout
/// changing every second: CPU time per second and live updates delivered.
async fn followers(
    h: &Harness,
    cookie: &str,
    id: u64,
    pages: usize,
    secs: u64,
) -> (Duration, usize) {
    use futures_util::StreamExt;
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..pages {
        let request = Request::get(format!("/rollouts/{id}/live"))
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        let response = h.router().oneshot(request).await.unwrap();
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            let mut body = response.into_body().into_data_stream();
            while let Some(Ok(chunk)) = body.next().await {
                let n = chunk.windows(13).filter(|w| w == b"event: region").count();
                delivered.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let admin = Caller { name: "admin".into(), role: Role::Admin };
    let started = (Instant::now(), cpu_time());
    for i in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let command = if i % 2 == 0 {
            crate::rollout::driver::RolloutCommand::Pause
        } else {
            crate::rollout::driver::RolloutCommand::Resume
        };
        crate::ops::rollouts::command(&h.api.fleet(), &admin, id, command, None).await.unwrap();
    }
    let cpu = cpu_time() - started.1;
    let wall = started.0.elapsed();
    for r in readers {
        r.abort();
    }
    (cpu.div_f64(wall.as_secs_f64()), delivered.load(std::sync::atomic::Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it with --ignored --nocapture (release build)"]
async fn live_rollout_pages_fan_out() {
    let h = harness();
    h.put_release();
    fill(&h, 10_000);
    let admin = Caller { name: "admin".into(), role: Role::Admin };
    let request = crate::test_support::rollout_request("selector:model=ur5", "1,10%,50%,100%");
    let id = crate::ops::rollouts::create(&h.api.fleet(), &admin, request, UnixMillis::now())
        .await
        .unwrap()
        .id();
    let cookie = h.login(&h.admin_token).await;
    let started = Instant::now();
    let record = h.api.store.rollout(id).unwrap().unwrap();
    println!(
        "\nrollout of 5,000 devices: read once in {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let _ = record;
    println!("pages, CPU per second (ms), region updates delivered in 10 s");
    for pages in [0, 1, 50] {
        let (cpu, delivered) = followers(&h, &cookie, id, pages, 10).await;
        println!("  {pages:>3} {:>8.1} {delivered:>6}", cpu.as_secs_f64() * 1e3);
    }
}
