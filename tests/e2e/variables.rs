//! Variables end to end: `fleet-server` on the shipped Mosquitto configuration, three real
//! agents on the real Docker engine, a two-service release from a Compose file resolved
//! through the real registry. Fleet, group, device and per-service variables land in each
//! container's environment by precedence (and in `${VAR}` of the Compose file); changing one
//! group-level service variable recreates exactly that service on exactly the group's
//! devices, and every other container keeps its id.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use fleet_e2e::fleet::{start_agent, start_fleet, Containers, Fleet, Killed};
use fleet_e2e::{eventually, free_port, ok, TestEnv};
use serde_json::{json, Value};

/// The running container of `service` on `device`: (id, environment), if exactly one runs.
async fn running(
    env: &TestEnv,
    device: &str,
    service: &str,
) -> Option<(String, BTreeMap<String, String>)> {
    let docker = env.docker().await;
    let filters = HashMap::from([(
        "label",
        vec![format!("io.fleet.device={device}"), format!("io.fleet.service={service}")],
    )]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().filters(&filters).build()))
        .await
        .ok()?;
    let [only] = list.as_slice() else { return None };
    let id = only.id.clone()?;
    let inspected = docker.inspect_container(&id, None).await.ok()?;
    let healthy = inspected
        .state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .is_some_and(|s| s == bollard::models::HealthStatusEnum::HEALTHY);
    if !healthy {
        return None;
    }
    let vars = inspected
        .config?
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    Some((id, vars))
}

/// Enrolls `id` with `labels` and starts its agent with test pacing.
fn device(fleet: &Fleet, id: &str, labels: &[&str]) -> Killed {
    let bundle = fleet.enroll(id);
    let mut args = vec!["device", "label", id];
    args.extend(labels);
    ok(&fleet.fleetctl(&args));
    fleet_e2e::fleet::test_pacing(&bundle);
    start_agent(&bundle, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_reach_containers_by_precedence_and_a_group_change_recreates_only_its_service() {
    let env = TestEnv::load();
    let fleet = start_fleet().await;
    let pid = std::process::id();
    let [a, b, c] = ["a", "b", "c"].map(|n| format!("vars-{n}-{pid}"));
    let _cleanup = [&a, &b, &c].map(|d| Containers(d.clone()));
    // a and b at the depot, c in the lab; all three robots.
    let _agents = [
        device(&fleet, &a, &["site=depot", "kind=robot"]),
        device(&fleet, &b, &["site=depot", "kind=robot"]),
        device(&fleet, &c, &["site=lab", "kind=robot"]),
    ];
    for (name, selector) in [("depot", "site=depot"), ("lab", "site=lab"), ("robots", "kind=robot")]
    {
        ok(&fleet.fleetctl(&["group", "create", name, "--selector", selector]));
    }
    let set = |args: &[&str]| {
        let mut all = vec!["var", "set"];
        all.extend(args);
        ok(&fleet.fleetctl(&all))
    };
    // One name per precedence question.
    set(&["ONLY_FLEET", "fleet"]);
    set(&["WIDE_SVC", "fleet"]);
    set(&["WIDE_SVC", "fleet-web", "--service", "web"]);
    set(&["GROUP_OVER_FLEET", "fleet"]);
    set(&["GROUP_OVER_FLEET", "depot", "--group", "depot"]);
    set(&["GROUP_SVC", "depot", "--group", "depot"]);
    set(&["GROUP_SVC", "depot-web", "--group", "depot", "--service", "web"]);
    set(&["DEVICE_TOP", "depot-worker", "--group", "depot", "--service", "worker"]);
    set(&["DEVICE_TOP", "dev-a", "--device", &a]);
    set(&["DEVICE_TOP", "dev-a-worker", "--device", &a, "--service", "worker"]);
    set(&["TWO_GROUPS", "depot", "--group", "depot"]);
    set(&["TWO_GROUPS", "robots", "--group", "robots"]);
    set(&["MODE", "dev-b", "--device", &b]);
    set(&["SITE", "lab", "--group", "lab"]);
    // The three devices share this host's engine: host networking (an app's own network would
    // clash between them), a port per device and service, from variables too, and stop-first
    // updates (start-first would start the new container on the old one's port).
    for d in [&a, &b, &c] {
        for s in ["web", "worker"] {
            set(&["PORT", &free_port().to_string(), "--device", d, "--service", s]);
        }
    }

    // A release whose Compose file interpolates SITE per device.
    let tag = &env.image("web:1").tag;
    let compose = format!(
        "x-fleet:\n  update: stop-first\nservices:\n  web:\n    image: {tag}\n    network_mode: host\n    environment:\n      GREETING: hello-${{SITE:-nowhere}}\n      MODE: compose\n  worker:\n    image: {tag}\n    network_mode: host\n    environment:\n      MODE: compose\n"
    );
    let file = fleet.dir.path().join("compose.yaml");
    std::fs::write(&file, compose).unwrap();
    ok(&fleet.fleetctl(&["release", "create", "vars", "1", "-f", file.to_str().unwrap()]));
    let (code, release) = fleet.api("GET", "/api/v1/releases/vars@1", None).await;
    assert_eq!(code, 200, "{release}");
    for id in [&a, &b, &c] {
        fleet.assign(id, &release["spec"]).await;
    }

    let mut before = BTreeMap::new();
    for id in [&a, &b, &c] {
        for service in ["web", "worker"] {
            let (env_ref, id_ref) = (&env, id.as_str());
            let found = eventually(
                &format!("{service} healthy on {id}"),
                Duration::from_secs(90),
                || async move { running(env_ref, id_ref, service).await },
            )
            .await;
            before.insert((id.clone(), service), found);
        }
    }
    let var = |d: &str, s: &'static str, k: &str| before[&(d.to_owned(), s)].1.get(k).cloned();
    let some = |v: &str| Some(v.to_owned());
    for d in [&a, &b, &c] {
        for s in ["web", "worker"] {
            assert_eq!(var(d, s, "ONLY_FLEET"), some("fleet"), "{d} {s}");
            assert_eq!(
                var(d, s, "TWO_GROUPS"),
                some("robots"),
                "the group last by name wins on {d}"
            );
        }
        assert_eq!(var(d, "web", "WIDE_SVC"), some("fleet-web"));
        assert_eq!(var(d, "worker", "WIDE_SVC"), some("fleet"));
    }
    for d in [&a, &b] {
        assert_eq!(var(d, "web", "GROUP_OVER_FLEET"), some("depot"));
        assert_eq!(var(d, "web", "GROUP_SVC"), some("depot-web"));
        assert_eq!(var(d, "worker", "GROUP_SVC"), some("depot"));
        assert_eq!(var(d, "web", "GREETING"), some("hello-nowhere"));
    }
    assert_eq!(var(&c, "web", "GROUP_OVER_FLEET"), some("fleet"));
    assert_eq!(var(&c, "web", "GROUP_SVC"), None);
    assert_eq!(var(&c, "web", "GREETING"), some("hello-lab"), "${{SITE}} interpolated per device");
    // Device beats group+service; device+service beats device.
    assert_eq!(var(&a, "web", "DEVICE_TOP"), some("dev-a"));
    assert_eq!(var(&a, "worker", "DEVICE_TOP"), some("dev-a-worker"));
    assert_eq!(var(&b, "worker", "DEVICE_TOP"), some("depot-worker"));
    assert_eq!(var(&b, "web", "DEVICE_TOP"), None);
    // A variable overrides the Compose file's environment.
    assert_eq!(var(&b, "web", "MODE"), some("dev-b"));
    assert_eq!(var(&b, "worker", "MODE"), some("dev-b"));
    assert_eq!(var(&a, "web", "MODE"), some("compose"));

    // `var ls --device` explains a's value and what it overrode.
    let explained: Value = serde_json::from_str(&ok(&fleet.fleetctl(&[
        "var",
        "ls",
        "--device",
        &a,
        "--service",
        "worker",
        "--json",
    ])))
    .unwrap();
    let top =
        explained["items"].as_array().unwrap().iter().find(|r| r["name"] == "DEVICE_TOP").unwrap();
    assert_eq!(top["origin"], json!({ "device": a, "service": "worker" }), "{explained}");
    assert_eq!(
        top["overridden"],
        json!([{ "group": "depot", "service": "worker" }, { "device": a }])
    );

    // One group-level service variable changes: web on a and b only.
    let said = set(&["GROUP_SVC", "depot-web-2", "--group", "depot", "--service", "web"]);
    assert!(said.contains("2 device(s) re-targeted, 0 unchanged"), "{said}");
    for d in [&a, &b] {
        let (env_ref, d_ref, old) = (&env, d.as_str(), before[&(d.clone(), "web")].0.clone());
        eventually(&format!("web recreated on {d}"), Duration::from_secs(60), || {
            let old = old.clone();
            async move {
                running(env_ref, d_ref, "web").await.filter(|(id, vars)| {
                    *id != old && vars.get("GROUP_SVC").map(String::as_str) == Some("depot-web-2")
                })
            }
        })
        .await;
    }
    // Let any stray recreation show itself before comparing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for ((d, s), (old_id, _)) in &before {
        let (now_id, _) =
            running(&env, d, s).await.unwrap_or_else(|| panic!("{s} on {d} is not running"));
        let should_change = *s == "web" && (*d == a || *d == b);
        assert_eq!(now_id != *old_id, should_change, "{s} on {d}: recreated {}", now_id != *old_id);
    }
}

/// `fleetctl release create --profile` runs the selected profiles' services with those
/// without a profile, against the real registry; a profile no service has is refused (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_release_create_runs_the_selected_profiles() {
    let env = TestEnv::load();
    let fleet = start_fleet().await;
    let tag = &env.image("web:1").tag;
    let compose = format!(
        "services:\n  core:\n    image: {tag}\n  lidar:\n    image: {tag}\n    profiles: [sensors]\n  debug:\n    image: {tag}\n    profiles: [debug]\n"
    );
    let file = fleet.dir.path().join("compose.yaml");
    std::fs::write(&file, compose).unwrap();
    let file = file.to_str().unwrap();
    ok(&fleet.fleetctl(&["release", "create", "robot", "1", "-f", file, "--profile", "sensors"]));
    let (code, release) = fleet.api("GET", "/api/v1/releases/robot@1", None).await;
    assert_eq!(code, 200, "{release}");
    let names: Vec<&str> = release["spec"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["core", "lidar"], "{release}");
    let typo =
        fleet.fleetctl(&["release", "create", "robot", "2", "-f", file, "--profile", "sensor"]);
    assert_eq!(typo.status.code(), Some(2), "{typo:?}");
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(said.contains("no service has profile \"sensor\""), "{said}");
}
