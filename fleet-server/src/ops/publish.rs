//! After a change: which devices' desired state it moves, refusing the change when one of them
//! could no longer be decided, and sending the new states once the change is durable.

use fleet_api::FieldProblem;
use fleet_proto::{DeviceId, UnixMillis};

use super::{Error, Fleet};
use crate::desired::{self, DesiredError, Moved, Outgoing, Releases};
use crate::devices::DeviceRecord;
use crate::pki::Pki;
use crate::store::Tx;
use crate::variables::Scope;

/// Devices named in a refusal; the count says how many more.
const NAMED_DEVICES: usize = 5;

/// A store failure as such, anything else while deciding as the server's own failure.
pub fn internal(e: DesiredError) -> Error {
    match e {
        DesiredError::Store(e) => Error::Store(e),
        e => Error::internal(e),
    }
}

/// The refusal of a change that would make the release of the devices in `failures`
/// undecidable: names the first few devices, lists each one's problems with its Compose path,
/// and says the way out (`fix`).
pub fn refusal(verb: &str, failures: &[DesiredError], fix: &str) -> Error {
    let (devices, problems) = refused_devices(failures);
    Error::Invalid {
        summary: format!(
            "{verb} would make the release of {} device(s) invalid ({}); nothing was changed: {fix}",
            devices.len(),
            named(&devices)
        ),
        problems,
    }
}

/// Applies `write` (a change to variables or secrets of `scope`) and returns what the fleet's
/// releases rendered before it and the devices the scope covers: the only ones it can move.
pub fn write_scoped(
    tx: &mut Tx<'_>,
    scope: &Scope,
    write: impl FnOnce(&mut Tx<'_>),
) -> Result<(Releases, Vec<DeviceRecord>), Error> {
    let groups = tx.groups()?;
    let before = Releases::snapshot(&*tx).map_err(internal)?;
    write(tx);
    let covered = tx
        .devices()?
        .into_iter()
        .filter(|d| scope.covers(d.id.as_str(), &d.labels, &groups))
        .collect();
    Ok((before, covered))
}

/// The devices of `failures` and, for the first few, their problems.
pub fn refused_devices(failures: &[DesiredError]) -> (Vec<String>, Vec<FieldProblem>) {
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
pub fn named(devices: &[String]) -> String {
    let more = devices.len().saturating_sub(NAMED_DEVICES);
    let named = devices.iter().take(NAMED_DEVICES).cloned().collect::<Vec<_>>().join(", ");
    if more > 0 {
        format!("{named} and {more} more")
    } else {
        named
    }
}

/// Re-targets the devices of `moved` whose release renders differently (variables) or mounts
/// other secret values now that their groups changed, as [`desired::retarget_moved`] decides
/// against `before`; refuses (the caller's change is then not stored) if one of them could be
/// decided before and no longer can, saying `fix`. Returns the re-targeted devices and what to
/// send once the change is durable.
pub fn retarget_members(
    tx: &mut Tx<'_>,
    pki: &Pki,
    verb: &str,
    before: Releases,
    moved: Vec<Moved>,
    now: UnixMillis,
    fix: &str,
) -> Result<(Vec<DeviceId>, Vec<Outgoing>), Error> {
    let changed = desired::retarget_moved(tx, pki, before, moved, now).map_err(internal)?;
    if !changed.failures.is_empty() {
        return Err(refusal(verb, &changed.failures, fix));
    }
    Ok((changed.outgoing.iter().map(|o| o.device.clone()).collect(), changed.outgoing))
}

/// Publishes what a change decided, now that it is on disk; what the broker cannot take now
/// the rollout driver sends again.
pub fn send(fleet: &Fleet, outgoing: Vec<Outgoing>, now: UnixMillis) {
    for out in outgoing {
        let device = out.device.clone();
        if let Err(e) = fleet.publisher.send_now(out, now) {
            tracing::warn!(%device, error = %e, "desired state queued for resending");
            fleet.driver.resend_later(device);
        }
    }
}
