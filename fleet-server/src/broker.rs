//! The embedded MQTT broker (rumqttd, in-process): one command and small fleets need no
//! separate broker.
//!
//! Every client logs in ([`BrokerLogins`]): a device with the password its enrollment bundle
//! holds, under its own id as client id, only while it is enrolled and not revoked; the server
//! with its own. It enforces no per-device topic ACLs, so it only ever listens on loopback;
//! production fleets use Mosquitto with the configuration in `packaging/mosquitto/`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::keyfile::{self, KeyFileError};
use crate::pki::SERVER_IDENTITY;

/// The embedded broker's passwords: each an HMAC of the login name under a key only the
/// server holds (`broker-login.key` in its data directory), so none is stored and any can be
/// recomputed for a device's bundle.
#[derive(Clone)]
pub struct BrokerLogins {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for BrokerLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerLogins")
    }
}

impl BrokerLogins {
    /// The logins of the server with data directory `data_dir`; the key is made (0600) on
    /// first use.
    pub fn open(data_dir: &Path) -> Result<BrokerLogins, KeyFileError> {
        Ok(BrokerLogins { key: keyfile::hmac_key(&data_dir.join("broker-login.key"))? })
    }

    /// The password of login `name` (a device id, or [`SERVER_IDENTITY`]).
    pub fn password_for(&self, name: &str) -> String {
        fleet_proto::hex::encode(ring::hmac::sign(&self.key, &message(name)).as_ref())
    }

    /// Whether a client may connect (pure but for `enrolled`, which says whether a device is
    /// enrolled and not revoked): the server's login with a client id of its own
    /// (`fleet-server…`), or a device's login with its id as client id, so no client takes
    /// over another's session or publishes under a name it cannot log in as.
    pub fn admits(
        &self,
        client_id: &str,
        username: &str,
        password: &str,
        enrolled: impl FnOnce(&fleet_proto::DeviceId) -> bool,
    ) -> bool {
        let Some(tag) = fleet_proto::hex::decode(password) else { return false };
        if ring::hmac::verify(&self.key, &message(username), &tag).is_err() {
            return false;
        }
        if username == SERVER_IDENTITY {
            return client_id.starts_with(SERVER_IDENTITY);
        }
        client_id == username
            && fleet_proto::DeviceId::new(username).is_ok_and(|device| enrolled(&device))
    }
}

fn message(name: &str) -> Vec<u8> {
    let mut m = b"fleet embedded broker login v1\0".to_vec();
    m.extend_from_slice(name.as_bytes());
    m
}

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Asked to listen beyond loopback.
    #[error("the embedded MQTT broker cannot keep devices out of each other's topics, so it only listens on loopback; {addr} is not loopback. Use an external Mosquitto with packaging/mosquitto/ for devices on the network")]
    NotLoopback {
        /// The refused address.
        addr: SocketAddr,
    },
    /// The port is taken.
    #[error("cannot listen for MQTT on {addr} (is another broker running? pick another port with --mqtt-listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Starts the broker on `addr` in its own threads. The broker lives until the process exits.
/// Callers learn it is up when their own client connects (the registry's ingest does, and the
/// server reports ready only after that); probing with a bare TCP connect would make rumqttd
/// log an error for the aborted handshake.
/// Decides a connection from its (client id, user name, password) ([`BrokerLogins::admits`]).
pub type Admits = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// `admits` decides each connection.
pub fn start(addr: SocketAddr, max_packet_bytes: usize, admits: Admits) -> Result<(), BrokerError> {
    if !addr.ip().is_loopback() {
        return Err(BrokerError::NotLoopback { addr });
    }
    // rumqttd reports a failed bind only in its logs; check first so the user gets a reason.
    drop(TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?);

    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_packet_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id: String, user: String, password: String| {
        let admitted = admits(&client_id, &user, &password);
        if !admitted {
            tracing::warn!(client_id, user, "embedded broker refused a login");
        }
        std::future::ready(admitted)
    });
    let server = ServerSettings {
        name: "fleet-embedded".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 << 20,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            if let Err(e) = Broker::new(config).start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|source| BrokerError::Bind { addr, source })?;

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_login_is_its_own_and_devices_use_their_id_as_client_id() {
        let dir = tempfile::tempdir().unwrap();
        let logins = BrokerLogins::open(dir.path()).unwrap();
        let again = BrokerLogins::open(dir.path()).unwrap();
        let (robot, server) =
            (logins.password_for("robot-7"), logins.password_for(SERVER_IDENTITY));
        assert_eq!(robot, again.password_for("robot-7"), "the key is kept");
        let enrolled = |_: &fleet_proto::DeviceId| true;
        assert!(logins.admits("robot-7", "robot-7", &robot, enrolled));
        assert!(logins.admits("fleet-server-123", SERVER_IDENTITY, &server, enrolled));
        // Another's client id, another's password, no password, a revoked device.
        assert!(!logins.admits("robot-8", "robot-7", &robot, enrolled));
        assert!(!logins.admits("robot-8", "robot-8", &robot, enrolled));
        assert!(!logins.admits("robot-7", "robot-7", "", enrolled));
        assert!(!logins.admits("robot-7", "robot-7", &robot, |_| false));
        // The server's login only for a server client id; a device's name cannot be the server.
        assert!(!logins.admits("robot-7", SERVER_IDENTITY, &server, enrolled));
        assert!(!logins.admits(SERVER_IDENTITY, "robot-7", &server, enrolled));
        // Another server's key makes other passwords.
        let other = BrokerLogins::open(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!other.admits("robot-7", "robot-7", &robot, enrolled));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("broker-login.key")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
