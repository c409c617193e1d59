//! Multi-service releases on the real engine, from Compose files through the server's converter
//! to `fleet-agent apply`: services reach each other by name on their app's own network, named
//! volumes keep their data across updates and rollbacks, a departed app's data goes only when
//! purged, and host paths bind only where the agent's configuration allows.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use fleet_agent::runtime::docker::DockerRuntime;
use fleet_agent::runtime::ContainerRuntime;
use fleet_e2e::agent::Agent;
use fleet_e2e::{eventually, free_port, TestEnv};
use fleet_proto::{ImageRef, ReleaseSpec};
use fleet_server::compose::Compose;

/// The Compose file as the server converts it, with the test images' digests as the registry
/// would resolve them. `app` and `version` make the release id.
fn from_compose(env: &TestEnv, app: &str, version: &str, yaml: &str) -> ReleaseSpec {
    let parsed = Compose::parse(yaml.as_bytes(), &BTreeMap::new())
        .unwrap_or_else(|p| panic!("compose refused: {p:#?}"));
    let digests: BTreeMap<String, ImageRef> = parsed
        .images()
        .into_iter()
        .map(|u| {
            let key = u.reference.rsplit('/').next().unwrap().to_owned();
            (u.reference, ImageRef::parse(&env.image(&key).reference).unwrap())
        })
        .collect();
    parsed.into_release(app, version, &digests).unwrap_or_else(|p| panic!("{p:#?}"))
}

fn outcome(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("/usr/bin/docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The labels of a network or volume (`kind`), as JSON.
fn labels_of(kind: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&docker(&[kind, "inspect", "--format", "{{json .Labels}}", name]))
        .unwrap_or(serde_json::Value::Null)
}

/// What the named volume holds in `file` (the engine's local driver keeps it on the host).
fn volume_file(volume: &str, file: &str) -> String {
    let mountpoint = docker(&["volume", "inspect", "--format", "{{.Mountpoint}}", volume]);
    std::fs::read_to_string(format!("{mountpoint}/{file}")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reaches_its_broker_by_service_name_and_alias_on_the_apps_network() {
    let env = TestEnv::load();
    let agent = Agent::new("stack");
    let port = free_port();
    let broker = &env.image("broker:1").tag;
    // The seed's IoT shape: a broker, and a gateway that publishes to it by name. The gateway is
    // on the backend network only, where the broker also answers to the alias `broker`.
    let yaml = format!(
        r#"
services:
  mqtt:
    image: {broker}
    ports: ["{port}:1883"]
    networks:
      default:
      backend: {{aliases: [broker]}}
    healthcheck:
      test: ["CMD", "mosquitto_pub", "-h", "127.0.0.1", "-t", "health", "-m", "ok"]
      interval: 1s
      timeout: 2s
      retries: 20
  gateway:
    image: {broker}
    depends_on: {{mqtt: {{condition: service_healthy}}}}
    networks: [backend]
    command: ["sh", "-c", "while true; do mosquitto_pub -h mqtt -t fleet/by-name -m from-gateway -r && mosquitto_pub -h broker -t fleet/by-alias -m from-gateway -r; sleep 1; done"]
networks:
  backend: {{}}
"#
    );
    let release = from_compose(&env, "iot", "1", &yaml);
    let out = agent.apply(&release);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(outcome(&out)["result"], "Applied");

    // Read back, through the broker's published port, what the gateway sent by both names.
    let got = eventually("the gateway's retained messages", Duration::from_secs(30), || async {
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "fleet/#",
                "-v",
                "-C",
                "2",
                "-W",
                "3",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text.contains("fleet/by-name from-gateway")
            && text.contains("fleet/by-alias from-gateway"))
        .then_some(text)
    })
    .await;
    eprintln!("read back: {got}");

    // Both networks are the app's, labelled as the agent's; the engine's bridge is not used.
    for name in ["default", "backend"] {
        let net = format!("{}_iot_{name}", agent.device);
        let labels = labels_of("network", &net);
        assert_eq!(labels["io.fleet.app"], "iot", "{net}: {labels}");
        assert_eq!(labels["io.fleet.network"], name);
        assert_eq!(labels["io.fleet.device"], agent.device.as_str());
    }
    let gateway =
        agent.containers(&env).await.into_keys().find(|n| n.contains("-gateway-")).unwrap();
    let nets = docker(&[
        "inspect",
        "--format",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        &gateway,
    ]);
    assert_eq!(
        nets,
        format!("{}_iot_backend", agent.device),
        "the gateway is on the backend network only"
    );

    agent.cleanup(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_volume_data_survives_updates_and_rollbacks_and_goes_only_when_purged() {
    let env = TestEnv::load();
    let agent = Agent::new("volumes");
    // Each version appends its name to the volume at start, then serves as usual.
    let compose = |image: &str| {
        format!(
            r#"
services:
  store:
    image: {}
    command: ["sh", "-c", "echo $$FLEET_TEST_VERSION >> /data/log; exec /bin/fleet-httpd"]
    volumes: ["data:/data"]
    x-fleet: {{health_deadline: 8s}}
volumes:
  data: {{}}
"#,
            env.image(image).tag
        )
    };
    let v1 = from_compose(&env, "store", "1", &compose("web:1"));
    let v2 = from_compose(&env, "store", "2", &compose("web:2"));
    // v3 never gets healthy: the agent rolls it back to v1 by itself.
    let bad = from_compose(&env, "store", "3", &compose("unhealthy:1"));
    assert_eq!(outcome(&agent.apply(&v1))["result"], "Applied");
    assert_eq!(volume_file("store_data", "log"), "1\n");
    let labels = labels_of("volume", "store_data");
    assert_eq!(labels["io.fleet.app"], "store", "{labels}");
    assert_eq!(labels["io.fleet.volume"], "store_data");

    assert_eq!(outcome(&agent.apply(&v2))["result"], "Applied");
    assert_eq!(volume_file("store_data", "log"), "1\n2\n", "v2 mounts v1's volume");
    // An operator's rollback to v1 (applying it again) finds both versions' data.
    assert_eq!(outcome(&agent.apply(&v2_back_to(&v1)))["result"], "Applied");
    assert_eq!(volume_file("store_data", "log"), "1\n2\n1\n");
    // A health-gated automatic rollback keeps it too.
    let out = outcome(&agent.apply(&bad));
    assert!(out["result"].get("RolledBack").is_some(), "{out}");
    let log = volume_file("store_data", "log");
    assert!(log.starts_with("1\n2\n1\n") && log.ends_with("1\n"), "{log:?}");

    // The device moves to another app: the old app's network goes, its data stays.
    let other = from_compose(&env, "other", "1", &compose("web:1").replace("data:", "cache:"));
    assert_eq!(outcome(&agent.apply(&other))["result"], "Applied");
    let old_net = format!("name=^{}_store_default$", agent.device);
    assert!(docker(&["network", "ls", "-q", "--filter", &old_net]).is_empty());
    assert!(volume_file("store_data", "log").starts_with("1\n2\n"));
    // Only an explicit purge (here the engine call it makes) deletes it.
    let rt = DockerRuntime::connect(&env.docker_host, Duration::from_secs(60)).await.unwrap();
    rt.remove_volume("store_data").await.unwrap();
    assert!(docker(&["volume", "ls", "-q", "--filter", "name=^store_data$"]).is_empty());
    // A volume in use is refused by the engine, and its data stays.
    assert!(rt.remove_volume("other_cache").await.is_err());
    assert!(!docker(&["volume", "ls", "-q", "--filter", "name=^other_cache$"]).is_empty());
    agent.cleanup(&env).await;
}

/// `v1` under a new version: applying the same release again would be a no-op by design.
fn v2_back_to(v1: &ReleaseSpec) -> ReleaseSpec {
    let mut back = v1.clone();
    back.version = "1-again".into();
    back.id = fleet_proto::ReleaseId::new("store@1-again").unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_paths_bind_only_under_the_configured_directories() {
    let env = TestEnv::load();
    let allowed = tempfile::tempdir().unwrap();
    std::fs::write(allowed.path().join("site.conf"), "site=a\n").unwrap();
    let agent = Agent::with_config(
        "binds",
        &format!("[policy]\nallowed_host_paths = [\"{}\"]\n", allowed.path().display()),
    );
    let compose = |source: &str| {
        format!(
            "services:\n  app:\n    image: {}\n    command: [\"sh\", \"-c\", \"cat /cfg/site.conf && exec /bin/fleet-httpd\"]\n    volumes: [\"{source}:/cfg:ro\"]\n",
            env.image("web:1").tag
        )
    };
    let refused = agent.apply(&from_compose(&env, "binds", "1", &compose("/etc")));
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("bind mount of host path \"/etc\" is not allowed"), "{why}");
    assert!(why.contains("allowed_host_paths"), "{why}");
    assert!(agent.containers(&env).await.is_empty(), "nothing was created");

    let ok = agent.apply(&from_compose(
        &env,
        "binds",
        "2",
        &compose(&allowed.path().display().to_string()),
    ));
    assert_eq!(outcome(&ok)["result"], "Applied");
    let (_, (id, _)) = agent.containers(&env).await.into_iter().next().unwrap();
    assert!(docker(&["logs", &id]).contains("site=a"));

    // The running app writes into its allowed directory; a link to / planted there must not
    // give the next release the host's root. Refused at admission, and v2 keeps running.
    std::os::unix::fs::symlink("/", allowed.path().join("x")).unwrap();
    let planted = allowed.path().join("x").join("etc");
    let refused =
        agent.apply(&from_compose(&env, "binds", "3", &compose(&planted.display().to_string())));
    assert_ne!(refused.status.code(), Some(0), "{refused:?}");
    let why = fleet_e2e::all_output(&refused);
    assert!(why.contains("passes through the symbolic link"), "{why}");
    let (_, (still, _)) = agent.containers(&env).await.into_iter().next().unwrap();
    assert_eq!(still, id, "the running release was not touched");

    // A capability that gives a container the host, on a default-configured device.
    let admin = format!(
        "services:\n  app:\n    image: {}\n    cap_add: [SYS_ADMIN]\n",
        env.image("web:1").tag
    );
    let refused = agent.apply(&from_compose(&env, "binds", "4", &admin));
    assert_ne!(refused.status.code(), Some(0), "{refused:?}");
    let why = fleet_e2e::all_output(&refused);
    assert!(why.contains("CAP_SYS_ADMIN is beyond Docker's default set"), "{why}");
    assert!(why.contains("[policy] allowed_capabilities"), "{why}");

    // A device node that gives a container the host: the kernel log, writable (the issue's
    // own example; /dev/mem does not exist on every machine these tests run on).
    let mem = format!(
        "services:\n  app:\n    image: {}\n    devices: [\"/dev/kmsg:/dev/kmsg\"]\n",
        env.image("web:1").tag
    );
    let refused = agent.apply(&from_compose(&env, "binds", "5", &mem));
    assert_ne!(refused.status.code(), Some(0), "{refused:?}");
    let why = fleet_e2e::all_output(&refused);
    assert!(why.contains("/dev/kmsg is the kernel log, writable"), "{why}");
    let (_, (still, _)) = agent.containers(&env).await.into_iter().next().unwrap();
    assert_eq!(still, id, "the running release was not touched");
    agent.cleanup(&env).await;
}
