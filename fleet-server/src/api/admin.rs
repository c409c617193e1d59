//! Who-am-I, API tokens, the audit log, backups and the revocation list.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::UnixMillis;
use serde::Deserialize;

use super::problem::{Body, Query};
use super::wire;
use super::{Api, FieldProblem, Problem};
use crate::audit::AuditEntry;
use crate::auth::{self, Caller};
use crate::backup::Backup;
use crate::pki::{Pki, Revoked};
use crate::store::Store;
use fleet_api::{Token, TokenRequest, TokenResponse, WhoAmI};

pub(super) async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI { name: caller.name, role: caller.role })
}

pub(super) async fn list_tokens(State(api): State<Api>) -> Result<Json<Vec<Token>>, Problem> {
    let mut all = vec![(*api.bootstrap).clone()];
    all.extend(api.store.tokens()?);
    Ok(Json(wire::all(all)))
}

pub(super) async fn create_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<TokenRequest>,
) -> Result<Response, Problem> {
    if let Err(reason) = auth::check_name(&request.name) {
        return Err(Problem::invalid(
            "the token was refused",
            vec![FieldProblem { path: "name".into(), reason }],
        ));
    }
    let now = UnixMillis::now();
    if request.expires_at.is_some_and(|at| at <= now.0) {
        return Err(Problem::invalid(
            "the token was refused",
            vec![FieldProblem { path: "expires_at".into(), reason: "in the past".into() }],
        ));
    }
    let secret = crate::pki::random::<32>().map_err(Problem::internal)?;
    let (record, token) = auth::issue(
        &request.name,
        request.role,
        &caller.name,
        now,
        request.expires_at.map(UnixMillis),
        &secret,
    );
    api.store.update(|tx| {
        if tx.token(&request.name)?.is_some_and(|t| t.revoked_at.is_none()) {
            return Err(Problem::conflict(format!(
                "a token named {} exists; revoke it first (`fleetctl token revoke {}`) or pick another name",
                request.name, request.name
            )));
        }
        tx.put_token(&record);
        tx.audit(AuditEntry::new(now, &caller.name, "token.create", request.name.clone(), format!("role {}", request.role)));
        Ok::<_, Problem>(())
    })?;
    Ok((StatusCode::CREATED, Json(TokenResponse { record: record.into(), token })).into_response())
}

pub(super) async fn revoke_token(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Token>, Problem> {
    if name == auth::BOOTSTRAP_NAME {
        return Err(Problem::conflict(
            "the bootstrap admin token cannot be revoked through the API; replace <data>/admin-token and restart the server",
        ));
    }
    let now = UnixMillis::now();
    let record = api.store.update(|tx| {
        let mut record = tx.token(&name)?.ok_or_else(|| {
            Problem::not_found(format!("no token {name} (`fleetctl token ls` lists them)"))
        })?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            tx.put_token(&record);
            tx.audit(AuditEntry::new(now, &caller.name, "token.revoke", name.clone(), ""));
        }
        Ok::<_, Problem>(record)
    })?;
    Ok(Json(record.into()))
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
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    Ok(Json(wire::all(api.store.audit(UnixMillis(q.since.unwrap_or(0)), limit)?)))
}

pub(super) async fn backup(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Backup>, Problem> {
    let now = UnixMillis::now();
    api.store.update(|tx| {
        tx.audit(AuditEntry::new(now, &caller.name, "server.backup", "store", ""));
        Ok::<_, Problem>(())
    })?;
    let store = api.store.clone();
    let dir = api.data_dir.clone();
    let backup = tokio::task::spawn_blocking(move || Backup::take(&store, &dir))
        .await
        .map_err(Problem::internal)?
        .map_err(Problem::internal)?;
    Ok(Json(backup))
}

/// Writes the revocation list from every revoked certificate in the registry.
pub fn write_crl(store: &Store, pki: &Pki) -> Result<(), Box<dyn std::error::Error>> {
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
