//! One step of a plan carried out against the engine: pulls with progress, creates (with the
//! engine request built from the service, its labels and its mapped hardware), starts, stops,
//! proxy switches, removals; engine calls that fail transiently are retried with backoff.
//! Also the release's networks, made before its containers and removed after.

use fleet_proto::report::PullProgress;
use fleet_proto::{ReleaseSpec, ServiceName, ServiceSpec};

use super::{Reconciler, StepError};
use crate::backoff::Backoff;
use crate::hardware::HardwareMapping;
use crate::plan::{self, Mappings, Step};
use crate::runtime::{
    labels, ContainerRuntime, CreateRequest, NetworkJoin, PortBinding, RuntimeError,
};

impl<R: ContainerRuntime> Reconciler<R> {
    /// Runs one step. `pulls` is (pulls in the plan, (pulls done, their bytes)).
    pub(super) async fn run_step(
        &self,
        target: Option<&ReleaseSpec>,
        hardware: &Mappings,
        step: &Step,
        pulls: (usize, (usize, u64)),
    ) -> Result<(), StepError> {
        let spec_of = |service: &ServiceName| {
            target.and_then(|t| t.services.iter().find(|s| s.name == *service))
        };
        match step {
            Step::Pull { image } => {
                let credential = self.credential_for(image);
                let (count, (done_before, bytes_before)) = pulls;
                let last = done_before + 1 == count;
                let progress = |done: u64, total: Option<u64>| {
                    tracing::debug!(image = %image, done, ?total, "pull progress");
                    let p = pull_progress(bytes_before, last, done, total);
                    self.status.send_modify(|s| s.pull = Some(p));
                };
                self.retry(|| self.runtime.pull(image, credential, &progress)).await?;
                self.state.remember_image(&image.pull_ref())?;
            }
            Step::Create { service, name } => {
                let Some(spec) = spec_of(service) else { return Ok(()) };
                let mapping = hardware.get(service).cloned().unwrap_or_default();
                let req = self.create_request(target, spec, name, mapping);
                self.state.remember_image(&spec.image.pull_ref())?;
                // An image lost by the engine (unclean shutdown) is pulled again, not fatal.
                match self.runtime.create(&req).await {
                    Err(RuntimeError::NotFound { .. }) => {
                        self.runtime
                            .pull(&spec.image, self.credential_for(&spec.image), &|_, _| {})
                            .await?;
                        self.retry(|| self.runtime.create(&req)).await?;
                    }
                    Err(RuntimeError::Engine { status: Some(409), .. }) => {
                        // Created by an interrupted earlier attempt: same name, same config.
                    }
                    other => {
                        other?;
                    }
                }
            }
            Step::Start { name, .. } => self.retry(|| self.runtime.start(name)).await?,
            Step::Stop { name, .. } => {
                if let Some(proxy) = &self.proxy {
                    // Already switched away: let its open connections finish first.
                    if let Err(e) = proxy.drain(name, self.opts.stop_grace).await {
                        // Nothing to wait for through a proxy that does not answer.
                        tracing::warn!(container = %name, error = %e, "cannot drain through the port proxy; stopping anyway");
                    }
                }
                // The container's own stop_grace_period (any release's, a rollback's old one
                // too), else the agent's.
                let grace = match self.runtime.inspect(name).await {
                    Ok(c) => c.stop_grace_or(self.opts.stop_grace),
                    Err(_) => self.opts.stop_grace,
                };
                self.retry(|| self.runtime.stop(name, grace)).await?
            }
            Step::Switch { service, name } => {
                let (Some(proxy), Some(spec)) = (&self.proxy, spec_of(service)) else {
                    return Ok(());
                };
                let c = self.retry(|| self.runtime.inspect(name)).await?;
                let forwards = plan::forwards(spec, &c).ok_or_else(|| StepError::NotPublished {
                    service: service.clone(),
                    name: name.clone(),
                })?;
                proxy.switch(service.as_str(), name, &forwards).await?;
            }
            Step::Unroute { service } => {
                if let Some(proxy) = &self.proxy {
                    proxy.unroute(service).await?;
                }
            }
            Step::Remove { name, .. } => self.retry(|| self.runtime.remove(name)).await?,
            Step::WaitHealthy { service, name, deadline } => {
                let probe = spec_of(service).and_then(|s| s.healthcheck.as_ref());
                let memory_limit = spec_of(service).and_then(|s| s.resources.memory_bytes);
                self.wait_healthy(service, name, *deadline, probe, memory_limit).await?
            }
        }
        Ok(())
    }

    /// The engine request for a service of `target`: its spec, the agent's labels and its
    /// hardware as mapped on this host.
    fn create_request(
        &self,
        target: Option<&ReleaseSpec>,
        spec: &ServiceSpec,
        name: &str,
        hardware: HardwareMapping,
    ) -> CreateRequest {
        let release = target.map(|t| t.id.to_string()).unwrap_or_default();
        let mut labels = spec.labels.clone();
        labels.insert(labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned());
        labels.insert(labels::DEVICE.to_owned(), self.device.to_string());
        labels.insert(labels::RELEASE.to_owned(), release);
        labels.insert(labels::SERVICE.to_owned(), spec.name.to_string());
        if let Some(t) = target {
            labels.insert(labels::APP.to_owned(), t.app.clone());
        }
        let proxied = plan::proxied(spec, self.proxy.is_some());
        labels.insert(labels::CONFIG_HASH.to_owned(), plan::config_hash(spec, proxied, &hardware));
        let mut spec_for_engine = spec.clone();
        if spec.telemetry {
            match &self.opts.telemetry_dir {
                Some(dir) => {
                    use crate::telemetry::ingest::{CONTAINER_DIR, SOCKET_NAME};
                    spec_for_engine.volumes.push(fleet_proto::release::VolumeMount {
                        source: fleet_proto::release::VolumeSource::HostPath(
                            dir.display().to_string(),
                        ),
                        target: CONTAINER_DIR.to_owned(),
                        read_only: true,
                    });
                    spec_for_engine.env.insert(
                        "FLEET_TELEMETRY_SOCKET".to_owned(),
                        format!("{CONTAINER_DIR}/{SOCKET_NAME}"),
                    );
                }
                None => {
                    tracing::warn!(service = %spec.name, "service asks for telemetry but telemetry ingestion is off in this agent's configuration")
                }
            }
        }
        CreateRequest {
            name: name.to_owned(),
            labels,
            spec: spec_for_engine,
            // Proxied: every port on an ephemeral loopback port; the proxy owns the host ports.
            port_override: proxied.then(|| {
                spec.ports
                    .iter()
                    .map(|p| PortBinding {
                        container_port: p.container_port,
                        host_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                        host_port: 0,
                    })
                    .collect()
            }),
            hardware,
            networks: target
                .map(|t| {
                    spec.release_networks()
                        .into_iter()
                        .map(|n| NetworkJoin {
                            network: crate::objects::network_name(&self.device, &t.app, &n.name),
                            aliases: std::iter::once(spec.name.to_string())
                                .chain(n.aliases)
                                .collect(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Before containers are created: refuses networks and volumes of another app (nothing
    /// has changed yet), then creates the release networks that are missing.
    pub(super) async fn prepare_objects(&self, target: &ReleaseSpec) -> Result<(), StepError> {
        let networks = self.runtime.networks().await?;
        let volumes = self.runtime.volumes().await?;
        let clashes = crate::objects::clashes(&self.device, target, &networks, &volumes);
        if !clashes.is_empty() {
            return Err(StepError::Unsatisfiable { problems: clashes });
        }
        for (name, labels) in crate::objects::wanted_networks(&self.device, target) {
            if !networks.iter().any(|n| n.name == name) {
                self.runtime.create_network(&name, &labels).await?;
                tracing::info!(network = %name, "created the release network");
            }
        }
        Ok(())
    }

    /// After an update (or rollback) went through: removes this device's networks the release
    /// in force does not use. A failure is logged, not fatal: a leftover network harms nothing
    /// and is tried again after the next update.
    pub(super) async fn remove_stale_networks(&self, target: Option<&ReleaseSpec>) {
        let networks = match self.runtime.networks().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list networks to remove unused ones");
                return;
            }
        };
        for name in crate::objects::stale_networks(&self.device, target, &networks) {
            match self.runtime.remove_network(name).await {
                Ok(()) => {
                    tracing::info!(network = %name, "removed a network the release no longer uses")
                }
                Err(e) => {
                    tracing::warn!(network = %name, error = %e, "cannot remove an unused network")
                }
            }
        }
    }

    /// Retries transient engine failures with exponential backoff. "Not found" and pull
    /// failures are not transient here: they are answered by the caller.
    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, RuntimeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RuntimeError>>,
    {
        let backoff = Backoff::uncapped(self.opts.retry_delay);
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e @ (RuntimeError::Engine { .. } | RuntimeError::Unreachable { .. }))
                    if attempt < self.opts.attempts =>
                {
                    let delay = backoff.delay(attempt - 1);
                    tracing::warn!(error = %e, attempt, retry_in = ?delay, "engine call failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Progress over all of a plan's downloads: bytes of the pulls already done plus the current
/// one's. The total is known only during the last pull (earlier, later images' sizes are not).
fn pull_progress(bytes_before: u64, last: bool, done: u64, total: Option<u64>) -> PullProgress {
    PullProgress {
        bytes_done: bytes_before + done,
        bytes_total: total.filter(|_| last).map(|t| bytes_before + t),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::ExecOptions;
    use super::*;
    use crate::runtime::sim::SimRuntime;
    use crate::state::AgentState;

    #[test]
    fn pull_progress_adds_earlier_pulls_and_knows_the_total_only_on_the_last() {
        let first = pull_progress(0, false, 500, Some(1000));
        assert_eq!(first, PullProgress { bytes_done: 500, bytes_total: None });
        let last = pull_progress(1000, true, 250, Some(3000));
        assert_eq!(last, PullProgress { bytes_done: 1250, bytes_total: Some(4000) });
        assert_eq!(pull_progress(1000, true, 250, None).bytes_total, None);
    }

    /// A reconciler over a simulated engine that is `down`, retrying 3 times from 500 ms.
    fn reconciler(down: bool) -> (Reconciler<SimRuntime>, Arc<SimRuntime>) {
        let rt = Arc::new(SimRuntime::new());
        rt.set_unreachable(down);
        let opts = ExecOptions {
            attempts: 3,
            retry_delay: Duration::from_millis(500),
            ..ExecOptions::default()
        };
        let device = fleet_proto::DeviceId::new("robot-1").unwrap();
        (Reconciler::new(rt.clone(), device, AgentState::in_memory(), opts), rt)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_engine_failures_are_retried_after_doubling_delays() {
        let (rec, rt) = reconciler(true);
        let t0 = Instant::now();
        let err = rec.retry(|| rt.start("web-1")).await.unwrap_err();
        assert!(matches!(err, RuntimeError::Unreachable { .. }), "{err}");
        assert_eq!(t0.elapsed(), Duration::from_millis(1500), "500 ms, then 1 s, then given up");
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_is_answered_at_once_not_retried() {
        let (rec, rt) = reconciler(false);
        let t0 = Instant::now();
        let err = rec.retry(|| rt.start("web-1")).await.unwrap_err();
        assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
}
