//! The shipped binaries as a user runs them: `fleet-server` on embedded defaults, `fleetctl`
//! against it, exit codes scripts rely on, graceful shutdown on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fleet_e2e::{bin, eventually, free_port};
use fleet_proto::{samples, topic, Message, TopicKind};
use rumqttc::{AsyncClient, MqttOptions, QoS};

struct Server {
    child: Child,
    api: String,
    mqtt_port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server() -> Server {
    let data = tempfile::tempdir().unwrap();
    let (api_port, mqtt_port) = (free_port(), free_port());
    let child = Command::new(bin("fleet-server"))
        .arg("--data")
        .arg(data.path())
        .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{api_port}");
    let health = format!("{api}/healthz");
    eventually("fleet-server to answer /healthz", Duration::from_secs(30), || {
        let health = health.clone();
        async move {
            tokio::task::spawn_blocking(move || ureq::get(&health).call().ok())
                .await
                .unwrap()
                .map(|_| ())
        }
    })
    .await;
    Server { child, api, mqtt_port, _data: data }
}

fn fleetctl(server: &str, args: &[&str]) -> Output {
    Command::new(bin("fleetctl")).args(["--server", server]).args(args).output().unwrap()
}

impl Server {
    /// `fleetctl` against this server with its admin token.
    fn fleetctl(&self, args: &[&str]) -> Output {
        let token = std::fs::read_to_string(self._data.path().join("admin-token")).unwrap();
        Command::new(bin("fleetctl"))
            .args(["--server", &self.api])
            .env("FLEET_TOKEN", token.trim())
            .args(args)
            .output()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_enrolls_a_device_and_lists_it_once_it_reports() {
    let server = start_server().await;
    let bundle = tempfile::tempdir().unwrap();
    let out = bundle.path().join("robot-7");
    let enrolled = server.fleetctl(&[
        "device",
        "enroll",
        "robot-7",
        "--label",
        "site=depot",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(enrolled.status.success(), "{}", String::from_utf8_lossy(&enrolled.stderr));
    for file in ["config.toml", "ca.pem", "device.pem", "device.key", "broker-password"] {
        assert!(out.join(file).exists(), "bundle lacks {file}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("device.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the device key is private");
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("device_id = \"robot-7\""), "{config}");
    assert!(
        config.contains(&format!("broker = \"mqtt://127.0.0.1:{}\"", server.mqtt_port)),
        "{config}"
    );
    // The same id again is a conflict (exit 2), and the bundle directory is never overwritten.
    let again = server.fleetctl(&["device", "enroll", "robot-7", "--out", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let conflict = server.fleetctl(&[
        "device",
        "enroll",
        "robot-7",
        "--out",
        bundle.path().join("second").to_str().unwrap(),
    ]);
    assert_eq!(conflict.status.code(), Some(2), "{}", String::from_utf8_lossy(&conflict.stderr));

    // The embedded broker logs a device in with the password its bundle holds.
    let password = std::fs::read_to_string(out.join("broker-password")).unwrap();
    let mut options = MqttOptions::new("robot-7", "127.0.0.1", server.mqtt_port);
    options.set_credentials("robot-7", password.clone());
    // Without the password, or with it under another client id, the broker refuses.
    for (client_id, password) in [("robot-7", None), ("robot-8", Some(password.clone()))] {
        let mut refused = MqttOptions::new(client_id, "127.0.0.1", server.mqtt_port);
        if let Some(p) = password {
            refused.set_credentials("robot-7", p);
        }
        let (_c, mut events) = AsyncClient::new(refused, 10);
        let answer = tokio::time::timeout(Duration::from_secs(10), events.poll()).await.unwrap();
        assert!(answer.is_err(), "{client_id} connected without its login: {answer:?}");
    }
    let (client, mut events) = AsyncClient::new(options, 10);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    client
        .publish(
            topic(&samples::device(), TopicKind::Status),
            QoS::AtLeastOnce,
            true,
            Message::Status(samples::status()).encode(),
        )
        .await
        .unwrap();

    let srv = &server;
    let devices: serde_json::Value = eventually(
        "robot-7 in `fleetctl device ls --json`",
        Duration::from_secs(20),
        || async move {
            let out = srv.fleetctl(&["device", "ls", "--json"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("--json prints only JSON");
            (v.as_array()?.len() == 1 && v[0]["online"] == true).then_some(v)
        },
    )
    .await;
    assert_eq!(devices[0]["id"], "robot-7");
    assert_eq!(devices[0]["labels"]["site"], "depot");

    let table = server.fleetctl(&["device", "ls"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("DEVICE"), "{text}");
    assert!(text.contains("robot-7") && text.contains("yes"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_exit_codes_tell_refusal_from_unreachable() {
    let server = start_server().await;
    let missing = server.fleetctl(&["device", "show", "no-such-robot"]);
    assert_eq!(missing.status.code(), Some(2), "refused by the server");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no device no-such-robot"));
    let no_token = fleetctl(&server.api, &["device", "ls"]);
    assert_eq!(no_token.status.code(), Some(2), "no token: refused by the server");
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("FLEET_TOKEN"));

    let dead = format!("http://127.0.0.1:{}", free_port());
    let unreachable = fleetctl(&dead, &["device", "ls"]);
    assert_eq!(unreachable.status.code(), Some(5), "server unreachable");
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the fleet server"));

    // A usage error is 1, never the server's 2: a script tells a typo from a refusal.
    let usage = Command::new(bin("fleetctl")).args(["device", "frobnicate"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(1));
    let both = Command::new(bin("fleetctl"))
        .args(["secret", "set", "db", "--group", "g", "--device", "d"])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(1), "{}", String::from_utf8_lossy(&both.stderr));
    let help = Command::new(bin("fleetctl")).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_server_stops_gracefully_on_sigterm_and_keeps_its_data() {
    let mut server = start_server().await;
    let pid = server.child.id();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let status = eventually("fleet-server to exit", Duration::from_secs(20), || {
        let exited = server.child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(status.success(), "exit status {status:?}");
    assert!(server._data.path().join("store").exists());
}
