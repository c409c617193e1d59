//! The planner: what to do to get from the containers that exist to the release that should
//! run. A pure function, exhaustively unit-tested; the executor in [`crate::reconcile`] carries
//! the steps out.
//!
//! Invariants of every plan:
//! * A container of the release being left is never removed before every new container is
//!   healthy: removals come last, so a failed update can always roll back by starting what is
//!   still there.
//! * Start-first services start their new container before the old one stops, and the old
//!   ones stop only after every new container is healthy (so a rollback finds them running);
//!   stop-first services (exclusive hardware) stop the old one first.
//! * Services start in dependency order (`depends_on`), ties in release order.
//! * A container whose configuration hash matches the desired one is kept (adopted), never
//!   recreated.
//! * Planning an already converged device yields no steps.
//! * A service's hardware, as resolved on this host, is part of its configuration: a device
//!   that comes back under a new node gives a new hash, so the container is re-created with it.
//! * Host ports of start-first services go through the agent's port proxy when the agent runs
//!   one (the daemon does): the containers publish on ephemeral loopback ports, the proxy owns
//!   the host port, and a `Switch` after every new container is healthy points it at the new
//!   ones — a blue/green switch. Without a proxy (a one-shot `fleet-agent apply` with no daemon)
//!   two containers cannot share a host port, so such services update stop-first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fleet_proto::release::{NetworkMode, Protocol, UpdateStrategy};
use fleet_proto::report::{ContainerState, Health};
use fleet_proto::{DeviceId, ImageRef, ReleaseSpec, ServiceName, ServiceSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hardware::HardwareMapping;
use crate::runtime::{labels, ObservedContainer};

/// Each service's hardware as resolved on this host ([`crate::hardware::admit`]); services
/// missing from it map nothing.
pub type Mappings = BTreeMap<ServiceName, HardwareMapping>;

static NO_HARDWARE: HardwareMapping = HardwareMapping {
    devices: vec![],
    binds: vec![],
    cgroup_rules: vec![],
    gpus: None,
    runtime: None,
    group_add: vec![],
    env: BTreeMap::new(),
    cpu_rt_runtime_us: None,
    absent_optional: vec![],
};

fn mapping_of<'m>(mappings: &'m Mappings, spec: &ServiceSpec) -> &'m HardwareMapping {
    mappings.get(&spec.name).unwrap_or(&NO_HARDWARE)
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Download an image by digest.
    Pull {
        /// The image.
        image: ImageRef,
    },
    /// Create the container for a service of the target release.
    Create {
        /// The service.
        service: ServiceName,
        /// Container name (deterministic: device, service, configuration hash).
        name: String,
    },
    /// Start a container.
    Start {
        /// The service.
        service: ServiceName,
        /// Container name.
        name: String,
    },
    /// Wait until the container is healthy (or running, without a health check) within the
    /// service's deadline; failing fails the update.
    WaitHealthy {
        /// The service.
        service: ServiceName,
        /// Container name.
        name: String,
        /// How long it may take.
        deadline: Duration,
    },
    /// Stop routing a service's host ports through the proxy (the service leaves, or now
    /// publishes its ports itself).
    Unroute {
        /// The service.
        service: String,
    },
    /// Point the proxy's host ports of a service at this (healthy) container. Connections
    /// already open to the previous container continue until they close.
    Switch {
        /// The service.
        service: ServiceName,
        /// Container name.
        name: String,
    },
    /// Stop a container (kept for rollback until the update is proven). Connections the proxy
    /// still forwards to it are drained first.
    Stop {
        /// The service the container belonged to.
        service: String,
        /// Container name.
        name: String,
    },
    /// Remove a container for good.
    Remove {
        /// The service the container belonged to.
        service: String,
        /// Container name.
        name: String,
    },
}

impl Step {
    /// Short kind name, as the fault hook and the journal name steps (`pull`, `create`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Pull { .. } => "pull",
            Step::Create { .. } => "create",
            Step::Start { .. } => "start",
            Step::WaitHealthy { .. } => "wait-healthy",
            Step::Unroute { .. } => "unroute",
            Step::Switch { .. } => "switch",
            Step::Stop { .. } => "stop",
            Step::Remove { .. } => "remove",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Pull { image } => write!(f, "pull {image}"),
            Step::Unroute { service } => write!(f, "unroute {service}"),
            Step::Create { name, .. }
            | Step::Start { name, .. }
            | Step::WaitHealthy { name, .. }
            | Step::Switch { name, .. }
            | Step::Stop { name, .. }
            | Step::Remove { name, .. } => write!(f, "{} {name}", self.kind()),
        }
    }
}

/// Hash of a service's full configuration, of how its ports are published and of its
/// hardware as mapped on this host: equal hash means an existing container can be kept.
pub fn config_hash(spec: &ServiceSpec, proxied: bool, hardware: &HardwareMapping) -> String {
    // JSON of the spec is deterministic: maps are BTreeMaps and fields keep declaration order.
    let mut json = serde_json::to_vec(spec).unwrap_or_default();
    // Appended fields, newest first: each is left out while empty (see below).
    let unused_options = format!(
        r#","options":{}}}"#,
        serde_json::to_string(&fleet_proto::release::ContainerOptions::default())
            .unwrap_or_default()
    );
    if json.ends_with(unused_options.as_bytes()) {
        json.truncate(json.len() - unused_options.len());
        json.push(b'}');
    }
    const UNUSED_NAMESPACES: &[u8] = br#","host_namespaces":[]}"#;
    if json.ends_with(UNUSED_NAMESPACES) {
        json.truncate(json.len() - UNUSED_NAMESPACES.len());
        json.push(b'}');
    }
    // Secret mounts reach the hash as the read-only binds they become (named by the secret's
    // digest, see crate::secrets), so a rotation re-creates exactly the services that read it.
    const UNUSED_SECRETS: &[u8] = br#","secrets":[]}"#;
    if json.ends_with(UNUSED_SECRETS) {
        json.truncate(json.len() - UNUSED_SECRETS.len());
        json.push(b'}');
    }
    // Fields appended to ServiceSpec (always last in the JSON) are left out while empty, so a
    // spec that does not use them hashes as it did before they existed: upgrading the agent
    // keeps its containers instead of re-creating every one of them.
    // Networks are the exception: before them a release-network service ran on the engine's
    // default bridge, where no other service could reach it by name, so it must be re-created
    // on its app's network; only host- and none-network services keep their hashes.
    const UNUSED_NETWORKS: &[u8] = br#","networks":[]}"#;
    if spec.network_mode != NetworkMode::Release && json.ends_with(UNUSED_NETWORKS) {
        json.truncate(json.len() - UNUSED_NETWORKS.len());
        json.push(b'}');
    }
    const UNUSED_PRIVILEGES: &[u8] = br#","no_new_privileges":false,"cpu_shares":null}"#;
    if json.ends_with(UNUSED_PRIVILEGES) {
        json.truncate(json.len() - UNUSED_PRIVILEGES.len());
        json.push(b'}');
    }
    const UNUSED_TELEMETRY: &[u8] = br#","telemetry":false}"#;
    if json.ends_with(UNUSED_TELEMETRY) {
        json.truncate(json.len() - UNUSED_TELEMETRY.len());
        json.push(b'}');
    }
    const UNUSED_APPENDED: &[u8] = br#","group_add":[],"optional_hardware":[]}"#;
    if json.ends_with(UNUSED_APPENDED) {
        json.truncate(json.len() - UNUSED_APPENDED.len());
        json.push(b'}');
    }
    if proxied {
        // A proxied container publishes on loopback ephemeral ports instead of the host ports:
        // a different container, so a different name.
        json.extend_from_slice(b"|proxied");
    }
    if !hardware.is_empty() {
        // Left out while empty, so services without hardware keep their hashes.
        json.extend_from_slice(b"|hardware:");
        json.extend(serde_json::to_vec(hardware).unwrap_or_default());
    }
    let digest = Sha256::digest(&json);
    fleet_proto::hex::encode(&digest[..6])
}

/// The container name for a service of this device with this configuration and no hardware.
pub fn container_name(device: &DeviceId, spec: &ServiceSpec, proxied: bool) -> String {
    mapped_container_name(device, spec, proxied, &NO_HARDWARE)
}

/// The container name for a service of this device with this configuration and hardware.
pub fn mapped_container_name(
    device: &DeviceId,
    spec: &ServiceSpec,
    proxied: bool,
    hardware: &HardwareMapping,
) -> String {
    format!("fleet-{device}-{}-{}", spec.name, config_hash(spec, proxied, hardware))
}

/// Whether the service's host ports go through the agent's proxy: it updates start-first,
/// publishes host ports, all of them TCP (the proxy forwards TCP), on the release network (a
/// host-network container binds its ports itself), and the agent runs a proxy.
pub fn proxied(spec: &ServiceSpec, proxy_available: bool) -> bool {
    proxy_available
        && spec.update == UpdateStrategy::StartFirst
        && spec.network_mode != NetworkMode::Host
        && spec.ports.iter().any(|p| p.host_port != 0)
        && spec.ports.iter().all(|p| p.protocol == Protocol::Tcp)
}

/// The strategy the update really uses: start-first needs two containers at once, which host
/// ports bound directly (published, or bound on the host network) do not allow, so such
/// services update stop-first.
pub fn effective_strategy(spec: &ServiceSpec, proxy_available: bool) -> UpdateStrategy {
    let binds_host_ports = !proxied(spec, proxy_available)
        && spec.ports.iter().any(|p| p.host_port != 0 || spec.network_mode == NetworkMode::Host);
    if binds_host_ports {
        UpdateStrategy::StopFirst
    } else {
        spec.update
    }
}

/// One host port the proxy forwards: where it listens and the container's loopback port.
/// Also the shape on the proxy's control socket and in its route file (`crate::proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Forward {
    /// Host address the proxy listens on.
    pub listen: SocketAddr,
    /// The container's published loopback port.
    pub backend: SocketAddr,
}

/// Where the proxy sends a service's host ports now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The container receiving new connections.
    pub container: String,
    /// Its forwards.
    pub forwards: BTreeSet<Forward>,
}

/// The proxy's routes by service.
pub type Routes = BTreeMap<String, Route>;

/// The forwards for `spec`'s host ports to container `c`, or `None` while one of its ports is
/// not published (not started yet).
pub fn forwards(spec: &ServiceSpec, c: &ObservedContainer) -> Option<BTreeSet<Forward>> {
    spec.ports
        .iter()
        .filter(|p| p.host_port != 0)
        .map(|p| {
            let ip = if p.loopback_only { Ipv4Addr::LOCALHOST } else { Ipv4Addr::UNSPECIFIED };
            let backend = c.ports.iter().find(|b| b.container_port == p.container_port)?;
            let backend_ip = if backend.host_ip.is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                backend.host_ip
            };
            Some(Forward {
                listen: SocketAddr::new(IpAddr::V4(ip), p.host_port),
                backend: SocketAddr::new(backend_ip, backend.host_port),
            })
        })
        .collect()
}

/// Services in start order: dependencies first, otherwise release order. Unknown dependencies
/// and cycles are refused by [`ReleaseSpec::validate`] and the agent's checks before planning;
/// here a cycle just falls back to release order for the remaining services.
pub fn start_order(release: &ReleaseSpec) -> Vec<&ServiceSpec> {
    let mut done: BTreeSet<&ServiceName> = BTreeSet::new();
    let mut order = Vec::with_capacity(release.services.len());
    while order.len() < release.services.len() {
        let ready = release.services.iter().find(|s| {
            !done.contains(&s.name)
                && s.depends_on.iter().all(|d| {
                    done.contains(&d.service)
                        || !release.services.iter().any(|o| o.name == d.service)
                })
        });
        let next = ready.or_else(|| release.services.iter().find(|s| !done.contains(&s.name)));
        let Some(next) = next else { break };
        done.insert(&next.name);
        order.push(next);
    }
    order
}

/// Whether `c` counts as up for its service: running and healthy (or without a health check).
pub fn is_up(c: &ObservedContainer) -> bool {
    c.state == ContainerState::Running && matches!(c.health, Health::Healthy | Health::NoCheck)
}

/// Plans the steps from `observed` (this device's containers) to `target` (`None`: run no
/// application). `has_image` says whether an image is present locally; `routes` are the port
/// proxy's routes, `None` when the agent runs no proxy. For a release without hardware; see
/// [`plan_with_hardware`].
pub fn plan(
    device: &DeviceId,
    target: Option<&ReleaseSpec>,
    observed: &[ObservedContainer],
    has_image: &dyn Fn(&ImageRef) -> bool,
    routes: Option<&Routes>,
) -> Vec<Step> {
    plan_with_hardware(device, target, observed, has_image, routes, &Mappings::new())
}

/// [`plan`], with each service's hardware as mapped on this host.
pub fn plan_with_hardware(
    device: &DeviceId,
    target: Option<&ReleaseSpec>,
    observed: &[ObservedContainer],
    has_image: &dyn Fn(&ImageRef) -> bool,
    routes: Option<&Routes>,
    hardware: &Mappings,
) -> Vec<Step> {
    let proxy = routes.is_some();
    let mut pulls = Vec::new();
    let mut unroutes = Vec::new();
    let mut main = Vec::new();
    // Old containers holding a host port the proxy is about to take (they published it
    // directly): stopped after every new container is healthy, right before the switch.
    let mut stops_before_switch = Vec::new();
    let mut switches = Vec::new();
    let mut stops_late = Vec::new();
    let mut removes = Vec::new();
    let keep = target_names(device, target, proxy, hardware);

    for spec in target.map(start_order).unwrap_or_default() {
        let proxied = proxied(spec, proxy);
        let strategy = effective_strategy(spec, proxy);
        let name = mapped_container_name(device, spec, proxied, mapping_of(hardware, spec));
        let existing = observed.iter().find(|c| c.name == name);
        let olds: Vec<&ObservedContainer> = observed
            .iter()
            .filter(|c| c.label(labels::SERVICE) == Some(spec.name.as_str()) && c.name != name)
            .collect();
        let running_olds: Vec<&&ObservedContainer> = olds
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Restarting))
            .collect();
        let holds_host_port = |c: &ObservedContainer| {
            c.ports.iter().any(|b| spec.ports.iter().any(|p| p.host_port == b.host_port))
        };
        let stop_olds = |steps: &mut Vec<Step>, before_switch: &mut Vec<Step>| {
            for c in &running_olds {
                let stop = Step::Stop { service: spec.name.to_string(), name: c.name.clone() };
                if proxied && holds_host_port(c) {
                    before_switch.push(stop);
                } else {
                    steps.push(stop);
                }
            }
        };
        let svc = spec.name.clone();
        let wait = Step::WaitHealthy {
            service: svc.clone(),
            name: name.clone(),
            deadline: spec.health_deadline,
        };
        let stop_first = strategy == UpdateStrategy::StopFirst;

        match existing {
            Some(c) if is_up(c) => {
                // Adopted as is; an interrupted update may have left the old one running.
                stop_olds(&mut stops_late, &mut stops_before_switch);
            }
            Some(c) if c.state == ContainerState::Running => {
                // Started but not yet judged healthy (e.g. the agent restarted mid-update).
                main.push(wait);
                stop_olds(&mut stops_late, &mut stops_before_switch);
            }
            Some(_) => {
                if stop_first {
                    stop_olds(&mut main, &mut stops_before_switch);
                }
                main.push(Step::Start { service: svc.clone(), name: name.clone() });
                main.push(wait);
                if !stop_first {
                    stop_olds(&mut stops_late, &mut stops_before_switch);
                }
            }
            None => {
                if !has_image(&spec.image)
                    && !pulls
                        .iter()
                        .any(|p| matches!(p, Step::Pull { image } if *image == spec.image))
                {
                    pulls.push(Step::Pull { image: spec.image.clone() });
                }
                if stop_first {
                    stop_olds(&mut main, &mut stops_before_switch);
                }
                main.push(Step::Create { service: svc.clone(), name: name.clone() });
                main.push(Step::Start { service: svc.clone(), name: name.clone() });
                main.push(wait);
                if !stop_first {
                    stop_olds(&mut stops_late, &mut stops_before_switch);
                }
            }
        }

        if let Some(routes) = routes {
            let route = routes.get(spec.name.as_str());
            if proxied {
                // Switch unless the route already sends every port to this container as it is
                // published now (a restarted container may have new ephemeral ports).
                let current = existing.filter(|c| is_up(c)).and_then(|c| forwards(spec, c));
                let in_place = match (route, current) {
                    (Some(r), Some(f)) => r.container == name && r.forwards == f,
                    _ => false,
                };
                if !in_place {
                    switches.push(Step::Switch { service: svc.clone(), name: name.clone() });
                }
            } else if route.is_some() {
                unroutes.push(Step::Unroute { service: svc.to_string() });
            }
        }
    }

    // Routes of services the target no longer has go first: nothing of theirs stays.
    if let Some(routes) = routes {
        for service in routes.keys() {
            let in_target = target
                .is_some_and(|t| t.services.iter().any(|s| s.name.as_str() == service.as_str()));
            if !in_target {
                unroutes.push(Step::Unroute { service: service.clone() });
            }
        }
    }

    // Everything not kept goes, after every new container proved healthy. Containers of
    // services the target no longer has are stopped at that point too.
    let mut leaving: Vec<&ObservedContainer> =
        observed.iter().filter(|c| !keep.contains_key(&c.name)).collect();
    leaving.sort_by(|a, b| a.name.cmp(&b.name));
    let target_services: BTreeSet<&str> =
        target.map(|t| t.services.iter().map(|s| s.name.as_str()).collect()).unwrap_or_default();
    for c in leaving {
        let service = c.label(labels::SERVICE).unwrap_or("?").to_owned();
        let stop_planned = main
            .iter()
            .chain(&stops_before_switch)
            .chain(&stops_late)
            .any(|s| matches!(s, Step::Stop { name, .. } if *name == c.name));
        if !target_services.contains(service.as_str())
            && !stop_planned
            && matches!(c.state, ContainerState::Running | ContainerState::Restarting)
        {
            stops_late.push(Step::Stop { service: service.clone(), name: c.name.clone() });
        }
        removes.push(Step::Remove { service, name: c.name.clone() });
    }

    let mut steps = pulls;
    steps.extend(unroutes);
    steps.extend(main);
    steps.extend(stops_before_switch);
    steps.extend(switches);
    steps.extend(stops_late);
    steps.extend(removes);
    steps
}

/// The target's container names and their services: what a converged device runs.
pub fn target_names(
    device: &DeviceId,
    target: Option<&ReleaseSpec>,
    proxy_available: bool,
    hardware: &Mappings,
) -> BTreeMap<String, ServiceName> {
    target
        .map(|t| {
            t.services
                .iter()
                .map(|s| {
                    let proxied = proxied(s, proxy_available);
                    let name = mapped_container_name(device, s, proxied, mapping_of(hardware, s));
                    (name, s.name.clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use fleet_proto::release::{Dependency, DependencyCondition};
    use fleet_proto::{samples, ReleaseId};

    use super::*;

    fn device() -> DeviceId {
        DeviceId::new("d1").unwrap()
    }

    /// Two independent start-first services, no ports, no hardware.
    fn release(version: &str) -> ReleaseSpec {
        let mut r = samples::release();
        r.id = ReleaseId::new(format!("app@{version}")).unwrap();
        for s in &mut r.services {
            s.secrets.clear(); // secrets come sealed from a server, not in these tests
            s.depends_on.clear();
            s.update = UpdateStrategy::StartFirst;
            s.env.insert("VERSION".into(), version.into());
            s.ports.clear();
        }
        r
    }

    /// What the engine shows after `release` was fully applied.
    fn running(release: &ReleaseSpec) -> Vec<ObservedContainer> {
        release
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ObservedContainer {
                id: format!("id-{}-{i}", release.id),
                name: container_name(&device(), s, false),
                labels: BTreeMap::from([
                    (labels::DEVICE.to_owned(), "d1".to_owned()),
                    (labels::SERVICE.to_owned(), s.name.to_string()),
                    (labels::RELEASE.to_owned(), release.id.to_string()),
                ]),
                image: s.image.pull_ref(),
                state: ContainerState::Running,
                health: Health::Healthy,
                exit_code: None,
                restart_count: 0,
                oom_killed: false,
                ports: vec![],
                ip: None,
                stop_grace: None,
            })
            .collect()
    }

    fn all_present(_: &ImageRef) -> bool {
        true
    }

    fn kinds(steps: &[Step]) -> Vec<String> {
        steps.iter().map(|s| format!("{} {}", s.kind(), step_service(s))).collect()
    }

    fn step_service(s: &Step) -> String {
        match s {
            Step::Pull { .. } => "-".into(),
            Step::Create { service, .. }
            | Step::Start { service, .. }
            | Step::WaitHealthy { service, .. } => service.to_string(),
            Step::Switch { service, .. } => service.to_string(),
            Step::Stop { service, .. }
            | Step::Remove { service, .. }
            | Step::Unroute { service } => service.clone(),
        }
    }

    #[test]
    fn fresh_device_pulls_creates_starts_and_waits_for_every_service() {
        let r = release("1");
        let steps = plan(&device(), Some(&r), &[], &|_| false, None);
        assert_eq!(
            kinds(&steps),
            [
                "pull -",
                "pull -",
                "create web",
                "start web",
                "wait-healthy web",
                "create lidar",
                "start lidar",
                "wait-healthy lidar"
            ]
        );
    }

    #[test]
    fn converged_device_plans_nothing() {
        let r = release("1");
        assert_eq!(plan(&device(), Some(&r), &running(&r), &all_present, None), []);
    }

    #[test]
    fn start_first_keeps_old_containers_running_until_every_new_one_is_healthy() {
        let (v1, v2) = (release("1"), release("2"));
        let steps = plan(&device(), Some(&v2), &running(&v1), &all_present, None);
        assert_eq!(
            kinds(&steps),
            [
                "create web",
                "start web",
                "wait-healthy web",
                "create lidar",
                "start lidar",
                "wait-healthy lidar",
                "stop web",
                "stop lidar",
                "remove lidar",
                "remove web",
            ]
        );
    }

    /// `release(version)` whose web service publishes host port 8080 (start-first).
    fn with_port(version: &str) -> ReleaseSpec {
        let mut r = release(version);
        r.services[0].ports = vec![fleet_proto::release::PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            loopback_only: false,
        }];
        r
    }

    /// What the engine shows after `r` was applied by an agent with (or without) a proxy:
    /// proxied containers publish on an ephemeral loopback port.
    fn running_published(r: &ReleaseSpec, proxy: bool, ephemeral: u16) -> Vec<ObservedContainer> {
        let mut cs = running(r);
        for (c, s) in cs.iter_mut().zip(&r.services) {
            let proxied = proxied(s, proxy);
            c.name = container_name(&device(), s, proxied);
            c.ports = s
                .ports
                .iter()
                .map(|p| crate::runtime::PortBinding {
                    container_port: p.container_port,
                    host_ip: if proxied {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    } else {
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    },
                    host_port: if proxied { ephemeral } else { p.host_port },
                })
                .collect();
        }
        cs
    }

    fn route_to(r: &ReleaseSpec, observed: &[ObservedContainer]) -> Routes {
        let web = &r.services[0];
        let c = observed.iter().find(|c| c.name == container_name(&device(), web, true)).unwrap();
        Routes::from([(
            "web".to_owned(),
            Route { container: c.name.clone(), forwards: forwards(web, c).unwrap() },
        )])
    }

    #[test]
    fn with_a_proxy_a_host_port_service_switches_after_every_new_container_is_healthy() {
        let (v1, v2) = (with_port("1"), with_port("2"));
        let observed = running_published(&v1, true, 40001);
        let routes = route_to(&v1, &observed);
        assert_eq!(plan(&device(), Some(&v1), &observed, &all_present, Some(&routes)), []);
        let steps = plan(&device(), Some(&v2), &observed, &all_present, Some(&routes));
        assert_eq!(
            kinds(&steps),
            [
                "create web",
                "start web",
                "wait-healthy web",
                "create lidar",
                "start lidar",
                "wait-healthy lidar",
                "switch web",
                "stop web",
                "stop lidar",
                "remove lidar",
                "remove web",
            ]
        );
    }

    #[test]
    fn without_a_proxy_a_start_first_service_with_a_host_port_updates_stop_first() {
        let (v1, v2) = (with_port("1"), with_port("2"));
        let steps =
            plan(&device(), Some(&v2), &running_published(&v1, false, 0), &all_present, None);
        let web: Vec<String> = kinds(&steps).into_iter().filter(|k| k.ends_with("web")).collect();
        assert_eq!(web, ["stop web", "create web", "start web", "wait-healthy web", "remove web"]);
        assert_eq!(effective_strategy(&v2.services[0], false), UpdateStrategy::StopFirst);
        assert_eq!(effective_strategy(&v2.services[0], true), UpdateStrategy::StartFirst);
        let mut udp = v2.services[0].clone();
        udp.ports[0].protocol = Protocol::Udp;
        assert!(!proxied(&udp, true), "the proxy forwards TCP only");
        assert_eq!(effective_strategy(&udp, true), UpdateStrategy::StopFirst);
    }

    #[test]
    fn after_an_agent_restart_adopted_containers_are_routed_again_not_recreated() {
        let v1 = with_port("1");
        let observed = running_published(&v1, true, 40001);
        let steps = plan(&device(), Some(&v1), &observed, &all_present, Some(&Routes::new()));
        assert_eq!(kinds(&steps), ["switch web"]);
    }

    #[test]
    fn a_container_restarted_on_a_new_ephemeral_port_is_switched_to_it() {
        let v1 = with_port("1");
        let routes = route_to(&v1, &running_published(&v1, true, 40001));
        let moved = running_published(&v1, true, 40002);
        assert_eq!(
            kinds(&plan(&device(), Some(&v1), &moved, &all_present, Some(&routes))),
            ["switch web"]
        );
    }

    #[test]
    fn a_directly_published_old_container_stops_right_before_the_proxy_takes_its_port() {
        // Applied once without the daemon, then the daemon (with its proxy) takes over.
        let v1 = with_port("1");
        let observed = running_published(&v1, false, 0);
        let steps = plan(&device(), Some(&v1), &observed, &all_present, Some(&Routes::new()));
        assert_eq!(
            kinds(&steps),
            ["create web", "start web", "wait-healthy web", "stop web", "switch web", "remove web"]
        );
    }

    #[test]
    fn routes_of_services_leaving_are_closed_first() {
        let v1 = with_port("1");
        let observed = running_published(&v1, true, 40001);
        let routes = route_to(&v1, &observed);
        let steps = plan(&device(), None, &observed, &all_present, Some(&routes));
        assert_eq!(kinds(&steps)[0], "unroute web");
        let mut v2 = v1.clone();
        v2.services[0].update = UpdateStrategy::StopFirst;
        let steps = plan(&device(), Some(&v2), &observed, &all_present, Some(&routes));
        assert_eq!(kinds(&steps)[..2], ["unroute web", "stop web"]);
    }

    #[test]
    fn stop_first_stops_the_old_container_before_creating_the_new() {
        let v1 = release("1");
        let mut v2 = release("2");
        v2.services[1].update = UpdateStrategy::StopFirst;
        let steps = plan(&device(), Some(&v2), &running(&v1), &all_present, None);
        let lidar: Vec<String> =
            kinds(&steps).into_iter().filter(|k| k.ends_with("lidar")).collect();
        assert_eq!(
            lidar,
            ["stop lidar", "create lidar", "start lidar", "wait-healthy lidar", "remove lidar"]
        );
    }

    #[test]
    fn unchanged_services_are_adopted_not_recreated() {
        let v1 = release("1");
        let mut v2 = v1.clone();
        v2.id = ReleaseId::new("app@2").unwrap();
        v2.services[0].env.insert("NEW".into(), "x".into());
        let steps = plan(&device(), Some(&v2), &running(&v1), &all_present, None);
        assert!(steps.iter().all(|s| step_service(s) == "web"), "lidar untouched: {steps:?}");
    }

    #[test]
    fn images_present_are_not_pulled_and_shared_images_are_pulled_once() {
        let mut r = release("1");
        r.services[1].image = r.services[0].image.clone();
        let steps = plan(&device(), Some(&r), &[], &|_| false, None);
        assert_eq!(steps.iter().filter(|s| s.kind() == "pull").count(), 1);
        let steps = plan(&device(), Some(&r), &[], &all_present, None);
        assert_eq!(steps.iter().filter(|s| s.kind() == "pull").count(), 0);
    }

    #[test]
    fn dependencies_start_first() {
        let mut r = release("1");
        let lidar = r.services[1].name.clone();
        r.services[0]
            .depends_on
            .push(Dependency { service: lidar, condition: DependencyCondition::Healthy });
        let order: Vec<&str> = start_order(&r).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["lidar", "web"]);
    }

    #[test]
    fn dependency_cycles_fall_back_to_release_order() {
        let mut r = release("1");
        let (a, b) = (r.services[0].name.clone(), r.services[1].name.clone());
        r.services[0]
            .depends_on
            .push(Dependency { service: b, condition: DependencyCondition::Started });
        r.services[1]
            .depends_on
            .push(Dependency { service: a, condition: DependencyCondition::Started });
        assert_eq!(start_order(&r).len(), 2);
    }

    #[test]
    fn rollback_is_a_plan_back_to_the_old_release() {
        // v2's web came up (and v1's web was stopped), then v2's lidar failed: planning v1
        // against that state restarts old web, drops the new containers, touches old lidar not.
        let (v1, v2) = (release("1"), release("2"));
        let mut observed = running(&v1);
        observed[0].state = ContainerState::Exited;
        let mut new = running(&v2);
        new[1].health = Health::Unhealthy;
        observed.extend(new);
        let steps = plan(&device(), Some(&v1), &observed, &all_present, None);
        assert_eq!(
            kinds(&steps),
            [
                "start web",
                "wait-healthy web",
                "stop web",
                "stop lidar",
                "remove lidar",
                "remove web"
            ]
        );
        let removed: Vec<&str> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Remove { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        for name in removed {
            assert!(
                name.ends_with(&config_hash(&v2.services[0], false, &NO_HARDWARE))
                    || name.ends_with(&config_hash(&v2.services[1], false, &NO_HARDWARE)),
                "only v2 containers removed: {name}"
            );
        }
    }

    #[test]
    fn fields_appended_to_the_spec_do_not_change_the_hash_while_unused() {
        let mut spec = release("1").services[0].clone();
        spec.networks.clear();
        spec.secrets.clear();
        spec.network_mode = NetworkMode::Host;
        spec.ports.clear();
        // The hash of this spec as computed before group_add and optional_hardware existed.
        let without_options = |spec: &ServiceSpec| {
            let options =
                format!(r#","options":{}"#, serde_json::to_string(&spec.options).unwrap());
            serde_json::to_string(spec).unwrap().replace(&options, "")
        };
        let old_hash = |spec: &ServiceSpec| {
            let json = without_options(spec);
            let before =
                json.replace(r#","group_add":[],"optional_hardware":[],"telemetry":false,"no_new_privileges":false,"cpu_shares":null,"networks":[],"secrets":[],"host_namespaces":[]"#, "");
            assert!(before.ends_with(r#""depends_on":[]}"#), "{before}");
            let digest = Sha256::digest(before.as_bytes());
            fleet_proto::hex::encode(&digest[..6])
        };
        let old = old_hash(&spec);
        assert_eq!(config_hash(&spec, false, &NO_HARDWARE), old);
        // A release-network service moves from the default bridge to its app's network.
        let on_release = ServiceSpec { network_mode: NetworkMode::Release, ..spec.clone() };
        assert_ne!(config_hash(&on_release, false, &NO_HARDWARE), old_hash(&on_release));
        // Secrets came after networks: a release-network service hashes as it did before them.
        let before_secrets = {
            let json =
                without_options(&on_release).replace(r#","secrets":[],"host_namespaces":[]"#, "");
            let digest = Sha256::digest(json.as_bytes());
            fleet_proto::hex::encode(&digest[..6])
        };
        assert_eq!(config_hash(&on_release, false, &NO_HARDWARE), before_secrets);
        let grouped = ServiceSpec { group_add: vec!["dialout".to_owned()], ..spec };
        assert_ne!(
            config_hash(&grouped, false, &NO_HARDWARE),
            old,
            "a used field changes the container"
        );
        let base = || ServiceSpec { group_add: vec![], ..grouped.clone() };
        let telemetry = ServiceSpec { telemetry: true, ..base() };
        assert_ne!(config_hash(&telemetry, false, &NO_HARDWARE), old);
        let hardened = ServiceSpec { no_new_privileges: true, ..base() };
        let host_pid =
            ServiceSpec { host_namespaces: vec![fleet_proto::policy::Namespace::Pid], ..base() };
        assert_ne!(config_hash(&host_pid, false, &NO_HARDWARE), old);
        assert_ne!(config_hash(&hardened, false, &NO_HARDWARE), old);
        let weighted = ServiceSpec { cpu_shares: Some(512), ..base() };
        assert_ne!(config_hash(&weighted, false, &NO_HARDWARE), old);
        let joined = ServiceSpec {
            networks: vec![fleet_proto::release::NetworkAttachment {
                name: "backend".into(),
                aliases: vec![],
            }],
            ..base()
        };
        assert_ne!(config_hash(&joined, false, &NO_HARDWARE), old);
        let mut graceful = base();
        graceful.options.stop_grace = Some(Duration::from_secs(30));
        assert_ne!(config_hash(&graceful, false, &NO_HARDWARE), old);
    }

    #[test]
    fn no_target_stops_and_removes_everything() {
        let v1 = release("1");
        let steps = plan(&device(), None, &running(&v1), &all_present, None);
        assert_eq!(kinds(&steps), ["stop lidar", "stop web", "remove lidar", "remove web"]);
    }

    #[test]
    fn a_new_container_left_starting_by_a_crash_is_waited_for_not_recreated() {
        let (v1, v2) = (release("1"), release("2"));
        let mut observed = running(&v1);
        let mut new = running(&v2);
        new[0].health = Health::Starting;
        observed.push(new[0].clone());
        let steps = plan(&device(), Some(&v2), &observed, &all_present, None);
        assert_eq!(
            kinds(&steps),
            [
                "wait-healthy web",
                "create lidar",
                "start lidar",
                "wait-healthy lidar",
                "stop web",
                "stop lidar",
                "remove lidar",
                "remove web",
            ]
        );
        assert!(!steps
            .iter()
            .any(|s| matches!(s, Step::Create { service, .. } if service.as_str() == "web")));
    }

    #[test]
    fn every_plan_removes_only_after_the_last_health_wait() {
        let (v1, v2) = (release("1"), release("2"));
        for observed in [vec![], running(&v1), running(&v2)] {
            for target in [Some(&v1), Some(&v2), None] {
                let steps = plan(&device(), target, &observed, &all_present, None);
                let last_wait = steps.iter().rposition(|s| s.kind() == "wait-healthy");
                let first_remove = steps.iter().position(|s| s.kind() == "remove");
                if let (Some(w), Some(r)) = (last_wait, first_remove) {
                    assert!(w < r, "{steps:?}");
                }
            }
        }
    }

    #[test]
    fn applying_a_plan_converges() {
        // Simulate the engine (and the proxy) applying every step, then plan again: nothing
        // left to do. With and without a proxy, from a release with a host port.
        for proxy in [false, true] {
            let (v1, v2) = (with_port("1"), with_port("2"));
            let mut observed = running_published(&v1, proxy, 40001);
            let mut routes = if proxy { route_to(&v1, &observed) } else { Routes::new() };
            let routes_in = |r: &Routes| proxy.then(|| r.clone());
            let steps =
                plan(&device(), Some(&v2), &observed, &all_present, routes_in(&routes).as_ref());
            for step in steps {
                match step {
                    Step::Create { service, name } => {
                        let spec = v2.services.iter().find(|s| s.name == service).unwrap();
                        let mut c = running_published(&v2, proxy, 40002)
                            .into_iter()
                            .find(|c| {
                                c.name == container_name(&device(), spec, proxied(spec, proxy))
                            })
                            .unwrap();
                        c.state = ContainerState::Created;
                        assert_eq!(c.name, name);
                        observed.push(c);
                    }
                    Step::Start { name, .. } => observed
                        .iter_mut()
                        .filter(|c| c.name == name)
                        .for_each(|c| c.state = ContainerState::Running),
                    Step::Stop { name, .. } => observed
                        .iter_mut()
                        .filter(|c| c.name == name)
                        .for_each(|c| c.state = ContainerState::Exited),
                    Step::Remove { name, .. } => observed.retain(|c| c.name != name),
                    Step::Switch { service, name } => {
                        let spec = v2.services.iter().find(|s| s.name == service).unwrap();
                        let c = observed.iter().find(|c| c.name == name).unwrap();
                        let route =
                            Route { container: name.clone(), forwards: forwards(spec, c).unwrap() };
                        routes.insert(service.to_string(), route);
                    }
                    Step::Unroute { service } => {
                        routes.remove(&service);
                    }
                    Step::Pull { .. } | Step::WaitHealthy { .. } => {}
                }
            }
            assert_eq!(
                plan(&device(), Some(&v2), &observed, &all_present, routes_in(&routes).as_ref()),
                [],
                "proxy: {proxy}"
            );
            assert_eq!(observed.len(), 2);
            assert_eq!(routes.len(), usize::from(proxy));
        }
    }
}
