//! The REST API: health, the device registry, enrollment and revocation, a device's desired
//! state, commands and events.
//!
//! Everything under `/api/v1` needs the admin token (`Authorization: Bearer <token>`); only
//! `/healthz` is open, for load balancers and container health checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_proto::{
    topic, Command, CommandAction, CommandResult, DesiredState, DeviceId, Message,
    RegistryCredential, ReleaseSpec, TopicKind, UnixMillis,
};
use rumqttc::{AsyncClient, QoS};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::commands::Waiters;
use crate::devices::{CertificateInfo, DeviceRecord};
use crate::pki::{EnrollKey, Pki, Revoked, DEFAULT_DEVICE_VALIDITY_DAYS, SERVER_IDENTITY};
use crate::store::Store;

/// What the API handlers share.
#[derive(Clone)]
pub struct Api {
    /// The registry.
    pub store: Arc<dyn Store>,
    /// The fleet CA and signing key.
    pub pki: Arc<Pki>,
    /// The admin token.
    pub token: Arc<str>,
    /// The broker URL written into enrollment bundles.
    pub device_broker: Arc<str>,
    /// Called after the revocation list changed (the server republishes it to the broker's
    /// files); the path of the new list is in [`Pki::crl_path`].
    pub crl_changed: Arc<dyn Fn() + Send + Sync>,
    /// The server's MQTT client (desired state and commands go out through it).
    pub mqtt: AsyncClient,
    /// Requests waiting for command results.
    pub waiters: Waiters,
    /// Serialises desired-state publication, so generations are never reused.
    pub desired_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("device_broker", &self.device_broker).finish_non_exhaustive()
    }
}

/// An enrollment request (`POST /api/v1/devices/{id}/enroll`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The device's public key: an uncompressed P-256 point, hex.
    pub public_key: String,
    /// Proof of possession: the device key's signature over the enrollment context and the
    /// device id (see [`crate::pki::proof_message`]), hex (ASN.1 DER ECDSA).
    pub proof: String,
    /// Labels for the new device.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Certificate validity in days (default five years).
    #[serde(default)]
    pub valid_days: Option<u32>,
}

/// What enrollment returns: everything the bundle needs except the private key, which never
/// left the enrolling machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device.
    pub device: DeviceRecord,
    /// Its client certificate (PEM).
    pub certificate_pem: String,
    /// The fleet CA (PEM).
    pub ca_pem: String,
    /// The server's desired-state signing keys the device trusts (hex ed25519).
    pub server_keys: Vec<String>,
    /// The broker URL the device connects to.
    pub broker: String,
}

/// A device's new desired state (`PUT /api/v1/devices/{id}/desired`): the primitive releases,
/// pins and rollouts publish through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesiredRequest {
    /// The release to run; `null` runs no application.
    pub release: Option<ReleaseSpec>,
    /// Logins for private registries the release pulls from.
    #[serde(default)]
    pub registry_credentials: Vec<RegistryCredential>,
}

/// What publishing a desired state returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesiredResponse {
    /// The generation it was published under.
    pub generation: u64,
    /// The device's record after publication.
    pub device: DeviceRecord,
}

/// A command for a device (`POST /api/v1/devices/{id}/commands`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRequest {
    /// What to do.
    pub action: CommandAction,
    /// How long to wait for the answer, and the command's deadline on the device (default 30 s).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// The API's routes.
pub fn router(api: Api) -> Router {
    let v1 = Router::new()
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", get(show_device))
        .route("/api/v1/devices/{id}/enroll", post(enroll))
        .route("/api/v1/devices/{id}/revoke", post(revoke))
        .route("/api/v1/devices/{id}/desired", axum::routing::put(put_desired))
        .route("/api/v1/devices/{id}/commands", post(command))
        .route("/api/v1/devices/{id}/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), authorize));
    Router::new().route("/healthz", get(healthz)).merge(v1).with_state(api)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Lets a request through only with the admin token; compares in constant time.
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (presented.as_bytes(), api.token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if !same {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: pass --token or set FLEET_TOKEN (the server printed it at first start; it is in <data>/admin-token)".into(),
        );
    }
    next.run(request).await
}

async fn list_devices(State(api): State<Api>) -> Response {
    match api.store.devices() {
        Ok(devices) => Json(devices).into_response(),
        Err(e) => internal(e),
    }
}

// The error is the finished response; handlers return it as is, so its size does not matter.
#[allow(clippy::result_large_err)]
fn device_id(id: String) -> Result<DeviceId, Response> {
    DeviceId::new(id).map_err(|e| error(StatusCode::BAD_REQUEST, format!("device id: {e}")))
}

async fn show_device(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let id = match device_id(id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match api.store.device(&id) {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => not_found(&id),
        Err(e) => internal(e),
    }
}

async fn enroll(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(request): Json<EnrollRequest>,
) -> Response {
    let id = match device_id(id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if id.as_str() == SERVER_IDENTITY {
        return error(
            StatusCode::BAD_REQUEST,
            format!("device id: `{SERVER_IDENTITY}` is reserved for the server's own broker identity; pick another id"),
        );
    }
    let key = match EnrollKey::verify(&id, &request.public_key, &request.proof) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let previous = match api.store.device(&id) {
        Ok(p) => p,
        Err(e) => return internal(e),
    };
    if previous.as_ref().is_some_and(|d| d.enrolled_at.is_some() && d.revoked_at.is_none()) {
        return error(
            StatusCode::CONFLICT,
            format!("device {id} is already enrolled; revoke it first (`fleetctl device revoke {id}`) to issue a new bundle"),
        );
    }
    let issued = match api.pki.issue_device(
        &id,
        &key,
        request.valid_days.unwrap_or(DEFAULT_DEVICE_VALIDITY_DAYS),
    ) {
        Ok(i) => i,
        Err(e) => return internal(e),
    };
    let certificate = CertificateInfo { serial: issued.serial, not_after: issued.not_after };
    let mut record =
        DeviceRecord::enrolled(id.clone(), request.labels, certificate, UnixMillis::now());
    // A re-enrolled device keeps the history of its revoked certificates.
    if let Some(previous) = previous {
        record.revoked_certificates = previous.revoked_certificates;
    }
    if let Err(e) = api.store.put_device(&record) {
        return internal(e);
    }
    tracing::info!(device = %id, serial = %record.certificate.as_ref().map_or("", |c| &c.serial), "device enrolled");
    (
        StatusCode::CREATED,
        Json(EnrollResponse {
            device: record,
            certificate_pem: issued.cert_pem,
            ca_pem: api.pki.ca_pem().to_owned(),
            server_keys: vec![api.pki.signing_key().public().to_hex()],
            broker: api.device_broker.to_string(),
        }),
    )
        .into_response()
}

async fn revoke(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let id = match device_id(id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let record = match api.store.device(&id) {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(&id),
        Err(e) => return internal(e),
    };
    if record.revoked_at.is_some() {
        return Json(record).into_response();
    }
    let record = record.revoke(UnixMillis::now());
    if let Err(e) = api.store.put_device(&record) {
        return internal(e);
    }
    if let Err(e) = write_crl(&*api.store, &api.pki) {
        return internal(e);
    }
    (api.crl_changed)();
    tracing::warn!(device = %id, "device revoked; its messages are dropped and the revocation list is updated");
    Json(record).into_response()
}

/// Looks up an enrolled, unrevoked device, or answers why not.
#[allow(clippy::result_large_err)] // the error is the finished response
fn active_device(api: &Api, id: String) -> Result<DeviceRecord, Response> {
    let id = device_id(id)?;
    match api.store.device(&id) {
        Ok(Some(d)) if d.refusal().is_none() => Ok(d),
        Ok(Some(d)) => Err(error(
            StatusCode::CONFLICT,
            format!("device {id}: {}", d.refusal().unwrap_or("not active")),
        )),
        Ok(None) => Err(not_found(&id)),
        Err(e) => Err(internal(e)),
    }
}

async fn put_desired(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(request): Json<DesiredRequest>,
) -> Response {
    if let Some(release) = &request.release {
        if let Err(problems) = release.validate() {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("release {} is invalid: {}", release.id, problems.join("; ")),
            );
        }
    }
    let _serial = api.desired_lock.lock().await;
    let mut record = match active_device(&api, id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let desired = DesiredState {
        device: record.id.clone(),
        // Never reused: the agent refuses anything not newer than what it accepted.
        generation: record.desired_generation.max(record.accepted_generation) + 1,
        release: request.release,
        pin: None,
        issued_at: UnixMillis::now(),
        registry_credentials: request.registry_credentials,
    };
    let signed = api.pki.signing_key().sign(&desired);
    record.desired_generation = desired.generation;
    record.desired_release = desired.release.as_ref().map(|r| r.id.to_string());
    // Recorded before publishing: if publishing fails, the next attempt uses a newer
    // generation rather than reusing this one.
    if let Err(e) = api.store.put_device(&record) {
        return internal(e);
    }
    let payload = Message::Desired(signed).encode();
    if let Err(e) =
        api.mqtt.try_publish(topic(&record.id, TopicKind::Desired), QoS::AtLeastOnce, true, payload)
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot publish to the MQTT broker right now ({e}); try again"),
        );
    }
    tracing::info!(device = %record.id, generation = desired.generation, release = ?record.desired_release, "desired state published");
    Json(DesiredResponse { generation: desired.generation, device: record }).into_response()
}

async fn command(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(request): Json<CommandRequest>,
) -> Response {
    let record = match active_device(&api, id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let timeout = std::time::Duration::from_secs(request.timeout_secs.unwrap_or(30).clamp(1, 3600));
    let now = UnixMillis::now();
    let id = match crate::pki::random::<8>() {
        Ok(bytes) => u64::from_be_bytes(bytes),
        Err(e) => return internal(e),
    };
    let command = Command {
        id,
        device: record.id.clone(),
        issued_at: now,
        deadline: UnixMillis(now.0 + timeout.as_millis() as u64),
        action: request.action,
    };
    let answer = api.waiters.wait_for(id);
    let payload = Message::Command(api.pki.signing_key().sign(&command)).encode();
    if let Err(e) =
        api.mqtt.try_publish(topic(&record.id, TopicKind::Cmd), QoS::AtLeastOnce, false, payload)
    {
        api.waiters.forget(id);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot publish to the MQTT broker right now ({e}); try again"),
        );
    }
    tracing::info!(device = %record.id, command = id, action = ?command.action, "command sent");
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(result)) => Json::<CommandResult>(result).into_response(),
        _ => {
            api.waiters.forget(id);
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("device {} did not answer command {id} within {} s (is it online? `fleetctl device show {}`); it will not run it after that", record.id, timeout.as_secs(), record.id),
            )
        }
    }
}

async fn events(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let id = match device_id(id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match api.store.events(&id, 100) {
        Ok(events) => Json(events).into_response(),
        Err(e) => internal(e),
    }
}

/// Writes the revocation list from every revoked certificate in the registry.
pub fn write_crl(store: &dyn Store, pki: &Pki) -> Result<(), Box<dyn std::error::Error>> {
    let revoked: Vec<Revoked> = store
        .devices()?
        .into_iter()
        .flat_map(|d| d.revoked_certificates)
        .map(|r| Revoked { serial: r.serial, at: r.at })
        .collect();
    // The time in milliseconds grows with every list, as a CRL number must.
    pki.write_crl(&revoked, UnixMillis::now().0)?;
    Ok(())
}

fn not_found(id: &DeviceId) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no device {id}; `fleetctl device ls` lists known devices"),
    )
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "API request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}
