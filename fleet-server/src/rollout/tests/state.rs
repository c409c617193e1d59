//! Where a rollout stands: its serialised state, its status, and its actions as audit lines.

use crate::rollout::observe::human;

use super::*;

#[test]
fn the_state_survives_serialisation_mid_rollout() {
    let mut fleet = fleet(30);
    let mut s = spec("1,10%,100%");
    s.stagger = Duration::from_secs(600);
    s.max_parallel = Some(4);
    s.window = Some("daily 00:00-24:00 +02:00".parse().unwrap());
    let mut rollout = Rollout::new(s, targets(30), at(0), 9).unwrap();
    for minute in 0..40 {
        let actions = rollout.step(at(minute * MIN), &fleet);
        all_healthy(&mut fleet, &actions);
    }
    let json = serde_json::to_string(&rollout).unwrap();
    let mut restored: Rollout = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, rollout);
    for minute in 40..200 {
        let actions = rollout.step(at(minute * MIN), &fleet);
        assert_eq!(restored.step(at(minute * MIN), &fleet), actions);
        all_healthy(&mut fleet, &actions);
    }
    assert!(matches!(rollout.state(), RunState::Completed { .. }));
}

#[test]
fn status_counts_devices_per_wave() {
    let mut fleet = fleet(10);
    let mut targets = targets(10);
    targets[9].pinned = true;
    let mut s = spec("3,100%");
    s.failure_threshold = Threshold::Count(3);
    let mut rollout = Rollout::new(s, targets, at(0), 2).unwrap();
    let wave1 = targeted(&rollout.step(at(0), &fleet));
    healthy(&mut fleet, &wave1[0]);
    fleet.get_mut(&wave1[1]).unwrap().outcome = Some(Outcome::Failed { reason: "x".into() });
    rollout.step(at(MIN), &fleet);
    let status = rollout.status();
    assert_eq!(status.current_wave, Some(1));
    assert_eq!(status.skipped_pinned, vec![id(9)]);
    assert_eq!(status.failed, 1);
    assert_eq!(status.allowed_failures, 3);
    assert_eq!(
        status.waves[0].counts,
        WaveCounts { healthy: 1, failed: 1, updating: 1, ..WaveCounts::default() }
    );
    assert_eq!(status.waves[1].counts, WaveCounts { pending: 6, ..WaveCounts::default() });
    assert_eq!(status.waves[1].devices, 6);
    assert!(serde_json::to_string(&status).unwrap().contains("\"current_wave\":1"));
}

#[test]
fn actions_read_as_audit_lines() {
    let lines: Vec<String> = [
        Action::WaveStarted { wave: 2, devices: 999 },
        Action::Target { device: id(7), release: rel("app@2") },
        Action::WaveCompleted { wave: 2, healthy: 990, failed: 9, skipped: 0 },
        Action::DeviceFailed {
            device: id(7),
            reason: FailureReason::Deferred { after_ms: 90 * MIN },
        },
        Action::DeviceSkipped { device: id(7), reason: SkipReason::Pinned },
        Action::Rollback { device: id(7), to: Some(rel("app@1")) },
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        lines,
        [
            "wave 2 started (999 devices)",
            "d00007: target release app@2",
            "wave 2 completed (990 healthy, 9 failed, 0 skipped); baking",
            "d00007: failed: update deferred by a lock for more than 1h 30m",
            "d00007: skipped: pinned; a rollout never moves a pinned device",
            "d00007: roll back to release app@1",
        ]
    );
    assert_eq!(human(2 * DAY + 3 * HOUR), "2d 3h");
    assert_eq!(human(45_000), "45s");
}
