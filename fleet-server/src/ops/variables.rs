//! Variables: set and unset at a scope, list them or what a device resolves.
//!
//! A change is one durable store change: the variable, the new generations of exactly the
//! devices whose rendered release differs, and the audit line (name and scope, never the
//! value). If the new value makes the release unrenderable on any covered device, nothing is
//! stored and the refusal lists the devices and why.

use std::collections::BTreeSet;

use fleet_api::VariableRequest;
use fleet_proto::{DeviceId, UnixMillis};
use serde::Deserialize;

use super::publish::{internal, refusal, send};
use super::{blocking, Error, Fleet};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::desired::{self, Outgoing};
use crate::store::{Store, Tx};
use crate::variables::{self, Resolved, Scope, VarIndex, VariableRecord};

/// What a set or unset did.
#[derive(Debug, Clone)]
pub struct VariableChanged {
    /// The variable as stored now (`None` after an unset).
    pub variable: Option<VariableRecord>,
    /// The scope changed.
    pub scope: Scope,
    /// Devices that got a new desired state.
    pub retargeted: Vec<DeviceId>,
    /// Covered devices whose rendered release stayed the same.
    pub unchanged: usize,
    /// Things worth knowing that did not stop the change.
    pub warnings: Vec<String>,
}

/// What a listing found: a device's resolved values, or the stored variables.
#[derive(Debug, Clone)]
pub enum Listed {
    /// Values in force on a device: per service (`None`: every service), with their origin.
    Resolved(Vec<(Option<String>, Resolved)>),
    /// Stored variables, a page of them, and the cursor of the next page.
    Stored(Vec<VariableRecord>, Option<String>),
}

/// Which variables to list or unset: `group`/`device`/`service` as the scope, with paging
/// (the REST API reads it from the query string).
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
// An unknown parameter (`?grup=`) is refused, not ignored into a wider answer.
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = { "required": ["group", "device"] }))]
pub struct Filter {
    /// A group's variables.
    #[schemars(regex(pattern = fleet_api::patterns::GROUP_NAME))]
    pub group: Option<String>,
    /// A device: its resolved values with their origin.
    #[schemars(with = "Option<fleet_proto::DeviceId>")]
    pub device: Option<String>,
    /// One service.
    #[schemars(with = "Option<fleet_proto::ServiceName>")]
    pub service: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next` of the page before (empty: the first page).
    pub after: Option<String>,
}

impl Filter {
    /// The scope it names.
    pub fn scope(&self) -> Scope {
        Scope {
            group: self.group.clone(),
            device: self.device.clone(),
            service: self.service.clone(),
        }
    }
}

/// A refusal of one field of `what` (`the variable`, `the secret`).
pub fn invalid(what: &str, path: &str, reason: String) -> Error {
    Error::field(&format!("{what} was refused; nothing was changed"), path, reason)
}

/// Checks the scope's shape and that its group or device exists.
pub fn check_scope(tx: &Tx<'_>, scope: &Scope) -> Result<(), Error> {
    scope.check().map_err(|r| invalid("the variable", "scope", r))?;
    if let Some(g) = &scope.group {
        if tx.group(g)?.is_none() {
            return Err(Error::NotFound {
                what: "group",
                id: g.clone(),
                hint: format!("`fleetctl group ls` lists them; create it with `fleetctl group create {g} --selector k=v`"),
            });
        }
    }
    if let Some(d) = &scope.device {
        let id = DeviceId::new(d.as_str())
            .map_err(|e| invalid("the variable", "device", e.to_string()))?;
        if tx.device(&id)?.is_none() {
            return Err(no_device(d));
        }
    }
    Ok(())
}

fn no_device(id: &str) -> Error {
    Error::NotFound {
        what: "device",
        id: id.to_owned(),
        hint: "`fleetctl device ls` lists them".to_owned(),
    }
}

/// Sets variable `name` as `request` says.
pub async fn set(
    fleet: &Fleet,
    caller: &Caller,
    name: String,
    request: VariableRequest,
    now: UnixMillis,
) -> Result<VariableChanged, Error> {
    variables::check_name(&name).map_err(|r| invalid("the variable", "name", r))?;
    variables::check_value(&name, &request.value)
        .map_err(|r| invalid("the variable", "value", r))?;
    let scope = Scope { group: request.group, device: request.device, service: request.service };
    let record = VariableRecord {
        name: name.clone(),
        value: request.value,
        scope: scope.clone(),
        updated_at: now,
        updated_by: caller.name.clone(),
    };
    let verb = format!("setting {name} for the {scope}");
    let (changed, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || {
            fleet.store.update_durable(|tx| {
                check_scope(tx, &scope)?;
                let previous = tx.variable(&record.key())?;
                let (mut c, out) =
                    change(tx, &fleet, &scope, &verb, now, |tx| tx.put_variable(&record))?;
                c.variable = Some(record.clone());
                let what = if previous.is_some() { "changed" } else { "new" };
                tx.audit(AuditEntry::new(
                    now,
                    &caller.name,
                    "var.set",
                    scope.to_string(),
                    format!("{name} ({what}); {} device(s) re-targeted", c.retargeted.len()),
                ));
                Ok((c, out))
            })
        }
    })
    .await?;
    send(fleet, outgoing, now);
    Ok(changed)
}

/// Unsets variable `name` at `scope`.
pub async fn unset(
    fleet: &Fleet,
    caller: &Caller,
    name: String,
    scope: Scope,
    now: UnixMillis,
) -> Result<VariableChanged, Error> {
    variables::check_name(&name).map_err(|r| invalid("the variable", "name", r))?;
    let key = scope.key(&name);
    let verb = format!("unsetting {name} for the {scope}");
    let (changed, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || {
            fleet.store.update_durable(|tx| {
                check_scope(tx, &scope)?;
                if tx.variable(&key)?.is_none() {
                    return Err(Error::NotSet {
                        name: name.clone(),
                        scope: scope.to_string(),
                        command: "var",
                    });
                }
                let (c, out) =
                    change(tx, &fleet, &scope, &verb, now, |tx| tx.remove_variable(&key))?;
                tx.audit(AuditEntry::new(
                    now,
                    &caller.name,
                    "var.unset",
                    scope.to_string(),
                    format!("{name}; {} device(s) re-targeted", c.retargeted.len()),
                ));
                Ok((c, out))
            })
        }
    })
    .await?;
    send(fleet, outgoing, now);
    Ok(changed)
}

/// Applies `write` to the variables and re-targets the covered devices whose rendered release
/// changes; refuses (writing nothing) if any covered device's release stops rendering.
fn change(
    tx: &mut Tx<'_>,
    fleet: &Fleet,
    scope: &Scope,
    verb: &str,
    now: UnixMillis,
    write: impl FnOnce(&mut Tx<'_>),
) -> Result<(VariableChanged, Vec<Outgoing>), Error> {
    let (before, covered) = super::publish::write_scoped(tx, scope, write)?;
    let mut warnings = Vec::new();
    if let Some(service) = &scope.service {
        let mut releases = desired::Releases::default();
        let mut has_it = false;
        let wanted: BTreeSet<String> = covered
            .iter()
            .filter_map(|d| d.wanted_release(now).map(|r| r.as_str().to_owned()))
            .collect();
        for id in &wanted {
            if let Ok(spec) = releases.get(&*tx, &fleet.pki, id) {
                has_it |= spec.services.iter().any(|s| s.name.as_str() == service);
            }
        }
        if !has_it {
            warnings.push(format!(
                "no release the covered devices run has a service {service}; the variable applies once one does"
            ));
        }
    }
    let changed =
        desired::retarget_changed(tx, &fleet.pki, before, covered, now).map_err(internal)?;
    if !changed.failures.is_empty() {
        return Err(refusal(
            verb,
            &changed.failures,
            "fix the value, or the Compose file in a new release",
        ));
    }
    let retargeted = changed.outgoing.iter().map(|o| o.device.clone()).collect();
    Ok((
        VariableChanged {
            variable: None,
            scope: scope.clone(),
            retargeted,
            unchanged: changed.unchanged,
            warnings,
        },
        changed.outgoing,
    ))
}

/// The variables `filter` asks for: with `device`, the values in force on it and where each
/// comes from (only where a service's value differs from the common one); otherwise the
/// stored variables of the group or service, a page at a time in key order.
pub fn list(store: &Store, filter: &Filter) -> Result<Listed, Error> {
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    filter.scope().check().map_err(Error::BadRequest)?;
    if let Some(d) = &filter.device {
        if filter.group.is_some() {
            return Err(Error::BadRequest("give group or device, not both".to_owned()));
        }
        let id = DeviceId::new(d.as_str()).map_err(|e| Error::BadRequest(e.to_string()))?;
        let record = store.device(&id)?.ok_or_else(|| no_device(d))?;
        let index = VarIndex::new(store.variables()?, &store.groups()?);
        let labels = &record.labels;
        let mut items = Vec::new();
        match &filter.service {
            Some(s) => items.extend(
                index.explain(d, labels, Some(s)).into_iter().map(|r| (Some(s.clone()), r)),
            ),
            None => {
                let common = index.explain(d, labels, None);
                for s in index.services_of(d, labels) {
                    for r in index.explain(d, labels, Some(&s)) {
                        let same = common.iter().any(|c| {
                            c.name == r.name && c.value == r.value && c.origin == r.origin
                        });
                        if !same {
                            items.push((Some(s.clone()), r));
                        }
                    }
                }
                items.splice(0..0, common.into_iter().map(|r| (None, r)));
            }
        }
        return Ok(Listed::Resolved(items));
    }
    // Variables are few (people type them): filter in memory, page by key.
    let wanted = |v: &VariableRecord| {
        filter.group.as_ref().is_none_or(|g| v.scope.group.as_ref() == Some(g))
            && filter.service.as_ref().is_none_or(|s| v.scope.service.as_ref() == Some(s))
    };
    let mut items: Vec<VariableRecord> = store
        .variables()?
        .into_iter()
        .filter(|v| wanted(v) && filter.after.as_ref().is_none_or(|a| v.key() > *a))
        .take(limit + 1)
        .collect();
    let next = (items.len() > limit).then(|| items[limit - 1].key());
    items.truncate(limit);
    Ok(Listed::Stored(items, next))
}
