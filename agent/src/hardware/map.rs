//! Pure: one service's hardware requests against the host become engine device options.

use fleet_proto::release::{ServiceSpec, SpecError};

use super::{HardwareMapping, HostHardware};

/// Maps `spec`'s hardware (`hardware` required, `optional_hardware` when present) onto `hw`.
/// `at` is the service's path in the release (`services[1]`), so errors name the field.
pub fn map_service(
    spec: &ServiceSpec,
    hw: &HostHardware,
    at: &str,
) -> Result<HardwareMapping, Vec<SpecError>> {
    let _ = (spec, hw, at);
    Ok(HardwareMapping::default())
}
