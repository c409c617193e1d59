//! Group and release routes.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::{DeviceId, ReleaseId, ReleaseSpec, UnixMillis};
use serde::Deserialize;

use super::problem::{Body, Query};
use super::variables::{internal, refusal, send};
use super::wire;
use super::{Api, FieldProblem, Problem};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::desired::{self, Moved, Outgoing, Releases};
use crate::devices::DeviceRecord;
use crate::groups::{check_group_name, Group, Selector};
use crate::releases::{ImageInfo, ReleaseRecord};
use crate::store::Tx;
use fleet_api::{
    GroupChange, GroupRequest, GroupSummary, GroupView, Page, Release, ReleaseRequest,
};

pub(super) async fn list_groups(
    State(api): State<Api>,
) -> Result<Json<Vec<GroupSummary>>, Problem> {
    let devices = api.store.devices()?;
    let groups = api
        .store
        .groups()?
        .into_iter()
        .map(|group| GroupSummary {
            devices: devices.iter().filter(|d| group.selector.matches(&d.labels)).count(),
            group: group.into(),
        })
        .collect();
    Ok(Json(groups))
}

pub(super) async fn put_group(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<GroupRequest>,
) -> Result<Response, Problem> {
    let mut errors = Vec::new();
    if let Err(reason) = check_group_name(&request.name) {
        errors.push(FieldProblem { path: "name".into(), reason });
    }
    let selector = Selector::parse(&request.selector).unwrap_or_else(|reason| {
        errors.push(FieldProblem { path: "selector".into(), reason });
        Selector::default()
    });
    if selector.0.is_empty() && errors.is_empty() {
        errors.push(FieldProblem {
            path: "selector".into(),
            reason: "an empty selector would match every device; give at least one label, e.g. site=depot".into(),
        });
    }
    if !errors.is_empty() {
        return Err(Problem::invalid("the group was refused; nothing was changed", errors));
    }
    let now = UnixMillis::now();
    let (change, created, outgoing) = api.store.update_durable(|tx| {
        let previous = tx.group(&request.name)?;
        let before = Releases::snapshot(&*tx).map_err(internal)?;
        let group = Group {
            name: request.name.clone(),
            selector: selector.clone(),
            description: request.description.clone(),
            created_at: previous.as_ref().map_or(now, |p| p.created_at),
            created_by: previous
                .as_ref()
                .map_or_else(|| caller.name.clone(), |p| p.created_by.clone()),
        };
        tx.put_group(&group);
        let old = previous.as_ref().map(|p| &p.selector);
        let (retargeted, outgoing) = if old == Some(&selector) {
            (Vec::new(), Vec::new())
        } else {
            let verb = match old {
                Some(old) => format!("changing the selector of group {} from {old} to {selector}", group.name),
                None => format!("creating group {} ({selector})", group.name),
            };
            let moved = members(tx, old, Some(&selector))?;
            retarget_members(tx, &api, &verb, before, moved, now, "set the values those devices need first (for the device, or for the group once it exists), or pick a selector that leaves them out")?
        };
        let verb = if previous.is_some() { "group.update" } else { "group.create" };
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            verb,
            group.name.clone(),
            format!("selector {selector}; {} device(s) re-targeted", retargeted.len()),
        ));
        Ok::<_, Problem>((
            GroupChange { group: group.into(), retargeted },
            previous.is_none(),
            outgoing,
        ))
    })?;
    send(&api, outgoing, now);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(change)).into_response())
}

/// Every device matched by `old` or `new`: those whose groups a selector change can change.
fn members(
    tx: &Tx<'_>,
    old: Option<&Selector>,
    new: Option<&Selector>,
) -> Result<Vec<Moved>, Problem> {
    let matches = |s: Option<&Selector>, d: &DeviceRecord| s.is_some_and(|s| s.matches(&d.labels));
    Ok(tx
        .devices()?
        .into_iter()
        .filter(|d| matches(old, d) || matches(new, d))
        .map(Moved::same)
        .collect())
}

/// Re-targets the devices of `moved` whose release renders differently (variables) or mounts
/// other secret values now that their groups changed, as [`desired::retarget_moved`] decides
/// against `before`; refuses (422, the caller's change is then not stored) if one of them
/// could be decided before and no longer can, saying `fix`. Returns the re-targeted devices
/// and what to send once the change is durable.
pub(super) fn retarget_members(
    tx: &mut Tx<'_>,
    api: &Api,
    verb: &str,
    before: Releases,
    moved: Vec<Moved>,
    now: UnixMillis,
    fix: &str,
) -> Result<(Vec<DeviceId>, Vec<Outgoing>), Problem> {
    let changed = desired::retarget_moved(tx, &api.pki, before, moved, now).map_err(internal)?;
    if !changed.failures.is_empty() {
        return Err(refusal(verb, &changed.failures, fix));
    }
    Ok((changed.outgoing.iter().map(|o| o.device.clone()).collect(), changed.outgoing))
}

fn no_group(name: &str) -> Problem {
    Problem::not_found(format!("no group {name} (`fleetctl group ls` lists them)"))
}

pub(super) async fn show_group(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<GroupView>, Problem> {
    let group = api.store.group(&name)?.ok_or_else(|| no_group(&name))?;
    let devices = api
        .store
        .devices()?
        .into_iter()
        .filter(|d| group.selector.matches(&d.labels))
        .map(Into::into)
        .collect();
    Ok(Json(GroupView { group: group.into(), devices }))
}

pub(super) async fn remove_group(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<GroupChange>, Problem> {
    let now = UnixMillis::now();
    let (change, outgoing) = api.store.update_durable(|tx| {
        let group = tx.group(&name)?.ok_or_else(|| no_group(&name))?;
        let before = Releases::snapshot(&*tx).map_err(internal)?;
        tx.remove_group(&name);
        let moved = members(tx, Some(&group.selector), None)?;
        let verb = format!("removing group {name}");
        let (retargeted, outgoing) = retarget_members(tx, &api, &verb, before, moved, now, "set the values its devices need at another scope first (the fleet, another group, or each device)")?;
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "group.remove",
            name.clone(),
            format!("selector was {}; {} device(s) re-targeted", group.selector, retargeted.len()),
        ));
        Ok::<_, Problem>((GroupChange { group: group.into(), retargeted }, outgoing))
    })?;
    send(&api, outgoing, now);
    Ok(Json(change))
}

/// `?app=` of the release list, with paging.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
// An unknown parameter (`?grup=`) is refused, not ignored into a wider answer.
#[serde(deny_unknown_fields)]
pub struct ReleaseFilter {
    /// Only this application's releases.
    pub app: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next` of the page before (empty: the first page).
    pub after: Option<String>,
}

pub(super) async fn list_releases(
    State(api): State<Api>,
    Query(filter): Query<ReleaseFilter>,
) -> Result<Json<Page<Release>>, Problem> {
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    match &filter.app {
        // Ids start with `app@`, so one app's releases are a contiguous range.
        Some(app) => {
            let after = filter.after.clone().unwrap_or_else(|| format!("{app}@"));
            let mut page = api.store.releases_page(Some(&after), limit)?;
            let prefix = format!("{app}@");
            let before = page.items.len();
            page.items.retain(|r| r.id().as_str().starts_with(&prefix));
            if page.items.len() < before {
                page.next = None;
            }
            Ok(Json(wire::page(page)))
        }
        None => Ok(Json(wire::page(api.store.releases_page(filter.after.as_deref(), limit)?))),
    }
}

pub(super) async fn show_release(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Release>, Problem> {
    api.store.release(&id)?.map(|r| Json(r.into())).ok_or_else(|| {
        Problem::not_found(format!("no release {id} (`fleetctl release ls` lists them)"))
    })
}

pub(super) async fn create_release(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<ReleaseRequest>,
) -> Result<Response, Problem> {
    let id = ReleaseId::new(format!("{}@{}", request.app, request.version)).map_err(|e| {
        Problem::invalid(
            "the release was refused",
            vec![FieldProblem { path: "app, version".into(), reason: e.to_string() }],
        )
    })?;
    let (spec, images) = match (&request.compose, &request.spec) {
        (Some(compose), None) => from_compose(&api, &request.app, &request.version, compose).await?,
        (None, Some(spec)) => {
            if spec.id != id || spec.app != request.app || spec.version != request.version {
                return Err(Problem::invalid(
                    "the release was refused",
                    vec![FieldProblem {
                        path: "spec.id".into(),
                        reason: format!("the spec says {}, the request {id}", spec.id),
                    }],
                ));
            }
            (spec.clone(), Vec::new())
        }
        _ => {
            return Err(Problem::bad_request(
                "give the release as either `compose` (the Compose file's text) or `spec` (canonical JSON)",
            ))
        }
    };
    if let Err(problems) = spec.validate() {
        let errors =
            problems.into_iter().map(|p| FieldProblem { path: p.path, reason: p.reason }).collect();
        return Err(Problem::invalid(format!("release {id} is invalid"), errors));
    }
    let now = UnixMillis::now();
    let record = api.store.update_durable(|tx| {
        if tx.release(id.as_str())?.is_some() {
            return Err(Problem::conflict(format!(
                "release {id} already exists; releases are immutable: give this one a new version"
            )));
        }
        // Every secret a service mounts must have a value somewhere, or no device could run
        // the release.
        let stored: std::collections::BTreeSet<String> =
            tx.secrets()?.into_iter().map(|r| r.name).collect();
        let mut unknown = Vec::new();
        for service in &spec.services {
            for (i, m) in service.secrets.iter().enumerate() {
                if !stored.contains(&m.source) {
                    unknown.push(FieldProblem {
                        path: format!("services.{}.secrets[{i}]", service.name),
                        reason: format!(
                            "no secret {}; set it with `fleetctl secret set {} < file`",
                            m.source, m.source
                        ),
                    });
                }
            }
        }
        if !unknown.is_empty() {
            return Err(Problem::invalid(
                format!("release {id} mounts secrets that have no value at any scope; nothing was stored"),
                unknown,
            ));
        }
        let record = ReleaseRecord::new(
            spec.clone(),
            api.pki.signing_key(),
            request.compose.clone(),
            images.clone(),
            now,
            &caller.name,
        );
        tx.put_release(&record);
        let services: Vec<String> =
            spec.services.iter().map(|s| format!("{} {}", s.name, s.image)).collect();
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "release.create",
            id.to_string(),
            services.join(", "),
        ));
        Ok::<_, Problem>(record)
    })?;
    Ok((StatusCode::CREATED, Json(Release::from(record))).into_response())
}

/// Converts a Compose file, resolving every image through the registry (concurrently).
async fn from_compose(
    api: &Api,
    app: &str,
    version: &str,
    compose: &str,
) -> Result<(ReleaseSpec, Vec<ImageInfo>), Problem> {
    let to_problems = |problems: Vec<crate::compose::ComposeProblem>| {
        problems.into_iter().map(|p| FieldProblem { path: p.path, reason: p.reason }).collect()
    };
    if compose.len() > crate::compose::MAX_COMPOSE_BYTES {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the Compose file is {} bytes; at most {} are accepted",
                compose.len(),
                crate::compose::MAX_COMPOSE_BYTES
            ),
        ));
    }
    // The stored release is the fleet-wide render; devices get theirs from their variables
    // (crate::variables), so a reference must resolve with the fleet's values alone.
    let fleet_vars = crate::variables::VarIndex::new(api.store.variables()?, &[]).fleet_common();
    let parsed = crate::compose::Compose::parse(compose.as_bytes(), &fleet_vars).map_err(|p| {
        let hinted = p
            .into_iter()
            .map(|mut p| {
                if let Some(name) = unset_variable(&p.reason) {
                    p.reason = format!("{}, or set a fleet-wide value first: `fleetctl var set {name} VALUE` (group and device values then override it per device)", p.reason);
                }
                p
            })
            .collect();
        Problem::invalid("the Compose file was refused; nothing was stored", to_problems(hinted))
    })?;
    let uses = parsed.images();
    let mut lookups = tokio::task::JoinSet::new();
    let distinct: std::collections::BTreeSet<String> =
        uses.iter().map(|u| u.reference.clone()).collect();
    for reference in distinct {
        let resolver = api.resolver.clone();
        lookups.spawn_blocking(move || {
            let found = resolver.resolve(&reference);
            (reference, found)
        });
    }
    let mut resolved = BTreeMap::new();
    let mut failed = BTreeMap::new();
    while let Some(joined) = lookups.join_next().await {
        let (reference, found) = joined.map_err(Problem::internal)?;
        match found {
            Ok(r) => {
                resolved.insert(reference, r);
            }
            Err(why) => {
                failed.insert(reference, why);
            }
        }
    }
    if !failed.is_empty() {
        let errors = uses
            .iter()
            .filter_map(|u| {
                failed
                    .get(&u.reference)
                    .map(|why| FieldProblem { path: u.path.clone(), reason: why.clone() })
            })
            .collect();
        return Err(Problem::invalid(
            "images of the Compose file do not resolve in their registries; nothing was stored",
            errors,
        ));
    }
    let digests = resolved.iter().map(|(k, v)| (k.clone(), v.image.clone())).collect();
    let spec = parsed.into_release(app, version, &digests).map_err(|p| {
        Problem::invalid("the Compose file was refused; nothing was stored", to_problems(p))
    })?;
    let images = uses
        .into_iter()
        .filter_map(|u| {
            resolved.get(&u.reference).map(|r| ImageInfo {
                service: u.service.to_string(),
                reference: u.reference.clone(),
                resolved: r.clone(),
            })
        })
        .collect();
    Ok((spec, images))
}

/// The name in an interpolation error about an unset variable without a default.
fn unset_variable(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix("variable ")?;
    let (name, tail) = rest.split_once(' ')?;
    tail.starts_with("is not set; give a default").then_some(name)
}
