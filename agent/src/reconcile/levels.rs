//! Which steps of a plan run at once: services that do not depend on each other are created,
//! started and waited for concurrently. Pure, so the ordering rules are unit-tested here.
//!
//! The planner lists each service's `create`, `start` and `wait-healthy` together, services in
//! dependency order. [`concurrent_run`] takes the run of such steps at the head of what is left
//! and splits it into levels:
//! * a service's steps form one chain and keep their order;
//! * a service's chain is in a later level than the chain of every service it depends on
//!   (`depends_on`) in the same run, so a dependency is healthy before its dependents start —
//!   the guarantee the sequential order gave;
//! * the chains of one level run concurrently; a level starts when the one before has ended,
//!   and the first chain that fails ends its level (the executor drops the others).
//!
//! Any other step (pull, stop, switch, unroute, remove) ends the run: those keep the plan's
//! order (stops are batched by the executor on their own).

use std::collections::BTreeMap;

use fleet_proto::{ReleaseSpec, ServiceName};

use crate::plan::Step;

/// The service a step of a chain belongs to, or `None` for a step that ends the run.
fn chain_service(step: &Step) -> Option<&ServiceName> {
    match step {
        Step::Create { service, .. }
        | Step::Start { service, .. }
        | Step::WaitHealthy { service, .. } => Some(service),
        _ => None,
    }
}

/// The run of create/start/wait-healthy steps at the head of `steps`, as levels of chains of
/// indices into `steps`, and the run's length (0 when `steps` does not begin with one).
pub fn concurrent_run(
    steps: &[Step],
    target: Option<&ReleaseSpec>,
) -> (usize, Vec<Vec<Vec<usize>>>) {
    let len = steps.iter().take_while(|s| chain_service(s).is_some()).count();
    // Chains in order of first appearance, each with its steps in order.
    let mut chains: Vec<(&ServiceName, Vec<usize>)> = Vec::new();
    for (i, step) in steps[..len].iter().enumerate() {
        let Some(service) = chain_service(step) else { continue };
        match chains.iter_mut().find(|(s, _)| *s == service) {
            Some((_, chain)) => chain.push(i),
            None => chains.push((service, vec![i])),
        }
    }
    let depends_on = |service: &ServiceName| -> Vec<&ServiceName> {
        target
            .and_then(|t| t.services.iter().find(|s| s.name == *service))
            .map(|s| s.depends_on.iter().map(|d| &d.service).collect())
            .unwrap_or_default()
    };
    // Level = 1 + the highest level of a dependency in the run; repeated until nothing moves
    // (validate refuses cycles, and at most one pass per chain is ever needed).
    let mut level: BTreeMap<&ServiceName, usize> = chains.iter().map(|(s, _)| (*s, 0)).collect();
    for _ in 0..chains.len() {
        let mut moved = false;
        for (service, _) in &chains {
            let want = depends_on(service)
                .into_iter()
                .filter_map(|d| level.get(d).map(|l| l + 1))
                .max()
                .unwrap_or(0);
            if level[service] < want {
                level.insert(service, want);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let levels = level.values().copied().max().map_or(0, |m| m + 1);
    let mut out = vec![Vec::new(); levels];
    for (service, chain) in chains {
        out[level[service]].push(chain);
    }
    (len, out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use fleet_proto::release::{Dependency, DependencyCondition};

    use super::*;

    fn release(services: &[(&str, &[&str])]) -> ReleaseSpec {
        let mut r = fleet_proto::samples::release();
        let template = r.services[0].clone();
        r.services = services
            .iter()
            .map(|(name, deps)| {
                let mut s = template.clone();
                s.name = ServiceName::new(*name).unwrap();
                s.depends_on = deps
                    .iter()
                    .map(|d| Dependency {
                        service: ServiceName::new(*d).unwrap(),
                        condition: DependencyCondition::Healthy,
                    })
                    .collect();
                s
            })
            .collect();
        r
    }

    fn chain(service: &str) -> Vec<Step> {
        let (service, name) = (ServiceName::new(service).unwrap(), format!("c-{service}"));
        vec![
            Step::Create { service: service.clone(), name: name.clone() },
            Step::Start { service: service.clone(), name: name.clone() },
            Step::WaitHealthy { service, name, deadline: Duration::from_secs(60) },
        ]
    }

    /// The levels as service names, for reading.
    fn names(steps: &[Step], levels: &[Vec<Vec<usize>>]) -> Vec<Vec<String>> {
        levels
            .iter()
            .map(|l| l.iter().map(|c| chain_service(&steps[c[0]]).unwrap().to_string()).collect())
            .collect()
    }

    #[test]
    fn independent_services_start_together_each_in_its_own_order() {
        let r = release(&[("a", &[]), ("b", &[]), ("c", &[])]);
        let steps: Vec<Step> = ["a", "b", "c"].iter().flat_map(|s| chain(s)).collect();
        let (len, levels) = concurrent_run(&steps, Some(&r));
        assert_eq!(len, 9);
        assert_eq!(names(&steps, &levels), [["a", "b", "c"]]);
        assert_eq!(levels[0][1], [3, 4, 5], "create, start, wait-healthy of b, in order");
    }

    #[test]
    fn a_dependent_waits_for_the_level_of_what_it_depends_on() {
        // a; b needs a; c alone; d needs b and c.
        let r = release(&[("a", &[]), ("b", &["a"]), ("c", &[]), ("d", &["b", "c"])]);
        let steps: Vec<Step> = ["a", "b", "c", "d"].iter().flat_map(|s| chain(s)).collect();
        let (_, levels) = concurrent_run(&steps, Some(&r));
        assert_eq!(names(&steps, &levels), vec![vec!["a", "c"], vec!["b"], vec!["d"]]);
    }

    #[test]
    fn a_dependency_outside_the_run_does_not_hold_anything_back() {
        // b depends on a, which is already up (not in the plan).
        let r = release(&[("a", &[]), ("b", &["a"]), ("c", &[])]);
        let steps: Vec<Step> = ["b", "c"].iter().flat_map(|s| chain(s)).collect();
        let (_, levels) = concurrent_run(&steps, Some(&r));
        assert_eq!(names(&steps, &levels), [["b", "c"]]);
    }

    #[test]
    fn any_other_step_ends_the_run() {
        let r = release(&[("a", &[]), ("b", &[])]);
        let mut steps = chain("a");
        steps.push(Step::Stop { service: "old".into(), name: "old-1".into() });
        steps.extend(chain("b"));
        let (len, levels) = concurrent_run(&steps, Some(&r));
        assert_eq!(len, 3);
        assert_eq!(names(&steps, &levels), [["a"]]);
        assert_eq!(concurrent_run(&steps[3..], Some(&r)).0, 0, "a stop heads no run");
    }

    #[test]
    fn a_health_wait_alone_is_a_chain_of_one() {
        // An agent restarted mid-update: the container runs, only its judgement is left.
        let r = release(&[("a", &[])]);
        let steps = vec![chain("a").remove(2)];
        let (len, levels) = concurrent_run(&steps, Some(&r));
        assert_eq!((len, levels), (1, vec![vec![vec![0]]]));
    }
}
