//! # fleet-server — Fleet's control plane
//!
//! Runs on embedded defaults with one command: an in-process MQTT broker on loopback, an
//! embedded store in a data directory, and the REST API on 127.0.0.1:8080. Devices publish
//! status and reports; the server records them; `fleetctl` reads them through the API.
//!
//! Layout, decisions first:
//! * pure: [`rollout`] (the staged-rollout state machine; its I/O driver is [`rollout::driver`]), [`preflight`] (can a device run a
//!   release), [`compose`] (Compose file → release), [`groups`] (label selectors), [`auth`]
//!   (tokens and roles), [`variables`] (per-device variables: precedence and rendering),
//!   [`devices`] (registry records and how messages update them),
//!   [`releases`] (signed release records), [`records`] (the stored records of the rollout
//!   driver and of telemetry), [`units`];
//! * use cases: [`ops`] (what an operator can do: validation, the store change, audit and
//!   publishing, for any transport);
//! * I/O: [`store`] (typed records over a key-value backend), [`desired`] (deciding and
//!   publishing desired state), [`rollout::driver`] (the driver that steps rollouts), [`ingest`]
//!   (MQTT → registry), [`registry`] (image tags → digests), [`broker`] (embedded MQTT),
//!   [`api`] (HTTP onto [`ops`]), [`backup`], [`pki`] (with the secrets key), [`keyfile`]
//!   (randomness and key files), [`commands`]; [`secrets`] holds the pure resolution and the
//!   at-rest encryption.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod broker;
pub mod commands;
pub mod compose;
pub mod config;
pub mod desired;
pub mod devices;
pub mod groups;
pub mod ingest;
pub mod keyfile;
pub mod mqtt;
pub mod ops;
pub mod pki;
pub mod preflight;
pub mod records;
pub mod registry;
pub mod releases;
pub mod rollout;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub use fleet_api::units;
pub mod variables;
pub mod web;

#[cfg(test)]
mod test_support;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Address of the REST API.
    pub api_listen: SocketAddr,
    /// Address of the embedded MQTT broker.
    pub mqtt_listen: SocketAddr,
    /// The broker URL written into enrollment bundles; default: the embedded broker
    /// (`mqtt://<mqtt_listen>`).
    pub device_broker: Option<String>,
    /// A directory the server keeps the revocation list current in (`crl.pem`), for an
    /// external broker's `crlfile` (see `fleet-server broker-files`).
    pub broker_files: Option<PathBuf>,
    /// An external broker to use instead of the embedded one (`mqtts://host:port`); the
    /// server connects with its identity from `broker_files`.
    pub external_broker: Option<String>,
    /// This process's identity on the external broker (`broker_identity`): `fleet-server`, or
    /// `fleet-server-NAME` for each further process ([`pki::is_server_identity`]).
    pub broker_identity: String,
    /// Logins for private registries: used to resolve image tags, and sent to devices (inside
    /// signed desired state, over mutual TLS) so they can pull.
    pub registries: Vec<fleet_proto::RegistryCredential>,
    /// Where agent releases' binaries are pushed (`registry/repository`, e.g.
    /// `registry.example.com/fleet/agent`); a login for its registry, if it needs one, is in
    /// `registries`. `None`: agent releases cannot be created.
    pub agent_repository: Option<String>,
    /// The registries the server resolves tags in (`allowed_registries`): when any are
    /// listed, only those; when none, any at a public address. Listed hosts may have any
    /// address ([`fleet_oci::guard`]).
    pub allowed_registries: fleet_oci::guard::Allowlist,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            data_dir: PathBuf::from("fleet-data"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            device_broker: None,
            broker_files: None,
            external_broker: None,
            broker_identity: pki::SERVER_IDENTITY.to_owned(),
            registries: Vec::new(),
            agent_repository: None,
            allowed_registries: fleet_oci::guard::Allowlist::default(),
        }
    }
}

/// Why the server stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory cannot be created.
    #[error("cannot create data directory {path}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The fleet CA, signing key or admin token cannot be loaded or created.
    #[error("fleet keys in {path}")]
    Pki {
        /// The data directory.
        path: String,
        /// Why.
        #[source]
        source: pki::PkiError,
    },
    /// The revocation list cannot be written.
    #[error("cannot write the certificate revocation list: {0}")]
    Crl(String),
    /// The broker failed to start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The connection to the broker is misconfigured.
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttConfigError),
    /// An external broker needs the server's identity.
    #[error("an external broker needs the server's MQTT identity: pass --broker-files DIR (written by `fleet-server broker-files`)")]
    NoIdentity,
    /// The registry could not subscribe to device topics.
    #[error("could not subscribe to device topics on the MQTT broker at {broker} within 10 s (is it running, and does it accept the server's certificate?)")]
    Ingest {
        /// The broker.
        broker: String,
    },
    /// The API cannot listen.
    #[error("cannot listen for the API on {addr} (pick another with --api-listen)")]
    ApiBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API server failed.
    #[error("API server failed")]
    Api(#[source] std::io::Error),
}

/// Runs the server until `shutdown` completes. `ready` is called with the bound API address
/// once everything accepts connections.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| ServeError::DataDir {
        path: opts.data_dir.display().to_string(),
        source,
    })?;
    let store = Arc::new(store::Store::open(&opts.data_dir.join("store"))?);
    let keys = open_keys(&opts.data_dir)?;
    let pki = Arc::new(keys.pki);
    // Rewritten at every start: a CRL expires, and an expired one makes the broker refuse
    // every device.
    api::write_crl(&store, &pki).map_err(|e| ServeError::Crl(e.to_string()))?;
    let crl_changed = crl_publisher(pki.crl_path(), opts.broker_files.clone());
    crl_changed();
    let choice = match (&opts.external_broker, &opts.broker_files) {
        (Some(url), Some(files)) => mqtt::BrokerChoice::External {
            url: url.clone(),
            files: files.clone(),
            identity: opts.broker_identity.clone(),
        },
        (Some(_), None) => return Err(ServeError::NoIdentity),
        (None, _) => {
            let logins = broker::BrokerLogins::open(&opts.data_dir).map_err(|e| {
                ServeError::Pki { path: opts.data_dir.display().to_string(), source: e.into() }
            })?;
            let (check, enrolled_in) = (logins.clone(), store.clone());
            let admits = move |client_id: &str, user: &str, password: &str| {
                check.admits(client_id, user, password, |device| {
                    matches!(enrolled_in.device(device), Ok(Some(d)) if d.refusal().is_none())
                })
            };
            broker::start(
                opts.mqtt_listen,
                fleet_proto::MAX_MESSAGE_BYTES + 1024,
                Arc::new(admits),
            )?;
            mqtt::BrokerChoice::Embedded { addr: opts.mqtt_listen, logins }
        }
    };
    let broker_name = match &choice {
        mqtt::BrokerChoice::Embedded { addr, .. } => format!("mqtt://{addr}"),
        mqtt::BrokerChoice::External { url, .. } => url.clone(),
    };
    // Room for a burst of desired states and commands while the connection is re-made.
    let (mqtt_client, mqtt_events) = rumqttc::AsyncClient::new(mqtt::options(&choice)?, 1024);
    let waiters = commands::Waiters::default();
    let publisher =
        desired::Publisher::new(mqtt_client.clone(), pki.clone(), opts.registries.clone());
    let driver = rollout::driver::Driver::new(store.clone(), pki.clone(), publisher.clone());
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let wake = driver.clone();
    let ingest = tokio::spawn(ingest::run(
        mqtt_client.clone(),
        mqtt_events,
        store.clone(),
        waiters.clone(),
        subscribed_tx,
        !opts.registries.is_empty(),
        move |resend: Option<fleet_proto::DeviceId>| match resend {
            Some(device) => wake.resend_later(device),
            None => wake.wake(),
        },
    ));
    if tokio::time::timeout(std::time::Duration::from_secs(10), subscribed).await.is_err() {
        ingest.abort();
        return Err(ServeError::Ingest { broker: broker_name });
    }
    let listener = tokio::net::TcpListener::bind(opts.api_listen)
        .await
        .map_err(|source| ServeError::ApiBind { addr: opts.api_listen, source })?;
    let api_addr = listener.local_addr().map_err(ServeError::Api)?;
    let rollouts = tokio::spawn(driver.clone().run());
    ready(api_addr);
    let registry = Arc::new(registry::RegistryResolver::new(
        opts.registries.clone(),
        opts.agent_repository,
        opts.allowed_registries,
    ));
    let api = api::Api {
        store,
        pki,
        bootstrap: Arc::new(auth::bootstrap(&keys.admin_token)),
        device_broker: opts.device_broker.or(opts.external_broker).unwrap_or(broker_name).into(),
        broker_logins: match &choice {
            mqtt::BrokerChoice::Embedded { logins, .. } => Some(logins.clone()),
            mqtt::BrokerChoice::External { .. } => None,
        },
        crl_changed: Arc::new(crl_changed),
        mqtt: mqtt_client,
        publisher,
        waiters,
        driver,
        resolver: registry.clone(),
        agent_pusher: registry,
        sessions: Arc::new(web::SessionKey::new(
            keyfile::hmac_key(&opts.data_dir.join("web-session.key")).map_err(|e| {
                ServeError::Pki { path: opts.data_dir.display().to_string(), source: e.into() }
            })?,
        )),
        live: web::LiveHub::default(),
        data_dir: opts.data_dir.clone(),
    };
    let result = axum::serve(listener, api::router(api)).with_graceful_shutdown(shutdown).await;
    rollouts.abort();
    ingest.abort();
    result.map_err(ServeError::Api)
}

/// The server's secrets, from the data directory.
#[derive(Debug)]
pub struct Keys {
    /// Fleet CA and signing key.
    pub pki: pki::Pki,
    /// The admin token for the API.
    pub admin_token: String,
}

/// Loads (on first start: creates) the fleet CA, the signing key and the admin token under
/// `data_dir`. A new admin token is announced on stderr with where to read it, never printed
/// into logs itself.
pub fn open_keys(data_dir: &std::path::Path) -> Result<Keys, ServeError> {
    let err = |source| ServeError::Pki { path: data_dir.display().to_string(), source };
    let (pki, created) =
        pki::Pki::open_or_create(&data_dir.join("pki"), &data_dir.join("secrets.key"))
            .map_err(err)?;
    if created {
        tracing::info!(ca = %data_dir.join("pki/ca.pem").display(), signing_key = %pki.signing_key().id(), "created the fleet CA and desired-state signing key");
    }
    let token_path = data_dir.join("admin-token");
    if !token_path.exists() {
        let token = fleet_proto::hex::encode(&keyfile::random::<24>().map_err(|e| err(e.into()))?);
        keyfile::write_file(&token_path, format!("{token}\n").as_bytes(), 0o600)
            .map_err(|e| err(e.into()))?;
        eprintln!(
            "fleet-server: created the admin token in {} (mode 0600); fleetctl reads it from there when run in this directory, or pass it with FLEET_TOKEN=$(cat {})",
            token_path.display(),
            token_path.display()
        );
    }
    let admin_token =
        keyfile::read_secret(&token_path).map_err(|e| err(e.into()))?.trim().to_owned();
    Ok(Keys { pki, admin_token })
}

/// What runs after the revocation list changed: copies it into the broker's directory, if one
/// is configured, and says how to make the broker read it.
fn crl_publisher(crl: PathBuf, broker_files: Option<PathBuf>) -> impl Fn() + Send + Sync + 'static {
    move || {
        let Some(dir) = &broker_files else { return };
        let target = dir.join("crl.pem");
        let copied = std::fs::read(&crl).map_err(|e| e.to_string()).and_then(|bytes| {
            keyfile::write_file(&target, &bytes, 0o644).map_err(|e| e.to_string())
        });
        match copied {
            Ok(()) => {
                tracing::info!(crl = %target.display(), "revocation list updated; reload the broker (systemctl reload mosquitto) so it applies to new connections")
            }
            Err(e) => {
                tracing::error!(crl = %target.display(), error = %e, "cannot update the broker's revocation list")
            }
        }
    }
}
