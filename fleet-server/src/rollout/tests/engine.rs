//! Scenarios through [`Rollout::step`]: waves, bakes, thresholds, timeouts, pins, pauses.

use std::collections::BTreeSet;

use super::*;

#[test]
fn waves_are_planned_by_seed_and_pinned_devices_are_skipped_up_front() {
    let mut targets = targets(100);
    targets[0].pinned = true;
    targets[50].pinned = true;
    targets.reverse(); // any order in, the same plan out
    let rollout = Rollout::new(spec("1,10%,50%,100%"), targets.clone(), at(0), 7).unwrap();
    let plan = rollout.plan();
    // 98 eligible: 1, ceil(9.8) = 10, 49, 98 cumulative.
    assert_eq!(plan.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 9, 39, 49]);
    assert_eq!(rollout.status().skipped_pinned, vec![id(0), id(50)]);
    let planned: BTreeSet<DeviceId> = plan.iter().flatten().cloned().collect();
    assert_eq!(planned.len(), 98);
    assert!(!planned.contains(&id(0)) && !planned.contains(&id(50)));
    assert_eq!(
        Rollout::new(spec("1,10%,50%,100%"), targets.clone(), at(0), 7).unwrap().plan(),
        plan
    );
    assert_ne!(Rollout::new(spec("1,10%,50%,100%"), targets, at(0), 8).unwrap().plan(), plan);
}

#[test]
fn waves_that_would_be_empty_for_a_small_fleet_are_dropped() {
    // 5 devices: 1, ceil(0.5) = 1, ceil(2.5) = 3, 5.
    let rollout = Rollout::new(spec("1,10%,50%,100%"), targets(5), at(0), 1).unwrap();
    assert_eq!(rollout.plan().iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2, 2]);
    let rollout = Rollout::new(spec("50,100%"), targets(5), at(0), 1).unwrap();
    assert_eq!(rollout.plan().iter().map(Vec::len).collect::<Vec<_>>(), vec![5]);
}

#[test]
fn rollouts_that_cannot_run_are_refused() {
    let new = |spec, targets| Rollout::new(spec, targets, at(0), 1).unwrap_err();
    assert_eq!(new(spec("100%"), vec![]), SpecError::NoTargets);
    let mut pinned = targets(3);
    pinned.iter_mut().for_each(|t| t.pinned = true);
    assert_eq!(
        new(spec("100%"), pinned).to_string(),
        "all 3 target devices are pinned, and a rollout never moves a pinned device"
    );
    let mut twice = targets(3);
    twice.push(twice[1].clone());
    assert_eq!(new(spec("100%"), twice), SpecError::DuplicateTarget { device: id(1) });
    let mut zero = spec("100%");
    zero.max_parallel = Some(0);
    assert_eq!(new(zero, targets(3)), SpecError::ZeroParallel);
    let mut zero = spec("100%");
    zero.update_deadline = Duration::ZERO;
    assert_eq!(new(zero, targets(3)), SpecError::ZeroDuration { what: "update deadline" });
    let mut unparsed = spec("100%");
    unparsed.waves = vec![WaveSize::Count(3)];
    assert_eq!(new(unparsed, targets(3)), SpecError::LastNotAll { last: "3".into() });
}

#[test]
fn waves_advance_only_after_the_bake() {
    let mut fleet = fleet(5);
    let mut rollout = Rollout::new(spec("1,100%"), targets(5), at(0), 3).unwrap();
    let actions = rollout.step(at(0), &fleet);
    assert_eq!(actions[0], Action::WaveStarted { wave: 1, devices: 1 });
    assert_eq!(targeted(&actions).len(), 1);
    all_healthy(&mut fleet, &actions);
    let actions = rollout.step(at(MIN), &fleet);
    assert_eq!(actions[1], Action::WaveCompleted { wave: 1, healthy: 1, failed: 0, skipped: 0 });
    assert_eq!(rollout.status().bake_until, Some(at(11 * MIN)));
    assert_eq!(rollout.step(at(11 * MIN - 1), &fleet), vec![], "still baking");
    let actions = rollout.step(at(11 * MIN), &fleet);
    assert_eq!(actions[0], Action::WaveStarted { wave: 2, devices: 4 });
    assert_eq!(targeted(&actions).len(), 4);
    all_healthy(&mut fleet, &actions);
    let actions = rollout.step(at(12 * MIN), &fleet);
    assert!(actions.contains(&Action::WaveCompleted {
        wave: 2,
        healthy: 4,
        failed: 0,
        skipped: 0
    }));
    assert_eq!(rollout.step(at(22 * MIN - 1), &fleet), vec![], "the last wave bakes too");
    assert_eq!(rollout.step(at(22 * MIN), &fleet), vec![Action::Completed]);
    assert_eq!(rollout.state(), &RunState::Completed { at: at(22 * MIN) });
    assert_eq!(rollout.step(at(DAY), &fleet), vec![]);
}

#[test]
fn crossing_the_threshold_pauses_and_a_paused_rollout_emits_nothing() {
    let mut fleet = fleet(10);
    let mut s = spec("2,100%");
    s.failure_threshold = Threshold::Count(1);
    let mut rollout = Rollout::new(s, targets(10), at(0), 3).unwrap();
    let wave1 = targeted(&rollout.step(at(0), &fleet));
    fleet.get_mut(&wave1[0]).unwrap().outcome =
        Some(Outcome::Failed { reason: "disk full".into() });
    let actions = rollout.step(at(MIN), &fleet);
    assert_eq!(
        actions,
        vec![Action::DeviceFailed {
            device: wave1[0].clone(),
            reason: FailureReason::UpdateFailed { reason: "disk full".into() }
        }],
        "one failure is within the threshold"
    );
    fleet.get_mut(&wave1[1]).unwrap().outcome =
        Some(Outcome::RolledBack { reason: "unhealthy".into() });
    let actions = rollout.step(at(2 * MIN), &fleet);
    let reason = PauseReason::Threshold { failed: 2, allowed: 1 };
    assert_eq!(actions.last(), Some(&Action::Paused { reason: reason.clone() }));
    assert_eq!(
        actions.last().unwrap().to_string(),
        "paused: 2 devices failed; the failure threshold allows 1"
    );
    assert_eq!(rollout.state(), &RunState::Paused { reason, at: at(2 * MIN) });
    let frozen = rollout.clone();
    assert_eq!(rollout.step(at(30 * DAY), &fleet), vec![]);
    assert_eq!(rollout, frozen, "a paused rollout does not change");
}

#[test]
fn resuming_after_a_threshold_pause_accepts_the_failures_so_far() {
    let mut fleet = fleet(10);
    let mut rollout = Rollout::new(spec("100%"), targets(10), at(0), 3).unwrap();
    let all = targeted(&rollout.step(at(0), &fleet));
    assert_eq!(all.len(), 10);
    fleet.get_mut(&all[0]).unwrap().outcome = Some(Outcome::Failed { reason: "x".into() });
    assert!(matches!(rollout.step(at(MIN), &fleet).last(), Some(Action::Paused { .. })));
    assert_eq!(rollout.resume(at(2 * MIN)).unwrap(), vec![Action::Resumed]);
    assert_eq!(rollout.status().allowed_failures, 1);
    for device in &all[1..5] {
        healthy(&mut fleet, device);
    }
    let actions = rollout.step(at(3 * MIN), &fleet);
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::DeviceHealthy { .. })).count(), 4);
    fleet.get_mut(&all[5]).unwrap().outcome = Some(Outcome::Failed { reason: "y".into() });
    let actions = rollout.step(at(4 * MIN), &fleet);
    assert_eq!(
        actions.last(),
        Some(&Action::Paused { reason: PauseReason::Threshold { failed: 2, allowed: 1 } })
    );
}

#[test]
fn crossing_the_threshold_rolls_every_targeted_device_back_to_its_previous_release() {
    let mut s = spec("2,100%");
    s.on_failure = OnFailure::Rollback;
    let previous = |i: usize| match i % 3 {
        0 => Some(rel("app@1")),
        1 => Some(rel("app@0.9")),
        _ => None,
    };
    let targets: Vec<TargetDevice> = (0..6)
        .map(|i| TargetDevice { id: id(i), pinned: i == 5, previous_release: previous(i) })
        .collect();
    let mut fleet = fleet(6);
    fleet.get_mut(&id(5)).unwrap().pinned = true;
    let mut rollout = Rollout::new(s, targets, at(0), 11).unwrap();
    let wave1 = rollout.step(at(0), &fleet);
    all_healthy(&mut fleet, &wave1);
    rollout.step(at(MIN), &fleet);
    let wave2 = rollout.step(at(11 * MIN), &fleet);
    let wave2 = targeted(&wave2);
    assert_eq!(wave2.len(), 3);
    // One device of wave 1 is pinned meanwhile: it must not be moved back either.
    let pinned_meanwhile = targeted(&wave1)[0].clone();
    fleet.get_mut(&pinned_meanwhile).unwrap().pinned = true;
    healthy(&mut fleet, &wave2[0]);
    fleet.get_mut(&wave2[1]).unwrap().outcome =
        Some(Outcome::RolledBack { reason: "crash".into() });
    let actions = rollout.step(at(12 * MIN), &fleet);
    assert!(actions.contains(&Action::RollbackStarted {
        reason: RollbackReason::Threshold { failed: 1, allowed: 0 }
    }));
    let rolled: BTreeMap<DeviceId, Option<ReleaseId>> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Rollback { device, to } => Some((device.clone(), to.clone())),
            _ => None,
        })
        .collect();
    let expected: BTreeMap<DeviceId, Option<ReleaseId>> = (0..5)
        .map(id)
        .filter(|d| *d != pinned_meanwhile)
        .map(|d| {
            let i = index_of(&d);
            (d, previous(i))
        })
        .collect();
    assert_eq!(rolled, expected, "updating, healthy and failed devices all go back");
    assert!(matches!(rollout.state(), RunState::RolledBack { .. }));
    assert_eq!(rollout.step(at(DAY), &fleet), vec![]);
    let none = actions.iter().find(|a| matches!(a, Action::Rollback { to: None, .. })).unwrap();
    assert!(none.to_string().ends_with("roll back to no release (it ran none before)"));
}

#[test]
fn an_offline_device_is_pending_then_times_out_into_failed() {
    let mut fleet = fleet(3);
    let mut s = spec("100%");
    s.failure_threshold = Threshold::Count(5);
    let mut rollout = Rollout::new(s, targets(3), at(0), 3).unwrap();
    // d0 has been offline for days; d1 goes offline after targeting; d2 comes back in time.
    for i in [0, 2] {
        let obs = fleet.get_mut(&id(i)).unwrap();
        obs.online = false;
        obs.last_seen = UnixMillis(MONDAY - 3 * DAY);
    }
    assert_eq!(targeted(&rollout.step(at(0), &fleet)).len(), 3, "offline devices are targeted too");
    let d1 = fleet.get_mut(&id(1)).unwrap();
    d1.online = false;
    d1.last_seen = at(10 * MIN);
    assert_eq!(rollout.step(at(50 * MIN), &fleet), vec![]);
    assert!(matches!(
        rollout.device_state(&id(0)),
        Some(DeviceState::Updating {
            progress: Progress::Waiting { cause: WaitCause::Offline, .. },
            ..
        })
    ));
    fleet.get_mut(&id(2)).unwrap().online = true;
    assert_eq!(rollout.step(at(55 * MIN), &fleet), vec![]);
    healthy(&mut fleet, &id(2));
    assert_eq!(rollout.step(at(60 * MIN), &fleet), vec![Action::DeviceHealthy { device: id(2) }]);
    let offline = FailureReason::Offline { after_ms: HOUR };
    assert_eq!(
        rollout.step(at(60 * MIN + 1), &fleet),
        vec![Action::DeviceFailed { device: id(0), reason: offline.clone() }],
        "offline since before targeting: the timeout counts from targeting"
    );
    assert_eq!(rollout.step(at(70 * MIN), &fleet), vec![]);
    let actions = rollout.step(at(70 * MIN + 1), &fleet);
    assert_eq!(
        actions[0],
        Action::DeviceFailed { device: id(1), reason: offline },
        "offline after targeting: the timeout counts from when it was last seen"
    );
    assert_eq!(actions[0].to_string(), "d00001: failed: offline for more than 1h");
}

#[test]
fn a_deferred_device_is_pending_then_times_out_into_failed() {
    let mut fleet = fleet(2);
    let mut s = spec("100%");
    s.failure_threshold = Threshold::Count(5);
    let mut rollout = Rollout::new(s, targets(2), at(0), 3).unwrap();
    rollout.step(at(0), &fleet);
    for i in 0..2 {
        fleet.get_mut(&id(i)).unwrap().deferred = true;
    }
    assert_eq!(rollout.step(at(5 * MIN), &fleet), vec![]);
    // d1's lock is released after 50 minutes: its update deadline starts then.
    fleet.get_mut(&id(1)).unwrap().deferred = false;
    assert_eq!(rollout.step(at(50 * MIN), &fleet), vec![]);
    assert_eq!(
        rollout.step(at(65 * MIN + 1), &fleet),
        vec![Action::DeviceFailed {
            device: id(0),
            reason: FailureReason::Deferred { after_ms: HOUR }
        }]
    );
    healthy(&mut fleet, &id(1));
    assert_eq!(rollout.step(at(79 * MIN), &fleet)[0], Action::DeviceHealthy { device: id(1) });
}

#[test]
fn an_online_device_not_healthy_before_its_deadline_fails() {
    let fleet = fleet(1);
    let mut rollout = Rollout::new(spec("100%"), targets(1), at(0), 3).unwrap();
    rollout.step(at(0), &fleet);
    assert_eq!(rollout.step(at(30 * MIN), &fleet), vec![]);
    let actions = rollout.step(at(30 * MIN + 1), &fleet);
    assert_eq!(
        actions[0],
        Action::DeviceFailed {
            device: id(0),
            reason: FailureReason::Deadline { after_ms: 30 * MIN }
        }
    );
    assert_eq!(actions[0].to_string(), "d00000: failed: not healthy within 30m of updating");
}

#[test]
fn a_device_pinned_mid_rollout_is_never_targeted_nor_rolled_back() {
    let mut fleet = fleet(4);
    let mut s = spec("1,100%");
    s.bake = Duration::ZERO;
    let mut rollout = Rollout::new(s, targets(4), at(0), 5).unwrap();
    let plan = rollout.plan();
    let canary = rollout.step(at(0), &fleet);
    assert_eq!(targeted(&canary), plan[0]);
    // The canary is pinned while it updates; one device of wave 2 is pinned before its turn.
    fleet.get_mut(&plan[0][0]).unwrap().pinned = true;
    fleet.get_mut(&plan[1][1]).unwrap().pinned = true;
    let actions = rollout.step(at(MIN), &fleet);
    assert_eq!(
        actions[0],
        Action::DeviceSkipped { device: plan[0][0].clone(), reason: SkipReason::Pinned }
    );
    assert!(actions.contains(&Action::DeviceSkipped {
        device: plan[1][1].clone(),
        reason: SkipReason::Pinned
    }));
    let wave2 = targeted(&actions);
    assert_eq!(wave2, vec![plan[1][0].clone(), plan[1][2].clone()]);
    let status = rollout.status();
    assert_eq!(status.waves[0].counts.skipped, 1);
    assert_eq!(
        status.waves[1].counts,
        WaveCounts { skipped: 1, updating: 2, ..WaveCounts::default() }
    );
    let rollback = rollout.rollback(at(2 * MIN), &fleet).unwrap();
    let moved: Vec<&Action> =
        rollback.iter().filter(|a| matches!(a, Action::Rollback { .. })).collect();
    assert_eq!(moved.len(), 2);
    assert!(!rollback
        .iter()
        .any(|a| matches!(a, Action::Rollback { device, .. } if fleet[device].pinned)));
}

#[test]
fn no_more_than_max_parallel_devices_update_at_once() {
    let mut fleet = fleet(20);
    let mut s = spec("100%");
    s.max_parallel = Some(3);
    let mut rollout = Rollout::new(s, targets(20), at(0), 5).unwrap();
    let mut all = BTreeSet::new();
    let mut minute = 0;
    while rollout.state() == &RunState::Running {
        let actions = rollout.step(at(minute * MIN), &fleet);
        let batch = targeted(&actions);
        assert!(batch.len() <= 3);
        assert!(updating_now(&rollout) <= 3);
        all.extend(batch.iter().cloned());
        // Only the first device of every batch finishes by the next step.
        if let Some(first) = batch.first() {
            healthy(&mut fleet, first);
        }
        if batch.is_empty() {
            for device in &all {
                healthy(&mut fleet, device);
            }
        }
        minute += 1;
        assert!(minute < 200);
    }
    assert_eq!(all.len(), 20);
}

/// (device, minute it was targeted) for a 200-device wave with a 30-minute stagger.
fn stagger_run(seed: u64) -> Vec<(DeviceId, u64)> {
    let mut fleet = fleet(200);
    let mut s = spec("100%");
    s.stagger = Duration::from_secs(30 * 60);
    let mut rollout = Rollout::new(s, targets(200), at(0), seed).unwrap();
    let mut times = Vec::new();
    for minute in 0..40 {
        let actions = rollout.step(at(minute * MIN), &fleet);
        times.extend(targeted(&actions).into_iter().map(|d| (d, minute)));
        all_healthy(&mut fleet, &actions);
    }
    times
}

#[test]
fn stagger_spreads_target_times_within_the_bound_and_is_deterministic_per_seed() {
    let times = stagger_run(1);
    assert_eq!(times.len(), 200);
    // Steps come once a minute, so a device due at 29m59s goes out at the 30th.
    let minutes: BTreeSet<u64> = times.iter().map(|(_, m)| *m).collect();
    assert!(*minutes.last().unwrap() <= 30, "every device within the stagger: {minutes:?}");
    assert!(minutes.len() >= 25, "spread over the stagger: {minutes:?}");
    let busiest = minutes.iter().map(|m| times.iter().filter(|(_, t)| t == m).count()).max();
    assert!(busiest < Some(20), "{busiest:?} devices pulled at once");
    assert_eq!(stagger_run(1), times);
    assert_ne!(stagger_run(2), times);
}

#[test]
fn manual_pause_resume_and_abort() {
    let mut fleet = fleet(4);
    let mut rollout = Rollout::new(spec("1,100%"), targets(4), at(0), 5).unwrap();
    rollout.step(at(0), &fleet);
    let paused = rollout.pause(at(MIN), "site visit".into()).unwrap();
    assert_eq!(paused[0].to_string(), "paused: paused by an operator: site visit");
    assert_eq!(
        rollout.pause(at(MIN), "again".into()).unwrap_err().to_string(),
        "cannot pause rollout 1: it is paused"
    );
    for device in rollout.plan()[0].clone() {
        healthy(&mut fleet, &device);
    }
    assert_eq!(rollout.step(at(5 * DAY), &fleet), vec![], "paused: not even verdicts");
    assert_eq!(rollout.resume(at(5 * DAY)).unwrap(), vec![Action::Resumed]);
    let actions = rollout.step(at(5 * DAY + MIN), &fleet);
    assert!(matches!(actions[0], Action::DeviceHealthy { .. }));
    assert!(matches!(actions[1], Action::WaveCompleted { wave: 1, .. }));
    assert_eq!(rollout.abort(at(5 * DAY + 2 * MIN)).unwrap(), vec![Action::Aborted]);
    assert_eq!(rollout.step(at(6 * DAY), &fleet), vec![]);
    assert_eq!(
        rollout.resume(at(6 * DAY)).unwrap_err().to_string(),
        "cannot resume rollout 1: it is aborted"
    );
    assert!(rollout.abort(at(6 * DAY)).is_err());
    assert!(rollout.pause(at(6 * DAY), "x".into()).is_err());
}

#[test]
fn resuming_restarts_the_device_clocks() {
    let mut fleet = fleet(1);
    fleet.get_mut(&id(0)).unwrap().online = false;
    let mut rollout = Rollout::new(spec("100%"), targets(1), at(0), 5).unwrap();
    rollout.step(at(0), &fleet);
    rollout.step(at(MIN), &fleet);
    rollout.pause(at(2 * MIN), "weekend".into()).unwrap();
    rollout.resume(at(3 * DAY)).unwrap();
    assert_eq!(rollout.step(at(3 * DAY + 59 * MIN), &fleet), vec![], "a fresh hour after resuming");
    assert!(matches!(rollout.step(at(3 * DAY + 61 * MIN), &fleet)[0], Action::DeviceFailed { .. }));
}

#[test]
fn manual_rollback_sends_targeted_devices_back_even_after_completion() {
    let mut fleet = fleet(3);
    let mut s = spec("100%");
    s.bake = Duration::ZERO;
    let mut rollout = Rollout::new(s, targets(3), at(0), 5).unwrap();
    let actions = rollout.step(at(0), &fleet);
    all_healthy(&mut fleet, &actions);
    assert_eq!(rollout.step(at(MIN), &fleet).last(), Some(&Action::Completed));
    let actions = rollout.rollback(at(DAY), &fleet).unwrap();
    assert_eq!(actions[0], Action::RollbackStarted { reason: RollbackReason::Manual });
    assert_eq!(
        actions[1..].to_vec(),
        (0..3)
            .map(|i| Action::Rollback { device: id(i), to: Some(rel("app@1")) })
            .collect::<Vec<_>>()
    );
    assert_eq!(rollout.status().waves[0].counts.rolled_back, 3);
    assert_eq!(
        rollout.rollback(at(DAY), &fleet).unwrap_err().to_string(),
        "cannot roll back rollout 1: it is rolled back"
    );
}

#[test]
fn a_closed_window_waits_and_an_open_one_proceeds() {
    let mut fleet = fleet(3);
    let mut s = spec("100%");
    s.max_parallel = Some(1);
    s.window = Some(MaintenanceWindow::parse("Mon-Fri 22:00-05:00 +01:00").unwrap());
    let mut rollout = Rollout::new(s, targets(3), at(12 * HOUR), 5).unwrap();
    assert_eq!(rollout.step(at(12 * HOUR), &fleet), vec![]);
    assert_eq!(rollout.step(at(20 * HOUR + 59 * MIN), &fleet), vec![]);
    assert_eq!(rollout.status().waves[0].phase, WavePhase::Waiting);
    let actions = rollout.step(at(21 * HOUR), &fleet);
    assert_eq!(actions[0], Action::WaveStarted { wave: 1, devices: 3 });
    let first = targeted(&actions);
    assert_eq!(first.len(), 1);
    // The first device finishes only after the window closed (04:00 UTC): nothing new goes out.
    healthy(&mut fleet, &first[0]);
    let actions = rollout.step(at(DAY + 4 * HOUR + 10 * MIN), &fleet);
    assert_eq!(actions, vec![Action::DeviceHealthy { device: first[0].clone() }]);
    assert_eq!(rollout.step(at(DAY + 12 * HOUR), &fleet), vec![]);
    let actions = rollout.step(at(DAY + 21 * HOUR), &fleet);
    assert_eq!(targeted(&actions).len(), 1, "targeting resumes when the window opens");
}

#[test]
fn a_healthy_device_that_fails_while_its_wave_bakes_counts_as_failed() {
    let mut fleet = fleet(3);
    let mut rollout = Rollout::new(spec("1,100%"), targets(3), at(0), 5).unwrap();
    let canary = targeted(&rollout.step(at(0), &fleet));
    healthy(&mut fleet, &canary[0]);
    rollout.step(at(MIN), &fleet);
    fleet.get_mut(&canary[0]).unwrap().outcome = Some(Outcome::RolledBack { reason: "oom".into() });
    let actions = rollout.step(at(5 * MIN), &fleet);
    assert_eq!(
        actions,
        vec![
            Action::DeviceFailed {
                device: canary[0].clone(),
                reason: FailureReason::Regressed { reason: "oom".into() }
            },
            Action::Paused { reason: PauseReason::Threshold { failed: 1, allowed: 0 } },
        ]
    );
}

#[test]
fn the_bake_gate_rechecks_every_healthy_device_of_the_wave() {
    let n = WATCH_PER_STEP * 3;
    let mut fleet = fleet(n);
    let mut s = spec("100%");
    s.failure_threshold = Threshold::Count(0);
    let mut rollout = Rollout::new(s, targets(n), at(0), 5).unwrap();
    let actions = rollout.step(at(0), &fleet);
    all_healthy(&mut fleet, &actions);
    rollout.step(at(MIN), &fleet);
    // One device regresses; with no step in between, only the gate sees it.
    let last = rollout.plan()[0].last().unwrap().clone();
    fleet.get_mut(&last).unwrap().outcome = Some(Outcome::Failed { reason: "gone".into() });
    let actions = rollout.step(at(11 * MIN), &fleet);
    assert!(actions.contains(&Action::DeviceFailed {
        device: last,
        reason: FailureReason::Regressed { reason: "gone".into() }
    }));
    assert!(matches!(rollout.state(), RunState::Paused { .. }));
}

#[test]
fn a_device_the_registry_no_longer_knows_is_skipped_at_its_turn() {
    let mut fleet = fleet(2);
    fleet.remove(&id(1));
    let mut rollout = Rollout::new(spec("100%"), targets(2), at(0), 5).unwrap();
    let actions = rollout.step(at(0), &fleet);
    assert!(actions.contains(&Action::DeviceSkipped { device: id(1), reason: SkipReason::Unknown }));
    assert_eq!(targeted(&actions), vec![id(0)]);
}

#[test]
fn promoting_ends_a_bake_but_never_skips_devices_or_the_gate() {
    let mut fleet = fleet(5);
    let mut rollout = Rollout::new(spec("1,100%"), targets(5), at(0), 3).unwrap();
    let wave1 = rollout.step(at(0), &fleet);
    let refused = rollout.promote(at(MIN)).unwrap_err().to_string();
    assert_eq!(refused, "cannot promote rollout 1: it is running wave 1, which is not baking yet");
    all_healthy(&mut fleet, &wave1);
    rollout.step(at(MIN), &fleet);
    assert_eq!(rollout.status().bake_until, Some(at(11 * MIN)));
    assert_eq!(rollout.promote(at(2 * MIN)).unwrap(), vec![Action::Promoted { wave: 1 }]);
    assert_eq!(rollout.status().bake_until, Some(at(2 * MIN)), "the bake ends now");
    // The gate still applies: a device that regressed meanwhile fails it.
    let canary = targeted(&wave1)[0].clone();
    fleet.get_mut(&canary).unwrap().outcome = Some(Outcome::Failed { reason: "oom".into() });
    let actions = rollout.step(at(2 * MIN), &fleet);
    assert!(matches!(actions.last(), Some(Action::Paused { .. })), "{actions:?}");
    assert_eq!(
        rollout.promote(at(3 * MIN)).unwrap_err().to_string(),
        "cannot promote rollout 1: it is paused"
    );
}

#[test]
fn promoting_a_healthy_baking_wave_starts_the_next_one_at_the_next_step() {
    let mut fleet = fleet(5);
    let mut rollout = Rollout::new(spec("1,100%"), targets(5), at(0), 3).unwrap();
    let wave1 = rollout.step(at(0), &fleet);
    all_healthy(&mut fleet, &wave1);
    rollout.step(at(MIN), &fleet);
    rollout.promote(at(2 * MIN)).unwrap();
    let actions = rollout.step(at(2 * MIN), &fleet);
    assert_eq!(actions[0], Action::WaveStarted { wave: 2, devices: 4 });
}

#[test]
fn retrying_failed_devices_targets_them_again_and_lifts_a_threshold_pause() {
    let mut fleet = fleet(10);
    let mut s = spec("100%");
    s.failure_threshold = Threshold::Count(1);
    let mut rollout = Rollout::new(s, targets(10), at(0), 3).unwrap();
    let all = targeted(&rollout.step(at(0), &fleet));
    for device in &all[..2] {
        fleet.get_mut(device).unwrap().outcome =
            Some(Outcome::Failed { reason: "disk full".into() });
    }
    assert!(matches!(rollout.step(at(MIN), &fleet).last(), Some(Action::Paused { .. })));
    assert_eq!(rollout.status().failed, 2);

    // One of the two is pinned by now: only the other is retried.
    fleet.get_mut(&all[1]).unwrap().pinned = true;
    let actions = rollout.retry_failed(at(2 * MIN), &fleet).unwrap();
    assert_eq!(
        actions,
        vec![
            Action::Retried { devices: 1 },
            Action::Target { device: all[0].clone(), release: rel("app@2") }
        ]
    );
    assert_eq!(rollout.state(), &RunState::Running);
    assert_eq!(rollout.status().failed, 1, "a retried device no longer counts as failed");
    // The new desired state supersedes the old outcome; this time it works.
    healthy(&mut fleet, &all[0]);
    for device in &all[2..] {
        healthy(&mut fleet, device);
    }
    let actions = rollout.step(at(3 * MIN), &fleet);
    assert!(actions.contains(&Action::DeviceHealthy { device: all[0].clone() }), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::Paused { .. })), "{actions:?}");
}

#[test]
fn retrying_reopens_a_completed_rollout_until_the_retried_devices_have_their_verdict() {
    let mut fleet = fleet(4);
    let mut s = spec("100%");
    s.failure_threshold = Threshold::Count(1);
    let mut rollout = Rollout::new(s, targets(4), at(0), 3).unwrap();
    let all = targeted(&rollout.step(at(0), &fleet));
    fleet.get_mut(&all[0]).unwrap().outcome = Some(Outcome::Failed { reason: "x".into() });
    for device in &all[1..] {
        healthy(&mut fleet, device);
    }
    rollout.step(at(MIN), &fleet);
    rollout.step(at(20 * MIN), &fleet);
    assert!(matches!(rollout.state(), RunState::Completed { .. }), "one failure is allowed");

    let actions = rollout.retry_failed(at(21 * MIN), &fleet).unwrap();
    assert_eq!(targeted(&actions), vec![all[0].clone()]);
    fleet.get_mut(&all[0]).unwrap().outcome = None;
    assert_eq!(rollout.step(at(22 * MIN), &fleet), vec![], "still waiting for its verdict");
    assert_eq!(rollout.state(), &RunState::Running);
    healthy(&mut fleet, &all[0]);
    let actions = rollout.step(at(23 * MIN), &fleet);
    assert_eq!(actions, vec![Action::DeviceHealthy { device: all[0].clone() }, Action::Completed]);
    assert_eq!(rollout.status().failed, 0);
}

#[test]
fn retrying_is_refused_when_it_cannot_mean_anything() {
    let fleet = fleet(3);
    let mut rollout = Rollout::new(spec("100%"), targets(3), at(0), 3).unwrap();
    rollout.step(at(0), &fleet);
    assert_eq!(
        rollout.retry_failed(at(MIN), &fleet).unwrap_err().to_string(),
        "cannot retry the failed devices of rollout 1: it is running with no failed device that is not pinned"
    );
    rollout.pause(at(MIN), "lunch".into()).unwrap();
    assert_eq!(
        rollout.retry_failed(at(2 * MIN), &fleet).unwrap_err().to_string(),
        "cannot retry the failed devices of rollout 1: it is paused"
    );
    rollout.abort(at(3 * MIN)).unwrap();
    assert!(rollout.retry_failed(at(4 * MIN), &fleet).is_err());
}
