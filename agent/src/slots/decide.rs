//! Which agent version runs: the pure rules of the A/B slots. The I/O around them is in
//! [`super`].
//!
//! Invariants (the model test checks them over random event sequences):
//! * There is always a version to fall back to: the committed one, or the installed binary
//!   when nothing was ever committed. A trial never replaces it until it commits.
//! * A trial runs at most `max_starts` times and never past its deadline; after that the next
//!   start reverts to the committed version by itself, without the server, and records why.
//! * Only the trial's own version can commit it.

use fleet_proto::{AgentTarget, UnixMillis};
use serde::{Deserialize, Serialize};

/// The slots' state, saved as `<data_dir>/slots.json`. Read by every later agent version too:
/// fields are only ever added, with defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Slots {
    /// The version in force; `None`: the binary the package installed.
    pub committed: Option<String>,
    /// A version on trial, not committed yet.
    pub trial: Option<Trial>,
    /// The last trial that failed, and why (kept until the next trial commits).
    pub last_failure: Option<Failure>,
    /// The version the package installed, as the installed binary last saw it: when it
    /// changes, the package was upgraded ([`Slots::under_package`]).
    pub package: Option<String>,
    /// The agent version the server wants, from the last accepted desired state (kept here so
    /// a download interrupted by a restart resumes).
    pub target: Option<AgentTarget>,
}

/// A version on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// Its version (its slot's name).
    pub version: String,
    /// When it was installed.
    pub installed: UnixMillis,
    /// It must commit before this.
    pub deadline: UnixMillis,
    /// How often it was started.
    pub starts: u32,
}

/// A trial that did not commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The version.
    pub version: String,
    /// Why it was reverted.
    pub reason: String,
    /// When.
    pub at: UnixMillis,
    /// The last lines it logged ([`super::trial_log`]), filled in by the I/O around these
    /// rules when it is reverted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
}

/// Which binary a starting agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// The binary the package installed.
    Installed,
    /// The binary in this version's slot.
    Slot(String),
}

impl Slots {
    /// The version that runs when nothing is on trial.
    pub fn fallback(&self) -> Run {
        self.committed.clone().map_or(Run::Installed, Run::Slot)
    }

    /// At a start of the agent: the binary to run and the state to save first. A trial gets
    /// one more start while it has starts and time left; otherwise it is reverted.
    pub fn at_start(&self, now: UnixMillis, max_starts: u32) -> (Run, Slots) {
        let mut next = self.clone();
        let Some(trial) = &mut next.trial else { return (self.fallback(), next) };
        let reason = if trial.starts >= max_starts {
            Some(format!("it did not commit in {} starts", trial.starts))
        } else if now.0 >= trial.deadline.0 {
            Some(format!(
                "it did not commit within {} s",
                trial.deadline.0.saturating_sub(trial.installed.0) / 1000
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => {
                let version = trial.version.clone();
                (self.fallback(), next.reverted(&version, reason, now))
            }
            None => {
                trial.starts += 1;
                let run = Run::Slot(trial.version.clone());
                (run, next)
            }
        }
    }

    /// The package installed `installed` (the binary deciding at start). When the package
    /// changed since the last start and is at least as new as the committed slot, the slot
    /// gives way to it: upgrading the package is never undone by an older slot. An unchanged
    /// package keeps whatever the fleet committed, older versions included.
    pub fn under_package(&self, installed: &str) -> Slots {
        let mut next = self.clone();
        if self.package.as_deref() == Some(installed) {
            return next;
        }
        next.package = Some(installed.to_owned());
        let not_newer = |v: &str| {
            fleet_proto::version::compare(v, installed)
                .is_some_and(|o| o != std::cmp::Ordering::Greater)
        };
        if self.trial.is_none() && self.committed.as_deref().is_some_and(not_newer) {
            next.committed = None;
        }
        next
    }

    /// Whether the server wants the device back on the binary its package installed (a
    /// rollback to a version the fleet never released) and it runs a committed slot now.
    /// That binary is the floor: no download and no trial, it runs as soon as the slot is let
    /// go ([`Slots::returned`]).
    pub fn to_return(&self) -> bool {
        self.target
            .as_ref()
            .is_some_and(|t| t.installed && self.package.as_deref() == Some(t.version.as_str()))
            && self.committed.is_some()
            && self.trial.is_none()
    }

    /// Back on the installed binary: nothing committed.
    pub fn returned(&self) -> Slots {
        Slots { committed: None, ..self.clone() }
    }

    /// The version to download and try, if the server wants one this device neither runs,
    /// nor is trying, nor has seen fail.
    pub fn to_fetch(&self, running: &str) -> Option<&AgentTarget> {
        let target = self.target.as_ref().filter(|t| !t.installed)?;
        let failed_here = self.last_failure.as_ref().is_some_and(|f| f.version == target.version);
        let settled = target.version == running || self.committed.as_ref() == Some(&target.version);
        (!settled && !failed_here && self.trial.is_none()).then_some(target)
    }

    /// `version` installed in its slot, to be tried next.
    pub fn installed(&self, version: &str, now: UnixMillis, deadline: UnixMillis) -> Slots {
        Slots {
            trial: Some(Trial { version: version.to_owned(), installed: now, deadline, starts: 0 }),
            ..self.clone()
        }
    }

    /// The trial of `version` committed: it is the version in force from now on. Anything
    /// else (no trial, another version on trial) changes nothing.
    pub fn committed(&self, version: &str) -> Slots {
        match &self.trial {
            Some(t) if t.version == version => Slots {
                committed: Some(version.to_owned()),
                trial: None,
                last_failure: None,
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// The trial of `version` is given up (`reason`); the committed version stays.
    pub fn reverted(&self, version: &str, reason: String, now: UnixMillis) -> Slots {
        match &self.trial {
            Some(t) if t.version == version => Slots {
                trial: None,
                last_failure: Some(Failure {
                    version: version.to_owned(),
                    reason,
                    at: now,
                    log: Vec::new(),
                }),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// Versions whose slots must stay on disk: the committed one and the trial.
    pub fn kept(&self) -> Vec<&str> {
        self.committed
            .iter()
            .map(String::as_str)
            .chain(self.trial.iter().map(|t| t.version.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAX: u32 = 3;

    #[test]
    fn a_trial_runs_until_its_starts_or_its_time_run_out_then_reverts_by_itself() {
        let base = Slots { committed: Some("1.0.0".into()), ..Slots::default() };
        let s = base.installed("1.1.0", UnixMillis(1_000), UnixMillis(121_000));
        let (run, s) = s.at_start(UnixMillis(2_000), MAX);
        assert_eq!(run, Run::Slot("1.1.0".into()));
        let (_, s) = s.at_start(UnixMillis(3_000), MAX);
        let (_, s) = s.at_start(UnixMillis(4_000), MAX);
        let (run, s) = s.at_start(UnixMillis(5_000), MAX);
        assert_eq!(run, Run::Slot("1.0.0".into()), "three starts used up");
        assert_eq!(s.committed.as_deref(), Some("1.0.0"));
        assert!(s.trial.is_none());
        assert_eq!(s.last_failure.unwrap().reason, "it did not commit in 3 starts");

        let s = Slots::default().installed("1.1.0", UnixMillis(0), UnixMillis(120_000));
        let (run, s) = s.at_start(UnixMillis(120_000), MAX);
        assert_eq!(run, Run::Installed, "never committed anything: the installed binary");
        assert_eq!(s.last_failure.unwrap().reason, "it did not commit within 120 s");
    }

    #[test]
    fn a_package_upgrade_wins_over_an_older_slot_but_a_fleet_downgrade_stays() {
        let s = Slots {
            committed: Some("0.2.0".into()),
            package: Some("0.1.0".into()),
            ..Slots::default()
        };
        assert_eq!(s.under_package("0.3.0").fallback(), Run::Installed, "package upgraded");
        assert_eq!(s.under_package("0.2.0").fallback(), Run::Installed);
        assert_eq!(s.under_package("0.1.0"), s, "package unchanged: the slot stays");
        let down = Slots {
            committed: Some("0.1.5".into()),
            package: Some("0.2.0".into()),
            ..Slots::default()
        };
        assert_eq!(down.under_package("0.2.0"), down, "the fleet chose an older version");
    }

    #[test]
    fn a_target_is_fetched_once_and_never_after_it_failed_here() {
        let target = |v: &str| AgentTarget {
            version: v.into(),
            repository: "r/a".into(),
            digest: "sha256:00".into(),
            size: 1,
            deadline_secs: 120,
            installed: false,
        };
        let s = Slots { target: Some(target("0.3.0")), ..Slots::default() };
        assert_eq!(s.to_fetch("0.2.0").map(|t| t.version.as_str()), Some("0.3.0"));
        assert!(s.to_fetch("0.3.0").is_none(), "already running it");
        let trying = s.installed("0.3.0", UnixMillis(0), UnixMillis(10));
        assert!(trying.to_fetch("0.2.0").is_none(), "on trial");
        let failed = trying.reverted("0.3.0", "crashed".into(), UnixMillis(5));
        assert!(failed.to_fetch("0.2.0").is_none(), "failed here: not again");
        let next = Slots { target: Some(target("0.3.1")), ..failed };
        assert!(next.to_fetch("0.2.0").is_some(), "a newer version is tried");
    }

    #[test]
    fn a_rollback_to_the_packaged_version_lets_the_slot_go_without_a_download() {
        let back = AgentTarget {
            version: "0.1.0".into(),
            repository: String::new(),
            digest: String::new(),
            size: 0,
            deadline_secs: 0,
            installed: true,
        };
        let on_slot = Slots {
            committed: Some("0.2.0".into()),
            package: Some("0.1.0".into()),
            target: Some(back.clone()),
            ..Slots::default()
        };
        assert!(on_slot.to_return());
        assert!(on_slot.to_fetch("0.2.0").is_none(), "nothing to download");
        let back_home = on_slot.returned();
        assert_eq!(back_home.fallback(), Run::Installed);
        assert!(!back_home.to_return(), "once there, nothing more to do");
        // Another package version than the one named: not the floor the server meant.
        let other = Slots { package: Some("0.1.5".into()), ..on_slot.clone() };
        assert!(!other.to_return());
        // Never in the middle of a trial.
        let trying = on_slot.installed("0.3.0", UnixMillis(0), UnixMillis(10));
        assert!(!trying.to_return());
    }

    #[test]
    fn only_the_trial_itself_commits() {
        let s = Slots::default().installed("2.0.0", UnixMillis(0), UnixMillis(10));
        assert_eq!(s.committed("1.9.0"), s, "another version cannot commit it");
        let c = s.committed("2.0.0");
        assert_eq!(c.committed.as_deref(), Some("2.0.0"));
        assert_eq!(c.fallback(), Run::Slot("2.0.0".into()));
        assert_eq!(c.kept(), ["2.0.0"]);
    }

    #[derive(Debug, Clone)]
    enum Event {
        Install(u8),
        Start,
        Commit(u8),
        Revert(u8),
        Wait(u32),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u8..4).prop_map(Event::Install),
            Just(Event::Start),
            (0u8..4).prop_map(Event::Commit),
            (0u8..4).prop_map(Event::Revert),
            (0u32..100_000).prop_map(Event::Wait),
        ]
    }

    proptest! {
        /// Whatever happens, a start runs a version that exists (committed, installed, or the
        /// trial within its limits), and a trial never outlives its starts or its deadline.
        #[test]
        fn every_start_runs_a_version_that_may_run(events in proptest::collection::vec(event(), 1..60)) {
            let mut s = Slots::default();
            let mut now = 0u64;
            for e in events {
                match e {
                    Event::Install(v) => {
                        s = s.installed(&format!("1.{v}.0"), UnixMillis(now), UnixMillis(now + 120_000));
                    }
                    Event::Commit(v) => s = s.committed(&format!("1.{v}.0")),
                    Event::Revert(v) => s = s.reverted(&format!("1.{v}.0"), "test".into(), UnixMillis(now)),
                    Event::Wait(ms) => now += u64::from(ms),
                    Event::Start => {
                        let before = s.clone();
                        let (run, next) = s.at_start(UnixMillis(now), MAX);
                        match (&next.trial, &before.trial) {
                            // The trial runs once more, within its limits.
                            (Some(t), Some(b)) => {
                                prop_assert!(b.starts < MAX && now < b.deadline.0);
                                prop_assert_eq!(t.starts, b.starts + 1);
                                prop_assert_eq!(&run, &Run::Slot(t.version.clone()));
                            }
                            (Some(_), None) => prop_assert!(false, "a start never begins a trial"),
                            // The committed version (or the installed binary) runs; a trial
                            // out of starts or time is gone, with its reason.
                            (None, b) => {
                                prop_assert_eq!(&run, &before.fallback());
                                prop_assert_eq!(&next.committed, &before.committed);
                                if let Some(b) = b {
                                    prop_assert!(b.starts >= MAX || now >= b.deadline.0);
                                    prop_assert_eq!(next.last_failure.as_ref().map(|f| &f.version), Some(&b.version));
                                }
                            }
                        }
                        s = next;
                    }
                }
                if let Some(t) = &s.trial {
                    prop_assert!(t.starts <= MAX);
                }
            }
        }
    }
}
