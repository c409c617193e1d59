//! The health gate: after a start, a new container must prove healthy (the engine's check, an
//! agent-side HTTP/TCP probe, or running long enough without restarting) before the deadline,
//! or the update fails with the reason and the container's last log lines.

use std::time::Duration;

use fleet_proto::release::{HealthCheck, Probe};
use fleet_proto::report::{ContainerState, Health};
use fleet_proto::ServiceName;
// tokio's clock, not std's: health deadlines and stable periods follow paused time in tests.
use tokio::time::Instant;

use super::{Reconciler, StepError};
use crate::probe;
use crate::runtime::ContainerRuntime;

/// Why a container was killed, with the limit it had: `was oom-killed: exceeded its memory
/// limit of 32 MiB`. Docker 20.10 can lose the OOMKilled flag under load, so exit code 137
/// without it is named as either.
fn killed_reason(oom_killed: bool, memory_limit: Option<u64>) -> String {
    match (oom_killed, memory_limit.map(crate::report::mib)) {
        (true, Some(l)) => format!("was oom-killed: exceeded its memory limit of {l}"),
        (true, None) => {
            "was oom-killed: it has no memory limit, the device ran out of memory".to_owned()
        }
        (false, Some(l)) => {
            format!("was killed (exit code 137: out of memory or SIGKILL); its memory limit is {l}")
        }
        (false, None) => {
            "was killed (exit code 137: out of memory or SIGKILL); it has no memory limit"
                .to_owned()
        }
    }
}

impl<R: ContainerRuntime> Reconciler<R> {
    /// Waits until container `name` of `service` is healthy, failing on a crash loop, an exit,
    /// a failed check or probe, or the `deadline`.
    pub(super) async fn wait_healthy(
        &self,
        service: &ServiceName,
        name: &str,
        deadline: Duration,
        check: Option<&HealthCheck>,
        memory_limit: Option<u64>,
    ) -> Result<(), StepError> {
        let started = Instant::now();
        let mut first_restarts = None;
        let mut stable_since: Option<Instant> = None;
        // Agent-side probes (HTTP, TCP): run every `interval`; `retries` consecutive failures
        // after the start period fail the update, the first success passes it.
        let agent_probe =
            check.filter(|h| matches!(h.probe, Probe::Http { .. } | Probe::Tcp { .. }));
        let mut next_probe = Instant::now();
        let mut probe_failures = 0u32;
        loop {
            let c = self.runtime.inspect(name).await?;
            let restarts =
                c.restart_count.saturating_sub(*first_restarts.get_or_insert(c.restart_count));
            let fail = |reason: String| async move {
                let log_tail = self.runtime.logs(name, 20).await.unwrap_or_default();
                Err(StepError::Unhealthy { service: service.clone(), reason, log_tail })
            };
            if restarts > self.opts.max_restarts {
                let code = c.exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
                let killed = if c.oom_killed || c.exit_code == Some(137) {
                    format!(": it {}", killed_reason(c.oom_killed, memory_limit))
                } else {
                    String::new()
                };
                return fail(format!(
                    "is crash-looping ({restarts} restarts, last exit code {code}){killed}"
                ))
                .await;
            }
            match (c.state, c.health) {
                (ContainerState::Running, _) if agent_probe.is_some() => {
                    if let Some(h) = agent_probe.filter(|_| Instant::now() >= next_probe) {
                        next_probe = Instant::now() + h.interval.max(self.opts.health_poll);
                        match probe::check(&h.probe, &c, h.timeout).await {
                            Ok(()) => return Ok(()),
                            Err(why) if started.elapsed() >= h.start_period => {
                                probe_failures += 1;
                                tracing::debug!(%service, %why, probe_failures, "probe failed");
                                if probe_failures >= h.retries.max(1) {
                                    return fail(format!(
                                        "failed its health probe {probe_failures} times: {why}"
                                    ))
                                    .await;
                                }
                            }
                            Err(why) => {
                                tracing::debug!(%service, %why, "probe failed in the start period")
                            }
                        }
                    }
                }
                (ContainerState::Running, Health::Healthy) => return Ok(()),
                (ContainerState::Running, Health::NoCheck) => {
                    let since = *stable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.opts.stable_for {
                        return Ok(());
                    }
                }
                (ContainerState::Running, Health::Unhealthy) => {
                    return fail("failed its health check".to_owned()).await;
                }
                // Docker 20.10 can lose the OOMKilled flag under load; exit 137 is SIGKILL either way.
                (ContainerState::Exited | ContainerState::Dead, _)
                    if c.oom_killed || c.exit_code == Some(137) =>
                {
                    return fail(killed_reason(c.oom_killed, memory_limit)).await;
                }
                (ContainerState::Exited | ContainerState::Dead, _) => {
                    return fail(format!("exited with code {}", c.exit_code.unwrap_or(-1))).await;
                }
                _ => stable_since = None,
            }
            if started.elapsed() >= deadline {
                return fail(format!("not healthy within {}s", deadline.as_secs())).await;
            }
            tokio::time::sleep(self.opts.health_poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleet_proto::{DeviceId, ImageRef, ServiceSpec};

    use super::super::ExecOptions;
    use super::*;
    use crate::runtime::sim::{ImageBehavior, SimRuntime};
    use crate::runtime::CreateRequest;
    use crate::state::AgentState;

    fn web() -> ServiceName {
        ServiceName::new("web").unwrap()
    }

    /// A reconciler over the simulated engine, polling once a second, with container `web-1`
    /// of an image that behaves as `behavior` already started.
    async fn started(behavior: ImageBehavior) -> Reconciler<SimRuntime> {
        let rt = Arc::new(SimRuntime::new());
        let image = ImageRef::parse(&format!("r.example/web@sha256:{}", "a".repeat(64))).unwrap();
        rt.publish_image(&image, behavior, 1000);
        rt.pull(&image, None, &|_, _| {}).await.unwrap();
        let req = CreateRequest {
            name: "web-1".to_owned(),
            labels: Default::default(),
            spec: ServiceSpec::new(web(), image),
            port_override: None,
            hardware: Default::default(),
            networks: vec![],
        };
        let id = rt.create(&req).await.unwrap();
        rt.start(&id).await.unwrap();
        let opts = ExecOptions { health_poll: Duration::from_secs(1), ..ExecOptions::default() };
        Reconciler::new(rt, DeviceId::new("robot-1").unwrap(), AgentState::in_memory(), opts)
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_stuck_starting_fails_at_its_deadline_and_not_before() {
        let rec = started(ImageBehavior::StaysStarting).await;
        let t0 = Instant::now();
        let err = rec
            .wait_healthy(&web(), "web-1", Duration::from_secs(30), None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StepError::Unhealthy { reason, .. } if reason == "not healthy within 30s"),
            "{err}"
        );
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(30),
            "polled once a second up to the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_container_passes_the_gate_without_waiting() {
        let rec = started(ImageBehavior::Healthy).await;
        let t0 = Instant::now();
        rec.wait_healthy(&web(), "web-1", Duration::from_secs(30), None, None).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_that_exits_fails_the_gate_at_once_with_its_logs() {
        let rec = started(ImageBehavior::CrashAtStart).await;
        let t0 = Instant::now();
        let err = rec
            .wait_healthy(&web(), "web-1", Duration::from_secs(30), None, None)
            .await
            .unwrap_err();
        let StepError::Unhealthy { reason, log_tail, .. } = err else { panic!("{err}") };
        assert_eq!(reason, "exited with code 1");
        assert!(!log_tail.is_empty());
        assert_eq!(t0.elapsed(), Duration::ZERO, "no waiting for the deadline");
    }
}
