//! Devices: enrollment (a certificate for a key the device proved it holds) and revocation
//! (the device's certificates join the revocation list).

use fleet_api::EnrollRequest;
use fleet_proto::{DeviceId, UnixMillis};

use super::{blocking, Error, Fleet};
use crate::audit::AuditEntry;
use crate::auth::Caller;
use crate::devices::{CertificateInfo, DeviceRecord};
use crate::groups;
use crate::pki::{EnrollKey, Pki, Revoked, DEFAULT_DEVICE_VALIDITY_DAYS, SERVER_IDENTITY};
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
    if id.as_str() == SERVER_IDENTITY {
        return Err(Error::BadRequest(format!(
            "device id: `{SERVER_IDENTITY}` is reserved for the server's own broker identity; pick another id"
        )));
    }
    for (k, v) in &request.labels {
        if let Err(why) = groups::check_label_key(k).and_then(|()| groups::check_label_value(v)) {
            return Err(Error::BadRequest(format!("label {k}: {why}")));
        }
    }
    let key = EnrollKey::verify(&id, &request.public_key, &request.proof)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
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
