//! What the process is started with: `command`/`entrypoint` words, `environment`, `labels`.

use std::collections::BTreeMap;

use crate::compose::read::{self, child, item, Problems};
use crate::compose::units;
use crate::compose::yaml::{Node, Value};

/// `command` / `entrypoint`: a list, or a string split like a shell would.
pub(super) fn words(p: &mut Problems, path: &str, node: &Node) -> Option<Vec<String>> {
    match &node.value {
        Value::Seq(_) => read::strings(p, path, node),
        Value::Null => None,
        _ => {
            let text = read::string(p, path, node)?;
            units::split_words(&text).map_err(|e| p.add(path, Some(node), e)).ok()
        }
    }
}

pub(super) fn environment(p: &mut Problems, path: &str, node: &Node) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let no_value = |name: &str| {
        format!("{name} has no value: the device has no shell environment to take it from; give it a value ({name}: value, or ${{VAR:-default}})")
    };
    let mut put = |p: &mut Problems, at: &str, n: &Node, name: &str, value: String| {
        if name.is_empty() || name.contains('=') || name.contains(char::is_whitespace) {
            p.add(at, Some(n), format!("{name:?} is not a variable name"));
        } else if env.insert(name.to_owned(), value).is_some() {
            p.add(at, Some(n), format!("{name} is set twice"));
        }
    };
    match &node.value {
        Value::Map(entries) => {
            for (name, value) in entries {
                let at = child(path, name);
                match value.scalar_text() {
                    Some(v) => put(p, &at, value, name, v),
                    None if value.is_null() => p.add(&at, Some(value), no_value(name)),
                    None => p.add(
                        &at,
                        Some(value),
                        format!("expected a string, found {}", value.kind()),
                    ),
                }
            }
        }
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = item(path, i);
                let Some(text) = read::string(p, &at, it) else { continue };
                match text.split_once('=') {
                    Some((name, value)) => put(p, &at, it, name, value.to_owned()),
                    None => p.add(&at, Some(it), no_value(&text)),
                }
            }
        }
        Value::Null => {}
        _ => p.add(
            path,
            Some(node),
            format!("expected a mapping (KEY: value) or a list (KEY=value), found {}", node.kind()),
        ),
    }
    env
}

pub(super) fn labels(p: &mut Problems, path: &str, node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |p: &mut Problems, at: &str, n: &Node, key: &str, value: String| {
        if key.starts_with("io.fleet.") || key == "io.fleet" {
            p.add(at, Some(n), format!("label {key:?}: io.fleet.* labels belong to the agent, which sets them on every container"));
        } else if key.is_empty() {
            p.add(at, Some(n), "a label needs a name");
        } else if out.insert(key.to_owned(), value).is_some() {
            p.add(at, Some(n), format!("label {key} is set twice"));
        }
    };
    match &node.value {
        Value::Map(entries) => {
            for (key, value) in entries {
                let at = child(path, key);
                match value.scalar_text() {
                    Some(v) => put(p, &at, value, key, v),
                    None if value.is_null() => put(p, &at, value, key, String::new()),
                    None => p.add(
                        &at,
                        Some(value),
                        format!("expected a string, found {}", value.kind()),
                    ),
                }
            }
        }
        Value::Seq(items) => {
            for (i, it) in items.iter().enumerate() {
                let at = item(path, i);
                let Some(text) = read::string(p, &at, it) else { continue };
                let (key, value) = text.split_once('=').unwrap_or((&text, ""));
                put(p, &at, it, key, value.to_owned());
            }
        }
        Value::Null => {}
        _ => p.add(
            path,
            Some(node),
            format!("expected a mapping or a list of key=value, found {}", node.kind()),
        ),
    }
    out
}
