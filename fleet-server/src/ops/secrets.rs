//! Secrets: set (the raw value), remove, list (never a value).
//!
//! A change is one durable store change: the encrypted record, new generations for exactly
//! the devices where the digest of a secret their release mounts changed, and the audit line
//! (name, scope and digest, never the value). A change that would leave a device whose
//! release mounts the secret without a value is refused, naming the devices; nothing is stored.

use fleet_proto::{DeviceId, UnixMillis};
use serde::Deserialize;

use super::publish::{internal, named, refused_devices, send};
use super::variables::check_scope;
use super::{blocking, Error, Fleet};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::desired::{self, Outgoing};
use crate::secrets::{self, SecretRecord, SecretValue};
use crate::store::{Store, Tx};
use crate::variables::Scope;

/// What a set or remove did.
#[derive(Debug, Clone)]
pub struct SecretChanged {
    /// The secret as stored now (`None` after a removal).
    pub secret: Option<SecretRecord>,
    /// Devices that got a new desired state.
    pub retargeted: Vec<DeviceId>,
    /// Covered devices whose mounted values stayed the same.
    pub unchanged: usize,
}

fn invalid(path: &str, reason: String) -> Error {
    Error::field("the secret was refused; nothing was changed", path, reason)
}

/// Where a secret value is set: `group` or `device` (neither: the fleet). The REST API reads
/// it from the query string.
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
    /// As a [`Scope`]; one of group and device at most.
    pub fn scope(&self) -> Result<Scope, Error> {
        if self.group.is_some() && self.device.is_some() {
            return Err(Error::BadRequest(
                "give group or device, not both: a secret value has one scope".to_owned(),
            ));
        }
        Ok(Scope { group: self.group.clone(), device: self.device.clone(), service: None })
    }
}

/// Sets secret `name` at `at` to `value`. The plaintext is dropped once it
/// is encrypted.
pub async fn set(
    fleet: &Fleet,
    caller: &Caller,
    name: String,
    at: &SecretScope,
    value: Vec<u8>,
    now: UnixMillis,
) -> Result<SecretChanged, Error> {
    secrets::check_name(&name).map_err(|r| invalid("name", r))?;
    let scope = at.scope()?;
    secrets::check_value(&name, value.len()).map_err(|r| invalid("value", r))?;
    let value = SecretValue::new(value);
    let record = fleet
        .pki
        .vault()
        .encrypt(&name, &scope, &value, now, &caller.name)
        .map_err(Error::internal)?;
    drop(value);
    let verb = format!("setting {name} for the {scope}");
    let (changed, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || {
            fleet.store.update_durable(|tx| {
                check_scope(tx, &scope)?;
                let previous = tx.secret(&record.key())?;
                let (mut changed, outgoing) =
                    change(tx, &fleet, &scope, &verb, now, |tx| tx.put_secret(&record))?;
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
                        changed.retargeted.len()
                    ),
                ));
                changed.secret = Some(record.clone());
                Ok((changed, outgoing))
            })
        }
    })
    .await?;
    send(fleet, outgoing, now);
    Ok(changed)
}

/// Removes secret `name` from `at`.
pub async fn remove(
    fleet: &Fleet,
    caller: &Caller,
    name: String,
    at: &SecretScope,
    now: UnixMillis,
) -> Result<SecretChanged, Error> {
    secrets::check_name(&name).map_err(|r| invalid("name", r))?;
    let scope = at.scope()?;
    let key = scope.key(&name);
    let verb = format!("removing {name} from the {scope}");
    let (changed, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || {
            fleet.store.update_durable(|tx| {
                check_scope(tx, &scope)?;
                let Some(previous) = tx.secret(&key)? else {
                    return Err(Error::NotSet {
                        name: name.clone(),
                        scope: scope.to_string(),
                        command: "secret",
                    });
                };
                let (changed, outgoing) =
                    change(tx, &fleet, &scope, &verb, now, |tx| tx.remove_secret(&key))?;
                tx.audit(AuditEntry::new(
                    now,
                    &caller.name,
                    "secret.rm",
                    scope.to_string(),
                    format!(
                        "{name} (digest {}); {} device(s) re-targeted",
                        previous.digest,
                        changed.retargeted.len()
                    ),
                ));
                Ok((changed, outgoing))
            })
        }
    })
    .await?;
    send(fleet, outgoing, now);
    Ok(changed)
}

/// Applies `write` and re-targets the covered devices whose resolved digests changed; refuses
/// (writing nothing) if a covered device's release would mount a secret without a value.
fn change(
    tx: &mut Tx<'_>,
    fleet: &Fleet,
    scope: &Scope,
    verb: &str,
    now: UnixMillis,
    write: impl FnOnce(&mut Tx<'_>),
) -> Result<(SecretChanged, Vec<Outgoing>), Error> {
    let (before, covered) = super::publish::write_scoped(tx, scope, write)?;
    let changed = desired::retarget_secrets_changed(tx, &fleet.pki, before, covered, now)
        .map_err(internal)?;
    if !changed.failures.is_empty() {
        let (devices, problems) = refused_devices(&changed.failures);
        return Err(Error::Conflict {
            detail: format!(
                "{verb} would leave {} device(s) whose release mounts it without a value ({}); nothing was changed: set a value that covers them first (for the fleet, their group or each device), or move them to a release that does not mount it",
                devices.len(),
                named(&devices)
            ),
            problems,
        });
    }
    let retargeted = changed.outgoing.iter().map(|o| o.device.clone()).collect();
    Ok((SecretChanged { secret: None, retargeted, unchanged: changed.unchanged }, changed.outgoing))
}

/// Every stored secret (encrypted; callers show names, scopes and digests only).
pub fn list(store: &Store) -> Result<Vec<SecretRecord>, Error> {
    Ok(store.secrets()?)
}
