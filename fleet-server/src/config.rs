//! The server's configuration file, merged under its flags and environment variables.
//!
//! Precedence, highest first: command-line flags, `FLEET_*` environment variables, the file
//! given with `--config` (default `/etc/fleet-server/config.toml` when it exists), the
//! built-in defaults ([`DEFAULT_CONFIG`] documents them). Unknown keys are refused with their
//! path, and secrets (registry passwords) are read from files, never written inline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleet_oci::guard::Allowlist;
use fleet_proto::RegistryCredential;
use serde::Deserialize;

use crate::ServeOptions;

/// The default configuration, documented; `fleet-server --print-default-config` prints it.
pub const DEFAULT_CONFIG: &str = r#"# fleet-server configuration. Flags and FLEET_* environment variables override these.
version = 1

# Where the store, the fleet CA, the signing key and the admin token live.
data = "fleet-data"

# The REST API. Keep it on loopback behind a TLS-terminating proxy when it must be reachable.
api_listen = "127.0.0.1:8080"

# The embedded MQTT broker (loopback only: it cannot keep devices out of each other's topics).
mqtt_listen = "127.0.0.1:1883"

# An external broker instead of the embedded one, e.g. Mosquitto set up with
# packaging/mosquitto/ and `fleet-server broker-files`:
# broker = "mqtts://mqtt.example.com:8883"
# broker_files = "/etc/mosquitto/fleet"
# This process's identity on that broker: "fleet-server" (server.pem), or "fleet-server-NAME"
# (NAME.pem, from `broker-files --server-identity`) for each further server process.
# broker_identity = "fleet-server"

# The broker URL written into enrollment bundles (default: the broker above).
# device_broker = "mqtts://mqtt.example.com:8883"

# The registries whose tags the server resolves, as image references name them (host[:port],
# compared exactly, letters in any case; Docker Hub is "docker.io"). Empty: any registry, but
# only at public addresses; a registry on loopback, a private network, link-local or a cloud's
# metadata address must be listed. The agent_repository's registry is reached in any case.
# allowed_registries = ["registry.example.com", "docker.io", "localhost:5000"]
allowed_registries = []

# Private registries: used to resolve image tags when releases are created, and sent to
# devices inside their signed desired state so they can pull.
# [[registries]]
# registry = "registry.example.com"
# username = "fleet"
# password_file = "/etc/fleet-server/registry-password"

# Where agent releases (`fleetctl release create-agent`) push their binaries, as OCI
# artifacts; devices download them from here (a login above applies to its registry).
# agent_repository = "registry.example.com/fleet/agent"
"#;

/// The file's shape.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: Option<u32>,
    data: Option<PathBuf>,
    api_listen: Option<SocketAddr>,
    mqtt_listen: Option<SocketAddr>,
    broker: Option<String>,
    broker_files: Option<PathBuf>,
    broker_identity: Option<String>,
    device_broker: Option<String>,
    #[serde(default)]
    registries: Vec<RegistryLogin>,
    agent_repository: Option<String>,
    #[serde(default)]
    allowed_registries: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryLogin {
    registry: String,
    username: String,
    password_file: PathBuf,
}

/// What flags and environment variables gave (clap fills these; `None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data` / `FLEET_DATA`.
    pub data: Option<PathBuf>,
    /// `--api-listen` / `FLEET_API_LISTEN`.
    pub api_listen: Option<SocketAddr>,
    /// `--mqtt-listen` / `FLEET_MQTT_LISTEN`.
    pub mqtt_listen: Option<SocketAddr>,
    /// `--broker` / `FLEET_BROKER`.
    pub broker: Option<String>,
    /// `--broker-files` / `FLEET_BROKER_FILES`.
    pub broker_files: Option<PathBuf>,
    /// `--broker-identity` / `FLEET_BROKER_IDENTITY`.
    pub broker_identity: Option<String>,
    /// `--device-broker` / `FLEET_DEVICE_BROKER`.
    pub device_broker: Option<String>,
    /// `--agent-repository` / `FLEET_AGENT_REPOSITORY`.
    pub agent_repository: Option<String>,
    /// `--allowed-registry` (repeated) / `FLEET_ALLOWED_REGISTRIES` (comma-separated): the
    /// whole list, replacing the file's.
    pub allowed_registries: Option<Vec<String>>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with the key's path.
        reason: String,
    },
}

/// The options to serve with: `overrides` over the file at `path` (if given, or if the default
/// path exists) over the defaults.
pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<ServeOptions, ConfigError> {
    const DEFAULT_PATH: &str = "/etc/fleet-server/config.toml";
    let path = path.map(Path::to_path_buf).or_else(|| {
        let default = PathBuf::from(DEFAULT_PATH);
        default.exists().then_some(default)
    });
    let (file, base) = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?;
            (parse(&text, p)?, p.parent().map(Path::to_path_buf).unwrap_or_default())
        }
        None => (File::default(), PathBuf::new()),
    };
    let defaults = ServeOptions::default();
    let mut registries = Vec::new();
    for login in file.registries {
        let file_path = base.join(&login.password_file);
        let password =
            crate::keyfile::read_secret(&file_path).map_err(|e| ConfigError::Invalid {
                path: path.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                reason: format!(
                    "registries ({}): password_file {}: {e}",
                    login.registry,
                    file_path.display()
                ),
            })?;
        registries.push(RegistryCredential {
            registry: login.registry,
            username: login.username,
            password: password.trim().to_owned(),
        });
    }
    let allowed = overrides.allowed_registries.unwrap_or(file.allowed_registries);
    let allowed_registries = Allowlist::new(&allowed).map_err(|e| {
        let at = allowed.iter().position(|a| *a == e.entry).unwrap_or_default();
        ConfigError::Invalid {
            path: path.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            reason: format!("allowed_registries[{at}]: {e}"),
        }
    })?;
    let broker_identity =
        overrides.broker_identity.or(file.broker_identity).unwrap_or(defaults.broker_identity);
    if !crate::pki::is_server_identity(&broker_identity) {
        return Err(ConfigError::Invalid {
            path: path.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            reason: format!(
                "broker_identity: {broker_identity:?} is not a server identity: \"fleet-server\", or \"fleet-server-\" and a name issued with `fleet-server broker-files --server-identity`"
            ),
        });
    }
    let relative = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
    Ok(ServeOptions {
        data_dir: overrides.data.or(file.data.map(relative)).unwrap_or(defaults.data_dir),
        api_listen: overrides.api_listen.or(file.api_listen).unwrap_or(defaults.api_listen),
        mqtt_listen: overrides.mqtt_listen.or(file.mqtt_listen).unwrap_or(defaults.mqtt_listen),
        device_broker: overrides.device_broker.or(file.device_broker),
        broker_files: overrides.broker_files.or(file.broker_files.map(relative)),
        external_broker: overrides.broker.or(file.broker),
        broker_identity,
        registries,
        agent_repository: overrides.agent_repository.or(file.agent_repository),
        allowed_registries,
    })
}

fn parse(text: &str, path: &Path) -> Result<File, ConfigError> {
    let invalid =
        |reason: String| ConfigError::Invalid { path: path.display().to_string(), reason };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| invalid(e.to_string()))?;
    let file: File = serde_path_to_error::deserialize(deserializer)
        .map_err(|e| invalid(format!("{}: {}", e.path(), e.inner())))?;
    match file.version {
        Some(1) => Ok(file),
        Some(v) => Err(invalid(format!("version {v} is not one this fleet-server reads (1)"))),
        None => Err(invalid("version: missing; the first line should be `version = 1`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_parses_to_the_built_in_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, DEFAULT_CONFIG).unwrap();
        let opts = load(Some(&path), Overrides::default()).unwrap();
        let defaults = ServeOptions::default();
        assert_eq!(opts.api_listen, defaults.api_listen);
        assert_eq!(opts.mqtt_listen, defaults.mqtt_listen);
        assert_eq!(opts.data_dir, dir.path().join("fleet-data"), "relative to the file");
        assert_eq!(opts.allowed_registries, defaults.allowed_registries);
    }

    #[test]
    fn flags_win_over_the_file_and_secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        crate::keyfile::write_file(&dir.path().join("pw"), b"s3cret\n", 0o600).unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "version = 1\napi_listen = \"127.0.0.1:9000\"\n[[registries]]\nregistry = \"r.example\"\nusername = \"u\"\npassword_file = \"pw\"\n",
        )
        .unwrap();
        let overrides = Overrides {
            api_listen: Some("127.0.0.1:9999".parse().unwrap()),
            ..Overrides::default()
        };
        let opts = load(Some(&path), overrides).unwrap();
        assert_eq!(opts.api_listen.port(), 9999);
        assert_eq!(opts.registries[0].password, "s3cret");
    }

    #[test]
    fn the_broker_identity_is_a_server_identity() {
        assert_eq!(load(None, Overrides::default()).unwrap().broker_identity, "fleet-server");
        let named = |name: &str| {
            load(None, Overrides { broker_identity: Some(name.into()), ..Overrides::default() })
        };
        assert_eq!(named("fleet-server-2").unwrap().broker_identity, "fleet-server-2");
        for bad in ["robot-7", "fleet-server-", "fleet-serverx"] {
            let err = named(bad).unwrap_err().to_string();
            assert!(err.contains("broker_identity") && err.contains("--server-identity"), "{err}");
        }
    }

    #[test]
    fn allowed_registries_come_from_the_file_or_whole_from_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "version = 1\nallowed_registries = [\"Registry.Example.com\", \"localhost:5000\"]\n",
        )
        .unwrap();
        let opts = load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(opts.allowed_registries.allowed(), ["registry.example.com", "localhost:5000"]);
        let overrides = Overrides {
            allowed_registries: Some(vec!["127.0.0.1:5000".into()]),
            ..Overrides::default()
        };
        let opts = load(Some(&path), overrides).unwrap();
        assert_eq!(opts.allowed_registries.allowed(), ["127.0.0.1:5000"]);
        assert!(ServeOptions::default().allowed_registries.allowed().is_empty());
    }

    #[test]
    fn an_allowed_registry_that_is_not_a_host_is_refused_with_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "version = 1\nallowed_registries = [\"docker.io\", \"https://registry.example.com\"]\n",
        )
        .unwrap();
        let err = load(Some(&path), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("allowed_registries[1]") && err.contains("host[:port]"), "{err}");
    }

    #[test]
    fn unknown_keys_and_versions_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "version = 1\n[[registries]]\nregistry = \"r\"\nusername = \"u\"\npassword = \"inline\"\n").unwrap();
        let err = load(Some(&path), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("registries[0]") && err.contains("password"), "{err}");
        std::fs::write(&path, "version = 2\n").unwrap();
        assert!(load(Some(&path), Overrides::default())
            .unwrap_err()
            .to_string()
            .contains("version 2"));
    }
}
