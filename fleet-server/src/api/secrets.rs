//! Secret routes: set (the raw value as the body), list (never a value), remove.
//! [`crate::ops::secrets`] does the work; these map HTTP to it and back.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use fleet_proto::UnixMillis;

use super::problem::Query;
use super::{Api, Problem};
use crate::auth::Caller;
use crate::ops;
use crate::secrets::SecretView;
use fleet_api::{SecretChange, SecretList};

/// `?group=` or `?device=` of set and remove (neither: the fleet).
pub type SecretScope = ops::secrets::SecretScope;

pub(super) async fn set(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(at): Query<SecretScope>,
    body: Bytes,
) -> Result<Json<SecretChange>, Problem> {
    // The plaintext is held once, only until it is encrypted.
    let value = body.to_vec();
    drop(body);
    let changed =
        ops::secrets::set(&api.fleet(), &caller, name, &at, value, UnixMillis::now()).await?;
    Ok(Json(secret_change(changed)))
}

pub(super) async fn remove(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(at): Query<SecretScope>,
) -> Result<Json<SecretChange>, Problem> {
    let changed = ops::secrets::remove(&api.fleet(), &caller, name, &at, UnixMillis::now()).await?;
    Ok(Json(secret_change(changed)))
}

fn secret_change(c: ops::secrets::SecretChanged) -> SecretChange {
    SecretChange {
        secret: c.secret.as_ref().map(SecretView::from),
        retargeted: c.retargeted,
        unchanged: c.unchanged,
    }
}

pub(super) async fn list(State(api): State<Api>) -> Result<Json<SecretList>, Problem> {
    let secrets = ops::secrets::list(&api.store)?.iter().map(SecretView::from).collect();
    Ok(Json(SecretList { secrets }))
}
