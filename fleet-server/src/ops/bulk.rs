//! One change to every device a filter matches (pure): what it would do to each, shown before
//! it is made, and a fingerprint of exactly that set, so what is applied is what was reviewed.
//!
//! Invariants:
//! - The preview lists every device that changes and every matching device that does not,
//!   with why not; nothing is decided later that the preview did not show.
//! - Applying recomputes the preview from the store as it is then and refuses when its
//!   fingerprint differs from the reviewed one (devices joined or left the filter, or changed
//!   in a way that changes what the action does to them).
//! - Each device's change goes through the same operation as a single change (`ops::devices`),
//!   with its checks and audit; one device's refusal does not stop the others.

use fleet_proto::{DeviceId, UnixMillis};

use crate::devices::DeviceSummary;

/// What to do to each matching device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkAction {
    /// Pin to a release, with a reason and an optional expiry.
    Pin {
        /// The release.
        release: String,
        /// Why.
        reason: String,
        /// When the pin lapses, if ever.
        until: Option<UnixMillis>,
    },
    /// Lift the pin.
    Unpin,
    /// Set a label (`Some`) or remove it (`None`).
    Label {
        /// The key.
        key: String,
        /// The value.
        value: Option<String>,
    },
}

impl BulkAction {
    /// In words, for the preview and the audit.
    pub fn describe(&self) -> String {
        match self {
            BulkAction::Pin { release, reason, .. } => format!("pin to {release} ({reason})"),
            BulkAction::Unpin => "unpin".to_owned(),
            BulkAction::Label { key, value: Some(v) } => format!("set label {key}={v}"),
            BulkAction::Label { key, value: None } => format!("remove label {key}"),
        }
    }

    /// Why `device` stays as it is under this action at `now`, or `None` if it changes.
    pub fn leaves_alone(&self, device: &DeviceSummary, now: UnixMillis) -> Option<&'static str> {
        let pin = device.pin.as_ref().filter(|p| p.holds(now));
        match self {
            BulkAction::Pin { release, .. } => pin
                .is_some_and(|p| p.release.as_str() == release)
                .then_some("already pinned to this release"),
            BulkAction::Unpin => pin.is_none().then_some("not pinned"),
            BulkAction::Label { key, value } => (device.labels.get(key) == value.as_ref())
                .then_some(match value {
                    Some(_) => "already has this label",
                    None => "has no such label",
                }),
        }
    }
}

/// What a bulk action would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPreview {
    /// The devices that change, by id.
    pub change: Vec<DeviceId>,
    /// Matching devices that stay as they are, and why.
    pub unchanged: Vec<(DeviceId, &'static str)>,
    /// A digest of the action and the devices that change.
    pub fingerprint: String,
}

/// The preview of `action` on `matching` (the devices the filter matches) at `now`.
pub fn preview(matching: &[DeviceSummary], action: &BulkAction, now: UnixMillis) -> BulkPreview {
    let mut change = Vec::new();
    let mut unchanged = Vec::new();
    for d in matching {
        match action.leaves_alone(d, now) {
            Some(why) => unchanged.push((d.id.clone(), why)),
            None => change.push(d.id.clone()),
        }
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(format!("{action:?}").as_bytes());
    for id in &change {
        digest.update(b"\0");
        digest.update(id.as_str().as_bytes());
    }
    let fingerprint = fleet_proto::hex::encode(&digest.finish().as_ref()[..16]);
    BulkPreview { change, unchanged, fingerprint }
}

#[cfg(test)]
mod tests {
    use fleet_proto::ReleaseId;

    use super::*;
    use crate::devices::{DeviceRecord, PinRecord};

    fn device(id: &str, pinned_to: Option<&str>, labels: &[(&str, &str)]) -> DeviceSummary {
        let mut d = DeviceRecord::bare(DeviceId::new(id).unwrap(), UnixMillis(0));
        d.pin = pinned_to.map(|r| PinRecord {
            release: ReleaseId::new(r).unwrap(),
            reason: "bench".into(),
            pinned_by: "alice".into(),
            pinned_at: UnixMillis(0),
            until: None,
        });
        d.labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        DeviceSummary::from(&d)
    }

    fn pin(release: &str) -> BulkAction {
        BulkAction::Pin { release: release.into(), reason: "freeze".into(), until: None }
    }

    #[test]
    fn the_preview_says_what_changes_and_why_the_rest_does_not() {
        let fleet = [
            device("a", None, &[]),
            device("b", Some("app@1"), &[]),
            device("c", Some("app@2"), &[("site", "lab")]),
        ];
        let now = UnixMillis(1);
        let p = preview(&fleet, &pin("app@1"), now);
        assert_eq!(p.change.iter().map(DeviceId::as_str).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(
            p.unchanged,
            vec![(DeviceId::new("b").unwrap(), "already pinned to this release")]
        );
        let p = preview(&fleet, &BulkAction::Unpin, now);
        assert_eq!(p.change.len(), 2);
        assert_eq!(p.unchanged[0].1, "not pinned");
        let label = BulkAction::Label { key: "site".into(), value: Some("lab".into()) };
        assert_eq!(preview(&fleet, &label, now).change.len(), 2);
        let unlabel = BulkAction::Label { key: "site".into(), value: None };
        assert_eq!(preview(&fleet, &unlabel, now).change.len(), 1);
    }

    #[test]
    fn the_fingerprint_changes_with_the_set_or_the_action_and_only_then() {
        let now = UnixMillis(1);
        let fleet = vec![device("a", None, &[]), device("b", None, &[])];
        let first = preview(&fleet, &pin("app@1"), now).fingerprint;
        assert_eq!(preview(&fleet, &pin("app@1"), now).fingerprint, first);
        assert_ne!(preview(&fleet, &pin("app@2"), now).fingerprint, first);
        assert_ne!(preview(&fleet[..1], &pin("app@1"), now).fingerprint, first);
        // A device that now needs no change leaves the set: the fingerprint says so.
        let moved = vec![device("a", None, &[]), device("b", Some("app@1"), &[])];
        assert_ne!(preview(&moved, &pin("app@1"), now).fingerprint, first);
    }
}
