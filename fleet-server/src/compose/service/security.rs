//! `cap_add`/`cap_drop` and `security_opt`.

use crate::compose::read::{self, item, Problems};
use crate::compose::yaml::Node;

pub(super) fn capabilities(p: &mut Problems, path: &str, node: &Node) -> Vec<String> {
    let caps = read::strings(p, path, node).unwrap_or_default();
    caps.into_iter()
        .enumerate()
        .filter(|(i, c)| {
            let ok = !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                p.add(
                    &item(path, *i),
                    None,
                    format!("{c:?} is not a capability name like SYS_NICE or NET_ADMIN"),
                );
            }
            ok
        })
        .map(|(_, c)| c)
        .collect()
}

/// `security_opt`: only `no-new-privileges[:true|false]` (and `=`) is a decision a release may
/// make; seccomp, AppArmor and SELinux profiles belong to the device's configuration.
pub(super) fn security_opt(p: &mut Problems, path: &str, node: &Node) -> bool {
    let mut no_new_privileges = false;
    for (i, opt) in read::strings(p, path, node).unwrap_or_default().iter().enumerate() {
        match opt.split_once([':', '=']) {
            None if opt == "no-new-privileges" => no_new_privileges = true,
            Some(("no-new-privileges", "true")) => no_new_privileges = true,
            Some(("no-new-privileges", "false")) => no_new_privileges = false,
            _ => p.add(
                &item(path, i),
                None,
                format!("{opt:?} is not supported: security_opt takes only no-new-privileges[:true|false]; seccomp, apparmor and label profiles are set on the device"),
            ),
        }
    }
    no_new_privileges
}
