//! `volumes` (short and long syntax, named volumes and bind mounts) and `tmpfs`.

use std::collections::BTreeMap;

use fleet_proto::release::{VolumeMount, VolumeSource};

use crate::compose::read::{self, child, item, Problems};
use crate::compose::units;
use crate::compose::yaml::Node;

pub(crate) fn is_volume_name(name: &str) -> bool {
    name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub(super) fn absolute(p: &mut Problems, path: &str, node: &Node, what: &str, s: &str) -> bool {
    let ok = s.starts_with('/');
    if !ok {
        p.add(path, Some(node), format!("{what} {s:?} is not an absolute path"));
    }
    ok
}

/// A named volume, which Compose requires to be declared at the top level.
pub(super) fn named(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeMap<String, Option<String>>,
    name: &str,
) -> Option<VolumeSource> {
    // The declared key: into_release turns it into the name on the device.
    match declared.get(name) {
        Some(_) => Some(VolumeSource::Named(name.to_owned())),
        None => {
            p.add(path, Some(node), format!("volume {name:?} is not declared; add it under the top-level volumes: ({name}: {{}})"));
            None
        }
    }
}

pub(super) fn host_path(
    p: &mut Problems,
    path: &str,
    node: &Node,
    source: &str,
) -> Option<VolumeSource> {
    if source.starts_with('/') {
        Some(VolumeSource::HostPath(source.to_owned()))
    } else {
        p.add(path, Some(node), format!("host path {source:?} is relative: it would name a directory on your machine, which does not exist on the device; use an absolute path on the device or a named volume"));
        None
    }
}

pub(super) fn volumes(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeMap<String, Option<String>>,
) -> Vec<(VolumeMount, String)> {
    let Some(items) = node.as_seq() else {
        p.add(path, Some(node), format!("expected a list of mounts, found {}", node.kind()));
        return vec![];
    };
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let at = item(path, i);
        let mount = if it.as_map().is_some() {
            long_volume(p, &at, it, declared)
        } else {
            short_volume(p, &at, it, declared)
        };
        if let Some(m) = mount {
            out.push((m, at));
        }
    }
    out
}

/// `name:/path[:ro]`, `/host:/path[:ro|rw]`.
pub(super) fn short_volume(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeMap<String, Option<String>>,
) -> Option<VolumeMount> {
    let text = read::nonempty(p, path, node)?;
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => {
            p.add(path, Some(node), format!("anonymous volume {target:?}: its data would be lost at the next update; name it (data:{target}, declared under the top-level volumes) or use tmpfs for scratch space"));
            return None;
        }
        [source, target] => (*source, *target, ""),
        [source, target, mode] => (*source, *target, *mode),
        _ => {
            p.add(path, Some(node), format!("{text:?} is not SOURCE:TARGET[:MODE]"));
            return None;
        }
    };
    let mut read_only = false;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            // Docker Desktop file-sharing hints: no effect on Linux.
            "cached" | "delegated" | "consistent" => {}
            other => p.add(
                path,
                Some(node),
                format!("mount option {other:?} is not supported; use ro or rw"),
            ),
        }
    }
    if !absolute(p, path, node, "target", target) {
        return None;
    }
    let source = if source.starts_with(['.', '~']) || source.contains('/') {
        host_path(p, path, node, source)?
    } else {
        named(p, path, node, declared, source)?
    };
    Some(VolumeMount { source, target: target.to_owned(), read_only })
}

pub(super) fn long_volume(
    p: &mut Problems,
    path: &str,
    node: &Node,
    declared: &BTreeMap<String, Option<String>>,
) -> Option<VolumeMount> {
    let entries = node.as_map()?;
    let (mut kind, mut source, mut target, mut read_only, mut size) =
        (None, None, None, false, 0u64);
    for (key, v) in entries {
        let at = child(path, key);
        match key.as_str() {
            "type" => kind = read::string(p, &at, v).map(|k| (k, at.clone())),
            "source" => source = read::nonempty(p, &at, v),
            "target" => target = read::nonempty(p, &at, v).filter(|t| absolute(p, &at, v, "target", t)),
            "read_only" => read_only = read::boolean(p, &at, v).unwrap_or(false),
            "tmpfs" => {
                let Some(fields) = read::map(p, &at, v) else { continue };
                for (f, fv) in fields {
                    let fat = child(&at, f);
                    match f.as_str() {
                        "size" => size = read::byte_size(p, &fat, fv).unwrap_or(0),
                        other => p.add(&fat, Some(fv), format!("tmpfs.{other} is not supported yet; tmpfs takes size")),
                    }
                }
            }
            "bind" => {
                let Some(fields) = read::map(p, &at, v) else { continue };
                for (f, fv) in fields {
                    let fat = child(&at, f);
                    match (f.as_str(), read::boolean(&mut Problems::default(), &fat, fv)) {
                        ("create_host_path", Some(false)) => {}
                        ("create_host_path", _) => p.add(&fat, Some(fv), "the agent does not create host paths: the path must already exist on the device; set create_host_path: false"),
                        (other, _) => p.add(&fat, Some(fv), format!("bind.{other} is not supported")),
                    }
                }
            }
            "volume" => p.add(&at, Some(v), "volume options (nocopy, subpath) are not supported yet"),
            "consistency" => {}
            other => p.add(&at, Some(v), format!("unknown mount key {other:?}; use type, source, target, read_only and tmpfs.size")),
        }
    }
    let Some((kind, kind_at)) = kind else {
        p.add(path, Some(node), "a long-form mount needs type: volume, bind or tmpfs");
        return None;
    };
    let Some(target) = target else {
        if !entries.iter().any(|(k, _)| k == "target") {
            p.add(path, Some(node), "a mount needs a target path in the container");
        }
        return None;
    };
    let source = match (kind.as_str(), source) {
        ("tmpfs", None) => VolumeSource::Tmpfs { size_bytes: size },
        ("tmpfs", Some(_)) => {
            p.add(&child(path, "source"), Some(node), "a tmpfs has no source");
            return None;
        }
        ("volume", Some(s)) => named(p, path, node, declared, &s)?,
        ("bind", Some(s)) => host_path(p, path, node, &s)?,
        ("volume", None) => {
            p.add(path, Some(node), "anonymous volume: its data would be lost at the next update; give a source naming a declared volume");
            return None;
        }
        ("bind", None) => {
            p.add(path, Some(node), "a bind mount needs the host path as source");
            return None;
        }
        (other, _) => {
            p.add(
                &kind_at,
                Some(node),
                format!("mount type {other:?} is not supported; use volume, bind or tmpfs"),
            );
            return None;
        }
    };
    if size != 0 && kind != "tmpfs" {
        p.add(&child(path, "tmpfs"), Some(node), "tmpfs options apply to type: tmpfs only");
    }
    Some(VolumeMount { source, target, read_only })
}

/// `/run` or `/run:size=64m,rw`.
pub(super) fn tmpfs(p: &mut Problems, path: &str, node: &Node, text: &str) -> Option<VolumeMount> {
    let (target, options) = text.split_once(':').unwrap_or((text, ""));
    if !absolute(p, path, node, "tmpfs", target) {
        return None;
    }
    let mut size_bytes = 0;
    let mut read_only = false;
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        if let Some(size) = opt.strip_prefix("size=") {
            match units::byte_size(size) {
                Ok(s) => size_bytes = s,
                Err(e) => p.add(path, Some(node), e),
            }
        } else if opt == "ro" {
            read_only = true;
        } else if opt != "rw" {
            p.add(
                path,
                Some(node),
                format!("tmpfs option {opt:?} is not supported yet; tmpfs takes size= (and ro/rw)"),
            );
        }
    }
    Some(VolumeMount {
        source: VolumeSource::Tmpfs { size_bytes },
        target: target.to_owned(),
        read_only,
    })
}
