//! Bind mounts of host paths, checked on the host right before a release is admitted.
//!
//! Accepting a release compares its host paths with `[policy] allowed_host_paths` as text
//! ([`fleet_proto::policy::host_paths`]). That is not enough: an allowed directory is one a
//! container of an earlier release may write into, and one that plants `x -> /` there makes a
//! later bind of `<allowed>/x` give a container the host's root, read-write (the engine follows
//! the link when it mounts). So every component *below* the allowed directory is looked at
//! with `lstat` and a symbolic link refuses the release. The allowed directory itself and what
//! lies above it are the operator's choice (`/srv -> /data/srv` is fine).
//!
//! What this cannot close: a link planted between this check and the engine's mount, by a
//! container running at that moment. The window is the few milliseconds between admission and
//! container creation; binding paths no container can write closes it for good.

use std::path::{Path, PathBuf};

use fleet_proto::release::VolumeSource;
use fleet_proto::ReleaseSpec;

/// The binds of `release` under one of `allowed` that pass through a symbolic link below it
/// on this host, as problems naming the field, the path and the link. Binds under no allowed
/// directory are not this check's (acceptance refuses them; the agent's own secret files live
/// elsewhere).
pub fn symlinked_binds(release: &ReleaseSpec, allowed: &[String]) -> Vec<String> {
    let allowed: Vec<PathBuf> = allowed.iter().map(PathBuf::from).collect();
    let mut problems = Vec::new();
    for (i, svc) in release.services.iter().enumerate() {
        for (v, vol) in svc.volumes.iter().enumerate() {
            let VolumeSource::HostPath(p) = &vol.source else { continue };
            let path = Path::new(p);
            let Some(root) =
                allowed.iter().filter(|r| path.starts_with(r)).max_by_key(|r| r.as_os_str().len())
            else {
                continue;
            };
            if let Some(link) = first_link_below(root, path) {
                problems.push(format!(
                    "services[{i}].volumes[{v}].source: host path {p:?} passes through the symbolic link {} below {} ([policy] allowed_host_paths); a container may have planted it, so it is not followed: bind the real directory",
                    link.display(),
                    root.display()
                ));
            }
        }
    }
    problems
}

/// The first component of `path` below `root` that is a symbolic link, if any. A component
/// that does not exist ends the walk: there is nothing to follow.
fn first_link_below(root: &Path, path: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(root).ok()?;
    let mut at = root.to_path_buf();
    for component in rest.components() {
        at.push(component);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => return Some(at),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use fleet_proto::release::VolumeMount;

    use super::*;

    fn binding(paths: &[&str]) -> ReleaseSpec {
        let mut r = fleet_proto::samples::release();
        r.services.truncate(1);
        r.services[0].volumes = paths
            .iter()
            .map(|p| VolumeMount {
                source: VolumeSource::HostPath((*p).to_owned()),
                target: "/data".into(),
                read_only: false,
            })
            .collect();
        r
    }

    #[test]
    fn a_link_planted_below_an_allowed_directory_is_refused_and_real_paths_pass() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("maps");
        std::fs::create_dir_all(allowed.join("site-a/floor-1")).unwrap();
        // What a container with the directory mounted can do.
        std::os::unix::fs::symlink("/", allowed.join("x")).unwrap();
        std::os::unix::fs::symlink("/etc", allowed.join("site-a/etc")).unwrap();
        let p = |rel: &str| allowed.join(rel).display().to_string();
        let release = binding(&[
            &p("site-a/floor-1"),
            &p("x"),
            &p("x/etc/shadow"),
            &p("site-a/etc"),
            &p("new-dir"),
        ]);
        let problems = symlinked_binds(&release, &[allowed.display().to_string()]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("services[0].volumes[1].source"), "{problems:?}");
        assert!(problems[0].contains(&format!("symbolic link {}", allowed.join("x").display())));
        assert!(problems[1].contains(&format!("symbolic link {}", allowed.join("x").display())));
        assert!(problems[2].contains("site-a/etc"), "{problems:?}");

        // The allowed directory itself may be a link (the operator's choice), and binds
        // outside every allowed directory are not this check's.
        let linked_root = dir.path().join("maps-link");
        std::os::unix::fs::symlink(&allowed, &linked_root).unwrap();
        let release = binding(&[&linked_root.join("site-a").display().to_string(), "/elsewhere/x"]);
        assert!(symlinked_binds(&release, &[linked_root.display().to_string()]).is_empty());
    }
}
