//! Variable routes: set, unset, list; a device's resolved values with where each came from.
//!
//! A change is one durable store change: the variable, the new generations of exactly the
//! devices whose rendered release differs, and the audit line (name and scope, never the
//! value). If the new value makes the release unrenderable on any covered device, nothing is
//! stored and the answer lists the devices and why.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use fleet_proto::{DeviceId, UnixMillis};
use serde::Deserialize;

use super::problem::{Body, Query};
use super::wire;
use super::{Api, FieldProblem, Problem};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::desired::{self, DesiredError, Outgoing};
use crate::store::Tx;
use crate::variables::{self, Scope, VarIndex, VariableRecord};
use fleet_api::{Page, ResolvedView, VariableChange, VariableList, VariableRequest};

/// Devices named in a refusal; the count says how many more.
const NAMED_DEVICES: usize = 5;

/// `?group=&device=&service=` of the list and of unset, with paging.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
// An unknown parameter (`?grup=`) is refused, not ignored into a wider answer.
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = { "required": ["group", "device"] }))]
pub struct VariableFilter {
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

impl VariableFilter {
    fn scope(&self) -> Scope {
        Scope {
            group: self.group.clone(),
            device: self.device.clone(),
            service: self.service.clone(),
        }
    }
}

fn invalid(what: &str, path: &str, reason: String) -> Problem {
    Problem::invalid(
        format!("{what} was refused; nothing was changed"),
        vec![FieldProblem { path: path.into(), reason }],
    )
}

/// Checks the scope's shape and that its group or device exists.
pub(super) fn check_scope(tx: &Tx<'_>, scope: &Scope) -> Result<(), Problem> {
    scope.check().map_err(|r| invalid("the variable", "scope", r))?;
    if let Some(g) = &scope.group {
        if tx.group(g)?.is_none() {
            return Err(Problem::not_found(format!(
                "no group {g} (`fleetctl group ls` lists them; create it with `fleetctl group create {g} --selector k=v`)"
            )));
        }
    }
    if let Some(d) = &scope.device {
        let id = DeviceId::new(d.as_str())
            .map_err(|e| invalid("the variable", "device", e.to_string()))?;
        if tx.device(&id)?.is_none() {
            return Err(Problem::not_found(format!(
                "no device {d} (`fleetctl device ls` lists them)"
            )));
        }
    }
    Ok(())
}

pub(super) async fn set(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(request): Body<VariableRequest>,
) -> Result<Json<VariableChange>, Problem> {
    variables::check_name(&name).map_err(|r| invalid("the variable", "name", r))?;
    variables::check_value(&name, &request.value)
        .map_err(|r| invalid("the variable", "value", r))?;
    let scope = Scope {
        group: request.group.clone(),
        device: request.device.clone(),
        service: request.service.clone(),
    };
    let now = UnixMillis::now();
    let record = VariableRecord {
        name: name.clone(),
        value: request.value.clone(),
        scope: scope.clone(),
        updated_at: now,
        updated_by: caller.name.clone(),
    };
    let verb = format!("setting {name} for the {scope}");
    let (change, outgoing) = api.store.update_durable(|tx| {
        check_scope(tx, &scope)?;
        let previous = tx.variable(&record.key())?;
        change(tx, &api, &scope, &verb, now, |tx| tx.put_variable(&record)).map(|(mut c, out)| {
            c.variable = Some(record.clone().into());
            let what = if previous.is_some() { "changed" } else { "new" };
            tx.audit(AuditEntry::new(
                now,
                &caller.name,
                "var.set",
                scope.to_string(),
                format!("{name} ({what}); {} device(s) re-targeted", c.retargeted.len()),
            ));
            (c, out)
        })
    })?;
    send(&api, outgoing, now);
    Ok(Json(change))
}

pub(super) async fn unset(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(filter): Query<VariableFilter>,
) -> Result<Json<VariableChange>, Problem> {
    variables::check_name(&name).map_err(|r| invalid("the variable", "name", r))?;
    let scope = filter.scope();
    let key = scope.key(&name);
    let now = UnixMillis::now();
    let verb = format!("unsetting {name} for the {scope}");
    let (change, outgoing) = api.store.update_durable(|tx| {
        check_scope(tx, &scope)?;
        if tx.variable(&key)?.is_none() {
            return Err(Problem::not_found(format!(
                "{name} is not set for the {scope} (`fleetctl var ls` lists what is)"
            )));
        }
        change(tx, &api, &scope, &verb, now, |tx| tx.remove_variable(&key)).map(|(c, out)| {
            tx.audit(AuditEntry::new(
                now,
                &caller.name,
                "var.unset",
                scope.to_string(),
                format!("{name}; {} device(s) re-targeted", c.retargeted.len()),
            ));
            (c, out)
        })
    })?;
    send(&api, outgoing, now);
    Ok(Json(change))
}

/// Applies `write` to the variables and re-targets the covered devices whose rendered release
/// changes; refuses (writing nothing) if any covered device's release stops rendering.
fn change(
    tx: &mut Tx<'_>,
    api: &Api,
    scope: &Scope,
    verb: &str,
    now: UnixMillis,
    write: impl FnOnce(&mut Tx<'_>),
) -> Result<(VariableChange, Vec<Outgoing>), Problem> {
    let groups = tx.groups()?;
    let before = desired::Releases::snapshot(&*tx).map_err(internal)?;
    write(tx);
    let covered: Vec<_> = tx
        .devices()?
        .into_iter()
        .filter(|d| scope.covers(d.id.as_str(), &d.labels, &groups))
        .collect();
    let mut warnings = Vec::new();
    if let Some(service) = &scope.service {
        let mut releases = desired::Releases::default();
        let mut has_it = false;
        let wanted: std::collections::BTreeSet<String> =
            covered.iter().filter_map(|d| d.wanted_release(now).map(str::to_owned)).collect();
        for id in &wanted {
            if let Ok(spec) = releases.get(&*tx, &api.pki, id) {
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
        desired::retarget_changed(tx, &api.pki, before, covered, now).map_err(internal)?;
    if !changed.failures.is_empty() {
        return Err(refusal(
            verb,
            &changed.failures,
            "fix the value, or the Compose file in a new release",
        ));
    }
    let retargeted = changed.outgoing.iter().map(|o| o.device.clone()).collect();
    Ok((
        VariableChange {
            variable: None,
            scope: scope.clone().into(),
            retargeted,
            unchanged: changed.unchanged,
            warnings,
        },
        changed.outgoing,
    ))
}

/// A store failure as such, anything else while deciding as the server's own failure.
pub(super) fn internal(e: DesiredError) -> Problem {
    match e {
        DesiredError::Store(e) => Problem::from(e),
        e => Problem::internal(e),
    }
}

/// The 422 for a change that would make the release of the devices in `failures`
/// undecidable: names the first few devices, lists each one's problems with its Compose path,
/// and says the way out (`fix`).
pub(super) fn refusal(verb: &str, failures: &[DesiredError], fix: &str) -> Problem {
    let (devices, errors) = refused_devices(failures);
    Problem::invalid(
        format!(
            "{verb} would make the release of {} device(s) invalid ({}); nothing was changed: {fix}",
            devices.len(),
            named(&devices)
        ),
        errors,
    )
}

/// The devices of `failures` and, for the first few, their problems.
pub(super) fn refused_devices(failures: &[DesiredError]) -> (Vec<String>, Vec<FieldProblem>) {
    let mut devices = Vec::new();
    let mut errors = Vec::new();
    for failure in failures {
        if let DesiredError::Render { device, release, .. }
        | DesiredError::MissingSecret { device, release, .. } = failure
        {
            if devices.len() < NAMED_DEVICES {
                errors.extend(failure.problems().into_iter().map(|(path, reason)| FieldProblem {
                    path,
                    reason: format!("on device {device} (release {release}): {reason}"),
                }));
            }
            devices.push(device.to_string());
        }
    }
    (devices, errors)
}

/// The first few of `devices`, and how many more.
pub(super) fn named(devices: &[String]) -> String {
    let more = devices.len().saturating_sub(NAMED_DEVICES);
    let named = devices.iter().take(NAMED_DEVICES).cloned().collect::<Vec<_>>().join(", ");
    if more > 0 {
        format!("{named} and {more} more")
    } else {
        named
    }
}

/// Publishes what a change decided, now that it is on disk; what the broker cannot take now
/// the rollout driver sends again.
pub(super) fn send(api: &Api, outgoing: Vec<Outgoing>, now: UnixMillis) {
    for out in outgoing {
        let device = out.device.clone();
        if let Err(e) = api.publisher.send_now(out, now) {
            tracing::warn!(%device, error = %e, "desired state queued for resending");
            api.driver.resend_later(device);
        }
    }
}

pub(super) async fn list(
    State(api): State<Api>,
    Query(filter): Query<VariableFilter>,
) -> Result<Json<VariableList>, Problem> {
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    if let Some(d) = &filter.device {
        if filter.group.is_some() {
            return Err(Problem::bad_request("give group or device, not both"));
        }
        let id = DeviceId::new(d.as_str()).map_err(|e| Problem::bad_request(e.to_string()))?;
        let record = api.store.device(&id)?.ok_or_else(|| {
            Problem::not_found(format!("no device {d} (`fleetctl device ls` lists them)"))
        })?;
        let index = VarIndex::new(api.store.variables()?, &api.store.groups()?);
        let labels = &record.labels;
        let mut items: Vec<ResolvedView> = Vec::new();
        match &filter.service {
            Some(s) => items.extend(
                index
                    .explain(d, labels, Some(s))
                    .into_iter()
                    .map(|r| ResolvedView { service: Some(s.clone()), resolved: r.into() }),
            ),
            None => {
                let common = index.explain(d, labels, None);
                for s in index.services_of(d, labels) {
                    for r in index.explain(d, labels, Some(&s)) {
                        // Only where the service's value differs from the common one.
                        let same = common.iter().any(|c| {
                            c.name == r.name && c.value == r.value && c.origin == r.origin
                        });
                        if !same {
                            items.push(ResolvedView {
                                service: Some(s.clone()),
                                resolved: r.into(),
                            });
                        }
                    }
                }
                items.splice(
                    0..0,
                    common.into_iter().map(|r| ResolvedView { service: None, resolved: r.into() }),
                );
            }
        }
        return Ok(Json(VariableList::Resolved(Page { items, next: None })));
    }
    // Variables are few (people type them): filter in memory, page by key.
    let wanted = |v: &VariableRecord| {
        filter.group.as_ref().is_none_or(|g| v.scope.group.as_ref() == Some(g))
            && filter.service.as_ref().is_none_or(|s| v.scope.service.as_ref() == Some(s))
    };
    let mut items: Vec<VariableRecord> = api
        .store
        .variables()?
        .into_iter()
        .filter(|v| wanted(v) && filter.after.as_ref().is_none_or(|a| v.key() > *a))
        .take(limit + 1)
        .collect();
    let next = (items.len() > limit).then(|| items[limit - 1].key());
    items.truncate(limit);
    Ok(Json(VariableList::Stored(Page { items: wire::all(items), next })))
}
