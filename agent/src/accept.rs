//! Whether a desired state from the server may be applied: a pure decision, made before any
//! container is touched. A refused desired state is refused as a whole, with a reason the
//! agent reports as an event; the running release is untouched.

use fleet_proto::{DesiredState, DeviceId, Signed, TrustedKeys, VerifyError};

use crate::reconcile::{check_release, Refused};

/// Why a desired state was refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Unsigned, signed by an unknown key, tampered with, or not decodable (an image without a
    /// digest fails here: image references are validated while decoding).
    #[error("desired state refused: {0}")]
    Signature(#[from] VerifyError),
    /// Addressed to another device.
    #[error("desired state refused: it is for device {got}, this is {expected}")]
    WrongDevice {
        /// This device.
        expected: DeviceId,
        /// The device named in the payload.
        got: DeviceId,
    },
    /// Not newer than what was already accepted: a replay or a reordering.
    #[error("desired state refused: generation {generation} is not newer than the accepted generation {accepted}")]
    Replay {
        /// The generation offered.
        generation: u64,
        /// The generation already accepted.
        accepted: u64,
    },
    /// The release is inconsistent or asks for what this agent cannot do.
    #[error("desired state refused: {0}")]
    Invalid(#[from] Refused),
    /// A secret the release mounts did not come, does not open with this device's key, or its
    /// file cannot be written.
    #[error("desired state refused: {}", .0.join("; "))]
    Secrets(Vec<String>),
}

/// Verifies, then checks addressee, freshness and content. `accepted` is the highest server
/// generation accepted so far.
pub fn accept(
    signed: &Signed,
    trusted: &TrustedKeys,
    device: &DeviceId,
    accepted: Option<u64>,
    allowed_host_paths: &[std::path::PathBuf],
) -> Result<DesiredState, Rejection> {
    let desired: DesiredState = signed.open(trusted)?;
    if desired.device != *device {
        return Err(Rejection::WrongDevice { expected: device.clone(), got: desired.device });
    }
    if let Some(accepted) = accepted {
        if desired.generation <= accepted {
            return Err(Rejection::Replay { generation: desired.generation, accepted });
        }
    }
    if let Some(release) = &desired.release {
        check_release(release, allowed_host_paths)?;
    }
    Ok(desired)
}

#[cfg(test)]
mod tests {
    use fleet_proto::{samples, ServerKey};

    use super::*;

    fn desired() -> DesiredState {
        let mut d = samples::desired();
        for s in d.release.as_mut().unwrap().services.iter_mut() {
            s.hardware.clear();
            if let Some(h) = &mut s.healthcheck {
                h.probe = fleet_proto::release::Probe::Image;
            }
        }
        d
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::new([samples::server_key().public()])
    }

    #[test]
    fn a_correct_newer_desired_state_is_accepted() {
        let signed = samples::server_key().sign(&desired());
        assert_eq!(
            accept(&signed, &trusted(), &samples::device(), Some(2), &[]).unwrap(),
            desired()
        );
        assert!(accept(&signed, &trusted(), &samples::device(), None, &[]).is_ok());
    }

    #[test]
    fn forged_unsigned_and_unknown_key_states_are_refused_distinctly() {
        let mut forged = samples::server_key().sign(&desired());
        forged.signature[5] ^= 1;
        assert!(matches!(
            accept(&forged, &trusted(), &samples::device(), None, &[]),
            Err(Rejection::Signature(VerifyError::BadSignature { .. }))
        ));
        let mut unsigned = samples::server_key().sign(&desired());
        unsigned.signature.clear();
        assert!(matches!(
            accept(&unsigned, &trusted(), &samples::device(), None, &[]),
            Err(Rejection::Signature(VerifyError::Unsigned))
        ));
        let stranger = ServerKey::from_seed(&[1; 32]).sign(&desired());
        assert!(matches!(
            accept(&stranger, &trusted(), &samples::device(), None, &[]),
            Err(Rejection::Signature(VerifyError::UnknownKey { .. }))
        ));
    }

    #[test]
    fn replays_and_other_devices_states_are_refused() {
        let signed = samples::server_key().sign(&desired());
        let err = accept(&signed, &trusted(), &samples::device(), Some(3), &[]).unwrap_err();
        assert!(matches!(err, Rejection::Replay { generation: 3, accepted: 3 }), "{err}");
        let other = DeviceId::new("robot-8").unwrap();
        assert!(matches!(
            accept(&signed, &trusted(), &other, None, &[]),
            Err(Rejection::WrongDevice { .. })
        ));
    }

    #[test]
    fn releases_needing_hardware_are_accepted_and_judged_on_the_device_when_applied() {
        // Hardware comes and goes: whether a release fits this device is decided each time it
        // is applied (reconcile::Reconciler::admit), not once when it arrives.
        let mut d = desired();
        d.release.as_mut().unwrap().services[0].hardware =
            vec![fleet_proto::release::HardwareRequest::Gpio { chip: "gpiochip0".into() }];
        let signed = samples::server_key().sign(&d);
        assert_eq!(accept(&signed, &trusted(), &samples::device(), None, &[]).unwrap(), d);
    }

    #[test]
    fn inconsistent_releases_are_refused_as_a_whole() {
        let mut d = desired();
        let dup = d.release.as_ref().unwrap().services[0].clone();
        d.release.as_mut().unwrap().services.push(dup);
        let err =
            accept(&samples::server_key().sign(&d), &trusted(), &samples::device(), None, &[])
                .unwrap_err();
        assert!(err.to_string().contains("is used twice"), "{err}");
        assert!(err.to_string().contains("already published"), "port clash named too: {err}");
    }
}
