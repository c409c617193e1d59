//! The server's records as the API shows them: one conversion per record into its
//! [`fleet_api`] type. Handlers answer with those types only, so how a record is stored can
//! change without changing what clients see (the JSON stays the contract).

use fleet_api as wire;

use crate::audit::AuditEntry;
use crate::auth::TokenRecord;
use crate::devices::{CertificateInfo, DeviceRecord, PinRecord, RevokedCertificate};
use crate::groups::Group;
use crate::records::{RolloutRecord, Target};
use crate::releases::{ImageInfo, PlatformImage, ReleaseRecord, ResolvedImage};
use crate::rollout::driver::Plan;
use crate::rollout::{
    PauseReason, RollbackReason, RolloutStatus, RunState, WaveCounts, WavePhase, WaveStatus,
};
use crate::store::Page;
use crate::variables::{Resolved, Scope, VariableRecord};

/// A page of records as a page of API items.
pub fn page<T, U: From<T>>(page: Page<T>) -> wire::Page<U> {
    wire::Page { items: page.items.into_iter().map(U::from).collect(), next: page.next }
}

/// Records as API items.
pub fn all<T, U: From<T>>(records: Vec<T>) -> Vec<U> {
    records.into_iter().map(U::from).collect()
}

impl From<CertificateInfo> for wire::Certificate {
    fn from(c: CertificateInfo) -> Self {
        wire::Certificate { serial: c.serial, not_after: c.not_after }
    }
}

impl From<RevokedCertificate> for wire::RevokedCertificate {
    fn from(c: RevokedCertificate) -> Self {
        wire::RevokedCertificate { serial: c.serial, at: c.at }
    }
}

impl From<PinRecord> for wire::Pin {
    fn from(p: PinRecord) -> Self {
        wire::Pin {
            release: p.release,
            reason: p.reason,
            pinned_by: p.pinned_by,
            pinned_at: p.pinned_at,
            until: p.until,
        }
    }
}

impl From<DeviceRecord> for wire::Device {
    fn from(d: DeviceRecord) -> Self {
        wire::Device {
            id: d.id,
            online: d.online,
            agent_version: d.agent_version,
            last_seen: d.last_seen,
            accepted_generation: d.accepted_generation,
            release: d.release.map(|r| r.to_string()),
            enrolled_at: d.enrolled_at,
            labels: d.labels,
            certificate: d.certificate.map(Into::into),
            revoked_at: d.revoked_at,
            revoked_certificates: all(d.revoked_certificates),
            desired_generation: d.desired_generation,
            desired_release: d.desired_release.map(|r| r.to_string()),
            notes: d.notes,
            pin: d.pin.map(Into::into),
            assigned_release: d.assigned_release.map(|r| r.to_string()),
            last_report: d.last_report,
            seal_key: d.seal_key,
            assigned_agent: d.assigned_agent,
            agent_pin: d.agent_pin.map(Into::into),
            desired_agent: d.desired_agent,
        }
    }
}

impl From<Group> for wire::Group {
    fn from(g: Group) -> Self {
        wire::Group {
            name: g.name,
            selector: g.selector.to_string(),
            description: g.description,
            created_at: g.created_at,
            created_by: g.created_by,
        }
    }
}

// The registry's answer is `fleet-oci`'s type: functions, not `From` (neither type is ours).
fn platform(p: PlatformImage) -> wire::PlatformImage {
    wire::PlatformImage {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant,
        digest: p.digest,
        download_bytes: p.download_bytes,
    }
}

fn resolved(r: ResolvedImage) -> wire::ResolvedImage {
    wire::ResolvedImage {
        image: r.image,
        media_type: r.media_type,
        platforms: r.platforms.into_iter().map(platform).collect(),
    }
}

impl From<ImageInfo> for wire::ImageInfo {
    fn from(i: ImageInfo) -> Self {
        wire::ImageInfo {
            service: i.service,
            reference: i.reference,
            resolved: resolved(i.resolved),
        }
    }
}

impl From<ReleaseRecord> for wire::Release {
    fn from(r: ReleaseRecord) -> Self {
        wire::Release {
            spec: r.spec,
            signed: r.signed,
            compose: r.compose,
            images: all(r.images),
            created_at: r.created_at,
            created_by: r.created_by,
            agent: r.agent,
        }
    }
}

impl From<TokenRecord> for wire::Token {
    fn from(t: TokenRecord) -> Self {
        wire::Token {
            name: t.name,
            role: t.role,
            secret_sha256: t.secret_sha256,
            created_at: t.created_at,
            created_by: t.created_by,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

impl From<AuditEntry> for wire::AuditEntry {
    fn from(e: AuditEntry) -> Self {
        wire::AuditEntry {
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
            detail: e.detail,
        }
    }
}

impl From<Target> for wire::Target {
    fn from(t: Target) -> Self {
        match t {
            Target::Group { name } => wire::Target::Group { name },
            Target::Selector { selector } => {
                wire::Target::Selector { selector: selector.to_string() }
            }
            Target::Devices { ids } => wire::Target::Devices { ids },
        }
    }
}

impl From<Plan> for wire::Plan {
    fn from(p: Plan) -> Self {
        wire::Plan {
            release: p.release,
            target: p.target.into(),
            seed: p.seed,
            waves: p.waves,
            pinned: p.pinned,
            offline: p.offline,
            unsatisfiable: p.unsatisfiable,
            unchecked: p.unchecked,
            busy: p.busy.into_iter().map(|(d, r)| (d, r.0)).collect(),
        }
    }
}

impl From<PauseReason> for wire::PauseReason {
    fn from(r: PauseReason) -> Self {
        match r {
            PauseReason::Threshold { failed, allowed } => {
                wire::PauseReason::Threshold { failed, allowed }
            }
            PauseReason::Manual { reason } => wire::PauseReason::Manual { reason },
        }
    }
}

impl From<RollbackReason> for wire::RollbackReason {
    fn from(r: RollbackReason) -> Self {
        match r {
            RollbackReason::Threshold { failed, allowed } => {
                wire::RollbackReason::Threshold { failed, allowed }
            }
            RollbackReason::Manual => wire::RollbackReason::Manual,
        }
    }
}

impl From<RunState> for wire::RunState {
    fn from(s: RunState) -> Self {
        match s {
            RunState::Running => wire::RunState::Running,
            RunState::Paused { reason, at } => wire::RunState::Paused { reason: reason.into(), at },
            RunState::Completed { at } => wire::RunState::Completed { at },
            RunState::Aborted { at } => wire::RunState::Aborted { at },
            RunState::RolledBack { reason, at } => {
                wire::RunState::RolledBack { reason: reason.into(), at }
            }
        }
    }
}

impl From<WaveCounts> for wire::WaveCounts {
    fn from(c: WaveCounts) -> Self {
        wire::WaveCounts {
            pending: c.pending,
            updating: c.updating,
            healthy: c.healthy,
            failed: c.failed,
            skipped: c.skipped,
            rolled_back: c.rolled_back,
        }
    }
}

impl From<WavePhase> for wire::WavePhase {
    fn from(p: WavePhase) -> Self {
        match p {
            WavePhase::Waiting => wire::WavePhase::Waiting,
            WavePhase::Active { started_at, stagger_base } => {
                wire::WavePhase::Active { started_at, stagger_base }
            }
            WavePhase::Baking { since } => wire::WavePhase::Baking { since },
            WavePhase::Done => wire::WavePhase::Done,
        }
    }
}

impl From<WaveStatus> for wire::WaveStatus {
    fn from(w: WaveStatus) -> Self {
        wire::WaveStatus {
            wave: w.wave,
            devices: w.devices,
            phase: w.phase.into(),
            counts: w.counts.into(),
        }
    }
}

impl From<RolloutStatus> for wire::RolloutStatus {
    fn from(s: RolloutStatus) -> Self {
        wire::RolloutStatus {
            id: s.id.0,
            release: s.release,
            state: s.state.into(),
            current_wave: s.current_wave,
            waves: all(s.waves),
            skipped_pinned: s.skipped_pinned,
            failed: s.failed,
            allowed_failures: s.allowed_failures,
            bake_until: s.bake_until,
        }
    }
}

impl From<&RolloutRecord> for wire::RolloutView {
    fn from(r: &RolloutRecord) -> Self {
        wire::RolloutView {
            id: r.id(),
            target: r.target.clone().into(),
            created_by: r.created_by.clone(),
            created_at: r.rollout.created_at(),
            seed: r.rollout.seed(),
            excluded: r.excluded.clone(),
            status: r.rollout.status().into(),
        }
    }
}

impl From<Scope> for wire::VariableScope {
    fn from(s: Scope) -> Self {
        wire::VariableScope { group: s.group, device: s.device, service: s.service }
    }
}

impl From<VariableRecord> for wire::Variable {
    fn from(v: VariableRecord) -> Self {
        wire::Variable {
            name: v.name,
            value: v.value,
            scope: v.scope.into(),
            updated_at: v.updated_at,
            updated_by: v.updated_by,
        }
    }
}

impl From<Resolved> for wire::ResolvedVariable {
    fn from(r: Resolved) -> Self {
        wire::ResolvedVariable {
            name: r.name,
            value: r.value,
            origin: r.origin.into(),
            overridden: all(r.overridden),
        }
    }
}
