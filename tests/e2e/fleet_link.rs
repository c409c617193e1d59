//! The whole path, as an operator sets it up: `fleet-server` on a Mosquitto configured with
//! `packaging/mosquitto/`, a device enrolled with `fleetctl device enroll`, and the real
//! `fleet-agent` started on that bundle as is, on the real Docker engine. The server publishes
//! a signed desired state; the agent runs it and reports; commands go there and back; a
//! desired state signed by anyone else is refused, reported as an event, and changes nothing.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use fleet_e2e::fleet::{client, connected, start_agent, start_fleet, watch, Containers, Fleet};
use fleet_e2e::{eventually, TestEnv};
use fleet_proto::release::{HealthCheck, Probe, ResourceLimits, RestartPolicy, UpdateStrategy};
use fleet_proto::{
    topic, DesiredState, DeviceId, ImageRef, Message, ReleaseId, ReleaseSpec, ServerKey,
    ServiceName, ServiceSpec, TopicKind, UnixMillis,
};
use rumqttc::QoS;

fn release(version: &str, image: &str) -> ReleaseSpec {
    let web = ServiceSpec {
        healthcheck: Some(HealthCheck {
            probe: Probe::Image,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::ZERO,
        }),
        restart: RestartPolicy::UnlessStopped,
        update: UpdateStrategy::StopFirst,
        health_deadline: Duration::from_secs(20),
        resources: ResourceLimits { memory_bytes: Some(64 << 20), ..ResourceLimits::default() },
        ..ServiceSpec::new(ServiceName::new("web").unwrap(), ImageRef::parse(image).unwrap())
    };
    ReleaseSpec {
        id: ReleaseId::new(format!("linked@{version}")).unwrap(),
        app: "linked".into(),
        version: version.into(),
        services: vec![web],
    }
}

async fn device(fleet: &Fleet, id: &str) -> serde_json::Value {
    let (code, body) = fleet.api("GET", &format!("/api/v1/devices/{id}"), None).await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_runs_what_the_server_publishes_and_refuses_forgeries() {
    let env = TestEnv::load();
    let fleet = start_fleet().await;
    let id = format!("linked-{}", std::process::id());
    let _containers = Containers(id.clone());
    let bundle = fleet.enroll(&id);
    fleet_e2e::fleet::test_pacing(&bundle);
    let agent = start_agent(&bundle, true);

    // Online through its retained status over mutual TLS.
    let fleet_ref = &fleet;
    let id_ref = id.as_str();
    eventually("the agent to be online", Duration::from_secs(30), || async move {
        (device(fleet_ref, id_ref).await["online"] == true).then_some(())
    })
    .await;
    // Its inventory reaches the server with its reports: this host, and the engine it runs on.
    let inventory =
        eventually("the inventory on the server", Duration::from_secs(30), || async move {
            let d = device(fleet_ref, id_ref).await;
            (!d["inventory"].is_null()).then(|| d["inventory"].clone())
        })
        .await;
    assert_eq!(inventory["arch"], std::env::consts::ARCH, "{inventory}");
    assert_eq!(inventory["engine"]["name"], "docker", "{inventory}");
    assert!(inventory["memory_bytes"].as_u64().unwrap() > 0, "{inventory}");

    // The server publishes a signed desired state; the agent runs it and reports it.
    let v1 = release("1", &env.image("web:1").reference);
    let (code, published) = fleet
        .api(
            "PUT",
            &format!("/api/v1/devices/{id}/desired"),
            Some(serde_json::json!({ "release": v1 })),
        )
        .await;
    assert_eq!(code, 200, "{published}");
    let generation = published["generation"].as_u64().unwrap();
    eventually("the release to be in force and reported", Duration::from_secs(60), || async move {
        let d = device(fleet_ref, id_ref).await;
        (d["release"] == "linked@1" && d["accepted_generation"] == generation).then_some(())
    })
    .await;

    // Commands: restart the service, fetch its log; each answered once.
    let restart = fleet.fleetctl(&["device", "restart", &id, "web"]);
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    let logs = fleet.fleetctl(&["device", "logs", &id, "web", "--tail", "5", "--json"]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    let result: serde_json::Value = serde_json::from_slice(&logs.stdout).unwrap();
    assert!(result["outcome"]["Done"].is_object(), "{result}");
    let reboot = fleet.fleetctl(&["device", "reboot", &id]);
    assert_eq!(reboot.status.code(), Some(2), "reboot is off by default");
    assert!(
        String::from_utf8_lossy(&reboot.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&reboot.stderr)
    );

    // A forgery through the broker (as a compromised server identity would send it): a newer
    // generation, signed by a key the device does not trust.
    let broker = fleet.broker_dir();
    let (intruder, events) = client(
        "intruder",
        fleet.mqtt_port,
        &broker.join("ca.pem"),
        &fleet.server_identity_files().0,
        &fleet.server_identity_files().1,
    );
    let mut seen = watch(events);
    connected(&mut seen, "the intruder").await;
    let forged = DesiredState {
        device: DeviceId::new(&id).unwrap(),
        generation: generation + 10,
        release: Some(release("666", &env.image("web:2").reference)),
        pin: None,
        issued_at: UnixMillis::now(),
        registry_credentials: vec![],
        secrets: vec![],
        sealed_registry_credentials: vec![],
        agent: None,
    };
    let signed = ServerKey::from_seed(&[7; 32]).sign(&forged);
    let device_id = DeviceId::new(&id).unwrap();
    intruder
        .publish(
            topic(&device_id, TopicKind::Desired),
            QoS::AtLeastOnce,
            true,
            Message::Desired(signed).encode(),
        )
        .await
        .unwrap();
    let rejected = eventually(
        "the forgery to be reported as an event",
        Duration::from_secs(30),
        || async move {
            let (_, events) =
                fleet_ref.api("GET", &format!("/api/v1/devices/{id_ref}/events"), None).await;
            events.as_array()?.iter().find(|e| e["kind"] == "Rejected").cloned()
        },
    )
    .await;
    assert!(rejected["message"].as_str().unwrap().contains("key"), "{rejected}");
    let d = device(&fleet, &id).await;
    assert_eq!(d["release"], "linked@1", "the forgery changed nothing: {d}");
    assert_eq!(d["accepted_generation"], generation);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_agent_updates_itself_reconnects_with_its_identity_and_then_commits() {
    let env = TestEnv::load();
    let fleet = start_fleet().await;
    let id = format!("selflink-{}", std::process::id());
    let _containers = Containers(id.clone());
    let bundle = fleet.enroll(&id);
    fleet_e2e::fleet::test_pacing(&bundle);
    let agent = start_agent(&bundle, false);
    let pid = agent.0.id();
    let fleet_ref = &fleet;
    let id_ref = id.as_str();
    eventually("the agent to be online", Duration::from_secs(30), || async move {
        (device(fleet_ref, id_ref).await["online"] == true).then_some(())
    })
    .await;
    fleet
        .assign(&id, &serde_json::to_value(release("1", &env.image("web:1").reference)).unwrap())
        .await;
    eventually("the release in force", Duration::from_secs(60), || async move {
        (device(fleet_ref, id_ref).await["release"] == "linked@1").then_some(())
    })
    .await;
    let containers_before = Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter", &format!("label=io.fleet.device={id}")])
        .output()
        .unwrap()
        .stdout;

    // The same build as 99.0.0, stripped like a shipped binary, through the local command.
    let new_build = fleet_e2e::stripped_agent(&bundle.join("fleet-agent-99.0.0"));
    let slots_file = bundle.join("data/slots.json");
    let started = std::time::Instant::now();
    let out = Command::new(fleet_e2e::bin("fleet-agent"))
        .arg("--config")
        .arg(bundle.join("config.toml"))
        .args(["self-update", "--version", "99.0.0"])
        .arg(&new_build)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The server's view of the link, every 20 ms, until the new version has committed: how
    // long the device was offline, if the server noticed at all.
    let (mut offline_since, mut downtime) = (None, Duration::ZERO);
    let committed_after = loop {
        let online = device(&fleet, &id).await["online"] == true;
        match (online, offline_since) {
            (false, None) => offline_since = Some(std::time::Instant::now()),
            (true, Some(since)) => {
                downtime += since.elapsed();
                offline_since = None;
            }
            _ => {}
        }
        let slots: serde_json::Value = std::fs::read(&slots_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if slots["committed"] == "99.0.0" && online {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not committed: {slots}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, bundle.join("data/bin/99.0.0/fleet-agent"));
    let containers_after = Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter", &format!("label=io.fleet.device={id}")])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(containers_after, containers_before, "no container restarted");
    // The server learns the agent's versions from its report.
    eventually("the server to see 99.0.0 committed", Duration::from_secs(30), || async move {
        let d = device(fleet_ref, id_ref).await;
        (d["last_report"]["agent"]["committed"] == "99.0.0").then_some(())
    })
    .await;
    let show = fleet.fleetctl(&["device", "show", &id]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("committed 99.0.0"), "{shown}");
    // Still answering the server as itself.
    let logs = fleet.fleetctl(&["device", "logs", &id, "web", "--tail", "1", "--json"]);
    assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
    eprintln!(
        "linked agent self-update: committed {committed_after:?} after the command; offline as the server saw it: {downtime:?}"
    );
    drop(agent);
}

/// Issue 24's fleet-level case: on a device with the default `[policy]` (and one directory it
/// lets services bind, where a container planted `x -> /`), a release asking for
/// `CAP_SYS_ADMIN`, `/dev/mem`, the host's pid namespace and a bind through that link is shown
/// as unsatisfiable by `rollout plan` (the three reasons the server can know from the policy
/// the agent reported), and, published anyway, refused by the device with all four reasons
/// while nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_beyond_the_devices_policy_is_shown_by_rollout_plan_and_refused_with_every_reason(
) {
    let env = TestEnv::load();
    let fleet = start_fleet().await;
    let id = format!("policy-{}", std::process::id());
    let _containers = Containers(id.clone());
    let bundle = fleet.enroll(&id);
    fleet_e2e::fleet::test_pacing(&bundle);
    let maps = bundle.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    std::os::unix::fs::symlink("/", maps.join("x")).unwrap();
    std::fs::write(
        bundle.join("config.d/20-policy.toml"),
        format!("[policy]\nallowed_host_paths = [\"{}\"]\n", maps.display()),
    )
    .unwrap();
    let _agent = start_agent(&bundle, true);

    // The agent reports its policy with its inventory.
    let (fleet_ref, id_ref) = (&fleet, id.as_str());
    let policy = eventually("the policy on the server", Duration::from_secs(30), || async move {
        let d = device(fleet_ref, id_ref).await;
        let policy = &d["inventory"]["policy"];
        (!policy.is_null()).then(|| policy.clone())
    })
    .await;
    assert_eq!(policy["allow_host_namespaces"], serde_json::json!(["network"]), "{policy}");
    assert_eq!(policy["allow_privileged"], false, "{policy}");

    let compose = format!(
        "services:\n  tools:\n    image: {}\n    cap_add: [SYS_ADMIN]\n    devices: [\"/dev/mem:/dev/mem\"]\n    pid: host\n    volumes: [\"{}/x/etc:/host-etc:ro\"]\n",
        env.image("web:1").tag,
        maps.display()
    );
    let file = fleet.dir.path().join("policy.yaml");
    std::fs::write(&file, compose).unwrap();
    fleet_e2e::ok(&fleet.fleetctl(&[
        "release",
        "create",
        "escape",
        "1",
        "-f",
        file.to_str().unwrap(),
    ]));

    // Pre-flight shows the device cannot run it, and why, before anything is sent.
    let target = format!("devices:{id}");
    let plan = fleet_e2e::ok(
        &fleet.fleetctl(&["--json", "rollout", "plan", "escape@1", "--target", &target]),
    );
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["unsatisfiable"][0][0], id.as_str(), "{plan}");
    let reasons: Vec<&str> = plan["unsatisfiable"][0][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let expected = [
        "service tools: security.cap_add[0]: CAP_SYS_ADMIN is beyond Docker's default set",
        "service tools: host_namespaces[0]: the host's pid namespace is not shared",
        "service tools: hardware[0]: /dev/mem is all physical memory (/dev/mem)",
    ];
    assert_eq!(reasons.len(), expected.len(), "{reasons:#?}");
    for want in expected {
        assert!(reasons.iter().any(|r| r.starts_with(want)), "{want}: {reasons:#?}");
    }
    let refused = fleet.fleetctl(&["rollout", "create", "escape@1", "--target", &target]);
    assert!(!refused.status.success(), "a rollout does not start on it: {refused:?}");

    // Published to the device directly, the device judges for itself: the three, and the link
    // only it can see. Nothing starts.
    let (code, release) = fleet.api("GET", "/api/v1/releases/escape@1", None).await;
    assert_eq!(code, 200, "{release}");
    fleet.assign(&id, &release["spec"]).await;
    let reason = eventually("the device's refusal", Duration::from_secs(60), || async move {
        let d = device(fleet_ref, id_ref).await;
        let failed = &d["last_report"]["update"]["last_outcome"]["result"]["Failed"]["reason"];
        failed.as_str().map(str::to_owned)
    })
    .await;
    assert!(reason.starts_with("unsatisfiable on this device"), "{reason}");
    for want in [
        "services[0].security.cap_add[0]: CAP_SYS_ADMIN is beyond Docker's default set",
        "[policy] allowed_capabilities",
        "services[0].host_namespaces[0]: the host's pid namespace is not shared",
        "[policy] allow_host_namespaces",
        "services[0].hardware[0]: /dev/mem is all physical memory",
        "[policy] allowed_devices",
        "services[0].volumes[0].source: host path",
        "passes through the symbolic link",
    ] {
        assert!(reason.contains(want), "{want}: {reason}");
    }
    let running = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=io.fleet.device={id}")])
        .output()
        .unwrap()
        .stdout;
    assert!(running.is_empty(), "no container was created");
}
