//! API tokens: list, issue, revoke.

use fleet_api::TokenRequest;
use fleet_proto::UnixMillis;

use super::Error;
use crate::audit::AuditEntry;
use crate::auth::{self, Caller, TokenRecord};
use crate::keyfile;
use crate::store::Store;

/// The bootstrap token first, then every stored one (revoked ones included).
pub fn list(store: &Store, bootstrap: &TokenRecord) -> Result<Vec<TokenRecord>, Error> {
    let mut all = vec![bootstrap.clone()];
    all.extend(store.tokens()?);
    Ok(all)
}

/// Issues a token as `request` asks; returns its record and the secret token (shown once).
pub fn create(
    store: &Store,
    caller: &Caller,
    request: &TokenRequest,
    now: UnixMillis,
) -> Result<(TokenRecord, String), Error> {
    const REFUSED: &str = "the token was refused";
    auth::check_name(&request.name).map_err(|reason| Error::field(REFUSED, "name", reason))?;
    if request.expires_at.is_some_and(|at| at <= now.0) {
        return Err(Error::field(REFUSED, "expires_at", "in the past"));
    }
    let secret = keyfile::random::<32>().map_err(Error::internal)?;
    let (record, token) = auth::issue(
        &request.name,
        request.role,
        &caller.name,
        now,
        request.expires_at.map(UnixMillis),
        &secret,
    );
    store.update(|tx| {
        if tx.token(&request.name)?.is_some_and(|t| t.revoked_at.is_none()) {
            return Err(Error::conflict(format!(
                "a token named {} exists; revoke it first (`fleetctl token revoke {}`) or pick another name",
                request.name, request.name
            )));
        }
        tx.put_token(&record);
        tx.audit(AuditEntry::new(now, &caller.name, "token.create", request.name.clone(), format!("role {}", request.role)));
        Ok(())
    })?;
    Ok((record, token))
}

/// Revokes token `name` (revoking a revoked token changes nothing); returns its record.
pub fn revoke(
    store: &Store,
    caller: &Caller,
    name: &str,
    now: UnixMillis,
) -> Result<TokenRecord, Error> {
    if name == auth::BOOTSTRAP_NAME {
        return Err(Error::conflict(
            "the bootstrap admin token cannot be revoked through the API; replace <data>/admin-token and restart the server",
        ));
    }
    store.update(|tx| {
        let mut record = tx.token(name)?.ok_or_else(|| Error::NotFound {
            what: "token",
            id: name.to_owned(),
            hint: "`fleetctl token ls` lists them".to_owned(),
        })?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            tx.put_token(&record);
            tx.audit(AuditEntry::new(now, &caller.name, "token.revoke", name.to_owned(), ""));
        }
        Ok(record)
    })
}
