//! Secrets end to end: `fleet-server` on the shipped Mosquitto configuration, two real agents
//! on the real Docker engine, a two-service release from a Compose file with `secrets:`.
//!
//! A secret set with `fleetctl secret set` (from stdin and from a file, fleet-wide and for one
//! device) reaches each service as a file under `/run/secrets/` with the right content and
//! mode, and the device-level value wins on its device. Its value is nowhere else: not in
//! `docker inspect`, not in the server's API answers (state reports, events, the secret list),
//! not in any log line of the server, the agents or the broker, and not in the retained
//! desired state as the broker stores it (read back with a privileged MQTT client). Rotating
//! one secret re-creates exactly the service that reads it, on every device.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use fleet_e2e::fleet::{
    client, connected, receive, start_agent_logging_to, start_fleet_with, watch, Containers, Fleet,
    Killed,
};
use fleet_e2e::{bin, eventually, ok, TestEnv};
use fleet_proto::{topic, DesiredState, DeviceId, DeviceSealKey, Message, TopicKind};
use rumqttc::QoS;

/// The running, healthy container of `service` on `device`: its id and full inspect JSON.
async fn running(env: &TestEnv, device: &str, service: &str) -> Option<(String, String)> {
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
    healthy.then(|| (id, serde_json::to_string(&inspected).unwrap()))
}

/// `sh -c script` inside container `id`, its standard output.
fn exec(id: &str, script: &str) -> String {
    let out = Command::new("docker").args(["exec", id, "sh", "-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `fleetctl secret set name [args]` with `value` on its standard input.
fn set_secret(fleet: &Fleet, name: &str, args: &[&str], value: &[u8]) -> String {
    let token = std::fs::read_to_string(fleet.data().join("admin-token")).unwrap();
    let mut child = Command::new(bin("fleetctl"))
        .args(["--server", &fleet.api, "secret", "set", name])
        .args(args)
        .env("FLEET_TOKEN", token.trim())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    ok(&child.wait_with_output().unwrap())
}

/// Enrolls `id`, gives it `labels`, starts its agent with test pacing and its log in a file.
fn device(fleet: &Fleet, id: &str, labels: &[&str]) -> Killed {
    let bundle = fleet.enroll(id);
    let mut args = vec!["device", "label", id];
    args.extend(labels);
    ok(&fleet.fleetctl(&args));
    fleet_e2e::fleet::test_pacing(&bundle);
    // Debug logging: the leak check below reads the most talkative log the agent writes.
    std::fs::write(bundle.join("config.d/20-log.toml"), "[log]\nlevel = \"debug\"\n").unwrap();
    start_agent_logging_to(&bundle, &fleet.dir.path().join(format!("{id}.log")))
}

/// Every file under `dir` whose bytes contain `needle`, except under `skip`.
fn files_containing(dir: &Path, needle: &[u8], skip: &[&Path]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for e in entries.flatten() {
        let path = e.path();
        if skip.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        if path.is_dir() {
            found.extend(files_containing(&path, needle, skip));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_services_as_files_only_sealed_and_rotation_recreates_only_the_reader() {
    let env = TestEnv::load();
    let pid = std::process::id();
    // A registry login: it must reach devices sealed, like the secrets (the test registry
    // takes anonymous pulls, so it is sent and ignored).
    let registry_pw = format!("registry-pw-{pid}-Hb2");
    let login = tempfile::tempdir().unwrap();
    let password_file = login.path().join("registry-password");
    std::fs::write(&password_file, &registry_pw).unwrap();
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    let config = format!(
        "version = 1\n\n[[registries]]\nregistry = \"127.0.0.1:5000\"\nusername = \"fleet\"\npassword_file = \"{}\"\n",
        password_file.display()
    );
    let fleet = start_fleet_with(true, Some(&config)).await;
    let [a, b] = ["a", "b"].map(|n| format!("secrets-{n}-{pid}"));
    let _cleanup = [&a, &b].map(|d| Containers(d.clone()));
    let agent_a = device(&fleet, &a, &["site=depot"]);
    let _agent_b = device(&fleet, &b, &["site=lab"]);

    // Values no test fixture could contain by chance.
    let fleet_pw = format!("fleet-pw-{pid}-Qx7");
    let b_pw = format!("device-b-pw-{pid}-Zr3");
    let token_v1 = format!("token-v1-{pid}-Kd9");
    let token_v2 = format!("token-v2-{pid}-Mw4");
    let values = [&fleet_pw, &b_pw, &token_v1, &token_v2, &registry_pw];
    set_secret(&fleet, "db-password", &[], fleet_pw.as_bytes());
    set_secret(&fleet, "db-password", &["--device", &b], b_pw.as_bytes());
    let token_file = fleet.dir.path().join("token");
    std::fs::write(&token_file, &token_v1).unwrap();
    ok(&fleet.fleetctl(&[
        "secret",
        "set",
        "api-token",
        "--from-file",
        token_file.to_str().unwrap(),
    ]));
    std::fs::remove_file(&token_file).unwrap();
    let listed = ok(&fleet.fleetctl(&["secret", "ls", "--json"]));
    assert!(listed.contains("db-password") && listed.contains("api-token"), "{listed}");

    // web reads the password with its own mode; worker reads the token under another name.
    let tag = &env.image("web:1").tag;
    let compose = format!(
        "services:\n  web:\n    image: {tag}\n    secrets:\n      - source: db-password\n        mode: 0440\n  worker:\n    image: {tag}\n    secrets:\n      - source: api-token\n        target: token\nsecrets:\n  db-password: {{}}\n  api-token:\n    external: true\n"
    );
    let file = fleet.dir.path().join("compose.yaml");
    std::fs::write(&file, compose).unwrap();
    ok(&fleet.fleetctl(&["release", "create", "vault", "1", "-f", file.to_str().unwrap()]));
    let (code, release) = fleet.api("GET", "/api/v1/releases/vault@1", None).await;
    assert_eq!(code, 200, "{release}");
    for id in [&a, &b] {
        fleet.assign(id, &release["spec"]).await;
    }

    let mut web = HashMap::new();
    let mut worker = HashMap::new();
    for id in [&a, &b] {
        for (service, seen) in [("web", &mut web), ("worker", &mut worker)] {
            let (env_ref, id_ref) = (&env, id.as_str());
            let found = eventually(
                &format!("{service} healthy on {id}"),
                Duration::from_secs(90),
                || async move { running(env_ref, id_ref, service).await },
            )
            .await;
            seen.insert(id.clone(), found);
        }
    }

    // The files, their content and mode; the device's own value wins on b.
    for (id, pw) in [(&a, &fleet_pw), (&b, &b_pw)] {
        let (web_id, _) = &web[id];
        assert_eq!(exec(web_id, "cat /run/secrets/db-password"), *pw, "on {id}");
        assert_eq!(exec(web_id, "stat -c %a /run/secrets/db-password").trim(), "440");
        assert!(exec(web_id, "touch /run/secrets/db-password 2>&1 || echo read-only")
            .contains("read-only"));
        let (worker_id, _) = &worker[id];
        assert_eq!(exec(worker_id, "cat /run/secrets/token"), token_v1);
        assert_eq!(
            exec(worker_id, "stat -c %a /run/secrets/token").trim(),
            "444",
            "Compose's default"
        );
        assert!(exec(worker_id, "ls /run/secrets").trim() == "token", "only its own secret");
        assert!(!exec(web_id, "env").contains(pw.as_str()), "never in the environment");
    }

    // The retained desired state, as the broker keeps it, read by a privileged client.
    let broker = fleet.broker_dir();
    let (reader, events) = client(
        &format!("secret-reader-{pid}"),
        fleet.mqtt_port,
        &broker.join("ca.pem"),
        &fleet.server_identity_files().0,
        &fleet.server_identity_files().1,
    );
    let mut seen = watch(events);
    connected(&mut seen, "the privileged reader").await;
    for id in [&a, &b] {
        let t = topic(&DeviceId::new(id.as_str()).unwrap(), TopicKind::Desired);
        reader.subscribe(&t, QoS::AtLeastOnce).await.unwrap();
        let payload = receive(&mut seen, &t).await;
        for v in values {
            assert!(
                !payload.windows(v.len()).any(|w| w == v.as_bytes()),
                "{v} in the retained desired state of {id}"
            );
        }
        let Message::Desired(signed) = Message::decode(&payload).unwrap() else {
            panic!("not a desired state")
        };
        // What is there: every mounted secret and the login, sealed, and only this device's
        // key opens them to the values set for it.
        let bundle = fleet.dir.path().join(id.as_str());
        let config = fleet_agent::config::Config::load(&bundle.join("config.toml"), true).unwrap();
        let state: DesiredState = signed.open(&config.link.unwrap().server_keys).unwrap();
        assert!(state.registry_credentials.is_empty(), "no login in the clear");
        assert!(!state.sealed_registry_credentials.is_empty());
        let key: [u8; 32] =
            std::fs::read(bundle.join("data/secret.key")).unwrap().try_into().unwrap();
        let key = DeviceSealKey::from_bytes(key);
        let mut opened: Vec<(String, String)> = state
            .secrets
            .iter()
            .map(|s| {
                let aad = fleet_proto::seal::secret_aad(id, &s.name, &s.digest);
                (s.name.clone(), String::from_utf8(key.open(&s.sealed, &aad).unwrap()).unwrap())
            })
            .collect();
        opened.sort();
        let pw = if *id == a { &fleet_pw } else { &b_pw };
        assert_eq!(
            opened,
            [("api-token".to_owned(), token_v1.clone()), ("db-password".to_owned(), pw.clone())]
        );
        let other = DeviceSealKey::generate().unwrap();
        assert!(other.open(&state.secrets[0].sealed, b"").is_err());
    }

    // A report forged for an enrolled device whose agent has not reported yet (by anyone who
    // can publish on its topic: here the privileged client; on the embedded broker, any local
    // process), with the forger's sealing key: without a proof by the device's certificate key
    // the server takes no key, so nothing is ever sealed to the forger. (A device that has a
    // key is also protected by the 10-minute limit on key changes; this one has none.)
    let c = format!("secrets-c-{pid}");
    fleet.enroll(&c);
    let device_c = DeviceId::new(c.as_str()).unwrap();
    let forger = DeviceSealKey::generate().unwrap();
    for proof in [None, Some("3006020101020101".to_owned())] {
        let forged = fleet_proto::StateReport {
            device: device_c.clone(),
            reported_at: fleet_proto::UnixMillis::now(),
            accepted_generation: 0,
            in_force: None,
            services: vec![],
            update: Default::default(),
            inventory: None,
            seal_key: Some(forger.public()),
            agent: None,
            seal_key_proof: proof,
        };
        reader
            .publish(
                topic(&device_c, TopicKind::Report),
                QoS::AtLeastOnce,
                false,
                Message::Report(forged).encode(),
            )
            .await
            .unwrap();
    }
    let fleet_ref = &fleet;
    let c_ref = c.as_str();
    let seen = eventually("the forged reports heard", Duration::from_secs(10), || async move {
        let (code, d) = fleet_ref.api("GET", &format!("/api/v1/devices/{c_ref}"), None).await;
        assert_eq!(code, 200, "{d}");
        (d["online"] == true).then_some(d)
    })
    .await;
    assert!(seen["seal_key"].is_null(), "the forger's key was taken: {seen}");
    let log = std::fs::read_to_string(fleet.dir.path().join("server.log")).unwrap();
    assert!(
        log.contains("has no valid proof by the device's certificate key"),
        "the server said nothing"
    );

    // Rotation: the token changes, only worker is re-created, on both devices.
    let said = set_secret(&fleet, "api-token", &[], token_v2.as_bytes());
    assert!(said.contains("2 device(s) re-targeted"), "{said}");
    for id in [&a, &b] {
        let (env_ref, id_ref, old) = (&env, id.as_str(), worker[id].0.clone());
        let (new_id, _) =
            eventually(&format!("worker re-created on {id}"), Duration::from_secs(60), || {
                let old = old.clone();
                async move { running(env_ref, id_ref, "worker").await.filter(|(id, _)| *id != old) }
            })
            .await;
        assert_eq!(exec(&new_id, "cat /run/secrets/token"), token_v2);
    }
    // Let any stray re-creation show itself before comparing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [&a, &b] {
        let (now, _) = running(&env, id, "web").await.unwrap();
        assert_eq!(now, web[id].0, "web on {id} does not read the token: kept");
    }

    // A reboot of a: the agent is gone, the secrets directory (a tmpfs on a device) is empty,
    // and the engine starts its containers on its own: web cannot start without its file
    // (never with an empty directory in its place). The agent comes back, writes the files
    // again from their sealed records, and its first converge starts web, same container.
    drop(agent_a);
    let bundle_a = fleet.dir.path().join(a.as_str());
    let secret_dir = bundle_a.join("data/secrets");
    assert!(secret_dir.join("vault/web").is_dir(), "files under the configured [secrets] dir");
    std::fs::remove_dir_all(&secret_dir).unwrap();
    let restart = Command::new("docker").args(["restart", "-t", "1", &web[&a].0]).output().unwrap();
    assert!(!restart.status.success(), "web started without its secret file");
    let _agent_a = start_agent_logging_to(&bundle_a, &fleet.dir.path().join(format!("{a}-2.log")));
    let (env_ref, a_ref) = (&env, a.as_str());
    let (again, _) = eventually("web running again on a", Duration::from_secs(60), || async move {
        running(env_ref, a_ref, "web").await
    })
    .await;
    assert_eq!(again, web[&a].0, "started, not re-created");
    assert_eq!(exec(&again, "cat /run/secrets/db-password"), fleet_pw);

    // Nowhere else: docker inspect, the server's answers, the logs, the server's store.
    let mut inspected: Vec<String> =
        web.values().chain(worker.values()).map(|(_, j)| j.clone()).collect();
    for id in [&a, &b] {
        for s in ["web", "worker"] {
            inspected.push(running(&env, id, s).await.unwrap().1);
        }
    }
    let mut answers = vec![ok(&fleet.fleetctl(&["secret", "ls", "--json"]))];
    for id in [&a, &b] {
        answers.push(fleet.api("GET", &format!("/api/v1/devices/{id}"), None).await.1.to_string());
        answers.push(ok(&fleet.fleetctl(&["device", "show", id, "--json"])));
        answers.push(
            fleet.api("GET", &format!("/api/v1/devices/{id}/events"), None).await.1.to_string(),
        );
    }
    answers.push(fleet.api("GET", "/api/v1/audit", None).await.1.to_string());
    for v in values {
        for (i, text) in inspected.iter().chain(answers.iter()).enumerate() {
            assert!(!text.contains(v.as_str()), "{v} in answer or inspect #{i}: {text}");
        }
        // The fleet directory holds the server's store and log, the broker's log and store,
        // and both agents' logs; an agent's data directory holds the files it mounts (by
        // design, 0700), and those alone may contain a value.
        let agent_files: Vec<_> =
            [&a, &b].map(|d| fleet.dir.path().join(d).join("data/secrets")).into();
        let skip: Vec<&Path> =
            agent_files.iter().map(|p| p.as_path()).chain([token_file.as_path()]).collect();
        let leaks = files_containing(fleet.dir.path(), v.as_bytes(), &skip);
        assert!(leaks.is_empty(), "{v} found in {leaks:?}");
    }
}
