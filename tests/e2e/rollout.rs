//! Staged rollouts end to end: fleet-server on embedded defaults and 50 real agents on the
//! simulated engine, over MQTT, in one process (`fleet_e2e::simfleet`). `fleetctl` (the built
//! binary) drives two of the rollouts, so its watch and exit codes are tested as well.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use fleet_agent::runtime::sim::ImageBehavior;
use fleet_e2e::simfleet::SimFleet;
use fleet_e2e::{bin, eventually};
use fleet_proto::{ImageRef, ReleaseSpec};
use serde_json::{json, Value};

const DEVICES: usize = 50;
const PINNED: &str = "robot-07";

fn image(n: u8) -> ImageRef {
    fleet_e2e::simfleet::app_image(n)
}

fn release(version: &str, image: ImageRef) -> ReleaseSpec {
    fleet_e2e::simfleet::app_release(version, image, Duration::from_secs(10))
}

fn id(i: usize) -> String {
    format!("robot-{i:02}")
}

/// Every device record, by id.
async fn devices(fleet: &SimFleet) -> BTreeMap<String, Value> {
    let (code, page) = fleet.api("GET", "/api/v1/devices?limit=1000", None).await;
    assert_eq!(code, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_owned(), d.clone()))
        .collect()
}

async fn rollout(fleet: &SimFleet, id: u64) -> Value {
    let (code, view) = fleet.api("GET", &format!("/api/v1/rollouts/{id}"), None).await;
    assert_eq!(code, 200, "{view}");
    view
}

/// Waits until rollout `id` is in state `state`.
async fn rollout_ends(fleet: &SimFleet, id: u64, state: &str, timeout: Duration) -> Value {
    eventually(&format!("rollout {id} to be {state}"), timeout, || async move {
        let view = rollout(fleet, id).await;
        let now = view["status"]["state"].as_object().and_then(|o| o.keys().next().cloned());
        let now = now.or_else(|| view["status"]["state"].as_str().map(str::to_owned));
        (now.as_deref() == Some(state)).then_some(view)
    })
    .await
}

fn fleetctl(fleet: &SimFleet, args: &[&str]) -> std::process::Output {
    Command::new(bin("fleetctl"))
        .args(["--server", &fleet.api])
        .env("FLEET_TOKEN", &fleet.token)
        .env("HOME", fleet.dir.path())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staged_rollout_over_fifty_agents_completes_stops_on_a_bad_canary_and_never_moves_a_pinned_device(
) {
    let mut fleet = SimFleet::start().await;
    let images = [
        (image(1), ImageBehavior::Healthy),
        (image(2), ImageBehavior::Healthy),
        (image(3), ImageBehavior::CrashAtStart),
    ];
    for i in 0..DEVICES {
        let site = if i < 20 { "a" } else { "b" };
        fleet.enroll(&id(i), &[("fleet", "demo"), ("site", site)]).await;
    }
    for i in 0..DEVICES {
        fleet.start_agent(&id(i), &images);
    }
    let fleet_ref = &fleet;
    eventually("every agent online", Duration::from_secs(60), || async move {
        let all = devices(fleet_ref).await;
        (all.values().filter(|d| d["online"] == true).count() == DEVICES).then_some(())
    })
    .await;

    let (code, body) = fleet
        .api("POST", "/api/v1/groups", Some(json!({ "name": "demo", "selector": "fleet=demo" })))
        .await;
    assert_eq!(code, 201, "{body}");
    for (v, n) in [("1", 1), ("2", 2), ("3", 3)] {
        let spec = release(v, image(n));
        let (code, body) = fleet
            .api(
                "POST",
                "/api/v1/releases",
                Some(json!({ "app": "app", "version": v, "spec": spec })),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }

    // 1. Four waves (1, 10%, 50%, 100% of 50 devices: 1, 4, 20, 25 new devices), each baked.
    let (code, created) = fleet
        .api(
            "POST",
            "/api/v1/rollouts",
            Some(json!({ "release": "app@1", "target": "demo", "waves": "1,10%,50%,100%", "bake": "1s", "update_deadline": "60s" })),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let first = created["id"].as_u64().unwrap();
    let sizes: Vec<u64> = created["status"]["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["devices"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [1, 4, 20, 25]);
    let done = rollout_ends(&fleet, first, "Completed", Duration::from_secs(120)).await;
    assert_eq!(done["status"]["failed"], 0, "{done}");
    let all = devices(&fleet).await;
    assert!(all.values().all(|d| d["release"] == "app@1"), "every device runs app@1: {all:?}");

    // 2. Pin one robot; the next rollout (through fleetctl, watched) never moves it.
    let pin =
        fleetctl(&fleet, &["device", "pin", PINNED, "app@1", "--reason", "bench: lidar driver"]);
    assert!(pin.status.success(), "{}", String::from_utf8_lossy(&pin.stderr));
    let pinned_before = devices(&fleet).await[PINNED]["desired_generation"].as_u64().unwrap();
    let plan = fleetctl(&fleet, &["rollout", "plan", "app@2", "--target", "demo", "--json"]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["pinned"][0][0], PINNED, "pre-flight shows the pin: {plan}");
    let second = fleetctl(
        &fleet,
        &[
            "rollout",
            "create",
            "app@2",
            "--target",
            "demo",
            "--waves",
            "1,50%,100%",
            "--bake",
            "1s",
            "--watch",
            "--timeout",
            "2m",
        ],
    );
    assert_eq!(second.status.code(), Some(0), "{}", String::from_utf8_lossy(&second.stderr));
    let all = devices(&fleet).await;
    for (name, d) in &all {
        let want = if name == PINNED { "app@1" } else { "app@2" };
        assert_eq!(d["release"], want, "{name}: {d}");
    }
    assert_eq!(
        all[PINNED]["desired_generation"].as_u64().unwrap(),
        pinned_before,
        "the pinned device was never sent a new desired state"
    );

    // 3. A release that crashes: the canary fails, the rollout rolls it back and stops at wave 1.
    let generations: BTreeMap<String, u64> =
        all.iter().map(|(k, d)| (k.clone(), d["desired_generation"].as_u64().unwrap())).collect();
    let third = fleetctl(
        &fleet,
        &[
            "rollout",
            "create",
            "app@3",
            "--target",
            "demo",
            "--waves",
            "1,100%",
            "--bake",
            "1s",
            "--on-failure",
            "rollback",
            "--watch",
            "--timeout",
            "2m",
        ],
    );
    assert_eq!(
        third.status.code(),
        Some(3),
        "a failed rollout exits 3: {}",
        String::from_utf8_lossy(&third.stderr)
    );
    let (_, list) = fleet.api("GET", "/api/v1/rollouts", None).await;
    let third_id = list[0]["id"].as_u64().unwrap();
    let view = rollout(&fleet, third_id).await;
    assert_eq!(view["status"]["waves"][0]["counts"]["rolled_back"], 1, "{view}");
    assert_eq!(view["status"]["waves"][1]["counts"]["pending"], 48, "wave 2 never started: {view}");
    let fleet_ref = &fleet;
    let generations_ref = &generations;
    eventually("the canary back on app@2", Duration::from_secs(60), || async move {
        let all = devices(fleet_ref).await;
        let moved: Vec<&String> = all
            .iter()
            .filter(|(k, d)| d["desired_generation"].as_u64() != generations_ref.get(*k).copied())
            .map(|(k, _)| k)
            .collect();
        // Only the canary got new desired states (app@3, then app@2 again).
        let canary = (moved.len() == 1).then(|| moved[0].clone())?;
        let d = &all[&canary];
        (d["desired_release"] == "app@2" && d["release"] == "app@2").then_some(())
    })
    .await;
    let all = devices(&fleet).await;
    assert_eq!(all[PINNED]["release"], "app@1");
    assert_eq!(all.values().filter(|d| d["release"] == "app@2").count(), DEVICES - 1);

    // Every change is in the audit log with who made it.
    let (_, audit) = fleet.api("GET", "/api/v1/audit?limit=100000", None).await;
    let lines: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap()
            )
        })
        .collect();
    assert!(lines.iter().any(|l| l == &format!("admin device.pin {PINNED}")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("admin rollout.create rollout")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("system rollout.failed robot-")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("system rollout.rollback robot-")), "{lines:?}");
    fleet.stop().await;
}

/// `fleetctl rollout promote` ends a long bake; `fleetctl rollout retry --failed` gives a
/// crashed canary another try, and the gate pauses the rollout again when it crashes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleetctl_promotes_a_baking_wave_and_retries_the_failed_devices() {
    let mut fleet = SimFleet::start().await;
    let images = [(image(1), ImageBehavior::Healthy), (image(3), ImageBehavior::CrashAtStart)];
    for i in 0..4 {
        fleet.enroll(&id(i), &[("fleet", "demo")]).await;
        fleet.start_agent(&id(i), &images);
    }
    let fleet_ref = &fleet;
    eventually("every agent online", Duration::from_secs(60), || async move {
        let all = devices(fleet_ref).await;
        (all.values().filter(|d| d["online"] == true).count() == 4).then_some(())
    })
    .await;
    for (v, n) in [("1", 1), ("3", 3)] {
        let body = json!({ "app": "app", "version": v, "spec": release(v, image(n)) });
        let (code, body) = fleet.api("POST", "/api/v1/releases", Some(body)).await;
        assert_eq!(code, 201, "{body}");
    }
    let target = "selector:fleet=demo";
    let (code, created) = fleet
        .api(
            "POST",
            "/api/v1/rollouts",
            Some(json!({ "release": "app@1", "target": target, "waves": "1,100%", "bake": "1h" })),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let first = created["id"].as_u64().unwrap();
    // Each wave bakes for an hour; each promote ends a bake (the last wave's too).
    for wave in [1, 2] {
        let fleet_ref = &fleet;
        eventually(&format!("wave {wave} to bake"), Duration::from_secs(60), || async move {
            let status = rollout(fleet_ref, first).await["status"].clone();
            (status["current_wave"] == wave && status["bake_until"].is_u64()).then_some(())
        })
        .await;
        let promoted = fleetctl(&fleet, &["rollout", "promote", &first.to_string()]);
        assert!(promoted.status.success(), "{}", String::from_utf8_lossy(&promoted.stderr));
    }
    let done = rollout_ends(&fleet, first, "Completed", Duration::from_secs(60)).await;
    assert_eq!(done["status"]["failed"], 0, "{done}");
    let again = fleetctl(&fleet, &["rollout", "promote", &first.to_string()]);
    assert_eq!(again.status.code(), Some(2), "refused: a finished rollout has no bake to end");
    assert!(String::from_utf8_lossy(&again.stderr).contains("cannot promote"), "{again:?}");

    let (code, created) = fleet
        .api("POST", "/api/v1/rollouts", Some(json!({ "release": "app@3", "target": target, "waves": "1,100%", "bake": "1s", "update_deadline": "30s" })))
        .await;
    assert_eq!(code, 201, "{created}");
    let second = created["id"].as_u64().unwrap();
    rollout_ends(&fleet, second, "Paused", Duration::from_secs(60)).await;
    let missing = fleetctl(&fleet, &["rollout", "retry", &second.to_string()]);
    assert_eq!(missing.status.code(), Some(1), "a usage error: --failed is required: {missing:?}");
    let generations = |all: &BTreeMap<String, Value>| -> u64 {
        all.values().map(|d| d["desired_generation"].as_u64().unwrap()).sum()
    };
    let before = generations(&devices(&fleet).await);
    let retried = fleetctl(&fleet, &["rollout", "retry", &second.to_string(), "--failed"]);
    assert!(retried.status.success(), "{}", String::from_utf8_lossy(&retried.stderr));
    let (_, audit) = fleet.api("GET", "/api/v1/audit", None).await;
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "rollout.retry"), "{audit}");
    let paused = rollout_ends(&fleet, second, "Paused", Duration::from_secs(60)).await;
    assert_eq!(paused["status"]["failed"], 1, "the retried canary failed again: {paused}");
    assert_eq!(generations(&devices(&fleet).await), before + 1, "the canary got the release again");
    fleet.stop().await;
}
