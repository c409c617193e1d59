//! Secret routes: set (the raw value as the body), list (never a value), remove.
//!
//! A change is one durable store change: the encrypted record, new generations for exactly
//! the devices where the digest of a secret their release mounts changed, and the audit line
//! (name, scope and digest, never the value). A change that would leave a device whose
//! release mounts the secret without a value is refused, naming the devices; nothing is stored.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use fleet_proto::UnixMillis;
use serde::Deserialize;

use super::problem::Query;
use super::variables::{check_scope, internal, named, refused_devices, send};
use super::{Api, FieldProblem, Problem};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::desired::{self, Outgoing};
use crate::secrets::{self, SecretValue, SecretView};
use crate::store::Tx;
use crate::variables::Scope;
use fleet_api::{SecretChange, SecretList};

/// `?group=` or `?device=` of set and remove (neither: the fleet).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = { "required": ["group", "device"] }))]
pub struct SecretScope {
    /// A group's value.
    #[schemars(regex(pattern = fleet_api::patterns::GROUP_NAME))]
    pub group: Option<String>,
    /// A device's value.
    #[schemars(with = "Option<fleet_proto::DeviceId>")]
    pub device: Option<String>,
}

impl SecretScope {
    fn scope(&self) -> Result<Scope, Problem> {
        if self.group.is_some() && self.device.is_some() {
            return Err(Problem::bad_request(
                "give group or device, not both: a secret value has one scope",
            ));
        }
        Ok(Scope { group: self.group.clone(), device: self.device.clone(), service: None })
    }
}

fn invalid(path: &str, reason: String) -> Problem {
    Problem::invalid(
        "the secret was refused; nothing was changed",
        vec![FieldProblem { path: path.into(), reason }],
    )
}

pub(super) async fn set(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<SecretScope>,
    body: Bytes,
) -> Result<Json<SecretChange>, Problem> {
    secrets::check_name(&name).map_err(|r| invalid("name", r))?;
    let scope = query.scope()?;
    secrets::check_value(&name, body.len()).map_err(|r| invalid("value", r))?;
    let now = UnixMillis::now();
    let value = SecretValue::new(body.to_vec());
    drop(body);
    let record = api
        .pki
        .vault()
        .encrypt(&name, &scope, &value, now, &caller.name)
        .map_err(Problem::internal)?;
    drop(value);
    let verb = format!("setting {name} for the {scope}");
    let (change, outgoing) = api.store.update_durable(|tx| {
        check_scope(tx, &scope)?;
        let previous = tx.secret(&record.key())?;
        let (mut change, outgoing) =
            change(tx, &api, &scope, &verb, now, |tx| tx.put_secret(&record))?;
        change.secret = Some(SecretView::from(&record));
        let what = match &previous {
            None => "new",
            Some(p) if p.digest == record.digest => "same value",
            Some(_) => "changed",
        };
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "secret.set",
            scope.to_string(),
            format!(
                "{name} ({what}, {} bytes, digest {}); {} device(s) re-targeted",
                record.bytes,
                record.digest,
                change.retargeted.len()
            ),
        ));
        Ok::<_, Problem>((change, outgoing))
    })?;
    send(&api, outgoing, now);
    Ok(Json(change))
}

pub(super) async fn remove(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<SecretScope>,
) -> Result<Json<SecretChange>, Problem> {
    secrets::check_name(&name).map_err(|r| invalid("name", r))?;
    let scope = query.scope()?;
    let key = scope.key(&name);
    let now = UnixMillis::now();
    let verb = format!("removing {name} from the {scope}");
    let (change, outgoing) = api.store.update_durable(|tx| {
        check_scope(tx, &scope)?;
        let Some(previous) = tx.secret(&key)? else {
            return Err(Problem::not_found(format!(
                "{name} is not set for the {scope} (`fleetctl secret ls` lists what is)"
            )));
        };
        let (change, outgoing) = change(tx, &api, &scope, &verb, now, |tx| tx.remove_secret(&key))?;
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "secret.rm",
            scope.to_string(),
            format!(
                "{name} (digest {}); {} device(s) re-targeted",
                previous.digest,
                change.retargeted.len()
            ),
        ));
        Ok::<_, Problem>((change, outgoing))
    })?;
    send(&api, outgoing, now);
    Ok(Json(change))
}

/// Applies `write` and re-targets the covered devices whose resolved digests changed; refuses
/// (writing nothing) if a covered device's release would mount a secret without a value.
fn change(
    tx: &mut Tx<'_>,
    api: &Api,
    scope: &Scope,
    verb: &str,
    now: UnixMillis,
    write: impl FnOnce(&mut Tx<'_>),
) -> Result<(SecretChange, Vec<Outgoing>), Problem> {
    let groups = tx.groups()?;
    let before = desired::Releases::snapshot(&*tx).map_err(internal)?;
    write(tx);
    let covered: Vec<_> = tx
        .devices()?
        .into_iter()
        .filter(|d| scope.covers(d.id.as_str(), &d.labels, &groups))
        .collect();
    let changed =
        desired::retarget_secrets_changed(tx, &api.pki, before, covered, now).map_err(internal)?;
    if !changed.failures.is_empty() {
        let (devices, errors) = refused_devices(&changed.failures);
        return Err(Problem {
            errors,
            ..Problem::conflict(format!(
                "{verb} would leave {} device(s) whose release mounts it without a value ({}); nothing was changed: set a value that covers them first (for the fleet, their group or each device), or move them to a release that does not mount it",
                devices.len(),
                named(&devices)
            ))
        });
    }
    let retargeted = changed.outgoing.iter().map(|o| o.device.clone()).collect();
    Ok((SecretChange { secret: None, retargeted, unchanged: changed.unchanged }, changed.outgoing))
}

pub(super) async fn list(State(api): State<Api>) -> Result<Json<SecretList>, Problem> {
    let secrets = api.store.secrets()?.iter().map(SecretView::from).collect();
    Ok(Json(SecretList { secrets }))
}
