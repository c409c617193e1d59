//! fleet-agent on the real Docker engine with images from the real registry: local-mode
//! updates, health-gated rollback, stop-first ordering, adoption and crash safety.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use fleet_e2e::agent::Agent;
use fleet_e2e::traffic::{get_version, Clients};
use fleet_e2e::{eventually, TestEnv};
use fleet_proto::release::*;
use fleet_proto::{ImageRef, ReleaseId, ReleaseSpec, ServiceName, ServiceSpec};

fn service(name: &str, image: &str, strategy: UpdateStrategy) -> ServiceSpec {
    ServiceSpec {
        healthcheck: Some(HealthCheck {
            probe: Probe::Image,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::ZERO,
        }),
        restart: RestartPolicy::UnlessStopped,
        update: strategy,
        health_deadline: Duration::from_secs(20),
        resources: ResourceLimits { memory_bytes: Some(64 << 20), ..ResourceLimits::default() },
        ..ServiceSpec::new(ServiceName::new(name).unwrap(), ImageRef::parse(image).unwrap())
    }
}

/// Two services, `web` (start-first) and `api` (stop-first), on the given images.
fn release(version: &str, web: &str, api: &str) -> ReleaseSpec {
    ReleaseSpec {
        id: ReleaseId::new(format!("e2e@{version}")).unwrap(),
        app: "e2e".into(),
        version: version.into(),
        services: vec![
            service("web", web, UpdateStrategy::StartFirst),
            service("api", api, UpdateStrategy::StopFirst),
        ],
    }
}

fn expected_names(agent: &Agent, r: &ReleaseSpec) -> Vec<String> {
    let device = fleet_proto::DeviceId::new(&agent.device).unwrap();
    let mut names: Vec<String> =
        r.services.iter().map(|s| fleet_agent::plan::container_name(&device, s, false)).collect();
    names.sort();
    names
}

async fn running(agent: &Agent, env: &TestEnv) -> Vec<String> {
    agent.containers(env).await.into_iter().filter(|(_, (_, r))| *r).map(|(n, _)| n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_rollback_and_adoption_on_the_real_engine() {
    let env = TestEnv::load();
    let agent = Agent::new("flow");
    let v1 = release("1", &env.image("web:1").reference, &env.image("web:1").reference);
    let v2 = release("2", &env.image("web:2").reference, &env.image("web:2").reference);

    // Fresh device → v1, both healthy; the report says so.
    assert!(agent.apply(&v1).status.success());
    assert_eq!(running(&agent, &env).await, expected_names(&agent, &v1));
    let status = agent.status();
    assert_eq!(status["in_force"]["release"], "e2e@1");
    assert_eq!(status["in_force"]["source"], "Local");
    let services = status["services"].as_array().unwrap();
    assert_eq!(services.len(), 2);
    assert!(
        services.iter().all(|s| s["state"] == "Running" && s["health"] == "Healthy"),
        "{services:?}"
    );

    // Same release again: adopted, not recreated.
    let ids_before = agent.containers(&env).await;
    assert!(agent.apply(&v1).status.success());
    assert_eq!(agent.containers(&env).await, ids_before, "container ids unchanged");

    // v1 → v2: new containers healthy, old ones gone.
    assert!(agent.apply(&v2).status.success());
    assert_eq!(running(&agent, &env).await, expected_names(&agent, &v2));
    assert_eq!(agent.containers(&env).await.len(), 2, "old containers removed");

    // v2 → never healthy: rolled back to v2 with the reason and exit code 3.
    let bad = release("3", &env.image("web:2").reference, &env.image("unhealthy:1").reference);
    let out = agent.apply(&bad);
    assert_eq!(out.status.code(), Some(3));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rolled = &outcome["result"]["RolledBack"];
    assert!(rolled["reason"].as_str().unwrap().contains("failed its health check"), "{outcome}");
    assert_eq!(rolled["service"], "api");
    assert_eq!(running(&agent, &env).await, expected_names(&agent, &v2));
    assert_eq!(agent.status()["update"]["last_outcome"]["result"]["RolledBack"]["service"], "api");

    // Crashing image → rolled back too, with the crash's log line.
    let crash = release("4", &env.image("crash:1").reference, &env.image("web:2").reference);
    let out = agent.apply(&crash);
    assert_eq!(out.status.code(), Some(3));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = outcome["result"]["RolledBack"]["reason"].as_str().unwrap();
    assert!(reason.contains("crash-looping") || reason.contains("exited with code 1"), "{outcome}");
    assert!(
        outcome["result"]["RolledBack"]["log_tail"][0]
            .as_str()
            .unwrap()
            .contains("exiting with code 1"),
        "{outcome}"
    );
    assert_eq!(running(&agent, &env).await, expected_names(&agent, &v2));

    // Missing digest → failed before touching anything.
    let before = agent.containers(&env).await;
    let missing_ref = format!("{}/fleet-test/web@sha256:{}", env.registry, "0".repeat(64));
    let missing = release("5", &missing_ref, &env.image("web:2").reference);
    let out = agent.apply(&missing);
    assert_eq!(out.status.code(), Some(3));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(outcome["result"]["Failed"]["reason"].as_str().unwrap().contains("pull"), "{outcome}");
    assert_eq!(agent.containers(&env).await, before, "running release untouched");

    agent.cleanup(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_first_stops_the_old_container_before_the_new_one_starts() {
    let env = TestEnv::load();
    let agent = Agent::new("stopfirst");
    let v1 = release("1", &env.image("web:1").reference, &env.image("web:1").reference);
    let v2 = release("2", &env.image("web:1").reference, &env.image("web:2").reference);
    assert!(agent.apply(&v1).status.success());
    let docker = env.docker().await;
    let device = fleet_proto::DeviceId::new(&agent.device).unwrap();
    let old = fleet_agent::plan::container_name(&device, &v1.services[1], false);
    let old_id = agent.containers(&env).await[&old].0.clone();
    assert!(agent.apply(&v2).status.success());
    // The old container is gone now; its stop time is in the engine's event log. Compare the
    // new container's start with the journal instead: the agent journals every step.
    let new = fleet_agent::plan::container_name(&device, &v2.services[1], false);
    let new_state = docker
        .inspect_container(&new, None::<InspectContainerOptions>)
        .await
        .unwrap()
        .state
        .unwrap();
    let journal = journal_lines(&agent.dir.path().join("data"));
    let stop_old = journal
        .iter()
        .position(|l| l.contains(&format!("stop {old}")) && l.contains("done"))
        .unwrap();
    let start_new = journal
        .iter()
        .position(|l| l.contains(&format!("start {new}")) && l.contains("begin"))
        .unwrap();
    assert!(stop_old < start_new, "stop-first order in journal: {journal:#?}");
    assert!(new_state.running.unwrap());
    assert!(
        docker.inspect_container(&old_id, None::<InspectContainerOptions>).await.is_err(),
        "old container removed"
    );
    agent.cleanup(&env).await;
}

/// The update journal as lines, read with the agent's own state library (the journal is in
/// status.json only in daemon mode).
fn journal_lines(data: &Path) -> Vec<String> {
    let state = fleet_agent::state::AgentState::open(&data.join("state")).unwrap();
    state
        .journal_tail(500)
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.step, e.phase))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_step_the_agent_restarts_into_the_complete_new_release() {
    let env = TestEnv::load();
    let v1 = release("1", &env.image("web:1").reference, &env.image("web:1").reference);
    let v2 = release("2", &env.image("web:2").reference, &env.image("web:2").reference);
    // A v1 → v2 update of these two services runs 8 steps (create, start, wait, stop per
    // start-first service; stop, create, start, wait for stop-first; then 2 removes): abort
    // before each one in turn.
    for n in 1..=10 {
        let agent = Agent::new(&format!("crash{n}"));
        assert!(agent.apply(&v1).status.success());
        let out = agent
            .cmd()
            .env("FLEET_AGENT_FAULT", format!("any:{n}"))
            .arg("apply")
            .arg(agent.release_file(&v2))
            .output()
            .unwrap();
        let aborted = !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("aborting before");
        eprintln!("fault any:{n}: aborted={aborted}");
        assert!(
            aborted || n > 1,
            "FLEET_AGENT_FAULT=any:1 did not abort the agent: was it built without the \
             fault-injection feature? (cargo build --workspace --bins builds it in)"
        );

        let n2 = expected_names(&agent, &v2);
        // While the agent is down, the start-first service (web) still has a running container:
        // start-first never leaves it without one. (The stop-first service may be between its
        // old container's stop and its new one's start: that is what stop-first means.)
        let now: Vec<String> = running(&agent, &env).await;
        assert!(
            now.iter().any(|c| c.contains("-web-")),
            "fault {n}: web has no running container: {now:?}"
        );
        // Restart the agent as systemd would: the daemon converges to the accepted state.
        let daemon = agent.daemon();
        // After the restart the agent finishes the accepted update: v2, and nothing else.
        eventually(&format!("fault {n}: v2 alone after restart"), Duration::from_secs(60), || {
            let agent = &agent;
            let env = &env;
            let n2 = n2.clone();
            async move {
                let all = agent.containers(env).await;
                let running: Vec<String> =
                    all.iter().filter(|(_, (_, r))| *r).map(|(n, _)| n.clone()).collect();
                (all.len() == 2 && running == n2).then_some(())
            }
        })
        .await;
        daemon.stop();
        assert_eq!(
            running(&agent, &env).await,
            n2,
            "SIGTERM leaves application containers running"
        );
        agent.cleanup(&env).await;
        if !aborted {
            break; // past the last step: the update simply completed
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_lock_defers_the_switch_until_its_lease_ends_or_force() {
    let env = TestEnv::load();
    let agent = Agent::new("locks");
    let v1 = release("1", &env.image("web:1").reference, &env.image("web:1").reference);
    let v2 = release("2", &env.image("web:2").reference, &env.image("web:2").reference);
    let v3 = release("3", &env.image("web:1").reference, &env.image("web:2").reference);
    assert!(agent.apply(&v1).status.success());

    // Held lock: deferred (exit 4), images downloaded, v1 still running untouched.
    let lock = agent.cmd().args(["lock", "acquire", "mission", "--ttl", "600"]).output().unwrap();
    assert!(lock.status.success(), "{}", String::from_utf8_lossy(&lock.stderr));
    // The lease's token is all of stdout; only it renews or releases the lease.
    let token = String::from_utf8(lock.stdout).unwrap().trim().to_owned();
    assert_eq!(token.len(), 32, "{token:?}");
    let before = agent.containers(&env).await;
    let out = agent.apply(&v2);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked by mission"));
    assert_eq!(agent.containers(&env).await, before, "nothing switched while locked");
    let docker = env.docker().await;
    assert!(
        docker.inspect_image(&env.image("web:2").reference).await.is_ok(),
        "the new image was downloaded"
    );

    // The daemon keeps the update deferred, and its status says why and for whom.
    let daemon = agent.daemon();
    eventually("status reports the deferral", Duration::from_secs(10), || {
        // Until the daemon wrote its first status.json, `status` has nothing to read.
        let out = agent.cmd().args(["status", "--json"]).output().unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        async move {
            (status["update"]["phase"] == "Deferred"
                && status["update"]["deferred"]["holder"] == "mission")
                .then_some(())
        }
    })
    .await;
    assert_eq!(agent.containers(&env).await, before, "nothing switched while locked");

    // Someone else can neither shorten nor release the lease.
    for args in [&["acquire", "mission", "--ttl", "1"][..], &["release", "mission"]] {
        let out = agent.cmd().arg("lock").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("pass its token"), "{args:?}");
    }
    // The holder renews with a short lease and then stops renewing (as a crashed app would):
    // the daemon finishes the deferred update by itself once the lease lapses.
    assert!(agent
        .cmd()
        .args(["lock", "acquire", "mission", "--ttl", "1", "--token", token.as_str()])
        .status()
        .unwrap()
        .success());
    let n2 = expected_names(&agent, &v2);
    eventually("the deferred update after the lease", Duration::from_secs(30), || {
        let (agent, env, n2) = (&agent, &env, n2.clone());
        async move {
            (running(agent, env).await == n2 && agent.containers(env).await.len() == 2)
                .then_some(())
        }
    })
    .await;
    daemon.stop();

    // Force goes past a held lock.
    assert!(agent
        .cmd()
        .args(["lock", "acquire", "mission", "--ttl", "600"])
        .status()
        .unwrap()
        .success());
    let out =
        agent.cmd().arg("apply").arg(agent.release_file(&v3)).arg("--force").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(running(&agent, &env).await, expected_names(&agent, &v3));
    // Root on the host releases any lease with --force.
    let out = agent.cmd().args(["lock", "release", "mission", "--force"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = agent.cmd().args(["lock", "ls", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    agent.cleanup(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_below_the_disk_reserve_is_refused_with_the_numbers_and_v1_untouched() {
    let env = TestEnv::load();
    // This agent's reserve is 100 PB: no disk has that much free.
    let agent = Agent::new("disk");
    // v1 is applied with images present, so no download and no disk check.
    let v1 = release("1", &env.image("web:1").reference, &env.image("web:1").reference);
    let docker = env.docker().await;
    let pull = Command::new("docker")
        .args(["pull", "-q", &env.image("web:1").reference])
        .output()
        .unwrap();
    assert!(pull.status.success());
    assert!(agent.apply(&v1).status.success());
    let before = agent.containers(&env).await;
    // v2 needs a download: refused before it starts.
    let probe = format!("{}/fleet-test/memhog@{}", env.registry, env.image("memhog:2").digest);
    let _ = docker
        .remove_image(&probe, None::<bollard::query_parameters::RemoveImageOptions>, None)
        .await;
    let v2 = release("2", &probe, &env.image("web:1").reference);
    let out = agent.apply(&v2);
    assert_eq!(out.status.code(), Some(3));
    let outcome: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = outcome["result"]["Failed"]["reason"].as_str().unwrap();
    // The download is what the registry's manifest says memhog:2 weighs, checked blob by blob.
    let download_mb =
        registry_blob_bytes(&env, "fleet-test/memhog", &env.image("memhog:2").digest) / 1_000_000;
    let expected = format!(
        "not enough disk to download the release: needs {} MB free ({download_mb} MB of images + 100000000000 MB reserve)",
        100_000_000_000 + download_mb
    );
    assert!(reason.starts_with(&expected), "{reason}\nexpected: {expected}");
    assert_eq!(agent.containers(&env).await, before, "v1 untouched");
    assert!(docker.inspect_image(&probe).await.is_err(), "nothing downloaded");
    agent.cleanup(&env).await;
}

/// One HTTP/1.0 request on a new connection: the body, or why it failed.
/// The `web` service alone at `version`, start-first, its port 8080 on host `port` (behind the
/// port proxy when a daemon runs), judged by the agent's own HTTP probe.
fn proxied_web(env: &TestEnv, version: &str, image: &str, port: u16) -> ReleaseSpec {
    let reference = &env.image(&format!("web:{image}")).reference;
    let mut r = release(version, reference, reference);
    r.services.truncate(1);
    let s = &mut r.services[0];
    s.ports = vec![PortMapping {
        host_port: port,
        container_port: 8080,
        protocol: Protocol::Tcp,
        loopback_only: true,
    }];
    // The image's HEALTHCHECK is switched off; the agent probes.
    s.healthcheck = Some(HealthCheck {
        probe: Probe::Http { port: 8080, path: "/health".into() },
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        retries: 3,
        start_period: Duration::from_secs(2),
    });
    r
}

/// Waits for the daemon's admin socket (so `apply` goes through the daemon and its proxy).
async fn admin_socket_up(agent: &Agent) {
    let socket = agent.dir.path().join("data/agent.sock");
    eventually("the daemon's admin socket", Duration::from_secs(10), || {
        let ready = socket.exists();
        async move { ready.then_some(()) }
    })
    .await;
}

/// The port proxy's table as `fleet-agent status --json` shows it.
fn proxy_routes(agent: &Agent) -> Vec<serde_json::Value> {
    let status = agent.status();
    status["proxy"]["routes"].as_array().cloned().unwrap_or_default()
}

/// `fleet-agent proxy` processes serving this agent's data directory.
fn proxy_processes(agent: &Agent) -> usize {
    let data = agent.dir.path().join("data");
    let out = Command::new("pgrep")
        .args(["-f", &format!("fleet-agent proxy --data-dir {}", data.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_on_a_proxied_port_starve_nothing() {
    let env = TestEnv::load();
    let agent = Agent::new("parked");
    let port = fleet_e2e::free_port();
    let v1 = proxied_web(&env, "1", "1", port);
    let daemon = agent.daemon();
    admin_socket_up(&agent).await;
    let out = agent.apply(&v1);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Clients from the network that connect and say nothing.
    let parked: Vec<std::net::TcpStream> =
        (0..500).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get_version(port).as_deref(), Ok("1"), "the port still serves");
    let status = agent.status();
    assert_eq!(status["in_force"]["release"], "e2e@1", "the daemon still answers: {status}");
    let out = agent.apply(&proxied_web(&env, "2", "2", port));
    assert!(
        out.status.success(),
        "an update still goes through: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get_version(port).as_deref(), Ok("2"));
    drop(parked);
    daemon.stop();
    agent.cleanup(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_first_update_behind_the_port_proxy_fails_no_request() {
    let env = TestEnv::load();
    let agent = Agent::new("bluegreen");
    let port = fleet_e2e::free_port();
    let (v1, v2) = (proxied_web(&env, "1", "1", port), proxied_web(&env, "2", "2", port));
    let daemon = agent.daemon();
    admin_socket_up(&agent).await;
    let out = agent.apply(&v1);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get_version(port).as_deref(), Ok("1"), "the proxy serves v1 on the host port");

    // A client loop through the whole update.
    let clients = Clients::start(port);
    let started = std::time::Instant::now();
    let out = agent.apply(&v2);
    let update = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let t = clients.finish();
    eprintln!(
        "blue/green: {} requests ok, {} failed, versions seen {:?}, max latency {:?}, update {update:?}",
        t.ok,
        t.failed.len(),
        t.versions,
        t.max_latency
    );
    assert!(t.failed.is_empty(), "failed requests during the update: {:?}", t.failed);
    assert_eq!(t.versions, ["1", "2"], "traffic moved from v1 to v2 once, never back");
    assert!(t.ok > 10, "the client loop ran through the update ({} requests)", t.ok);

    // The old container is gone; only v2 runs, published on loopback for the proxy alone.
    let device = fleet_proto::DeviceId::new(&agent.device).unwrap();
    let v2_name = fleet_agent::plan::container_name(&device, &v2.services[0], true);
    let all = agent.containers(&env).await;
    assert_eq!(all.keys().collect::<Vec<_>>(), [&v2_name], "{all:?}");

    // The agent stopped for 30 s, then started again: the port answers all along (the proxy is
    // a process of its own), and the restarted daemon adopts the route and the container.
    let id_before = all[&v2_name].0.clone();
    let clients = Clients::start(port);
    daemon.stop();
    std::thread::sleep(Duration::from_secs(30));
    let daemon = agent.daemon();
    admin_socket_up(&agent).await;
    std::thread::sleep(Duration::from_secs(2));
    let t = clients.finish();
    eprintln!("agent stopped 30 s: {} requests ok, {} failed", t.ok, t.failed.len());
    assert!(t.failed.is_empty(), "failed requests while the agent was down: {:?}", t.failed);
    assert_eq!(t.versions, ["2"]);
    assert!(t.ok > 100, "the client loop ran while the agent was down ({} requests)", t.ok);
    assert_eq!(agent.containers(&env).await[&v2_name].0, id_before, "adopted, not recreated");
    let routes = proxy_routes(&agent);
    assert_eq!(routes.len(), 1, "one route, not bound twice: {routes:?}");
    assert_eq!(routes[0]["container"], v2_name.as_str());
    assert_eq!(proxy_processes(&agent), 1, "one proxy for the data directory");

    // The release without the service's port: the listener is closed.
    let mut v3 = proxied_web(&env, "3", "2", port);
    v3.services[0].ports.clear();
    let out = agent.apply(&v3);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(proxy_routes(&agent).is_empty(), "the route left with the port");
    assert!(get_version(port).is_err(), "nothing listens on the port any more");
    daemon.stop();
    agent.cleanup(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_during_a_blue_green_switch_fails_no_request_and_leaves_one_route() {
    let env = TestEnv::load();
    let agent = Agent::new("killswitch");
    let port = fleet_e2e::free_port();
    let daemon = agent.daemon();
    admin_socket_up(&agent).await;
    let out = agent.apply(&proxied_web(&env, "1", "1", port));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    daemon.stop();

    let clients = Clients::start(port);
    // Killed right before the switch (the new container healthy, traffic still on the old one),
    // then right before the old container stops (traffic moved, the old one draining).
    for (fault, version, image) in [("switch", "2", "2"), ("stop", "3", "1")] {
        let mut doomed = agent.daemon_with_fault(fault);
        admin_socket_up(&agent).await;
        let out = agent.apply(&proxied_web(&env, version, image, port));
        assert!(!out.status.success(), "fault {fault}: the daemon died before answering");
        let status = doomed.0.wait().unwrap();
        assert!(!status.success(), "fault {fault}: aborted, {status:?}");
        // The daemon restarted as systemd would: it finishes the accepted release.
        let daemon = agent.daemon();
        eventually(
            &format!("v{version} served after the restart (fault {fault})"),
            Duration::from_secs(60),
            || async { (get_version(port).as_deref() == Ok(image)).then_some(()) },
        )
        .await;
        eventually("the update finished", Duration::from_secs(30), || async {
            let names = agent.containers(&env).await;
            (names.len() == 1).then_some(())
        })
        .await;
        let routes = proxy_routes(&agent);
        assert_eq!(routes.len(), 1, "fault {fault}: one route: {routes:?}");
        assert_eq!(proxy_processes(&agent), 1, "fault {fault}: one proxy");
        daemon.stop();
    }
    let t = clients.finish();
    eprintln!(
        "killed during switches: {} requests ok, {} failed, versions {:?}",
        t.ok,
        t.failed.len(),
        t.versions
    );
    assert!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    assert_eq!(t.versions, ["1", "2", "1"]);
    agent.cleanup(&env).await;
}

/// The agent's versions as `fleet-agent status --json` shows them (what it reports).
fn agent_slots(agent: &Agent) -> serde_json::Value {
    agent.status()["agent"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_updates_itself_on_trial_reverts_a_broken_version_and_its_services_never_notice()
{
    let env = TestEnv::load();
    let agent = Agent::new("selfupdate");
    let port = fleet_e2e::free_port();
    let daemon = agent.daemon();
    let pid = daemon.0.id();
    admin_socket_up(&agent).await;
    let out = agent.apply(&proxied_web(&env, "1", "1", port));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let containers = agent.containers(&env).await;
    let proxy_pid = agent.status()["proxy"]["pid"].clone();
    let clients = Clients::start(port);

    // A newer version (this build, installed under a newer version): the daemon installs it in
    // its slot, replaces itself with it (same process id, as under systemd), and the new
    // version commits once it has converged without touching a container.
    let data = agent.dir.path().join("data");
    // Stripped like the shipped binary: the debug build's symbols are 200 MB, over the size an
    // agent binary may have.
    let new_build = fleet_e2e::stripped_agent(&agent.dir.path().join("fleet-agent-99.0.0"));
    let started = std::time::Instant::now();
    let out = agent
        .cmd()
        .args(["self-update", "--version", "99.0.0", "--deadline", "60"])
        .arg(&new_build)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("99.0.0 committed", Duration::from_secs(30), || async {
        (agent_slots(&agent)["committed"] == "99.0.0").then_some(())
    })
    .await;
    let commit_time = started.elapsed();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, data.join("bin/99.0.0/fleet-agent"), "the same process now runs the slot");
    assert_eq!(agent.containers(&env).await, containers, "no container was touched");
    assert_eq!(agent.status()["proxy"]["pid"], proxy_pid, "the port proxy was never restarted");

    // A version that cannot run (/bin/false is an executable for this machine that exits at
    // once): restarted as systemd would, it gets three starts, then the next start puts the
    // committed version back by itself.
    let out = agent
        .cmd()
        .args(["self-update", "--version", "99.1.0", "--deadline", "60", "/bin/false"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut daemon = daemon;
    let mut restarts = 0;
    loop {
        let exited =
            eventually("the agent process ends or serves", Duration::from_secs(20), || {
                let exited = daemon.0.try_wait().unwrap();
                let serving =
                    agent_slots(&agent)["trial"].is_null() && data.join("agent.sock").exists();
                async move {
                    match exited {
                        Some(status) => Some(Some(status)),
                        None if serving => Some(None),
                        None => None,
                    }
                }
            })
            .await;
        let Some(status) = exited else { break };
        assert!(!status.success(), "the broken version fails: {status:?}");
        assert!(restarts < 5, "reverted within the start budget");
        restarts += 1;
        daemon = agent.daemon();
    }
    let slots = agent_slots(&agent);
    assert_eq!(slots["committed"], "99.0.0", "{slots}");
    assert_eq!(slots["failed"]["version"], "99.1.0", "{slots}");
    assert_eq!(slots["failed"]["reason"], "it did not commit in 3 starts", "{slots}");
    assert_eq!(
        restarts, 3,
        "the relaunch and two restarts start 99.1.0, the third restart reverts"
    );
    let pid = daemon.0.id();
    eventually("99.0.0 runs again", Duration::from_secs(20), || {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let want = data.join("bin/99.0.0/fleet-agent");
        async move { (exe == Some(want)).then_some(()) }
    })
    .await;
    assert!(!data.join("bin/99.1.0").exists() || slots["trial"].is_null());
    assert_eq!(agent.containers(&env).await, containers, "no container was touched");

    // An older version is refused, and the running one is untouched.
    let out =
        agent.cmd().args(["self-update", "--version", "1.0.0"]).arg(&new_build).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not newer than the running 99.0.0"),
        "{stderr}"
    );

    std::thread::sleep(Duration::from_millis(300));
    let t = clients.finish();
    eprintln!(
        "agent self-update: committed in {commit_time:?}; {} requests ok, {} failed through the update and the revert",
        t.ok,
        t.failed.len()
    );
    assert!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    daemon.stop();
    agent.cleanup(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_update_killed_at_any_step_ends_with_one_working_version_and_the_apps_untouched() {
    let env = TestEnv::load();
    let agent = Agent::new("selfkill");
    let port = fleet_e2e::free_port();
    let data = agent.dir.path().join("data");
    let daemon = agent.daemon();
    admin_socket_up(&agent).await;
    let out = agent.apply(&proxied_web(&env, "1", "1", port));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    daemon.stop();
    let containers = agent.containers(&env).await;
    let new_build = fleet_e2e::stripped_agent(&agent.dir.path().join("fleet-agent-new"));
    let clients = Clients::start(port);
    // Each step of an update in turn: the binary copied but not in its slot; in its slot but
    // not named by the state; named as the trial but not started; the trial's start counted
    // but not run; started but not committed. The version each must end on: the one before, or
    // the new one, never none and never half of one.
    let mut committed = None::<String>;
    for (n, (fault, ends_new)) in [
        ("slot-copy", false),
        ("slot-install", false),
        ("slot-switch", true),
        ("slot-start", true),
        ("slot-commit", true),
    ]
    .into_iter()
    .enumerate()
    {
        let version = format!("99.0.{n}");
        eprintln!("agent update killed at {fault} ({version})");
        let mut doomed = agent.daemon_with_fault(fault);
        admin_socket_up(&agent).await;
        let _ = agent
            .cmd()
            .args(["self-update", "--version", &version, "--deadline", "60"])
            .arg(&new_build)
            .output()
            .unwrap();
        let status = doomed.0.wait().unwrap();
        assert!(!status.success(), "{fault}: the agent was killed there: {status:?}");

        // Restarted as systemd would.
        let daemon = agent.daemon();
        let pid = daemon.0.id();
        let expected = if ends_new { Some(version.clone()) } else { committed.clone() };
        let want_exe = match &expected {
            Some(v) => data.join(format!("bin/{v}/fleet-agent")),
            None => fleet_e2e::bin("fleet-agent"),
        };
        eventually(
            &format!("{fault}: one version runs, committed"),
            Duration::from_secs(30),
            || {
                let slots = agent_slots(&agent);
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                let want = want_exe.clone();
                let expected = expected.clone();
                async move {
                    let committed_ok = slots["trial"].is_null()
                        && slots["committed"].as_str().map(str::to_owned) == expected;
                    (committed_ok && exe == Some(want)).then_some(())
                }
            },
        )
        .await;
        assert_eq!(agent.containers(&env).await, containers, "{fault}: no container touched");
        committed = expected;
        daemon.stop();
    }
    let t = clients.finish();
    eprintln!("agent update killed at every step: {} requests ok, {} failed", t.ok, t.failed.len());
    assert!(t.failed.is_empty(), "failed requests: {:?}", t.failed);
    // Only the committed version's slot is left (the others were removed at its commit).
    let slots: Vec<String> = std::fs::read_dir(data.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(slots, [committed.unwrap()]);
    agent.cleanup(&env).await;
}

/// What pulling `repo@digest` downloads, measured independently of the agent: the manifest's
/// blobs' Content-Length as the registry serves them.
fn registry_blob_bytes(env: &TestEnv, repo: &str, digest: &str) -> u64 {
    let base = format!("http://{}/v2/{repo}", env.registry);
    let manifest: serde_json::Value = ureq::get(&format!("{base}/manifests/{digest}"))
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    blobs.extend(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    blobs
        .iter()
        .map(|b| {
            let head = ureq::head(&format!("{base}/blobs/{b}")).call().unwrap();
            head.headers()["content-length"].to_str().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// An agent from before redb kept its state in sled. The first start of this one moves it over
/// with `fleet-agent-sled-export` (found beside `fleet-agent`): the release in force, the journal
/// and the images it may prune survive, sled's files are set aside, and nothing else changes.
#[test]
fn a_state_kept_in_sled_by_an_earlier_agent_is_moved_to_redb_at_the_first_start() {
    use fleet_agent::state::{Accepted, JournalEntry, Origin, Proven};
    use fleet_proto::UnixMillis;

    let env = TestEnv::load();
    let agent = Agent::new("sled-era");
    let v1 = release("1", &env.image("web:1").reference, &env.image("web:1").reference);
    let state_dir = agent.dir.path().join("data/state");
    {
        // Exactly what the sled-era agent wrote: JSON records in the default tree, images and
        // the journal (keys from sled's id generator, big-endian) in trees of their own.
        let db = sled::open(&state_dir).unwrap();
        let origin = Origin::Local { seq: 1 };
        let put = |k: &str, v: serde_json::Value| db.insert(k, serde_json::to_vec(&v).unwrap());
        put(
            "desired",
            serde_json::json!(Accepted {
                origin,
                release: Some(v1.clone()),
                accepted_at: UnixMillis(1)
            }),
        )
        .unwrap();
        put(
            "proven",
            serde_json::json!(Proven {
                origin,
                release: Some(v1.clone()),
                proven_at: UnixMillis(2)
            }),
        )
        .unwrap();
        put("local_seq", serde_json::json!(1)).unwrap();
        db.open_tree("images")
            .unwrap()
            .insert(env.image("web:1").reference.as_bytes(), &[])
            .unwrap();
        let journal = db.open_tree("journal").unwrap();
        for step in ["create web", "start web"] {
            let entry = JournalEntry {
                at: UnixMillis(1),
                update: "local 1".into(),
                step: step.into(),
                phase: "done".into(),
            };
            journal
                .insert(
                    db.generate_id().unwrap().to_be_bytes(),
                    serde_json::to_vec(&entry).unwrap(),
                )
                .unwrap();
        }
        db.flush().unwrap();
    }

    let status = agent.status();
    assert_eq!(status["in_force"]["release"], "e2e@1", "{status}");
    assert!(state_dir.join("state.redb").is_file());
    assert!(!state_dir.join("db").exists() && state_dir.join("sled-migrated/db").is_file());
    let state = fleet_agent::state::AgentState::open_migrating_with(&state_dir, None).unwrap();
    assert_eq!(state.known_images().unwrap(), [env.image("web:1").reference.clone()]);
    drop(state);
    assert_eq!(
        journal_lines(&agent.dir.path().join("data")),
        ["create web done", "start web done"]
    );
    // What the exporter left is what the old agent wrote: a second look changes nothing.
    assert_eq!(agent.status()["in_force"]["release"], "e2e@1");
}
