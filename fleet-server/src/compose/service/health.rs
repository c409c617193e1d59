//! `healthcheck`: the probe and its timings, and how it meets `x-fleet.health`.

use std::time::Duration;

use fleet_proto::release::{HealthCheck, Probe};

use crate::compose::read::{self, child, Problems, Sourced};
use crate::compose::yaml::Node;

/// The `healthcheck` section before it meets `x-fleet.health`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Healthcheck {
    /// `None`: no test given (only timings, or nothing).
    pub(super) probe: Option<Probe>,
    pub(super) interval: Option<Duration>,
    pub(super) timeout: Option<Duration>,
    pub(super) retries: Option<u32>,
    pub(super) start_period: Option<Duration>,
}

/// `healthcheck` and `x-fleet.health` together: one probe, timings from `healthcheck`.
pub(super) fn combine_health(
    p: &mut Problems,
    hc: Option<Sourced<Healthcheck>>,
    agent: Option<Sourced<Probe>>,
) -> Option<HealthCheck> {
    // Docker's defaults.
    let build = |probe: Probe, h: Option<&Healthcheck>| HealthCheck {
        probe,
        interval: h.and_then(|h| h.interval).unwrap_or(Duration::from_secs(30)),
        timeout: h.and_then(|h| h.timeout).unwrap_or(Duration::from_secs(30)),
        retries: h.and_then(|h| h.retries).unwrap_or(3),
        start_period: h.and_then(|h| h.start_period).unwrap_or(Duration::ZERO),
    };
    match (hc, agent) {
        (None, None) => None,
        (None, Some(a)) => Some(build(a.value, None)),
        (Some(h), Some(a)) => {
            if h.value.probe.is_some() {
                p.add(&a.path, None, format!("a service has one health check: {} already sets a test; remove one of them", h.path));
                return None;
            }
            Some(build(a.value, Some(&h.value)))
        }
        (Some(h), None) => match &h.value.probe {
            Some(probe) => Some(build(probe.clone(), Some(&h.value))),
            None => {
                let timed = h.value.interval.is_some()
                    || h.value.timeout.is_some()
                    || h.value.retries.is_some()
                    || h.value.start_period.is_some();
                if timed {
                    p.add_line(&h.path, h.line, "timings without a test: the agent keeps the image's HEALTHCHECK exactly as built, timings included; repeat the test here (test: [\"CMD\", ...]) to change them");
                }
                None
            }
        },
    }
}

pub(super) fn healthcheck(p: &mut Problems, path: &str, node: &Node) -> Option<Healthcheck> {
    let entries = read::map(p, path, node)?;
    let mut h = Healthcheck {
        probe: None,
        interval: None,
        timeout: None,
        retries: None,
        start_period: None,
    };
    let mut disabled = None;
    for (key, v) in entries {
        let at = child(path, key);
        match key.as_str() {
            "test" => h.probe = test(p, &at, v),
            "interval" => h.interval = read::duration(p, &at, v),
            "timeout" => h.timeout = read::duration(p, &at, v),
            "retries" => h.retries = read::number::<u32>(p, &at, v, 0),
            "start_period" => h.start_period = read::duration(p, &at, v),
            "disable" => disabled = read::boolean(p, &at, v).map(|d| (d, at.clone())),
            "start_interval" => p.add(&at, Some(v), "start_interval is not supported yet; checks run every interval from the start"),
            other => p.add(&at, Some(v), format!("unknown healthcheck key {other:?}; use test, interval, timeout, retries, start_period or disable")),
        }
    }
    if let Some((true, at)) = disabled {
        if h.probe.as_ref().is_some_and(|t| *t != Probe::Disabled) {
            p.add(&at, None, "disable: true contradicts the test given here; remove one");
            return None;
        }
        h.probe = Some(Probe::Disabled);
    }
    Some(h)
}

/// `["CMD", ...]`, `["CMD-SHELL", "..."]`, `["NONE"]`, or a string (CMD-SHELL).
pub(super) fn test(p: &mut Problems, path: &str, node: &Node) -> Option<Probe> {
    if node.as_seq().is_none() {
        let line = read::nonempty(p, path, node)?;
        return Some(Probe::CmdShell(line));
    }
    let words = read::strings(p, path, node)?;
    match words.split_first() {
        Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
            Some(Probe::Cmd(rest.to_vec()))
        }
        Some((first, [line])) if first == "CMD-SHELL" => Some(Probe::CmdShell(line.clone())),
        Some((first, [])) if first == "NONE" => Some(Probe::Disabled),
        Some((first, _)) if first == "CMD" => {
            p.add(path, Some(node), "[\"CMD\"] needs the command to run after it");
            None
        }
        Some((first, _)) if first == "CMD-SHELL" => {
            p.add(path, Some(node), "[\"CMD-SHELL\", \"...\"] takes exactly one command line");
            None
        }
        Some((first, _)) if first == "NONE" => {
            p.add(path, Some(node), "[\"NONE\"] takes nothing after it");
            None
        }
        _ => {
            p.add(path, Some(node), "a test list starts with CMD, CMD-SHELL or NONE, e.g. [\"CMD\", \"curl\", \"-f\", \"http://localhost/\"]");
            None
        }
    }
}
