//! Who-am-I, API tokens, the audit log, backups and the revocation list.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::UnixMillis;
use serde::Deserialize;

use super::problem::{Body, Query};
use super::wire;
use super::{Api, Problem};
use crate::auth::Caller;
use crate::backup::Backup;
use crate::ops;
use fleet_api::{Token, TokenRequest, TokenResponse, WhoAmI};

pub(super) async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI { name: caller.name, role: caller.role })
}

pub(super) async fn list_tokens(State(api): State<Api>) -> Result<Json<Vec<Token>>, Problem> {
    Ok(Json(wire::all(ops::tokens::list(&api.store, &api.bootstrap)?)))
}

pub(super) async fn create_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<TokenRequest>,
) -> Result<Response, Problem> {
    let (record, token) = ops::tokens::create(&api.store, &caller, &request, UnixMillis::now())?;
    Ok((StatusCode::CREATED, Json(TokenResponse { record: record.into(), token })).into_response())
}

pub(super) async fn revoke_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Token>, Problem> {
    Ok(Json(ops::tokens::revoke(&api.store, &caller, &name, UnixMillis::now())?.into()))
}

/// `?since=&limit=` of the audit log.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
// An unknown parameter (`?grup=`) is refused, not ignored into a wider answer.
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries at or after this time (milliseconds since the Unix epoch).
    since: Option<u64>,
    /// At most this many (default 1000, at most 100000).
    limit: Option<usize>,
}

pub(super) async fn audit(
    State(api): State<Api>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<fleet_api::AuditEntry>>, Problem> {
    Ok(Json(wire::all(ops::admin::audit(&api.store, q.since, q.limit)?)))
}

pub(super) async fn backup(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Backup>, Problem> {
    let now = UnixMillis::now();
    Ok(Json(ops::admin::backup(api.store.clone(), api.data_dir.clone(), &caller, now).await?))
}

pub use crate::ops::devices::write_crl;
