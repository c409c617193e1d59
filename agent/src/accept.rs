//! Whether what the server (or `fleet-agent apply`) hands the agent may be acted on: pure
//! decisions, made before any container is touched. The daemon gathers the facts (what the
//! state database holds, the clock, the configuration), calls these and acts on the answer.
//!
//! * **Releases** ([`check_release`], [`check_local_release`]): what this agent can run
//!   anywhere. Whether one fits this device's hardware is decided when it is applied
//!   ([`crate::hardware::admit`]), since devices come and go.
//!   Bind mounts of host paths are allowed only under the directories the configuration
//!   lists (`[policy] allowed_host_paths`).
//! * **Desired states** ([`delivery`], then [`accept`]): a copy of what is already on record
//!   (the broker's retained message, on every reconnect) is ignored, not refused; one recorded
//!   but never applied (power loss in between) is taken again; anything else must verify, be
//!   for this device and be newer than every generation accepted. A refused desired state is
//!   refused as a whole, with a reason the agent reports as an event; the running release is
//!   untouched.
//! * **Commands** ([`screen_command`], then [`command_verdict`]): for this device and in time,
//!   checked before the id is recorded; then run at most once: a recorded id is a redelivery
//!   and gets no second result. A reboot runs only where the configuration allows it.
//!
//! This module does no I/O and imports no other module of the agent.

use fleet_proto::{
    Command, CommandAction, DesiredState, DeviceId, ReleaseSpec, Signed, TrustedKeys, UnixMillis,
    VerifyError,
};
use sha2::{Digest, Sha256};

/// Why a release is refused before anything runs.
#[derive(Debug, thiserror::Error)]
#[error("release refused: {}", .problems.join("; "))]
pub struct Refused {
    /// Every problem, each naming its field.
    pub problems: Vec<String>,
}

/// Checks a release for what this agent can run anywhere: the protocol's own validation plus
/// what the agent does not support. Whether it fits this device's hardware is decided when it
/// is applied ([`crate::hardware::admit`]), since devices come and go.
/// `allowed_host_paths` are the directories services may bind-mount
/// (`[policy] allowed_host_paths`).
pub fn check_release(release: &ReleaseSpec, allowed_host_paths: &[String]) -> Result<(), Refused> {
    let mut problems: Vec<String> = match release.validate() {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    };
    problems.extend(disallowed_binds(release, allowed_host_paths));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Refused { problems })
    }
}

/// The bind mounts of host paths in `release` that no allowed directory covers, as problems
/// naming the field and the path ([`fleet_proto::policy::host_paths`], the server's rule too).
pub fn disallowed_binds(release: &ReleaseSpec, allowed: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, svc) in release.services.iter().enumerate() {
        let at = format!("services[{i}]");
        problems.extend(
            fleet_proto::policy::host_paths(svc, allowed, &at).iter().map(ToString::to_string),
        );
    }
    problems
}

/// [`check_release`] for a release applied locally (`fleet-agent apply`), which has no server
/// to deliver secrets: a service that mounts one is refused too.
pub fn check_local_release(
    release: &ReleaseSpec,
    allowed_host_paths: &[String],
) -> Result<(), Refused> {
    let mut problems = match check_release(release, allowed_host_paths) {
        Ok(()) => vec![],
        Err(r) => r.problems,
    };
    problems.extend(local_problems(release));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Refused { problems })
    }
}

/// Services of `release` that mount secrets, as problems: local mode has no server to deliver
/// them.
fn local_problems(release: &ReleaseSpec) -> Vec<String> {
    release
        .services
        .iter()
        .flat_map(|svc| {
            svc.secrets.iter().map(move |m| {
                format!(
                    "service {} mounts secret {:?}: secrets come only from the fleet server (`fleetctl secret set`), a local release cannot carry them",
                    svc.name, m.source
                )
            })
        })
        .collect()
}

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
    allowed_host_paths: &[String],
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

/// The desired state the reconciler holds now (the state database's `desired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// None yet: a new device, or one that never got past recording its first desired state.
    Nothing,
    /// A release from `fleet-agent apply`.
    Local,
    /// The server's desired state of this generation.
    Server(u64),
}

/// What to do with a desired state delivered by the server, judged from what is on record
/// before it is even verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The same bytes as the desired state on record, which is applied (or a local release
    /// applied since, which stands until the server sends a newer generation): the broker's
    /// retained copy, delivered on every reconnect. Nothing to do, nothing to report.
    Unchanged,
    /// Verify and check it with [`accept`]; `accepted` is the highest server generation
    /// accepted so far (`None`: any generation is new).
    Check {
        /// The generation it must be newer than.
        accepted: Option<u64>,
    },
}

/// SHA-256 of the signed bytes and signature, hex: how the agent recognises the broker's
/// retained copy of a desired state it already recorded (see [`delivery`]).
pub fn digest(signed: &Signed) -> String {
    let mut h = Sha256::new();
    h.update(&signed.payload);
    h.update(&signed.signature);
    fleet_proto::hex::encode(&h.finalize())
}

/// Judges a delivery by its [`digest`] against `recorded`, the
/// generation and digest of the last desired state recorded from the server, and `applied`,
/// what the reconciler holds.
pub fn delivery(digest: &str, recorded: Option<(u64, &str)>, applied: Applied) -> Delivery {
    let applied_generation = match applied {
        Applied::Server(generation) => Some(generation),
        Applied::Nothing | Applied::Local => None,
    };
    match recorded {
        Some((generation, recorded_digest)) if recorded_digest == digest => {
            let recorded_but_not_applied = match applied {
                Applied::Nothing => true,
                Applied::Server(g) => g < generation,
                Applied::Local => false,
            };
            if recorded_but_not_applied {
                // The same bytes, recorded but never handed to the reconciler: the agent
                // stopped in between (power loss). Take them again.
                Delivery::Check { accepted: applied_generation }
            } else {
                Delivery::Unchanged
            }
        }
        recorded => Delivery::Check { accepted: recorded.map(|(g, _)| g).max(applied_generation) },
    }
}

/// Whether a verified command is for this device and still in time; `Err` is the reason to
/// refuse it. Checked before its id is recorded, so a refused command is refused again if
/// redelivered.
pub fn screen_command(command: &Command, device: &DeviceId, now: UnixMillis) -> Result<(), String> {
    if command.device != *device {
        Err(format!("command is for device {}, this is {device}", command.device))
    } else if now > command.deadline {
        Err(format!("deadline {} passed", command.deadline.0))
    } else {
        Ok(())
    }
}

/// Recording a screened command's id (the state database's `remember_command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// First seen: recorded now.
    First,
    /// Recorded before: it was run (or refused) already.
    Again,
    /// The id could not be recorded; why.
    Failed(String),
}

/// What to do with a command once its id was recorded (or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandVerdict {
    /// Run it.
    Run,
    /// A redelivery of a command already answered: no second result.
    Redelivery,
    /// Answer that it was refused, with this reason, and do not run it.
    Refuse(String),
    /// Answer that it failed, with this reason: a command whose id is not on record could run
    /// twice.
    Fail(String),
}

/// Judges a screened command after recording its id. `allow_reboot` is
/// `[commands] allow_reboot`.
pub fn command_verdict(
    action: &CommandAction,
    recorded: Recorded,
    allow_reboot: bool,
) -> CommandVerdict {
    match recorded {
        Recorded::Again => CommandVerdict::Redelivery,
        Recorded::Failed(e) => CommandVerdict::Fail(format!("cannot record the command: {e}")),
        Recorded::First if matches!(action, CommandAction::Reboot) && !allow_reboot => {
            CommandVerdict::Refuse(
                "reboot is not allowed on this device (commands.allow_reboot = false)".to_owned(),
            )
        }
        Recorded::First => CommandVerdict::Run,
    }
}

/// A stable machine-readable reason for a refused signed payload (the event's `reason`).
pub fn verify_reason(e: &VerifyError) -> &'static str {
    match e {
        VerifyError::Unsigned => "unsigned",
        VerifyError::UnknownKey { .. } => "unknown-key",
        VerifyError::MalformedSignature { .. } => "malformed-signature",
        VerifyError::BadSignature { .. } => "bad-signature",
        VerifyError::Payload(_) => "undecodable-payload",
    }
}

/// A stable machine-readable reason for a refused desired state.
pub fn rejection_reason(r: &Rejection) -> &'static str {
    match r {
        Rejection::Signature(e) => verify_reason(e),
        Rejection::WrongDevice { .. } => "wrong-device",
        Rejection::Replay { .. } => "replay",
        Rejection::Invalid(_) => "invalid-release",
        Rejection::Secrets(_) => "secrets",
    }
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

    #[test]
    fn a_local_release_with_secrets_is_refused_with_the_service_and_secret() {
        let mut release = samples::release();
        release.services[1].secrets = vec![fleet_proto::release::SecretMount {
            source: "db".into(),
            target: "db".into(),
            uid: None,
            gid: None,
            mode: 0,
        }];
        let problems = local_problems(&release);
        assert_eq!(problems.len(), 2);
        assert!(problems[1].contains("service lidar mounts secret \"db\""), "{problems:?}");
        let refused = check_local_release(&release, &[]).unwrap_err();
        assert!(refused.problems.iter().any(|p| p.contains("a local release cannot carry them")));
    }

    #[test]
    fn deliveries_are_judged_against_what_is_recorded_and_applied() {
        use Applied::{Local, Nothing, Server};
        let check = |accepted| Delivery::Check { accepted };
        // (case, recorded (generation, digest), applied, delivered digest, decision)
        type Case = (&'static str, Option<(u64, &'static str)>, Applied, &'static str, Delivery);
        let cases: &[Case] = &[
            ("a new device takes any generation", None, Nothing, "d1", check(None)),
            ("after local releases only, any generation", None, Local, "d1", check(None)),
            (
                "the retained copy of what runs",
                Some((3, "d3")),
                Server(3),
                "d3",
                Delivery::Unchanged,
            ),
            (
                "the retained copy while a local release stands",
                Some((3, "d3")),
                Local,
                "d3",
                Delivery::Unchanged,
            ),
            (
                "recorded, then power lost before applying: taken again",
                Some((3, "d3")),
                Nothing,
                "d3",
                check(None),
            ),
            (
                "recorded over an older applied generation: taken again above it",
                Some((3, "d3")),
                Server(2),
                "d3",
                check(Some(2)),
            ),
            (
                "other bytes must beat the recorded generation",
                Some((3, "d3")),
                Server(3),
                "d4",
                check(Some(3)),
            ),
            (
                "other bytes after a local release: the recorded generation still counts",
                Some((3, "d3")),
                Local,
                "d4",
                check(Some(3)),
            ),
            (
                "an applied generation above the recorded one counts",
                Some((3, "d3")),
                Server(5),
                "d4",
                check(Some(5)),
            ),
            (
                "the recorded digest with a newer generation applied is old",
                Some((3, "d3")),
                Server(5),
                "d3",
                Delivery::Unchanged,
            ),
            ("nothing recorded but a generation applied", None, Server(4), "d1", check(Some(4))),
        ];
        for (case, recorded, applied, digest, want) in cases {
            assert_eq!(delivery(digest, *recorded, *applied), *want, "{case}");
        }
    }

    fn command(action: CommandAction) -> Command {
        Command {
            id: 7,
            device: samples::device(),
            issued_at: UnixMillis(1_000),
            deadline: UnixMillis(2_000),
            action,
        }
    }

    #[test]
    fn commands_for_another_device_or_past_their_deadline_are_refused_before_recording() {
        let c = command(CommandAction::Reboot);
        assert_eq!(screen_command(&c, &samples::device(), UnixMillis(1_500)), Ok(()));
        assert_eq!(
            screen_command(&c, &samples::device(), UnixMillis(2_000)),
            Ok(()),
            "the deadline itself is in time"
        );
        let late = screen_command(&c, &samples::device(), UnixMillis(2_001)).unwrap_err();
        assert_eq!(late, "deadline 2000 passed");
        let other = DeviceId::new("robot-8").unwrap();
        let wrong = screen_command(&c, &other, UnixMillis(1_500)).unwrap_err();
        assert!(wrong.contains("this is robot-8"), "{wrong}");
    }

    #[test]
    fn commands_run_once_and_reboot_only_where_allowed() {
        let reboot = CommandAction::Reboot;
        let refresh = CommandAction::RefreshInventory;
        let not_allowed =
            "reboot is not allowed on this device (commands.allow_reboot = false)".to_owned();
        // (case, action, recorded, allow_reboot, verdict)
        let cases: Vec<(&str, &CommandAction, Recorded, bool, CommandVerdict)> = vec![
            ("first delivery runs", &refresh, Recorded::First, false, CommandVerdict::Run),
            (
                "a redelivery is not run again",
                &refresh,
                Recorded::Again,
                false,
                CommandVerdict::Redelivery,
            ),
            (
                "an id not on record is not run",
                &refresh,
                Recorded::Failed("disk full".into()),
                false,
                CommandVerdict::Fail("cannot record the command: disk full".into()),
            ),
            ("an allowed reboot runs", &reboot, Recorded::First, true, CommandVerdict::Run),
            (
                "a forbidden reboot is refused",
                &reboot,
                Recorded::First,
                false,
                CommandVerdict::Refuse(not_allowed),
            ),
            (
                "a forbidden reboot redelivered gets no second answer",
                &reboot,
                Recorded::Again,
                false,
                CommandVerdict::Redelivery,
            ),
            (
                "a reboot redelivered is not run again",
                &reboot,
                Recorded::Again,
                true,
                CommandVerdict::Redelivery,
            ),
        ];
        for (case, action, recorded, allow, want) in cases {
            assert_eq!(command_verdict(action, recorded, allow), want, "{case}");
        }
    }

    #[test]
    fn refusal_reasons_are_stable_names() {
        let signed = samples::server_key().sign(&desired());
        let replay = accept(&signed, &trusted(), &samples::device(), Some(3), &[]).unwrap_err();
        assert_eq!(rejection_reason(&replay), "replay");
        let mut unsigned = signed.clone();
        unsigned.signature.clear();
        let err = accept(&unsigned, &trusted(), &samples::device(), None, &[]).unwrap_err();
        assert_eq!(rejection_reason(&err), "unsigned");
        assert_eq!(rejection_reason(&Rejection::Secrets(vec![])), "secrets");
    }

    #[test]
    fn host_paths_are_allowed_only_under_the_configured_directories() {
        let bind = |p: &str| fleet_proto::release::VolumeMount {
            source: fleet_proto::release::VolumeSource::HostPath(p.to_owned()),
            target: "/x".to_owned(),
            read_only: true,
        };
        let mut r = desired().release.unwrap();
        r.services.truncate(1);
        r.services[0].volumes = vec![
            bind("/srv/maps"),
            bind("/srv/maps/site-a"),
            bind("/srv/mapsevil"),
            bind("/srv/maps/../../etc"),
            bind("/etc"),
        ];
        let allowed = ["/srv/maps".to_owned()];
        let problems = disallowed_binds(&r, &allowed);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("services[0].volumes[2].source"));
        assert!(problems[0].contains("not under /srv/maps"));
        assert!(problems[1].contains("/srv/maps/../../etc"));
        assert!(disallowed_binds(&r, &[])[0].contains("allows no host paths"));
    }
}
