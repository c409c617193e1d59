//! The REST API (read-only so far): health and the device registry.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet_proto::DeviceId;
use serde_json::json;

use crate::store::Store;

/// The API's routes.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", get(show_device))
        .with_state(store)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn list_devices(State(store): State<Arc<dyn Store>>) -> Response {
    match store.devices() {
        Ok(devices) => Json(devices).into_response(),
        Err(e) => internal(e),
    }
}

async fn show_device(State(store): State<Arc<dyn Store>>, Path(id): Path<String>) -> Response {
    let id = match DeviceId::new(id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match store.device(&id) {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no device {id}; `fleetctl device ls` lists known devices"),
        ),
        Err(e) => internal(e),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn internal(e: impl std::error::Error) -> Response {
    tracing::error!(error = %e, "API request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}
