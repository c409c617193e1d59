//! Desired states from the server: judged by [`crate::accept`], recorded, then applied; a
//! refused one changes nothing and is reported as a `Rejected` event.

use fleet_proto::report::UpdateResult;
use fleet_proto::{EventKind, Severity, Signed};
use tokio::time::Instant;

use super::{lease_end, Daemon};
use crate::accept::{self, accept, digest, rejection_reason, Applied, Delivery};
use crate::reconcile::StepError;
use crate::runtime::ContainerRuntime;
use crate::state::Origin;

impl<R: ContainerRuntime> Daemon<R> {
    /// A desired state from the server: verified and checked, then applied; refused states
    /// change nothing. Returns when to converge again if an update lock defers the switch.
    pub(super) async fn desired(&mut self, signed: Signed) -> Option<Instant> {
        let state = self.reconciler.state();
        let digest = digest(&signed);
        let accepted = match (state.server_desired(), state.desired()) {
            (Ok(server), Ok(desired)) => {
                let applied = match desired.map(|d| d.origin) {
                    None => Applied::Nothing,
                    Some(Origin::Local { .. }) => Applied::Local,
                    Some(Origin::Server { generation }) => Applied::Server(generation),
                };
                let recorded = server.as_ref().map(|s| (s.generation, s.digest.as_str()));
                match accept::delivery(&digest, recorded, applied) {
                    Delivery::Unchanged => {
                        tracing::debug!("desired state unchanged");
                        return None;
                    }
                    Delivery::Check { accepted } => accepted,
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot read the accepted generation; desired state ignored until the next delivery");
                return None;
            }
        };
        let accepted_state = accept(
            &signed,
            &self.trusted,
            &self.config.device_id,
            accepted,
            &self.config.hardware.policy.allowed_host_paths,
        )
        .and_then(|d| self.materialize_secrets(d));
        let (desired, delivered, effective) = match accepted_state {
            Ok(d) => d,
            Err(rejection) => {
                let reason = rejection_reason(&rejection);
                tracing::warn!(reason, error = %rejection, "desired state from the server refused; the running release stays");
                let mut fields = vec![("reason", reason.to_owned())];
                if let Some(a) = accepted {
                    fields.push(("accepted_generation", a.to_string()));
                }
                self.event(Severity::Warning, EventKind::Rejected, rejection.to_string(), &fields);
                self.write_status().await;
                return None;
            }
        };
        let generation = desired.generation;
        // Persisted before anything runs: after a crash mid-update, this state is not new.
        if let Err(e) =
            state.set_server_desired(&crate::state::ServerDesired { generation, digest })
        {
            tracing::error!(error = %e, "cannot record the accepted desired state; not applying it");
            return None;
        }
        // The agent version it names (or none): downloaded after the release is applied.
        if let Err(e) = crate::slots::set_target(&self.config.data_dir, desired.agent.clone()) {
            tracing::error!(error = %e, "cannot record the agent version the server wants");
        }
        let mut credentials = self.config.registries.clone();
        credentials.extend(desired.registry_credentials.iter().cloned());
        credentials.extend(delivered.registry_credentials);
        self.reconciler.set_credentials(credentials);
        let release =
            desired.release.as_ref().map(|r| r.id.to_string()).unwrap_or_else(|| "none".into());
        tracing::info!(generation, %release, "desired state from the server accepted");
        self.event(
            Severity::Info,
            EventKind::UpdateStarted,
            format!("applying generation {generation} (release {release})"),
            &[("generation", generation.to_string()), ("release", release.clone())],
        );
        let apply = self.reconciler.apply(Origin::Server { generation }, effective);
        let mut retry = None;
        let gen_field = ("generation", generation.to_string());
        match self.with_live_status(apply).await {
            Ok(outcome) => {
                let (severity, kind, message) = match &outcome.result {
                    UpdateResult::Applied => (
                        Severity::Info,
                        EventKind::UpdateApplied,
                        format!("release {release} applied"),
                    ),
                    UpdateResult::RolledBack { reason, .. } => (
                        Severity::Error,
                        EventKind::UpdateRolledBack,
                        format!("release {release} rolled back: {reason}"),
                    ),
                    UpdateResult::Failed { reason } => (
                        Severity::Error,
                        EventKind::UpdateFailed,
                        format!("release {release} failed: {reason}"),
                    ),
                    other => (
                        Severity::Warning,
                        EventKind::Other,
                        format!("release {release}: {other:?}"),
                    ),
                };
                tracing::info!(generation, result = ?outcome.result, "update finished");
                self.event(severity, kind, message, &[gen_field]);
            }
            Err(StepError::Deferred { holder, until }) => {
                tracing::info!(%holder, until = until.0, "update deferred by an update lock");
                self.event(
                    Severity::Info,
                    EventKind::UpdateDeferred,
                    format!("update deferred by {holder}"),
                    &[gen_field, ("holder", holder.clone())],
                );
                retry = Some(lease_end(until));
            }
            Err(e) => {
                tracing::error!(error = %e, "update failed; retrying on the next resync");
                self.event(Severity::Error, EventKind::UpdateFailed, e.to_string(), &[gen_field]);
            }
        }
        self.collect_secret_files();
        self.write_status().await;
        self.start_agent_fetch();
        retry
    }
}
