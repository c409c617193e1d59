//! Rollout routes: pre-flight plans, creation, progress, and pause / resume / abort / rollback.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleet_proto::{DeviceId, Inventory, UnixMillis};

use super::problem::{Body, OptionalBody};
use super::{Api, Problem};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::rollout::driver::{
    busy_devices, carry_out, plan as make_plan, spec_of, CommandError, Plan, PlanError, PlanInputs,
    RolloutCommand, RolloutRecord, RolloutRequest, Target, TxObserver,
};
use crate::rollout::RolloutId;
use crate::store::Tx;
use fleet_api::{CommandReason, RolloutView};

fn plan_problem(e: PlanError) -> Problem {
    match e {
        PlanError::Store(e) => Problem::from(e),
        PlanError::UnknownRelease { .. } | PlanError::UnknownGroup { .. } => {
            Problem::not_found(e.to_string())
        }
        PlanError::UnknownDevices { .. } => Problem::not_found(e.to_string()),
        PlanError::Busy { .. } | PlanError::Unsatisfiable { .. } => {
            Problem::conflict(e.to_string())
        }
        PlanError::NoDevices { .. } => Problem::conflict(e.to_string()),
        PlanError::Field { field, reason } => Problem::invalid(
            "the rollout was refused; nothing was sent",
            vec![super::FieldProblem { path: field.to_owned(), reason }],
        ),
        PlanError::Spec(e) => Problem::invalid(
            "the rollout was refused; nothing was sent",
            vec![super::FieldProblem { path: "rollout".into(), reason: e.to_string() }],
        ),
    }
}

/// Plans inside a store change (`_tx`: the writer lock is held, so what is read cannot change
/// before creation writes), so creation checks against exactly what it writes.
fn plan_in(
    api: &Api,
    _tx: &Tx<'_>,
    request: &RolloutRequest,
    id: RolloutId,
    seed: u64,
    now: UnixMillis,
) -> Result<(crate::rollout::Rollout, Plan), PlanError> {
    let spec = spec_of(request, id)?;
    let target = Target::parse(&request.target)
        .map_err(|reason| PlanError::Field { field: "target", reason })?;
    let release = api
        .store
        .release(spec.release.as_str())?
        .ok_or_else(|| PlanError::UnknownRelease { release: spec.release.to_string() })?;
    let devices = api.store.devices()?;
    let inventories: BTreeMap<DeviceId, Inventory> = devices
        .iter()
        .filter_map(|d| {
            api.store.inventory(&d.id).transpose().map(|inv| inv.map(|i| (d.id.clone(), i)))
        })
        .collect::<Result<_, _>>()?;
    let groups = api.store.groups()?;
    let busy = busy_devices(&api.store.rollouts()?);
    let mut releases = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = api.store.releases_page(after.as_deref(), 1000)?;
        releases.extend(page.items.iter().map(|r| r.id().to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let inputs = PlanInputs {
        devices: &devices,
        inventories: &inventories,
        groups: &groups,
        busy: &busy,
        releases: &releases,
    };
    make_plan(&spec, &target, &release, &inputs, request.exclude_unsatisfiable, seed, now)
}

fn seed_of(request: &RolloutRequest) -> Result<u64, Problem> {
    match request.seed {
        Some(seed) => Ok(seed),
        None => Ok(u64::from_be_bytes(crate::pki::random::<8>().map_err(Problem::internal)?)),
    }
}

pub(super) async fn plan(
    State(api): State<Api>,
    Body(request): Body<RolloutRequest>,
) -> Result<Json<fleet_api::Plan>, Problem> {
    let seed = seed_of(&request)?;
    let now = UnixMillis::now();
    // A read-only change: nothing is written, but the plan sees one consistent state.
    let (_, plan) = api
        .store
        .update(|tx| plan_in(&api, tx, &request, RolloutId(0), seed, now))
        .map_err(plan_problem)?;
    Ok(Json(plan.into()))
}

pub(super) async fn create(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<RolloutRequest>,
) -> Result<Response, Problem> {
    let seed = seed_of(&request)?;
    let now = UnixMillis::now();
    let (record, outgoing) = api
        .store
        .update_durable(|tx| {
            let id = RolloutId(tx.next_rollout_id()?);
            let (mut rollout, plan) = plan_in(&api, tx, &request, id, seed, now)?;
            if !plan.busy.is_empty() {
                return Err(PlanError::Busy { devices: plan.busy });
            }
            if !plan.unsatisfiable.is_empty() && !request.exclude_unsatisfiable {
                return Err(PlanError::Unsatisfiable {
                    release: plan.release.to_string(),
                    devices: plan.unsatisfiable,
                });
            }
            // The first step runs now, so wave 1 goes out with the answer.
            let actions = rollout.step(now, &TxObserver { tx, now });
            let record = RolloutRecord {
                rollout,
                target: plan.target.clone(),
                created_by: caller.name.clone(),
                excluded: if request.exclude_unsatisfiable {
                    plan.unsatisfiable.clone()
                } else {
                    Vec::new()
                },
            };
            let waves: Vec<String> = plan.waves.iter().map(|w| w.len().to_string()).collect();
            tx.audit(AuditEntry::new(
                now,
                &caller.name,
                "rollout.create",
                format!("rollout {id}"),
                format!(
                    "release {} to {} in waves of {} devices ({} pinned left out)",
                    plan.release,
                    plan.target,
                    waves.join("/"),
                    plan.pinned.len()
                ),
            ));
            let outgoing = carry_out(tx, &api.pki, id, &actions, &caller.name, now)
                .map_err(|e| PlanError::Field { field: "release", reason: e.to_string() })?;
            tx.put_rollout(&record);
            Ok((record, outgoing))
        })
        .map_err(plan_problem)?;
    // Wave 1 is recorded; the answer need not wait for thousands of publishes to drain into the
    // broker. What the broker does not take is sent again by the driver.
    let (publisher, driver, rollout) = (api.publisher.clone(), api.driver.clone(), record.id());
    tokio::spawn(async move {
        let unsent = publisher.send_all(outgoing, now, std::time::Duration::from_secs(10)).await;
        if !unsent.is_empty() {
            tracing::warn!(
                rollout,
                unsent = unsent.len(),
                "desired states wait for the broker; they are sent again"
            );
        }
        for device in unsent {
            driver.resend_later(device);
        }
    });
    api.driver.wake();
    Ok((StatusCode::CREATED, Json(RolloutView::from(&record))).into_response())
}

pub(super) async fn list(State(api): State<Api>) -> Result<Json<Vec<RolloutView>>, Problem> {
    let mut all: Vec<RolloutView> = api.store.rollouts()?.iter().map(RolloutView::from).collect();
    all.reverse();
    Ok(Json(all))
}

fn rollout_id(id: &str) -> Result<u64, Problem> {
    id.parse().map_err(|_| Problem::bad_request(format!("rollout id {id:?} is not a number")))
}

pub(super) async fn show(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, Problem> {
    let id = rollout_id(&id)?;
    let record = api.store.rollout(id)?.ok_or_else(|| {
        Problem::not_found(format!("no rollout {id} (`fleetctl rollout ls` lists them)"))
    })?;
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
        other => return Err(Problem::not_found(format!("no rollout command {other:?}"))),
    };
    let reason = body.and_then(|b| b.reason);
    let record =
        api.driver.command(id, command, reason, &caller.name).await.map_err(|e| match e {
            CommandError::NotFound(_) => Problem::not_found(e.to_string()),
            CommandError::State(e) => Problem::conflict(e.to_string()),
            CommandError::Desired(e) => Problem::internal(e),
        })?;
    Ok(Json(RolloutView::from(&record)))
}
