//! Group and release routes. [`crate::ops::groups`] and [`crate::ops::releases`] do the
//! work; these map HTTP to them and back.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::UnixMillis;

use super::problem::{Body, Query};
use super::wire;
use super::{Api, Problem};
use crate::auth::Caller;
use crate::ops;
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
pub type ReleaseFilter = ops::releases::ReleaseFilter;

pub(super) async fn list_releases(
    State(api): State<Api>,
    Query(filter): Query<ReleaseFilter>,
) -> Result<Json<Page<Release>>, Problem> {
    Ok(Json(wire::page(ops::releases::list(&api.store, &filter)?)))
}

pub(super) async fn show_release(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Release>, Problem> {
    Ok(Json(ops::releases::show(&api.store, &id)?.into()))
}

pub(super) async fn create_agent_release(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<fleet_api::AgentReleaseRequest>,
) -> Result<Response, Problem> {
    let fleet = api.fleet();
    let record =
        ops::agent_releases::create(&fleet, &api.agent_pusher, &caller, request, UnixMillis::now())
            .await?;
    Ok((StatusCode::CREATED, Json(Release::from(record))).into_response())
}

pub(super) async fn create_release(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<ReleaseRequest>,
) -> Result<Response, Problem> {
    let record =
        ops::releases::create(&api.fleet(), &api.resolver, &caller, request, UnixMillis::now())
            .await?;
    Ok((StatusCode::CREATED, Json(Release::from(record))).into_response())
}
