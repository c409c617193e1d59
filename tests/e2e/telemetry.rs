//! Telemetry end to end: the real `fleet-agent` binary, the real `fleet-server` behind a real
//! Mosquitto with mutual TLS, points posted to the agent's ingestion socket (by this test from
//! the host, and by a container through the mounted socket), buffered on disk in sled and
//! delivered at least once; the server's view has each point exactly once.
//!
//! * a simulated day offline arrives complete, once, in order, after the broker returns;
//! * SIGKILL of the agent 50 times during ingest and drain loses no point it acknowledged;
//! * a full buffer drops its oldest points and the server learns how many;
//! * a container posts through `/run/fleet/telemetry.sock` and its points carry its service.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_e2e::fleet::{start_agent, start_fleet, Containers, Fleet};
use fleet_e2e::{dir_size, eventually, TestEnv};
use fleet_proto::release::{RestartPolicy, UpdateStrategy};
use fleet_proto::{ImageRef, ReleaseId, ReleaseSpec, ServiceName, ServiceSpec};

/// An agent's bundle with test settings: no host metrics (only the test's points), quick
/// resends, its own lock and telemetry sockets. Returns the socket path.
fn configure(bundle: &Path, extra: &str) -> PathBuf {
    let data = bundle.join("data");
    let sock = bundle.join("tele");
    std::fs::create_dir_all(bundle.join("config.d")).unwrap();
    std::fs::write(
        bundle.join("config.d/10-test.toml"),
        format!(
            "[update]\nstop_grace_secs = 1\nstable_for_secs = 1\nresync_secs = 5\ndisk_reserve_mb = 1\n\
             [locks]\ndir = \"{d}/locks\"\nsocket = \"{d}/locks.sock\"\n\
             [telemetry]\nhost_interval_secs = 0\nsocket_dir = \"{s}\"\nack_timeout_secs = 3\n\
             drain_points_per_sec = 20000\ndrain_burst_points = 20000\n{containers}{extra}",
            d = data.display(),
            s = sock.display(),
            // Only the tests that look at container metrics take them.
            containers = if extra.contains("container_interval_secs") {
                ""
            } else {
                "container_interval_secs = 0\n"
            },
        ),
    )
    .unwrap();
    sock.join("telemetry.sock")
}

/// POSTs `body` to the agent's socket; the status code (0 if the agent is not there or went
/// away before answering).
fn post(socket: &Path, path: &str, body: &str) -> u16 {
    let Ok(mut s) = UnixStream::connect(socket) else { return 0 };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())).is_err() {
        return 0;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Waits until the socket takes connections.
async fn socket_up(socket: &Path) {
    let socket = socket.to_path_buf();
    eventually("the telemetry socket", Duration::from_secs(30), || {
        let socket = socket.clone();
        async move { UnixStream::connect(&socket).ok().map(|_| ()) }
    })
    .await;
}

async fn metrics(fleet: &Fleet, id: &str) -> serde_json::Value {
    let (code, body) = fleet.api("GET", &format!("/api/v1/devices/{id}/metrics"), None).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The server's whole history of `metric`: (seq, value, at, labels).
async fn history(fleet: &Fleet, id: &str, metric: &str) -> Vec<serde_json::Value> {
    let mut out = vec![];
    let mut after = String::new();
    loop {
        let (code, page) = fleet
            .api(
                "GET",
                &format!("/api/v1/devices/{id}/metrics/history?metric={metric}&limit=5000{after}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{page}");
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return out,
        }
    }
}

async fn stored_total(fleet: &Fleet, id: &str, want: u64, within: Duration) -> serde_json::Value {
    let fleet_ref = fleet;
    eventually(&format!("{want} points stored at the server"), within, || async move {
        let m = metrics(fleet_ref, id).await;
        (m["stored_total"].as_u64() >= Some(want)).then_some(m)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_offline_arrives_exactly_once_and_in_order() {
    let mut fleet = start_fleet().await;
    let id = format!("tele-day-{}", std::process::id());
    let bundle = fleet.enroll(&id);
    let socket = configure(&bundle, "");
    // Offline from the start: no broker.
    fleet.stop_mosquitto();
    let _agent = start_agent(&bundle, true);
    socket_up(&socket).await;

    // A day of one reading every 10 s, posted in requests of 480 lines, each acknowledged
    // (on disk) before the next.
    let day_start_ms: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let n = 8_640u64;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(480) {
        let body: String = chunk
            .iter()
            .map(|i| format!("day,site=depot counter={i}i {}\n", day_start_ms + i * 10_000))
            .collect();
        assert_eq!(post(&socket, "/write?precision=ms", &body), 204);
    }
    eprintln!("{n} points buffered offline in {:?}", started.elapsed());
    assert_eq!(
        metrics(&fleet, &id).await["stored_total"],
        0,
        "nothing can arrive without a broker"
    );

    // The link returns: the backlog drains.
    fleet.start_mosquitto().await;
    let m = stored_total(&fleet, &id, n, Duration::from_secs(120)).await;
    assert_eq!(m["stored_total"], n, "exactly once: {m}");
    let points = history(&fleet, &id, "day.counter").await;
    assert_eq!(points.len() as u64, n);
    for (i, p) in points.iter().enumerate() {
        assert_eq!(p["value"], i as u64, "in order: {p}");
        assert_eq!(p["at"], day_start_ms + i as u64 * 10_000);
        assert_eq!(p["labels"]["site"], "depot");
        assert_eq!(p["labels"]["origin"], "host", "posted from outside any container");
    }
    let seqs: Vec<u64> = points.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive sequence numbers");
    // fleetctl shows it too.
    let out =
        fleet.fleetctl(&["device", "metrics", &id, "--metric", "day.counter", "--limit", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("8639") && !text.contains(" 8636 "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_and_drain_loses_no_acknowledged_point() {
    let fleet = start_fleet().await;
    let id = format!("tele-kill-{}", std::process::id());
    let bundle = fleet.enroll(&id);
    // A slow drain, so the kills also land while a backlog is being sent.
    let socket = configure(&bundle, "");
    let slow = std::fs::read_to_string(bundle.join("config.d/10-test.toml")).unwrap().replace(
        "drain_points_per_sec = 20000\ndrain_burst_points = 20000",
        "drain_points_per_sec = 300\ndrain_burst_points = 500\nbatch_points = 100",
    );
    std::fs::write(bundle.join("config.d/10-test.toml"), slow).unwrap();

    let mut acknowledged = BTreeSet::new();
    let mut next = 0u64;
    let rounds = 50;
    for round in 0..rounds {
        let mut agent = start_agent(&bundle, true);
        socket_up(&socket).await;
        // Post 10 points every few ms for a while, then SIGKILL mid-stream.
        let kill_at = Instant::now() + Duration::from_millis(150 + (round * 37 % 250));
        // At most 300 points a round: the whole run stays within the server's history bound.
        let round_end = next + 300;
        while Instant::now() < kill_at && next < round_end {
            let values: Vec<u64> = (next..next + 10).collect();
            next += 10;
            let body: String = values.iter().map(|v| format!("k value={v}i\n")).collect();
            if post(&socket, "/write", &body) == 204 {
                acknowledged.extend(values);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        agent.0.kill().unwrap(); // SIGKILL
        agent.0.wait().unwrap();
    }
    eprintln!("{} of {next} points acknowledged across {rounds} SIGKILLs", acknowledged.len());
    assert!(acknowledged.len() > 1000, "the agent took points between kills");

    // A last start drains everything.
    let _agent = start_agent(&bundle, true);
    let want = acknowledged.len() as u64;
    stored_total(&fleet, &id, want, Duration::from_secs(180)).await;
    let fleet_ref = &fleet;
    let id_ref = id.as_str();
    let acked = &acknowledged;
    let seen = eventually(
        "every acknowledged point at the server",
        Duration::from_secs(120),
        || async move {
            let points = history(fleet_ref, id_ref, "k").await;
            let values: Vec<u64> = points.iter().map(|p| p["value"].as_u64().unwrap()).collect();
            let held: BTreeSet<u64> = values.iter().copied().collect();
            acked.is_subset(&held).then_some(values)
        },
    )
    .await;
    let mut counts = BTreeMap::new();
    for v in &seen {
        *counts.entry(*v).or_insert(0) += 1;
    }
    assert!(counts.values().all(|c| *c == 1), "the server holds each point once");
    let m = metrics(&fleet, &id).await;
    eprintln!("server: {} stored, {} duplicates removed", m["stored_total"], m["duplicates_total"]);
    assert_eq!(m["dropped_total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_the_oldest_and_reports_how_many() {
    let mut fleet = start_fleet().await;
    let id = format!("tele-full-{}", std::process::id());
    let bundle = fleet.enroll(&id);
    let socket = configure(
        &bundle,
        "budget_mb = 1\nservice_points_per_sec = 1000000\nservice_burst_points = 1000000\n",
    );
    fleet.stop_mosquitto();
    let _agent = start_agent(&bundle, true);
    socket_up(&socket).await;
    // ~3 MB of points into a 1 MB buffer.
    let n = 30_000u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let body: String = chunk
            .iter()
            .map(|i| format!("full,pad=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx value={i}i\n"))
            .collect();
        assert_eq!(post(&socket, "/write", &body), 204);
    }
    // The default store, redb: one file; its stated slack is 2x the budget plus 4 MiB.
    let file = bundle.join("data/telemetry.redb");
    assert!(file.is_file(), "the buffer is at {}", file.display());
    let disk = dir_size(&file);
    eprintln!("telemetry buffer on disk: {disk} bytes for a 1 MB budget");
    assert!(disk <= 2_000_000 + (4 << 20), "within the budget plus the stated slack: {disk}");
    fleet.start_mosquitto().await;
    let fleet_ref = &fleet;
    let id_ref = id.as_str();
    let m =
        eventually("the dropped count at the server", Duration::from_secs(120), || async move {
            let m = metrics(fleet_ref, id_ref).await;
            let (stored, dropped) = (m["stored_total"].as_u64()?, m["dropped_total"].as_u64()?);
            (dropped > 0 && stored + dropped == n).then_some(m)
        })
        .await;
    let points = history(&fleet, &id, "full").await;
    let first = points[0]["value"].as_u64().unwrap();
    assert_eq!(first, m["dropped_total"].as_u64().unwrap(), "the oldest went first: {m}");
    assert_eq!(points.last().unwrap()["value"], n - 1, "the newest are all there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_posts_through_the_mounted_socket_and_its_points_carry_its_service() {
    let env = TestEnv::load();
    let fleet = start_fleet().await;
    let id = format!("tele-app-{}", std::process::id());
    let _cleanup = Containers(id.clone());
    let bundle = fleet.enroll(&id);
    // A free loopback port for the optional TCP endpoint.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    configure(&bundle, &format!("container_interval_secs = 1\ntcp_listen = \"{tcp}\"\n"));
    let _agent = start_agent(&bundle, true);
    let fleet_ref = &fleet;
    let id_ref = id.as_str();
    eventually("the agent online", Duration::from_secs(30), || async move {
        let (_, d) = fleet_ref.api("GET", &format!("/api/v1/devices/{id_ref}"), None).await;
        (d["online"] == true).then_some(())
    })
    .await;
    // A service that claims to be someone else in its tags: the agent's label wins.
    let script = "while true; do printf 'robot.motor,joint=2,service=impostor temp=41.5\\n' | fleet-post \"$FLEET_TELEMETRY_SOCKET\" /write; sleep 1; done";
    let sensor = ServiceSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        restart: RestartPolicy::UnlessStopped,
        update: UpdateStrategy::StopFirst,
        telemetry: true,
        ..ServiceSpec::new(
            ServiceName::new("sensor").unwrap(),
            ImageRef::parse(&env.image("web:1").reference).unwrap(),
        )
    };
    let release = ReleaseSpec {
        id: ReleaseId::new("tele@1").unwrap(),
        app: "tele".into(),
        version: "1".into(),
        services: vec![sensor],
    };
    let (code, body) = fleet
        .api(
            "PUT",
            &format!("/api/v1/devices/{id}/desired"),
            Some(serde_json::json!({ "release": release })),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let latest =
        eventually("the container's point at the server", Duration::from_secs(90), || async move {
            let m = metrics(fleet_ref, id_ref).await;
            m["latest"].as_array()?.iter().find(|p| p["metric"] == "robot.motor.temp").cloned()
        })
        .await;
    assert_eq!(latest["value"], 41.5);
    assert_eq!(latest["labels"]["joint"], "2");
    assert_eq!(latest["labels"]["service"], "sensor", "{latest}");
    // The socket is mounted read-only and named in the environment.
    let inspect = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=io.fleet.device={id}")])
        .output()
        .unwrap();
    let cid = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    let mounts =
        Command::new("docker").args(["inspect", "-f", "{{json .Mounts}}", &cid]).output().unwrap();
    let mounts = String::from_utf8_lossy(&mounts.stdout);
    assert!(
        mounts.contains("\"Destination\":\"/run/fleet\"") && mounts.contains("\"RW\":false"),
        "{mounts}"
    );

    // Container metrics from the engine's one-shot stats, labelled with the service.
    let latest = |metric: &'static str| async move {
        let m = metrics(fleet_ref, id_ref).await;
        m["latest"]
            .as_array()?
            .iter()
            .find(|p| p["metric"] == metric && p["labels"]["service"] == "sensor")
            .cloned()
    };
    let memory =
        eventually("container memory", Duration::from_secs(30), || latest("container.mem.bytes"))
            .await;
    assert!(memory["value"].as_i64().unwrap() > 0, "{memory}");
    assert_eq!(memory["labels"]["release"], "tele@1", "{memory}");
    let cpu = eventually("container CPU share", Duration::from_secs(30), || {
        latest("container.cpu.percent")
    })
    .await;
    assert!(cpu["value"].as_f64().unwrap() >= 0.0, "{cpu}");
    let running = latest("container.running").await.unwrap();
    assert_eq!(running["value"], true);
    let pids = latest("container.pids").await.unwrap();
    assert!(pids["value"].as_i64().unwrap() >= 1, "{pids}");

    // A host process posts over loopback TCP: its points say they come from the host.
    let mut s = std::net::TcpStream::connect(tcp).unwrap();
    let body = "robot.dock,bay=3 volts=24.5\n";
    write!(
        s,
        "POST /write HTTP/1.1\r\nHost: agent\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let dock = eventually("the TCP point at the server", Duration::from_secs(30), || async move {
        let m = metrics(fleet_ref, id_ref).await;
        m["latest"].as_array()?.iter().find(|p| p["metric"] == "robot.dock.volts").cloned()
    })
    .await;
    assert_eq!(dock["labels"]["origin"], "host", "{dock}");
    assert_eq!(dock["labels"]["bay"], "3", "{dock}");

    // On the wire the batches are deflated (the default): read one off the broker with the
    // server's identity and look at its kind.
    let broker = fleet.broker_dir();
    let (tap, events) = fleet_e2e::fleet::client(
        &format!("telemetry-tap-{}", std::process::id()),
        fleet.mqtt_port,
        &broker.join("ca.pem"),
        &fleet.server_identity_files().0,
        &fleet.server_identity_files().1,
    );
    let mut seen = fleet_e2e::fleet::watch(events);
    fleet_e2e::fleet::connected(&mut seen, "the telemetry tap").await;
    let topic = format!("fleet/v1/{id}/telemetry");
    tap.subscribe(&topic, rumqttc::QoS::AtLeastOnce).await.unwrap();
    let wire = fleet_e2e::fleet::receive(&mut seen, &topic).await;
    assert_eq!(
        wire[1],
        fleet_proto::MessageKind::TelemetryDeflate as u8,
        "version 1, then the kind"
    );
    let fleet_proto::Message::Telemetry(batch) = fleet_proto::Message::decode(&wire).unwrap()
    else {
        panic!("not telemetry")
    };
    assert!(!batch.points.is_empty());

    // Lifecycle events: the start, then a kill's `die` with its exit code.
    let started = history(&fleet, &id, "container.event").await;
    assert!(
        started.iter().any(|p| p["value"] == "start" && p["labels"]["service"] == "sensor"),
        "{started:?} {}",
        metrics(&fleet, &id).await
    );
    let killed = Command::new("docker").args(["kill", &cid]).status().unwrap();
    assert!(killed.success());
    let die = eventually("the die event at the server", Duration::from_secs(30), || async move {
        history(fleet_ref, id_ref, "container.event")
            .await
            .into_iter()
            .find(|p| p["value"] == "die")
    })
    .await;
    assert_eq!(die["labels"]["exit_code"], "137", "{die}");
    assert_eq!(die["labels"]["service"], "sensor", "{die}");
}

/// The agent's peak resident memory so far (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_would_multiply_its_tags_is_refused_before_it_costs_memory() {
    let fleet = start_fleet().await;
    let id = format!("tele-amp-{}", std::process::id());
    let bundle = fleet.enroll(&id);
    let socket = configure(&bundle, "");
    let agent = start_agent(&bundle, false);
    socket_up(&socket).await;
    let pid = agent.0.id();
    let before = peak_rss_kib(pid);
    // 8 tags of 4 KB on one line of 40,000 fields: 381 KB on the wire, and 1.3 GB of labels
    // if every point copied the line's tags (it raised the agent's peak to 1.25 GiB).
    let tags: String = (0..8).map(|i| format!(",t{i}={}", "v".repeat(4000))).collect();
    let fields: Vec<String> = (0..40_000).map(|i| format!("f{i}=1")).collect();
    let body = format!("amp{tags} {}\n", fields.join(","));
    assert_eq!(post(&socket, "/write", &body), 413);
    let after = peak_rss_kib(pid);
    eprintln!("amplifying post: agent peak RSS {before} KiB before, {after} KiB after");
    assert!(after < before + 16 * 1024, "peak RSS grew from {before} to {after} KiB");
    // Still serving.
    assert_eq!(post(&socket, "/write", "ok value=1\n"), 204);

    // A head a proxy and the agent could read differently is refused, not guessed at.
    for head in [
        "POST /write HTTP/1.1\r\nContent-Length: 11\r\nContent-Length: 500\r\n\r\nok value=1\n",
        "POST /write HTTP/1.1\r\nContent-Length: +11\r\n\r\nok value=1\n",
        "POST /write HTTP/1.1\r\nnot a header\r\nContent-Length: 11\r\n\r\nok value=1\n",
    ] {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{head:?}: {answer}");
    }
}

/// The socket's directory is open to every user, so that containers' own users reach it; on
/// the host only root may post (issue 24). A user's request is refused by its credentials
/// before its body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_host_only_root_posts_to_the_telemetry_socket() {
    let fleet = start_fleet().await;
    let id = format!("tele-uid-{}", std::process::id());
    let bundle = fleet.enroll(&id);
    let socket = configure(&bundle, "");
    let _agent = start_agent(&bundle, true);
    socket_up(&socket).await;
    // Let another user reach the socket at all (test directories are 0700).
    for dir in [fleet.dir.path(), bundle.as_path(), socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert_eq!(post(&socket, "/write", "uid_check value=1 1"), 204, "root posts");
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-s", "-o", "/dev/null"])
        .args(["-w", "%{http_code}", "--unix-socket"])
        .arg(&socket)
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "uid_check value=2 2",
        ])
        .arg("http://agent/write")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&nobody.stdout), "403", "{nobody:?}");
}
