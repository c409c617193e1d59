//! The agent's top-level modules import each other without circles: every `crate::<module>`
//! path outside comments and `#[cfg(test)] mod tests` is an edge, and the graph must stay
//! acyclic, so each module can be read (and tested) with only the ones below it. A type two
//! modules both need moves one layer down instead of closing a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `module -> modules it names`, by top-level module (`runtime/docker/mod.rs` is `runtime`).
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a component").as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let line = line.trim();
            // Unit tests may reach up for fixtures; they are not part of the module's build.
            if line == "#[cfg(test)]" && lines.peek().is_some_and(|l| l.starts_with("mod tests")) {
                break;
            }
            if line.starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let name: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    edges.entry(module.clone()).or_default().insert(name);
                }
            }
        }
    }
    edges
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A circle through `from`, if the graph has one reachable from it.
fn circle(
    edges: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|m| m == from) {
        let mut found = path[at..].to_vec();
        found.push(from.to_owned());
        return Some(found);
    }
    if done.contains(from) {
        return None;
    }
    path.push(from.to_owned());
    for next in edges.get(from).into_iter().flatten() {
        if let Some(found) = circle(edges, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(from.to_owned());
    None
}

#[test]
fn the_agents_modules_import_each_other_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    assert!(edges.contains_key("reconcile"), "the scan found the executor's imports: {edges:?}");
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        if let Some(found) = circle(&edges, module, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", found.join(" -> "));
        }
    }
}

#[test]
fn pure_decisions_import_no_other_agent_module() {
    let edges = edges(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for module in ["accept", "backoff"] {
        assert_eq!(edges.get(module), None, "{module} must stay free of the agent's other modules");
    }
}
