//! Group and release routes.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::{ReleaseId, ReleaseSpec, UnixMillis};
use serde::Deserialize;

use super::problem::{Body, Query};
use super::wire;
use super::{Api, FieldProblem, Problem};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::ops;
use crate::releases::{ImageInfo, ReleaseRecord};
use fleet_api::{
    GroupChange, GroupRequest, GroupSummary, GroupView, Page, Release, ReleaseRequest,
};

pub(super) async fn list_groups(
    State(api): State<Api>,
) -> Result<Json<Vec<GroupSummary>>, Problem> {
    let groups = ops::groups::list(&api.store)?
        .into_iter()
        .map(|(group, devices)| GroupSummary { devices, group: group.into() })
        .collect();
    Ok(Json(groups))
}

pub(super) async fn put_group(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<GroupRequest>,
) -> Result<Response, Problem> {
    let changed = ops::groups::put(&api.fleet(), &caller, request, UnixMillis::now()).await?;
    let status = if changed.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(group_change(changed))).into_response())
}

fn group_change(changed: ops::groups::GroupChanged) -> GroupChange {
    GroupChange { group: changed.group.into(), retargeted: changed.retargeted }
}

pub(super) async fn show_group(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<GroupView>, Problem> {
    let (group, devices) = ops::groups::show(&api.store, &name)?;
    Ok(Json(GroupView { group: group.into(), devices: wire::all(devices) }))
}

pub(super) async fn remove_group(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<GroupChange>, Problem> {
    let changed = ops::groups::remove(&api.fleet(), &caller, name, UnixMillis::now()).await?;
    Ok(Json(group_change(changed)))
}

/// `?app=` of the release list, with paging.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReleaseFilter {
    /// Only this application's releases.
    pub app: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
    /// Cursor.
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
