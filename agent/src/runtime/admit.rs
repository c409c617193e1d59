//! What a release needs of the engine itself: the runtimes its services name. Pure; the
//! executor asks the engine for its runtimes and refuses the release before anything stops.

use std::collections::BTreeMap;

use fleet_proto::{ReleaseSpec, ServiceName};

use super::HardwareMapping;

/// Each service's hardware as mapped on this host (the planner's `Mappings`).
type Mappings = BTreeMap<ServiceName, HardwareMapping>;

/// The runtime each service would run with, and every reason the engine cannot give it: a
/// runtime the engine does not have (`available`, as `docker info` lists them; `None`: the
/// engine does not say, and nothing is refused), or a service whose own `runtime` differs from
/// the one its hardware needs (a Jetson GPU runs under `nvidia`).
pub fn runtime_problems(
    release: &ReleaseSpec,
    mappings: &Mappings,
    available: Option<&[String]>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, svc) in release.services.iter().enumerate() {
        let own = svc.options.runtime.as_deref();
        let hardware = mappings.get(&svc.name).and_then(|m| m.runtime.as_deref());
        if let (Some(own), Some(hardware)) = (own, hardware) {
            if own != hardware {
                problems.push(format!(
                    "services[{i}].options.runtime: {own} is not the runtime service {} needs for its hardware ({hardware}); remove runtime or set it to {hardware}",
                    svc.name
                ));
                continue;
            }
        }
        let (Some(wanted), Some(available)) = (own.or(hardware), available) else { continue };
        if !available.iter().any(|a| a == wanted) {
            problems.push(format!(
                "services[{i}].options.runtime: this device's engine has no runtime {wanted} (it has {}); install it, or run the service without it",
                available.join(", ")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(runtimes: &[Option<&str>]) -> ReleaseSpec {
        let mut r = fleet_proto::samples::release();
        r.services.truncate(1);
        let template = r.services[0].clone();
        r.services = runtimes
            .iter()
            .enumerate()
            .map(|(i, rt)| {
                let mut s = template.clone();
                s.name = ServiceName::new(format!("s{i}")).unwrap();
                s.options.runtime = rt.map(str::to_owned);
                s
            })
            .collect();
        r
    }

    fn engine(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn a_runtime_the_engine_lists_is_admitted_and_one_it_lacks_is_refused_with_the_list() {
        let r = release(&[None, Some("runc"), Some("nvidia")]);
        let have = engine(&["io.containerd.runc.v2", "runc"]);
        let problems = runtime_problems(&r, &Mappings::new(), Some(&have));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("services[2].options.runtime: this device's engine has no runtime nvidia (it has io.containerd.runc.v2, runc)"), "{}", problems[0]);
        let with_nvidia = engine(&["nvidia", "runc"]);
        assert_eq!(
            runtime_problems(&r, &Mappings::new(), Some(&with_nvidia)),
            Vec::<String>::new()
        );
        assert_eq!(
            runtime_problems(&r, &Mappings::new(), None),
            Vec::<String>::new(),
            "an engine that does not say refuses nothing"
        );
    }

    #[test]
    fn hardware_that_needs_a_runtime_needs_it_on_the_engine_and_no_other_beside_it() {
        let jetson =
            HardwareMapping { runtime: Some("nvidia".to_owned()), ..HardwareMapping::default() };
        let r = release(&[None]);
        let mappings = Mappings::from([(r.services[0].name.clone(), jetson.clone())]);
        let problems = runtime_problems(&r, &mappings, Some(&engine(&["runc"])));
        assert!(problems[0].contains("has no runtime nvidia"), "{problems:?}");
        let r = release(&[Some("runsc")]);
        let mappings = Mappings::from([(r.services[0].name.clone(), jetson)]);
        let problems = runtime_problems(&r, &mappings, Some(&engine(&["nvidia", "runc", "runsc"])));
        assert!(
            problems[0]
                .contains("runsc is not the runtime service s0 needs for its hardware (nvidia)"),
            "{problems:?}"
        );
    }
}
