//! # fleet-server — Fleet's control plane
//!
//! Runs on embedded defaults with one command: an in-process MQTT broker on loopback, an
//! embedded store in a data directory, and the REST API on 127.0.0.1:8080. Devices publish
//! status and reports; the server records them; `fleetctl` reads them through the API.
//!
//! Layout: [`broker`] (embedded MQTT), [`ingest`] (MQTT → registry), [`devices`] (pure record
//! updates), [`store`] (persistence behind a trait), [`api`] (HTTP).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub mod api;
pub mod broker;
pub mod devices;
pub mod ingest;
pub mod store;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Address of the REST API.
    pub api_listen: SocketAddr,
    /// Address of the embedded MQTT broker.
    pub mqtt_listen: SocketAddr,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            data_dir: PathBuf::from("fleet-data"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
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
    /// The broker failed to start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The registry could not subscribe to device topics.
    #[error("could not subscribe to device topics on the MQTT broker at {addr} within 10 s")]
    Ingest {
        /// The broker address.
        addr: SocketAddr,
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
    let store: Arc<dyn store::Store> =
        Arc::new(store::SledStore::open(&opts.data_dir.join("store"))?);
    broker::start(opts.mqtt_listen, fleet_proto::MAX_MESSAGE_BYTES + 1024)?;
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let ingest = tokio::spawn(ingest::run(
        opts.mqtt_listen.ip().to_string(),
        opts.mqtt_listen.port(),
        store.clone(),
        subscribed_tx,
    ));
    if tokio::time::timeout(std::time::Duration::from_secs(10), subscribed).await.is_err() {
        ingest.abort();
        return Err(ServeError::Ingest { addr: opts.mqtt_listen });
    }
    let listener = tokio::net::TcpListener::bind(opts.api_listen)
        .await
        .map_err(|source| ServeError::ApiBind { addr: opts.api_listen, source })?;
    let api_addr = listener.local_addr().map_err(ServeError::Api)?;
    ready(api_addr);
    let result = axum::serve(listener, api::router(store)).with_graceful_shutdown(shutdown).await;
    ingest.abort();
    result.map_err(ServeError::Api)
}
