//! Variables: environment values set for the whole fleet, a group or one device, each
//! optionally narrowed to one service, resolved per device and applied when the server renders
//! a device's desired release. No I/O here: the store keeps [`VariableRecord`]s, this module
//! decides what they mean.
//!
//! Precedence, most specific wins:
//! device+service > device > group+service > group > fleet+service > fleet.
//! A device may be in several groups (groups are label selectors): within one level groups
//! apply in name order, so the group whose name sorts last wins.
//!
//! Effects ([`render`]):
//! 1. The Compose file stored with a release is interpolated again with the device's
//!    service-independent variables (fleet < group < device) and converted with the digests
//!    resolved when the release was created, so a device never triggers a registry call, and a
//!    variable can never make a device run an image nobody resolved.
//! 2. Every resolved variable is put into the environment of every service it applies to
//!    (service-scoped ones only into that service), over the Compose file's value of the
//!    same name.
//!
//! Invariants: rendering is deterministic (same release, same variables, same spec), so the
//! server can compare a device's render before and after a change and re-target only devices
//! whose render differs; a device without variables whose release interpolates nothing gets
//! the signed release unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use fleet_proto::{ReleaseSpec, ServiceName, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::groups::{Group, Selector};
use crate::releases::ImageInfo;

/// Longest variable name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Largest variable value, in bytes.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Names starting with this are the agent's and the server's own.
pub const RESERVED_PREFIX: &str = "FLEET_";

/// Where a variable is set: the fleet (neither group nor device), a group or a device, and
/// optionally one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    /// The group it is set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The device it is set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only this service gets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Scope {
    /// Precedence level: 0 fleet, 1 fleet+service, 2 group, 3 group+service, 4 device,
    /// 5 device+service.
    pub fn level(&self) -> u8 {
        let base = match (&self.group, &self.device) {
            (_, Some(_)) => 4,
            (Some(_), None) => 2,
            (None, None) => 0,
        };
        base + u8::from(self.service.is_some())
    }

    /// The store key of variable `name` in this scope: scopes sort fleet, group, device, and a
    /// scope's variables are contiguous. Spaces separate the parts (no name, group, device or
    /// service contains one).
    pub fn key(&self, name: &str) -> String {
        let (kind, owner) = match (&self.group, &self.device) {
            (_, Some(d)) => ("d", d.as_str()),
            (Some(g), None) => ("g", g.as_str()),
            (None, None) => ("f", ""),
        };
        format!("{kind} {owner} {} {name}", self.service.as_deref().unwrap_or(""))
    }

    /// Checks the shape of the scope (what exists is the caller's to check).
    pub fn check(&self) -> Result<(), String> {
        if self.group.is_some() && self.device.is_some() {
            return Err("give a group or a device, not both: a variable has one scope".into());
        }
        if let Some(s) = &self.service {
            ServiceName::new(s.as_str()).map_err(|e| format!("service {s:?}: {e}"))?;
        }
        if let Some(g) = &self.group {
            crate::groups::check_group_name(g)?;
        }
        Ok(())
    }

    /// Whether a device with `id` in `groups` gets variables of this scope at all (for some
    /// service).
    pub fn covers(&self, id: &str, labels: &BTreeMap<String, String>, groups: &[Group]) -> bool {
        match (&self.group, &self.device) {
            (_, Some(d)) => d == id,
            (Some(g), None) => {
                groups.iter().any(|group| &group.name == g && group.selector.matches(labels))
            }
            (None, None) => true,
        }
    }
}

// Said once, in the API's words (`fleetctl var ls` shows scopes the same way).
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&fleet_api::VariableScope::from(self.clone()), f)
    }
}

/// A stored variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableRecord {
    /// Its name (a POSIX environment variable name).
    pub name: String,
    /// Its value.
    pub value: String,
    /// Where it applies.
    #[serde(flatten)]
    pub scope: Scope,
    /// When it was last set.
    pub updated_at: UnixMillis,
    /// Which token set it.
    pub updated_by: String,
}

impl VariableRecord {
    /// Its store key.
    pub fn key(&self) -> String {
        self.scope.key(&self.name)
    }
}

/// Checks a variable's name: `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_NAME_BYTES`], not
/// starting with [`RESERVED_PREFIX`].
pub fn check_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let posix = b.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
    if !posix {
        return Err(format!(
            "variable name {name:?}: use letters, digits and _, not starting with a digit (a POSIX environment name)"
        ));
    }
    if b.len() > MAX_NAME_BYTES {
        return Err(format!(
            "variable name {}...: {} bytes; at most {MAX_NAME_BYTES}",
            &name[..32],
            b.len()
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "variable name {name}: names starting with {RESERVED_PREFIX} are reserved for Fleet itself; pick another"
        ));
    }
    Ok(())
}

/// Checks a variable's value: at most [`MAX_VALUE_BYTES`], no NUL (an environment string
/// cannot hold one).
pub fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value of {name} is {} bytes; at most {MAX_VALUE_BYTES} are accepted (put large configuration into the image or a volume)",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "the value of {name} contains a NUL byte, which no environment variable can hold"
        ));
    }
    Ok(())
}

/// A variable's value for a device, where it came from and what it overrode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The name.
    pub name: String,
    /// The value in force.
    pub value: String,
    /// The scope it comes from.
    pub origin: Scope,
    /// Less specific scopes that set it too, least specific first.
    pub overridden: Vec<Scope>,
}

/// The variables of a device, resolved: what rendering needs, and the cache key of a render.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DeviceVars {
    /// Service-independent variables (fleet < group < device): interpolation, and the
    /// environment of services without service-scoped variables.
    pub common: BTreeMap<String, String>,
    /// The full resolution for each service that has service-scoped variables.
    pub services: BTreeMap<String, BTreeMap<String, String>>,
}

impl DeviceVars {
    /// Whether the device has no variables at all.
    pub fn is_empty(&self) -> bool {
        self.common.is_empty() && self.services.is_empty()
    }

    /// The environment additions of `service`.
    pub fn for_service(&self, service: &str) -> &BTreeMap<String, String> {
        self.services.get(service).unwrap_or(&self.common)
    }
}

/// Records with a [`Scope`] (variables, secrets), indexed by scope for resolving thousands of
/// devices in one change. The one place that decides which records apply to a device and in
/// which order: fleet, then the groups the device is in by name, then the device.
#[derive(Debug, Clone)]
pub struct ScopedIndex<T> {
    fleet: Vec<T>,
    /// Only groups that have records, by name (the precedence order).
    groups: Vec<(String, Selector, Vec<T>)>,
    devices: HashMap<String, Vec<T>>,
}

impl<T> Default for ScopedIndex<T> {
    fn default() -> Self {
        ScopedIndex { fleet: Vec::new(), groups: Vec::new(), devices: HashMap::new() }
    }
}

/// A record that applies in a [`Scope`].
pub trait Scoped {
    /// Where it applies.
    fn scope(&self) -> &Scope;
}

impl Scoped for VariableRecord {
    fn scope(&self) -> &Scope {
        &self.scope
    }
}

impl<T: Scoped> ScopedIndex<T> {
    /// Indexes `records`. Records of a group that does not exist (any more) apply to nobody.
    pub fn new(records: Vec<T>, groups: &[Group]) -> ScopedIndex<T> {
        let selectors: BTreeMap<&str, &Selector> =
            groups.iter().map(|g| (g.name.as_str(), &g.selector)).collect();
        let mut index = ScopedIndex::default();
        let mut by_group: BTreeMap<String, Vec<T>> = BTreeMap::new();
        for r in records {
            let scope = r.scope();
            match (&scope.group, &scope.device) {
                (_, Some(d)) => index.devices.entry(d.clone()).or_default().push(r),
                (Some(g), None) => by_group.entry(g.clone()).or_default().push(r),
                (None, None) => index.fleet.push(r),
            }
        }
        for (name, records) in by_group {
            if let Some(selector) = selectors.get(name.as_str()) {
                index.groups.push((name, (*selector).clone(), records));
            }
        }
        index
    }

    /// Every record that applies to the device, least specific first (the precedence order;
    /// service-scoped ones included).
    pub fn applicable<'a>(&'a self, id: &str, labels: &BTreeMap<String, String>) -> Vec<&'a T> {
        let mut out: Vec<&T> = self.fleet.iter().collect();
        let member: Vec<&Vec<T>> = self
            .groups
            .iter()
            .filter(|(_, selector, _)| selector.matches(labels))
            .map(|(_, _, records)| records)
            .collect();
        out.extend(member.iter().flat_map(|v| v.iter()));
        out.extend(self.devices.get(id).into_iter().flatten());
        // Stable: within a level, fleet/group-name/device order stays.
        out.sort_by_key(|r| r.scope().level());
        out
    }

    /// The fleet-wide records.
    pub fn fleet(&self) -> &[T] {
        &self.fleet
    }
}

/// Every variable, indexed for resolving thousands of devices in one change.
#[derive(Debug, Clone, Default)]
pub struct VarIndex(ScopedIndex<VariableRecord>);

impl VarIndex {
    /// Indexes `vars`. Variables of a group that does not exist (any more) apply to nobody.
    pub fn new(vars: Vec<VariableRecord>, groups: &[Group]) -> VarIndex {
        VarIndex(ScopedIndex::new(vars, groups))
    }

    fn applicable<'a>(
        &'a self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&'a VariableRecord> {
        self.0.applicable(id, labels)
    }

    /// The device's variables, resolved.
    pub fn device_vars(&self, id: &str, labels: &BTreeMap<String, String>) -> DeviceVars {
        let all = self.applicable(id, labels);
        if all.is_empty() {
            return DeviceVars::default();
        }
        let fold = |service: Option<&str>| -> BTreeMap<String, String> {
            let mut out = BTreeMap::new();
            for v in &all {
                if v.scope.service.is_none() || v.scope.service.as_deref() == service {
                    out.insert(v.name.clone(), v.value.clone());
                }
            }
            out
        };
        let named: BTreeSet<&str> = all.iter().filter_map(|v| v.scope.service.as_deref()).collect();
        DeviceVars {
            common: fold(None),
            services: named.into_iter().map(|s| (s.to_owned(), fold(Some(s)))).collect(),
        }
    }

    /// Why each variable has its value on the device: for `service` (`None`: the
    /// service-independent ones), by name.
    pub fn explain(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        service: Option<&str>,
    ) -> Vec<Resolved> {
        resolve(&self.applicable(id, labels), service)
    }

    /// The services that have service-scoped variables on the device.
    pub fn services_of(&self, id: &str, labels: &BTreeMap<String, String>) -> BTreeSet<String> {
        self.applicable(id, labels).iter().filter_map(|v| v.scope.service.clone()).collect()
    }

    /// The fleet-wide, service-independent variables (release creation interpolates with
    /// these).
    pub fn fleet_common(&self) -> BTreeMap<String, String> {
        self.0
            .fleet()
            .iter()
            .filter(|v| v.scope.service.is_none())
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }
}

/// Resolves `vars` (least specific first) for `service`: later ones override earlier ones.
pub fn resolve(vars: &[&VariableRecord], service: Option<&str>) -> Vec<Resolved> {
    let mut out: BTreeMap<&str, Resolved> = BTreeMap::new();
    for v in vars {
        if v.scope.service.is_some() && v.scope.service.as_deref() != service {
            continue;
        }
        match out.get_mut(v.name.as_str()) {
            Some(r) => {
                let previous = std::mem::replace(&mut r.origin, v.scope.clone());
                r.overridden.push(previous);
                r.value.clone_from(&v.value);
            }
            None => {
                out.insert(
                    &v.name,
                    Resolved {
                        name: v.name.clone(),
                        value: v.value.clone(),
                        origin: v.scope.clone(),
                        overridden: Vec::new(),
                    },
                );
            }
        }
    }
    out.into_values().collect()
}

/// Why a release cannot be rendered for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderProblem {
    /// The Compose path (`services.web.ports[0]`) or spec path.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for RenderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Whether rendering this release can depend on interpolation (its Compose file references a
/// variable).
pub fn interpolates(compose: Option<&str>) -> bool {
    compose.is_some_and(|c| c.contains('$'))
}

/// The release `spec` (as signed; `compose` and `images` as stored with it) as the device
/// with `vars` runs it. See the module comment for what that means.
pub fn render(
    spec: &ReleaseSpec,
    compose: Option<&str>,
    images: &[ImageInfo],
    vars: &DeviceVars,
) -> Result<ReleaseSpec, Vec<RenderProblem>> {
    let mut out = match compose.filter(|c| interpolates(Some(c))) {
        Some(text) => reinterpolate(spec, text, images, vars)?,
        None => spec.clone(),
    };
    if vars.is_empty() {
        return Ok(out);
    }
    for service in &mut out.services {
        for (k, v) in vars.for_service(service.name.as_str()) {
            service.env.insert(k.clone(), v.clone());
        }
    }
    out.validate().map_err(|errors| {
        errors
            .into_iter()
            .map(|e| RenderProblem { path: e.path, reason: e.reason })
            .collect::<Vec<_>>()
    })?;
    Ok(out)
}

fn reinterpolate(
    spec: &ReleaseSpec,
    text: &str,
    images: &[ImageInfo],
    vars: &DeviceVars,
) -> Result<ReleaseSpec, Vec<RenderProblem>> {
    let problems = |list: Vec<crate::compose::ComposeProblem>| {
        list.into_iter().map(|p| RenderProblem { path: p.path, reason: p.reason }).collect()
    };
    let parsed = crate::compose::Compose::parse(text.as_bytes(), &vars.common).map_err(problems)?;
    // Only images inside the server's signature count: the stored `images` list is not signed,
    // and a render must never reach an image the release did not resolve.
    let signed: std::collections::HashSet<&fleet_proto::ImageRef> =
        spec.services.iter().map(|s| &s.image).collect();
    let digests: BTreeMap<String, fleet_proto::ImageRef> = images
        .iter()
        .filter(|i| signed.contains(&i.resolved.image))
        .map(|i| (i.reference.clone(), i.resolved.image.clone()))
        .collect();
    let referenced = referenced(text);
    let mut refused = Vec::new();
    for used in parsed.images() {
        if !digests.contains_key(&used.reference) {
            let from: Vec<&str> = referenced
                .iter()
                .filter(|n| vars.common.contains_key(n.as_str()))
                .map(String::as_str)
                .collect();
            let known: Vec<&str> = digests.keys().map(String::as_str).collect();
            refused.push(RenderProblem {
                path: used.path.clone(),
                reason: format!(
                    "becomes {:?} with this device's variables ({}), which is none of the images resolved when the release was created ({}); a variable cannot change an image: create a new release instead",
                    used.reference,
                    if from.is_empty() { "none set".to_owned() } else { from.join(", ") },
                    known.join(", ")
                ),
            });
        }
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    parsed.into_release(&spec.app, &spec.version, &digests).map_err(problems)
}

/// The variable names a Compose file's text refers to (`$NAME`, `${NAME...}`, defaults
/// included; `$$` escapes skipped), to say which variables can have changed a value.
pub fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
            continue;
        }
        let body = after.strip_prefix('{').unwrap_or(after);
        let len = body
            .bytes()
            .enumerate()
            .take_while(|(i, b)| {
                b.is_ascii_alphabetic() || *b == b'_' || (*i > 0 && b.is_ascii_digit())
            })
            .count();
        if len > 0 {
            out.insert(body[..len].to_owned());
        }
        rest = &body[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use fleet_proto::{ImageRef, ReleaseId, ServiceSpec};

    fn var(
        name: &str,
        value: &str,
        group: Option<&str>,
        device: Option<&str>,
        service: Option<&str>,
    ) -> VariableRecord {
        VariableRecord {
            name: name.into(),
            value: value.into(),
            scope: Scope {
                group: group.map(Into::into),
                device: device.map(Into::into),
                service: service.map(Into::into),
            },
            updated_at: UnixMillis(1),
            updated_by: "admin".into(),
        }
    }

    fn group(name: &str, selector: &str) -> Group {
        Group {
            name: name.into(),
            selector: Selector::parse(selector).unwrap(),
            description: String::new(),
            created_at: UnixMillis(1),
            created_by: "admin".into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// Every level sets X; each removal of the most specific reveals the next one.
    #[test]
    fn the_most_specific_scope_wins_at_every_level() {
        let levels = [
            var("X", "fleet", None, None, None),
            var("X", "fleet+web", None, None, Some("web")),
            var("X", "group", Some("depot"), None, None),
            var("X", "group+web", Some("depot"), None, Some("web")),
            var("X", "device", None, Some("r1"), None),
            var("X", "device+web", None, Some("r1"), Some("web")),
        ];
        let groups = [group("depot", "site=depot")];
        let l = labels(&[("site", "depot")]);
        for n in (1..=levels.len()).rev() {
            let index = VarIndex::new(levels[..n].to_vec(), &groups);
            let vars = index.device_vars("r1", &l);
            assert_eq!(vars.for_service("web")["X"], levels[n - 1].value, "with {n} levels");
            // Service-independent: the most specific level without a service.
            let common = levels[..n].iter().rev().find(|v| v.scope.service.is_none()).unwrap();
            assert_eq!(vars.common["X"], common.value);
            assert_eq!(vars.for_service("db")["X"], common.value, "db has no own variables");
        }
        // Scrambled input order changes nothing: precedence is by scope, not by insertion.
        let mut reversed = levels.to_vec();
        reversed.reverse();
        let vars = VarIndex::new(reversed, &groups).device_vars("r1", &l);
        assert_eq!(vars.for_service("web")["X"], "device+web");
        assert_eq!(vars.common["X"], "device");
    }

    #[test]
    fn a_device_outside_the_group_or_another_device_does_not_get_its_values() {
        let vars = vec![
            var("X", "fleet", None, None, None),
            var("X", "group", Some("depot"), None, None),
            var("X", "device", None, Some("r1"), None),
        ];
        let index = VarIndex::new(vars, &[group("depot", "site=depot")]);
        assert_eq!(index.device_vars("r2", &labels(&[("site", "lab")])).common["X"], "fleet");
        assert_eq!(index.device_vars("r2", &labels(&[("site", "depot")])).common["X"], "group");
        assert!(VarIndex::new(vec![], &[]).device_vars("r1", &labels(&[])).is_empty());
    }

    #[test]
    fn of_two_groups_the_last_by_name_wins_and_the_other_is_shown_overridden() {
        let vars = vec![
            var("X", "b", Some("b-site"), None, None),
            var("X", "a", Some("a-site"), None, None),
            var("X", "a-web", Some("a-site"), None, Some("web")),
        ];
        let groups = [group("b-site", "site=depot"), group("a-site", "gpu")];
        let index = VarIndex::new(vars, &groups);
        let l = labels(&[("site", "depot"), ("gpu", "")]);
        assert_eq!(index.device_vars("r1", &l).common["X"], "b");
        // group+service beats group whatever the names.
        assert_eq!(index.device_vars("r1", &l).for_service("web")["X"], "a-web");
        let why = index.explain("r1", &l, None);
        assert_eq!(why.len(), 1);
        assert_eq!(why[0].origin.to_string(), "group b-site");
        assert_eq!(
            why[0].overridden.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["group a-site"]
        );
    }

    #[test]
    fn variables_of_a_removed_group_apply_to_nobody() {
        let index = VarIndex::new(vec![var("X", "g", Some("gone"), None, None)], &[]);
        assert!(index.device_vars("r1", &labels(&[])).is_empty());
    }

    #[test]
    fn names_and_values_are_checked_with_the_reason() {
        assert!(check_name("SITE_2").is_ok());
        assert!(check_name("_x").is_ok());
        assert!(check_name("2X").unwrap_err().contains("POSIX"));
        assert!(check_name("A-B").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("FLEET_DEVICE").unwrap_err().contains("reserved"));
        assert!(check_name(&"A".repeat(257)).unwrap_err().contains("at most 256"));
        assert!(check_value("X", &"v".repeat(MAX_VALUE_BYTES)).is_ok());
        assert!(check_value("X", &"v".repeat(MAX_VALUE_BYTES + 1))
            .unwrap_err()
            .contains("X is 32769 bytes"));
        assert!(check_value("X", "a\0b").unwrap_err().contains("NUL"));
        assert!(Scope { group: Some("g".into()), device: Some("d".into()), service: None }
            .check()
            .is_err());
        assert!(Scope { service: Some("Bad Name".into()), ..Scope::default() }.check().is_err());
    }

    #[test]
    fn referenced_names_include_defaults_and_skip_escapes() {
        let names = referenced("a: ${A:-${B}} $C $$D ${E1} $9");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["A", "B", "C", "E1"]);
    }

    #[test]
    fn keys_keep_scopes_apart() {
        let a = var("X", "", Some("g"), None, None).key();
        let b = var("X", "", Some("g"), None, Some("web")).key();
        let c = var("X", "", None, Some("g"), None).key();
        let d = var("X", "", None, None, None).key();
        assert_eq!(BTreeSet::from([&a, &b, &c, &d]).len(), 4);
    }

    const DIGEST1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const DIGEST2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A release made the way `release create` makes it: parsed with the fleet's variables.
    fn release(compose: &str, fleet: &BTreeMap<String, String>) -> (ReleaseSpec, Vec<ImageInfo>) {
        let parsed = crate::compose::Compose::parse(compose.as_bytes(), fleet).unwrap();
        let mut digests = BTreeMap::new();
        let mut images = Vec::new();
        for (i, used) in parsed.images().into_iter().enumerate() {
            let digest = if i == 0 { DIGEST1 } else { DIGEST2 };
            let image = ImageRef::parse(&format!("reg.example/app@{digest}")).unwrap();
            digests.insert(used.reference.clone(), image.clone());
            images.push(ImageInfo {
                service: used.service.to_string(),
                reference: used.reference,
                resolved: fleet_oci::ResolvedImage {
                    image,
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    platforms: vec![],
                },
            });
        }
        (parsed.into_release("app", "1", &digests).unwrap(), images)
    }

    const COMPOSE: &str = "services:\n  web:\n    image: reg.example/app:${TAG:-1}\n    ports: [\"${PORT:-8080}:80\"]\n    environment:\n      SITE: ${SITE:-none}\n      MODE: compose\n  db:\n    image: reg.example/db:1\n";

    fn dv(common: &[(&str, &str)], web: &[(&str, &str)]) -> DeviceVars {
        let common = labels(common);
        let mut services = BTreeMap::new();
        if !web.is_empty() {
            let mut w = common.clone();
            w.extend(labels(web));
            services.insert("web".to_owned(), w);
        }
        DeviceVars { common, services }
    }

    fn service<'a>(spec: &'a ReleaseSpec, name: &str) -> &'a ServiceSpec {
        spec.services.iter().find(|s| s.name.as_str() == name).unwrap()
    }

    #[test]
    fn without_variables_the_signed_release_is_rendered_unchanged() {
        let (spec, images) = release(COMPOSE, &BTreeMap::new());
        assert_eq!(render(&spec, Some(COMPOSE), &images, &DeviceVars::default()).unwrap(), spec);
        assert_eq!(render(&spec, None, &[], &DeviceVars::default()).unwrap(), spec);
    }

    #[test]
    fn device_variables_interpolate_the_compose_file_and_enter_the_environment() {
        let (spec, images) = release(COMPOSE, &BTreeMap::new());
        let vars =
            dv(&[("SITE", "berlin"), ("PORT", "9000"), ("MODE", "device")], &[("ONLY_WEB", "1")]);
        let out = render(&spec, Some(COMPOSE), &images, &vars).unwrap();
        assert_eq!(out.id, spec.id, "the release id stays");
        let web = service(&out, "web");
        assert_eq!(web.ports[0].host_port, 9000);
        assert_eq!(web.env["SITE"], "berlin");
        assert_eq!(web.env["MODE"], "device", "a variable overrides the file's environment");
        assert_eq!(web.env["ONLY_WEB"], "1");
        let db = service(&out, "db");
        assert_eq!(db.env["SITE"], "berlin", "service-independent ones reach every service");
        assert!(!db.env.contains_key("ONLY_WEB"), "service-scoped ones only theirs");
        assert_eq!(web.image, service(&spec, "web").image);
    }

    #[test]
    fn a_release_given_as_json_only_gets_the_environment() {
        let spec = ReleaseSpec {
            id: ReleaseId::new("j@1").unwrap(),
            app: "j".into(),
            version: "1".into(),
            services: vec![ServiceSpec::new(
                ServiceName::new("web").unwrap(),
                ImageRef::parse(&format!("reg.example/app@{DIGEST1}")).unwrap(),
            )],
        };
        let out = render(&spec, None, &[], &dv(&[("A", "1")], &[])).unwrap();
        assert_eq!(out.services[0].env["A"], "1");
    }

    #[test]
    fn a_variable_that_changes_an_image_or_breaks_a_port_is_refused_with_the_path() {
        let (spec, images) = release(COMPOSE, &BTreeMap::new());
        let err = render(&spec, Some(COMPOSE), &images, &dv(&[("TAG", "2")], &[])).unwrap_err();
        assert_eq!(err[0].path, "services.web.image", "{err:?}");
        assert!(err[0].reason.contains("TAG") && err[0].reason.contains("new release"), "{err:?}");
        let err =
            render(&spec, Some(COMPOSE), &images, &dv(&[("PORT", "99999")], &[])).unwrap_err();
        assert!(err[0].path.starts_with("services.web.ports"), "{err:?}");
    }

    #[test]
    fn an_image_outside_the_signature_is_never_used() {
        let (spec, mut images) = release(COMPOSE, &BTreeMap::new());
        // Someone edits the unsigned image list in the store.
        images[0].resolved.image = ImageRef::parse(&format!("evil.example/x@{DIGEST2}")).unwrap();
        assert!(render(&spec, Some(COMPOSE), &images, &dv(&[("SITE", "x")], &[])).is_err());
    }
}
