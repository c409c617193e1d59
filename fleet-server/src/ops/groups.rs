//! Groups: named label selectors. Creating, changing or removing one changes which devices get
//! the group's variables and secrets, so the devices it moves are re-targeted in the same
//! change, or the change is refused when one of them could no longer be decided.

use fleet_api::{FieldProblem, GroupRequest};
use fleet_proto::{DeviceId, UnixMillis};

use super::publish::{internal, retarget_members, send};
use super::{blocking, Error, Fleet};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::desired::{Moved, Releases};
use crate::devices::DeviceRecord;
use crate::groups::{check_group_name, Group, Selector};
use crate::store::{Store, Tx};

/// What a change did to a group.
#[derive(Debug, Clone)]
pub struct GroupChanged {
    /// The group as it is now (as it was, for a removal).
    pub group: Group,
    /// Devices whose desired state changed with it.
    pub retargeted: Vec<DeviceId>,
    /// Whether the group is new.
    pub created: bool,
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        what: "group",
        id: name.to_owned(),
        hint: "`fleetctl group ls` lists them".to_owned(),
    }
}

/// Every group with how many devices it matches now.
pub fn list(store: &Store) -> Result<Vec<(Group, usize)>, Error> {
    let devices = store.device_summaries()?;
    Ok(store
        .groups()?
        .into_iter()
        .map(|group| {
            let n = devices.iter().filter(|d| group.selector.matches(&d.labels)).count();
            (group, n)
        })
        .collect())
}

/// Group `name` and the devices it matches.
pub fn show(store: &Store, name: &str) -> Result<(Group, Vec<DeviceRecord>), Error> {
    let group = store.group(name)?.ok_or_else(|| not_found(name))?;
    let devices =
        store.devices()?.into_iter().filter(|d| group.selector.matches(&d.labels)).collect();
    Ok((group, devices))
}

/// Creates group `request.name`, or changes its selector and description.
pub async fn put(
    fleet: &Fleet,
    caller: &Caller,
    request: GroupRequest,
    now: UnixMillis,
) -> Result<GroupChanged, Error> {
    let selector = check(&request)?;
    let (changed, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || {
            fleet.store.update_durable(|tx| put_in(tx, &fleet, &caller, &request, selector, now))
        }
    })
    .await?;
    send(fleet, outgoing, now);
    Ok(changed)
}

/// The request's selector, or every problem of the request.
fn check(request: &GroupRequest) -> Result<Selector, Error> {
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
        return Err(Error::Invalid {
            summary: "the group was refused; nothing was changed".to_owned(),
            problems: errors,
        });
    }
    Ok(selector)
}

fn put_in(
    tx: &mut Tx<'_>,
    fleet: &Fleet,
    caller: &Caller,
    request: &GroupRequest,
    selector: Selector,
    now: UnixMillis,
) -> Result<(GroupChanged, Vec<crate::desired::Outgoing>), Error> {
    let previous = tx.group(&request.name)?;
    let before = Releases::snapshot(&*tx).map_err(internal)?;
    let group = Group {
        name: request.name.clone(),
        selector: selector.clone(),
        description: request.description.clone(),
        created_at: previous.as_ref().map_or(now, |p| p.created_at),
        created_by: previous.as_ref().map_or_else(|| caller.name.clone(), |p| p.created_by.clone()),
    };
    tx.put_group(&group);
    let old = previous.as_ref().map(|p| &p.selector);
    let (retargeted, outgoing) = if old == Some(&selector) {
        (Vec::new(), Vec::new())
    } else {
        let verb = match old {
            Some(old) => {
                format!("changing the selector of group {} from {old} to {selector}", group.name)
            }
            None => format!("creating group {} ({selector})", group.name),
        };
        let moved = members(tx, old, Some(&selector))?;
        retarget_members(tx, &fleet.pki, &verb, before, moved, now, "set the values those devices need first (for the device, or for the group once it exists), or pick a selector that leaves them out")?
    };
    let verb = if previous.is_some() { "group.update" } else { "group.create" };
    tx.audit(AuditEntry::new(
        now,
        &caller.name,
        verb,
        group.name.clone(),
        format!("selector {selector}; {} device(s) re-targeted", retargeted.len()),
    ));
    Ok((GroupChanged { group, retargeted, created: previous.is_none() }, outgoing))
}

/// Removes group `name`.
pub async fn remove(
    fleet: &Fleet,
    caller: &Caller,
    name: String,
    now: UnixMillis,
) -> Result<GroupChanged, Error> {
    let (changed, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || fleet.store.update_durable(|tx| remove_in(tx, &fleet, &caller, &name, now))
    })
    .await?;
    send(fleet, outgoing, now);
    Ok(changed)
}

fn remove_in(
    tx: &mut Tx<'_>,
    fleet: &Fleet,
    caller: &Caller,
    name: &str,
    now: UnixMillis,
) -> Result<(GroupChanged, Vec<crate::desired::Outgoing>), Error> {
    let group = tx.group(name)?.ok_or_else(|| not_found(name))?;
    let before = Releases::snapshot(&*tx).map_err(internal)?;
    tx.remove_group(name);
    let moved = members(tx, Some(&group.selector), None)?;
    let verb = format!("removing group {name}");
    let (retargeted, outgoing) = retarget_members(tx, &fleet.pki, &verb, before, moved, now, "set the values its devices need at another scope first (the fleet, another group, or each device)")?;
    tx.audit(AuditEntry::new(
        now,
        &caller.name,
        "group.remove",
        name.to_owned(),
        format!("selector was {}; {} device(s) re-targeted", group.selector, retargeted.len()),
    ));
    Ok((GroupChanged { group, retargeted, created: false }, outgoing))
}

/// Every device matched by `old` or `new`: those whose groups a selector change can change.
fn members(
    tx: &Tx<'_>,
    old: Option<&Selector>,
    new: Option<&Selector>,
) -> Result<Vec<Moved>, Error> {
    let matches = |s: Option<&Selector>, d: &DeviceRecord| s.is_some_and(|s| s.matches(&d.labels));
    Ok(tx
        .devices()?
        .into_iter()
        .filter(|d| matches(old, d) || matches(new, d))
        .map(Moved::same)
        .collect())
}
