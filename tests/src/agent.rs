//! A `fleet-agent` in local mode for end-to-end tests: its own device id, config and data
//! directory, driven through the real binary (`apply`, `status`, `run`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use fleet_api::agent_config::{AgentConfig, AgentLocks, AgentUpdate};
use fleet_proto::ReleaseSpec;

use crate::{bin, TestEnv};

/// One agent identity with its own config and data directory.
#[derive(Debug)]
pub struct Agent {
    /// Its device id (unique per test process).
    pub device: String,
    /// Its config and data directory.
    pub dir: tempfile::TempDir,
    /// Its config file.
    pub config: PathBuf,
}

// Containers of a failed test must not linger: their health checks would load the engine for
// every later test and benchmark on this machine.
impl Drop for Agent {
    fn drop(&mut self) {
        crate::remove_device_objects(&self.device);
    }
}

/// A running `fleet-agent run`; killed if a failing test leaves it behind (a panicking test
/// must not leave a daemon holding the test harness's output pipe open).
#[derive(Debug)]
pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// SIGTERM, then asserts a clean exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "daemon stops cleanly on SIGTERM: {status:?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Agent {
    pub fn daemon(&self) -> Daemon {
        Daemon(self.cmd().arg("run").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
    }

    /// [`Self::daemon`] that aborts at the step `fault` names (`FLEET_AGENT_FAULT`).
    pub fn daemon_with_fault(&self, fault: &str) -> Daemon {
        Daemon(
            self.cmd()
                .arg("run")
                .env("FLEET_AGENT_FAULT", fault)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// An agent with test-friendly timings; a name starting with `disk` gets an impossible
    /// disk reserve.
    pub fn new(name: &str) -> Agent {
        Agent::with_config(name, "")
    }

    /// [`Agent::new`] with more configuration appended (whole TOML tables).
    pub fn with_config(name: &str, extra: &str) -> Agent {
        let device = format!("e2e-agent-{}-{name}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let data = dir.path().join("data");
        let mut written = AgentConfig::new(&device, &data);
        written.update = Some(AgentUpdate {
            stop_grace_secs: 1,
            stable_for_secs: 1,
            resync_secs: 2,
            disk_reserve_mb: if name.starts_with("disk") { 100_000_000_000 } else { 1 },
        });
        written.locks =
            Some(AgentLocks { dir: data.join("locks"), socket: data.join("locks.sock") });
        std::fs::write(&config, written.to_toml("written by fleet-tests").unwrap() + extra)
            .unwrap();
        Agent { device, dir, config }
    }

    pub fn release_file(&self, release: &ReleaseSpec) -> PathBuf {
        let path = self.dir.path().join(format!("{}.json", release.id));
        std::fs::write(&path, serde_json::to_vec_pretty(release).unwrap()).unwrap();
        path
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin("fleet-agent"));
        c.arg("--config").arg(&self.config).env_remove("FLEET_AGENT_FAULT");
        c
    }

    pub fn apply(&self, release: &ReleaseSpec) -> Output {
        let out =
            self.cmd().arg("apply").arg(self.release_file(release)).arg("--json").output().unwrap();
        eprintln!("apply {}: {}\n{}", release.id, out.status, String::from_utf8_lossy(&out.stderr));
        out
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.cmd().args(["status", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Names of this device's containers, with whether each is running.
    pub async fn containers(&self, env: &TestEnv) -> BTreeMap<String, (String, bool)> {
        let docker = env.docker().await;
        let filters = std::collections::HashMap::from([(
            "label",
            vec![format!("io.fleet.device={}", self.device)],
        )]);
        let list = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().all(true).filters(&filters).build(),
            ))
            .await
            .unwrap();
        list.into_iter()
            .map(|c| {
                let name = c.names.unwrap_or_default()[0].trim_start_matches('/').to_owned();
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                (name, (c.id.unwrap_or_default(), running))
            })
            .collect()
    }

    pub async fn cleanup(&self, env: &TestEnv) {
        let docker = env.docker().await;
        for (_, (id, _)) in self.containers(env).await {
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
        }
    }
}
