//! Hardware on the real engine: a serial port requested by its stable name reaches the service
//! and comes back after re-plugging, memory, cpuset and pids limits take effect, and releases
//! the device cannot run are refused before anything stops.
//!
//! A pseudo-terminal stands in for a USB serial adapter, linked under `/dev/serial/by-id/` as
//! udev links a real one (../shared/ENVIRONMENT.md: the engine's `devices` option cannot map a
//! pty, so the agent bind-mounts it and allows it by a cgroup rule). The tests run as root, as
//! CI does, and remove their links.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleet_e2e::agent::{Agent, Daemon};
use fleet_e2e::fleet::repo;
use fleet_e2e::{eventually, TestEnv};
use fleet_proto::release::*;
use fleet_proto::{ImageRef, ReleaseId, ReleaseSpec, ServiceName, ServiceSpec};

/// A pseudo-terminal in raw mode: the host holds the master, the service gets the slave.
struct Pty {
    master: std::fs::File,
    /// Kept open so the slave stays valid while no container holds it.
    _slave: OwnedFd,
    path: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Pty {
    fn open() -> Pty {
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut raw = nix::sys::termios::tcgetattr(pty.slave.as_fd()).unwrap();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(pty.slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw)
            .unwrap();
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
        let master = std::fs::File::from(pty.master);
        let reader = master.try_clone().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                // EIO when no one holds the slave: the service is between containers.
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Pty { master, _slave: pty.slave, path, lines }
    }

    /// The next line the service wrote that starts with `prefix`.
    fn expect(&self, prefix: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line starting with {prefix:?} from the service: {e}"),
            }
        }
    }

    fn send(&mut self, line: &str) {
        self.master.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

/// A `/dev/serial/by-id/` link, removed when dropped.
struct ById(PathBuf);

impl ById {
    fn link(name: &str, target: &Path) -> ById {
        let dir = Path::new("/dev/serial/by-id");
        std::fs::create_dir_all(dir).unwrap();
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        ById(link)
    }
}

impl Drop for ById {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn service(name: &str, image: &str) -> ServiceSpec {
    ServiceSpec {
        restart: RestartPolicy::Always,
        update: UpdateStrategy::StopFirst,
        health_deadline: Duration::from_secs(30),
        ..ServiceSpec::new(ServiceName::new(name).unwrap(), ImageRef::parse(image).unwrap())
    }
}

fn release(version: &str, services: Vec<ServiceSpec>) -> ReleaseSpec {
    ReleaseSpec {
        id: ReleaseId::new(format!("hw@{version}")).unwrap(),
        app: "hw".into(),
        version: version.into(),
        services,
    }
}

fn outcome(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Names of the device's running containers.
async fn running(agent: &Agent, env: &TestEnv) -> Vec<String> {
    agent.containers(env).await.into_iter().filter(|(_, (_, r))| *r).map(|(n, _)| n).collect()
}

const HARDWARE: &str = "[hardware]\nroot = \"/\"\nsettle_ms = 100\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_port_by_stable_name_reaches_the_service_and_survives_replugging() {
    let env = TestEnv::load();
    let agent = Agent::with_config("serial", HARDWARE);
    let log_path = agent.dir.path().join("daemon.log");
    let daemon = Daemon(
        agent
            .cmd()
            .arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let name = format!("usb-Fleet_E2E_Adapter_{}-if00-port0", std::process::id());
    let mut pty = Pty::open();
    let link = ById::link(&name, &pty.path);

    // Says hello with its container's host name, then answers every line it reads.
    let script = "exec 3<>/dev/ttyUSB0; echo \"hello $(hostname)\" >&3; \
                  while read -r line <&3; do echo \"got:$line\" >&3; done";
    let lidar = ServiceSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        hardware: vec![HardwareRequest::Serial {
            port: SerialSelector::ById(format!("/dev/serial/by-id/{name}")),
            container_path: "/dev/ttyUSB0".into(),
        }],
        ..service("lidar", &env.image("crash:1").reference)
    };
    let v1 = release("1", vec![lidar]);
    // `apply` hands the release to the running daemon once its socket is up.
    let socket = agent.dir.path().join("data/agent.sock");
    eventually("the daemon's admin socket", Duration::from_secs(20), || async {
        socket.exists().then_some(())
    })
    .await;
    let out = agent.apply(&v1);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(outcome(&out)["result"], "Applied");

    let hello = pty.expect("hello ", Duration::from_secs(20));
    pty.send("ping");
    assert_eq!(pty.expect("got:", Duration::from_secs(10)), "got:ping");
    let first = running(&agent, &env).await;
    assert_eq!(first.len(), 1, "{first:?}");

    // Unplug: the link goes; the agent notices (the service keeps its container meanwhile).
    drop(link);
    eventually("the removal to be noticed", Duration::from_secs(10), || async {
        std::fs::read_to_string(&log_path).unwrap().contains("hardware disappeared").then_some(())
    })
    .await;

    // Plug back in: the adapter comes back as another pty (another minor number).
    let mut replugged = Pty::open();
    assert_ne!(replugged.path, pty.path);
    let back = Instant::now();
    let _link = ById::link(&name, &replugged.path);
    drop(pty);
    let hello_again = replugged.expect("hello ", Duration::from_secs(30));
    let remapped_in = back.elapsed();
    assert_ne!(hello_again, hello, "a new container (new host name) has the new node");
    replugged.send("pong");
    assert_eq!(replugged.expect("got:", Duration::from_secs(10)), "got:pong");
    // The answer came from the new container; under load the engine may still be finishing the
    // switch (the old one stopping) when it is asked.
    let second =
        eventually("one running container, the new one", Duration::from_secs(20), || async {
            let now = running(&agent, &env).await;
            (now.len() == 1 && now != first).then_some(now)
        })
        .await;
    assert_ne!(second, first, "re-created with the new mapping");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("hardware appeared"), "{log}");
    println!(
        "MEASURE serial re-plug to service writing on the new node: {} ms",
        remapped_in.as_millis()
    );

    daemon.stop();
    agent.cleanup(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_the_device_cannot_run_are_refused_and_the_running_one_stays() {
    let env = TestEnv::load();
    let agent = Agent::with_config("refuse", HARDWARE);
    let web = |v: &str| ServiceSpec {
        resources: ResourceLimits { memory_bytes: Some(64 << 20), ..Default::default() },
        ..service("web", &env.image(&format!("web:{v}")).reference)
    };
    let v1 = release("1", vec![web("1")]);
    let out = agent.apply(&v1);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = agent.containers(&env).await;

    // Hardware that is not there.
    let lidar = ServiceSpec {
        hardware: vec![HardwareRequest::Serial {
            port: SerialSelector::Usb {
                vendor: "0403".into(),
                product: "6001".into(),
                serial: None,
            },
            container_path: "/dev/ttyUSB0".into(),
        }],
        ..web("2")
    };
    // More memory than the machine has.
    let greedy = ServiceSpec {
        resources: ResourceLimits { memory_bytes: Some(1 << 40), ..Default::default() },
        ..web("2")
    };
    // CPUs that are not online.
    let pinned = ServiceSpec {
        resources: ResourceLimits { cpuset: Some("0-999".into()), ..Default::default() },
        ..web("2")
    };
    for (version, svc, expected) in [
        ("2", lidar, "services[0].hardware[0]: serial usb 0403:6001 not present"),
        ("3", greedy, "services[*].resources.memory_bytes"),
        ("4", pinned, "services[0].resources.cpuset: CPUs"),
    ] {
        let out = agent.apply(&release(version, vec![svc]));
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        let reason = outcome(&out)["result"]["Failed"]["reason"].as_str().unwrap().to_owned();
        assert!(reason.starts_with("unsatisfiable on this device"), "{reason}");
        assert!(reason.contains(expected), "{reason}");
        assert_eq!(agent.containers(&env).await, before, "nothing stopped or created: {reason}");
    }
    let status = agent.status();
    assert_eq!(status["in_force"]["release"], "hw@1");
    agent.cleanup(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cpuset_and_pids_limits_take_effect_and_an_oom_kill_names_the_limit() {
    let env = TestEnv::load();
    let agent = Agent::with_config("limits", HARDWARE);
    let probe = "grep Cpus_allowed_list /proc/self/status; \
                 cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; \
                 exec sleep 3600";
    let limited = ServiceSpec {
        command: vec!["sh".into(), "-c".into(), probe.into()],
        resources: ResourceLimits {
            memory_bytes: Some(48 << 20),
            cpuset: Some("0".into()),
            pids: Some(20),
            ..Default::default()
        },
        ..service("ctl", &env.image("crash:1").reference)
    };
    let v1 = release("1", vec![limited]);
    let out = agent.apply(&v1);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let name = running(&agent, &env).await.pop().unwrap();
    let logs = Command::new("docker").args(["logs", &name]).output().unwrap();
    let text = String::from_utf8_lossy(&logs.stdout).to_string();
    assert!(text.contains("Cpus_allowed_list:\t0\n"), "{text}");
    assert!(text.contains("\n20\n"), "pids.max inside: {text}");

    // Allocates until the kernel kills it; the outcome names the limit. Its check never passes
    // and its start period outlasts the allocation, so only the kill can end the health wait.
    let hog = ServiceSpec {
        healthcheck: Some(HealthCheck {
            probe: Probe::CmdShell("false".into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::from_secs(25),
        }),
        resources: ResourceLimits {
            memory_bytes: Some(32 << 20),
            memory_swap_bytes: Some(32 << 20),
            ..Default::default()
        },
        ..service("ctl", &env.image("memhog:1").reference)
    };
    let out = agent.apply(&release("2", vec![hog]));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let reason = outcome(&out)["result"]["RolledBack"]["reason"].as_str().unwrap().to_owned();
    // Docker 20.10 can lose the OOMKilled flag (exit 137 either way): both name the limit.
    assert!(
        reason.contains("oom-killed: exceeded its memory limit of 32 MiB")
            || reason
                .contains("(exit code 137: out of memory or SIGKILL); its memory limit is 32 MiB"),
        "{reason}"
    );
    assert_eq!(agent.status()["in_force"]["release"], "hw@1", "rolled back");
    agent.cleanup(&env).await;
}

#[test]
fn inventory_prints_a_fixture_robot_and_this_host() {
    let fixture = repo().join("agent/tests/fixtures/hardware/rpi5");
    let out = Command::new(fleet_e2e::bin("fleet-agent"))
        .args(["inventory", "--json", "--root"])
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inv["arch"], "aarch64");
    let serial: Vec<&str> =
        inv["serial"].as_array().unwrap().iter().map(|p| p["dev_path"].as_str().unwrap()).collect();
    assert!(serial.contains(&"/dev/ttyUSB0") && serial.contains(&"/dev/ttyUSB1"), "{serial:?}");
    // This machine: the engine answers, so its version is in the inventory.
    let out =
        Command::new(fleet_e2e::bin("fleet-agent")).args(["inventory", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inv["engine"]["name"], "docker", "{inv}");
    assert!(inv["cpus"]["count"].as_u64().unwrap() >= 1);
}

/// Real-time control loops: on a kernel with real-time group scheduling (cgroup v1, as here)
/// a container gets no real-time CPU time unless the engine has some to give, and SCHED_FIFO
/// would fail on the robot after the update was declared healthy. The agent refuses such a
/// release up front with what to change; elsewhere it runs it with CAP_SYS_NICE and rtprio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_service_is_refused_when_the_engine_has_no_realtime_budget() {
    let env = TestEnv::load();
    let agent = Agent::with_config("realtime", HARDWARE);
    let ctl = ServiceSpec {
        resources: ResourceLimits { realtime_priority: Some(50), ..Default::default() },
        ..service("ctl", &env.image("web:1").reference)
    };
    let budget = std::fs::read_to_string("/sys/fs/cgroup/cpu/docker/cpu.rt_runtime_us")
        .ok()
        .and_then(|b| b.trim().parse::<u64>().ok());
    let out = agent.apply(&release("1", vec![ctl]));
    if budget == Some(0) {
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        let reason = outcome(&out)["result"]["Failed"]["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("services[0].resources.realtime_priority"), "{reason}");
        assert!(reason.contains("--cpu-rt-runtime=950000"), "{reason}");
        assert!(agent.containers(&env).await.is_empty(), "nothing created: {reason}");
    } else {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    agent.cleanup(&env).await;
}
