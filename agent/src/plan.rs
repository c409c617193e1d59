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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleet_proto::release::UpdateStrategy;
use fleet_proto::report::{ContainerState, Health};
use fleet_proto::{DeviceId, ImageRef, ReleaseSpec, ServiceName, ServiceSpec};
use sha2::{Digest, Sha256};

use crate::runtime::{labels, ObservedContainer};

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
    /// Stop a container (kept for rollback until the update is proven).
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
            Step::Stop { .. } => "stop",
            Step::Remove { .. } => "remove",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Pull { image } => write!(f, "pull {image}"),
            Step::Create { name, .. }
            | Step::Start { name, .. }
            | Step::WaitHealthy { name, .. }
            | Step::Stop { name, .. }
            | Step::Remove { name, .. } => write!(f, "{} {name}", self.kind()),
        }
    }
}

/// Hash of a service's full configuration: equal hash means an existing container can be kept.
pub fn config_hash(spec: &ServiceSpec) -> String {
    // JSON of the spec is deterministic: maps are BTreeMaps and fields keep declaration order.
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The container name for a service of this device with this configuration.
pub fn container_name(device: &DeviceId, spec: &ServiceSpec) -> String {
    format!("fleet-{device}-{}-{}", spec.name, config_hash(spec))
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
/// application). `has_image` says whether an image is present locally.
pub fn plan(
    device: &DeviceId,
    target: Option<&ReleaseSpec>,
    observed: &[ObservedContainer],
    has_image: &dyn Fn(&ImageRef) -> bool,
) -> Vec<Step> {
    let mut pulls = Vec::new();
    let mut main = Vec::new();
    let mut stops_late = Vec::new();
    let mut removes = Vec::new();
    let keep = target_names(device, target);

    for spec in target.map(start_order).unwrap_or_default() {
        let name = container_name(device, spec);
        let existing = observed.iter().find(|c| c.name == name);
        let olds: Vec<&ObservedContainer> = observed
            .iter()
            .filter(|c| c.label(labels::SERVICE) == Some(spec.name.as_str()) && c.name != name)
            .collect();
        let running_olds: Vec<&&ObservedContainer> = olds
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Restarting))
            .collect();
        let stop_olds = |steps: &mut Vec<Step>| {
            for c in &running_olds {
                steps.push(Step::Stop { service: spec.name.to_string(), name: c.name.clone() });
            }
        };
        let svc = spec.name.clone();
        let wait = Step::WaitHealthy {
            service: svc.clone(),
            name: name.clone(),
            deadline: spec.health_deadline,
        };

        match existing {
            Some(c) if is_up(c) => {
                // Adopted as is; an interrupted update may have left the old one running.
                stop_olds(&mut stops_late);
            }
            Some(c) if c.state == ContainerState::Running => {
                // Started but not yet judged healthy (e.g. the agent restarted mid-update).
                main.push(wait);
                stop_olds(&mut stops_late);
            }
            Some(_) => {
                if spec.update == UpdateStrategy::StopFirst {
                    stop_olds(&mut main);
                }
                main.push(Step::Start { service: svc.clone(), name: name.clone() });
                main.push(wait);
                if spec.update == UpdateStrategy::StartFirst {
                    stop_olds(&mut stops_late);
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
                if spec.update == UpdateStrategy::StopFirst {
                    stop_olds(&mut main);
                }
                main.push(Step::Create { service: svc.clone(), name: name.clone() });
                main.push(Step::Start { service: svc.clone(), name: name.clone() });
                main.push(wait);
                if spec.update == UpdateStrategy::StartFirst {
                    stop_olds(&mut stops_late);
                }
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
    steps.extend(main);
    steps.extend(stops_late);
    steps.extend(removes);
    steps
}

/// The target's container names and their services: what a converged device runs.
pub fn target_names(
    device: &DeviceId,
    target: Option<&ReleaseSpec>,
) -> BTreeMap<String, ServiceName> {
    target
        .map(|t| t.services.iter().map(|s| (container_name(device, s), s.name.clone())).collect())
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
            s.depends_on.clear();
            s.update = UpdateStrategy::StartFirst;
            s.env.insert("VERSION".into(), version.into());
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
                name: container_name(&device(), s),
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
            Step::Stop { service, .. } | Step::Remove { service, .. } => service.clone(),
        }
    }

    #[test]
    fn fresh_device_pulls_creates_starts_and_waits_for_every_service() {
        let r = release("1");
        let steps = plan(&device(), Some(&r), &[], &|_| false);
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
        assert_eq!(plan(&device(), Some(&r), &running(&r), &all_present), []);
    }

    #[test]
    fn start_first_keeps_old_containers_running_until_every_new_one_is_healthy() {
        let (v1, v2) = (release("1"), release("2"));
        let steps = plan(&device(), Some(&v2), &running(&v1), &all_present);
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

    #[test]
    fn stop_first_stops_the_old_container_before_creating_the_new() {
        let v1 = release("1");
        let mut v2 = release("2");
        v2.services[1].update = UpdateStrategy::StopFirst;
        let steps = plan(&device(), Some(&v2), &running(&v1), &all_present);
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
        let steps = plan(&device(), Some(&v2), &running(&v1), &all_present);
        assert!(steps.iter().all(|s| step_service(s) == "web"), "lidar untouched: {steps:?}");
    }

    #[test]
    fn images_present_are_not_pulled_and_shared_images_are_pulled_once() {
        let mut r = release("1");
        r.services[1].image = r.services[0].image.clone();
        let steps = plan(&device(), Some(&r), &[], &|_| false);
        assert_eq!(steps.iter().filter(|s| s.kind() == "pull").count(), 1);
        let steps = plan(&device(), Some(&r), &[], &all_present);
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
        let steps = plan(&device(), Some(&v1), &observed, &all_present);
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
                name.ends_with(&config_hash(&v2.services[0]))
                    || name.ends_with(&config_hash(&v2.services[1])),
                "only v2 containers removed: {name}"
            );
        }
    }

    #[test]
    fn no_target_stops_and_removes_everything() {
        let v1 = release("1");
        let steps = plan(&device(), None, &running(&v1), &all_present);
        assert_eq!(kinds(&steps), ["stop lidar", "stop web", "remove lidar", "remove web"]);
    }

    #[test]
    fn a_new_container_left_starting_by_a_crash_is_waited_for_not_recreated() {
        let (v1, v2) = (release("1"), release("2"));
        let mut observed = running(&v1);
        let mut new = running(&v2);
        new[0].health = Health::Starting;
        observed.push(new[0].clone());
        let steps = plan(&device(), Some(&v2), &observed, &all_present);
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
                let steps = plan(&device(), target, &observed, &all_present);
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
        // Simulate the engine applying every step, then plan again: nothing left to do.
        let (v1, v2) = (release("1"), release("2"));
        let mut observed = running(&v1);
        let steps = plan(&device(), Some(&v2), &observed, &all_present);
        for step in steps {
            match step {
                Step::Create { service, name } => {
                    let spec = v2.services.iter().find(|s| s.name == service).unwrap();
                    let mut c = running(&v2)
                        .into_iter()
                        .find(|c| c.name == container_name(&device(), spec))
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
                Step::Pull { .. } | Step::WaitHealthy { .. } => {}
            }
        }
        assert_eq!(plan(&device(), Some(&v2), &observed, &all_present), []);
        assert_eq!(observed.len(), 2);
    }
}
