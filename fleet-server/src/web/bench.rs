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
use fleet_api::{Role, RolloutRequest};
use fleet_proto::{DeviceId, UnixMillis};
use tower::ServiceExt;

use super::tests::{harness, Harness};
use crate::auth::Caller;
use crate::devices::DeviceRecord;

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
}

async fn rollouts(h: &Harness, n: usize) {
    let admin = Caller { name: "admin".into(), role: Role::Admin };
    for batch in 0..n {
        let request = RolloutRequest {
            release: fleet_proto::samples::release_id().to_string(),
            target: format!("selector:batch={batch}"),
            waves: Some("1,10%,100%".into()),
            bake: None,
            max_parallel: None,
            failure_threshold: None,
            on_failure: None,
            window: None,
            device_timeout: None,
            update_deadline: None,
            stagger: None,
            exclude_unsatisfiable: false,
            seed: None,
        };
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
