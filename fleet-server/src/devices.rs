//! The device registry's records and how messages from a device update them (pure).

use fleet_proto::{DeviceId, Message, Presence, UnixMillis};
use serde::{Deserialize, Serialize};

/// What the server knows about one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device id.
    pub id: DeviceId,
    /// Whether its retained status says online.
    pub online: bool,
    /// Agent version from its status.
    pub agent_version: Option<String>,
    /// When the server last heard from it (server clock).
    pub last_seen: UnixMillis,
    /// Highest desired-state generation the device accepted.
    pub accepted_generation: u64,
    /// The release in force on the device.
    pub release: Option<String>,
}

impl DeviceRecord {
    /// The record after `msg` from the device arrived at `now`, or `None` if the message does
    /// not concern the registry (telemetry, events, ...) or names no device.
    pub fn observe_at(
        previous: Option<DeviceRecord>,
        msg: &Message,
        now: UnixMillis,
    ) -> Option<DeviceRecord> {
        let id = msg.device()?.clone();
        let mut rec = previous.unwrap_or(DeviceRecord {
            id,
            online: false,
            agent_version: None,
            last_seen: now,
            accepted_generation: 0,
            release: None,
        });
        match msg {
            Message::Status(s) => {
                rec.online = s.presence == Presence::Online;
                rec.agent_version = Some(s.agent_version.clone());
            }
            Message::Report(r) => {
                rec.online = true;
                rec.accepted_generation = r.accepted_generation;
                rec.release = r.in_force.as_ref().map(|f| f.release.to_string());
            }
            _ => return None,
        }
        rec.last_seen = now;
        Some(rec)
    }

    /// [`DeviceRecord::observe_at`] with the current time.
    pub fn observe(previous: Option<DeviceRecord>, msg: &Message) -> Option<DeviceRecord> {
        DeviceRecord::observe_at(previous, msg, UnixMillis::now())
    }
}

#[cfg(test)]
mod tests {
    use fleet_proto::{samples, Status};

    use super::*;

    #[test]
    fn status_then_report_fill_in_the_record() {
        let now = UnixMillis(5);
        let rec = DeviceRecord::observe_at(None, &Message::Status(samples::status()), now).unwrap();
        assert!(rec.online);
        assert_eq!(rec.agent_version.as_deref(), Some("0.1.0"));
        assert_eq!(rec.release, None);
        let rec =
            DeviceRecord::observe_at(Some(rec), &Message::Report(samples::report()), UnixMillis(9))
                .unwrap();
        assert_eq!(rec.release.as_deref(), Some("robot-stack@1.4.2"));
        assert_eq!(rec.accepted_generation, 3);
        assert_eq!(rec.last_seen, UnixMillis(9));
        assert_eq!(rec.agent_version.as_deref(), Some("0.1.0"), "a report keeps the agent version");
    }

    #[test]
    fn last_will_marks_the_device_offline() {
        let online =
            DeviceRecord::observe_at(None, &Message::Status(samples::status()), UnixMillis(1));
        let will = Status { presence: Presence::Offline, ..samples::status() };
        let rec = DeviceRecord::observe_at(online, &Message::Status(will), UnixMillis(2)).unwrap();
        assert!(!rec.online);
    }

    #[test]
    fn telemetry_does_not_touch_the_registry() {
        assert_eq!(
            DeviceRecord::observe_at(
                None,
                &Message::Telemetry(samples::telemetry()),
                UnixMillis(1)
            ),
            None
        );
    }
}
