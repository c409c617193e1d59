//! `secrets`: which Fleet secrets a service mounts, where, and with which owner and mode.

use std::collections::BTreeMap;

use fleet_proto::release::SecretMount;

use crate::compose::read::{self, child, Problems};
use crate::compose::yaml::{Node, Value};

/// A service's `secrets`: `- NAME` (the file /run/secrets/NAME) or `- {source, target, uid,
/// gid, mode}`, each naming a top-level secret. `source` becomes the secret's name in the
/// Fleet secret store (the top-level `name:`, if given). Compose writes uid and gid as strings
/// and mode in octal: a string is read as octal ("0440", "0o440", "440"), a YAML number as the
/// number it is (0o440 is 288), as `docker compose` does.
pub(super) fn secrets(
    p: &mut Problems,
    at: &str,
    node: &Node,
    declared: &BTreeMap<String, String>,
    service: &str,
) -> Vec<(SecretMount, String)> {
    let Some(items) = node.as_seq() else {
        p.add(
            at,
            Some(node),
            format!(
                "expected a list of secret names or {{source, target, uid, gid, mode}}, found {}",
                node.kind()
            ),
        );
        return vec![];
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_at = read::item(at, i);
        let (key, key_at, mut mount) = match &item.value {
            Value::Str(name) => (
                name.clone(),
                item_at.clone(),
                SecretMount {
                    source: String::new(),
                    target: name.clone(),
                    uid: None,
                    gid: None,
                    mode: 0,
                },
            ),
            Value::Map(fields) => {
                let mut mount = SecretMount {
                    source: String::new(),
                    target: String::new(),
                    uid: None,
                    gid: None,
                    mode: 0,
                };
                let mut source = None;
                for (field, value) in fields {
                    let field_at = child(&item_at, field);
                    match field.as_str() {
                        "source" => source = read::nonempty(p, &field_at, value).map(|s| (s, field_at)),
                        "target" => mount.target = read::nonempty(p, &field_at, value).unwrap_or_default(),
                        "uid" => mount.uid = id_number(p, &field_at, value),
                        "gid" => mount.gid = id_number(p, &field_at, value),
                        "mode" => mount.mode = file_mode(p, &field_at, value).unwrap_or(0),
                        other => p.add(&field_at, Some(value), format!("unknown secret key {other:?}; a service's secret is {{source, target, uid, gid, mode}}")),
                    }
                }
                let Some((source, source_at)) = source else {
                    p.add(
                        &item_at,
                        Some(item),
                        "a secret needs source: (the name of a top-level secret)",
                    );
                    continue;
                };
                if mount.target.is_empty() {
                    mount.target = source.clone();
                }
                (source, source_at, mount)
            }
            _ => {
                p.add(
                    &item_at,
                    Some(item),
                    format!(
                        "expected a secret name or {{source, target, uid, gid, mode}}, found {}",
                        item.kind()
                    ),
                );
                continue;
            }
        };
        let Some(store_name) = declared.get(&key) else {
            p.add(&key_at, Some(item), format!("service {service} uses secret {key:?}, which is not declared; add it under the top-level secrets: ({key}: {{}}) and set its value with `fleetctl secret set {key} < file`"));
            continue;
        };
        mount.source = store_name.clone();
        out.push((mount, item_at));
    }
    out
}

/// A uid or gid: a whole number, also as a string ("103", as Compose writes it).
pub(super) fn id_number(p: &mut Problems, at: &str, node: &Node) -> Option<u32> {
    read::number::<u32>(p, at, node, 0)
}

/// A file mode: a string in octal ("0440", "0o440"), or a YAML number taken as it is.
pub(super) fn file_mode(p: &mut Problems, at: &str, node: &Node) -> Option<u32> {
    let mode = match &node.value {
        Value::Int(n) => u32::try_from(*n).ok(),
        Value::Str(s) => {
            let digits = s.trim();
            let digits =
                digits.strip_prefix("0o").or_else(|| digits.strip_prefix("0O")).unwrap_or(digits);
            u32::from_str_radix(digits, 8).ok()
        }
        _ => None,
    };
    match mode {
        Some(m) if m <= 0o777 => Some(m),
        Some(m) => {
            p.add(
                at,
                Some(node),
                format!("mode {m:#o} is more than permission bits (at most 0777)"),
            );
            None
        }
        None => {
            p.add(
                at,
                Some(node),
                format!(
                    "expected a file mode in octal such as 0440, found {}",
                    read::describe(node)
                ),
            );
            None
        }
    }
}
