//! The agent's `config.toml` as the enrolling side writes it (feature `enroll`): `fleetctl
//! device enroll` for a bundle, `fleet-sim` and the e2e tests for their agents.
//!
//! Typed and serialised with `toml`, so a path with a quote or a backslash is escaped rather
//! than pasted into a string. Only the keys these writers set are here; every other key keeps
//! the agent's documented default (`fleet-agent --print-default-config`). The agent crate
//! tests that its loader reads what [`AgentConfig::to_toml`] writes.

use std::path::PathBuf;

use serde::Serialize;

/// The configuration format version written (the agent's `CONFIG_VERSION`).
pub const AGENT_CONFIG_VERSION: u32 = 1;

/// An agent's `config.toml`: its identity, its data, its link and the few tunables writers set.
#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    /// Always [`AGENT_CONFIG_VERSION`].
    pub version: u32,
    /// The device id (its MQTT client id and certificate common name).
    pub device_id: String,
    /// Where the agent keeps its state.
    pub data_dir: PathBuf,
    /// `[engine]`: the Docker engine, when not the default socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<AgentEngine>,
    /// `[update]`: timings of updates, when not the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<AgentUpdate>,
    /// `[locks]`: where applications hold update locks, when not the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locks: Option<AgentLocks>,
    /// `[link]`: the broker and the keys the device trusts; none: local mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<AgentLink>,
    /// `[telemetry]`, when not the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<AgentTelemetry>,
    /// `[hardware]`, when not the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware: Option<AgentHardware>,
}

/// `[engine]`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentEngine {
    /// The Docker Engine API socket (a path or `unix://...`).
    pub socket: String,
    /// Longest single engine request, in seconds, when not the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_secs: Option<u64>,
}

/// `[update]`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentUpdate {
    /// Grace period before a stopped container is killed.
    pub stop_grace_secs: u64,
    /// A service without a health check counts as healthy after running this long.
    pub stable_for_secs: u64,
    /// How often the agent re-checks its release without engine events.
    pub resync_secs: u64,
    /// Free disk (MB) the engine's filesystem must keep.
    pub disk_reserve_mb: u64,
}

/// `[locks]`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentLocks {
    /// The lock file directory.
    pub dir: PathBuf,
    /// The lock API socket.
    pub socket: PathBuf,
}

/// `[link]`. Relative certificate paths resolve against the config file's directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentLink {
    /// Broker URL (`mqtts://host:port`, or `mqtt://` on loopback).
    pub broker: String,
    /// The fleet CA (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The device's certificate (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The device's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Its password on the server's embedded broker (a file holding it, mode 0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Hex Ed25519 keys trusted for desired state and commands.
    pub server_keys: Vec<String>,
    /// MQTT keep-alive, when not the agent's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_secs: Option<u64>,
    /// First reconnect backoff, when not the agent's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_initial_ms: Option<u64>,
    /// Longest reconnect backoff, when not the agent's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_max_secs: Option<u64>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentTelemetry {
    /// Whether the agent measures and sends telemetry.
    pub enabled: bool,
    /// Host metrics interval (0: none).
    pub host_interval_secs: u64,
    /// Container metrics interval (0: none).
    pub container_interval_secs: u64,
    /// The telemetry buffer's disk budget.
    pub budget_mb: u64,
    /// Where services' telemetry sockets go (empty: none).
    pub socket_dir: PathBuf,
}

/// `[hardware]`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentHardware {
    /// The root the hardware inventory is read under (`/` on a device).
    pub root: PathBuf,
}

impl AgentConfig {
    /// A configuration for `device_id` keeping its state in `data_dir`; every table at the
    /// agent's defaults (no link: local mode).
    pub fn new(device_id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            version: AGENT_CONFIG_VERSION,
            device_id: device_id.into(),
            data_dir: data_dir.into(),
            engine: None,
            update: None,
            locks: None,
            link: None,
            telemetry: None,
            hardware: None,
        }
    }

    /// The file's text: `header` as `#` comment lines, then the TOML. Fails only for a path
    /// that is not UTF-8 (TOML strings are).
    pub fn to_toml(&self, header: &str) -> Result<String, toml::ser::Error> {
        let mut text: String = header
            .lines()
            .map(|l| if l.is_empty() { "#\n".to_owned() } else { format!("# {l}\n") })
            .collect();
        text.push_str(&toml::to_string(self)?);
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awkward_values_are_escaped_not_pasted() {
        let link = AgentLink {
            broker: "mqtt://127.0.0.1:1883".into(),
            server_keys: vec!["ab\"cd".into()],
            ..AgentLink::default()
        };
        let mut config = AgentConfig::new("robot-7", r#"/data/a "quoted" \dir"#);
        config.link = Some(link);
        let text = config.to_toml("written by a test\nsecond line").unwrap();
        assert!(text.starts_with("# written by a test\n# second line\nversion = 1\n"), "{text}");
        let back: toml::Table = text.parse().unwrap();
        assert_eq!(back["data_dir"].as_str(), Some(r#"/data/a "quoted" \dir"#));
        assert_eq!(back["link"]["server_keys"][0].as_str(), Some("ab\"cd"));
        assert!(back.get("engine").is_none(), "unset tables keep the agent's defaults");
        assert!(back["link"].get("keep_alive_secs").is_none());
    }
}
