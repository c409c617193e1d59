//! The embedded MQTT broker (rumqttd, in-process): one command and small fleets need no
//! separate broker.
//!
//! It enforces no per-device ACLs yet, so it only ever listens on loopback; production fleets
//! use Mosquitto with the configuration in `packaging/mosquitto/`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

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
pub fn start(addr: SocketAddr, max_packet_bytes: usize) -> Result<(), BrokerError> {
    if !addr.ip().is_loopback() {
        return Err(BrokerError::NotLoopback { addr });
    }
    // rumqttd reports a failed bind only in its logs; check first so the user gets a reason.
    drop(TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?);

    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_packet_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
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
