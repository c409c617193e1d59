//! MQTT topics: `fleet/v1/{device_id}/{kind}`.
//!
//! Topics are only ever built by these functions and parsed by [`Topic::parse`], never with
//! `format!` at call sites, so the layout lives in one place. Because a [`DeviceId`] cannot
//! contain `/`, `+` or `#`, a built topic always has exactly four levels and no wildcard.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, IdError};

/// The first two levels of every Fleet topic.
pub const PREFIX: &str = "fleet/v1";

/// The last level of a topic: what travels on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TopicKind {
    /// Server → device, retained, signed desired state.
    Desired,
    /// Device → server, state reports.
    Report,
    /// Device → server, telemetry batches.
    Telemetry,
    /// Server → device, telemetry acknowledgements.
    TelemetryAck,
    /// Device → server, events.
    Events,
    /// Device → server, retained presence (the offline value is the agent's last will).
    Status,
    /// Server → device, signed commands.
    Cmd,
    /// Device → server, command results.
    CmdResult,
}

/// Which way a topic's messages flow. Broker ACLs follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Written by the device, read by the server.
    ToServer,
    /// Written by the server, read by the device.
    ToDevice,
}

impl TopicKind {
    /// Every kind.
    pub const ALL: [TopicKind; 8] = [
        TopicKind::Desired,
        TopicKind::Report,
        TopicKind::Telemetry,
        TopicKind::TelemetryAck,
        TopicKind::Events,
        TopicKind::Status,
        TopicKind::Cmd,
        TopicKind::CmdResult,
    ];

    /// The topic level, e.g. `telemetry-ack`.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Desired => "desired",
            TopicKind::Report => "report",
            TopicKind::Telemetry => "telemetry",
            TopicKind::TelemetryAck => "telemetry-ack",
            TopicKind::Events => "events",
            TopicKind::Status => "status",
            TopicKind::Cmd => "cmd",
            TopicKind::CmdResult => "cmd-result",
        }
    }

    /// Parses a topic level.
    pub fn from_level(level: &str) -> Option<TopicKind> {
        TopicKind::ALL.into_iter().find(|k| k.as_str() == level)
    }

    /// Who writes and who reads this topic.
    pub fn direction(self) -> Direction {
        match self {
            TopicKind::Desired | TopicKind::TelemetryAck | TopicKind::Cmd => Direction::ToDevice,
            TopicKind::Report
            | TopicKind::Telemetry
            | TopicKind::Events
            | TopicKind::Status
            | TopicKind::CmdResult => Direction::ToServer,
        }
    }

    /// Whether messages on this topic are published retained (the broker keeps the last one
    /// for late subscribers).
    pub fn retained(self) -> bool {
        matches!(self, TopicKind::Desired | TopicKind::Status)
    }

    /// The filter the server subscribes to for this kind across all devices, e.g.
    /// `fleet/v1/+/report`.
    pub fn all_devices_filter(self) -> String {
        format!("{PREFIX}/+/{}", self.as_str())
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed Fleet topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The device the topic belongs to.
    pub device: DeviceId,
    /// What travels on it.
    pub kind: TopicKind,
}

/// Why a string is not a Fleet topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// It does not start with `fleet/v1/`.
    #[error("topic {topic:?} is not under {PREFIX}/")]
    Prefix {
        /// The topic.
        topic: String,
    },
    /// Wrong number of levels.
    #[error("topic {topic:?} does not have the form {PREFIX}/<device>/<kind>")]
    Shape {
        /// The topic.
        topic: String,
    },
    /// The device level is not a valid device id.
    #[error("topic {topic:?}: invalid device id")]
    Device {
        /// The topic.
        topic: String,
        /// Why the id is invalid.
        #[source]
        source: IdError,
    },
    /// The last level is not a known kind.
    #[error("topic {topic:?}: unknown kind {level:?}")]
    Kind {
        /// The topic.
        topic: String,
        /// The unknown level.
        level: String,
    },
}

impl Topic {
    /// The topic of `kind` for `device`.
    pub fn new(device: DeviceId, kind: TopicKind) -> Topic {
        Topic { device, kind }
    }

    /// Parses `fleet/v1/{device}/{kind}`.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::Prefix { topic: topic.to_owned() })?;
        let mut levels = rest.split('/');
        let (Some(device), Some(kind), None) = (levels.next(), levels.next(), levels.next()) else {
            return Err(TopicError::Shape { topic: topic.to_owned() });
        };
        let device = DeviceId::new(device)
            .map_err(|source| TopicError::Device { topic: topic.to_owned(), source })?;
        let kind = TopicKind::from_level(kind)
            .ok_or_else(|| TopicError::Kind { topic: topic.to_owned(), level: kind.to_owned() })?;
        Ok(Topic { device, kind })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}/{}/{}", self.device, self.kind)
    }
}

/// Shorthand for `Topic::new(device.clone(), kind).to_string()`.
pub fn topic(device: &DeviceId, kind: TopicKind) -> String {
    Topic::new(device.clone(), kind).to_string()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn topics_have_the_documented_layout() {
        let d = DeviceId::new("robot-7").unwrap();
        assert_eq!(topic(&d, TopicKind::TelemetryAck), "fleet/v1/robot-7/telemetry-ack");
        assert_eq!(topic(&d, TopicKind::CmdResult), "fleet/v1/robot-7/cmd-result");
        assert_eq!(TopicKind::Report.all_devices_filter(), "fleet/v1/+/report");
    }

    #[test]
    fn parse_refuses_foreign_and_malformed_topics() {
        assert!(matches!(Topic::parse("other/v1/d/report"), Err(TopicError::Prefix { .. })));
        assert!(matches!(Topic::parse("fleet/v2/d/report"), Err(TopicError::Prefix { .. })));
        assert!(matches!(Topic::parse("fleet/v1/d"), Err(TopicError::Shape { .. })));
        assert!(matches!(Topic::parse("fleet/v1/d/report/x"), Err(TopicError::Shape { .. })));
        assert!(matches!(Topic::parse("fleet/v1/+/report"), Err(TopicError::Device { .. })));
        assert!(matches!(Topic::parse("fleet/v1/#/report"), Err(TopicError::Device { .. })));
        assert!(matches!(Topic::parse("fleet/v1//report"), Err(TopicError::Device { .. })));
        assert!(matches!(Topic::parse("fleet/v1/d/bogus"), Err(TopicError::Kind { .. })));
    }

    #[test]
    fn directions_match_the_acl_design() {
        use Direction::*;
        let to_device: Vec<_> =
            TopicKind::ALL.into_iter().filter(|k| k.direction() == ToDevice).collect();
        assert_eq!(to_device, [TopicKind::Desired, TopicKind::TelemetryAck, TopicKind::Cmd]);
        assert!(TopicKind::Desired.retained() && TopicKind::Status.retained());
        assert!(!TopicKind::Report.retained());
    }

    proptest! {
        #[test]
        fn every_built_topic_parses_back(device in any::<DeviceId>(), k in 0usize..8) {
            let kind = TopicKind::ALL[k];
            let t = topic(&device, kind);
            prop_assert_eq!(t.split('/').count(), 4);
            prop_assert!(!t.contains('+') && !t.contains('#'));
            prop_assert_eq!(Topic::parse(&t).unwrap(), Topic::new(device, kind));
        }

        #[test]
        fn parsing_arbitrary_strings_never_panics(s in ".{0,80}") {
            let _ = Topic::parse(&s);
        }
    }
}
