//! The agent's configuration: `/etc/fleet-agent/config.toml` plus `config.d/*.toml` beside it,
//! merged in name order (later files win, tables merge key by key), then checked once into a
//! [`Config`]. Unknown keys are refused with their path, so a typo never silently does nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::{DeviceId, RegistryCredential, TrustedKey, TrustedKeys};
use serde::Deserialize;

// The `[link]` table's checked types belong to the link; named here too, beside the check.
pub use crate::link::{Broker, LinkConfig};

/// Default location of the main file.
pub const DEFAULT_PATH: &str = "/etc/fleet-agent/config.toml";

/// The configuration format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// The documented default configuration (`fleet-agent --print-default-config`).
pub const DEFAULT_CONFIG: &str = r#"# fleet-agent configuration. Files in config.d/*.toml next to this one are merged on top,
# in name order. Unknown keys are refused.
version = 1

# This device's id: its MQTT client id and certificate common name. 1-64 of [A-Za-z0-9._-].
device_id = "CHANGE-ME"

# Where the agent keeps its state (accepted desired state, proven release, update journal).
data_dir = "/var/lib/fleet-agent"

# Logins for private registries the agent pulls from.
# The password is read from a file so it never sits in a config file or an environment
# variable. Example:
#   [[registries]]
#   host = "registry.example.com:5000"
#   username = "robot-7"
#   password_file = "/etc/fleet-agent/registry.password"
registries = []

[engine]
# The Docker Engine API socket.
socket = "/var/run/docker.sock"
# Longest single engine request; image pulls on slow links take long.
request_timeout_secs = 3600

[update]
# Grace period before a stopped container is killed.
stop_grace_secs = 10
# A service without a health check counts as healthy after running this long without a restart.
stable_for_secs = 2
# Restarts during an update's health wait that count as a crash loop.
max_restarts = 2
# How often the agent re-checks that the device matches its release even without engine events.
resync_secs = 60
# Free disk (MB) the engine's filesystem must keep; an update that would start downloading
# below it fails with the numbers and the device stays on its release.
disk_reserve_mb = 500

[locks]
# Applications hold update locks as files in this directory (mount it into opted-in services)
# or through the socket below; while any lease is in force the agent downloads an update but
# does not switch to it. An app-written file without a JSON lease lasts default_ttl_secs from
# its last modification.
dir = "/run/fleet-agent/locks"
socket = "/run/fleet-agent/locks.sock"
default_ttl_secs = 300

[link]
# Broker URL. mqtts://host:port (mutual TLS) for any broker; mqtt://host:port (plain) is allowed
# only for loopback hosts (the fleet server's embedded broker). Empty: no link (local mode only).
broker = ""
# Relative paths below resolve against the directory of this file (an enrollment bundle
# directory works as is: fleet-agent --config <bundle>/config.toml run).
# The fleet CA (PEM): the broker's server certificate must chain to it, and only to it.
ca_file = "ca.pem"
# This device's client certificate (PEM, CN = device_id).
cert_file = "device.pem"
# Its private key (PEM, PKCS#8); must be mode 0600.
key_file = "device.key"
# A file (mode 0600) with this device's password on the server's embedded broker, which logs
# devices in by name and password (enrollment writes it when the server uses that broker).
# Empty: no password (Mosquitto knows devices by their certificates).
password_file = ""
# Hex Ed25519 public keys trusted for desired state and commands (several during a rotation).
server_keys = []
keep_alive_secs = 30
# Reconnect backoff: a random delay in [0, min(max, initial * 2^attempt)] (full jitter), so a
# fleet does not reconnect in lock-step after a broker restart.
backoff_initial_ms = 500
backoff_max_secs = 60

[telemetry]
# Host metrics, buffered on disk through offline days and delivered at least once: a point
# leaves the buffer only when the server has stored it. Needs the [link].
enabled = true
# The buffer's database: "redb" (one file, data_dir/telemetry.redb; memory stays flat however
# much is buffered) or "sled" (a directory, data_dir/telemetry; faster appends, but its memory
# grows with the backlog; only in an agent built with the `sled` feature, which the packages
# are not). See BENCHMARKS.md.
store = "redb"
# Disk budget of the buffer in MB; beyond it the oldest points are dropped (and counted, and
# the count reported). The files take up to about 2x this plus 4 MB on disk with redb, 4x
# plus 8 MB with sled.
budget_mb = 64
# Host metrics period in seconds (CPU, load, memory, disk, temperatures, network, uptime);
# 0 turns them off.
host_interval_secs = 30
# Container metrics period in seconds (CPU, memory, pids, network, restarts, health of each
# service, from one one-shot stats request per container); 0 turns them off. Lifecycle
# events (start, die with exit code, oom, health changes) are recorded as they happen.
container_interval_secs = 30
# Mounts whose free and total space are reported.
mounts = ["/"]
# Where /proc and /sys are read (a container running the agent may mount the host's here).
root = "/"
# How batches travel: "deflate" (6-8x smaller, see BENCHMARKS.md) or "none". Compressed
# batches need a fleet-server of this version or newer.
compression = "deflate"
# Points per batch and batches sent but not yet acknowledged.
batch_points = 500
max_in_flight = 4
# A batch without the server's acknowledgement after this long is sent again.
ack_timeout_secs = 30
# Pace of a backlog after a reconnect, so a day of buffered data does not saturate a
# cellular link: points per second, and how many may go at once.
drain_points_per_sec = 1000
drain_burst_points = 2000
# Applications post points to a socket in this directory; services with
# `x-fleet: { telemetry: true }` get the directory mounted at /run/fleet (socket
# /run/fleet/telemetry.sock). Empty: no ingestion endpoint.
socket_dir = "/run/fleet-agent/telemetry"
# Also accept posts on this loopback TCP address (e.g. "127.0.0.1:8186", InfluxDB's port
# plus one), for host processes that cannot use the socket; their points are labelled
# origin=host. Empty: socket only. Only loopback addresses: the endpoint has no authentication.
tcp_listen = ""
# Per request: largest body and most points.
max_body_kb = 1024
max_points_per_request = 10000
# Per service: sustained points per second and burst; beyond them requests get 429.
service_points_per_sec = 1000
service_burst_points = 10000

[hardware]
# Where /dev, /sys, /proc and /etc are read for the inventory and device mapping (a container
# running the agent may mount the host's here). `fleet-agent inventory` shows what is found.
root = "/"
# Memory (MB) kept for the OS and the agent: a release whose services' memory limits add up to
# more than the device's memory minus this is refused before anything stops.
memory_reserve_mb = 256
# Devices appearing and disappearing under /dev are watched; a service whose device comes back
# under a new node is re-created with it. Rescans wait this long for udev to settle.
settle_ms = 250

[policy]
# What a release may do on this device beyond an ordinary container. A release that asks for
# more is refused before anything stops, each refusal naming the field and the key below. The
# agent reports this section to the server, so `fleetctl rollout plan` shows a refusal before
# the rollout starts. (allowed_host_paths was read from [volumes], the others from [hardware];
# they still are, but a file may not set a key in both places.)
#
# Services may run privileged (every device, every capability, every namespace) only when
# true; request the hardware by name instead (x-fleet hardware in the Compose file).
allow_privileged = false
# Capabilities services may add beyond Docker's default set (e.g. ["NET_ADMIN"] for a service
# that configures a CAN or Wi-Fi interface). Any other cap_add is refused, naming this key.
allowed_capabilities = []
# Device nodes that give a container the host (/dev/mem, /dev/kmem, /dev/port, /dev/kmsg, raw
# flash /dev/mtd*, block devices, terminals and consoles) are mapped only when listed here by
# host path. Serial ports and what `fleet-agent inventory` classifies need no entry.
allowed_devices = []
# Services may use real-time scheduling (realtime_priority, CAP_SYS_NICE) for control loops.
allow_realtime = true
# Host namespaces services may share: "network" (network_mode: host; ROS 2 and DDS discovery
# need it), "pid" (the container sees and can signal every host process), "ipc", "uts".
allow_host_namespaces = ["network"]
# Host directories services may bind-mount (a Compose `volumes: ["/srv/maps:/maps"]`), each
# with everything under it. Empty: none, besides what the agent mounts itself (its telemetry
# socket). A release that mounts any other host path is refused with the path; so is a path
# that passes through a symbolic link below one of these (a container may have planted it).
# Named volumes need no entry: the agent creates them, and they survive updates and rollbacks.
allowed_host_paths = []

[secrets]
# Where the agent writes the secret files it bind-mounts read-only into services (directories
# 0700). A tmpfs (/run is one on any systemd device), so a value is never written to flash; the
# values are kept sealed to this device in the state database and written here again after a
# reboot, before the agent starts the services that read them.
dir = "/run/fleet-agent/secrets"

[commands]
# The reboot command runs `systemctl reboot` only when true.
allow_reboot = false

[log]
# "plain" (journald-friendly) or "json".
format = "plain"
# Filter: a level, or targets with levels, e.g. "info" or "info,fleet_agent=debug". FLEET_LOG
# (the same syntax) overrides it.
level = "info"
"#;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key is unknown, missing or of the wrong type.
    #[error("configuration key `{key}`: {message} (files: {files})")]
    Invalid {
        /// Dotted path of the key, e.g. `update.resync_secs`.
        key: String,
        /// What is wrong.
        message: String,
        /// The files that were merged.
        files: String,
    },
    /// The `version` key names another format.
    #[error("configuration version {found} is not supported (this agent reads version {CONFIG_VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The device id is invalid.
    #[error("configuration key `device_id`: {0}")]
    DeviceId(#[from] fleet_proto::IdError),
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This device's id.
    pub device_id: DeviceId,
    /// State directory.
    pub data_dir: PathBuf,
    /// Docker socket path.
    pub engine_socket: String,
    /// Longest engine request.
    pub engine_timeout: Duration,
    /// Stop grace period.
    pub stop_grace: Duration,
    /// Health stability window for services without a health check.
    pub stable_for: Duration,
    /// Crash-loop threshold during health waits.
    pub max_restarts: u32,
    /// Resync period.
    pub resync: Duration,
    /// Disk reserve in bytes.
    pub disk_reserve: u64,
    /// Registry logins (passwords read from their files).
    pub registries: Vec<RegistryCredential>,
    /// Update lock directory.
    pub locks_dir: PathBuf,
    /// Update lock socket.
    pub locks_socket: PathBuf,
    /// Lease of an app-written lock file without an explicit end.
    pub locks_default_ttl: Duration,
    /// Log format.
    pub log_json: bool,
    /// Log filter.
    pub log_level: String,
    /// The link to the fleet server; `None`: local mode only.
    pub link: Option<LinkConfig>,
    /// Whether the reboot command may reboot the device.
    pub allow_reboot: bool,
    /// Telemetry collection, buffer and delivery.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// What services may ask of this device's hardware, and where it is read.
    pub hardware: crate::hardware::HardwarePolicy,
    /// How long hot-plug rescans wait for udev to settle.
    pub hardware_settle: Duration,
    /// Where secret files are written (`[secrets] dir`, a tmpfs).
    pub secrets_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: u32,
    device_id: String,
    data_dir: PathBuf,
    engine: RawEngine,
    update: RawUpdate,
    registries: Vec<RawRegistry>,
    locks: RawLocks,
    link: RawLink,
    commands: RawCommands,
    hardware: RawHardware,
    policy: RawPolicy,
    secrets: RawSecrets,
    telemetry: RawTelemetry,
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allow_privileged: bool,
    allowed_capabilities: Vec<String>,
    allowed_devices: Vec<String>,
    allow_realtime: bool,
    allow_host_namespaces: Vec<String>,
    allowed_host_paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHardware {
    root: PathBuf,
    memory_reserve_mb: u64,
    settle_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    enabled: bool,
    store: crate::telemetry::store::StoreKind,
    budget_mb: u64,
    host_interval_secs: u64,
    container_interval_secs: u64,
    compression: fleet_proto::Compression,
    mounts: Vec<PathBuf>,
    root: PathBuf,
    batch_points: usize,
    max_in_flight: usize,
    ack_timeout_secs: u64,
    drain_points_per_sec: u64,
    drain_burst_points: u64,
    socket_dir: PathBuf,
    tcp_listen: String,
    max_body_kb: usize,
    max_points_per_request: usize,
    service_points_per_sec: u64,
    service_burst_points: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    broker: String,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    password_file: PathBuf,
    server_keys: Vec<String>,
    keep_alive_secs: u64,
    backoff_initial_ms: u64,
    backoff_max_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommands {
    allow_reboot: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: String,
    username: String,
    password_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocks {
    dir: PathBuf,
    socket: PathBuf,
    default_ttl_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    socket: String,
    request_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    stop_grace_secs: u64,
    stable_for_secs: u64,
    max_restarts: u32,
    resync_secs: u64,
    disk_reserve_mb: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: LogFormat,
    level: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Plain,
    Json,
}

fn parse(path: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string() })
}

/// Merges `over` into `base`: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Keys of `[policy]` that older configurations set elsewhere: (section, key).
const MOVED_TO_POLICY: &[(&str, &str)] = &[
    ("hardware", "allow_privileged"),
    ("hardware", "allowed_capabilities"),
    ("hardware", "allowed_devices"),
    ("hardware", "allow_realtime"),
    ("volumes", "allowed_host_paths"),
];

/// One file's table with the policy keys it sets in their old places moved into `[policy]`,
/// so configurations written before `[policy]` keep their meaning. A file that sets a key in
/// both places is refused: which one it meant cannot be known.
fn moved_policy_keys(file: &str, mut table: toml::Table) -> Result<toml::Table, ConfigError> {
    for (section, key) in MOVED_TO_POLICY {
        let Some(toml::Value::Table(old)) = table.get_mut(*section) else { continue };
        let Some(value) = old.remove(*key) else { continue };
        if old.is_empty() && *section == "volumes" {
            table.remove(*section);
        }
        let policy =
            table.entry("policy").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(policy) = policy else { continue };
        if policy.contains_key(*key) {
            return Err(ConfigError::Invalid {
                key: format!("{section}.{key}"),
                message: format!("set in both [{section}] and [policy]; keep it in [policy] only"),
                files: file.to_owned(),
            });
        }
        policy.insert((*key).to_owned(), value);
    }
    Ok(table)
}

/// `[policy]` checked: host paths absolute, plain, not `/`; namespaces known.
fn check_policy(
    raw: RawPolicy,
    files: &str,
) -> Result<fleet_proto::policy::DevicePolicy, ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        key,
        message,
        files: files.to_owned(),
    };
    for (i, p) in raw.allowed_host_paths.iter().enumerate() {
        let path = Path::new(p);
        let normal = path
            .components()
            .all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
        if !path.is_absolute() || !normal || path == Path::new("/") {
            return Err(invalid(
                format!("policy.allowed_host_paths[{i}]"),
                format!("{p} must be an absolute directory without . or .. (and not / itself, which would allow the whole host)"),
            ));
        }
    }
    let mut namespaces = Vec::new();
    for (i, n) in raw.allow_host_namespaces.iter().enumerate() {
        let ns = n.parse().map_err(|m| invalid(format!("policy.allow_host_namespaces[{i}]"), m))?;
        if !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    Ok(fleet_proto::policy::DevicePolicy {
        allow_privileged: raw.allow_privileged,
        allowed_capabilities: raw.allowed_capabilities,
        allowed_devices: raw.allowed_devices,
        allow_realtime: raw.allow_realtime,
        allow_host_namespaces: namespaces,
        allowed_host_paths: raw.allowed_host_paths,
    })
}

impl Config {
    /// Loads the defaults, then `path` (if it exists or was named explicitly), then
    /// `config.d/*.toml` next to it.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        let mut table = parse("built-in defaults", DEFAULT_CONFIG)?;
        let mut files = vec![];
        let mut read = |p: &Path, table: &mut toml::Table| -> Result<(), ConfigError> {
            let text = std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?;
            let name = p.display().to_string();
            merge(table, moved_policy_keys(&name, parse(&name, &text)?)?);
            files.push(name);
            Ok(())
        };
        if must_exist || path.exists() {
            read(path, &mut table)?;
        }
        let dropins = path.parent().unwrap_or(Path::new(".")).join("config.d");
        if let Ok(entries) = std::fs::read_dir(&dropins) {
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            names.sort();
            for p in names {
                read(&p, &mut table)?;
            }
        }
        // Relative link file paths resolve against the main file's directory.
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Config::check(table, &files.join(", "), &base)
    }

    /// Parses one TOML document on top of the defaults (for tests and `--print-default-config`).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut table = parse("built-in defaults", DEFAULT_CONFIG)?;
        merge(&mut table, moved_policy_keys("<string>", parse("<string>", text)?)?);
        Config::check(table, "<string>", Path::new("."))
    }

    /// Like [`Self::from_toml`], with relative link file paths resolved against `base`.
    pub fn from_toml_in(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut table = parse("built-in defaults", DEFAULT_CONFIG)?;
        merge(&mut table, moved_policy_keys("<string>", parse("<string>", text)?)?);
        Config::check(table, "<string>", base)
    }

    fn check(table: toml::Table, files: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: Raw =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Invalid {
                    key: e.path().to_string(),
                    message: e.inner().message().to_owned(),
                    files: if files.is_empty() {
                        "built-in defaults only".to_owned()
                    } else {
                        files.to_owned()
                    },
                }
            })?;
        if raw.version != CONFIG_VERSION {
            return Err(ConfigError::Version { found: raw.version });
        }
        let ttl = Duration::from_secs(raw.locks.default_ttl_secs);
        if !(crate::lock::MIN_TTL..=crate::lock::MAX_TTL).contains(&ttl) {
            return Err(ConfigError::Invalid {
                key: "locks.default_ttl_secs".to_owned(),
                message: format!("{} is outside 1..=86400 seconds", raw.locks.default_ttl_secs),
                files: files.to_owned(),
            });
        }
        let mut registries = Vec::with_capacity(raw.registries.len());
        for (i, r) in raw.registries.into_iter().enumerate() {
            let password =
                std::fs::read_to_string(&r.password_file).map_err(|source| ConfigError::Read {
                    path: format!("{} (registries[{i}].password_file)", r.password_file.display()),
                    source,
                })?;
            registries.push(RegistryCredential {
                registry: r.host,
                username: r.username,
                // A trailing newline from `echo secret > file` is not part of the password.
                password: password.trim_end_matches(['\n', '\r']).to_owned(),
            });
        }
        let policy = check_policy(raw.policy, files)?;
        let secrets_dir = raw.secrets.dir;
        if !secrets_dir.is_absolute() || secrets_dir == Path::new("/") {
            return Err(ConfigError::Invalid {
                key: "secrets.dir".to_owned(),
                message: format!(
                    "{} must be an absolute directory of its own, not /",
                    secrets_dir.display()
                ),
                files: files.to_owned(),
            });
        }
        if let Err(message) = log_filter(&raw.log.level) {
            return Err(ConfigError::Invalid {
                key: "log.level".to_owned(),
                message,
                files: files.to_owned(),
            });
        }
        let device_id = DeviceId::new(raw.device_id)?;
        let telemetry = check_telemetry(raw.telemetry, files)?;
        let link = check_link(raw.link, &device_id, base, files, telemetry.compression)?;
        Ok(Config {
            registries,
            link,
            allow_reboot: raw.commands.allow_reboot,
            hardware: crate::hardware::HardwarePolicy {
                root: raw.hardware.root,
                memory_reserve_bytes: raw.hardware.memory_reserve_mb.saturating_mul(1 << 20),
                policy,
            },
            hardware_settle: Duration::from_millis(raw.hardware.settle_ms.clamp(10, 10_000)),
            secrets_dir,
            telemetry,
            device_id,
            data_dir: raw.data_dir,
            engine_socket: raw.engine.socket,
            engine_timeout: Duration::from_secs(raw.engine.request_timeout_secs),
            stop_grace: Duration::from_secs(raw.update.stop_grace_secs),
            stable_for: Duration::from_secs(raw.update.stable_for_secs),
            max_restarts: raw.update.max_restarts,
            resync: Duration::from_secs(raw.update.resync_secs.max(1)),
            disk_reserve: raw.update.disk_reserve_mb.saturating_mul(1_000_000),
            locks_dir: raw.locks.dir,
            locks_socket: raw.locks.socket,
            locks_default_ttl: Duration::from_secs(raw.locks.default_ttl_secs),
            log_json: raw.log.format == LogFormat::Json,
            log_level: raw.log.level,
        })
    }
}

/// A log filter: comma-separated `level` or `target=level` directives (`FLEET_LOG` and
/// `[log] level`). A bare word that is no level would be read by tracing as a target at every
/// level, silencing everything else: a typo like "inf" is refused instead.
pub fn log_filter(text: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=')
            && directive.parse::<tracing_subscriber::filter::LevelFilter>().is_err()
        {
            return Err(format!(
                "{directive:?} in {text:?} is neither a level (off, error, warn, info, debug, \
                 trace) nor target=level"
            ));
        }
    }
    text.parse()
        .map_err(|e| format!("{text:?} is not a filter like \"info,fleet_agent=debug\": {e}"))
}

fn check_telemetry(
    raw: RawTelemetry,
    files: &str,
) -> Result<crate::telemetry::TelemetryConfig, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: format!("telemetry.{key}"),
        message,
        files: files.to_owned(),
    };
    if cfg!(not(feature = "sled")) && raw.store == crate::telemetry::store::StoreKind::Sled {
        return Err(invalid(
            "store",
            "\"sled\" needs an agent built with the `sled` feature; this one buffers in redb: \
             set store = \"redb\" (the default)"
                .into(),
        ));
    }
    if !(1..=1_000_000).contains(&raw.budget_mb) {
        return Err(invalid("budget_mb", format!("{} is outside 1..=1000000 MB", raw.budget_mb)));
    }
    if !(1..=10_000).contains(&raw.batch_points) {
        return Err(invalid("batch_points", format!("{} is outside 1..=10000", raw.batch_points)));
    }
    if !(1..=64).contains(&raw.max_in_flight) {
        return Err(invalid("max_in_flight", format!("{} is outside 1..=64", raw.max_in_flight)));
    }
    if raw.ack_timeout_secs == 0 {
        return Err(invalid("ack_timeout_secs", "must be at least 1 second".into()));
    }
    if raw.drain_points_per_sec == 0 {
        return Err(invalid(
            "drain_points_per_sec",
            "must be at least 1 (0 would never send)".into(),
        ));
    }
    if raw.drain_burst_points < raw.batch_points as u64 {
        return Err(invalid(
            "drain_burst_points",
            format!(
                "{} is below batch_points ({}): no full batch could ever go",
                raw.drain_burst_points, raw.batch_points
            ),
        ));
    }
    if raw.max_body_kb == 0 || raw.max_body_kb > 65_536 {
        return Err(invalid("max_body_kb", format!("{} is outside 1..=65536 KB", raw.max_body_kb)));
    }
    if raw.max_points_per_request == 0 {
        return Err(invalid("max_points_per_request", "must be at least 1".into()));
    }
    if raw.service_points_per_sec == 0 || raw.service_burst_points == 0 {
        return Err(invalid(
            "service_points_per_sec",
            "the rate and burst must be at least 1".into(),
        ));
    }
    let tcp = match raw.tcp_listen.trim() {
        "" => None,
        addr => {
            let parsed: std::net::SocketAddr = addr.parse().map_err(|_| {
                invalid("tcp_listen", format!("{addr:?} is not an address like 127.0.0.1:8186"))
            })?;
            if !parsed.ip().is_loopback() {
                return Err(invalid(
                    "tcp_listen",
                    format!(
                        "{addr} is not a loopback address; the endpoint has no authentication, so only 127.0.0.1 or [::1] are allowed"
                    ),
                ));
            }
            Some(parsed)
        }
    };
    if tcp.is_some() && raw.socket_dir.as_os_str().is_empty() {
        return Err(invalid(
            "tcp_listen",
            "needs the ingestion endpoint: set socket_dir too".to_owned(),
        ));
    }
    let ingest =
        (!raw.socket_dir.as_os_str().is_empty()).then(|| crate::telemetry::ingest::IngestConfig {
            tcp,
            socket_dir: raw.socket_dir,
            max_body: raw.max_body_kb * 1024,
            max_points: raw.max_points_per_request,
            rate: raw.service_points_per_sec as f64,
            burst: raw.service_burst_points as f64,
            max_connections: 64,
        });
    Ok(crate::telemetry::TelemetryConfig {
        ingest,
        enabled: raw.enabled,
        store: raw.store,
        budget_bytes: raw.budget_mb * 1_000_000,
        host_interval: Duration::from_secs(raw.host_interval_secs),
        container_interval: Duration::from_secs(raw.container_interval_secs),
        compression: raw.compression,
        root: raw.root,
        mounts: raw.mounts,
        delivery: crate::telemetry::delivery::DeliveryConfig {
            max_points: raw.batch_points,
            max_in_flight: raw.max_in_flight,
            ack_timeout: Duration::from_secs(raw.ack_timeout_secs),
            rate: raw.drain_points_per_sec as f64,
            burst: raw.drain_burst_points as f64,
        },
    })
}

fn check_link(
    raw: RawLink,
    device: &DeviceId,
    base: &Path,
    files: &str,
    telemetry_compression: fleet_proto::Compression,
) -> Result<Option<LinkConfig>, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: format!("link.{key}"),
        message,
        files: files.to_owned(),
    };
    if raw.broker.trim().is_empty() {
        return Ok(None);
    }
    let broker = Broker::parse(raw.broker.trim()).map_err(|m| invalid("broker", m))?;
    if !broker.tls && !broker.is_loopback() {
        return Err(invalid(
            "broker",
            format!(
                "plain mqtt:// is allowed only to a loopback host, not {}; use mqtts:// (mutual TLS)",
                broker.host
            ),
        ));
    }
    let mut keys = Vec::with_capacity(raw.server_keys.len());
    for (i, k) in raw.server_keys.iter().enumerate() {
        keys.push(
            TrustedKey::from_hex(k)
                .map_err(|e| invalid(&format!("server_keys[{i}]"), e.to_string()))?,
        );
    }
    if keys.is_empty() {
        return Err(invalid(
            "server_keys",
            "no server key is trusted, so no desired state could ever be accepted; add the fleet server's public key (hex)".to_owned(),
        ));
    }
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let (ca_file, cert_file, key_file) =
        (resolve(raw.ca_file), resolve(raw.cert_file), resolve(raw.key_file));
    if broker.tls {
        for (key, path) in
            [("ca_file", &ca_file), ("cert_file", &cert_file), ("key_file", &key_file)]
        {
            std::fs::File::open(path)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_file)
                .map_err(|e| {
                    invalid("key_file", format!("cannot read {}: {e}", key_file.display()))
                })?
                .permissions(),
        );
        if mode & 0o077 != 0 {
            return Err(invalid(
                "key_file",
                format!(
                    "{} is readable by group or others (mode {:o}); chmod 600 {}",
                    key_file.display(),
                    mode & 0o777,
                    key_file.display()
                ),
            ));
        }
    }
    let password = if raw.password_file.as_os_str().is_empty() {
        None
    } else {
        let path = resolve(raw.password_file);
        let read = |e: std::io::Error| {
            invalid("password_file", format!("cannot read {}: {e}", path.display()))
        };
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).map_err(read)?.permissions(),
        );
        if mode & 0o077 != 0 {
            return Err(invalid(
                "password_file",
                format!(
                    "{} is readable by group or others (mode {:o}); chmod 600 {}",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(read)?;
        Some(text.trim().to_owned())
    };
    if raw.keep_alive_secs < 5 {
        return Err(invalid(
            "keep_alive_secs",
            format!("{} is below 5 seconds", raw.keep_alive_secs),
        ));
    }
    if raw.backoff_initial_ms == 0 || raw.backoff_max_secs == 0 {
        return Err(invalid("backoff_initial_ms", "backoff values must be positive".to_owned()));
    }
    Ok(Some(LinkConfig {
        device: device.clone(),
        broker,
        ca_file,
        cert_file,
        key_file,
        server_keys: TrustedKeys::new(keys),
        password,
        keep_alive: Duration::from_secs(raw.keep_alive_secs),
        backoff_initial: Duration::from_millis(raw.backoff_initial_ms),
        backoff_max: Duration::from_secs(raw.backoff_max_secs)
            .max(Duration::from_millis(raw.backoff_initial_ms)),
        telemetry_compression,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_once_a_device_id_is_set() {
        let c = Config::from_toml("device_id = \"robot-7\"").unwrap();
        assert_eq!(c.device_id.as_str(), "robot-7");
        assert_eq!(c.engine_socket, "/var/run/docker.sock");
        assert_eq!(c.resync, Duration::from_secs(60));
    }

    #[test]
    fn telemetry_compression_defaults_to_deflate_and_unknown_codecs_are_named() {
        let c = Config::from_toml("device_id = \"d\"").unwrap();
        assert_eq!(c.telemetry.compression, fleet_proto::Compression::Deflate);
        let c =
            Config::from_toml("device_id = \"d\"\n[telemetry]\ncompression = \"none\"").unwrap();
        assert_eq!(c.telemetry.compression, fleet_proto::Compression::None);
        let err = Config::from_toml("device_id = \"d\"\n[telemetry]\ncompression = \"zstd\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`telemetry.compression`") && err.contains("deflate"), "{err}");
    }

    #[test]
    fn the_log_filter_is_checked_when_the_configuration_is_read() {
        assert!(Config::from_toml("device_id = \"d\"\n[log]\nlevel = \"info,fleet_agent=debug\"")
            .is_ok());
        let err =
            Config::from_toml("device_id = \"d\"\n[log]\nlevel = \"inf\"").unwrap_err().to_string();
        assert!(err.contains("`log.level`") && err.contains("\"inf\""), "{err}");
        assert!(log_filter("warn,rumqttc=error").is_ok());
        assert!(log_filter("fleet_agent=loud").is_err());
    }

    #[test]
    fn the_sled_buffer_is_refused_by_name_unless_built_in() {
        let c = Config::from_toml("device_id = \"d\"\n[telemetry]\nstore = \"sled\"");
        if cfg!(feature = "sled") {
            assert_eq!(c.unwrap().telemetry.store, crate::telemetry::store::StoreKind::Sled);
        } else {
            let err = c.unwrap_err().to_string();
            assert!(err.contains("`telemetry.store`") && err.contains("store = \"redb\""), "{err}");
        }
    }

    #[test]
    fn the_tcp_endpoint_is_loopback_only() {
        let with = |addr: &str| {
            Config::from_toml(&format!("device_id = \"d\"\n[telemetry]\ntcp_listen = \"{addr}\""))
        };
        let c = with("127.0.0.1:8186").unwrap();
        let tcp = c.telemetry.ingest.unwrap().tcp.unwrap();
        assert_eq!(tcp.to_string(), "127.0.0.1:8186");
        assert!(with("[::1]:8186").is_ok());
        let err = with("0.0.0.0:8186").unwrap_err().to_string();
        assert!(err.contains("`telemetry.tcp_listen`") && err.contains("not a loopback"), "{err}");
        let err = with("localhost").unwrap_err().to_string();
        assert!(err.contains("is not an address"), "{err}");
        assert!(Config::from_toml("device_id = \"d\"")
            .unwrap()
            .telemetry
            .ingest
            .unwrap()
            .tcp
            .is_none());
    }

    #[test]
    fn the_placeholder_device_id_passes_validation_but_says_change_me() {
        assert_eq!(Config::from_toml("").unwrap().device_id.as_str(), "CHANGE-ME");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let err = Config::from_toml("device_id = \"d\"\n[update]\nresync_sec = 5").unwrap_err();
        assert!(err.to_string().contains("`update.resync_sec`"), "{err}");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = Config::from_toml("device_id = \"d\"\n[engine]\nrequest_timeout_secs = \"long\"")
            .unwrap_err();
        assert!(err.to_string().contains("`engine.request_timeout_secs`"), "{err}");
    }

    #[test]
    fn other_versions_and_bad_ids_are_refused() {
        assert!(matches!(
            Config::from_toml("version = 2\ndevice_id = \"d\""),
            Err(ConfigError::Version { found: 2 })
        ));
        assert!(matches!(Config::from_toml("device_id = \"a/b\""), Err(ConfigError::DeviceId(_))));
    }

    #[test]
    fn drop_ins_merge_over_the_main_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            "device_id = \"robot-7\"\n[update]\nresync_secs = 30\nstop_grace_secs = 4\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        std::fs::write(dir.path().join("config.d/10-site.toml"), "[update]\nresync_secs = 20\n")
            .unwrap();
        std::fs::write(dir.path().join("config.d/20-bench.toml"), "[update]\nresync_secs = 10\n")
            .unwrap();
        std::fs::write(dir.path().join("config.d/README"), "ignored").unwrap();
        let c = Config::load(&main, true).unwrap();
        assert_eq!(c.resync, Duration::from_secs(10));
        assert_eq!(c.stop_grace, Duration::from_secs(4), "keys not overridden survive the merge");
    }

    #[test]
    fn registry_passwords_come_from_files_and_never_show_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let c = Config::from_toml(&format!(
            "device_id = \"d\"\n[[registries]]\nhost = \"r.example:5000\"\nusername = \"robot\"\npassword_file = \"{}\"\n",
            secret.display()
        ))
        .unwrap();
        assert_eq!(c.registries.len(), 1);
        assert_eq!(c.registries[0].password, "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        let missing = Config::from_toml("device_id = \"d\"\n[[registries]]\nhost = \"r\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n");
        let err = missing.unwrap_err().to_string();
        assert!(err.contains("registries[0].password_file"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(&main, "device_id = ").unwrap();
        let err = Config::load(&main, true).unwrap_err();
        assert!(err.to_string().contains("config.toml is not valid TOML"), "{err}");
    }

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    /// A bundle directory with the three files, the key at `key_mode`.
    fn bundle(key_mode: u32) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "device.pem", "device.key"] {
            std::fs::write(dir.path().join(f), "-----BEGIN X-----\n").unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("device.key"),
            std::fs::Permissions::from_mode(key_mode),
        )
        .unwrap();
        dir
    }

    fn link_toml(broker: &str, keys: &str) -> String {
        format!("device_id = \"robot-7\"\n[link]\nbroker = \"{broker}\"\nserver_keys = [{keys}]\n")
    }

    #[test]
    fn no_broker_means_no_link() {
        let c = Config::from_toml("device_id = \"d\"").unwrap();
        assert!(c.link.is_none());
        assert!(!c.allow_reboot);
    }

    #[test]
    fn relative_link_files_resolve_against_the_config_files_directory() {
        let dir = bundle(0o600);
        let main = dir.path().join("config.toml");
        std::fs::write(&main, link_toml("mqtts://fleet.example:8883", &format!("\"{KEY}\"")))
            .unwrap();
        let c = Config::load(&main, true).unwrap();
        let link = c.link.unwrap();
        assert_eq!(link.ca_file, dir.path().join("ca.pem"));
        assert_eq!(link.key_file, dir.path().join("device.key"));
        assert_eq!(link.broker, Broker { host: "fleet.example".into(), port: 8883, tls: true });
        assert_eq!(link.keep_alive, Duration::from_secs(30));
        assert_eq!(link.backoff_initial, Duration::from_millis(500));
        assert_eq!(link.device.as_str(), "robot-7");
    }

    #[test]
    fn plain_mqtt_is_refused_to_other_hosts_but_allowed_to_loopback() {
        let dir = bundle(0o600);
        let keys = format!("\"{KEY}\"");
        let err = Config::from_toml_in(&link_toml("mqtt://fleet.example:1883", &keys), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`link.broker`") && err.contains("mqtts://"), "{err}");
        for ok in ["mqtt://127.0.0.1:1883", "mqtt://localhost", "mqtt://[::1]:1883"] {
            let c = Config::from_toml_in(&link_toml(ok, &keys), dir.path()).unwrap();
            assert!(!c.link.unwrap().broker.tls, "{ok}");
        }
        let err = Config::from_toml_in(&link_toml("http://x", &keys), dir.path()).unwrap_err();
        assert!(err.to_string().contains("`link.broker`"), "{err}");
    }

    #[test]
    fn missing_files_are_named_with_their_path() {
        let dir = bundle(0o600);
        std::fs::remove_file(dir.path().join("device.pem")).unwrap();
        let err =
            Config::from_toml_in(&link_toml("mqtts://h:8883", &format!("\"{KEY}\"")), dir.path())
                .unwrap_err()
                .to_string();
        assert!(err.contains("`link.cert_file`"), "{err}");
        assert!(err.contains(&dir.path().join("device.pem").display().to_string()), "{err}");
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let dir = bundle(0o644);
        let err =
            Config::from_toml_in(&link_toml("mqtts://h:8883", &format!("\"{KEY}\"")), dir.path())
                .unwrap_err()
                .to_string();
        let key = dir.path().join("device.key");
        assert!(err.contains(&format!("chmod 600 {}", key.display())), "{err}");
        assert!(!err.contains("BEGIN"), "file contents never appear: {err}");
    }

    #[test]
    fn bad_and_missing_server_keys_are_refused() {
        let dir = bundle(0o600);
        let err = Config::from_toml_in(&link_toml("mqtts://h", "\"zz\""), dir.path()).unwrap_err();
        assert!(err.to_string().contains("`link.server_keys[0]`"), "{err}");
        let err = Config::from_toml_in(&link_toml("mqtts://h", ""), dir.path()).unwrap_err();
        assert!(err.to_string().contains("`link.server_keys`"), "{err}");
    }

    /// The writer fleetctl and the simulator use (fleet-api's `AgentConfig`) and this loader
    /// agree, awkward values included: quotes and backslashes in paths arrive as written.
    #[test]
    fn the_enrolling_sides_writer_is_read_back_as_written() {
        use fleet_api::agent_config::{AgentConfig, AgentEngine, AgentLink, AgentLocks};
        let dir = bundle(0o600);
        let data = dir.path().join(r#"data "quoted" \ back\slashed"#);
        let link = AgentLink {
            broker: "mqtts://fleet.example:8883".into(),
            ca_file: Some("ca.pem".into()),
            cert_file: Some("device.pem".into()),
            key_file: Some(dir.path().join("device.key")),
            server_keys: vec![KEY.into()],
            keep_alive_secs: Some(5),
            ..AgentLink::default()
        };
        let mut written = AgentConfig::new("robot-7", &data);
        written.link = Some(link);
        written.engine = Some(AgentEngine {
            socket: r#"unix:///run/"docker".sock"#.into(),
            request_timeout_secs: Some(120),
        });
        written.locks =
            Some(AgentLocks { dir: data.join("locks"), socket: data.join(r"locks\.sock") });
        let main = dir.path().join("config.toml");
        std::fs::write(&main, written.to_toml("a header\nover two lines").unwrap()).unwrap();

        let c = Config::load(&main, true).unwrap();
        assert_eq!(fleet_api::agent_config::AGENT_CONFIG_VERSION, CONFIG_VERSION);
        assert_eq!(c.device_id.as_str(), "robot-7");
        assert_eq!(c.data_dir, data);
        assert_eq!(c.engine_socket, r#"unix:///run/"docker".sock"#);
        assert_eq!(c.engine_timeout, Duration::from_secs(120));
        assert_eq!(c.locks_dir, data.join("locks"));
        assert_eq!(c.locks_socket, data.join(r"locks\.sock"));
        let link = c.link.unwrap();
        assert_eq!(link.ca_file, dir.path().join("ca.pem"));
        assert_eq!(link.key_file, dir.path().join("device.key"));
        assert_eq!(link.keep_alive, Duration::from_secs(5));
        assert_eq!(link.backoff_initial, Duration::from_millis(500), "unset keys keep defaults");
    }

    #[test]
    fn the_policy_is_read_from_its_section_and_from_where_older_files_set_it() {
        use fleet_proto::policy::{DevicePolicy, Namespace};
        let c = Config::from_toml("device_id = \"d\"").unwrap();
        assert_eq!(c.hardware.policy, DevicePolicy::default());
        assert_eq!(c.hardware.policy.allow_host_namespaces, [Namespace::Network]);
        let c = Config::from_toml(
            "device_id = \"d\"\n[policy]\nallowed_capabilities = [\"NET_ADMIN\"]\nallow_host_namespaces = [\"network\", \"pid\", \"pid\"]\nallowed_host_paths = [\"/srv/maps\"]\n",
        )
        .unwrap();
        assert_eq!(c.hardware.policy.allowed_capabilities, ["NET_ADMIN"]);
        assert_eq!(c.hardware.policy.allow_host_namespaces, [Namespace::Network, Namespace::Pid]);
        assert_eq!(c.hardware.policy.allowed_host_paths, ["/srv/maps"]);
        // Written before [policy]: the same meaning.
        let old = Config::from_toml(
            "device_id = \"d\"\n[hardware]\nallow_privileged = true\nallowed_devices = [\"/dev/kmsg\"]\nallow_realtime = false\n[volumes]\nallowed_host_paths = [\"/srv/maps\"]\n",
        )
        .unwrap();
        assert!(old.hardware.policy.allow_privileged && !old.hardware.policy.allow_realtime);
        assert_eq!(old.hardware.policy.allowed_devices, ["/dev/kmsg"]);
        assert_eq!(old.hardware.policy.allowed_host_paths, ["/srv/maps"]);
    }

    #[test]
    fn a_policy_key_set_twice_or_wrong_is_refused_by_name() {
        let key = |toml: &str| match Config::from_toml(toml) {
            Err(ConfigError::Invalid { key, message, .. }) => format!("{key}: {message}"),
            other => panic!("{other:?}"),
        };
        let both = key("device_id = \"d\"\n[hardware]\nallow_privileged = true\n[policy]\nallow_privileged = false\n");
        assert!(both.starts_with("hardware.allow_privileged: set in both"), "{both}");
        let ns = key("device_id = \"d\"\n[policy]\nallow_host_namespaces = [\"user\"]\n");
        assert!(ns.starts_with("policy.allow_host_namespaces[0]: \"user\" is not"), "{ns}");
        for path in ["/", "srv", "/srv/../etc"] {
            let bad =
                key(&format!("device_id = \"d\"\n[policy]\nallowed_host_paths = [\"{path}\"]\n"));
            assert!(bad.starts_with("policy.allowed_host_paths[0]"), "{bad}");
        }
    }
}
