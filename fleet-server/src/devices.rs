//! The device registry's records and how messages from a device update them (pure).

use std::collections::BTreeMap;

use fleet_proto::report::{AgentUpdateFailure, AgentVersions, ServiceStatus};
use fleet_proto::{DeviceId, Message, Presence, ReleaseId, SealKey, StateReport, UnixMillis};
use serde::{Deserialize, Serialize};

/// The shortest time between two sealing-key changes the server takes from a device that has
/// one (10 minutes, in milliseconds).
pub const SEAL_KEY_MIN_INTERVAL: UnixMillis = UnixMillis(10 * 60 * 1000);

/// Lines of a failed agent trial's log the server keeps: the agent sends its last 20
/// (`agent/src/slots/trial_log.rs`), a forged report could send a megabyte of them.
pub const MAX_FAILED_LOG_LINES: usize = 20;
/// Characters per log line: the agent cuts its lines at 300 and adds `…`.
pub const MAX_LOG_LINE_CHARS: usize = 301;
/// Characters of the reason a trial failed (the agent's are one error message).
pub const MAX_REASON_CHARS: usize = 1024;
/// Characters of a reported agent version (a release id holds at most 128).
pub const MAX_VERSION_CHARS: usize = 128;
/// Service entries of a report the server keeps: one per service of the release in force and
/// of one being switched to.
pub const MAX_REPORTED_SERVICES: usize = 256;
/// Characters of a service's last error (the agent's are one engine message or exit reason).
pub const MAX_SERVICE_ERROR_CHARS: usize = 1024;
/// Characters of an image digest or container id as reported (`sha256:` and 64 hex digits).
pub const MAX_ID_CHARS: usize = 128;

/// A device's client certificate, as the registry remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// Serial number (hex).
    pub serial: String,
    /// End of validity.
    pub not_after: UnixMillis,
}

/// A revoked certificate of this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    /// Serial number (hex).
    pub serial: String,
    /// When it was revoked.
    pub at: UnixMillis,
}

/// What the server knows about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub release: Option<ReleaseId>,
    /// When it was enrolled; `None` for a record the server never enrolled.
    #[serde(default)]
    pub enrolled_at: Option<UnixMillis>,
    /// Labels given at enrollment (`--label k=v`); groups select on them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its current client certificate.
    #[serde(default)]
    pub certificate: Option<CertificateInfo>,
    /// When it was revoked; a revoked device's messages are dropped.
    #[serde(default)]
    pub revoked_at: Option<UnixMillis>,
    /// Every certificate of this device ever revoked (the revocation list is built from them).
    #[serde(default)]
    pub revoked_certificates: Vec<RevokedCertificate>,
    /// The generation of the last desired state the server published to it (0: none yet).
    #[serde(default)]
    pub desired_generation: u64,
    /// The release in that desired state.
    #[serde(default)]
    pub desired_release: Option<ReleaseId>,
    /// Free-text notes (`fleetctl device note`): who has it, what is special about it.
    #[serde(default)]
    pub notes: String,
    /// The pin holding the device on a release, if any. A rollout never moves a pinned device.
    #[serde(default)]
    pub pin: Option<PinRecord>,
    /// The release the fleet wants on this device when it is not pinned: set by rollouts and by
    /// direct assignment; unpinning returns the device to it.
    #[serde(default)]
    pub assigned_release: Option<ReleaseId>,
    /// The device's latest state report, without its inventory (kept apart, it changes
    /// rarely).
    #[serde(default)]
    pub last_report: Option<StateReport>,
    /// The device's public sealing key (X25519, hex) from its latest report: secrets and
    /// registry logins are sealed to it. `None`: an agent that predates sealing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key: Option<String>,
    /// The agent version the fleet wants on this device when its agent is not pinned: set by
    /// rollouts of agent releases. `None`: the agent stays as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_agent: Option<String>,
    /// When the server last took a new sealing key from the device's reports
    /// ([`SEAL_KEY_MIN_INTERVAL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_key_changed_at: Option<UnixMillis>,
    /// A pin holding the device's agent on one agent release (`fleet-agent@VERSION`), apart
    /// from the application pin: a bench robot can hold its app and take agent fixes, or the
    /// reverse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_pin: Option<PinRecord>,
    /// The agent version in the last desired state published to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_agent: Option<String>,
    /// The public key of its certificate (an uncompressed P-256 point, hex), kept at
    /// enrollment: a sealing key is taken only with a proof signed by it
    /// ([`fleet_proto::StateReport::seal_key_proof`]). `None` for devices enrolled before it
    /// was kept, which take a key as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<String>,
}

/// What lists of devices need of a record (the dashboard's lists, its census, group counts),
/// decoded from the same stored bytes as [`DeviceRecord`] but skipping what only the device's
/// own page shows: the report's services, certificates, keys. At 10,000 devices a list reads
/// in a fraction of the time the whole records take (BENCHMARKS.md, "Dashboard").
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DeviceSummary {
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
    pub release: Option<ReleaseId>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it was revoked.
    #[serde(default)]
    pub revoked_at: Option<UnixMillis>,
    /// The generation of the last desired state published to it.
    #[serde(default)]
    pub desired_generation: u64,
    /// Free-text notes.
    #[serde(default)]
    pub notes: String,
    /// The pin, if any.
    #[serde(default)]
    pub pin: Option<PinRecord>,
    /// The agent pin, if any.
    #[serde(default)]
    pub agent_pin: Option<PinRecord>,
    /// The release the fleet wants on it when it is not pinned.
    #[serde(default)]
    pub assigned_release: Option<ReleaseId>,
    /// The update part of its latest report.
    #[serde(default)]
    pub last_report: Option<ReportSummary>,
}

/// The part of a state report lists need.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReportSummary {
    /// Where its update stands.
    pub update: fleet_proto::report::UpdateStatus,
}

impl DeviceSummary {
    /// The release the server wants on the device at `now` ([`DeviceRecord::wanted_release`]).
    pub fn wanted_release(&self, now: UnixMillis) -> Option<&ReleaseId> {
        match self.pin.as_ref().filter(|p| p.holds(now)) {
            Some(pin) => Some(&pin.release),
            None => self.assigned_release.as_ref(),
        }
    }
}

impl From<&DeviceRecord> for DeviceSummary {
    fn from(d: &DeviceRecord) -> DeviceSummary {
        DeviceSummary {
            id: d.id.clone(),
            online: d.online,
            agent_version: d.agent_version.clone(),
            last_seen: d.last_seen,
            accepted_generation: d.accepted_generation,
            release: d.release.clone(),
            labels: d.labels.clone(),
            revoked_at: d.revoked_at,
            desired_generation: d.desired_generation,
            notes: d.notes.clone(),
            pin: d.pin.clone(),
            agent_pin: d.agent_pin.clone(),
            assigned_release: d.assigned_release.clone(),
            last_report: d.last_report.as_ref().map(|r| ReportSummary { update: r.update.clone() }),
        }
    }
}

/// A pin: an operator holds this device on one release, with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The release it is held on.
    pub release: ReleaseId,
    /// Why, in the operator's words.
    pub reason: String,
    /// Which token pinned it.
    pub pinned_by: String,
    /// When.
    pub pinned_at: UnixMillis,
    /// When the pin lapses by itself, if ever.
    pub until: Option<UnixMillis>,
}

impl PinRecord {
    /// Whether the pin still holds at `now`.
    pub fn holds(&self, now: UnixMillis) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

impl DeviceRecord {
    /// A freshly enrolled device.
    pub fn enrolled(
        id: DeviceId,
        labels: BTreeMap<String, String>,
        certificate: CertificateInfo,
        now: UnixMillis,
    ) -> DeviceRecord {
        DeviceRecord {
            enrolled_at: Some(now),
            labels,
            certificate: Some(certificate),
            ..DeviceRecord::bare(id, now)
        }
    }

    /// The pin, if it holds at `now`.
    pub fn pin_at(&self, now: UnixMillis) -> Option<&PinRecord> {
        self.pin.as_ref().filter(|p| p.holds(now))
    }

    /// The release the server wants on the device at `now`: its pin's if pinned, otherwise
    /// the assigned one.
    pub fn wanted_release(&self, now: UnixMillis) -> Option<&ReleaseId> {
        match self.pin_at(now) {
            Some(pin) => Some(&pin.release),
            None => self.assigned_release.as_ref(),
        }
    }

    /// The agent pin, if it holds at `now`.
    pub fn agent_pin_at(&self, now: UnixMillis) -> Option<&PinRecord> {
        self.agent_pin.as_ref().filter(|p| p.holds(now))
    }

    /// The agent version the server wants on the device at `now`: its agent pin's if pinned,
    /// otherwise the assigned one (`None`: whatever it runs).
    pub fn wanted_agent(&self, now: UnixMillis) -> Option<&str> {
        match self.agent_pin_at(now) {
            Some(pin) => pin.release.as_str().split_once('@').map(|(_, v)| v),
            None => self.assigned_agent.as_deref(),
        }
    }

    /// The agent versions it reported last (`None`: an agent that predates self-update).
    pub fn agent_versions(&self) -> Option<&AgentVersions> {
        self.last_report.as_ref().and_then(|r| r.agent.as_ref())
    }

    /// The device's sealing key, if it reported a valid one.
    pub fn seal_key(&self) -> Option<SealKey> {
        self.seal_key.as_deref().and_then(SealKey::from_hex)
    }

    /// Why the server does not accept messages from this device, if it does not.
    pub fn refusal(&self) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("the device is revoked")
        } else if self.enrolled_at.is_none() {
            Some("the device is not enrolled")
        } else {
            None
        }
    }

    /// The record after revoking the device at `now`: its certificate joins the revoked ones.
    pub fn revoke(mut self, now: UnixMillis) -> DeviceRecord {
        if let Some(cert) = self.certificate.take() {
            self.revoked_certificates.push(RevokedCertificate { serial: cert.serial, at: now });
        }
        self.revoked_at = Some(now);
        self.online = false;
        self
    }

    /// A record of a device the server never enrolled, first heard of at `now`.
    pub fn bare(id: DeviceId, now: UnixMillis) -> DeviceRecord {
        DeviceRecord {
            id,
            online: false,
            agent_version: None,
            last_seen: now,
            accepted_generation: 0,
            release: None,
            enrolled_at: None,
            labels: BTreeMap::new(),
            certificate: None,
            revoked_at: None,
            revoked_certificates: Vec::new(),
            desired_generation: 0,
            desired_release: None,
            notes: String::new(),
            pin: None,
            assigned_release: None,
            last_report: None,
            seal_key: None,
            assigned_agent: None,
            agent_pin: None,
            desired_agent: None,
            seal_key_changed_at: None,
            device_key: None,
        }
    }

    /// The record after `msg` from the device arrived at `now`, or `None` if the message does
    /// not concern the registry (telemetry, events, ...) or names no device.
    pub fn observe_at(
        previous: Option<DeviceRecord>,
        msg: &Message,
        now: UnixMillis,
    ) -> Option<DeviceRecord> {
        let id = msg.device()?.clone();
        let mut rec = previous.unwrap_or_else(|| DeviceRecord::bare(id, now));
        match msg {
            Message::Status(s) => {
                rec.online = s.presence == Presence::Online;
                rec.agent_version = Some(cut(s.agent_version.clone(), MAX_VERSION_CHARS));
            }
            Message::Report(r) => {
                rec.online = true;
                rec.accepted_generation = r.accepted_generation;
                rec.release = r.in_force.as_ref().map(|f| f.release.clone());
                let agent = r.agent.clone().map(bounded_agent_versions);
                let services = bounded_services(&r.services);
                let seal_key_proof = r.seal_key_proof.clone().map(|p| cut(p, MAX_ID_CHARS * 2));
                rec.last_report = Some(StateReport {
                    inventory: None,
                    agent,
                    services,
                    seal_key_proof,
                    ..r.clone()
                });
                // Every report carries the key; one without it comes from an older agent. A
                // change re-seals and republishes the device's secrets, so a device that has a
                // key takes another at most once per SEAL_KEY_MIN_INTERVAL (a report can be
                // forged where the broker does not authenticate, and every change costs work).
                let reported = r.seal_key.as_ref().map(SealKey::to_hex);
                let recently = rec
                    .seal_key_changed_at
                    .is_some_and(|t| now.0.saturating_sub(t.0) < SEAL_KEY_MIN_INTERVAL.0);
                // Where the certificate's key is known, a key is taken only with its proof, so a
                // forged report can neither redirect the secrets nor remove the key.
                let proven = match (&rec.device_key, &r.seal_key) {
                    (None, _) => true,
                    (Some(device_key), Some(key)) => {
                        r.seal_key_proof.as_deref().is_some_and(|proof| {
                            crate::pki::seal_key_proof_verifies(device_key, &rec.id, key, proof)
                        })
                    }
                    (Some(_), None) => false,
                };
                if reported != rec.seal_key && !proven {
                    tracing::warn!(device = %rec.id, "a report's sealing key has no valid proof by the device's certificate key; kept the recorded one");
                }
                if reported != rec.seal_key && proven && (rec.seal_key.is_none() || !recently) {
                    rec.seal_key = reported;
                    rec.seal_key_changed_at = Some(now);
                }
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

/// `agent` as the server keeps it: every free-text field within its bound above, so a device
/// cannot make its record (rewritten on every report, shown by the API and in rollout
/// outcomes) as large as a message may be. What an honest agent sends passes unchanged.
pub fn bounded_agent_versions(agent: AgentVersions) -> AgentVersions {
    let version = |v: String| cut(v, MAX_VERSION_CHARS);
    // The newest lines say most: a log longer than the bound loses its oldest.
    let skip = agent.failed_log.len().saturating_sub(MAX_FAILED_LOG_LINES);
    AgentVersions {
        running: version(agent.running),
        committed: agent.committed.map(version),
        trial: agent.trial.map(version),
        failed: agent.failed.map(|f| AgentUpdateFailure {
            version: version(f.version),
            reason: cut(f.reason, MAX_REASON_CHARS),
            at: f.at,
        }),
        failed_log: agent
            .failed_log
            .into_iter()
            .skip(skip)
            .map(|line| cut(line, MAX_LOG_LINE_CHARS))
            .collect(),
        installed: agent.installed.map(version),
    }
}

/// A report's services as the server keeps them: at most [`MAX_REPORTED_SERVICES`], each
/// free-text field within its bound. What an honest agent sends passes unchanged.
pub fn bounded_services(services: &[ServiceStatus]) -> Vec<ServiceStatus> {
    services
        .iter()
        .take(MAX_REPORTED_SERVICES)
        .map(|s| ServiceStatus {
            image_digest: cut(s.image_digest.clone(), MAX_ID_CHARS),
            container_id: s.container_id.clone().map(|c| cut(c, MAX_ID_CHARS)),
            last_error: s.last_error.clone().map(|e| cut(e, MAX_SERVICE_ERROR_CHARS)),
            ..s.clone()
        })
        .collect()
}

/// `text` if it has at most `max` characters, else its first `max - 1` and `…`.
fn cut(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some(_) => {
            let end = text.char_indices().nth(max.saturating_sub(1)).map_or(0, |(i, _)| i);
            format!("{}…", &text[..end])
        }
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
        assert_eq!(rec.release.as_ref().map(ReleaseId::as_str), Some("robot-stack@1.4.2"));
        assert_eq!(rec.accepted_generation, 3);
        assert_eq!(rec.last_seen, UnixMillis(9));
        assert_eq!(rec.agent_version.as_deref(), Some("0.1.0"), "a report keeps the agent version");
        assert_eq!(rec.seal_key(), samples::report().seal_key, "the report's sealing key is kept");
        let older = StateReport { seal_key: None, ..samples::report() };
        let soon =
            DeviceRecord::observe_at(Some(rec), &Message::Report(older.clone()), UnixMillis(10));
        let soon = soon.unwrap();
        assert!(soon.seal_key.is_some(), "a key change within 10 minutes is not taken");
        let later = UnixMillis(SEAL_KEY_MIN_INTERVAL.0 + 10);
        let rec = DeviceRecord::observe_at(Some(soon), &Message::Report(older), later);
        assert_eq!(rec.unwrap().seal_key, None, "an older agent's report has none");
    }

    #[test]
    fn where_the_certificate_key_is_known_a_sealing_key_is_taken_only_with_its_proof() {
        let id = DeviceId::new("robot-7").unwrap();
        let (cert_key, public, _) = fleet_api::enroll::new_device_key(&id).unwrap();
        let prove = |key: &SealKey| {
            let message = fleet_proto::seal::seal_key_proof_message(&id, key);
            fleet_proto::hex::encode(&rcgen::SigningKey::sign(&cert_key, &message).unwrap())
        };
        let mut rec = DeviceRecord::enrolled(
            id.clone(),
            BTreeMap::new(),
            CertificateInfo { serial: "01".into(), not_after: UnixMillis(0) },
            UnixMillis(0),
        );
        rec.device_key = Some(public);
        let report = |key: Option<SealKey>, proof: Option<String>| {
            Message::Report(StateReport {
                device: id.clone(),
                seal_key: key,
                seal_key_proof: proof,
                ..samples::report()
            })
        };
        let (honest, forged) = (SealKey([0x11; 32]), SealKey([0x66; 32]));
        // Without a proof, or with the proof of another key, nothing is taken.
        let rec = DeviceRecord::observe_at(Some(rec), &report(Some(honest), None), UnixMillis(1));
        assert_eq!(rec.as_ref().unwrap().seal_key, None);
        let stolen = Some(prove(&honest));
        let rec = DeviceRecord::observe_at(rec, &report(Some(forged), stolen), UnixMillis(2));
        assert_eq!(rec.as_ref().unwrap().seal_key, None);
        // With its own proof it is taken.
        let rec = DeviceRecord::observe_at(
            rec,
            &report(Some(honest), Some(prove(&honest))),
            UnixMillis(3),
        );
        assert_eq!(rec.as_ref().unwrap().seal_key(), Some(honest));
        // Later, a forged report can neither replace it nor remove it.
        let later = UnixMillis(SEAL_KEY_MIN_INTERVAL.0 + 10);
        let rec = DeviceRecord::observe_at(rec, &report(Some(forged), Some("30".into())), later);
        let rec = DeviceRecord::observe_at(rec, &report(None, None), later);
        assert_eq!(rec.as_ref().unwrap().seal_key(), Some(honest));
        // A new key of the device's own (a re-installed agent) is taken with its proof.
        let rec = DeviceRecord::observe_at(rec, &report(Some(forged), Some(prove(&forged))), later);
        assert_eq!(rec.unwrap().seal_key(), Some(forged));
    }

    #[test]
    fn a_reports_services_and_status_are_kept_within_their_bounds() {
        let honest = samples::report();
        assert_eq!(bounded_services(&honest.services), honest.services);
        let huge = "x".repeat(1 << 20);
        let forged = ServiceStatus {
            image_digest: huge.clone(),
            container_id: Some(huge.clone()),
            last_error: Some(huge.clone()),
            ..honest.services[0].clone()
        };
        let kept = bounded_services(&vec![forged; MAX_REPORTED_SERVICES + 10]);
        assert_eq!(kept.len(), MAX_REPORTED_SERVICES);
        assert_eq!(kept[0].image_digest.chars().count(), MAX_ID_CHARS);
        assert_eq!(kept[0].container_id.as_deref().map(|c| c.chars().count()), Some(MAX_ID_CHARS));
        let error = kept[0].last_error.as_deref().unwrap();
        assert!(error.chars().count() == MAX_SERVICE_ERROR_CHARS && error.ends_with('…'));
        let status = Message::Status(Status { agent_version: huge, ..samples::status() });
        let rec = DeviceRecord::observe_at(None, &status, UnixMillis(1)).unwrap();
        assert_eq!(rec.agent_version.map(|v| v.chars().count()), Some(MAX_VERSION_CHARS));
    }

    #[test]
    fn an_honest_agents_report_is_kept_as_it_came() {
        let agent = samples::report().agent.expect("the sample reports agent versions");
        assert_eq!(bounded_agent_versions(agent.clone()), agent);
        // The agent's longest line: 300 characters and its `…`, multi-byte ones included.
        let line = format!("{}…", "é".repeat(300));
        let full = AgentVersions { failed_log: vec![line; 20], ..agent };
        assert_eq!(bounded_agent_versions(full.clone()), full);
    }

    #[test]
    fn a_forged_report_is_cut_to_the_bounds_on_character_boundaries() {
        let huge = "ü".repeat(5_000);
        let forged = AgentVersions {
            running: huge.clone(),
            committed: Some(huge.clone()),
            trial: Some(huge.clone()),
            failed: Some(AgentUpdateFailure {
                version: huge.clone(),
                reason: huge.clone(),
                at: UnixMillis(1),
            }),
            failed_log: (0..1_000).map(|i| format!("{i} {huge}")).collect(),
            installed: Some(huge.clone()),
        };
        let kept = bounded_agent_versions(forged);
        let chars = |s: &str| s.chars().count();
        assert_eq!(chars(&kept.running), MAX_VERSION_CHARS);
        assert!(kept.running.ends_with('…'));
        for v in [&kept.committed, &kept.trial, &kept.installed] {
            assert_eq!(v.as_deref().map(chars), Some(MAX_VERSION_CHARS));
        }
        let failed = kept.failed.unwrap();
        assert_eq!(chars(&failed.version), MAX_VERSION_CHARS);
        assert_eq!(chars(&failed.reason), MAX_REASON_CHARS);
        assert_eq!(kept.failed_log.len(), MAX_FAILED_LOG_LINES);
        assert!(kept.failed_log[0].starts_with("980 "), "the newest lines are kept");
        assert!(kept.failed_log[19].starts_with("999 "));
        assert!(kept.failed_log.iter().all(|l| chars(l) == MAX_LOG_LINE_CHARS && l.ends_with('…')));
    }

    #[test]
    fn a_reports_agent_versions_are_stored_bounded() {
        let mut report = samples::report();
        let agent = report.agent.as_mut().unwrap();
        agent.failed_log = vec!["x".repeat(1 << 20); 3];
        let rec = DeviceRecord::observe_at(None, &Message::Report(report), UnixMillis(1)).unwrap();
        let stored = rec.agent_versions().unwrap();
        assert_eq!(stored.failed_log.len(), 3);
        assert!(stored.failed_log.iter().all(|l| l.len() == 300 + '…'.len_utf8()));
    }

    #[test]
    fn text_is_cut_with_a_marker_only_past_its_bound() {
        assert_eq!(cut("abc".into(), 3), "abc");
        assert_eq!(cut("abcd".into(), 3), "ab…");
        assert_eq!(cut("ßßßß".into(), 3), "ßß…", "on a character boundary");
        assert_eq!(cut(String::new(), 3), "");
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
    fn only_enrolled_unrevoked_devices_are_accepted_and_revocation_keeps_the_serial() {
        let id = DeviceId::new("robot-7").unwrap();
        let cert = CertificateInfo { serial: "0a0b".into(), not_after: UnixMillis(99) };
        let rec = DeviceRecord::enrolled(id, BTreeMap::new(), cert, UnixMillis(1));
        assert_eq!(rec.refusal(), None);
        let unknown =
            DeviceRecord::observe_at(None, &Message::Status(samples::status()), UnixMillis(1));
        assert_eq!(unknown.unwrap().refusal(), Some("the device is not enrolled"));
        let revoked = rec.revoke(UnixMillis(5));
        assert_eq!(revoked.refusal(), Some("the device is revoked"));
        assert_eq!(revoked.certificate, None);
        assert_eq!(
            revoked.revoked_certificates,
            vec![RevokedCertificate { serial: "0a0b".into(), at: UnixMillis(5) }]
        );
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

    #[test]
    fn a_record_stored_when_releases_were_strings_decodes_and_encodes_to_the_same_bytes() {
        // As a store written before the release fields became `ReleaseId` holds it.
        let old = r#"{"id":"d1","online":true,"agent_version":"0.1.0","last_seen":5,"accepted_generation":2,"release":"app@1","enrolled_at":1,"labels":{},"certificate":null,"revoked_at":null,"revoked_certificates":[],"desired_generation":3,"desired_release":"app@2","notes":"","pin":null,"assigned_release":"app@2","last_report":null}"#;
        let rec: DeviceRecord = serde_json::from_str(old).expect("an old record decodes");
        assert_eq!(rec.release.as_ref().map(ReleaseId::as_str), Some("app@1"));
        assert_eq!(rec.assigned_release.as_ref().map(ReleaseId::as_str), Some("app@2"));
        assert_eq!(serde_json::to_string(&rec).unwrap(), old);
    }
}
