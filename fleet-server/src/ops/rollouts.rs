//! Rollouts: pre-flight plans, creation (wave 1 goes out with it), listing, and pause /
//! resume / abort / rollback through the driver.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleet_proto::{DeviceId, Inventory, UnixMillis};

use super::{blocking, Error, Fleet};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::keyfile;
use crate::records::{RolloutRecord, Target};
use crate::rollout::driver::{
    agent_version, busy_devices, carry_out, plan as make_plan, spec_of, Plan, PlanError,
    PlanInputs, RolloutCommand, RolloutRequest, TxObserver,
};
use crate::rollout::{Rollout, RolloutId};
use crate::store::{Store, Tx};

/// Plans inside a store change (`_tx`: the writer lock is held, so what is read cannot change
/// before creation writes), so creation checks against exactly what it writes.
fn plan_in(
    store: &Store,
    _tx: &Tx<'_>,
    request: &RolloutRequest,
    id: RolloutId,
    seed: u64,
    now: UnixMillis,
) -> Result<(Rollout, Plan), PlanError> {
    let spec = spec_of(request, id)?;
    let target = Target::parse(&request.target)
        .map_err(|reason| PlanError::Field { field: "target", reason })?;
    let release = store
        .release(spec.release.as_str())?
        .ok_or_else(|| PlanError::UnknownRelease { release: spec.release.to_string() })?;
    let devices = store.devices()?;
    let inventories: BTreeMap<DeviceId, Inventory> = devices
        .iter()
        .filter_map(|d| {
            store.inventory(&d.id).transpose().map(|inv| inv.map(|i| (d.id.clone(), i)))
        })
        .collect::<Result<_, _>>()?;
    let groups = store.groups()?;
    let busy = busy_devices(&store.rollouts()?);
    let mut releases = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.releases_page(after.as_deref(), 1000)?;
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

/// The request's seed, or a random one.
fn seed_of(request: &RolloutRequest) -> Result<u64, Error> {
    match request.seed {
        Some(seed) => Ok(seed),
        None => Ok(u64::from_be_bytes(keyfile::random::<8>().map_err(Error::internal)?)),
    }
}

/// What `request` would do now, without doing it.
pub async fn plan(
    store: &Arc<Store>,
    request: RolloutRequest,
    now: UnixMillis,
) -> Result<Plan, Error> {
    let seed = seed_of(&request)?;
    let store = store.clone();
    blocking(move || {
        // A read-only change: nothing is written, but the plan sees one consistent state.
        let (_, plan) =
            store.update(|tx| plan_in(&store, tx, &request, RolloutId(0), seed, now))?;
        Ok(plan)
    })
    .await
}

/// Creates the rollout `request` asks for and runs its first step, so wave 1 is recorded
/// with it; the desired states go out in the background (what the broker does not take, the
/// driver sends again).
pub async fn create(
    fleet: &Fleet,
    caller: &Caller,
    request: RolloutRequest,
    now: UnixMillis,
) -> Result<RolloutRecord, Error> {
    let seed = seed_of(&request)?;
    let (record, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || {
            Ok(fleet
                .store
                .update_durable(|tx| create_in(tx, &fleet, &caller, &request, seed, now))?)
        }
    })
    .await?;
    // Wave 1 is recorded; the answer need not wait for thousands of publishes to drain into the
    // broker. What the broker does not take is sent again by the driver.
    let (publisher, driver, rollout) = (fleet.publisher.clone(), fleet.driver.clone(), record.id());
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
    fleet.driver.wake();
    Ok(record)
}

fn create_in(
    tx: &mut Tx<'_>,
    fleet: &Fleet,
    caller: &Caller,
    request: &RolloutRequest,
    seed: u64,
    now: UnixMillis,
) -> Result<(RolloutRecord, Vec<crate::desired::Outgoing>), PlanError> {
    let id = RolloutId(tx.next_rollout_id()?);
    let (mut rollout, plan) = plan_in(&fleet.store, tx, request, id, seed, now)?;
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
    let release = rollout.spec().release.clone();
    let actions = rollout.step(now, &TxObserver::new(tx, now, &release));
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
    let agent = agent_version(&release);
    let outgoing = carry_out(tx, &fleet.pki, id, agent, &actions, &caller.name, now)
        .map_err(|e| PlanError::Field { field: "release", reason: e.to_string() })?;
    tx.put_rollout(&record);
    Ok((record, outgoing))
}

/// Every rollout, newest first.
pub fn list(store: &Store) -> Result<Vec<RolloutRecord>, Error> {
    let mut all = store.rollouts()?;
    all.reverse();
    Ok(all)
}

/// Rollout `id`.
pub fn show(store: &Store, id: u64) -> Result<RolloutRecord, Error> {
    store.rollout(id)?.ok_or_else(|| Error::NotFound {
        what: "rollout",
        id: id.to_string(),
        hint: "`fleetctl rollout ls` lists them".to_owned(),
    })
}

/// Pauses, resumes, aborts or rolls back rollout `id`.
pub async fn command(
    fleet: &Fleet,
    caller: &Caller,
    id: u64,
    command: RolloutCommand,
    reason: Option<String>,
) -> Result<RolloutRecord, Error> {
    Ok(fleet.driver.command(id, command, reason, &caller.name).await?)
}
