//! The REST API (JSON over HTTP).
//!
//! Every route is listed once in [`ROUTES`] with the role it needs; the authorisation layer
//! reads that table (so a route cannot be added without deciding who may call it), and so does
//! the OpenAPI document at `/api/openapi.json`. Errors are problem details ([`problem`]); lists
//! are paged (`?limit=&after=`, answered as `{ "items": [...], "next": cursor }`); every
//! change is written to the audit log with the caller's token name, in the same store change.
//!
//! Only `/healthz` and `/api/openapi.json` are open, for load balancers and tooling.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fleet_proto::UnixMillis;
use rumqttc::AsyncClient;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, AuthError, Caller, Role, TokenRecord};
use crate::commands::Waiters;
use crate::desired::Publisher;
use crate::pki::Pki;
use crate::releases::ImageResolver;
use crate::rollout::driver::Driver;
use crate::store::Store;

mod admin;
mod devices;
mod fleet;
mod openapi;
pub mod problem;
mod rollouts;
pub mod routes;
mod secrets;
mod use_cases;
mod variables;

pub mod wire;

pub use admin::write_crl;
pub use problem::{FieldProblem, Problem};
pub use routes::{RouteDoc, ROUTES};

/// What the API handlers share.
#[derive(Clone)]
pub struct Api {
    /// The registry.
    pub store: Arc<Store>,
    /// The fleet CA and signing key.
    pub pki: Arc<Pki>,
    /// The bootstrap admin token (from `<data>/admin-token`).
    pub bootstrap: Arc<TokenRecord>,
    /// The broker URL written into enrollment bundles.
    pub device_broker: Arc<str>,
    /// The embedded broker's logins, when it is the broker: each bundle gets its device's
    /// password.
    pub broker_logins: Option<crate::broker::BrokerLogins>,
    /// Called after the revocation list changed (the server republishes it to the broker's
    /// files); the path of the new list is in [`Pki::crl_path`].
    pub crl_changed: Arc<dyn Fn() + Send + Sync>,
    /// The server's MQTT client (commands go out through it).
    pub mqtt: AsyncClient,
    /// Sends desired states.
    pub publisher: Publisher,
    /// Requests waiting for command results.
    pub waiters: Waiters,
    /// Runs rollouts.
    pub driver: Driver,
    /// Resolves image tags to digests when releases are created.
    pub resolver: Arc<dyn ImageResolver>,
    /// Stores agent releases' binaries in the fleet's registry.
    pub agent_pusher: Arc<dyn crate::releases::AgentPusher>,
    /// Signs the dashboard's session cookies and CSRF tokens.
    pub sessions: Arc<crate::web::SessionKey>,
    /// The dashboard's live views: one store reader per followed rollout.
    pub live: crate::web::LiveHub,
    /// The data directory (backups include its key files).
    pub data_dir: std::path::PathBuf,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("device_broker", &self.device_broker).finish_non_exhaustive()
    }
}

/// The API's routes.
pub fn router(api: Api) -> Router {
    let v1 = Router::new()
        .route("/api/v1/whoami", get(admin::whoami))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{id}", get(devices::show).patch(devices::change))
        .route("/api/v1/devices/{id}/enroll", post(devices::enroll))
        .route("/api/v1/devices/{id}/revoke", post(devices::revoke))
        .route("/api/v1/devices/{id}/desired", put(devices::put_desired))
        .route("/api/v1/devices/{id}/pin", put(devices::pin).delete(devices::unpin))
        .route("/api/v1/devices/{id}/commands", post(devices::command))
        .route("/api/v1/devices/{id}/events", get(devices::events))
        .route("/api/v1/devices/{id}/metrics", get(devices::metrics))
        .route("/api/v1/devices/{id}/metrics/history", get(devices::metrics_history))
        .route("/api/v1/groups", get(fleet::list_groups).post(fleet::put_group))
        .route("/api/v1/groups/{name}", get(fleet::show_group).delete(fleet::remove_group))
        .route("/api/v1/releases", get(fleet::list_releases).post(fleet::create_release))
        .route("/api/v1/releases/{id}", get(fleet::show_release))
        .route(
            "/api/v1/agent-releases",
            post(fleet::create_agent_release).layer(axum::extract::DefaultBodyLimit::max(
                crate::ops::agent_releases::MAX_REQUEST_BYTES,
            )),
        )
        .route("/api/v1/rollouts/plan", post(rollouts::plan))
        .route("/api/v1/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/api/v1/rollouts/{id}", get(rollouts::show))
        .route("/api/v1/rollouts/{id}/{command}", post(rollouts::command))
        .route("/api/v1/variables", get(variables::list))
        .route("/api/v1/variables/{name}", put(variables::set).delete(variables::unset))
        .route("/api/v1/secrets", get(secrets::list))
        .route("/api/v1/secrets/{name}", put(secrets::set).delete(secrets::remove))
        .route("/api/v1/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/api/v1/tokens/{name}", axum::routing::delete(admin::revoke_token))
        .route("/api/v1/audit", get(admin::audit))
        .route("/api/v1/backup", get(admin::backup))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/openapi.json", get(openapi::document))
        .merge(v1)
        .merge(crate::web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!(
        "no route {method} {}; the API is described at /api/openapi.json",
        uri.path()
    ))
}

/// A known path asked with a method it does not have (the open routes; the guarded ones
/// answer from [`authorize`]).
async fn method_not_allowed(
    method: Method,
    uri: axum::http::Uri,
    matched: Option<MatchedPath>,
) -> Response {
    let path = uri.path();
    let pattern = route_pattern(matched.as_ref().map_or(path, MatchedPath::as_str), path);
    match routes::methods_of(&pattern) {
        allowed if allowed.is_empty() => not_found(method, uri).await.into_response(),
        allowed => method_not_allowed_problem(&method, path, &allowed),
    }
}

/// The table's path for a matched route: `{command}` routes are listed spelled out.
fn route_pattern(matched: &str, path: &str) -> String {
    if matched.ends_with("/{command}") {
        path_pattern(path)
    } else {
        matched.to_owned()
    }
}

fn method_not_allowed_problem(method: &Method, path: &str, allowed: &[&str]) -> Response {
    let allow = allowed.join(", ");
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} does not take {method}; it takes {allow} (the API is described at /api/openapi.json)"),
    )
    .into_response();
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// What the route table says of a matched path and method.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// Listed: the least role it needs (`None`: open).
    Route(Option<Role>),
    /// The path is listed with these methods, not this one.
    OtherMethods(Vec<&'static str>),
    /// Not listed at all.
    Unknown,
}

/// Looks a matched route up in [`ROUTES`]. Paths with a `{command}` placeholder match their
/// spelled-out entries.
fn lookup(method: &Method, matched: &str, path: &str) -> Lookup {
    // HEAD is GET without the body (HTTP semantics; axum answers it from the GET handler).
    let method = if method == Method::HEAD { &Method::GET } else { method };
    let pattern = route_pattern(matched, path);
    if let Some(route) = ROUTES.iter().find(|r| r.method == method.as_str() && r.path == pattern) {
        return Lookup::Route(route.role);
    }
    match routes::methods_of(&pattern) {
        methods if methods.is_empty() => Lookup::Unknown,
        methods => Lookup::OtherMethods(methods),
    }
}

/// `/api/v1/rollouts/7/pause` → `/api/v1/rollouts/{id}/pause`.
fn path_pattern(path: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() >= 5 {
        parts[4] = "{id}";
    }
    parts.join("/")
}

/// Checks the caller's token against the role the route needs; puts the [`Caller`] into the
/// request for handlers (audit entries carry its name).
async fn authorize(State(api): State<Api>, mut request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let lookup = matched
        .as_deref()
        .map_or(Lookup::Unknown, |m| lookup(request.method(), m, request.uri().path()));
    let needed = match lookup {
        Lookup::Route(needed) => needed,
        Lookup::OtherMethods(allowed) => {
            return method_not_allowed_problem(request.method(), request.uri().path(), &allowed)
        }
        // A route the table does not know: refuse rather than guess who may call it.
        Lookup::Unknown => {
            return Problem::not_found(format!(
                "no route {} {}; the API is described at /api/openapi.json",
                request.method(),
                request.uri().path()
            ))
            .into_response()
        }
    };
    let caller = match identify(&api, &request) {
        Ok(caller) => caller,
        Err(e) => return Problem::new(StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    };
    if let Some(role) = needed {
        if caller.role < role {
            return Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} is a {}; {} {} needs the {role} role (ask an admin: `fleetctl token create NAME --role {role}`)",
                    caller.name,
                    caller.role,
                    request.method(),
                    request.uri().path()
                ),
            )
            .into_response();
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn identify(api: &Api, request: &Request) -> Result<Caller, AuthError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)?;
    caller_of(api, presented)
}

/// Who presents the token `NAME.SECRET` (the API's bearer tokens, the dashboard's login).
pub(crate) fn caller_of(api: &Api, presented: &str) -> Result<Caller, AuthError> {
    let (name, secret) = auth::split_token(presented);
    let record = token_record(api, name).ok_or(AuthError::Unknown)?;
    auth::check(&record, secret, UnixMillis::now())
}

/// The token record called `name`: the bootstrap admin's, or one from the store.
pub(crate) fn token_record(api: &Api, name: &str) -> Option<TokenRecord> {
    if name == auth::BOOTSTRAP_NAME {
        return Some((*api.bootstrap).clone());
    }
    match api.store.token(name) {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(error = %e, "cannot read tokens");
            None
        }
    }
}

/// `?limit=&after=` of list routes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Paging {
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

impl Paging {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_one_entry_and_commands_map_to_theirs() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {} listed twice", r.method, r.path);
        }
        let command = "/api/v1/rollouts/{id}/{command}";
        assert_eq!(
            lookup(&Method::POST, command, "/api/v1/rollouts/7/pause"),
            Lookup::Route(Some(Role::Operator))
        );
        assert_eq!(lookup(&Method::POST, command, "/api/v1/rollouts/7/explode"), Lookup::Unknown);
        assert_eq!(
            lookup(&Method::GET, command, "/api/v1/rollouts/7/pause"),
            Lookup::OtherMethods(vec!["POST"])
        );
        assert_eq!(
            lookup(&Method::GET, "/api/v1/backup", "/api/v1/backup"),
            Lookup::Route(Some(Role::Admin))
        );
        assert_eq!(
            lookup(&Method::HEAD, "/api/v1/backup", "/api/v1/backup"),
            Lookup::Route(Some(Role::Admin))
        );
        assert_eq!(
            lookup(&Method::PUT, "/api/v1/devices/{id}", "/api/v1/devices/x"),
            Lookup::OtherMethods(vec!["GET", "PATCH"])
        );
    }
}
