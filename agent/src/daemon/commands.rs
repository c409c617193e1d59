//! Commands from the server: verified, judged by [`crate::accept`], run at most once and
//! answered with exactly one result; a reboot goes through the [`crate::host::Host`] after the
//! result had a moment to leave.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{
    Command, CommandAction, CommandOutcome, CommandResult, EventKind, Severity, Signed, UnixMillis,
};

use super::Daemon;
use crate::accept::{self, verify_reason, CommandVerdict, Recorded};
use crate::link::Outgoing;
use crate::runtime::ContainerRuntime;

/// Longest command log output sent back, in bytes: a result must fit an MQTT message.
const MAX_LOG_BYTES: usize = fleet_proto::MAX_MESSAGE_BYTES / 2;
/// How long a commanded reboot waits, so the link can publish the command's result first.
const REBOOT_DELAY: Duration = Duration::from_secs(3);
/// Most log lines a `FetchLogs` command returns.
const MAX_LOG_LINES: u32 = 1000;

impl<R: ContainerRuntime> Daemon<R> {
    /// A command from the server: verified, run at most once, answered with one result.
    /// Commands that cannot be verified get no result (their id cannot be trusted), only a
    /// `Rejected` event.
    pub(super) async fn command(&self, signed: Signed) {
        let command: Command = match signed.open(&self.trusted) {
            Ok(c) => c,
            Err(e) => {
                let reason = verify_reason(&e);
                tracing::warn!(reason, error = %e, "command from the server refused");
                self.event(
                    Severity::Warning,
                    EventKind::Rejected,
                    format!("command refused: {e}"),
                    &[("reason", reason.to_owned())],
                );
                return;
            }
        };
        let id = command.id;
        let outcome = match accept::screen_command(
            &command,
            &self.config.device_id,
            UnixMillis::now(),
        ) {
            Err(reason) => refused(reason),
            Ok(()) => {
                let recorded = match self.reconciler.state().remember_command(id) {
                    Ok(true) => Recorded::First,
                    Ok(false) => Recorded::Again,
                    Err(e) => Recorded::Failed(e.to_string()),
                };
                match accept::command_verdict(&command.action, recorded, self.config.allow_reboot) {
                    CommandVerdict::Redelivery => {
                        tracing::info!(id, "command already run; ignoring the redelivery");
                        return;
                    }
                    CommandVerdict::Refuse(reason) => refused(reason),
                    CommandVerdict::Fail(reason) => CommandOutcome::Failed { reason },
                    CommandVerdict::Run => {
                        tracing::info!(id, action = ?command.action, "running command from the server");
                        self.run_command(&command.action).await
                    }
                }
            }
        };
        tracing::info!(id, outcome = outcome_name(&outcome), "command finished");
        let reboot = matches!(command.action, CommandAction::Reboot)
            && matches!(outcome, CommandOutcome::Done { .. });
        if let Some(link) = &self.link {
            link.send(Outgoing::CommandResult(CommandResult {
                id,
                device: self.config.device_id.clone(),
                finished_at: UnixMillis::now(),
                outcome,
            }));
        }
        if reboot {
            // Give the link a moment to publish the result before the system goes down.
            let host = Arc::clone(&self.host);
            tokio::spawn(async move {
                tokio::time::sleep(REBOOT_DELAY).await;
                tracing::warn!("rebooting the device as commanded");
                match tokio::task::spawn_blocking(move || host.reboot()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "reboot failed"),
                    Err(e) => tracing::error!(error = %e, "reboot task failed"),
                }
            });
        }
    }

    async fn run_command(&self, action: &CommandAction) -> CommandOutcome {
        match action {
            // Allowed: judged by accept::command_verdict.
            CommandAction::Reboot => CommandOutcome::Done { output: vec!["rebooting".to_owned()] },
            CommandAction::RefreshInventory => {
                let changed = self.rescan_hardware().await;
                let inv = &self.reconciler.hardware().inventory;
                let summary = format!(
                    "inventory re-read{}: {} serial, {} gpio, {} i2c, {} spi, {} video, {} can, {} gpu, {} accelerator",
                    if changed { " (changed; the release is mapped again on the next converge)" } else { ", unchanged" },
                    inv.serial.len(), inv.gpio.len(), inv.i2c.len(), inv.spi.len(),
                    inv.video.len(), inv.can.len(), inv.gpus.len(), inv.accelerators.len(),
                );
                if !changed {
                    // A refresh is also a request to hear the inventory again.
                    self.write_status().await;
                }
                CommandOutcome::Done { output: vec![summary] }
            }
            CommandAction::PurgeVolumes => match self.reconciler.purge_volumes().await {
                Ok(removed) if removed.is_empty() => CommandOutcome::Done {
                    output: vec!["no volumes to purge: every Fleet volume on this device belongs to the release in force".to_owned()],
                },
                Ok(removed) => CommandOutcome::Done {
                    output: std::iter::once(format!("purged {} volume(s) of apps this device no longer runs", removed.len()))
                        .chain(removed)
                        .collect(),
                },
                Err(e) => CommandOutcome::Failed { reason: e.to_string() },
            },
            CommandAction::RestartService { service } => {
                match self.service_container(service).await {
                    Err(outcome) => outcome,
                    Ok(c) => {
                        // The service's own stop_grace_period, as the engine's restart uses it.
                        let grace = c.stop_grace_or(self.config.stop_grace);
                        match self.reconciler.runtime().restart(&c.id, grace).await {
                            Ok(()) => CommandOutcome::Done {
                                output: vec![format!("restarted {service}")],
                            },
                            Err(e) => CommandOutcome::Failed { reason: e.to_string() },
                        }
                    }
                }
            }
            CommandAction::FetchLogs { service, tail } => {
                match self.service_container(service).await {
                    Err(outcome) => outcome,
                    Ok(c) => {
                        let tail = (*tail).min(MAX_LOG_LINES) as usize;
                        match self.reconciler.runtime().logs(&c.id, tail).await {
                            Ok(lines) => {
                                CommandOutcome::Done { output: cap_lines(lines, MAX_LOG_BYTES) }
                            }
                            Err(e) => CommandOutcome::Failed { reason: e.to_string() },
                        }
                    }
                }
            }
        }
    }

    /// The container of `service` in the release in force (a running one preferred).
    async fn service_container(
        &self,
        service: &fleet_proto::ServiceName,
    ) -> Result<crate::runtime::ObservedContainer, CommandOutcome> {
        let observed = self
            .reconciler
            .runtime()
            .list(&self.config.device_id)
            .await
            .map_err(|e| CommandOutcome::Failed { reason: e.to_string() })?;
        let proven = self
            .reconciler
            .state()
            .proven()
            .ok()
            .flatten()
            .and_then(|p| p.release)
            .map(|r| r.id.to_string());
        let mut candidates: Vec<_> = observed
            .iter()
            .filter(|c| c.label(crate::runtime::labels::SERVICE) == Some(service.as_str()))
            .collect();
        candidates.sort_by_key(|c| {
            (
                c.label(crate::runtime::labels::RELEASE).map(str::to_owned) != proven,
                c.state != fleet_proto::report::ContainerState::Running,
            )
        });
        candidates
            .first()
            .map(|c| (*c).clone())
            .ok_or_else(|| refused(format!("no container for service {service} on this device")))
    }
}

fn refused(reason: String) -> CommandOutcome {
    CommandOutcome::Refused { reason }
}

fn outcome_name(o: &CommandOutcome) -> &'static str {
    match o {
        CommandOutcome::Done { .. } => "done",
        CommandOutcome::Failed { .. } => "failed",
        CommandOutcome::Refused { .. } => "refused",
    }
}

/// Keeps the last lines that fit in `max` bytes.
fn cap_lines(lines: Vec<String>, max: usize) -> Vec<String> {
    let mut total = 0;
    let mut keep = lines.len();
    for (i, l) in lines.iter().enumerate().rev() {
        total += l.len() + 8;
        if total > max {
            break;
        }
        keep = i;
    }
    lines.into_iter().skip(keep).collect()
}

#[cfg(test)]
mod tests {
    use fleet_proto::{samples, Command, CommandAction, DeviceSealKey, TrustedKeys, UnixMillis};

    use super::*;
    use crate::config::Config;
    use crate::daemon::exec_options;
    use crate::host::{HostCall, RecordingHost};
    use crate::reconcile::Reconciler;
    use crate::runtime::sim::SimRuntime;
    use crate::state::AgentState;

    fn daemon(
        allow_reboot: bool,
        host: Arc<RecordingHost>,
    ) -> (Daemon<SimRuntime>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(&format!(
            "device_id = \"{}\"\ndata_dir = {:?}\n[commands]\nallow_reboot = {allow_reboot}\n",
            samples::device(),
            dir.path().display().to_string(),
        ))
        .unwrap();
        let reconciler = Reconciler::new(
            Arc::new(SimRuntime::new()),
            config.device_id.clone(),
            AgentState::in_memory(),
            exec_options(&config),
        );
        let daemon = Daemon {
            config,
            reconciler,
            link: None,
            trusted: TrustedKeys::new([samples::server_key().public()]),
            rescan_on_resync: false,
            seal_key: DeviceSealKey::generate().unwrap(),
            seal_key_proof: None,
            host,
            trial: None,
            converged_ok: Default::default(),
            relaunch: Default::default(),
            agent_fetch: None,
        };
        (daemon, dir)
    }

    fn reboot_command(id: u64) -> Signed {
        samples::server_key().sign(&Command {
            id,
            device: samples::device(),
            issued_at: UnixMillis::now(),
            deadline: UnixMillis::now().saturating_add(Duration::from_secs(3600)),
            action: CommandAction::Reboot,
        })
    }

    /// Lets the delayed reboot task (and its blocking call) finish.
    async fn settle(host: &RecordingHost, reboots: usize) {
        tokio::time::sleep(REBOOT_DELAY * 2).await;
        for _ in 0..100 {
            if host.reboots() >= reboots {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reboot_command_reboots_once_even_when_redelivered() {
        let host = Arc::new(RecordingHost::default());
        let (daemon, _dir) = daemon(true, Arc::clone(&host));
        daemon.command(reboot_command(1)).await;
        daemon.command(reboot_command(1)).await;
        settle(&host, 1).await;
        assert_eq!(host.calls(), vec![HostCall::Reboot]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reboot_command_does_not_reboot_where_reboots_are_not_allowed() {
        let host = Arc::new(RecordingHost::default());
        let (daemon, _dir) = daemon(false, Arc::clone(&host));
        daemon.command(reboot_command(1)).await;
        settle(&host, 1).await;
        assert_eq!(host.reboots(), 0);
    }
}
