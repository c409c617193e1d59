//! Rollout routes: pre-flight plans, creation, progress, and pause / resume / abort / rollback.
//! [`crate::ops::rollouts`] does the work; these map HTTP to it and back.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::UnixMillis;

use super::problem::{Body, OptionalBody};
use super::{Api, Problem};
use crate::auth::Caller;
use crate::ops;
use crate::rollout::driver::{RolloutCommand, RolloutRequest};
use fleet_api::{CommandReason, RolloutView};

pub(super) async fn plan(
    State(api): State<Api>,
    Body(request): Body<RolloutRequest>,
) -> Result<Json<fleet_api::Plan>, Problem> {
    Ok(Json(ops::rollouts::plan(&api.store, request, UnixMillis::now()).await?.into()))
}

pub(super) async fn create(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<RolloutRequest>,
) -> Result<Response, Problem> {
    let record = ops::rollouts::create(&api.fleet(), &caller, request, UnixMillis::now()).await?;
    Ok((StatusCode::CREATED, Json(RolloutView::from(&record))).into_response())
}

pub(super) async fn list(State(api): State<Api>) -> Result<Json<Vec<RolloutView>>, Problem> {
    Ok(Json(ops::rollouts::list(&api.store)?.iter().map(RolloutView::from).collect()))
}

fn rollout_id(id: &str) -> Result<u64, Problem> {
    id.parse().map_err(|_| Problem::bad_request(format!("rollout id {id:?} is not a number")))
}

pub(super) async fn show(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, Problem> {
    let record = ops::rollouts::show(&api.store, rollout_id(&id)?)?;
    Ok(Json(RolloutView::from(&record)))
}

pub(super) async fn command(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path((id, command)): Path<(String, String)>,
    OptionalBody(body): OptionalBody<CommandReason>,
) -> Result<Json<RolloutView>, Problem> {
    let id = rollout_id(&id)?;
    let command = match command.as_str() {
        "pause" => RolloutCommand::Pause,
        "resume" => RolloutCommand::Resume,
        "abort" => RolloutCommand::Abort,
        "rollback" => RolloutCommand::Rollback,
        "promote" => RolloutCommand::Promote,
        "retry" => RolloutCommand::RetryFailed,
        other => return Err(Problem::not_found(format!("no rollout command {other:?}"))),
    };
    let reason = body.and_then(|b| b.reason);
    let record = ops::rollouts::command(&api.fleet(), &caller, id, command, reason).await?;
    Ok(Json(RolloutView::from(&record)))
}
