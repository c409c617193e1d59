//! `fleet-sim demo`'s story, checked against the server's own records rather than the demo's
//! summary: the good release everywhere after three waves, the bad one stopped on the canary
//! wave with the rollout paused, the canaries back on the good release by their agents' own
//! rollback, nobody else ever sent the bad release, and nothing left behind after clean-up.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fleet_api::{RolloutView, RunState};
use fleet_sim::demo::{self, Options, BAD, GOOD};

const DEVICES: usize = 12;

async fn rollout(fleet: &fleet_sim::fleet::SimFleet, id: u64) -> RolloutView {
    let body = fleet.try_api("GET", &format!("/api/v1/rollouts/{id}"), None, 200).await.unwrap();
    serde_json::from_value(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_rolls_the_good_release_out_and_stops_the_bad_one_on_the_canaries() {
    let started = Instant::now();
    let opts =
        Options { devices: DEVICES, bake: Duration::from_secs(1), progress: false, docker: None };
    let mut told = Vec::new();
    let (outcome, fleet) = demo::run(&opts, |line| told.push(line)).await.unwrap();
    assert!(outcome.problems.is_empty(), "{:?}\n{}", outcome.problems, told.join("\n"));

    // The first rollout completed, in three waves (2, then up to 50 %, then the rest).
    let good = rollout(&fleet, outcome.good.as_ref().unwrap().id).await;
    assert!(matches!(good.status.state, RunState::Completed { .. }), "{:?}", good.status);
    let waves: Vec<usize> = good.status.waves.iter().map(|w| w.devices).collect();
    assert_eq!(waves, [2, 4, 6]);
    assert!(good.status.waves.iter().all(|w| w.counts.healthy == w.devices), "{:?}", good.status);

    // The second paused itself on the canary wave; the later waves never started.
    let bad = rollout(&fleet, outcome.bad.as_ref().unwrap().id).await;
    assert!(matches!(bad.status.state, RunState::Paused { .. }), "{:?}", bad.status);
    // It pauses at the first failure and gives no verdicts after that, so the second canary
    // may still count as updating; its agent rolled back all the same (below).
    let canary_wave = &bad.status.waves[0].counts;
    assert!(canary_wave.failed >= 1, "{:?}", bad.status);
    assert_eq!(canary_wave.failed + canary_wave.updating, 2, "{:?}", bad.status);
    for w in &bad.status.waves[1..] {
        assert_eq!(w.counts.pending, w.devices, "wave {} never started: {:?}", w.wave, bad.status);
    }

    // Every device runs the good release; only the two canaries were ever sent the bad one,
    // and their agents rolled it back.
    let all = demo::devices(&fleet).await.unwrap();
    assert_eq!(all.len(), DEVICES);
    let mut canaries = Vec::new();
    for (id, d) in &all {
        assert_eq!(d.release.as_deref(), Some(GOOD), "{id} runs the good release: {d:?}");
        if d.desired_release.as_deref() == Some(BAD) {
            canaries.push(id.clone());
        } else {
            assert_eq!(d.desired_release.as_deref(), Some(GOOD), "{id}: {d:?}");
            // One desired state (the good release), accepted; nothing after it.
            assert_eq!((d.desired_generation, d.accepted_generation), (1, 1), "{id}: {d:?}");
        }
    }
    assert_eq!(canaries.len(), 2, "{all:?}");
    let rolled_back: Vec<String> = outcome.rolled_back.keys().cloned().collect();
    assert_eq!(rolled_back, canaries);
    assert!(
        outcome.rolled_back.values().all(|r| r.contains("exited with code 1")),
        "the agent's reason: {:?}",
        outcome.rolled_back
    );
    assert_eq!(outcome.never_saw_bad, DEVICES - 2);

    // The story says so in words.
    assert!(
        told.iter()
            .any(|l| l.starts_with(&format!("{GOOD} on {DEVICES}/{DEVICES} devices in 3 waves"))),
        "{told:?}"
    );
    assert!(told.iter().any(|l| l.contains("paused by itself")), "{told:?}");

    // Clean-up stops everything and leaves no directory behind.
    let dir = fleet.dir.path().to_owned();
    assert!(dir.exists());
    assert_eq!(demo::clean_up(fleet).await, Vec::<String>::new());
    assert!(!dir.exists());
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

/// `--docker`: one of the devices is a real agent on this machine's Docker engine (the test
/// environment's, with the test images in its registry). Its containers are real: after the
/// story it runs the good release's `web` container, whichever devices the canary draw picked,
/// and clean-up removes what it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_docker_one_device_runs_the_releases_on_the_real_engine_and_clean_up_removes_them() {
    use fleet_agent::runtime::docker::DockerRuntime;
    use fleet_agent::runtime::ContainerRuntime;
    use fleet_proto::report::ContainerState;
    let endpoint = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "/var/run/docker.sock".into());
    let opts = Options {
        devices: 6,
        bake: Duration::from_secs(1),
        progress: false,
        docker: Some(endpoint.clone()),
    };
    let mut told = Vec::new();
    let (outcome, fleet) = demo::run(&opts, |line| told.push(line)).await.unwrap();
    assert!(outcome.problems.is_empty(), "{:?}\n{}", outcome.problems, told.join("\n"));
    let all = demo::devices(&fleet).await.unwrap();
    assert_eq!(all.len(), 7, "six simulated devices and the Docker one: {all:?}");
    assert!(all.values().all(|d| d.release.as_deref() == Some(GOOD)), "{all:?}");

    let docker = DockerRuntime::connect(&endpoint, Duration::from_secs(30)).await.unwrap();
    let device = fleet_proto::DeviceId::new(demo::DOCKER_DEVICE).unwrap();
    let containers = docker.list(&device).await.unwrap();
    let running: Vec<_> =
        containers.iter().filter(|c| c.state == ContainerState::Running).collect();
    assert_eq!(running.len(), 1, "{containers:#?}");
    assert_eq!(running[0].label("io.fleet.release"), Some(GOOD), "{containers:#?}");
    assert!(running[0].image.contains("sha256:"), "pinned to the digest: {containers:#?}");

    assert_eq!(demo::clean_up(fleet).await, Vec::<String>::new());
    let left = docker.list(&device).await.unwrap();
    assert!(left.is_empty(), "clean-up removes the Docker device's containers: {left:#?}");
}
