//! The server's own MQTT connection: to the embedded broker on loopback (plain), or to an
//! external broker (Mosquitto with `packaging/mosquitto/`) over mutual TLS with the server's
//! identity from `fleet-server broker-files`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::MAX_MESSAGE_BYTES;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Which broker the server talks to.
#[derive(Debug, Clone)]
pub enum BrokerChoice {
    /// The in-process broker, listening at `addr` (loopback only); the server logs in with
    /// its password from `logins`.
    Embedded {
        /// Where it listens.
        addr: std::net::SocketAddr,
        /// Its logins.
        logins: crate::broker::BrokerLogins,
    },
    /// An external broker at `url` (`mqtts://host:port`); the server's identity and the
    /// fleet CA are read from `files` (`ca.pem`, and `server.pem`/`server.key` or
    /// `IDENTITY.pem`/`IDENTITY.key`, [`crate::pki::identity_files`]).
    External {
        /// Broker URL.
        url: String,
        /// The directory `fleet-server broker-files` wrote.
        files: PathBuf,
        /// This process's identity: its certificate's common name, which the broker takes as
        /// its client id (`use_identity_as_username`, `use_username_as_clientid`).
        identity: String,
    },
}

/// Why the connection cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum MqttConfigError {
    /// The URL is not `mqtts://host:port` (or `mqtt://` on loopback).
    #[error("broker URL {url}: {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A TLS file is missing or does not parse.
    #[error("{path}: {why} (write the broker files with `fleet-server broker-files --out DIR` and pass --broker-files DIR)")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// A broker URL split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Whether it is `mqtts` (TLS).
    pub tls: bool,
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl BrokerUrl {
    /// Parses `mqtts://host[:port]` (default 8883) or `mqtt://host[:port]` (default 1883).
    pub fn parse(url: &str) -> Result<BrokerUrl, MqttConfigError> {
        let bad = |why| MqttConfigError::Url { url: url.to_owned(), why };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(bad("must start with mqtts:// (or mqtt:// for a broker on loopback)"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| bad("the port is not a number"))?)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(BrokerUrl { tls, host: host.to_owned(), port })
    }

    /// Whether the host is a loopback address (`localhost`, 127.0.0.0/8, ::1).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// Connection options for the server's client. Each server process needs its own client id, or
/// they disconnect each other in a loop: on an external broker that is its identity (the broker
/// replaces whatever id a client sends with its certificate's name, so no device can take it).
pub fn options(choice: &BrokerChoice) -> Result<MqttOptions, MqttConfigError> {
    let mut options = match choice {
        BrokerChoice::Embedded { addr, logins } => {
            let client_id = format!("fleet-server-{}", std::process::id());
            let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
            let server = crate::pki::SERVER_IDENTITY;
            options.set_credentials(server, logins.password_for(server));
            options
        }
        BrokerChoice::External { url, files, identity } => {
            let parsed = BrokerUrl::parse(url)?;
            let mut options = MqttOptions::new(identity.clone(), parsed.host.clone(), parsed.port);
            if parsed.tls {
                let config = tls_config(files, identity)?;
                options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                    Arc::new(config),
                )));
            } else if !parsed.is_loopback() {
                return Err(MqttConfigError::Url {
                    url: url.clone(),
                    why: "plain mqtt:// only to a broker on loopback; use mqtts://",
                });
            }
            options
        }
    };
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(MAX_MESSAGE_BYTES + 1024, MAX_MESSAGE_BYTES + 1024);
    // The server's subscriptions are re-made on every connection; a clean session keeps the
    // broker from queueing every device's traffic while the server is down.
    options.set_clean_session(true);
    Ok(options)
}

/// rustls client config: trust only the fleet CA, present the server's identity.
fn tls_config(files: &Path, identity: &str) -> Result<rustls::ClientConfig, MqttConfigError> {
    let bad =
        |path: &Path, why: String| MqttConfigError::File { path: path.display().to_string(), why };
    let ca = files.join("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&ca).map_err(|e| bad(&ca, e.to_string()))?;
    for cert in cas {
        let cert = cert.map_err(|e| bad(&ca, e.to_string()))?;
        roots.add(cert).map_err(|e| bad(&ca, e.to_string()))?;
    }
    let (cert, key) = crate::pki::identity_files(identity);
    let cert_path = files.join(cert);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| bad(&cert_path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&cert_path, e.to_string()))?;
    let key_path = files.join(key);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| bad(&key_path, e.to_string()))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(files, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| bad(&key_path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports_and_refuse_other_schemes() {
        assert_eq!(
            BrokerUrl::parse("mqtts://mqtt.example.com").unwrap(),
            BrokerUrl { tls: true, host: "mqtt.example.com".into(), port: 8883 }
        );
        assert_eq!(
            BrokerUrl::parse("mqtt://127.0.0.1:1884/").unwrap(),
            BrokerUrl { tls: false, host: "127.0.0.1".into(), port: 1884 }
        );
        assert_eq!(BrokerUrl::parse("mqtts://[::1]:8883").unwrap().host, "::1");
        assert!(BrokerUrl::parse("mqtts://[::1]:8883").unwrap().is_loopback());
        assert!(BrokerUrl::parse("tcp://x:1").is_err());
        assert!(BrokerUrl::parse("mqtts://x:port").is_err());
    }

    #[test]
    fn plain_mqtt_beyond_loopback_is_refused() {
        let choice = BrokerChoice::External {
            url: "mqtt://10.0.0.5:1883".into(),
            files: PathBuf::new(),
            identity: crate::pki::SERVER_IDENTITY.into(),
        };
        let err = options(&choice).unwrap_err();
        assert!(err.to_string().contains("use mqtts://"), "{err}");
    }

    #[test]
    fn on_an_external_broker_the_client_id_is_the_identity() {
        let choice = BrokerChoice::External {
            url: "mqtt://127.0.0.1:1883".into(),
            files: PathBuf::new(),
            identity: "fleet-server-2".into(),
        };
        assert_eq!(options(&choice).unwrap().client_id(), "fleet-server-2");
    }
}
