//! fleet-agent as systemd sees it (`Type=notify`, `WatchdogSec=`): started with a
//! `NOTIFY_SOCKET` this test owns, the daemon says `READY=1` once it runs, pings `WATCHDOG=1`
//! at half of `WATCHDOG_USEC`, and says `STOPPING=1` on SIGTERM before exiting 0. Runs against
//! the real engine from `tests/env/up`.
//!
//! `FLEET_AGENT_BIN` picks another agent binary, e.g. the static one cross/build ships:
//! `FLEET_AGENT_BIN=target/cross/dist/amd64/fleet-agent cargo test -p fleet-e2e --test
//! systemd_notify -- --nocapture` (that is how BENCHMARKS.md measures start-to-READY).

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fleet_api::agent_config::{AgentConfig, AgentEngine, AgentLocks};
use fleet_e2e::{bin, TestEnv};

fn agent_bin() -> PathBuf {
    std::env::var_os("FLEET_AGENT_BIN").map_or_else(|| bin("fleet-agent"), PathBuf::from)
}

/// The service manager's end: a datagram socket and what arrived on it, with arrival times.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path }
    }

    /// Waits for a datagram with the assignment `want` (e.g. `READY=1`), returning when it
    /// arrived and every assignment received before it. Fails the test after `timeout`.
    fn wait_for(&self, want: &str, timeout: Duration) -> (Instant, Vec<(Instant, String)>) {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![];
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {want} within {timeout:?}; got {seen:?}");
            self.socket.set_read_timeout(Some(left)).unwrap();
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("notify socket: {e}"),
            };
            let at = Instant::now();
            // One datagram may carry several newline-separated assignments.
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                if line == want {
                    return (at, seen);
                }
                seen.push((at, line.to_owned()));
            }
        }
    }
}

/// One agent identity on the real engine, with its config and data in a temporary directory.
struct Agent {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Agent {
    fn new(name: &str, engine_socket: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("config.toml");
        let mut written =
            AgentConfig::new(format!("e2e-notify-{}-{name}", std::process::id()), &data);
        written.engine =
            Some(AgentEngine { socket: engine_socket.to_owned(), request_timeout_secs: None });
        written.locks =
            Some(AgentLocks { dir: data.join("locks"), socket: data.join("locks.sock") });
        std::fs::write(&config, written.to_toml("written by fleet-tests").unwrap()).unwrap();
        Agent { dir, config }
    }

    /// Starts `fleet-agent run` the way systemd does for `Type=notify` + `WatchdogSec=`.
    fn start(&self, notify: &NotifySocket, watchdog_usec: u64) -> Child {
        Command::new(agent_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", watchdog_usec.to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("FLEET_AGENT_FAULT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

/// Sends SIGTERM, as `systemctl stop` does.
fn terminate(child: &Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

/// Waits for the child to exit, failing the test (and killing it) after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fleet-agent did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn engine_socket(env: &TestEnv) -> String {
    env.docker_host.strip_prefix("unix://").unwrap_or(&env.docker_host).to_owned()
}

#[test]
fn agent_says_ready_pings_the_watchdog_and_says_stopping_on_sigterm() {
    let env = TestEnv::load();
    let agent = Agent::new("protocol", &engine_socket(&env));
    let notify = NotifySocket::bind(agent.dir.path());
    // WatchdogSec=1s: the agent must ping every 500 ms.
    let started = Instant::now();
    let mut child = agent.start(&notify, 1_000_000);

    let (ready_at, before) = notify.wait_for("READY=1", Duration::from_secs(30));
    assert!(
        before.iter().all(|(_, s)| s != "STOPPING=1"),
        "STOPPING=1 before READY=1: {before:?}\n{}",
        agent.log()
    );
    eprintln!("start-to-READY: {:?}", ready_at - started);

    // Pings keep coming, none later than the watchdog period after the one before (or after
    // READY=1): systemd kills a service that misses one.
    let mut pings = vec![];
    let mut last = ready_at;
    let mut gaps = vec![];
    while pings.len() < 6 {
        let (at, other) = notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
        assert!(other.is_empty(), "unexpected notifications between pings: {other:?}");
        gaps.push(at - last);
        last = at;
        pings.push(at);
    }
    assert!(
        gaps.iter().all(|g| *g < Duration::from_secs(1)),
        "a gap between pings reached the watchdog period: {gaps:?}\n{}",
        agent.log()
    );
    // Not a busy loop either: after the first ping, five more 500 ms intervals.
    assert!(pings[5] - pings[0] >= Duration::from_secs(2), "pings come too fast: {gaps:?}");

    terminate(&child);
    let (_, before) = notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(
        before.iter().all(|(_, s)| s == "WATCHDOG=1"),
        "only pings between SIGTERM and STOPPING=1: {before:?}"
    );
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM\n{}", agent.log());
}

/// systemd restarts the agent (`Restart=always`, crashes, upgrades): every start on the same
/// data directory must reach READY=1 again and every SIGTERM exit 0. Prints the median
/// start-to-READY time, the figure BENCHMARKS.md reports.
#[test]
fn agent_restarts_on_its_own_state_reach_ready_every_time() {
    let env = TestEnv::load();
    let agent = Agent::new("restarts", &engine_socket(&env));
    let notify = NotifySocket::bind(agent.dir.path());
    let mut times = vec![];
    for run in 0..7 {
        let started = Instant::now();
        let mut child = agent.start(&notify, 200_000);
        let (ready_at, _) = notify.wait_for("READY=1", Duration::from_secs(30));
        times.push(ready_at - started);
        // Running, not only started: two pings 100 ms apart.
        notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
        notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
        terminate(&child);
        notify.wait_for("STOPPING=1", Duration::from_secs(10));
        let status = wait_exit(&mut child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "run {run}: exit status\n{}", agent.log());
    }
    let mut sorted = times.clone();
    sorted.sort();
    eprintln!(
        "start-to-READY over {} starts of {}: median {:?}, min {:?}, max {:?}",
        sorted.len(),
        agent_bin().display(),
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1]
    );
}

/// `systemctl restart` right after a start sends SIGTERM as soon as READY=1 arrives. The agent
/// must then still stop cleanly, not die of the signal's default action.
#[test]
fn sigterm_right_after_ready_still_stops_cleanly() {
    let env = TestEnv::load();
    let agent = Agent::new("early-term", &engine_socket(&env));
    let notify = NotifySocket::bind(agent.dir.path());
    // 20 starts: the window between READY=1 and an installed handler is short, but when the
    // handler was installed late, most runs of five hit it.
    for run in 0..20 {
        let mut child = agent.start(&notify, 10_000_000);
        notify.wait_for("READY=1", Duration::from_secs(30));
        terminate(&child);
        let status = wait_exit(&mut child, Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "run {run}: {status:?}\n{}", agent.log());
        notify.wait_for("STOPPING=1", Duration::from_secs(1));
    }
}

/// A Unix socket in front of the Docker socket that holds every container list request for
/// `delay` before passing it on: an engine that answers slowly, as a loaded one on an SD card
/// does.
fn slow_engine(dir: &Path, engine: &str, delay: Duration) -> PathBuf {
    let path = dir.join("slow-docker.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let engine = engine.to_owned();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut upstream) = UnixStream::connect(&engine) else { return };
            let (mut client_r, mut upstream_w) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = client_r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let chunk = &buf[..n];
                    if chunk.starts_with(b"GET ") && contains(chunk, b"/containers/json") {
                        std::thread::sleep(delay);
                    }
                    if upstream_w.write_all(chunk).is_err() {
                        break;
                    }
                }
                let _ = upstream_w.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut upstream, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    path
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// While a converge waits on the engine, the daemon must keep pinging: an image pull over a
/// cellular link takes minutes, and a service manager that hears nothing for WatchdogSec kills
/// the agent mid-update, then again after every restart.
#[test]
fn watchdog_pings_continue_while_the_engine_is_slow() {
    let env = TestEnv::load();
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_engine(dir.path(), &engine_socket(&env), Duration::from_millis(2500));
    let agent = Agent::new("slow-engine", slow.to_str().unwrap());
    let notify = NotifySocket::bind(agent.dir.path());
    // WatchdogSec=1s: pings due every 500 ms; the converge at start lists containers (2.5 s).
    let mut child = agent.start(&notify, 1_000_000);
    let (ready_at, _) = notify.wait_for("READY=1", Duration::from_secs(30));
    let mut last = ready_at;
    let mut longest = Duration::ZERO;
    while last - ready_at < Duration::from_secs(6) {
        let (at, _) = notify.wait_for("WATCHDOG=1", Duration::from_secs(10));
        longest = longest.max(at - last);
        last = at;
    }
    terminate(&child);
    let _ = wait_exit(&mut child, Duration::from_secs(10));
    assert!(
        longest < Duration::from_secs(1),
        "no WATCHDOG=1 for {longest:?} while the engine was slow: systemd would have killed the agent\n{}",
        agent.log()
    );
}
