//! Reading typed values out of the YAML tree while collecting problems with their paths.
//!
//! Every reader returns `None` after recording why, so a caller can keep going and report the
//! next problem too.

use std::time::Duration;

use super::yaml::{Node, Value};
use super::{units, ComposeProblem};

/// The problems found so far.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub(crate) list: Vec<ComposeProblem>,
    /// Paths whose strings could not be interpolated: problems at or below them would only
    /// repeat the interpolation problem, so they are dropped.
    pub(crate) poisoned: Vec<String>,
    /// Bytes of the strings interpolated so far (bounded by
    /// [`super::interpolate::MAX_EXPANDED_BYTES`]).
    pub(crate) expanded: usize,
}

impl Problems {
    pub(crate) fn add(&mut self, path: &str, node: Option<&Node>, reason: impl Into<String>) {
        self.add_line(path, node.map(|n| n.line), reason);
    }

    pub(crate) fn add_line(&mut self, path: &str, line: Option<u64>, reason: impl Into<String>) {
        let hidden = self.poisoned.iter().any(|p| {
            path == p || path.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with(['.', '[']))
        });
        if !hidden {
            // The document itself (a file that is one scalar) has no path: call it the file.
            let path = if path.is_empty() { "(file)" } else { path };
            self.list.push(ComposeProblem { path: path.to_owned(), reason: reason.into(), line });
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// `parent.key`, with keys that would make the path ambiguous written as `parent["a.b"]`.
pub(crate) fn child(parent: &str, key: &str) -> String {
    let plain =
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// `parent[i]`.
pub(crate) fn item(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A mapping's entries, or a problem when the node is something else.
pub(crate) fn map<'n>(
    p: &mut Problems,
    path: &str,
    node: &'n Node,
) -> Option<&'n [(String, Node)]> {
    let m = node.as_map();
    if m.is_none() {
        p.add(path, Some(node), format!("expected a mapping, found {}", node.kind()));
    }
    m
}

/// A string; numbers and booleans are taken as their text, as Compose does.
pub(crate) fn string(p: &mut Problems, path: &str, node: &Node) -> Option<String> {
    let s = node.scalar_text();
    if s.is_none() {
        p.add(path, Some(node), format!("expected a string, found {}", node.kind()));
    }
    s
}

/// A string that must not be empty.
pub(crate) fn nonempty(p: &mut Problems, path: &str, node: &Node) -> Option<String> {
    let s = string(p, path, node)?;
    if s.is_empty() {
        p.add(path, Some(node), "must not be empty");
        return None;
    }
    Some(s)
}

/// `true`/`false` (also as strings, which interpolation produces).
pub(crate) fn boolean(p: &mut Problems, path: &str, node: &Node) -> Option<bool> {
    match &node.value {
        Value::Bool(b) => Some(*b),
        Value::Str(s) if s == "true" => Some(true),
        Value::Str(s) if s == "false" => Some(false),
        _ => {
            p.add(path, Some(node), format!("expected true or false, found {}", describe(node)));
            None
        }
    }
}

/// A whole number (also as a string).
pub(crate) fn integer(p: &mut Problems, path: &str, node: &Node) -> Option<i128> {
    let n = match &node.value {
        Value::Int(i) => Some(*i),
        Value::Str(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    };
    if n.is_none() {
        p.add(path, Some(node), format!("expected a whole number, found {}", describe(node)));
    }
    n
}

/// A whole number within `T`'s range and `min..`.
pub(crate) fn number<T: TryFrom<i128>>(
    p: &mut Problems,
    path: &str,
    node: &Node,
    min: i128,
) -> Option<T> {
    let n = integer(p, path, node)?;
    match T::try_from(n) {
        Ok(v) if n >= min => Some(v),
        _ => {
            p.add(path, Some(node), format!("{n} is out of range"));
            None
        }
    }
}

/// A list of strings (numbers and booleans taken as their text).
pub(crate) fn strings(p: &mut Problems, path: &str, node: &Node) -> Option<Vec<String>> {
    let Some(items) = node.as_seq() else {
        p.add(path, Some(node), format!("expected a list, found {}", node.kind()));
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, it) in items.iter().enumerate() {
        match string(p, &item(path, i), it) {
            Some(s) => out.push(s),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A string or a list of strings (`tmpfs: /run` or `tmpfs: [/run, /tmp]`).
pub(crate) fn one_or_many(
    p: &mut Problems,
    path: &str,
    node: &Node,
) -> Option<Vec<(String, String)>> {
    if let Some(items) = node.as_seq() {
        let mut out = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let at = item(path, i);
            if let Some(s) = string(p, &at, it) {
                out.push((at, s));
            }
        }
        Some(out)
    } else {
        string(p, path, node).map(|s| vec![(path.to_owned(), s)])
    }
}

pub(crate) fn duration(p: &mut Problems, path: &str, node: &Node) -> Option<Duration> {
    let text = string(p, path, node)?;
    units::duration(&text).map_err(|e| p.add(path, Some(node), e)).ok()
}

pub(crate) fn byte_size(p: &mut Problems, path: &str, node: &Node) -> Option<u64> {
    if let Value::Int(i) = node.value {
        return u64::try_from(i)
            .map_err(|_| p.add(path, Some(node), format!("{i} is not a size in bytes")))
            .ok();
    }
    let text = string(p, path, node)?;
    units::byte_size(&text).map_err(|e| p.add(path, Some(node), e)).ok()
}

pub(crate) fn cpus(p: &mut Problems, path: &str, node: &Node) -> Option<u32> {
    let text = string(p, path, node)?;
    units::cpu_millis(&text).map_err(|e| p.add(path, Some(node), e)).ok()
}

/// The node for messages: its value when it is a short scalar, its kind otherwise.
pub(crate) fn describe(node: &Node) -> String {
    match node.scalar_text() {
        Some(s) if s.len() <= 40 => format!("{s:?}"),
        _ => node.kind().to_owned(),
    }
}

/// Where a value came from: the value and its path, so contradictions can name both places.
#[derive(Debug, Clone)]
pub(crate) struct Sourced<T> {
    pub(crate) value: T,
    pub(crate) path: String,
    pub(crate) line: Option<u64>,
}

impl<T> Sourced<T> {
    pub(crate) fn new(value: T, path: &str, node: &Node) -> Sourced<T> {
        Sourced { value, path: path.to_owned(), line: Some(node.line) }
    }
}

/// One value set in two places (`mem_limit` and `deploy.resources.limits.memory`): fine when
/// they agree, a problem when they differ.
pub(crate) fn agree<T: PartialEq + std::fmt::Debug>(
    p: &mut Problems,
    first: Option<Sourced<T>>,
    second: Option<Sourced<T>>,
) -> Option<Sourced<T>> {
    match (first, second) {
        (Some(a), Some(b)) => {
            if a.value != b.value {
                let reason = format!(
                    "contradicts {} ({:?} here, {:?} there); set it in one place",
                    a.path, b.value, a.value
                );
                p.add_line(&b.path, b.line, reason);
            }
            Some(a)
        }
        (a, b) => a.or(b),
    }
}
