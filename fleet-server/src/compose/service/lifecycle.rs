//! When the service runs: `restart` and `depends_on`.

use std::collections::{BTreeMap, BTreeSet};

use fleet_proto::release::{Dependency, DependencyCondition, RestartPolicy};
use fleet_proto::ServiceName;

use crate::compose::read::{self, child, item, Problems};
use crate::compose::yaml::{Node, Value};

pub(super) fn restart(p: &mut Problems, path: &str, node: &Node) -> Option<RestartPolicy> {
    let text = match &node.value {
        // An unquoted `no` is a string in YAML 1.2; `false` is what older YAML made of it.
        Value::Bool(false) => "no".to_owned(),
        _ => read::string(p, path, node)?,
    };
    match text.as_str() {
        "no" => Some(RestartPolicy::No),
        "always" => Some(RestartPolicy::Always),
        "unless-stopped" => Some(RestartPolicy::UnlessStopped),
        "on-failure" => Some(RestartPolicy::OnFailure { max_retries: 0 }),
        t => match t.strip_prefix("on-failure:").map(|n| n.parse::<u32>()) {
            Some(Ok(max_retries)) => Some(RestartPolicy::OnFailure { max_retries }),
            _ => {
                p.add(path, Some(node), format!("{t:?} is not a restart policy; use no, always, on-failure[:N] or unless-stopped"));
                None
            }
        },
    }
}

pub(super) fn depends_on(
    p: &mut Problems,
    path: &str,
    node: &Node,
    (services, inactive): (&BTreeSet<&str>, &BTreeMap<String, Vec<String>>),
    own: &str,
) -> Vec<(Dependency, String)> {
    let mut out = Vec::new();
    let mut add =
        |p: &mut Problems, at: &str, n: &Node, name: &str, condition: DependencyCondition| {
            if let Some(profiles) = inactive.get(name) {
                p.add(
                    at,
                    Some(n),
                    format!(
                        "{name:?} runs only with profile {}, which is not selected (--profile {})",
                        profiles.join(" or "),
                        profiles[0]
                    ),
                );
            } else if !services.contains(name) {
                p.add(at, Some(n), format!("no service named {name:?} in this file"));
            } else if child("services", name) == own {
                p.add(at, Some(n), "a service cannot depend on itself");
            } else if let Ok(service) = ServiceName::new(name) {
                out.push((Dependency { service, condition }, at.to_owned()));
            }
        };
    match &node.value {
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = item(path, i);
                if let Some(name) = read::nonempty(p, &at, it) {
                    add(p, &at, it, &name, DependencyCondition::Started);
                }
            }
        }
        Value::Map(entries) => {
            for (name, spec) in entries {
                let at = child(path, name);
                let mut condition = Some(DependencyCondition::Started);
                if let Some(fields) = spec.as_map() {
                    for (key, v) in fields {
                        let fat = child(&at, key);
                        match key.as_str() {
                            "condition" => {
                                condition = match read::string(p, &fat, v).as_deref() {
                                    Some("service_started") => Some(DependencyCondition::Started),
                                    Some("service_healthy") => Some(DependencyCondition::Healthy),
                                    Some("service_completed_successfully") => {
                                        p.add(&fat, Some(v), "one-shot services are not supported yet: every service of a release runs continuously (run setup steps in the image's entrypoint)");
                                        None
                                    }
                                    Some(other) => {
                                        p.add(&fat, Some(v), format!("{other:?} is not a condition; use service_started or service_healthy"));
                                        None
                                    }
                                    None => None,
                                }
                            }
                            "required" if read::boolean(&mut Problems::default(), &fat, v) == Some(true) => {}
                            "required" => p.add(&fat, Some(v), "optional dependencies are not supported: every service of a release runs"),
                            "restart" => p.add(&fat, Some(v), "restarting dependents is not supported yet"),
                            other => p.add(&fat, Some(v), format!("unknown key {other:?}; use condition")),
                        }
                    }
                } else if !spec.is_null() {
                    p.add(
                        &at,
                        Some(spec),
                        format!("expected a mapping with condition, found {}", spec.kind()),
                    );
                    condition = None;
                }
                if let Some(c) = condition {
                    add(p, &at, spec, name, c);
                }
            }
        }
        _ => p.add(
            path,
            Some(node),
            format!("expected a list of service names or a mapping, found {}", node.kind()),
        ),
    }
    out
}
