//! The engine's tests: scenarios through [`Rollout::step`], the spec and window grammars, and
//! random runs checked against the invariants in the module documentation.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use fleet_proto::report::UpdatePhase;
use fleet_proto::{DeviceId, ReleaseId, UnixMillis};

use super::engine::splitmix64;
use super::observe::human;
use super::*;
use crate::devices::DeviceRecord;

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
/// 2024-01-01 00:00 UTC, a Monday.
const MONDAY: u64 = 1_704_067_200_000;

type Observed = BTreeMap<DeviceId, DeviceObservation>;

fn id(n: usize) -> DeviceId {
    DeviceId::new(format!("d{n:05}")).unwrap()
}

fn index_of(device: &DeviceId) -> usize {
    device.as_str()[1..].parse().unwrap()
}

fn rel(s: &str) -> ReleaseId {
    ReleaseId::new(s).unwrap()
}

fn at(ms: u64) -> UnixMillis {
    UnixMillis(MONDAY + ms)
}

fn spec(waves: &str) -> RolloutSpec {
    RolloutSpec {
        id: RolloutId(1),
        release: rel("app@2"),
        waves: parse_waves(waves).unwrap(),
        bake: Duration::from_secs(600),
        max_parallel: None,
        failure_threshold: Threshold::Count(0),
        on_failure: OnFailure::Pause,
        device_timeout: Duration::from_secs(3600),
        update_deadline: Duration::from_secs(1800),
        window: None,
        stagger: Duration::ZERO,
    }
}

fn targets(n: usize) -> Vec<TargetDevice> {
    (0..n)
        .map(|i| TargetDevice { id: id(i), pinned: false, previous_release: Some(rel("app@1")) })
        .collect()
}

fn fleet(n: usize) -> Observed {
    (0..n)
        .map(|i| {
            let obs = DeviceObservation {
                online: true,
                release: Some(rel("app@1")),
                outcome: None,
                deferred: false,
                pinned: false,
                last_seen: at(0),
            };
            (id(i), obs)
        })
        .collect()
}

fn healthy(fleet: &mut Observed, device: &DeviceId) {
    let obs = fleet.get_mut(device).unwrap();
    obs.online = true;
    obs.release = Some(rel("app@2"));
    obs.outcome = Some(Outcome::Healthy);
}

fn targeted(actions: &[Action]) -> Vec<DeviceId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Target { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect()
}

/// Every device the actions targeted reports the release applied and healthy.
fn all_healthy(fleet: &mut Observed, actions: &[Action]) {
    for device in targeted(actions) {
        healthy(fleet, &device);
    }
}

fn updating_now(rollout: &Rollout) -> usize {
    rollout.status().waves.iter().map(|w| w.counts.updating).sum()
}

#[test]
fn parse_waves_accepts_counts_and_percentages() {
    use WaveSize::{Count, Percent};
    assert_eq!(
        parse_waves("1,10%,50%,100%").unwrap(),
        vec![Count(1), Percent(10), Percent(50), Percent(100)]
    );
    assert_eq!(parse_waves(" 5 , 20 ,100% ").unwrap(), vec![Count(5), Count(20), Percent(100)]);
    assert_eq!(parse_waves("100%").unwrap(), vec![Percent(100)]);
}

#[test]
fn parse_waves_refuses_bad_input_with_a_reason() {
    let refused = |text: &str| parse_waves(text).unwrap_err().to_string();
    assert_eq!(refused(""), "no waves given: write them like 1,10%,50%,100%");
    assert_eq!(refused("0,100%"), "wave \"0\": 0 devices would update no device");
    assert_eq!(refused("0%,100%"), "wave \"0%\": 0% would update no device");
    assert_eq!(refused("50%,101%"), "wave \"101%\": more than 100% of the devices");
    assert_eq!(
        refused("10%,5%,100%"),
        "waves are cumulative and must grow: 5% after 10% adds no device"
    );
    assert_eq!(refused("5,5,100%"), "waves are cumulative and must grow: 5 after 5 adds no device");
    assert_eq!(
        refused("1,50%"),
        "the last wave is 50%, but it must be 100% so the rollout reaches every device; end the list with 100%"
    );
    assert!(refused("1,,100%").contains("empty entry"), "{}", refused("1,,100%"));
    assert!(refused("1,100%,").contains("trailing comma"));
    assert!(refused("one,100%").contains("a device count like 5 or a percentage like 10%"));
    assert!(refused("1.5%,100%").contains("whole number"));
}

#[test]
fn thresholds_and_failure_policies_parse() {
    assert_eq!("5%".parse::<Threshold>().unwrap(), Threshold::Percent(5));
    assert_eq!("3".parse::<Threshold>().unwrap(), Threshold::Count(3));
    assert!("101%".parse::<Threshold>().unwrap_err().to_string().contains("more than 100%"));
    assert!("many".parse::<Threshold>().is_err());
    assert_eq!("Rollback".parse::<OnFailure>().unwrap(), OnFailure::Rollback);
    assert_eq!(
        "retry".parse::<OnFailure>().unwrap_err().to_string(),
        "on failure \"retry\": expected pause or rollback"
    );
}

#[test]
fn windows_parse_and_print_back() {
    for (text, printed) in [
        ("Mon-Fri 22:00-05:00 +01:00", "Mon-Fri 22:00-05:00 +01:00"),
        ("daily 00:00-24:00 UTC", "daily 00:00-24:00 +00:00"),
        ("sat,SUN 10:00-12:30 -05:30", "Sat-Sun 10:00-12:30 -05:30"),
        ("Fri-Mon 01:00-02:00 Z", "Mon,Fri-Sun 01:00-02:00 +00:00"),
        ("Mon,Wed 08:00-09:00 +02", "Mon,Wed 08:00-09:00 +02:00"),
    ] {
        let window: MaintenanceWindow = text.parse().unwrap();
        assert_eq!(window.to_string(), printed);
        let json = serde_json::to_string(&window).unwrap();
        assert_eq!(json, format!("\"{printed}\""));
        assert_eq!(serde_json::from_str::<MaintenanceWindow>(&json).unwrap(), window);
    }
}

#[test]
fn windows_refuse_unknown_zones_and_bad_input() {
    let refused = |text: &str| MaintenanceWindow::parse(text).unwrap_err().to_string();
    let named = refused("Mon-Fri 22:00-05:00 Europe/Atlantis");
    assert!(named.contains("not in the tz database"), "{named}");
    assert!(named.contains("such as Europe/Berlin"), "{named}");
    assert!(refused("Mon-Fri 22:00-05:00").contains("missing the UTC offset"));
    assert!(refused("Mon-Fry 22:00-05:00 +01:00").contains("day \"Fry\""));
    assert!(refused("Mon 25:00-05:00 +01:00").contains("time \"25:00\""));
    assert!(refused("Mon 24:00-05:00 +01:00").contains("time \"24:00\""));
    assert!(refused("Mon 10:00-10:00 +01:00").contains("empty window"));
    assert!(refused("Mon 10:00 +01:00").contains("expected HH:MM-HH:MM"));
    assert!(refused("Mon 10:00-11:00 +15:00").contains("UTC offset \"+15:00\""));
    assert!(refused("").contains("expected days, times and a UTC offset"));
    assert!(serde_json::from_str::<MaintenanceWindow>("\"Mon 10:00-10:00 Z\"").is_err());
}

#[test]
fn a_named_zone_follows_daylight_saving_time() {
    let w = MaintenanceWindow::parse("Mon-Fri 22:00-05:00 Europe/Berlin").unwrap();
    assert_eq!(w.to_string(), "Mon-Fri 22:00-05:00 Europe/Berlin");
    let utc = |y: i16, mo: i8, d: i8, h: i8, mi: i8| {
        let ts =
            jiff::civil::datetime(y, mo, d, h, mi, 0, 0).to_zoned(jiff::tz::TimeZone::UTC).unwrap();
        UnixMillis(u64::try_from(ts.timestamp().as_millisecond()).unwrap())
    };
    // Winter (UTC+1): Monday 2026-01-05 22:00 in Berlin is 21:00 UTC.
    assert!(!w.is_open(utc(2026, 1, 5, 20, 59)));
    assert!(w.is_open(utc(2026, 1, 5, 21, 0)));
    // Summer (UTC+2): Monday 2026-07-06 22:00 in Berlin is 20:00 UTC.
    assert!(w.is_open(utc(2026, 7, 6, 20, 0)));
    assert!(!w.is_open(utc(2026, 7, 6, 19, 59)));
    assert!(!w.is_open(utc(2026, 7, 7, 3, 0)), "Tuesday 05:00 summer time");
    assert_eq!(w.next_open(utc(2026, 7, 6, 12, 0)), utc(2026, 7, 6, 20, 0));
    let back: MaintenanceWindow =
        serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
    assert_eq!(back, w);
}

#[test]
fn a_window_crossing_midnight_belongs_to_the_day_it_starts() {
    // 22:00-05:00 at +01:00 is 21:00-04:00 UTC.
    let w = MaintenanceWindow::parse("Mon-Fri 22:00-05:00 +01:00").unwrap();
    assert!(!w.is_open(at(20 * HOUR + 59 * MIN)), "Monday 21:59 local");
    assert!(w.is_open(at(21 * HOUR)), "Monday 22:00 local");
    assert!(w.is_open(at(DAY + 3 * HOUR + 59 * MIN)), "Tuesday 04:59 local, Monday's window");
    assert!(!w.is_open(at(DAY + 4 * HOUR)), "Tuesday 05:00 local");
    assert!(!w.is_open(at(12 * HOUR)), "Monday noon");
    assert!(w.is_open(at(5 * DAY + 3 * HOUR)), "Saturday 04:00 local, Friday's window");
    assert!(!w.is_open(at(5 * DAY + 21 * HOUR)), "Saturday 22:00 local");
    assert!(!w.is_open(at(30 * MIN)), "Monday 01:30 local would be Sunday's window");
    assert!(!w.is_open(UnixMillis(MONDAY - 30 * MIN)), "Monday 00:30 local");
}

#[test]
fn next_open_finds_the_next_start() {
    let w = MaintenanceWindow::parse("Mon-Fri 22:00-05:00 +01:00").unwrap();
    assert_eq!(w.next_open(at(12 * HOUR)), at(21 * HOUR));
    assert_eq!(w.next_open(at(22 * HOUR)), at(22 * HOUR), "open now");
    assert_eq!(w.next_open(at(5 * DAY + 12 * HOUR)), at(7 * DAY + 21 * HOUR), "Saturday → Monday");
    let sunday = MaintenanceWindow::parse("Sun 10:00-11:00 -05:00").unwrap();
    assert_eq!(sunday.next_open(at(0)), at(6 * DAY + 15 * HOUR));
}

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

/// A fleet of 10,000 simulated devices through four waves, nightly maintenance windows,
/// 24-hour bakes, offline, deferred and failing devices: Monday noon to Saturday morning.
#[test]
fn a_week_long_rollout_to_10000_devices_simulates_in_well_under_a_second() {
    const N: usize = 10_000;
    // What each device does once targeted, by a hash of its index (per mille).
    let behaviour = |i: usize| splitmix64(i as u64) % 1000;
    const HEALTHY: u8 = 0;
    const FAIL: u8 = 1;
    const ONLINE: u8 = 2;
    const UNDEFER: u8 = 3;

    let clock = std::time::Instant::now();
    let mut s = spec("1,10%,50%,100%");
    s.bake = Duration::from_secs(24 * 3600);
    s.max_parallel = Some(500);
    s.stagger = Duration::from_secs(30 * 60);
    s.device_timeout = Duration::from_secs(4 * 3600);
    s.update_deadline = Duration::from_secs(3600);
    s.failure_threshold = Threshold::Percent(2);
    s.window = Some(MaintenanceWindow::parse("Mon-Fri 22:00-05:00 +01:00").unwrap());
    let ids: Vec<DeviceId> = (0..N).map(id).collect();
    let targets: Vec<TargetDevice> = (0..N)
        .map(|i| TargetDevice {
            id: ids[i].clone(),
            pinned: i % 500 == 250,
            previous_release: Some(rel("app@1")),
        })
        .collect();
    let start = at(12 * HOUR);
    let mut fleet = fleet(N);
    for (i, device) in ids.iter().enumerate() {
        let obs = fleet.get_mut(device).unwrap();
        obs.pinned = i % 500 == 250;
        obs.online = behaviour(i) >= 2;
        obs.last_seen = start;
    }
    let mut rollout = Rollout::new(s, targets, start, 42).unwrap();
    let mut events: BinaryHeap<Reverse<(u64, usize, u8)>> = BinaryHeap::new();
    let mut canary = None;
    let mut now = start;
    let mut steps = 0;
    let mut actions_seen = 0;
    let mut in_step = Duration::ZERO;
    while rollout.state() == &RunState::Running {
        now = UnixMillis(now.0 + 5 * MIN);
        steps += 1;
        assert!(now.0 < start.0 + 14 * DAY, "not done within two weeks: {:#?}", rollout.status());
        while let Some(&Reverse((when, i, what))) = events.peek() {
            if when > now.0 {
                break;
            }
            events.pop();
            let obs = fleet.get_mut(&ids[i]).unwrap();
            obs.last_seen = UnixMillis(when);
            match what {
                HEALTHY => healthy(&mut fleet, &ids[i]),
                FAIL => obs.outcome = Some(Outcome::Failed { reason: "pull failed".into() }),
                ONLINE => {
                    obs.online = true;
                    events.push(Reverse((when + 5 * MIN, i, HEALTHY)));
                }
                _ => {
                    obs.deferred = false;
                    events.push(Reverse((when + 5 * MIN, i, HEALTHY)));
                }
            }
        }
        let t = std::time::Instant::now();
        let actions = rollout.step(now, &fleet);
        in_step += t.elapsed();
        actions_seen += actions.len();
        for device in targeted(&actions) {
            let i = index_of(&device);
            let b = behaviour(i);
            let (delay, what) = match b {
                _ if canary.is_none() => {
                    canary = Some(i);
                    (10 * MIN, HEALTHY)
                }
                0 => continue, // never comes back
                1 => (2 * HOUR, ONLINE),
                2..=4 => (10 * MIN, FAIL),
                5..=14 => {
                    fleet.get_mut(&device).unwrap().deferred = true;
                    (30 * MIN, UNDEFER)
                }
                _ => ((3 + b % 17) * MIN, HEALTHY),
            };
            events.push(Reverse((now.0 + delay, i, what)));
        }
    }
    let elapsed = clock.elapsed();
    let status = rollout.status();
    assert_eq!(rollout.state(), &RunState::Completed { at: now }, "{status:#?}");
    let eligible: Vec<usize> = (0..N).filter(|i| i % 500 != 250).collect();
    let expected_failed = eligible
        .iter()
        .filter(|&&i| matches!(behaviour(i), 0 | 2..=4) && Some(i) != canary)
        .count();
    assert_eq!(status.failed, expected_failed);
    let healthy: usize = status.waves.iter().map(|w| w.counts.healthy).sum();
    assert_eq!(healthy + expected_failed, eligible.len());
    assert_eq!(status.skipped_pinned.len(), 20);
    println!(
        "simulated {:.1} days of a {N}-device rollout ({} waves, {steps} steps, {actions_seen} actions, {expected_failed} failed) in {elapsed:?}, {in_step:?} of it in Rollout::step",
        (now.0 - start.0) as f64 / DAY as f64,
        status.waves.len(),
    );
    // Generous: the point is milliseconds, but the build machine is shared.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

/// A tiny xorshift: the property scenarios must not depend on a crate's generator.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(1000) < percent * 10
    }
}

/// One random scenario, checking the invariants after every call; returns its audit log.
fn random_scenario(seed: u64) -> Vec<String> {
    let mut rng = XorShift(splitmix64(seed) | 1);
    let n = 1 + rng.below(30) as usize;
    let waves = ["100%", "1,100%", "1,10%,50%,100%", "2,5,100%", "25%,50%,75%,100%", "3,40%,100%"];
    let windows = ["daily 22:00-05:00 +00:00", "Mon-Fri 08:00-17:00 +02:00", "Sat 00:00-24:00 Z"];
    let mut s = spec(waves[rng.below(waves.len() as u64) as usize]);
    s.max_parallel = rng.chance(60).then(|| 1 + rng.below(5) as u32);
    s.failure_threshold = if rng.chance(50) {
        Threshold::Count(rng.below(4) as u32)
    } else {
        Threshold::Percent(rng.below(60) as u8)
    };
    s.on_failure = if rng.chance(50) { OnFailure::Pause } else { OnFailure::Rollback };
    s.bake = Duration::from_millis(rng.below(30) * MIN);
    s.device_timeout = Duration::from_millis((10 + rng.below(50)) * MIN);
    s.update_deadline = Duration::from_millis((5 + rng.below(35)) * MIN);
    s.stagger = Duration::from_millis(rng.below(20) * MIN);
    s.window =
        rng.chance(30).then(|| MaintenanceWindow::parse(windows[rng.below(3) as usize]).unwrap());
    let max_parallel = s.max_parallel.map_or(usize::MAX, |m| m as usize);
    let mut targets = targets(n);
    let mut fleet = fleet(n);
    for t in &mut targets {
        t.pinned = rng.chance(10);
        if rng.chance(30) {
            t.previous_release = None;
        }
        let obs = fleet.get_mut(&t.id).unwrap();
        obs.pinned = t.pinned;
        obs.online = rng.chance(90);
    }
    let pinned_up_front: BTreeSet<DeviceId> =
        targets.iter().filter(|t| t.pinned).map(|t| t.id.clone()).collect();
    let mut now = at(rng.below(7 * DAY));
    let mut rollout = match Rollout::new(s, targets, now, seed) {
        Ok(r) => r,
        Err(SpecError::AllPinned { .. }) => return vec!["final: all pinned".into()],
        Err(e) => panic!("seed {seed}: {e}"),
    };
    let mut log = Vec::new();
    let mut was_targeted = BTreeSet::new();
    let mut rolled_back = BTreeSet::new();
    for round in 0..400 {
        now = UnixMillis(now.0 + rng.below(15 * MIN) + 1);
        for (device, obs) in fleet.iter_mut() {
            if rng.chance(3) && !pinned_up_front.contains(device) {
                obs.pinned = !obs.pinned;
            }
            if rng.chance(5) {
                obs.online = !obs.online;
            }
            if obs.online {
                obs.last_seen = now;
            }
            if rng.chance(4) {
                obs.deferred = !obs.deferred;
            }
            if was_targeted.contains(device) {
                match &obs.outcome {
                    None if rng.chance(15) => {
                        obs.release = Some(rel("app@2"));
                        obs.outcome = Some(Outcome::Healthy);
                    }
                    None if rng.chance(3) => {
                        obs.outcome = Some(Outcome::Failed { reason: "f".into() })
                    }
                    None if rng.chance(2) => {
                        obs.outcome = Some(Outcome::RolledBack { reason: "r".into() })
                    }
                    Some(Outcome::Healthy) if rng.chance(1) => {
                        obs.outcome = Some(Outcome::RolledBack { reason: "late".into() })
                    }
                    _ => {}
                }
            }
        }
        let running_before = rollout.state() == &RunState::Running;
        let actions = match rng.below(10_000) {
            0..=199 => rollout.pause(now, "p".into()).unwrap_or_default(),
            200..=599 => rollout.resume(now).unwrap_or_default(),
            600..=604 => rollout.abort(now).unwrap_or_default(),
            605..=609 => rollout.rollback(now, &fleet).unwrap_or_default(),
            _ => {
                let actions = rollout.step(now, &fleet);
                assert!(
                    running_before || actions.is_empty(),
                    "seed {seed}: {actions:?} while not running"
                );
                actions
            }
        };
        for action in &actions {
            match action {
                Action::Target { device, release } => {
                    assert_eq!(release, &rel("app@2"));
                    assert!(!fleet[device].pinned, "seed {seed}: pinned {device} targeted");
                    assert!(!pinned_up_front.contains(device));
                    assert!(
                        was_targeted.insert(device.clone()),
                        "seed {seed}: {device} targeted twice"
                    );
                }
                Action::Rollback { device, .. } => {
                    assert!(!fleet[device].pinned, "seed {seed}: pinned {device} rolled back");
                    assert!(was_targeted.contains(device), "seed {seed}: {device} never targeted");
                    assert!(
                        rolled_back.insert(device.clone()),
                        "seed {seed}: {device} rolled back twice"
                    );
                }
                _ => {}
            }
            log.push(format!("{} {action}", now.0));
        }
        let status = rollout.status();
        assert!(updating_now(&rollout) <= max_parallel, "seed {seed}: {status:#?}");
        for wave in &status.waves {
            assert_eq!(wave.counts.total(), wave.devices, "seed {seed}");
        }
        if matches!(rollout.state(), RunState::Completed { .. }) {
            assert!(status.waves.iter().all(|w| w.phase == WavePhase::Done));
            assert!(status.waves.iter().all(|w| w.counts.pending + w.counts.updating == 0));
        }
        if round == 100 {
            let json = serde_json::to_string(&rollout).unwrap();
            assert_eq!(serde_json::from_str::<Rollout>(&json).unwrap(), rollout);
        }
    }
    log.push(format!("final: {}", rollout.state().name()));
    log
}

#[test]
fn random_scenarios_never_target_a_pinned_device_nor_any_device_twice() {
    let mut endings = BTreeMap::new();
    for seed in 0..300 {
        let log = random_scenario(seed);
        *endings.entry(log.last().cloned().unwrap_or_default()).or_insert(0) += 1;
        if seed % 50 == 0 {
            assert_eq!(random_scenario(seed), log, "seed {seed} is not deterministic");
        }
    }
    println!("random scenarios ended with: {endings:?}");
}
