//! The engine: [`Rollout`], which plans the waves and moves every device through them, one
//! [`Rollout::step`] at a time. The rules it keeps are in the module documentation.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_proto::{DeviceId, ReleaseId, UnixMillis};
use serde::{Deserialize, Serialize};

use super::error::SpecError;
use super::observe::{FailureReason, Observe, Outcome, SkipReason, TargetDevice};
use super::spec::{OnFailure, RolloutSpec, Threshold};
use super::state::{
    Action, CommandError, DeviceState, PauseReason, Progress, RollbackReason, RolloutStatus,
    RunState, WaitCause, WaveCounts, WavePhase, WaveStatus,
};

/// How many healthy devices of the current wave are re-checked per step (all of them at the
/// bake gate). Bounds a step's cost by `max_parallel` plus this, not by the wave's size.
pub const WATCH_PER_STEP: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DeviceEntry {
    id: DeviceId,
    previous: Option<ReleaseId>,
    wave: usize,
    /// Stagger offset inside the wave.
    offset_ms: u64,
    /// As last observed.
    pinned: bool,
    state: DeviceState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Wave {
    /// Indices into `Rollout::devices`, in target order (stagger offset, then id).
    members: Vec<usize>,
    /// `members[..cursor]` have left `Pending`; the rest are pending.
    cursor: usize,
    /// Next position of the healthy re-check rotation.
    watch: usize,
    phase: WavePhase,
    counts: WaveCounts,
}

/// One rollout: its plan and where every device stands. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    spec: RolloutSpec,
    seed: u64,
    created_at: UnixMillis,
    state: RunState,
    /// Eligible devices, sorted by id.
    devices: Vec<DeviceEntry>,
    skipped_pinned: Vec<DeviceId>,
    waves: Vec<Wave>,
    /// Index of the wave in progress; `waves.len()` when all are done.
    current: usize,
    /// Indices of devices in `Updating`.
    updating: BTreeSet<usize>,
    /// Devices that ever failed.
    failed: usize,
    /// Failures an operator accepted by resuming after a threshold pause.
    accepted_failures: usize,
}

impl Rollout {
    /// Plans a rollout of `spec` over `targets` (any order) at `now`. Pinned targets are listed
    /// as skipped; the others are shuffled by `seed` into the waves.
    pub fn new(
        spec: RolloutSpec,
        mut targets: Vec<TargetDevice>,
        now: UnixMillis,
        seed: u64,
    ) -> Result<Rollout, SpecError> {
        spec.validate()?;
        if targets.is_empty() {
            return Err(SpecError::NoTargets);
        }
        targets.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(pair) = targets.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(SpecError::DuplicateTarget { device: pair[0].id.clone() });
        }
        let count = targets.len();
        let (pinned, eligible): (Vec<_>, Vec<_>) = targets.into_iter().partition(|t| t.pinned);
        if eligible.is_empty() {
            return Err(SpecError::AllPinned { count });
        }
        let stagger_ms = millis(spec.stagger);
        let mut devices: Vec<DeviceEntry> = eligible
            .into_iter()
            .map(|t| DeviceEntry {
                offset_ms: if stagger_ms == 0 {
                    0
                } else {
                    splitmix64(seed ^ fnv1a(t.id.as_str())) % stagger_ms
                },
                id: t.id,
                previous: t.previous_release,
                wave: 0,
                pinned: false,
                state: DeviceState::Pending,
            })
            .collect();
        let mut order: Vec<usize> = (0..devices.len()).collect();
        let mut rng = seed;
        for i in (1..order.len()).rev() {
            rng = splitmix64(rng);
            let j = usize::try_from(rng % (i as u64 + 1)).unwrap_or(0);
            order.swap(i, j);
        }
        let n = devices.len();
        let mut waves = Vec::new();
        let mut done = 0;
        for (i, size) in spec.waves.iter().enumerate() {
            let upto = if i + 1 == spec.waves.len() { n } else { size.cumulative(n).max(done) };
            if upto == done {
                continue;
            }
            let mut members = order[done..upto].to_vec();
            members.sort_by_key(|&m| (devices[m].offset_ms, m));
            for &m in &members {
                devices[m].wave = waves.len();
            }
            let counts = WaveCounts { pending: members.len(), ..WaveCounts::default() };
            waves.push(Wave { members, cursor: 0, watch: 0, phase: WavePhase::Waiting, counts });
            done = upto;
        }
        Ok(Rollout {
            spec,
            seed,
            created_at: now,
            state: RunState::Running,
            devices,
            skipped_pinned: pinned.into_iter().map(|t| t.id).collect(),
            waves,
            current: 0,
            updating: BTreeSet::new(),
            failed: 0,
            accepted_failures: 0,
        })
    }

    /// The definition.
    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    /// Where the rollout stands.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The seed the plan came from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// When it was created.
    pub fn created_at(&self) -> UnixMillis {
        self.created_at
    }

    /// The devices of each wave in the order they are targeted, for `rollout plan`.
    pub fn plan(&self) -> Vec<Vec<DeviceId>> {
        self.waves
            .iter()
            .map(|w| w.members.iter().map(|&m| self.devices[m].id.clone()).collect())
            .collect()
    }

    /// Every device in a wave (not those skipped as pinned at creation), sorted by id.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.devices.iter().map(|d| &d.id)
    }

    /// Where one device stands; `None` if it is in no wave.
    pub fn device_state(&self, id: &DeviceId) -> Option<&DeviceState> {
        self.index(id).map(|i| &self.devices[i].state)
    }

    /// Progress per wave, for `rollout status`.
    pub fn status(&self) -> RolloutStatus {
        let waves = self
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| WaveStatus {
                wave: i + 1,
                devices: w.members.len(),
                phase: w.phase,
                counts: w.counts,
            })
            .collect();
        let bake_until = match self.waves.get(self.current).map(|w| w.phase) {
            Some(WavePhase::Baking { since }) => Some(since.saturating_add(self.spec.bake)),
            _ => None,
        };
        RolloutStatus {
            id: self.spec.id,
            release: self.spec.release.clone(),
            state: self.state.clone(),
            current_wave: (self.current < self.waves.len()).then_some(self.current + 1),
            waves,
            skipped_pinned: self.skipped_pinned.clone(),
            failed: self.failed,
            allowed_failures: self.allowed_failures() + self.accepted_failures,
            bake_until,
        }
    }

    /// Advances the rollout to `now` given every target device's observed state.
    pub fn step(&mut self, now: UnixMillis, observed: &dyn Observe) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != RunState::Running {
            return out;
        }
        self.judge_updating(now, observed, &mut out);
        if let Some(wave) = self.waves.get(self.current) {
            if matches!(wave.phase, WavePhase::Active { .. } | WavePhase::Baking { .. }) {
                self.watch_healthy(now, observed, WATCH_PER_STEP, &mut out);
            }
        }
        if self.react_to_threshold(now, observed, &mut out) {
            return out;
        }
        self.advance(now, observed, &mut out);
        out
    }

    /// Pauses a running rollout.
    pub fn pause(&mut self, now: UnixMillis, reason: String) -> Result<Vec<Action>, CommandError> {
        if self.state != RunState::Running {
            return Err(self.refuse("pause"));
        }
        let reason = PauseReason::Manual { reason };
        self.state = RunState::Paused { reason: reason.clone(), at: now };
        Ok(vec![Action::Paused { reason }])
    }

    /// Resumes a paused rollout. The devices' timeouts start afresh, and after a threshold
    /// pause the failures so far count as accepted.
    pub fn resume(&mut self, now: UnixMillis) -> Result<Vec<Action>, CommandError> {
        let RunState::Paused { reason, .. } = &self.state else {
            return Err(self.refuse("resume"));
        };
        if matches!(reason, PauseReason::Threshold { .. }) {
            self.accepted_failures = self.failed;
        }
        let in_flight: Vec<usize> = self.updating.iter().copied().collect();
        for i in in_flight {
            if let DeviceState::Updating { progress, .. } = &mut self.devices[i].state {
                *progress = match *progress {
                    Progress::Working { .. } => Progress::Working { since: now },
                    Progress::Waiting { cause, .. } => Progress::Waiting { since: now, cause },
                };
            }
        }
        if let Some(WavePhase::Active { stagger_base, .. }) =
            self.waves.get_mut(self.current).map(|w| &mut w.phase)
        {
            *stagger_base = None;
        }
        self.state = RunState::Running;
        Ok(vec![Action::Resumed])
    }

    /// Ends the current wave's bake now. The gate still holds: every healthy device of the
    /// wave is re-checked and the failure threshold applied at the next step, and only then
    /// does the next wave start. Refused unless the rollout runs and its wave is baking:
    /// promoting ends a wait, it never skips devices.
    pub fn promote(&mut self, now: UnixMillis) -> Result<Vec<Action>, CommandError> {
        let w = self.current;
        let baking =
            matches!(self.waves.get(w).map(|wave| wave.phase), Some(WavePhase::Baking { .. }));
        if self.state != RunState::Running || !baking {
            let mut refusal = self.refuse("promote");
            if self.state == RunState::Running {
                refusal.state = format!("running wave {}, which is not baking yet", w + 1);
            }
            return Err(refusal);
        }
        let since = UnixMillis(now.0.saturating_sub(millis(self.spec.bake)));
        self.waves[w].phase = WavePhase::Baking { since };
        Ok(vec![Action::Promoted { wave: w + 1 }])
    }

    /// Targets every failed device again, in place (pinned ones excepted): each gets the
    /// release once more with fresh clocks and counts as failed only if it fails again. A
    /// rollout paused by the failure threshold runs again, and a completed one reopens until
    /// the retried devices have their verdicts. Refused while paused by an operator (resume
    /// first), after an abort or a rollback, and when no device failed.
    pub fn retry_failed(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
    ) -> Result<Vec<Action>, CommandError> {
        let retryable = matches!(
            self.state,
            RunState::Running
                | RunState::Completed { .. }
                | RunState::Paused { reason: PauseReason::Threshold { .. }, .. }
        );
        if !retryable {
            return Err(self.refuse("retry the failed devices of"));
        }
        let failed: Vec<usize> = (0..self.devices.len())
            .filter(|&i| matches!(self.devices[i].state, DeviceState::Failed { .. }))
            .collect();
        let mut out = Vec::new();
        for i in failed {
            if let Some(o) = observed.observe(&self.devices[i].id) {
                self.devices[i].pinned = o.pinned;
            }
            if self.devices[i].pinned {
                continue;
            }
            out.push(Action::Target {
                device: self.devices[i].id.clone(),
                release: self.spec.release.clone(),
            });
            let progress = Progress::Working { since: now };
            self.set_state(i, DeviceState::Updating { targeted_at: now, progress });
            self.failed -= 1;
        }
        if out.is_empty() {
            let mut refusal = self.refuse("retry the failed devices of");
            refusal.state =
                format!("{} with no failed device that is not pinned", self.state.name());
            return Err(refusal);
        }
        self.accepted_failures = self.accepted_failures.min(self.failed);
        self.state = RunState::Running;
        out.insert(0, Action::Retried { devices: out.len() });
        Ok(out)
    }

    /// Ends a running or paused rollout where it stands.
    pub fn abort(&mut self, now: UnixMillis) -> Result<Vec<Action>, CommandError> {
        if !self.state.is_active() {
            return Err(self.refuse("abort"));
        }
        self.state = RunState::Aborted { at: now };
        Ok(vec![Action::Aborted])
    }

    /// Sends every device the rollout targeted, except pinned ones, back to its previous
    /// release; allowed in any state but rolled back (also after completion or abort).
    pub fn rollback(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
    ) -> Result<Vec<Action>, CommandError> {
        if matches!(self.state, RunState::RolledBack { .. }) {
            return Err(self.refuse("roll back"));
        }
        let mut out = Vec::new();
        self.roll_back(now, observed, RollbackReason::Manual, &mut out);
        Ok(out)
    }

    fn refuse(&self, command: &str) -> CommandError {
        CommandError {
            rollout: self.spec.id,
            command: command.to_owned(),
            state: self.state.name().to_owned(),
        }
    }

    fn index(&self, id: &DeviceId) -> Option<usize> {
        self.devices.binary_search_by(|d| d.id.cmp(id)).ok()
    }

    fn window_open(&self, now: UnixMillis) -> bool {
        self.spec.window.as_ref().is_none_or(|w| w.is_open(now))
    }

    /// Moves device `i` to `new`, keeping the counters in step.
    fn set_state(&mut self, i: usize, new: DeviceState) {
        let entry = &mut self.devices[i];
        let counts = &mut self.waves[entry.wave].counts;
        *counts.slot(&entry.state) -= 1;
        *counts.slot(&new) += 1;
        if matches!(new, DeviceState::Updating { .. }) {
            self.updating.insert(i);
        } else {
            self.updating.remove(&i);
        }
        if matches!(new, DeviceState::Failed { .. })
            && !matches!(entry.state, DeviceState::Failed { .. })
        {
            self.failed += 1;
        }
        entry.state = new;
    }

    fn fail(&mut self, i: usize, now: UnixMillis, reason: FailureReason, out: &mut Vec<Action>) {
        out.push(Action::DeviceFailed {
            device: self.devices[i].id.clone(),
            reason: reason.clone(),
        });
        self.set_state(i, DeviceState::Failed { at: now, reason });
    }

    fn skip(&mut self, i: usize, reason: SkipReason, out: &mut Vec<Action>) {
        out.push(Action::DeviceSkipped { device: self.devices[i].id.clone(), reason });
        self.set_state(i, DeviceState::Skipped { reason });
    }

    /// Gives every updating device its verdict, or moves its clock.
    fn judge_updating(&mut self, now: UnixMillis, observed: &dyn Observe, out: &mut Vec<Action>) {
        let deadline = millis(self.spec.update_deadline);
        let timeout = millis(self.spec.device_timeout);
        let in_flight: Vec<usize> = self.updating.iter().copied().collect();
        for i in in_flight {
            let DeviceState::Updating { targeted_at, progress } = self.devices[i].state else {
                continue;
            };
            let obs = observed.observe(&self.devices[i].id);
            if let Some(o) = &obs {
                self.devices[i].pinned = o.pinned;
                if o.pinned {
                    self.skip(i, SkipReason::Pinned, out);
                    continue;
                }
                match &o.outcome {
                    Some(Outcome::Healthy) if o.release.as_ref() == Some(&self.spec.release) => {
                        out.push(Action::DeviceHealthy { device: self.devices[i].id.clone() });
                        self.set_state(i, DeviceState::Healthy { at: now });
                        continue;
                    }
                    Some(Outcome::Failed { reason }) => {
                        self.fail(
                            i,
                            now,
                            FailureReason::UpdateFailed { reason: reason.clone() },
                            out,
                        );
                        continue;
                    }
                    Some(Outcome::RolledBack { reason }) => {
                        let reason = FailureReason::RolledBackOnDevice { reason: reason.clone() };
                        self.fail(i, now, reason, out);
                        continue;
                    }
                    _ => {}
                }
            }
            // No observation: the device is gone from view, which is as good as offline.
            let (online, deferred, last_seen) = obs
                .as_ref()
                .map_or((false, false, UnixMillis(0)), |o| (o.online, o.deferred, o.last_seen));
            let cause = match (online, deferred) {
                (false, _) => Some(WaitCause::Offline),
                (true, true) => Some(WaitCause::Deferred),
                (true, false) => None,
            };
            let progress = match (cause, progress) {
                (Some(cause), Progress::Working { since }) => {
                    // Offline counts from when it was last heard, if that was after targeting.
                    let since = match cause {
                        WaitCause::Offline => since.max(last_seen.min(now)),
                        WaitCause::Deferred => now,
                    };
                    Progress::Waiting { since, cause }
                }
                (Some(cause), Progress::Waiting { since, .. }) => {
                    Progress::Waiting { since, cause }
                }
                (None, Progress::Waiting { .. }) => Progress::Working { since: now },
                (None, working) => working,
            };
            let verdict = match progress {
                Progress::Working { since } if elapsed(now, since) > deadline => {
                    Some(FailureReason::Deadline { after_ms: deadline })
                }
                Progress::Waiting { since, cause } if elapsed(now, since) > timeout => {
                    Some(match cause {
                        WaitCause::Offline => FailureReason::Offline { after_ms: timeout },
                        WaitCause::Deferred => FailureReason::Deferred { after_ms: timeout },
                    })
                }
                _ => None,
            };
            match verdict {
                Some(reason) => self.fail(i, now, reason, out),
                None => self.devices[i].state = DeviceState::Updating { targeted_at, progress },
            }
        }
    }

    /// Re-checks up to `limit` targeted devices of the current wave, in rotation: a healthy one
    /// that now reports a failed or rolled-back update regressed.
    fn watch_healthy(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
        limit: usize,
        out: &mut Vec<Action>,
    ) {
        let w = self.current;
        let targeted = self.waves[w].cursor;
        for _ in 0..limit.min(targeted) {
            let position = self.waves[w].watch % targeted;
            self.waves[w].watch = (position + 1) % targeted;
            let i = self.waves[w].members[position];
            if !matches!(self.devices[i].state, DeviceState::Healthy { .. }) {
                continue;
            }
            let Some(o) = observed.observe(&self.devices[i].id) else { continue };
            self.devices[i].pinned = o.pinned;
            if o.pinned {
                // The operator holds it now; what it does next is not the release's doing.
                continue;
            }
            if let Some(Outcome::Failed { reason } | Outcome::RolledBack { reason }) = &o.outcome {
                self.fail(i, now, FailureReason::Regressed { reason: reason.clone() }, out);
            }
        }
    }

    /// Devices in the waves started so far, minus the skipped ones.
    fn started_devices(&self) -> usize {
        self.waves
            .iter()
            .filter(|w| w.phase != WavePhase::Waiting)
            .map(|w| w.members.len() - w.counts.skipped)
            .sum()
    }

    fn allowed_failures(&self) -> usize {
        match self.spec.failure_threshold {
            Threshold::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Threshold::Percent(p) => self.started_devices() * usize::from(p) / 100,
        }
    }

    /// Pauses or rolls back if the threshold is crossed; true if it was.
    fn react_to_threshold(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
        out: &mut Vec<Action>,
    ) -> bool {
        let allowed = self.allowed_failures().saturating_add(self.accepted_failures);
        if self.failed <= allowed {
            return false;
        }
        let failed = self.failed;
        match self.spec.on_failure {
            OnFailure::Pause => {
                let reason = PauseReason::Threshold { failed, allowed };
                self.state = RunState::Paused { reason: reason.clone(), at: now };
                out.push(Action::Paused { reason });
            }
            OnFailure::Rollback => {
                self.roll_back(now, observed, RollbackReason::Threshold { failed, allowed }, out)
            }
        }
        true
    }

    fn roll_back(
        &mut self,
        now: UnixMillis,
        observed: &dyn Observe,
        reason: RollbackReason,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::RollbackStarted { reason: reason.clone() });
        for i in 0..self.devices.len() {
            let targeted = matches!(
                self.devices[i].state,
                DeviceState::Updating { .. }
                    | DeviceState::Healthy { .. }
                    | DeviceState::Failed { .. }
            );
            if !targeted {
                continue;
            }
            if let Some(o) = observed.observe(&self.devices[i].id) {
                self.devices[i].pinned = o.pinned;
            }
            if self.devices[i].pinned {
                continue;
            }
            let device = &self.devices[i];
            out.push(Action::Rollback { device: device.id.clone(), to: device.previous.clone() });
            self.set_state(i, DeviceState::RolledBack { at: now });
        }
        self.state = RunState::RolledBack { reason, at: now };
    }

    /// Starts, targets, completes and bakes waves as far as `now` allows.
    fn advance(&mut self, now: UnixMillis, observed: &dyn Observe, out: &mut Vec<Action>) {
        while let Some(wave) = self.waves.get(self.current) {
            let w = self.current;
            match wave.phase {
                WavePhase::Waiting => {
                    if !self.window_open(now) {
                        return;
                    }
                    let wave = &mut self.waves[w];
                    wave.phase = WavePhase::Active { started_at: now, stagger_base: None };
                    out.push(Action::WaveStarted { wave: w + 1, devices: wave.members.len() });
                }
                WavePhase::Active { .. } => {
                    self.target_due(now, observed, out);
                    let wave = &mut self.waves[w];
                    let counts = wave.counts;
                    if counts.pending > 0 || counts.updating > 0 {
                        return;
                    }
                    wave.phase = WavePhase::Baking { since: now };
                    out.push(Action::WaveCompleted {
                        wave: w + 1,
                        healthy: counts.healthy,
                        failed: counts.failed,
                        skipped: counts.skipped,
                    });
                }
                WavePhase::Baking { since } => {
                    if now < since.saturating_add(self.spec.bake) {
                        return;
                    }
                    // The gate: every healthy device of the wave must still be healthy.
                    let targeted = wave.cursor;
                    self.watch_healthy(now, observed, targeted, out);
                    if self.react_to_threshold(now, observed, out) {
                        return;
                    }
                    self.waves[w].phase = WavePhase::Done;
                    self.current += 1;
                }
                WavePhase::Done => self.current += 1,
            }
        }
        // Retried devices of earlier waves still have their verdicts to come.
        if !self.updating.is_empty() {
            return;
        }
        self.state = RunState::Completed { at: now };
        out.push(Action::Completed);
    }

    /// Targets the current wave's devices that are due, while the window is open and slots
    /// are free.
    fn target_due(&mut self, now: UnixMillis, observed: &dyn Observe, out: &mut Vec<Action>) {
        let w = self.current;
        let open = self.window_open(now);
        let WavePhase::Active { stagger_base, .. } = &mut self.waves[w].phase else {
            return;
        };
        if !open {
            *stagger_base = None;
            return;
        }
        let base = *stagger_base.get_or_insert(now);
        let mut slots = self.spec.max_parallel.map_or(usize::MAX, |m| {
            usize::try_from(m).unwrap_or(usize::MAX).saturating_sub(self.updating.len())
        });
        while let Some(&i) = self.waves[w].members.get(self.waves[w].cursor) {
            let entry = &self.devices[i];
            if now.0 < base.0.saturating_add(entry.offset_ms) {
                break;
            }
            match observed.observe(&entry.id) {
                None => self.skip(i, SkipReason::Unknown, out),
                Some(o) if o.pinned => {
                    self.devices[i].pinned = true;
                    self.skip(i, SkipReason::Pinned, out);
                }
                Some(_) => {
                    if slots == 0 {
                        break;
                    }
                    slots -= 1;
                    out.push(Action::Target {
                        device: entry.id.clone(),
                        release: self.spec.release.clone(),
                    });
                    let progress = Progress::Working { since: now };
                    self.set_state(i, DeviceState::Updating { targeted_at: now, progress });
                }
            }
            self.waves[w].cursor += 1;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn elapsed(now: UnixMillis, since: UnixMillis) -> u64 {
    now.0.saturating_sub(since.0)
}

/// The splitmix64 finaliser: a good 64-bit mix, stable across platforms and Rust versions
/// (the plan must not change when the server is rebuilt).
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
