//! An in-memory container engine for the fleet simulator and fast tests.
//!
//! It behaves like the real engine where the agent's decisions depend on it: containers have
//! ids and names, names are unique, images must be pulled before `create`, a container's health
//! follows its image's scripted [`ImageBehavior`], and events are sent for this device's
//! containers. It also records every mutating call in order, so tests can check orderings such
//! as stop-first ("the old container stopped before the new one started").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use fleet_proto::report::{ContainerState, Health};
use fleet_proto::{DeviceId, ImageRef, RegistryCredential};
use tokio::sync::mpsc;

use super::{
    labels, ContainerRuntime, ContainerStats, CreateRequest, ObservedContainer, ProgressFn,
    RuntimeError, RuntimeEvent,
};

/// How containers of an image behave once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageBehavior {
    /// Running and healthy.
    Healthy,
    /// Running, never passes its health check.
    NeverHealthy,
    /// Exits with code 1 right after starting.
    CrashAtStart,
    /// Runs, its health check never leaves "starting": the update fails at its deadline.
    StaysStarting,
}

#[derive(Debug, Clone)]
struct SimContainer {
    observed: ObservedContainer,
    behavior: ImageBehavior,
    /// `stats` calls so far: the simulated CPU time grows with them.
    stats_calls: u64,
    /// The hardware it was created with.
    hardware: crate::runtime::HardwareMapping,
    /// The named volumes it mounts.
    volumes: Vec<String>,
    /// The networks it joined, with its names there.
    networks: Vec<crate::runtime::NetworkJoin>,
}

fn objects(map: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<crate::runtime::EngineObject> {
    map.iter()
        .map(|(name, labels)| crate::runtime::EngineObject {
            name: name.clone(),
            labels: labels.clone(),
        })
        .collect()
}

#[derive(Debug, Default)]
struct SimState {
    containers: BTreeMap<String, SimContainer>,
    local_images: BTreeSet<String>,
    registry: BTreeMap<String, (ImageBehavior, u64)>,
    next_id: u64,
    subscribers: Vec<(String, mpsc::Sender<RuntimeEvent>)>,
    calls: Vec<String>,
    free_disk: Option<u64>,
    /// The runtimes the engine lists; `None` (the default): it does not say, so a release
    /// naming any runtime is admitted.
    runtimes: Option<Vec<String>>,
    unreachable: bool,
    /// Networks and volumes by name, with their labels.
    networks: BTreeMap<String, BTreeMap<String, String>>,
    volumes: BTreeMap<String, BTreeMap<String, String>>,
}

/// The simulated engine.
#[derive(Debug, Default)]
pub struct SimRuntime {
    state: Mutex<SimState>,
}

impl SimRuntime {
    /// An empty engine with an empty registry.
    pub fn new() -> SimRuntime {
        SimRuntime::default()
    }

    /// Makes `image` pullable, `size` bytes large, behaving as `behavior` when run.
    pub fn publish_image(&self, image: &ImageRef, behavior: ImageBehavior, size: u64) {
        self.lock().registry.insert(image.pull_ref(), (behavior, size));
    }

    /// Every mutating call so far, e.g. `create fleet-d-web-…`, `stop fleet-d-web-…`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The networks container `name` joined, with its DNS names on each.
    pub fn networks_of(&self, name: &str) -> Vec<crate::runtime::NetworkJoin> {
        let s = self.lock();
        s.containers
            .values()
            .find(|c| c.observed.name == name)
            .map(|c| c.networks.clone())
            .unwrap_or_default()
    }

    /// Makes every engine call fail as if the engine were down (`true`) or answer again.
    pub fn set_unreachable(&self, down: bool) {
        self.lock().unreachable = down;
    }

    fn reachable(&self) -> Result<(), RuntimeError> {
        if self.lock().unreachable {
            return Err(RuntimeError::Unreachable {
                endpoint: "sim".to_owned(),
                source: "simulated engine outage".into(),
            });
        }
        Ok(())
    }

    /// Sets the free disk space the engine reports (`None`: unknown).
    pub fn set_free_disk(&self, bytes: Option<u64>) {
        self.lock().free_disk = bytes;
    }

    /// Makes the engine list exactly these runtimes (`runc`, `nvidia` on a simulated Jetson).
    pub fn set_runtimes(&self, names: &[&str]) {
        self.lock().runtimes = Some(names.iter().map(|n| (*n).to_owned()).collect());
    }

    /// The hardware a container (by name) was created with.
    pub fn hardware_of(&self, name: &str) -> Option<crate::runtime::HardwareMapping> {
        self.lock()
            .containers
            .values()
            .find(|c| c.observed.name == name)
            .map(|c| c.hardware.clone())
    }

    /// Simulates an engine that lost a container (e.g. after an unclean shutdown).
    pub fn forget_container(&self, name: &str) {
        self.lock().containers.retain(|_, c| c.observed.name != name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A panic while holding the lock only happens in a failing test; keep going with the
        // state as it is.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SimState {
    fn find(&mut self, id_or_name: &str) -> Result<&mut SimContainer, RuntimeError> {
        self.containers
            .values_mut()
            .find(|c| c.observed.id == id_or_name || c.observed.name == id_or_name)
            .ok_or_else(|| RuntimeError::NotFound { what: format!("container {id_or_name}") })
    }

    fn emit(&mut self, c: &ObservedContainer, action: &str) {
        let device = c.label(labels::DEVICE).unwrap_or_default().to_owned();
        let event = RuntimeEvent {
            service: c.label(labels::SERVICE).map(str::to_owned),
            release: c.label(labels::RELEASE).map(str::to_owned),
            exit_code: if action == "die" { c.exit_code.map(i64::from) } else { None },
            at: Some(fleet_proto::UnixMillis::now()),
            ..RuntimeEvent::new(c.id.clone(), action)
        };
        self.subscribers.retain(|(d, tx)| {
            *d != device || tx.try_send(event.clone()).is_ok() || !tx.is_closed()
        });
    }
}

impl ContainerRuntime for SimRuntime {
    async fn list(&self, device: &DeviceId) -> Result<Vec<ObservedContainer>, RuntimeError> {
        self.reachable()?;
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|c| c.observed.label(labels::DEVICE) == Some(device.as_str()))
            .map(|c| c.observed.clone())
            .collect())
    }

    async fn inspect(&self, id: &str) -> Result<ObservedContainer, RuntimeError> {
        self.reachable()?;
        Ok(self.lock().find(id)?.observed.clone())
    }

    async fn has_image(&self, image: &ImageRef) -> Result<bool, RuntimeError> {
        self.reachable()?;
        Ok(self.lock().local_images.contains(&image.pull_ref()))
    }

    async fn pull(
        &self,
        image: &ImageRef,
        _credential: Option<&RegistryCredential>,
        progress: ProgressFn<'_>,
    ) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        let Some(&(_, size)) = s.registry.get(&image.pull_ref()) else {
            return Err(RuntimeError::Pull {
                image: image.pull_ref(),
                reason: "manifest unknown: no such digest in the registry".to_owned(),
            });
        };
        progress(size / 2, Some(size));
        progress(size, Some(size));
        s.local_images.insert(image.pull_ref());
        s.calls.push(format!("pull {}", image.pull_ref()));
        Ok(())
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        if s.containers.values().any(|c| c.observed.image == image) {
            return Err(RuntimeError::Engine {
                op: format!("remove image {image}"),
                status: Some(409),
                message: "image is in use by a container".to_owned(),
            });
        }
        s.local_images.remove(image);
        s.calls.push(format!("remove-image {image}"));
        Ok(())
    }

    async fn download_size(
        &self,
        image: &ImageRef,
        _credential: Option<&RegistryCredential>,
    ) -> Option<u64> {
        self.lock().registry.get(&image.pull_ref()).map(|&(_, size)| size)
    }

    async fn free_disk(&self) -> Result<Option<u64>, RuntimeError> {
        Ok(self.lock().free_disk)
    }

    async fn runtimes(&self) -> Result<Option<Vec<String>>, RuntimeError> {
        Ok(self.lock().runtimes.clone())
    }

    async fn engine(&self) -> Option<fleet_proto::inventory::EngineInfo> {
        Some(fleet_proto::inventory::EngineInfo {
            name: "simulated".to_owned(),
            version: crate::AGENT_VERSION.to_owned(),
            api_version: String::new(),
        })
    }

    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.lock().local_images.iter().cloned().collect())
    }

    async fn create(&self, req: &CreateRequest) -> Result<String, RuntimeError> {
        self.reachable()?;
        let mut s = self.lock();
        let image = req.spec.image.pull_ref();
        if !s.local_images.contains(&image) {
            return Err(RuntimeError::NotFound { what: format!("image {image}") });
        }
        if s.containers.values().any(|c| c.observed.name == req.name) {
            return Err(RuntimeError::Engine {
                op: format!("create container {}", req.name),
                status: Some(409),
                message: "name already in use".to_owned(),
            });
        }
        if let Some(missing) = req.networks.iter().find(|n| !s.networks.contains_key(&n.network)) {
            return Err(RuntimeError::NotFound { what: format!("network {}", missing.network) });
        }
        // Named volumes come into being with their first container, as on Docker.
        for v in &req.spec.volumes {
            if let fleet_proto::release::VolumeSource::Named(name) = &v.source {
                let labels = crate::runtime::volume_labels(req, name);
                s.volumes.entry(name.clone()).or_insert(labels);
            }
        }
        let behavior = s.registry.get(&image).map_or(ImageBehavior::Healthy, |(b, _)| *b);
        s.next_id += 1;
        let id = format!("sim{:012x}", s.next_id);
        let observed = ObservedContainer {
            id: id.clone(),
            name: req.name.clone(),
            labels: req.labels.clone(),
            image,
            state: ContainerState::Created,
            health: Health::NoCheck,
            exit_code: None,
            restart_count: 0,
            oom_killed: false,
            ports: req.port_override.clone().unwrap_or_default(),
            ip: None,
            stop_grace: req.spec.options.stop_grace,
        };
        s.calls.push(format!("create {}", req.name));
        let hardware = req.hardware.clone();
        let volumes = req
            .spec
            .volumes
            .iter()
            .filter_map(|v| match &v.source {
                fleet_proto::release::VolumeSource::Named(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        let networks = req.networks.clone();
        s.containers.insert(
            id.clone(),
            SimContainer { observed, behavior, stats_calls: 0, hardware, volumes, networks },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.reachable()?;
        let mut s = self.lock();
        let c = s.find(id)?;
        if c.observed.state == ContainerState::Running {
            return Ok(());
        }
        let (state, health, exit) = match c.behavior {
            ImageBehavior::Healthy => (ContainerState::Running, Health::Healthy, None),
            ImageBehavior::NeverHealthy => (ContainerState::Running, Health::Unhealthy, None),
            ImageBehavior::CrashAtStart => (ContainerState::Exited, Health::Unhealthy, Some(1)),
            ImageBehavior::StaysStarting => (ContainerState::Running, Health::Starting, None),
        };
        c.observed.state = state;
        c.observed.health = health;
        c.observed.exit_code = exit;
        let (name, observed) = (c.observed.name.clone(), c.observed.clone());
        s.calls.push(format!("start {name}"));
        s.emit(&observed, "start");
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.reachable()?;
        let mut s = self.lock();
        let c = s.find(id)?;
        if c.observed.state != ContainerState::Running {
            return Ok(());
        }
        c.observed.state = ContainerState::Exited;
        c.observed.exit_code = Some(0);
        let (name, observed) = (c.observed.name.clone(), c.observed.clone());
        s.calls.push(format!("stop {name}"));
        s.emit(&observed, "die");
        Ok(())
    }

    async fn restart(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.stop(id, grace).await?;
        self.start(id).await?;
        let mut s = self.lock();
        let c = s.find(id)?;
        c.observed.restart_count += 1;
        let name = c.observed.name.clone();
        s.calls.push(format!("restart {name}"));
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        let Ok(c) = s.find(id) else { return Ok(()) };
        let (cid, name, observed) =
            (c.observed.id.clone(), c.observed.name.clone(), c.observed.clone());
        s.containers.remove(&cid);
        s.calls.push(format!("remove {name}"));
        s.emit(&observed, "destroy");
        Ok(())
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        self.reachable()?;
        let mut s = self.lock();
        let c = s.find(id)?;
        if c.observed.state != ContainerState::Running {
            return Ok(ContainerStats::default());
        }
        // Each sample finds 5 ms more CPU time used: a steady, predictable load.
        c.stats_calls += 1;
        Ok(ContainerStats {
            cpu_ns: Some(c.stats_calls * 5_000_000),
            memory_bytes: Some(16 << 20),
            memory_limit_bytes: Some(1 << 30),
            pids: Some(1),
            net_rx_bytes: Some(c.stats_calls * 1000),
            net_tx_bytes: Some(c.stats_calls * 500),
        })
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<Vec<String>, RuntimeError> {
        let mut s = self.lock();
        let c = s.find(id)?;
        let lines = match c.behavior {
            ImageBehavior::CrashAtStart => vec!["fatal: simulated crash at start".to_owned()],
            ImageBehavior::NeverHealthy => vec!["health endpoint failing (simulated)".to_owned()],
            ImageBehavior::Healthy | ImageBehavior::StaysStarting => {
                vec!["serving (simulated)".to_owned()]
            }
        };
        Ok(lines.into_iter().rev().take(tail).rev().collect())
    }

    async fn networks(&self) -> Result<Vec<crate::runtime::EngineObject>, RuntimeError> {
        self.reachable()?;
        Ok(objects(&self.lock().networks))
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.reachable()?;
        let mut s = self.lock();
        if !s.networks.contains_key(name) {
            s.calls.push(format!("create network {name}"));
            s.networks.insert(name.to_owned(), labels.clone());
        }
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.reachable()?;
        let mut s = self.lock();
        if s.networks.remove(name).is_some() {
            s.calls.push(format!("remove network {name}"));
        }
        Ok(())
    }

    async fn volumes(&self) -> Result<Vec<crate::runtime::EngineObject>, RuntimeError> {
        self.reachable()?;
        Ok(objects(&self.lock().volumes))
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.reachable()?;
        let mut s = self.lock();
        let in_use = s.containers.values().any(|c| c.volumes.iter().any(|v| v == name));
        if in_use {
            return Err(RuntimeError::Engine {
                op: format!("remove volume {name}"),
                status: Some(409),
                message: "volume is in use".to_owned(),
            });
        }
        if s.volumes.remove(name).is_some() {
            s.calls.push(format!("remove volume {name}"));
        }
        Ok(())
    }

    fn events(&self, device: &DeviceId) -> mpsc::Receiver<RuntimeEvent> {
        let (tx, rx) = mpsc::channel(256);
        self.lock().subscribers.push((device.as_str().to_owned(), tx));
        rx
    }
}
