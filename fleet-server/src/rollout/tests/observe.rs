//! What the engine is told about a device, read from its stored record.

use fleet_proto::report::UpdatePhase;

use crate::devices::DeviceRecord;

use super::*;

#[test]
fn observations_ignore_outcomes_of_older_desired_states() {
    use fleet_proto::samples;
    let report = samples::report(); // last outcome: generation 2, rolled back
    let cert = crate::devices::CertificateInfo { serial: "01".into(), not_after: UnixMillis(0) };
    let mut record = DeviceRecord::enrolled(report.device.clone(), BTreeMap::new(), cert, at(0));
    record.online = true;
    record.desired_generation = 3;
    let silent = DeviceObservation::from_record(&record, at(0));
    assert_eq!((silent.release, silent.outcome), (None, None));
    record.last_report = Some(report.clone());
    let obs = DeviceObservation::from_record(&record, at(0));
    assert_eq!(obs.outcome, None, "generation 2 is not the rollout's update");
    assert_eq!(obs.release, report.in_force.as_ref().map(|f| f.release.clone()));
    assert!(obs.online && !obs.deferred && !obs.pinned);
    record.desired_generation = 2;
    record.pin = Some(crate::devices::PinRecord {
        release: rel("app@1"),
        reason: "bench".into(),
        pinned_by: "alice".into(),
        pinned_at: at(0),
        until: Some(at(10)),
    });
    let obs = DeviceObservation::from_record(&record, at(5));
    assert!(matches!(obs.outcome, Some(Outcome::RolledBack { .. })));
    assert!(obs.pinned);
    assert!(!DeviceObservation::from_record(&record, at(10)).pinned, "the pin lapsed");
    let mut deferred = report.clone();
    deferred.update.phase = UpdatePhase::Deferred;
    record.last_report = Some(deferred);
    assert!(DeviceObservation::from_record(&record, at(0)).deferred);
}
