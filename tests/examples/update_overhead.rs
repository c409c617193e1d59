//! How much time the agent adds to an update beyond the engine calls it makes.
//!
//!     cargo run --release -p fleet-e2e --example update_overhead   (after tests/env/up)
//!
//! Wraps the real Docker runtime in a stopwatch that records when engine calls are in flight and
//! when a started container is waiting for its image's own health check, runs v1 -> v2 updates
//! of 5 start-first services with cached images, and reports per update: total time, the union
//! of those intervals, the rest (the agent's own overhead: planning, journalling, health polling
//! granularity), and the time from accepting the desired state to the first create call.
//! Median of 5 updates.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_agent::objects::EngineObject;
use fleet_agent::reconcile::{ExecOptions, Reconciler};
use fleet_agent::runtime::docker::DockerRuntime;
use fleet_agent::runtime::{
    ContainerRuntime, ContainerStats, CreateRequest, ObservedContainer, ProgressFn, RuntimeError,
    RuntimeEvent,
};
use fleet_agent::state::{AgentState, Origin};
use fleet_e2e::TestEnv;
use fleet_proto::release::*;
use fleet_proto::report::Health;
use fleet_proto::{
    DeviceId, ImageRef, RegistryCredential, ReleaseId, ReleaseSpec, ServiceName, ServiceSpec,
};

#[derive(Debug)]
struct Stopwatch {
    inner: DockerRuntime,
    /// Intervals of engine calls, and of waiting for a started container's own health check to
    /// pass (from `start` returning to the first inspect that sees it healthy). Their union is
    /// time the agent cannot shorten; the rest of an update is the agent's own overhead.
    busy: Mutex<Vec<(Instant, Instant)>>,
    started: Mutex<std::collections::HashMap<String, Instant>>,
    first_create: Mutex<Option<Instant>>,
}

impl Stopwatch {
    async fn time<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let t = Instant::now();
        let out = f.await;
        self.busy.lock().unwrap().push((t, Instant::now()));
        out
    }

    /// Total length of the union of the recorded intervals.
    fn busy_total(&self) -> Duration {
        let mut v = self.busy.lock().unwrap().clone();
        v.sort();
        let mut total = Duration::ZERO;
        let mut current: Option<(Instant, Instant)> = None;
        for (a, b) in v {
            current = match current {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    total += cb - ca;
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        total + current.map_or(Duration::ZERO, |(a, b)| b - a)
    }
}

impl ContainerRuntime for Stopwatch {
    async fn list(&self, d: &DeviceId) -> Result<Vec<ObservedContainer>, RuntimeError> {
        self.time(self.inner.list(d)).await
    }
    async fn inspect(&self, id: &str) -> Result<ObservedContainer, RuntimeError> {
        let c = self.time(self.inner.inspect(id)).await?;
        if matches!(c.health, Health::Healthy | Health::NoCheck) {
            if let Some(t) = self.started.lock().unwrap().remove(id) {
                self.busy.lock().unwrap().push((t, Instant::now()));
            }
        }
        Ok(c)
    }
    async fn has_image(&self, i: &ImageRef) -> Result<bool, RuntimeError> {
        self.time(self.inner.has_image(i)).await
    }
    async fn pull(
        &self,
        i: &ImageRef,
        c: Option<&RegistryCredential>,
        p: ProgressFn<'_>,
    ) -> Result<(), RuntimeError> {
        self.time(self.inner.pull(i, c, p)).await
    }
    async fn remove_image(&self, i: &str) -> Result<(), RuntimeError> {
        self.time(self.inner.remove_image(i)).await
    }
    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        self.time(self.inner.images()).await
    }
    // The manifest lookup for the disk check is registry I/O, timed like an engine call (and
    // reported separately in BENCHMARKS.md: it is a round-trip `docker pull` alone would not add).
    async fn download_size(
        &self,
        image: &ImageRef,
        credential: Option<&RegistryCredential>,
    ) -> Option<u64> {
        self.time(self.inner.download_size(image, credential)).await
    }
    async fn free_disk(&self) -> Result<Option<u64>, RuntimeError> {
        self.time(self.inner.free_disk()).await
    }
    async fn runtimes(&self) -> Result<Option<Vec<String>>, RuntimeError> {
        self.time(self.inner.runtimes()).await
    }
    async fn engine(&self) -> Option<fleet_proto::inventory::EngineInfo> {
        self.inner.engine().await
    }
    async fn create(&self, r: &CreateRequest) -> Result<String, RuntimeError> {
        self.first_create.lock().unwrap().get_or_insert_with(Instant::now);
        self.time(self.inner.create(r)).await
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.time(self.inner.start(id)).await?;
        self.started.lock().unwrap().insert(id.to_owned(), Instant::now());
        Ok(())
    }
    async fn stop(&self, id: &str, g: Duration) -> Result<(), RuntimeError> {
        self.time(self.inner.stop(id, g)).await
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.time(self.inner.remove(id)).await
    }
    async fn logs(&self, id: &str, t: usize) -> Result<Vec<String>, RuntimeError> {
        self.time(self.inner.logs(id, t)).await
    }
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        self.time(self.inner.stats(id)).await
    }
    fn events(&self, d: &DeviceId) -> tokio::sync::mpsc::Receiver<RuntimeEvent> {
        self.inner.events(d)
    }
    async fn networks(&self) -> Result<Vec<EngineObject>, RuntimeError> {
        self.time(self.inner.networks()).await
    }
    async fn create_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.time(self.inner.create_network(name, labels)).await
    }
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.time(self.inner.remove_network(name)).await
    }
    async fn volumes(&self) -> Result<Vec<EngineObject>, RuntimeError> {
        self.time(self.inner.volumes()).await
    }
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.time(self.inner.remove_volume(name)).await
    }
}

fn release(version: &str, image: &str) -> ReleaseSpec {
    let services = (1..=5)
        .map(|i| ServiceSpec {
            restart: RestartPolicy::UnlessStopped,
            health_deadline: Duration::from_secs(30),
            ..ServiceSpec::new(
                ServiceName::new(format!("svc{i}")).unwrap(),
                ImageRef::parse(image).unwrap(),
            )
        })
        .collect();
    ReleaseSpec {
        id: ReleaseId::new(format!("bench@{version}")).unwrap(),
        app: "bench".into(),
        version: version.into(),
        services,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let env = TestEnv::load();
    let device = DeviceId::new(format!("bench-overhead-{}", std::process::id())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = env.docker_host.trim_start_matches("unix://").to_owned();
    let rt = Arc::new(Stopwatch {
        inner: DockerRuntime::connect(&socket, Duration::from_secs(600)).await.unwrap(),
        busy: Mutex::new(vec![]),
        started: Mutex::new(Default::default()),
        first_create: Mutex::new(None),
    });
    // Services without a health check count as healthy once running for `stable_for`; set it
    // to zero so the figure is the agent's overhead, not a configured wait.
    let opts = ExecOptions {
        stable_for: Duration::ZERO,
        stop_grace: Duration::from_secs(1),
        fault: None,
        ..ExecOptions::default()
    };
    let rec =
        Reconciler::new(rt.clone(), device.clone(), AgentState::open(dir.path()).unwrap(), opts);
    let (v1, v2) =
        (release("1", &env.image("web:1").reference), release("2", &env.image("web:2").reference));
    rec.apply(Origin::Local { seq: 1 }, Some(v1.clone())).await.unwrap();

    let (mut totals, mut engines, mut overheads, mut to_create) = (vec![], vec![], vec![], vec![]);
    for round in 0..5u64 {
        let target = if round % 2 == 0 { &v2 } else { &v1 };
        rt.busy.lock().unwrap().clear();
        *rt.first_create.lock().unwrap() = None;
        let start = Instant::now();
        let out = rec.apply(Origin::Local { seq: 2 + round }, Some(target.clone())).await.unwrap();
        let total = start.elapsed();
        assert_eq!(out.result, fleet_proto::report::UpdateResult::Applied);
        let engine = rt.busy_total();
        totals.push(total);
        engines.push(engine);
        overheads.push(total.saturating_sub(engine));
        to_create.push(rt.first_create.lock().unwrap().unwrap() - start);
    }
    rec.apply(Origin::Local { seq: 99 }, None).await.unwrap();
    println!("| figure (median of 5 updates, 5 start-first services, images cached) | ms |");
    println!("| --- | ---: |");
    println!("| whole update | {} |", median(totals).as_millis());
    println!(
        "| inside engine calls or waiting for the image's health check | {} |",
        median(engines).as_millis()
    );
    println!("| agent overhead beyond engine calls | {} |", median(overheads).as_millis());
    println!("| desired state accepted -> first create call | {} |", median(to_create).as_millis());
}
