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
mod secrets;
mod use_cases;
mod variables;

pub mod wire;

pub use admin::write_crl;
pub use problem::{FieldProblem, Problem};

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
    /// The data directory (backups include its key files).
    pub data_dir: std::path::PathBuf,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("device_broker", &self.device_broker).finish_non_exhaustive()
    }
}

/// One route: who may call it and what it does (the OpenAPI document is made from these).
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    /// HTTP method.
    pub method: &'static str,
    /// Path, with `{param}` placeholders as axum writes them.
    pub path: &'static str,
    /// The least role that may call it; `None`: open.
    pub role: Option<Role>,
    /// What it does.
    pub summary: &'static str,
    /// The request body's type, if it takes one.
    pub request: Option<&'static str>,
    /// The success answer's type.
    pub response: &'static str,
}

macro_rules! routes {
    ($($method:literal $path:literal $role:expr, $summary:literal, $request:expr => $response:literal;)*) => {
        /// Every route of the API.
        pub const ROUTES: &[RouteDoc] = &[
            $(RouteDoc { method: $method, path: $path, role: $role, summary: $summary, request: $request, response: $response },)*
        ];
    };
}

const V: Option<Role> = Some(Role::Viewer);
const O: Option<Role> = Some(Role::Operator);
const A: Option<Role> = Some(Role::Admin);

routes! {
    "GET" "/healthz" None, "Liveness: the server answers.", None => "Health";
    "GET" "/api/openapi.json" None, "This API as an OpenAPI 3.1 document.", None => "OpenApi";
    "GET" "/api/v1/whoami" V, "The calling token's name and role.", None => "Caller";
    "GET" "/api/v1/devices" V, "Devices, paged; filter with ?selector=k=v or ?group=NAME.", None => "Page<DeviceRecord>";
    "GET" "/api/v1/devices/{id}" V, "One device with its inventory, groups and active rollout.", None => "DeviceView";
    "PATCH" "/api/v1/devices/{id}" O, "Change a device's labels (null removes one) or notes; re-targets it if its new groups change what its release renders.", Some("DeviceChange") => "DeviceChanged";
    "POST" "/api/v1/devices/{id}/enroll" A, "Enroll a device: issue its client certificate.", Some("EnrollRequest") => "EnrollResponse";
    "POST" "/api/v1/devices/{id}/revoke" A, "Revoke a device: drop its messages, add its certificate to the CRL.", None => "DeviceRecord";
    "PUT" "/api/v1/devices/{id}/desired" O, "Assign a release given as JSON (stored as a release if new).", Some("DesiredRequest") => "DesiredResponse";
    "PUT" "/api/v1/devices/{id}/pin" O, "Pin a device to a release, with a reason and an optional expiry.", Some("PinRequest") => "DeviceRecord";
    "DELETE" "/api/v1/devices/{id}/pin" O, "Unpin a device: it returns to its assigned release.", None => "DeviceRecord";
    "POST" "/api/v1/devices/{id}/commands" O, "Send a signed command and wait for its result.", Some("CommandRequest") => "CommandResult";
    "GET" "/api/v1/devices/{id}/events" V, "A device's latest events, oldest first.", None => "Event[]";
    "GET" "/api/v1/devices/{id}/metrics" V, "A device's telemetry: counters and the latest value of every series.", None => "MetricsView";
    "GET" "/api/v1/devices/{id}/metrics/history" V, "A device's stored points, oldest first, paged by sequence number; ?metric=NAME.", None => "Page<PointView>";
    "GET" "/api/v1/groups" V, "Every group with its device count.", None => "Group[]";
    "POST" "/api/v1/groups" O, "Create or replace a group (a named label selector); re-targets the devices whose release renders differently in or out of it.", Some("GroupRequest") => "GroupChange";
    "GET" "/api/v1/groups/{name}" V, "One group and its devices.", None => "GroupView";
    "DELETE" "/api/v1/groups/{name}" O, "Remove a group (its devices stay); re-targets the devices whose release renders differently without it.", None => "GroupChange";
    "GET" "/api/v1/releases" V, "Releases, paged; filter with ?app=NAME.", None => "Page<ReleaseRecord>";
    "POST" "/api/v1/releases" O, "Create a release from a Compose file; tags are resolved to digests.", Some("ReleaseRequest") => "ReleaseRecord";
    "GET" "/api/v1/releases/{id}" V, "One release.", None => "ReleaseRecord";
    "POST" "/api/v1/rollouts/plan" O, "Pre-flight: the waves, pinned, offline and unsatisfiable devices; sends nothing.", Some("RolloutRequest") => "Plan";
    "GET" "/api/v1/rollouts" V, "Every rollout, newest first.", None => "RolloutView[]";
    "POST" "/api/v1/rollouts" O, "Create a staged rollout and start it.", Some("RolloutRequest") => "RolloutView";
    "GET" "/api/v1/rollouts/{id}" V, "A rollout's progress per wave.", None => "RolloutView";
    "POST" "/api/v1/rollouts/{id}/pause" O, "Pause a rollout.", Some("CommandReason") => "RolloutView";
    "POST" "/api/v1/rollouts/{id}/resume" O, "Resume a paused rollout.", None => "RolloutView";
    "POST" "/api/v1/rollouts/{id}/abort" O, "End a rollout where it stands.", None => "RolloutView";
    "POST" "/api/v1/rollouts/{id}/rollback" O, "Send a rollout's devices back to their previous release.", None => "RolloutView";
    "GET" "/api/v1/variables" V, "Variables, paged; ?group=, ?service= filter; ?device=ID gives its resolved values and where each came from.", None => "VariableList";
    "PUT" "/api/v1/variables/{name}" O, "Set a variable for the fleet, a group or a device (optionally one service); re-targets the devices whose release changes.", Some("VariableRequest") => "VariableChange";
    "DELETE" "/api/v1/variables/{name}" O, "Unset a variable in the scope ?group=&device=&service=; re-targets the devices whose release changes.", None => "VariableChange";
    "GET" "/api/v1/secrets" V, "Every stored secret: name, scope, digest, size, who set it when; never a value.", None => "SecretList";
    "PUT" "/api/v1/secrets/{name}" O, "Set a secret's value (the raw body, application/octet-stream, 1 byte to 64 KiB) for the fleet, ?group= or ?device=; re-targets exactly the devices whose value of a mounted secret changed.", Some("SecretValue") => "SecretChange";
    "DELETE" "/api/v1/secrets/{name}" O, "Remove a secret's value in the scope ?group= or ?device=; refused while a device whose release mounts it would be left without one.", None => "SecretChange";
    "GET" "/api/v1/tokens" A, "Every API token (names and roles, never secrets).", None => "TokenRecord[]";
    "POST" "/api/v1/tokens" A, "Create a token; its secret is shown once.", Some("TokenRequest") => "TokenResponse";
    "DELETE" "/api/v1/tokens/{name}" A, "Revoke a token.", None => "TokenRecord";
    "GET" "/api/v1/audit" V, "The audit log, oldest first; ?since=MS&limit=N.", None => "AuditEntry[]";
    "GET" "/api/v1/backup" A, "A consistent copy of the whole store (secrets included: keep it safe).", None => "Backup";
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
        .fallback(not_found)
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

/// The role a matched route needs, from [`ROUTES`]. Paths with a `{command}` placeholder
/// match their spelled-out entries.
fn required_role(method: &Method, matched: &str, path: &str) -> Option<Option<Role>> {
    let route = ROUTES.iter().find(|r| {
        r.method == method.as_str()
            && (r.path == matched
                || (matched.ends_with("/{command}") && r.path == path_pattern(path)))
    })?;
    Some(route.role)
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
    let needed =
        matched.as_deref().and_then(|m| required_role(request.method(), m, request.uri().path()));
    let Some(needed) = needed else {
        // A route the table does not know: refuse rather than guess who may call it.
        return Problem::not_found(format!(
            "no route {} {}; the API is described at /api/openapi.json",
            request.method(),
            request.uri().path()
        ))
        .into_response();
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
    let (name, secret) = auth::split_token(presented);
    let now = UnixMillis::now();
    if name == auth::BOOTSTRAP_NAME {
        return auth::check(&api.bootstrap, secret, now);
    }
    match api.store.token(name) {
        Ok(Some(record)) => auth::check(&record, secret, now),
        Ok(None) => Err(AuthError::Unknown),
        Err(e) => {
            tracing::error!(error = %e, "cannot read tokens");
            Err(AuthError::Unknown)
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
        assert_eq!(
            required_role(
                &Method::POST,
                "/api/v1/rollouts/{id}/{command}",
                "/api/v1/rollouts/7/pause"
            ),
            Some(Some(Role::Operator))
        );
        assert_eq!(
            required_role(
                &Method::POST,
                "/api/v1/rollouts/{id}/{command}",
                "/api/v1/rollouts/7/explode"
            ),
            None
        );
        assert_eq!(
            required_role(&Method::GET, "/api/v1/backup", "/api/v1/backup"),
            Some(Some(Role::Admin))
        );
    }
}
