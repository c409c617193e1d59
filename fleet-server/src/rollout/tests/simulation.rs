//! Long and random runs: a week-long rollout to 10,000 devices, and random scenarios checked
//! against the invariants in the module documentation.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use crate::rollout::engine::splitmix64;

use super::*;

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
