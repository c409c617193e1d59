//! Devices: enrollment (a certificate for a key the device proved it holds), revocation (the
//! device's certificates join the revocation list), labels and notes, commands, the release assigned to one device, and
//! pins that hold it on one.

use std::time::Duration;

use fleet_api::{CommandRequest, DeviceChange, EnrollRequest, FieldProblem, PinRequest};
use fleet_proto::{
    topic, Command, CommandResult, DeviceId, Message, ReleaseId, ReleaseSpec, TopicKind, UnixMillis,
};
use rumqttc::{AsyncClient, QoS};

use super::{blocking, publish, Error, Fleet};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::commands::Waiters;
use crate::desired::{self, Moved, Outgoing, Releases};
use crate::devices::{CertificateInfo, DeviceRecord, PinRecord};
use crate::groups;
use crate::keyfile;
use crate::pki::{EnrollKey, Pki, Revoked, DEFAULT_DEVICE_VALIDITY_DAYS, SERVER_IDENTITY};
use crate::preflight;
use crate::releases::ReleaseRecord;
use crate::store::Store;

/// A device just enrolled: its record and its certificate.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The new record.
    pub record: DeviceRecord,
    /// Its client certificate (PEM).
    pub certificate_pem: String,
}

/// Enrolls device `id` with the key `request` proves, issuing its certificate (on the
/// blocking pool: key and certificate work is CPU-bound). A revoked device may enroll again
/// and keeps the history of its revoked certificates.
pub async fn enroll(
    fleet: &Fleet,
    caller: &Caller,
    id: DeviceId,
    request: EnrollRequest,
    now: UnixMillis,
) -> Result<Enrolled, Error> {
    if crate::pki::is_server_identity(id.as_str()) {
        return Err(Error::BadRequest(format!(
            "device id: `{id}` is reserved: `{SERVER_IDENTITY}` and `{SERVER_IDENTITY}-*` are the servers' own broker identities; pick another id"
        )));
    }
    for (k, v) in &request.labels {
        if let Err(why) = groups::check_label_key(k).and_then(|()| groups::check_label_value(v)) {
            return Err(Error::BadRequest(format!("label {k}: {why}")));
        }
    }
    let key = EnrollKey::verify(&id, &request.public_key, &request.proof)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let max_days = fleet_api::enroll::MAX_DEVICE_VALIDITY_DAYS;
    if request.valid_days.is_some_and(|d| d == 0 || d > max_days) {
        return Err(Error::field(
            "the enrollment was refused; nothing was issued",
            "valid_days",
            format!("1 to {max_days} days (the fleet CA must outlive the certificate)"),
        ));
    }
    let (fleet, caller) = (fleet.clone(), caller.clone());
    let enrolled = blocking(move || {
        fleet.store.update(|tx| {
            let previous = tx.device(&id)?;
            if previous.as_ref().is_some_and(|d| d.enrolled_at.is_some() && d.revoked_at.is_none()) {
                return Err(Error::conflict(format!(
                    "device {id} is already enrolled; revoke it first (`fleetctl device revoke {id}`) to issue a new bundle"
                )));
            }
            let issued = fleet
                .pki
                .issue_device(&id, &key, request.valid_days.unwrap_or(DEFAULT_DEVICE_VALIDITY_DAYS))
                .map_err(Error::internal)?;
            let certificate =
                CertificateInfo { serial: issued.serial.clone(), not_after: issued.not_after };
            let mut record = DeviceRecord::enrolled(id.clone(), request.labels.clone(), certificate, now);
            // Its sealing keys are taken only with proofs by this key.
            record.device_key = Some(key.to_hex());
            // A re-enrolled device keeps the history of its revoked certificates.
            if let Some(previous) = previous {
                record.revoked_certificates = previous.revoked_certificates;
            }
            tx.put_device(&record);
            tx.audit(AuditEntry::new(
                now,
                &caller.name,
                "device.enroll",
                id.to_string(),
                format!("certificate serial {}", issued.serial),
            ));
            Ok(Enrolled { record, certificate_pem: issued.cert_pem })
        })
    })
    .await?;
    tracing::info!(device = %enrolled.record.id, "device enrolled");
    Ok(enrolled)
}

/// Revokes device `id` (revoking a revoked device changes nothing) and, when it changed,
/// rewrites the revocation list and calls `crl_changed`.
pub async fn revoke(
    fleet: &Fleet,
    crl_changed: &(dyn Fn() + Send + Sync),
    caller: &Caller,
    id: DeviceId,
    now: UnixMillis,
) -> Result<DeviceRecord, Error> {
    let (record, changed) = blocking({
        let (fleet, caller, id) = (fleet.clone(), caller.clone(), id.clone());
        move || {
            let changed = fleet.store.update_durable(|tx| {
                let record =
                    tx.device(&id)?.ok_or_else(|| Error::UnknownDevice { id: id.clone() })?;
                if record.revoked_at.is_some() {
                    return Ok::<_, Error>((record, false));
                }
                let record = record.revoke(now);
                tx.put_device(&record);
                tx.audit(AuditEntry::new(now, &caller.name, "device.revoke", id.to_string(), ""));
                Ok((record, true))
            })?;
            if changed.1 {
                write_crl(&fleet.store, &fleet.pki).map_err(Error::internal)?;
            }
            Ok(changed)
        }
    })
    .await?;
    if changed {
        crl_changed();
        tracing::warn!(device = %id, "device revoked; its messages are dropped and the revocation list is updated");
    }
    Ok(record)
}

/// An enrolled, unrevoked device, or why not.
pub fn active(record: Option<DeviceRecord>, id: &DeviceId) -> Result<DeviceRecord, Error> {
    match record {
        Some(d) if d.refusal().is_none() => Ok(d),
        Some(d) => {
            Err(Error::conflict(format!("device {id}: {}", d.refusal().unwrap_or("not active"))))
        }
        None => Err(Error::UnknownDevice { id: id.clone() }),
    }
}

/// Publishes a desired state decided (and stored) by this operation. If the broker cannot
/// take it now, the rollout driver sends it again on its next tick: the change is recorded
/// either way, so the operation succeeded.
fn send_now(fleet: &Fleet, out: Outgoing, now: UnixMillis) {
    let device = out.device.clone();
    if let Err(e) = fleet.publisher.send_now(out, now) {
        tracing::warn!(%device, error = %e, "desired state queued for resending");
        fleet.driver.resend_later(device);
    }
}

/// Assigns `release` to device `id` (`None`: no release), storing a release given as JSON
/// first; returns the device as it is now.
pub async fn assign(
    fleet: &Fleet,
    caller: &Caller,
    id: DeviceId,
    release: Option<ReleaseSpec>,
    now: UnixMillis,
) -> Result<DeviceRecord, Error> {
    if let Some(release) = &release {
        if let Err(problems) = release.validate() {
            let errors = problems
                .iter()
                .map(|p| FieldProblem { path: p.path.clone(), reason: p.reason.clone() })
                .collect();
            return Err(Error::Invalid {
                summary: format!("release {} is invalid", release.id),
                problems: errors,
            });
        }
    }
    let (record, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || fleet.store.update_durable(|tx| {
            let mut record = active(tx.device(&id)?, &id)?;
            if let Some(release) = &release {
                if crate::releases::is_agent_release(&release.id) {
                    return Err(Error::BadRequest(format!(
                        "{} is an agent release: agents move through `fleetctl rollout create {}` or `fleetctl device pin`",
                        release.id, release.id
                    )));
                }
                match tx.release(release.id.as_str())? {
                    Some(stored) if stored.spec != *release => {
                        return Err(Error::conflict(format!(
                            "release {} already exists with other content; releases are immutable: give this one a new version",
                            release.id
                        )))
                    }
                    Some(_) => {}
                    None => {
                        let stored = ReleaseRecord::new(
                            release.clone(),
                            fleet.pki.signing_key(),
                            None,
                            Vec::new(),
                            now,
                            &caller.name,
                        );
                        tx.put_release(&stored);
                        tx.audit(AuditEntry::new(now, &caller.name, "release.create", release.id.to_string(), "given as JSON"));
                    }
                }
            }
            record.assigned_release = release.as_ref().map(|r| r.id.clone());
            let outgoing = desired::retarget(tx, &fleet.pki, &mut Releases::default(), &mut record, now, false)?;
            tx.put_device(&record);
            tx.audit(AuditEntry::new(
                now,
                &caller.name,
                "device.assign",
                id.to_string(),
                format!("release {}", record.assigned_release.as_ref().map_or("none", ReleaseId::as_str)),
            ));
            Ok((record, outgoing))
        })
    })
    .await?;
    if let Some(out) = outgoing {
        send_now(fleet, out, now);
        tracing::info!(device = %record.id, generation = record.desired_generation, release = ?record.desired_release, "desired state published");
    }
    Ok(record)
}

/// Pins device `id` to `request.release` with a reason (unless `force`, only if pre-flight
/// says the device can run it).
pub async fn pin(
    fleet: &Fleet,
    caller: &Caller,
    id: DeviceId,
    request: PinRequest,
    now: UnixMillis,
) -> Result<DeviceRecord, Error> {
    let release = ReleaseId::new(request.release.clone())
        .map_err(|e| Error::BadRequest(format!("release: {e}")))?;
    let reason = request.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(Error::BadRequest(
            "a pin needs a reason (--reason \"bench debugging of the lidar driver\"): the next engineer must know why the robot is held".to_owned(),
        ));
    }
    if request.until.is_some_and(|u| u <= now.0) {
        return Err(Error::BadRequest("until: the expiry is in the past".to_owned()));
    }
    let (record, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || {
            fleet.store.update_durable(|tx| {
                let mut record = active(tx.device(&id)?, &id)?;
                let stored = tx
                    .release(release.as_str())?
                    .ok_or_else(|| Error::UnknownRelease { release: release.clone() })?;
                if !request.force {
                    let check = preflight::check(
                        &record,
                        fleet.store.inventory(&id)?.as_ref(),
                        &stored,
                        now,
                    );
                    if !check.satisfiable() {
                        return Err(Error::conflict(format!(
                        "{id} cannot run {release}: {}; nothing was sent (pin anyway with --force)",
                        check.unsatisfiable.join("; ")
                    )));
                    }
                }
                let pin = PinRecord {
                    release: release.clone(),
                    reason: reason.clone(),
                    pinned_by: caller.name.clone(),
                    pinned_at: now,
                    until: request.until.map(UnixMillis),
                };
                // An agent release pins the agent, apart from the application's pin.
                if stored.is_agent() {
                    record.agent_pin = Some(pin);
                } else {
                    record.pin = Some(pin);
                }
                let outgoing = desired::retarget(
                    tx,
                    &fleet.pki,
                    &mut Releases::default(),
                    &mut record,
                    now,
                    false,
                )?;
                tx.put_device(&record);
                let until = request.until.map_or(String::new(), |u| {
                    format!(" until {}", crate::units::utc(UnixMillis(u)))
                });
                tx.audit(AuditEntry::new(
                    now,
                    &caller.name,
                    "device.pin",
                    id.to_string(),
                    format!("pinned to {release}{until}: {reason}"),
                ));
                Ok((record, outgoing))
            })
        }
    })
    .await?;
    if let Some(out) = outgoing {
        send_now(fleet, out, now);
    }
    Ok(record)
}

/// Lifts device `id`'s pin (its agent pin with `agent`), if it has one; it returns to its
/// assigned release (agent version).
pub async fn unpin(
    fleet: &Fleet,
    caller: &Caller,
    id: DeviceId,
    agent: bool,
    now: UnixMillis,
) -> Result<DeviceRecord, Error> {
    let (record, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || {
            fleet.store.update_durable(|tx| {
                let mut record = active(tx.device(&id)?, &id)?;
                let held = if agent { &mut record.agent_pin } else { &mut record.pin };
                let Some(pin) = held.take() else {
                    return Ok((record, None));
                };
                let outgoing = desired::retarget(
                    tx,
                    &fleet.pki,
                    &mut Releases::default(),
                    &mut record,
                    now,
                    false,
                )?;
                tx.put_device(&record);
                tx.audit(AuditEntry::new(
                    now,
                    &caller.name,
                    "device.unpin",
                    id.to_string(),
                    format!("was pinned to {} by {}: {}", pin.release, pin.pinned_by, pin.reason),
                ));
                Ok::<_, Error>((record, outgoing))
            })
        }
    })
    .await?;
    if let Some(out) = outgoing {
        send_now(fleet, out, now);
    }
    fleet.driver.wake();
    Ok(record)
}

/// Changes device `id`'s labels and notes as `change` says. New labels can put the device in
/// other groups: it is re-targeted in the same change when its release renders differently.
/// Returns the device as it is now and the devices re-targeted (itself, or none).
pub async fn change(
    fleet: &Fleet,
    caller: &Caller,
    id: DeviceId,
    change: DeviceChange,
    now: UnixMillis,
) -> Result<(DeviceRecord, Vec<DeviceId>), Error> {
    let mut errors = Vec::new();
    for (k, v) in &change.labels {
        if let Err(why) = groups::check_label_key(k) {
            errors.push(FieldProblem { path: format!("labels.{k}"), reason: why });
        }
        if let Some(Err(why)) = v.as_deref().map(groups::check_label_value) {
            errors.push(FieldProblem { path: format!("labels.{k}"), reason: why });
        }
    }
    if change.notes.as_ref().is_some_and(|n| n.len() > 4096) {
        errors.push(FieldProblem { path: "notes".into(), reason: "at most 4096 bytes".into() });
    }
    if !errors.is_empty() {
        return Err(Error::Invalid {
            summary: "the change was refused; nothing was changed".to_owned(),
            problems: errors,
        });
    }
    let (changed, outgoing) = blocking({
        let (fleet, caller) = (fleet.clone(), caller.clone());
        move || fleet.store.update_durable(|tx| {
        let was = tx.device(&id)?.ok_or_else(|| Error::UnknownDevice { id: id.clone() })?;
        let mut record = was.clone();
        let mut said = Vec::new();
        for (k, v) in &change.labels {
            match v {
                Some(v) => {
                    record.labels.insert(k.clone(), v.clone());
                    said.push(format!("{k}={v}"));
                }
                None => {
                    record.labels.remove(k);
                    said.push(format!("{k}-"));
                }
            }
        }
        if let Some(notes) = &change.notes {
            record.notes.clone_from(notes);
            said.push("notes changed".to_owned());
        }
        tx.put_device(&record);
        // New labels can put the device in other groups, and so give it other variables and
        // secrets: it is re-targeted in this change if its release renders differently. A
        // relabel that leaves its release undecidable (a variable or secret its new groups do
        // not provide) is refused like `var set`: storing the labels would leave the device
        // running a release its labels no longer describe, and any later re-target (a
        // rollout, a var set) would fail on it far from the cause. The 422 names what is
        // missing, so the way on is to set it for the device first and relabel again.
        let (retargeted, outgoing) = if record.labels == was.labels {
            (Vec::new(), Vec::new())
        } else {
            // Same variables, secrets and groups on both sides: only the labels differ.
            let before = Releases::snapshot(&*tx).map_err(publish::internal)?;
            let moved = vec![Moved { was, now: record.clone() }];
            let verb = format!("changing the labels of {id} ({})", said.join(" "));
            publish::retarget_members(tx, &fleet.pki, &verb, before, moved, now, &format!("set the missing values for the device first (`fleetctl var set NAME VALUE --device {id}`, `fleetctl secret set NAME --device {id} < file`), or give it labels whose groups provide them"))?
        };
        if !retargeted.is_empty() {
            said.push("re-targeted (its groups changed what it renders)".to_owned());
        }
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "device.change",
            id.to_string(),
            said.join(" "),
        ));
        // A re-target wrote the record again with its new generation.
        let device = tx.device(&id)?.unwrap_or(record);
        Ok::<_, Error>(((device, retargeted), outgoing))
        })
    })
    .await?;
    publish::send(fleet, outgoing, now);
    Ok(changed)
}

/// How commands reach devices and their answers come back.
#[derive(Debug, Clone, Copy)]
pub struct Messaging<'a> {
    /// The server's MQTT client.
    pub mqtt: &'a AsyncClient,
    /// Requests waiting for command results.
    pub waiters: &'a Waiters,
}

/// Sends `request.action` to device `id`, signed, and waits (at most `request.timeout_secs`,
/// 1 s to 1 h, default 30 s) for its result. The device refuses a command after its deadline,
/// so a timed-out command never runs late.
pub async fn command(
    fleet: &Fleet,
    messaging: Messaging<'_>,
    caller: &Caller,
    id: DeviceId,
    request: CommandRequest,
    now: UnixMillis,
) -> Result<CommandResult, Error> {
    let timeout = command_timeout(request.timeout_secs)?;
    let record = active(fleet.store.device(&id)?, &id)?;
    require_online(&record, now)?;
    let command_id = u64::from_be_bytes(keyfile::random::<8>().map_err(Error::internal)?);
    let command = Command {
        id: command_id,
        device: record.id.clone(),
        issued_at: now,
        deadline: UnixMillis(now.0 + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        action: request.action,
    };
    fleet.store.update(|tx| {
        tx.audit(AuditEntry::new(
            now,
            &caller.name,
            "device.command",
            id.to_string(),
            format!("{:?} (command {command_id})", command.action),
        ));
        Ok::<_, Error>(())
    })?;
    let answer = messaging.waiters.wait_for(command_id);
    let payload = Message::Command(fleet.pki.signing_key().sign(&command)).encode();
    if let Err(e) = messaging.mqtt.try_publish(
        topic(&record.id, TopicKind::Cmd),
        QoS::AtLeastOnce,
        false,
        payload,
    ) {
        messaging.waiters.forget(command_id);
        return Err(Error::BrokerUnavailable { reason: e.to_string() });
    }
    tracing::info!(device = %record.id, command = command_id, action = ?command.action, "command sent");
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(result)) => Ok(result),
        _ => {
            messaging.waiters.forget(command_id);
            Err(Error::NoAnswer { device: record.id, command: command_id, secs: timeout.as_secs() })
        }
    }
}

/// The longest a command may wait for its device: an hour.
pub const MAX_COMMAND_TIMEOUT_SECS: u64 = 3600;

/// How long a command waits: `timeout_secs` if it is 1 s to 1 h, 30 s if absent. Out of range
/// is refused rather than clamped, so the caller learns their deadline is not the one kept.
fn command_timeout(timeout_secs: Option<u64>) -> Result<Duration, Error> {
    match timeout_secs.unwrap_or(30) {
        secs @ 1..=MAX_COMMAND_TIMEOUT_SECS => Ok(Duration::from_secs(secs)),
        secs => Err(Error::field(
            "the command was refused; nothing was sent",
            "timeout_secs",
            format!("{secs} is outside 1 to {MAX_COMMAND_TIMEOUT_SECS} seconds"),
        )),
    }
}

/// A command goes only to a device whose retained status says online: an offline one would
/// hold the request until the deadline for an answer that cannot come, so it is refused at once.
fn require_online(record: &DeviceRecord, now: UnixMillis) -> Result<(), Error> {
    if record.online {
        return Ok(());
    }
    let ago = Duration::from_millis(now.0.saturating_sub(record.last_seen.0));
    Err(Error::conflict(format!(
        "device {id} is offline (last heard from {ago} ago): a command needs it online, so nothing \
         was sent; `fleetctl device show {id}` shows its state",
        id = record.id,
        ago = fleet_api::units::human_duration(ago),
    )))
}

/// Writes the revocation list from every revoked certificate in the registry.
pub fn write_crl(store: &Store, pki: &Pki) -> Result<(), Box<dyn std::error::Error>> {
    let revoked: Vec<Revoked> = store
        .devices()?
        .into_iter()
        .flat_map(|d| d.revoked_certificates)
        .map(|r| Revoked { serial: r.serial, at: r.at })
        .collect();
    // The time in milliseconds grows with every list, as a CRL number must.
    pki.write_crl(&revoked, UnixMillis::now().0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_waits_thirty_seconds_by_default_and_refuses_a_timeout_outside_one_hour() {
        assert_eq!(command_timeout(None).unwrap(), Duration::from_secs(30));
        assert_eq!(command_timeout(Some(1)).unwrap(), Duration::from_secs(1));
        assert_eq!(command_timeout(Some(3600)).unwrap(), Duration::from_secs(3600));
        for secs in [0, 3601, u64::MAX] {
            match command_timeout(Some(secs)) {
                Err(Error::Invalid { problems, .. }) => {
                    assert_eq!(problems[0].path, "timeout_secs");
                    assert!(problems[0].reason.contains(&secs.to_string()), "{problems:?}");
                }
                other => panic!("{secs}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_command_to_an_offline_device_is_refused_at_once_saying_when_it_was_last_heard_from() {
        let id = DeviceId::new("robot-1").unwrap();
        let mut record = DeviceRecord::bare(id, UnixMillis(1_000));
        record.online = true;
        assert!(require_online(&record, UnixMillis(5_000)).is_ok());
        record.online = false;
        match require_online(&record, UnixMillis(1_000 + 90_000)) {
            Err(Error::Conflict { detail, .. }) => {
                assert!(detail.contains("robot-1 is offline"), "{detail}");
                assert!(detail.contains("1m 30s ago"), "{detail}");
                assert!(detail.contains("nothing was sent"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
}
