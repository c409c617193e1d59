//! Helpers for Fleet's end-to-end tests: the environment `tests/env/up` started (Docker engine,
//! registry, Mosquitto), the workspace's binaries, free ports and polling.
//!
//! A missing environment is a test failure with instructions, never a silent skip: CI runs
//! `tests/run`, which brings the environment up first.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // helpers fail the test loudly

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::Docker;

pub mod agent;
pub mod browser;
pub mod fleet;
pub mod simfleet;
pub mod traffic;
use serde::Deserialize;

/// What `tests/env/up` wrote to `env.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct TestEnv {
    /// `unix:///var/run/docker.sock`.
    pub docker_host: String,
    /// The engine's API version, e.g. `1.41`.
    pub docker_api_version: String,
    /// `127.0.0.1:5000`.
    pub registry: String,
    /// Mosquitto's host.
    pub mqtt_host: String,
    /// Mosquitto's plain-TCP port.
    pub mqtt_port: u16,
    /// Test images by `name:version`, e.g. `web:1`.
    pub images: BTreeMap<String, TestImage>,
    /// The schemathesis command (property-based API tests); empty from an older `up`.
    #[serde(default)]
    pub schemathesis: String,
}

/// One test image in the local registry.
#[derive(Debug, Clone, Deserialize)]
pub struct TestImage {
    /// `127.0.0.1:5000/fleet-test/web:1`.
    pub tag: String,
    /// `sha256:…`, the registry's content digest.
    pub digest: String,
    /// `127.0.0.1:5000/fleet-test/web@sha256:…`, what devices pull.
    #[serde(rename = "ref")]
    pub reference: String,
}

impl TestEnv {
    /// Reads `$FLEET_TEST_ENV`, else `${FLEET_TEST_ENV_DIR:-/tmp/fleet-test-env}/env.json`.
    pub fn load() -> TestEnv {
        let path = std::env::var_os("FLEET_TEST_ENV").map(PathBuf::from).unwrap_or_else(|| {
            let dir = std::env::var_os("FLEET_TEST_ENV_DIR")
                .map_or_else(|| PathBuf::from("/tmp/fleet-test-env"), PathBuf::from);
            dir.join("env.json")
        });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("cannot read the test environment {}: {e}\nrun `tests/env/up` (or the whole suite with `tests/run`) first", path.display())
        });
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{} is not a valid env.json: {e}; re-run tests/env/up", path.display())
        })
    }

    /// The image `name:version`, e.g. `image("web:1")`.
    pub fn image(&self, key: &str) -> &TestImage {
        self.images
            .get(key)
            .unwrap_or_else(|| panic!("env.json has no image {key}; re-run tests/env/up"))
    }

    /// A Docker client for the environment's engine, API version negotiated.
    pub async fn docker(&self) -> Docker {
        let socket = self.docker_host.strip_prefix("unix://").unwrap_or(&self.docker_host);
        Docker::connect_with_unix(socket, 300, bollard::API_DEFAULT_VERSION)
            .unwrap()
            .negotiate_version()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Docker engine at {} does not answer: {e}; run tests/env/up",
                    self.docker_host
                )
            })
    }
}

/// Path of a workspace binary built by `cargo build --workspace` (tests/run does that first).
pub fn bin(name: &str) -> PathBuf {
    // target/debug/deps/<test-binary> → target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist; run `cargo build --workspace --bins` first (tests/run does)",
        path.display()
    );
    path
}

/// Removes what the agent of `device` made on the engine: its containers, then its networks
/// and volumes (volumes only once no container holds them). Containers of a failed test must
/// not linger (their health checks would load the engine for every later test), and networks
/// must not either: Docker's address pools hold only about 30 bridge networks, and leaked ones
/// made every later release on this machine fail to create its network.
pub fn remove_device_objects(device: &str) {
    let filter = format!("label=io.fleet.device={device}");
    let _ = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("docker ps -aq --filter {filter} | xargs -r docker rm -f >/dev/null 2>&1; docker network ls -q --filter {filter} | xargs -r docker network rm >/dev/null 2>&1; docker volume ls -q --filter {filter} | xargs -r docker volume rm >/dev/null 2>&1"),
        ])
        .status();
}

/// The built `fleet-agent`, stripped into `to` like a shipped binary: a newer version for the
/// self-update tests (the debug build's symbols are over the size an agent binary may have).
pub fn stripped_agent(to: &std::path::Path) -> PathBuf {
    strip(&bin("fleet-agent"), to)
}

/// The second agent build (`tests/run` makes it: the same source with the next patch version
/// compiled in and fault injection on, profile `e2e-next`), stripped into `to`, and its
/// version.
pub fn next_agent(to: &std::path::Path) -> (PathBuf, String) {
    // target/debug/fleet-agent → target/e2e-next/fleet-agent
    let built = bin("fleet-agent").parent().unwrap().with_file_name("e2e-next").join("fleet-agent");
    assert!(
        built.exists(),
        "{} does not exist; build it as tests/run does (FLEET_AGENT_VERSION=NEXT cargo build -p fleet-agent --profile e2e-next)",
        built.display()
    );
    let out = std::process::Command::new(&built).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).unwrap().to_owned();
    assert_ne!(version, env!("CARGO_PKG_VERSION"), "the second build has another version");
    (strip(&built, to), version)
}

fn strip(from: &std::path::Path, to: &std::path::Path) -> PathBuf {
    let done = std::process::Command::new("strip").arg("-o").arg(to).arg(from).status().unwrap();
    assert!(done.success(), "strip -o {} {}: {done}", to.display(), from.display());
    to.to_path_buf()
}

/// The standard output of a command that must have succeeded (the test fails with both
/// outputs otherwise).
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Standard output and error of a command, together (what a refusal said, wherever it said it).
pub fn all_output(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 50 ms until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes in the files under `p`, or of the file `p` (0 if it does not exist).
pub fn dir_size(p: &std::path::Path) -> u64 {
    if let Some(m) = std::fs::metadata(p).ok().filter(std::fs::Metadata::is_file) {
        return m.len();
    }
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
