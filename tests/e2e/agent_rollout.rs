//! Agent releases rolled out like application releases, end to end: `fleet-server` pushing
//! the binaries to the real registry, real `fleet-agent` processes on the real Docker engine
//! downloading them through their desired state, trying them, committing or reverting, and
//! the rollout engine judging each device by what its agent reports.
//!
//! The agents run under a small supervisor that restarts an exited agent after 200 ms, as
//! systemd's `Restart=always` does for the shipped unit: a version that exits at start is
//! started again until the slots put the committed version back.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_e2e::fleet::{start_fleet_with, test_pacing, Containers, Fleet};
use fleet_e2e::traffic::{get_version, Clients};
use fleet_e2e::{bin, eventually, ok, TestEnv};
use serde_json::Value;

/// An agent kept running as systemd would: restarted 200 ms after it exits, killed on drop.
struct Supervised {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// How many times it was started again.
    restarts: Arc<std::sync::atomic::AtomicU32>,
}

impl Supervised {
    fn start(bundle: &Path) -> Supervised {
        Supervised::start_with(bundle, None)
    }

    /// With `FLEET_AGENT_FAULT=fault` in its environment (every version it runs inherits it).
    fn start_with(bundle: &Path, fault: Option<&'static str>) -> Supervised {
        let stop = Arc::new(AtomicBool::new(false));
        let restarts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let spawn = {
            let config = bundle.join("config.toml");
            move || -> Child {
                let mut command = Command::new(bin("fleet-agent"));
                if let Some(fault) = fault {
                    command.env("FLEET_AGENT_FAULT", fault);
                }
                command
                    .arg("--config")
                    .arg(&config)
                    .arg("run")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
        };
        let thread = std::thread::spawn({
            let (stop, restarts) = (stop.clone(), restarts.clone());
            move || {
                let mut child = spawn();
                while !stop.load(Ordering::SeqCst) {
                    if child.try_wait().unwrap().is_some() {
                        std::thread::sleep(Duration::from_millis(200));
                        restarts.fetch_add(1, Ordering::SeqCst);
                        child = spawn();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        });
        Supervised { stop, thread: Some(thread), restarts }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fleet whose server pushes agent releases to a repository of the test registry unique to
/// this run.
async fn fleet_with_agent_registry(env: &TestEnv, name: &str) -> Fleet {
    let repository = format!("{}/fleet-e2e/{name}-{}", env.registry, std::process::id());
    start_fleet_with(false, Some(&format!("version = 1\nagent_repository = \"{repository}\"\n")))
        .await
}

async fn device(fleet: &Fleet, id: &str) -> Value {
    let (code, body) = fleet.api("GET", &format!("/api/v1/devices/{id}"), None).await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn rollout_state(fleet: &Fleet, id: u64) -> (String, Value) {
    let (code, view) = fleet.api("GET", &format!("/api/v1/rollouts/{id}"), None).await;
    assert_eq!(code, 200, "{view}");
    let state = &view["status"]["state"];
    let name = state.as_object().and_then(|o| o.keys().next().cloned());
    (name.or_else(|| state.as_str().map(str::to_owned)).unwrap_or_default(), view)
}

fn container_ids(device: &str) -> Vec<u8> {
    Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter", &format!("label=io.fleet.device={device}")])
        .output()
        .unwrap()
        .stdout
}

/// The `web` service, start-first, its port 8080 on host `port` (so the port proxy fronts it),
/// judged by the agent's own HTTP probe.
fn proxied_web(env: &TestEnv, device: &str, port: u16) -> Value {
    use fleet_proto::release::{
        HealthCheck, PortMapping, Probe, Protocol, RestartPolicy, UpdateStrategy,
    };
    use fleet_proto::{ImageRef, ReleaseId, ReleaseSpec, ServiceName, ServiceSpec};
    let web = ServiceSpec {
        ports: vec![PortMapping {
            host_port: port,
            container_port: 8080,
            protocol: Protocol::Tcp,
            loopback_only: true,
        }],
        healthcheck: Some(HealthCheck {
            probe: Probe::Http { port: 8080, path: "/health".into() },
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::from_secs(2),
        }),
        restart: RestartPolicy::UnlessStopped,
        update: UpdateStrategy::StartFirst,
        health_deadline: Duration::from_secs(20),
        ..ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            ImageRef::parse(&env.image("web:1").reference).unwrap(),
        )
    };
    let spec = ReleaseSpec {
        id: ReleaseId::new(format!("front-{device}@1")).unwrap(),
        app: format!("front-{device}"),
        version: "1".into(),
        services: vec![web],
    };
    serde_json::to_value(spec).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_build_rolls_out_in_waves_and_the_proxied_ports_never_fail_a_request() {
    let env = TestEnv::load();
    let fleet = fleet_with_agent_registry(&env, "agent").await;
    let ids: Vec<String> = (1..=3).map(|i| format!("ar{i}-{}", std::process::id())).collect();
    let _containers: Vec<Containers> = ids.iter().map(|id| Containers(id.clone())).collect();
    let mut agents = Vec::new();
    let mut ports = Vec::new();
    for id in &ids {
        let bundle = fleet.enroll(id);
        test_pacing(&bundle);
        agents.push(Supervised::start(&bundle));
        ports.push(fleet_e2e::free_port());
    }
    let fleet_ref = &fleet;
    for (id, port) in ids.iter().zip(&ports) {
        fleet.assign(id, &proxied_web(&env, id, *port)).await;
        let want = format!("front-{id}@1");
        eventually("the release in force", Duration::from_secs(90), || {
            let want = want.clone();
            async move { (device(fleet_ref, id).await["release"] == want.as_str()).then_some(()) }
        })
        .await;
        let port = *port;
        eventually("the proxied port to answer", Duration::from_secs(30), || async move {
            get_version(port).ok()
        })
        .await;
    }
    let before: Vec<Vec<u8>> = ids.iter().map(|id| container_ids(id)).collect();
    let clients: Vec<Clients> = ports.iter().map(|p| Clients::start(*p)).collect();

    // The second build (same source, the next patch version compiled in), for this machine.
    let (binary, version) = fleet_e2e::next_agent(&fleet.dir.path().join("fleet-agent-next"));
    let binary_size = std::fs::metadata(&binary).unwrap().len();
    let creating = Instant::now();
    let created = ok(&fleet.fleetctl(&[
        "release",
        "create-agent",
        &version,
        "--binary",
        &format!("linux/amd64={}", binary.display()),
        "--deadline",
        "60s",
    ]));
    let create_took = creating.elapsed();
    assert!(created.contains(&format!("created agent release fleet-agent@{version}")), "{created}");
    let listed = ok(&fleet.fleetctl(&["release", "ls"]));
    assert!(listed.contains(&format!("fleet-agent@{version}")) && listed.contains("linux/amd64"));
    // Going backwards, or the same version again, is refused by name.
    let again = fleet.fleetctl(&[
        "release",
        "create-agent",
        &version,
        "--binary",
        &format!("linux/amd64={}", binary.display()),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not newer"), "{again:?}");

    let release = format!("fleet-agent@{version}");
    let target = format!("devices:{}", ids.join(","));
    let plan =
        ok(&fleet
            .fleetctl(&["rollout", "plan", &release, "--target", &target, "--waves", "1,100%"]));
    assert!(!plan.contains("cannot run"), "{plan}");
    let started = Instant::now();
    let out = ok(&fleet.fleetctl(&[
        "--json",
        "rollout",
        "create",
        &release,
        "--target",
        &target,
        "--waves",
        "1,100%",
        "--bake",
        "2s",
        "--update-deadline",
        "120s",
    ]));
    let rollout: Value = serde_json::from_str(&out).unwrap();
    let rollout_id = rollout["id"].as_u64().unwrap();
    let version_ref = version.as_str();
    let view =
        eventually("the agent rollout to complete", Duration::from_secs(240), || async move {
            let (state, view) = rollout_state(fleet_ref, rollout_id).await;
            assert!(state != "Paused" && state != "RolledBack", "{view}");
            (state == "Completed").then_some(view)
        })
        .await;
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let tallies: Vec<_> = clients.into_iter().map(Clients::finish).collect();

    for (i, id) in ids.iter().enumerate() {
        let d = device(&fleet, id).await;
        let agent = &d["last_report"]["agent"];
        assert_eq!(agent["running"], version_ref, "{id}: {agent}");
        assert_eq!(agent["committed"], version_ref, "{id}: {agent}");
        assert_eq!(container_ids(id), before[i], "{id}: no container was restarted");
    }
    let listed = ok(&fleet.fleetctl(&["device", "ls"]));
    assert!(listed.contains("AGENT") && listed.matches(version_ref).count() >= 3, "{listed}");
    let requests: u32 = tallies.iter().map(|t| t.ok).sum();
    for t in &tallies {
        assert!(t.failed.is_empty(), "failed requests during the agent rollout: {:?}", t.failed);
    }
    assert!(requests > 100, "the client loops ran through the rollout ({requests} requests)");
    // An agent pin holds a device's agent apart from its app: shown, skipped by agent
    // rollouts, lifted with --agent.
    let pinned = ok(&fleet.fleetctl(&[
        "device",
        "pin",
        &ids[0],
        &release,
        "--reason",
        "bench: lidar driver",
    ]));
    assert!(pinned.contains(&format!("pinned {} to {release}", ids[0])), "{pinned}");
    let shown = ok(&fleet.fleetctl(&["device", "show", &ids[0]]));
    assert!(
        shown.contains(&format!("{version} (pinned by admin: bench: lidar driver)")),
        "{shown}"
    );
    let plan = ok(&fleet.fleetctl(&["--json", "rollout", "plan", &release, "--target", &target]));
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["pinned"][0][0], ids[0].as_str(), "{plan}");
    let unpinned = ok(&fleet.fleetctl(&["device", "unpin", &ids[0], "--agent"]));
    assert!(unpinned.contains("agent"), "{unpinned}");
    assert!(device(&fleet, &ids[0]).await["agent_pin"].is_null());
    // Rolled back: the devices go back to the version their package installed (no release
    // of it exists, and nothing is downloaded), still without a failed request.
    let clients: Vec<Clients> = ports.iter().map(|p| Clients::start(*p)).collect();
    let back = Instant::now();
    ok(&fleet.fleetctl(&["rollout", "rollback", &rollout_id.to_string()]));
    for id in &ids {
        eventually(
            "the device back on its packaged agent",
            Duration::from_secs(60),
            || async move {
                let d = device(fleet_ref, id).await;
                let agent = &d["last_report"]["agent"];
                (agent["running"] == env!("CARGO_PKG_VERSION") && agent["committed"].is_null())
                    .then_some(())
            },
        )
        .await;
    }
    let back_took = back.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    for (t, id) in clients.into_iter().map(Clients::finish).zip(&ids) {
        assert!(t.failed.is_empty(), "failed requests during the rollback: {:?}", t.failed);
        assert!(t.ok > 10, "{id}: the client loop ran through the rollback");
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(container_ids(id), before[i], "{id}: no container was restarted");
    }
    eprintln!(
        "agent rollout rolled back to the packaged {} on 3 devices in {back_took:?}",
        env!("CARGO_PKG_VERSION")
    );
    let restarts: u32 = agents.iter().map(|a| a.restarts.load(Ordering::SeqCst)).sum();
    assert_eq!(restarts, 0, "every agent relaunched itself in place; none exited");
    eprintln!(
        "agent release of a {binary_size} B binary created (upload, checks, registry push) in {create_took:?}; rollout to {version} over 3 devices (waves 1,100%, bake 2s): completed in {took:?}; {requests} requests through the proxied ports, 0 failed; {}",
        view["status"]["waves"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_start_is_reverted_by_the_canary_and_the_rollout_pauses() {
    let env = TestEnv::load();
    let fleet = fleet_with_agent_registry(&env, "broken-agent").await;
    let ids: Vec<String> = (1..=2).map(|i| format!("br{i}-{}", std::process::id())).collect();
    let mut agents = Vec::new();
    let mut data_dirs: Vec<PathBuf> = Vec::new();
    for id in &ids {
        let bundle = fleet.enroll(id);
        test_pacing(&bundle);
        agents.push(Supervised::start(&bundle));
        data_dirs.push(bundle.join("data"));
    }
    let fleet_ref = &fleet;
    for id in &ids {
        eventually("the agent to report its versions", Duration::from_secs(60), || async move {
            let d = device(fleet_ref, id).await;
            d["last_report"]["agent"]["running"].is_string().then_some(())
        })
        .await;
    }

    // /bin/false is an executable for this machine that exits at once.
    let version = "99.0.0";
    ok(&fleet.fleetctl(&[
        "release",
        "create-agent",
        version,
        "--binary",
        "linux/amd64=/bin/false",
        "--deadline",
        "60s",
    ]));
    // A shell script is not an executable for any platform: refused, naming the binary.
    let script = fleet.dir.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let refused = fleet.fleetctl(&[
        "release",
        "create-agent",
        "99.1.0",
        "--binary",
        &format!("linux/arm64={}", script.display()),
    ]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("not an ELF executable"), "{why}");

    let started = Instant::now();
    let out = ok(&fleet.fleetctl(&[
        "--json",
        "rollout",
        "create",
        &format!("fleet-agent@{version}"),
        "--target",
        &format!("devices:{}", ids.join(",")),
        "--waves",
        "1,100%",
        "--bake",
        "2s",
    ]));
    let rollout: Value = serde_json::from_str(&out).unwrap();
    let rollout_id = rollout["id"].as_u64().unwrap();
    let view = eventually("the rollout to pause", Duration::from_secs(120), || async move {
        let (state, view) = rollout_state(fleet_ref, rollout_id).await;
        (state == "Paused").then_some(view)
    })
    .await;
    let paused_after = started.elapsed();
    assert_eq!(view["status"]["failed"], 1, "{view}");

    let mut canary = None;
    for (i, id) in ids.iter().enumerate() {
        let d = device(&fleet, id).await;
        if d["desired_agent"] == version {
            canary = Some(i);
            let agent = &d["last_report"]["agent"];
            assert_eq!(agent["running"], env!("CARGO_PKG_VERSION"), "reverted: {agent}");
            assert_eq!(agent["failed"]["version"], version, "{agent}");
            assert!(agent["failed"]["reason"].as_str().unwrap().contains("did not commit"));
        } else {
            assert!(d["desired_agent"].is_null(), "never targeted: {d}");
            assert!(!data_dirs[i].join("bin").join(version).exists(), "never downloaded");
        }
    }
    let canary = canary.expect("one device was the canary");
    assert!(agents[canary].restarts.load(Ordering::SeqCst) >= 2, "restarted as systemd would");
    let shown = ok(&fleet.fleetctl(&["audit"]));
    assert!(shown.contains("agent update failed"), "{shown}");
    eprintln!(
        "broken agent release: canary {} reverted by itself, rollout paused {paused_after:?} after it was created",
        ids[canary]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_commits_is_reverted_and_the_device_reports_what_it_logged() {
    let env = TestEnv::load();
    let fleet = fleet_with_agent_registry(&env, "uncommitted-agent").await;
    let id = format!("nc-{}", std::process::id());
    let bundle = fleet.enroll(&id);
    test_pacing(&bundle);
    // The second build aborts right before it would commit (its fault injection), every start.
    let agent = Supervised::start_with(&bundle, Some("slot-commit"));
    let fleet_ref = &fleet;
    let id_ref = id.as_str();
    eventually("the agent to report its versions", Duration::from_secs(60), || async move {
        let d = device(fleet_ref, id_ref).await;
        d["last_report"]["agent"]["running"].is_string().then_some(())
    })
    .await;
    let (binary, version) = fleet_e2e::next_agent(&fleet.dir.path().join("fleet-agent-next"));
    ok(&fleet.fleetctl(&[
        "release",
        "create-agent",
        &version,
        "--binary",
        &format!("linux/amd64={}", binary.display()),
    ]));
    let out = ok(&fleet.fleetctl(&[
        "--json",
        "rollout",
        "create",
        &format!("fleet-agent@{version}"),
        "--target",
        &format!("devices:{id}"),
        "--waves",
        "100%",
    ]));
    let rollout: Value = serde_json::from_str(&out).unwrap();
    let rollout_id = rollout["id"].as_u64().unwrap();
    eventually("the rollout to pause", Duration::from_secs(120), || async move {
        let (state, _) = rollout_state(fleet_ref, rollout_id).await;
        (state == "Paused").then_some(())
    })
    .await;
    let d = device(&fleet, &id).await;
    let agent_report = &d["last_report"]["agent"];
    assert_eq!(agent_report["running"], env!("CARGO_PKG_VERSION"), "{agent_report}");
    assert_eq!(agent_report["failed"]["version"], version.as_str(), "{agent_report}");
    let log: Vec<&str> = agent_report["failed_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        log.iter().any(|l| l.contains(&format!("fleet-agent {version} started"))),
        "the trial's own log lines come back with the failure: {log:?}"
    );
    let shown = ok(&fleet.fleetctl(&["device", "show", &id]));
    assert!(shown.contains("its last log lines:"), "{shown}");
    let audit = ok(&fleet.fleetctl(&["audit"]));
    assert!(audit.contains("it logged:"), "{audit}");
    drop(agent);
}
