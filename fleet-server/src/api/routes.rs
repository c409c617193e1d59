//! The API's contract as one table: every route once, with the role it needs, its path and
//! query parameters, its body and its answer, as Rust types.
//!
//! The authorisation layer reads this table (a route cannot be added without deciding who may
//! call it, and a method the table does not list on a known path answers 405), and the OpenAPI
//! document is generated from it ([`super::openapi`]): the types named here are the types the
//! handlers take and return, so the document cannot drift from the code.

use std::borrow::Cow;

use fleet_api::{
    CommandReason, CommandRequest, DesiredRequest, DesiredResponse, Device, DeviceChange,
    DeviceChanged, DeviceView, EnrollRequest, EnrollResponse, GroupChange, GroupRequest,
    GroupSummary, GroupView, MetricsView, Page, PinRequest, Plan, PointView, Release,
    ReleaseRequest, RolloutRequest, RolloutView, SecretChange, SecretList, Token, TokenRequest,
    TokenResponse, VariableChange, VariableList, VariableRequest, WhoAmI,
};
use fleet_proto::{CommandResult, DeviceId, Event, ReleaseId};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::admin::AuditQuery;
use super::devices::{DeviceFilter, HistoryFilter};
use super::fleet::ReleaseFilter;
use super::secrets::SecretScope;
use super::variables::VariableFilter;
use crate::auth::Role;

/// Makes the JSON Schema of one type (a reference into the document's schemas where the type
/// is named).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What a route takes as its body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// Nothing.
    None,
    /// JSON of this schema, required.
    Json(SchemaFn),
    /// JSON of this schema, or nothing at all.
    OptionalJson(SchemaFn),
    /// Raw bytes (`application/octet-stream`), 1 to `max` of them.
    Bytes {
        /// The most it takes.
        max: usize,
    },
}

/// One route: who may call it, what it takes and what it answers.
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
    /// The schema of each path placeholder, in path order.
    pub params: &'static [(&'static str, SchemaFn)],
    /// Its query parameters, as one object whose properties are the parameters.
    pub query: Option<SchemaFn>,
    /// Its body.
    pub body: Body,
    /// The success statuses (a put that may create answers 200 or 201).
    pub ok: &'static [u16],
    /// The success answer's schema.
    pub response: SchemaFn,
}

/// The schema of `T`, by reference.
pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// The schema of `T`, written out (query objects: their properties become parameters).
pub fn inline<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    T::json_schema(g)
}

macro_rules! routes {
    ($(
        $method:literal $path:literal $role:expr,
        [$($param:literal: $param_ty:ty,)*]
        $(query $query:ty,)?
        $(json $json:ty,)?
        $(optional $optional:ty,)?
        $(bytes $max:expr,)?
        => $ok:expr, $response:ty,
        $summary:literal;
    )*) => {
        /// Every route of the API.
        pub const ROUTES: &[RouteDoc] = &[$(
            RouteDoc {
                method: $method,
                path: $path,
                role: $role,
                summary: $summary,
                params: &[$(($param, schema::<$param_ty>),)*],
                query: routes!(@query $($query)?),
                body: routes!(@body $(json $json)? $(optional $optional)? $(bytes $max)?),
                ok: &$ok,
                response: schema::<$response>,
            },
        )*];
    };
    (@query) => { None };
    (@query $query:ty) => { Some(inline::<$query> as SchemaFn) };
    (@body) => { Body::None };
    (@body json $json:ty) => { Body::Json(schema::<$json>) };
    (@body optional $optional:ty) => { Body::OptionalJson(schema::<$optional>) };
    (@body bytes $max:expr) => { Body::Bytes { max: $max } };
}

const V: Option<Role> = Some(Role::Viewer);
const O: Option<Role> = Some(Role::Operator);
const A: Option<Role> = Some(Role::Admin);
const OK: [u16; 1] = [200];
const CREATED: [u16; 1] = [201];

routes! {
    "GET" "/healthz" None, [] => OK, Health, "Liveness: the server answers.";
    "GET" "/api/openapi.json" None, [] => OK, OpenApi, "This API as an OpenAPI 3.1 document.";
    "GET" "/api/v1/whoami" V, [] => OK, WhoAmI, "The calling token's name and role.";
    "GET" "/api/v1/devices" V, [] query DeviceFilter, => OK, Page<Device>,
        "Devices, paged; filter with ?selector=k=v or ?group=NAME.";
    "GET" "/api/v1/devices/{id}" V, ["id": DeviceId,] => OK, DeviceView,
        "One device with its inventory, groups and active rollout.";
    "PATCH" "/api/v1/devices/{id}" O, ["id": DeviceId,] json DeviceChange, => OK, DeviceChanged,
        "Change a device's labels (null removes one) or notes; re-targets it if its new groups change what its release renders.";
    "POST" "/api/v1/devices/{id}/enroll" A, ["id": DeviceId,] json EnrollRequest, => CREATED, EnrollResponse,
        "Enroll a device: issue its client certificate.";
    "POST" "/api/v1/devices/{id}/revoke" A, ["id": DeviceId,] => OK, Device,
        "Revoke a device: drop its messages, add its certificate to the CRL.";
    "PUT" "/api/v1/devices/{id}/desired" O, ["id": DeviceId,] json DesiredRequest, => OK, DesiredResponse,
        "Assign a release given as JSON (stored as a release if new).";
    "PUT" "/api/v1/devices/{id}/pin" O, ["id": DeviceId,] json PinRequest, => OK, Device,
        "Pin a device to a release, with a reason and an optional expiry.";
    "DELETE" "/api/v1/devices/{id}/pin" O, ["id": DeviceId,] query fleet_api::UnpinQuery, => OK, Device,
        "Unpin a device: it returns to its assigned release (?agent=true: lift its agent pin; its agent returns to its assigned version).";
    "POST" "/api/v1/devices/{id}/commands" O, ["id": DeviceId,] json CommandRequest, => OK, CommandResult,
        "Send a signed command and wait for its result.";
    "GET" "/api/v1/devices/{id}/events" V, ["id": DeviceId,] => OK, Vec<Event>,
        "A device's latest events, oldest first.";
    "GET" "/api/v1/devices/{id}/metrics" V, ["id": DeviceId,] => OK, MetricsView,
        "A device's telemetry: counters and the latest value of every series.";
    "GET" "/api/v1/devices/{id}/metrics/history" V, ["id": DeviceId,] query HistoryFilter, => OK, Page<PointView>,
        "A device's stored points, oldest first, paged by sequence number; ?metric=NAME.";
    "GET" "/api/v1/groups" V, [] => OK, Vec<GroupSummary>, "Every group with its device count.";
    "POST" "/api/v1/groups" O, [] json GroupRequest, => [200, 201], GroupChange,
        "Create (201) or replace (200) a group (a named label selector); re-targets the devices whose release renders differently in or out of it.";
    "GET" "/api/v1/groups/{name}" V, ["name": GroupName,] => OK, GroupView, "One group and its devices.";
    "DELETE" "/api/v1/groups/{name}" O, ["name": GroupName,] => OK, GroupChange,
        "Remove a group (its devices stay); re-targets the devices whose release renders differently without it.";
    "GET" "/api/v1/releases" V, [] query ReleaseFilter, => OK, Page<Release>, "Releases, paged; filter with ?app=NAME.";
    "POST" "/api/v1/releases" O, [] json ReleaseRequest, => CREATED, Release,
        "Create a release from a Compose file; tags are resolved to digests.";
    "GET" "/api/v1/releases/{id}" V, ["id": ReleaseId,] => OK, Release, "One release.";
    "POST" "/api/v1/agent-releases" O, [] json fleet_api::AgentReleaseRequest, => CREATED, Release,
        "Create agent release fleet-agent@VERSION: one ELF binary per platform (base64), pushed to the fleet's registry and signed; roll it out like any release.";
    "POST" "/api/v1/rollouts/plan" O, [] json RolloutRequest, => OK, Plan,
        "Pre-flight: the waves, pinned, offline and unsatisfiable devices; sends nothing.";
    "GET" "/api/v1/rollouts" V, [] => OK, Vec<RolloutView>, "Every rollout, newest first.";
    "POST" "/api/v1/rollouts" O, [] json RolloutRequest, => CREATED, RolloutView, "Create a staged rollout and start it.";
    "GET" "/api/v1/rollouts/{id}" V, ["id": u64,] => OK, RolloutView, "A rollout's progress per wave.";
    "POST" "/api/v1/rollouts/{id}/pause" O, ["id": u64,] optional CommandReason, => OK, RolloutView, "Pause a rollout.";
    "POST" "/api/v1/rollouts/{id}/resume" O, ["id": u64,] optional CommandReason, => OK, RolloutView, "Resume a paused rollout.";
    "POST" "/api/v1/rollouts/{id}/abort" O, ["id": u64,] optional CommandReason, => OK, RolloutView, "End a rollout where it stands.";
    "POST" "/api/v1/rollouts/{id}/rollback" O, ["id": u64,] optional CommandReason, => OK, RolloutView,
        "Send a rollout's devices back to their previous release.";
    "POST" "/api/v1/rollouts/{id}/promote" O, ["id": u64,] optional CommandReason, => OK, RolloutView,
        "End the current wave's bake now; the gate still applies before the next wave starts.";
    "POST" "/api/v1/rollouts/{id}/retry" O, ["id": u64,] optional CommandReason, => OK, RolloutView,
        "Target the rollout's failed devices again, in place; a rollout paused by its failure gate runs again.";
    "GET" "/api/v1/variables" V, [] query VariableFilter, => OK, VariableList,
        "Variables, paged; ?group=, ?service= filter; ?device=ID gives its resolved values and where each came from.";
    "PUT" "/api/v1/variables/{name}" O, ["name": VariableName,] json VariableRequest, => OK, VariableChange,
        "Set a variable for the fleet, a group or a device (optionally one service); re-targets the devices whose release changes.";
    "DELETE" "/api/v1/variables/{name}" O, ["name": VariableName,] query VariableFilter, => OK, VariableChange,
        "Unset a variable in the scope ?group=&device=&service=; re-targets the devices whose release changes.";
    "GET" "/api/v1/secrets" V, [] => OK, SecretList,
        "Every stored secret: name, scope, digest, size, who set it when; never a value.";
    "PUT" "/api/v1/secrets/{name}" O, ["name": SecretName,] query SecretScope, bytes crate::secrets::MAX_VALUE_BYTES, => OK, SecretChange,
        "Set a secret's value (the raw body, application/octet-stream, 1 byte to 64 KiB) for the fleet, ?group= or ?device=; re-targets exactly the devices whose value of a mounted secret changed.";
    "DELETE" "/api/v1/secrets/{name}" O, ["name": SecretName,] query SecretScope, => OK, SecretChange,
        "Remove a secret's value in the scope ?group= or ?device=; refused while a device whose release mounts it would be left without one.";
    "GET" "/api/v1/tokens" A, [] => OK, Vec<Token>, "Every API token (names and roles, never secrets).";
    "POST" "/api/v1/tokens" A, [] json TokenRequest, => CREATED, TokenResponse, "Create a token; its secret is shown once.";
    "DELETE" "/api/v1/tokens/{name}" A, ["name": TokenName,] => OK, Token, "Revoke a token.";
    "GET" "/api/v1/audit" V, [] query AuditQuery, => OK, Vec<fleet_api::AuditEntry>, "The audit log, oldest first; ?since=MS&limit=N.";
    "GET" "/api/v1/backup" A, [] => OK, BackupDoc,
        "A consistent copy of the whole store (secrets included: keep it safe).";
}

/// A string schema with a pattern: the name rules the server checks, for path parameters.
fn name_schema(description: &str, pattern: &str, max: usize) -> Schema {
    json_schema!({
        "type": "string",
        "description": description,
        "minLength": 1,
        "maxLength": max,
        "pattern": pattern,
    })
}

/// Declares a named string schema for a path parameter checked by a server-side rule.
macro_rules! name_param {
    ($(#[$doc:meta])* $name:ident, $description:literal, $pattern:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;
        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                name_schema($description, $pattern, $max)
            }
        }
    };
}

name_param!(
    /// [`crate::groups::check_group_name`].
    GroupName,
    "a group name: 1-63 lowercase letters, digits, '-' and '_'",
    fleet_api::patterns::GROUP_NAME,
    63
);
name_param!(
    /// [`crate::auth::check_name`] (the bootstrap token's name is reserved).
    TokenName,
    "a token name: 1-64 lowercase letters, digits, '-' and '_'",
    fleet_api::patterns::TOKEN_NAME,
    64
);
name_param!(
    /// [`crate::variables::check_name`].
    VariableName,
    "a variable name: a POSIX environment name (letters, digits and '_', not starting with a digit), not starting with FLEET_",
    fleet_api::patterns::VARIABLE_NAME,
    256
);
name_param!(
    /// [`crate::secrets::check_name`] ([`fleet_proto::release::is_object_name`]).
    SecretName,
    "a secret name: letters, digits, '_', '.' and '-', starting with a letter or digit, at most 64",
    fleet_api::patterns::SECRET_NAME,
    64
);

/// `GET /healthz`.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // only its schema is used: the handler answers with `json!`
pub struct Health {
    /// Always `ok`.
    status: String,
    /// The server's version.
    version: String,
}

/// `GET /api/openapi.json`: this document.
#[derive(Debug)]
pub struct OpenApi;

impl JsonSchema for OpenApi {
    fn schema_name() -> Cow<'static, str> {
        "OpenApi".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object", "description": "an OpenAPI 3.1 document", "required": ["openapi", "paths"] })
    }
}

/// `GET /api/v1/backup`: [`crate::backup::Backup`], whose records are the store's own JSON.
#[derive(Debug)]
pub struct BackupDoc;

impl JsonSchema for BackupDoc {
    fn schema_name() -> Cow<'static, str> {
        "Backup".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "a consistent copy of the store and its key files (`fleet-server restore` reads it)",
            "required": ["format", "schema_version", "created_at", "server_version", "collections", "files"],
            "properties": {
                "format": { "const": crate::backup::FORMAT },
                "schema_version": { "type": "integer", "minimum": 0 },
                "created_at": { "type": "integer", "minimum": 0, "description": "milliseconds since the Unix epoch" },
                "server_version": { "type": "string" },
                "collections": {
                    "type": "object",
                    "description": "records per collection: [key (hex), record (the store's JSON)]",
                    "additionalProperties": { "type": "array", "items": { "type": "array", "minItems": 2, "maxItems": 2 } }
                },
                "files": { "type": "object", "description": "key files by path relative to the data directory", "additionalProperties": { "type": "string" } }
            }
        })
    }
}

/// The methods the table lists for a path pattern (for 405's `Allow`).
pub fn methods_of(path: &str) -> Vec<&'static str> {
    ROUTES.iter().filter(|r| r.path == path).map(|r| r.method).collect()
}
